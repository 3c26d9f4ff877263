"""Google Cloud access tokens for gcp-kms:// and gs://, the way pods get them.

Built on requests (web.Client, the retry policy) and cryptography, not on
google-auth and the google-cloud-kms / google-cloud-storage SDKs: measured with
`pip install --target`, google-cloud-storage 3.17.1 + google-cloud-kms 3.18.0
install 65 MB, 43 MB of it beyond the requests and cryptography we ship anyway
(grpcio, protobuf, google-api-core, google-auth, opentelemetry), for what is
here a JWT and a few documented REST calls; the fetch image has a budget.

Where the token comes from, in the order Google's SDKs look (google.auth.default):

1. `GOOGLE_APPLICATION_CREDENTIALS` names a service-account key file (JSON,
   `"type": "service_account"`). An RS256 JWT assertion signed with its private
   key (iss = client_email, scope = cloud-platform, aud = token_uri, valid one
   hour, kid = private_key_id) is exchanged at the file's `token_uri` by the
   jwt-bearer grant (RFC 7523):
   https://developers.google.com/identity/protocols/oauth2/service-account#httprest
2. Otherwise the metadata server: GKE Workload Identity's (the pod's Kubernetes
   service account, bound to a Google service account) or a VM's.
   `GET http://metadata.google.internal/computeMetadata/v1/instance/service-accounts/default/token`
   with `Metadata-Flavor: Google`; `GCE_METADATA_HOST` replaces the host, as in
   Google's SDKs. Plain http to a link-local service is the design; the answer
   must carry `Metadata-Flavor: Google` too, or it is not the metadata server.
   https://cloud.google.com/compute/docs/access/authenticate-workloads#applications
   https://cloud.google.com/kubernetes-engine/docs/concepts/workload-identity#metadata_server
3. No token (anonymous), only where the caller allows it: gs:// with
   `anonymous=true`, or with `STORAGE_EMULATOR_HOST` set (as the SDKs do).

Tokens are cached in the process until REFRESH_MARGIN seconds before they
expire, shared by every backend (the key source and the model source of `run`
ask once). A token only ever goes into the Authorization header of a request
to the endpoint it is for: never into a log line or a message, and never
through a redirect (web.Client refuses them). A malformed answer is exit 4;
401/403 (and an OAuth `invalid_grant`, HTTP 400) exit 3.
"""

from __future__ import annotations

import base64
import json
import os
import re
import threading
import time
from dataclasses import replace
from typing import Any

from . import retry, untrusted, web
from .connection import Connection
from .errors import DeniedError, IntegrityError, UsageError, from_os_error

SCOPE = "https://www.googleapis.com/auth/cloud-platform"
METADATA_HOST = "metadata.google.internal"
METADATA_TOKEN_PATH = "/computeMetadata/v1/instance/service-accounts/default/token"
DEFAULT_TOKEN_URI = "https://oauth2.googleapis.com/token"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
#: A cached token is renewed when less than this many seconds of it are left.
REFRESH_MARGIN = 60
#: The longest lifetime we believe (Google's access tokens live an hour; 12 h at most).
MAX_LIFETIME = 86400
#: The longest access token we accept (Google's are a few hundred characters).
MAX_TOKEN = 8192
#: A service-account key file is a few KiB.
MAX_KEY_FILE = 64 << 10

_HOST = re.compile(r"(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?", re.ASCII)

_lock = threading.Lock()
_cache: dict[tuple[str, ...], tuple[str, float]] = {}  # identity -> (token, monotonic expiry)


class Credentials:
    """Where a bearer token comes from; `headers()` is what a request carries."""

    what = "gcp credentials"

    def identity(self) -> tuple[str, ...]:
        raise NotImplementedError

    def fetch(self) -> tuple[str, int]:
        """A fresh token and its lifetime in seconds (not cached)."""
        raise NotImplementedError

    def token(self) -> str:
        key = self.identity()
        with _lock:  # one fetch at a time: parallel parts wait for the first instead of all asking
            hit = _cache.get(key)
            if hit is not None and hit[1] - REFRESH_MARGIN > time.monotonic():
                return hit[0]
            value, lifetime = self.fetch()
            _cache[key] = (value, time.monotonic() + lifetime)
            return value

    def headers(self) -> dict[str, str]:
        return {"Authorization": "Bearer " + self.token()}


class Anonymous(Credentials):
    """No token: public buckets and emulators."""

    what = "anonymous"

    def headers(self) -> dict[str, str]:
        return {}


class MetadataServer(Credentials):
    """The metadata server of a GKE node (Workload Identity) or a VM."""

    def __init__(self, connection: Connection) -> None:
        host = os.environ.get("GCE_METADATA_HOST") or METADATA_HOST
        if not _HOST.fullmatch(host):
            raise UsageError("GCE_METADATA_HOST must be host[:port], nothing else")
        self.host = host
        self.what = "gcp metadata server"
        self.connection = connection

    def identity(self) -> tuple[str, ...]:
        return ("metadata", self.host)

    def fetch(self) -> tuple[str, int]:
        # No proxy from the environment: the metadata server is link-local, and a proxy would see the token.
        # Plain http is its protocol (there is no TLS on it); this client follows no redirect, so the
        # allowance (web.Client refuses plain http without allow_http) reaches no other host.
        client = web.Client(replace(self.connection, allow_http=True), use_env=False)
        holder: dict[str, Any] = {}

        def once() -> None:
            resp = client.request("GET", f"http://{self.host}{METADATA_TOKEN_PATH}", self.what,
                                  headers={"Metadata-Flavor": "Google"})
            try:
                retry.check_status(resp.status_code, self.what, resp.headers)
                if resp.headers.get("Metadata-Flavor") != "Google":
                    raise IntegrityError(f"{self.what}: the answer has no Metadata-Flavor: Google header; "
                                         "that is not the metadata server")
                holder["body"] = _small_body(resp, self.what)
            finally:
                resp.close()

        retry.call(self.what, self.connection, once)
        return token_answer(holder["body"], self.what)


