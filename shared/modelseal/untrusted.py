"""Reading values we do not trust: one error path for every malformed input.

Bytes from a `.seal` header, a key server, Vault, the CDH, an HTTP header or
an archive reach the rest of the code only through these functions, which
fail with the caller's error class (IntegrityError by default, exit 4) and a
one-line message, never with whatever the standard library happens to raise:

- JSON documents: size-capped by the caller, then `json.loads`, whose C
  scanner raises RecursionError on deep nesting (not a ValueError); the
  result is also refused when nested more than MAX_DEPTH levels, so nothing
  downstream (`json.dumps`, `repr`, `str`) can recurse on it either.
- Members of JSON objects: `member(doc, "data.data", what)` walks objects
  only, so a string or a list where an object belongs is "malformed", not an
  AttributeError.
- Decimal numbers: ASCII digits only and at most `max_digits` of them.
  `int()` refuses more than 4300 digits with a ValueError, and `str.isdigit()`
  accepts "²", which `int()` then refuses.
- HTTP Content-Range values, parsed with the same bounds.
- Text for messages: `show()` quotes and shortens a value that an attacker
  may have chosen (an archive entry name, a header's key id), so it can
  neither forge log structure nor grow a log line without bound.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Iterable

from .errors import IntegrityError, ModelsealError

#: Nesting depth of JSON accepted from outside (a .seal header, a key service's answer).
MAX_DEPTH = 32
#: Digits accepted in a decimal number (19 digits hold any 63-bit length or offset).
MAX_DIGITS = 19

_CONTENT_RANGE = re.compile(r"bytes[ \t]+([0-9]{1,19})-([0-9]{1,19})/([0-9]{1,19}|\*)", re.ASCII)


def show(value: Any, limit: int = 120) -> str:
    """A value fit for a one-line message: quoted (repr, so control characters are escaped) and shortened."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        value = bytes(value).decode("utf-8", "backslashreplace")
    if not isinstance(value, str):
        value = _short_repr(value, limit)
    text = repr(value[: limit + 1])
    return text if len(text) <= limit else text[: max(limit - 5, 1)] + "...'"


def shorten(value: Any, limit: int = 120) -> str:
    """A header string for a log field: shortened, its control characters escaped (\\n, \\x1b), but not
    repr-quoted (`my-model`, not `'my-model'`); a value that is not a string is shown as show() shows it."""
    if not isinstance(value, str):
        return show(value, limit)
    text = value[: limit + 1]
    if not text.isprintable():
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= limit else text[: max(limit - 3, 1)] + "..."


def _short_repr(value: Any, limit: int) -> str:
    """repr() of a scalar; containers are named, never walked (they may be deep)."""
    if value is None or isinstance(value, (bool, int, float)):
        if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
            return f"<integer of {value.bit_length()} bits>"
        return repr(value)[:limit]
    if isinstance(value, dict):
        return "<a JSON object>"
    if isinstance(value, (list, tuple)):
        return "<a JSON array>"
    return f"<{type(value).__name__}>"


def json_document(data: bytes | bytearray | str, what: str, error: type[ModelsealError] = IntegrityError,
                  max_depth: int = MAX_DEPTH) -> Any:
    """Parse UTF-8 JSON from outside; any failure is `error(f"{what}: ...")`.

    Bytes are decoded as UTF-8 here (json.loads would guess UTF-16 or UTF-32);
    NaN, Infinity and numbers beyond a float's range are not JSON and refused.
    """
    try:
        if isinstance(data, (bytes, bytearray, memoryview)):
            data = bytes(data).decode("utf-8")
        doc = json.loads(data, parse_float=_finite, parse_constant=_no_constant)
    except RecursionError:
        raise error(f"{what}: JSON nested too deeply") from None
    except (ValueError, TypeError):  # UnicodeDecodeError and int()'s digit limit are ValueErrors
        raise error(f"{what}: not valid UTF-8 JSON") from None
    if not depth_within(doc, max_depth):
        raise error(f"{what}: JSON nested more than {max_depth} levels deep")
    return doc


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999: JSON has no infinities
        raise ValueError("number out of range")
    return value


def _no_constant(text: str) -> Any:
    raise ValueError(f"{text} is not JSON")


def depth_within(doc: Any, max_depth: int) -> bool:
    """True when no container in doc is nested deeper than max_depth (iterative: no recursion)."""
    todo: list[tuple[Any, int]] = [(doc, 1)]
    while todo:
        node, depth = todo.pop()
        children: Iterable[Any]
        if isinstance(node, dict):
            children = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > max_depth:
            return False
        todo.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return True


def member(doc: Any, path: str, what: str, error: type[ModelsealError] = IntegrityError) -> Any:
    """doc["a"]["b"] for path "a.b", through JSON objects only; None when a member is missing or null.

    A step that is present but not an object (a string, a list) is malformed: `error`.
    """
    node = doc
    seen: list[str] = []
    for name in path.split("."):
        if node is None:
            return None
        if not isinstance(node, dict):
            where = ".".join(seen) or "the answer"
            raise error(f"{what}: {where} is not a JSON object")
        node = node.get(name)
        seen.append(name)
    return node


def text(value: Any, what: str, error: type[ModelsealError] = IntegrityError, *, optional: bool = True) -> str:
    """A string member (absent allowed when optional: ""); anything else is malformed."""
    if value is None and optional:
        return ""
    if not isinstance(value, str):
        raise error(f"{what} is not a string")
    return value


def utf8(value: str, what: str, error: type[ModelsealError] = IntegrityError) -> bytes:
    """A string from a JSON document as UTF-8 (JSON can spell lone surrogates, which UTF-8 cannot)."""
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError:
        raise error(f"{what} is not valid Unicode (a lone surrogate)") from None


def decimal(value: str | bytes | None, max_digits: int = MAX_DIGITS) -> int | None:
    """A non-negative ASCII decimal of at most max_digits digits; None for anything else."""
    if value is None:
        return None
    if isinstance(value, str):
        value = value.strip(" \t")
        if not value.isascii():
            return None
        value = value.encode("ascii")
    else:
        value = bytes(value).strip(b" \t")
    if not 0 < len(value) <= max_digits or not value.isdigit():  # bytes.isdigit is ASCII only
        return None
    return int(value)


def content_range(value: str | None) -> tuple[int, int, int | None] | None:
    """(first, last, total or None) of an HTTP Content-Range `bytes a-b/n`; None when malformed."""
    m = _CONTENT_RANGE.fullmatch((value or "").strip(" \t"))
    if not m:
        return None
    first, last = int(m.group(1)), int(m.group(2))
    total = None if m.group(3) == "*" else int(m.group(3))
    if last < first or (total is not None and last >= total):
        return None
    return first, last, total
