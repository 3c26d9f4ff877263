"""Faults scripted per request, and the reverse proxy that applies them to any HTTP upstream.

`Fault("status", 503)`, `Fault("cut", after=N)` (send N body bytes of a
full-length answer, then close), `Fault("stall", seconds=S, after=N)` (send
headers and N body bytes, then stall S seconds and close),
`Fault("tamper", drop_headers=("If-Range",), before=fn)` (a server that
ignores a request header, and `fn()` run first, e.g. to replace the object
mid-download), `Fault("reset")` (the connection reset, no answer) and
`Fault("trickle", after=N, seconds=S)` (the whole answer, N bytes every S
seconds: a slow link). Every server of http.py applies them; FaultProxy puts them in
front of a server that has none of its own (moto, a registry, an emulator).
"""

from __future__ import annotations

import http.client
import ssl
from dataclasses import dataclass, field
from typing import Any

from .http import Server, _Handler
from .processes import LOCAL

@dataclass
class Fault:
    """One scripted fault, applied to the next `times` requests that match."""

    # "status" | "cut" | "stall" | "tamper" | "short" (a clean, short body) | "offset" (a 206 elsewhere)
    # | "reset" (no answer: the connection reset) | "trickle" (`after` body bytes every `seconds`)
    kind: str
    status: int = 503
    after: int = 0  # body bytes sent before a cut or stall
    seconds: float = 0.0
    method: str | None = None  # match only this method
    path: str | None = None  # match only paths containing this
    times: int = 1
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    drop_headers: tuple[str, ...] = ()  # request headers the server acts as if it never got
    before: Any = None  # called before the request is handled

    def matches(self, method: str, path: str) -> bool:
        return self.times > 0 and (self.method is None or self.method == method) and (
            self.path is None or self.path in path)


class FaultProxy(Server):
    """A reverse proxy to an HTTP upstream (moto, a registry, an emulator), applying the fault script to its answers.

    Buffers each upstream answer whole (test objects are small enough) so a
    cut can happen after exactly N body bytes of a correct, full-length answer.
    """

    HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "trailer", "upgrade"}

    def __init__(self, upstream_port: int, tls: ssl.SSLContext | None = None) -> None:
        self.upstream_port = upstream_port
        super().__init__(tls)  # tls: an https front to the plain-HTTP upstream (a TLS-terminating proxy)

    def handle(self, h: _Handler, body: bytes, fault: Fault | None) -> None:
        headers = {k: v for k, v in h.headers.items() if k.lower() not in self.HOP}
        if body or h.command in ("POST", "PUT"):
            headers["Content-Length"] = str(len(body))
        conn = http.client.HTTPConnection(LOCAL, self.upstream_port, timeout=60)
        try:
            conn.request(h.command, h.path, body=body or None, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            out = {k: v for k, v in resp.getheaders() if k.lower() not in self.HOP | {"content-length"}}
            length = None
            if h.command == "HEAD":
                length = int(resp.getheader("Content-Length") or 0)
            h.respond(resp.status, data, out, fault, length=length)
        finally:
            conn.close()


def s3_error(code: str, status: int) -> Fault:
    body = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
            f"<Message>injected</Message><RequestId>test</RequestId></Error>").encode()
    return Fault("status", status=status, body=body, headers={"Content-Type": "application/xml"})
