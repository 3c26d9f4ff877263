"""Microsoft Entra ID access tokens for the azure-kv, azure-skr and azblob backends, the way pods get them.

A `Credential` gives a bearer token for one resource (`https://vault.azure.net`,
`https://storage.azure.com`, ...), from the first source that applies
(`identity=` in the URI query picks one: token_file, workload or imds):

1. `--token-file` / `token_file=`: a bearer token in a file, re-read at each
   use (a token a sidecar refreshes, or `az account get-access-token` saved on
   a workstation for `seal`).
2. AKS Workload Identity, when AZURE_FEDERATED_TOKEN_FILE is set (the
   workload identity webhook sets it with AZURE_CLIENT_ID, AZURE_TENANT_ID and
   AZURE_AUTHORITY_HOST): the projected service-account token, re-read at each
   exchange because the kubelet rotates it, is exchanged for an access token
   with the client credentials grant and a client assertion:
   `POST {AZURE_AUTHORITY_HOST}{tenant}/oauth2/v2.0/token` (form:
   client_id, scope=RESOURCE/.default, grant_type=client_credentials,
   client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer,
   client_assertion=<the token>) -> `{"token_type": "Bearer", "expires_in": N,
   "access_token": ...}`.
   https://learn.microsoft.com/en-us/entra/identity-platform/v2-oauth2-client-creds-grant-flow#third-case-access-token-request-with-a-federated-credential
   https://azure.github.io/azure-workload-identity/docs/topics/service-account-labels-and-annotations.html
3. A managed identity through the Instance Metadata Service:
   `GET http://169.254.169.254/metadata/identity/oauth2/token?api-version=2018-02-01&resource=R`
   (`&client_id=AZURE_CLIENT_ID` for a user-assigned identity) with the
   header `Metadata: true` -> `{"access_token": ..., "expires_in": "3599",
   "expires_on": "<epoch s>", "resource": R, "token_type": "Bearer"}`.
   IMDS answers 404, 410 and 429 while it is updating or busy: retried.
   The address is AZURE_POD_IDENTITY_AUTHORITY_HOST when set (the variable
   azure-identity honours for the same purpose), e.g. a loopback test server.
   https://learn.microsoft.com/en-us/entra/identity/managed-identities-azure-resources/how-to-use-vm-token#get-a-token-using-http

Tokens are cached per resource until five minutes before they expire (half
their life when they live less than ten minutes) and are never logged, put in a
message or sent anywhere but the origin they were asked for: every request
goes through a web.Client that follows no redirect. A token endpoint's 400
or 401 (a refused assertion, an unknown client or identity) is exit 3.

No Azure SDK: azure-identity, azure-storage-blob and azure-keyvault-keys add
14.4 MiB to an image that already has requests and cryptography (measured:
pip install into a fresh CPython 3.11 virtualenv, azure/ 12.2 MiB plus msal,
msal-extensions, PyJWT, isodate and typing-extensions; 35.7 MiB with
requests, cryptography and cffi), more than the fetch image's whole Python
layer, and they bring their own HTTP pipeline, retry policy and redirect
handling, which modelseal already has once (web, retry) and would then have
twice. What is used here is a form post and a GET.
"""

from __future__ import annotations

import os
import re
import threading
import time
from dataclasses import replace
from typing import Any
from urllib.parse import urlencode, urlunsplit

from . import retry, untrusted, web
from .connection import Connection
from .errors import DeniedError, IntegrityError, UsageError

KEY_VAULT = "https://vault.azure.net"
MANAGED_HSM = "https://managedhsm.azure.net"
STORAGE = "https://storage.azure.com"

DEFAULT_AUTHORITY = "https://login.microsoftonline.com/"
IMDS = "http://169.254.169.254"
IMDS_API_VERSION = "2018-02-01"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
#: Renew a cached token this long before it expires.
MARGIN_S = 300.0
#: The largest answer of a token endpoint we read.
MAX_TOKEN_ANSWER = 64 << 10

_TENANT = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,99}", re.ASCII)
_CLIENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", re.ASCII)
_RESOURCE = re.compile(r"https://[a-z0-9.-]{1,200}(/[A-Za-z0-9._~-]{1,100})?/?", re.ASCII)


