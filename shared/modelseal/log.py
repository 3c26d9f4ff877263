"""Logs on stderr, and the termination message.

Two renderings of the same records: JSON lines (one object per line, the
documented format, what pods keep: the default whenever stderr is not a
terminal) and short text lines for a person at a terminal (`--log-format
text`, the default on a TTY), where long work also draws a progress bar
(progress.py). `--quiet` keeps only errors, in either rendering.

Kubernetes shows the last line written to terminationMessagePath; we write a
one-line JSON summary there, whatever the log format. Nothing here ever
receives key material: callers pass sizes, names and categories only.

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
#: Seconds between progress records in the logs (JSON or text lines without a terminal).
PROGRESS_EVERY = 5.0
#: Seconds between redraws of a progress bar: often enough to look alive, rare enough to cost nothing.
BAR_EVERY = 0.2
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
    """Where a stage's records go: JSON lines (default), or text lines for a person (`text`).

    `quiet` keeps errors only. `bars` (text on a terminal) draws a progress bar
    for long work instead of progress records; any line written while a bar is
    up erases it first, and the next update draws it again.
    """

    def __init__(self, stage: str, stream: Lines | None = None, *, text: bool = False, quiet: bool = False,
                 bars: bool = False) -> None:
        self.stage = stage
        self.stream = stream if stream is not None else sys.stderr
        self.started = time.monotonic()
        self.text = text
        self.quiet = quiet
        self.bars = bars and not quiet
        self.bar: Bar | None = None  # the bar on screen, if any

    def _emit(self, level: str, event: str, fields: dict[str, Any]) -> None:
        if self.quiet and level != "error":
            return
        rec = {"ts": round(time.time(), 3), "level": level, "stage": self.stage, "event": event}
        rec.update(fields)
        if self.stream is None:  # started with no stderr at all (`2>&-`): Python gives None
            return
        try:
            if self.bar is not None:
                self.bar.clear()
            self.stream.write((text_line(rec) if self.text else _line(rec)) + "\n")
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


class Bar(Protocol):
    """A progress bar on the terminal (progress.py draws it)."""

    def show(self, done: int, total: int | None, elapsed: float) -> None: ...

    def clear(self) -> None: ...


class Progress:
    """Counts bytes; logs a progress record every few seconds, or redraws the bar a few times a second.

    add() is called once per segment or chunk on the streaming paths: it adds and reads the monotonic
    clock, as it always has; everything else happens only when the next report is due.
    """

    def __init__(self, log: Log, what: str, total: int | None) -> None:
        self.log = log
        self.what = what
        self.total = total
        self.done = 0
        self.start = time.monotonic()
        self.every = BAR_EVERY if log.bars else PROGRESS_EVERY
        # A bar is drawn at the first bytes (a person sees at once what runs and how big it is); records,
        # every few seconds as they always were (the JSON a pod logs does not change).
        self._next = self.start if log.bars else self.start + self.every
        self._bar: Bar | None = None

    def add(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now >= self._next:
            self._next = now + self.every
            self._report(now)

    def _report(self, now: float) -> None:
        if self.log.bars:
            self._draw(now - self.start)
            return
        rate = self.done / max(now - self.start, 1e-9)
        if self.log.quiet:
            return
        fields: dict[str, Any] = {"what": self.what, "bytes": self.done, "mib_per_s": round(rate / 2**20, 1)}
        if self.total:
            fields["total"] = self.total
            fields["eta_s"] = round((self.total - self.done) / rate, 1) if rate else None
        self.log.info("progress", **fields)

    def _draw(self, elapsed: float) -> None:
        try:
            if self._bar is None:
                from .progress import bar

                self._bar = bar(self.what, self.log.stream)
            if self.log.bar is not None and self.log.bar is not self._bar:
                self.log.bar.clear()
            self.log.bar = self._bar
            self._bar.show(self.done, self.total, elapsed)
        except (OSError, ValueError):
            pass  # a closed terminal must not turn success into failure

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


# ---- text lines, for a person at a terminal ------------------------------------------------------

def printable(text: str) -> str:
    """`text` with every control character escaped (\\x1b, \\n...): a value from a forged header must not
    move the cursor, recolour the terminal or start a line that looks like ours."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (dict, list)):
        return printable(json.dumps(value, separators=(",", ":")))
    text = printable(str(value))
    return text if text and " " not in text else json.dumps(text)


def human_bytes(n: float) -> str:
    """1536 -> "1.5 KiB": sizes for people (the JSON records keep exact bytes)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


_SKIP = {"ts", "level", "stage", "event", "message"}


def text_line(record: dict[str, Any]) -> str:
    """One short line (a few for `seal`'s summary) for a record: what happened, then its fields as k=v."""
    rec = bounded(record)
    event, level = rec.get("event", ""), rec.get("level", "info")
    special = _TEXT.get(event)
    if special is not None:
        return special(rec)
    fields = " ".join(f"{k}={_value(v)}" for k, v in rec.items() if k not in _SKIP and v not in (None, ""))
    head = f"{level}: {event}" if level != "info" else event
    message = rec.get("message")
    parts = [head + (":" if message or fields else ""), printable(str(message)) if message else "", fields]
    return " ".join(p for p in parts if p)


def _failed(rec: dict[str, Any]) -> str:
    return f"error: {printable(str(rec.get('error', '')))} (exit {rec.get('exit_code')}, {rec.get('category')})"


def _done(rec: dict[str, Any]) -> str:
    peak = rec.get("cgroup_peak_mib") or rec.get("peak_rss_mib")
    return f"done in {rec.get('seconds')} s" + (f" (peak memory {peak} MiB)" if peak else "")


def _sealed(rec: dict[str, Any]) -> str:
    """seal's one summary: what a person copies into a pod spec next."""
    size, plain = rec.get("bytes"), rec.get("plaintext_bytes")
    files = f"{rec.get('files')} files, " if rec.get("files") else ""
    lines = [f"sealed {_value(rec.get('out'))}",
             f"  size        {human_bytes(size) if isinstance(size, int) else size} "
             f"({files}{human_bytes(plain) if isinstance(plain, int) else plain} before encryption)",
             f"  key id      {_value(rec.get('key_id'))}",
             f"  recipients  {_recipients(rec.get('recipients'))}"]
    if rec.get("sha256"):
        lines.append(f"  sha256      {_value(rec.get('sha256'))}")
        lines.append("              (pin it: fetch-model/run --sha256, or $MODELSEAL_SHA256)")
    return "\n".join(lines)


def _recipients(listed: Any) -> str:
    """seal's recipients (format v2: who can open the file), one after the other."""
    if isinstance(listed, list) and listed:
        return ", ".join(printable(str(r)) for r in listed)
    return "none listed"


_TEXT = {"failed": _failed, "done": _done, "sealed": _sealed}
