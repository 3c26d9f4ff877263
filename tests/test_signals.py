"""SIGTERM (what the kubelet sends) and SIGINT stop a stage cleanly: exit 143 / 130, nothing left behind.

Each stage runs as the real command line, reading a FIFO, and is stopped
while it sits blocked mid-stream: part of its input written, its output
begun (NAME.partial, the staging directory, the decryption workers). Before,
SIGTERM killed it on the spot and left NAME.partial with verified plaintext
(decrypt), the staging directory (run, unpack) or a .partial (fetch-model,
fetch-key); SIGINT cleaned up but reported an internal error, exit 1.
"""

from __future__ import annotations

import ctypes
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Callable

import pytest

from conftest import modelseal, open_fifo_writer

MIB = 1 << 20
STOPS = [signal.SIGTERM, signal.SIGINT]


@pytest.fixture
def inputs(shm: Path) -> Path:
    """A 6 MiB model as a tar (m.tar) and sealed (m.seal), and its key."""
    data = os.urandom(6 * MIB)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        info = tarfile.TarInfo("weights.bin")
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
    (shm / "m.tar").write_bytes(buf.getvalue())
    (shm / "key").write_bytes(os.urandom(32))
    r = modelseal("seal", str(shm / "m.tar"), "-o", str(shm / "m.seal"), "--key", str(shm / "key"))
    assert r.code == 0, r.stderr
    return shm


def _has_data(path: Path) -> bool:
    try:
        return path.stat().st_size > 0
    except FileNotFoundError:
        return False


def _staging_with_data(shm: Path) -> bool:
    """A staging directory beside the target holds a file with bytes in it: the extraction is under way."""
    return any(p.is_file() and p.stat().st_size > 0 for d in shm.glob(".tree.staging-*") for p in d.rglob("*"))


