"""The progress bar of a stage at a terminal: bytes done, total, rate and ETA, on one line redrawn in place.

log.Progress decides when to draw (a few times a second, never per segment);
this module only renders and erases the line. The line is formatted by tqdm
(`format_meter`, its tested layout of units, rate and ETA) when it is
installed: it comes with the owner's install (`pip install
'modelseal[cli]'`). The stage images do not carry it (every byte of an init
container image is pulled onto every node, and a pod's stderr is no
terminal), so there the same line is drawn by the small formatter below.
"""

from __future__ import annotations

import os
import shutil
from typing import Any, Callable

#: The layout of the line, in tqdm's bar_format language: tqdm draws the bar, the numbers are ours
#: (tqdm labels 1024-based sizes "M", and scales rates by 1000).
BAR_FORMAT = "{desc} {percentage:3.0f}%|{bar}| {postfix}"
ERASE = "\r\x1b[K"  # carriage return, erase to the end of the line


def _units(n: float) -> str:
    for unit in ("", "Ki", "Mi", "Gi", "Ti"):
        if abs(n) < 1024 or unit == "Ti":
            return f"{n:.0f}{unit}" if unit == "" else f"{n:.1f}{unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60:02d}:{rest % 60:02d}"


def numbers(done: int, total: int | None, elapsed: float) -> str:
    """Bytes done, the total, the rate and the ETA (without a total: done, rate and time so far)."""
    rate = done / elapsed if elapsed > 0 else 0.0
    speed = f"{_units(rate)}B/s"
    if not total:
        return f"{_units(done)}B {speed} {_clock(elapsed)}"
    eta = _clock((total - done) / rate) if rate > 0 and done <= total else "?"
    return f"{_units(done)}B/{_units(total)}B {speed} ETA {eta}"


def drawn_meter(done: int, total: int | None, elapsed: float, width: int, what: str) -> str:
    """The bar line without tqdm, in BAR_FORMAT's layout (the images' fallback)."""
    tail = numbers(done, total, elapsed)
    if not total:
        return f"{what} {tail}"
    frac = min(done / total, 1.0)
    head = f"{what} {frac * 100:3.0f}%|"
    room = max(width - len(head) - len(tail) - 3, 1)
    filled = int(frac * room)
    return head + "#" * filled + " " * (room - filled) + "| " + tail


def _tqdm_meter() -> Callable[[int, int | None, float, int, str], str] | None:
    try:
        from tqdm import tqdm
    except ImportError:
        return None

    def meter(done: int, total: int | None, elapsed: float, width: int, what: str) -> str:
        if not total:
            return f"{what} {numbers(done, total, elapsed)}"
        line: str = tqdm.format_meter(min(done, total), total, elapsed, ncols=width - 1, prefix=what,
                                      bar_format=BAR_FORMAT.replace("{postfix}", numbers(done, total, elapsed)))
        return line

    return meter


class TerminalBar:
    """One line on the terminal: show() redraws it in place, clear() erases it (before a log line)."""

    def __init__(self, what: str, stream: Any, meter: Callable[[int, int | None, float, int, str], str]) -> None:
        self.what = what
        self.stream = stream
        self.meter = meter
        try:
            self.width = shutil.get_terminal_size((80, 24)).columns
            self.width = os.get_terminal_size(stream.fileno()).columns or self.width
        except (OSError, ValueError, AttributeError):
            self.width = 80
        self.drawn = False

    def show(self, done: int, total: int | None, elapsed: float) -> None:
        self.stream.write(ERASE + self.meter(done, total, elapsed, self.width, self.what))
        self.stream.flush()
        self.drawn = True

    def clear(self) -> None:
        if self.drawn:
            self.stream.write(ERASE)
            self.drawn = False


def bar(what: str, stream: Any) -> TerminalBar:
    """A bar for `what` on `stream`: tqdm's layout where tqdm is installed, the drawn one elsewhere."""
    return TerminalBar(what, stream, _tqdm_meter() or drawn_meter)
