"""Key sources: where the 32-byte data key comes from, selected by URI scheme.

A backend is one module in this package that defines `SCHEMES` and a
`KeySource` subclass named `Backend`. It either fetches secret material
(`file:`, `env:`, `https:`, `vault:`, ...) or is a key service that wraps:
it wraps fresh data keys for `seal` (envelope encryption) and unwraps what it
wrapped (`aws-kms:`, `vault-transit:`, `gcp-kms:`, `azure-kv:`,
`azure-skr:`). A wrapping source declares the `provider` name its wrapped
keys carry; that, and nothing probed from its module, makes it a `.seal`
v2 recipient (modelseal.recipients.kms).
"""

from __future__ import annotations

import base64
import binascii
import sys
from typing import ClassVar

from .. import untrusted
from ..connection import Connection
from ..errors import IntegrityError, UsageError
from ..sealheader import DATA_KEY_SIZE, WrappedKey
from ..uri import URI, discover, find_backend


class KeySource:
    SCHEMES: ClassVar[tuple[str, ...]] = ()
    #: True when the key is obtained by unwrapping the header's wrapped_key.
    unwraps: ClassVar[bool] = False
    #: The provider name of the keys this source wraps (a wrapped key's `provider`); empty: it does not wrap.
    provider: ClassVar[str] = ""
    #: The providers whose wrapped keys it unwraps (azure-kv and azure-skr open each other's); default: its own.
    providers: ClassVar[tuple[str, ...]] = ()

    def __init__(self, uri: URI, connection: Connection) -> None:
        self.uri = uri
        self.connection = connection.with_query(uri.query)

    def material(self, wrapped: WrappedKey | None) -> bytes:
        """The secret as the service stores it (before `field=` and `encoding=`)."""
        raise NotImplementedError

    def wrap(self, data_key: bytes) -> WrappedKey:
        """Envelope-encrypt a fresh data key (only for sources that unwrap)."""
        raise UsageError(f"{self.uri.scheme}: keys cannot be wrapped by this key source")

    def unwraps_for(self, provider: str) -> bool:
        """Whether a key wrapped by `provider` is this source's to unwrap."""
        return provider in (self.providers or ((self.provider,) if self.provider else ()))

    def unwrappable(self, wrapped: WrappedKey | None, context: dict[str, str], what: str) -> WrappedKey:
        """`wrapped`, once it is this source's to unwrap and carries each `context.NAME=VALUE` the URI asks for
        (one rule for every key service that wraps: a wrong provider is a usage error, a missing context 4)."""
        assert wrapped is not None  # KeySource.data_key checks
        if not self.unwraps_for(wrapped.provider):
            raise UsageError(f"the file's data key is wrapped by {untrusted.show(wrapped.provider, 40)}, "
                             f"not by {self.provider}")
        for k, v in context.items():
            if wrapped.context.get(k) != v:
                raise IntegrityError(f"{what}: the file's encryption context does not have {k}={v}")
        return wrapped

    def wrapped_by(self, key_id: str) -> bool:
        """Whether a wrapped key that names `key_id` was wrapped by this source's key (`rewrap --remove URI`).

        Each wrapping backend says how its service names its keys (an ARN for
        an alias, a key version for a key); a source that does not wrap owns none.
        """
        return False

    def data_key(self, wrapped: WrappedKey | None = None) -> bytes:
        raw = self.secret(wrapped)
        if len(raw) != DATA_KEY_SIZE:
            raise IntegrityError(f"key from {self.uri.redacted()} is {len(raw)} bytes, expected {DATA_KEY_SIZE}")
        return raw

    def secret(self, wrapped: WrappedKey | None = None, encoding: str = "auto") -> bytes:
        """The secret after `field=` and `encoding=`, of any length (e.g. an OpenPGP passphrase,
        for which the default encoding is raw: "auto" guesses by a data key's length)."""
        if self.unwraps and wrapped is None:
            raise UsageError(
                f"{self.uri.scheme}: this key source unwraps the wrapped_key of a .seal header, "
                "but no header was given (use --wrapped-from or a model source)"
            )
        raw = self.material(wrapped)
        if not self.unwraps:
            raw = decode(raw, self.connection.extra.get("field"), self.connection.extra.get("encoding", encoding))
        return raw


def _text(raw: bytes) -> bool:
    """Printable ASCII (with line ends): text meant to be decoded, not raw key bytes."""
    return all(32 <= b < 127 or b in b"\t\r\n" for b in raw)


def wrong_size(n: int) -> str:
    return f"a data key is {DATA_KEY_SIZE} bytes (raw, base64 or hex); this one is {n}"


def decode(raw: bytes, field: str | None, encoding: str) -> bytes:
    """Apply `field=` (a JSON member) and `encoding=` (raw, base64, hex or auto)."""
    if field:
        obj = untrusted.json_document(raw, "key material for field=")
        for part in field.split("."):
            if not isinstance(obj, dict) or part not in obj:
                raise IntegrityError(f"key material has no JSON field {untrusted.show(field, 80)}")
            obj = obj[part]
        if not isinstance(obj, str):
            raise IntegrityError(f"JSON field {untrusted.show(field, 80)} of the key material is not a string")
        raw = untrusted.utf8(obj, f"JSON field {untrusted.show(field, 80)} of the key material")
    if encoding == "raw":
        return raw
    text = raw.strip()
    guessed = encoding == "auto"
    if guessed:
        if len(raw) == DATA_KEY_SIZE:
            return raw
        encoding = "hex" if len(text) == 2 * DATA_KEY_SIZE else "base64"
    try:
        if encoding == "hex":
            return binascii.unhexlify(text)
        if encoding == "base64":
            return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        if guessed and not _text(raw):  # binary, and not 32 bytes: a raw key of the wrong size
            raise UsageError(wrong_size(len(raw))) from None
        raise IntegrityError(f"key material is not valid {encoding}") from None
    raise UsageError(f"unknown key encoding {encoding!r} (raw, base64, hex)")


def backends() -> dict:
    return discover(sys.modules[__name__])


def open_key(uri: str | URI, connection: Connection | None = None) -> KeySource:
    parsed = uri if isinstance(uri, URI) else URI.parse(uri)
    module = find_backend(sys.modules[__name__], parsed.scheme)
    if module is None:
        known = ", ".join(sorted(backends()))
        raise UsageError(f"unknown key URI scheme {parsed.scheme!r} (known: {known})")
    return module.Backend(parsed, connection or Connection())
