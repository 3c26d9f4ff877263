"""A `--sha256` pin, checked on the stream as the bytes pass."""

from __future__ import annotations

import hashlib
import hmac
import io
import re
from typing import BinaryIO

from .errors import IntegrityError, UsageError


def parse_pin(value: str | None) -> str | None:
    if not value:
        return None
    pin = value.lower().removeprefix("sha256:")
    if not re.fullmatch(r"[0-9a-f]{64}", pin):
        raise UsageError("--sha256 must be 64 hex digits")
    return pin


class DigestReader(io.RawIOBase):
    """Passes bytes through; at EOF, raises IntegrityError unless the digest matches."""

    def __init__(self, src: BinaryIO, expected_hex: str) -> None:
        super().__init__()
        self._src = src
        self._expected = expected_hex
        self._hash = hashlib.sha256()
        self._checked = False

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:  # type: ignore[override]
        n = self._src.readinto(buf)
        if n:
            self._hash.update(memoryview(buf)[:n])
        elif not self._checked:
            self._checked = True
            got = self._hash.hexdigest()
            if not hmac.compare_digest(got, self._expected):
                raise IntegrityError(f"sha256 mismatch: expected {self._expected}, got {got}")
        return n or 0
