"""Azure's services on 127.0.0.1 for tests/test_azure.py: Azurite (the real emulator), and test servers
for what has no emulator, each following the documented request and answer shapes and checking what
the client sends.

- Azurite (npm; tools/azurite, installed by `make setup`): Microsoft's Azure Storage emulator, Blob
  service only, in memory, on a free port, checking Shared Key signatures and SAS tokens for real.
- EntraServer: the Microsoft identity platform's token endpoint, client credentials grant with a
  federated client assertion (AKS Workload Identity).
  https://learn.microsoft.com/en-us/entra/identity-platform/v2-oauth2-client-creds-grant-flow#third-case-access-token-request-with-a-federated-credential
- IMDSServer: the Instance Metadata Service's managed-identity token endpoint (plain http, as the real
  one at 169.254.169.254).
  https://learn.microsoft.com/en-us/entra/identity/managed-identities-azure-resources/how-to-use-vm-token#get-a-token-using-http
- KeyVaultServer: Key Vault's wrapkey / unwrapkey (RSA-OAEP-256, real RSA with `cryptography`) and
  get-key, api-version 7.4 or later, bearer tokens issued by the two servers above.
  https://learn.microsoft.com/en-us/rest/api/keyvault/keys/wrap-key/wrap-key?view=rest-keyvault-keys-7.4
  https://learn.microsoft.com/en-us/rest/api/keyvault/keys/unwrap-key/unwrap-key?view=rest-keyvault-keys-7.4
  https://learn.microsoft.com/en-us/rest/api/keyvault/keys/get-key/get-key?view=rest-keyvault-keys-7.4
- SKRSidecar: the confidential sidecar's `POST /key/release` (microsoft/confidential-sidecar-containers,
  cmd/skr/README.md "HTTP API" and internal/httpginendpoints/httpginendpoints.go PostKeyRelease): the
  request {maa_endpoint, akv_endpoint, kid}, the answer {"key": "<JWK as a JSON string>"} (200) or
  {"error": ...} (403), the JWK as pkg/skr/skr.go makes it (lestrrat-go/jwx: kty RSA, n, e, d, p, q,
  dp, dq, qi, key_ops when the key has them). `attested=False` plays a guest whose attestation does
  not satisfy the key's release policy.

Every server is a tests/support/http.py `Server`: it records each request (method, path, headers, body)
and takes the same scripted faults, so a test can replace one answer with a malformed one
(`Fault("status", 200, body=...)`) and prove a token never reached it (`saw`).
"""

from __future__ import annotations

import atexit
import base64
import json
import os
import secrets
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .faults import Fault
from .http import Server
from .processes import LOCAL, free_port, start_child, stop_process

REPO = Path(__file__).resolve().parents[2]
AZURITE = REPO / "tools" / "azurite" / "node_modules" / ".bin" / "azurite-blob"
DEV_ACCOUNT = "devstoreaccount1"
DEV_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
#: The Azure SDK's newest api-version can be newer than Azurite's; the oracle speaks one Azurite knows.
SDK_API_VERSION = "2024-08-04"

VAULT = "https://vault.azure.net"
STORAGE = "https://storage.azure.com"
TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
CLIENT_ID = "a1b2c3d4-0000-4000-8000-0123456789ab"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# --------------------------------------------------------------------------- Azurite

def azurite_missing() -> str:
    """Why Azurite cannot run here ('' when it can)."""
    if not AZURITE.exists():
        return f"Azurite is not installed ({AZURITE}): make setup installs it with npm"
    if shutil.which("node") is None:
        return "node is not installed (tools/host-packages.sh installs it)"
    return ""


