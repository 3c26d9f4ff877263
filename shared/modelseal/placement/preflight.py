"""Will it fit? The check a stage makes before it writes its first byte of plaintext.

A stage writing to a memory-backed volume needs room twice: on the
filesystem (the tmpfs's free space, its `sizeLimit`), and under its own
memory limit, because tmpfs pages are charged to the memory cgroup of the
container that writes them (cgroup.py). Without this check a model larger
than either ends in ENOSPC halfway, or in an OOM kill (exit 137) with no word
of why; with it the stage exits 6 at once, naming both numbers and what to
raise, before anything is written. What the stage will write is a Need
(need.py); when it is unknown the stage says so and goes on.
"""

from __future__ import annotations

import os
import stat
import time
from dataclasses import dataclass
from typing import Callable

from ..errors import CapacityError
from ..log import Log
from . import cgroup, mounts, tmpfs
from .need import MIB, Need, mib, quantity

#: Memory a stage's own buffers and decoders add once it starts writing
#: (measured peaks of decrypt, unpack and run from a file: 30-45 MiB in all,
#: most of it the interpreter itself, which the cgroup already counts).
WRITE_BUFFERS = 48 * MIB
#: Kernel memory per created file or directory (inode, dentry), charged with the pages.
PER_ENTRY = 1024


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
            "raise the emptyDir sizeLimit to at least "
            f"{quantity(need.bytes + (st.f_blocks - st.f_bfree) * st.f_frsize)}")
    if st.f_files and need.files > st.f_favail:
        raise CapacityError(f"needs {need.files} files under {place} ({need.source}) but its filesystem has "
                            f"room for {st.f_favail} more (nr_inodes)")
    measured = {"needs": need.bytes, "fs_free": free, "source": need.source}
    mem = memory()
    if mem is not None:
        # Only pages of a memory filesystem are charged for good; on disk (--allow-disk)
        # the written pages are page cache the kernel reclaims, and only the stage's own memory counts.
        pages = need.bytes + need.files * PER_ENTRY if tmpfs.fs_type_fd(fd) in tmpfs.MEMORY_FILESYSTEMS else 0
        own = WRITE_BUFFERS + need.buffers
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


@dataclass(frozen=True)
class Preflight:
    """The check() before a stage's first write, as the stage asked for it: `--no-preflight` turns it off, logged."""

    enabled: bool
    log: Log

    def announce(self) -> "Preflight":
        if not self.enabled:
            self.log.warning("preflight_off", message="--no-preflight: room on the target and under the "
                             "memory limit is not checked before writing")
        return self

    def __call__(self, fd: int, where: str, need: Need) -> None:
        if self.enabled:
            measured = check(fd, where, need, self.log)
            if measured:
                self.log.info("preflight", path=where, **measured)
