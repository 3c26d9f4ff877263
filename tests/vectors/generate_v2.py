#!/usr/bin/env python3
"""Build the .seal v2 test vectors, byte for byte, from fixed inputs: seal-v2.json and seal-v2/.

    python tests/vectors/generate_v2.py           # (re)write seal-v2.json, seal-v2/ and its manifest.json
    python tests/vectors/generate_v2.py --check   # exit 1 unless the committed files are exactly these

One good file (docs/FORMAT.md, "Test vectors (version 2)"): two X25519
recipients, one symmetric, one opaque kms stanza, sealed with version 1's
data key, salt and nonce prefix; the randomness of the stanzas (X25519
ephemeral secrets, the symmetric salt) comes from fixed labels through the
wrap functions' test hooks. Then failure vectors made from it, as
generate.py does for version 1, each tagged in manifest.json with the key
to open it with and what a reader must do. The header MAC of each file is
computed here from the spec (HKDF, HMAC), not by modelseal.header_v2, so
the good file checks the library's MAC and the broken ones carry a valid MAC
where the spec says the reader must find something else wrong.

Needs the modelseal library (PYTHONPATH=shared) for the stanzas and the payload.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from modelseal.sealfile import WrappedKey
from modelseal.header_v2 import Fixed
from modelseal.recipients import kms, symmetric, x25519
from modelseal.recipients.stanza import Stanza
from modelseal.streaming import AES256_GCM_HKDF_1MB as PARAMS
from modelseal.streaming import EncryptingWriter

HERE = Path(__file__).resolve().parent
OUT = HERE / "seal-v2"
JSON = HERE / "seal-v2.json"

DATA_KEY = bytes(range(32))  # as version 1's vector
SALT = b"\xa5" * 32
NONCE_PREFIX = b"\x5a" * 7
CREATED = "2026-01-01T00:00:00Z"
HELLO = b"hello, sealed world\n"


def fixed_bytes(label: str, n: int = 32) -> bytes:
    return hashlib.sha256(b"modelseal v2 test vector: " + label.encode()).digest()[:n]


OTHER_DATA_KEY = fixed_bytes("another data key")
WRONG_KEY = fixed_bytes("the wrong key")
SYMMETRIC_KEY = fixed_bytes("symmetric key")
IDENTITIES = {name: x25519.Identity(fixed_bytes(f"identity {name}")) for name in ("a", "b", "c")}
KMS = WrappedKey(provider="aws-kms",
                 key_id="arn:aws:kms:us-east-1:111122223333:key/0b2c7f1e-5c1d-4a8e-9f3b-1d2e3f4a5b6c",
                 ciphertext=fixed_bytes("kms ciphertext", 32) * 4, context={"modelseal": "v1"})
MAGIC = b"MSEAL\x02"


def mac_of(data_key: bytes, authenticated: bytes) -> bytes:
    """The header MAC as docs/FORMAT.md defines it."""
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"modelseal/v2/header").derive(data_key)
    return hmac.new(key, authenticated, hashlib.sha256).digest()


def stanzas(data_key: bytes) -> list[Stanza]:
    return [IDENTITIES["a"].recipient.wrap(data_key, ephemeral=fixed_bytes("ephemeral a")),
            IDENTITIES["b"].recipient.wrap(data_key, ephemeral=fixed_bytes("ephemeral b")),
            symmetric.Key(SYMMETRIC_KEY).wrap(data_key, salt=fixed_bytes("symmetric salt", 16)),
            kms.stanza_of(KMS)]


def list_bytes(items: list) -> bytes:
    return json.dumps([s.to_json() if isinstance(s, Stanza) else s for s in items], sort_keys=True,
                      separators=(",", ":")).encode()


FIXED = Fixed(name="vector", version="1", created=CREATED).encode()


def assemble(fixed: bytes, recipients: bytes, data_key: bytes = DATA_KEY, mac_key: bytes | None = None) -> bytes:
    """A whole file: prefix, MAC (under mac_key, default the data key), and the payload for `fixed`."""
    aad = MAGIC + struct.pack(">I", len(fixed)) + fixed
    authenticated = aad + struct.pack(">I", len(recipients)) + recipients
    out = io.BytesIO()
    out.write(authenticated + mac_of(data_key if mac_key is None else mac_key, authenticated))
    with EncryptingWriter(out, data_key, aad, PARAMS, salt=SALT, nonce_prefix=NONCE_PREFIX) as w:
        w.write(HELLO)
    return out.getvalue()


@dataclass(frozen=True)
class Vector:
    name: str
    file: str
    key: str  # a 32-byte key file (--key) or an age identity file (--identity file://)
    reason: str
    exit: int = 4
    error: str = "IntegrityError"
    says: str = ""

    def entry(self, data: bytes) -> dict:
        entry = {"name": self.name, "file": self.file, "sha256": hashlib.sha256(data).hexdigest(),
                 "exit": self.exit, "reason": self.reason}
        entry["identity" if self.key.endswith(".txt") else "key"] = self.key
        if self.exit:
            entry.update(error=self.error, says=self.says)
        else:
            entry.update(plaintext_bytes=len(HELLO), plaintext_sha256=hashlib.sha256(HELLO).hexdigest())
        return entry


def flip(data: bytes, at: int) -> bytes:
    b = bytearray(data)
    b[at] ^= 1
    return bytes(b)


def b64_char_changed(text: str, at: int) -> str:
    return text[:at] + ("A" if text[at] != "A" else "B") + text[at + 1:]


def slack_bit_set(text: str) -> str:
    """Unpadded base64 of 32 bytes (43 characters, 2 unused bits) with an unused bit set."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    return text[:-1] + alphabet[alphabet.index(text[-1]) ^ 1]


