"""A restarted stage that finds its own completed delivery at DEST exits 0 (issue 25, found by the soak).

Killed after its rename but before it exited, `run` or `unpack` is started
again by the kubelet on the same volume. It used to refuse its own complete
output (exit 2, "exists and is not empty") forever: Init:CrashLoopBackOff
with the model in place. The real CLI, plaintext on /dev/shm.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from conftest import modelseal, open_fifo_writer
from modelseal import sealfile

MIB = 1 << 20


def _model(root: Path, name: str) -> Path:
    model = root / name
    model.mkdir()
    (model / "weights.bin").write_bytes(os.urandom(MIB + 17))
    (model / "config.json").write_bytes(os.urandom(300).hex().encode())
    return model


@pytest.fixture
def sealed(shm: Path) -> Path:
    """Two different models sealed with one key: a.seal, b.seal."""
    (shm / "key").write_bytes(os.urandom(32))
    for name in ("a", "b"):
        r = modelseal("seal", str(_model(shm, name)), "-o", str(shm / f"{name}.seal"), "--key", str(shm / "key"))
        assert r.code == 0, r.stderr
    return shm


def _run(shm: Path, seal: str, dest: Path):
    return modelseal("run", "--source", f"file://{shm / seal}", "--key", str(shm / "key"), "-o", str(dest))


def _state(tree: Path) -> dict[str, tuple[int, int, bytes]]:
    """Each file's inode, mtime and bytes: a rewrite changes the inode (a new staging tree)."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(tree.rglob("*"))}


def _events(r) -> list[str]:
    return [line.get("event") for line in r.logs()]


def _refused_as_today(r, dest: Path) -> None:
    assert r.code == 2, r.stderr
    assert r.error() == f"{dest} exists and is not empty: refusing to overwrite it"
    assert "already_delivered" not in _events(r)


def test_run_restarted_after_its_rename_finds_its_delivery_and_exits_0(sealed: Path):
    dest = sealed / "out" / "model"
    assert _run(sealed, "a.seal", dest).code == 0
    assert (sealed / "out" / ".model.delivered").is_file()
    before = _state(dest)
    assert before["weights.bin"][2] == (sealed / "a" / "weights.bin").read_bytes()
    again = _run(sealed, "a.seal", dest)
    assert again.code == 0, again.stderr
    assert _events(again).count("already_delivered") == 1
    assert "unpack_start" not in _events(again)  # the payload was not read again
    assert _state(dest) == before
    assert sorted(os.listdir(sealed / "out")) == [".model.delivered", "model"]


def test_run_of_another_model_to_a_delivered_dest_is_refused(sealed: Path):
    dest = sealed / "out" / "model"
    assert _run(sealed, "a.seal", dest).code == 0
    before = _state(dest)
    _refused_as_today(_run(sealed, "b.seal", dest), dest)
    assert _state(dest) == before


def test_a_non_empty_dest_without_a_record_is_refused(sealed: Path):
    dest = sealed / "out" / "model"
    dest.mkdir(parents=True)
    (dest / "other").write_bytes(b"not ours")
    _refused_as_today(_run(sealed, "a.seal", dest), dest)
    assert (dest / "other").read_bytes() == b"not ours"


@pytest.mark.parametrize("record", ["modelseal-delivered-v1 " + "0" * 64 + "\n", "garbage\n", ""])
def test_a_record_naming_another_delivery_is_refused(sealed: Path, record: str):
    dest = sealed / "out" / "model"
    assert _run(sealed, "a.seal", dest).code == 0
    (sealed / "out" / ".model.delivered").write_text(record)
    _refused_as_today(_run(sealed, "a.seal", dest), dest)


def test_a_record_copied_from_another_dest_does_not_vouch_for_this_one(sealed: Path):
    """b's record beside a's tree (someone else's delivery): refused."""
    assert _run(sealed, "b.seal", sealed / "other" / "model").code == 0
    dest = sealed / "out" / "model"
    assert _run(sealed, "a.seal", dest).code == 0
    (sealed / "out" / ".model.delivered").write_bytes((sealed / "other" / ".model.delivered").read_bytes())
    _refused_as_today(_run(sealed, "a.seal", dest), dest)


def test_killed_between_the_record_and_the_rename_the_restart_delivers(sealed: Path):
    """The record written, the staging directory not yet renamed: the restart cleans up and delivers."""
    dest = sealed / "out" / "model"
    assert _run(sealed, "a.seal", dest).code == 0
    os.rename(dest, sealed / "out" / ".model.staging-0123456789abcdef")  # as if killed before the rename
    r = _run(sealed, "a.seal", dest)
    assert r.code == 0, r.stderr
    assert "already_delivered" not in _events(r) and "stale_staging_removed" in _events(r)
    assert (dest / "weights.bin").read_bytes() == (sealed / "a" / "weights.bin").read_bytes()
    assert sorted(os.listdir(sealed / "out")) == [".model.delivered", "model"]
    assert "already_delivered" in _events(_run(sealed, "a.seal", dest))


def test_a_failed_restart_leaves_no_stale_record(sealed: Path):
    """Killed between the record and the rename, then restarted with a wrong key (exit 4): nothing is left
    beside the absent dest, not even the record (it would vouch for nothing)."""
    dest = sealed / "out" / "model"
    assert _run(sealed, "a.seal", dest).code == 0
    os.rename(dest, sealed / "out" / ".model.staging-0123456789abcdef")
    (sealed / "other-key").write_bytes(os.urandom(32))
    r = modelseal("run", "--source", f"file://{sealed / 'a.seal'}", "--key", str(sealed / "other-key"),
                  "-o", str(dest))
    assert r.code == 4, r.stderr
    assert os.listdir(sealed / "out") == []


