"""Building Tink keysets around raw keys, so tink-py can act as an oracle."""

from __future__ import annotations

import base64
import json


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, value: int | bytes) -> bytes:
    if isinstance(value, int):
        return _varint(number << 3) + _varint(value)
    return _varint(number << 3 | 2) + _varint(len(value)) + value


HASH_TYPES = {"SHA1": 1, "SHA384": 2, "SHA256": 3, "SHA512": 4}


def keyset_json(ikm: bytes, segment_size: int = 1 << 20, key_size: int = 32, hkdf_hash: str = "SHA256") -> str:
    params = _field(1, segment_size) + _field(2, key_size) + _field(3, HASH_TYPES[hkdf_hash])
    value = _field(1, 0) + _field(2, params) + _field(3, ikm)
    return json.dumps({
        "primaryKeyId": 42,
        "key": [{
            "keyData": {
                "typeUrl": "type.googleapis.com/google.crypto.tink.AesGcmHkdfStreamingKey",
                "value": base64.b64encode(value).decode(),
                "keyMaterialType": "SYMMETRIC",
            },
            "status": "ENABLED", "keyId": 42, "outputPrefixType": "RAW",
        }],
    })


def tink_primitive(keyset: str):
    import tink
    from tink import cleartext_keyset_handle, streaming_aead

    streaming_aead.register()
    handle = cleartext_keyset_handle.read(tink.JsonKeysetReader(keyset))
    return handle.primitive(streaming_aead.StreamingAead)
