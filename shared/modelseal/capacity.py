"""Will it fit? The check a stage makes before it writes its first byte of plaintext.

A stage writing to a memory-backed volume needs room twice: on the
filesystem (the tmpfs's free space, its `sizeLimit`), and under its own
memory limit, because tmpfs pages are charged to the memory cgroup of the
container that writes them (cgroup.py). Without this check a model larger
than either ends in ENOSPC halfway, or in an OOM kill (exit 137) with no word
of why; with it the stage exits 6 at once, naming both numbers and what to
raise, before anything is written.

What a stage will write comes from the authenticated `.seal` header when
`seal` recorded it (format.Sizes), else from the best bound at hand (the
exact plaintext length of a ciphertext of known length, an uncompressed
archive's own length); when nothing bounds it (stdin, compressed content of
unknown size) the stage says so and goes on.
"""

from __future__ import annotations

import os
import stat
import time
from dataclasses import dataclass
from typing import Any, Callable

from . import cgroup, mounts, tmpfs
from .errors import CapacityError
from .log import Log

PAGE = os.sysconf("SC_PAGE_SIZE")
MIB = 1 << 20
#: Memory a stage's own buffers and decoders add once it starts writing
#: (measured peaks of decrypt, unpack and run from a file: 30-45 MiB in all,
#: most of it the interpreter itself, which the cgroup already counts).
WORKING_SET = 48 * MIB
#: Kernel memory per created file or directory (inode, dentry), charged with the pages.
PER_ENTRY = 1024


@dataclass(frozen=True)
class Need:
    """Bytes a stage will leave on its target filesystem, as well as they can be known up front."""

    bytes: int | None  # None: unknown
    files: int = 0  # entries to create (inodes), when known
    source: str = ""  # where the numbers come from, for logs and messages
    buffers: int = 0  # memory the input side holds on top (parallel S3 parts in flight)

    @classmethod
    def file(cls, size: int | None, source: str, buffers: int = 0) -> "Need":
        """One file of `size` bytes (decrypt's output)."""
        return cls(None if size is None else _pages(size), 1, source, buffers)

    @classmethod
    def tree(cls, file_bytes: int, files: int, source: str, buffers: int = 0) -> "Need":
        """A tree of `files` files holding `file_bytes`: each file rounds up to whole pages."""
        return cls(file_bytes + files * (PAGE - 1), files, source, buffers)

    @classmethod
    def unknown(cls, source: str) -> "Need":
        return cls(None, 0, source)


def tree_need(sizes: Any, archive_size: int | None, compression: str, buffers: int = 0) -> Need:
    """What an extraction leaves: the header's file bytes and count (format.Sizes), else the archive's own length.

    The preflight and `inspect --resources` (sizing.py) both size a tree by this one rule.
    """
    if sizes is not None and sizes.file_bytes is not None and sizes.files is not None:
        return Need.tree(sizes.file_bytes, sizes.files, "from the .seal header", buffers)
    if compression == "none" and archive_size is not None:
        return Need.file(archive_size, "estimated from the archive's length", buffers)
    if compression != "none":
        return Need.unknown(f"{compression}-compressed content with no sizes in a .seal header")
    return Need.unknown("input of unknown length")


def _pages(n: int) -> int:
    return -(-n // PAGE) * PAGE


def mib(n: int) -> str:
    return f"{n / MIB:,.0f} MiB" if n >= MIB else f"{n:,} bytes"


def quantity(n: int) -> str:
    """A Kubernetes quantity at least `n` bytes: whole MiB, rounded up to a multiple of 16Mi."""
    return f"{-(-n // (16 * MIB)) * 16}Mi"


def mount_point(fd: int) -> str | None:
    """The mount point of the filesystem an open descriptor is on (for messages)."""
    mount = mounts.of_descriptor(fd)
    return mount.point if mount else None


def check(fd: int, where: str, need: Need, log: Log, *,
          memory: Callable[[], cgroup.Memory | None] = cgroup.memory) -> dict:
    """Raise CapacityError unless the filesystem of `fd` and this container's memory limit hold `need`.

    Returns what was measured (logged by the caller's stage as "preflight").
    """
    started = time.monotonic()
    kind = os.fstat(fd).st_mode
    if not stat.S_ISREG(kind) and not stat.S_ISDIR(kind):
        return {}  # a pipe or a device (stdout): no filesystem of ours to size
    place = mount_point(fd) or where
    if need.bytes is None:
        log.warning("preflight_unknown", path=where, message=(
            f"the size of the output is not known ({need.source}): room on {place} and under the memory "
            "limit is not checked; a limit too small ends in ENOSPC or an OOM kill"))
        return {}
    st = os.fstatvfs(fd)
    free = st.f_bavail * st.f_frsize
    if need.bytes > free:
        raise CapacityError(
            f"needs {mib(need.bytes)} under {place} ({need.source}) but its filesystem has {mib(free)} free: "
            f"raise the emptyDir sizeLimit to at least {quantity(need.bytes + (st.f_blocks - st.f_bfree) * st.f_frsize)}")
    if st.f_files and need.files > st.f_favail:
        raise CapacityError(f"needs {need.files} files under {place} ({need.source}) but its filesystem has "
                            f"room for {st.f_favail} more (nr_inodes)")
    measured = {"needs": need.bytes, "fs_free": free, "source": need.source}
    mem = memory()
    if mem is not None:
        # Only pages of a memory filesystem are charged for good; on disk (--allow-disk)
        # the written pages are page cache the kernel reclaims, and only the stage's own memory counts.
        pages = need.bytes + need.files * PER_ENTRY if tmpfs.fs_type_fd(fd) in tmpfs.MEMORY_FILESYSTEMS else 0
        own = WORKING_SET + need.buffers
        if pages + own > mem.headroom:
            what = (f"needs {mib(pages + own)} ({mib(pages)} of tmpfs pages under {place}, {need.source}, "
                    f"and {mib(own)} for the stage itself)" if pages else f"needs {mib(own)} for the stage itself")
            why = " (tmpfs pages count against the writer's limit)" if pages else ""
            raise CapacityError(
                f"{what} but this container's memory limit leaves {mib(mem.headroom)}{why}: "
                f"raise resources.limits.memory to at least {quantity(mem.in_use + pages + own)}")
        measured.update(memory_limit=mem.limit, memory_headroom=mem.headroom)
    measured["seconds"] = round(time.monotonic() - started, 6)
    return measured
