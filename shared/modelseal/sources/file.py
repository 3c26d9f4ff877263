"""`file:///path`, a plain path, or `-` for stdin (stdout when written): the image-baked ciphertext."""

from __future__ import annotations

import io
import os
from typing import Any

from ..atomic import PartialFile
from ..connection import Connection
from ..upload import Upload
from ..uri import URI
from . import Source, Stream

SCHEMES = ("file",)


class LocalFile(io.FileIO, Stream):
    """A local file (or a descriptor, for stdin), read as any backend's stream: readinto without a copy."""


def open_local(path: str) -> LocalFile:
    """`path` opened for reading, stdin for `-`."""
    if path == "-":
        return LocalFile(os.dup(0), "rb")
    return LocalFile(path, "rb")


class Backend(Source):
    def __init__(self, uri: URI, connection: Connection) -> None:
        uri.check_local()
        super().__init__(uri, connection)

    @property
    def size(self) -> int | None:
        if self.uri.path == "-":
            return None
        return os.stat(self.uri.path).st_size

    def open(self) -> Stream:
        return open_local(self.uri.path)

    def open_write(self) -> Upload:
        """NAME.partial, renamed to NAME on close() (stdout for `-`); abort() removes it."""
        return FileUpload(PartialFile(self.uri.path, 0o644))


class FileUpload(Upload):
    """The upload lifecycle over atomic.PartialFile: complete is its commit, abort its removal."""

    def __init__(self, partial: PartialFile) -> None:
        super().__init__()
        self.partial = partial

    def write(self, data: Any) -> int:
        if self._state != "open":
            raise ValueError("write to a closed or aborted file upload")
        return self.partial.write(data)

    def _complete(self) -> None:
        self.partial.commit()

    def _discard(self) -> None:
        self.partial.abort()
