"""Building the tar that `seal` encrypts: deterministic, owner-free, no surprises.

Members are added in sorted order with owners cleared and setuid/setgid/sticky
bits dropped, so the same tree seals to the same plaintext. Symlinks are
followed (like `tar -h`): the unpack stage refuses links by default, and model
caches such as Hugging Face's are made of them.
"""

from __future__ import annotations

import gzip
import io
import os
import stat
import tarfile
import time
from dataclasses import dataclass
from typing import BinaryIO, Sequence

from .errors import UsageError
from .format import Sizes

COPY_BUFSIZE = 1 << 20


class _NoClose(io.RawIOBase):
    """Lets a compressor be closed (to flush its trailer) without closing what it wraps."""

    def __init__(self, inner: BinaryIO) -> None:
        super().__init__()
        self._inner = inner

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:  # type: ignore[override]
        self._inner.write(data)
        return len(data)


def compressor(out: BinaryIO, kind: str) -> BinaryIO:
    """A writable stream compressing into `out`; close it to finish the frame."""
    if kind == "none":
        return _NoClose(out)  # type: ignore[return-value]
    if kind == "gzip":
        return gzip.GzipFile(fileobj=_NoClose(out), mode="wb", mtime=0, compresslevel=6)  # type: ignore[return-value]
    if kind == "zstd":
        import zstandard

        return zstandard.ZstdCompressor(level=3, threads=-1).stream_writer(_NoClose(out), closefd=False)  # type: ignore[return-value]
    raise UsageError(f"unknown compression {kind!r} (none, gzip, zstd)")


def _tarinfo(path: str, arcname: str, st: os.stat_result) -> tarfile.TarInfo:
    info = tarfile.TarInfo(arcname)
    info.mode = stat.S_IMODE(st.st_mode) & 0o777
    info.mtime = int(st.st_mtime)
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if stat.S_ISDIR(st.st_mode):
        info.type = tarfile.DIRTYPE
    elif stat.S_ISREG(st.st_mode):
        info.type = tarfile.REGTYPE
        info.size = st.st_size
    else:
        raise UsageError(f"cannot seal {path}: not a regular file or directory")
    return info


@dataclass(frozen=True)
class Plan:
    """The members of the tar `seal` will write, and its exact size, known before a byte is written.

    Planned first so the .seal header (written before the payload) can record
    what the archive unpacks to (format.Sizes).
    """

    members: list[tuple[str | bytes, tarfile.TarInfo]]  # (path on disk, or the bytes, member) in archive order
    tar_bytes: int
    file_bytes: int
    files: int

    def sizes(self) -> Sizes:
        return Sizes(tar_bytes=self.tar_bytes, file_bytes=self.file_bytes, files=self.files)


def _tar_size(infos: list[tarfile.TarInfo]) -> int:
    """What tarfile writes for these members: each header (pax records included) and padded data,
    two zero blocks, then zeros up to a whole record (TarFile.close)."""
    total = 0
    for info in infos:
        total += len(info.tobuf(tarfile.PAX_FORMAT, tarfile.ENCODING, "surrogateescape"))
        total += -(-info.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
    total += 2 * tarfile.BLOCKSIZE
    return -(-total // tarfile.RECORDSIZE) * tarfile.RECORDSIZE


def plan_tar(src: str, first: Sequence[tuple[str, bytes]] = ()) -> Plan:
    """Walk `src` (a directory's contents, or one file): members in sorted order, symlinks followed.

    `first`: (name, bytes) members ahead of the tree (seal --sign-key's model.sig)."""
    members: list[tuple[str | bytes, tarfile.TarInfo]] = []
    for arcname, data in first:
        info = tarfile.TarInfo(arcname)
        info.size, info.mode, info.mtime = len(data), 0o644, int(time.time())
        members.append((data, info))

    def add(path: str, arcname: str) -> None:
        try:
            st = os.stat(path)  # follows symlinks on purpose, see module docstring
        except FileNotFoundError:
            raise UsageError(f"cannot seal {path}: dangling symlink or vanished file") from None
        members.append((path, _tarinfo(path, arcname, st)))

    if not os.path.isdir(src):
        add(src, os.path.basename(src.rstrip("/")) or "file")
    else:
        seen = {os.path.realpath(src)}
        for root, dirs, files in os.walk(src, followlinks=True):
            dirs.sort()
            for d in list(dirs):
                real = os.path.realpath(os.path.join(root, d))
                if real in seen:
                    raise UsageError(f"cannot seal {os.path.join(root, d)}: a directory reached twice through symlinks")
                seen.add(real)
            rel = os.path.relpath(root, src)
            for name in sorted(dirs + files):
                add(os.path.join(root, name), name if rel == "." else f"{rel}/{name}")
    infos = [info for _, info in members]
    regular = [info for info in infos if info.isreg()]
    return Plan(members, _tar_size(infos), sum(i.size for i in regular), len(regular))


def write_tar(plan: Plan | str, out: BinaryIO) -> int:
    """Write the planned members (or those of a path) as a PAX tar; return the file count."""
    if isinstance(plan, str):
        plan = plan_tar(plan)
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
        tar.copybufsize = COPY_BUFSIZE
        for path, info in plan.members:
            if not info.isreg():
                tar.addfile(info)
                continue
            if isinstance(path, bytes):
                tar.addfile(info, io.BytesIO(path))
                continue
            with open(path, "rb") as f:
                if os.fstat(f.fileno()).st_size != info.size:
                    raise UsageError(f"cannot seal {path}: it changed size while being sealed")
                tar.addfile(info, f)
    return plan.files


def scan_tar(path: str) -> Sizes:
    """Sizes of an uncompressed tar that `seal` takes as it is (the owner's own file; headers only)."""
    try:
        with tarfile.open(path, "r:") as tar:
            regular = [m for m in tar if m.isreg()]
    except (tarfile.TarError, OSError, ValueError):
        return Sizes(tar_bytes=os.path.getsize(path))
    return Sizes(tar_bytes=os.path.getsize(path), file_bytes=sum(m.size for m in regular), files=len(regular))


def detect_compression(head: bytes) -> str:
    """Name the compression of a stream from its first bytes."""
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        return "zstd"
    if head.startswith(b"\xfd7zXZ\x00"):
        return "xz"
    if head.startswith(b"BZh"):
        return "bzip2"
    return "none"
