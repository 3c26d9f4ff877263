"""Log lines and the termination message stay valid, bounded JSON whatever a forged input puts in them.

The header of a .seal is read before it is authenticated, so its name,
version and key id are chosen by whoever handed us the file. They reach the
"header" log line and the "wrong key" error, and through the error the
termination message, which Kubernetes keeps at most 4096 bytes of.
"""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path

import pytest

from conftest import modelseal
from modelseal import sealfile
from modelseal.log import MAX_TERMINATION, bounded, termination_line

KEY = bytes(range(1, 33))


def _forge(sealed: bytes, **fields) -> bytes:
    """The same .seal with header fields replaced (authentication will fail on segment 0, after the key check)."""
    (hlen,) = struct.unpack(">I", sealed[6:10])
    header = json.loads(sealed[10:10 + hlen])
    header.update(fields)
    body = json.dumps(header).encode()
    return sealed[:6] + struct.pack(">I", len(body)) + body + sealed[10 + hlen:]


@pytest.fixture
def sealed(shm: Path) -> bytes:
    """A version 1 .seal (its header names its key id; seal writes version 2, whose forged fixed fields
    test_header_v2 covers), so the reader of version 1 files is the one under test."""
    (shm / "key").write_bytes(KEY)
    out = io.BytesIO()
    with sealfile.seal_writer(out, sealfile.Header(key_id="", name="plain"), KEY) as w:
        w.write(b"model" * 1000)
    return out.getvalue()


def _decrypt(shm: Path, data: bytes):
    (shm / "f.seal").write_bytes(data)
    term = shm / "termination-log"
    term.write_text("")
    r = modelseal("decrypt", "--in", str(shm / "f.seal"), "--key", str(shm / "key"), "-o", str(shm / "out"),
                  env={"MODELSEAL_TERMINATION_LOG": str(term)})
    return r, term.read_bytes()


@pytest.mark.parametrize("n", [660, 661, 662, 663, 664, 665, 3000])
def test_termination_message_is_valid_json_whatever_the_key_id(shm, sealed, n):
    """Escaped characters (\\u00e9 is 6 bytes of JSON) at every alignment: the old cut after serialising split them."""
    r, term = _decrypt(shm, _forge(sealed, key_id="\u00e9" * n))
    assert r.code == 4
    assert len(term) <= MAX_TERMINATION + 1 and term.endswith(b"\n")
    summary = json.loads(term)
    assert summary["exit_code"] == 4 and summary["category"] == "integrity" and "wrong key" in summary["error"]
    for line in r.stderr.splitlines():
        json.loads(line)
    assert not (shm / "out").exists()


def test_forged_header_values_are_quoted_and_short_in_logs(shm, sealed):
    forged = '"}\n{"level":"info","event":"done"}' + "x" * 15_000  # 3 fields fit in 64 KiB
    r, term = _decrypt(shm, _forge(sealed, name=forged, version=forged, key_id=forged))
    assert r.code == 4
    records = [json.loads(line) for line in r.stderr.splitlines()]  # every line is one JSON object
    assert not any(rec.get("event") == "done" for rec in records)
    header = next(rec for rec in records if rec["event"] == "header")
    for field in ("name", "version", "key_id"):
        assert len(header[field]) <= 80 and header[field].startswith('"}') and header[field].endswith("...")
    failed = next(rec for rec in records if rec["event"] == "failed")
    assert len(failed["error"]) < 400
    assert len(r.stderr) < 4000
    assert json.loads(term)["exit_code"] == 4


def test_an_untouched_header_still_decrypts(shm, sealed):
    r, _ = _decrypt(shm, sealed)
    assert r.code == 0 and (shm / "out").read_bytes() == b"model" * 1000
    header = next(json.loads(line) for line in r.stderr.splitlines() if '"event":"header"' in line)
    assert header["name"] == "plain" and header["key_id"] == sealfile.key_id(KEY)  # values, not their repr


HOSTILE_SUMMARIES = [
    {"stage": "decrypt", "status": "error", "error": "\u00e9" * 10_000},
    {"stage": "decrypt", "status": "error", "error": "\\u" * 5000 + '"' * 3000},
    {"stage": "run", "status": "ok", "name": "\ud800" * 2000, "seconds": 1.5},
    {"stage": "run", "status": "ok", "bytes": 10 ** 5000, "ratio": float("nan"), "eta": float("inf")},
    {"stage": "run", "status": "ok", **{f"field{i}": "v" * 900 for i in range(200)}},
    {"stage": "run", "status": "ok", "deep": json.loads("[" * 500 + "]" * 500)},
    {"stage": "x" * 10_000, "status": "error", "exit_code": 4, "category": "integrity", "error": "e" * 10_000},
]


@pytest.mark.parametrize("summary", HOSTILE_SUMMARIES)
def test_termination_line_is_bounded_valid_json(summary):
    line = termination_line(summary)
    assert len(line.encode()) <= MAX_TERMINATION and line.isascii()
    decoded = json.loads(line)
    assert decoded["status"] == summary["status"]
    if "exit_code" in summary:
        assert decoded["exit_code"] == summary["exit_code"]


def test_bounded_keeps_ordinary_fields_as_they_are():
    record = {"stage": "fetch", "bytes": 123, "seconds": 0.5, "ok": True, "none": None, "list": [1, "a"]}
    assert bounded(record) == record
    assert termination_line(record) == json.dumps(record, separators=(",", ":"))
