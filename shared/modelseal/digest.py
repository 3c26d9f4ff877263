"""A `--sha256` pin, checked on the stream as the bytes pass."""

from __future__ import annotations

import hashlib
import hmac
import re

from .errors import IntegrityError, UsageError
from .sources import Stream


def parse_pin(value: str | None) -> str | None:
    if not value:
        return None
    pin = value.lower().removeprefix("sha256:")
    if not re.fullmatch(r"[0-9a-f]{64}", pin):
        raise UsageError("--sha256 must be 64 hex digits")
    return pin


class DigestReader(Stream):
    """Passes bytes through; at EOF, raises IntegrityError unless the digest matches.

    With `size` (a registry descriptor's), a byte past it or an early EOF is
    an IntegrityError at once. Closing it closes the source.
    """

    def __init__(self, src: Stream, expected_hex: str, size: int | None = None, what: str = "") -> None:
        super().__init__()
        self._src = src
        self._expected = expected_hex
        self._hash = hashlib.sha256()
        self._checked = False
        self._size = size
        self._seen = 0
        self._what = f"{what}: " if what else ""

    def readinto(self, buf) -> int:
        n = self._src.readinto(buf)
        self._account(memoryview(buf)[:n or 0])
        return n or 0

    def read_view(self, n: int) -> memoryview:
        view = self._src.read_view(n)
        self._account(view)
        return view

    def _account(self, view: memoryview) -> None:
        n = len(view)
        if n:
            self._seen += n
            if self._size is not None and self._seen > self._size:
                raise IntegrityError(f"{self._what}more than the {self._size} bytes expected")
            self._hash.update(view)
        elif not self._checked:
            self._checked = True
            if self._size is not None and self._seen != self._size:
                raise IntegrityError(f"{self._what}truncated: {self._seen} of {self._size} bytes")
            got = self._hash.hexdigest()
            if not hmac.compare_digest(got, self._expected):
                raise IntegrityError(f"{self._what}sha256 mismatch: expected {self._expected}, got {got}")

    def close(self) -> None:
        if not self.closed:
            self._src.close()
        super().close()
