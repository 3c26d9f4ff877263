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
from typing import BinaryIO, Sequence

from .errors import UsageError

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


def _tarinfo(tar: tarfile.TarFile, path: str, arcname: str, st: os.stat_result) -> tarfile.TarInfo:
    info = tar.tarinfo(arcname)
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


def write_tar(src: str, out: BinaryIO, first: Sequence[tuple[str, bytes]] = ()) -> int:
    """Write `src` (a directory's contents, or one file) as a PAX tar; return the file count.

    `first`: (name, bytes) members written ahead of the tree (seal --sign-key's model.sig)."""
    count = 0
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
        tar.copybufsize = COPY_BUFSIZE
        for arcname, data in first:
            info = tar.tarinfo(arcname)
            info.size, info.mode, info.mtime = len(data), 0o644, int(time.time())
            tar.addfile(info, io.BytesIO(data))
            count += 1

        def add(path: str, arcname: str) -> None:
            nonlocal count
            try:
                st = os.stat(path)  # follows symlinks on purpose, see module docstring
            except FileNotFoundError:
                raise UsageError(f"cannot seal {path}: dangling symlink or vanished file") from None
            info = _tarinfo(tar, path, arcname, st)
            if info.isreg():
                with open(path, "rb") as f:
                    tar.addfile(info, f)
                count += 1
            else:
                tar.addfile(info)

        if not os.path.isdir(src):
            add(src, os.path.basename(src.rstrip("/")) or "file")
            return count
        seen = {os.path.realpath(src)}
        for root, dirs, files in os.walk(src, followlinks=True):
            dirs.sort()
            for d in list(dirs):
                real = os.path.realpath(os.path.join(root, d))
                if real in seen:
                    raise UsageError(f"cannot seal {os.path.join(root, d)}: a directory reached twice through symlinks")
                seen.add(real)
            rel = os.path.relpath(root, src)
            entries = sorted(dirs + files)
            for name in entries:
                path = os.path.join(root, name)
                add(path, name if rel == "." else f"{rel}/{name}")
    return count


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
