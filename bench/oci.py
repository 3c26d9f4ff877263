#!/usr/bin/env python3
"""OCI registry benchmark (issue 12): Debian's docker-registry on 127.0.0.1, plain HTTP.

Two tables, each side by side and interleaved round by round, on the same data:

- pull the same 1 GiB sealed blob into tmpfs: `modelseal fetch-model
  oci://...` vs `skopeo copy docker://... dir:` vs oras-py's `pull`, and
  `modelseal run` (fetch + decrypt + unpack in one pass) for reference;
- push a 1 GiB model: `modelseal seal -o oci://...` (one pass: tar, encrypt,
  chunked upload) vs `modelseal seal -o FILE` then oras-py's `push` (the
  two-step way), and oras-py's push of an already sealed file alone.

The registry stores on tmpfs (wiped before each push), so neither side waits
for a disk; the model's plaintext source is on disk (page cache), the outputs
on tmpfs. BENCH_OCI_GIB sets the size, BENCH_ROUNDS the rounds (median shown).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

from measure import Contender, fill, interleave, record_group, table  # noqa: E402
from support.registry import Registry

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "2"))
SIZE = int(float(os.environ.get("BENCH_OCI_GIB", "1")) * 2**30)

ORAS_PULL = r"""
import sys, oras.client
oras.client.OrasClient(hostname=sys.argv[1], insecure=True).pull(target=sys.argv[2], outdir=sys.argv[3])
"""
ORAS_PUSH = r"""
import os, sys, oras.client
os.chdir(os.path.dirname(sys.argv[3]))
oras.client.OrasClient(hostname=sys.argv[1], insecure=True).push(
    target=sys.argv[2], files=[os.path.basename(sys.argv[3])], quiet=True)
"""


def empty(directory: str) -> None:
    for name in os.listdir(directory):
        p = os.path.join(directory, name)
        shutil.rmtree(p) if os.path.isdir(p) else os.unlink(p)


def main() -> None:
    env = dict(os.environ, DOCKER_CONFIG=tempfile.mkdtemp(prefix="bench-oci-dc-"))
    disk = tempfile.mkdtemp(prefix="bench-oci-", dir="/var/tmp")
    vol = tempfile.mkdtemp(prefix="bench-oci-", dir="/dev/shm")
    registry = Registry(root="/dev/shm")
    try:
        model = os.path.join(disk, "model")
        os.makedirs(model)
        fill(os.path.join(model, "weights.bin"), SIZE)
        key = os.path.join(disk, "key")
        subprocess.run(["modelseal", "keygen", "-o", key], check=True, stderr=subprocess.DEVNULL)
        host = registry.host
        ref = f"{host}/bench/model:1"
        seal_file = os.path.join(vol, "model.seal")
        seal_to_file = ["modelseal", "seal", model, "-o", seal_file, "--key", key]
        out = os.path.join(vol, "out")

        # ---- push
        def fresh_registry() -> None:
            empty(registry.data)
            if os.path.exists(seal_file):
                os.unlink(seal_file)

        def fresh_registry_keep_seal() -> None:
            empty(registry.data)
            if not os.path.exists(seal_file):
                subprocess.run(seal_to_file, check=True, stderr=subprocess.DEVNULL)

        pushes = [
            Contender("seal -o FILE, then oras push",
                      shell=" ".join(seal_to_file) + f" 2>/dev/null && {sys.executable} -c '{ORAS_PUSH}' "
                            f"{host} {ref} {seal_file}", setup=fresh_registry),
            Contender("modelseal seal -o oci:// (one pass)",
                      ["modelseal", "seal", model, "-o", "oci://" + ref, "--key", key, "--allow-http"],
                      setup=fresh_registry),
            Contender("oras push of the sealed file alone",
                      [sys.executable, "-c", ORAS_PUSH, host, ref, seal_file], setup=fresh_registry_keep_seal),
        ]
        interleave(pushes, ROUNDS, env=env)

        # ---- pull: one artifact, pushed once
        fresh_registry()
        subprocess.run(["modelseal", "seal", model, "-o", "oci://" + ref, "--key", key, "--allow-http"],
                       check=True, stderr=subprocess.DEVNULL, env=env)
        shutil.rmtree(model)

        def clean() -> None:
            empty(vol)

        pulls = [
            Contender("skopeo copy docker:// dir:",
                      ["skopeo", "copy", "-q", "--src-tls-verify=false", f"docker://{ref}", f"dir:{out}"],
                      setup=clean),
            Contender("oras-py pull", [sys.executable, "-c", ORAS_PULL, host, ref, out], setup=clean),
            Contender("modelseal fetch-model oci://",
                      ["modelseal", "fetch-model", "--source", "oci://" + ref, "--allow-http", "-o", out],
                      setup=clean),
            Contender("modelseal run oci:// (fetch+decrypt+unpack)",
                      ["modelseal", "run", "--source", "oci://" + ref, "--allow-http", "--key", key, "-o", out],
                      setup=clean),
        ]
        interleave(pulls, ROUNDS, env=env)

        gib = SIZE / 2**30
        for title, group in ((f"push a {gib:g} GiB model to the registry (tmpfs storage)", pushes),
                             (f"pull the same {gib:g} GiB sealed blob into tmpfs", pulls)):
            base = group[0]
            record_group(title, group, base, SIZE)
            rows = [[c.name, f"{c.median:.2f}", f"{SIZE / c.median / 2**20:.0f}", f"{base.median / c.median:.2f}",
                     f"{c.rss_mib:.0f}"] for c in group]
            print(table(f"{title}; docker-registry on 127.0.0.1, median of {ROUNDS} rounds", rows,
                        ["contender", "seconds", "MiB/s", f"x {base.name.split(' ')[0]}", "peak RSS MiB"]))
            print()
    finally:
        registry.stop()
        shutil.rmtree(disk, ignore_errors=True)
        shutil.rmtree(vol, ignore_errors=True)
        shutil.rmtree(env["DOCKER_CONFIG"], ignore_errors=True)


if __name__ == "__main__":
    main()
