"""The recipients of a `.seal` v2 file: who can unwrap its data key (docs/FORMAT.md, version 2).

One module per stanza type, each with `TYPE`, `check(stanza, what)` (the
type's shape, refused with exit 4 when wrong) and `label(stanza)` (who it is
for, for `inspect`): `x25519` (age public keys), `symmetric` (a 32-byte
key), `kms` (any key source that wraps). Their recipients have
`wrap(data_key) -> Stanza` and `matches(stanza)`; their identities
`unwrap(stanzas) -> data key`, raising NotARecipient when no stanza is
theirs. Stanzas of other types are kept and skipped.

On the command line a recipient is one string (`seal --recipient R`,
`rewrap --add R`, `rewrap --remove R`): an age public key (`age1...`), or a
key URI: a key service that wraps is a `kms` recipient, any other key
source's 32-byte key a `symmetric` one. `--remove` also takes a recipient as
`inspect` lists it ("key id ...", "aws-kms arn:..."), so a recipient whose
key is gone can still be removed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, Sequence

from .. import untrusted
from ..errors import UsageError
from . import kms, symmetric, x25519
from .stanza import Stanza

if TYPE_CHECKING:
    from ..connection import Connection
    from ..keys import KeySource

TYPES = {m.TYPE: m for m in (x25519, symmetric, kms)}


class Recipient(Protocol):
    def wrap(self, data_key: bytes) -> Stanza: ...
    def matches(self, stanza: Stanza) -> bool: ...
    def describe(self) -> str: ...


class Identity(Protocol):
    def unwrap(self, stanzas: Sequence[Stanza]) -> bytes: ...
    def describe(self) -> str: ...


def check(stanza: Stanza, what: str) -> None:
    """Refuse a stanza of a known type with the wrong shape; other types pass (readers skip them)."""
    module = TYPES.get(stanza.type)
    if module is not None:
        module.check(stanza, what)


def describe(stanza: Stanza) -> dict[str, str]:
    """What `inspect` lists for a stanza: its type and who it is for, as `rewrap --remove` takes it (no secrets:
    none are in a stanza)."""
    module = TYPES.get(stanza.type)
    if module is None:
        return {"type": stanza.type, "recipient": "(a type this version does not know)"}
    return {"type": stanza.type, "recipient": module.label(stanza)}


def recipient(text: str, connection: Connection) -> Recipient:
    """A recipient named on the command line (module docstring); a malformed one is a usage error (exit 2)."""
    if text[:4].lower() == "age1" or text[:15].upper() == "AGE-SECRET-KEY-":
        return x25519.Recipient.parse(text)
    from ..keys import open_key

    source = open_key(text, connection)
    if source.provider:
        return kms.Recipient(source)
    return symmetric.Key(source.data_key())


def of_key(source: KeySource) -> Recipient:
    """`--key FILE` / `--key-uri URI` as a recipient: a key service that wraps, or a 32-byte key."""
    return kms.Recipient(source) if source.provider else symmetric.Key(source.data_key())


def identities(key: KeySource | None, identity: KeySource | None) -> list[Identity]:
    """What a reader of a version 2 header tries, cheapest first: the age identities `--identity` yields,
    a 32-byte key (a symmetric recipient's, or the data key itself: the header MAC decides), then a key
    service (a network call per stanza it is tried on)."""
    found: list[Identity] = []
    if identity is not None:
        what = f"--identity {identity.uri.redacted()}"
        found += x25519.parse_identities(identity.secret(encoding="raw"), what, UsageError)
    if key is not None:
        found += [kms.Identity(key)] if key.provider else symmetric.given_key(key.data_key())
    return found


def removal(text: str, connection: Connection) -> Recipient:
    """What `rewrap --remove` takes: a recipient as --add takes it, or as `inspect` lists it."""
    if " " in text:  # no age key or URI has a space; every label inspect prints for a known type has one
        return Listed(text)
    return recipient(text, connection)


class Listed:
    """A recipient as `inspect` lists it: removes the stanzas with that label (it cannot wrap)."""

    def __init__(self, label: str) -> None:
        self.label = label

    def describe(self) -> str:
        return untrusted.show(self.label, 200)

    def matches(self, stanza: Stanza) -> bool:
        module = TYPES.get(stanza.type)
        return module is not None and module.label(stanza) == self.label

    def wrap(self, data_key: bytes) -> Stanza:
        raise UsageError(f"{self.describe()}: a recipient as inspect lists it can be removed, not added")
