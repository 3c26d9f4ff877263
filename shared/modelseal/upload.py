"""The lifecycle every upload stream shares: complete on close(), abort on failure or neglect.

An upload (an S3 multipart upload, an OCI blob upload session) must never be
completed by accident: a `with` block that raises aborts it, and a stream
garbage-collected while still open aborts instead of letting
IOBase.__del__ call close() (which would complete a truncated object).
Subclasses set `_state` ("open" until close() or abort() runs) and define
close() and abort().
"""

from __future__ import annotations

import io


class Upload(io.RawIOBase):
    _state = "open"

    def writable(self) -> bool:
        return True

    def abort(self) -> None:
        raise NotImplementedError

    def __exit__(self, exc_type, exc, tb):  # type: ignore[no-untyped-def]
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
