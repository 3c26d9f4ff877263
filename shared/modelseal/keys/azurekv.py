"""`azure-kv://VAULT/keys/NAME[/VERSION]`: envelope encryption with Azure Key Vault or Managed HSM.

VAULT is the vault's host (myvault.vault.azure.net, myhsm.managedhsm.azure.net,
a sovereign cloud's vault.azure.cn ...); the key is an RSA key (RSA or RSA-HSM,
2048 to 4096 bits). `seal` asks Key Vault to wrap the data key and stores the
answer in the header's `wrapped_key` (key_id: the versioned key identifier
Key Vault answers with); `fetch-key` and `run` ask it to unwrap that, at the
version that wrapped it, so a rotated key keeps opening old files. The
private key never leaves Key Vault; who may unwrap is an Azure RBAC decision
(Key Vault Crypto User, or Managed HSM Crypto User, on the key).

REST API, api-version 7.4 (the Key Vault keys reference):
  POST https://VAULT/keys/NAME[/VERSION]/wrapkey?api-version=7.4
  POST https://VAULT/keys/NAME/VERSION/unwrapkey?api-version=7.4
  body {"alg": "RSA-OAEP-256", "value": base64url} -> {"kid": ..., "value": base64url}
https://learn.microsoft.com/en-us/rest/api/keyvault/keys/wrap-key/wrap-key?view=rest-keyvault-keys-7.4
https://learn.microsoft.com/en-us/rest/api/keyvault/keys/unwrap-key/unwrap-key?view=rest-keyvault-keys-7.4
RSA-OAEP-256 is RSAES-OAEP (RFC 8017) with SHA-256 and MGF1-SHA-256 and an
empty label, the algorithm of the same name in JWA (RFC 7518 section 4.3);
the SKR sidecar's own tool wraps with it too, so azure-skr:// opens what this
wraps (same key) and the other way round.

The bearer token comes from modelseal.azure (workload identity, IMDS or a
token file), for the audience of VAULT's domain (https://vault.azure.net,
https://managedhsm.azure.net, ...; `resource=` overrides); it is sent to
this one origin only (no redirect is followed: exit 2). `--endpoint-url`
replaces https://VAULT (a private endpoint, tests); the identifiers keep VAULT.

Context: `context.NAME=VALUE` means what it means for aws-kms and gcp-kms:
the context is `{"modelseal": "v2"}` (version 1 files: "v1") plus the `context.*` given to `seal`,
stored in the header, and `fetch-key`'s `context.*` must be in it. RSA-OAEP
has no associated data, so the context is bound into what is wrapped: the
wrapped plaintext is 64 bytes, the data key then the SHA-256 of the context's
RFC 8785 (JCS) serialisation (the bytes gcp-kms uses as its additional
authenticated data, e.g. `{"model":"llama","modelseal":"v2"}`). On unwrap the
second half must equal the hash of the header's context, or exit 4 before the
key is used: a header whose context was changed does not unwrap. What it does
not give: Key Vault's logs and policies do not see the context (Key Vault has
no such field), and since anyone with the public key can wrap, the context,
like the whole file, says nothing about who sealed (sign the model for that).

Answers: 400 to an unwrap (the ciphertext does not decrypt under the key)
exit 4; 401/403/404 exit 3; 429 and 5xx are retried; a malformed answer exits 4.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from .. import azure, untrusted, web
from ..connection import Connection
from ..errors import IntegrityError, ModelsealError, UsageError
from ..sealheader import DATA_KEY_SIZE, WrappedKey
from ..uri import URI
from . import KeySource

SCHEMES = ("azure-kv",)
PROVIDER = "azure-kv"
#: Both wrap RSA-OAEP-256 over the same 64 bytes: either opens the other's files.
PROVIDERS = ("azure-kv", "azure-skr")
BASE_CONTEXT = {"modelseal": "v2"}
API_VERSION = "7.4"
ALG = "RSA-OAEP-256"
BOUND_SIZE = DATA_KEY_SIZE + 32
#: Key Vault's RSA sizes: a ciphertext is one modulus long.
RSA_BITS = (2048, 3072, 4096)

HOST = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)+", re.ASCII)
_NAME = re.compile(r"[0-9A-Za-z-]{1,127}", re.ASCII)
_VERSION = re.compile(r"[0-9A-Za-z]{1,64}", re.ASCII)
_B64URL = re.compile(r"[A-Za-z0-9_-]*={0,2}", re.ASCII)


@dataclass(frozen=True)
class KeyRef:
    """A Key Vault key: vault host, name, version ("" when not pinned)."""

    vault: str
    name: str
    version: str = ""

    @classmethod
    def of_uri(cls, uri: Any) -> "KeyRef":
        scheme = uri.scheme
        usage = f"{scheme}: the URI is {scheme}://VAULT/keys/NAME[/VERSION] (VAULT: e.g. myvault.vault.azure.net)"
        parts = uri.path.split("/")
        host = uri.netloc.lower()
        if not HOST.fullmatch(host) or len(parts) not in (3, 4) or parts[0] != "" or parts[1] != "keys":
            raise UsageError(usage)
        name, version = parts[2], parts[3] if len(parts) == 4 else ""
        if not _NAME.fullmatch(name) or (len(parts) == 4 and not _VERSION.fullmatch(version)):
            raise UsageError(usage)
        return cls(host, name, version)

    @classmethod
    def of_id(cls, kid: Any) -> "KeyRef | None":
        """A key identifier https://VAULT/keys/NAME[/VERSION], or None when it is not one."""
        if not isinstance(kid, str) or len(kid) > 512:
            return None
        parts = urlsplit(kid)
        path = parts.path.split("/")
        host = (parts.netloc or "").lower()
        if parts.scheme != "https" or not HOST.fullmatch(host) or parts.query or parts.fragment or \
                len(path) not in (3, 4) or path[0] != "" or path[1] != "keys" or not _NAME.fullmatch(path[2]):
            return None
        version = path[3] if len(path) == 4 else ""
        if len(path) == 4 and not _VERSION.fullmatch(version):
            return None
        return cls(host, path[2], version)

    @property
    def kid(self) -> str:
        return f"https://{self.vault}/keys/{self.name}" + (f"/{self.version}" if self.version else "")

    def same_key(self, other: "KeyRef") -> bool:
        """Same vault and key name (Key Vault's names are case-insensitive), any version."""
        return self.vault == other.vault and self.name.lower() == other.name.lower()

    def names(self, kid: str) -> bool:
        """Whether a key identifier is this key (at this version, when the URI pins one)."""
        theirs = KeyRef.of_id(kid)
        return theirs is not None and self.same_key(theirs) and \
            (not self.version or theirs.version.lower() == self.version.lower())

    def of_header(self, wrapped: WrappedKey, what: str) -> "KeyRef":
        """The key that wrapped the header's data key, which must be this one (and this version when pinned)."""
        theirs = KeyRef.of_id(wrapped.key_id)
        if theirs is None or not self.same_key(theirs) or \
                (self.version and theirs.version and theirs.version.lower() != self.version.lower()):
            raise IntegrityError(f"{what}: the file's data key was wrapped by another key "
                                 f"({untrusted.show(wrapped.key_id, 120)})")
        return KeyRef(self.vault, self.name, theirs.version or self.version)


