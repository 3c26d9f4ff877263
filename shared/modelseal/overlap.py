"""Overlapping I/O with computation: a background writer and a read-ahead.

`os.read`/`os.write` release the GIL while AES-GCM (in `cryptography`) does
not, so reading the next segment and writing the last one from other threads
lets them run on another core while this one decrypts: the difference between
about half and about the speed of `dd` on the same tmpfs.
"""

from __future__ import annotations

import queue
import threading
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")

_STOP = object()


class BackgroundWriter:
    """Queues views to `write` in a thread; `depth` views may be in flight.

    The producer must keep each view unchanged until `depth + 1` later puts
    (DecryptingReader.segments(ring=depth + 2) guarantees that).
    """

    def __init__(self, write: Callable[[memoryview], object], depth: int = 2) -> None:
        self.depth = depth
        self._write = write
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="modelseal-writer", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            if self._error is None:
                try:
                    self._write(item)
                except BaseException as exc:  # handed to the producer on its next call
                    self._error = exc

    def write(self, view: memoryview) -> None:
        if self._error is not None:
            self.close()
        self._queue.put(view)

    def close(self) -> None:
        """Wait for every queued write; re-raise the first write error."""
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join()
        if self._error is not None:
            raise self._error

    def __enter__(self) -> "BackgroundWriter":
        return self

    def __exit__(self, et, ev, tb) -> None:
        if et is None:
            self.close()
        else:  # stop the thread, keep the original exception
            try:
                self.close()
            except BaseException:
                pass


def read_ahead(items: Iterable[T], depth: int) -> Iterator[T]:
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
