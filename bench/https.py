#!/usr/bin/env python3
"""The https:// source against nginx (Debian's package) serving the sealed file, next to curl (issue 14).

nginx runs on a free port of 127.0.0.1 with its own configuration (TLS with a
test CA made by `cryptography`, tests/servers.make_pki), serving a 1 GiB
`.seal` from disk (page cache). Side by side, interleaved, into tmpfs:
`curl` (the baseline), `modelseal fetch-model` and `modelseal run`
(fetch + decrypt + unpack in one pass). BENCH_HTTPS_GIB sets the size.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

from measure import Contender, fill, interleave, record_group, table  # noqa: E402
from support.pki import make_pki
from support.processes import free_port, LOCAL

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
SIZE = int(float(os.environ.get("BENCH_HTTPS_GIB", "1")) * 2**30)
NGINX = shutil.which("nginx", path="/usr/sbin:/usr/bin:/sbin:/bin")

CONF = """
daemon off;
worker_processes 1;
user root;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {d}/tmp-body;
    proxy_temp_path {d}/tmp-proxy;
    fastcgi_temp_path {d}/tmp-fastcgi;
    uwsgi_temp_path {d}/tmp-uwsgi;
    scgi_temp_path {d}/tmp-scgi;
    sendfile on;
    server {{
        listen {host}:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        root {root};
        location / {{ }}
    }}
}}
"""


class Nginx:
    """nginx in the foreground with a configuration of its own, on a free port of 127.0.0.1."""

    def __init__(self, root: str, cert: str, key: str) -> None:
        self.dir = tempfile.mkdtemp(prefix="bench-nginx-")
        self.port = free_port()
        conf = os.path.join(self.dir, "nginx.conf")
        with open(conf, "w") as f:
            f.write(CONF.format(d=self.dir, host=LOCAL, port=self.port, cert=cert, key=key, root=root))
        self.proc = subprocess.Popen([NGINX, "-p", self.dir, "-c", conf, "-e", os.path.join(self.dir, "error.log")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection((LOCAL, self.port), timeout=1).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    log = open(os.path.join(self.dir, "error.log")).read()[-2000:]
                    raise SystemExit(f"nginx did not start: {log}")
                time.sleep(0.1)
        self.url = f"https://{LOCAL}:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def main() -> None:
    if NGINX is None:
        raise SystemExit("bench/https.py: nginx is not installed (tools/host-packages.sh installs it)")
    disk = tempfile.mkdtemp(prefix="bench-https-", dir="/var/tmp")
    vol = tempfile.mkdtemp(prefix="bench-https-", dir="/dev/shm")
    server = None
    try:
        os.chmod(disk, 0o755)
        pki = make_pki(tempfile.mkdtemp(prefix="pki-", dir=disk))
        model = os.path.join(disk, "model")
        os.makedirs(model)
        fill(os.path.join(model, "weights.bin"), SIZE)
        key = os.path.join(disk, "key")
        www = os.path.join(disk, "www")
        os.makedirs(www)
        sealed = os.path.join(www, "model.seal")
        subprocess.run(["modelseal", "keygen", "-o", key], check=True, stderr=subprocess.DEVNULL)
        subprocess.run(["modelseal", "seal", model, "-o", sealed, "--key", key], check=True, stderr=subprocess.DEVNULL)
        shutil.rmtree(model)
        server = Nginx(www, pki.server_cert, pki.server_key)
        url = f"{server.url}/model.seal"
        out = os.path.join(vol, "out")

        def clean() -> None:
            for name in os.listdir(vol):
                p = os.path.join(vol, name)
                shutil.rmtree(p) if os.path.isdir(p) else os.unlink(p)

        contenders = [
            Contender("curl -o (tmpfs)", ["curl", "-sS", "--fail", "--cacert", pki.ca, "-o", out, url], setup=clean),
            Contender("modelseal fetch-model https://",
                      ["modelseal", "fetch-model", "--source", url, "--ca", pki.ca, "-o", out], setup=clean),
            Contender("modelseal run https:// (fetch+decrypt+unpack)",
                      ["modelseal", "run", "--source", url, "--ca", pki.ca, "--key", key, "-o", out], setup=clean),
        ]
        interleave(contenders, ROUNDS)
        base = contenders[0]
        record_group(f"https (nginx, TLS, 127.0.0.1) -> tmpfs, {SIZE / 2**30:g} GiB", contenders, base, SIZE)
        rows = [[c.name, f"{c.median:.2f}", f"{SIZE / c.median / 2**20:.0f}", f"{base.median / c.median:.2f}",
                 f"{c.rss_mib:.0f}"] for c in contenders]
        print(table(f"https (nginx on 127.0.0.1, TLS) -> tmpfs, {SIZE / 2**30:g} GiB, median of {ROUNDS} rounds",
                    rows, ["contender", "seconds", "MiB/s", "x curl", "peak RSS MiB"]))
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(disk, ignore_errors=True)
        shutil.rmtree(vol, ignore_errors=True)


if __name__ == "__main__":
    main()
