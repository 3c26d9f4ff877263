"""Limits on what an extraction may produce, counted on the stream, never trusted from headers."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import UsageError


@dataclass(frozen=True)
class Limits:
    max_bytes: int = 64 * 2**30  # total regular-file bytes extracted
    max_files: int = 1_000_000  # entries (files, dirs, symlinks; implied parent dirs too)
    max_file_size: int = 32 * 2**30
    max_ratio: float = 1000.0  # decompressed / compressed bytes, once 4 MiB are decompressed
    max_depth: int = 64
    max_name: int = 4096  # whole path in bytes; each component at most 255 bytes

    def __post_init__(self) -> None:
        for field in ("max_bytes", "max_files", "max_file_size", "max_ratio", "max_depth", "max_name"):
            value = getattr(self, field)
            # not `value <= 0` alone: NaN passes that, and then no limit compares true (bounds.py)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or not value > 0:
                raise UsageError(f"unpack limit {field} must be a positive finite number, not {value!r}")

