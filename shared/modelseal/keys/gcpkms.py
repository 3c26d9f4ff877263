"""`gcp-kms://projects/P/locations/L/keyRings/R/cryptoKeys/K`: envelope encryption with Google Cloud KMS.

As aws-kms, with Cloud KMS's REST API (no SDK: see modelseal.gcp):
`seal` posts the fresh data key to `POST /v1/{name}:encrypt` and stores the
answer's ciphertext in the header's `wrapped_key`; `fetch-key` and `run`
post it back to `POST /v1/{name}:decrypt` under the URI's key, so a file
wrapped by another key is refused rather than unwrapped by whatever key made
it. Byte fields are base64 in the JSON; the CRC32C integrity fields are sent
and checked both ways (modelseal.crc32c), as Google's data-integrity
guidelines ask.
https://cloud.google.com/kms/docs/reference/rest/v1/projects.locations.keyRings.cryptoKeys/encrypt
https://cloud.google.com/kms/docs/reference/rest/v1/projects.locations.keyRings.cryptoKeys/decrypt
https://cloud.google.com/kms/docs/data-integrity-guidelines

Context: additional authenticated data stands where AWS's encryption context
does, so `context.NAME=VALUE` means the same on every KMS. The context is
`{"modelseal": "v2"}` (version 1 files: "v1") plus the `context.NAME=VALUE` query parameters given to
`seal`; it is stored in the header's `wrapped_key.context`, and its
canonical serialisation is the `additionalAuthenticatedData` of both calls:
the JSON object of its members per RFC 8785 (JCS), that is members sorted by
name compared as UTF-16 code units, no whitespace, strings escaped only where
JSON must (`"`, `\\`, and control characters as \\b \\t \\n \\f \\r or \\u00xx), in
UTF-8. For {"modelseal": "v2", "model": "llama"} that is the 34 bytes
`{"model":"llama","modelseal":"v2"}`. A changed context in the header
changes the AAD and Cloud KMS refuses to decrypt; `context.NAME=VALUE`
given to `fetch-key` must also be in the header, so a pod can insist on, say,
`context.model=llama` and refuse other files before asking KMS.

Cloud KMS answers 400 (INVALID_ARGUMENT) when a ciphertext does not decrypt
under the key and AAD (tampered, another key, another context): exit 4.
401/403/404 exit 3; 429 and 5xx are retried. `--endpoint-url` (or
`endpoint_url=`) replaces https://cloudkms.googleapis.com, for regional
endpoints, Private Service Connect and tests.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import threading
from typing import Any
from urllib.parse import urlunsplit

from .. import gcp, untrusted, web
from ..connection import Connection
from ..crc32c import crc32c
from ..errors import IntegrityError, ModelsealError, UsageError
from ..sealheader import DATA_KEY_SIZE, WrappedKey
from ..uri import URI
from . import KeySource

SCHEMES = ("gcp-kms",)
PROVIDER = "gcp-kms"
BASE_CONTEXT = {"modelseal": "v2"}
DEFAULT_ENDPOINT = "https://cloudkms.googleapis.com"

_NAME = re.compile(r"projects/[^/]+/locations/[^/]+/keyRings/[^/]+/cryptoKeys/[^/]+", re.ASCII)
#: Project ids (also the legacy `example.com:project`), locations, key ring and key names.
_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}", re.ASCII)


def canonical_context(context: dict[str, str], error: type[ModelsealError] = IntegrityError) -> bytes:
    """The AAD of a context: RFC 8785 (JCS) serialisation of an object of strings, in UTF-8."""
    members = sorted(context.items(), key=lambda kv: kv[0].encode("utf-16-be", "surrogatepass"))
    text = "{" + ",".join(json.dumps(k, ensure_ascii=False) + ":" + json.dumps(v, ensure_ascii=False)
                          for k, v in members) + "}"
    return untrusted.utf8(text, "the encryption context", error)


class _Refused(IntegrityError):
    """Cloud KMS's 400 to a decrypt: the ciphertext, key or AAD does not match."""