def user_context(connection: Any) -> dict[str, str]:
    return {k[len("context."):]: v for k, v in connection.extra.items()
            if k.startswith("context.") and len(k) > len("context.")}


def check_provider(wrapped: WrappedKey, scheme: str) -> None:
    if wrapped.provider not in PROVIDERS:
        raise UsageError(f"the file's data key is wrapped by {untrusted.show(wrapped.provider, 40)}, not by {scheme} "
                         "(azure-kv and azure-skr open each other's files)")


def check_context(wrapped: WrappedKey, wanted: dict[str, str], what: str) -> None:
    for k, v in wanted.items():
        if wrapped.context.get(k) != v:
            raise IntegrityError(f"{what}: the file's encryption context does not have {k}={v}")


def canonical_context(context: dict[str, str], error: type[ModelsealError] = IntegrityError) -> bytes:
    """RFC 8785 (JCS) serialisation of an object of strings, in UTF-8 (gcp-kms's AAD bytes)."""
    members = sorted(context.items(), key=lambda kv: kv[0].encode("utf-16-be", "surrogatepass"))
    text = "{" + ",".join(json.dumps(k, ensure_ascii=False) + ":" + json.dumps(v, ensure_ascii=False)
                          for k, v in members) + "}"
    return untrusted.utf8(text, "the encryption context", error)


def bind(data_key: bytes, context: dict[str, str]) -> bytes:
    """What is wrapped: the data key, then SHA-256 of the context's canonical bytes."""
    if len(data_key) != DATA_KEY_SIZE:
        raise UsageError(f"data key must be {DATA_KEY_SIZE} bytes")
    return bytes(data_key) + hashlib.sha256(canonical_context(context, UsageError)).digest()


