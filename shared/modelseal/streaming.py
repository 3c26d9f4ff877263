"""Tink's AES-GCM-HKDF streaming AEAD, byte for byte.

Written here rather than taken from tink-py because tink-py's streaming
decrypt goes through Python file adapters with copies at every step and does
not let us keep the buffers we need for constant memory; the format itself is
small and fully specified (docs/FORMAT.md), and the tests check it against
Tink's published vectors and against tink-py as an oracle.

Ciphertext = header || segment_0 || ... || segment_n, where
  header    = header_size (1 byte) || salt (key_size bytes) || nonce prefix (7 bytes)
  key       = HKDF(hash, ikm, salt, info=associated data, length=key_size)
  segment_i = AES-GCM(key, nonce_prefix || uint32_be(i) || last, plaintext_i), no AAD
Segment 0 is shorter by the header; only the final segment has last = 1, so
truncation, reordering and appended segments all fail authentication.
"""

from __future__ import annotations

import io
import os
import struct
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Generator, Iterator, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from . import overlap
from .errors import IntegrityError, UsageError

TAG_SIZE = 16
NONCE_PREFIX_SIZE = 7
MAX_SEGMENTS = 2**32

_HASHES: dict[str, Callable[[], hashes.HashAlgorithm]] = {
    "SHA1": hashes.SHA1,
    "SHA224": hashes.SHA224,
    "SHA256": hashes.SHA256,
    "SHA384": hashes.SHA384,
    "SHA512": hashes.SHA512,
}


