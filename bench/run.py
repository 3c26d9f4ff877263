#!/usr/bin/env python3
"""Single pass vs four stages vs the old recipe (issue: unpack and run).

The same 1 GiB model (a few large random shards and many small files), the
same tmpfs volume: `modelseal run`, the four stages in sequence (fetch-model,
decrypt, unpack; the key already in place), and the original recipe
(`gpg -d` into the volume, then `tar -xf`). Reports wall time, the peak bytes
used on the volume (sampled every 10 ms) relative to the unpacked tree, and
peak RSS. Ciphertext sources sit on disk, as they would in an image or bucket.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from measure import Contender, interleave, record_group, table

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from support.models import make_model  # noqa: E402

VOLUME = os.environ.get("BENCH_DIR", "/dev/shm")
DISK = os.environ.get("BENCH_DISK", "/var/tmp")
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))


class VolumePeak:
    """Peak of (used bytes on the volume) above a baseline, sampled in a thread."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.peak = 0
        self._stop = threading.Event()

    def used(self) -> int:
        st = os.statvfs(self.path)
        return (st.f_blocks - st.f_bfree) * st.f_frsize

    def __enter__(self) -> "VolumePeak":
        self.base = self.used()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self.used() - self.base)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def tree_bytes(root: str) -> int:
    total = 0
    for dirpath, _, files in os.walk(root):
        for name in files:
            total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return total


def bench(size_gib: int, everything: bool) -> list[list[str]]:
    src = tempfile.mkdtemp(prefix="bench-run-src-", dir=DISK)
    vol = tempfile.mkdtemp(prefix="bench-run-vol-", dir=VOLUME)
    plain_dir = tempfile.mkdtemp(prefix="bench-run-tar-", dir=VOLUME)
    try:
        model = os.path.join(src, "model")
        make_model(Path(model), tree_bytes=size_gib << 30, small_bytes=4096)
        key = os.path.join(src, "key")
        sealed = os.path.join(src, "model.seal")
        subprocess.run(["modelseal", "keygen", "-o", key], check=True, stderr=subprocess.DEVNULL)
        subprocess.run(["modelseal", "seal", model, "-o", sealed, "--key", key], check=True, stderr=subprocess.DEVNULL)
        out = os.path.join(vol, "model")

        def clean() -> None:
            for name in os.listdir(vol):
                p = os.path.join(vol, name)
                shutil.rmtree(p) if os.path.isdir(p) and not os.path.islink(p) else os.unlink(p)
            shutil.copy(key, os.path.join(vol, "key"))

        vkey = os.path.join(vol, "key")
        # The ceiling: GNU tar extracting the very same plaintext tar (decrypted once, kept on tmpfs).
        plain_tar = os.path.join(plain_dir, "model.tar")
        subprocess.run(["modelseal", "decrypt", "--in", sealed, "--key", key, "-o", plain_tar], check=True,
                       stderr=subprocess.DEVNULL)
        contenders = [Contender("GNU tar -xf of the same plaintext (ceiling)",
                                shell=f"mkdir {out} && tar -C {out} -xf {plain_tar}", setup=clean),
                      Contender("modelseal run (single pass)",
                                ["modelseal", "run", "--source", f"file://{sealed}", "--key", vkey, "-o", out],
                                setup=clean)]
        if everything:
            contenders.append(Contender("modelseal run --workers 2",
                                        ["modelseal", "run", "--source", f"file://{sealed}", "--key", vkey, "-o", out,
                                         "--workers", "2"], setup=clean))
            chain = (f"modelseal fetch-model --source file://{sealed} -o {vol}/model.seal 2>/dev/null && "
                     f"modelseal decrypt --in {vol}/model.seal --key {vkey} -o {vol}/model.tar --delete-input 2>/dev/null && "
                     f"modelseal unpack --in {vol}/model.tar -o {out} --delete-input 2>/dev/null")
            contenders.append(Contender("four stages in sequence", shell=chain, setup=clean))
            gpg_home = os.path.join(src, "gnupg")
            os.mkdir(gpg_home, 0o700)
            phrase = os.path.join(src, "pass")
            with open(phrase, "w") as f:
                f.write("correct horse battery staple\n")
            tar = os.path.join(src, "model.tar")
            subprocess.run(["tar", "-C", model, "-cf", tar, "."], check=True)
            gpg = (f"gpg --homedir {gpg_home} --batch --yes --pinentry-mode loopback --passphrase-file {phrase}")
            subprocess.run(f"{gpg} -c -o {src}/model.tar.gpg {tar}", shell=True, check=True,
                           stderr=subprocess.DEVNULL)
            os.unlink(tar)
            old = (f"{gpg} -d -o {vol}/model.tar {src}/model.tar.gpg 2>/dev/null && mkdir {out} && "
                   f"tar -C {out} -xf {vol}/model.tar")
            contenders.append(Contender("old recipe (gpg -d; tar -xf)", shell=old, setup=clean))
        peaks: dict[str, int] = {}
        for c in contenders:
            orig, setup = c.once, c.setup
            c.setup = None  # cleaned below, before the baseline is taken

            def timed(env=None, c=c, orig=orig, setup=setup):
                setup()
                with VolumePeak(VOLUME) as peak:
                    s = orig(env)
                peaks[c.name] = max(peaks.get(c.name, 0), peak.peak)
                return s

            c.once = timed  # type: ignore[method-assign]
        interleave(contenders, ROUNDS)
        clean()
        subprocess.run(["modelseal", "run", "--source", f"file://{sealed}", "--key", vkey, "-o", out],
                       check=True, stderr=subprocess.DEVNULL)
        unpacked = tree_bytes(out)
        shutil.rmtree(plain_dir, ignore_errors=True)
        ours = contenders[1]
        record_group(f"run {size_gib} GiB model (4 shards + 1000 files) -> tmpfs", contenders, contenders[0],
                     size_gib << 30, goals={ours.name: 0.9},
                     notes={c.name: f"peak volume {peaks[c.name] / unpacked:.2f}x tree" for c in contenders})
        return [[f"{size_gib} GiB", c.name, f"{c.median:.2f}", f"{c.median / ours.median:.2f}",
                 f"{peaks[c.name] / 2**20:.0f}", f"{peaks[c.name] / unpacked:.2f}", f"{c.rss_mib:.0f}"]
                for c in contenders]
    finally:
        shutil.rmtree(src, ignore_errors=True)
        shutil.rmtree(vol, ignore_errors=True)
        shutil.rmtree(plain_dir, ignore_errors=True)


def main() -> None:
    sizes = [int(s) for s in os.environ.get("BENCH_SIZES_GIB", "1 4").split()]
    rows = []
    for i, size in enumerate(sizes):
        rows += bench(size, everything=(i == 0))
    print(table(f"run vs stages vs old recipe on one tmpfs, median of {ROUNDS} interleaved rounds", rows,
                ["model", "contender", "seconds", "x run time", "peak volume MiB", "x unpacked tree",
                 "peak RSS MiB"]))


if __name__ == "__main__":
    sys.exit(main())
