"""Overlapping I/O with computation: a write-behind thread and a read-ahead.

`os.read`/`os.write` release the GIL while AES-GCM (in `cryptography` 48)
does not (measured: two threads calling AESGCM.decrypt_into run at the speed
of one, 0.99 CPU-seconds per wall second; two threads hashing with hashlib
use 1.98), so reading the next segment and writing the last one from other
threads lets them run on another core while this one decrypts and parses:
writes to tmpfs (page allocation and a copy, about 3 GB/s here) are the
slowest step, and they leave the main thread.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from typing import Callable, Generator, Iterable, Self, TypeVar

T = TypeVar("T")

_STOP = object()

Job = Callable[[], object]


class WriteBehind:
    """Runs jobs in order on one thread, behind the thread that queues them.

    A job is `work`, with an optional `fallback`: once a job has failed, the
    jobs after it run only their fallback (closing what they hold, never
    writing); a job whose work fails cleans up in its work, and its own
    fallback does not run. The first error is raised in the producer at its next
    `put` or at `close`. At most `depth` jobs wait (one more may be running).

    `paced(buffers, ring)` hands out the views of a producer that reuses a
    ring of `ring` buffers (DecryptingReader.segments(ring=...)) and holds
    each pull back until every job queued while the buffer about to be
    reused was current has run, so a job may keep a view of the buffer it
    was handed instead of a copy.
    """

    def __init__(self, depth: int = 128, name: str = "modelseal-writer") -> None:
        self.depth = depth
        self._jobs: deque[tuple[Job, Job | None]] = deque()
        self._cond = threading.Condition()
        self._queued = 0  # jobs put so far
        self._done = 0  # jobs finished (run, fallen back or skipped) so far
        self._error: BaseException | None = None
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._jobs and not self._stopping:
                    self._cond.wait()
                if not self._jobs:
                    return
                work, fallback = self._jobs.popleft()
                self._cond.notify_all()  # room for the producer
                failed = self._error is not None
            try:
                if not failed:
                    work()
                elif fallback is not None:
                    fallback()
            except BaseException as exc:  # handed to the producer at its next put or close
                # A failing job's own work cleans up after itself (tree._finish_file
                # closes its descriptor in a finally): running its fallback too would
                # close that number twice, by then perhaps another thread's new file.
                if not failed:
                    with self._cond:
                        self._error = exc
            with self._cond:
                self._done += 1
                self._cond.notify_all()

    def put(self, work: Job, fallback: Job | None = None, *, check: bool = True) -> None:
        """Queue a job (always: its fallback runs even after an error), then raise an earlier job's error."""
        with self._cond:
            while len(self._jobs) >= self.depth:
                self._cond.wait()
            self._jobs.append((work, fallback))
            self._queued += 1
            self._cond.notify_all()
            error = self._error
        if check and error is not None:
            raise error

    def _wait_for(self, count: int) -> None:
        with self._cond:
            while self._done < count:
                self._cond.wait()

    def paced(self, buffers: Iterable[T], ring: int) -> Generator[T, None, None]:
        """`buffers`' items, each pulled only once the buffer it reuses is no longer queued (see the class)."""
        if ring < 2:
            raise ValueError("a paced ring needs at least two buffers")
        it = iter(buffers)
        marks: deque[int] = deque()  # jobs queued before each of the last ring - 1 pulls
        while True:
            while len(marks) >= ring - 1:
                self._wait_for(marks.popleft())
            marks.append(self._queued)
            try:
                item = next(it)
            except StopIteration:
                return
            yield item

    def close(self) -> None:
        """Wait for every queued job; re-raise the first error."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join()
        if self._error is not None:
            raise self._error

    def __enter__(self) -> Self:
        return self

    def __exit__(self, et, ev, tb) -> None:
        if et is None:
            self.close()
        else:  # stop the thread, keep the original exception
            try:
                self.close()
            except BaseException:
                pass


class BackgroundWriter(WriteBehind):
    """Queues views to `write` in a thread; `depth` views may wait, one more may be written.

    The producer must keep each view unchanged until `depth + 1` later puts
    (DecryptingReader.segments(ring=depth + 2) guarantees that).
    """

    def __init__(self, write: Callable[[memoryview], object], depth: int = 2) -> None:
        super().__init__(depth)
        self._write = write

    def write(self, view: memoryview) -> None:
        write = self._write
        self.put(lambda: write(view))


def read_ahead(items: Iterable[T], depth: int) -> Generator[T, None, None]:
    """Iterate `items` in a background thread, up to `depth` items ahead.

    The producer must not reuse an item's memory until `depth + 2` later
    items have been produced (the consumer holds two: look-ahead).
    Exceptions in the producer are raised in the consumer, in order.
    """
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(entry: tuple) -> bool:
        while not stop.is_set():
            try:
                q.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False  # the consumer went away

    def produce() -> None:
        try:
            for item in items:
                if not put((item, None)):
                    return
            put((_STOP, None))
        except BaseException as exc:
            put((_STOP, exc))

    thread = threading.Thread(target=produce, name="modelseal-reader", daemon=True)
    thread.start()
    try:
        while True:
            item, exc = q.get()
            if item is _STOP:
                if exc is not None:
                    raise exc
                return
            yield item
    finally:
        stop.set()
