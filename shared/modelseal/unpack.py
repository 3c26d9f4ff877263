"""Safe extraction of a tar or zip stream into a new directory.

`extract(src, dest)` reads an archive from a (generally non-seekable) stream,
the verified-plaintext reader of a decrypting stream in `run`, and builds the
tree in a private staging directory beside `dest`, renamed to `dest` only
after the archive and then the whole input stream have been read without
error. Any failure (a hostile entry, a limit, a corrupt archive, an exception
raised by the input stream itself, KeyboardInterrupt) wipes the staging
directory and re-raises: nothing is left in dest's parent.

Safe by construction rather than by filtering paths:
- Everything is created through directory file descriptors, one component at
  a time, with O_NOFOLLOW (directories opened O_DIRECTORY|O_NOFOLLOW, files
  created O_CREAT|O_EXCL|O_NOFOLLOW, mkdir/symlink relative to a dir fd). A
  symlink, wherever it came from, can never be walked through or written
  through: an entry whose path crosses a symlink is refused (exit 7).
- Only regular files and directories by default. Symlinks only with
  allow_symlinks=True, only with a relative target that, resolved lexically
  from the link's directory, never climbs above the destination; once the
  whole tree exists, every link target is resolved again against it and
  refused if it passes through another symlink (the kernel would follow it and
  its "..", so lexical resolution alone is not enough: `s -> .` plus
  `l -> s/..` escapes). Hard links, devices, FIFOs, contiguous and sparse
  files and unknown entry types are always refused (exit 7).
- Names: absolute names, `..` components, NUL bytes and backslashes are
  refused (exit 7). A backslash is an ordinary byte on Linux, but archives
  carrying one are almost always Windows-made traversal attempts
  (`..\\..\\x`), and refusing is clearer than creating `..\\..\\x` files.
  `.` components and repeated slashes are dropped (`./a//b` is `a/b`); a
  name longer than max_name bytes, a component longer than 255 bytes or a path
  deeper than max_depth components is refused (exit 7).
- Duplicates: a second entry for an existing file, symlink or directory name
  is refused (O_EXCL), except a directory entry for an existing directory
  (merged). A directory entry over a file or symlink is refused.
- Modes are fixed, not copied: files 0644, or 0755 when the archive gives
  any execute bit; directories 0755; never setuid/setgid/sticky; no chown.
  Regular files keep the archive's modification time; directories and
  symlinks get the extraction time. Empty directories are kept.
- Limits (Limits) are counted on the bytes actually decompressed and written,
  never trusted from headers (a header declaring more than a limit is refused
  early as well). Over a limit, or ENOSPC: CapacityError (exit 6).
  Corrupt, truncated or malformed archives and compressed streams: IntegrityError
  (exit 4).

Formats are detected from content: zip by its signature, otherwise tar, plain
or gzip / xz / bzip2 / zstd compressed (modelseal.archive.detect_compression).

Tar is read in one streaming pass. Header blocks are parsed by the standard
library's public `tarfile.TarInfo.frombuf` (checksums, octal and base-256
numbers, ustar prefixes); the record loop, pax and GNU long-name headers
are handled here rather than by `tarfile.TarFile`, which in the Python
releases we run treats a corrupt or missing header mid-archive as a normal
end of archive (silent truncation), reads extended headers of any declared
size into memory, recurses once per chained extended header, and on
3.11 < 3.11.10 parses pax headers with quadratic regular expressions
(CVE-2024-6232). Here an extended header is at most 1 MiB, at most 8 precede
a member, pax records are parsed linearly, and the archive must end with its
end-of-archive block. After that block the rest of the stream is read to its
end (a decrypting reader only verifies its final segment at EOF): it may hold
only zero padding (at most 64 MiB); anything else, such as a second archive
concatenated to the first, is refused (exit 4). Compressed streams must end
cleanly (gzip CRC and size trailer, xz/bzip2 end of stream, complete zstd
frames); concatenated gzip/xz/bzip2 members and zstd frames are accepted.

Decompression memory is bounded: output is produced in pieces of at most
1 MiB per call (zlib/bz2/lzma `max_length`, zstd's stream reader), the xz
decoder has a 128 MiB memory limit and the zstd window is at most 128 MiB.
The compression ratio (decompressed bytes / compressed bytes read) is checked
once 4 MiB have been decompressed.

Zip needs random access: the stream is spooled into an anonymous O_TMPFILE
inside the staging directory (the same tmpfs as dest; it has no name and
disappears when closed) and counted against max_bytes, then parsed with
zipfile. Entries whose local spans [header, end of data) overlap are refused
(exit 7: the overlapping-entry zip bomb), as are encrypted entries and
compression methods other than stored and deflate (bzip2 / lzma in zip cannot
be bounded by zipfile). The central directory is at most 32 MiB (zipfile
holds it in memory: use tar for archives with very many entries). Each
entry's CRC is checked (zipfile, reading to its end) and its size must equal
the header's.

Destination: `dest` must not exist, or be an empty directory (replaced by the
rename). A non-empty directory, a file, a symlink or a mount point is refused
with UsageError (exit 2) before anything is read. Leftover `.NAME.staging-*`
directories beside dest, from a killed earlier attempt (a restarted init
container on the same emptyDir), are removed first; two extractions to the
same dest at the same time are not supported.
"""

