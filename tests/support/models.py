"""Model directories of real size for the size tests: weight shards and many small files, on tmpfs."""

from __future__ import annotations

import os
from pathlib import Path

MIB = 1 << 20
PAGE = 4096


def make_model(root: Path, tree_bytes: int, *, shards: int = 4, small: int = 1000) -> Path:
    """`shards` files of random bytes and `small` 3000-byte files whose page-rounded total is `tree_bytes`
    (to within a page per shard), readable by the containers' UID."""
    (root / "variables").mkdir(parents=True)
    (root / "assets").mkdir()
    shard = (tree_bytes - small * PAGE) // shards // PAGE * PAGE
    for i in range(shards):
        with open(root / "variables" / f"variables.data-{i:05d}-of-{shards:05d}", "wb") as f:
            left = shard
            while left:
                n = min(left, 16 * MIB)
                f.write(os.urandom(n))
                left -= n
    for i in range(small):
        (root / "assets" / f"vocab-{i:04d}.txt").write_bytes(os.urandom(3000))
    for p in [root, *root.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    return root