@dataclass
class Azurite:
    """azurite-blob on 127.0.0.1: in memory, loose, telemetry off; https with `tls` (cert, key) and basic OAuth."""

    port: int
    proc: subprocess.Popen
    scheme: str

    @property
    def endpoint(self) -> str:
        return f"{self.scheme}://{LOCAL}:{self.port}/{DEV_ACCOUNT}"

    @property
    def connection_string(self) -> str:
        return (f"DefaultEndpointsProtocol={self.scheme};AccountName={DEV_ACCOUNT};AccountKey={DEV_KEY};"
                f"BlobEndpoint={self.endpoint};")

    def service(self, endpoint: str | None = None, ca: str | None = None) -> Any:
        """The Azure SDK's client (the test's oracle: it writes what we read and reads what we write)."""
        from azure.storage.blob import BlobServiceClient

        conn = self.connection_string if endpoint is None else self.connection_string.replace(self.endpoint, endpoint)
        kw = {"connection_verify": ca} if ca else {}
        return BlobServiceClient.from_connection_string(conn, api_version=SDK_API_VERSION, **kw)

    def stop(self) -> None:
        stop_process(self.proc)


def start_azurite(tls: tuple[str, str] | None = None) -> Azurite:
    port = free_port()
    # In memory: nothing is written to disk (--location and --inMemoryPersistence exclude each other).
    argv = [str(AZURITE), "--blobHost", LOCAL, "--blobPort", str(port), "--inMemoryPersistence", "--loose", "--skipApiVersionCheck", "--disableTelemetry", "--silent"]
    if tls:
        argv += ["--cert", tls[0], "--key", tls[1], "--oauth", "basic"]

    def ready() -> bool:
        try:
            socket.create_connection((LOCAL, port), timeout=1).close()
            return True
        except OSError:
            return False

    proc = start_child(argv, ready, "azurite", env={k: v for k, v in os.environ.items() if k != "AZURITE_ACCOUNTS"},
                       timeout=60)
    server = Azurite(port, proc, "https" if tls else "http")
    atexit.register(server.stop)
    return server


_azurite: dict[bool, Azurite] = {}
_lock = threading.Lock()


def azurite_server(tls: tuple[str, str] | None = None) -> Azurite:
    """One Azurite (and one https + OAuth one) for the whole test run."""
    with _lock:
        key = tls is not None
        if key not in _azurite:
            _azurite[key] = start_azurite(tls)
        return _azurite[key]


# --------------------------------------------------------------------------- tokens