from __future__ import annotations

import bz2
import errno
import hashlib
import io
import lzma
import os
import secrets
import shutil
import stat
import struct
import tarfile
import time
import zipfile
import zlib
from dataclasses import dataclass
from typing import BinaryIO, Iterable, Iterator

from .archive import detect_compression
from .errors import CapacityError, IntegrityError, ModelsealError, UnsafeError, UsageError, from_os_error
from .log import Log

CHUNK = 1 << 20  # copy buffer, raw read size and decompressed piece size
IN_CHUNK = 64 << 10  # compressed bytes handed to a decompressor at a time
RATIO_GRACE = 4 << 20  # decompressed bytes before the ratio is checked
EXT_HEADER_MAX = 1 << 20  # data of one pax / GNU long-name header
EXT_HEADERS_MAX = 8  # extended headers in front of one member
TRAILING_MAX = 64 << 20  # zero padding accepted after the end of the archive
XZ_MEMLIMIT = 128 << 20
ZSTD_MAX_WINDOW = 1 << 27
ZIP_CD_MAX = 32 << 20
NAME_MAX = 255
BLOCK = 512
ZERO_BLOCK = bytes(BLOCK)

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")


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
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise UsageError(f"unpack limit {field} must be a positive number, not {value!r}")


def _show(name: bytes | str, limit: int = 120) -> str:
    """An entry name fit for a one-line message: escaped and shortened."""
    if isinstance(name, bytes):
        name = name.decode("utf-8", "backslashreplace")
    text = repr(name)
    return text if len(text) <= limit else text[: limit - 5] + "...'"


class _NullStream:
    def write(self, _: str) -> int:
        return 0

    def flush(self) -> None:
        pass


# ---------------------------------------------------------------- input side


class _Raw:
    """The source stream, read with one reusable buffer; counts bytes handed out."""

    def __init__(self, src: BinaryIO) -> None:
        self._src = src
        self._buf = bytearray(CHUNK)
        self._view = memoryview(self._buf)
        self._start = self._end = 0
        self.eof = False
        self.count = 0
        self._readinto = getattr(src, "readinto", None)

    def _fill(self, at: int) -> int:
        target = self._view[at:]
        if self._readinto is not None:
            n = self._readinto(target)
        else:
            data = self._src.read(len(target))
            n = None if data is None else len(data)
            if n:
                target[:n] = data
        if n is None:
            raise IntegrityError("the input stream returned no data (non-blocking input is not supported)")
        if n == 0:
            self.eof = True
        return n

    def peek(self, n: int) -> bytes:
        """Up to n bytes from the start of the stream, without consuming them."""
        while self._end - self._start < n and not self.eof:
            if self._start:
                size = self._end - self._start
                self._view[:size] = self._view[self._start : self._end]
                self._start, self._end = 0, size
            self._end += self._fill(self._end)
        return bytes(self._view[self._start : min(self._end, self._start + n)])

    def chunk(self, limit: int = CHUNK) -> memoryview:
        """The next at most `limit` bytes (empty at EOF); valid until the next call."""
        if self._start == self._end:
            if self.eof:
                return memoryview(b"")
            self._start, self._end = 0, self._fill(0)
            if self._end == 0:
                return memoryview(b"")
        n = min(limit, self._end - self._start)
        out = self._view[self._start : self._start + n]
        self._start += n
        self.count += n
        return out


class _PassThrough:
    compressed = False

    def __init__(self, raw: _Raw) -> None:
        self.raw = raw

    @property
    def consumed(self) -> int:
        return self.raw.count

    def next_chunk(self) -> bytes | memoryview:
        return self.raw.chunk(CHUNK)


class _StdlibDecompressor:
    """gzip / bzip2 / xz with at most CHUNK bytes of output per call; several members allowed."""

    compressed = True
    _MAGIC = {"gzip": b"\x1f\x8b", "bzip2": b"BZh", "xz": b"\xfd7zXZ\x00"}

    def __init__(self, raw: _Raw, kind: str) -> None:
        self.raw = raw
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
        return self.raw.count - len(self._in)

    def _next_member(self, rest: bytes) -> bool:
        """After one compressed member: start the next one, or accept zero padding up to EOF."""
        magic = self._MAGIC[self.kind]
        data = bytes(rest)
        while True:
            stripped = data.lstrip(b"\0")
            self._padding += len(data) - len(stripped)
            if self._padding > TRAILING_MAX:
                raise CapacityError(f"more than {TRAILING_MAX} bytes of padding after the {self.kind} stream")
            if len(stripped) >= len(magic) or (stripped and self.raw.eof):
                if not stripped.startswith(magic):
                    raise IntegrityError(f"unexpected data after the end of the {self.kind} stream")
                self._d = self._new()
                self._in = stripped
                return True
            more = self.raw.chunk(IN_CHUNK)
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
                    self._in = self.raw.chunk(IN_CHUNK)
                    if not self._in:
                        raise IntegrityError("truncated gzip stream: the input ends before the gzip trailer")
                out = self._decompress(self._in)
                self._in = d.unconsumed_tail
            else:
                if self._in:
                    data, self._in = self._in, b""
                elif d.needs_input:
                    data = self.raw.chunk(IN_CHUNK)
                    if not data:
                        raise IntegrityError(f"truncated {self.kind} stream: the input ends inside it")
                else:
                    data = b""
                out = self._decompress(data)
            if out:
                return out
        return b""


