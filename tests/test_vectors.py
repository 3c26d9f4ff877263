"""The .seal v1 test vector published in docs/FORMAT.md."""

from __future__ import annotations

import io
import json
from pathlib import Path

from modelseal import format as sealfmt
from modelseal.streaming import AES256_GCM_HKDF_1MB, EncryptingWriter

VECTOR = json.loads((Path(__file__).parent / "vectors" / "seal-v1.json").read_text())


def test_vector_decrypts():
    key = bytes.fromhex(VECTOR["data_key"])
    header, reader = sealfmt.open_sealed(io.BytesIO(bytes.fromhex(VECTOR["sealed"])), lambda h: key)
    assert reader.read().decode() == VECTOR["plaintext_utf8"]
    assert (header.name, header.version, header.key_id) == ("vector", "1", sealfmt.key_id(key))


def test_vector_encrypts_identically():
    key = bytes.fromhex(VECTOR["data_key"])
    h = VECTOR["header"]
    header = sealfmt.Header(key_id=sealfmt.key_id(key), name=h["name"], version=h["version"], created=h["created"])
    prefix = sealfmt.encode_prefix(header)
    out = io.BytesIO()
    out.write(prefix)
    w = EncryptingWriter(out, key, prefix, AES256_GCM_HKDF_1MB,
                         salt=bytes.fromhex(VECTOR["salt"]), nonce_prefix=bytes.fromhex(VECTOR["nonce_prefix"]))
    w.write(VECTOR["plaintext_utf8"].encode())
    w.close()
    assert out.getvalue().hex() == VECTOR["sealed"]