def unbind(plaintext: bytes | bytearray, context: dict[str, str], what: str) -> bytes:
    """The data key from an unwrapped plaintext, after its context hash matched the header's context."""
    if len(plaintext) != BOUND_SIZE:
        raise IntegrityError(f"{what}: the unwrapped key is {len(plaintext)} bytes, expected {BOUND_SIZE} "
                             "(not wrapped by modelseal)")
    if not hmac.compare_digest(bytes(plaintext[DATA_KEY_SIZE:]), hashlib.sha256(canonical_context(context)).digest()):
        raise IntegrityError(f"{what}: the file's encryption context is not the one its data key was wrapped with "
                             "(the header was changed)")
    return bytes(plaintext[:DATA_KEY_SIZE])


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(value: Any, what: str, max_chars: int = 4096) -> bytes:
    """Strict base64url (RFC 4648 section 5), padding optional; anything else is malformed."""
    if not isinstance(value, str) or len(value) > max_chars or not _B64URL.fullmatch(value):
        raise IntegrityError(f"{what} is not base64url")
    text = value.rstrip("=")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise IntegrityError(f"{what} is not base64url") from None


class _Refused(IntegrityError):
    """Key Vault's 400 to an unwrap: the ciphertext does not decrypt under this key."""


class Backend(KeySource):
    unwraps = True
    provider = PROVIDER
    providers = PROVIDERS

    def __init__(self, uri: URI, connection: Connection) -> None:
        super().__init__(uri, connection)
        self.ref = KeyRef.of_uri(uri)
        self.what = f"azure-kv://{self.ref.vault}/keys/{self.ref.name}" + (f"/{self.ref.version}"
                                                                           if self.ref.version else "")
        endpoint = self.connection.endpoint_url or f"https://{self.ref.vault}"
        parts = web.parse_endpoint(endpoint, f"{self.what} endpoint", self.connection, loopback_ok=True)
        self.base = urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))
        self.resource = azure.resource_of(self.ref.vault, self.connection.extra.get("resource"))
        self.user_context = user_context(self.connection)
        self._client: web.Client | None = None
        self._credential: azure.Credential | None = None
        self._lock = threading.Lock()

    def _call(self, ref: KeyRef, op: str, value: bytes,
              statuses: dict[int, type] | None = None) -> tuple[KeyRef, bytes]:
        """POST one key operation; the key the answer names (which must be `ref`) and its `value`, decoded."""
        with self._lock:
            if self._client is None:
                # No redirects: the token stays with this endpoint; plain http to loopback as parse_endpoint allowed.
                self._client = web.Client(self.connection, loopback_http=True)
                self._credential = azure.credential(self.connection)
        assert self._credential is not None
        path = f"/keys/{ref.name}" + (f"/{ref.version}" if ref.version else "")
        _, raw = web.request_small(self._client, "POST", f"{self.base}{path}/{op}?api-version={API_VERSION}",
                                   self.what, headers=self._credential.headers(self.resource),
                                   json={"alg": ALG, "value": b64url(value)}, statuses=statuses)
        answer = untrusted.json_document(raw, f"{self.what}: Key Vault's {op} answer")
        if not isinstance(answer, dict):
            raise IntegrityError(f"{self.what}: Key Vault's {op} answer is not a JSON object")
        kid = KeyRef.of_id(answer.get("kid"))
        if kid is None or not ref.same_key(kid) or (ref.version and kid.version.lower() != ref.version.lower()):
            raise IntegrityError(f"{self.what}: Key Vault's {op} answer names another key "
                                 f"({untrusted.show(answer.get('kid'), 120)})")
        return kid, b64url_decode(answer.get("value"), f"{self.what}: the value of Key Vault's {op} answer")

    def material(self, wrapped: WrappedKey | None) -> bytes:
        assert wrapped is not None  # KeySource.data_key checks
        check_provider(wrapped, "azure-kv")
        check_context(wrapped, self.user_context, self.what)
        ref = self.ref.of_header(wrapped, self.what)
        if not ref.version:
            raise UsageError(f"{self.what}: the file's key id names no key version, and unwrapping needs the one "
                             "that wrapped: add /VERSION to the URI")
        try:
            _, plaintext = self._call(ref, "unwrapkey", wrapped.ciphertext, statuses={400: _Refused})
        except _Refused:
            raise IntegrityError(f"{self.what}: Key Vault refused to unwrap (HTTP 400): the wrapped key was not made "
                                 "by this key, or was changed") from None
        return unbind(plaintext, wrapped.context, self.what)

    def wrap(self, data_key: bytes) -> WrappedKey:
        context = dict(BASE_CONTEXT)
        context.update(self.user_context)
        kid, ciphertext = self._call(self.ref, "wrapkey", bind(data_key, context))
        if not kid.version:
            raise IntegrityError(f"{self.what}: Key Vault's wrapkey answer names no key version")
        if len(ciphertext) * 8 not in RSA_BITS:
            raise IntegrityError(f"{self.what}: Key Vault's wrapped key is {len(ciphertext)} bytes, not one RSA "
                                 "modulus (2048, 3072 or 4096 bits)")
        return WrappedKey(provider=PROVIDER, key_id=kid.kid, ciphertext=ciphertext, context=context)

    def wrapped_by(self, key_id: str) -> bool:
        return self.ref.names(key_id)
