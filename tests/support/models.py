"""The one model directory maker of the tests and benchmarks (demo/make_model.py stays the demo's own: a trained model).

make_model(root) is the small model of the functional tests: a file of every
kind the verifier and the unpacker treat differently. With `tree_bytes`, it is
a model of real size for the size tests and benchmarks: `shards` weight files
and `small` small files whose page-rounded total is `tree_bytes` (to within a
page per shard). Everything is readable by the containers' UID.
"""

from __future__ import annotations

import os
from pathlib import Path

MIB = 1 << 20
PAGE = 4096


def make_model(root: Path, weights: int = 3 * MIB, *, tree_bytes: int = 0, shards: int = 4, small: int = 1000,
               small_bytes: int = 3000, gitignore: bool = True) -> Path:
    """Without `tree_bytes`: weights.bin (`weights` random bytes; a large one is hashed in a thread),
    config.json, an empty file, a nested file, an empty directory (as SavedModels have) and a .gitignore
    (ignored by model_signing's signer and verifier; gitignore=False leaves it out, for a statement built by
    hand). With it: variables/ shards and assets/ files of `small_bytes` each, `tree_bytes` in all."""
    root.mkdir(parents=True, exist_ok=True)
    if tree_bytes:
        (root / "variables").mkdir()
        (root / "assets").mkdir()
        shard = (tree_bytes - small * PAGE) // shards // PAGE * PAGE
        for i in range(shards):
            _random_file(root / "variables" / f"variables.data-{i:05d}-of-{shards:05d}", shard)
        for i in range(small):
            (root / "assets" / f"vocab-{i:04d}.txt").write_bytes(os.urandom(small_bytes))
    else:
        (root / "sub" / "deeper").mkdir(parents=True)
        (root / "assets.extra").mkdir()
        _random_file(root / "weights.bin", weights)
        (root / "config.json").write_text('{"layers": 3}')
        (root / "empty.txt").write_bytes(b"")
        (root / "sub" / "deeper" / "vocab.txt").write_bytes(os.urandom(5000))
        if gitignore:
            (root / ".gitignore").write_text("*.pyc\n")
    for p in [root, *root.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    return root


def _random_file(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 16 * MIB)
            f.write(os.urandom(n))
            left -= n
