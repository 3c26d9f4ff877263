"""Numeric settings: one rule for reading them, from a flag, its environment variable or a URI query.

NaN compares false with everything, so a bound written `value <= 0` lets it
through, and a check such as the compression-ratio limit (`produced >
max_ratio * size`) then never fires; an infinity does the same from the other
side. Every numeric setting is therefore read here, and only here: the text
must be a plain decimal number (no `nan`, `inf`, `1_0` or non-ASCII digits),
finite, and inside the setting's range, or it is a UsageError (exit 2) that
names the setting and the value.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from .errors import UsageError
from .untrusted import show

_INTEGER = re.compile(r"[+-]?[0-9]{1,19}", re.ASCII)
_NUMBER = re.compile(r"[+-]?(?:[0-9]{1,30}(?:\.[0-9]{0,30})?|\.[0-9]{1,30})(?:[eE][+-]?[0-9]{1,4})?", re.ASCII)
_SIZE = re.compile(r"([0-9]{1,19})\s*([kmgt]?)(?:i?b)?", re.ASCII | re.IGNORECASE)
_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
_NOUNS = {"integer": "a whole number", "number": "a finite decimal number", "size": "a size (e.g. 512M, 64G)"}


def size_text(n: int) -> str:
    """A byte count as the size flags take it: 64G, 512M, 3K, or the exact number."""
    for unit in ("T", "G", "M", "K"):
        factor = _UNITS[unit.lower()]
        if n and n % factor == 0:
            return f"{n // factor}{unit}"
    return str(n)


def size(text: str) -> int | None:
    """Byte counts like 512M or 64GiB (binary units); None when the text is not one."""
    m = _SIZE.fullmatch(text.strip())
    return int(m.group(1)) * _UNITS[m.group(2).lower()] if m else None


@dataclass(frozen=True)
class Number:
    """How one numeric setting is read: its kind (integer, number, size) and its range.

    `above`: the low end itself is excluded (a timeout of 0 means nothing).
    `auto`: the word "auto" is accepted too, read as None (the caller decides).
    """

    kind: str
    low: float
    high: float
    above: bool = False
    auto: bool = False

    def parse(self, value: Any, what: str) -> Any:
        """`value` (text, or a number set in code) as a number inside the range; UsageError otherwise."""
        if isinstance(value, bool):
            raise UsageError(f"{what}: {value!r} is not {_NOUNS[self.kind]}")
        if isinstance(value, (int, float)):
            number: int | float | None = value
            text = repr(value)
        else:
            text = str(value).strip()
            if self.auto and text.lower() == "auto":
                return None
            number = self._read(text)
            if number is None:
                also = " or 'auto'" if self.auto else ""
                raise UsageError(f"{what}: {show(text, 60)} is not {_NOUNS[self.kind]}{also}")
        assert number is not None
        if isinstance(number, float) and not math.isfinite(number):
            raise UsageError(f"{what}: {show(text, 60)} is not a finite number")
        if number < self.low or (self.above and number == self.low) or number > self.high:
            raise UsageError(f"{what}: {show(text, 60)} is out of range ({self.range()})")
        return number

    def _read(self, text: str) -> int | float | None:
        if self.kind == "size":
            return size(text)
        if self.kind == "integer":
            return int(text) if _INTEGER.fullmatch(text) else None
        return float(text) if _NUMBER.fullmatch(text) else None

    def range(self) -> str:
        low = f"more than {self.low:g}" if self.above else f"at least {self.low:g}"
        return f"{low}, at most {self.high:g}"


#: Seconds for one network call: more than 0, at most a day.
TIMEOUT = Number("number", 0, 86400, above=True)
#: Attempts on transient errors (1: no retry).
RETRIES = Number("integer", 1, 100)
#: Parallel ranged reads or uploads, each holding one part in memory.
CONCURRENCY = Number("integer", 1, 256)
#: Unpack limits: zero would refuse every model, so it means nothing.
MAX_BYTES = Number("size", 1, 2**63 - 1)
MAX_FILES = Number("integer", 1, 2**31 - 1)
MAX_FILE_SIZE = Number("size", 1, 2**63 - 1)
#: The unpack limits for input whose .seal header declares no sizes (with sizes, the header's
#: are the limits: unpack/limits.py); `--help` and README.md show them.
UNPACK_DEFAULTS: dict[str, float] = {"max_bytes": 64 * 2**30, "max_files": 1_000_000, "max_file_size": 32 * 2**30,
                                     "max_ratio": 1000.0}
#: Decompressed / compressed bytes: below 1 even an uncompressed archive exceeds it.
MAX_RATIO = Number("number", 1, 1e9)
#: Decryption processes (1: in this process), or auto.
WORKERS = Number("integer", 1, 256, auto=True)
