"""The recipients of a `.seal` v2 file: who can unwrap its data key (docs/FORMAT.md, version 2).

One module per stanza type, each with `TYPE`, `check(stanza, what)` (the
type's shape, refused with exit 4 when wrong) and `label(stanza)` (who it is
for, for `inspect`): `x25519` (age public keys), `symmetric` (a 32-byte
key), `kms` (any key source that wraps). Their recipients have
`wrap(data_key) -> Stanza` and `matches(stanza)`; their identities
`unwrap(stanzas) -> data key`, raising NotARecipient when no stanza is
theirs. Stanzas of other types are kept and skipped.
"""

from __future__ import annotations

from typing import Protocol, Sequence

from . import kms, symmetric, x25519
from .stanza import Stanza

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
    """What `inspect` lists for a stanza: its type and who it is for (no secrets: none are in a stanza)."""
    module = TYPES.get(stanza.type)
    if module is None:
        return {"type": stanza.type, "recipient": "(a type this version does not know)"}
    return {"type": stanza.type, "recipient": module.label(stanza)}
