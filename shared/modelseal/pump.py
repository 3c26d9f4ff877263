"""One thread that reads the bodies of every ranged part in flight, the way the CRT's event loop does.

Why: a download keeps `concurrency` GETs in flight, and when each worker
thread reads its own body, every few dozen KiB one of them wakes, takes the
GIL from another and goes back to sleep (19,000 context switches per GiB
from s3rver, against the CRT client's 6,500; 12,600 with the pump). Here a
worker sends its request and checks the answer's headers as before, then
hands the socket and the rest of its buffer to the pump and waits; one
thread, woken by poll(2) when any socket has data, reads each into its own
buffer with `recv_into` (no copy beyond the kernel's) and wakes the worker
when its part is whole, the peer ended it, or it failed.

The worker keeps everything else: the retry policy, the checks, the
connection (handed back to its pool when the body was read whole). What the
pump adds to a read is only where it runs: the same socket timeout (without
data for that long, TimeoutError), the same errors from `recv_into`, and the
bytes that arrived before a failure are counted, so a part cut mid-way
resumes from its last byte.

Only a body the HTTP layer has not started to decode is read here: identity
encoding, a Content-Length, a plain or TLS socket of the standard library.
Any other body is read by `PartBody` as before, through the HTTP layer in
pieces of READ_CHUNK.
"""

from __future__ import annotations

import http.client
import select
import socket
import ssl
import threading
import time
from typing import Any, Callable

from . import web

#: A body the HTTP layer reads (not the pump) is read in pieces of this size: a cut costs at most one again.
READ_CHUNK = 256 << 10
#: How often a waiting worker looks at its cancel event (a cancelled download stops within this).
CANCEL_POLL = 0.1


class _Read:
    """One body being read: the socket, the rest of the buffer, and how it ended."""

    __slots__ = ("sock", "fd", "tls", "view", "timeout", "deadline", "filled", "error", "done", "cancelled",
                 "events")

    def __init__(self, sock: socket.socket, view: memoryview, timeout: float | None) -> None:
        self.sock, self.fd, self.tls = sock, sock.fileno(), isinstance(sock, ssl.SSLSocket)
        self.view, self.timeout = view, timeout
        self.deadline = _NEVER
        self.filled = 0
        self.error: BaseException | None = None
        self.done = threading.Event()
        self.cancelled = False
        self.events = _IN


_NEVER = float("inf")
_IN, _OUT = select.POLLIN | select.POLLPRI, select.POLLOUT


