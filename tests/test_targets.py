"""Where plaintext and keys land: decided on what is actually opened, as an attacker would test it.

Every case points a stage at a disk directory by a route a path-string check
misses (a `..` through a symlink, a trailing slash, a directory swapped for a
symlink after the check, stdout redirected to a file, a target that does not
exist yet) and asserts both the refusal (exit 7, or 2 for a malformed target)
and that nothing reached the disk. Also: `--delete-key` with a file:// key URI,
and key and input paths holding URI syntax characters.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import modelseal, open_fifo_writer

KEY_BYTES = bytes(range(32))


@pytest.fixture
def sealed(shm: Path) -> tuple[Path, Path, bytes]:
    """A key, a small .seal of a random plaintext (3 segments), and that plaintext."""
    key = shm / "key"
    key.write_bytes(KEY_BYTES)
    data = os.urandom(2 * 2**20 + 12345)
    r = modelseal("seal", "-", "-o", str(shm / "m.seal"), "--key", str(key), stdin=data)
    assert r.code == 0, r.stderr
    return key, shm / "m.seal", data


@pytest.fixture
def model_seal(shm: Path) -> tuple[Path, Path]:
    """A key and a .seal of a small directory (for unpack and run)."""
    key = shm / "key"
    key.write_bytes(KEY_BYTES)
    src = shm / "model"
    (src / "sub").mkdir(parents=True)
    (src / "weights.bin").write_bytes(os.urandom(1 << 20))
    (src / "sub" / "config.json").write_text("{}")
    r = modelseal("seal", str(src), "-o", str(shm / "tree.seal"), "--key", str(key))  # beside `sealed`'s m.seal
    assert r.code == 0, r.stderr
    return key, shm / "tree.seal"


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


# ---- class 1: the path says tmpfs, the kernel says disk ---------------------

def test_dotdot_through_a_symlink_to_disk_is_refused(shm, disk_dir, sealed):
    key, seal, _ = sealed
    (shm / "x").mkdir()
    (disk_dir / "deep").mkdir()
    (shm / "x" / "link").symlink_to(disk_dir / "deep")
    before = disk_dir.stat().st_mtime_ns
    # abspath() turns /dev/shm/x/link/../plain.tar into /dev/shm/x/plain.tar; the kernel goes to disk_dir.
    r = modelseal("decrypt", "--in", str(seal), "--key", str(key), "-o", f"{shm}/x/link/../plain.tar")
    assert r.code == 7, r.stderr
    assert "refusing to write plaintext" in r.error() and "tmpfs" in r.error()
    assert listing(disk_dir) == ["deep"]
    assert disk_dir.stat().st_mtime_ns == before  # refused on the directory: not even an empty .partial came and went


def test_fetch_key_through_a_symlink_to_disk_is_refused(shm, disk_dir):
    (shm / "x").mkdir()
    (disk_dir / "deep").mkdir()
    (shm / "x" / "link").symlink_to(disk_dir / "deep")
    for target in (f"{shm}/x/link/../key", f"{shm}/x/link/key"):
        r = modelseal("fetch-key", "--key-uri", "env:K", "-o", target, env={"K": KEY_BYTES.hex()})
        assert r.code == 7 and "the key" in r.error(), r.stderr
    assert listing(disk_dir) == ["deep"]


@pytest.mark.parametrize("stage", ["decrypt", "fetch-key"])
def test_trailing_slash_is_a_usage_error_and_writes_nothing(shm, disk_dir, sealed, stage):
    key, seal, _ = sealed
    for target in (f"{disk_dir}/", f"{shm}/"):
        if stage == "decrypt":
            r = modelseal("decrypt", "--in", str(seal), "--key", str(key), "-o", target)
        else:
            r = modelseal("fetch-key", "--key-uri", "env:K", "-o", target, env={"K": KEY_BYTES.hex()})
        assert r.code == 2 and "directory" in r.error(), r.stderr
    assert listing(disk_dir) == [] and not (shm / ".partial").exists()


def test_a_failed_rename_leaves_no_partial_file(shm):
    """commit() can fail after the data is written (the target became a directory, a mount point):
    the whole plaintext sits in NAME.partial then, and must go with the error."""
    from modelseal.atomic import PartialFile

    out = shm / "model.tar"
    f = PartialFile(str(out))
    f.write(b"plaintext " * 1000)
    out.mkdir()
    (out / "x").write_text("occupied")  # os.replace cannot put a file over a non-empty directory
    with pytest.raises(OSError):
        f.commit()
    assert sorted(p.name for p in shm.iterdir()) == ["model.tar"]
    assert f.fd == -1 and f.dir_fd == -1


def test_planted_partial_symlink_is_replaced_not_followed(shm, disk_dir, sealed):
    key, seal, data = sealed
    victim = disk_dir / "victim"
    victim.write_bytes(b"untouched")
    (shm / "out").mkdir()
    (shm / "out" / "plain.tar.partial").symlink_to(victim)
    (shm / "out" / "plain.tar").symlink_to(disk_dir / "elsewhere")
    r = modelseal("decrypt", "--in", str(seal), "--key", str(key), "-o", str(shm / "out" / "plain.tar"))
    assert r.code == 0, r.stderr
    assert victim.read_bytes() == b"untouched" and not (disk_dir / "elsewhere").exists()
    out = shm / "out" / "plain.tar"
    assert not out.is_symlink() and out.read_bytes() == data


def feed_fifo(fifo: Path, payload: bytes, proc: subprocess.Popen) -> None:
    """Write `payload` into `fifo` once the stage opens it; nothing if the stage exits first (its exit code tells)."""
    try:
        with open_fifo_writer(fifo, proc) as f:
            f.write(payload)
    except (AssertionError, BrokenPipeError):
        pass


def _holds(pid: int, place: Path) -> bool:
    """Whether process `pid` has a descriptor open on `place` or on something inside it."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except FileNotFoundError:
        return False
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target == str(place) or target.startswith(str(place) + "/"):
            return True
    return False