class Credential:
    """A source of bearer tokens; `headers(resource)` is what a request to that resource carries."""

    what = "Azure identity"
    #: Honour HTTPS_PROXY and friends (not for IMDS: a link-local address that no proxy should see a token of).
    use_env = True
    #: Plain http to loopback (an endpoint parse_endpoint allowed there), or anywhere (IMDS, link-local by design).
    loopback_http = False
    plain_http = False

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[str, float]] = {}  # resource -> (token, renew at, monotonic)
        self._client: web.Client | None = None

    @property
    def client(self) -> web.Client:
        if self._client is None:
            # No redirects: a token or an assertion stays where it was sent.
            connection = replace(self.connection, allow_http=True) if self.plain_http else self.connection
            self._client = web.Client(connection, use_env=self.use_env, loopback_http=self.loopback_http)
        return self._client

    def token(self, resource: str) -> str:
        with self._lock:
            cached = self._cache.get(resource)
            if cached is not None and time.monotonic() < cached[1]:
                return cached[0]
            token, lifetime = self._fetch(resource)
            # Renewed five minutes before it expires; a token shorter-lived than ten minutes, at half its life.
            self._cache[resource] = (token, time.monotonic() + max(lifetime - MARGIN_S, lifetime / 2))
            return token

    def headers(self, resource: str) -> dict[str, str]:
        return {"Authorization": "Bearer " + self.token(resource)}

    def _fetch(self, resource: str) -> tuple[str, float]:
        """(token, seconds it stays valid) from the source."""
        raise NotImplementedError

    def _answer(self, body: bytes) -> tuple[str, float]:
        """The access token and its lifetime from an OAuth token answer (Entra's or IMDS's)."""
        doc = untrusted.json_document(body, f"{self.what}: the token answer")
        if not isinstance(doc, dict):
            raise IntegrityError(f"{self.what}: the token answer is not a JSON object")
        token = doc.get("access_token")
        if not isinstance(token, str) or not token or not web.is_token(token):
            raise IntegrityError(f"{self.what}: the token answer has no usable access_token")
        kind = doc.get("token_type", "Bearer")
        if not isinstance(kind, str) or kind.lower() != "bearer":
            raise IntegrityError(f"{self.what}: the token answer's token_type is not Bearer")
        lifetime = _seconds(doc.get("expires_in"))
        if lifetime is None:
            expires_on = _seconds(doc.get("expires_on"))
            lifetime = None if expires_on is None else expires_on - time.time()
        if lifetime is None:
            raise IntegrityError(f"{self.what}: the token answer says neither expires_in nor expires_on")
        return token, max(0.0, lifetime)


def _seconds(value: Any) -> float | None:
    """A count of seconds, as a JSON number or a decimal string (IMDS writes strings)."""
    if type(value) is int and 0 <= value < 1 << 40:
        return float(value)
    if isinstance(value, str):
        n = untrusted.decimal(value, 12)
        return None if n is None else float(n)
    return None


class TokenFile(Credential):
    """A bearer token in a file, read at each use (never cached: whoever writes it renews it)."""

    what = "Azure token file"

    def token(self, resource: str) -> str:
        return web.read_secret_file(str(self.connection.token_file), "Azure access token")


class WorkloadIdentity(Credential):
    """AKS Workload Identity: the federated service-account token exchanged at Entra's token endpoint."""

    what = "Azure workload identity"

    def __init__(self, connection: Connection, env: dict[str, str]) -> None:
        super().__init__(connection)
        self.token_file = env["AZURE_FEDERATED_TOKEN_FILE"]
        self.client_id = env.get("AZURE_CLIENT_ID", "")
        tenant = env.get("AZURE_TENANT_ID", "")
        if not _CLIENT.fullmatch(self.client_id) or not _TENANT.fullmatch(tenant):
            raise UsageError(f"{self.what}: AZURE_FEDERATED_TOKEN_FILE is set but AZURE_CLIENT_ID or "
                             "AZURE_TENANT_ID is missing or malformed (the workload identity webhook sets all three: "
                             "is the pod labelled azure.workload.identity/use: \"true\"?)")
        authority = env.get("AZURE_AUTHORITY_HOST") or DEFAULT_AUTHORITY
        parts = web.parse_endpoint(authority, f"{self.what} (AZURE_AUTHORITY_HOST)", connection)
        self.url = urlunsplit((parts.scheme, parts.netloc, f"{parts.path.rstrip('/')}/{tenant}/oauth2/v2.0/token",
                               "", ""))

    def _fetch(self, resource: str) -> tuple[str, float]:
        assertion = web.read_secret_file(self.token_file, "federated service-account token")
        form = {"client_id": self.client_id, "scope": resource.rstrip("/") + "/.default",
                "grant_type": "client_credentials", "client_assertion_type": ASSERTION_TYPE,
                "client_assertion": assertion}
        _, body = web.request_small(self.client, "POST", self.url, f"{self.what} (token exchange)", data=form,
                                    headers={"Accept": "application/json"}, max_bytes=MAX_TOKEN_ANSWER,
                                    statuses={400: DeniedError, 401: DeniedError})
        return self._answer(body)


