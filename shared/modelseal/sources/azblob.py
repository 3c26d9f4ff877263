"""`azblob://ACCOUNT/CONTAINER/BLOB`: a ciphertext in Azure Blob Storage, over the Blob REST API.

Reading: Get Blob Properties (HEAD) gives the blob's length and ETag; the
bytes come as parallel ranged Get Blob requests (`Range: bytes=a-b`),
`concurrency` parts of `part_size` bytes in flight, handed out in order (the
ranged stream of sources/ranged.py, with this module's fetch). A part whose connection drops resumes
from its last good byte. Every read carries `If-Match: <ETag>`, so a blob
replaced mid-download answers 412 and the download exits 4 instead of
splicing two versions; every answer's ETag and Content-Range must also be
the pinned blob's, for servers that ignore the condition.
https://learn.microsoft.com/en-us/rest/api/storageservices/get-blob-properties
https://learn.microsoft.com/en-us/rest/api/storageservices/get-blob
https://learn.microsoft.com/en-us/rest/api/storageservices/specifying-conditional-headers-for-blob-service-operations

Writing (`seal -o azblob://...`): blocks of `part_size` bytes (Put Block,
each with its Content-MD5, which the service checks) are sent while the
caller writes, `concurrency` in flight; close() commits them in order with
Put Block List. Nothing is visible under the blob's name until that commit:
abort(), an exception in a `with` block or dropping the stream unclosed
commit nothing, so a failed seal leaves no blob (and an existing blob as it
was); the service discards uncommitted blocks after a week. A blob smaller
than one part goes up in one Put Blob.
https://learn.microsoft.com/en-us/rest/api/storageservices/put-block
https://learn.microsoft.com/en-us/rest/api/storageservices/put-block-list

Credentials, first that applies (the Azure SDKs' and az CLI's conventions):
`anonymous=true` (a public container); `sas_file=PATH` (a SAS token);
`account_key_file=PATH` (the account key: Shared Key signing);
AZURE_STORAGE_CONNECTION_STRING (`AccountName=...;AccountKey=...`, a
`SharedAccessSignature=...`, `BlobEndpoint=`, `EndpointSuffix=`, and
Azurite's `UseDevelopmentStorage=true`); AZURE_STORAGE_SAS_TOKEN;
AZURE_STORAGE_KEY (with AZURE_STORAGE_ACCOUNT, when set, naming the same
account); else an Entra token for https://storage.azure.com from
modelseal.azure (workload identity, IMDS, or `--token-file`). Shared Key
signatures follow the documented string-to-sign (version 2009-09-19 and later):
https://learn.microsoft.com/en-us/rest/api/storageservices/authorize-with-shared-key
Keys, SAS tokens and bearer tokens never appear in a message or a log line
(URIs are named as azblob://ACCOUNT/CONTAINER/BLOB), and requests follow no
redirect.

Endpoint: `--endpoint-url` (e.g. Azurite's http://127.0.0.1:10000/devstoreaccount1,
or a sovereign cloud's https://ACCOUNT.blob.core.chinacloudapi.cn), else the
connection string's, else https://ACCOUNT.blob.core.windows.net. Plain http
only to loopback, or with allow_http.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import hashlib
import hmac
import os
import re
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from .. import azure, pump, retry, untrusted, web
from ..connection import Connection
from ..errors import IntegrityError, UsageError, from_os_error
from ..upload import Upload
from ..uri import URI
from .ranged import RangedSource
from .s3 import MIN_PART_SIZE, parse_size

SCHEMES = ("azblob",)

API_VERSION = "2024-08-04"
DEFAULT_PART_SIZE = 8 << 20
MAX_UPLOAD_PART = 512 << 20  # our memory cap (the service allows 4000 MiB blocks)
MAX_BLOCKS = 50000
MAX_OBJECT = 1 << 56
MAX_SECRET_FILE = 64 << 10
#: Azurite's well-known development account (UseDevelopmentStorage=true), as the SDKs expand it.
DEV_ACCOUNT = "devstoreaccount1"
DEV_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
DEV_BLOB_ENDPOINT = "http://127.0.0.1:10000/devstoreaccount1"

_ACCOUNT = re.compile(r"[a-z0-9]{3,24}", re.ASCII)
_CONTAINER = re.compile(r"[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}", re.ASCII)


# --------------------------------------------------------------------------- credentials

def string_to_sign(method: str, path: str, query: list[tuple[str, str]], headers: dict[str, str],
                   account: str) -> str:
    """Shared Key's string-to-sign for the Blob service (version 2009-09-19 and later).

    `path` is the URL path as sent (percent-encoded); `query` the decoded
    parameters. Content-Length is empty when zero (version 2015-02-21 and later).
    """
    h = {k.lower(): v for k, v in headers.items()}
    length = h.get("content-length", "")
    fields = [method.upper(), h.get("content-encoding", ""), h.get("content-language", ""),
              "" if length == "0" else length, h.get("content-md5", ""), h.get("content-type", ""),
              h.get("date", ""), h.get("if-modified-since", ""), h.get("if-match", ""), h.get("if-none-match", ""),
              h.get("if-unmodified-since", ""), h.get("range", "")]
    canonical_headers = "".join(f"{k}:{' '.join(v.split())}\n" for k, v in sorted(h.items()) if k.startswith("x-ms-"))
    params: dict[str, list[str]] = {}
    for k, v in query:
        params.setdefault(k.lower(), []).append(v)
    resource = f"/{account}{path}" + "".join(f"\n{k}:{','.join(sorted(params[k]))}" for k in sorted(params))
    return "\n".join(fields) + "\n" + canonical_headers + resource


class SharedKey:
    """`Authorization: SharedKey ACCOUNT:signature`, HMAC-SHA256 with the account key."""

    def __init__(self, account: str, key: str, where: str) -> None:
        try:
            self._key = base64.b64decode(key.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise UsageError(f"{where}: the account key is not base64") from None
        if not self._key:
            raise UsageError(f"{where}: the account key is empty")
        self.account = account

    def apply(self, method: str, url: str, query: list[tuple[str, str]], headers: dict[str, str]) -> str:
        text = string_to_sign(method, urlsplit(url).path, query, headers, self.account)
        mac = hmac.new(self._key, text.encode("utf-8"), hashlib.sha256).digest()
        headers["Authorization"] = f"SharedKey {self.account}:{base64.b64encode(mac).decode()}"
        return url


class SAS:
    """A shared access signature: its parameters go in every URL's query."""

    def __init__(self, token: str, where: str) -> None:
        token = token.strip().lstrip("?")
        if not token or not web.is_token(token) or "#" in token or "sig=" not in token:
            raise UsageError(f"{where}: not a SAS token (expected sv=...&sig=...)")
        self.token = token

    def apply(self, method: str, url: str, query: list[tuple[str, str]], headers: dict[str, str]) -> str:
        return url + ("&" if "?" in url else "?") + self.token


