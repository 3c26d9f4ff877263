#!/usr/bin/env python3
"""Two builds of the library, A and B, on the same bytes: did a change move `decrypt` or `run`?

    python bench/ab.py OLD/shared NEW/shared        # e.g. two `git worktree`s

A model of BENCH_SIZES_GIB (default 1) GiB is sealed once by A (so both can
read it: B reads every format A writes), then `decrypt` and `run` of each
build, `dd` of the ciphertext and GNU `tar -xf` of the plaintext run
interleaved on the same tmpfs, BENCH_ROUNDS rounds after one warm-up, the
order rotated each round. The
table gives each one's median, its ratio to `dd` (decrypt) or `tar -xf`
(run), and B over A: drift in the machine hits both builds alike.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from measure import Contender, rm, table

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from support.models import make_model  # noqa: E402

VOLUME = os.environ.get("BENCH_DIR", "/dev/shm")
DISK = os.environ.get("BENCH_DISK", "/var/tmp")
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))


def main() -> None:
    if len(sys.argv) != 3 or not all(os.path.isdir(os.path.join(p, "modelseal")) for p in sys.argv[1:]):
        raise SystemExit("usage: bench/ab.py A/shared B/shared (each a folder holding the modelseal package)")
    builds = {"A": os.path.abspath(sys.argv[1]), "B": os.path.abspath(sys.argv[2])}
    env = {k: dict(os.environ, PYTHONPATH=p) for k, p in builds.items()}
    ms = [sys.executable, "-m", "modelseal"]
    size = int(float(os.environ.get("BENCH_SIZES_GIB", "1")) * 2**30)
    src = tempfile.mkdtemp(prefix="bench-ab-src-", dir=DISK)
    vol = tempfile.mkdtemp(prefix="bench-ab-vol-", dir=VOLUME)
    try:
        model, key, sealed = os.path.join(src, "model"), os.path.join(src, "key"), os.path.join(src, "m.seal")
        make_model(Path(model), tree_bytes=size, small_bytes=4096)
        subprocess.run([*ms, "keygen", "-o", key], check=True, env=env["A"], stderr=subprocess.DEVNULL)
        subprocess.run([*ms, "seal", model, "-o", sealed, "--key", key], check=True, env=env["A"],
                       stderr=subprocess.DEVNULL)
        shutil.rmtree(model)
        tar = os.path.join(vol, "m.tar")
        subprocess.run([*ms, "decrypt", "--in", sealed, "--key", key, "-o", tar], check=True, env=env["A"],
                       stderr=subprocess.DEVNULL)
        for leftover in os.listdir(vol):  # decrypt's sizes file beside the tar (newer builds)
            if leftover != "m.tar":
                os.unlink(os.path.join(vol, leftover))
        out_tar, tree, tar_tree = os.path.join(vol, "out.tar"), os.path.join(vol, "tree"), os.path.join(vol, "t")

        def clean_dir(*paths: str):
            def clean() -> None:
                for p in paths:
                    shutil.rmtree(p, ignore_errors=True)
                for name in os.listdir(vol):
                    if name not in ("m.tar",):
                        p = os.path.join(vol, name)
                        shutil.rmtree(p) if os.path.isdir(p) else os.unlink(p)
            return clean

        def with_env(c: Contender, e: dict) -> Contender:
            once = c.once
            c.once = lambda env=None: once(e)  # type: ignore[method-assign]
            return c

        def make_tar_tree() -> None:
            clean_dir(tar_tree)()
            os.makedirs(tar_tree)

        contenders = [
            Contender("dd of the ciphertext", ["dd", f"if={sealed}", f"of={out_tar}", "bs=1M"],
                      setup=rm(out_tar)),
            Contender("GNU tar -xf of the plaintext", ["tar", "-xf", tar, "-C", tar_tree], setup=make_tar_tree),
        ]
        for k in builds:
            contenders.append(with_env(Contender(f"decrypt ({k})", [*ms, "decrypt", "--in", sealed, "--key", key,
                                                                    "-o", out_tar], setup=clean_dir()), env[k]))
            contenders.append(with_env(Contender(f"run ({k})", [*ms, "run", "--source", sealed, "--key", key,
                                                                "-o", tree], setup=clean_dir(tree)), env[k]))
        # Rotated each round: here the first writer after a round's deletions can pay twice
        # for the same tmpfs pages (the VM hands freed memory back to its host), so no
        # contender keeps one place in the order.
        for r in range(1 + ROUNDS):
            for c in contenders[r % len(contenders):] + contenders[:r % len(contenders)]:
                sample = c.once()
                if r:
                    c.samples.append(sample)
        by = {c.name: c for c in contenders}
        dd, tarx = by["dd of the ciphertext"], by["GNU tar -xf of the plaintext"]
        rows = []
        for c in contenders:
            yard = dd if c.name.startswith(("decrypt", "dd")) else tarx
            other = None
            if c.name.endswith("(B)"):
                other = by[c.name.replace("(B)", "(A)")]
            rows.append([c.name, f"{c.median:.2f}", f"{size / c.median / 2**20:.0f}",
                         f"{yard.median / c.median:.2f} x {'dd' if yard is dd else 'tar'}",
                         f"{other.median / c.median:.2f}" if other else "", f"{c.rss_mib:.0f}"])
        print(table(f"A/B, {size / 2**30:g} GiB, median of {ROUNDS} interleaved, rotated rounds, load {os.getloadavg()[0]:.1f}"
                    f"\nA = {builds['A']}\nB = {builds['B']}", rows,
                    ["contender", "seconds", "MiB/s", "vs yardstick", "B speedup over A", "peak RSS MiB"]))
    finally:
        shutil.rmtree(src, ignore_errors=True)
        shutil.rmtree(vol, ignore_errors=True)


if __name__ == "__main__":
    main()
