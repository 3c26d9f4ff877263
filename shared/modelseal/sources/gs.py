"""`gs://BUCKET/OBJECT`: a ciphertext in Google Cloud Storage, over the JSON API.

Reading: the object's metadata (`GET /storage/v1/b/BUCKET/o/OBJECT`) gives
its size and generation; the bytes come as parallel ranged reads
(`?alt=media` with `Range`), `concurrency` parts of `part_size` bytes in
flight, handed out in order (sources/ranged.py, with this module's fetch). A part
whose connection drops resumes from its last good byte. Every read carries
`ifGenerationMatch=G` (or `generation=G` when the URI names one), so a
replaced object answers 412 and the download exits 4 instead of splicing two
versions; every answer's `x-goog-generation` (when sent, as GCS does) and
Content-Range must also be the pinned object's, for stores that ignore the
precondition.
https://cloud.google.com/storage/docs/json_api/v1/objects/get
https://cloud.google.com/storage/docs/json_api/v1/parameters#ifgenerationmatch

Writing (`seal -o gs://...`): a resumable upload session
(`POST /upload/storage/v1/b/BUCKET/o?uploadType=resumable&name=OBJECT`),
chunks of `part_size` bytes (a multiple of 256 KiB) sent as the caller
writes them (`Content-Range: bytes a-b/*`, answered 308 with the persisted
`Range`; the last chunk names the total). A chunk whose connection drops is
resumed from what the session says it persisted. close() completes; abort(),
an exception in a `with` block, or dropping the stream unclosed cancel the
session (`DELETE` on it, answered 499), and GCS never creates an object from
a session that was not completed. The session URI must be on the endpoint's
origin: the bearer token goes nowhere else.
https://cloud.google.com/storage/docs/performing-resumable-uploads

Endpoint: `--endpoint-url` (or `endpoint_url=`), else `STORAGE_EMULATOR_HOST`
(as Google's SDKs: `host:port` means http, and no credentials are sent),
else https://storage.googleapis.com. Credentials: modelseal.gcp (Workload
Identity / the metadata server, a service-account key file), or none with
`anonymous=true` for public buckets. No CRC32C or MD5 of the whole object is
checked on the way in or out: the .seal format authenticates every segment,
and modelseal.crc32c (pure Python, about 13 MiB/s) would slow the stream.
"""

from __future__ import annotations

import os
import re
import threading
from typing import Any
from urllib.parse import quote, urlencode, urljoin, urlsplit, urlunsplit

from .. import gcp, pump, retry, untrusted, web
from ..connection import Connection
from ..errors import IntegrityError, UsageError
from ..upload import Upload
from ..uri import URI
from .ranged import RangedSource
from .s3 import MIN_PART_SIZE, parse_size

SCHEMES = ("gs",)

DEFAULT_ENDPOINT = "https://storage.googleapis.com"
DEFAULT_PART_SIZE = 8 << 20
UPLOAD_QUANTUM = 256 << 10  # every chunk but the last is a multiple of this (GCS's rule)
MAX_OBJECT = 1 << 56
MAX_NAME = 1024  # bytes of UTF-8 in an object name
MAX_METADATA = 1 << 20

_BUCKET = re.compile(r"[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]", re.ASCII)
_PERSISTED = re.compile(r"bytes=0-([0-9]{1,19})", re.ASCII)


