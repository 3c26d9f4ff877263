"""Parallel segment decryption: N worker processes decrypt N segments, one thread keeps the order.

Once the streaming header is read, segments are independent: segment i
needs only the derived key, the nonce prefix, i and whether it is the last.
The parent reads ciphertext straight into slots of one shared memory file
(memfd_create: no filesystem, nothing to clean up, charged to this
container's memory cgroup like any page we touch), hands slot numbers to the
workers over pipes, and releases plaintext strictly in order, each segment
only once its own worker has reported that its tag verified. A failed tag
stops every worker, scrubs every slot and raises before anything after the
failing segment is released.

Processes, not threads: in cryptography 48, AESGCM.decrypt_into holds the
GIL for the whole call (measured: two threads decrypting 1 MiB segments use
0.99 CPU-seconds per wall second together, where two threads hashing with
hashlib use 1.98), so threads would decrypt one at a time. Workers are
spawned (a fresh interpreter that imports only this module and
cryptography), never forked: by the time the header is read the process may
have threads inside OpenSSL (S3 and https sources), and a forked child could
inherit their locks held.

A worker holds the stream key, so nothing in its environment may choose
its code: it runs isolated (`python -I`: no PYTHONPATH, PYTHONSTARTUP or
other PYTHON* variable, no user site-packages, and neither the working
directory nor a script's directory on sys.path) and is told the directories
this process imported modelseal and cryptography from, which go ahead of
the interpreter's own path. It so runs the very library its parent runs
(an installed one, an editable one, or a copy first on PYTHONPATH), and a
`modelseal/` or `cryptography/` planted in the working directory is never
imported.

Each worker costs a Python interpreter (8.7 MiB of private memory,
measured), two segments of shared memory, and its start (about 60 ms of
CPU, bench/scaling.py); on a machine where one core decrypts
much faster than tmpfs takes the writes (AES-GCM at 8-11 GB/s here, tmpfs at
about 3 GB/s) the gain is nil, so the default stays in process until enough
cores are free for the reader, the writer and at least two workers.
"""

from __future__ import annotations

import math
import mmap
import os
import signal
import struct
import sys

from .errors import ModelsealError
from .placement import cgroup

#: Most workers by default: one writer takes at most ~3 GB/s into tmpfs, and
#: even a slow core decrypts over 1 GB/s, so more cores than this only cost memory.
MAX_DEFAULT_WORKERS = 8
#: Private memory one worker adds, for sizing: measured 8.7 MiB (RssAnon; its
#: libraries are the parent's page cache), rounded up with headroom.
WORKER_PRIVATE = 14 << 20


def slots(workers: int, ring: int, read_ahead: int) -> int:
    """Segments alive at once, each a slot of the shared memory (ciphertext + plaintext).

    `read_ahead` + 3 read but not yet handed out (the look-ahead), one in
    each worker, and the `ring` the consumer holds.
    """
    return workers + ring + read_ahead + 3


def memory(workers: int, segment_size: int = 1 << 20, ring: int = 4, read_ahead: int = 2) -> int:
    """What `workers` decryption workers add to a stage's memory (none in process).

    The defaults are what decrypt and unpack ask of the reader (a ring of 4,
    a read-ahead of 2).
    """
    if workers <= 1:
        return 0
    return slots(workers, ring, read_ahead) * 2 * segment_size + workers * WORKER_PRIVATE


_CMD = struct.Struct(">IIBI")  # slot, segment index, last flag, ciphertext length
_RESULT = struct.Struct(">IB")  # segment index, 1 = tag verified


def available_cpus() -> float:
    """CPUs this process may use: its affinity mask, capped by the cgroup CPU quota."""
    try:
        cpus: float = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    quota = cgroup.cpu_quota()
    return min(cpus, quota) if quota is not None else cpus


def default_workers(cpus: float | None = None) -> int:
    """1 (decrypt in this process) unless there are cores beyond the reader's and the writer's.

    Reading and writing each keep about one core busy (they release the GIL);
    the cores left, rounded down, decrypt; a single worker process would only
    add its start-up and hand-offs to what this process does itself.
    """
    cpus = available_cpus() if cpus is None else cpus
    spare = math.floor(cpus + 1e-9) - 2
    return 1 if spare < 2 else min(spare, MAX_DEFAULT_WORKERS)


#: A worker's first line: the library's directories (argv 1 and 2) ahead of the isolated sys.path, then its loop.
_BOOT = ("import sys; sys.path[:0] = [p for p in sys.argv[1:3] if p not in sys.path]; "
         "from modelseal.parallel import main; main(sys.argv[3:])")


def _library_roots() -> list[str]:
    """The sys.path entries this process imported modelseal and cryptography from."""
    import cryptography

    return [os.path.dirname(os.path.dirname(os.path.abspath(f))) for f in (__file__, cryptography.__file__)]


def worker_command(*args: str) -> list[str]:
    """The argv of a worker: an isolated interpreter that imports the library this process runs."""
    flags = "-IB" if sys.dont_write_bytecode else "-I"  # -B as here: a read-only image writes no byte-code
    return [sys.executable, flags, "-c", _BOOT, *_library_roots(), *args]


class WorkerError(ModelsealError):
    """A worker process died or stopped answering (killed, out of memory): not the input's fault."""


