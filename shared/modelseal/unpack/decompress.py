"""The input side: the archive stream, decompressors with bounded output, and the decompressed stream.

Decompression memory is bounded: output is produced in pieces of at most
1 MiB per call (zlib/bz2/lzma `max_length`, zstd's stream reader), the xz
decoder has a 128 MiB memory limit and the zstd window is at most 128 MiB.
The compression ratio (decompressed bytes / compressed bytes read) is checked
once 4 MiB have been decompressed. Compressed streams must end cleanly (gzip
CRC and size trailer, xz/bzip2 end of stream, complete zstd frames);
concatenated gzip/xz/bzip2 members and zstd frames are accepted.
"""

from __future__ import annotations

import bz2
import lzma
import math
import zlib
from typing import Any, Generator

from ..errors import CapacityError, IntegrityError
from ..overlap import WriteBehind
from ..streaming import ChunkReader, Readable
from .limits import Applied

CHUNK = 1 << 20  # copy buffer, archive read size and decompressed piece size
IN_CHUNK = 64 << 10  # compressed bytes handed to a decompressor at a time
RATIO_GRACE = 4 << 20  # decompressed bytes before the ratio is checked
TRAILING_MAX = 64 << 20  # zero padding accepted after the end of the archive
XZ_MEMLIMIT = 128 << 20
ZSTD_MAX_WINDOW = 1 << 27


#: Buffers the archive input cycles through: how far (in chunks or decrypted segments)
#: the write-behind thread may lag behind the parser.
RING = 4


def _read_ring(src: Any, ring: int) -> Generator[memoryview, None, None]:
    """A plain stream in views of a ring of CHUNK-sized buffers, one read each."""
    bufs = [bytearray(CHUNK) for _ in range(ring)]
    readinto = getattr(src, "readinto", None)
    i = 0
    while True:
        target = memoryview(bufs[i % ring])
        i += 1
        if readinto is not None:
            n = readinto(target)
        else:
            data = src.read(len(target))
            n = None if data is None else len(data)
            if n:
                target[:n] = data
        if n is None:
            raise IntegrityError("the input stream returned no data (non-blocking input is not supported)")
        if n == 0:
            return
        yield target[:n]


class Archive:
    """The source stream in views, without copies; counts bytes handed out.

    A decrypting reader (ChunkReader) hands out its verified segments
    directly, from its own ring of buffers; any other stream is read into a
    ring here. A view from chunk() stays valid until the next call and, with
    a write-behind (`behind`), until every job queued while it was current
    has run (WriteBehind.paced), so file writes can keep it instead of a copy.
    """

    def __init__(self, src: Readable, behind: WriteBehind | None = None) -> None:
        self._source: Generator[memoryview, None, None] = (
            src.segments(ring=RING) if isinstance(src, ChunkReader) else _read_ring(src, RING))
        self._views = behind.paced(self._source, RING) if behind is not None else self._source
        self._cur = memoryview(b"")
        self.eof = False
        self.count = 0

    def _next(self) -> memoryview:
        while not self.eof:
            view = next(self._views, None)
            if view is None:
                self.eof = True
            elif len(view):  # a decryptor may yield an empty final segment
                return view
        return memoryview(b"")

    def peek(self, n: int) -> bytes:
        """Up to n bytes from the start of the stream, without consuming them."""
        while len(self._cur) < n and not self.eof:
            more = self._next()
            # Only a first piece shorter than n (a tiny input) is ever joined: a copy we own.
            self._cur = memoryview(bytes(self._cur) + bytes(more)) if self._cur else more
        return bytes(self._cur[:n])

    def chunk(self, limit: int = CHUNK) -> memoryview:
        """The next at most `limit` bytes (empty at EOF); see the class for how long the view is valid."""
        if not self._cur:
            self._cur = self._next()
        out = self._cur[:limit]
        self._cur = self._cur[len(out):]
        self.count += len(out)
        return out

    def close(self) -> None:
        """Stop the source (a decryptor's read-ahead thread) when the extraction ends early."""
        for gen in (self._views, self._source):
            gen.close()


class PassThrough:
    compressed = False

    def __init__(self, archive: Archive) -> None:
        self.archive = archive

    @property
    def consumed(self) -> int:
        return self.archive.count

    def next_chunk(self) -> bytes | memoryview:
        return self.archive.chunk(CHUNK)