class Backend(RangedSource):

    def __init__(self, uri: URI, connection: Connection) -> None:
        super().__init__(uri, connection)
        self.bucket = uri.netloc
        self.object = uri.path[1:] if uri.path.startswith("/") else uri.path
        if not self.bucket or not self.object:
            raise UsageError("a GCS source needs a bucket and an object: gs://bucket/object")
        if not _BUCKET.fullmatch(self.bucket):
            raise UsageError(f"gs://: {untrusted.show(self.bucket, 80)} is not a bucket name")
        if len(untrusted.utf8(self.object, "gs:// object name", UsageError)) > MAX_NAME or \
                any(c in self.object for c in "\r\n"):
            raise UsageError("gs://: the object name is longer than 1024 bytes or has a line break")
        self.what = f"gs://{self.bucket}/{self.object}"
        self.part_size = parse_size(self.connection.extra.get("part_size", DEFAULT_PART_SIZE))
        if self.part_size < MIN_PART_SIZE:
            raise UsageError(f"part_size must be at least {MIN_PART_SIZE} bytes")
        if self.connection.concurrency < 1:
            raise UsageError("concurrency must be at least 1")
        pinned = self.connection.extra.get("generation")
        if pinned is not None and untrusted.decimal(pinned) is None:
            raise UsageError(f"{self.what}: generation= must be a decimal number")
        self.pinned = pinned
        emulator = os.environ.get("STORAGE_EMULATOR_HOST")
        endpoint = self.connection.endpoint_url or emulator or DEFAULT_ENDPOINT
        if endpoint == emulator and "://" not in endpoint:
            endpoint = "http://" + endpoint  # the SDKs' reading of a bare host:port
        parts = web.parse_endpoint(endpoint, f"{self.what} endpoint", self.connection, loopback_ok=True)
        self.base = urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))
        self.origin = web.origin(self.base)
        self.anonymous = self.connection.extra.get("anonymous", "").lower() in ("1", "true", "yes") or (
            bool(emulator) and not self.connection.endpoint_url)
        self.object_url = f"{self.base}/storage/v1/b/{self.bucket}/o/{quote(self.object, safe='')}"
        self._credentials: gcp.Credentials | None = None
        self._local = threading.local()
        self._lock = threading.Lock()
        self._head: tuple[int, str, None] | None = None

    @property
    def client(self) -> web.Client:
        """One web.Client per thread (parts are fetched by a pool); no redirects are followed."""
        client = getattr(self._local, "client", None)
        if client is None:
            # plain http to loopback, as parse_endpoint(loopback_ok=True) allowed for the endpoint (an emulator)
            client = self._local.client = web.Client(self.connection, loopback_http=True)
        return client

    def auth(self) -> dict[str, str]:
        """The Authorization header for a request to this endpoint (none when anonymous)."""
        with self._lock:
            if self._credentials is None:
                self._credentials = gcp.credentials(self.connection, anonymous=self.anonymous)
        return self._credentials.headers()

    def head(self) -> tuple[int, str, None]:
        """(size, generation, None) from the object's metadata, under the retry policy."""
        if self._head is None:
            query = {"fields": "size,generation"}
            if self.pinned:
                query["generation"] = self.pinned
            _, body = web.request_small(self.client, "GET", f"{self.object_url}?{urlencode(query)}", self.what,
                                        headers=self.auth(), max_bytes=MAX_METADATA)
            doc = untrusted.json_document(body, self.what)
            if not isinstance(doc, dict):
                raise IntegrityError(f"{self.what}: the object's metadata is not a JSON object")
            size = _uint64(doc.get("size"))
            generation = doc.get("generation")
            if size is None or size > MAX_OBJECT:
                raise IntegrityError(f"{self.what}: the object's metadata has no usable size")
            if _uint64(generation) is None or (self.pinned and generation != self.pinned):
                raise IntegrityError(f"{self.what}: the object's metadata has no usable generation")
            assert isinstance(generation, str)  # a decimal string: _uint64 took it
            self._head = (size, generation, None)
        return self._head

    def media_url(self, generation: str) -> str:
        # A generation named in the URI reads that (immutable) generation; otherwise the live
        # object, on condition that it is still the generation the download started with.
        pin = {"generation": generation} if self.pinned else {"ifGenerationMatch": generation}
        return f"{self.object_url}?{urlencode({'alt': 'media', **pin})}"

    def fetch(self, start: int, end: int, size: int, pin: str | None, version: str | None,
              cancel: threading.Event, into: memoryview | None = None) -> memoryview:
        assert pin is not None  # head() has a generation or raised
        return fetch_range(self, start, end, size, pin, version, cancel, into)

    def open_write(self) -> GSWriter:
        """A writable stream uploading to this URI (resumable session); close() completes, abort() cancels."""
        return GSWriter(self)