class Bearer:
    """An Entra access token for Azure Storage (RBAC: Storage Blob Data Reader / Contributor)."""

    def __init__(self, credential: azure.Credential) -> None:
        self.credential = credential

    def apply(self, method: str, url: str, query: list[tuple[str, str]], headers: dict[str, str]) -> str:
        headers.update(self.credential.headers(azure.STORAGE))
        return url


class Anonymous:
    def apply(self, method: str, url: str, query: list[tuple[str, str]], headers: dict[str, str]) -> str:
        return url


def parse_connection_string(text: str) -> dict[str, str]:
    """`Key=Value;...` (names case-insensitive; values may hold '='), with UseDevelopmentStorage expanded."""
    fields: dict[str, str] = {}
    for part in text.strip().split(";"):
        if not part.strip():
            continue
        name, sep, value = part.partition("=")
        if not sep or not name.strip():
            raise UsageError("AZURE_STORAGE_CONNECTION_STRING is malformed (expected Name=Value;...)")
        fields[name.strip().lower()] = value.strip()
    if fields.get("usedevelopmentstorage", "").lower() == "true":
        fields = {"accountname": DEV_ACCOUNT, "accountkey": DEV_KEY, "blobendpoint": DEV_BLOB_ENDPOINT, **{
            k: v for k, v in fields.items() if k != "usedevelopmentstorage"}}
    return fields


