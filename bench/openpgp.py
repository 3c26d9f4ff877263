#!/usr/bin/env python3
"""OpenPGP benchmark (issue 6): `modelseal decrypt --format openpgp` vs `gpg -d` on the same `gpg -c` file.

1 GiB of random bytes (model weights are high-entropy), encrypted once by gpg
with its defaults (AES-256, ZIP compression, partial body lengths), and once
with `--compress-algo none`; optionally (BENCH_OPENPGP_VARIANTS="default none tar")
a tar of random files. All on the same tmpfs, interleaved rounds, medians.
Wall time, CPU time (user+sys: the machine may be shared, CPU time is the
steadier number) and peak RSS of each process. `dd` is the copy ceiling.
The title line says how much parallelism the machine had to offer: the
reader's edge over gpg comes from a second core, its CPU cost is gpg's.

If the CLI does not offer `--format openpgp` yet, a `python -c` driver runs
the reader the way the decrypt stage does (background writer).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time

from measure import GNU_TIME, Contender, Sample, fill, interleave, record_group, rm, table

SHM = os.environ.get("BENCH_DIR", "/dev/shm")
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
SIZE = int(float(os.environ.get("BENCH_OPENPGP_GIB", "1")) * (1 << 30))
VARIANTS = os.environ.get("BENCH_OPENPGP_VARIANTS", "default none").split()
PY = sys.executable

DRIVER = r"""
import os, sys
from modelseal import openpgp
from modelseal.overlap import BackgroundWriter
reader = openpgp.DecryptingReader(open(sys.argv[1], "rb", buffering=0), open(sys.argv[2], "rb").read())
fd = os.open(sys.argv[3], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
def write(view):
    while view:
        view = view[os.write(fd, view):]
with BackgroundWriter(write) as background:
    for chunk in reader.segments(ring=background.depth + 2):
        background.write(chunk)
os.close(fd)
"""


class CpuContender(Contender):
    """A contender that also records user+sys CPU seconds."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.cpu: list[float] = []

    def once(self, env: dict | None = None) -> Sample:
        if self.setup:
            self.setup()
        with tempfile.NamedTemporaryFile("r") as out:
            start = time.perf_counter()
            proc = subprocess.run([GNU_TIME, "-f", "%M %U %S", "-o", out.name, *self.argv], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, env=env)
            seconds = time.perf_counter() - start
            if proc.returncode != 0:
                raise SystemExit(f"{self.name} failed ({proc.returncode}): {proc.stderr.decode()[-2000:]}")
            rss, user, sys_ = out.read().split()[-3:]
        self.cpu.append(float(user) + float(sys_))
        return Sample(seconds, int(rss))


def cli_has_openpgp() -> bool:
    proc = subprocess.run([PY, "-m", "modelseal", "decrypt", "--help"], capture_output=True, text=True)
    return proc.returncode == 0 and "openpgp" in proc.stdout


def parallel_capacity() -> float:
    """How much two threads get done compared to one (2.0 on two free cores).

    modelseal's reader gains over gpg -d by running SHA-1, decryption and
    inflation side by side; on a machine whose other load leaves one core,
    it can only match gpg's CPU cost. This puts the numbers in context.
    """
    data = os.urandom(1 << 20)

    def work() -> None:
        h = hashlib.sha1()
        for _ in range(256):
            h.update(data)  # releases the GIL

    start = time.perf_counter()
    work()
    one = time.perf_counter() - start
    threads = [threading.Thread(target=work) for _ in range(2)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return 2 * one / (time.perf_counter() - start)


def make_tar(path: str, size: int, d: str) -> None:
    """A tar of random files (four quarters), as `tar -cf model.tar model/` would make."""
    parts = []
    for i in range(4):
        p = os.path.join(d, f"shard-{i}.bin")
        fill(p, size // 4)
        parts.append(p)
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for p in parts:
            tar.add(p, arcname=f"model/{os.path.basename(p)}")
            os.unlink(p)


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def run(variant: str, d: str, gpg: list[str], phrase: str, use_cli: bool) -> list[list[str]]:
    plain, enc, out = (os.path.join(d, n) for n in (f"plain-{variant}", f"m-{variant}.gpg", "out"))
    if variant == "tar":
        make_tar(plain, SIZE, d)
    else:
        fill(plain, SIZE)
    size = os.path.getsize(plain)
    want = sha256(plain)
    opts = ["--compress-algo", "none"] if variant == "none" else []
    started = time.perf_counter()
    subprocess.run(gpg + opts + ["-c", "-o", enc, plain], check=True, stderr=subprocess.DEVNULL)
    print(f"# {variant}: gpg -c took {time.perf_counter() - started:.1f} s for {size / 2**30:.2f} GiB", flush=True)
    os.unlink(plain)
    ours = ([PY, "-m", "modelseal", "decrypt", "--format", "openpgp", "--in", enc, "--key", phrase, "-o", out] if use_cli
            else [PY, "-c", DRIVER, enc, phrase, out])
    contenders = [
        CpuContender("dd bs=1M (copy ceiling)", ["dd", f"if={enc}", f"of={out}", "bs=1M"], setup=rm(out)),
        CpuContender("gpg -d (old recipe)", gpg + ["-d", "-o", out, enc], setup=rm(out)),
        CpuContender("modelseal decrypt --format openpgp" if use_cli else "modelseal openpgp reader", ours,
                     setup=rm(out)),
    ]
    interleave(contenders, ROUNDS)
    contenders[2].once()
    if sha256(out) != want:
        raise SystemExit(f"{variant}: modelseal's output differs from the plaintext")
    rm(out, enc)()
    gpg_d = contenders[1]
    record_group(f"openpgp: gpg -c file ({variant} compression), {size / 2**30:.2f} GiB", contenders, gpg_d, size,
                 notes={c.name: f"CPU {sorted(c.cpu)[len(c.cpu) // 2]:.2f} s" for c in contenders})
    rows = []
    for c in contenders:
        rows.append([variant, c.name, f"{c.median:.2f}", f"{size / c.median / 1e9:.2f}",
                     f"{sorted(c.cpu)[len(c.cpu) // 2]:.2f}", f"{c.rss_mib:.0f}", f"{gpg_d.median / c.median:.2f}"])
    return rows


def main() -> None:
    d = tempfile.mkdtemp(prefix="bench-openpgp-", dir=SHM)
    try:
        home, phrase = os.path.join(d, "gnupg"), os.path.join(d, "pass")
        os.mkdir(home, 0o700)
        with open(phrase, "w") as f:
            f.write("correct horse battery staple\n")
        gpg = ["gpg", "--homedir", home, "--batch", "--yes", "--quiet", "--pinentry-mode", "loopback",
               "--passphrase-file", phrase]
        use_cli = cli_has_openpgp()
        load, capacity = os.getloadavg()[0], parallel_capacity()
        rows = []
        for variant in VARIANTS:
            rows += run(variant, d, gpg, phrase, use_cli)
        capacity = (capacity + parallel_capacity()) / 2
        print(table(
            f"OpenPGP decrypt tmpfs -> tmpfs, {SIZE / 2**30:g} GiB, median of {ROUNDS} interleaved rounds "
            f"(after one warm-up); {os.cpu_count()} CPUs, load average {load:.1f} -> {os.getloadavg()[0]:.1f}, "
            f"2 threads run at {capacity:.2f}x one",
            rows,
            ["gpg -c", "contender", "seconds", "GB/s", "CPU s", "peak RSS MiB", "x gpg -d speed"],
        ))
        subprocess.run(["gpgconf", "--homedir", home, "--kill", "all"], capture_output=True)
    finally:
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
