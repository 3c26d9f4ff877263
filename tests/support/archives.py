"""Helpers for the unpack tests: hand-made (often hostile) tar and zip archives,
compressors, source streams that misbehave, and tree snapshots."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import lzma
import os
import random
import stat
import struct
import subprocess
import tarfile
import warnings
import zipfile
import zlib
from pathlib import Path

import zstandard

from modelseal.errors import IntegrityError

COMPRESSIONS = ["none", "gzip", "xz", "bzip2", "zstd"]


# ------------------------------------------------------------------ tar


def member(name: str, type: bytes = tarfile.REGTYPE, data: bytes = b"", mode: int = 0o644, link: str = "",
           pax: dict | None = None, size: int | None = None, mtime: int = 1_600_000_000) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = type
    info.mode = mode
    info.mtime = mtime
    info.linkname = link
    info.size = len(data) if size is None else size
    if pax:
        info.pax_headers = dict(pax)
    return info, data


def f(name: str, data: bytes = b"x", mode: int = 0o644, **kw) -> tuple[tarfile.TarInfo, bytes]:
    return member(name, tarfile.REGTYPE, data, mode, **kw)


def d(name: str, mode: int = 0o755) -> tuple[tarfile.TarInfo, bytes]:
    return member(name, tarfile.DIRTYPE, mode=mode)


def sym(name: str, target: str) -> tuple[tarfile.TarInfo, bytes]:
    return member(name, tarfile.SYMTYPE, link=target, mode=0o777)


def hard(name: str, target: str) -> tuple[tarfile.TarInfo, bytes]:
    return member(name, tarfile.LNKTYPE, link=target)


def tar_bytes(members, format: int = tarfile.PAX_FORMAT) -> bytes:
    """A tar written by Python's tarfile, which writes whatever names it is given."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=format) as tar:
        for info, data in members:
            if info.isreg():
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return buf.getvalue()


def header(name: bytes, type: bytes = b"0", size: int = 0, mode: int = 0o644, link: bytes = b"") -> bytes:
    """One raw ustar header block with a valid checksum (for names tarfile would not write)."""
    h = bytearray(512)
    h[0 : len(name)] = name
    h[100:108] = b"%07o\0" % mode
    h[108:116] = b"0000000\0"
    h[116:124] = b"0000000\0"
    h[124:136] = b"%011o\0" % size
    h[136:148] = b"%011o\0" % 1_600_000_000
    h[148:156] = b" " * 8
    h[156:157] = type
    h[157 : 157 + len(link)] = link
    h[257:265] = b"ustar\x0000"
    h[148:156] = b"%06o\0 " % sum(h)
    return bytes(h)


def pad(data: bytes) -> bytes:
    return data + bytes(-len(data) % 512)


def pax_header(records: dict[bytes, bytes] | bytes, type: bytes = b"x") -> bytes:
    """A raw pax extended header (records, or raw bytes as its data)."""
    if isinstance(records, dict):
        body = b""
        for k, v in records.items():
            rec = b" " + k + b"=" + v + b"\n"
            n = len(rec) + 1
            while len(str(n).encode() + rec) != n:
                n += 1
            body += str(n).encode() + rec
    else:
        body = records
    return header(b"PaxHeader", type, len(body)) + pad(body)


def end() -> bytes:
    return bytes(1024)


def compress(data: bytes, kind: str) -> bytes:
    if kind == "none":
        return data
    if kind == "gzip":
        return gzip.compress(data, mtime=0)
    if kind == "xz":
        return lzma.compress(data, format=lzma.FORMAT_XZ, preset=1)
    if kind == "bzip2":
        return bz2.compress(data, 1)
    if kind == "zstd":
        return zstandard.ZstdCompressor(level=3, write_checksum=True).compress(data)
    raise ValueError(kind)


def gnu_tar(src: Path, fmt: str, compression: str) -> bytes:
    """An archive made by GNU tar itself, of the contents of `src` (entries ./...)."""
    flag = {"none": [], "gzip": ["-z"], "xz": ["-J"], "bzip2": ["-j"], "zstd": ["--zstd"]}[compression]
    return subprocess.run(["tar", f"--format={fmt}", *flag, "-C", str(src), "-cf", "-", "."],
                          check=True, capture_output=True).stdout


# ------------------------------------------------------------------ zip


