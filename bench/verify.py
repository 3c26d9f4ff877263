#!/usr/bin/env python3
"""The cost of verifying a model signature in the stream (issue 13).

The same signed 1 GiB model (a few large random shards and many small
files, sealed with `seal --sign-key`), the same tmpfs volume, interleaved
round by round: `modelseal run` without verification, `run --verify-key`
(every file hashed as it is written, checked before the rename), and `run`
followed by `model_signing verify key` (the verify-after-download approach:
a second read of every byte). The claim: `run --verify-key` costs at most
10% more wall time than `run`. Ciphertext sits on disk, as in bench/run.py.
"""

from __future__ import annotations

import hashlib
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from measure import Contender, interleave, record, record_group, table
from run import make_model  # the tests' one (support.models)

VOLUME = os.environ.get("BENCH_DIR", "/dev/shm")
DISK = os.environ.get("BENCH_DISK", "/var/tmp")
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
SIZE_GIB = int(os.environ.get("BENCH_SIZE_GIB", "1"))


def sha256_rate() -> float:
    """GB/s of hashlib's SHA-256 on 1 MiB pieces (best of 3 passes over 256 MiB)."""
    data = memoryview(os.urandom(1 << 20))
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        h = hashlib.sha256()
        for _ in range(256):
            h.update(data)
        best = min(best, time.perf_counter() - start)
    return (256 << 20) / best / 1e9


def main() -> None:
    src = tempfile.mkdtemp(prefix="bench-verify-src-", dir=DISK)
    vol = tempfile.mkdtemp(prefix="bench-verify-vol-", dir=VOLUME)
    try:
        model = os.path.join(src, "model")
        make_model(Path(model), tree_bytes=SIZE_GIB << 30, small_bytes=4096)
        key, private, public = (os.path.join(src, n) for n in ("key", "sign.pem", "sign.pub"))
        signer = ec.generate_private_key(ec.SECP256R1())
        with open(private, "wb") as f:
            f.write(signer.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()))
        with open(public, "wb") as f:
            f.write(signer.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
        sealed = os.path.join(src, "model.seal")
        subprocess.run(["modelseal", "keygen", "-o", key], check=True, stderr=subprocess.DEVNULL)
        subprocess.run(["modelseal", "seal", model, "-o", sealed, "--key", key, "--sign-key", private],
                       check=True, stderr=subprocess.DEVNULL)
        out = os.path.join(vol, "model")

        def clean() -> None:
            shutil.rmtree(out, ignore_errors=True)

        run = ["modelseal", "run", "--source", f"file://{sealed}", "--key", key, "-o", out]
        after = (f"{' '.join(run)} 2>/dev/null && model_signing verify key --signature {out}/model.sig "
                 f"--public_key {public} {out} >/dev/null")
        contenders = [
            Contender("run", run, setup=clean),
            Contender("run --verify-key (in the stream)", run + ["--verify-key", public], setup=clean),
            Contender("run; model_signing verify key", shell=after, setup=clean),
            # The same bytes hashed by coreutils, from the page cache: the CPU a hash of them costs
            Contender("sha256sum of the model's files", shell=f"find {model} -type f -print0 | "
                      "xargs -0 sha256sum >/dev/null"),
        ]
        cpu: dict[str, list[float]] = {}
        for c in contenders:  # CPU seconds (user + sys) of each repetition, from the children's rusage
            def counted(env=None, c=c, once=c.once):
                before = resource.getrusage(resource.RUSAGE_CHILDREN)
                sample = once(env)
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                cpu.setdefault(c.name, []).append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
                return sample
            c.once = counted  # type: ignore[method-assign]
        interleave(contenders, ROUNDS)
        base = contenders[0]
        rows = [[f"{SIZE_GIB} GiB", c.name, f"{c.median:.2f}", f"{c.best:.2f}", f"{c.median / base.median:.3f}",
                 f"{c.best / base.best:.3f}", f"{statistics.median(cpu[c.name][1:]):.2f}", f"{c.rss_mib:.0f}"]
                for c in contenders]
        print(table(f"signature verification on one tmpfs, median of {ROUNDS} interleaved rounds", rows,
                    ["model", "contender", "median s", "best s", "x run (median)", "x run (best)", "CPU s",
                     "peak RSS MiB"]))
        record_group(f"signature verification, {SIZE_GIB} GiB model", contenders, base, SIZE_GIB << 30,
                     goals={contenders[1].name: 1 / 1.10},
                     notes={c.name: f"CPU {statistics.median(cpu[c.name][1:]):.2f} s" for c in contenders})
        ratio = contenders[1].median / base.median
        gib = SIZE_GIB
        added = (statistics.median(cpu[contenders[1].name][1:]) - statistics.median(cpu[base.name][1:])) / gib
        sha = statistics.median(cpu[contenders[3].name][1:]) / gib
        record(f"signature verification CPU per GiB, {SIZE_GIB} GiB model", "run --verify-key: CPU added", added,
               vs="sha256sum", ratio=sha / added if added > 0 else None, goal=1 / 1.10,
               note="seconds column: CPU-seconds per GiB; ratio: sha256sum's over the CPU --verify-key adds")
        print(f"\nCPU added by --verify-key: {added:.3f} s/GiB; sha256sum on the same bytes: {sha:.3f} s/GiB "
              f"({added / sha:.2f}x; claim <= 1.10x)")
        print(f"\nrun --verify-key / run = {ratio:.3f} (median), {contenders[1].best / base.best:.3f} (best); "
              f"claim: <= 1.10")
        rate, cores = sha256_rate(), os.cpu_count() or 1
        floor = max(1.0, statistics.median(cpu[contenders[1].name][1:]) / cores / base.best)
        print(f"SHA-256 here: {rate:.2f} GB/s on one core, so hashing {SIZE_GIB} GiB is "
              f"{(SIZE_GIB << 30) / rate / 1e9:.2f} core-seconds; {cores} cores, load average "
              f"{os.getloadavg()[0]:.1f}. Even with every core free, run --verify-key / run >= {floor:.2f} here "
              "(its CPU seconds spread over all cores, against run's best).")
    finally:
        shutil.rmtree(src, ignore_errors=True)
        shutil.rmtree(vol, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
