"""`https://host/path` (and `http://` only with allow_http, logged): a ciphertext on a web server.

A streaming GET whose stream resumes where it broke: when the connection drops
or stalls mid-body, the next read reconnects with `Range: bytes=N-` (N = the
first byte not yet delivered) and `If-Range` (the ETag or Last-Modified of
the first answer), and checks that the answer is 206 with a Content-Range
starting at N and the same total length. Nothing already delivered is fetched
again, so a multi-GiB download over a flaky link costs what it weighs.

Servers that ignore Range answer 200 with the whole object. If the validator
and length are unchanged we read past the N bytes already delivered and carry
on (logged: those bytes are re-sent). Every answer after the first must carry
the first one's ETag (or, without one, its Last-Modified), whatever its status:
a server that ignores If-Range and serves a replaced object, a 206 that starts
at the wrong byte or a length that changed fail with an integrity error
(exit 4) rather than splice two versions together. Without any validator a
dropped download is not resumed (exit 5): nothing would tell the versions
apart. The ciphertext is authenticated anyway, so a mix could never decrypt;
failing early names the cause, and fetch-model leaves nothing behind.

Redirects (presigned URLs, CDNs) are followed by web.Client, which sends the
bearer token and client certificate only to the origin of the URL given.

Authentication: a bearer token read from `token_file` at each connection
(projected service-account tokens rotate), a client certificate, and a CA
bundle. `Accept-Encoding: identity` keeps the bytes exactly as stored.
Connection and read timeouts are `timeout` seconds; retries and backoff come
from modelseal.retry. Progress is reported by the caller.
"""

from __future__ import annotations

from typing import Any, Protocol

from .. import retry, web
from ..connection import Connection
from ..errors import IntegrityError, UnavailableError
from ..uri import URI
from . import Source, Stream

SCHEMES = ("https", "http")

_SKIP_CHUNK = 1 << 20
#: The most one read takes from the socket: a stall or drop mid-read costs at most this much again.
READ_PIECE = 256 << 10


def _validator(headers: Any) -> str | None:
    """A strong validator for If-Range: a strong ETag, else Last-Modified."""
    etag = headers.get("ETag")
    if etag and not etag.startswith("W/"):
        return etag
    return headers.get("Last-Modified")


def _identity(headers: Any) -> tuple[str | None, str | None]:
    """What names this version of the object; every answer of one download must repeat the first's.

    The ETag when there is one (weak or strong), else Last-Modified.
    """
    etag = headers.get("ETag")
    return (etag, None) if etag else (None, headers.get("Last-Modified"))


def _check_encoding(resp: Any, what: str) -> None:
    encoding = (resp.headers.get("Content-Encoding") or "identity").strip().lower()
    if encoding not in ("identity", ""):
        raise IntegrityError(f"{what}: the server sent Content-Encoding {encoding} although identity was asked for")


class Backend(Source):
    def __init__(self, uri: URI, connection: Connection) -> None:
        super().__init__(uri, connection)  # URI.parse has refused user info
        self.what = uri.redacted()
        web.check_scheme(uri.scheme, uri.hostname, self.connection, self.what)
        self.url = web.server_url(uri)
        self._client: Any = None
        self._size: int | None = None
        self._size_known = False

    def get(self, headers: dict[str, str]) -> Any:
        """One streaming GET (not retried here); redirects to plain http are refused."""
        if self._client is None:
            self._client = web.Client(self.connection, bearer=True, redirects=True)
        return self._client.request("GET", self.url, self.what, headers=headers)

    @property
    def size(self) -> int | None:
        if not self._size_known:
            self._size = retry.call(self.what, self.connection, self._probe)
            self._size_known = True
        return self._size

    def _probe(self) -> int | None:
        resp = self.get({"Range": "bytes=0-0"})
        try:
            if resp.status_code == 206:
                cr = web.content_range(resp.headers, self.what)
                return cr[2] if cr else None
            if resp.status_code == 416:
                return 0
            retry.check_status(resp.status_code, self.what, resp.headers)
            return web.content_length(resp.headers, self.what)
        finally:
            resp.close()

    def read_prefix(self, n: int) -> bytes:
        if n <= 0:
            return b""

        def once() -> bytes:
            resp = self.get({"Range": f"bytes=0-{n - 1}"})
            try:
                if resp.status_code == 416:
                    return b""
                retry.check_status(resp.status_code, self.what, resp.headers, ok=(200, 206))
                _check_encoding(resp, self.what)
                data = resp.raw.read(n, decode_content=False)
                return data[:n]
            finally:
                resp.close()

        return retry.call(self.what, self.connection, once)

    def open(self) -> Stream:
        """Connect at once (so 401/403/404 surface here, as for S3); the length comes with the answer."""
        stream = HttpStream(self)
        retry.call(self.what, self.connection, stream._connect)
        if stream.total is not None and not self._size_known:
            self._size, self._size_known = stream.total, True
        return stream


class Resumable(Protocol):
    """What HttpStream reads through: one GET with the headers it asks for (https, and oci's blobs)."""

    what: str
    connection: Connection

    def get(self, headers: dict[str, str]) -> Any: ...


