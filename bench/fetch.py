#!/usr/bin/env python3
"""Fetch benchmark (issue: fetch stages): S3 from a moto server on 127.0.0.1.

A 1 GiB `.seal` object; side by side, interleaved: boto3's own
`download_fileobj` with default settings, `modelseal fetch-model` (parallel
ranged GETs, written in order) and `modelseal run` (fetch + decrypt + unpack
in one pass), all into tmpfs. BENCH_FETCH_GIB sets the size.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

from measure import Contender, fill, interleave, table  # noqa: E402
from servers import MotoServer  # noqa: E402

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "2"))
SIZE = int(float(os.environ.get("BENCH_FETCH_GIB", "1")) * 2**30)

BOTO3 = r"""
import sys, boto3
s3 = boto3.client("s3", endpoint_url=sys.argv[1])
with open(sys.argv[4], "wb") as f:
    s3.download_fileobj(sys.argv[2], sys.argv[3], f)
"""


def main() -> None:
    env = dict(os.environ, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
    os.environ.update(env)
    moto = MotoServer()
    disk = tempfile.mkdtemp(prefix="bench-fetch-", dir="/var/tmp")
    vol = tempfile.mkdtemp(prefix="bench-fetch-", dir="/dev/shm")
    try:
        model = os.path.join(disk, "model")
        os.makedirs(model)
        fill(os.path.join(model, "weights.bin"), SIZE)
        key = os.path.join(disk, "key")
        subprocess.run(["modelseal", "keygen", "-o", key], check=True, stderr=subprocess.DEVNULL)
        import boto3

        boto3.client("s3", endpoint_url=moto.url).create_bucket(Bucket="bench")
        subprocess.run(["modelseal", "seal", model, "-o", "s3://bench/model.seal", "--key", key,
                        "--endpoint-url", moto.url], check=True, stderr=subprocess.DEVNULL, env=env)
        shutil.rmtree(model)
        out = os.path.join(vol, "out")

        def clean() -> None:
            for name in os.listdir(vol):
                p = os.path.join(vol, name)
                shutil.rmtree(p) if os.path.isdir(p) else os.unlink(p)

        ep = ["--endpoint-url", moto.url]
        contenders = [
            Contender("boto3 download_fileobj (defaults)",
                      [sys.executable, "-c", BOTO3, moto.url, "bench", "model.seal", out], setup=clean),
            Contender("modelseal fetch-model", ["modelseal", "fetch-model", "--source", "s3://bench/model.seal",
                                                "-o", out, *ep], setup=clean),
            Contender("modelseal run (fetch+decrypt+unpack)",
                      ["modelseal", "run", "--source", "s3://bench/model.seal", "--key", key, "-o", out, *ep],
                      setup=clean),
        ]
        interleave(contenders, ROUNDS, env=env)
        base = contenders[0]
        rows = [[c.name, f"{c.median:.2f}", f"{SIZE / c.median / 2**20:.0f}", f"{base.median / c.median:.2f}",
                 f"{c.rss_mib:.0f}"] for c in contenders]
        print(table(f"S3 (moto server on 127.0.0.1) -> tmpfs, {SIZE / 2**30:g} GiB, median of {ROUNDS} rounds",
                    rows, ["contender", "seconds", "MiB/s", "x boto3", "peak RSS MiB"]))
    finally:
        moto.stop()
        shutil.rmtree(disk, ignore_errors=True)
        shutil.rmtree(vol, ignore_errors=True)


if __name__ == "__main__":
    main()