def fetch_range(b: Backend, start: int, end: int, size: int, generation: str, _unused: str | None,
                cancel: threading.Event, into: memoryview | None = None) -> memoryview:
    """Bytes start..end (inclusive) of the pinned generation, in `into` (or a new buffer); retried,
    resuming from the last good byte."""
    view = memoryview(bytearray(end - start + 1)) if into is None else into[:end - start + 1]
    filled = 0
    url = b.media_url(generation)

    def once() -> None:
        nonlocal filled
        if cancel.is_set():
            raise retry.Cancelled()
        first = start + filled
        resp = b.client.request("GET", url, b.what, headers={**b.auth(), "Range": f"bytes={first}-{end}"})
        part = pump.PartBody(resp.raw, resp.close)  # one thread reads every part's body
        try:
            if resp.status_code == 412:
                raise IntegrityError(f"{b.what}: the object changed during the download (generation {generation} "
                                     "is no longer the live one)")
            retry.check_status(resp.status_code, b.what, resp.headers, ok=(206,))
            sent = resp.headers.get("x-goog-generation")
            if sent is not None and sent != generation:
                raise IntegrityError(f"{b.what}: the object changed during the download (another generation than "
                                     "when it started)")
            cr = web.content_range(resp.headers, b.what)
            if cr is None or cr[0] != first or cr[1] != end or (cr[2] is not None and cr[2] != size):
                raise IntegrityError(f"{b.what}: asked for bytes {first}-{end}, the store answered another range")
            encoding = (resp.headers.get("Content-Encoding") or "identity").strip().lower()
            if encoding != "identity":
                raise IntegrityError(f"{b.what}: the store sent Content-Encoding {untrusted.show(encoding, 40)} "
                                     "although identity was asked for")
            while filled < len(view):
                if cancel.is_set():
                    raise retry.Cancelled()
                n = part.readinto(view[filled:], cancel)
                if not n:
                    raise retry.TransientError(f"part body ended early at byte {start + filled}")
                filled += n
        finally:
            part.finish(filled == len(view))  # a part read whole keeps its connection

    retry.call(b.what, b.connection, once, sleep=retry.interruptible_sleep(cancel))
    return view


def _uint64(value: Any) -> int | None:
    """A uint64 of the JSON API (written as a decimal string); None for anything else."""
    return untrusted.decimal(value) if isinstance(value, str) else None


