"""The modification detection code (RFC 4880 section 5.14): SHA-1 over the whole plaintext, checked at the end.

Plaintext is released as it is decrypted, before the MDC at the very end
can be checked (the point of streaming): `checked` holds back the last
piece until the MDC verifies and raises IntegrityError (exit 4) when it does
not, so a consumer reading to the end always meets the error before EOF.
"""

from __future__ import annotations

import hashlib
import hmac
import queue
import threading
from typing import Callable, Generator, Iterable

from ..errors import IntegrityError

MDC_LEN = 22  # 0xD3 0x14 + SHA-1
MDC_HEADER = b"\xd3\x14"


class Hasher:
    """SHA-1 in a thread of its own: hashlib releases the GIL while it hashes."""

    def __init__(self, depth: int = 4) -> None:
        self._h = hashlib.sha1()
        self._q: queue.Queue = queue.Queue(maxsize=depth)
        self._t = threading.Thread(target=self._run, name="modelseal-mdc", daemon=True)
        self._t.start()

    def _run(self) -> None:
        while (item := self._q.get()) is not None:
            self._h.update(item)

    def update(self, data) -> None:
        self._q.put(data)

    def digest(self) -> bytes:
        self.close()
        return self._h.digest()

    def close(self) -> None:
        if self._t.is_alive():
            self._q.put(None)
            self._t.join()


def checked(decrypted: Iterable[memoryview], prefix: int,
            verified: Callable[[], None]) -> Generator[memoryview, None, None]:
    """The packets inside the encrypted one, with the MDC checked before the last piece.

    decrypted is the whole decrypted body: a random prefix of `prefix` bytes
    (hashed, not passed on), the packets, the MDC packet. `verified` runs once
    the MDC matched, before the last piece is released; it may raise.
    """
    hasher = Hasher()
    skip = prefix
    try:
        pending: memoryview | None = None

        def release(view: memoryview) -> memoryview:
            nonlocal skip
            hasher.update(view)
            if skip:
                cut = min(skip, len(view))
                skip -= cut
                view = view[cut:]
            return view

        for chunk in decrypted:
            if pending is not None and len(chunk) < MDC_LEN:
                pending = memoryview(bytes(pending) + chunk)  # only at the very end
                continue
            if pending is not None:
                out = release(pending)
                if out:
                    yield out
            pending = memoryview(chunk)
        if pending is None or len(pending) < MDC_LEN or skip > len(pending) - MDC_LEN:
            raise IntegrityError("truncated: the encrypted data is too short to hold a message and its MDC")
        last, mdc = pending[:-MDC_LEN], bytes(pending[-MDC_LEN:])
        out = release(last)
        hasher.update(mdc[:2])
        digest = hasher.digest()
        if mdc[:2] != MDC_HEADER:
            raise IntegrityError("integrity check failed: no MDC packet at the end of the encrypted data "
                                 "(tampered, truncated or wrong passphrase)")
        if not hmac.compare_digest(digest, mdc[2:]):
            raise IntegrityError("integrity check failed: the MDC does not match "
                                 "(the message was modified or truncated)")
        verified()
        if out:
            yield out
    finally:
        hasher.close()