class StdlibDecompressor:
    """gzip / bzip2 / xz with at most CHUNK bytes of output per call; several members allowed."""

    compressed = True
    _MAGIC = {"gzip": b"\x1f\x8b", "bzip2": b"BZh", "xz": b"\xfd7zXZ\x00"}

    def __init__(self, archive: Archive, kind: str) -> None:
        self.archive = archive
        self.kind = kind
        self._in: bytes | memoryview = b""  # gzip: input not yet consumed by zlib
        self._between = False
        self._padding = 0
        self._finished = False
        self._d = self._new()

    def _new(self):
        if self.kind == "gzip":
            return zlib.decompressobj(31)
        if self.kind == "bzip2":
            return bz2.BZ2Decompressor()
        return lzma.LZMADecompressor(format=lzma.FORMAT_XZ, memlimit=XZ_MEMLIMIT)

    @property
    def consumed(self) -> int:
        return self.archive.count - len(self._in)

    def _next_member(self, rest: bytes) -> bool:
        """After one compressed member: start the next one, or accept zero padding up to EOF."""
        magic = self._MAGIC[self.kind]
        data = bytes(rest)
        while True:
            stripped = data.lstrip(b"\0")
            self._padding += len(data) - len(stripped)
            if self._padding > TRAILING_MAX:
                raise CapacityError(f"more than {TRAILING_MAX} bytes of padding after the {self.kind} stream")
            if len(stripped) >= len(magic) or (stripped and self.archive.eof):
                if not stripped.startswith(magic):
                    raise IntegrityError(f"unexpected data after the end of the {self.kind} stream")
                self._d = self._new()
                self._in = stripped
                return True
            more = self.archive.chunk(IN_CHUNK)
            if not more:
                if stripped:
                    raise IntegrityError(f"unexpected data after the end of the {self.kind} stream")
                return False
            data = stripped + bytes(more)

    def _decompress(self, data: bytes | memoryview) -> bytes:
        try:
            return self._d.decompress(data, CHUNK)
        except zlib.error as e:
            raise IntegrityError(f"corrupt gzip stream: {e}") from None
        except lzma.LZMAError as e:
            if "memory" in str(e).lower():
                raise CapacityError(f"xz stream needs more than {XZ_MEMLIMIT >> 20} MiB to decode") from None
            raise IntegrityError(f"corrupt xz stream: {e}") from None
        except (OSError, EOFError, ValueError) as e:  # bz2 reports corrupt data as OSError
            raise IntegrityError(f"corrupt {self.kind} stream: {e}") from None

    def next_chunk(self) -> bytes:
        while not self._finished:
            d = self._d
            if d.eof:
                rest = d.unused_data + bytes(self._in) if self.kind == "gzip" else d.unused_data
                self._in = b""
                if not self._next_member(rest):
                    self._finished = True
                continue
            if self.kind == "gzip":
                if not self._in:
                    self._in = self.archive.chunk(IN_CHUNK)
                    if not self._in:
                        raise IntegrityError("truncated gzip stream: the input ends before the gzip trailer")
                out = self._decompress(self._in)
                self._in = d.unconsumed_tail
            else:
                if self._in:
                    data, self._in = self._in, b""
                elif d.needs_input:
                    data = self.archive.chunk(IN_CHUNK)
                    if not data:
                        raise IntegrityError(f"truncated {self.kind} stream: the input ends inside it")
                else:
                    data = b""
                out = self._decompress(data)
            if out:
                return out
        return b""


class ZstdFrames:
    """Follows the frame structure of a zstd stream to tell whether it ends at a frame boundary.

    The zstandard stream reader returns a clean EOF when its input stops in
    the middle of a frame; this walks frame headers, block headers and
    checksums (RFC 8878) by their lengths only, so truncation is caught.
    """

    def __init__(self) -> None:
        self.frames = 0
        self._state = "magic"
        self._need = 4
        self._hdr = bytearray()
        self._skip = 0
        self._after = "magic"
        self._checksum = False

    @property
    def complete(self) -> bool:
        return self.frames > 0 and self._state == "magic" and not self._hdr and not self._skip

    def _goto(self, state: str, skip: int = 0) -> None:
        if skip:
            self._skip, self._after = skip, state
            return
        self._state = state
        self._need = {"magic": 4, "fhd": 1, "block": 3, "skippable": 4}[state]

    def _header(self) -> None:
        h = bytes(self._hdr)
        self._hdr.clear()
        if self._state == "magic":
            magic = int.from_bytes(h, "little")
            if magic == 0xFD2FB528:
                self._goto("fhd")
            elif magic & 0xFFFFFFF0 == 0x184D2A50:
                self._goto("skippable")
            elif self.frames:
                raise IntegrityError("unexpected data after the end of the zstd stream")
            else:
                raise IntegrityError("corrupt zstd stream: bad frame magic")
        elif self._state == "fhd":
            fhd = h[0]
            if fhd & 0x08:
                raise IntegrityError("corrupt zstd stream: reserved bit set in a frame header")
            single = (fhd >> 5) & 1
            self._checksum = bool(fhd & 0x04)
            rest = (0 if single else 1) + (0, 1, 2, 4)[fhd & 3] + ((1 if single else 0), 2, 4, 8)[fhd >> 6]
            self._goto("block", rest)
        elif self._state == "block":
            bh = int.from_bytes(h, "little")
            last, btype, size = bh & 1, (bh >> 1) & 3, bh >> 3
            if btype == 3:
                raise IntegrityError("corrupt zstd stream: reserved block type")
            content = 1 if btype == 1 else size
            if not last:
                self._goto("block", content)
            else:
                self.frames += 1
                self._goto("magic", content + (4 if self._checksum else 0))
        elif self._state == "skippable":
            self._goto("magic", int.from_bytes(h, "little"))

    def feed(self, data: bytes) -> None:
        i, n = 0, len(data)
        while i < n:
            if self._skip:
                k = min(self._skip, n - i)
                self._skip -= k
                i += k
                if not self._skip:
                    self._goto(self._after)
                continue
            take = min(self._need - len(self._hdr), n - i)
            self._hdr += data[i : i + take]
            i += take
            if len(self._hdr) == self._need:
                self._header()


