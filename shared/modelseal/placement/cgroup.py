"""How much memory this container may still use, read from its memory cgroup.

Pages written to tmpfs (an `emptyDir` with `medium: Memory`) are charged to
the memory cgroup of the process that writes them, so a stage that writes a
1 GiB model needs 1 GiB under its own memory limit on top of its working set,
or the kernel's OOM killer ends it (exit 137, no message). Knowing the
headroom lets a stage refuse up front with a message instead.

Both cgroup versions are read (this process's line in /proc/self/cgroup, the
controller's mount in /proc/self/mountinfo):
- v2: memory.max, memory.current, memory.stat (active_file, inactive_file), memory.peak;
- v1: memory.limit_in_bytes, memory.usage_in_bytes, memory.stat (total_active_file,
  total_inactive_file, hierarchical_memory_limit), memory.max_usage_in_bytes.
Every level from this cgroup up to the top of the mount is looked at and the
tightest one wins: a pod-level limit above the container's shows there when
the runtime mounts the whole hierarchy. Inside a cgroup namespace (the usual
container view) only the container's own level is visible; on v1,
hierarchical_memory_limit still names the tightest limit above it.

Usage counts file cache, which the kernel reclaims before it kills anyone, so
what is in use is usage minus the file LRU pages (active and inactive).
tmpfs pages are not on the file LRU: they stay counted, as they should.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from . import mounts

#: A limit at or above this is "no limit" (v1 writes 2**63 rounded down to a page).
UNLIMITED = 1 << 60


@dataclass(frozen=True)
class Memory:
    """The tightest memory limit over this process, and what is in use under it."""

    version: int
    path: str  # the cgroup directory whose limit is tightest
    limit: int  # bytes
    in_use: int  # usage minus reclaimable file cache

    @property
    def headroom(self) -> int:
        return max(0, self.limit - self.in_use)


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _int(text: str | None) -> int | None:
    if text is None or text == "max":
        return None
    try:
        value = int(text)
    except ValueError:
        return None
    return value if value < UNLIMITED else None


def _stat(directory: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in (_read(os.path.join(directory, "memory.stat")) or "").splitlines():
        key, _, value = line.partition(" ")
        if value.strip().isdigit():
            out[key] = int(value)
    return out


def _directory(cgroup_path: str, mount_root: str, mount_point: str) -> str:
    """Where this process's cgroup sits under the mount (the mount itself inside a namespace)."""
    rel = os.path.relpath(cgroup_path, mount_root) if mount_root != "/" else cgroup_path.lstrip("/")
    if rel.startswith(".."):
        return mount_point
    candidate = os.path.normpath(os.path.join(mount_point, rel))
    return candidate if os.path.isdir(candidate) else mount_point


def _levels(directory: str, mount_point: str) -> list[str]:
    """This cgroup and each parent up to the top of the mount."""
    out = [directory]
    while directory != mount_point and directory.startswith(mount_point.rstrip("/") + "/"):
        directory = os.path.dirname(directory)
        out.append(directory)
    return out


def _find(proc: str, controller: str = "memory") -> tuple[int, str, str] | None:
    """(version, cgroup directory, mount point) of this process's cgroup for `controller`."""
    lines = (_read(os.path.join(proc, "cgroup")) or "").splitlines()
    table = mounts.read(proc)
    for line in lines:  # v1: "4:memory:/path" (controllers may be combined: "4:cpu,cpuacct:/path")
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if controller in controllers.split(","):
            for m in table:
                if m.fstype == "cgroup" and controller in m.super_options.split(","):
                    return 1, _directory(path, m.root, m.point), m.point
    for line in lines:  # v2: "0::/path"
        if line.startswith("0::"):
            for m in table:
                if m.fstype == "cgroup2":
                    return 2, _directory(line[3:], m.root, m.point), m.point
    return None


def memory(proc: str = "/proc/self") -> Memory | None:
    """The tightest memory limit that applies to this process; None when there is none (or no cgroup)."""
    found = _find(proc)
    if found is None:
        return None
    version, directory, point = found
    names = ("memory.max", "memory.current", "active_file", "inactive_file") if version == 2 else (
        "memory.limit_in_bytes", "memory.usage_in_bytes", "total_active_file", "total_inactive_file")
    best: Memory | None = None
    for level in _levels(directory, point):
        limit = _int(_read(os.path.join(level, names[0])))
        usage = _int(_read(os.path.join(level, names[1])))
        stats = _stat(level)
        if version == 1 and level == directory:
            limit = min(filter(None, (limit, _int(str(stats.get("hierarchical_memory_limit", ""))))), default=None)
        if limit is None or usage is None:
            continue
        in_use = max(0, usage - stats.get(names[2], 0) - stats.get(names[3], 0))
        candidate = Memory(version, level, limit, in_use)
        if best is None or candidate.headroom < best.headroom:
            best = candidate
    return best


def peak(proc: str = "/proc/self") -> int | None:
    """This cgroup's peak memory usage (tmpfs pages it wrote included), for the stage's summary."""
    found = _find(proc)
    if found is None:
        return None
    version, directory, _ = found
    return _int(_read(os.path.join(directory, "memory.peak" if version == 2 else "memory.max_usage_in_bytes")))


def _quota(version: int, level: str) -> float | None:
    """One level's CPU bandwidth limit in CPUs (quota / period), None when unlimited or unreadable."""
    if version == 2:  # cpu.max: "QUOTA PERIOD" or "max PERIOD"
        fields = (_read(os.path.join(level, "cpu.max")) or "").split()
        quota, period = (fields + ["", ""])[:2] if fields else ("", "")
    else:  # cpu.cfs_quota_us is -1 when unlimited
        quota = _read(os.path.join(level, "cpu.cfs_quota_us")) or ""
        period = _read(os.path.join(level, "cpu.cfs_period_us")) or ""
    try:
        q, p = int(quota), int(period)
    except ValueError:  # "max", missing, garbage
        return None
    return q / p if q > 0 and p > 0 else None


def cpu_quota(proc: str = "/proc/self") -> float | None:
    """The tightest CPU quota over this process, in CPUs (a pod's `limits.cpu: 1500m` is 1.5); None: no quota.

    Read like the memory limit: this cgroup and each level above it that
    the mount shows (v2 cpu.max; v1 cpu.cfs_quota_us / cpu.cfs_period_us).
    """
    found = _find(proc, "cpu")
    if found is None:
        return None
    version, directory, point = found
    limits = [q for q in (_quota(version, level) for level in _levels(directory, point)) if q is not None]
    return min(limits) if limits else None
