"""The `.seal` format version 2 prefix: fixed fields, recipient stanzas, header MAC (docs/FORMAT.md).

    "MSEAL" 0x02 || uint32_be(flen) || fixed || uint32_be(rlen) || recipients || mac (32) || payload

The payload's associated data is `magic || flen || fixed` as stored, so the
recipients can change without touching the payload; the MAC (HMAC-SHA-256,
key HKDF(data key, info "modelseal/v2/header")) covers every byte before
it, so only a holder of the data key can change them. Readers authenticate
the bytes they read and never re-serialise what they parsed.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from dataclasses import dataclass, replace
from typing import Any, Sequence

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from . import recipients, untrusted
from .errors import IntegrityError, NotARecipient, UsageError
from .recipients.stanza import MAX_LIST_BYTES, Stanza, decode_list, encode_list
from .sealheader import DATA_KEY_SIZE, MAGIC, MAX_HEADER, Fixed
from .streaming import AES256_GCM_HKDF_1MB, EncryptingWriter, Readable, Writable, _read_full

VERSION = 2
PREFIX = MAGIC + bytes([VERSION])
MAC_SIZE = 32
MAC_INFO = b"modelseal/v2/header"
__all__ = ["Fixed", "Header", "new_data_key", "read_after_magic", "seal", "seal_writer"]


def _mac(data_key: bytes, authenticated: bytes) -> bytes:
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=MAC_INFO).derive(data_key)
    return hmac.new(key, authenticated, hashlib.sha256).digest()


def new_data_key() -> bytes:
    """A fresh data key for one file (never reused, never the user's)."""
    return os.urandom(DATA_KEY_SIZE)


@dataclass(frozen=True)
class Header:
    """A version 2 prefix, with its sections exactly as stored (the MAC and the AAD are over those bytes)."""

    fixed: Fixed
    fixed_raw: bytes
    stanzas: tuple[Stanza, ...]
    list_raw: bytes
    mac: bytes

    @property
    def aad(self) -> bytes:
        """The payload's associated data: magic, flen and the fixed section."""
        return PREFIX + struct.pack(">I", len(self.fixed_raw)) + self.fixed_raw

    def authenticated(self) -> bytes:
        """Every byte the header MAC covers: everything before it."""
        return self.aad + struct.pack(">I", len(self.list_raw)) + self.list_raw

    def encode(self) -> bytes:
        """The whole prefix, up to the payload."""
        return self.authenticated() + self.mac

    @classmethod
    def build(cls, fixed: Fixed, stanzas: Sequence[Stanza], data_key: bytes,
              fixed_raw: bytes | None = None) -> "Header":
        """A header for `data_key` with these stanzas (writers: UsageError for anything over a limit)."""
        if len(data_key) != DATA_KEY_SIZE:
            raise UsageError(f"data key must be {DATA_KEY_SIZE} bytes")
        if fixed.FORMAT != VERSION:
            raise UsageError(f"a version {VERSION} header's fixed section, not a version {fixed.FORMAT} header")
        raw = fixed.encode() if fixed_raw is None else fixed_raw
        list_raw = encode_list(list(stanzas), UsageError)
        unsigned = cls(fixed, raw, tuple(stanzas), list_raw, b"")
        return replace(unsigned, mac=_mac(data_key, unsigned.authenticated()))

    def verifies(self, data_key: bytes) -> bool:
        """True when `data_key` is this file's data key and nothing before the MAC changed."""
        return len(data_key) == DATA_KEY_SIZE and hmac.compare_digest(_mac(data_key, self.authenticated()),
                                                                     self.mac)

    def unlock(self, identities: Sequence[recipients.Identity]) -> bytes:
        """The data key: the first key unwrapped by one of `identities` under which the header MAC verifies.

        Refused (exit 4) when no stanza is for any of them, or at the first
        key they unwrap that does not verify the MAC (a changed list, a stanza
        moved in from another file, a wrong key given as the data key).
        """
        if not identities:
            raise UsageError("no key or identity given to open the file with")
        refused: list[NotARecipient] = []
        for identity in identities:
            try:
                candidate = identity.unwrap(self.stanzas)
            except NotARecipient as e:
                refused.append(e)
                continue
            if self.verifies(candidate):
                return candidate
            raise IntegrityError(f"the header MAC does not verify with {identity.describe()}: a wrong key, "
                                 "a changed recipient list or a stanza from another file")
        if len(refused) == 1:
            raise refused[0]
        raise NotARecipient(f"none of the {len(refused)} keys given is a recipient of this file "
                            f"(the first: {refused[0]})")

    def rewrap(self, data_key: bytes, add: Sequence[recipients.Recipient] = (),
               remove: Sequence[recipients.Recipient] = ()) -> "Header":
        """The same file for other recipients: the fixed bytes (so the payload) unchanged, a new list and MAC."""
        if not self.verifies(data_key):
            raise IntegrityError("the header MAC does not verify with the data key given to rewrap")
        kept = list(self.stanzas)
        for r in remove:
            if not any(r.matches(s) for s in kept):
                raise UsageError(f"{r.describe()} is not a recipient of this file")
            kept = [s for s in kept if not r.matches(s)]
        for r in add:
            if any(r.matches(s) for s in kept):
                raise UsageError(f"{r.describe()} is a recipient of this file already")
            kept.append(r.wrap(data_key))
        if not kept:
            raise UsageError("refusing to remove the last recipient: nobody could open the file")
        return Header.build(self.fixed, kept, data_key, fixed_raw=self.fixed_raw)

    def recipients(self) -> list[dict[str, str]]:
        """For `inspect`: each stanza's type and who it is for."""
        return [recipients.describe(s) for s in self.stanzas]

    def log_fields(self) -> dict[str, Any]:
        """What a log line may say before the header is authenticated: shortened (the JSON line escapes it,
        the text line escapes its control characters), not repr-quoted (issue 20)."""
        return {"name": untrusted.shorten(self.fixed.name, 80), "version": untrusted.shorten(self.fixed.version, 40),
                "recipients": len(self.stanzas)}


def seal(fixed: Fixed, data_key: bytes, to: Sequence[recipients.Recipient]) -> Header:
    """A new file's header: `data_key` wrapped for each recipient."""
    return Header.build(fixed, [r.wrap(data_key) for r in to], data_key)


def _read(src: Readable, n: int, where: str) -> bytes:
    buf = bytearray(n)
    if _read_full(src, memoryview(buf)) < n:
        raise IntegrityError(f"truncated: input ends inside {where}")
    return bytes(buf)


def read_after_magic(src: Readable) -> Header:
    """The rest of a version 2 prefix, once sealfile.read_prefix has read its magic and version byte.

    Each length is checked against its limit before its bytes are read.
    """
    (flen,) = struct.unpack(">I", _read(src, 4, "the fixed header's length"))
    if not 2 <= flen <= MAX_HEADER:
        raise IntegrityError(f"bad header: fixed header length {flen} is not 2 to {MAX_HEADER} bytes (the limit)")
    fixed_raw = _read(src, flen, "the fixed header")
    fixed = Fixed.from_json(untrusted.json_document(fixed_raw, "bad header"))
    (rlen,) = struct.unpack(">I", _read(src, 4, "the recipient list's length"))
    if not 2 <= rlen <= MAX_LIST_BYTES:
        raise IntegrityError(f"bad recipient list: length {rlen} is not 2 to {MAX_LIST_BYTES} bytes (the limit)")
    list_raw = _read(src, rlen, "the recipient list")
    stanzas = decode_list(list_raw)
    for i, s in enumerate(stanzas):
        recipients.check(s, f"bad recipient list: stanza {i}")
    mac = _read(src, MAC_SIZE, "the header MAC")
    return Header(fixed, fixed_raw, tuple(stanzas), list_raw, mac)


def seal_writer(out: Writable, header: Header, data_key: bytes, *, salt: bytes | None = None,
                nonce_prefix: bytes | None = None) -> EncryptingWriter:
    """Write the prefix to `out`; return the writer of the payload (`salt`, `nonce_prefix`: test hooks)."""
    if not header.verifies(data_key):
        raise UsageError("the header was not made for this data key")
    out.write(header.encode())
    return EncryptingWriter(out, data_key, header.aad, AES256_GCM_HKDF_1MB, salt=salt, nonce_prefix=nonce_prefix)
