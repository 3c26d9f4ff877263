"""age's X25519 recipients in a `.seal` v2 header (docs/FORMAT.md, "X25519").

`age_wrap` and `age_unwrap` are age's X25519 stanza, byte for byte (C2SP
age.md; FiloSottile/age x25519.go, `Wrap` and `unwrap`): an ephemeral
X25519 share, HKDF-SHA-256 with salt = share || recipient and info
"age-encryption.org/v1/X25519", ChaCha20-Poly1305 with a zero nonce. With
age's 16-byte file key they interoperate with age (tests/test_recipients_x25519.py,
with pyrage and C2SP's CCTV vectors). The `.seal` stanza wraps the 32-byte
data key with the same code and adds the recipient's `age1...` string as a
second argument, so the list says who may open the file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .. import untrusted
from ..errors import IntegrityError, ModelsealError, NotARecipient, UsageError
from . import bech32
from .stanza import Stanza, b64decode, b64encode

TYPE = "X25519"
LABEL = b"age-encryption.org/v1/X25519"
KEY_SIZE = 32  # X25519 scalars and points
AGE_FILE_KEY_SIZE = 16
DATA_KEY_SIZE = 32
TAG_SIZE = 16
RECIPIENT_HRP = "age"
IDENTITY_HRP = "AGE-SECRET-KEY-"
#: Longer than any age X25519 key string (62 and 74 characters); bounds the work on hostile input.
MAX_KEY_TEXT = 256
#: An identity file, as the key sources cap what they read.
MAX_IDENTITY_FILE = 1 << 20


def _wrap_key(shared: bytes, share: bytes, recipient: bytes) -> ChaCha20Poly1305:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=share + recipient, info=LABEL)
    return ChaCha20Poly1305(hkdf.derive(shared))


def age_wrap(file_key: bytes, recipient: bytes, *, ephemeral: bytes | None = None) -> Stanza:
    """age's X25519 stanza for `recipient` (32 bytes) wrapping `file_key`.

    `ephemeral` is a test hook (the vectors): a fixed ephemeral secret instead of a fresh one.
    """
    secret = X25519PrivateKey.from_private_bytes(os.urandom(KEY_SIZE) if ephemeral is None else ephemeral)
    share = secret.public_key().public_bytes_raw()
    try:
        shared = secret.exchange(X25519PublicKey.from_public_bytes(recipient))
    except ValueError:  # a low-order point: the shared secret would be all zeros
        raise UsageError("the age recipient is not a usable X25519 public key (a low-order point)") from None
    body = _wrap_key(shared, share, recipient).encrypt(bytes(12), file_key, None)
    return Stanza(TYPE, (b64encode(share),), body)


def age_unwrap(stanza: Stanza, secret: bytes, public: bytes, size: int = AGE_FILE_KEY_SIZE) -> bytes | None:
    """The file key in age's X25519 stanza, or None when it does not decrypt with this identity.

    None is age's ErrIncorrectIdentity (the stanza is anonymous: it may be
    someone else's). A stanza of this type with the wrong shape, or a share
    that gives the all-zero shared secret, is refused: age's "header failure".
    """
    what = f"bad {TYPE} stanza"
    if len(stanza.args) != 1:
        raise IntegrityError(f"{what}: {len(stanza.args)} arguments, not 1")
    share = b64decode(stanza.args[0], f"{what}: the share")
    if len(share) != KEY_SIZE:
        raise IntegrityError(f"{what}: the share is {len(share)} bytes, not {KEY_SIZE}")
    # Before decrypting, as age does: a fixed size leaves no room for a partitioning oracle.
    if len(stanza.body) != size + TAG_SIZE:
        raise IntegrityError(f"{what}: the body is {len(stanza.body)} bytes, not {size + TAG_SIZE}")
    try:
        shared = X25519PrivateKey.from_private_bytes(secret).exchange(X25519PublicKey.from_public_bytes(share))
    except ValueError:  # cryptography refuses the all-zero result of a low-order share
        raise IntegrityError(f"{what}: the share is a low-order point") from None
    if shared == bytes(KEY_SIZE):
        raise IntegrityError(f"{what}: the share is a low-order point")
    try:
        return _wrap_key(shared, share, public).decrypt(bytes(12), stanza.body, None)
    except InvalidTag:
        return None


@dataclass(frozen=True)
class Recipient:
    """An age X25519 public key (`age1...`): what `seal --recipient` and `rewrap --add` take."""

    public: bytes

    @classmethod
    def parse(cls, text: str, error: type[ModelsealError] = UsageError) -> "Recipient":
        if text.upper().startswith("AGE-SECRET-KEY-"):  # a secret where a public key belongs: never quoted
            raise error("an age identity (a secret key) was given as a recipient: give its public key "
                        "(age-keygen -y prints it)")
        what = f"age recipient {untrusted.show(text, 80)}"
        if len(text) > MAX_KEY_TEXT:
            raise error(f"{what}: too long for an age X25519 recipient")
        if text.lower().startswith("age1pq1"):
            raise error(f"{what}: post-quantum age recipients are not supported")
        hrp, data = bech32.decode(text, what, error)
        if hrp != RECIPIENT_HRP:
            raise error(f"{what}: not an age X25519 recipient (age1...)")
        if len(data) != KEY_SIZE:
            raise error(f"{what}: {len(data)} bytes, not {KEY_SIZE}")
        return cls(data)

    def __str__(self) -> str:
        return bech32.encode(RECIPIENT_HRP, self.public)

    def describe(self) -> str:
        return str(self)

    def wrap(self, data_key: bytes, *, ephemeral: bytes | None = None) -> Stanza:
        """The `.seal` stanza: age's, over the 32-byte data key, naming this recipient."""
        if len(data_key) != DATA_KEY_SIZE:
            raise UsageError(f"data key must be {DATA_KEY_SIZE} bytes")
        age = age_wrap(data_key, self.public, ephemeral=ephemeral)
        return Stanza(TYPE, age.args + (str(self),), age.body)

    def matches(self, stanza: Stanza) -> bool:
        return stanza.type == TYPE and stanza.args[1:] == (str(self),)


