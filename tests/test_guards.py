"""Promises that had no test failing when they broke (issue 15), each guarded here.

Every test states the promise and checks it through the real command line or
the real reader, against real servers on 127.0.0.1 where the network is
involved; tools/mutants.py plants the bug each one exists to catch and
checks that it does. (Plaintext to a target that does not exist yet, on
disk, is guarded in test_targets.py.)
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from conftest import modelseal, need, open_fifo_writer
from modelseal import sealfile
from modelseal.errors import CapacityError, IntegrityError
from modelseal.sources import open_source
from modelseal.streaming import AES256_GCM_HKDF_1MB as P
from modelseal.unpack import Limits, extract
from support.faults import Fault
from support.fixtures import fast
from support.objects import ObjectServer

MIB = 1 << 20


def sealed_bytes(plain: bytes, key: bytes) -> bytes:
    out = io.BytesIO()
    writer = sealfile.seal_writer(out, sealfile.Header(key_id=""), key)
    writer.write(plain)
    writer.close()
    return out.getvalue()


@pytest.fixture
def keyfile(shm: Path) -> tuple[Path, bytes]:
    key = os.urandom(32)
    (shm / "key").write_bytes(key)
    return shm / "key", key


# ---- a wrong --sha256 pin -------------------------------------------------------------

@pytest.mark.parametrize("stage", ["fetch-model", "run"])
def test_a_wrong_sha256_pin_is_exit_4_with_nothing_left(shm: Path, keyfile, stage: str) -> None:
    key, raw = keyfile
    src = shm / "model"
    src.mkdir()
    (src / "w.bin").write_bytes(os.urandom(3 * MIB))
    assert modelseal("seal", str(src), "-o", str(shm / "m.seal"), "--key", str(key)).code == 0
    good = hashlib.sha256((shm / "m.seal").read_bytes()).hexdigest()
    wrong = good[:-1] + ("0" if good[-1] != "0" else "1")
    out = shm / ("out.seal" if stage == "fetch-model" else "models/m")
    args = (["fetch-model", "--source", f"file://{shm}/m.seal", "-o", str(out)] if stage == "fetch-model" else
            ["run", "--source", f"file://{shm}/m.seal", "--key", str(key), "-o", str(out)])
    r = modelseal(*args, "--sha256", wrong)
    assert r.code == 4 and "sha256 mismatch" in r.error() and wrong in r.error(), r.stderr
    assert sorted(p.name for p in shm.iterdir()) == ["key", "m.seal", "model"]  # no output, .partial, staging, parents
    r = modelseal(*args, "--sha256", good)
    assert r.code == 0, r.stderr


# ---- key bytes never in an error ----------------------------------------------------------

def key_forms(key: bytes) -> list[str]:
    b64 = base64.b64encode(key).decode()
    return [key.hex(), key.hex().upper(), b64, b64.rstrip("="), base64.urlsafe_b64encode(key).decode(),
            key.decode("latin-1"), repr(key)[2:-1], b64[:24], key.hex()[:24]]


@pytest.mark.parametrize("value,query,expect", [
    ("b64", "?encoding=hex", "not valid hex"),           # a base64 key read as hex
    ("hex", "?encoding=base64", "is 48 bytes"),           # a hex key read as base64: 48 bytes
    ("b64short", "", "is 31 bytes"),                      # the wrong length
    ("b64", "?field=key", "not valid UTF-8 JSON"),        # not JSON at all
    ("json", "?field=other", "no JSON field"),            # JSON without the field
    ("jsonhex", "?field=key&encoding=base64", "not valid base64"),
])
def test_key_bytes_never_reach_errors_logs_or_the_termination_message(shm: Path, value: str, query: str,
                                                                      expect: str) -> None:
    key = os.urandom(32)
    text = {"b64": base64.b64encode(key).decode(), "hex": key.hex(), "b64short": base64.b64encode(key[:31]).decode(),
            "json": json.dumps({"key": base64.b64encode(key).decode()}),
            "jsonhex": json.dumps({"key": key.hex() + "!"})}[value]
    forms = key_forms(key) + ([text] if value != "json" else [json.loads(text)["key"]])
    term = shm / "termination"
    term.write_text("")
    r = modelseal("fetch-key", "--key-uri", f"env:MODEL_KEY{query}", "-o", str(shm / "key"),
                  env={"MODEL_KEY": text, "MODELSEAL_TERMINATION_LOG": str(term)})
    assert r.code == 4 and expect in r.error(), r.stderr
    everything = r.stdout.decode("latin-1") + r.stderr + term.read_text()
    for form in forms:
        assert form not in everything, f"key material ({form[:8]}...) in the output"
    assert not (shm / "key").exists() and not (shm / "key.partial").exists()


# ---- zip compression ratio --------------------------------------------------------------------

def zip_bomb(size: int) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("zeros.bin", bytes(size))
    return buf.getvalue()


def test_zip_compression_ratio_limit(shm: Path) -> None:
    bomb = zip_bomb(64 * MIB)  # deflate makes ~1000:1 of zeros
    with pytest.raises(CapacityError, match="compression ratio over 100"):
        extract(io.BytesIO(bomb), str(shm / "a"), limits=Limits(max_ratio=100))
    assert sorted(os.listdir(shm)) == []
    (shm / "bomb.zip").write_bytes(bomb)
    r = modelseal("unpack", "--in", str(shm / "bomb.zip"), "-o", str(shm / "b"), "--max-ratio", "100")
    assert r.code == 6 and "ratio" in r.error(), r.stderr
    assert sorted(os.listdir(shm)) == ["bomb.zip"]
    stats = extract(io.BytesIO(bomb), str(shm / "c"), limits=Limits(max_ratio=2000))  # under the limit: fine
    assert stats["bytes"] == 64 * MIB


# ---- the final name only when complete ------------------------------------------------------------

@pytest.mark.parametrize("stage", ["decrypt", "run", "fetch-model"])
def test_output_appears_under_its_final_name_only_when_complete(shm: Path, keyfile, stage: str) -> None:
    key, raw = keyfile
    src = shm / "model"
    src.mkdir()
    (src / "w.bin").write_bytes(os.urandom(6 * MIB))
    assert modelseal("seal", str(src), "-o", str(shm / "m.seal"), "--key", str(key)).code == 0
    data = (shm / "m.seal").read_bytes()
    fifo = shm / "in.fifo"
    os.mkfifo(fifo)
    out = shm / {"decrypt": "m.tar", "run": "tree", "fetch-model": "copy.seal"}[stage]
    args = {"decrypt": ["decrypt", "--in", str(fifo), "--key", str(key), "-o", str(out)],
            "run": ["run", "--source", f"file://{fifo}", "--key", str(key), "-o", str(out)],
            "fetch-model": ["fetch-model", "--source", f"file://{fifo}", "-o", str(out)]}[stage]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELSEAL_")}
    proc = subprocess.Popen([sys.executable, "-m", "modelseal", *args], stderr=subprocess.PIPE, env=env)
    with open_fifo_writer(fifo, proc) as f:
        f.write(data[: len(data) - MIB])  # all but the last MiB: most of the output is written
        f.flush()
        deadline = time.monotonic() + 60
        while not _written(shm, out) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _written(shm, out), "nothing was written"
        assert not out.exists()  # the output is there, under another name, until it is complete
        f.write(data[len(data) - MIB:])
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()
    assert out.exists() and not Path(str(out) + ".partial").exists()


def _written(shm: Path, out: Path) -> bool:
    names = [p for p in shm.rglob("*") if p.is_file() and p.stat().st_size > 0 and p.name not in ("m.seal", "key")
             and "model" not in p.parts]
    return any(p != out for p in names)


# ---- https: a short body, a resume elsewhere ----------------------------------------------------------

@pytest.fixture
def blob() -> bytes:
    return os.urandom(3 * MIB + 12345)


def test_https_body_that_ends_cleanly_before_its_length_is_resumed(pki, blob, shm: Path) -> None:
    """A well-formed answer that is simply short (Content-Length agrees with it) is not the whole object."""
    srv = ObjectServer({"/m.seal": blob}, tls=pki.server_context())
    try:
        srv.add_fault(Fault("cut", after=500_000, method="GET"), Fault("short", after=700_000, method="GET"))
        with open_source(srv.url + "/m.seal", fast(ca=pki.ca)).open() as s:
            got = s.read()
        assert got == blob
        assert [r[2] for r in srv.requests] == [None, "bytes=500000-", "bytes=1200000-"]
        srv.reset_counters()
        srv.add_fault(Fault("cut", after=500_000, method="GET"), Fault("short", after=700_000, method="GET"))
        r = modelseal("fetch-model", "--source", srv.url + "/m.seal", "--ca", pki.ca, "-o", str(shm / "m.seal"),
                      "--retries", "3")
        assert r.code == 0, r.stderr
        assert (shm / "m.seal").read_bytes() == blob
    finally:
        srv.close()


def _sealed_model(shm: Path, *extra: str) -> bytes:
    model = shm / "model"
    model.mkdir()
    (model / "weights.bin").write_bytes(os.urandom(3 * MIB + 777))
    r = modelseal("keygen", "-o", str(shm / "key"))
    assert r.code == 0, r.stderr
    r = modelseal("seal", str(model), "-o", str(shm / "src.seal"), "--key", str(shm / "key"), *extra)
    assert r.code == 0, r.stderr
    sealed = (shm / "src.seal").read_bytes()
    for p in (shm / "src.seal", shm / "key", model / "weights.bin", model):
        p.rmdir() if p.is_dir() else p.unlink()
    return sealed


def test_https_seal_that_ends_cleanly_before_its_header_says_is_exit_4_with_nothing_kept(pki, shm: Path) -> None:
    """The first answer itself short, its Content-Length agreeing: only the .seal header's declared sizes
    tell. fetch-model exited 0 with a short file, and decrypt refused it on every restart (the soak's find)."""
    sealed = _sealed_model(shm)
    assert sealfile.declared_length(sealed[:sealfile.MAX_PREFIX]) == len(sealed)
    srv = ObjectServer({"/m.seal": sealed}, tls=pki.server_context())
    try:
        srv.add_fault(Fault("short", after=len(sealed) - 20_000, method="GET"))
        r = modelseal("fetch-model", "--source", srv.url + "/m.seal", "--ca", pki.ca, "-o", str(shm / "m.seal"))
        assert r.code == 4, r.stderr
        assert f"the download is {len(sealed) - 20_000} bytes and its .seal header declares {len(sealed)}" in r.stderr
        assert os.listdir(shm) == []
        # Whole, it is fetched as before; another format, which no header describes, is fetched whatever its length.
        r = modelseal("fetch-model", "--source", srv.url + "/m.seal", "--ca", pki.ca, "-o", str(shm / "m.seal"))
        assert r.code == 0, r.stderr
        assert (shm / "m.seal").read_bytes() == sealed
    finally:
        srv.close()


def test_a_compressed_seal_or_another_format_declares_no_length(shm: Path) -> None:
    """With compression the ciphertext's length is not in the header: decrypt's checks are what hold."""
    sealed = _sealed_model(shm, "--compress", "zstd")
    assert sealfile.declared_length(sealed[:sealfile.MAX_PREFIX]) is None
    assert sealfile.declared_length(b"not a seal") is None
    assert sealfile.declared_length(b"") is None


def test_https_resume_answered_at_another_offset_is_exit_4(pki, blob, shm: Path) -> None:
    srv = ObjectServer({"/m.seal": blob}, tls=pki.server_context())
    try:
        srv.add_fault(Fault("cut", after=500_000, method="GET"), Fault("offset", after=4096, method="GET"))
        with pytest.raises(IntegrityError, match="asked to resume at byte 500000"):
            with open_source(srv.url + "/m.seal", fast(ca=pki.ca)).open() as s:
                s.read()
        srv.add_fault(Fault("cut", after=500_000, method="GET"), Fault("offset", after=4096, method="GET"))
        r = modelseal("fetch-model", "--source", srv.url + "/m.seal", "--ca", pki.ca, "-o", str(shm / "m.seal"))
        assert r.code == 4, r.stderr
        assert os.listdir(shm) == []
    finally:
        srv.close()


# ---- a full volume during decrypt ---------------------------------------------------------------------

def test_full_volume_during_decrypt_is_exit_6_with_nothing_left(shm: Path, keyfile) -> None:
    key, raw = keyfile
    sealed = sealed_bytes(os.urandom(8 * MIB), raw)
    (shm / "m.seal").write_bytes(sealed)
    vol = shm / "vol"
    vol.mkdir()
    if os.geteuid() != 0:
        need("mounting a small tmpfs needs root")
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(vol)]).returncode:
        need("cannot mount a tmpfs here")
    try:
        # Checked up front (the ciphertext's length gives the plaintext's):
        r = modelseal("decrypt", "--in", str(shm / "m.seal"), "--key", str(key), "-o", f"{vol}/m.tar")
        assert r.code == 6 and "free" in r.error(), r.stderr
        # Unknown up front (stdin), or with the check off: the volume fills mid-write.
        for args, stdin in ((["--in", "-"], sealed), (["--in", str(shm / "m.seal"), "--no-preflight"], None)):
            r = modelseal("decrypt", *args, "--key", str(key), "-o", f"{vol}/m.tar", stdin=stdin)
            assert r.code == 6 and "No space left" in r.error(), r.stderr
            assert os.listdir(vol) == []
    finally:
        subprocess.run(["umount", str(vol)], check=True)


