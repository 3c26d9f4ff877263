"""s3rver (npm; tools/s3rver, installed by `make setup`): an S3-compatible server fast enough for models of real size.

moto's server holds every client to about 11 MiB/s (it copies the whole
object for each ranged GET), which makes a 1 GiB model a two-minute test;
s3rver serves ranged GETs at a few hundred MiB/s on loopback. It keeps its
objects in a directory on disk: only ciphertext ever goes there. moto stays
for KMS and Secrets Manager and for the functional S3 tests.
"""

from __future__ import annotations

import atexit
import shutil
import socket
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from .processes import LOCAL, free_port, start_child, stop_process

REPO = Path(__file__).resolve().parents[2]
S3RVER = REPO / "tools" / "s3rver" / "node_modules" / ".bin" / "s3rver"
#: s3rver checks signatures against its one built-in key pair.
ACCESS_KEY = SECRET_KEY = "S3RVER"


@dataclass
class S3rver:
    url: str
    proc: subprocess.Popen
    data: str

    def stop(self) -> None:
        stop_process(self.proc)
        shutil.rmtree(self.data, ignore_errors=True)


def missing() -> str:
    """Why s3rver cannot run here ('' when it can)."""
    if not S3RVER.exists():
        return f"s3rver is not installed ({S3RVER}): make setup installs it with npm"
    if shutil.which("node") is None:
        return "node is not installed (tools/host-packages.sh installs it)"
    return ""


_server: S3rver | None = None
_lock = threading.Lock()


def s3rver_server() -> S3rver:
    """One s3rver for the whole test run, on a free port of 127.0.0.1."""
    global _server
    with _lock:
        if _server is None:
            port = free_port()
            data = tempfile.mkdtemp(prefix="modelseal-s3rver-", dir="/var/tmp")  # ciphertext only

            def ready() -> bool:
                try:
                    socket.create_connection((LOCAL, port), timeout=1).close()
                    return True
                except OSError:
                    return False

            try:
                proc = start_child([str(S3RVER), "-d", data, "-a", LOCAL, "-p", str(port), "--silent"], ready, "s3rver")
            except BaseException:
                shutil.rmtree(data, ignore_errors=True)
                raise
            _server = S3rver(f"http://{LOCAL}:{port}", proc, data)
            atexit.register(_server.stop)
        return _server