class _Updating(retry.TransientError):
    """IMDS's 404/410/429: it is updating or throttling; its documentation says to retry."""


class ManagedIdentity(Credential):
    """A managed identity through IMDS (the node's, or AZURE_CLIENT_ID's user-assigned one)."""

    what = "Azure managed identity (IMDS)"
    use_env = False
    loopback_http = True

    def __init__(self, connection: Connection, env: dict[str, str]) -> None:
        super().__init__(connection)
        host = env.get("AZURE_POD_IDENTITY_AUTHORITY_HOST")
        if host:
            parts = web.parse_endpoint(host, f"{self.what} (AZURE_POD_IDENTITY_AUTHORITY_HOST)", connection,
                                       loopback_ok=True)
            base = urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))
        else:
            base = IMDS  # link-local plain http by design: the hypervisor answers, nothing crosses a network
            self.plain_http = True
        self.url = f"{base}/metadata/identity/oauth2/token"
        self.client_id = env.get("AZURE_CLIENT_ID", "")
        if self.client_id and not _CLIENT.fullmatch(self.client_id):
            raise UsageError(f"{self.what}: AZURE_CLIENT_ID is malformed")

    def _fetch(self, resource: str) -> tuple[str, float]:
        query = {"api-version": IMDS_API_VERSION, "resource": resource}
        if self.client_id:
            query["client_id"] = self.client_id
        _, body = web.request_small(self.client, "GET", f"{self.url}?{urlencode(query)}", self.what,
                                    headers={"Metadata": "true"}, max_bytes=MAX_TOKEN_ANSWER,
                                    statuses={400: DeniedError, 404: _Updating, 410: _Updating})
        return self._answer(body)


def credential(connection: Connection, env: dict[str, str] | None = None) -> Credential:
    """The token source for these connection and this environment (see the module's docstring)."""
    env = dict(os.environ) if env is None else env
    choice = connection.extra.get("identity", "").lower()
    if choice not in ("", "token_file", "workload", "imds"):
        raise UsageError("identity= is token_file, workload or imds")
    if choice == "token_file" or (not choice and connection.token_file):
        if not connection.token_file:
            raise UsageError("identity=token_file needs --token-file (or token_file=)")
        return TokenFile(connection)
    if choice == "workload" or (not choice and env.get("AZURE_FEDERATED_TOKEN_FILE")):
        if not env.get("AZURE_FEDERATED_TOKEN_FILE"):
            raise UsageError("identity=workload needs AZURE_FEDERATED_TOKEN_FILE (set by the workload identity "
                             "webhook)")
        return WorkloadIdentity(connection, env)
    return ManagedIdentity(connection, env)


def resource_of(host: str, override: str | None = None) -> str:
    """The token audience of a Key Vault or Managed HSM host: its domain without the first label
    (myvault.vault.azure.net -> https://vault.azure.net, also for sovereign clouds' vault.azure.cn,
    vault.usgovcloudapi.net, managedhsm.azure.net), or `resource=` when given."""
    if override:
        if not _RESOURCE.fullmatch(override):
            raise UsageError("resource= must be an https:// audience such as https://vault.azure.net")
        return override.rstrip("/")
    domain = host.lower().split(".", 1)[1] if "." in host else ""
    if "." not in domain:
        raise UsageError(f"cannot tell the token audience of {untrusted.show(host, 80)}; add resource=https://...")
    return "https://" + domain