class _ZstdFrames:
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


class _ZstdDecompressor:
    compressed = True

    def __init__(self, raw: _Raw) -> None:
        import zstandard

        self._zstd = zstandard
        self.raw = raw
        self.frames = _ZstdFrames()
        dctx = zstandard.ZstdDecompressor(max_window_size=ZSTD_MAX_WINDOW)
        self._reader = dctx.stream_reader(self, read_size=IN_CHUNK, read_across_frames=True, closefd=False)
        self._finished = False

    @property
    def consumed(self) -> int:
        return self.raw.count

    def read(self, n: int = -1) -> bytes:  # the compressed source of the stream reader
        data = bytes(self.raw.chunk(IN_CHUNK if n is None or n < 0 else min(n, IN_CHUNK)))
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


class _Plain:
    """The decompressed stream: small exact reads for headers, views for data; ratio checked."""

    def __init__(self, producer, limits: Limits) -> None:
        self._p = producer
        self._cur = memoryview(b"")
        self._eof = False
        self.pos = 0  # bytes taken so far
        self.produced = 0
        self._ratio = limits.max_ratio if producer.compressed else None

    def _more(self) -> bool:
        if self._eof:
            return False
        chunk = self._p.next_chunk()
        if not chunk:
            self._eof = True
            return False
        self._cur = memoryview(chunk)
        self.produced += len(chunk)
        if self._ratio is not None and self.produced > RATIO_GRACE:
            consumed = max(1, self._p.consumed)
            if self.produced > self._ratio * consumed:
                raise CapacityError(
                    f"compression ratio over {self._ratio:g}: {self.produced} bytes from {consumed} "
                    "compressed bytes (a decompression bomb?)"
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


# ---------------------------------------------------------------- names


def _parts(raw: bytes, limits: Limits, what: str = "entry") -> tuple[bytes, ...]:
    """Validate an archive name and split it into path components."""
    if not raw:
        raise UnsafeError(f"refusing {what} with an empty name")
    if b"\0" in raw:
        raise UnsafeError(f"refusing {what} {_show(raw)}: NUL byte in its name")
    if b"\\" in raw:
        raise UnsafeError(f"refusing {what} {_show(raw)}: backslash in its name (a Windows path?)")
    if raw.startswith(b"/"):
        raise UnsafeError(f"refusing {what} {_show(raw)}: absolute name")
    if len(raw) > limits.max_name:
        raise UnsafeError(f"refusing {what} {_show(raw)}: name of {len(raw)} bytes, over {limits.max_name}")
    parts = tuple(p for p in raw.split(b"/") if p not in (b"", b"."))
    for p in parts:
        if p == b"..":
            raise UnsafeError(f"refusing {what} {_show(raw)}: '..' in its name")
        if len(p) > NAME_MAX:
            raise UnsafeError(f"refusing {what} {_show(raw)}: a name component over {NAME_MAX} bytes")
    if len(parts) > limits.max_depth:
        raise UnsafeError(f"refusing {what} {_show(raw)}: {len(parts)} levels deep, over {limits.max_depth}")
    return parts


def _link_parts(target: bytes, limits: Limits, name: bytes) -> list[bytes]:
    if not target:
        raise UnsafeError(f"refusing symlink {_show(name)}: empty target")
    if b"\0" in target or b"\\" in target:
        raise UnsafeError(f"refusing symlink {_show(name)}: NUL or backslash in its target")
    if target.startswith(b"/"):
        raise UnsafeError(f"refusing symlink {_show(name)} -> {_show(target)}: absolute target")
    if len(target) > limits.max_name:
        raise UnsafeError(f"refusing symlink {_show(name)}: target of {len(target)} bytes, over {limits.max_name}")
    return [p for p in target.split(b"/") if p not in (b"", b".")]


def _climbs_out(depth: int, comps: list[bytes]) -> bool:
    """Lexically, from a directory `depth` levels below dest, does the path ever go above dest?"""
    for c in comps:
        depth += -1 if c == b".." else 1
        if depth < 0:
            return True
    return False


# ---------------------------------------------------------------- output side


def _fs_error(exc: OSError, what: str) -> ModelsealError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return CapacityError(f"{what}: {exc.strerror or 'no space left'}")
    if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EEXIST, errno.ENAMETOOLONG, errno.EMLINK):
        return UnsafeError(f"{what}: {exc.strerror}")
    return from_os_error(exc, what)


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


