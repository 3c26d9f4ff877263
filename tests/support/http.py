"""A threaded HTTP(S) server on 127.0.0.1 with request and byte counters and a fault script (faults.py).

Servers count requests and body bytes sent, and keep every request's headers
and the client certificate presented (if any), so tests can prove "no retry",
"resumed, not restarted" and "this origin never saw the token". A subclass
answers requests in handle(); objects.py, vault.py, faults.FaultProxy and
registry.py's token issuer are the kinds.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from .processes import LOCAL

if TYPE_CHECKING:
    from .faults import Fault


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "_HTTPServer"

    def setup(self) -> None:
        app = self.server.app
        with app.lock:
            app.connections += 1
        self.tls_failed = False
        if app.tls is not None:
            self.request.settimeout(10)
            ssock = app.tls.wrap_socket(self.request, server_side=True, do_handshake_on_connect=False)
            try:
                ssock.do_handshake()
                cert = ssock.getpeercert(binary_form=True)
                with app.lock:
                    app.peer_certs.append(cert)
            except (ssl.SSLError, OSError):
                with app.lock:
                    app.tls_failures += 1
                self.tls_failed = True
                # Let the client read our alert before the socket goes away,
                # so it sees the TLS error rather than a connection reset.
                try:
                    raw = socket.socket(fileno=os.dup(ssock.fileno()))
                    raw.settimeout(1)
                    try:
                        while raw.recv(65536):
                            pass
                    finally:
                        raw.close()
                except OSError:
                    pass
                ssock.close()
            self.request = ssock
        super().setup()

    def handle(self) -> None:
        if not self.tls_failed:
            try:
                super().handle()
            except (ConnectionError, ssl.SSLError, TimeoutError):
                pass

    def finish(self) -> None:
        try:
            super().finish()
        except (OSError, ValueError):
            pass

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    def _dispatch(self) -> None:
        app = self.server.app
        with app.lock:
            app.requests.append((self.command, self.path, self.headers.get("Range")))
        body = b""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = _read_chunked(self.rfile)
        elif self.headers.get("Content-Length"):
            body = self.rfile.read(int(self.headers["Content-Length"]))
        with app.lock:
            app.seen.append((self.command, self.path, dict(self.headers.items()), body))
        fault = app.take_fault(self.command, self.path)
        if fault is not None and fault.before is not None:
            fault.before()
        for name in fault.drop_headers if fault is not None else ():
            del self.headers[name]
        if fault is not None and fault.kind == "status":
            self.respond(fault.status, fault.body, dict(fault.headers))
            return
        if fault is not None and fault.kind == "reset":
            # No answer at all: the connection is reset (RST, not a clean close), as a crashed peer does.
            self.close_connection = True
            try:
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.connection.close()
            except OSError:
                pass
            return
        if fault is not None and fault.kind == "stall" and fault.after == 0 and fault.seconds:
            time.sleep(fault.seconds)
            self.close_connection = True
            return
        app.handle(self, body, fault)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _dispatch

    def respond(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
                fault: Fault | None = None, length: int | None = None) -> None:
        """Send an answer; a cut or stall fault sends only `fault.after` body bytes, then closes."""
        app = self.server.app
        self.send_response(status)
        headers = dict(headers or {})
        if fault is not None and fault.kind == "short":
            # A well-formed answer that ends cleanly after `after` bytes: Content-Length
            # says so, the connection stays open; only a length known otherwise tells.
            body = body[: fault.after]
            headers["Content-Length"] = str(len(body))
        headers.setdefault("Content-Length", str(len(body) if length is None else length))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command == "HEAD":
            return
        if fault is not None and fault.kind in ("cut", "stall"):
            part = body[: fault.after]
            self.wfile.write(part)
            self.wfile.flush()
            with app.lock:
                app.bytes_sent += len(part)
            if fault.kind == "stall":
                time.sleep(fault.seconds)
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        view = memoryview(body)
        step = 1 << 20
        if fault is not None and fault.kind == "trickle":  # a slow link: `after` bytes every `seconds`
            step = max(1, fault.after)
        for i in range(0, len(view), step):
            if i and fault is not None and fault.kind == "trickle":
                time.sleep(fault.seconds)
            self.wfile.write(view[i:i + step])
            with app.lock:
                app.bytes_sent += len(view[i:i + step])

    def send_json(self, status: int, obj: Any) -> None:
        self.respond(status, json.dumps(obj).encode(), {"Content-Type": "application/json"})


def _read_chunked(rfile: Any) -> bytes:
    out = bytearray()
    while True:
        line = rfile.readline()
        size = int(line.split(b";")[0].strip() or b"0", 16)
        if size == 0:
            while rfile.readline() not in (b"\r\n", b"\n", b""):
                pass
            return bytes(out)
        out += rfile.read(size)
        rfile.readline()


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    app: "Server"


class Server:
    """A threaded HTTP(S) server on 127.0.0.1 with request/byte counters and a fault script."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.tls = tls
        self.lock = threading.Lock()
        self.requests: list[tuple[str, str, str | None]] = []
        self.bytes_sent = 0
        self.connections = 0  # TCP connections accepted: keep-alive shows as fewer than requests
        self.tls_failures = 0
        self.faults: list[Fault] = []
        self.seen: list[tuple[str, str, dict[str, str], bytes]] = []  # method, path, headers, body
        self.peer_certs: list[bytes | None] = []  # the client certificate of each TLS connection
        self.httpd = _HTTPServer((LOCAL, 0), _Handler)
        self.httpd.app = self
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{LOCAL}:{self.port}"

    def add_fault(self, *faults: Fault) -> None:
        with self.lock:
            self.faults.extend(faults)

    def take_fault(self, method: str, path: str) -> Fault | None:
        with self.lock:
            for f in self.faults:
                if f.matches(method, path):
                    f.times -= 1
                    return f
        return None

    def count(self, method: str | None = None, path: str | None = None) -> int:
        with self.lock:
            return sum(1 for m, p, _ in self.requests
                       if (method is None or m == method) and (path is None or path in p))

    def settled_tls_failures(self, at_least: int = 1, timeout: float = 3.0) -> int:
        """The TLS handshake failures, once the server threads have counted them.

        A client sees the alert before the server thread that sent it gets to
        count it; wait for `at_least`, then a little more for any retry.
        """
        deadline = time.monotonic() + timeout
        while self.tls_failures < at_least and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.3)
        return self.tls_failures

    def reset_counters(self) -> None:
        with self.lock:
            self.requests.clear()
            self.seen.clear()
            self.bytes_sent = 0

    def saw(self, secret: str | bytes) -> bool:
        """Whether `secret` reached this server anywhere: a path, a header, a body."""
        s = secret.encode() if isinstance(secret, str) else secret
        with self.lock:
            return any(s in m.encode() + p.encode() + repr(h).encode() + b for m, p, h, b in self.seen)

    def handle(self, h: _Handler, body: bytes, fault: Fault | None) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
