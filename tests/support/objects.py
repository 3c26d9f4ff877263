"""ObjectServer: GET/HEAD of byte objects with Range, If-Range and ETags, optional bearer token and
redirects; it plays the https:// source, the HTTPS key server and (CDHServer) the Confidential Data Hub."""

from __future__ import annotations

import email.utils
import hashlib
import re
import ssl

from .faults import Fault
from .http import Server, _Handler


_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")


class ObjectServer(Server):
    """GET/HEAD of byte objects by path, with Range, If-Range and a strong ETag.

    `token`: require `Authorization: Bearer <token>` (401 otherwise).
    `ignore_range`: answer 200 with the whole object to every GET (a server without Range support).
    `redirects`: path -> URL answered with 302.
    `validators`: "etag" (the default), "last-modified" (a date derived from the content, no ETag),
    or None (neither, like some minimal servers).
    """

    def __init__(self, objects: dict[str, bytes] | None = None, *, tls: ssl.SSLContext | None = None,
                 token: str | None = None, ignore_range: bool = False,
                 redirects: dict[str, str] | None = None, validators: str | None = "etag") -> None:
        self.objects = dict(objects or {})
        self.redirects = dict(redirects or {})
        self.token = token
        self.ignore_range = ignore_range
        self.validators = validators
        super().__init__(tls)

    @staticmethod
    def etag(data: bytes) -> str:
        return '"' + hashlib.sha256(data).hexdigest()[:32] + '"'

    def handle(self, h: _Handler, body: bytes, fault: Fault | None) -> None:
        if h.command not in ("GET", "HEAD"):
            h.respond(405)
            return
        if self.token is not None and h.headers.get("Authorization") != f"Bearer {self.token}":
            h.respond(401, b"unauthorized")
            return
        path = h.path.split("?", 1)[0]
        if path in self.redirects:
            h.respond(302, b"", {"Location": self.redirects[path]})
            return
        with self.lock:
            data = self.objects.get(path)
        if data is None:
            h.respond(404, b"not found")
            return
        etag = self.etag(data)
        headers = {"ETag": etag, "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        if self.validators != "etag":
            del headers["ETag"]
        if self.validators == "last-modified":
            etag = email.utils.formatdate(1_600_000_000 + int(etag[1:7], 16), usegmt=True)
            headers["Last-Modified"] = etag
        rng = h.headers.get("Range")
        if_range = h.headers.get("If-Range")
        if rng and not self.ignore_range and (if_range is None or if_range == etag):
            m = _RANGE.match(rng.strip())
            if m:
                start = int(m.group(1))
                end = int(m.group(2)) if m.group(2) else len(data) - 1
                end = min(end, len(data) - 1)
                if start >= len(data):
                    h.respond(416, b"", {"Content-Range": f"bytes */{len(data)}"})
                    return
                if fault is not None and fault.kind == "offset":
                    start = max(0, start - fault.after)  # a 206 that starts before the byte asked for
                headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
                h.respond(206, data[start:end + 1], headers, fault)
                return
        h.respond(200, data, headers, fault)


class CDHServer(ObjectServer):
    """The Confidential Data Hub's REST API: GET /cdh/resource/<repository>/<type>/<tag>."""

    def put(self, resource: str, data: bytes) -> None:
        with self.lock:
            self.objects["/cdh/resource/" + resource.strip("/")] = data