class _Tree:
    """The staging tree, built only through directory file descriptors."""

    def __init__(self, root: int, limits: Limits, allow_symlinks: bool, log: Log) -> None:
        self.root = root
        self.limits = limits
        self.allow_symlinks = allow_symlinks
        self.progress = log.progress("unpack")
        self._stack: list[tuple[bytes, int]] = []  # the open directory chain of the last parent
        self._links: list[tuple[tuple[bytes, ...], list[bytes], bytes]] = []
        self.entries = self.files = self.dirs = self.symlinks = self.bytes = 0

    def close(self) -> None:
        while self._stack:
            os.close(self._stack.pop()[1])

    def _count(self, name: bytes) -> None:
        self.entries += 1
        if self.entries > self.limits.max_files:
            raise CapacityError(f"more than {self.limits.max_files} entries (at {_show(name)})")

    def _open_dir(self, parent: int, comp: bytes, name: bytes) -> int:
        try:
            return os.open(comp, _DIR_FLAGS, dir_fd=parent)
        except FileNotFoundError:
            pass
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOTDIR):
                raise UnsafeError(f"refusing entry {_show(name)}: its path goes through a symlink or a file") from None
            raise _fs_error(e, f"opening the directory of {_show(name)}") from None
        self._count(name)  # an implied parent directory
        return self._mkdir(parent, comp, name)

    def _mkdir(self, parent: int, comp: bytes, name: bytes) -> int:
        try:
            os.mkdir(comp, 0o700, dir_fd=parent)
            fd = os.open(comp, _DIR_FLAGS, dir_fd=parent)
            os.fchmod(fd, 0o755)
        except OSError as e:
            raise _fs_error(e, f"creating directory {_show(name)}") from None
        self.dirs += 1
        return fd

    def _parent(self, parts: tuple[bytes, ...], name: bytes) -> int:
        """An fd of the directory holding the entry, creating missing parents (0755)."""
        dirs = parts[:-1]
        i = 0
        while i < len(self._stack) and i < len(dirs) and self._stack[i][0] == dirs[i]:
            i += 1
        while len(self._stack) > i:
            os.close(self._stack.pop()[1])
        fd = self._stack[-1][1] if self._stack else self.root
        for comp in dirs[i:]:
            fd = self._open_dir(fd, comp, name)
            self._stack.append((comp, fd))
        return fd

    def add_dir(self, parts: tuple[bytes, ...], name: bytes) -> None:
        self._count(name)
        if not parts:
            return  # "./": the destination itself
        parent = self._parent(parts, name)
        try:
            os.close(self._mkdir(parent, parts[-1], name))
        except UnsafeError:
            try:
                st = os.stat(parts[-1], dir_fd=parent, follow_symlinks=False)
            except OSError as e:
                raise _fs_error(e, f"directory {_show(name)}") from None
            if not stat.S_ISDIR(st.st_mode):
                raise UnsafeError(f"refusing directory {_show(name)}: a file or symlink of that name exists") from None

    def add_file(self, parts: tuple[bytes, ...], name: bytes, mode: int, mtime: float | None,
                 declared: int, data: Iterable[bytes | memoryview]) -> None:
        lim = self.limits
        self._count(name)
        if not parts:
            raise UnsafeError(f"refusing file {_show(name)}: it names the destination itself")
        if declared > lim.max_file_size:
            raise CapacityError(f"file {_show(name)} declares {declared} bytes, over the {lim.max_file_size} per-file limit")
        if self.bytes + declared > lim.max_bytes:
            raise CapacityError(f"file {_show(name)} would take the total over {lim.max_bytes} bytes")
        parent = self._parent(parts, name)
        try:
            fd = os.open(parts[-1], _FILE_FLAGS, 0o600, dir_fd=parent)
        except OSError as e:
            if e.errno == errno.EEXIST:
                raise UnsafeError(f"refusing file {_show(name)}: duplicate entry, or over an existing name") from None
            raise _fs_error(e, f"creating {_show(name)}") from None
        try:
            size = 0
            for piece in data:
                n = len(piece)
                size += n
                self.bytes += n
                if size > lim.max_file_size:
                    raise CapacityError(f"file {_show(name)} is over the {lim.max_file_size}-byte per-file limit")
                if self.bytes > lim.max_bytes:
                    raise CapacityError(f"more than {lim.max_bytes} bytes extracted (at {_show(name)})")
                try:
                    _write_all(fd, piece)
                except OSError as e:
                    raise _fs_error(e, f"writing {_show(name)}") from None
                self.progress.add(n)
            try:
                os.fchmod(fd, 0o755 if mode & 0o111 else 0o644)
                if mtime is not None and 0 <= mtime < 2**40:
                    os.utime(fd, (mtime, mtime))
            except OSError as e:
                raise _fs_error(e, f"finishing {_show(name)}") from None
        finally:
            os.close(fd)
        self.files += 1

    def add_symlink(self, parts: tuple[bytes, ...], name: bytes, target: bytes) -> None:
        if not self.allow_symlinks:
            raise UnsafeError(f"refusing symlink {_show(name)}: symlinks are not allowed (see --allow-symlinks)")
        self._count(name)
        if not parts:
            raise UnsafeError(f"refusing symlink {_show(name)}: it names the destination itself")
        comps = _link_parts(target, self.limits, name)
        if _climbs_out(len(parts) - 1, comps):
            raise UnsafeError(f"refusing symlink {_show(name)} -> {_show(target)}: it points outside the destination")
        parent = self._parent(parts, name)
        try:
            os.symlink(target, parts[-1], dir_fd=parent)
        except OSError as e:
            if e.errno == errno.EEXIST:
                raise UnsafeError(f"refusing symlink {_show(name)}: duplicate entry, or over an existing name") from None
            raise _fs_error(e, f"creating symlink {_show(name)}") from None
        self._links.append((parts[:-1], comps, name))
        self.symlinks += 1

    def finish(self) -> None:
        """Resolve every symlink against the finished tree: no path through another symlink."""
        for dirs, comps, name in self._links:
            stack = list(dirs)
            exists = True
            for i, c in enumerate(comps):
                if c == b"..":
                    if not stack:
                        raise UnsafeError(f"refusing symlink {_show(name)}: it points outside the destination")
                    stack.pop()
                    continue
                stack.append(c)
                if not exists or i == len(comps) - 1:
                    continue
                # The prefix walked so far is made of real directories (checked in
                # order), so this lstat follows no symlink.
                try:
                    st = os.stat(b"/".join(stack), dir_fd=self.root, follow_symlinks=False)
                except (FileNotFoundError, NotADirectoryError):
                    exists = False  # the link dangles: the kernel stops here
                    continue
                if stat.S_ISLNK(st.st_mode):
                    raise UnsafeError(f"refusing symlink {_show(name)}: its target passes through another symlink")
                if not stat.S_ISDIR(st.st_mode):
                    exists = False