class ServiceAccountKey(Credentials):
    """A service-account key file: a signed JWT exchanged for an access token."""

    def __init__(self, path: str, connection: Connection) -> None:
        self.what = "gcp service-account key (GOOGLE_APPLICATION_CREDENTIALS)"
        self.connection = connection
        doc = _read_key_file(path, self.what)
        if doc.get("type") != "service_account":
            raise UsageError(f"{self.what}: only \"type\": \"service_account\" key files are supported "
                             f"(this one is {untrusted.show(doc.get('type'), 40)})")
        self.email = _key_text(doc, "client_email", self.what)
        self.key_id = _key_text(doc, "private_key_id", self.what, optional=True)
        self.token_uri = _key_text(doc, "token_uri", self.what, optional=True) or DEFAULT_TOKEN_URI
        web.parse_endpoint(self.token_uri, f"{self.what}: token_uri", connection)
        self._key = _private_key(_key_text(doc, "private_key", self.what), self.what)

    def identity(self) -> tuple[str, ...]:
        return ("key", self.email, self.key_id, self.token_uri)

    def assertion(self, now: int | None = None) -> str:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        now = int(time.time()) if now is None else now
        header = {"alg": "RS256", "typ": "JWT", **({"kid": self.key_id} if self.key_id else {})}
        claims = {"iss": self.email, "scope": SCOPE, "aud": self.token_uri, "iat": now, "exp": now + 3600}
        signing_input = _b64url(_compact(header)) + b"." + _b64url(_compact(claims))
        signature = self._key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
        return (signing_input + b"." + _b64url(signature)).decode("ascii")

    def fetch(self) -> tuple[str, int]:
        client = web.Client(self.connection)
        # OAuth answers 400 invalid_grant to a bad signature, an unknown or disabled key, a wrong aud.
        _, body = web.request_small(client, "POST", self.token_uri, f"{self.what}: token exchange",
                                    data={"grant_type": JWT_BEARER, "assertion": self.assertion()},
                                    statuses={400: DeniedError})
        return token_answer(body, f"{self.what}: token exchange")


def credentials(connection: Connection, *, anonymous: bool = False) -> Credentials:
    """The credentials of this pod or host, by the order above."""
    if anonymous:
        return Anonymous()
    path = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
    if path:
        return ServiceAccountKey(path, connection)
    return MetadataServer(connection)


def token_answer(body: bytes, what: str) -> tuple[str, int]:
    """(access_token, expires_in) of a metadata-server or OAuth token answer; anything else is exit 4.

    The token itself is never quoted in a message.
    """
    doc = untrusted.json_document(body, what)
    if not isinstance(doc, dict):
        raise IntegrityError(f"{what}: the token answer is not a JSON object")
    token = doc.get("access_token")
    if not isinstance(token, str) or not token:
        raise IntegrityError(f"{what}: the token answer has no access_token")
    if len(token) > MAX_TOKEN or not web.is_token(token):
        raise IntegrityError(f"{what}: the access_token is not a bearer token (too long, spaces or control "
                             "characters)")
    kind = doc.get("token_type")
    if kind is not None and (not isinstance(kind, str) or kind.lower() != "bearer"):
        raise IntegrityError(f"{what}: the token is of type {untrusted.show(kind, 40)}, not Bearer")
    lifetime = doc.get("expires_in")
    if type(lifetime) is not int or not 0 < lifetime <= MAX_LIFETIME:
        raise IntegrityError(f"{what}: the token answer has no usable expires_in")
    return token, lifetime


def _small_body(resp: Any, what: str) -> bytes:
    length = web.content_length(resp.headers, what)
    body = resp.raw.read(web.MAX_SECRET + 1, decode_content=False)
    if len(body) > web.MAX_SECRET:
        raise IntegrityError(f"{what}: answer is larger than {web.MAX_SECRET} bytes")
    if length is not None and length != len(body):
        raise retry.TransientError(f"body cut short ({len(body)} of {length} bytes)")
    return body


def _read_key_file(path: str, what: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_KEY_FILE + 1)
    except OSError as exc:
        raise from_os_error(exc, f"{what} {path}") from None
    if len(data) > MAX_KEY_FILE:
        raise UsageError(f"{what}: {path} is too large for a key file")
    doc = untrusted.json_document(data, f"{what} {path}", UsageError)
    if not isinstance(doc, dict):
        raise UsageError(f"{what}: {path} is not a JSON object")
    return doc


def _key_text(doc: dict[str, Any], name: str, what: str, optional: bool = False) -> str:
    value = doc.get(name)
    if value is None and optional:
        return ""
    if not isinstance(value, str) or not value:
        raise UsageError(f"{what}: the key file has no {name}")
    return value


def _private_key(pem: str, what: str) -> Any:
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    try:
        key = serialization.load_pem_private_key(untrusted.utf8(pem, what, UsageError), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise UsageError(f"{what}: private_key is not an unencrypted PEM private key") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise UsageError(f"{what}: private_key is not an RSA key (RS256 needs one)")
    return key


def _compact(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _b64url(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")
