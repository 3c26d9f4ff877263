"""`oci://REGISTRY/REPO:TAG` or `oci://REGISTRY/REPO@sha256:DIGEST`: a sealed model in an OCI registry.

Reading: the manifest (its digest checked against an `@sha256:` pin), then
the sealed layer's blob (modelseal.registry.manifest chooses it) as one
stream that resumes with Range from the last good byte when the connection
drops (the https backend's HttpStream). The blob is checked against the
manifest's descriptor as it streams: more bytes than its size, fewer, or
another sha256 at EOF are an integrity error (exit 4) before the stage
commits anything. Registries, mirrors and P2P caches are untrusted: they
carry only ciphertext, and a lie is caught here or by the AEAD.

`read_prefix` (fetch-key --source) is one ranged GET of the blob's first
bytes: the .seal header, authenticated later as the AEAD's associated data.

Writing (`seal -o oci://REGISTRY/REPO:TAG`): `open_write()` streams the
.seal into a chunked blob upload (POST, then a PATCH per `part_size` chunk,
default 16 MiB, one in flight while the next is sealed), hashing as it goes;
`close()` finishes it with the digest, uploads the empty config, then PUTs
the manifest, so the tag appears only once everything is in. A dropped
PATCH resumes from the offset the registry reports (GET on the upload).
`abort()` (any failure) cancels the upload: no tag, no manifest.

Auth, TLS (`ca`) and plain http (`allow_http` only): modelseal.registry.client.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import re
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any
from urllib.parse import quote, urljoin

from .. import retry, sealfile, upload, web
from ..connection import Connection
from ..digest import DigestReader
from ..errors import IntegrityError, UsageError
from ..registry import manifest
from ..registry.client import Registry, check_push_target
from ..registry.reference import Reference
from ..uri import URI
from . import Source, Stream
from .https import HttpStream, _check_encoding
from .s3 import parse_size

SCHEMES = ("oci",)

DEFAULT_CHUNK = 16 << 20
MIN_CHUNK = 1 << 20
_UPLOAD_RANGE = re.compile(r"0-(\d+)")
_HEAD_BYTES = 6 + 4 + sealfile.MAX_HEADER


class Backend(Source):
    def __init__(self, uri: URI, connection: Connection) -> None:
        super().__init__(uri, connection)
        self.ref = Reference.parse(uri)
        self.what = str(self.ref)
        self._registry: Registry | None = None
        self._layer: manifest.Descriptor | None = None
        self._lock = threading.Lock()

    def registry(self, push: bool = False) -> Registry:
        with self._lock:
            if self._registry is None:
                self._registry = Registry(self.ref, self.connection, push=push)
            return self._registry

    def layer(self) -> manifest.Descriptor:
        """The sealed layer's descriptor, from the manifest (fetched once, digest-checked when pinned)."""
        if self._layer is None:
            reg = self.registry()
            _, body = web.request_small(reg, "GET", reg.url(f"/manifests/{self.ref.reference}"), self.what,
                                        headers={"Accept": manifest.ACCEPT}, max_bytes=manifest.MAX_MANIFEST)
            digest = manifest.digest_of(body)
            if self.ref.digest and not hmac.compare_digest(digest, self.ref.digest):
                raise IntegrityError(f"{self.what}: the registry sent a manifest whose digest is {digest}")
            self._layer = manifest.sealed_layer(body, self.what)
            retry.log().info("manifest", what=self.what, digest=digest, pinned=self.ref.pinned(digest),
                             layer=self._layer.digest, layer_bytes=self._layer.size,
                             media_type=self._layer.media_type)
        return self._layer

    @property
    def size(self) -> int | None:
        return self.layer().size

    def get(self, headers: dict[str, str]) -> Any:
        """One streaming GET of the sealed blob (HttpStream's hook; not retried here)."""
        reg = self.registry()
        return reg.request("GET", reg.url(f"/blobs/{self.layer().digest}"), self.what, headers=headers)

    def open(self) -> Stream:
        layer = self.layer()
        stream = HttpStream(self)
        retry.call(self.what, self.connection, stream._connect)
        if stream.total is not None and stream.total != layer.size:
            stream.close()
            raise IntegrityError(f"{self.what}: the registry sent {stream.total} bytes for a "
                                 f"{layer.size}-byte layer")
        return DigestReader(stream, layer.hex, size=layer.size, what=f"{self.what} layer {layer.digest}")

    def read_prefix(self, n: int) -> bytes:
        n = min(n, self.layer().size)
        if n <= 0:
            return b""

        def once() -> bytes:
            resp = self.get({"Range": f"bytes=0-{n - 1}"})
            try:
                retry.check_status(resp.status_code, self.what, resp.headers, ok=(200, 206))
                _check_encoding(resp, self.what)
                return resp.raw.read(n, decode_content=False)[:n]
            finally:
                resp.close()

        return retry.call(self.what, self.connection, once)

    def open_write(self) -> "BlobUpload":
        check_push_target(self.ref)
        return BlobUpload(self)


