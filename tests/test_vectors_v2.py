"""The .seal v2 test vectors published in docs/FORMAT.md: seal-v2.json and the files of tests/vectors/seal-v2/.

Run here through the library's reader (sealfile.read_prefix, header_v2's unlock); tests/test_recipients_cli.py
runs the same manifest through `modelseal decrypt`.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
from pathlib import Path

import pyrage
import pytest

from conftest import one_line
from modelseal import errors, sealfile
from modelseal.recipients import symmetric, x25519

HERE = Path(__file__).parent / "vectors"
VECTORS = HERE / "seal-v2"
MANIFEST = json.loads((VECTORS / "manifest.json").read_text())
PUBLISHED = json.loads((HERE / "seal-v2.json").read_text())



def unlocking(identities):
    """open_sealed's key_for for a version 2 file: the header unlocked with these identities."""
    return lambda header: header.unlock(identities)


def keys_of(vector: dict) -> list:
    """What `--identity file://F` or `--key F` will hand the reader."""
    if "identity" in vector:
        return x25519.parse_identities((VECTORS / vector["identity"]).read_bytes(), vector["identity"])
    return symmetric.given_key((VECTORS / vector["key"]).read_bytes())


def test_the_vector_files_are_what_the_generator_makes():
    r = subprocess.run([sys.executable, str(HERE / "generate_v2.py"), "--check"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    for v in MANIFEST["vectors"]:
        assert hashlib.sha256((VECTORS / v["file"]).read_bytes()).hexdigest() == v["sha256"], v["name"]
    assert (VECTORS / "ok.seal").read_bytes().hex() == PUBLISHED["sealed"]


def test_the_published_vector_opens_with_each_recipient_and_its_parts_are_as_published():
    data = bytes.fromhex(PUBLISHED["sealed"])
    a, b, sym, _ = PUBLISHED["recipients"]
    for keys in (x25519.parse_identities(a["identity"], "a"), x25519.parse_identities(b["identity"], "b"),
                 symmetric.given_key(bytes.fromhex(sym["symmetric_key"])),
                 symmetric.given_key(bytes.fromhex(PUBLISHED["data_key"]))):
        header, reader = sealfile.open_sealed(io.BytesIO(data), unlocking(keys))
        assert reader.read().decode() == PUBLISHED["plaintext_utf8"]
    assert header.fixed_raw.decode() == PUBLISHED["fixed"] and header.mac.hex() == PUBLISHED["header_mac"]
    assert [r["recipient"] for r in header.recipients()] == [a["recipient"], b["recipient"],
                                                             f"key id {sym['key_id']}", f"aws-kms {_['key_id']}"]
    for r in (a, b):  # the identities are age's: pyrage derives the same public keys
        assert str(pyrage.x25519.Identity.from_str(r["identity"]).to_public()) == r["recipient"]


def test_every_kind_of_failure_is_published():
    names = {v["file"].removesuffix(".seal") for v in MANIFEST["vectors"] if v["exit"]}
    assert {"recipients-flipped-byte", "stanza-from-another-file", "mac-from-another-key",
            "fixed-changed-mac-recomputed", "own-stanza-changed-mac-recomputed", "x25519-low-order-share",
            "list-oversized", "truncated-in-mac", "bad-version"} <= names
    opened_by = {v.get("identity") or v.get("key") for v in MANIFEST["vectors"] if v["file"] == "ok.seal"}
    assert opened_by == {"identity-a.txt", "identity-b.txt", "symmetric.key", "data.key", "identity-c.txt",
                         "wrong.key"}


@pytest.mark.parametrize("vector", MANIFEST["vectors"], ids=lambda v: v["name"])
def test_vector_through_the_v2_reader(vector):
    data = (VECTORS / vector["file"]).read_bytes()
    try:
        _, reader = sealfile.open_sealed(io.BytesIO(data), unlocking(keys_of(vector)))
        plaintext = reader.read()
    except errors.ModelsealError as e:
        assert vector["exit"] != 0, (vector["name"], str(e))
        assert isinstance(e, getattr(errors, vector["error"])) and e.exit_code == vector["exit"], (vector["name"], e)
        assert vector["says"] in one_line(e), (vector["name"], str(e))
        return
    assert vector["exit"] == 0, f"{vector['name']}: opened, but must exit {vector['exit']}"
    assert hashlib.sha256(plaintext).hexdigest() == vector["plaintext_sha256"]
