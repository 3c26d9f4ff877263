"""age's X25519 stanza in modelseal: interoperable with age both ways (pyrage as the oracle, C2SP's CCTV vectors),
keys from pyrage and `age-keygen` files, and malformed keys and stanzas refused with one line."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pyrage
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

import agehelp
from conftest import refused
from modelseal.errors import IntegrityError, NotARecipient, UsageError
from modelseal.recipients import x25519
from modelseal.recipients.stanza import Stanza, b64decode

PLAINTEXT = b"a model, or anything else age encrypts\n" * 3
CCTV = Path(__file__).parent / "vectors" / "age-cctv"
#: C2SP age.md's example X25519 identity and the recipient it gives.
SPEC_IDENTITY = "AGE-SECRET-KEY-1GFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPQ4EGAEX"
SPEC_RECIPIENT = "age1zvkyg2lqzraa2lnjvqej32nkuu0ues2s82hzrye869xeexvn73equnujwj"


def ours(identity: pyrage.x25519.Identity) -> x25519.Identity:
    return x25519.Identity.parse(str(identity), "pyrage's identity")


def stanza_of(raw: agehelp.RawStanza) -> Stanza:
    """An age stanza as modelseal's stanza code takes it (the body through modelseal's canonical base64)."""
    return Stanza(raw.type, tuple(raw.args), b64decode(raw.body_b64, "the body"))


def file_keys(identity: x25519.Identity, age_file: agehelp.AgeFile) -> list[bytes]:
    """What modelseal's stanza code unwraps from each X25519 stanza of an age file (age skips other types)."""
    found = []
    for raw in age_file.stanzas:
        if raw.type == x25519.TYPE:
            key = identity.age_unwrap(stanza_of(raw))
            if key is not None:
                found.append(key)
    return found


# ---- age -> modelseal ---------------------------------------------------------------------------------

@pytest.mark.parametrize("recipients", [1, 3])
def test_an_age_file_that_pyrage_writes_yields_its_file_key_through_our_stanza_code(recipients):
    """The key we unwrap is the one pyrage used: it verifies the age header MAC and decrypts the payload."""
    identities = [pyrage.x25519.Identity.generate() for _ in range(recipients)]
    data = pyrage.encrypt(PLAINTEXT, [i.to_public() for i in identities])
    age_file = agehelp.parse(data)
    assert any(s.type != x25519.TYPE for s in age_file.stanzas) or recipients == 1  # rage adds grease
    keys = set()
    for identity in identities:
        found = file_keys(ours(identity), age_file)
        assert len(found) == 1 and len(found[0]) == 16
        assert agehelp.header_mac(found[0], age_file.upto_dashes) == age_file.mac
        assert agehelp.stream_decrypt(found[0], age_file.payload) == PLAINTEXT
        keys.add(found[0])
    assert len(keys) == 1  # every stanza wraps the same file key
    # an identity that is not a recipient unwraps nothing (the stanzas are anonymous: no error)
    assert file_keys(ours(pyrage.x25519.Identity.generate()), age_file) == []


# ---- modelseal -> age ---------------------------------------------------------------------------------

def test_a_stanza_that_modelseal_writes_in_an_age_header_lets_pyrage_decrypt():
    alice, bob, eve = (pyrage.x25519.Identity.generate() for _ in range(3))
    file_key = os.urandom(16)
    stanzas = []
    for who in (alice, bob):
        s = x25519.age_wrap(file_key, x25519.Recipient.parse(str(who.to_public())).public)
        assert s.type == "X25519" and len(s.args) == 1 and len(s.body) == 32
        stanzas.append((s.type, list(s.args), s.body))
    data = agehelp.write(file_key, stanzas, PLAINTEXT)
    assert pyrage.decrypt(data, [alice]) == PLAINTEXT
    assert pyrage.decrypt(data, [bob]) == PLAINTEXT
    with pytest.raises(pyrage.DecryptError):  # the oracle does check: not a recipient
        pyrage.decrypt(data, [eve])
    wrong_key = agehelp.write(os.urandom(16), stanzas, PLAINTEXT)  # the MAC under another file key
    with pytest.raises(pyrage.DecryptError):
        pyrage.decrypt(wrong_key, [alice])


# ---- C2SP's CCTV vectors ------------------------------------------------------------------------------

def _cctv(path: Path) -> tuple[dict[str, list[str]], bytes]:
    meta_text, _, body = path.read_bytes().partition(b"\n\n")
    meta: dict[str, list[str]] = {}
    for line in meta_text.decode().splitlines():
        k, _, v = line.partition(": ")
        meta.setdefault(k, []).append(v)
    return meta, body