class Pool:
    """N spawned workers over one shared memory file of `slots` slots (ciphertext + plaintext each)."""

    def __init__(self, workers: int, slots: int, segment_size: int, key: bytes, nonce_prefix: bytes) -> None:
        self.workers = workers
        self.segment_size = segment_size
        self.slot_size = 2 * segment_size
        self._procs: list = []  # subprocess.Popen
        self._cmd: list[int] = []
        self._res: list[int] = []
        fd = os.memfd_create("modelseal-segments", os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, slots * self.slot_size)
            self._map = mmap.mmap(fd, slots * self.slot_size)
            self._view = memoryview(self._map)
            for _ in range(workers):
                self._spawn(fd, slots, key, nonce_prefix)
        except BaseException:
            self.close(failed=True)
            raise
        finally:
            os.close(fd)

    def _spawn(self, mem_fd: int, slots: int, key: bytes, nonce_prefix: bytes) -> None:
        import subprocess  # here, not at the top: every decrypt and run imports this module for --workers

        cmd_r, cmd_w = os.pipe()
        res_r, res_w = os.pipe()
        try:
            proc = subprocess.Popen(
                worker_command(str(cmd_r), str(res_w), str(mem_fd), str(slots), str(self.segment_size)),
                pass_fds=(cmd_r, res_w, mem_fd), stdin=subprocess.DEVNULL, close_fds=True)
        finally:
            os.close(cmd_r)
            os.close(res_w)
        self._procs.append(proc)
        self._cmd.append(cmd_w)
        self._res.append(res_r)
        # The key goes over the pipe (never argv or the environment, which ps and /proc show).
        _write_all(cmd_w, struct.pack(">B", len(key)) + key + nonce_prefix)

    def ciphertext(self, slot: int) -> memoryview:
        base = slot * self.slot_size
        return self._view[base:base + self.segment_size]

    def plaintext(self, slot: int, length: int) -> memoryview:
        base = slot * self.slot_size + self.segment_size
        return self._view[base:base + length]

    def submit(self, slot: int, index: int, last: bool, length: int) -> None:
        """Segment `index` (in `slot`) to worker index % N: each worker answers in the order it was asked."""
        w = index % self.workers
        try:
            _write_all(self._cmd[w], _CMD.pack(slot, index, 1 if last else 0, length))
        except BrokenPipeError:
            raise self._dead(w) from None

    def result(self, index: int) -> bool:
        """Whether segment `index`'s tag verified (blocks until its worker answers)."""
        w = index % self.workers
        data = _read_exact(self._res[w], _RESULT.size)
        if len(data) < _RESULT.size:  # its end of the pipe closed: it has exited, or is exiting
            raise self._dead(w)
        got, ok = _RESULT.unpack(data)
        if got != index:  # pragma: no cover - a bug, not an input
            raise WorkerError(f"decryption worker {w} answered for segment {got}, expected {index}")
        return ok == 1

    def _dead(self, w: int) -> WorkerError:
        import subprocess

        try:
            code = self._procs[w].wait(5)
        except subprocess.TimeoutExpired:
            code = None
        how = "stopped answering" if code is None else (
            f"was killed by signal {-code}" if code < 0 else f"exited with status {code}")
        return WorkerError(f"decryption worker {w} {how} (out of memory? see --workers)")

    def scrub(self) -> None:
        """Zero every slot: unverified or abandoned plaintext never stays in memory."""
        step = 1 << 20
        zero = bytes(step)
        for off in range(0, len(self._view), step):
            n = min(step, len(self._view) - off)
            self._view[off:off + n] = zero[:n]

    def close(self, failed: bool = False) -> None:
        """Stop the workers: at once when `failed`, else let them read EOF and exit."""
        import subprocess

        for fd in self._cmd:
            os.close(fd)
        self._cmd = []
        for proc in self._procs:
            if failed and proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
        for proc in self._procs:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._procs = []
        for fd in self._res:
            os.close(fd)
        self._res = []


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _read_exact(fd: int, n: int) -> bytes:
    parts = []
    got = 0
    while got < n:
        chunk = os.read(fd, n - got)
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def _worker(cmd_fd: int, res_fd: int, mem_fd: int, slots: int, segment_size: int) -> None:
    """A worker: read the key, then decrypt the segments it is given until its pipe closes."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    head = _read_exact(cmd_fd, 1)
    if not head:
        return
    key = _read_exact(cmd_fd, head[0])
    prefix = _read_exact(cmd_fd, 7)
    aead = AESGCM(key)
    del key
    mem = mmap.mmap(mem_fd, slots * 2 * segment_size)
    view = memoryview(mem)
    while True:
        cmd = _read_exact(cmd_fd, _CMD.size)
        if len(cmd) < _CMD.size:
            return
        slot, index, last, length = _CMD.unpack(cmd)
        base = slot * 2 * segment_size
        ct = view[base:base + length]
        pt = view[base + segment_size:base + segment_size + length - 16]
        try:
            aead.decrypt_into(prefix + struct.pack(">IB", index, last), ct, None, pt)
            ok = 1
        except InvalidTag:
            pt[:] = bytes(len(pt))
            ok = 0
        _write_all(res_fd, _RESULT.pack(index, ok))


def main(argv: list[str]) -> None:
    """A worker process's entry (worker_command): the five numbers of _worker."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when workers stop
    _worker(*(int(a) for a in argv[:5]))
