"""The generic recipient stanza (limits, canonical base64, one error path) and the `symmetric` stanza."""

from __future__ import annotations

import json
import os

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from conftest import refused
from modelseal import sealfile as sealfmt
from modelseal.errors import IntegrityError, NotARecipient, UsageError
from modelseal.recipients import stanza as st
from modelseal.recipients import symmetric
from modelseal.recipients.stanza import Stanza


def _list(*objs) -> bytes:
    return json.dumps(list(objs)).encode()


GOOD = {"type": "example.com/future", "args": ["a", "b c"], "body": "AAEC"}


def test_a_list_round_trips_and_is_written_canonically():
    stanzas = [Stanza("X", ("1", ""), b""), Stanza("example.com/y", tuple("abcdefgh"), os.urandom(4096))]
    raw = st.encode_list(stanzas, UsageError)
    assert st.decode_list(raw) == stanzas
    assert raw == json.dumps([s.to_json() for s in stanzas], sort_keys=True, separators=(",", ":")).encode()
    assert b" " not in raw.replace(b"b c", b"")
    assert st.decode_list(_list(GOOD)) == [Stanza("example.com/future", ("a", "b c"), b"\x00\x01\x02")]


@pytest.mark.parametrize("raw,says", [
    (b"", "not valid UTF-8 JSON"),
    (b"{}", "JSON array of 1 to 64"),
    (b"[]", "JSON array of 1 to 64"),
    (_list(*[GOOD] * 65), "JSON array of 1 to 64"),
    (b"[" * 40 + b"]" * 40, "nested"),
    (_list({**GOOD, "extra": 1}), "exactly type, args and body"),
    (_list({"type": "x", "args": []}), "exactly type, args and body"),
    (_list({**GOOD, "type": ""}), "the type is not"),
    (_list({**GOOD, "type": "a b"}), "the type is not"),
    (_list({**GOOD, "type": "t" * 65}), "the type is not"),
    (_list({**GOOD, "type": 7}), "the type is not"),
    (_list({**GOOD, "args": "a"}), "args is not a list"),
    (_list({**GOOD, "args": ["a"] * 9}), "args is not a list"),
    (_list({**GOOD, "args": ["a" * 2049]}), "argument 0 is not"),
    (_list({**GOOD, "args": ["ok", "tab\there"]}), "argument 1 is not"),
    (_list({**GOOD, "args": ["\u00e9"]}), "argument 0 is not"),
    (_list({**GOOD, "args": [1]}), "argument 0 is not"),
    (_list({**GOOD, "body": "AAE="}), "not unpadded base64"),
    (_list({**GOOD, "body": "AAF"}), "not canonical"),  # trailing bits set: another spelling of 00 00
    (_list({**GOOD, "body": "AA E"}), "not unpadded base64"),
    (_list({**GOOD, "body": "A"}), "not unpadded base64"),
    (_list({**GOOD, "body": None}), "not base64"),
    (_list({**GOOD, "body": "A" * 5464}), "not base64 of at most 4096"),
])
def test_a_malformed_list_is_refused_with_exit_4_in_one_line(raw, says):
    with refused(IntegrityError, match=says) as e:
        st.decode_list(raw)
    assert e.value.exit_code == 4


def test_the_limits_hold_for_writers_too():
    with refused(UsageError, match="1 to 64 recipients"):
        st.encode_list([], UsageError)
    with refused(UsageError, match="1 to 64 recipients"):
        st.encode_list([Stanza("x", (), b"")] * 65, UsageError)
    with refused(UsageError, match="argument 0"):
        st.encode_list([Stanza("x", ("\n",), b"")], UsageError)
    with refused(UsageError, match="over the 65536-byte limit"):
        st.encode_list([Stanza("x", ("a" * 2048,) * 8, b"")] * 4, UsageError)


# ---- the symmetric stanza -------------------------------------------------------------------------------

def test_the_symmetric_stanza_is_what_the_spec_says():
    """Checked against the formula computed here, not against the code under test."""
    user_key, data_key, salt = os.urandom(32), os.urandom(32), os.urandom(16)
    s = symmetric.Key(user_key).wrap(data_key, salt=salt)
    assert s.type == "symmetric" and s.args == (sealfmt.key_id(user_key), st.b64encode(salt)) and len(s.body) == 48
    wrap_key = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=b"modelseal/v2/symmetric").derive(user_key)
    assert ChaCha20Poly1305(wrap_key).decrypt(bytes(12), s.body, None) == data_key
    assert symmetric.Key(user_key).unwrap([s]) == data_key
    symmetric.check(s, "stanza")


def test_a_symmetric_stanza_opens_only_with_its_key_and_only_unchanged():
    key, other = symmetric.Key(os.urandom(32)), symmetric.Key(os.urandom(32))
    data_key = os.urandom(32)
    s = key.wrap(data_key)
    assert s != key.wrap(data_key)  # a fresh salt each time
    with refused(NotARecipient, match="not a recipient"):
        other.unwrap([s])
    assert key.matches(s) and not other.matches(s)
    body = bytearray(s.body)
    body[40] ^= 0x80
    with refused(IntegrityError, match="does not decrypt"):
        key.unwrap([Stanza(s.type, s.args, bytes(body))])
    forged = Stanza(s.type, (key.key_id, s.args[1]), other.wrap(data_key).body)  # names key, made by other
    with refused(IntegrityError, match="does not decrypt"):
        key.unwrap([forged])
    assert repr(key) == f"<symmetric key {key.key_id}>"


@pytest.mark.parametrize("change,says", [
    (lambda s: Stanza(s.type, s.args[:1], s.body), "2 arguments"),
    (lambda s: Stanza(s.type, (s.args[0].upper(), s.args[1]), s.body), "lower-case hex"),
    (lambda s: Stanza(s.type, (s.args[0][:-1], s.args[1]), s.body), "lower-case hex"),
    (lambda s: Stanza(s.type, (s.args[0], st.b64encode(bytes(15))), s.body), "not 16 bytes"),
    (lambda s: Stanza(s.type, (s.args[0], s.args[1] + "="), s.body), "not unpadded"),
    (lambda s: Stanza(s.type, s.args, s.body[:32]), "32 bytes, not 48"),
])
def test_a_malformed_symmetric_stanza_is_exit_4(change, says):
    with refused(IntegrityError, match=says):
        symmetric.check(change(symmetric.Key(os.urandom(32)).wrap(os.urandom(32))), "stanza 0")


def test_keys_of_the_wrong_size_are_usage_errors():
    for cls in (symmetric.Key, symmetric.DataKey):
        with refused(UsageError, match="32 bytes"):
            cls(bytes(16))
    with refused(UsageError, match="data key must be 32 bytes"):
        symmetric.Key(bytes(32)).wrap(bytes(16))