@pytest.mark.parametrize("path", sorted(CCTV.glob("x25519*")), ids=lambda p: p.name)
def test_cctv_x25519_vectors(path):
    meta, data = _cctv(path)
    expect, file_key = meta["expect"][0], bytes.fromhex(meta["file key"][0])
    identities = [x25519.Identity.parse(i, "the vector's identity") for i in meta["identity"]]
    age_file = agehelp.parse(data)
    if expect == "header failure":
        with refused(IntegrityError):
            for identity in identities:
                file_keys(identity, age_file)
        return
    found = [k for identity in identities for k in file_keys(identity, age_file)]
    if expect == "no match":
        assert found == []
        return
    assert expect == "success", expect
    assert found == [file_key]
    assert agehelp.header_mac(file_key, age_file.upto_dashes) == age_file.mac
    assert hashlib.sha256(agehelp.stream_decrypt(file_key, age_file.payload)).hexdigest() == meta["payload"][0]


def test_every_cctv_outcome_is_exercised():
    outcomes = {_cctv(p)[0]["expect"][0] for p in CCTV.glob("x25519*")}
    assert outcomes == {"success", "header failure", "no match"}


# ---- keys ---------------------------------------------------------------------------------------------

def test_keys_made_by_pyrage_and_the_spec_example():
    made = pyrage.x25519.Identity.generate()
    mine = ours(made)
    assert str(mine.recipient) == str(made.to_public())
    assert str(mine) == str(made)  # upper-case Bech32, HRP AGE-SECRET-KEY-
    assert x25519.Recipient.parse(str(made.to_public())) == mine.recipient
    assert str(x25519.Identity.parse(SPEC_IDENTITY, "spec").recipient) == SPEC_RECIPIENT
    assert str(pyrage.x25519.Identity.from_str(str(mine)).to_public()) == str(mine.recipient)
    assert str(made) not in repr(mine) and str(made) not in mine.describe()


def test_an_age_keygen_file_works_as_it_is():
    a, b = pyrage.x25519.Identity.generate(), pyrage.x25519.Identity.generate()
    keygen = f"# created: 2026-01-01T00:00:00Z\n# public key: {a.to_public()}\n{a}\n"
    [one] = x25519.parse_identities(keygen.encode(), "key.txt")
    assert str(one.recipient) == str(a.to_public())
    two = x25519.parse_identities(f"{a}\r\n\r\n  # another\r\n{b}  \r\n".encode(), "keys.txt")
    assert [str(i.recipient) for i in two] == [str(a.to_public()), str(b.to_public())]


# ---- the .seal stanza: age's, over the 32-byte data key -------------------------------------------------

def test_the_seal_stanza_is_age_s_construction_over_the_data_key():
    """Checked against the spec's formula computed here, not against the code under test."""
    identity = ours(pyrage.x25519.Identity.generate())
    data_key, ephemeral = os.urandom(32), os.urandom(32)
    s = identity.recipient.wrap(data_key, ephemeral=ephemeral)
    assert s.type == "X25519" and s.args[1] == str(identity.recipient) and len(s.body) == 48
    e = X25519PrivateKey.from_private_bytes(ephemeral)
    share = e.public_key().public_bytes_raw()
    assert b64decode(s.args[0], "share") == share
    shared = e.exchange(X25519PublicKey.from_public_bytes(identity.recipient.public))
    wrap_key = HKDF(algorithm=hashes.SHA256(), length=32, salt=share + identity.recipient.public,
                    info=b"age-encryption.org/v1/X25519").derive(shared)
    assert ChaCha20Poly1305(wrap_key).decrypt(bytes(12), s.body, None) == data_key
    assert identity.unwrap([s]) == data_key
    x25519.check(s, "stanza")


def test_a_seal_stanza_opens_only_for_its_recipient_and_only_unchanged():
    alice, bob = (ours(pyrage.x25519.Identity.generate()) for _ in range(2))
    data_key = os.urandom(32)
    s = alice.recipient.wrap(data_key)
    with refused(NotARecipient, match="is not a recipient"):
        bob.unwrap([s])
    assert bob.recipient.matches(bob.recipient.wrap(data_key)) and not bob.recipient.matches(s)
    body = bytearray(s.body)
    body[7] ^= 1
    with refused(IntegrityError, match="does not decrypt"):
        alice.unwrap([Stanza(s.type, s.args, bytes(body))])
    # a stanza that names alice but was made for bob's key does not open either
    forged = Stanza(s.type, (bob.recipient.wrap(data_key).args[0], s.args[1]), s.body)
    with refused(IntegrityError, match="does not decrypt"):
        alice.unwrap([forged])