def _secret_file(path: str, what: str) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_SECRET_FILE + 1)
    except OSError as exc:
        raise from_os_error(exc, f"{what} file {path}") from None
    if len(data) > MAX_SECRET_FILE:
        raise UsageError(f"{what} file {path} is too large")
    text = data.decode("ascii", "replace").strip()
    if not text:
        raise UsageError(f"{what} file {path} is empty")
    return text


def _flag(connection: Any, name: str) -> bool:
    return connection.extra.get(name, "").lower() in ("1", "true", "yes")


def authorization(account: str, connection: Any, env: dict[str, str]) -> tuple[Any, str | None]:
    """(the credential, the endpoint it comes with or None), by the order in the module's docstring."""
    if _flag(connection, "anonymous"):
        return Anonymous(), None
    if connection.extra.get("sas_file"):
        return SAS(_secret_file(connection.extra["sas_file"], "SAS token"), "sas_file"), None
    if connection.extra.get("account_key_file"):
        return SharedKey(account, _secret_file(connection.extra["account_key_file"], "account key"),
                         "account_key_file"), None
    conn = env.get("AZURE_STORAGE_CONNECTION_STRING")
    if conn:
        fields = parse_connection_string(conn)
        named = fields.get("accountname")
        if named and named != account:
            raise UsageError(f"AZURE_STORAGE_CONNECTION_STRING is for account {untrusted.show(named, 40)}, the URI "
                             f"names {account}")
        endpoint = fields.get("blobendpoint")
        if not endpoint and named:
            protocol = fields.get("defaultendpointsprotocol", "https").lower()
            endpoint = f"{protocol}://{named}.blob.{fields.get('endpointsuffix', 'core.windows.net')}"
        if fields.get("sharedaccesssignature"):
            return SAS(fields["sharedaccesssignature"], "AZURE_STORAGE_CONNECTION_STRING"), endpoint
        if fields.get("accountkey"):
            return SharedKey(account, fields["accountkey"], "AZURE_STORAGE_CONNECTION_STRING"), endpoint
        return Anonymous(), endpoint
    if env.get("AZURE_STORAGE_SAS_TOKEN"):
        return SAS(env["AZURE_STORAGE_SAS_TOKEN"], "AZURE_STORAGE_SAS_TOKEN"), None
    if env.get("AZURE_STORAGE_KEY"):
        named = env.get("AZURE_STORAGE_ACCOUNT")
        if named and named != account:
            raise UsageError(f"AZURE_STORAGE_ACCOUNT is {untrusted.show(named, 40)}, the URI names {account}")
        return SharedKey(account, env["AZURE_STORAGE_KEY"], "AZURE_STORAGE_KEY"), None
    return Bearer(azure.credential(connection, env)), None


# --------------------------------------------------------------------------- the source

