"""The lifecycle every upload stream shares: complete on close(), abort on failure or neglect.

An upload (an S3 multipart upload, an OCI blob upload session) must never be
completed by accident: a `with` block that raises aborts it, and a stream
garbage-collected while still open aborts instead of letting
IOBase.__del__ call close() (which would complete a truncated object).
Subclasses define `_complete()` (send what is left and finish the object)
and `_discard()` (cancel their parts in flight and delete what the remote
side holds, best effort); close() and abort() here run them exactly once,
shut the part pool down either way, and turn any failure to complete into
an abort.
"""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor


class Upload(io.RawIOBase):
    _state = "open"  # then "done" or "aborted"
    _pool: ThreadPoolExecutor | None = None  # the parts in flight, when any were started

    def writable(self) -> bool:
        return True

    def _complete(self) -> None:
        raise NotImplementedError

    def _discard(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Complete the object; on any failure, abort and raise."""
        if self._state != "open":
            super().close()
            return
        try:
            self._complete()
            self._state = "done"
        except BaseException:
            self.abort()
            raise
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=False)
            super().close()

    def abort(self) -> None:
        """Drop the upload: the remote side keeps nothing, and nothing names it."""
        if self._state in ("done", "aborted"):
            return
        self._state = "aborted"
        try:
            self._discard()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)
            super().close()

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.abort()
        else:
            self.close()
        return False

    def __del__(self) -> None:
        try:
            if self._state == "open":
                self.abort()
        except Exception:  # noqa: BLE001
            pass
        super().__del__()
