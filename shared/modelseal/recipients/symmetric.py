"""A 32-byte key as a `.seal` v2 recipient (`--key FILE`): the `symmetric` stanza (docs/FORMAT.md).

The user's key wraps the per-file data key, as age's scrypt stanza wraps its
file key, with HKDF in place of scrypt because the key is 256 random bits,
not a passphrase: wrap key = HKDF-SHA-256(key, salt, "modelseal/v2/symmetric"),
body = ChaCha20-Poly1305 of the data key under a zero nonce (the wrap key is
used once: the salt is fresh). The stanza names the key by version 1's key
id, so a reader finds its stanza without trying each one, and `inspect`
shows the id a v1 file sealed with the same key showed.
"""

from __future__ import annotations

import os
from typing import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..errors import IntegrityError, NotARecipient, UsageError
from ..sealheader import DATA_KEY_SIZE, key_id
from .stanza import Stanza, b64decode, b64encode

TYPE = "symmetric"
INFO = b"modelseal/v2/symmetric"
SALT_SIZE = 16
TAG_SIZE = 16
KEY_ID_HEX = 16


def _aead(key: bytes, salt: bytes) -> ChaCha20Poly1305:
    return ChaCha20Poly1305(HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=INFO).derive(key))


class Key:
    """The user's 32-byte key: a recipient (it wraps) and an identity (it unwraps)."""

    def __init__(self, key: bytes) -> None:
        if len(key) != DATA_KEY_SIZE:
            raise UsageError(f"a symmetric key is {DATA_KEY_SIZE} bytes, not {len(key)}")
        self._key = key
        self.key_id = key_id(key)

    def __repr__(self) -> str:
        return f"<symmetric key {self.key_id}>"

    def describe(self) -> str:
        return f"the symmetric key with id {self.key_id}"

    def wrap(self, data_key: bytes, *, salt: bytes | None = None) -> Stanza:
        """`salt` is a test hook (the vectors): a fixed salt instead of a fresh one."""
        if len(data_key) != DATA_KEY_SIZE:
            raise UsageError(f"data key must be {DATA_KEY_SIZE} bytes")
        salt = os.urandom(SALT_SIZE) if salt is None else salt
        if len(salt) != SALT_SIZE:
            raise UsageError(f"the salt is {SALT_SIZE} bytes")
        return Stanza(TYPE, (self.key_id, b64encode(salt)), _aead(self._key, salt).encrypt(bytes(12), data_key, None))

    def matches(self, stanza: Stanza) -> bool:
        return stanza.type == TYPE and stanza.args[:1] == (self.key_id,)

    def unwrap(self, stanzas: Sequence[Stanza]) -> bytes:
        mine = [s for s in stanzas if self.matches(s)]
        if not mine:
            raise NotARecipient(f"the symmetric key with id {self.key_id} is not a recipient of this file")
        for s in mine:
            salt = b64decode(s.args[1], f"bad {TYPE} stanza: the salt")
            if len(s.body) != DATA_KEY_SIZE + TAG_SIZE:  # checked by check(); here too before decrypting
                raise IntegrityError(f"bad {TYPE} stanza: the body is {len(s.body)} bytes")
            try:
                return _aead(self._key, salt).decrypt(bytes(12), s.body, None)
            except InvalidTag:
                continue
        raise IntegrityError(f"the {TYPE} stanza for key id {self.key_id} does not decrypt with that key "
                             "(a changed stanza)")


class DataKey:
    """The data key itself (what `fetch-key` writes after unwrapping): no stanza, the header MAC decides."""

    def __init__(self, key: bytes) -> None:
        if len(key) != DATA_KEY_SIZE:
            raise UsageError(f"a data key is {DATA_KEY_SIZE} bytes, not {len(key)}")
        self._key = key

    def __repr__(self) -> str:
        return "<a data key>"

    def describe(self) -> str:
        return f"the key with id {key_id(self._key)} taken as the data key"

    def unwrap(self, stanzas: Sequence[Stanza]) -> bytes:
        return self._key


def given_key(key: bytes) -> list[Key | DataKey]:
    """What a 32-byte key given to a reader may be: a symmetric recipient's key, else the data key itself."""
    return [Key(key), DataKey(key)]


def check(stanza: Stanza, what: str) -> None:
    if len(stanza.args) != 2:
        raise IntegrityError(f"{what}: a {TYPE} stanza has 2 arguments, not {len(stanza.args)}")
    kid = stanza.args[0]
    if len(kid) != KEY_ID_HEX or any(c not in "0123456789abcdef" for c in kid):
        raise IntegrityError(f"{what}: the {TYPE} key id is not {KEY_ID_HEX} lower-case hex digits")
    if len(b64decode(stanza.args[1], f"{what}: the {TYPE} salt")) != SALT_SIZE:
        raise IntegrityError(f"{what}: the {TYPE} salt is not {SALT_SIZE} bytes")
    if len(stanza.body) != DATA_KEY_SIZE + TAG_SIZE:
        raise IntegrityError(f"{what}: the {TYPE} body is {len(stanza.body)} bytes, not {DATA_KEY_SIZE + TAG_SIZE}")


def label(stanza: Stanza) -> str:
    return f"key id {stanza.args[0]}"


