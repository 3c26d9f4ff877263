"""The `.seal` v2 prefix: the payload bound to the fixed fields only, the recipient list to the header MAC,
rewrap keeping the payload byte for byte, and every kind of tampering refused with exit 4."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import os
import struct

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from conftest import refused
from modelseal import header_v2, sealfile
from modelseal.errors import IntegrityError, NotARecipient, UsageError
from modelseal.sealfile import Sizes
from modelseal.recipients import symmetric, x25519
from modelseal.recipients.stanza import Stanza
from modelseal.streaming import AES256_GCM_HKDF_1MB, DecryptingReader

PLAINTEXT = os.urandom(100_000)


def identity() -> x25519.Identity:
    return x25519.Identity(os.urandom(32))


def sealed(data_key: bytes, to: list, fixed: header_v2.Fixed | None = None) -> bytes:
    header = header_v2.seal(fixed or header_v2.Fixed(name="model", version="3", created="2026-01-01T00:00:00Z",
                                                     sizes=Sizes(tar_bytes=len(PLAINTEXT))), data_key, to)
    out = io.BytesIO()
    with header_v2.seal_writer(out, header, data_key) as w:
        w.write(PLAINTEXT)
    return out.getvalue()


def read_v2(src: io.BytesIO) -> header_v2.Header:
    """The prefix through the one reader of both versions (sealfile.read_prefix), which must find version 2."""
    header = sealfile.read_prefix(src)[0]
    assert isinstance(header, header_v2.Header)
    return header


def opened(data: bytes, identities: list) -> bytes:
    return sealfile.open_sealed(io.BytesIO(data), lambda header: header.unlock(identities))[1].read()


def sections(data: bytes) -> dict[str, tuple[int, int]]:
    """Where each section is, from the spec's layout (not from the code under test)."""
    flen = struct.unpack(">I", data[6:10])[0]
    rlen = struct.unpack(">I", data[10 + flen:14 + flen])[0]
    at = 14 + flen + rlen
    return {"magic": (0, 6), "flen": (6, 10), "fixed": (10, 10 + flen), "rlen": (10 + flen, 14 + flen),
            "list": (14 + flen, at), "mac": (at, at + 32), "payload": (at + 32, len(data))}


def spec_mac(data_key: bytes, authenticated: bytes) -> bytes:
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"modelseal/v2/header").derive(data_key)
    return hmac.new(key, authenticated, hashlib.sha256).digest()


def with_mac(data: bytes, data_key: bytes) -> bytes:
    """The file with its MAC recomputed under `data_key` (what a holder of a data key can do)."""
    s = sections(data)
    return data[:s["mac"][0]] + spec_mac(data_key, data[:s["mac"][0]]) + data[s["mac"][1]:]


def test_the_layout_is_the_spec_s():
    alice = identity()
    data_key = header_v2.new_data_key()
    data = sealed(data_key, [alice.recipient])
    s = sections(data)
    assert data[:6] == b"MSEAL\x02"
    fixed = data[slice(*s["fixed"])]
    assert json.loads(fixed) == {"v": 2, "alg": "AES256_GCM_HKDF_1MB", "segment_size": 1048576,
                                 "content": {"type": "tar", "compression": "none", "tar_bytes": len(PLAINTEXT)},
                                 "name": "model", "version": "3", "created": "2026-01-01T00:00:00Z"}
    assert fixed == json.dumps(json.loads(fixed), sort_keys=True, separators=(",", ":")).encode()
    assert data[slice(*s["mac"])] == spec_mac(data_key, data[:s["mac"][0]])
    # the payload is Tink's stream with associated data = magic || flen || fixed, and nothing else
    reader = DecryptingReader(io.BytesIO(data[s["payload"][0]:]), data_key, data[:s["fixed"][1]], AES256_GCM_HKDF_1MB)
    assert reader.read() == PLAINTEXT
    assert len(data) - s["payload"][0] == AES256_GCM_HKDF_1MB.ciphertext_size(len(PLAINTEXT))