def test_a_stale_record_of_another_model_is_replaced_by_the_delivery(sealed: Path):
    dest = sealed / "out" / "model"
    assert _run(sealed, "b.seal", dest).code == 0
    os.rename(dest, sealed / "out" / ".model.staging-0123456789abcdef")
    assert _run(sealed, "a.seal", dest).code == 0
    assert (dest / "weights.bin").read_bytes() == (sealed / "a" / "weights.bin").read_bytes()
    assert "already_delivered" in _events(_run(sealed, "a.seal", dest))
    _refused_as_today(_run(sealed, "b.seal", dest), dest)


def _chain(shm: Path, seal: str, dest: Path):
    r = modelseal("decrypt", "--in", str(shm / seal), "--key", str(shm / "key"), "-o", str(shm / "m.tar"))
    assert r.code == 0, r.stderr
    return modelseal("unpack", "--in", str(shm / "m.tar"), "-o", str(dest))


def test_unpack_restarted_after_its_rename_finds_its_delivery_and_exits_0(sealed: Path):
    dest = sealed / "out" / "model"
    assert _chain(sealed, "a.seal", dest).code == 0
    before = _state(dest)
    again = modelseal("unpack", "--in", str(sealed / "m.tar"), "-o", str(dest))
    assert again.code == 0, again.stderr
    assert _events(again).count("already_delivered") == 1
    assert _state(dest) == before


def test_unpack_after_run_of_the_same_seal_is_the_same_delivery(sealed: Path):
    """The identity is the sealed model's: run's record vouches for unpack of the same .seal."""
    dest = sealed / "out" / "model"
    assert _run(sealed, "a.seal", dest).code == 0
    r = modelseal("decrypt", "--in", str(sealed / "a.seal"), "--key", str(sealed / "key"), "-o", str(sealed / "m.tar"))
    assert r.code == 0, r.stderr
    assert modelseal("unpack", "--in", str(sealed / "m.tar"), "-o", str(dest)).code == 0


def test_unpack_of_another_model_to_a_delivered_dest_is_refused(sealed: Path):
    dest = sealed / "out" / "model"
    assert _chain(sealed, "a.seal", dest).code == 0
    before = _state(dest)
    _refused_as_today(_chain(sealed, "b.seal", dest), dest)
    assert _state(dest) == before


def test_unpack_of_a_tar_without_decrypts_record_is_refused(sealed: Path):
    """No authenticated identity (the .sizes file gone): a non-empty dest is refused as today."""
    dest = sealed / "out" / "model"
    assert _chain(sealed, "a.seal", dest).code == 0
    (sealed / "m.tar.sizes").unlink()
    _refused_as_today(modelseal("unpack", "--in", str(sealed / "m.tar"), "-o", str(dest)), dest)


def test_unpack_with_a_malformed_identity_in_the_sizes_file_is_exit_4(sealed: Path):
    dest = sealed / "out" / "model"
    assert _chain(sealed, "a.seal", dest).code == 0
    (sealed / "m.tar.sizes").write_text('{"delivery": "../x"}\n')
    r = modelseal("unpack", "--in", str(sealed / "m.tar"), "-o", str(dest))
    assert r.code == 4, r.stderr
    assert "malformed" in r.error() and "\n" not in r.error()


def test_a_failed_delivery_leaves_no_record(sealed: Path):
    """The record is written before the rename; when the rename then fails (dest appeared meanwhile), the
    record goes too: it must never vouch for what someone else put at dest."""
    r = modelseal("decrypt", "--in", str(sealed / "a.seal"), "--key", str(sealed / "key"), "-o", str(sealed / "m.tar"))
    assert r.code == 0, r.stderr
    fifo = sealed / "f.tar"
    os.mkfifo(fifo)
    (sealed / "f.tar.sizes").write_bytes((sealed / "m.tar.sizes").read_bytes())  # decrypt's identity of a
    dest = sealed / "out" / "model"
    dest.parent.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "modelseal", "unpack", "--in", str(fifo), "-o", str(dest)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        with open_fifo_writer(fifo, proc) as w:
            w.write((sealed / "m.tar").read_bytes())
            dest.mkdir()  # before the end of the input, so before the rename
            (dest / "theirs").write_bytes(b"someone else's")
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 2, err
    assert b"appeared or changed during the extraction" in err
    assert sorted(os.listdir(dest.parent)) == ["model"]
    assert os.listdir(dest) == ["theirs"]


def _v1(shm: Path, name: str, model: str) -> Path:
    """A version 1 .seal of the tar of `model` (one key, no recipients), as older sealers wrote them."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        t.add(shm / model, arcname=".")
    out = io.BytesIO()
    writer = sealfile.seal_writer(out, sealfile.Header(name=name), (shm / "key").read_bytes())
    writer.write(buf.getvalue())
    writer.close()
    path = shm / f"{name}.v1.seal"
    path.write_bytes(out.getvalue())
    return path


def test_version_1_seal_restarted_finds_its_delivery_another_is_refused(sealed: Path):
    """Version 1: the key id checked, then the identity over its whole prefix; another prefix is refused."""
    a, b = _v1(sealed, "a", "a"), _v1(sealed, "b", "b")
    dest = sealed / "out" / "model"
    assert _run(sealed, a.name, dest).code == 0
    before = _state(dest)
    again = _run(sealed, a.name, dest)
    assert again.code == 0 and _events(again).count("already_delivered") == 1, again.stderr
    assert _state(dest) == before
    _refused_as_today(_run(sealed, b.name, dest), dest)