def _workers_of(pid: int) -> list[int]:
    """The decryption worker processes (python -m modelseal.parallel) whose parent is `pid`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid and b"modelseal.parallel" in cmdline:
            found.append(int(entry))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _until(condition: Callable[[], bool], what: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"the stage exited ({proc.returncode}) before {what}: "
                                 f"{proc.stderr.read().decode(errors='replace')[-1500:] if proc.stderr else ''}")
        if time.monotonic() > deadline:
            raise AssertionError(f"never saw {what}")
        time.sleep(0.02)


def _stop_mid_stream(shm: Path, args: list[str], fifo: Path, feed: bytes, begun: Callable[[], bool],
                     sig: signal.Signals, *, workers: int = 0, group: bool = False,
                     before: Callable[[int], None] | None = None,
                     signal_main: bool = True) -> tuple[str, dict, list[int]]:
    """Start the stage on `fifo`, feed it `feed`, wait until `begun()` (and its workers), stop it with `sig`
    while the FIFO stays open (so no end of input can be what stops it); return stderr, the termination
    message and the worker pids."""
    term = shm / "termination-log"
    term.write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELSEAL_")}
    env["MODELSEAL_TERMINATION_LOG"] = str(term)
    proc = subprocess.Popen([sys.executable, "-m", "modelseal", *args], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, start_new_session=True)
    try:
        with open_fifo_writer(fifo, proc) as f:
            f.write(feed)
            f.flush()
            _until(begun, "its output begun", proc)
            pids: list[int] = []
            if workers:
                _until(lambda: len(_workers_of(proc.pid)) == workers, f"{workers} workers", proc)
                pids = _workers_of(proc.pid)
            if before is not None:
                before(proc.pid)
            if not signal_main:
                pass  # `before` sent it
            elif group:  # a terminal's Ctrl-C, or a signal to the whole container: workers get it too
                os.killpg(proc.pid, sig)
            else:  # the kubelet signals PID 1
                proc.send_signal(sig)
            _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + sig, (proc.returncode, err.decode(errors="replace")[-2000:])
    return err.decode(errors="replace"), json.loads(term.read_text()), pids


def _stopped_once(stderr: str, summary: dict, sig: signal.Signals) -> None:
    """One JSON line says so, the last one; the termination message says the same."""
    lines = stderr.splitlines()
    records = [json.loads(line) for line in lines]  # every line is JSON: no traceback
    stops = [r for r in records if r.get("category") == "stopped" or r.get("level") == "error"]
    assert stops == [records[-1]], lines[-5:]
    assert stops[0]["event"] == "failed" and stops[0]["exit_code"] == 128 + sig
    assert sig.name in stops[0]["error"]
    assert summary["exit_code"] == 128 + sig and summary["category"] == "stopped" and summary["status"] == "error"


def _left(shm: Path, inputs: set[str]) -> list[str]:
    return sorted(set(os.listdir(shm)) - inputs - {"in.fifo", "termination-log"})


@pytest.mark.parametrize("sig", STOPS, ids=lambda s: s.name)
@pytest.mark.parametrize("stage", ["decrypt", "run", "unpack", "fetch-model", "fetch-key"])
def test_a_stop_signal_mid_stream_leaves_nothing_and_exits_128_plus_it(inputs: Path, stage: str, sig):
    shm = inputs
    fifo = shm / "in.fifo"
    os.mkfifo(fifo)
    seal, tar, key = (shm / "m.seal").read_bytes(), (shm / "m.tar").read_bytes(), str(shm / "key")
    args, feed, begun = {
        "decrypt": (["decrypt", "--in", str(fifo), "--key", key, "-o", str(shm / "out.tar")],
                    seal[:4 * MIB], lambda: _has_data(shm / "out.tar.partial")),
        "run": (["run", "--source", f"file://{fifo}", "--key", key, "-o", str(shm / "tree")],
                seal[:4 * MIB], lambda: _staging_with_data(shm)),
        "unpack": (["unpack", "--in", str(fifo), "-o", str(shm / "tree")],
                   tar[:4 * MIB], lambda: _staging_with_data(shm)),
        "fetch-model": (["fetch-model", "--source", f"file://{fifo}", "-o", str(shm / "copy.seal")],
                        seal[:4 * MIB], lambda: _has_data(shm / "copy.seal.partial")),
        "fetch-key": (["fetch-key", "--key-uri", f"file://{fifo}", "-o", str(shm / "k")],
                      b"", lambda: (shm / "k.partial").exists()),  # blocked reading the key
    }[stage]
    stderr, summary, _ = _stop_mid_stream(shm, args, fifo, feed, begun, sig)
    _stopped_once(stderr, summary, sig)
    assert _left(shm, {"m.seal", "m.tar", "key"}) == []


@pytest.mark.parametrize("group", [False, True], ids=["to-the-stage", "to-its-process-group"])
@pytest.mark.parametrize("stage", ["decrypt", "run"])
def test_a_stop_signal_with_workers_stops_them_too(inputs: Path, stage: str, group: bool):
    """--workers: the worker processes go (whoever got the signal), the shared segments with them."""
    shm = inputs
    fifo = shm / "in.fifo"
    os.mkfifo(fifo)
    key = str(shm / "key")
    args = {"decrypt": ["decrypt", "--in", str(fifo), "--key", key, "-o", str(shm / "out.tar"), "--workers", "2"],
            "run": ["run", "--source", f"file://{fifo}", "--key", key, "-o", str(shm / "tree"), "--workers", "2"]}
    begun = {"decrypt": lambda: _has_data(shm / "out.tar.partial"), "run": lambda: _staging_with_data(shm)}
    stderr, summary, pids = _stop_mid_stream(shm, args[stage], fifo, (shm / "m.seal").read_bytes()[:4 * MIB],
                                             begun[stage], signal.SIGTERM, workers=2, group=group)
    _stopped_once(stderr, summary, signal.SIGTERM)
    assert len(pids) == 2
    deadline = time.monotonic() + 30
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not any(_alive(p) for p in pids), "a decryption worker outlived its stage"
    assert _left(shm, {"m.seal", "m.tar", "key"}) == []


def _tgkill(pid: int, tid: int, sig: int) -> None:
    """Send `sig` to one thread of another process (no Python wrapper exists for tgkill)."""
    libc = ctypes.CDLL(None, use_errno=True)
    SYS_tgkill = {"x86_64": 234, "aarch64": 131}[os.uname().machine]
    if libc.syscall(SYS_tgkill, pid, tid, sig) != 0:
        raise OSError(ctypes.get_errno(), "tgkill")


@pytest.mark.parametrize("stage", ["decrypt", "run"])
def test_a_stop_signal_taken_by_a_background_thread_still_stops_the_stage(inputs: Path, stage: str):
    """The kernel gives a process's signal to any thread that does not block it, and Python runs
    handlers only in the main thread, once it runs again: taken by the reader thread (blocked in
    read() on a silent input) while the main thread slept waiting for the next segment, the
    signal was never handled and the stage hung (about one stop in ten). Here every background
    thread of the live stage gets SIGTERM itself, never the main thread: the stage must still
    unwind, exit 143 and leave nothing."""
    shm = inputs
    fifo = shm / "in.fifo"
    os.mkfifo(fifo)
    key = str(shm / "key")
    args = {"decrypt": ["decrypt", "--in", str(fifo), "--key", key, "-o", str(shm / "out.tar")],
            "run": ["run", "--source", f"file://{fifo}", "--key", key, "-o", str(shm / "tree")]}[stage]
    begun = {"decrypt": lambda: _has_data(shm / "out.tar.partial"), "run": lambda: _staging_with_data(shm)}[stage]
    threads: list[int] = []

    def to_background_threads(pid: int) -> None:
        threads.extend(int(t) for t in os.listdir(f"/proc/{pid}/task") if int(t) != pid)
        for tid in threads:
            _tgkill(pid, tid, signal.SIGTERM)

    stderr, summary, _ = _stop_mid_stream(shm, args, fifo, (shm / "m.seal").read_bytes()[:4 * MIB], begun,
                                          signal.SIGTERM, before=to_background_threads, signal_main=False)
    assert len(threads) >= 2, f"expected the reader and writer threads, saw {len(threads)}"
    _stopped_once(stderr, summary, signal.SIGTERM)
    assert _left(shm, {"m.seal", "m.tar", "key"}) == []


def test_a_stage_that_finishes_is_unaffected(inputs: Path):
    """The handlers change nothing for a stage nobody stops (and a second run finds nothing in its way)."""
    shm = inputs
    r = modelseal("run", "--source", str(shm / "m.seal"), "--key", str(shm / "key"), "-o", str(shm / "tree"))
    assert r.code == 0, r.stderr
    with tarfile.open(shm / "m.tar") as t:
        assert (shm / "tree" / "weights.bin").read_bytes() == t.extractfile("weights.bin").read()


# ---- found by the soak (bench/soak.py, issue 25): a stop at an awkward instant was exit 1 --------

def _stopped_by_sigterm(boot: str, shm: Path) -> str:
    """Run a `python -c` stage script; it must exit 143 with only JSON lines on stderr (no traceback, no
    "Exception ignored") and exactly one 'failed' line naming SIGTERM. Returns its stderr."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELSEAL_")}
    p = subprocess.run([sys.executable, "-c", boot, "keygen", "-o", str(shm / "key")], capture_output=True,
                       env=env, timeout=60)
    err = p.stderr.decode(errors="replace")
    assert p.returncode == 143, err
    lines = [json.loads(x) for x in err.splitlines() if x.strip()]
    failed = [x for x in lines if x["event"] == "failed"]
    assert len(failed) == 1 and failed[0]["exit_code"] == 143 and "SIGTERM" in failed[0]["error"], err
    return err


