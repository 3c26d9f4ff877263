#!/usr/bin/env python3
"""Fetch benchmark (issue 14): S3 from s3rver on 127.0.0.1, a server fast enough to measure the client.

(moto's server copies the whole object for every ranged GET and holds every
client to about 11 MiB/s: it measured moto, not us. moto stays for KMS,
Secrets Manager and the functional S3 tests.)

A 1 GiB `.seal` object (and a 1 MiB one, for what each client spends to
start); side by side, interleaved, into tmpfs:
- boto3's own `download_fileobj` with default settings (the baseline),
- the AWS CRT transfer client (s3transfer.crt, what boto3[crt] uses;
  awscrt is a bench-only dependency, never in an image),
- `modelseal fetch-model` (parallel ranged GETs, handed out in order),
- `modelseal run` (fetch + decrypt + unpack in one pass).
The server runs on the same two cores as the client, so a client's CPU
cost shows up as wall time. BENCH_FETCH_GIB sets the size;
BENCH_FETCH_BASE=DIR (a checkout or worktree of another commit) adds that
build's fetch-model to the same rounds, an A/B of a change to the S3 path.

As in the images: the fetch-model image has neither awscrt nor pyOpenSSL,
but this virtualenv has both (for the CRT contender and the signing
oracle), and botocore imports them when it finds them (~0.3 s of start-up
measured here, against ~0.25 s for all of boto3 in the image). So modelseal
and the boto3 baseline run with both hidden, the CRT contender with
pyOpenSSL hidden (it needs awscrt): each as it would be installed for real.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

from measure import Contender, count_cpu, fill, interleave, measured_cpu, record, record_group, table  # noqa: E402
from support.s3rver import ACCESS_KEY, missing, s3rver_server, SECRET_KEY

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
SIZE = int(float(os.environ.get("BENCH_FETCH_GIB", "1")) * 2**30)
SMALL = 1 << 20  # the start-up measurement's model
BASE = os.environ.get("BENCH_FETCH_BASE", "")  # another build's tree, for an A/B of fetch-model
BASE_NAME = f"modelseal fetch-model, {os.path.basename(BASE.rstrip('/'))}"

BOTO3 = r"""
import sys, boto3
s3 = boto3.client("s3", endpoint_url=sys.argv[1])
with open(sys.argv[4], "wb") as f:
    s3.download_fileobj(sys.argv[2], sys.argv[3], f)
"""

# boto3's own CRT path (TransferConfig(preferred_transfer_client="crt")) ignores
# endpoint_url and addresses AWS itself; s3transfer.crt, which it wraps, takes
# the endpoint, and every request's Host is checked to be the local server.
CRT = r"""
import sys
import botocore.session
from botocore.config import Config
from s3transfer.crt import (BotocoreCRTCredentialsWrapper, BotocoreCRTRequestSerializer, CRTTransferManager,
                            create_s3_crt_client)
url, bucket, key, out = sys.argv[1:5]
session = botocore.session.get_session()
serializer = BotocoreCRTRequestSerializer(session, {"endpoint_url": url, "region_name": "us-east-1",
                                                    "config": Config(s3={"addressing_style": "path"})})
serialize = serializer.serialize_http_request
def local_only(transfer_type, future):
    request = serialize(transfer_type, future)
    if request.headers.get("host") != url.split("//", 1)[1]:
        raise SystemExit("refusing a request to " + repr(request.headers.get("host")))
    return request
serializer.serialize_http_request = local_only
creds = BotocoreCRTCredentialsWrapper(session.get_credentials()).to_crt_credentials_provider()
client = create_s3_crt_client("us-east-1", crt_credentials_provider=creds, use_ssl=False)
with CRTTransferManager(client, serializer) as tm:
    tm.download(bucket, key, out).result()