class Backend(KeySource):
    unwraps = True
    provider = PROVIDER

    def __init__(self, uri: URI, connection: Connection) -> None:
        super().__init__(uri, connection)
        self.name = (uri.netloc + uri.path).strip("/")
        parts = self.name.split("/")
        if not _NAME.fullmatch(self.name) or not all(_SEGMENT.fullmatch(p) for p in parts[1::2]):
            raise UsageError("gcp-kms: the URI is gcp-kms://projects/P/locations/L/keyRings/R/cryptoKeys/K")
        self.what = f"gcp-kms://{self.name}"
        endpoint = web.parse_endpoint(self.connection.endpoint_url or DEFAULT_ENDPOINT, f"{self.what} endpoint",
                                      self.connection, loopback_ok=True)
        self.base = urlunsplit((endpoint.scheme, endpoint.netloc, endpoint.path.rstrip("/"), "", ""))
        self.user_context = {k[len("context."):]: v for k, v in self.connection.extra.items()
                             if k.startswith("context.") and len(k) > len("context.")}
        self._client: Any = None
        self._credentials: gcp.Credentials | None = None
        self._lock = threading.Lock()

    def _call(self, method: str, body: dict[str, str], statuses: dict[int, type] | None = None) -> dict[str, Any]:
        with self._lock:
            if self._client is None:
                self._client = web.Client(self.connection, loopback_http=True)  # no redirects: the token stays here
                self._credentials = gcp.credentials(self.connection)
        assert self._credentials is not None
        headers = self._credentials.headers()
        _, raw = web.request_small(self._client, "POST", f"{self.base}/v1/{self.name}:{method}", self.what,
                                   headers=headers, json=body, statuses=statuses)
        answer = untrusted.json_document(raw, self.what)
        if not isinstance(answer, dict):
            raise IntegrityError(f"{self.what}: Cloud KMS's {method} answer is not a JSON object")
        return answer

    def material(self, wrapped: WrappedKey | None) -> bytes:
        wrapped = self.unwrappable(wrapped, self.user_context, self.what)
        aad = canonical_context(wrapped.context)
        try:
            answer = self._call("decrypt", {
                "ciphertext": _b64(wrapped.ciphertext), "ciphertextCrc32c": str(crc32c(wrapped.ciphertext)),
                "additionalAuthenticatedData": _b64(aad), "additionalAuthenticatedDataCrc32c": str(crc32c(aad)),
            }, statuses={400: _Refused})
        except _Refused:
            raise IntegrityError(f"{self.what}: Cloud KMS refused to decrypt (HTTP 400): the ciphertext, the key "
                                 "or the encryption context does not match") from None
        plaintext = _bytes(answer, "plaintext", self.what)
        if _checksum(answer, "plaintextCrc32c", self.what) != crc32c(plaintext):
            raise IntegrityError(f"{self.what}: the plaintext's CRC32C does not match (corrupted in transit)")
        return plaintext

    def wrap(self, data_key: bytes) -> WrappedKey:
        if len(data_key) != DATA_KEY_SIZE:
            raise UsageError(f"data key must be {DATA_KEY_SIZE} bytes")
        context = dict(BASE_CONTEXT)
        context.update(self.user_context)
        aad = canonical_context(context, UsageError)
        answer = self._call("encrypt", {
            "plaintext": _b64(data_key), "plaintextCrc32c": str(crc32c(data_key)),
            "additionalAuthenticatedData": _b64(aad), "additionalAuthenticatedDataCrc32c": str(crc32c(aad)),
        })
        if answer.get("verifiedPlaintextCrc32c") is not True or \
                answer.get("verifiedAdditionalAuthenticatedDataCrc32c") is not True:
            raise IntegrityError(f"{self.what}: Cloud KMS did not verify the CRC32C of the data key and context "
                                 "(corrupted in transit, or not Cloud KMS)")
        ciphertext = _bytes(answer, "ciphertext", self.what)
        if not ciphertext or _checksum(answer, "ciphertextCrc32c", self.what) != crc32c(ciphertext):
            raise IntegrityError(f"{self.what}: the ciphertext's CRC32C does not match (corrupted in transit)")
        version = answer.get("name")
        # Which CryptoKeyVersion encrypted: Google's guidelines say to check it is the key asked for.
        if not isinstance(version, str) or not version.startswith(self.name + "/cryptoKeyVersions/"):
            raise IntegrityError(f"{self.what}: Cloud KMS's encrypt answer names another key "
                                 f"({untrusted.show(version, 80)})")
        return WrappedKey(provider=PROVIDER, key_id=version, ciphertext=ciphertext, context=context)

    def wrapped_by(self, key_id: str) -> bool:
        """Cloud KMS names the CryptoKeyVersion that wrapped; the URI names the CryptoKey: any of its versions."""
        return key_id.startswith(self.name + "/cryptoKeyVersions/")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _bytes(answer: dict[str, Any], name: str, what: str) -> bytes:
    value = answer.get(name)
    if not isinstance(value, str):
        raise IntegrityError(f"{what}: Cloud KMS's answer has no {name}")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise IntegrityError(f"{what}: Cloud KMS's {name} is not base64") from None


def _checksum(answer: dict[str, Any], name: str, what: str) -> int:
    """An int64 field of the answer (proto3 JSON writes them as decimal strings)."""
    value = answer.get(name)
    number = value if type(value) is int else untrusted.decimal(value, 10) if isinstance(value, str) else None
    if number is None or not 0 <= number <= 0xFFFFFFFF:
        raise IntegrityError(f"{what}: Cloud KMS's answer has no usable {name}")
    return number
