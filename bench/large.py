#!/usr/bin/env python3
"""Models of LLM size (issue 19): `run` and `decrypt` at 1, 4 and 16 GiB, against `tar -xf` and `dd`.

The model is what LLMs ship: safetensors-like shards of 4 GiB (random bytes;
the last one smaller) and a few small config and tokenizer files. 16 GiB
fits a 24 GiB machine only with the ciphertext and the plaintext tar on
disk (BENCH_DISK, /var/tmp) and only the output on tmpfs (BENCH_DIR,
/dev/shm), one output at a time, so that is the layout at every size:

- `dd` of the ciphertext from disk into a tmpfs file (bs=1M): the floor of
  `decrypt`, which reads the same bytes and writes as many;
- `modelseal decrypt` of it into a tmpfs file;
- GNU `tar -xf` of the plaintext tar from disk into a tmpfs tree: the floor
  of `run`, which also reads, decrypts and hashes nothing less;
- `modelseal run --source file://...` into a tmpfs tree.

Interleaved round by round (BENCH_ROUNDS, after a warm-up), the median wall
time, MiB/s of model bytes, the CPU seconds (user + sys of the process) and
the peak RSS of each. The claim: peak RSS stays flat from 1 to 16 GiB (the
data streams through fixed buffers). BENCH_SIZES_GIB picks the sizes
(`make bench` runs 1 and 4; `make bench-large` adds 16). The page cache is
what it is: at 16 GiB the disk files do not stay cached beside 16 GiB of
tmpfs, and the rates say so; the load average at the start of each size is
printed with it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

from measure import Contender, count_cpu, fill, interleave, measured_cpu, record_group, table

VOLUME = os.environ.get("BENCH_DIR", "/dev/shm")
DISK = os.environ.get("BENCH_DISK", "/var/tmp")
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "2"))
SHARD = 4 << 30
SMALL = {"config.json": 700, "generation_config.json": 180, "tokenizer_config.json": 50_000,
         "tokenizer.json": 9_000_000, "special_tokens_map.json": 400}


def make_llm(root: str, size: int) -> None:
    """Shards of at most 4 GiB named as Hugging Face names them, their index, and the small files."""
    os.makedirs(root)
    shards = -(-size // SHARD)
    index = {"metadata": {"total_size": size}, "weight_map": {}}
    left = size
    for i in range(shards):
        name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        fill(os.path.join(root, name), min(SHARD, left))
        left -= min(SHARD, left)
        index["weight_map"][f"layers.{i}.weight"] = name
    with open(os.path.join(root, "model.safetensors.index.json"), "w") as f:
        json.dump(index, f)
    for name, n in SMALL.items():
        with open(os.path.join(root, name), "wb") as f:
            f.write(os.urandom(n))


def bench(size_gib: int) -> list[list[str]]:
    size = size_gib << 30
    disk = tempfile.mkdtemp(prefix="bench-large-", dir=DISK)
    vol = tempfile.mkdtemp(prefix="bench-large-", dir=VOLUME)
    try:
        model, tar, sealed, key = (os.path.join(disk, n) for n in ("model", "model.tar", "model.seal", "key"))
        make_llm(model, size)
        subprocess.run(["tar", "-C", model, "-cf", tar, "."], check=True)
        shutil.rmtree(model)  # the tar is the model from here on: disk holds tar + ciphertext, not three copies
        subprocess.run(["modelseal", "keygen", "-o", key], check=True, stderr=subprocess.DEVNULL)
        # sealed as it is: seal reads the tar's sizes into the header (the limits and the preflight use them)
        subprocess.run(["modelseal", "seal", tar, "-o", sealed, "--key", key], check=True, stderr=subprocess.DEVNULL)
        out_file, out_tree = os.path.join(vol, "model.tar"), os.path.join(vol, "model")

        def clean() -> None:
            for name in os.listdir(vol):
                p = os.path.join(vol, name)
                shutil.rmtree(p) if os.path.isdir(p) and not os.path.islink(p) else os.unlink(p)

        contenders = [
            Contender("dd of the ciphertext (floor of decrypt)",
                      ["dd", f"if={sealed}", f"of={out_file}", "bs=1M", "status=none"], setup=clean),
            Contender("modelseal decrypt", ["modelseal", "decrypt", "--in", sealed, "--key", key, "-o", out_file],
                      setup=clean),
            Contender("GNU tar -xf of the plaintext (floor of run)",
                      shell=f"mkdir {out_tree} && tar -C {out_tree} -xf {tar}", setup=clean),
            Contender("modelseal run", ["modelseal", "run", "--source", f"file://{sealed}", "--key", key,
                                        "-o", out_tree], setup=clean),
        ]
        load = os.getloadavg()[0]
        cpu = count_cpu(contenders)
        interleave(contenders, ROUNDS)
        clean()
        record_group(f"{size_gib} GiB LLM (4 GiB shards), disk -> tmpfs: decrypt vs dd", contenders[:2],
                     contenders[0], size)
        record_group(f"{size_gib} GiB LLM (4 GiB shards), disk -> tmpfs: run vs tar -xf", contenders[2:],
                     contenders[2], size)
        return [[f"{size_gib} GiB", c.name, f"{c.median:.2f}", f"{size / c.median / 2**20:.0f}",
                 f"{measured_cpu(cpu, c.name) / size_gib:.2f}", f"{c.rss_mib:.0f}", f"{load:.1f}"]
                for c in contenders]
    finally:
        shutil.rmtree(disk, ignore_errors=True)
        shutil.rmtree(vol, ignore_errors=True)


def main() -> None:
    sizes = [int(s) for s in os.environ.get("BENCH_SIZES_GIB", "1 4").split()]
    rows = []
    for size in sizes:
        rows += bench(size)
        print(table(f"LLM-sized models, disk -> tmpfs, median of {ROUNDS} interleaved rounds", rows,
                    ["model", "contender", "seconds", "MiB/s", "CPU s/GiB", "peak RSS MiB", "load"]), flush=True)


if __name__ == "__main__":
    sys.exit(main())