def zip_bytes(entries, compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    """entries: (name, data, unix mode or None); a name ending in / is a directory."""
    buf = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buf, "w", compression) as zf:
        warnings.simplefilter("ignore")  # duplicate names are wanted here
        for name, data, mode in entries:
            zi = zipfile.ZipInfo(name, date_time=(2020, 1, 2, 3, 4, 6))
            zi.compress_type = compression
            if mode is not None:
                zi.create_system = 3
                zi.external_attr = mode << 16
            if name.endswith("/"):
                zi.external_attr |= 0x10
            zf.writestr(zi, data)
    return buf.getvalue()


def zip_symlink(name: str, target: str) -> tuple[str, bytes, int]:
    return (name, target.encode(), stat.S_IFLNK | 0o777)


def raw_zip(entries, *, flags: int = 0) -> bytes:
    """A stored zip written byte by byte. entries: (name, data, local_offset or None).

    An explicit offset lets a central-directory entry point into the middle of
    another entry's data: the overlapping-entry construction of zip bombs.
    """
    out = bytearray()
    cd = bytearray()
    offsets = {}
    for name, data, at in entries:
        nb = name.encode()
        crc = zlib.crc32(data)
        if at is None:
            at = len(out)
            out += struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, flags, 0, 0, 0x21, crc, len(data), len(data), len(nb), 0)
            out += nb + data
        offsets[name] = at
        cd += struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, flags, 0, 0, 0x21, crc, len(data), len(data),
                          len(nb), 0, 0, 0, 0, 0, at) + nb
    start = len(out)
    out += cd
    out += struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(entries), len(entries), len(cd), start, 0)
    return bytes(out)


def local_header(name: str, data: bytes) -> bytes:
    nb = name.encode()
    return struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, 0, 0, 0x21, zlib.crc32(data), len(data), len(data),
                       len(nb), 0) + nb + data


# ------------------------------------------------------------------ streams


class Chunked:
    """A non-seekable source: readinto returns small, irregular pieces.

    fail_at: raise `error` once that many bytes have been delivered (None: never);
    at EOF when fail_at == len(data) (a decrypting reader finding the last tag bad).
    """

    def __init__(self, data: bytes, sizes=(1, 7, 512, 4096, 65536, 1 << 20), seed: int = 1,
                 fail_at: int | None = None, error: BaseException | None = None) -> None:
        self._data = memoryview(data)
        self._pos = 0
        self._rnd = random.Random(seed)
        self._sizes = sizes
        self._fail_at = fail_at
        self._error = error or IntegrityError("segment 3 failed authentication: tampered")
        self.reads = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        self.reads += 1
        if self._fail_at is not None and self._pos >= self._fail_at:
            raise self._error
        n = min(len(buf), self._rnd.choice(self._sizes), len(self._data) - self._pos)
        if self._fail_at is not None:
            n = min(n, self._fail_at - self._pos)
        memoryview(buf).cast("B")[:n] = self._data[self._pos : self._pos + n]
        self._pos += n
        return n

    @property
    def exhausted(self) -> bool:
        return self._pos == len(self._data)


# ------------------------------------------------------------------ trees


def snapshot(root: Path) -> dict[str, tuple]:
    """Everything under root (root included): kind, mode, size, nlink, mtime, content hash or link target."""
    out: dict[str, tuple] = {}

    def one(p: Path) -> None:
        st = os.lstat(p)
        rel = str(p.relative_to(root))
        if stat.S_ISLNK(st.st_mode):
            out[rel] = ("link", os.readlink(p))
        elif stat.S_ISDIR(st.st_mode):
            out[rel] = ("dir", stat.S_IMODE(st.st_mode), st.st_mtime_ns)
            for child in sorted(os.listdir(p)):
                one(p / child)
        else:
            out[rel] = ("file", stat.S_IMODE(st.st_mode), st.st_nlink, st.st_mtime_ns,
                        hashlib.sha256(p.read_bytes()).hexdigest() if stat.S_ISREG(st.st_mode) else None)

    one(root)
    return out


def tree(root: Path) -> dict[str, tuple]:
    """Content view for comparisons: files (bytes, executable?), dirs, links."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir",)
            else:
                out[rel] = ("file", p.read_bytes(), bool(st.st_mode & 0o100))
    return out
