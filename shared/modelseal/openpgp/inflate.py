"""Compressed data packets' contents (RFC 4880 section 5.6), decompressed in bounded pieces.

Uncompressed, ZIP (raw deflate), ZLIB and BZip2. Output comes in pieces of
at most CHUNK bytes per call (max_length), so a compression bomb never
inflates in memory (limiting its size on disk is the unpack stage's job).
Raises IntegrityError (exit 4) for an unknown algorithm, corrupt data, a
stream that ends early, or anything after its end.
"""

from __future__ import annotations

import bz2
import zlib
from typing import Iterator

from ..errors import IntegrityError
from .buffers import CHUNK

INFLATE_FEED = 1 << 18  # compressed input per decompress call

NAMES = {0: "uncompressed", 1: "ZIP", 2: "ZLIB", 3: "BZip2"}


def decompress(algo: int, pieces: Iterator[memoryview]) -> Iterator[bytes | memoryview]:
    """Decompressed output in bounded pieces; the stream must end exactly with its input."""
    if algo == 0:
        yield from pieces
        return
    name = NAMES.get(algo)
    if name is None:
        raise IntegrityError(f"unsupported compression algorithm {algo}")
    trailing = IntegrityError(f"unexpected data after the end of the {name} compressed stream")
    truncated = IntegrityError(f"truncated: the {name} compressed data ends early")

    def corrupt(exc: Exception) -> IntegrityError:
        return IntegrityError(f"corrupt {name} compressed data ({type(exc).__name__}: {exc})")

    data: bytes | memoryview  # a piece of the input, then what a decompressor left unconsumed

    if algo == 3:
        bz = bz2.BZ2Decompressor()
        for piece in pieces:
            if not piece:
                continue
            if bz.eof:
                raise trailing
            data = piece
            while True:
                try:
                    out = bz.decompress(data, CHUNK)
                except (OSError, EOFError, ValueError) as exc:
                    raise corrupt(exc) from None
                if out:
                    yield out
                if bz.eof or bz.needs_input:
                    break
                data = b""
        if not bz.eof:
            raise truncated
        if bz.unused_data:
            raise trailing
        return
    z = zlib.decompressobj(-15 if algo == 1 else 15)
    for piece in pieces:
        for i in range(0, len(piece), INFLATE_FEED):
            if z.eof:
                raise trailing
            data = piece[i:i + INFLATE_FEED]
            while True:
                try:
                    out = z.decompress(data, CHUNK)
                except zlib.error as exc:
                    raise corrupt(exc) from None
                if out:
                    yield out
                data = z.unconsumed_tail
                if z.eof or (not data and len(out) < CHUNK):
                    break
            if z.unused_data:
                raise trailing
    if not z.eof:
        raise truncated
