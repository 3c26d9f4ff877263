"""The mount table (/proc/PID/mountinfo): which filesystem is mounted where.

The cgroup reader finds its controller's hierarchy here, and capacity
messages name the mount a descriptor is on. One parser, so both read the
table the same way (the kernel's octal escapes for space, tab, newline and
backslash included).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

_ESCAPE = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True)
class Mount:
    mount_id: str
    root: str  # the mount's root within its filesystem (a cgroup hierarchy's path, for cgroup mounts)
    point: str
    fstype: str
    super_options: str


def _unescape(field: str) -> str:
    return _ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


def read(proc: str = "/proc/self") -> list[Mount]:
    """Every mount in `proc`'s namespace; lines that do not parse are skipped, an unreadable table is empty."""
    try:
        with open(os.path.join(proc, "mountinfo")) as f:
            text = f.read()
    except OSError:
        return []
    out = []
    for line in text.splitlines():
        # "36 35 98:0 /root /point opts [optional fields...] - fstype source super_options"
        fields = line.split()
        if "-" not in fields:
            continue
        sep = fields.index("-")
        if sep < 5 or len(fields) < sep + 4:
            continue
        out.append(Mount(fields[0], _unescape(fields[3]), _unescape(fields[4]), fields[sep + 1], fields[sep + 3]))
    return out


def of_descriptor(fd: int) -> Mount | None:
    """The mount an open descriptor is on (its fdinfo's mnt_id), or None when the kernel does not say."""
    try:
        with open(f"/proc/self/fdinfo/{fd}") as f:
            mnt_id = next((line.split()[1] for line in f if line.startswith("mnt_id:")), None)
    except (OSError, IndexError):
        return None
    return next((m for m in read() if m.mount_id == mnt_id), None) if mnt_id else None
