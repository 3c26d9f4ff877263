"""Reusable buffers for the OpenPGP pipeline, and the input read into them.

Nothing is allocated per chunk: fresh 1 MiB allocations would cost more
than decrypting (mmap and page faults for every chunk). A buffer is reused
only once no view of it is left anywhere, so a chunk the consumer keeps is
never overwritten.
"""

from __future__ import annotations

import collections
from typing import Iterator

from ..streaming import Readable

CHUNK = 1 << 20  # plaintext/ciphertext chunk size
READ = 1 << 16  # input read size: small reads into hot buffers cost a third of 1 MiB reads
MAX_POOL = 64  # buffers per pool before falling back to plain allocation

EMPTY = memoryview(b"")


class Pool:
    """Buffers of one size, reused once nothing refers to them any more.

    A bytearray with a live memoryview cannot be resized, so a trial resize
    tells whether any view of it (in a queue, a thread, the consumer's hands)
    is left: a buffer is only reused when none is, and the pool simply grows
    while the consumer holds on to chunks.
    """

    __slots__ = ("size", "_bufs")

    def __init__(self, size: int = CHUNK) -> None:
        self.size = size
        self._bufs: collections.deque[bytearray] = collections.deque()

    def get(self) -> bytearray:
        bufs = self._bufs
        for _ in range(len(bufs)):
            buf = bufs[0]
            bufs.rotate(-1)
            try:
                buf.append(0)
                buf.pop()
            except BufferError:  # still referenced
                continue
            return buf
        buf = bytearray(self.size)
        buf.append(0)  # leave spare capacity, so the trial resize never reallocates
        buf.pop()
        if len(bufs) < MAX_POOL:
            bufs.append(buf)
        return buf


def read_chunks(src: Readable) -> Iterator[memoryview]:
    """The raw input in pieces of READ bytes (full reads, short only at EOF)."""
    pool = Pool(READ)
    while True:
        view = memoryview(pool.get())
        got = 0
        while got < READ:
            n = src.readinto(view[got:READ])
            if not n:
                break
            got += n
        if not got:
            return
        yield view[:got]
