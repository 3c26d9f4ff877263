"""Reading a Tink cleartext keyset (JSON) holding an AES-GCM-HKDF streaming key.

The key value is a small serialized protobuf (AesGcmHkdfStreamingKey); parsing
its three fields by hand avoids pulling protobuf into images for one message.
"""

from __future__ import annotations

import base64
import json

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


def parse_key_value(value: bytes) -> tuple[bytes, Params]:
    key = _fields(value)
    params = _fields(key.get(2, b""))  # type: ignore[arg-type]
    ikm = key.get(3)
    if not isinstance(ikm, bytes) or not ikm:
        raise IntegrityError("bad Tink keyset: no key value")
    hash_name = _HASH_TYPES.get(params.get(3, 0))  # type: ignore[arg-type]
    if hash_name is None:
        raise IntegrityError("bad Tink keyset: unknown HKDF hash type")
    return ikm, Params(int(params.get(2, 0)), hash_name, int(params.get(1, 0)))  # type: ignore[arg-type]


def load(data: bytes, template: str = "AES256_GCM_HKDF_1MB") -> tuple[bytes, Params]:
    """Key bytes and parameters from a keyset JSON, or from raw key bytes plus a template."""
    if template not in TEMPLATES:
        raise UsageError(f"unknown Tink template {template!r} ({', '.join(TEMPLATES)})")
    if not data.lstrip().startswith(b"{"):
        params = TEMPLATES[template]
        if len(data) < params.key_size:
            raise UsageError(f"raw Tink key is {len(data)} bytes, {template} needs at least {params.key_size}")
        return data, params
    try:
        keyset = json.loads(data)
        primary = keyset.get("primaryKeyId")
        keys = [k for k in keyset["key"] if k.get("status", "ENABLED") == "ENABLED"]
        key = next((k for k in keys if k.get("keyId") == primary), keys[0] if len(keys) == 1 else None)
        if key is None:
            raise KeyError("primary")
        if key["keyData"]["typeUrl"] != TYPE_URL:
            raise UsageError(f"Tink keyset key is {key['keyData']['typeUrl']}, not an AES-GCM-HKDF streaming key")
        value = base64.b64decode(key["keyData"]["value"], validate=True)
    except UsageError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError, StopIteration):
        raise UsageError("bad Tink keyset JSON: no enabled primary AES-GCM-HKDF streaming key") from None
    return parse_key_value(value)
