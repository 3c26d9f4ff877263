"""`s3://bucket/key`: a ciphertext in S3 or an S3-compatible store, read with parallel ranged GETs.

Reading: `open()` returns one stream of the whole object from parallel
ranged GETs (sources/ranged.py: `concurrency` parts of `part_size` bytes,
default 8 MiB, in flight, handed out in order, memory bounded).

Each part is its own ranged GET under the retry policy, and a part whose
connection drops resumes from its last good byte (a new Range for the rest
of the part): every byte that arrived before the cut is kept. Every GET
carries `If-Match` with the ETag from HeadObject (and the VersionId, when
the bucket is versioned or `version_id=` is given), and every answer's ETag
(and VersionId), Content-Range and total length are compared with
HeadObject's, so an object replaced mid-download fails with exit 4 instead of
splicing two versions, even from a store that ignores If-Match. How a GET
is sent (a presigned URL on botocore's own connections, the SDK call when the
store will not take one) is s3get.py's.

Credentials, endpoint, CA bundle and timeouts: see modelseal.aws.

`open_write()` is the other direction, for `seal -o s3://...`: a writable
stream that uploads with multipart upload while the caller is still writing
(parts in flight bounded by `concurrency`), completes on `close()`, and aborts
on `abort()`, on an exception inside a `with` block, or when the stream is
garbage-collected without being closed, so a failed seal never leaves a
truncated object behind. Objects smaller than one part go up in one PutObject.
"""

from __future__ import annotations

import re
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from .. import aws, retry, untrusted
from ..connection import Connection
from ..errors import IntegrityError, UsageError
from ..upload import Upload
from ..uri import URI
from .ranged import RangedSource
from .s3get import RangedGets

SCHEMES = ("s3",)

DEFAULT_PART_SIZE = 8 << 20
MIN_PART_SIZE = 64 << 10  # for reads; S3 itself sets no minimum on ranges
MIN_UPLOAD_PART = 5 << 20  # S3's minimum for every multipart part but the last
MAX_UPLOAD_PART = 512 << 20  # our memory cap (S3 allows 5 GiB)
MAX_PARTS = 10000

MAX_OBJECT = 1 << 56  # far beyond any store's object size limit (S3: 50 TB)

_SIZE = re.compile(r"^\s*(\d{1,15})\s*([kmg]i?b?|b)?\s*$", re.IGNORECASE | re.ASCII)


