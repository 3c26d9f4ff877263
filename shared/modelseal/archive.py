"""Building the tar that `seal` encrypts: deterministic, owner-free, no surprises.

Members are added in sorted order with owners cleared and setuid/setgid/sticky
bits dropped, so the same tree seals to the same plaintext.

What goes in is decided on what was opened, not on path strings:

- A symlink inside SRC is stored as the file (or directory) it points to,
  like `tar -h`, once under each name that leads to it: the unpack stage
  refuses links (and hard links) by default, and a model's file names must
  all be there after unpacking. A directory reached twice is refused.
- A symlink whose target, resolved by the kernel (the link opened with
  O_PATH, its real path read from /proc/self/fd), is not under SRC's own
  real path (compared component by component) is refused unless
  `follow_external` (`--follow-external-symlinks`): a link to /etc/passwd
  or ~/.aws/credentials in a downloaded model would otherwise be shipped.
  A Hugging Face snapshot directory is made of such links (into ../../blobs).
- Files whose identity (st_dev, st_ino) is in `skip` (the output being
  written, a stale output of an earlier run) are left out, whatever their
  name; other `*.seal` files are sealed with a warning.
- Every member keeps the identity it was planned with; write_tar opens it
  again and refuses it if it is another file by then (swapped for a link).
- A tree without a byte of file content is refused: an empty model.
"""

from __future__ import annotations

import errno
import gzip
import io
import os
import stat
import tarfile
import time
from dataclasses import dataclass
from typing import Any, Protocol, Sequence

from .errors import UsageError
from .log import Log
from .sealfile import Sizes
from .streaming import Writable

COPY_BUFSIZE = 1 << 20


class _NoClose(io.RawIOBase):
    """Lets a compressor be closed (to flush its trailer) without closing what it wraps."""

    def __init__(self, inner: Writable) -> None:
        super().__init__()
        self._inner = inner

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self._inner.write(data)
        return len(data)


class Compressing(Protocol):
    """A stream the tar is written into: write, then close to finish the compressor's frame."""

    def write(self, data: Any, /) -> int | None: ...

    def close(self) -> None: ...


def compressor(out: Writable, kind: str) -> Compressing:
    """A writable stream compressing into `out`; close it to finish the frame."""
    if kind == "none":
        return _NoClose(out)
    if kind == "gzip":
        return gzip.GzipFile(fileobj=_NoClose(out), mode="wb", mtime=0, compresslevel=6)
    if kind == "zstd":
        import zstandard

        # zstandard's stubs ask for an IO; a write-only stream is all stream_writer uses.
        return zstandard.ZstdCompressor(level=3, threads=-1).stream_writer(_NoClose(out),  # type: ignore[arg-type]
                                                                           closefd=False)
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


#: (st_dev, st_ino): a file's identity, whatever name or link reaches it.
Identity = tuple[int, int]


def identity(st: os.stat_result) -> Identity:
    return st.st_dev, st.st_ino


@dataclass(frozen=True)
class Plan:
    """The members of the tar `seal` will write, and its exact size, known before a byte is written.

    Planned first so the .seal header (written before the payload) can record
    what the archive unpacks to (format.Sizes).
    """

    #: (path on disk, or the bytes; member; identity of what the path opened when planned) in archive order
    members: list[tuple[str | bytes, tarfile.TarInfo, Identity | None]]
    tar_bytes: int
    file_bytes: int
    files: int

    def sizes(self) -> Sizes:
        return Sizes(tar_bytes=self.tar_bytes, file_bytes=self.file_bytes, files=self.files)

    def regular_files(self) -> list[tuple[str, str, Identity]]:
        """(path, archive name, identity) of every regular file read from disk, in archive order."""
        return [(path, info.name, ident) for path, info, ident in self.members
                if info.isreg() and isinstance(path, str) and ident is not None]

    def with_first(self, first: Sequence[tuple[str, bytes]]) -> "Plan":
        """The same plan with (name, bytes) members ahead of the tree (seal --sign-key's model.sig)."""
        return _plan([*_byte_members(first), *self.members])


