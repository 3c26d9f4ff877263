"""The write-behind thread (overlap.WriteBehind) that run and unpack write files through.

Its promises: jobs run in order; a producer reusing a ring of buffers is
held back until every job queued from a buffer has run (so a write may keep
a view instead of a copy); after a failed job only fallbacks run (closing
descriptors, never writing) and the first error reaches the producer; and
a real extraction whose writes fail leaves nothing behind.
"""

from __future__ import annotations

import errno
import io
import os
import subprocess
import tarfile
import threading
import time
import uuid

import pytest

from conftest import SHM, need
from modelseal import unpack
from modelseal.errors import CapacityError
from modelseal.overlap import WriteBehind


def test_jobs_run_in_order_and_close_waits_for_them() -> None:
    done = []
    with WriteBehind(depth=3) as wb:
        for i in range(200):
            wb.put(lambda i=i: done.append(i))
    assert done == list(range(200))


def test_a_buffer_is_not_reused_while_a_job_still_holds_it() -> None:
    ring = 3
    bufs = [bytearray(4) for _ in range(ring)]
    seen: list[bytes] = []

    def produce():
        for i in range(30):
            buf = bufs[i % ring]
            buf[:] = i.to_bytes(4, "big")  # reusing the buffer of item i - ring
            yield memoryview(buf)

    with WriteBehind(depth=64) as wb:
        for view in wb.paced(produce(), ring):
            def slow(view=view, want=bytes(view)) -> None:
                time.sleep(0.002)  # the writer lags: without pacing the producer overwrites the view first
                seen.append(bytes(view) if bytes(view) == want else b"overwritten")
            wb.put(slow)
            wb.put(slow)  # two jobs per buffer, like two files' pieces in one segment
    assert b"overwritten" not in seen and len(seen) == 60


def test_after_a_failure_only_fallbacks_run_and_the_error_reaches_the_producer() -> None:
    ran, fell_back = [], []
    gate = threading.Event()
    wb = WriteBehind(depth=8)
    wb.put(lambda: gate.wait(5))

    def fail() -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    wb.put(fail, lambda: fell_back.append("failed one"))
    wb.put(lambda: ran.append("write"))
    wb.put(lambda: ran.append("close"), lambda: fell_back.append("close"))
    gate.set()
    with pytest.raises(OSError, match="No space"):
        wb.close()
    # The failing job's work cleaned up after itself (tree._finish_file closes in a finally): its own
    # fallback must not run too, or that descriptor number is closed twice.
    assert ran == [] and fell_back == ["close"]
    with pytest.raises(OSError):  # a later put: queued (its fallback runs), then the error is raised
        wb.put(lambda: ran.append("late"), lambda: fell_back.append("late"))


def test_extraction_whose_writes_fail_leaves_nothing() -> None:
    """ENOSPC on the write-behind thread: an exit-6 error at the next file or the end, the staging tree wiped."""
    if os.geteuid() != 0:
        need("mounting a small tmpfs needs root")
    root = SHM / f"modelseal-overlap-{uuid.uuid4().hex[:8]}"
    root.mkdir()
    try:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(root)], capture_output=True)
        need("" if mounted.returncode == 0 else f"cannot mount a tmpfs: {mounted.stderr.decode().strip()}")
        data = io.BytesIO()
        with tarfile.open(fileobj=data, mode="w", format=tarfile.PAX_FORMAT) as t:
            for i in range(3):
                info = tarfile.TarInfo(f"shard-{i}")
                info.size = 3 << 20
                t.addfile(info, io.BytesIO(os.urandom(info.size)))
        data.seek(0)
        with pytest.raises(CapacityError, match="writing"):
            unpack.extract(data, str(root / "model"))
        assert os.listdir(root) == []
    finally:
        if os.path.ismount(root):
            subprocess.run(["umount", str(root)], check=False)
        root.rmdir()
