"""`vault://host:port/<mount>/<path>`: a key in HashiCorp Vault's KV version 2 engine.

GET `https://host:port/v1/<mount>/data/<path>` (`version=N` picks a version;
`mount=` names a mount with slashes in it). `field=` picks the member of the
secret's data; a secret with one member needs no `field=`.

Authentication, in the pod's terms:
- `role=` set: Kubernetes auth. The pod's service-account JWT (default
  /var/run/secrets/kubernetes.io/serviceaccount/token, else `jwt_file=` or
  `token_file`) is posted to `/v1/auth/<auth_mount, default kubernetes>/login`
  with the role; Vault checks it with the cluster's TokenReview and returns a
  short-lived client token, used for this fetch only. No long-lived secret
  sits in the pod.
- otherwise `token_file`: a Vault token in a file (e.g. written by Vault Agent).
`namespace=` sets X-Vault-Namespace (Vault Enterprise / HCP).

Vault is spoken to over https (`ca=`, client certificate); plain http only
with `scheme=http` and allow_http, logged. 403/404 exit 3, 503 (sealed,
standby) and 5xx are retried. Redirects are not followed (exit 2): a standby
that redirects to the active node, or anything else, would otherwise receive
the X-Vault-Token (a header requests keeps across hosts) or, on a 307/308 of
the login, the service-account JWT; point the URI at the active node or a
load balancer. `VaultClient` is shared with vault-transit.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from .. import untrusted, web
from ..connection import Connection
from ..errors import DeniedError, IntegrityError, UsageError
from ..sealheader import WrappedKey
from ..uri import URI
from . import KeySource

SCHEMES = ("vault",)
SA_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"


def _json(body: bytes, what: str) -> Any:
    return untrusted.json_document(body, f"{what}: Vault's answer")


def _path(parts: list[str]) -> str:
    return "/".join(quote(p, safe="") for p in parts)


class VaultClient:
    """Address, TLS and authentication for one Vault server, from a vault*:// URI."""

    def __init__(self, uri: URI, connection: Connection, what: str) -> None:
        self.connection = connection
        self.what = what
        if not uri.netloc:
            raise UsageError(f"{what}: the URI needs a host: {uri.scheme}://host:port/...")
        scheme = connection.extra.get("scheme", "https").lower()
        self.addr = f"{scheme}://{uri.netloc}"
        web.parse_endpoint(self.addr, f"{what} (Vault address)", connection)
        if not connection.role and not connection.token_file:
            raise UsageError(f"{what}: give role= (Kubernetes auth) or token_file= (a Vault token)")
        self._client: Any = None
        self._token: str | None = None

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = web.Client(self.connection)  # tokens go in X-Vault-Token, not Authorization
        return self._client

    def _headers(self, token: str | None) -> dict[str, str]:
        h = {"X-Vault-Request": "true"}
        if token:
            h["X-Vault-Token"] = token
        ns = self.connection.extra.get("namespace")
        if ns:
            h["X-Vault-Namespace"] = ns
        return h

    def token(self) -> str:
        if self._token is None:
            if self.connection.role:
                self._token = self._kubernetes_login()
            else:
                self._token = web.read_secret_file(str(self.connection.token_file), "Vault token")
        return self._token

    def _kubernetes_login(self) -> str:
        jwt_file = self.connection.extra.get("jwt_file") or self.connection.token_file or SA_TOKEN
        jwt = web.read_secret_file(jwt_file, "service-account token")
        mount = self.connection.extra.get("auth_mount", "kubernetes").strip("/")
        url = f"{self.addr}/v1/auth/{_path(mount.split('/'))}/login"
        _, body = web.request_small(self.client, "POST", url, f"{self.what} (kubernetes login)",
                                    headers=self._headers(None), json={"role": self.connection.role, "jwt": jwt})
        token = untrusted.member(_json(body, self.what), "auth.client_token", self.what)
        if not isinstance(token, str) or not token:
            raise DeniedError(f"{self.what}: Kubernetes login returned no client token")
        if not web.is_token(token):
            raise IntegrityError(f"{self.what}: Kubernetes login returned a malformed client token")
        return token

    def request(self, method: str, api_path: str, *, json_body: Any = None,
                statuses: dict[int, type] | None = None) -> Any:
        """Call /v1/<api_path> with the client token; return the decoded JSON answer."""
        url = f"{self.addr}/v1/{api_path}"
        _, body = web.request_small(self.client, method, url, self.what,
                                    headers=self._headers(self.token()), json=json_body, statuses=statuses)
        return _json(body, self.what)


def split_mount(uri: URI, connection: Connection, what: str, default_mount: str | None = None) -> tuple[str, list[str]]:
    """(mount, rest of the path segments) from the URI path, honouring `mount=`."""
    parts = [p for p in uri.path.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise UsageError(f"{what}: '.' and '..' are not allowed in the path")
    mount = connection.extra.get("mount")
    if mount:
        m = [p for p in mount.split("/") if p]
        if parts[: len(m)] != m:
            raise UsageError(f"{what}: the path does not start with mount {mount!r}")
        return "/".join(m), parts[len(m):]
    if default_mount and len(parts) == 1:
        return default_mount, parts
    if len(parts) < 2:
        raise UsageError(f"{what}: the path needs a mount and a name: /<mount>/<name>")
    return parts[0], parts[1:]


class Backend(KeySource):
    def __init__(self, uri: URI, connection: Connection) -> None:
        super().__init__(uri, connection)
        self.what = uri.redacted()
        self.mount, self.path = split_mount(uri, self.connection, self.what)
        self.vault = VaultClient(uri, self.connection, self.what)

    def material(self, wrapped: WrappedKey | None) -> bytes:
        api = f"{_path(self.mount.split('/'))}/data/{_path(self.path)}"
        version = self.connection.extra.get("version")
        if version:
            if not (version.isascii() and version.isdigit() and len(version) <= 19):
                raise UsageError("vault: version= must be a number")
            api += f"?version={version}"
        answer = self.vault.request("GET", api)
        data = untrusted.member(answer, "data.data", self.what)
        if data is None:
            raise DeniedError(f"{self.what}: the secret has no data (deleted or destroyed version)")
        if not isinstance(data, dict):
            raise IntegrityError(f"{self.what}: the secret's data is not a JSON object")
        if self.connection.extra.get("field"):
            return json.dumps(data).encode()  # KeySource.decode picks the field
        if len(data) != 1:
            names = ", ".join(untrusted.show(n, 40) for n in sorted(data)[:8]) + (", ..." if len(data) > 8 else "")
            raise UsageError(f"{self.what}: the secret has {len(data)} fields ({names}); pick one with field=")
        (value,) = data.values()
        if not isinstance(value, str):
            raise IntegrityError(f"{self.what}: the secret's value is not a string")
        return untrusted.utf8(value, f"{self.what}: the secret's value")