def test_a_low_order_share_is_refused():
    alice = ours(pyrage.x25519.Identity.generate())
    s = alice.recipient.wrap(os.urandom(32))
    for point in (bytes(32), bytes([1]) + bytes(31)):
        bad = Stanza(s.type, (agehelp.b64(point), s.args[1]), s.body)
        with refused(IntegrityError, match="low-order"):
            alice.unwrap([bad])
    with refused(UsageError, match="low-order"):
        x25519.age_wrap(os.urandom(32), bytes(32))


# ---- malformed keys and stanzas -------------------------------------------------------------------------

GOOD = str(pyrage.x25519.Identity.generate().to_public())


@pytest.mark.parametrize("text,says", [
    ("", "separator"),
    ("age1", "separator"),
    (GOOD[:-1] + ("q" if GOOD[-1] != "q" else "p"), "checksum"),
    (GOOD[:10] + GOOD[10:].upper(), "mixed case"),
    (GOOD.replace("age1", "agf1", 1), "checksum"),
    (GOOD[:20] + "b" + GOOD[21:], "alphabet"),  # 'b' is not in Bech32's alphabet
    ("age1pq1" + "q" * 60, "post-quantum"),
    ("x" * 300, "too long"),
])
def test_a_malformed_recipient_on_the_command_line_is_exit_2_in_one_line(text, says):
    with refused(UsageError, match=says) as e:
        x25519.Recipient.parse(text)
    assert e.value.exit_code == 2


def test_recipients_of_another_type_or_size_are_refused():
    from modelseal.recipients import bech32
    for hrp, data, says in (("age", bytes(31), "31 bytes"), ("agf", bytes(32), "not an age X25519 recipient")):
        with refused(UsageError, match=says):
            x25519.Recipient.parse(bech32.encode(hrp, data))


def test_a_secret_key_given_as_a_recipient_is_refused_without_quoting_it():
    secret = str(pyrage.x25519.Identity.generate())
    for text in (secret, secret.lower()):
        with refused(UsageError, match="public key") as e:
            x25519.Recipient.parse(text)
        assert secret[16:40].lower() not in str(e.value).lower()


@pytest.mark.parametrize("text,says", [
    (b"", "no age identity"),
    (b"# only a comment\n\n", "no age identity"),
    (b"# key\nage1qqqq\n", "line 2: not an age identity"),
    (b"AGE-SECRET-KEY-PQ-1" + b"Q" * 60 + b"\n", "post-quantum"),
    (b"\xff\xfe", "not UTF-8"),
    (b"#" * (1 << 20) + b"\n", "too long"),
])
def test_a_malformed_identity_file_is_exit_4_in_one_line(text, says):
    with refused(IntegrityError, match=says) as e:
        x25519.parse_identities(text, "file:///keys/age.txt")
    assert e.value.exit_code == 4


def test_a_malformed_identity_is_named_by_its_line_never_quoted():
    secret = str(pyrage.x25519.Identity.generate())
    for bad, says in ((secret[:-1] + ("Q" if secret[-1] != "Q" else "P"), "checksum"),
                      (secret.lower(), "not an age identity"),
                      (secret[:30] + secret[30:].lower(), "mixed case"),
                      (secret + "QQ", "checksum")):
        with refused(IntegrityError, match=f"line 3: .*{says}|line 3, .*{says}|line 3: {says}") as e:
            x25519.parse_identities(f"# one\n\n{bad}\n".encode(), "env:AGE_KEY")
        assert secret[16:40].lower() not in str(e.value).lower() and "env:AGE_KEY" in str(e.value)


def _seal_stanza() -> Stanza:
    return ours(pyrage.x25519.Identity.generate()).recipient.wrap(os.urandom(32))


@pytest.mark.parametrize("change,says", [
    (lambda s: Stanza(s.type, s.args[:1], s.body), "2 arguments, not 1"),
    (lambda s: Stanza(s.type, s.args + ("x",), s.body), "2 arguments, not 3"),
    (lambda s: Stanza(s.type, (s.args[0][:-1] + "B", s.args[1]), s.body), "canonical|not unpadded"),
    (lambda s: Stanza(s.type, (agehelp.b64(bytes(31)), s.args[1]), s.body), "31 bytes"),
    (lambda s: Stanza(s.type, (s.args[0], s.args[1][:-1] + "q"), s.body), "checksum"),
    (lambda s: Stanza(s.type, s.args, s.body[:-1]), "47 bytes"),
    (lambda s: Stanza(s.type, s.args, s.body + b"\0"), "49 bytes"),
])
def test_a_malformed_seal_stanza_is_exit_4(change, says):
    with refused(IntegrityError, match=says):
        x25519.check(change(_seal_stanza()), "bad recipient list: stanza 0")
