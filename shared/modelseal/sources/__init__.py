"""Model sources: where the ciphertext comes from, selected by URI scheme.

A backend is one module in this package that defines `SCHEMES` and a
`Source` subclass named `Backend`. `open()` returns one readable stream of
the whole object; retries, resume from the last good byte and parallel
ranged reads all live behind it, so `fetch-model` and `run` consume the same
stream.
"""

from __future__ import annotations

import sys
from typing import BinaryIO, ClassVar

from ..errors import UsageError
from ..options import Connection
from ..uri import URI, discover, find_backend


class Source:
    SCHEMES: ClassVar[tuple[str, ...]] = ()

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

    def open(self) -> BinaryIO:
        raise NotImplementedError

    def read_prefix(self, n: int) -> bytes:
        """The first n bytes (a `.seal` header for envelope keys); backends may range-read."""
        with self.open() as stream:
            return stream.read(n)


def backends() -> dict:
    return discover(sys.modules[__name__])


def open_source(uri: str | URI, connection: Connection | None = None) -> Source:
    parsed = uri if isinstance(uri, URI) else URI.parse(uri)
    module = find_backend(sys.modules[__name__], parsed.scheme)
    if module is None:
        known = ", ".join(sorted(backends()))
        raise UsageError(f"unknown source URI scheme {parsed.scheme!r} (known: {known})")
    return module.Backend(parsed, connection or Connection())
