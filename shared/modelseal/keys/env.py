"""`env:VAR`: a key in an environment variable (from a Kubernetes Secret).

Environment values cannot hold arbitrary bytes, so they are base64 or hex
(`encoding=auto` tells them apart by length).
"""

from __future__ import annotations

import os

from ..errors import DeniedError, UsageError
from ..sealheader import WrappedKey
from . import KeySource

SCHEMES = ("env",)


class Backend(KeySource):
    def material(self, wrapped: WrappedKey | None) -> bytes:
        name = self.uri.path
        if not name:
            raise UsageError("env: key URI needs a variable name, e.g. env:MODEL_KEY")
        value = os.environ.get(name)
        if value is None:
            raise DeniedError(f"environment variable {name} is not set")
        return os.fsencode(value)  # the bytes as they were (surrogateescape), never an encoding error