def test_every_kind_of_key_opens_the_file():
    alice, bob = identity(), identity()
    user_key = os.urandom(32)
    data_key = header_v2.new_data_key()
    data = sealed(data_key, [alice.recipient, bob.recipient, symmetric.Key(user_key)])
    for keys in ([alice], [bob], symmetric.given_key(user_key), symmetric.given_key(data_key),
                 [identity(), bob]):
        assert opened(data, keys) == PLAINTEXT
    assert read_v2(io.BytesIO(data)).unlock([alice]) == data_key


def test_a_key_that_is_no_recipient_is_exit_4_before_any_payload():
    data = sealed(header_v2.new_data_key(), [identity().recipient])
    with refused(NotARecipient, match="is not a recipient") as e:
        read_v2(io.BytesIO(data)).unlock([identity()])
    assert e.value.exit_code == 4
    with refused(IntegrityError, match="header MAC does not verify with the key with id .* taken as the data key"):
        read_v2(io.BytesIO(data)).unlock(symmetric.given_key(os.urandom(32)))
    with refused(UsageError, match="no key"):
        read_v2(io.BytesIO(data)).unlock([])


def test_a_flipped_bit_anywhere_before_the_payload_is_exit_4():
    """Every bit of the prefix, each flipped alone: malformed, or the header MAC refuses it; never opened."""
    alice = identity()
    data_key = header_v2.new_data_key()
    data = sealed(data_key, [alice.recipient, symmetric.Key(os.urandom(32))])
    end = sections(data)["mac"][1]
    said = set()
    for at in range(end):
        for bit in (0, 5):
            bad = bytearray(data)
            bad[at] ^= 1 << bit
            with refused(IntegrityError) as e:
                read_v2(io.BytesIO(bytes(bad))).unlock([alice, *symmetric.given_key(data_key)])
            said.add("header MAC" if "header MAC" in str(e.value) else "other")
    assert "header MAC" in said


def test_a_flipped_byte_in_another_recipients_stanza_is_caught_by_the_mac():
    """The reader's own stanza is intact: only the MAC sees that someone else's changed."""
    alice, bob = identity(), identity()
    data_key = header_v2.new_data_key()
    data = sealed(data_key, [alice.recipient, bob.recipient])
    header = read_v2(io.BytesIO(data))
    bob_body = header.stanzas[1].to_json()["body"]
    changed = bob_body[:10] + ("A" if bob_body[10] != "A" else "B") + bob_body[11:]
    bad = data.replace(bob_body.encode(), changed.encode())
    assert bad != data and alice.unwrap(read_v2(io.BytesIO(bad)).stanzas) == data_key
    with refused(IntegrityError, match="header MAC does not verify"):
        opened(bad, [alice])


def test_a_stanza_moved_from_another_file_is_refused():
    alice, bob = identity(), identity()
    fixed = header_v2.Fixed(name="model", version="3", created="2026-01-01T00:00:00Z")
    mine = sealed(header_v2.new_data_key(), [alice.recipient, bob.recipient], fixed)
    other = sealed(header_v2.new_data_key(), [alice.recipient], fixed)  # the same fields, another data key
    theirs = json.dumps(read_v2(io.BytesIO(other)).stanzas[0].to_json(), sort_keys=True,
                        separators=(",", ":")).encode()
    ours = json.dumps(read_v2(io.BytesIO(mine)).stanzas[0].to_json(), sort_keys=True,
                      separators=(",", ":")).encode()
    moved = mine.replace(ours, theirs)
    assert len(moved) == len(mine) and moved != mine
    with refused(IntegrityError, match="header MAC does not verify"):
        opened(moved, [alice])  # alice unwraps the other file's data key: this MAC does not verify under it
    assert opened(moved.replace(theirs, ours), [alice]) == PLAINTEXT


def test_a_header_mac_from_another_data_key_is_refused():
    alice = identity()
    data = sealed(header_v2.new_data_key(), [alice.recipient])
    with refused(IntegrityError, match="header MAC does not verify"):
        opened(with_mac(data, header_v2.new_data_key()), [alice])


def test_changed_fixed_fields_fail_the_mac_and_with_a_new_mac_the_payload():
    """A data key's holder may rewrite the list; changing what the payload binds still fails on segment 0."""
    alice = identity()
    data_key = header_v2.new_data_key()
    data = sealed(data_key, [alice.recipient])
    renamed = data.replace(b'"name":"model"', b'"name":"mode1"')
    assert renamed != data
    with refused(IntegrityError, match="header MAC"):
        opened(renamed, [alice])
    with refused(IntegrityError, match="segment 0"):
        opened(with_mac(renamed, data_key), [alice])


