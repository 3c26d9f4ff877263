"""Structured logs: one JSON object per line on stderr, and the termination message.

Kubernetes shows the last line written to terminationMessagePath; we write a
one-line JSON summary there. Nothing here ever receives key material: callers
pass sizes, names and categories only.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, TextIO

TERMINATION_LOG = "/dev/termination-log"
PROGRESS_EVERY = 5.0


class Log:
    def __init__(self, stage: str, stream: TextIO | None = None) -> None:
        self.stage = stage
        self.stream = stream if stream is not None else sys.stderr
        self.started = time.monotonic()

    def _emit(self, level: str, event: str, fields: dict[str, Any]) -> None:
        rec = {"ts": round(time.time(), 3), "level": level, "stage": self.stage, "event": event}
        rec.update(fields)
        try:
            self.stream.write(json.dumps(rec, separators=(",", ":"), default=str) + "\n")
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
    line = json.dumps(summary, separators=(",", ":"), default=str)[:4000] + "\n"
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