def files() -> tuple[dict[str, bytes], dict]:
    good = stanzas(DATA_KEY)
    ok = assemble(FIXED, list_bytes(good))
    mac_at = len(ok) - PARAMS.ciphertext_size(len(HELLO)) - 32
    payload_at = mac_at + 32
    list_at = 14 + len(FIXED)
    a, b = (s.to_json() for s in good[:2])
    from_other_file = stanzas(OTHER_DATA_KEY)[0].to_json()
    low_order = dict(a, args=["AQ" + "A" * 41, a["args"][1]])  # the point 1: a low-order share
    flipped_own = dict(a, body=b64_char_changed(a["body"], 20))
    flipped_b = list_bytes([a, dict(b, body=b64_char_changed(b["body"], 10)), *good[2:]])
    renamed = FIXED.replace(b'"name":"vector"', b'"name":"wector"')
    made: dict[str, bytes] = {
        "ok.seal": ok,
        "ok-unknown-stanza.seal": assemble(FIXED, list_bytes([*good, Stanza("example.com/future", ("x",), b"?")])),
        "recipients-flipped-byte.seal": ok[:list_at] + flipped_b + ok[list_at + len(flipped_b):],
        "stanza-from-another-file.seal": assemble(FIXED, list_bytes([from_other_file, *good[1:]]))[:mac_at]
        + ok[mac_at:],
        "mac-from-another-key.seal": assemble(FIXED, list_bytes(good), mac_key=OTHER_DATA_KEY),
        "mac-flipped.seal": flip(ok, mac_at + 7),
        "fixed-flipped-byte.seal": ok.replace(b'"name":"vector"', b'"name":"wector"', 1),
        "fixed-changed-mac-recomputed.seal": assemble(renamed, list_bytes(good))[:payload_at] + ok[payload_at:],
        "payload-flipped.seal": flip(ok, len(ok) - 20),
        "own-stanza-changed-mac-recomputed.seal": assemble(FIXED, list_bytes([flipped_own, *good[1:]])),
        "truncated-in-mac.seal": ok[:mac_at + 16],
        "truncated-in-list.seal": ok[:list_at + 40],
        "list-oversized.seal": ok[:list_at - 4] + struct.pack(">I", 65537) + ok[list_at:],
        "fixed-oversized.seal": ok[:6] + struct.pack(">I", 65537) + ok[10:],
        "no-recipients.seal": assemble(FIXED, b"[]"),
        "x25519-extra-argument.seal": assemble(FIXED, list_bytes([dict(a, args=[*a["args"], "x"]), *good[1:]])),
        "x25519-low-order-share.seal": assemble(FIXED, list_bytes([low_order, *good[1:]])),
        "x25519-body-truncated.seal": assemble(FIXED, list_bytes([Stanza(good[0].type, good[0].args,
                                                                         good[0].body[:47]), *good[1:]])),
        "stanza-extra-member.seal": assemble(FIXED, list_bytes([dict(a, note="x"), *good[1:]])),
        "share-not-canonical.seal": assemble(FIXED, list_bytes([a, dict(b, args=[slack_bit_set(b["args"][0]),
                                                                         b["args"][1]]), *good[2:]])),
        "bad-version.seal": ok[:5] + b"\x03" + ok[6:],
    }
    vectors = [
        Vector("ok with identity a", "ok.seal", "identity-a.txt", "the published vector: an X25519 recipient",
               exit=0),
        Vector("ok with identity b", "ok.seal", "identity-b.txt", "the other X25519 recipient", exit=0),
        Vector("ok with the symmetric key", "ok.seal", "symmetric.key", "the symmetric recipient", exit=0),
        Vector("ok with the data key", "ok.seal", "data.key", "the data key itself (what fetch-key writes)",
               exit=0),
        Vector("ok with identity c", "ok.seal", "identity-c.txt", "an age identity that is not a recipient",
               error="NotARecipient", says="not a recipient"),
        Vector("ok with the wrong key", "ok.seal", "wrong.key",
               "a 32-byte key that is neither a recipient nor the data key", says="header MAC"),
        Vector("an unknown stanza", "ok-unknown-stanza.seal", "identity-a.txt",
               "a stanza of a type readers do not know: skipped", exit=0),
        Vector("recipient list flipped", "recipients-flipped-byte.seal", "identity-a.txt",
               "a byte of identity b's stanza changed: identity a's is intact, the header MAC is not",
               says="header MAC"),
        Vector("stanza from another file", "stanza-from-another-file.seal", "identity-a.txt",
               "identity a's stanza taken from a file with another data key, this file's MAC kept",
               says="header MAC"),
        Vector("MAC from another data key", "mac-from-another-key.seal", "identity-a.txt",
               "the header MAC computed under another data key", says="header MAC"),
        Vector("MAC flipped", "mac-flipped.seal", "symmetric.key", "a byte of the header MAC changed",
               says="header MAC"),
        Vector("fixed field flipped", "fixed-flipped-byte.seal", "identity-a.txt",
               '"vector" became "wector" in the fixed section: the MAC covers it', says="header MAC"),
        Vector("fixed field changed, MAC recomputed", "fixed-changed-mac-recomputed.seal", "data.key",
               "what a data key's holder can do: the MAC verifies, the payload's associated data does not",
               says="segment 0"),
        Vector("payload flipped", "payload-flipped.seal", "identity-b.txt", "a ciphertext byte changed",
               says="segment 0"),
        Vector("own stanza changed, MAC recomputed", "own-stanza-changed-mac-recomputed.seal", "identity-a.txt",
               "identity a's stanza body changed (the MAC recomputed): the stanza names a, and does not decrypt",
               says="does not decrypt"),
        Vector("truncated in the MAC", "truncated-in-mac.seal", "identity-a.txt", "the file ends inside the MAC",
               says="truncated"),
        Vector("truncated in the list", "truncated-in-list.seal", "identity-a.txt",
               "the file ends inside the recipient list", says="truncated"),
        Vector("list over the limit", "list-oversized.seal", "identity-a.txt",
               "the recipient list's length says 65537, over the 65536-byte limit", says="limit"),
        Vector("fixed section over the limit", "fixed-oversized.seal", "identity-a.txt",
               "the fixed section's length says 65537, over the 65536-byte limit", says="limit"),
        Vector("no recipients", "no-recipients.seal", "data.key", "an empty recipient list (with a valid MAC)",
               says="bad recipient list"),
        Vector("X25519 extra argument", "x25519-extra-argument.seal", "identity-b.txt",
               "identity a's stanza has a third argument (valid MAC): malformed for every reader",
               says="2 arguments, not 3"),
        Vector("X25519 low-order share", "x25519-low-order-share.seal", "identity-a.txt",
               "identity a's share is the point 1 (valid MAC): the shared secret would be all zeros",
               says="low-order"),
        Vector("X25519 body truncated", "x25519-body-truncated.seal", "identity-b.txt",
               "identity a's body is 47 bytes (valid MAC): checked before any decryption", says="47 bytes"),
        Vector("stanza with another member", "stanza-extra-member.seal", "identity-b.txt",
               "identity a's stanza has a member besides type, args and body (valid MAC)",
               says="exactly type, args and body"),
        Vector("share not canonical", "share-not-canonical.seal", "identity-a.txt",
               "identity b's share spelled with a non-zero trailing bit (valid MAC): another spelling of the "
               "same 32 bytes, refused", says="canonical"),
        Vector("format version 3", "bad-version.seal", "identity-a.txt", "the magic's version byte is 3",
               says="version 3"),
    ]
    out = dict(made)
    out["data.key"] = DATA_KEY
    out["wrong.key"] = WRONG_KEY
    out["symmetric.key"] = SYMMETRIC_KEY
    for name, identity in IDENTITIES.items():
        out[f"identity-{name}.txt"] = (f"# created: {CREATED}\n# public key: {identity.recipient}\n"
                                       f"{identity}\n").encode()
    manifest = {
        "description": "modelseal .seal v2 test vectors (docs/FORMAT.md): open each `file` with its `identity` "
                       "(an age identity file) or `key` (a 32-byte key: a symmetric recipient's, or the data key); "
                       "a failure must exit with `exit`, name the problem in one line containing `says`, "
                       "and leave nothing behind",
        "generator": "tests/vectors/generate_v2.py",
        "vectors": [v.entry(made[v.file]) for v in vectors],
    }
    out["manifest.json"] = (json.dumps(manifest, indent=1) + "\n").encode()
    published = {
        "description": "modelseal .seal v2 test vector (docs/FORMAT.md): seal-v2/ok.seal",
        "data_key": DATA_KEY.hex(),
        "plaintext_utf8": HELLO.decode(),
        "payload_salt": SALT.hex(),
        "payload_nonce_prefix": NONCE_PREFIX.hex(),
        "fixed": FIXED.decode(),
        "recipients": [
            {"identity": str(IDENTITIES["a"]), "recipient": str(IDENTITIES["a"].recipient),
             "ephemeral_secret": fixed_bytes("ephemeral a").hex()},
            {"identity": str(IDENTITIES["b"]), "recipient": str(IDENTITIES["b"].recipient),
             "ephemeral_secret": fixed_bytes("ephemeral b").hex()},
            {"symmetric_key": SYMMETRIC_KEY.hex(), "key_id": symmetric.Key(SYMMETRIC_KEY).key_id,
             "salt": fixed_bytes("symmetric salt", 16).hex()},
            {"kms": KMS.provider, "key_id": KMS.key_id, "context": KMS.context,
             "ciphertext": KMS.ciphertext.hex(), "note": "opaque: its service is not part of the vector"},
        ],
        "header_mac": ok[mac_at:payload_at].hex(),
        "sealed": ok.hex(),
    }
    return out, published


def main(argv: list[str]) -> int:
    want, published = files()
    published_bytes = (json.dumps(published, indent=1) + "\n").encode()
    if argv[1:] == ["--check"]:
        have = {p.name for p in OUT.iterdir()} if OUT.is_dir() else set()
        wrong = sorted(n for n, data in want.items() if not (OUT / n).is_file() or (OUT / n).read_bytes() != data)
        if not JSON.is_file() or JSON.read_bytes() != published_bytes:
            wrong.append(JSON.name)
        for n in wrong:
            print(f"differs or missing: {n}", file=sys.stderr)
        for n in sorted(have - set(want)):
            print(f"not made by the generator: {OUT / n}", file=sys.stderr)
        return 1 if wrong or have - set(want) else 0
    if argv[1:]:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    OUT.mkdir(exist_ok=True)
    for p in OUT.iterdir():
        if p.name not in want:
            p.unlink()
    for n, data in want.items():
        (OUT / n).write_bytes(data)
    JSON.write_bytes(published_bytes)
    print(f"{len(want)} files in {OUT}, and {JSON}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
