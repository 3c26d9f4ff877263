"""`file:///path`, a plain path, or `-` for stdin: the image-baked ciphertext."""

from __future__ import annotations

import os
import sys
from typing import BinaryIO

from . import Source

SCHEMES = ("file",)


class Backend(Source):
    @property
    def size(self) -> int | None:
        if self.uri.path == "-":
            return None
        return os.stat(self.uri.path).st_size

    def open(self) -> BinaryIO:
        if self.uri.path == "-":
            return os.fdopen(os.dup(sys.stdin.fileno()), "rb", buffering=0)
        return open(self.uri.path, "rb", buffering=0)
