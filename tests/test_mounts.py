"""The mount table parser (modelseal.placement.mounts), shared by the cgroup reader and preflight messages."""

from __future__ import annotations

import os
import resource
from pathlib import Path

from modelseal.placement import mounts, preflight

TABLE = "\n".join([
    "22 1 0:21 / /dev/shm rw,nosuid,nodev shared:3 - tmpfs tmpfs rw,size=1024k",
    r"40 22 0:33 / /mnt/with\040space\011tab\134back rw master:1 propagating_from:2 - tmpfs none rw",
    "41 22 0:34 /kubepods/pod1 /sys/fs/cgroup/memory ro - cgroup cgroup rw,memory",
    "42 22 0:35 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate",
    "garbage",
    "43 22 0:36 / - tmpfs",  # separator too early: not a mount line
    "",
])


def test_fields_escapes_and_optional_fields(tmp_path: Path) -> None:
    (tmp_path / "mountinfo").write_text(TABLE)
    table = mounts.read(str(tmp_path))
    assert [m.mount_id for m in table] == ["22", "40", "41", "42"]
    assert table[1].point == "/mnt/with space\ttab\\back" and table[1].fstype == "tmpfs"
    assert (table[2].root, table[2].point, table[2].fstype, table[2].super_options) == (
        "/kubepods/pod1", "/sys/fs/cgroup/memory", "cgroup", "rw,memory")
    assert table[3].fstype == "cgroup2"


def test_unreadable_table_is_empty(tmp_path: Path) -> None:
    assert mounts.read(str(tmp_path / "missing")) == []


def test_a_descriptor_is_on_its_real_mount(shm: Path) -> None:
    fd = os.open(shm, os.O_RDONLY | os.O_DIRECTORY)
    try:
        mount = mounts.of_descriptor(fd)
        assert mount is not None and mount.fstype == "tmpfs"
        assert str(shm).startswith(mount.point) and preflight.mount_point(fd) == mount.point
    finally:
        os.close(fd)
    never_open = resource.getrlimit(resource.RLIMIT_NOFILE)[1]  # at the hard limit: no descriptor can have it
    assert mounts.of_descriptor(never_open) is None