class BlobUpload(upload.Upload):
    """The .seal as a chunked blob upload in the sealing pass; the manifest is PUT on close()."""

    def __init__(self, backend: Backend) -> None:
        chunk = parse_size(backend.connection.extra.get("part_size", DEFAULT_CHUNK))
        if chunk < MIN_CHUNK:
            raise UsageError(f"part_size must be at least {MIN_CHUNK} bytes for an OCI upload")
        reg = backend.registry(push=True)
        super().__init__()
        self.b = backend
        self.what = backend.what
        self.connection = backend.connection
        self.reg = reg
        self.chunk = chunk
        self._buf = bytearray()
        self._head = bytearray()  # the first bytes: the .seal header, for the manifest's annotations
        self._hash = hashlib.sha256()
        self.size = 0  # bytes written by the caller
        self._sent = 0  # bytes handed to PATCHes (in flight or done)
        self._offset = 0  # bytes the registry holds
        self._unsure = False  # a request failed mid-way: ask the registry where the upload stands
        self._location: str | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._inflight: Future | None = None
        self._error: BaseException | None = None
        self._state = "open"
        self.digest: str | None = None  # the manifest's, once pushed

    def write(self, data: Any) -> int:
        if self._state != "open":
            raise ValueError("write to a closed or aborted OCI upload")
        if self._error is not None:
            raise self._error
        view = memoryview(data).cast("B")
        if len(self._head) < _HEAD_BYTES:
            self._head += view[:_HEAD_BYTES - len(self._head)]
        self._buf += view
        self.size += len(view)
        while len(self._buf) >= self.chunk:
            part = bytes(self._buf[:self.chunk])
            del self._buf[:self.chunk]
            self._send(part)
        return len(view)

    # -- the upload session
    def _start(self) -> None:
        def once() -> None:
            resp = self.reg.request("POST", self.reg.url("/blobs/uploads/"), self.what,
                                    headers={"Content-Length": "0"})
            try:
                retry.check_status(resp.status_code, self.what, resp.headers, ok=(202,))
                self._move(resp)
            finally:
                resp.close()

        retry.call(self.what, self.connection, once)

    def _move(self, resp: Any) -> None:
        """Follow the upload's Location (it changes with every answer)."""
        location = resp.headers.get("Location")
        if not location:
            raise IntegrityError(f"{self.what}: the registry's upload answer has no Location")
        self._location = urljoin(resp.url, location)

    def _status(self) -> None:
        """Ask where the upload stands (after a request failed part-way)."""
        assert self._location is not None
        resp = self.reg.request("GET", self._location, self.what)
        try:
            retry.check_status(resp.status_code, self.what, resp.headers, ok=(204,))
            m = _UPLOAD_RANGE.fullmatch((resp.headers.get("Range") or "").strip())
            if m is None:
                raise IntegrityError(f"{self.what}: the registry's upload status has no Range")
            end = int(m.group(1))
            # "0-0" means nothing yet (distribution clamps -1 to 0); chunks are never one byte.
            self._offset = 0 if end == 0 and self._offset == 0 else end + 1
            self._move(resp)
        finally:
            resp.close()
        self._unsure = False

    def _remainder(self, start: int, data: bytes) -> bytes:
        if self._unsure:
            self._status()
        skip = self._offset - start
        if not 0 <= skip <= len(data):
            raise IntegrityError(f"{self.what}: the registry holds {self._offset} bytes of the upload, "
                                 f"expected {start} to {start + len(data)}")
        return data[skip:]

    def _patch(self, start: int, data: bytes) -> None:
        def once() -> None:
            body = self._remainder(start, data)
            if not body:
                return
            self._unsure = True
            end = self._offset + len(body) - 1
            assert self._location is not None
            resp = self.reg.request("PATCH", self._location, self.what, data=body, headers={
                "Content-Type": "application/octet-stream", "Content-Range": f"{self._offset}-{end}"})
            try:
                retry.check_status(resp.status_code, self.what, resp.headers, ok=(202,))
                self._move(resp)
            finally:
                resp.close()
            self._offset, self._unsure = end + 1, False

        retry.call(self.what, self.connection, once)

    def _hash_and_patch(self, start: int, part: bytes) -> None:
        # Hashed here, in order (one worker), so sha256 (which releases the GIL) overlaps the sealing.
        self._hash.update(part)
        self._patch(start, part)

    def _send(self, part: bytes) -> None:
        if self._location is None:
            self._check_head()  # fail before the first byte leaves
            self._start()
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="modelseal-oci-up")
        self._wait()
        assert self._pool is not None
        self._inflight = self._pool.submit(self._hash_and_patch, self._sent, part)
        self._sent += len(part)

    def _wait(self) -> None:
        """Wait for the chunk in flight; its failure sticks (later writes raise it again)."""
        if self._error is not None:
            raise self._error
        if self._inflight is not None:
            fut, self._inflight = self._inflight, None
            try:
                fut.result()
            except BaseException as exc:
                self._error = exc
                raise

    def _finish(self, rest: bytes, digest: str) -> None:
        """The last bytes and the digest: the registry checks it and makes the blob."""
        start = self._sent

        def once() -> None:
            if self._unsure and self._blob_exists(digest, self.size):
                return  # the PUT went through; its answer was lost
            body = self._remainder(start, rest)
            self._unsure = True
            assert self._location is not None
            sep = "&" if "?" in self._location else "?"
            resp = self.reg.request("PUT", f"{self._location}{sep}digest={quote(digest)}", self.what, data=body,
                                    headers={"Content-Type": "application/octet-stream"})
            try:
                retry.check_status(resp.status_code, self.what, resp.headers, ok=(201,))
                _same_digest(resp, digest, self.what)
            finally:
                resp.close()
            self._unsure = False

        retry.call(self.what, self.connection, once)

    def _blob_exists(self, digest: str, size: int) -> bool:
        resp = self.reg.request("HEAD", self.reg.url(f"/blobs/{digest}"), self.what)
        try:
            if resp.status_code == 404:
                return False
            retry.check_status(resp.status_code, self.what, resp.headers)
            return resp.headers.get("Content-Length") in (None, str(size))
        finally:
            resp.close()

    def _put_config(self) -> None:
        """The 2-byte empty config of OCI artifacts (usually there already)."""
        def once() -> None:
            if self._blob_exists(manifest.EMPTY.digest, manifest.EMPTY.size):
                return
            url = self.reg.url(f"/blobs/uploads/?digest={quote(manifest.EMPTY.digest)}")
            resp = self.reg.request("POST", url, self.what, data=manifest.EMPTY_CONFIG,
                                    headers={"Content-Type": "application/octet-stream"})
            try:
                if resp.status_code == 202:  # no monolithic POST here: PUT to the session
                    self._move(resp)
                    sep = "&" if "?" in (self._location or "") else "?"
                    resp.close()
                    resp = self.reg.request("PUT", f"{self._location}{sep}digest={quote(manifest.EMPTY.digest)}",
                                            self.what, data=manifest.EMPTY_CONFIG,
                                            headers={"Content-Type": "application/octet-stream"})
                retry.check_status(resp.status_code, self.what, resp.headers, ok=(201,))
            finally:
                resp.close()

        retry.call(self.what, self.connection, once)

    def _put_manifest(self, body: bytes) -> str:
        digest = manifest.digest_of(body)

        def once() -> None:
            resp = self.reg.request("PUT", self.reg.url(f"/manifests/{self.b.ref.reference}"), self.what,
                                    data=body, headers={"Content-Type": manifest.OCI_MANIFEST})
            try:
                retry.check_status(resp.status_code, self.what, resp.headers, ok=(201,))
                _same_digest(resp, digest, self.what)
            finally:
                resp.close()

        retry.call(self.what, self.connection, once)
        return digest

    def _check_head(self) -> sealfile.AnyHeader:
        """The stream must be a .seal (the artifact says so); its header names the model."""
        try:
            return sealfile.read_prefix(io.BytesIO(bytes(self._head)))[0]
        except IntegrityError as exc:
            raise UsageError(f"{self.what}: only a .seal can be pushed as a sealed model ({exc})") from None

    def _complete(self) -> None:
        """Finish the blob, then the config, then the manifest (the tag)."""
        header = self._check_head()
        if self._location is None:
            self._start()
        self._wait()
        self._hash.update(self._buf)
        digest = "sha256:" + self._hash.hexdigest()
        self._finish(bytes(self._buf), digest)
        self._buf = bytearray()
        self._put_config()
        layer = manifest.Descriptor(manifest.seal_layer(header.fixed.FORMAT), digest, self.size,
                                    {manifest.TITLE: manifest.LAYER_TITLE})
        fixed = header.fixed
        notes = {"org.opencontainers.image.created": fixed.created,
                 "org.opencontainers.image.title": fixed.name, "org.opencontainers.image.version": fixed.version}
        self.digest = self._put_manifest(manifest.build(layer, {k: v for k, v in notes.items() if v}))
        retry.log().info("pushed", what=self.what, digest=self.digest, pinned=self.b.ref.pinned(self.digest),
                         layer=digest, bytes=self.size)

    def _discard(self) -> None:
        """Cancel the upload session: the registry keeps no blob, and no tag was written."""
        try:
            self._wait()
        except BaseException:  # noqa: BLE001 - the failure being aborted for
            pass
        self._buf = bytearray()
        if self._location is not None:
            try:
                resp = self.reg.request("DELETE", self._location, self.what)
                resp.close()
            except Exception as exc:  # noqa: BLE001 - best effort; registries purge stale uploads
                retry.log().warning("abort_failed", what=self.what, reason=retry.reason(exc))


def _same_digest(resp: Any, digest: str, what: str) -> None:
    said = resp.headers.get("Docker-Content-Digest")
    if said and not hmac.compare_digest(said.strip(), digest):
        raise IntegrityError(f"{what}: the registry stored {said.strip()}, not {digest}")
