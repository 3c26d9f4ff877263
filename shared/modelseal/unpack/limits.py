"""Limits on what an extraction may produce, counted on the stream, never trusted from an archive's own entries.

Two kinds of input, two rules:
- The authenticated `.seal` header declares what the payload unpacks to
  (sealfile.Sizes: run reads it from the header, unpack from the sizes file
  decrypt leaves beside the tar): those sizes are the limits, so a 150 GB
  model needs no flag. The tree holds the archive to them (more file bytes or
  files than declared is exit 4), the decompressed stream is held to
  `tar_bytes`, which bounds a decompression bomb without a ratio, and the
  entries to what `tar_bytes` can hold.
- No sizes (a tar from elsewhere, stdin, a model sealed without them): the
  fixed defaults of bounds.UNPACK_DEFAULTS apply, as `--help` shows.

A limit given explicitly (`--max-bytes`, `--max-files`, `--max-file-size`,
`--max-ratio`, or their MODELSEAL_* variables) applies in both cases; one
smaller than what the header declares is refused before the first byte
(Limits.applied: exit 6 naming the flag and its value) instead of after
tens of GB were written. Every limit hit on the stream names its flag and
its current value the same way (Applied.over).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Mapping

from ..bounds import UNPACK_DEFAULTS, size_text
from ..errors import CapacityError, UsageError

if TYPE_CHECKING:
    from ..sealfile import Sizes

#: The limits a user may set, each with its flag.
FLAGS = {"max_bytes": "--max-bytes", "max_files": "--max-files", "max_file_size": "--max-file-size",
         "max_ratio": "--max-ratio"}
#: Bytes of a tar header block: no entry takes fewer.
TAR_BLOCK = 512


def shown(limit: str, value: float) -> str:
    """A limit's value as its flag takes it: 64G for sizes, 1000000 for counts, 1000 for the ratio."""
    if limit in ("max_bytes", "max_file_size"):
        return size_text(int(value))
    return str(int(value)) if limit == "max_files" else f"{value:g}"


@dataclass(frozen=True)
class Limits:
    """What was asked for: a limit left at None was not given (the header's sizes, else the default)."""

    max_bytes: int | None = None  # total regular-file bytes extracted
    max_files: int | None = None  # entries (files, dirs, symlinks; implied parent dirs too)
    max_file_size: int | None = None
    max_ratio: float | None = None  # decompressed / compressed bytes, once 4 MiB are decompressed
    max_depth: int = 64
    max_name: int = 4096  # whole path in bytes; each component at most 255 bytes
    #: How each given limit was set, for messages: "--max-bytes" or "$MODELSEAL_MAX_BYTES" (default: the flag).
    named: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("max_bytes", "max_files", "max_file_size", "max_ratio", "max_depth", "max_name"):
            value = getattr(self, name)
            if value is None and name in FLAGS:
                continue
            # not `value <= 0` alone: NaN passes that, and then no limit compares true (bounds.py)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or not value > 0:
                raise UsageError(f"unpack limit {name} must be a positive finite number, not {value!r}")

    def _name(self, limit: str) -> str:
        return self.named.get(limit, FLAGS[limit])

    def _given(self, limit: str) -> str:
        return f"{self._name(limit)} {shown(limit, getattr(self, limit))}"

    def applied(self, declared: Sizes | None, compressed: int | None, compression: str) -> Applied:
        """The limits for one archive: what was given, else the header's sizes (`declared`), else the defaults.

        `compressed` is the archive's length as read (None: unknown), `compression` as detected.
        Raises CapacityError, before anything is written, when a given limit is smaller than
        what the authenticated header declares.
        """
        files_bytes = declared.file_bytes if declared is not None else None
        files = declared.files if declared is not None else None
        tar_bytes = declared.tar_bytes if declared is not None else None
        self._refuse_below(files_bytes, files, tar_bytes, compressed, compression)
        values: dict[str, float] = {}
        why: dict[str, str] = {}
        # What the header bounds each limit by: the files' total bounds the total and any one file;
        # a tar of tar_bytes holds at most one entry per 512-byte block, each with at most
        # max_depth - 1 parent directories implied; tar_bytes bounds the decompressed stream itself.
        from_header = {"max_bytes": files_bytes, "max_file_size": files_bytes,
                       "max_files": None if tar_bytes is None else max(1, tar_bytes // TAR_BLOCK) * self.max_depth,
                       "max_ratio": None if tar_bytes is None else math.inf}
        for limit in FLAGS:
            given, declared_limit = getattr(self, limit), from_header[limit]
            if given is not None:
                values[limit], why[limit] = given, f"{self._given(limit)}, as given"
            elif declared_limit is not None:
                values[limit], why[limit] = declared_limit, "what the .seal header declares"
            else:
                default = UNPACK_DEFAULTS[limit]
                values[limit] = default
                why[limit] = (f"{self._name(limit)} {shown(limit, default)}, the default for input without sizes "
                              f"in a .seal header: give a larger {self._name(limit)}")
        return Applied(max_bytes=int(values["max_bytes"]), max_files=int(values["max_files"]),
                       max_file_size=int(values["max_file_size"]), max_ratio=values["max_ratio"],
                       max_depth=self.max_depth, max_name=self.max_name, max_tar=tar_bytes, why=why)

    def _refuse_below(self, file_bytes: int | None, files: int | None, tar_bytes: int | None,
                      compressed: int | None, compression: str) -> None:
        """A given limit smaller than what the header declares would stop the extraction part way: refuse now."""
        below = []
        if self.max_bytes is not None and file_bytes is not None and file_bytes > self.max_bytes:
            below.append(("max_bytes", f"{size_text(file_bytes)} of files ({file_bytes:,} bytes)",
                          size_text(file_bytes)))
        if self.max_files is not None and files is not None and files > self.max_files:
            below.append(("max_files", f"{files:,} files", str(files)))
        if (self.max_ratio is not None and tar_bytes is not None and compressed and compression != "none"
                and tar_bytes > self.max_ratio * compressed):
            ratio = tar_bytes / compressed
            below.append(("max_ratio", f"a {compression} archive of {compressed:,} bytes that decompresses to "
                          f"{tar_bytes:,} (ratio {ratio:.4g})", f"{math.ceil(ratio)}"))
        if below:
            limit, what, enough = below[0]
            raise CapacityError(f"the .seal header declares {what}, over {self._given(limit)}: raise it to at least "
                                f"{enough}, or leave it out (the header's sizes are then the limits)")


@dataclass(frozen=True)
class Applied:
    """The limits one extraction runs under (Limits.applied), and why each has its value, for messages."""

    max_bytes: int
    max_files: int
    max_file_size: int
    max_ratio: float  # inf: off (the header's tar_bytes bounds the decompressed stream instead)
    max_depth: int
    max_name: int
    max_tar: int | None  # the decompressed archive's length the header declares (tar_bytes)
    why: Mapping[str, str]

    def over(self, limit: str) -> str:
        """The end of a message for a limit hit on the stream: which flag, its value, what to do."""
        return f"({self.why[limit]})"