class HttpStream(Stream):
    """The whole object as one raw stream; reconnects with Range from the last good byte."""

    def __init__(self, backend: Resumable) -> None:
        super().__init__()
        self.b = backend
        self.what = backend.what
        self.pos = 0  # bytes delivered to the caller
        self.total: int | None = None
        self.validator: str | None = None  # sent as If-Range
        self.identity: tuple[str | None, str | None] = (None, None)  # compared on every answer
        self.resent = 0  # bytes the server sent again because it ignored Range
        self.reconnects = 0
        self._resp: Any = None
        self._direct: Any = None
        self._eof = False

    def readable(self) -> bool:
        return True

    def _drop(self) -> None:
        if self._resp is not None:
            try:
                self._resp.close()
            except Exception:  # noqa: BLE001 - a broken connection may fail to close
                pass
            self._resp = None
            self._direct = None

    def _connect(self) -> None:
        headers: dict[str, str] = {}
        if self.pos:
            if self.validator is None:
                # Without an ETag or Last-Modified nothing tells this object from a replaced one.
                raise UnavailableError(
                    f"{self.what}: the connection dropped at byte {self.pos} and the server gave no ETag or "
                    "Last-Modified, so the download cannot be resumed without risking a mix of two versions")
            headers["Range"] = f"bytes={self.pos}-"
            headers["If-Range"] = self.validator
            self.reconnects += 1
        resp = self.b.get(headers)
        try:
            status = resp.status_code
            if status not in (200, 206) or not self.pos:
                if status == 416 and self.pos:
                    raise IntegrityError(f"{self.what}: the object shrank during the download")
                retry.check_status(status, self.what, resp.headers)  # the first answer must be 200
            length = web.content_length(resp.headers, self.what)
            if not self.pos:
                self.total = length
                self.identity = _identity(resp.headers)
                self.validator = _validator(resp.headers)
            elif _identity(resp.headers) != self.identity:
                # Whatever the status: a server that ignores If-Range must not splice two versions.
                raise IntegrityError(f"{self.what}: the object changed during the download (its ETag or "
                                     "Last-Modified differs from the first answer's)")
            elif status == 206:
                cr = web.content_range(resp.headers, self.what)
                if cr is None or cr[0] != self.pos:
                    raise IntegrityError(
                        f"{self.what}: asked to resume at byte {self.pos}, the server answered another range")
                if self.total is not None and cr[2] is not None and cr[2] != self.total:
                    raise IntegrityError(f"{self.what}: the object changed size during the download")
                if cr[2] is not None:
                    self.total = cr[2]
            else:  # 200 to a Range request: the server ignores Range
                if self.total is not None and length is not None and length != self.total:
                    raise IntegrityError(f"{self.what}: the object changed size during the download")
                retry.log().warning("range_ignored", what=self.what, skip_bytes=self.pos,
                                    note="the server ignores Range; reading past the bytes already delivered")
                self._skip(resp, self.pos)
            _check_encoding(resp, self.what)
        except BaseException:
            resp.close()
            raise
        self._resp = resp
        self._direct = web.direct_readinto(resp.raw)

    def _skip(self, resp: Any, n: int) -> None:
        left = n
        while left:
            chunk = resp.raw.read(min(left, _SKIP_CHUNK), decode_content=False)
            if not chunk:
                raise retry.TransientError("body ended while skipping already delivered bytes")
            left -= len(chunk)
            self.resent += len(chunk)

    def _read_once(self, buf: memoryview) -> int:
        if self._resp is None:
            if self.total is not None and self.pos >= self.total:
                self._eof = True  # dropped right after the last byte
                return 0
            self._connect()
        try:
            if self._direct is not None:  # straight into buf (web.direct_readinto)
                n = self._direct(buf[:READ_PIECE])
            else:
                data = self._resp.raw.read1(len(buf), decode_content=False)
                n = len(data)
                buf[:n] = data
        except BaseException:
            self._drop()
            raise
        if n == 0:
            self._drop()
            if self.total is not None and self.pos < self.total:
                raise retry.TransientError(f"body ended early at byte {self.pos} of {self.total}")
            self._eof = True
            return 0
        self.pos += n
        return n

    def readinto(self, buf: Any) -> int:
        if self.closed:
            raise ValueError("read from a closed stream")
        view = memoryview(buf).cast("B")
        if self._eof or not len(view):
            return 0
        if self._resp is not None:
            # Fast path on an open connection; a drop here reconnects at once,
            # and that reconnection runs under the full retry policy.
            try:
                return self._read_once(view)
            except Exception as exc:  # noqa: BLE001
                if not retry.is_transient(exc):
                    err = retry.mapped(exc, self.what)
                    if err is exc:
                        raise
                    raise err from None
                retry.log().warning("resume", what=self.what, at_byte=self.pos, reason=retry.reason(exc))
        return retry.call(self.what, self.b.connection, self._read_once, view)

    def close(self) -> None:
        self._drop()
        super().close()