class Pump:
    """The reading thread and its poll set; started on first use, a daemon that sleeps when idle.

    poll(2), not the selectors module: a handful of sockets, woken tens of thousands of times per GiB,
    where selectors' per-call bookkeeping in Python was a measurable share of the pump's CPU."""

    def __init__(self) -> None:
        self._poll = select.poll()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._wake_fd = self._wake_r.fileno()
        self._poll.register(self._wake_fd, _IN)
        self._lock = threading.Lock()
        self._incoming: list[_Read] = []
        self._reads: dict[int, _Read] = {}  # fd -> the read on it
        self._check_at = _NEVER  # when _check next has a deadline to look at
        self._stopped: BaseException | None = None  # a bug stopped the thread: every read fails, none hangs
        self._thread = threading.Thread(target=self._run, name="modelseal-pump", daemon=True)
        self._thread.start()

    def readinto(self, sock: socket.socket, view: memoryview,
                 cancel: threading.Event | None) -> tuple[int, BaseException | None]:
        """Fill `view` from `sock` on the pump's thread: (bytes read, the error that stopped it or None).

        Without a byte for the socket's own timeout, TimeoutError. Fewer bytes than asked and no error:
        the peer closed the connection (or `cancel` was set)."""
        previous = sock.gettimeout()
        read = _Read(sock, view, previous)
        with self._lock:
            if self._stopped is not None:
                raise RuntimeError(f"the body reader stopped ({type(self._stopped).__name__})")
            sock.setblocking(False)
            self._incoming.append(read)
        try:
            self._wake()
            while not read.done.wait(CANCEL_POLL):
                if cancel is not None and cancel.is_set():
                    read.cancelled = True
                    self._wake()
                    read.done.wait()  # the pump may be inside recv_into on this buffer: never return before it
                    break
        finally:
            if read.done.is_set():
                sock.settimeout(previous)
            else:  # interrupted (a signal in the main thread): the pump drops it at its next turn
                read.cancelled = True
                self._wake()
        return read.filled, read.error

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except BlockingIOError:  # a wake-up is already pending: that one will do
            pass

    def _run(self) -> None:
        try:
            while True:
                self._turn()
        except BaseException as exc:  # noqa: BLE001 - a bug here must fail the reads, never hang them
            with self._lock:
                self._stopped = exc
                waiting = list(self._incoming) + list(self._reads.values())
                self._incoming.clear()
            for read in waiting:
                read.error = read.error or RuntimeError(f"the body reader stopped ({type(exc).__name__})")
                read.done.set()

    def _turn(self) -> None:
        reads = self._reads
        check_at = self._check_at
        wait = None if check_at == _NEVER else max(0, int((check_at - time.monotonic()) * 1000) + 1)  # ms, up
        events = self._poll.poll(wait)
        now = time.monotonic()
        woken = False
        for fd, _ in events:
            read = reads.get(fd)
            if read is not None:
                self._pull(read, now)
            elif fd == self._wake_fd:
                woken = True
        if woken:
            self._arrivals(now)
        if woken or now >= check_at:
            self._check(now)

    def _check(self, now: float) -> None:
        """Finish the reads cancelled or past their deadline; the next check is at the earliest deadline
        (a read that gets bytes moves its own deadline on, so most checks find nothing to do)."""
        check_at = _NEVER
        for read in list(self._reads.values()):
            if read.cancelled:
                self._finish(read)
            elif read.deadline <= now:
                self._finish(read, TimeoutError("timed out"))
            elif read.deadline < check_at:
                check_at = read.deadline
        self._check_at = check_at

    def _arrivals(self, now: float) -> None:
        """Take the reads handed over since the last turn (and empty the wake-up socket)."""
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass
        with self._lock:
            incoming, self._incoming = self._incoming, []
        for read in incoming:
            read.deadline = now + read.timeout if read.timeout is not None else _NEVER
            if read.fd < 0 or read.fd in self._reads:  # closed under us, or a number still held
                read.error = OSError(f"a closed socket (descriptor {read.fd}) was handed to the body reader")
                read.done.set()
                continue
            self._poll.register(read.fd, read.events)
            self._reads[read.fd] = read
            if read.tls and read.sock.pending():  # type: ignore[attr-defined]
                self._pull(read, now)  # bytes OpenSSL has decrypted already: poll will never say so

    def _pull(self, read: _Read, now: float) -> None:
        """Read what the socket has into the buffer. A plain socket: one recv per wake-up (poll says
        when there is more). A TLS socket gives one record (16 KiB) per recv: read until it needs the
        network again, rather than one turn of the loop per record."""
        while True:
            try:
                n = read.sock.recv_into(read.view[read.filled:])
            except (BlockingIOError, ssl.SSLWantReadError):
                self._want(read, _IN)
                return
            except ssl.SSLWantWriteError:  # TLS needs to send first (a key update): wait until it can
                self._want(read, _OUT)
                return
            except OSError as exc:
                self._finish(read, exc)
                return
            if n == 0:  # the peer ended it: the caller decides what a short body means
                self._finish(read)
                return
            read.filled += n
            if read.timeout is not None:
                read.deadline = now + read.timeout
            if read.filled == len(read.view):
                self._finish(read)
                return
            if not read.tls:
                return

    def _want(self, read: _Read, events: int) -> None:
        if read.events != events:
            read.events = events
            self._poll.modify(read.fd, events)

    def _finish(self, read: _Read, error: BaseException | None = None) -> None:
        read.error = error
        if self._reads.pop(read.fd, None) is read:
            try:
                self._poll.unregister(read.fd)
            except KeyError:
                pass
        read.view = memoryview(b"")  # the pump keeps no view of the caller's buffer
        read.done.set()