# ---------------------------------------------------------------- tar


@dataclass
class _Entry:
    name: bytes
    parts: tuple[bytes, ...]
    kind: str  # file | dir | symlink
    mode: int
    size: int
    mtime: float | None
    link: bytes


_EXT_TYPES = {tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE,
              tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK}
_PAX_KEEP = {"path", "linkpath", "size", "mtime"}
_REFUSED_TYPES = {
    tarfile.LNKTYPE: "hard link", tarfile.CHRTYPE: "character device", tarfile.BLKTYPE: "block device",
    tarfile.FIFOTYPE: "FIFO", tarfile.CONTTYPE: "contiguous file", tarfile.GNUTYPE_SPARSE: "sparse file",
}


def _pad(size: int) -> int:
    return -size % BLOCK


def _parse_pax(data: bytes, offset: int) -> dict[str, bytes | None]:
    """pax records "LEN KEY=VALUE\\n", parsed in one linear pass; only the keys we use are kept."""
    out: dict[str, bytes | None] = {}
    pos, n = 0, len(data)
    bad = f"malformed pax header at offset {offset}"
    while pos < n:
        if data[pos] == 0:
            if data[pos:].strip(b"\0"):
                raise IntegrityError(bad)
            break
        sp = data.find(b" ", pos, pos + 21)
        digits = data[pos:sp] if sp > pos else b""
        if not digits.isdigit():
            raise IntegrityError(bad)
        end = pos + int(digits)
        if end <= sp + 1 or end > n or data[end - 1] != 0x0A:
            raise IntegrityError(bad)
        key, eq, value = data[sp + 1 : end - 1].partition(b"=")
        if not eq or not key:
            raise IntegrityError(bad)
        k = key.decode("utf-8", "surrogateescape")
        if k.startswith("GNU.sparse."):
            out["GNU.sparse"] = b"1"
        elif k in _PAX_KEEP:
            out[k] = value or None  # an empty value deletes the key
        pos = end
    return out


