"""A key service that wraps (AWS KMS, Vault transit, and any later one) as a `.seal` v2 recipient.

The `kms` stanza is version 1's `wrapped_key` as a stanza: args = [provider,
key id, context], body = the service's ciphertext (docs/FORMAT.md, "kms").
Generic over the key sources: any KeySource that declares the `provider` it
wraps for (its `wrap()` returns a WrappedKey, its `material()` unwraps one)
is a recipient, with no change here or in the format.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Sequence

from .. import untrusted
from ..errors import DeniedError, IntegrityError, NotARecipient, UsageError
from ..sealheader import WrappedKey
from .stanza import Stanza

if TYPE_CHECKING:
    from ..keys import KeySource

TYPE = "kms"


def provider_of(source: KeySource) -> str:
    """The provider name a wrapping key source declares; a source that does not wrap is no recipient."""
    if not source.provider:
        raise UsageError(f"{source.uri.redacted()}: this key source does not wrap keys, so it cannot be a recipient")
    return source.provider


def context_text(context: dict[str, str]) -> str:
    """The context argument: a JSON object of strings, keys sorted, no whitespace, ASCII."""
    return json.dumps(context, sort_keys=True, separators=(",", ":"))


def stanza_of(wrapped: WrappedKey) -> Stanza:
    return Stanza(TYPE, (wrapped.provider, wrapped.key_id, context_text(wrapped.context)), wrapped.ciphertext)


def wrapped_of(stanza: Stanza) -> WrappedKey:
    """The WrappedKey a key source unwraps (the stanza passed `check`)."""
    provider, kid, context = stanza.args
    return WrappedKey(provider=provider, key_id=kid, ciphertext=stanza.body, context=_context(context, "kms stanza"))


def _context(text: str, what: str) -> dict[str, str]:
    doc = untrusted.json_document(text, f"{what}: the context", max_depth=1)
    if not isinstance(doc, dict) or not all(isinstance(v, str) for v in doc.values()):
        raise IntegrityError(f"{what}: the context is not a JSON object of strings")
    return doc


class Recipient:
    """A wrapping key source as a recipient: `seal --recipient aws-kms://...`, `rewrap --add`."""

    def __init__(self, source: KeySource) -> None:
        self.source = source
        self.provider = provider_of(source)

    def describe(self) -> str:
        return self.source.uri.redacted()

    def wrap(self, data_key: bytes) -> Stanza:
        return stanza_of(self.source.wrap(data_key)).check(f"the {self.provider} stanza", UsageError)

    def matches(self, stanza: Stanza) -> bool:
        """The stanza is this provider's and names this source's key, as its service names it (`rewrap --remove`)."""
        return stanza.type == TYPE and stanza.args[0] == self.provider and self.source.wrapped_by(stanza.args[1])


class Identity:
    """A wrapping key source as an identity: it asks its service to unwrap its provider's stanzas."""

    def __init__(self, source: KeySource) -> None:
        self.source = source
        self.provider = provider_of(source)

    def describe(self) -> str:
        return self.source.uri.redacted()

    def unwrap(self, stanzas: Sequence[Stanza]) -> bytes:
        """The data key from the first of this provider's stanzas the service unwraps.

        A refusal (another key of the same service: "incorrect key", or a
        denial) moves on to the next; unavailable and usage errors stop.
        """
        mine = [s for s in stanzas if s.type == TYPE and self.source.unwraps_for(s.args[0])]
        if not mine:
            raise NotARecipient(f"no {self.provider} key is a recipient of this file")
        refusals: list[IntegrityError | DeniedError] = []
        for s in mine:
            try:
                return self.source.data_key(wrapped_of(s))
            except (IntegrityError, DeniedError) as e:
                refusals.append(e)
        first = refusals[0]
        if all(isinstance(e, DeniedError) for e in refusals):
            raise DeniedError(f"{self.describe()} unwrapped none of the file's {len(mine)} {self.provider} "
                              f"stanzas: {first}")
        raise IntegrityError(f"{self.describe()} unwrapped none of the file's {len(mine)} {self.provider} "
                             f"stanzas: {first}")


def check(stanza: Stanza, what: str) -> None:
    if len(stanza.args) != 3:
        raise IntegrityError(f"{what}: a {TYPE} stanza has 3 arguments, not {len(stanza.args)}")
    if not stanza.args[0]:
        raise IntegrityError(f"{what}: the {TYPE} stanza names no provider")
    if not stanza.body:
        raise IntegrityError(f"{what}: the {TYPE} stanza has no ciphertext")
    _context(stanza.args[2], what)


def label(stanza: Stanza) -> str:
    return f"{stanza.args[0]} {stanza.args[1]}"
