"""Zip, which needs random access: spooled to an anonymous file, then read with zipfile.

The stream is spooled into an anonymous O_TMPFILE inside the staging
directory (the same tmpfs as dest; it has no name and disappears when
closed) and counted against max_bytes, then parsed with zipfile. Entries
whose local spans [header, end of data) overlap are refused (exit 7: the
overlapping-entry zip bomb), as are encrypted entries and compression
methods other than stored and deflate (bzip2 / lzma in zip cannot be bounded
by zipfile). The central directory is at most 32 MiB (zipfile holds it in
memory: use tar for archives with very many entries). Each entry's CRC is
checked (zipfile, reading to its end) and its size must equal the header's.
"""

from __future__ import annotations

import io
import os
import secrets
import stat
import struct
import time
import zipfile
import zlib
from typing import Iterator

from ..errors import CapacityError, IntegrityError, UnsafeError
from .decompress import CHUNK, RATIO_GRACE, Archive
from .limits import Applied
from .tree import Tree, fs_error, parts_of, show, write_all

ZIP_CD_MAX = 32 << 20
ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")


class _SpoolFile(io.FileIO):
    """The spooled zip for zipfile; refuses the single huge read a giant central directory needs."""

    def __init__(self, fd: int, size: int) -> None:
        super().__init__(fd, "rb", closefd=False)
        self._size = size

    def read(self, n: int | None = -1) -> bytes:
        if n is None or n < 0:
            n = max(0, self._size - self.tell())
        if n > ZIP_CD_MAX:
            raise CapacityError(f"zip central directory over {ZIP_CD_MAX >> 20} MiB (use tar for very many entries)")
        return super().read(n)


def _spool(archive: Archive, dir_fd: int, limits: Applied) -> tuple[int, int]:
    try:
        fd = os.open(".", os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
    except OSError:  # no O_TMPFILE here: a named file unlinked at once
        name = f".spool-{secrets.token_hex(8)}"
        fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
        os.unlink(name, dir_fd=dir_fd)
    # The archive itself may be longer than its files (headers, a stored zip): the header's tar_bytes, when
    # it declares one, bounds the payload as decrypt holds it.
    bound = max(limits.max_bytes, limits.max_tar or 0)
    try:
        size = 0
        while True:
            view = archive.chunk(CHUNK)
            if not view:
                return fd, size
            size += len(view)
            if size > bound:
                raise CapacityError(f"zip archive over {bound} bytes {limits.over('max_bytes')}")
            try:
                write_all(fd, view)
            except OSError as e:
                raise fs_error(e, "spooling the zip archive") from None
    except BaseException:
        os.close(fd)
        raise


def _check_overlaps(fd: int, infos: list[zipfile.ZipInfo], size: int) -> None:
    spans = []
    for zi in infos:
        head = os.pread(fd, 30, zi.header_offset) if 0 <= zi.header_offset < size else b""
        if len(head) != 30 or head[:4] != b"PK\x03\x04":
            raise IntegrityError(f"corrupt zip: no local header for {show(zi.filename)}")
        n, m = struct.unpack("<HH", head[26:30])
        end = zi.header_offset + 30 + n + m + zi.compress_size
        if end > size:
            raise IntegrityError(f"corrupt zip: the data of {show(zi.filename)} runs past the end of the archive")
        spans.append((zi.header_offset, end, zi.filename))
    spans.sort()
    for (_, end, a), (start, _, b) in zip(spans, spans[1:]):
        if start < end:
            raise UnsafeError(f"refusing zip: entries {show(a)} and {show(b)} overlap (a zip bomb?)")


def _zip_mtime(zi: zipfile.ZipInfo) -> float | None:
    try:
        return time.mktime(zi.date_time + (0, 0, -1))
    except (OverflowError, ValueError):
        return None


def extract_zip(archive: Archive, tree: Tree) -> None:
    limits = tree.limits
    fd, size = _spool(archive, tree.root, limits)
    try:
        try:
            zf = zipfile.ZipFile(_SpoolFile(fd, size))
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, struct.error, UnicodeDecodeError,
                NotImplementedError) as e:
            raise IntegrityError(f"corrupt zip archive: {e}") from None
        with zf:
            infos = zf.infolist()
            if len(infos) > limits.max_files:
                raise CapacityError(f"zip has {len(infos)} entries, over {limits.max_files} "
                                    f"{limits.over('max_files')}")
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
                                raise CapacityError(f"compression ratio over {limits.max_ratio:g} (a zip bomb?) "
                                                    f"{limits.over('max_ratio')}")
                            yield piece
                except (zipfile.BadZipFile, EOFError, zlib.error, ValueError, struct.error) as e:
                    raise IntegrityError(f"corrupt zip entry {show(name)}: {e}") from None
                except NotImplementedError as e:
                    raise UnsafeError(f"refusing zip entry {show(name)}: {e}") from None
                if got != zi.file_size:
                    raise IntegrityError(f"corrupt zip entry {show(name)}: {got} bytes, its header says {zi.file_size}")

            for zi in infos:
                name = zi.orig_filename.encode("utf-8", "surrogateescape")
                parts = parts_of(name, limits)
                if zi.flag_bits & 0x41:
                    raise UnsafeError(f"refusing zip entry {show(name)}: encrypted entries are not supported")
                mode = zi.external_attr >> 16 if zi.create_system == 3 else 0
                ftype = stat.S_IFMT(mode)
                if zi.filename.endswith("/") or ftype == stat.S_IFDIR:
                    if zi.file_size:
                        raise IntegrityError(f"corrupt zip: directory entry {show(name)} with data")
                    tree.add_dir(parts, name)
                    continue
                if ftype not in (0, stat.S_IFREG, stat.S_IFLNK):
                    raise UnsafeError(f"refusing zip entry {show(name)}: not a file, directory or symlink")
                if zi.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                    raise UnsafeError(f"refusing zip entry {show(name)}: compression method {zi.compress_type} "
                                      "is not supported (stored and deflate only)")
                if ftype == stat.S_IFLNK:
                    if not tree.allow_symlinks:
                        tree.add_symlink(parts, name, b"")  # raises: symlinks not allowed
                    if zi.file_size > limits.max_name:
                        raise UnsafeError(f"refusing symlink {show(name)}: target over {limits.max_name} bytes")
                    target = b"".join(data(zi, name))
                    tree.add_symlink(parts, name, target)
                    continue
                tree.add_file(parts, name, mode, _zip_mtime(zi), zi.file_size, data(zi, name))
    finally:
        os.close(fd)