def _tar_entries(plain: _Plain, limits: Limits) -> Iterator[_Entry]:
    """Members in order; after a file is yielded the caller must take exactly its size."""
    glob: dict[str, bytes | None] = {}
    while True:
        local: dict[str, bytes | None] = {}
        longname = longlink = None
        n_ext = 0
        while True:
            offset = plain.pos
            block = plain.read_exact(BLOCK)
            if len(block) < BLOCK:
                if offset == 0 and not block:
                    raise IntegrityError("empty input: not a tar or zip archive")
                if not block:
                    raise IntegrityError("truncated tar archive: it ends without its end-of-archive block")
                raise IntegrityError(f"truncated tar archive: it ends inside a header at offset {offset}")
            if block == ZERO_BLOCK:
                if n_ext:
                    raise IntegrityError(f"malformed tar archive: extended header without a member at offset {offset}")
                return
            try:
                info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
            except (tarfile.HeaderError, ValueError) as e:
                if offset == 0:
                    raise IntegrityError(f"not a tar or zip archive ({e})") from None
                raise IntegrityError(f"corrupt tar header at offset {offset}: {e}") from None
            if info.size < 0:
                raise IntegrityError(f"corrupt tar header at offset {offset}: negative size")
            if info.type not in _EXT_TYPES:
                break
            n_ext += 1
            if n_ext > EXT_HEADERS_MAX:
                raise IntegrityError(f"malformed tar archive: more than {EXT_HEADERS_MAX} extended headers in a row")
            if info.size > EXT_HEADER_MAX:
                raise CapacityError(f"tar extended header of {info.size} bytes at offset {offset}, over {EXT_HEADER_MAX}")
            data = plain.read_exact(info.size + _pad(info.size))
            if len(data) < info.size + _pad(info.size):
                raise IntegrityError("truncated tar archive: it ends inside an extended header")
            data = data[: info.size]
            if info.type == tarfile.GNUTYPE_LONGNAME:
                longname = data.split(b"\0", 1)[0]
            elif info.type == tarfile.GNUTYPE_LONGLINK:
                longlink = data.split(b"\0", 1)[0]
            else:
                (glob if info.type == tarfile.XGLTYPE else local).update(_parse_pax(data, offset))
        pax = {**glob, **local}
        path, linkpath = pax.get("path"), pax.get("linkpath")
        name = path if path is not None else longname if longname is not None else info.name.encode("utf-8", "surrogateescape")
        link = linkpath if linkpath is not None else longlink if longlink is not None else info.linkname.encode("utf-8", "surrogateescape")
        size = info.size
        if pax.get("size") is not None:
            if not pax["size"].isdigit():  # type: ignore[union-attr]
                raise IntegrityError(f"malformed pax size for {_show(name)}")
            size = int(pax["size"])  # type: ignore[arg-type]
        mtime: float | None = info.mtime
        if pax.get("mtime") is not None:
            try:
                mtime = float(pax["mtime"])  # type: ignore[arg-type]
            except ValueError:
                mtime = None
        parts = _parts(name, limits)
        if "GNU.sparse" in pax:
            raise UnsafeError(f"refusing entry {_show(name)}: sparse files are not supported")
        t = info.type
        if t in (tarfile.REGTYPE, tarfile.AREGTYPE):
            kind = "dir" if name.endswith(b"/") else "file"
        elif t == tarfile.DIRTYPE:
            kind = "dir"
        elif t == tarfile.SYMTYPE:
            kind = "symlink"
        elif t in _REFUSED_TYPES:
            raise UnsafeError(f"refusing {_REFUSED_TYPES[t]} {_show(name)}: only files and directories are extracted")
        else:
            raise UnsafeError(f"refusing entry {_show(name)}: unsupported tar entry type {t!r}")
        if kind != "file" and size:
            raise IntegrityError(f"malformed tar archive: {kind} entry {_show(name)} with {size} bytes of data")
        start = plain.pos
        yield _Entry(name, parts, kind, info.mode, size, mtime, link)
        if plain.pos != start + size:  # pragma: no cover - a bug in the caller
            raise AssertionError("tar member data not consumed")
        if len(plain.read_exact(_pad(size))) != _pad(size):
            raise IntegrityError(f"truncated tar archive: it ends in the padding of {_show(name)}")


def _tar_data(plain: _Plain, size: int, name: bytes) -> Iterator[memoryview]:
    left = size
    while left:
        view = plain.take(min(left, CHUNK))
        if not view:
            raise IntegrityError(f"truncated tar archive: the data of {_show(name)} ends early")
        left -= len(view)
        yield view


def _extract_tar(plain: _Plain, tree: _Tree) -> None:
    for e in _tar_entries(plain, tree.limits):
        if e.kind == "dir":
            tree.add_dir(e.parts, e.name)
        elif e.kind == "file":
            tree.add_file(e.parts, e.name, e.mode, e.mtime, e.size, _tar_data(plain, e.size, e.name))
        else:
            tree.add_symlink(e.parts, e.name, e.link)
    # The end-of-archive block has been read. Read the rest of the stream to
    # its end: a decrypting source only verifies its last segment at EOF, and a
    # compressed one checks its trailer there.
    trailing = 0
    while True:
        view = plain.take(CHUNK)
        if not view:
            return
        trailing += len(view)
        if trailing > TRAILING_MAX:
            raise CapacityError(f"more than {TRAILING_MAX} bytes after the end of the tar archive")
        if bytes(view).strip(b"\0"):
            raise IntegrityError("unexpected data after the end of the tar archive (a second archive appended?)")


# ---------------------------------------------------------------- zip


class _SpoolFile(io.FileIO):
    """The spooled zip for zipfile; refuses the single huge read a giant central directory needs."""

    def __init__(self, fd: int, size: int) -> None:
        super().__init__(fd, "rb", closefd=False)
        self._size = size

    def read(self, n: int | None = -1) -> bytes:  # type: ignore[override]
        if n is None or n < 0:
            n = max(0, self._size - self.tell())
        if n > ZIP_CD_MAX:
            raise CapacityError(f"zip central directory over {ZIP_CD_MAX >> 20} MiB (use tar for very many entries)")
        return super().read(n)