class GSWriter(Upload):
    """A resumable upload in the same streaming pass as the writer producing the bytes."""

    def __init__(self, backend: Backend) -> None:
        super().__init__()
        self.b = backend
        self.what = backend.what
        self.chunk = max(UPLOAD_QUANTUM, -(-backend.part_size // UPLOAD_QUANTUM) * UPLOAD_QUANTUM)
        self._buf = bytearray()
        self._session: str | None = None
        self._persisted = 0  # bytes the session holds
        self._unsure = False  # a chunk request failed: ask the session what it holds before sending more
        self.bytes_written = 0
        self.chunks = 0
        self.result: dict[str, Any] | None = None  # the object resource of a completed upload

    def write(self, data: Any) -> int:
        if self._state != "open":
            raise ValueError("write to a closed or aborted GCS upload")
        view = memoryview(data).cast("B")
        self._buf += view
        self.bytes_written += len(view)
        while len(self._buf) > self.chunk:  # more than a chunk: the last one goes with the total, in close()
            chunk = bytes(self._buf[:self.chunk])
            del self._buf[:self.chunk]
            self._send(chunk, final=False)
        return len(view)

    def _start(self) -> str:
        query = urlencode({"uploadType": "resumable", "name": self.b.object})
        url = f"{self.b.base}/upload/storage/v1/b/{self.b.bucket}/o?{query}"
        holder: dict[str, str] = {}

        def once() -> None:
            resp = self.b.client.request("POST", url, self.what, json={"name": self.b.object},
                                         headers={**self.b.auth(), "X-Upload-Content-Type": "application/octet-stream"})
            try:
                retry.check_status(resp.status_code, self.what, resp.headers, ok=(200, 201))
                holder["location"] = resp.headers.get("Location") or ""
            finally:
                resp.close()

        retry.call(self.what, self.b.connection, once)
        session = urljoin(url, holder["location"].strip()) if holder["location"] else ""
        parts = urlsplit(session)
        if not session or parts.scheme.lower() not in ("http", "https") or "@" in parts.netloc:
            raise IntegrityError(f"{self.what}: the store's answer to the upload has no usable session URI")
        if web.origin(session) != self.b.origin:
            raise IntegrityError(f"{self.what}: the upload session URI is on another origin than the endpoint; "
                                 "refused, the bearer token goes to the endpoint only")
        return session

    def _send(self, data: bytes, final: bool) -> None:
        """Send `data`, the bytes after those the session holds; the last call (final) names the total."""
        if self._session is None:
            self._session = self._start()
        start = self._persisted
        end = start + len(data)
        total = str(end) if final else "*"

        def once() -> None:
            if self._unsure:
                self._persisted = self._put(f"bytes */{total}", b"", start, end, final)
            while self.result is None and (final or self._persisted < end):
                have = self._persisted - start
                body = data[have:]
                span = f"bytes {self._persisted}-{end - 1}/{total}" if body else f"bytes */{total}"
                before = self._persisted
                self._persisted = self._put(span, body, start, end, final)
                if self.result is None and self._persisted <= before:
                    raise retry.TransientError("the upload session persisted nothing of a chunk")

        retry.call(self.what, self.b.connection, once)
        self.chunks += 1

    def _put(self, span: str, body: bytes, start: int, end: int, final: bool) -> int:
        """One PUT to the session; returns the bytes it holds (sets `result` when the object is complete)."""
        assert self._session is not None
        self._unsure = True
        resp = self.b.client.request("PUT", self._session, self.what, data=body, answers=(308,),
                                     headers={**self.b.auth(), "Content-Range": span})
        try:
            status = resp.status_code
            if status == 308:
                rng = resp.headers.get("Range")
                m = _PERSISTED.fullmatch(rng.strip()) if rng is not None else None
                if rng is not None and m is None:
                    raise IntegrityError(f"{self.what}: the upload session answered a malformed Range "
                                         f"{untrusted.show(rng, 60)}")
                persisted = int(m.group(1)) + 1 if m else 0
                if not start <= persisted <= end:
                    raise IntegrityError(f"{self.what}: the upload session says it holds {persisted} bytes, "
                                         f"outside the {start}-{end} sent so far")
                self._unsure = False
                return persisted
            retry.check_status(status, self.what, resp.headers, ok=(200, 201))
            if not final:
                raise IntegrityError(f"{self.what}: the store completed the object before its last chunk")
            length = web.content_length(resp.headers, self.what)
            raw = resp.raw.read(MAX_METADATA + 1, decode_content=False)
            if length is not None and length != len(raw):
                raise retry.TransientError(f"body cut short ({len(raw)} of {length} bytes)")
            doc = untrusted.json_document(raw, self.what)
            stored = _uint64(doc.get("size")) if isinstance(doc, dict) else None
            if stored != end:
                raise IntegrityError(f"{self.what}: the stored object does not have the {end} bytes written")
            self.result = doc
            self._unsure = False
            return end
        finally:
            resp.close()

    def _complete(self) -> None:
        data = bytes(self._buf)
        self._buf = bytearray()
        self._send(data, final=True)

    def _discard(self) -> None:
        """Cancel the session: GCS then never creates the object, and the session URI stops working."""
        self._buf = bytearray()
        if self._session is None:
            return

        def once() -> None:
            resp = self.b.client.request("DELETE", self._session or "", self.what, headers=self.b.auth())
            try:
                # 499 is GCS's answer to a cancel; 404/410: the session is already gone.
                if resp.status_code not in (499, 404, 410, 200, 204):
                    retry.check_status(resp.status_code, self.what, resp.headers, ok=(499,))
            finally:
                resp.close()

        try:
            retry.call(self.what, self.b.connection, once)
        except Exception as exc:  # noqa: BLE001 - best effort: an uncompleted session expires after a week
            retry.log().warning("abort_failed", what=self.what, reason=retry.reason(exc))

