"""Structured logs: one JSON object per line on stderr, and the termination message.

Kubernetes shows the last line written to terminationMessagePath; we write a
one-line JSON summary there. Nothing here ever receives key material: callers
pass sizes, names and categories only.

Both are valid JSON of bounded size whatever the fields hold (an error text
quoting a forged header, a key id of 100 KB): fields are shortened *before*
serialising (`bounded`), never the serialised text, which could cut a
`\\u` escape in half. Numbers JSON cannot carry (NaN, infinities, integers of
more than 64 bits, which json.dumps would refuse past 4300 digits) become text.
Every text also loses any `scheme://USER:SECRET@` in it (uri.redact_user_info),
before it is shortened, so a cut cannot leave half a secret unrecognised.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any, Protocol

from .uri import USER_INFO_REACH, redact_user_info

TERMINATION_LOG = "/dev/termination-log"
PROGRESS_EVERY = 5.0
#: Longest text of one field in a log line.
MAX_FIELD = 2000
#: Kubernetes keeps at most 4096 bytes of a termination message.
MAX_TERMINATION = 4000
#: Members of a list or object field kept, and how deep.
MAX_ITEMS = 32
MAX_DEPTH = 4


def bounded(value: Any, limit: int = MAX_FIELD, depth: int = 0) -> Any:
    """A copy of a log field that serialises to bounded, valid JSON: texts cut, containers shortened."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if value.bit_length() <= 64 else f"<integer of {value.bit_length()} bits>"
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, (dict, list, tuple)) and depth < MAX_DEPTH:
        if isinstance(value, dict):
            items = list(value.items())[:MAX_ITEMS]
            return {bounded(str(k), 100): bounded(v, limit, depth + 1) for k, v in items}
        return [bounded(v, limit, depth + 1) for v in list(value)[:MAX_ITEMS]]
    text = value if isinstance(value, str) else f"<{type(value).__name__}>" if isinstance(
        value, (dict, list, tuple)) else str(value)
    if len(text) > limit + USER_INFO_REACH:  # a user info that starts before `limit` still ends inside
        text = text[:limit + USER_INFO_REACH]
    text = redact_user_info(text)
    return text if len(text) <= limit else text[:limit] + "..."


def _line(record: dict[str, Any], limit: int = MAX_FIELD) -> str:
    # ensure_ascii (the default): the line is ASCII, so its length in characters is its size in bytes
    return json.dumps(bounded(record, limit), separators=(",", ":"))


def termination_line(summary: dict[str, Any]) -> str:
    """The termination message: valid JSON of at most MAX_TERMINATION bytes, shortening fields as needed."""
    for limit in (1000, 300, 80):
        line = _line(summary, limit)
        if len(line) <= MAX_TERMINATION:
            return line
    keep: dict[str, Any] = {k: summary[k] for k in ("stage", "status", "exit_code", "category", "error")
                            if k in summary}
    return _line(keep, 80)


class Lines(Protocol):
    """Where log lines go: stderr, or a stream of the caller's."""

    def write(self, text: str, /) -> Any: ...

    def flush(self) -> Any: ...


class Log:
    def __init__(self, stage: str, stream: Lines | None = None) -> None:
        self.stage = stage
        self.stream = stream if stream is not None else sys.stderr
        self.started = time.monotonic()

    def _emit(self, level: str, event: str, fields: dict[str, Any]) -> None:
        rec = {"ts": round(time.time(), 3), "level": level, "stage": self.stage, "event": event}
        rec.update(fields)
        if self.stream is None:  # started with no stderr at all (`2>&-`): Python gives None
            return
        try:
            self.stream.write(_line(rec) + "\n")
            self.stream.flush()
        except (OSError, ValueError):
            pass  # a closed stderr must not turn success into failure

    def info(self, event: str, **fields: Any) -> None:
        self._emit("info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._emit("warning", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._emit("error", event, fields)

    def progress(self, what: str, total: int | None = None) -> "Progress":
        return Progress(self, what, total)

    def elapsed(self) -> float:
        return time.monotonic() - self.started


class Progress:
    """Counts bytes and logs a progress line at most every few seconds."""

    def __init__(self, log: Log, what: str, total: int | None) -> None:
        self.log = log
        self.what = what
        self.total = total
        self.done = 0
        self.start = time.monotonic()
        self._next = self.start + PROGRESS_EVERY

    def add(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now >= self._next:
            self._next = now + PROGRESS_EVERY
            rate = self.done / max(now - self.start, 1e-9)
            fields: dict[str, Any] = {"what": self.what, "bytes": self.done, "mib_per_s": round(rate / 2**20, 1)}
            if self.total:
                fields["total"] = self.total
                fields["eta_s"] = round((self.total - self.done) / rate, 1) if rate else None
            self.log.info("progress", **fields)

    def summary(self) -> dict[str, Any]:
        secs = time.monotonic() - self.start
        return {"bytes": self.done, "seconds": round(secs, 3),
                "mib_per_s": round(self.done / 2**20 / secs, 1) if secs > 0 else None}


def write_termination(summary: dict[str, Any]) -> None:
    """Best effort: the file exists only where Kubernetes (or a test) provides it."""
    path = os.environ.get("MODELSEAL_TERMINATION_LOG", TERMINATION_LOG)
    line = termination_line(summary) + "\n"
    try:
        # No O_CREAT: never litter /dev of a host that is not a pod.
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.write(fd, line.encode())
    except OSError:
        pass
    finally:
        os.close(fd)
