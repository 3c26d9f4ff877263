"""Every corruption of a .seal exits 4 and leaves neither output nor partial file."""

from __future__ import annotations

import os
import struct

import pytest

from conftest import modelseal, payload_offset
from modelseal.streaming import AES256_GCM_HKDF_1MB as P

SEG = P.segment_size


@pytest.fixture(scope="module")
def sealed(tmp_path_factory):
    """A .seal whose payload is 4 segments: 3 full, then a short final one."""
    d = tmp_path_factory.mktemp("sealed")  # ciphertext may live on disk
    key = d / "key"
    assert modelseal("keygen", "-o", str(key)).code == 0
    plaintext = os.urandom(P.first_plaintext_size + 2 * P.plaintext_size + 1000)
    r = modelseal("seal", "-", "-o", str(d / "m.seal"), "--key", str(key), "--name", "demo", stdin=plaintext)
    assert r.code == 0, r.stderr
    data = (d / "m.seal").read_bytes()
    payload = payload_offset(data)
    return {"key": key, "data": data, "payload": payload, "plaintext": plaintext, "dir": d}


def _segments(s):
    """Byte ranges [start, end) of each payload segment (segment 0 includes the Tink header)."""
    p = s["payload"]
    bounds = [p, p + SEG, p + 2 * SEG, p + 3 * SEG, len(s["data"])]
    return [(bounds[i], bounds[i + 1]) for i in range(4)]


def _flip(data: bytes, at: int, bit: int = 0) -> bytes:
    b = bytearray(data)
    b[at] ^= 1 << bit
    return bytes(b)


def mutations(s):
    d, p = s["data"], s["payload"]
    seg = _segments(s)
    hdr = d[10:p]
    name_at = 10 + hdr.index(b'"name":"') + len('"name":"')
    yield "magic", _flip(d, 0)
    yield "version", _flip(d, 5)
    yield "header_length", _flip(d, 9)
    yield "header_length_high", _flip(d, 7, 3)
    yield "header_json_value", _flip(d, name_at)  # still valid JSON: caught by the AAD
    yield "header_json_syntax", _flip(d, 10, 1)
    yield "tink_header_length", _flip(d, p)
    yield "salt", _flip(d, p + 5)
    yield "nonce_prefix", _flip(d, p + 35)
    for i, (a, b) in enumerate(seg):
        yield f"segment_{i}_body", _flip(d, (a + b) // 2)
    yield "last_tag", _flip(d, len(d) - 1)
    yield "truncated_at_boundary", d[: seg[3][0]]
    yield "truncated_inside_segment", d[: seg[2][0] + 1000]
    yield "truncated_inside_tag", d[: len(d) - 5]
    yield "truncated_in_header", d[: p - 3]
    yield "truncated_in_tink_header", d[: p + 20]
    yield "dropped_segment", d[: seg[1][0]] + d[seg[2][0]:]
    yield "duplicated_segment", d[: seg[2][0]] + d[seg[1][0] : seg[2][1]] + d[seg[2][1]:]
    yield "swapped_segments", d[: seg[1][0]] + d[seg[2][0] : seg[2][1]] + d[seg[1][0] : seg[1][1]] + d[seg[3][0]:]
    yield "appended_bytes", d + b"\x00" * 17
    yield "appended_segment", d + d[seg[3][0]:]
    yield "header_length_over_cap", d[:6] + struct.pack(">I", 65537) + d[10:]
    yield "empty_file", b""


CASES = [
    "magic", "version", "header_length", "header_length_high", "header_json_value", "header_json_syntax",
    "tink_header_length", "salt", "nonce_prefix", "segment_0_body", "segment_1_body", "segment_2_body",
    "segment_3_body", "last_tag", "truncated_at_boundary", "truncated_inside_segment", "truncated_inside_tag",
    "truncated_in_header", "truncated_in_tink_header", "dropped_segment", "duplicated_segment",
    "swapped_segments", "appended_bytes", "appended_segment", "header_length_over_cap", "empty_file",
]


def test_case_list_is_complete(sealed):
    assert [name for name, _ in mutations(sealed)] == CASES


@pytest.mark.parametrize("case", CASES)
def test_tampered_input_exits_4_and_leaves_nothing(sealed, shm, case):
    data = dict(mutations(sealed))[case]
    bad = sealed["dir"] / f"{case}.seal"
    bad.write_bytes(data)
    out = shm / "model.tar"
    r = modelseal("decrypt", "--in", str(bad), "--key", str(sealed["key"]), "-o", str(out))
    assert r.code == 4, (case, r.stderr)
    assert r.error() and "\n" not in r.error()
    assert list(shm.iterdir()) == []  # no output, no .partial


def test_error_messages_name_the_problem(sealed, shm):
    m = dict(mutations(sealed))
    expect = {
        "truncated_at_boundary": "truncated",
        "truncated_inside_segment": "segment 2",
        "magic": "bad magic",
        "version": "version",
        "header_length_over_cap": "limit",
        "empty_file": "empty",
        "segment_2_body": "segment 2",
        "header_json_value": "header MAC",  # version 2: the fixed fields are under the MAC, and the payload's AAD
        "appended_segment": "segment 3",
    }
    for case, words in expect.items():
        bad = sealed["dir"] / f"msg-{case}.seal"
        bad.write_bytes(m[case])
        r = modelseal("decrypt", "--in", str(bad), "--key", str(sealed["key"]), "-o", str(shm / "o"))
        assert words in r.error(), (case, r.error())


def test_wrong_key_exits_4(sealed, shm):
    other = shm / "other.key"
    assert modelseal("keygen", "-o", str(other)).code == 0
    r = modelseal("decrypt", "--in", str(sealed["dir"] / "m.seal"), "--key", str(other), "-o", str(shm / "o.tar"))
    assert r.code == 4 and "wrong key" in r.error()
    assert sorted(p.name for p in shm.iterdir()) == ["other.key"]


def test_wrong_key_with_forged_key_id_still_fails_on_segment_0(sealed, shm):
    """The key id is only a hint: forging it to match a wrong key must not help."""
    from modelseal.sealfile import key_id

    other = os.urandom(32)
    (shm / "k").write_bytes(other)
    d = sealed["data"]
    old = key_id(sealed["key"].read_bytes()).encode()
    forged = d.replace(old, key_id(other).encode(), 1)
    bad = sealed["dir"] / "forged.seal"
    bad.write_bytes(forged)
    r = modelseal("decrypt", "--in", str(bad), "--key", str(shm / "k"), "-o", str(shm / "o"))
    assert r.code == 4 and "does not decrypt with that key" in r.error()  # version 2: the stanza's AEAD
    assert not (shm / "o").exists() and not (shm / "o.partial").exists()


def test_untouched_file_decrypts(sealed, shm):
    r = modelseal("decrypt", "--in", str(sealed["dir"] / "m.seal"), "--key", str(sealed["key"]), "-o", str(shm / "o"))
    assert r.code == 0, r.stderr
    assert (shm / "o").read_bytes() == sealed["plaintext"]