def parse_size(text: str | int) -> int:
    """"8388608", "8MiB", "16M", "512k" -> bytes."""
    if isinstance(text, int):
        return text
    m = _SIZE.match(str(text))
    if not m:
        raise UsageError(f"bad size {text!r}")
    unit = (m.group(2) or "b")[0].lower()
    return int(m.group(1)) * {"b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[unit]


class Backend(RangedSource):

    def __init__(self, uri: URI, connection: Connection) -> None:
        super().__init__(uri, connection)
        self.bucket = uri.netloc
        self.key = uri.path[1:] if uri.path.startswith("/") else uri.path
        if not self.bucket or not self.key:
            raise UsageError("an S3 source needs a bucket and a key: s3://bucket/key")
        self.what = f"s3://{self.bucket}/{self.key}"
        self.part_size = parse_size(self.connection.extra.get("part_size", DEFAULT_PART_SIZE))
        if self.part_size < MIN_PART_SIZE:
            raise UsageError(f"part_size must be at least {MIN_PART_SIZE} bytes")
        if self.connection.concurrency < 1:
            raise UsageError("concurrency must be at least 1")
        self.version_id = self.connection.extra.get("version_id")
        self._client: Any = None
        self._session: Any = None
        self._gets: RangedGets | None = None
        self._head: tuple[int, str | None, str | None] | None = None
        self._lock = threading.Lock()

    @property
    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                self._session = aws.session()
                self._client = aws.client("s3", self.connection, from_session=self._session)
            return self._client

    @property
    def gets(self) -> RangedGets:
        """The ranged GETs of this object (s3get.py: presigned on botocore's pool, else get_object)."""
        client = self.client
        with self._lock:
            if self._gets is None:
                # botocore presigns S3 URLs with SigV2 unless told otherwise (no region launched
                # since 2014 takes it): a second client, from the same session, signs with SigV4.
                presigner = aws.client("s3", self.connection, from_session=self._session, signature_version="s3v4")
                self._gets = RangedGets(client, presigner, self.bucket, self.key, self.what)
            return self._gets

    def _version(self, version_id: str | None = None) -> dict[str, Any]:
        v = version_id or self.version_id
        return {"VersionId": v} if v else {}

    def head(self) -> tuple[int, str | None, str | None]:
        """(size, ETag, VersionId) from HeadObject, under the retry policy."""
        if self._head is None:
            resp = aws.call(self.what, self.connection, self.client.head_object,
                            Bucket=self.bucket, Key=self.key, **self._version())
            size, etag, version = resp.get("ContentLength"), resp.get("ETag"), resp.get("VersionId")
            if type(size) is not int or not 0 <= size <= MAX_OBJECT:
                raise IntegrityError(f"{self.what}: the store's HeadObject answer has no usable length")
            if not isinstance(etag, (str, type(None))) or not isinstance(version, (str, type(None))):
                raise IntegrityError(f"{self.what}: the store's HeadObject answer is malformed")
            self._head = (size, etag, version)
        return self._head

    def fetch(self, start: int, end: int, size: int, pin: str | None, version: str | None,
              cancel: threading.Event, into: memoryview | None = None) -> memoryview:
        return fetch_range(self, start, end, size, pin, version, cancel, into)

    def open_write(self) -> "S3Writer":
        """A writable stream uploading to this URI (multipart); close() completes, abort() aborts."""
        return S3Writer(self)


def fetch_range(b: Backend, start: int, end: int, size: int, etag: str | None, version: str | None,
                cancel: threading.Event, into: memoryview | None = None) -> memoryview:
    """Bytes start..end (inclusive) of the object, in `into` (or a new buffer); retried, resuming
    from the last good byte."""
    view = memoryview(bytearray(end - start + 1)) if into is None else into[:end - start + 1]
    filled = 0
    gets = b.gets

    def once() -> None:
        nonlocal filled
        if cancel.is_set():
            raise retry.Cancelled()
        first = start + filled
        answer = gets.get(first, end, etag, version)
        try:
            # Every answer must be the object HeadObject described: a store that ignores
            # If-Match (or VersionId) and serves a replaced object fails here, exit 4.
            if answer.etag != etag or (version and answer.version != version):
                raise IntegrityError(f"{b.what}: the object changed during the download (another ETag or "
                                     "version than when it started)")
            cr = untrusted.content_range(answer.content_range)
            if cr is None or cr[0] != first or cr[1] != end or (cr[2] is not None and cr[2] != size):
                raise IntegrityError(f"{b.what}: asked for bytes {first}-{end}, the store answered another range")
            while filled < len(view):
                if cancel.is_set():
                    raise retry.Cancelled()
                n = answer.readinto(view[filled:], cancel)
                if not n:
                    raise retry.TransientError(f"part body ended early at byte {start + filled}")
                filled += n
        finally:
            answer.finish(filled == len(view))  # a part read whole keeps its connection

    retry.call(b.what, b.connection, once, sleep=retry.interruptible_sleep(cancel))
    return view


def _upload_part(b: Backend, upload_id: str, number: int, data: bytes, checksum: dict[str, str],
                 cancel: threading.Event) -> dict[str, Any]:
    resp = aws.call(b.what, b.connection, b.client.upload_part, Bucket=b.bucket, Key=b.key, UploadId=upload_id,
                    PartNumber=number, Body=data, sleep=retry.interruptible_sleep(cancel), **checksum)
    if not isinstance(resp.get("ETag"), str):
        raise IntegrityError(f"{b.what}: the store's UploadPart answer has no ETag")
    part = {"PartNumber": number, "ETag": resp["ETag"]}
    if checksum:
        member = "Checksum" + checksum["ChecksumAlgorithm"].upper()
        if member in resp:
            part[member] = resp[member]
    return part


class S3Writer(Upload):
    """Multipart upload in the same streaming pass as the writer producing the bytes.

    Part size starts at `part_size` (at least 5 MiB) and doubles every 1000
    parts (up to 512 MiB), so an object of any size fits in S3's 10,000 parts
    without knowing its length up front.
    """

    def __init__(self, backend: Backend) -> None:
        super().__init__()
        self.b = backend
        self.what = backend.what
        self.base_part = max(MIN_UPLOAD_PART, backend.part_size)
        self._buf = bytearray()
        self._upload_id: str | None = None
        self._checksum: dict[str, Any] = {}
        self._number = 0
        self._inflight: deque[Future] = deque()
        self._done: list[dict[str, Any]] = []
        self._pool: ThreadPoolExecutor | None = None
        self._cancel = threading.Event()
        self._state = "open"
        self.bytes_written = 0

    @property
    def parts(self) -> int:
        """Parts uploaded so far (0 for an object sent with one PutObject)."""
        return len(self._done)

    def _part_size(self) -> int:
        return min(MAX_UPLOAD_PART, self.base_part << (self._number // 1000))

    def write(self, data: Any) -> int:
        if self._state != "open":
            raise ValueError("write to a closed or aborted S3 upload")
        view = memoryview(data).cast("B")
        self._buf += view
        self.bytes_written += len(view)
        while len(self._buf) >= self._part_size():
            size = self._part_size()
            part = bytes(self._buf[:size])
            del self._buf[:size]
            self._start_part(part)
        return len(view)

    def _start_part(self, data: bytes) -> None:
        if self._number >= MAX_PARTS:
            raise UsageError(f"{self.what}: object too large for a multipart upload")
        if self._upload_id is None:
            # Like boto3's transfer manager: with botocore's default checksum
            # setting, every part carries a CRC32 that S3 checks and the
            # completion lists (AWS_REQUEST_CHECKSUM_CALCULATION=when_required
            # turns it off for stores that do not support it).
            if getattr(self.b.client.meta.config, "request_checksum_calculation", None) == "when_supported":
                self._checksum = {"ChecksumAlgorithm": "CRC32"}
            resp = aws.call(self.what, self.b.connection, self.b.client.create_multipart_upload,
                            Bucket=self.b.bucket, Key=self.b.key, **self._checksum)
            if not isinstance(resp.get("UploadId"), str) or not resp["UploadId"]:
                raise IntegrityError(f"{self.what}: the store's CreateMultipartUpload answer has no UploadId")
            self._upload_id = resp["UploadId"]
            self._pool = ThreadPoolExecutor(max_workers=max(1, self.b.connection.concurrency),
                                            thread_name_prefix="modelseal-s3-up")
        while len(self._inflight) >= max(1, self.b.connection.concurrency):
            self._done.append(self._inflight.popleft().result())  # bounded memory; raises a failed part
        self._number += 1
        assert self._pool is not None
        # A plain function, not a bound method: a worker must not keep the
        # writer alive, or dropping an unclosed writer could not abort it.
        self._inflight.append(self._pool.submit(_upload_part, self.b, self._upload_id, self._number, data,
                                                self._checksum, self._cancel))

    def _complete(self) -> None:
        """Upload what is left and complete the object."""
        if self._upload_id is None:
            data = bytes(self._buf)
            aws.call(self.what, self.b.connection, self.b.client.put_object,
                     Bucket=self.b.bucket, Key=self.b.key, Body=data)
        else:
            if self._buf or self._number == 0:
                self._start_part(bytes(self._buf))
            while self._inflight:
                self._done.append(self._inflight.popleft().result())
            parts = sorted(self._done, key=lambda p: p["PartNumber"])
            aws.call(self.what, self.b.connection, self.b.client.complete_multipart_upload,
                     Bucket=self.b.bucket, Key=self.b.key, UploadId=self._upload_id,
                     MultipartUpload={"Parts": parts})
        self._buf = bytearray()

    def _discard(self) -> None:
        """Drop the upload: no object is created, uploaded parts are deleted."""
        self._cancel.set()
        for fut in self._inflight:
            fut.cancel()
        for fut in self._inflight:
            try:
                fut.exception()  # wait for running parts, so abort sees them all
            except BaseException:  # noqa: BLE001 - cancelled
                pass
        self._inflight.clear()
        self._buf = bytearray()
        if self._upload_id is not None:
            try:
                aws.call(self.what, self.b.connection, self.b.client.abort_multipart_upload,
                         Bucket=self.b.bucket, Key=self.b.key, UploadId=self._upload_id)
            except Exception as exc:  # noqa: BLE001 - best effort; a lifecycle rule cleans up the rest
                retry.log().warning("abort_failed", what=self.what, reason=retry.reason(exc))
