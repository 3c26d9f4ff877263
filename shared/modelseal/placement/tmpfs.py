"""Where plaintext may go: memory-backed filesystems only.

Plaintext and keys belong on tmpfs or ramfs, which inside a confidential
guest live in encrypted RAM. `fstatfs(2)` on the descriptor being written
tells the filesystem type; Python's os.fstatvfs does not expose f_type,
hence the small ctypes call.
"""

from __future__ import annotations

import ctypes
import os
import platform
import stat
from typing import TYPE_CHECKING

from ..errors import UnsafeError

if TYPE_CHECKING:
    from ..atomic import TargetRule
    from ..log import Log

TMPFS_MAGIC = 0x01021994
RAMFS_MAGIC = 0x858458F6
MEMORY_FILESYSTEMS = {TMPFS_MAGIC: "tmpfs", RAMFS_MAGIC: "ramfs"}
_KNOWN = {0xEF53: "ext4", 0x58465342: "xfs", 0x9123683E: "btrfs", 0x794C7630: "overlayfs", 0x6969: "nfs"}

# The process's own symbols (dlopen(NULL)) include libc's: ctypes.util.find_library
# would run ldconfig in a subprocess at import, 14 ms of every command's start.
_libc = ctypes.CDLL(None, use_errno=True)


def _f_type(buf: ctypes.Array) -> int:
    # f_type is the first member of struct statfs: a 32-bit word on s390x, a native long elsewhere.
    size = 4 if platform.machine() == "s390x" else ctypes.sizeof(ctypes.c_long)
    return int.from_bytes(buf.raw[:size], "big" if platform.machine() == "s390x" else "little") & 0xFFFFFFFF


def fs_type_fd(fd: int) -> int:
    """f_type of the filesystem of an open file descriptor (fstatfs(2))."""
    buf = ctypes.create_string_buffer(256)  # larger than struct statfs on every Linux ABI
    if _libc.fstatfs(fd, buf) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return _f_type(buf)


def fs_type(path: str) -> int:
    """f_type of the filesystem holding `path` (or its nearest existing parent).

    For tests and tools that look at a place; decisions about where bytes go
    are taken on the opened descriptor (require_memory_fd), never on a path.
    """
    path = os.path.abspath(path)
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    buf = ctypes.create_string_buffer(256)
    if _libc.statfs(os.fsencode(path), buf) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return _f_type(buf)


def fs_name(magic: int) -> str:
    return MEMORY_FILESYSTEMS.get(magic) or _KNOWN.get(magic) or f"filesystem type {magic:#x}"


def require_memory_fd(fd: int, where: str, allow_disk: bool, log: Log | None = None, what: str = "plaintext") -> bool:
    """Refuse (exit 7) unless the open file or directory `fd` is on tmpfs/ramfs, or disk is allowed.

    Returns False when the target is not memory but `allow_disk` let it pass (warned on `log`).

    Decided on the descriptor that will be written through, so no symlink,
    `..`, bind mount or swap of a directory between check and use can send
    the bytes elsewhere. Pipes and sockets live in kernel memory and pass; a
    block device is a disk, whatever filesystem its device node sits on.
    """
    mode = os.fstat(fd).st_mode
    if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode):
        return True
    place = "a block device" if stat.S_ISBLK(mode) else None
    if place is None:
        magic = fs_type_fd(fd)
        if magic in MEMORY_FILESYSTEMS:
            return True
        place = fs_name(magic)
    if allow_disk:
        if log is not None:
            log.warning("allow_disk", path=where, filesystem=place,
                        message=f"WRITING {what.upper()} TO A NON-MEMORY FILESYSTEM because --allow-disk was given")
        return False
    raise UnsafeError(
        f"refusing to write {what} to {where}: it is on {place}, not tmpfs or ramfs "
        "(use an emptyDir with medium: Memory, or pass --allow-disk)"
    )


def swap_enabled(proc_swaps: str = "/proc/swaps") -> bool:
    """Swap can page tmpfs contents out to disk, so it is worth a warning."""
    try:
        with open(proc_swaps) as f:
            return len(f.read().strip().splitlines()) > 1
    except OSError:
        return False


def warn_if_swap(log: Log) -> None:
    if swap_enabled():
        log.warning("swap_on", message="swap is enabled: tmpfs pages may be written to disk")


def memory_only(allow_disk: bool, log: Log, what: str = "plaintext") -> TargetRule:
    """The memory-only rule (require_memory_fd), for each descriptor an output is written through.

    --allow-disk is warned about once per stage, not once per descriptor.
    """
    warn_if_swap(log)
    warned = False

    def rule(fd: int, where: str) -> None:
        nonlocal warned
        if not require_memory_fd(fd, where, allow_disk, None if warned else log, what):
            warned = True

    return rule