@dataclass(frozen=True)
class Params:
    """Streaming parameters; `.seal` always uses AES256_GCM_HKDF_1MB."""

    key_size: int = 32  # derived AES key size, and the salt size
    hkdf_hash: str = "SHA256"
    segment_size: int = 1 << 20

    def __post_init__(self) -> None:
        if self.key_size not in (16, 32):
            raise UsageError(f"unsupported derived key size {self.key_size}")
        if self.hkdf_hash not in _HASHES:
            raise UsageError(f"unsupported HKDF hash {self.hkdf_hash}")
        if self.segment_size <= self.header_size + TAG_SIZE or self.segment_size > 1 << 30:
            raise UsageError(f"unsupported segment size {self.segment_size}")

    @property
    def header_size(self) -> int:
        return 1 + self.key_size + NONCE_PREFIX_SIZE

    @property
    def first_plaintext_size(self) -> int:
        return self.segment_size - self.header_size - TAG_SIZE

    @property
    def plaintext_size(self) -> int:
        return self.segment_size - TAG_SIZE

    def ciphertext_size(self, plaintext_size: int) -> int:
        """Exact ciphertext length for a plaintext length (as Tink writes it)."""
        rest = max(0, plaintext_size - self.first_plaintext_size)
        extra_segments = -(-rest // self.plaintext_size)
        return self.header_size + plaintext_size + TAG_SIZE * (1 + extra_segments)

    def plaintext_size_of(self, ciphertext_size: int) -> int | None:
        """The plaintext length a well-formed stream of this length decrypts to (None: malformed)."""
        rest = ciphertext_size - self.header_size
        if rest < TAG_SIZE:
            return None
        first = self.segment_size - self.header_size
        segments = 1 + -(-max(0, rest - first) // self.segment_size)
        plain = rest - TAG_SIZE * segments
        last = rest - first - (segments - 2) * self.segment_size if segments > 1 else rest
        if plain < 0 or last < TAG_SIZE:
            return None
        return plain


AES256_GCM_HKDF_1MB = Params()


def _derive(ikm: bytes, salt: bytes, aad: bytes, params: Params) -> bytes:
    hkdf = HKDF(algorithm=_HASHES[params.hkdf_hash](), length=params.key_size, salt=salt, info=aad)
    return hkdf.derive(ikm)


def _segment_key(ikm: bytes, salt: bytes, aad: bytes, params: Params) -> AESGCM:
    return AESGCM(_derive(ikm, salt, aad, params))


#: Segments smaller than this are read on the decrypting thread (see DecryptingReader._read).
READ_AHEAD_MIN_SEGMENT = 64 << 10


def _numbered(raw: Iterator[memoryview]) -> Iterator[tuple[int, bool, memoryview]]:
    """(index, last, ciphertext) of each segment: one segment of look-ahead decides the last flag.

    The next segment is read before this one is handed on, so a truncation
    at a segment boundary is caught by the flag, never by a missing byte.
    """
    held, index = next(raw, None), 0
    while held is not None:
        following = next(raw, None)
        yield index, following is None, held
        held, index = following, index + 1


class Readable(Protocol):
    """What the readers here read from: readinto, as files, sockets and the sources' Streams have."""

    def readinto(self, buffer: Any, /) -> int | None: ...


class Writable(Protocol):
    """What the writers here write to."""

    def write(self, data: Any, /) -> int | None: ...


def _nonce(prefix: bytes, index: int, last: bool) -> bytes:
    return prefix + struct.pack(">IB", index, 1 if last else 0)


def _read_full(src: Readable, buf: memoryview) -> int:
    """Fill buf from src, short only at EOF."""
    got = 0
    size = len(buf)
    while got < size:
        n = src.readinto(buf[got:])
        if not n:
            break
        got += n
    return got


class EncryptingWriter(io.RawIOBase):
    """A writable stream that encrypts into `out` segment by segment.

    Holds one plaintext and one ciphertext segment, reused for every segment.
    A full buffer is only sealed when more data arrives, so the final segment
    may be full-size, exactly as Tink's encrypter does.
    """

    def __init__(
        self,
        out: Writable,
        ikm: bytes,
        associated_data: bytes,
        params: Params = AES256_GCM_HKDF_1MB,
        *,
        salt: bytes | None = None,
        nonce_prefix: bytes | None = None,
    ) -> None:
        super().__init__()
        self._out = out
        self._params = params
        salt = os.urandom(params.key_size) if salt is None else salt
        self._prefix = os.urandom(NONCE_PREFIX_SIZE) if nonce_prefix is None else nonce_prefix
        if len(salt) != params.key_size or len(self._prefix) != NONCE_PREFIX_SIZE:
            raise UsageError("bad salt or nonce prefix size")
        self._aead = _segment_key(ikm, salt, associated_data, params)
        self._pt = bytearray(params.plaintext_size)
        self._ct = bytearray(params.segment_size)
        self._fill = 0
        self._cap = params.first_plaintext_size
        self._index = 0
        self.plaintext_bytes = 0
        self.ciphertext_bytes = 0
        self._emit(bytes([params.header_size]) + salt + self._prefix)

    def writable(self) -> bool:
        return True

    def _emit(self, data: bytes | memoryview) -> None:
        self._out.write(data)
        self.ciphertext_bytes += len(data)

    def _seal_segment(self, last: bool) -> None:
        if self._index >= MAX_SEGMENTS:
            raise UsageError("plaintext too large for the streaming format")
        n = self._fill
        ct = memoryview(self._ct)[: n + TAG_SIZE]
        self._aead.encrypt_into(_nonce(self._prefix, self._index, last), memoryview(self._pt)[:n], None, ct)
        self._emit(ct)
        self._index += 1
        self._fill = 0
        self._cap = self._params.plaintext_size

    def write(self, data: Any) -> int:
        if self.closed:
            raise ValueError("write to a closed EncryptingWriter")
        view = memoryview(data).cast("B")
        total = len(view)
        while view:
            if self._fill == self._cap:
                self._seal_segment(last=False)
            take = min(self._cap - self._fill, len(view))
            self._pt[self._fill : self._fill + take] = view[:take]
            self._fill += take
            view = view[take:]
        self.plaintext_bytes += total
        return total

    def close(self) -> None:
        """Seal the final segment. Does not close `out`."""
        if not self.closed:
            self._seal_segment(last=True)
            self._pt[:] = bytes(len(self._pt))
        super().close()


class ChunkReader(io.RawIOBase):
    """A raw stream over `segments()`, a generator of plaintext views.

    Decryptors implement `segments()` (the fast path: views written straight
    out); `readinto` serves everything else (tarfile, zipfile, copies).
    """

    def __init__(self) -> None:
        super().__init__()
        self._iter: Generator[memoryview, None, None] | None = None
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def segments(self, ring: int = 1, read_ahead: int = 2) -> Generator[memoryview, None, None]:
        raise NotImplementedError

    def worker_memory(self) -> int:
        """What this decryptor's worker processes add to the stage's memory (for the preflight): none here."""
        return 0

    def readinto(self, buf: Any) -> int:
        if self._iter is None:
            self._iter = self.segments()
        while not self._pending:
            try:
                self._pending = next(self._iter)
            except StopIteration:
                return 0
        n = min(len(buf), len(self._pending))
        memoryview(buf).cast("B")[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def close(self) -> None:
        """Stop a generator (and its threads) that the consumer gave up on."""
        if self._iter is not None:
            self._iter.close()
        super().close()


class DecryptingReader(ChunkReader):
    """A readable stream of verified plaintext from a Tink ciphertext stream.

    Reads one segment ahead so the final segment (the one followed by EOF) can
    be checked with its last flag; no byte of a segment is released before its
    tag verifies. `segments()` yields the plaintext of each segment in turn
    (a view valid until the next one) for consumers that write it straight out.
    """

    def __init__(
        self,
        src: Readable,
        ikm: bytes,
        associated_data: bytes,
        params: Params = AES256_GCM_HKDF_1MB,
        workers: int = 1,
    ) -> None:
        super().__init__()
        self._src = src
        self._params = params
        self.workers = workers  # > 1: that many worker processes decrypt (modelseal.parallel)
        self._ikm = ikm
        self._aad = associated_data
        self.associated_data_size = len(associated_data)
        self.plaintext_bytes = 0
        self.segments_read = 0

    def worker_memory(self) -> int:
        """What the decryption workers add to the stage's memory (for the preflight)."""
        from . import parallel

        return parallel.memory(self.workers, self._params.segment_size)

    def _header(self) -> tuple[AESGCM, bytes, bytes]:
        p = self._params
        head = bytearray(p.header_size)
        n = _read_full(self._src, memoryview(head))
        if n == 0:
            raise IntegrityError("empty input: no streaming ciphertext header")
        if head[0] != p.header_size:
            raise IntegrityError(f"bad streaming header: header length byte {head[0]}, expected {p.header_size}")
        if n < p.header_size:
            raise IntegrityError("truncated: input ends inside the streaming header")
        salt = bytes(head[1 : 1 + p.key_size])
        prefix = bytes(head[1 + p.key_size :])
        key = _derive(self._ikm, salt, self._aad, p)
        return AESGCM(key), key, prefix

    def _ciphertext_segments(self, bufs: list[memoryview]) -> Generator[memoryview, None, None]:
        """Raw segments as read, each a view into the next of `bufs` (segment-sized,
        used in turn); the final one is the first that comes back short (or the last before EOF)."""
        p = self._params
        cap = p.segment_size - p.header_size
        index = 0
        while True:
            view = bufs[index % len(bufs)][:cap]
            n = _read_full(self._src, view)
            if n == 0 and index > 0:
                return
            if n < TAG_SIZE:
                raise IntegrityError(f"truncated: segment {index} is {n} bytes, shorter than a tag")
            yield view[:n]
            if n < cap:
                return
            cap = p.segment_size
            index += 1
            if index >= MAX_SEGMENTS:
                raise IntegrityError("too many segments")

    def segments(self, ring: int = 1, read_ahead: int = 2) -> Generator[memoryview, None, None]:
        """Yield each segment's verified plaintext.

        A view stays valid until `ring` more segments have been yielded, so a
        consumer may hand `ring - 1` of them to a background writer. With
        `read_ahead` > 0 the ciphertext is read that many segments ahead in a
        thread (reads release the GIL; AES-GCM does not). With `workers` > 1
        the segments are decrypted by that many worker processes
        (modelseal.parallel), released in order.
        """
        p = self._params
        aead, key, prefix = self._header()
        if self.workers > 1:
            yield from self._parallel(aead, key, prefix, max(1, ring), read_ahead)
            return
        outs = [bytearray(p.plaintext_size) for _ in range(max(1, ring))]
        raw = self._read(read_ahead, [memoryview(bytearray(p.segment_size)) for _ in range(read_ahead + 3)])
        try:
            for index, last, held in _numbered(raw):
                plain = memoryview(outs[index % len(outs)])[: len(held) - TAG_SIZE]
                try:
                    aead.decrypt_into(_nonce(prefix, index, last), held, None, plain)
                except InvalidTag:
                    raise IntegrityError(self._explain(aead, prefix, index, last, held, plain)) from None
                self.segments_read += 1
                self.plaintext_bytes += len(plain)
                yield plain
        except BaseException:
            # On failure (or an abandoned read) scrub what we hold; on success the
            # views may still be queued for writing, so they are left alone.
            for out in outs:
                out[:] = bytes(len(out))
            raise
        finally:
            raw.close()

    def _read(self, read_ahead: int, bufs: list[memoryview]) -> Generator[memoryview, None, None]:
        raw = self._ciphertext_segments(bufs)
        # A thread hand-off per segment costs more than reading a small one
        # (Tink's 4 KiB template: 145 MB/s with read-ahead, 831 MB/s without).
        if read_ahead > 0 and self._params.segment_size >= READ_AHEAD_MIN_SEGMENT:
            return overlap.read_ahead(raw, read_ahead)
        return raw

    def _parallel(self, aead: AESGCM, key: bytes, prefix: bytes, ring: int, read_ahead: int) -> Iterator[memoryview]:
        """segments() with worker processes: N segments in flight, released in order once verified.

        Slot s of the shared memory holds segment i = s (mod slots), one slot
        for each segment that may be alive at once (parallel.slots).
        """
        from . import parallel

        p = self._params
        n = self.workers
        slots = parallel.slots(n, ring, read_ahead)
        pool = parallel.Pool(n, slots, p.segment_size, key, prefix)
        raw = self._read(read_ahead, [pool.ciphertext(s) for s in range(slots)])
        failed = True
        try:
            inflight: deque[tuple[int, bool, memoryview]] = deque()  # (index, last, ciphertext view)

            def verified() -> memoryview:
                i, last, ct = inflight.popleft()
                plain = pool.plaintext(i % slots, len(ct) - TAG_SIZE)
                if not pool.result(i):
                    raise IntegrityError(self._explain(aead, prefix, i, last, ct, plain))
                self.segments_read += 1
                self.plaintext_bytes += len(plain)
                return plain

            for index, last, held in _numbered(raw):
                pool.submit(index % slots, index, last, len(held))
                inflight.append((index, last, held))
                if len(inflight) == n:  # every worker busy: release the oldest once it verified
                    yield verified()
            while inflight:
                yield verified()
            failed = False
        finally:
            raw.close()
            pool.close(failed=failed)
            if failed:  # an error or an abandoned read: nothing decrypted stays in memory
                pool.scrub()

    @staticmethod
    def _explain(aead: AESGCM, prefix: bytes, index: int, last: bool, ct: memoryview, scratch: memoryview) -> str:
        """Name the failure: only on the error path do we try the other last flag.

        That trial may authenticate (a truncated or extended stream): its
        plaintext goes into the failed segment's own buffer and is zeroed.
        """
        try:
            aead.decrypt_into(_nonce(prefix, index, not last), ct, None, scratch)
        except InvalidTag:
            if index == 0:
                return ("segment 0 failed authentication: wrong key or associated data, or the header or first segment "
                        "was tampered with")
            return f"segment {index} failed authentication: tampered, reordered or duplicated segment"
        finally:
            scratch[:] = bytes(len(scratch))
        if last:
            return f"truncated: the stream ends after segment {index}, which is not the final segment"
        return f"unexpected data after the final segment {index}"
