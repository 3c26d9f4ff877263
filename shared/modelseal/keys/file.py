"""`file:///path` (or a plain path): a key file, typically on the shared tmpfs."""

from __future__ import annotations

from ..connection import Connection
from ..sealheader import WrappedKey
from ..uri import URI
from . import KeySource

SCHEMES = ("file",)
MAX_KEY_FILE = 1 << 20


class Backend(KeySource):
    def __init__(self, uri: URI, connection: Connection) -> None:
        uri.check_local()
        super().__init__(uri, connection)

    def material(self, wrapped: WrappedKey | None) -> bytes:
        with open(self.uri.path, "rb") as f:
            return f.read(MAX_KEY_FILE)
