"""Writes to one repository of a registry, over modelseal's own registry client.

modelseal.registry.client already speaks the distribution API with the auth
flow `docker` uses (Docker config credentials, Basic or bearer tokens), TLS
(`ca`) and plain HTTP only when allowed; here are the few writes a release
needs on top of it: a blob (skipped when the registry has it, mounted from a
sibling repository when one holds it, else uploaded in one PUT), a manifest
by digest or by tag (the registry's Docker-Content-Digest must be ours), and
reading a manifest or the referrers API back. Each request runs under the
library's retry policy.
"""

from __future__ import annotations

import hmac
from pathlib import Path
from typing import Any
from urllib.parse import quote, urljoin

from modelseal import retry
from modelseal.connection import Connection
from modelseal.errors import IntegrityError
from modelseal.registry.client import Registry
from modelseal.registry.manifest import ACCEPT, OCI_INDEX, digest_of
from modelseal.registry.reference import Reference

MAX_DOCUMENT = 4 << 20


class Repository:
    def __init__(self, registry: str, name: str, connection: Connection) -> None:
        self.registry, self.name = registry, name
        self.connection = connection
        self.reg = Registry(Reference(registry, name), connection, push=True)
        self.what = f"{registry}/{name}"

    def _call(self, fn: Any) -> Any:
        return retry.call(self.what, self.connection, fn)

    # -- blobs
    def has_blob(self, digest: str) -> bool:
        def once() -> bool:
            resp = self.reg.request("HEAD", self.reg.url(f"/blobs/{digest}"), self.what)
            try:
                if resp.status_code == 404:
                    return False
                retry.check_status(resp.status_code, self.what, resp.headers)
                return True
            finally:
                resp.close()
        return bool(self._call(once))

    def push_blob(self, digest: str, body: bytes | Path, mount_from: str | None = None) -> None:
        """The blob `digest` in this repository: there already, mounted from `mount_from`, or uploaded."""
        if self.has_blob(digest):
            return

        def once() -> None:
            start = "/blobs/uploads/"
            if mount_from:
                start += f"?mount={quote(digest)}&from={quote(mount_from)}"
            resp = self.reg.request("POST", self.reg.url(start), self.what, headers={"Content-Length": "0"})
            try:
                if resp.status_code == 201:  # mounted
                    return
                retry.check_status(resp.status_code, self.what, resp.headers, ok=(202,))
                location = urljoin(resp.url, resp.headers["Location"])
            finally:
                resp.close()
            data = body.read_bytes() if isinstance(body, Path) else body
            if digest_of(data) != digest:
                raise IntegrityError(f"{self.what}: the blob to upload is not {digest}")
            sep = "&" if "?" in location else "?"
            resp = self.reg.request("PUT", f"{location}{sep}digest={quote(digest)}", self.what, data=data,
                                    headers={"Content-Type": "application/octet-stream"})
            try:
                retry.check_status(resp.status_code, self.what, resp.headers, ok=(201,))
            finally:
                resp.close()
        self._call(once)

    # -- manifests
    def put_manifest(self, reference: str, body: bytes, media_type: str) -> tuple[str, Any]:
        """PUT a manifest by digest or tag; (its digest, the answer's headers)."""
        digest = digest_of(body)

        def once() -> Any:
            resp = self.reg.request("PUT", self.reg.url(f"/manifests/{reference}"), self.what, data=body,
                                    headers={"Content-Type": media_type})
            try:
                retry.check_status(resp.status_code, self.what, resp.headers, ok=(201,))
                said = (resp.headers.get("Docker-Content-Digest") or digest).strip()
                if not hmac.compare_digest(said, digest):
                    raise IntegrityError(f"{self.what}: the registry stored {said}, not {digest}")
                return resp.headers
            finally:
                resp.close()
        return digest, self._call(once)

    def get(self, path: str, accept: str = ACCEPT) -> tuple[str, bytes] | None:
        """(media type, body) of GET /v2/NAME{path}; None on 404."""
        def once() -> tuple[str, bytes] | None:
            resp = self.reg.request("GET", self.reg.url(path), self.what, headers={"Accept": accept})
            try:
                if resp.status_code == 404:
                    return None
                retry.check_status(resp.status_code, self.what, resp.headers)
                body = resp.raw.read(MAX_DOCUMENT + 1, decode_content=False)
                if len(body) > MAX_DOCUMENT:
                    raise IntegrityError(f"{self.what}{path}: larger than {MAX_DOCUMENT} bytes")
                return (resp.headers.get("Content-Type") or "").split(";")[0].strip(), body
            finally:
                resp.close()
        return self._call(once)

    def manifest(self, reference: str) -> tuple[str, bytes] | None:
        return self.get(f"/manifests/{reference}")

    def referrers_api(self, digest: str) -> bytes | None:
        """The referrers API's index for `digest`, or None where the registry has no such API (404)."""
        got = self.get(f"/referrers/{digest}", accept=OCI_INDEX)
        if got is None or got[0] != OCI_INDEX:
            return None
        return got[1]