class ZstdDecompressor:
    compressed = True

    def __init__(self, archive: Archive) -> None:
        import zstandard

        self._zstd = zstandard
        self.archive = archive
        self.frames = ZstdFrames()
        dctx = zstandard.ZstdDecompressor(max_window_size=ZSTD_MAX_WINDOW)
        # `self` is the compressed source, read through read(): an IO in all but name.
        self._reader = dctx.stream_reader(self, read_size=IN_CHUNK, read_across_frames=True,  # type: ignore[arg-type]
                                          closefd=False)
        self._finished = False

    @property
    def consumed(self) -> int:
        return self.archive.count

    def read(self, n: int = -1) -> bytes:  # the compressed source of the stream reader
        data = bytes(self.archive.chunk(IN_CHUNK if n is None or n < 0 else min(n, IN_CHUNK)))
        self.frames.feed(data)
        return data

    def next_chunk(self) -> bytes:
        if self._finished:
            return b""
        try:
            out = self._reader.read(CHUNK)
        except self._zstd.ZstdError as e:
            if "memory" in str(e).lower() or "window" in str(e).lower():
                raise CapacityError(f"zstd stream needs a window over {ZSTD_MAX_WINDOW >> 20} MiB: {e}") from None
            raise IntegrityError(f"corrupt zstd stream: {e}") from None
        if not out:
            self._finished = True
            if not self.frames.complete:
                raise IntegrityError("truncated zstd stream: the input ends inside a frame")
        return out


class Decompressed:
    """The decompressed stream: small exact reads for headers, views for data; ratio checked."""

    def __init__(self, producer, limits: Applied) -> None:
        self._p = producer
        self._cur = memoryview(b"")
        self._eof = False
        self.pos = 0  # bytes taken so far
        self.produced = 0
        self._ratio = limits.max_ratio if producer.compressed and math.isfinite(limits.max_ratio) else None
        self._limits = limits
        # The header's tar_bytes, when it declares one, bounds the stream instead of a ratio (limits.py).
        self._most = limits.max_tar if limits.max_tar is not None else math.inf

    def _more(self) -> bool:
        if self._eof:
            return False
        chunk = self._p.next_chunk()
        if not chunk:
            self._eof = True
            return False
        self._cur = memoryview(chunk)
        self.produced += len(chunk)
        if self.produced > self._most:
            raise IntegrityError(f"the archive decompresses to more than the {self._most} bytes its .seal header "
                                 "declares (content.tar_bytes)")
        if self._ratio is not None and self.produced > RATIO_GRACE:
            consumed = max(1, self._p.consumed)
            if self.produced > self._ratio * consumed:
                raise CapacityError(
                    f"compression ratio over {self._ratio:g}: {self.produced} bytes from {consumed} "
                    f"compressed bytes (a decompression bomb?) {self._limits.over('max_ratio')}"
                )
        return True

    def take(self, n: int) -> memoryview:
        """At most n bytes (empty only at the end); the view is valid until the next call."""
        if not self._cur and not self._more():
            return memoryview(b"")
        out = self._cur[:n]
        self._cur = self._cur[n:]
        self.pos += len(out)
        return out

    def read_exact(self, n: int) -> bytes:
        """n bytes, or fewer only at the end of the stream."""
        parts = []
        got = 0
        while got < n:
            view = self.take(n - got)
            if not view:
                break
            parts.append(bytes(view))
            got += len(view)
        return b"".join(parts)



def producer(archive: Archive, compression: str) -> PassThrough | StdlibDecompressor | ZstdDecompressor:
    """The decompressed stream's source for a detected compression."""
    if compression == "none":
        return PassThrough(archive)
    if compression == "zstd":
        return ZstdDecompressor(archive)
    return StdlibDecompressor(archive, compression)