def test_rewrap_changes_the_recipients_and_keeps_the_payload_byte_for_byte():
    alice, bob, carol = identity(), identity(), identity()
    data_key = header_v2.new_data_key()
    data = sealed(data_key, [alice.recipient, bob.recipient])
    header = read_v2(io.BytesIO(data))
    new = header.rewrap(header.unlock([alice]), add=[carol.recipient], remove=[bob.recipient])
    rewrapped = new.encode() + data[sections(data)["payload"][0]:]
    s_old, s_new = sections(data), sections(rewrapped)
    assert rewrapped[:s_new["fixed"][1]] == data[:s_old["fixed"][1]]  # the associated data
    assert rewrapped[s_new["payload"][0]:] == data[s_old["payload"][0]:]  # the payload, untouched
    assert [str(s.args[1]) for s in new.stanzas] == [str(alice.recipient), str(carol.recipient)]
    assert opened(rewrapped, [carol]) == PLAINTEXT and opened(rewrapped, [alice]) == PLAINTEXT
    with refused(NotARecipient):
        opened(rewrapped, [bob])
    # the honest part: the old copy still lists bob, and bob still opens it
    assert opened(data, [bob]) == PLAINTEXT


def test_rewrap_refuses_what_it_must():
    alice, bob = identity(), identity()
    data_key = header_v2.new_data_key()
    header = read_v2(io.BytesIO(sealed(data_key, [alice.recipient])))
    with refused(UsageError, match="last recipient"):
        header.rewrap(data_key, remove=[alice.recipient])
    with refused(UsageError, match="is not a recipient"):
        header.rewrap(data_key, remove=[bob.recipient])
    with refused(UsageError, match="already"):
        header.rewrap(data_key, add=[alice.recipient])
    with refused(IntegrityError, match="header MAC"):
        header.rewrap(os.urandom(32), add=[bob.recipient])
    assert header.rewrap(data_key, add=[bob.recipient], remove=[alice.recipient]).unlock([bob]) == data_key


def test_unknown_stanzas_are_skipped_listed_and_kept():
    alice = identity()
    data_key = header_v2.new_data_key()
    future = Stanza("example.com/future", ("x",), b"opaque")
    header = header_v2.Header.build(header_v2.Fixed(name="m"), [future, alice.recipient.wrap(data_key)], data_key)
    again = read_v2(io.BytesIO(header.encode()))
    assert again.unlock([alice]) == data_key
    assert again.recipients() == [{"type": "example.com/future", "recipient": "(a type this version does not know)"},
                                  {"type": "X25519", "recipient": str(alice.recipient)}]
    assert again.rewrap(data_key, add=[identity().recipient]).stanzas[0] == future


def test_unknown_fixed_members_are_kept_and_bound():
    alice = identity()
    data_key = header_v2.new_data_key()
    fixed = header_v2.Fixed(name="m", extra={"zz_future": {"a": [1, 2]}})
    data = sealed(data_key, [alice.recipient], fixed)
    header = read_v2(io.BytesIO(data))
    assert header.fixed.extra == {"zz_future": {"a": [1, 2]}}
    assert header.rewrap(data_key, add=[identity().recipient]).fixed_raw == header.fixed_raw


