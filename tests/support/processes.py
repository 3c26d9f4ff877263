"""Server children and scratch places for the tests: ports on 127.0.0.1, processes that die with us, tmpfs directories."""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import tempfile
import time

LOCAL = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOCAL, 0))
        return s.getsockname()[1]


def make_shm_dir(prefix: str = "modelseal-test-") -> str:
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    return tempfile.mkdtemp(prefix=prefix, dir=base)


def write_file(path: str, data: bytes | str, mode: int = 0o600) -> str:
    if isinstance(data, str):
        data = data.encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path


def die_with_parent() -> None:  # pragma: no cover - runs in the child
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def stop_process(proc: subprocess.Popen) -> None:
    """End a server child: SIGTERM, then SIGKILL after 10 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def start_child(argv: list[str], ready, what: str, env: dict | None = None,
                timeout: float = 30) -> subprocess.Popen:
    """Start a server as a child process (dies with us) and wait until `ready()`; on failure stop it
    and raise with the tail of its output."""
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=die_with_parent)
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_process(proc)
            log.seek(0)
            raise RuntimeError(f"{what} did not start: " + log.read()[-2000:].decode(errors="replace"))
        time.sleep(0.1)
    return proc
