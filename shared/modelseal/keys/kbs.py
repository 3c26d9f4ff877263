"""`kbs:///<repository>/<type>/<tag>`: a key from a Confidential Containers Key Broker Service.

Inside a Confidential Containers (Kata/CoCo) pod the Confidential Data Hub
(CDH) listens on the pod's loopback and does the remote attestation with the
KBS for us; we only ask it over its REST API:
`GET {cdh_url}/cdh/resource/<repository>/<type>/<tag>`, default
`cdh_url` http://127.0.0.1:8006. The resource is released only to a guest
whose attestation the KBS accepts, so the key never exists outside the TEE.

Plain http is right here because the CDH is reached on loopback inside the
guest; a non-loopback http `cdh_url` needs allow_http like any other. A host
in the URI (`kbs://host/...`, CoCo's sealed-secret form) is ignored: the CDH
talks to the KBS it was configured with. The CDH answers 500 while it cannot
reach or attest to the KBS, which is retried with the usual policy. A
redirect from the CDH is an error (web.Client); `cdh_url` is checked by
web.parse_endpoint (no user info, query or fragment).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from .. import web
from ..connection import Connection
from ..errors import UsageError
from ..sealheader import WrappedKey
from ..uri import URI
from . import KeySource

SCHEMES = ("kbs",)


class Backend(KeySource):
    def __init__(self, uri: URI, connection: Connection) -> None:
        super().__init__(uri, connection)
        parts = [p for p in uri.path.split("/") if p]
        if len(parts) != 3 or any(p in (".", "..") for p in parts):
            raise UsageError("a KBS key URI is kbs:///<repository>/<type>/<tag>")
        self.what = f"kbs:///{'/'.join(parts)}"
        base = web.parse_endpoint(self.connection.cdh_url, "cdh_url", self.connection, loopback_ok=True)
        self.host = base.hostname
        self.url = self.connection.cdh_url.rstrip("/") + "/cdh/resource/" + "/".join(quote(p, safe="") for p in parts)
        self._client: Any = None

    def material(self, wrapped: WrappedKey | None) -> bytes:
        if self._client is None:
            # No proxies from the environment when the CDH is on loopback.
            self._client = web.Client(self.connection, use_env=not web.is_loopback(self.host or ""), loopback_http=True)
        _, body = web.request_small(self._client, "GET", self.url, self.what)
        return body
