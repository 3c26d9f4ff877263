"""Outputs that appear whole or not at all.

A stage writes `NAME.partial` and renames it to NAME only once every byte is
verified; any failure removes the partial file, so a consumer never sees a
half-written key, ciphertext or plaintext.
"""

from __future__ import annotations

import os
import sys
from types import TracebackType

PARTIAL_SUFFIX = ".partial"


class PartialFile:
    """A file written under NAME.partial, renamed to NAME by commit().

    `path == "-"` writes to stdout instead (no rename: the consumer must
    rely on our exit code).
    """

    def __init__(self, path: str, mode: int = 0o600) -> None:
        self.path = path
        self.stdout = path == "-"
        self.bytes_written = 0
        self._committed = False
        if self.stdout:
            self.partial = "-"
            self.fd = sys.stdout.fileno()
            return
        self.partial = path + PARTIAL_SUFFIX
        # A partial file left by a killed earlier attempt (a restarted init
        # container on the same emptyDir) is ours to replace.
        try:
            os.unlink(self.partial)
        except FileNotFoundError:
            pass
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        self.fd = os.open(self.partial, flags, mode)

    def write(self, data: bytes | bytearray | memoryview) -> int:
        view = memoryview(data).cast("B")
        total = len(view)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]
        self.bytes_written += total
        return total

    def commit(self) -> None:
        if self.stdout:
            sys.stdout.flush()
            self._committed = True
            return
        os.close(self.fd)
        self.fd = -1
        os.replace(self.partial, self.path)
        self._committed = True

    def abort(self) -> None:
        if self._committed or self.stdout:
            return
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        try:
            os.unlink(self.partial)
        except FileNotFoundError:
            pass

    def __enter__(self) -> "PartialFile":
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        if not self._committed:
            self.abort()


def remove_quietly(path: str) -> bool:
    """Delete a file we were told to consume (key, ciphertext); report success."""
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False