"""


def main() -> None:
    why = missing()
    if why:
        raise SystemExit(f"bench/fetch.py: {why}")
    env = dict(os.environ, AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY,
               AWS_DEFAULT_REGION="us-east-1")
    for k in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        env.pop(k, None)
    os.environ.clear()
    os.environ.update(env)
    server = s3rver_server()
    disk = tempfile.mkdtemp(prefix="bench-fetch-", dir="/var/tmp")
    vol = tempfile.mkdtemp(prefix="bench-fetch-", dir="/dev/shm")
    try:
        model = os.path.join(disk, "model")
        os.makedirs(model)
        fill(os.path.join(model, "weights.bin"), SIZE)
        key = os.path.join(disk, "key")
        subprocess.run(["modelseal", "keygen", "-o", key], check=True, stderr=subprocess.DEVNULL)
        import boto3

        boto3.client("s3", endpoint_url=server.url).create_bucket(Bucket="bench")
        subprocess.run(["modelseal", "seal", model, "-o", "s3://bench/model.seal", "--key", key,
                        "--endpoint-url", server.url], check=True, stderr=subprocess.DEVNULL, env=env)
        shutil.rmtree(model)
        # A 1 MiB model: what each client spends to start (interpreter, SDK, connection),
        # so that the CPU per GiB can be shown beyond it, as a 10-150 GB model sees it.
        os.makedirs(model)
        fill(os.path.join(model, "weights.bin"), SMALL)
        subprocess.run(["modelseal", "seal", model, "-o", "s3://bench/small.seal", "--key", key,
                        "--endpoint-url", server.url], check=True, stderr=subprocess.DEVNULL, env=env)
        shutil.rmtree(model)
        out = os.path.join(vol, "out")

        def clean() -> None:
            for name in os.listdir(vol):
                p = os.path.join(vol, name)
                shutil.rmtree(p) if os.path.isdir(p) else os.unlink(p)

        ep = ["--endpoint-url", server.url]
        shim = os.path.join(disk, "as-installed")  # modules that raise ImportError, ahead on sys.path
        os.makedirs(os.path.join(shim, "without-crt"))
        for d, names in (("without-crt", ("awscrt", "OpenSSL")), ("", ("OpenSSL",))):
            for name in names:
                with open(os.path.join(shim, d, f"{name}.py"), "w") as f:
                    f.write("raise ImportError('not installed where this runs for real (bench/fetch.py)')\n")
        plain_env = dict(env, PYTHONPATH=os.path.join(shim, "without-crt"))
        crt_env = dict(env, PYTHONPATH=shim)
        def contenders_for(obj: str, tag: str = "") -> list[Contender]:
            return [
                Contender("boto3 download_fileobj (defaults)" + tag,
                          [sys.executable, "-c", BOTO3, server.url, "bench", obj, out], setup=clean),
                Contender("AWS CRT transfer client (s3transfer.crt)" + tag,
                          [sys.executable, "-c", CRT, server.url, "bench", obj, out], setup=clean),
                Contender("modelseal fetch-model" + tag, ["modelseal", "fetch-model", "--source", f"s3://bench/{obj}",
                                                          "-o", out, *ep], setup=clean),
                Contender("modelseal run (fetch+decrypt+unpack)" + tag,
                          ["modelseal", "run", "--source", f"s3://bench/{obj}", "--key", key, "-o", out, *ep],
                          setup=clean),
            ] + ([Contender(BASE_NAME + tag,
                            [sys.executable, "-m", "modelseal", "fetch-model", "--source", f"s3://bench/{obj}",
                             "-o", out, *ep], setup=clean)] if BASE else [])

        contenders = contenders_for("model.seal")
        starts = contenders_for("small.seal", " (1 MiB)")
        base_env = dict(plain_env, PYTHONPATH=os.pathsep.join([plain_env["PYTHONPATH"], os.path.join(BASE, "shared")]))
        for group in (contenders, starts):  # each contender with its own environment (see the docstring)
            envs = {c.name: plain_env for c in group}
            envs[group[1].name] = crt_env
            for c in group:
                if BASE and c.name.startswith(BASE_NAME):
                    envs[c.name] = base_env
            for c in group:
                c.once = (lambda env=None, c=c, once=c.once, envs=envs: once(envs[c.name]))  # type: ignore
        cpu = count_cpu(contenders + starts)  # the client's CPU: the goal is stated in it (the server shares the cores)
        interleave(contenders + starts, ROUNDS)
        base, crt = contenders[0], contenders[1]
        gib = SIZE / 2**30
        start_cpu = {c.name: measured_cpu(cpu, s.name) for c, s in zip(contenders, starts)}
        per_gib = {c.name: measured_cpu(cpu, c.name) / gib for c in contenders}
        # Beyond start-up: (CPU at SIZE - CPU at 1 MiB) per GiB between them, what each further GiB costs.
        beyond = {c.name: (measured_cpu(cpu, c.name) - start_cpu[c.name]) / ((SIZE - SMALL) / 2**30)
                  for c in contenders}
        notes = {c.name: f"{crt.median / c.median:.2f}x CRT" for c in contenders[2:]}
        notes["modelseal fetch-model"] += "; goals: 1.5x boto3, 1.0x CRT, RSS <= 128 MiB"
        record_group(f"S3 (s3rver, 127.0.0.1) -> tmpfs, {SIZE / 2**30:g} GiB", contenders, base, SIZE,
                     goals={"modelseal fetch-model": 1.5}, notes=notes)
        for c in contenders:
            record(f"S3 client CPU per GiB (s3rver), {gib:g} GiB", c.name, per_gib[c.name], rss_mib=c.rss_mib,
                   vs=crt.name, ratio=per_gib[crt.name] / per_gib[c.name],
                   note="seconds column: client CPU-seconds per GiB, start-up included; ratio above 1: less CPU "
                        "than the CRT client")
            record("S3 client CPU per GiB beyond start-up (s3rver)", c.name, beyond[c.name], rss_mib=c.rss_mib,
                   vs=crt.name, ratio=beyond[crt.name] / beyond[c.name],
                   goal=1.0 if c.name == "modelseal fetch-model" else None,
                   note=f"seconds column: client CPU-seconds per further GiB (start-up: {start_cpu[c.name]:.2f} s); "
                        "ratio above 1: less CPU than the CRT client")
        rows = [[c.name, f"{c.median:.2f}", f"{SIZE / c.median / 2**20:.0f}", f"{base.median / c.median:.2f}",
                 f"{crt.median / c.median:.2f}", f"{start_cpu[c.name]:.2f}", f"{per_gib[c.name]:.2f}",
                 f"{per_gib[c.name] / per_gib[crt.name]:.2f}", f"{beyond[c.name]:.2f}",
                 f"{beyond[c.name] / beyond[crt.name]:.2f}", f"{c.rss_mib:.0f}"] for c in contenders]
        print(table(f"S3 (s3rver on 127.0.0.1) -> tmpfs, {gib:g} GiB, median of {ROUNDS} rounds, load "
                    f"{os.getloadavg()[0]:.1f}", rows,
                    ["contender", "seconds", "MiB/s", "x boto3", "x CRT", "start-up CPU s", "client CPU s/GiB",
                     "CPU x CRT", "CPU s/GiB beyond start-up", "beyond x CRT", "peak RSS MiB"]))
    finally:
        server.stop()
        shutil.rmtree(disk, ignore_errors=True)
        shutil.rmtree(vol, ignore_errors=True)


if __name__ == "__main__":
    main()