# ---- bytes after a full-size final segment --------------------------------------------------------------

@pytest.mark.parametrize("extra", [1, 100, P.segment_size], ids=["one byte", "100 bytes", "a segment's worth"])
def test_bytes_after_a_full_size_final_segment_are_exit_4(shm: Path, keyfile, extra: int) -> None:
    key, raw = keyfile
    n = P.first_plaintext_size + 2 * P.plaintext_size  # the final segment is exactly full
    sealed = sealed_bytes(os.urandom(n), raw)
    assert (len(sealed) - len(sealfile.encode_prefix(sealfile.read_prefix(io.BytesIO(sealed))[0]))
            - P.header_size) % P.segment_size == P.segment_size - P.header_size
    (shm / "m.seal").write_bytes(sealed + os.urandom(extra))
    r = modelseal("decrypt", "--in", str(shm / "m.seal"), "--key", str(key), "-o", str(shm / "out"))
    assert r.code == 4, r.stderr
    assert "after the final segment" in r.error() or "segment 3" in r.error(), r.error()
    assert sorted(os.listdir(shm)) == ["key", "m.seal"]


# ---- the key-id check runs --------------------------------------------------------------------------------

def test_wrong_key_is_named_by_the_key_id_check(shm: Path, keyfile) -> None:
    key, raw = keyfile
    (shm / "m.seal").write_bytes(sealed_bytes(os.urandom(100_000), raw))
    other = os.urandom(32)
    (shm / "other").write_bytes(other)
    r = modelseal("decrypt", "--in", str(shm / "m.seal"), "--key", str(shm / "other"), "-o", str(shm / "out"))
    assert r.code == 4, r.stderr
    assert f"sealed with key id '{sealfile.key_id(raw)}'" in r.error()  # from the unauthenticated header: quoted
    assert f"the key given has id {sealfile.key_id(other)}" in r.error()
    assert not [x for x in r.logs() if x.get("event") == "progress"]  # decided before any segment