_pump: Pump | None = None
_pump_lock = threading.Lock()


def pump() -> Pump:
    """The process's pump, started on first use (and again should a bug have stopped it)."""
    global _pump
    with _pump_lock:
        if _pump is None or _pump._stopped is not None:
            _pump = Pump()
        return _pump


class Body:
    """A response body read through the pump: readinto(view, cancel) fills as much of `view` as the body holds."""

    def __init__(self, response: http.client.HTTPResponse, sock: socket.socket) -> None:
        self._response, self._sock = response, sock
        self._error: BaseException | None = None
        self._buffered = True  # http.client's reader may hold the body's first bytes

    def readinto(self, view: memoryview, cancel: threading.Event | None = None) -> int:
        """Bytes read (0 at the end of the body); an error after some bytes is raised at the next call."""
        error = self._error
        if error is not None:
            self._error = None
            raise error
        response = self._response
        left = response.length or 0
        want = min(len(view), left)
        if want <= 0:
            return 0
        got = self._from_buffer(view[:want]) if self._buffered else 0
        if got < want:
            n, error = pump().readinto(self._sock, view[got:want], cancel)
            got += n
            if error is not None:
                if not got:
                    raise error
                self._error = error
        response.length = left - got
        if response.length == 0:
            response.close()  # as http.client does at the end of a body: the connection may carry the next
        return got

    def _from_buffer(self, view: memoryview) -> int:
        """The bytes http.client's buffered reader took past the headers, without asking the socket."""
        self._buffered = False
        reader: Any = self._response.fp
        previous = self._sock.gettimeout()
        self._sock.setblocking(False)  # when nothing is buffered, read1 asks the socket once: never wait
        try:
            chunk = reader.read1(len(view))
        except (BlockingIOError, ssl.SSLWantReadError):
            chunk = b""
        finally:
            self._sock.settimeout(previous)
        view[:len(chunk)] = chunk
        return len(chunk)


def body(raw: Any) -> Body | None:
    """The pump's reader for a urllib3 response's body, or None where only the HTTP layer may read it.

    Taken only for an untouched body (web.untouched_body) with a
    Content-Length and no chunking, on a standard library socket (not
    urllib3's TLS-in-TLS transport)."""
    fp = web.untouched_body(raw)
    if fp is None or fp.fp is None or fp.chunked or fp.length is None:
        return None
    sock = getattr(getattr(fp.fp, "raw", None), "_sock", None)
    if not isinstance(sock, socket.socket):
        return None
    return Body(fp, sock)


class PartBody:
    """A ranged part's body (a urllib3 response): readinto(view, cancel=None) reads it, 0 at its end, and
    finish(read_whole) hands its connection to the next part or closes it.

    Read through the pump when `body()` allows, else straight from
    http.client (web.direct_readinto), else by urllib3's read without
    decoding: the stored bytes are the ciphertext, whatever Content-Encoding
    they were labelled with."""

    def __init__(self, raw: Any, close: Callable[[], None]) -> None:
        self._raw, self._close = raw, close
        pumped = body(raw)
        self._direct = None if pumped is not None else web.direct_readinto(raw)
        self.readinto: Callable[..., int] = pumped.readinto if pumped is not None else self._read_chunk
        self._past_urllib3 = pumped is not None or self._direct is not None  # nothing left buffered in urllib3

    def _read_chunk(self, view: memoryview, cancel: threading.Event | None = None) -> int:
        view = view[:READ_CHUNK]
        if self._direct is not None:
            return int(self._direct(view))
        chunk = self._raw.read(len(view), decode_content=False)
        view[:len(chunk)] = chunk
        return len(chunk)

    def finish(self, read_whole: bool) -> None:
        """Hand the connection back to its pool for the next part when the body was read to its last byte
        past urllib3 (http.client closed its response at the body's end: nothing is left on the wire);
        else (cut short, failed, read through urllib3) close it."""
        fp = getattr(self._raw, "_fp", None)
        if read_whole and self._past_urllib3 and fp is not None and fp.isclosed():
            self._raw.release_conn()
        else:
            self._close()
