"""SIGTERM and SIGINT stop a stage the way an error does: errors.Stopped in the main thread.

Without a handler, SIGTERM (what the kubelet sends) killed the process before
any cleanup ran, and as PID 1 of a container it was not delivered at all.
With one, what the stage had begun to write is removed as the exception
unwinds it (cli.py reports it and exits 143 / 130).

Why a nudging thread: CPython runs Python signal handlers only in the main
thread, and only once that thread runs again. The kernel hands a process's
signal to any thread that does not block it; when the reader thread took it
(blocked in read() on a silent input), or when it landed on the main thread
just before it went to sleep on a lock (waiting for the next segment), the
main thread never woke, the handler never ran, and the stage hung until
SIGKILL, its staging directory left behind (one stop in ten, in the tests).
So the C-level handler also writes the signal's number to a pipe
(signal.set_wakeup_fd, whichever thread took it), and a thread reading that
pipe re-sends the signal to the main thread itself until its handler has
run: each re-send interrupts whatever the main thread sleeps in.

Why a hook on unraisable exceptions: the handler may run inside code whose
exceptions Python prints and drops, such as the import system's weakref
callback that drops a module lock. The Stopped vanished there ("Exception
ignored in ... _get_module_lock", a traceback on stderr), and the stage ran
on or failed some other way (the soak's find, twice). The hook arms the
handler again and has the relay re-send the signal, so it is raised at the
next point where it can unwind the stage.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Any

from .errors import Stopped

#: The signals that stop a stage: the kubelet's SIGTERM, a terminal's SIGINT.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
#: Seconds between re-sends to the main thread until its handler runs.
NUDGE = 0.05


class StopSignals:
    """While the stage runs, SIGTERM and SIGINT raise errors.Stopped in the main thread.

    Only the first one unwinds the stage: it ignores the ones after it, so
    they cannot cut its cleanup short (the kubelet's SIGKILL still ends it).
    `quiet()` ignores them while the outcome is reported. Off the main thread
    (main() called from a thread) signals are left alone.
    """

    def __init__(self) -> None:
        self._previous: dict[int, Any] = {}
        self._handled = threading.Event()
        self._pipe: tuple[int, int] | None = None
        self._wakeup = -1
        self._hook: Any = None
        #: The stop signal whose handler ran, if one did: the stage was stopped,
        #: whatever exception its unwinding ends in (cli.py reports the stop).
        self.taken: int | None = None

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is not threading.main_thread():
            return self
        self._pipe = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(self._pipe[1], False)
        self._wakeup = signal.set_wakeup_fd(self._pipe[1], warn_on_full_buffer=False)
        self._previous = {s: signal.signal(s, self._stop) for s in STOP_SIGNALS}
        self._hook, sys.unraisablehook = sys.unraisablehook, self._unraisable
        threading.Thread(target=self._nudge, args=(self._pipe[0], threading.main_thread().ident),
                         name="modelseal-signals", daemon=True).start()
        return self

    def _stop(self, signum: int, frame: Any) -> None:
        if self._handled.is_set():
            return  # a re-send that crossed the first one: the stage is already unwinding
        self._handled.set()
        self.taken = signum
        self.quiet()
        raise Stopped(signum)

    def _unraisable(self, unraisable: Any) -> None:
        """A Stopped that Python dropped (raised inside a callback): raise it again, elsewhere."""
        exc = unraisable.exc_value
        if not isinstance(exc, Stopped) or self._pipe is None:
            self._hook(unraisable)
            return
        self._handled.clear()
        for s in self._previous:
            signal.signal(s, self._stop)
        try:
            os.write(self._pipe[1], bytes([exc.signum]))  # the relay re-sends it to the main thread
        except OSError:
            pass  # a full pipe already holds a signal for the relay

    def _nudge(self, pipe: int, main: int | None) -> None:
        """Re-send the first stop signal to the main thread until its handler has run.

        Reads the pipe until __exit__ closes its other end (EOF), so that the
        C handler never writes to a closed pipe."""
        try:
            while got := os.read(pipe, 64):
                stops = [n for n in got if n in STOP_SIGNALS]
                while stops and main is not None and not self._handled.wait(NUDGE):
                    signal.pthread_kill(main, stops[0])
        except OSError:
            pass  # the main thread is gone: the process is exiting
        finally:
            os.close(pipe)

    def quiet(self) -> None:
        """Ignore stop signals from now on (the stage is unwinding, or reporting its outcome)."""
        self._handled.set()
        for s in self._previous:
            signal.signal(s, signal.SIG_IGN)

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        if self._hook is not None:
            sys.unraisablehook = self._hook
        if self._pipe is not None:
            signal.set_wakeup_fd(self._wakeup)
            os.close(self._pipe[1])  # the nudging thread reads EOF, closes its end and ends
