"""A recipient stanza of a `.seal` v2 header, after age's: a type, string arguments, a body.

Generic rules only (docs/FORMAT.md, "Recipient stanzas"): sizes, character
sets, canonical base64. What a type's arguments mean is its own module's
business. Stanzas are read before anything authenticates them, so every
check fails with one line through `untrusted`, never with what the
standard library raises.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any, Type

from .. import untrusted
from ..errors import IntegrityError, ModelsealError

MAX_TYPE = 64
MAX_ARGS = 8
MAX_ARG = 2048
MAX_BODY = 4096
MAX_STANZAS = 64
#: The recipient list, as stored (its JSON text).
MAX_LIST_BYTES = 65536
_MEMBERS = {"type", "args", "body"}


def b64encode(data: bytes) -> str:
    """Base64 as age writes it: standard alphabet, no padding."""
    return base64.b64encode(data).decode("ascii").rstrip("=")


def b64decode(text: Any, what: str, error: type[ModelsealError] = IntegrityError) -> bytes:
    """The bytes of canonical unpadded base64; any other spelling of them is refused (age.md)."""
    if not isinstance(text, str) or not text.isascii() or "=" in text or len(text) % 4 == 1:
        raise error(f"{what} is not unpadded base64")
    try:
        data = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise error(f"{what} is not unpadded base64") from None
    if b64encode(data) != text:
        raise error(f"{what} is not canonical base64")
    return data


def _printable(text: str, low: int) -> bool:
    return all(low <= ord(c) <= 0x7E for c in text)


@dataclass(frozen=True)
class Stanza:
    type: str
    args: tuple[str, ...]
    body: bytes

    def check(self, what: str, error: Type[ModelsealError] = IntegrityError) -> "Stanza":  # noqa: UP006 (`type` is a field)
        """Refuse a stanza outside the generic limits (with `error`: IntegrityError reading, UsageError writing)."""
        if not isinstance(self.type, str) or not 0 < len(self.type) <= MAX_TYPE or not _printable(self.type, 0x21):
            raise error(f"{what}: the type is not 1 to {MAX_TYPE} printable ASCII characters without spaces")
        if len(self.args) > MAX_ARGS:
            raise error(f"{what}: more than {MAX_ARGS} arguments")
        for i, arg in enumerate(self.args):
            if not isinstance(arg, str) or len(arg) > MAX_ARG or not _printable(arg, 0x20):
                raise error(f"{what}: argument {i} is not at most {MAX_ARG} printable ASCII characters")
        if len(self.body) > MAX_BODY:
            raise error(f"{what}: the body is over {MAX_BODY} bytes")
        return self

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "args": list(self.args), "body": b64encode(self.body)}

    @classmethod
    def from_json(cls, obj: Any, what: str) -> "Stanza":
        if not isinstance(obj, dict) or set(obj) != _MEMBERS:
            raise IntegrityError(f"{what} is not an object of exactly type, args and body")
        args = obj["args"]
        if not isinstance(args, list) or len(args) > MAX_ARGS:
            raise IntegrityError(f"{what}: args is not a list of at most {MAX_ARGS} strings")
        if not isinstance(obj["body"], str) or len(obj["body"]) > (MAX_BODY * 4 + 2) // 3:
            raise IntegrityError(f"{what}: the body is not base64 of at most {MAX_BODY} bytes")
        body = b64decode(obj["body"], f"{what}: the body")
        return cls(type=obj["type"], args=tuple(args), body=body).check(what)

    def describe(self) -> str:
        """The stanza for a log line or an error: type and arguments, quoted and shortened (never the body)."""
        return " ".join([untrusted.show(self.type, 40)] + [untrusted.show(a, 80) for a in self.args[:3]])


def encode_list(stanzas: list[Stanza], error: type[ModelsealError]) -> bytes:
    """The recipient list as written: a JSON array, keys sorted, no whitespace."""
    if not 0 < len(stanzas) <= MAX_STANZAS:
        raise error(f"a .seal has 1 to {MAX_STANZAS} recipients, not {len(stanzas)}")
    for i, s in enumerate(stanzas):
        s.check(f"recipient {i}", error)
    raw = json.dumps([s.to_json() for s in stanzas], sort_keys=True, separators=(",", ":")).encode("ascii")
    if len(raw) > MAX_LIST_BYTES:
        raise error(f"the recipient list is {len(raw)} bytes, over the {MAX_LIST_BYTES}-byte limit")
    return raw


def decode_list(raw: bytes) -> list[Stanza]:
    """The stanzas of a recipient list as read (generic rules; each type checks its own shape)."""
    doc = untrusted.json_document(raw, "bad recipient list")
    if not isinstance(doc, list) or not 0 < len(doc) <= MAX_STANZAS:
        raise IntegrityError(f"bad recipient list: not a JSON array of 1 to {MAX_STANZAS} stanzas")
    return [Stanza.from_json(obj, f"bad recipient list: stanza {i}") for i, obj in enumerate(doc)]
