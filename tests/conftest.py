"""Shared fixtures: a scratch directory on tmpfs and a way to run the real CLI.

The test servers, the PKI, fault injection and the other helpers are the
tests/support package; its fixtures (support/fixtures.py: moto, pki, shm_dir,
aws_env, and no_proxy_env for every test) are registered here for the whole suite.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

pytest_plugins = ["support.fixtures"]

SHM = Path(os.environ.get("MODELSEAL_TEST_SHM", "/dev/shm"))
#: Under CI (.ci/run sets it) nothing may skip: a missing tool or privilege is a failure.
STRICT = os.environ.get("MODELSEAL_REQUIRE_IMAGES") == "1"


def need(why: str) -> None:
    """Skip the test for `why` (nothing when empty); fail instead under CI (MODELSEAL_REQUIRE_IMAGES=1)."""
    if why:
        if STRICT:
            pytest.fail(f"MODELSEAL_REQUIRE_IMAGES=1 but {why}", pytrace=False)
        pytest.skip(why)


def payload_offset(data: bytes) -> int:
    """Where a .seal's payload starts, by docs/FORMAT.md's layout of either version (not by modelseal's code)."""
    at = 10 + struct.unpack(">I", data[6:10])[0]
    if data[5] == 2:  # then the recipient list and the header MAC
        at += 4 + struct.unpack(">I", data[at:at + 4])[0] + 32
    return at


def payload_aad(data: bytes) -> bytes:
    """The payload's associated data: version 1's whole prefix, version 2's magic, length and fixed section."""
    return data[:10 + struct.unpack(">I", data[6:10])[0] if data[5] == 2 else payload_offset(data)]


def one_line(exc: BaseException, limit: int = 400) -> str:
    """The error's text, asserted to be one bounded line (every bad input gets one)."""
    text = str(exc)
    assert "\n" not in text and len(text) <= limit, f"message not one bounded line: {text[:200]!r}..."
    return text


@contextmanager
def refused(kind: type[BaseException] | tuple[type[BaseException], ...], match: str | None = None,
            limit: int = 400) -> Iterator[pytest.ExceptionInfo]:
    """pytest.raises, and the message must be one bounded line."""
    with pytest.raises(kind, match=match) as e:
        yield e
    one_line(e.value, limit)


#: Above this, two unequal byte strings are described, not diffed.
BIG_BYTES = 4096


def _describe_bytes(left: object, right: object) -> list[str] | None:
    """Lengths and the first difference of two large byte strings (None for anything else)."""
    kinds = (bytes, bytearray, memoryview)
    if not isinstance(left, kinds) or not isinstance(right, kinds):
        return None
    a, b = bytes(left), bytes(right)
    if max(len(a), len(b)) <= BIG_BYTES:
        return None
    n, step = min(len(a), len(b)), 1 << 16
    block = next((o for o in range(0, n, step) if a[o:o + step] != b[o:o + step]), n)  # slices compare in C
    at = next((i for i in range(block, min(block + step, n)) if a[i] != b[i]), n)
    zeros = [name for name, v in (("left", a), ("right", b)) if v.count(0) == len(v)]
    return [f"{len(a)} bytes == {len(b)} bytes",
            f"first difference at offset {at}: {a[at:at + 16].hex() or '(end)'} vs {b[at:at + 16].hex() or '(end)'}",
            *(f"the {name} side is all zeros" for name in zeros)]


def pytest_configure(config: pytest.Config) -> None:
    """A failed `==` between large byte strings is described, never diffed.

    pytest's explanation of a failed sequence comparison ndiffs both sides'
    pretty-printed reprs under -v, and always when CI or BUILD_NUMBER is set:
    for two 1 MiB plaintexts that never ends, so a failing test hung instead
    of failing (tools/mutants.py saw a timeout, not a kill). Its hook cannot be
    overridden by another hook (all of them run), so the function it calls is
    wrapped; if pytest ever moves it, this does nothing.
    """
    from _pytest.assertion import util

    compare = getattr(util, "assertrepr_compare", None)
    if compare is None or getattr(compare, "modelseal", False):
        return

    def assertrepr_compare(config: pytest.Config, op: str, left: object, right: object) -> list[str] | None:
        described = _describe_bytes(left, right) if op == "==" else None
        return described if described is not None else compare(config=config, op=op, left=left, right=right)

    assertrepr_compare.modelseal = True  # type: ignore[attr-defined]
    util.assertrepr_compare = assertrepr_compare


@pytest.fixture
def shm() -> Path:
    """A fresh directory on tmpfs: plaintext in tests goes here, never to disk."""
    path = SHM / f"modelseal-test-{uuid.uuid4().hex[:12]}"
    path.mkdir(mode=0o700)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def disk_dir(tmp_path: Path) -> Path:
    """A directory on the ordinary (non-tmpfs) filesystem, for refusal tests."""
    base = Path(os.environ.get("MODELSEAL_TEST_DISK", "/var/tmp"))
    path = base / f"modelseal-disk-{uuid.uuid4().hex[:12]}"
    path.mkdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@dataclass
class Result:
    code: int
    stdout: bytes
    stderr: str

    def logs(self) -> list[dict]:
        return [json.loads(line) for line in self.stderr.splitlines() if line.startswith("{")]

    def error(self) -> str:
        errors = [r for r in self.logs() if r.get("event") == "failed"]
        return errors[-1]["error"] if errors else ""


def modelseal(*args: str, env: dict | None = None, stdin: bytes | None = None, timeout: float = 300) -> Result:
    """Run the real command line in a subprocess, as an init container would."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MODELSEAL_")}
    full_env.update(env or {})
    proc = subprocess.run(
        [sys.executable, "-m", "modelseal", *args],
        input=stdin, capture_output=True, env=full_env, timeout=timeout,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr.decode(errors="replace"))


@pytest.fixture
def cli():
    return modelseal


def open_fifo_writer(fifo: Path, proc: subprocess.Popen, timeout: float = 60):
    """The writing end of `fifo`, once `proc` (the stage) has opened its reading end.

    A plain open() would block forever if the stage exited before opening it (a
    bug under test, a mutant): this fails the test instead."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # ENXIO until a reader has it open
            break
        except OSError:
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                raise AssertionError(f"the stage exited ({proc.returncode}) before reading its input: {err[-1000:]}")
            if time.monotonic() > deadline:
                raise AssertionError("the stage never opened its input")
            time.sleep(0.02)
    os.set_blocking(fd, True)
    return os.fdopen(fd, "wb")
