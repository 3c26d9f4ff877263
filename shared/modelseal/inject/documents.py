"""Multi-document YAML in and out, for `modelseal inject` (PyYAML, the `inject` extra).

Only the command line reads YAML: the webhook speaks JSON, so its image
carries no YAML library. Documents are read with the safe loader (no tags
that build objects) and written back in their order, empty documents
dropped; comments do not survive (YAML libraries keep none), so keep the
annotated file as the one you edit and the injected output as generated.
"""

from __future__ import annotations

import sys
from typing import Any

from ..errors import UsageError
from ..extras import require
from ..untrusted import depth_within, show

HINT = "pip install 'modelseal[inject]' (PyYAML)"
#: Larger than any manifest file a person writes; bounds what a YAML file can make us hold.
MAX_BYTES = 16 << 20
MAX_DEPTH = 64


def load(path: str) -> list[Any]:
    """The documents of a YAML file (`-`: stdin)."""
    yaml = require("yaml", "modelseal inject", HINT)
    if path == "-":
        data = sys.stdin.buffer.read(MAX_BYTES + 1)
    else:
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)
    where = "standard input" if path == "-" else show(path, 120)
    if len(data) > MAX_BYTES:
        raise UsageError(f"{where}: more than {MAX_BYTES >> 20} MiB of YAML")
    try:
        docs = [d for d in yaml.safe_load_all(data.decode("utf-8")) if d is not None]
    except UnicodeDecodeError:
        raise UsageError(f"{where}: not UTF-8 text") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise UsageError(f"{where}: not valid YAML{at}: {getattr(exc, 'problem', None) or type(exc).__name__}") \
            from None
    for i, doc in enumerate(docs):
        if not isinstance(doc, dict) or not depth_within(doc, MAX_DEPTH):
            raise UsageError(f"{where}: document {i + 1} is not a Kubernetes object (a mapping)")
    return docs


def dump(docs: list[Any]) -> str:
    yaml = require("yaml", "modelseal inject", HINT)
    return yaml.safe_dump_all(docs, sort_keys=False, default_flow_style=False, explicit_start=len(docs) > 1,
                              width=120)