def _swap_for_symlink_while_blocked(proc: subprocess.Popen, fifo: Path, payload: bytes, place: Path,
                                    disk: Path) -> None:
    """With the stage blocked opening its FIFO input, move `place` aside and put a symlink to disk there."""
    # Wait (not a fixed sleep: CI machines are slow) until the stage holds a descriptor on `place`
    # (its checked output directory) and so sits blocked opening the FIFO.
    deadline = time.monotonic() + 60
    while not _holds(proc.pid, place) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    place.rename(place.with_name(place.name + ".moved"))
    place.symlink_to(disk)
    feed_fifo(fifo, payload, proc)


@pytest.mark.parametrize("stage", ["decrypt", "unpack", "run"])
def test_parent_swapped_for_a_symlink_after_the_check(shm, disk_dir, sealed, model_seal, stage):
    """The classic TOCTOU: the check looked at a tmpfs directory; by the first write it is a symlink to disk."""
    if stage == "decrypt":
        key, seal, _ = sealed
        payload = seal.read_bytes()
    else:
        key, seal = model_seal
        payload = seal.read_bytes()
        if stage == "unpack":
            r = modelseal("decrypt", "--in", str(seal), "--key", str(key), "-o", str(shm / "m.tar"))
            assert r.code == 0, r.stderr
            payload = (shm / "m.tar").read_bytes()
    fifo = shm / "in.fifo"
    os.mkfifo(fifo)
    place = shm / "t" / "dir"
    place.mkdir(parents=True)
    out = place / ("plain.tar" if stage == "decrypt" else "model")
    args = {"decrypt": ["decrypt", "--in", str(fifo), "--key", str(key), "-o", str(out)],
            "unpack": ["unpack", "--in", str(fifo), "-o", str(out)],
            "run": ["run", "--source", f"file://{fifo}", "--key", str(key), "-o", str(out)]}[stage]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELSEAL_")}
    proc = subprocess.Popen([sys.executable, "-m", "modelseal", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    swapper = threading.Thread(target=_swap_for_symlink_while_blocked, args=(proc, fifo, payload, place, disk_dir))
    swapper.start()
    _, err = proc.communicate(timeout=120)
    swapper.join()
    assert proc.returncode == 0, err.decode()
    assert listing(disk_dir) == []  # not one byte through the symlink
    moved = shm / "t" / "dir.moved"
    assert (moved / out.name).exists()  # the bytes went where the check looked


def test_target_that_does_not_exist_yet_on_disk(shm, disk_dir, model_seal):
    """run and unpack create missing parents: on disk that is refused before anything is made."""
    key, seal = model_seal
    target = disk_dir / "NEW" / "models" / "resnet" / "1"
    before = disk_dir.stat().st_mtime_ns
    r = modelseal("run", "--source", str(seal), "--key", str(key), "-o", str(target))
    assert r.code == 7 and "refusing to write plaintext" in r.error(), r.stderr
    r = modelseal("decrypt", "--in", str(seal), "--key", str(key), "-o", str(shm / "m.tar"))
    assert r.code == 0
    r = modelseal("unpack", "--in", str(shm / "m.tar"), "-o", str(target))
    assert r.code == 7, r.stderr
    assert listing(disk_dir) == []  # not even the parents
    assert disk_dir.stat().st_mtime_ns == before  # decided on the nearest existing directory: nothing made, then removed


def test_target_whose_parent_is_a_symlink_to_disk(shm, disk_dir, model_seal):
    key, seal = model_seal
    (shm / "models").symlink_to(disk_dir)
    r = modelseal("run", "--source", str(seal), "--key", str(key), "-o", str(shm / "models" / "resnet" / "1"))
    assert r.code == 7, r.stderr
    assert listing(disk_dir) == []


def test_allow_disk_writes_once_warned(shm, disk_dir, model_seal):
    key, seal = model_seal
    r = modelseal("run", "--source", str(seal), "--key", str(key), "-o", str(disk_dir / "a" / "b"), "--allow-disk")
    assert r.code == 0, r.stderr
    assert [x["event"] for x in r.logs()].count("allow_disk") == 1
    assert (disk_dir / "a" / "b" / "weights.bin").stat().st_size == 1 << 20


# ---- class 2: stdout ----------------------------------------------------------

def _decrypt_to_stdout(seal: Path, key: Path, stdout, *extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELSEAL_")}
    return subprocess.run([sys.executable, "-m", "modelseal", "decrypt", "--in", str(seal), "--key", str(key),
                           "-o", "-", *extra], stdout=stdout, stderr=subprocess.PIPE, env=env, timeout=120)


def test_stdout_redirected_to_a_disk_file_is_refused(shm, disk_dir, sealed):
    key, seal, data = sealed
    target = disk_dir / "p.tar"
    with open(target, "wb") as f:
        r = _decrypt_to_stdout(seal, key, f)
    assert r.returncode == 7 and b"standard output" in r.stderr
    assert target.stat().st_size == 0
    with open(target, "wb") as f:
        r = _decrypt_to_stdout(seal, key, f, "--allow-disk")
    assert r.returncode == 0 and b"allow_disk" in r.stderr
    assert target.read_bytes() == data


def test_stdout_to_tmpfs_file_or_pipe_is_fine(shm, sealed):
    key, seal, data = sealed
    with open(shm / "p.tar", "wb") as f:
        assert _decrypt_to_stdout(seal, key, f).returncode == 0
    assert (shm / "p.tar").read_bytes() == data
    r = _decrypt_to_stdout(seal, key, subprocess.PIPE)
    assert r.returncode == 0 and r.stdout == data


def test_fetch_key_refuses_stdout(shm):
    r = modelseal("fetch-key", "--key-uri", "env:K", "-o", "-", env={"K": KEY_BYTES.hex()})
    assert r.code == 2 and "standard output" in r.error()
    assert r.stdout == b"" and KEY_BYTES.hex() not in r.stderr


# ---- class 9: --delete-key with a key URI ----------------------------------------

def test_delete_key_deletes_a_file_key_uri(shm, sealed):
    key, seal, _ = sealed
    r = modelseal("decrypt", "--in", str(seal), "--key-uri", f"file://{key}", "-o", str(shm / "out"), "--delete-key")
    assert r.code == 0, r.stderr
    assert not key.exists()


def test_delete_key_with_a_key_service_is_refused_before_any_io(shm, sealed):
    key, seal, _ = sealed
    r = modelseal("decrypt", "--in", str(seal), "--key-uri", "env:K", "-o", str(shm / "out"), "--delete-key",
                  env={"K": KEY_BYTES.hex()})
    assert r.code == 2 and "nothing to delete" in r.error()
    assert not (shm / "out").exists()


# ---- class 10: a path is a path ------------------------------------------------------

@pytest.mark.parametrize("name", ["key#frag", "key?encoding=hex", "k:ey", "%6Bey"])
def test_key_path_with_uri_characters(shm, sealed, name):
    key, seal, data = sealed
    decoy = shm / name.split("#")[0].split("?")[0]
    if decoy != shm / name:
        decoy.write_bytes(bytes(32))  # what a URL parse of the path would read instead
    (shm / name).write_bytes(KEY_BYTES)
    r = modelseal("decrypt", "--in", str(seal), "--key", str(shm / name), "-o", str(shm / "out"))
    assert r.code == 0, r.stderr
    assert (shm / "out").read_bytes() == data


def test_input_path_with_uri_characters(shm, sealed):
    key, seal, data = sealed
    odd = shm / "model?v=1#x.seal"
    seal.rename(odd)
    r = modelseal("decrypt", "--in", str(odd), "--key", str(key), "-o", str(shm / "out"))
    assert r.code == 0, r.stderr
    assert (shm / "out").read_bytes() == data