class Tokens:
    """Access tokens the identity servers issued and the resources they are for (shared with Key Vault)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.issued: dict[str, str] = {}  # token -> resource

    def issue(self, resource: str, tenant: str = TENANT, lifetime: int = 3599) -> str:
        """A JWT-shaped token (unsigned; Azurite's basic OAuth reads aud, iss, nbf and exp, not the signature)."""
        now = int(time.time())
        claims = {"aud": resource, "iss": f"https://sts.windows.net/{tenant}/", "iat": now, "nbf": now - 60,
                  "exp": now + lifetime, "tid": tenant, "oid": CLIENT_ID, "jti": secrets.token_hex(12)}
        token = ".".join(b64url(json.dumps(p).encode()) for p in ({"alg": "RS256", "typ": "JWT"}, claims)) + \
            "." + b64url(secrets.token_bytes(32))
        with self.lock:
            self.issued[token] = resource.rstrip("/")
        return token

    def resource_of(self, authorization: str | None) -> str | None:
        if not authorization or not authorization.startswith("Bearer "):
            return None
        with self.lock:
            return self.issued.get(authorization[len("Bearer "):])


class EntraServer(Server):
    """POST /{tenant}/oauth2/v2.0/token, client credentials with a client assertion (form-encoded).

    Checks: the tenant, client_id, grant_type=client_credentials, the assertion type, the assertion
    (the federated token's content), and a `scope` of RESOURCE/.default. Refusals are Entra's shapes:
    400 {"error": "invalid_client" | "invalid_request" | "invalid_scope", "error_description": ...}.
    """

    def __init__(self, tokens: Tokens, assertion: str, *, tls: Any, lifetime: int = 3599) -> None:
        self.tokens = tokens
        self.assertion = assertion
        self.lifetime = lifetime
        self.exchanges = 0
        super().__init__(tls)

    def handle(self, h: Any, body: bytes, fault: Fault | None) -> None:
        if h.command != "POST" or h.path.split("?")[0] != f"/{TENANT}/oauth2/v2.0/token":
            h.send_json(404, {"error": "not_found"})
            return
        if not h.headers.get("Content-Type", "").startswith("application/x-www-form-urlencoded"):
            h.send_json(400, {"error": "invalid_request", "error_description": "AADSTS900144: form expected"})
            return
        form = {k: v[0] for k, v in parse_qs(body.decode(), keep_blank_values=True).items()}
        scope = form.get("scope", "")
        if form.get("grant_type") != "client_credentials" or form.get("client_id") != CLIENT_ID or \
                form.get("client_assertion_type") != ASSERTION_TYPE:
            h.send_json(400, {"error": "invalid_request", "error_description": "AADSTS90014: bad request"})
            return
        if form.get("client_assertion") != self.assertion:
            h.send_json(400, {"error": "invalid_client",
                              "error_description": "AADSTS700213: No matching federated identity record found"})
            return
        if not scope.endswith("/.default") or " " in scope:
            h.send_json(400, {"error": "invalid_scope", "error_description": "AADSTS1002012: bad scope"})
            return
        with self.lock:
            self.exchanges += 1
        token = self.tokens.issue(scope[: -len("/.default")], lifetime=self.lifetime)
        h.send_json(200, {"token_type": "Bearer", "expires_in": self.lifetime, "ext_expires_in": self.lifetime,
                          "access_token": token})


class IMDSServer(Server):
    """GET /metadata/identity/oauth2/token?api-version=2018-02-01&resource=R[&client_id=C], `Metadata: true`.

    The answer's numbers are strings, as IMDS writes them. Without the Metadata header: 400
    {"error": "invalid_request", ...}; an unknown client_id: 400 {"error": "invalid_request",
    "error_description": "Identity not found"}.
    """

    def __init__(self, tokens: Tokens, client_ids: tuple[str, ...] = ("", CLIENT_ID), lifetime: int = 3599) -> None:
        self.tokens = tokens
        self.client_ids = client_ids
        self.lifetime = lifetime
        super().__init__(None)

    def handle(self, h: Any, body: bytes, fault: Fault | None) -> None:
        parts = urlsplit(h.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        if h.command != "GET" or parts.path != "/metadata/identity/oauth2/token":
            h.send_json(404, {"error": "not_found"})
            return
        if h.headers.get("Metadata") != "true":
            h.send_json(400, {"error": "invalid_request", "error_description": "Required metadata header not specified"})
            return
        if query.get("api-version") != "2018-02-01" or not query.get("resource", "").startswith("https://"):
            h.send_json(400, {"error": "invalid_request", "error_description": "bad api-version or resource"})
            return
        if query.get("client_id", "") not in self.client_ids:
            h.send_json(400, {"error": "invalid_request", "error_description": "Identity not found"})
            return
        token = self.tokens.issue(query["resource"], lifetime=self.lifetime)
        h.send_json(200, {"access_token": token, "refresh_token": "", "expires_in": str(self.lifetime),
                          "expires_on": str(int(time.time()) + self.lifetime), "not_before": str(int(time.time())),
                          "resource": query["resource"], "token_type": "Bearer"})


# --------------------------------------------------------------------------- Key Vault

def rsa_key(bits: int = 2048) -> Any:
    from cryptography.hazmat.primitives.asymmetric import rsa

    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def _int(n: int) -> str:
    return b64url(n.to_bytes((n.bit_length() + 7) // 8, "big"))


def public_jwk(key: Any, kid: str, kty: str = "RSA-HSM",
               ops: tuple[str, ...] = ("wrapKey", "unwrapKey", "encrypt", "decrypt")) -> dict[str, Any]:
    """Key Vault's JsonWebKey of an RSA key's public part (get-key's `key` member)."""
    pub = key.public_key().public_numbers()
    jwk: dict[str, Any] = {"kid": kid, "kty": kty, "key_ops": list(ops), "n": _int(pub.n), "e": _int(pub.e)}
    return jwk


def private_jwk(key: Any, ops: tuple[str, ...] | None = ("wrapKey", "unwrapKey", "encrypt", "decrypt")) -> dict:
    """The released key as the sidecar encodes it (lestrrat-go/jwx's RSA private key, key_ops when set)."""
    priv = key.private_numbers()
    jwk: dict[str, Any] = {"kty": "RSA", "n": _int(priv.public_numbers.n), "e": _int(priv.public_numbers.e),
                           "d": _int(priv.d), "p": _int(priv.p), "q": _int(priv.q), "dp": _int(priv.dmp1),
                           "dq": _int(priv.dmq1), "qi": _int(priv.iqmp)}
    if ops is not None:
        jwk["key_ops"] = list(ops)
    return jwk


def oaep() -> Any:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    return padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


class KeyVaultServer(Server):
    """Key Vault's keys API: POST /keys/{name}[/{version}]/wrapkey, POST /keys/{name}/{version}/unwrapkey,
    GET /keys/{name}[/{version}] — api-version 7.4 or later, `Authorization: Bearer` with a token issued
    for https://vault.azure.net (401 with the WWW-Authenticate challenge otherwise), alg RSA-OAEP-256 only
    (400 BadParameter otherwise), an unwrap that does not decrypt is 400 BadParameter. `forbidden`: the
    identity is authenticated but has no role on the key (403 Forbidden, ForbiddenByRbac). `vault` is the
    host the key identifiers name.
    """

    def __init__(self, tokens: Tokens, vault: str, *, tls: Any) -> None:
        self.tokens = tokens
        self.vault = vault
        self.keys: dict[str, list[tuple[str, Any]]] = {}  # name -> [(version, private key)], latest last
        self.forbidden = False
        super().__init__(tls)

    def add_key(self, name: str, bits: int = 2048) -> tuple[str, Any]:
        version = secrets.token_hex(16)
        key = rsa_key(bits)
        with self.lock:
            self.keys.setdefault(name.lower(), []).append((version, key))
        return version, key

    def kid(self, name: str, version: str) -> str:
        return f"https://{self.vault}/keys/{name}/{version}"

    def bundle(self, name: str, version: str | None = None) -> dict[str, Any]:
        """What get-key (and `az keyvault key show`) answers: {"key": JsonWebKey, "attributes": ...}."""
        version, key = self._find(name, version) or (None, None)
        assert key is not None
        return {"key": public_jwk(key, self.kid(name, version)),
                "attributes": {"enabled": True, "exportable": True, "recoveryLevel": "Recoverable+Purgeable"}}

    def _find(self, name: str, version: str | None) -> tuple[str, Any] | None:
        with self.lock:
            versions = self.keys.get(name.lower(), [])
        if not versions:
            return None
        if not version:
            return versions[-1]
        return next(((v, k) for v, k in versions if v == version), None)

    def handle(self, h: Any, body: bytes, fault: Fault | None) -> None:
        parts = urlsplit(h.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        version = query.get("api-version", "")
        if not version or not (version.startswith("7.") and version >= "7.4" or version[:4].isdigit()):
            h.send_json(400, {"error": {"code": "BadParameter", "message": "api-version 7.4 or later is required"}})
            return
        authorization = h.headers.get("Authorization")
        resource = self.tokens.resource_of(authorization)
        if resource != VAULT:
            h.respond(401, json.dumps({"error": {"code": "Unauthorized", "message": "AKV10000"}}).encode(),
                      {"Content-Type": "application/json", "WWW-Authenticate":
                       f'Bearer authorization="https://login.microsoftonline.com/{TENANT}", resource="{VAULT}"'})
            return
        if self.forbidden:
            h.send_json(403, {"error": {"code": "Forbidden", "message": "Caller is not authorized",
                                        "innererror": {"code": "ForbiddenByRbac"}}})
            return
        segments = parts.path.split("/")[1:]
        if len(segments) < 2 or segments[0] != "keys":
            h.send_json(404, {"error": {"code": "NotFound"}})
            return
        op = segments[-1] if h.command == "POST" else None
        ident = segments[1:-1] if op else segments[1:]
        if len(ident) not in (1, 2):
            h.send_json(404, {"error": {"code": "NotFound"}})
            return
        found = self._find(ident[0], ident[1] if len(ident) == 2 else None)
        if found is None:
            h.send_json(404, {"error": {"code": "KeyNotFound", "message": "A key with (name/id) was not found"}})
            return
        kv, key = found
        kid = self.kid(ident[0], kv)
        if h.command == "GET" and op is None:
            h.send_json(200, {"key": public_jwk(key, kid), "attributes": {"enabled": True}})
            return
        try:
            req = json.loads(body)
            alg, value = req["alg"], unb64url(req["value"])
        except (ValueError, KeyError, TypeError):
            h.send_json(400, {"error": {"code": "BadParameter", "message": "malformed request"}})
            return
        if alg != "RSA-OAEP-256":
            h.send_json(400, {"error": {"code": "BadParameter", "message": f"alg {alg} not allowed"}})
            return
        if op == "wrapkey":
            h.send_json(200, {"kid": kid, "value": b64url(key.public_key().encrypt(value, oaep()))})
        elif op == "unwrapkey":
            if len(ident) != 2:
                h.send_json(404, {"error": {"code": "NotFound"}})
                return
            try:
                plain = key.decrypt(value, oaep())
            except ValueError:
                h.send_json(400, {"error": {"code": "BadParameter", "message": "Bad Parameter"}})
                return
            h.send_json(200, {"kid": kid, "value": b64url(plain)})
        else:
            h.send_json(404, {"error": {"code": "NotFound"}})


# --------------------------------------------------------------------------- the SKR sidecar

class SKRSidecar(Server):
    """POST /key/release {maa_endpoint, akv_endpoint, kid} -> 200 {"key": "<JWK JSON>"} or 403 {"error": ...}.

    Requests are checked as gin's binding would (the three members required, strings; the endpoints
    without a scheme, as pkg/common/akv.go prefixes https://); `maa` is the one attestation authority of
    every key's release policy. `keys` maps (akv_endpoint, kid) to the private key; a kid of NAME also
    finds NAME/VERSION's key (the latest version, as Key Vault's release without a version).
    """

    def __init__(self, maa: str, *, tls: Any = None) -> None:
        self.maa = maa
        self.attested = True
        self.keys: dict[tuple[str, str], Any] = {}
        self.key_ops: tuple[str, ...] | None = ("wrapKey", "unwrapKey", "encrypt", "decrypt")
        super().__init__(tls)

    def put(self, vault: str, name: str, version: str, key: Any) -> None:
        with self.lock:
            self.keys[(vault, f"{name}/{version}")] = key
            self.keys[(vault, name)] = key

    def handle(self, h: Any, body: bytes, fault: Fault | None) -> None:
        if h.command == "GET" and h.path == "/status":
            h.send_json(200, {"message": "Status OK"})
            return
        if h.command != "POST" or h.path != "/key/release":
            h.send_json(404, {"error": "not found"})
            return
        try:
            req = json.loads(body)
            maa, akv, kid = req["maa_endpoint"], req["akv_endpoint"], req["kid"]
            if not all(isinstance(x, str) and x for x in (maa, akv, kid)):
                raise ValueError
        except (ValueError, KeyError, TypeError):
            h.send_json(400, {"error": "invalid request format"})
            return
        if "://" in maa or "://" in akv:
            h.send_json(403, {"error": "secure key release failed: endpoints go without https://"})
            return
        if maa != self.maa or not self.attested:
            h.send_json(403, {"error": "secure key release failed: attestation does not satisfy the release policy"})
            return
        with self.lock:
            key = self.keys.get((akv, kid))
        if key is None:
            h.send_json(403, {"error": f"releasing the key {kid} failed: key not found"})
            return
        h.send_json(200, {"key": json.dumps(private_jwk(key, self.key_ops))})