def _tar_size(infos: list[tarfile.TarInfo]) -> int:
    """What tarfile writes for these members: each header (pax records included) and padded data,
    two zero blocks, then zeros up to a whole record (TarFile.close)."""
    total = 0
    for info in infos:
        total += len(info.tobuf(tarfile.PAX_FORMAT, tarfile.ENCODING, "surrogateescape"))
        total += -(-info.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
    total += 2 * tarfile.BLOCKSIZE
    return -(-total // tarfile.RECORDSIZE) * tarfile.RECORDSIZE


def _byte_members(first: Sequence[tuple[str, bytes]]) -> list[tuple[str | bytes, tarfile.TarInfo, Identity | None]]:
    out: list[tuple[str | bytes, tarfile.TarInfo, Identity | None]] = []
    for arcname, data in first:
        info = tarfile.TarInfo(arcname)
        info.size, info.mode, info.mtime = len(data), 0o644, int(time.time())
        out.append((data, info, None))
    return out


def _plan(members: list[tuple[str | bytes, tarfile.TarInfo, Identity | None]]) -> Plan:
    infos = [info for _, info, _ in members]
    regular = [info for info in infos if info.isreg()]
    return Plan(members, _tar_size(infos), sum(i.size for i in regular), len(regular))


_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


def _real_path(fd: int) -> str:
    """The kernel's path of what `fd` opened (symlinks resolved, as it was reached)."""
    return os.readlink(f"/proc/self/fd/{fd}")


def _under(path: str, root: str) -> bool:
    """Whether `path` is `root` or below it, component by component (/a/model2 is not under /a/model)."""
    return os.path.commonpath([path, root]) == root


def plan_tar(src: str, first: Sequence[tuple[str, bytes]] = (), *, follow_external: bool = False,
             skip: frozenset[Identity] = frozenset(), log: Log | None = None) -> Plan:
    """Walk `src` (a directory's contents, or one file): members in sorted order (see the module docstring).

    `first`: (name, bytes) members ahead of the tree (seal --sign-key's model.sig)."""
    members = _byte_members(first)
    if not os.path.isdir(src):
        st = os.stat(src)
        members.append((src, _tarinfo(src, os.path.basename(src.rstrip("/")) or "file", st), identity(st)))
    else:
        members += _walk(src, follow_external, skip, log)
    plan = _plan(members)
    if plan.file_bytes == 0:
        raise UsageError(f"cannot seal {src}: it holds no file with any content (an empty model)")
    return plan


def _walk(src: str, follow_external: bool, skip: frozenset[Identity],
          log: Log | None) -> list[tuple[str | bytes, tarfile.TarInfo, Identity | None]]:
    """The members under the directory `src`, depth first with each directory's entries sorted (os.walk's order)."""
    members: list[tuple[str | bytes, tarfile.TarInfo, Identity | None]] = []
    root_fd = os.open(src, _DIR)
    try:
        root_st = os.fstat(root_fd)
        root = _real_path(root_fd)
    finally:
        os.close(root_fd)
    seen = {identity(root_st)}  # directories walked: one reached twice (through a link) is refused
    todo: list[tuple[str, str, Identity]] = [(src, "", identity(root_st))]  # (path, archive name, identity)
    while todo:
        path, rel, expected = todo.pop()
        fd = os.open(path, _DIR)
        try:
            if identity(os.fstat(fd)) != expected:
                raise UsageError(f"cannot seal {path}: it changed while being sealed")
            subdirs = []
            for name in sorted(os.listdir(fd)):
                entry, arc = os.path.join(path, name), f"{rel}{name}"
                st = _resolve(fd, name, entry, root, follow_external)
                if identity(st) in skip:
                    if log is not None:
                        log.warning("seal_output_skipped", path=arc, note="this seal's own output (or its "
                                    "partial file) is inside SRC: left out")
                    continue
                if stat.S_ISDIR(st.st_mode):
                    if identity(st) in seen:
                        raise UsageError(f"cannot seal {entry}: a directory reached twice through symlinks")
                    seen.add(identity(st))
                    subdirs.append((entry, arc + "/", identity(st)))
                elif name.endswith(".seal") and log is not None:
                    log.warning("seal_file_inside", path=arc, note="a .seal file inside SRC is sealed with the "
                                "model; remove it if it is an earlier output")
                members.append((entry, _tarinfo(entry, arc, st), identity(st)))
        finally:
            os.close(fd)
        todo.extend(reversed(subdirs))
    return members


def _resolve(dir_fd: int, name: str, path: str, root: str, follow_external: bool) -> os.stat_result:
    """stat of the entry `name` of the open directory, through a symlink (decided on the opened target)."""
    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    if not stat.S_ISLNK(st.st_mode):
        return st
    try:
        fd = os.open(name, os.O_PATH | os.O_CLOEXEC, dir_fd=dir_fd)  # follows the link as the kernel does
    except FileNotFoundError:
        raise UsageError(f"cannot seal {path}: dangling symlink") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise UsageError(f"cannot seal {path}: a symlink loop") from None
        raise
    try:
        target = os.fstat(fd)
        if not follow_external and not _under(_real_path(fd), root):
            raise UsageError(f"cannot seal {path}: a symlink to {_real_path(fd)}, outside the model directory "
                             "(pass --follow-external-symlinks to seal what it points to)")
        return target
    finally:
        os.close(fd)


def write_tar(plan: Plan | str, out: Compressing) -> int:
    """Write the planned members (or those of a path) as a PAX tar; return the file count."""
    if isinstance(plan, str):
        plan = plan_tar(plan)
    # tarfile's stubs want a full IO for any mode; the stream mode "w|" only writes.
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
        tar.copybufsize = COPY_BUFSIZE  # undocumented: copies in 1 MiB pieces, not 16 KiB
        for path, info, planned in plan.members:
            if not info.isreg():
                tar.addfile(info)
                continue
            if isinstance(path, bytes):
                tar.addfile(info, io.BytesIO(path))
                continue
            with open(path, "rb") as f:
                st = os.fstat(f.fileno())
                if planned is not None and identity(st) != planned:
                    raise UsageError(f"cannot seal {path}: it was replaced while being sealed")
                if st.st_size != info.size:
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
