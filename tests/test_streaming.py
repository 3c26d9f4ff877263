"""The streaming AEAD core against Tink's published vectors and tink-py as an oracle."""

from __future__ import annotations

import io
import os
import random

import pytest

from modelseal.errors import IntegrityError
from modelseal.streaming import AES256_GCM_HKDF_1MB, DecryptingReader, EncryptingWriter, Params
from modelseal.tinkkeyset import load
from support.tinkkeys import keyset_json, tink_primitive

P = AES256_GCM_HKDF_1MB
FIRST, FULL = P.first_plaintext_size, P.plaintext_size
BOUNDARY_SIZES = [0, 1, FIRST - 1, FIRST, FIRST + 1, FIRST + FULL, FIRST + FULL + 1, 5 * 2**20 + 123]

# tink-java AesGcmHkdfStreamingTestUtil, createTestVector0 (cross-language test vector).
VECTOR = dict(
    key=bytes.fromhex("6eb56cdc726dfbe5d57f2fcdc6e9345b"),
    params=Params(key_size=16, hkdf_hash="SHA1", segment_size=64),
    plaintext=b"This is a fairly long plaintext. It is of the exact length to create three output blocks. ",
    aad=b"aad",
    ciphertext=bytes.fromhex(
        "18" "93b3af5e14ab378d065addfc8484da64" "2c0862877baea8"
        "db92d9c77406a406168478821c4298eab3e6d531277f4c1a051714faebcaefcbca7b7be05e9445ea"
        "a0bb2904153398a25084dd80ae0edcd1c3079fcea2cd3770630ee36f7539207b8ec9d754956d486b71cdf989f0ed6fba6779b63558be0a66e668df14e1603cd2"
        "af8944844078345286d0b292e772e7190775c51a0f83e40c0b75821027e7e538e111"
    ),
)


class _Keep(io.BytesIO):
    def close(self) -> None:  # tink closes the stream it writes to
        pass


def encrypt(plaintext: bytes, key: bytes, aad: bytes, params: Params = P, chunk: int | None = None, **kw) -> bytes:
    out = io.BytesIO()
    w = EncryptingWriter(out, key, aad, params, **kw)
    if chunk is None:
        w.write(plaintext)
    else:
        rng = random.Random(len(plaintext))
        view = memoryview(plaintext)
        while view:
            n = rng.randint(1, chunk)
            w.write(view[:n])
            view = view[n:]
    w.close()
    return out.getvalue()


def decrypt(ciphertext: bytes, key: bytes, aad: bytes, params: Params = P) -> bytes:
    return DecryptingReader(io.BytesIO(ciphertext), key, aad, params).read()


def test_tink_vector_decrypts():
    v = VECTOR
    assert decrypt(v["ciphertext"], v["key"], v["aad"], v["params"]) == v["plaintext"]


def test_tink_vector_encrypts_identically():
    v = VECTOR
    salt, prefix = v["ciphertext"][1:17], v["ciphertext"][17:24]
    got = encrypt(v["plaintext"], v["key"], v["aad"], v["params"], salt=salt, nonce_prefix=prefix)
    assert got == v["ciphertext"]


def test_tink_vector_tampering_detected():
    v = VECTOR
    for i in range(len(v["ciphertext"])):
        bad = bytearray(v["ciphertext"])
        bad[i] ^= 0x01
        with pytest.raises(IntegrityError):
            decrypt(bytes(bad), v["key"], v["aad"], v["params"])


@pytest.mark.parametrize("size", BOUNDARY_SIZES)
def test_boundaries_against_tink_both_ways(size):
    key, aad = os.urandom(32), b"associated"
    plaintext = os.urandom(size)
    primitive = tink_primitive(keyset_json(key))

    ours = encrypt(plaintext, key, aad, chunk=300_000)
    assert len(ours) == P.ciphertext_size(size)
    with primitive.new_decrypting_stream(io.BytesIO(ours), aad) as r:
        assert r.read() == plaintext

    sink = _Keep()
    with primitive.new_encrypting_stream(sink, aad) as w:
        w.write(plaintext)
    theirs = sink.getvalue()
    assert len(theirs) == len(ours)  # same segmentation, including a full final segment
    assert decrypt(theirs, key, aad) == plaintext


def test_segments_are_released_only_after_their_tag():
    key = os.urandom(32)
    ct = bytearray(encrypt(os.urandom(FIRST + FULL + 10), key, b""))
    ct[-1] ^= 1  # the last tag
    reader = DecryptingReader(io.BytesIO(bytes(ct)), key, b"")
    released = []
    with pytest.raises(IntegrityError):
        for seg in reader.segments():
            released.append(len(seg))
    assert released == [FIRST, FULL]  # the tampered final segment never came out


def test_small_segment_params_match_tink():
    params = Params(key_size=16, hkdf_hash="SHA256", segment_size=4096)
    key = os.urandom(16)
    data = os.urandom(50_000)
    ct = encrypt(data, key, b"x", params, chunk=5000)
    primitive = tink_primitive(keyset_json(key, 4096, 16))
    with primitive.new_decrypting_stream(io.BytesIO(ct), b"x") as r:
        assert r.read() == data


def test_keyset_parsing_reads_parameters():
    key = os.urandom(32)
    ikm, params = load(keyset_json(key, 4096, 32, "SHA512").encode())
    assert ikm == key and params == Params(32, "SHA512", 4096)
    ikm, params = load(key)
    assert ikm == key and params == P
