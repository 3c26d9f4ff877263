"""A /proc/self and a cgroup mount laid out as the kernel does, in a temporary directory.

cgroup.py reads /proc/self/cgroup, /proc/self/mountinfo and the controller's
files at every level; these trees let the tests cover cgroup v1 and v2 on
any host (this one runs v1 only).
"""

from __future__ import annotations

import os
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

from conftest import need

_V1 = {"memory": ("4:memory", "rw,memory"), "cpu": ("5:cpu,cpuacct", "rw,cpu,cpuacct")}


def fake_cgroup(tmp: Path, version: int, levels: dict[str, dict[str, str]], own: str,
                controller: str = "memory", mount_root: str = "/") -> Path:
    """Write `levels` ({cgroup path: {file: text}}) under tmp/cgroup, this process in `own`; return tmp/proc.

    With v1, `controller` is the hierarchy mounted at tmp/cgroup; the other
    one is listed too, elsewhere, so a reader must pick the right line.
    """
    mnt = tmp / "cgroup"
    for rel, files in levels.items():
        d = mnt / rel.strip("/") if rel.strip("/") else mnt
        d.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            (d / name).write_text(text)
    proc = tmp / "proc"
    proc.mkdir()
    if version == 1:
        lines, mounts = [], []
        for i, (name, (hierarchy, options)) in enumerate(_V1.items()):
            ours = name == controller
            lines.append(f"{hierarchy}:{own if ours else '/x'}")
            mounts.append(f"{30 + i} 25 0:{27 + i} {mount_root if ours else '/'} {mnt if ours else tmp / name} "
                          f"rw,nosuid - cgroup cgroup {options}")
        (proc / "cgroup").write_text("\n".join(lines + ["1:name=systemd:/x"]) + "\n")
        (proc / "mountinfo").write_text("\n".join(mounts) + "\n")
    else:
        (proc / "cgroup").write_text(f"0::{own}\n")
        (proc / "mountinfo").write_text(f"30 25 0:27 {mount_root} {mnt} rw,nosuid - cgroup2 cgroup2 rw\n")
    return proc


@contextmanager
def real_cgroup(controller: str, v1_files: dict[str, str], v2_files: dict[str, str]):
    """A real cgroup of this host's `controller` ("memory", "cpu") with the given files written.

    Yields a preexec_fn that moves a child process into it; the cgroup is
    removed afterwards. Skips (or fails under CI, see conftest.need) without root.
    """
    if os.geteuid() != 0:
        need(f"creating a {controller} cgroup needs root")
    own = Path("/proc/self/cgroup").read_text()
    v1 = any(controller in line.split(":")[1].split(",") for line in own.splitlines() if line.count(":") >= 2)
    path = Path(f"/sys/fs/cgroup/{controller}" if v1 else "/sys/fs/cgroup") / f"modelseal-test-{uuid.uuid4().hex[:8]}"
    try:
        path.mkdir()
    except OSError as exc:
        need(f"cannot create a {controller} cgroup at {path}: {exc}")
    try:
        for name, value in (v1_files if v1 else v2_files).items():
            if (path / name).exists():
                (path / name).write_text(value)

        procs = str(path / "cgroup.procs")  # computed here: enter runs in the forked child

        def enter() -> None:
            with open(procs, "w") as f:
                f.write(str(os.getpid()))

        yield enter
    finally:
        for _ in range(50):  # the last child may still be exiting
            try:
                path.rmdir()
                break
            except OSError:
                time.sleep(0.1)