@pytest.mark.parametrize("cut", ["magic", "flen", "fixed", "rlen", "list", "mac"])
def test_truncated_inside_each_section_is_exit_4(cut):
    data = sealed(header_v2.new_data_key(), [identity().recipient])
    start, end = sections(data)[cut]
    with refused(IntegrityError, match="truncated|bad magic"):
        read_v2(io.BytesIO(data[:start + (end - start) // 2 + (cut == "magic")]))


def test_the_lengths_are_checked_before_anything_is_read():
    data = sealed(header_v2.new_data_key(), [identity().recipient])
    s = sections(data)
    for at, value, says in ((6, 65537, "fixed header length 65537"), (6, 1, "fixed header length 1"),
                            (s["rlen"][0], 65537, "length 65537"), (s["rlen"][0], 0, "length 0")):
        bad = data[:at] + struct.pack(">I", value) + data[at + 4:]
        with refused(IntegrityError, match=says):
            read_v2(io.BytesIO(bad))


@pytest.mark.parametrize("data,says", [
    (b"", "empty input"),
    (b"MSEA", "bad magic"),
    (b"XSEAL\x02", "bad magic"),
    (b"MSEAL", "truncated"),
    (b"MSEAL\x00" + b"\0" * 40, "unsupported .seal format version 0"),
    (b"MSEAL\x03" + b"\0" * 40, "unsupported .seal format version 3"),
])
def test_the_magic(data, says):
    with refused(IntegrityError, match=says):
        read_v2(io.BytesIO(data))


def _prefix(fixed: bytes, stanzas: bytes) -> bytes:
    return (b"MSEAL\x02" + struct.pack(">I", len(fixed)) + fixed + struct.pack(">I", len(stanzas)) + stanzas
            + bytes(32))


GOOD_FIXED = header_v2.Fixed(name="m").encode()
GOOD_LIST = b'[{"args":[],"body":"","type":"example.com/x"}]'


@pytest.mark.parametrize("fixed,says", ids=lambda v: v if isinstance(v, str) else None, argvalues=[
    (b"[]", "not a JSON object"),
    (GOOD_FIXED.replace(b'"v":2', b'"v":1'), "header version '1' in a version 2 file"),
    (GOOD_FIXED.replace(b'"v":2', b'"v":true'), "header version 'True'"),
    (GOOD_FIXED.replace(b'"v":2', b'"v":2.0'), "header version '2.0'"),
    (GOOD_FIXED.replace(b'"segment_size":1048576', b'"segment_size":4096'), "unsupported algorithm"),
    (GOOD_FIXED.replace(b'"compression":"none"', b'"compression":"lz4"'), "compression"),
    (GOOD_FIXED.replace(b'"name":"m"', b'"name":7'), "name is not a string"),
    (GOOD_FIXED.replace(b'"type":"tar"', b'"type":"tar","files":-1'), "content.files"),
    (GOOD_FIXED.replace(b'"name":"m"', b'"name":NaN'), "not valid UTF-8 JSON"),
])
def test_a_malformed_fixed_section_is_exit_4(fixed, says):
    assert fixed != GOOD_FIXED or says == "not a JSON object"
    with refused(IntegrityError, match=says):
        read_v2(io.BytesIO(_prefix(fixed, GOOD_LIST)))


def test_a_known_stanza_type_with_the_wrong_shape_makes_the_list_malformed():
    read_v2(io.BytesIO(_prefix(GOOD_FIXED, GOOD_LIST)))  # an unknown type passes
    bad = b'[{"args":["AAAA"],"body":"","type":"X25519"}]'
    with refused(IntegrityError, match="stanza 0: an X25519 stanza has 2 arguments, not 1"):
        read_v2(io.BytesIO(_prefix(GOOD_FIXED, bad)))


def test_sixty_four_recipients_fit_and_sixty_five_do_not():
    data_key = header_v2.new_data_key()
    many = [symmetric.Key(os.urandom(32)) for _ in range(64)]
    header = header_v2.seal(header_v2.Fixed(name="m"), data_key, many)
    assert read_v2(io.BytesIO(header.encode())).unlock(symmetric.given_key(
        many[-1]._key)) == data_key
    with refused(UsageError, match="1 to 64 recipients"):
        header.rewrap(data_key, add=[symmetric.Key(os.urandom(32))])
    with refused(UsageError, match="1 to 64 recipients"):
        header_v2.seal(header_v2.Fixed(name="m"), data_key, [])


def test_an_oversized_fixed_section_is_refused_when_written():
    with refused(UsageError, match="over the 65536-byte limit"):
        header_v2.Fixed(name="m" * 70000).encode()


def test_the_log_fields_quote_and_shorten():
    header = read_v2(io.BytesIO(_prefix(header_v2.Fixed(name="x\n" * 200).encode(), GOOD_LIST)))
    fields = header.log_fields()
    assert "\n" not in fields["name"] and len(fields["name"]) <= 80 and fields["recipients"] == 1
