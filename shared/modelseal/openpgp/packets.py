"""OpenPGP packet framing (RFC 4880 section 4): headers and bodies read from a stream of chunks.

Old- and new-format headers, partial body lengths and old-format
indeterminate lengths, at any level of nesting. Everything that ends early
or does not look like a packet raises IntegrityError (exit 4).
"""

from __future__ import annotations

from typing import Iterable, Iterator

from ..errors import IntegrityError
from .buffers import CHUNK, EMPTY, Pool

DIRECT = 1 << 17  # pieces at least this big are passed on without copying

TAGS = {1: "public-key encrypted session key", 2: "signature", 3: "symmetric-key encrypted session key",
        4: "one-pass signature", 5: "secret key", 6: "public key", 7: "secret subkey", 8: "compressed data",
        9: "symmetrically encrypted data", 10: "marker", 11: "literal data", 12: "trust", 13: "user ID",
        14: "public subkey", 17: "user attribute", 18: "encrypted and integrity protected data",
        19: "modification detection code", 20: "AEAD encrypted data", 21: "padding"}


def tag_name(tag: int) -> str:
    return f"{TAGS.get(tag, 'unknown')} packet (tag {tag})"


def truncated(what: str) -> IntegrityError:
    return IntegrityError(f"truncated: the input ends inside {what}")


class Cursor:
    """Reads packet headers and bodies from an iterator of chunks.

    Chunks (bytes or views of buffers nobody writes to again) are never
    copied unless small pieces must be stitched together: `body()` passes
    big pieces on as views and gathers small ones (partial body lengths)
    into pooled 1 MiB buffers.
    """

    __slots__ = ("_it", "buf", "pos")

    def __init__(self, chunks: Iterable) -> None:
        self._it = iter(chunks)
        self.buf = EMPTY
        self.pos = 0

    def _fill(self) -> bool:
        """Make at least one byte available; False at the end of the input."""
        while self.pos >= len(self.buf):
            nxt = next(self._it, None)
            if nxt is None:
                self.buf, self.pos = EMPTY, 0
                return False
            self.buf, self.pos = memoryview(nxt), 0
        return True

    def at_end(self) -> bool:
        return not self._fill()

    def byte(self, what: str) -> int:
        if not self._fill():
            raise truncated(what)
        b = self.buf[self.pos]
        self.pos += 1
        return b

    def take(self, n: int, what: str) -> bytes:
        out = bytearray()
        while len(out) < n:
            if not self._fill():
                raise truncated(what)
            k = min(n - len(out), len(self.buf) - self.pos)
            out += self.buf[self.pos:self.pos + k]
            self.pos += k
        return bytes(out)

    def length(self, what: str) -> tuple[int, bool]:
        """A new-format body length: (length, partial)."""
        b = self.byte(what)
        if b < 192:
            return b, False
        if b < 224:
            return ((b - 192) << 8) + self.byte(what) + 192, False
        if b == 255:
            return int.from_bytes(self.take(4, what), "big"), False
        return 1 << (b & 0x1F), True

    def header(self, what: str = "a packet header") -> tuple[int, int, bool, bool] | None:
        """(tag, length, partial, indeterminate) of the next packet, None at the end."""
        if not self._fill():
            return None
        ctb = self.byte(what)
        if not ctb & 0x80:
            raise IntegrityError(f"malformed packet header 0x{ctb:02x} in {what.removeprefix('a ')}")
        if ctb & 0x40:  # new format
            n, partial = self.length(what)
            return ctb & 0x3F, n, partial, False
        tag, kind = (ctb >> 2) & 0x0F, ctb & 3
        if kind == 3:
            return tag, 0, False, True
        return tag, int.from_bytes(self.take(1 << kind, what), "big"), False, False

    def rest(self) -> Iterator[memoryview]:
        """Everything that is left, as it comes."""
        while self._fill():
            piece = self.buf[self.pos:]
            self.pos = len(self.buf)
            yield piece

    def body(self, n: int, partial: bool, indeterminate: bool, what: str) -> Iterator[memoryview]:
        """A packet's body: big pieces as views, small ones gathered into 1 MiB chunks."""
        return gathered(self.rest() if indeterminate else self._spans(n, partial, what))

    def _spans(self, n: int, partial: bool, what: str) -> Iterator[memoryview]:
        """A packet body of n bytes, or of partial lengths (n the first), as views of the input.

        The lengths between the pieces are cut out; raises IntegrityError when
        the input ends inside the body.
        """
        buf, pos, end = self.buf, self.pos, len(self.buf)
        try:
            while True:
                while n:
                    if pos == end:
                        self.pos = pos
                        if not self._fill():
                            raise truncated(what)
                        buf, pos, end = self.buf, self.pos, len(self.buf)
                    stop = pos + n if pos + n < end else end
                    n -= stop - pos
                    piece, pos = buf[pos:stop], stop
                    yield piece
                if not partial:
                    return
                # The next length: gpg writes a one-byte partial length every 8 KiB, read here
                # without a call; anything else (or a length across chunks) by length().
                if pos < end and 224 <= (b := buf[pos]) < 255:
                    n, pos = 1 << (b & 0x1F), pos + 1
                else:
                    self.pos = pos
                    n, partial = self.length(what)
                    buf, pos, end = self.buf, self.pos, len(self.buf)
        finally:
            self.pos = pos


def gathered(pieces: Iterable[memoryview]) -> Iterator[memoryview]:
    """Pieces of at least DIRECT bytes passed on as they are; smaller ones copied together into 1 MiB chunks.

    The chunks come from a pool whose buffers are reused only once no view of
    them is left, so the consumer may keep what it is given.
    """
    pool = Pool()
    out = bytearray()
    fill = room = 0  # room: what the chunk being filled still takes (none while there is no chunk)
    for piece in pieces:
        size = len(piece)
        if size < room:
            out[fill:fill + size] = piece
            fill += size
            room -= size
            continue
        if fill:  # complete the chunk being filled and pass it on
            out[fill:CHUNK] = piece[:room]
            yield memoryview(out)[:CHUNK]
            piece, size = piece[room:], size - room
            fill = room = 0
        if size >= DIRECT:
            yield piece
        elif size:
            out = pool.get()
            out[:size] = piece
            fill, room = size, CHUNK - size
    if fill:
        yield memoryview(out)[:fill]
