"""A stream of a whole object from parallel ranged reads: the read side of s3://, gs:// and azblob://.

Why not an SDK's download to a file: it needs a seekable file to write
parts out of order, and `run` consumes a stream that goes straight into
decryption. Here the object comes as parts of `part_size` bytes fetched by
`concurrency` workers and handed out in order. Memory stays bounded: at most
`concurrency` parts in flight or waiting, plus the one being read, in
buffers reused for every part. Each part is one call of the backend's
`fetch`, which pins the version the download started with (an ETag, a
generation) and resumes a cut part from its last good byte.
"""

from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol

from ..connection import Connection
from . import Source, Stream


class Ranged(Protocol):
    """A backend whose objects are read by ranges of one pinned version."""

    part_size: int
    connection: Connection

    def head(self) -> tuple[int, str | None, str | None]:
        """(size, the pin every range must match: ETag or generation, a version id or None)."""
        ...

    def fetch(self, start: int, end: int, size: int, pin: str | None, version: str | None,
              cancel: threading.Event, into: memoryview | None = None) -> memoryview:
        """Bytes start..end (inclusive) of the pinned object, in `into`; retried, resuming a cut."""
        ...


class RangedSource(Source):
    """What every ranged backend (s3, gs, azblob) shares: the size and pin from head(), the prefix as one
    ranged read, the whole object as a RangedStream. A backend gives head() and fetch() (and part_size)."""

    PARALLEL_PARTS = True  # its stream holds `concurrency` parts in flight (placement, inject)
    part_size: int

    def head(self) -> tuple[int, str | None, str | None]:
        raise NotImplementedError

    def fetch(self, start: int, end: int, size: int, pin: str | None, version: str | None,
              cancel: threading.Event, into: memoryview | None = None) -> memoryview:
        raise NotImplementedError

    @property
    def size(self) -> int | None:
        return self.head()[0]

    @property
    def buffer_bytes(self) -> int:
        # The RangedStream: `concurrency` parts in flight plus the one being read.
        return (self.connection.concurrency + 1) * self.part_size

    def read_prefix(self, n: int) -> bytes:
        if n <= 0:
            return b""
        size, pin, version = self.head()
        n = min(n, size)
        if n == 0:
            return b""
        return bytes(self.fetch(0, n - 1, size, pin, version, threading.Event()))

    def open(self) -> Stream:
        return RangedStream(self, self.uri.scheme)


class RangedStream(Stream):
    """The whole object, in order, from parallel ranged reads of one pinned version; bounded memory."""

    def __init__(self, backend: Ranged, name: str) -> None:
        super().__init__()
        self.b = backend
        self.size, self._pin, self._version = backend.head()
        self._parts = -(-self.size // backend.part_size)  # ranges are computed as needed: no list of them
        self._window = max(1, min(backend.connection.concurrency, self._parts))
        self._cancel = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=self._window, thread_name_prefix=f"modelseal-{name}")
        self._pending: deque[tuple[Future, memoryview]] = deque()
        # window + 1 part buffers, reused: one per part in flight, one being read
        # (allocated as needed, never zeroed again, no allocator churn).
        self._free: list[memoryview] = []
        self._held: memoryview | None = None  # the buffer of the part being read
        self._next = 0
        self._cur = memoryview(b"")
        self._off = 0
        self.pos = 0
        self._fill_window()

    def readable(self) -> bool:
        return True

    def _fill_window(self) -> None:
        while len(self._pending) < self._window and self._next < self._parts:
            start = self._next * self.b.part_size
            end = min(start + self.b.part_size, self.size) - 1
            self._next += 1
            buf = self._free.pop() if self._free else memoryview(bytearray(self.b.part_size))
            self._pending.append((self._pool.submit(
                self.b.fetch, start, end, self.size, self._pin, self._version, self._cancel, buf), buf))

    def read_view(self, n: int) -> memoryview:
        """Up to n bytes (empty at the end) as a view of the current part, no copy: valid until the next read."""
        if self.closed:
            raise ValueError("read from a closed stream")
        while self._off >= len(self._cur):
            if not self._pending:
                return memoryview(b"")
            fut, buf = self._pending.popleft()
            self._cur = memoryview(b"")
            if self._held is not None:  # the consumed part's buffer takes the next range
                self._free.append(self._held)
            self._held = buf
            self._fill_window()
            try:
                part = fut.result()
            except BaseException:
                self.close()
                raise
            self._cur, self._off = part, 0
        k = min(n, len(self._cur) - self._off)
        out = self._cur[self._off:self._off + k]
        self._off += k
        self.pos += k
        return out

    def readinto(self, buf: Any) -> int:
        out = memoryview(buf).cast("B")
        if not len(out):
            return 0
        view = self.read_view(len(out))
        out[:len(view)] = view
        return len(view)

    def close(self) -> None:
        if not self.closed:
            self._cancel.set()
            for fut, _ in self._pending:
                fut.cancel()
            self._pending.clear()
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._cur = memoryview(b"")
        super().close()
