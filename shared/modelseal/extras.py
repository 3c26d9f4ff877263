"""Optional dependencies, and the one clear error when one is missing.

The fetch stages need the `cloud` extra (boto3, requests, tenacity); decrypt
and unpack need none of it, and their images do not carry it. A partial
install (the library without the extra, boto3 brought in by another tool)
must not end in an internal error: the stage exits 2 naming what to install.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import UsageError

CLOUD_HINT = "pip install 'modelseal[cloud]', or use the modelseal/fetch-key, fetch-model or run image"


def require(module: str, purpose: str, hint: str = CLOUD_HINT) -> ModuleType:
    """Import `module`, or raise UsageError naming the missing package and how to get it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        missing = (getattr(exc, "name", None) or module).split(".")[0]
        raise UsageError(f"{purpose} needs the Python package {missing!r}, which is not installed: {hint}") from None
