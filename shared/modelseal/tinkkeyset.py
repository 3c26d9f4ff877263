"""Reading a Tink cleartext keyset (JSON) holding an AES-GCM-HKDF streaming key.

The key value is a small serialized protobuf (AesGcmHkdfStreamingKey); parsing
its three fields by hand avoids pulling protobuf into images for one message.
"""

from __future__ import annotations

import base64

from . import untrusted
from .errors import IntegrityError, UsageError
from .streaming import Params

TYPE_URL = "type.googleapis.com/google.crypto.tink.AesGcmHkdfStreamingKey"
_HASH_TYPES = {1: "SHA1", 2: "SHA384", 3: "SHA256", 4: "SHA512", 5: "SHA224"}

# Tink's key templates for raw keys (no keyset around them).
TEMPLATES = {
    "AES128_GCM_HKDF_4KB": Params(16, "SHA256", 4096),
    "AES128_GCM_HKDF_1MB": Params(16, "SHA256", 1 << 20),
    "AES256_GCM_HKDF_4KB": Params(32, "SHA256", 4096),
    "AES256_GCM_HKDF_1MB": Params(32, "SHA256", 1 << 20),
}


def _fields(data: bytes) -> dict[int, bytes | int]:
    """Decode one protobuf message level: field number -> varint or bytes."""
    out: dict[int, bytes | int] = {}
    i = 0

    def varint() -> int:
        nonlocal i
        shift = result = 0
        while True:
            if i >= len(data) or shift > 63:
                raise IntegrityError("bad Tink keyset: truncated protobuf")
            b = data[i]
            i += 1
            result |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return result

    while i < len(data):
        tag = varint()
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            out[number] = varint()
        elif wire == 2:
            n = varint()
            if i + n > len(data):
                raise IntegrityError("bad Tink keyset: truncated protobuf")
            out[number] = data[i : i + n]
            i += n
        else:
            raise IntegrityError(f"bad Tink keyset: unexpected protobuf wire type {wire}")
    return out


def _is_json_text(data: bytes) -> bool:
    """A keyset is text starting with "{"; a raw key is binary, even when its first byte is 0x7b
    (one random key in 256): binary meaning not UTF-8 or holding control characters."""
    if not data.lstrip().startswith(b"{"):
        return False
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(c.isprintable() or c in "\t\r\n" for c in text)


def parse_key_value(value: bytes) -> tuple[bytes, Params]:
    key = _fields(value)
    params = _fields(_bytes(key.get(2, b"")))
    ikm = key.get(3)
    if not isinstance(ikm, bytes) or not ikm:
        raise IntegrityError("bad Tink keyset: no key value")
    hash_name = _HASH_TYPES.get(_int(params.get(3, 0)))
    if hash_name is None:
        raise IntegrityError("bad Tink keyset: unknown HKDF hash type")
    try:
        return ikm, Params(_int(params.get(2, 0)), hash_name, _int(params.get(1, 0)))
    except UsageError as exc:  # parameters Tink's streaming AEAD does not have
        raise IntegrityError(f"bad Tink keyset: {exc}") from None


def _bytes(value: bytes | int) -> bytes:
    if not isinstance(value, bytes):
        raise IntegrityError("bad Tink keyset: a protobuf field has the wrong wire type")
    return value


def _int(value: bytes | int) -> int:
    if not isinstance(value, int):
        raise IntegrityError("bad Tink keyset: a protobuf field has the wrong wire type")
    return value


def load(data: bytes, template: str = "AES256_GCM_HKDF_1MB") -> tuple[bytes, Params]:
    """Key bytes and parameters from a keyset JSON, or from raw key bytes plus a template.

    A keyset may come from a key service: every malformed one is IntegrityError (exit 4);
    a well-formed keyset of another key type is a usage error.
    """
    if template not in TEMPLATES:
        raise UsageError(f"unknown Tink template {template!r} ({', '.join(TEMPLATES)})")
    if not _is_json_text(data):
        params = TEMPLATES[template]
        if len(data) < params.key_size:
            raise UsageError(f"raw Tink key is {len(data)} bytes, {template} needs at least {params.key_size}")
        return data, params
    bad = "bad Tink keyset JSON: no enabled primary AES-GCM-HKDF streaming key"
    keyset = untrusted.json_document(data, "bad Tink keyset JSON")
    entries = untrusted.member(keyset, "key", "bad Tink keyset JSON")
    if not isinstance(entries, list) or not all(isinstance(k, dict) for k in entries):
        raise IntegrityError(bad)
    primary = keyset.get("primaryKeyId")
    keys = [k for k in entries if k.get("status", "ENABLED") == "ENABLED"]
    key = next((k for k in keys if k.get("keyId") == primary), keys[0] if len(keys) == 1 else None)
    type_url = untrusted.member(key, "keyData.typeUrl", "bad Tink keyset JSON")
    value = untrusted.member(key, "keyData.value", "bad Tink keyset JSON")
    if not isinstance(type_url, str) or not isinstance(value, str):
        raise IntegrityError(bad)
    if type_url != TYPE_URL:
        raise UsageError(f"Tink keyset key is {untrusted.show(type_url, 100)}, not an AES-GCM-HKDF streaming key")
    try:
        raw = base64.b64decode(value, validate=True)
    except ValueError:
        raise IntegrityError("bad Tink keyset JSON: the key value is not base64") from None
    return parse_key_value(raw)