class Identity:
    """An age X25519 secret key (`AGE-SECRET-KEY-1...`): unwraps the stanzas that name its public key."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) != KEY_SIZE:
            raise UsageError(f"an X25519 secret key is {KEY_SIZE} bytes")
        self._secret = secret
        self.recipient = Recipient(X25519PrivateKey.from_private_bytes(secret).public_key().public_bytes_raw())

    @classmethod
    def parse(cls, text: str, what: str, error: type[ModelsealError] = IntegrityError) -> "Identity":
        """One identity string; `what` names where it came from (never its text: it is secret)."""
        if len(text) > MAX_KEY_TEXT:
            raise error(f"{what}: too long for an age identity")
        if text.startswith("AGE-SECRET-KEY-PQ-1"):
            raise error(f"{what}: post-quantum age identities are not supported")
        hrp, data = bech32.decode(text, what, error)
        if hrp != IDENTITY_HRP:
            raise error(f"{what}: not an age identity (AGE-SECRET-KEY-1...)")
        if len(data) != KEY_SIZE:
            raise error(f"{what}: {len(data)} bytes, not {KEY_SIZE}")
        return cls(data)

    def __str__(self) -> str:  # the secret's own encoding: for writing an identity file, never for messages
        return bech32.encode(IDENTITY_HRP, self._secret)

    def __repr__(self) -> str:
        return f"<age identity of {self.recipient}>"

    def describe(self) -> str:
        return f"the age identity of {self.recipient}"

    def age_unwrap(self, stanza: Stanza, size: int = AGE_FILE_KEY_SIZE) -> bytes | None:
        """age's unwrap of one age X25519 stanza (the interop tests use it with 16-byte file keys)."""
        return age_unwrap(stanza, self._secret, self.recipient.public, size)

    def unwrap(self, stanzas: Sequence[Stanza]) -> bytes:
        """The data key from the first stanza that names this identity's public key.

        A stanza that names it and does not decrypt was changed: exit 4, not skipped.
        """
        mine = [s for s in stanzas if self.recipient.matches(s)]
        if not mine:
            raise NotARecipient(f"{self.recipient} is not a recipient of this file")
        for s in mine:
            key = self.age_unwrap(Stanza(TYPE, s.args[:1], s.body), DATA_KEY_SIZE)
            if key is not None:
                return key
        raise IntegrityError(f"the {TYPE} stanza for {self.recipient} does not decrypt with its identity "
                             "(a changed stanza)")


def check(stanza: Stanza, what: str) -> None:
    """A `.seal` X25519 stanza has age's share, then a recipient, and a 48-byte body."""
    if len(stanza.args) != 2:
        raise IntegrityError(f"{what}: an {TYPE} stanza has 2 arguments, not {len(stanza.args)}")
    share = b64decode(stanza.args[0], f"{what}: the {TYPE} share")
    if len(share) != KEY_SIZE:
        raise IntegrityError(f"{what}: the {TYPE} share is {len(share)} bytes, not {KEY_SIZE}")
    Recipient.parse(stanza.args[1], IntegrityError)
    if len(stanza.body) != DATA_KEY_SIZE + TAG_SIZE:
        raise IntegrityError(f"{what}: the {TYPE} body is {len(stanza.body)} bytes, not {DATA_KEY_SIZE + TAG_SIZE}")


def label(stanza: Stanza) -> str:
    """Who the stanza is for, for `inspect`."""
    return stanza.args[1]


def parse_identities(data: bytes | str, what: str, error: type[ModelsealError] = IntegrityError) -> list[Identity]:
    """An age identity file (`age-keygen` output): one identity a line, blank and `#` lines ignored.

    Messages name the line, never its text.
    """
    if len(data) > MAX_IDENTITY_FILE:
        raise error(f"{what}: over {MAX_IDENTITY_FILE} bytes, too long for an age identity file")
    if isinstance(data, (bytes, bytearray)):
        try:
            data = bytes(data).decode("utf-8")
        except UnicodeDecodeError:
            raise error(f"{what}: not UTF-8 text") from None
    identities = []
    for n, line in enumerate(data.split("\n"), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if not line.startswith("AGE-SECRET-KEY-"):
            raise error(f"{what}, line {n}: not an age identity (AGE-SECRET-KEY-1...)")
        identities.append(Identity.parse(line, f"{what}, line {n}", error))
    if not identities:
        raise error(f"{what}: no age identity in it")
    return identities
