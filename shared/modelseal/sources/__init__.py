"""Model sources: where the ciphertext comes from, and where a sealed model goes, selected by URI scheme.

A backend is one module in this package that defines `SCHEMES` and a
`Source` subclass named `Backend`. `open()` returns one `Stream` of the
whole object; retries, resume from the last good byte and parallel ranged
reads all live behind it, so `fetch-model` and `run` consume the same
stream. `open_write()` returns an upload.Upload that `seal -o` writes the
.seal into: complete on close(), nothing left behind on abort(); a backend
that cannot be written to says so (UsageError, exit 2), as a key backend
that cannot wrap does. tests/contract/ is the suite every backend passes.
"""

from __future__ import annotations

import io
import sys
from typing import TYPE_CHECKING, ClassVar

from ..connection import Connection
from ..errors import UsageError
from ..uri import URI, discover, find_backend

if TYPE_CHECKING:
    from ..upload import Upload


class Stream(io.RawIOBase):
    """One readable stream of a whole object, as every backend's open() returns it.

    readinto() is the stream. read_view(n) hands out up to n bytes (empty at
    the end) as a view valid until the next read: without a copy where the
    backend holds the bytes already (S3's part buffers), else read into a
    buffer of the stream's own, so a caller never asks which kind it has.
    """

    _view: bytearray | None = None

    def readable(self) -> bool:
        return True

    def read_view(self, n: int) -> memoryview:
        if self._view is None or len(self._view) < n:
            self._view = bytearray(n)
        got = self.readinto(memoryview(self._view)[:n]) or 0
        return memoryview(self._view)[:got]


class Source:
    SCHEMES: ClassVar[tuple[str, ...]] = ()
    #: open()'s stream keeps parallel ranged parts in flight (sources/ranged.py): a stage reading this
    #: source needs the reader's memory on top of its own (placement.pods.S3_READER), so an injected
    #: pod is sized by `inspect --resources`' s3:// numbers.
    PARALLEL_PARTS: ClassVar[bool] = False

    def __init__(self, uri: URI, connection: Connection) -> None:
        self.uri = uri
        self.connection = connection.with_query(uri.query)

    @property
    def size(self) -> int | None:
        """The object's length when known up front (for progress and ETA)."""
        return None

    @property
    def buffer_bytes(self) -> int:
        """Memory an open stream holds ahead of its reader (parallel parts in flight), for sizing."""
        return 1 << 20

    def open(self) -> Stream:
        raise NotImplementedError

    def open_write(self) -> Upload:
        """A writable stream to this URI (`seal -o`): close() completes the object, abort() leaves nothing."""
        raise UsageError(f"{self.uri.scheme}: cannot write sealed output there")

    def read_prefix(self, n: int) -> bytes:
        """The first n bytes (a `.seal` header for envelope keys); backends may range-read."""
        with self.open() as stream:
            return stream.read(n)


def backends() -> dict:
    return discover(sys.modules[__name__])


def parallel_schemes() -> list[str]:
    """The schemes whose streams hold parallel ranged parts (PARALLEL_PARTS), as `inspect --resources` names them."""
    return sorted(scheme for scheme, module in backends().items() if module.Backend.PARALLEL_PARTS)


def backend_class(uri: str | URI) -> type[Source]:
    """The Source class that reads a URI (nothing is opened or constructed)."""
    parsed = uri if isinstance(uri, URI) else URI.parse(uri)
    module = find_backend(sys.modules[__name__], parsed.scheme)
    if module is None:
        known = ", ".join(sorted(backends()))
        raise UsageError(f"unknown source URI scheme {parsed.scheme!r} (known: {known})")
    backend: type[Source] = module.Backend
    return backend


def open_source(uri: str | URI, connection: Connection | None = None) -> Source:
    parsed = uri if isinstance(uri, URI) else URI.parse(uri)
    return backend_class(parsed)(parsed, connection or Connection())


def open_sink(uri: str | URI, connection: Connection | None = None) -> Upload:
    """The writable stream of a URI (a local path, `-` for stdout, or a backend's object)."""
    return open_source(uri, connection).open_write()