def test_a_stop_in_the_instant_the_handlers_are_set_up_is_exit_143_with_its_line(shm: Path) -> None:
    """A SIGTERM that lands while StopSignals is still being entered (its handler in place, the stage's
    try not yet begun) escaped main() as a traceback, exit 1. Here it lands there every time."""
    boot = ("import os, signal, sys, time; from modelseal import cli, signals\n"
            "enter = signals.StopSignals.__enter__\n"
            "def late(self):\n"
            "    out = enter(self)\n"
            "    os.kill(os.getpid(), signal.SIGTERM)  # its handler runs here, still inside __enter__\n"
            "    time.sleep(5)\n"
            "    return out\n"
            "signals.StopSignals.__enter__ = late\n"
            "sys.exit(cli.main(sys.argv[1:]))\n")
    _stopped_by_sigterm(boot, shm)
    assert not (shm / "key").exists()


def test_an_error_raised_while_a_stop_unwinds_is_reported_as_the_stop() -> None:
    """A stop inside an import leaves the module half-made; the cleanup's next import of it raises
    ImportError with the stop as its context. That reached the report as exit 1, "internal error"."""
    from modelseal.errors import Stopped, StoppedError, classify

    try:
        try:
            raise Stopped(signal.SIGTERM)
        finally:
            raise ImportError("cannot import name 'x' from partially initialized module")
    except ImportError as exc:
        err = classify(exc)
    assert isinstance(err, StoppedError) and err.exit_code == 143 and "SIGTERM" in str(err)
    assert classify(ImportError("no stop behind it")).exit_code == 1


