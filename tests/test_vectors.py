"""The .seal v1 test vectors published in docs/FORMAT.md: the hex one, and the files of tests/vectors/seal-v1/."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import modelseal
from modelseal import errors
from modelseal import sealfile
from modelseal.streaming import AES256_GCM_HKDF_1MB, EncryptingWriter

VECTOR = json.loads((Path(__file__).parent / "vectors" / "seal-v1.json").read_text())


def test_vector_decrypts():
    key = bytes.fromhex(VECTOR["data_key"])
    header, reader = sealfile.open_sealed(io.BytesIO(bytes.fromhex(VECTOR["sealed"])), lambda h: key)
    assert reader.read().decode() == VECTOR["plaintext_utf8"]
    assert (header.name, header.version, header.key_id) == ("vector", "1", sealfile.key_id(key))


def test_vector_encrypts_identically():
    key = bytes.fromhex(VECTOR["data_key"])
    h = VECTOR["header"]
    header = sealfile.Header(key_id=sealfile.key_id(key), name=h["name"], version=h["version"], created=h["created"])
    prefix = sealfile.encode_prefix(header)
    out = io.BytesIO()
    out.write(prefix)
    w = EncryptingWriter(out, key, prefix, AES256_GCM_HKDF_1MB,
                         salt=bytes.fromhex(VECTOR["salt"]), nonce_prefix=bytes.fromhex(VECTOR["nonce_prefix"]))
    w.write(VECTOR["plaintext_utf8"].encode())
    w.close()
    assert out.getvalue().hex() == VECTOR["sealed"]


# ---- the failure vectors (tests/vectors/seal-v1/, made by tests/vectors/generate.py) ------------------

VECTORS = Path(__file__).parent / "vectors" / "seal-v1"
MANIFEST = json.loads((VECTORS / "manifest.json").read_text())


def test_the_vector_files_are_what_the_generator_makes():
    """Rebuilt from fixed inputs byte for byte: no vector is hand-made, none is missing or stale."""
    r = subprocess.run([sys.executable, str(VECTORS.parent / "generate.py"), "--check"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    for v in MANIFEST["vectors"]:
        assert hashlib.sha256((VECTORS / v["file"]).read_bytes()).hexdigest() == v["sha256"], v["file"]
    assert (VECTORS / "ok-one-segment.seal").read_bytes().hex() == VECTOR["sealed"]


def test_every_kind_of_failure_is_published():
    names = {v["file"].removesuffix(".seal") for v in MANIFEST["vectors"]}
    assert {"truncated-at-segment-boundary", "header-flipped-byte", "wrong-key", "header-oversized",
            "appended-segment", "dropped-segment", "reordered-segments", "last-segment-flipped",
            "bad-magic", "bad-version"} <= names
    assert all(v["exit"] for v in MANIFEST["vectors"] if not v["file"].startswith("ok-"))


@pytest.mark.parametrize("vector", MANIFEST["vectors"], ids=lambda v: v["file"].removesuffix(".seal"))
def test_vector_through_the_cli(vector, shm):
    """The real command line gives each vector its tagged result, and a failure leaves nothing behind."""
    out = shm / "model.tar"
    r = modelseal("decrypt", "--in", str(VECTORS / vector["file"]), "--key", str(VECTORS / vector["key"]),
                  "-o", str(out))
    assert r.code == vector["exit"], (vector["file"], r.code, r.stderr)
    if vector["exit"] == 0:
        data = out.read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (vector["plaintext_bytes"],
                                                                 vector["plaintext_sha256"])
        # the tar, and beside it decrypt's record of the verified header (sizes, delivery identity: sizesfile.py)
        assert sorted(p.name for p in shm.iterdir()) == [out.name, out.name + ".sizes"]
        return
    message = r.error()
    assert message and "\n" not in message and vector["says"] in message, (vector["file"], message)
    assert getattr(errors, vector["error"]).exit_code == vector["exit"]
    assert list(shm.iterdir()) == []  # neither the output nor its .partial
