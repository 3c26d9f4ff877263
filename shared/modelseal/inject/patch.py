"""A JSON Patch (RFC 6902) from one JSON document to another: what the webhook answers with.

The webhook never builds a patch by hand: it runs `inject()` and answers with
`diff(object, injected)`, so applying the answer gives exactly what
`modelseal inject` prints. Objects are compared member by member; a list of
the same length item by item, a list that only grew by appending, and any
other list replaced whole (a pod's lists are short; a minimal edit script
buys nothing here).
"""

from __future__ import annotations

from typing import Any


def pointer(tokens: list[str | int]) -> str:
    """An RFC 6901 JSON Pointer: `~` and `/` in a member name escaped (`modelseal.dev~1source`)."""
    return "".join("/" + str(t).replace("~", "~0").replace("/", "~1") for t in tokens)


def _same(a: Any, b: Any) -> bool:
    """Equal as JSON: 1 and 1.0 are one number, but true is not 1."""
    return type(a) is type(b) and a == b or (
        isinstance(a, (int, float)) and isinstance(b, (int, float))
        and not isinstance(a, bool) and not isinstance(b, bool) and a == b)


def diff(old: Any, new: Any, path: list[str | int] | None = None) -> list[dict[str, Any]]:
    """The operations that turn `old` into `new`."""
    path = path or []
    if isinstance(old, dict) and isinstance(new, dict):
        ops: list[dict[str, Any]] = []
        for key in old:
            if key not in new:
                ops.append({"op": "remove", "path": pointer(path + [key])})
        for key, value in new.items():
            if key not in old:
                ops.append({"op": "add", "path": pointer(path + [key]), "value": value})
            else:
                ops += diff(old[key], value, path + [key])
        return ops
    if isinstance(old, list) and isinstance(new, list):
        if len(old) == len(new):
            return [op for i, (a, b) in enumerate(zip(old, new)) for op in diff(a, b, path + [i])]
        if len(new) > len(old) and all(_same_json(a, b) for a, b in zip(old, new)):
            return [{"op": "add", "path": pointer(path + ["-"]), "value": v} for v in new[len(old):]]
    if _same_json(old, new):
        return []
    return [{"op": "replace", "path": pointer(path), "value": new}]


def _same_json(a: Any, b: Any) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_json(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same_json(x, y) for x, y in zip(a, b))
    return _same(a, b)