def _spool(raw: _Raw, dir_fd: int, limits: Limits) -> tuple[int, int]:
    try:
        fd = os.open(".", os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
    except OSError:  # no O_TMPFILE here: a named file unlinked at once
        name = f".spool-{secrets.token_hex(8)}"
        fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
        os.unlink(name, dir_fd=dir_fd)
    try:
        size = 0
        while True:
            view = raw.chunk(CHUNK)
            if not view:
                return fd, size
            size += len(view)
            if size > limits.max_bytes:
                raise CapacityError(f"zip archive over {limits.max_bytes} bytes (max_bytes)")
            try:
                _write_all(fd, view)
            except OSError as e:
                raise _fs_error(e, "spooling the zip archive") from None
    except BaseException:
        os.close(fd)
        raise


def _check_overlaps(fd: int, infos: list[zipfile.ZipInfo], size: int) -> None:
    spans = []
    for zi in infos:
        head = os.pread(fd, 30, zi.header_offset) if 0 <= zi.header_offset < size else b""
        if len(head) != 30 or head[:4] != b"PK\x03\x04":
            raise IntegrityError(f"corrupt zip: no local header for {_show(zi.filename)}")
        n, m = struct.unpack("<HH", head[26:30])
        end = zi.header_offset + 30 + n + m + zi.compress_size
        if end > size:
            raise IntegrityError(f"corrupt zip: the data of {_show(zi.filename)} runs past the end of the archive")
        spans.append((zi.header_offset, end, zi.filename))
    spans.sort()
    for (_, end, a), (start, _, b) in zip(spans, spans[1:]):
        if start < end:
            raise UnsafeError(f"refusing zip: entries {_show(a)} and {_show(b)} overlap (a zip bomb?)")


def _zip_mtime(zi: zipfile.ZipInfo) -> float | None:
    try:
        return time.mktime(zi.date_time + (0, 0, -1))
    except (OverflowError, ValueError):
        return None


def _extract_zip(raw: _Raw, tree: _Tree) -> None:
    limits = tree.limits
    fd, size = _spool(raw, tree.root, limits)
    try:
        try:
            zf = zipfile.ZipFile(_SpoolFile(fd, size))
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, struct.error, UnicodeDecodeError,
                NotImplementedError) as e:
            raise IntegrityError(f"corrupt zip archive: {e}") from None
        with zf:
            infos = zf.infolist()
            if len(infos) > limits.max_files:
                raise CapacityError(f"zip has {len(infos)} entries, over {limits.max_files}")
            _check_overlaps(fd, infos, size)
            produced = 0

            def data(zi: zipfile.ZipInfo, name: bytes) -> Iterator[bytes]:
                nonlocal produced
                got = 0
                try:
                    with zf.open(zi) as f:
                        while True:
                            piece = f.read(CHUNK)
                            if not piece:
                                break
                            got += len(piece)
                            produced += len(piece)
                            if produced > RATIO_GRACE and produced > limits.max_ratio * max(1, size):
                                raise CapacityError(f"compression ratio over {limits.max_ratio:g} (a zip bomb?)")
                            yield piece
                except (zipfile.BadZipFile, EOFError, zlib.error, ValueError, struct.error) as e:
                    raise IntegrityError(f"corrupt zip entry {_show(name)}: {e}") from None
                except NotImplementedError as e:
                    raise UnsafeError(f"refusing zip entry {_show(name)}: {e}") from None
                if got != zi.file_size:
                    raise IntegrityError(f"corrupt zip entry {_show(name)}: {got} bytes, its header says {zi.file_size}")

            for zi in infos:
                name = zi.orig_filename.encode("utf-8", "surrogateescape")
                parts = _parts(name, limits)
                if zi.flag_bits & 0x41:
                    raise UnsafeError(f"refusing zip entry {_show(name)}: encrypted entries are not supported")
                mode = zi.external_attr >> 16 if zi.create_system == 3 else 0
                ftype = stat.S_IFMT(mode)
                if zi.filename.endswith("/") or ftype == stat.S_IFDIR:
                    if zi.file_size:
                        raise IntegrityError(f"corrupt zip: directory entry {_show(name)} with data")
                    tree.add_dir(parts, name)
                    continue
                if ftype not in (0, stat.S_IFREG, stat.S_IFLNK):
                    raise UnsafeError(f"refusing zip entry {_show(name)}: not a file, directory or symlink")
                if zi.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                    raise UnsafeError(f"refusing zip entry {_show(name)}: compression method {zi.compress_type} "
                                      "is not supported (stored and deflate only)")
                if ftype == stat.S_IFLNK:
                    if not tree.allow_symlinks:
                        tree.add_symlink(parts, name, b"")  # raises: symlinks not allowed
                    if zi.file_size > limits.max_name:
                        raise UnsafeError(f"refusing symlink {_show(name)}: target over {limits.max_name} bytes")
                    target = b"".join(data(zi, name))
                    tree.add_symlink(parts, name, target)
                    continue
                tree.add_file(parts, name, mode, _zip_mtime(zi), zi.file_size, data(zi, name))
    finally:
        os.close(fd)


# ---------------------------------------------------------------- staging


def _staging_prefix(name: str) -> str:
    if len(name.encode("utf-8", "surrogateescape")) > 200:
        name = hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return f".{name}.staging-"


def _check_dest(parent_fd: int, name: str, dest: str) -> None:
    try:
        st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        raise UsageError(f"{dest} is a symlink: give a new directory to extract into")
    if not stat.S_ISDIR(st.st_mode):
        raise UsageError(f"{dest} exists and is not a directory")
    if st.st_dev != os.fstat(parent_fd).st_dev:
        raise UsageError(f"{dest} is a mount point: give a new directory inside it (e.g. {dest.rstrip('/')}/model)")
    fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    try:
        if os.listdir(fd):
            raise UsageError(f"{dest} exists and is not empty: refusing to overwrite it")
    finally:
        os.close(fd)


