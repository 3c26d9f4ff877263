"""Tar (ustar / pax / GNU), read in one streaming pass.

Header blocks are parsed by the standard library's public
`tarfile.TarInfo.frombuf` (checksums, octal and base-256 numbers, ustar
prefixes); the record loop, pax and GNU long-name headers are handled here
rather than by `tarfile.TarFile`, which in the Python releases we run treats
a corrupt or missing header mid-archive as a normal end of archive (silent
truncation), reads extended headers of any declared size into memory,
recurses once per chained extended header, and on 3.11 < 3.11.10 parses pax
headers with quadratic regular expressions (CVE-2024-6232). Here an extended
header is at most 1 MiB, at most 8 precede a member, pax records are parsed
linearly, and the archive must end with its end-of-archive block. After that
block the rest of the stream is read to its end (a decrypting reader only
verifies its final segment at EOF): it may hold only zero padding (at most
64 MiB); anything else, such as a second archive concatenated to the first,
is refused (exit 4).

Only regular files, directories and (when allowed) symlinks; hard links,
devices, FIFOs, contiguous and sparse files and unknown entry types are
refused (exit 7).
"""

from __future__ import annotations

import re
import tarfile
from dataclasses import dataclass
from typing import Iterator

from .. import untrusted
from ..errors import CapacityError, IntegrityError, UnsafeError
from .decompress import CHUNK, TRAILING_MAX, Decompressed
from .limits import Applied
from .tree import Tree, parts_of, show

EXT_HEADER_MAX = 1 << 20  # data of one pax / GNU long-name header
EXT_HEADERS_MAX = 8  # extended headers in front of one member
BLOCK = 512
ZERO_BLOCK = bytes(BLOCK)


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


_PAX_TIME = re.compile(rb"-?[0-9]{1,19}(\.[0-9]{1,9})?")


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


def _tar_entries(stream: Decompressed, limits: Applied) -> Iterator[_Entry]:
    """Members in order; after a file is yielded the caller must take exactly its size."""
    glob: dict[str, bytes | None] = {}
    while True:
        local: dict[str, bytes | None] = {}
        longname = longlink = None
        n_ext = 0
        while True:
            offset = stream.pos
            block = stream.read_exact(BLOCK)
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
                raise CapacityError(f"tar extended header of {info.size} bytes at offset {offset}, "
                                    f"over {EXT_HEADER_MAX}")
            data = stream.read_exact(info.size + _pad(info.size))
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
        name = path if path is not None else longname if longname is not None else \
            info.name.encode("utf-8", "surrogateescape")
        link = linkpath if linkpath is not None else longlink if longlink is not None else \
            info.linkname.encode("utf-8", "surrogateescape")
        size = info.size
        if pax.get("size") is not None:
            # ASCII digits, at most 19 (int() refuses over 4300 digits with a ValueError)
            pax_size = untrusted.decimal(pax["size"])
            if pax_size is None:
                raise IntegrityError(f"malformed pax size for {show(name)}")
            size = pax_size
        mtime: float | None = info.mtime
        pax_mtime = pax.get("mtime")
        if pax_mtime is not None:
            m = _PAX_TIME.fullmatch(pax_mtime)
            mtime = float(m.group(0)) if m else None  # not float(): it takes "inf", "1_0", huge strings
        parts = parts_of(name, limits)
        if "GNU.sparse" in pax:
            raise UnsafeError(f"refusing entry {show(name)}: sparse files are not supported")
        t = info.type
        if t in (tarfile.REGTYPE, tarfile.AREGTYPE):
            kind = "dir" if name.endswith(b"/") else "file"
        elif t == tarfile.DIRTYPE:
            kind = "dir"
        elif t == tarfile.SYMTYPE:
            kind = "symlink"
        elif t in _REFUSED_TYPES:
            raise UnsafeError(f"refusing {_REFUSED_TYPES[t]} {show(name)}: only files and directories are extracted")
        else:
            raise UnsafeError(f"refusing entry {show(name)}: unsupported tar entry type {t!r}")
        if kind != "file" and size:
            raise IntegrityError(f"malformed tar archive: {kind} entry {show(name)} with {size} bytes of data")
        start = stream.pos
        yield _Entry(name, parts, kind, info.mode, size, mtime, link)
        if stream.pos != start + size:  # pragma: no cover - a bug in the caller
            raise AssertionError("tar member data not consumed")
        if len(stream.read_exact(_pad(size))) != _pad(size):
            raise IntegrityError(f"truncated tar archive: it ends in the padding of {show(name)}")


def _tar_data(stream: Decompressed, size: int, name: bytes) -> Iterator[memoryview]:
    left = size
    while left:
        view = stream.take(min(left, CHUNK))
        if not view:
            raise IntegrityError(f"truncated tar archive: the data of {show(name)} ends early")
        left -= len(view)
        yield view


def extract_tar(stream: Decompressed, tree: Tree) -> None:
    for e in _tar_entries(stream, tree.limits):
        if e.kind == "dir":
            tree.add_dir(e.parts, e.name)
        elif e.kind == "file":
            tree.add_file(e.parts, e.name, e.mode, e.mtime, e.size, _tar_data(stream, e.size, e.name))
        else:
            tree.add_symlink(e.parts, e.name, e.link)
    # The end-of-archive block has been read. Read the rest of the stream to
    # its end: a decrypting source only verifies its last segment at EOF, and a
    # compressed one checks its trailer there.
    trailing = 0
    while True:
        view = stream.take(CHUNK)
        if not view:
            return
        trailing += len(view)
        if trailing > TRAILING_MAX:
            raise CapacityError(f"more than {TRAILING_MAX} bytes after the end of the tar archive")
        if bytes(view).strip(b"\0"):
            raise IntegrityError("unexpected data after the end of the tar archive (a second archive appended?)")