class Backend(RangedSource):

    def __init__(self, uri: URI, connection: Connection) -> None:
        super().__init__(uri, connection)
        self.account = uri.netloc
        container, _, blob = uri.path.lstrip("/").partition("/")
        if not _ACCOUNT.fullmatch(self.account) or not _CONTAINER.fullmatch(container) or not blob:
            raise UsageError("azblob: the URI is azblob://ACCOUNT/CONTAINER/BLOB (account: 3-24 lower-case letters "
                             "and digits; container: 3-63 of lower-case letters, digits and single hyphens)")
        if len(blob) > 1024 or any(c in blob for c in "\r\n\\") or any(p in (".", "..") for p in blob.split("/")):
            raise UsageError("azblob: the blob name is longer than 1024 characters or has a line break, a backslash, "
                             "or a '.' or '..' segment")
        self.container, self.blob = container, blob
        self.what = f"azblob://{self.account}/{self.container}/{self.blob}"
        self.part_size = parse_size(self.connection.extra.get("part_size", DEFAULT_PART_SIZE))
        if self.part_size < MIN_PART_SIZE:
            raise UsageError(f"part_size must be at least {MIN_PART_SIZE} bytes")
        if self.connection.concurrency < 1:
            raise UsageError("concurrency must be at least 1")
        self.auth, endpoint = authorization(self.account, self.connection, dict(os.environ))
        endpoint = self.connection.endpoint_url or endpoint or f"https://{self.account}.blob.core.windows.net"
        parts = web.parse_endpoint(endpoint, f"{self.what} endpoint", self.connection, loopback_ok=True)
        base = urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))
        self.url = f"{base}/{self.container}/{quote(self.blob, safe='/~')}"
        self._local = threading.local()
        self._head: tuple[int, str, None] | None = None

    @property
    def client(self) -> web.Client:
        """One web.Client per thread (parts are fetched by a pool); no redirect is followed."""
        client = getattr(self._local, "client", None)
        if client is None:
            # plain http to loopback, as parse_endpoint(loopback_ok=True) allowed for the endpoint (Azurite)
            client = self._local.client = web.Client(self.connection, loopback_http=True)
        return client

    def request(self, method: str, what: str, *, query: list[tuple[str, str]] | None = None,
                headers: dict[str, str] | None = None, data: bytes | None = None) -> Any:
        """One signed request to the blob (not retried here)."""
        query = query or []
        h = {"x-ms-version": API_VERSION, "x-ms-date": email.utils.formatdate(usegmt=True), **(headers or {})}
        if data is not None or method == "PUT":
            h["Content-Length"] = str(len(data or b""))
        url = self.url + ("?" + "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in query) if query else "")
        url = self.auth.apply(method, url, query, h)
        return self.client.request(method, url, what, headers=h, data=data)

    def head(self) -> tuple[int, str, None]:
        """(size, ETag, None) from Get Blob Properties, under the retry policy."""
        if self._head is None:
            def once() -> tuple[int, str, None]:
                resp = self.request("HEAD", self.what)
                try:
                    retry.check_status(resp.status_code, self.what, resp.headers)
                    size = web.content_length(resp.headers, self.what)
                    etag = resp.headers.get("ETag")
                finally:
                    resp.close()
                if size is None or size > MAX_OBJECT:
                    raise IntegrityError(f"{self.what}: the blob's properties have no usable length")
                if not etag or not web.is_token(etag.replace(" ", "")):
                    raise IntegrityError(f"{self.what}: the blob's properties have no usable ETag")
                return size, etag, None

            self._head = retry.call(self.what, self.connection, once)
        return self._head

    def fetch(self, start: int, end: int, size: int, pin: str | None, version: str | None,
              cancel: threading.Event, into: memoryview | None = None) -> memoryview:
        assert pin is not None  # head() has an ETag or raised
        return fetch_range(self, start, end, size, pin, version, cancel, into)

    def open_write(self) -> "BlobWriter":
        """A writable stream uploading to this URI (blocks); close() commits, abort() commits nothing."""
        return BlobWriter(self)


def fetch_range(b: Backend, start: int, end: int, size: int, etag: str, _unused: str | None,
                cancel: threading.Event, into: memoryview | None = None) -> memoryview:
    """Bytes start..end (inclusive) of the pinned blob, in `into` (or a new buffer); retried, resuming
    from the last good byte."""
    view = memoryview(bytearray(end - start + 1)) if into is None else into[:end - start + 1]
    filled = 0

    def once() -> None:
        nonlocal filled
        if cancel.is_set():
            raise retry.Cancelled()
        first = start + filled
        resp = b.request("GET", b.what, headers={"Range": f"bytes={first}-{end}", "If-Match": etag})
        part = pump.PartBody(resp.raw, resp.close)  # one thread reads every part's body
        try:
            if resp.status_code == 412:
                raise IntegrityError(f"{b.what}: the blob changed during the download (its ETag is no longer the "
                                     "one the download started with)")
            retry.check_status(resp.status_code, b.what, resp.headers, ok=(206,))
            if resp.headers.get("ETag") != etag:
                raise IntegrityError(f"{b.what}: the blob changed during the download (another ETag than when it "
                                     "started)")
            cr = web.content_range(resp.headers, b.what)
            if cr is None or cr[0] != first or cr[1] != end or (cr[2] is not None and cr[2] != size):
                raise IntegrityError(f"{b.what}: asked for bytes {first}-{end}, the store answered another range")
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


# --------------------------------------------------------------------------- upload

def _block_id(number: int) -> str:
    """Block ids: base64 of equal-length strings (the service requires one length per blob)."""
    return base64.b64encode(f"modelseal-{number:06d}".encode()).decode()


def _put(b: Backend, query: list[tuple[str, str]], headers: dict[str, str], data: bytes, what: str,
         cancel: threading.Event | None = None) -> None:
    def once() -> None:
        if cancel is not None and cancel.is_set():
            raise retry.Cancelled()
        resp = b.request("PUT", what, query=query, headers=headers, data=data)
        try:
            if resp.status_code == 400 and "Content-MD5" in headers:
                # Md5Mismatch (or another refusal of what we sent): the block did not arrive as sent.
                raise IntegrityError(f"{what}: the store refused a block (HTTP 400; its Content-MD5 did not match, "
                                     "or the request was malformed)")
            retry.check_status(resp.status_code, what, resp.headers, ok=(201,))
        finally:
            resp.close()

    retry.call(what, b.connection, once, sleep=retry.interruptible_sleep(cancel) if cancel is not None else None)


def _put_block(b: Backend, block_id: str, data: bytes, cancel: threading.Event) -> None:
    md5 = base64.b64encode(hashlib.md5(data).digest()).decode()  # noqa: S324 - the service's transfer checksum
    _put(b, [("comp", "block"), ("blockid", block_id)], {"Content-MD5": md5}, data, b.what, cancel)


class BlobWriter(Upload):
    """Block upload in the same streaming pass as the writer producing the bytes.

    Part size starts at `part_size` and doubles every 10,000 blocks (up to
    512 MiB), so a blob of any size fits in the service's 50,000 blocks
    without knowing its length up front.
    """

    def __init__(self, backend: Backend) -> None:
        super().__init__()
        self.b = backend
        self.what = backend.what
        self._buf = bytearray()
        self._ids: list[str] = []
        self._inflight: deque[Future] = deque()
        self._cancel = threading.Event()
        self.bytes_written = 0

    @property
    def blocks(self) -> int:
        """Blocks sent so far (0 for a blob sent with one Put Blob)."""
        return len(self._ids)

    def _part_size(self) -> int:
        return min(MAX_UPLOAD_PART, self.b.part_size << (len(self._ids) // 10000))

    def write(self, data: Any) -> int:
        if self._state != "open":
            raise ValueError("write to a closed or aborted blob upload")
        view = memoryview(data).cast("B")
        self._buf += view
        self.bytes_written += len(view)
        while len(self._buf) >= self._part_size():
            size = self._part_size()
            part = bytes(self._buf[:size])
            del self._buf[:size]
            self._start_block(part)
        return len(view)

    def _start_block(self, data: bytes) -> None:
        if len(self._ids) >= MAX_BLOCKS:
            raise UsageError(f"{self.what}: blob too large for {MAX_BLOCKS} blocks")
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=max(1, self.b.connection.concurrency),
                                            thread_name_prefix="modelseal-azblob-up")
        while len(self._inflight) >= max(1, self.b.connection.concurrency):
            self._inflight.popleft().result()  # bounded memory; raises a failed block
        block_id = _block_id(len(self._ids))
        self._ids.append(block_id)
        # A plain function, not a bound method: a worker must not keep the writer alive.
        self._inflight.append(self._pool.submit(_put_block, self.b, block_id, data, self._cancel))

    def _complete(self) -> None:
        """Send what is left and commit the blob."""
        if not self._ids:
            data = bytes(self._buf)
            _put(self.b, [], {"x-ms-blob-type": "BlockBlob", "x-ms-blob-content-type": "application/octet-stream"},
                 data, self.what)
        else:
            if self._buf:
                self._start_block(bytes(self._buf))
            while self._inflight:
                self._inflight.popleft().result()
            xml = ('<?xml version="1.0" encoding="utf-8"?><BlockList>'
                   + "".join(f"<Latest>{i}</Latest>" for i in self._ids) + "</BlockList>").encode()
            _put(self.b, [("comp", "blocklist")],
                 {"Content-Type": "application/xml", "x-ms-blob-content-type": "application/octet-stream"},
                 xml, self.what)
        self._buf = bytearray()

    def _discard(self) -> None:
        """Commit nothing: uncommitted blocks never become a blob, and the service drops them after a week."""
        self._cancel.set()
        for fut in self._inflight:
            fut.cancel()
        for fut in self._inflight:
            try:
                fut.exception()  # wait for running blocks: nothing may be sent after the abort returns
            except BaseException:  # noqa: BLE001 - cancelled
                pass
        self._inflight.clear()
        self._buf = bytearray()
