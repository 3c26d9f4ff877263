#!/usr/bin/env python3
"""Decrypt benchmark (issue: foundation): `modelseal decrypt` vs `dd`, `gpg -d`, tink-py.

All on the same tmpfs, the same bytes, interleaved rounds; prints medians and
ratios. Sizes via BENCH_SIZES_GIB (default "1 4": 4 GiB only for modelseal and
dd, to show that peak RSS stays flat as the model grows).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

from measure import Contender, fill, interleave, record_group, rm, table

SHM = os.environ.get("BENCH_DIR", "/dev/shm")
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
PY = sys.executable

TINK_DECRYPT = r"""
import io, struct, sys
sys.path.insert(0, sys.argv[4])
import tink
from support.tinkkeys import keyset_json, tink_primitive
key = open(sys.argv[2], "rb").read()
src = open(sys.argv[1], "rb")
head = src.read(10); prefix = head + src.read(struct.unpack(">I", head[6:10])[0])
if head[5] == 2:  # docs/FORMAT.md: version 2 binds the fixed section; the recipients and the MAC follow it
    src.read(struct.unpack(">I", src.read(4))[0] + 32)
prim = tink_primitive(keyset_json(key))
with prim.new_decrypting_stream(src, prefix) as r, open(sys.argv[3], "wb") as out:
    while chunk := r.read(1 << 20):
        out.write(chunk)
"""


def run(size_gib: int, with_others: bool) -> list[list[str]]:
    d = tempfile.mkdtemp(prefix="bench-decrypt-", dir=SHM)
    try:
        plain, key, sealed, out = (os.path.join(d, n) for n in ("plain", "key", "m.seal", "out"))
        fill(plain, size_gib << 30)
        subprocess.run(["modelseal", "keygen", "-o", key], check=True, stderr=subprocess.DEVNULL)
        subprocess.run(["modelseal", "seal", "-", "-o", sealed, "--key", key], stdin=open(plain, "rb"),
                       check=True, stderr=subprocess.DEVNULL)
        # tink-py opens the payload with the file's own data key (format v2: --key is a recipient of it)
        data_key = os.path.join(d, "data.key")
        subprocess.run(["modelseal", "fetch-key", "--source", f"file://{sealed}", "--key-uri", f"file://{key}",
                        "-o", data_key], check=True, stderr=subprocess.DEVNULL)
        contenders = [
            Contender("dd bs=1M (copy ceiling)", ["dd", f"if={sealed}", f"of={out}", "bs=1M"], setup=rm(out)),
            Contender("modelseal decrypt", ["modelseal", "decrypt", "--in", sealed, "--key", key, "-o", out],
                      setup=rm(out)),
        ]
        if with_others:  # the worker processes (modelseal.parallel) side by side with the default
            contenders += [Contender(f"modelseal decrypt --workers {n}",
                                     ["modelseal", "decrypt", "--in", sealed, "--key", key, "-o", out,
                                      "--workers", str(n)], setup=rm(out)) for n in (2, 3)]
        if with_others:
            gpg_home, gpg_file, phrase = os.path.join(d, "gnupg"), os.path.join(d, "m.gpg"), os.path.join(d, "pass")
            os.mkdir(gpg_home, 0o700)
            with open(phrase, "w") as f:
                f.write("correct horse battery staple\n")
            gpg = ["gpg", "--homedir", gpg_home, "--batch", "--yes", "--pinentry-mode", "loopback",
                   "--passphrase-file", phrase]
            subprocess.run(gpg + ["-c", "-o", gpg_file, plain], check=True, stderr=subprocess.DEVNULL)
            os.unlink(plain)
            tests = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests")
            contenders += [
                Contender("gpg -d (old recipe)", gpg + ["-d", "-o", out, gpg_file], setup=rm(out)),
                Contender("tink-py streaming decrypt", [PY, "-c", TINK_DECRYPT, sealed, data_key, out, tests],
                          setup=rm(out)),
            ]
        else:
            os.unlink(plain)
        interleave(contenders, ROUNDS)
        base = contenders[0]
        ours = contenders[1]
        record_group(f"decrypt {size_gib} GiB tmpfs -> tmpfs", contenders, base, size_gib << 30,
                     goals={"modelseal decrypt": 0.9},
                     notes={"modelseal decrypt": "default --workers (auto: 1 here)"})
        rows = []
        for c in contenders:
            gbps = (size_gib << 30) / c.median / 1e9
            rows.append([f"{size_gib} GiB", c.name, f"{c.median:.2f}", f"{gbps:.2f}", f"{c.rss_mib:.0f}",
                         f"{base.median / c.median:.2f}", f"{c.median / ours.median:.2f}"])
        return rows
    finally:
        shutil.rmtree(d, ignore_errors=True)


def main() -> None:
    sizes = [int(s) for s in os.environ.get("BENCH_SIZES_GIB", "1 4").split()]
    rows = []
    for i, size in enumerate(sizes):
        rows += run(size, with_others=(i == 0))
    print(table(
        f"decrypt tmpfs -> tmpfs, median of {ROUNDS} interleaved rounds (after one warm-up)",
        rows,
        ["size", "contender", "seconds", "GB/s", "peak RSS MiB", "x dd throughput", "modelseal speedup"],
    ))


if __name__ == "__main__":
    main()