def _remove(parent_fd: int, name: str) -> None:
    st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    if stat.S_ISDIR(st.st_mode):
        assert shutil.rmtree.avoids_symlink_attacks
        shutil.rmtree(name, dir_fd=parent_fd)
    else:
        os.unlink(name, dir_fd=parent_fd)


def _make_parents(parent: str, dest: str) -> list[str]:
    """Create dest's missing parents (0755), e.g. /models/resnet for /models/resnet/1.

    The path is the operator's configuration, not archive input, so plain
    mkdir is fine here; returns what was created, shallowest first.
    """
    missing = []
    path = parent
    while not os.path.lexists(path):
        missing.append(path)
        path = os.path.dirname(path)
    created = []
    for path in reversed(missing):
        try:
            os.mkdir(path, 0o755)
        except FileExistsError:
            continue
        except OSError as e:
            raise UsageError(f"cannot extract into {dest}: creating {path}: {e.strerror}") from None
        created.append(path)
    return created


def extract(src: BinaryIO, dest: str, *, limits: Limits = Limits(), allow_symlinks: bool = False,
            log: Log | None = None) -> dict:
    """Extract a tar (ustar/pax/GNU; none/gzip/xz/bzip2/zstd) or zip from the stream `src` into a new directory `dest`.

    Returns stats {"files", "dirs", "symlinks", "bytes", "format", "compression", "seconds"}.
    Raises UsageError (bad dest), UnsafeError (hostile entry), CapacityError
    (limit, no space), IntegrityError (corrupt or truncated archive), or
    whatever `src` raises; on any failure nothing is left beside dest.
    """
    if log is None:
        log = Log("unpack", stream=_NullStream())  # type: ignore[arg-type]
    started = time.monotonic()
    dest_abs = os.path.abspath(dest)
    parent, name = os.path.split(dest_abs)
    if name in ("", ".", ".."):
        raise UsageError(f"cannot extract into {dest!r}: give a new directory's path")
    created = _make_parents(parent, dest)
    try:
        parent_fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise UsageError(f"cannot extract into {dest}: its parent directory {parent}: {e.strerror}") from None
    try:
        _check_dest(parent_fd, name, dest)
        prefix = _staging_prefix(name)
        for stale in os.listdir(parent_fd):
            if stale.startswith(prefix):
                log.warning("stale_staging_removed", name=stale)
                _remove(parent_fd, stale)
        staging = prefix + secrets.token_hex(8)
        try:
            os.mkdir(staging, 0o700, dir_fd=parent_fd)
        except OSError as e:
            raise _fs_error(e, f"creating a staging directory beside {dest}") from None
        try:
            root = os.open(staging, _DIR_FLAGS, dir_fd=parent_fd)
            try:
                stats = _extract_into(src, root, limits, allow_symlinks, log)
                os.fchmod(root, 0o755)
            finally:
                os.close(root)
            try:
                os.rename(staging, name, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
            except OSError as e:
                if e.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR, errno.EBUSY):
                    raise UsageError(f"{dest} appeared or changed during the extraction: {e.strerror}") from None
                raise _fs_error(e, f"renaming the staging directory to {dest}") from None
        except BaseException:
            try:
                _remove(parent_fd, staging)
            except OSError as e:
                log.error("staging_cleanup_failed", name=staging, error=e.strerror)
            raise
    except BaseException:
        for path in reversed(created):  # parents we made for dest go too
            try:
                os.rmdir(path)
            except OSError:
                break
        raise
    finally:
        os.close(parent_fd)
    stats["seconds"] = round(time.monotonic() - started, 3)
    return stats


def _extract_into(src: BinaryIO, root: int, limits: Limits, allow_symlinks: bool, log: Log) -> dict:
    raw = _Raw(src)
    head = raw.peek(8)
    if not head:
        raise IntegrityError("empty input: not a tar or zip archive")
    if head[:4] in _ZIP_MAGICS:
        fmt, compression = "zip", "none"
    else:
        fmt, compression = "tar", detect_compression(head)
    log.info("unpack_start", format=fmt, compression=compression)
    tree = _Tree(root, limits, allow_symlinks, log)
    try:
        if fmt == "zip":
            _extract_zip(raw, tree)
        else:
            producer: object
            if compression == "none":
                producer = _PassThrough(raw)
            elif compression == "zstd":
                producer = _ZstdDecompressor(raw)
            else:
                producer = _StdlibDecompressor(raw, compression)
            _extract_tar(_Plain(producer, limits), tree)
        tree.finish()
    finally:
        tree.close()
    # Paranoia: whatever the path, the whole input has been read.
    if raw.chunk(1):
        raise IntegrityError("unexpected data after the end of the archive")
    return {"files": tree.files, "dirs": tree.dirs, "symlinks": tree.symlinks, "bytes": tree.bytes,
            "format": fmt, "compression": compression}