def _as_stage(func: str, source: str) -> str:
    """A `python -c` script: `source` defines `func(args, log)`, which then runs as the stage's command
    inside the real cli.main (its StopSignals, its reporting), whatever command the argv names."""
    return (source + "parse = cli.argparse.ArgumentParser.parse_args\n"
            "def parse_args(self, *a, **k):\n"
            "    ns = parse(self, *a, **k)\n"
            f"    ns.func = {func}\n"
            "    return ns\n"
            "cli.argparse.ArgumentParser.parse_args = parse_args\n"
            "sys.exit(cli.main(sys.argv[1:]))\n")


def test_a_stop_whose_unwinding_loses_it_is_still_exit_143(shm: Path) -> None:
    """A stop inside an import (https's first `import ssl`, run under the soak) unwound into a
    TypeError that no longer carried the Stopped as its context: exit 1, "internal error at ssl.py".
    Here the stage's command takes the stop and raises an unrelated error with no context at all."""
    boot = _as_stage("lost", "import os, signal, sys, time; from modelseal import cli, errors\n"
            "def lost(args, log):\n"
            "    try:\n"
            "        os.kill(os.getpid(), signal.SIGTERM)\n"
            "        time.sleep(5)\n"
            "    except errors.Stopped:\n"
            "        pass\n"
            "    raise TypeError('an unrelated failure')  # outside the except: no context\n")
    err = _stopped_by_sigterm(boot, shm)
    assert "TypeError" not in err


def test_a_stop_taken_by_another_thread_wakes_a_main_thread_blocked_for_good(shm: Path) -> None:
    """The relay itself (signals.py): the main thread blocked with no timeout (a lock never released), the
    signal sent to another thread only. Python's C handler runs in that thread and nothing wakes the main
    one, so without the re-send to the main thread the stage never ends. (The stages' own waits have
    timeouts today, so the stage tests above no longer tell the relay's absence apart.)"""
    tid_file = shm / "bystander.tid"
    boot = _as_stage("blocked", "import os, sys, threading; from modelseal import cli\n"
            "def blocked(args, log):\n"
            "    def bystander():\n"
            f"        open({str(tid_file)!r}, 'w').write(str(threading.get_native_id()))\n"
            "        threading.Event().wait()\n"
            "    threading.Thread(target=bystander, daemon=True).start()\n"
            "    lock = threading.Lock()\n"
            "    lock.acquire()\n"
            "    lock.acquire()  # for good: only a signal handler run in this thread ends it\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELSEAL_")}
    proc = subprocess.Popen([sys.executable, "-c", boot, "keygen", "-o", str(shm / "key")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        deadline = time.monotonic() + 30
        while not (tid_file.exists() and tid_file.read_text()) and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.2)  # the main thread is in its second acquire
        _tgkill(proc.pid, int(tid_file.read_text()), signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            pytest.fail("the stage never handled a SIGTERM taken by another thread: its main thread slept on")
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 143, err.decode(errors="replace")
    failed = [x for x in map(json.loads, filter(str.strip, err.decode().splitlines())) if x["event"] == "failed"]
    assert len(failed) == 1 and "SIGTERM" in failed[0]["error"]


def test_a_stop_that_python_drops_inside_a_callback_is_raised_again(shm: Path) -> None:
    """The handler ran inside the import system's weakref callback (`_get_module_lock.<locals>.cb`), where
    Python prints an exception and drops it: a traceback on stderr, and the stage ran on (the soak's find).
    Here the signal lands inside such a callback every time; the stage must still stop, 143, one JSON line."""
    boot = _as_stage("dropped", "import os, signal, sys, time, weakref; from modelseal import cli\n"
            "class Thing: pass\n"
            "def dropped(args, log):\n"
            "    def cb(ref):\n"
            "        os.kill(os.getpid(), signal.SIGTERM)\n"
            "        time.sleep(0.2)\n"
            "        for _ in range(100000): pass  # the handler runs in here: what it raises is dropped\n"
            "    thing = Thing()\n"
            "    ref = weakref.ref(thing, cb)\n"
            "    del thing\n"
            "    time.sleep(5)\n"
            "    print('ran on', file=sys.stderr)\n")
    _stopped_by_sigterm(boot, shm)  # every line JSON: no "Exception ignored", no "ran on"
