"""What a stage will leave on its target filesystem, as well as it can be known before the first byte.

One rule for every place that sizes a model: the preflight before a write
(preflight.py), `inspect --resources` and the pod shapes (pods.py), and the
injection of issue 23. A tree's size comes from the authenticated `.seal`
header when `seal` recorded it (sealfile.Sizes), else from the best bound at
hand: the exact plaintext length of a ciphertext of known length, an
uncompressed archive's own length. When nothing bounds it (stdin,
compressed content of unknown size) the Need says so, and why.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..sealheader import declared_payload

if TYPE_CHECKING:
    from ..sealfile import Sizes

PAGE = os.sysconf("SC_PAGE_SIZE")
MIB = 1 << 20


@dataclass(frozen=True)
class Need:
    """Bytes a stage will leave on its target filesystem, as well as they can be known up front."""

    bytes: int | None  # None: unknown
    files: int = 0  # entries to create (inodes), when known
    source: str = ""  # where the numbers come from, for logs and messages
    buffers: int = 0  # memory the input side holds on top (parallel S3 parts in flight)

    @classmethod
    def file(cls, size: int | None, source: str, buffers: int = 0) -> "Need":
        """One file of `size` bytes (decrypt's output)."""
        return cls(None if size is None else pages(size), 1, source, buffers)

    @classmethod
    def tree(cls, file_bytes: int, files: int, source: str, buffers: int = 0) -> "Need":
        """A tree of `files` files holding `file_bytes`: each file rounds up to whole pages."""
        return cls(file_bytes + files * (PAGE - 1), files, source, buffers)

    @classmethod
    def unknown(cls, source: str) -> "Need":
        return cls(None, 0, source)


def file_need(size: int | None, sizes: Sizes | None, compression: str, buffers: int = 0) -> Need:
    """What decrypt writes: the plaintext itself, of `size` bytes when the ciphertext's length gives it,
    else of the length its header declares."""
    if size is not None:
        return Need.file(size, "from the ciphertext's length", buffers)
    declared = declared_payload(sizes, compression)
    if declared is not None:
        return Need.file(declared, "from the .seal header", buffers)
    return Need.unknown("input of unknown length")


def tree_need(sizes: Sizes | None, archive_size: int | None, compression: str, buffers: int = 0) -> Need:
    """What an extraction leaves: the header's file bytes and count (sealfile.Sizes), else the archive's own length."""
    if sizes is not None and sizes.file_bytes is not None and sizes.files is not None:
        return Need.tree(sizes.file_bytes, sizes.files, "from the .seal header", buffers)
    if compression == "none" and archive_size is not None:
        return Need.file(archive_size, "estimated from the archive's length", buffers)
    if compression != "none":
        return Need.unknown(f"{compression}-compressed content with no sizes in a .seal header")
    return Need.unknown("input of unknown length")


def pages(n: int) -> int:
    """`n` bytes rounded up to whole pages, as tmpfs charges them."""
    return -(-n // PAGE) * PAGE


def mib(n: int) -> str:
    return f"{n / MIB:,.0f} MiB" if n >= MIB else f"{n:,} bytes"


def quantity(n: int) -> str:
    """A Kubernetes quantity at least `n` bytes: whole MiB, rounded up to a multiple of 16Mi."""
    return f"{-(-n // (16 * MIB)) * 16}Mi"
