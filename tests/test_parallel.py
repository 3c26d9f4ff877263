"""Parallel segment decryption (modelseal.parallel): worker processes, plaintext released in order.

Real worker processes over real shared memory, against the in-process
decryptor and Tink's published vector; damage (a flipped byte, truncation,
reordering, duplication, appended data) with several segments in flight; a
worker killed mid-way; the CLI's exit codes and leftovers; the default
worker count from the CPU affinity and a real cgroup CPU quota.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from support.cgroups import fake_cgroup, real_cgroup
from test_streaming import encrypt as streaming_encrypt
from modelseal import parallel
from modelseal.placement import cgroup
from modelseal.errors import IntegrityError
from modelseal.streaming import AES256_GCM_HKDF_1MB, DecryptingReader, Params

P = AES256_GCM_HKDF_1MB
FIRST, FULL = P.first_plaintext_size, P.plaintext_size
KEY = bytes(range(32))
AAD = b"modelseal parallel test"
SMALL = Params(segment_size=4096)  # many segments in little memory: several in flight at once


def encrypt(plaintext: bytes, params: Params = P) -> bytes:
    return streaming_encrypt(plaintext, KEY, AAD, params)


def segments(ciphertext: bytes, workers: int, params: Params = P, ring: int = 4):
    return DecryptingReader(io.BytesIO(ciphertext), KEY, AAD, params, workers).segments(ring=ring)


def decrypt(ciphertext: bytes, workers: int, params: Params = P) -> bytes:
    return b"".join(bytes(v) for v in segments(ciphertext, workers, params))


def workers_alive() -> list[int]:
    """Our children that are decryption workers (none should outlive a read)."""
    me = str(os.getpid())
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if stat.rsplit(")", 1)[1].split()[1] == me and b"modelseal.parallel" in cmdline:
            found.append(int(pid))
    return found


def cut(ciphertext: bytes, params: Params) -> list[bytes]:
    """The stream header and each segment, as they lie in the ciphertext."""
    h = params.header_size
    first = params.segment_size - h
    out = [ciphertext[:h], ciphertext[h:h + first]]
    pos = h + first
    while pos < len(ciphertext):
        out.append(ciphertext[pos:pos + params.segment_size])
        pos += params.segment_size
    return out


# ---- the same bytes as in process ---------------------------------------------------

@pytest.mark.parametrize("workers", [2, 3])
@pytest.mark.parametrize("size", [0, 1, FIRST, FIRST + 1, FIRST + FULL, 5 * 2**20 + 123])
def test_workers_decrypt_exactly_what_one_process_does(size: int, workers: int) -> None:
    plain = os.urandom(size)
    ct = encrypt(plain)
    assert decrypt(ct, workers) == plain == decrypt(ct, 1)
    assert workers_alive() == []


def test_tink_vector_with_workers() -> None:
    from test_streaming import VECTOR

    v = VECTOR
    reader = DecryptingReader(io.BytesIO(v["ciphertext"]), v["key"], v["aad"], v["params"], workers=2)
    assert b"".join(bytes(s) for s in reader.segments(ring=2)) == v["plaintext"]


def test_many_segments_in_flight_come_out_in_order() -> None:
    plain = os.urandom(300 * SMALL.plaintext_size + 17)  # 301 segments over 5 workers
    assert decrypt(encrypt(plain, SMALL), 5, SMALL) == plain


# ---- damage with several workers in flight ----------------------------------------

def _damaged(kind: str) -> tuple[bytes, bytes, int, str]:
    """(plaintext, damaged ciphertext, segments that may be released, expected message) for 12 segments."""
    # 12 segments of 1 MiB, the last one short (full-size when data is to be appended after it)
    plain = os.urandom(FIRST + 11 * FULL - (0 if kind == "append" else 100))
    parts = cut(encrypt(plain), P)
    head, segs = parts[0], parts[1:]
    if kind == "flip":  # a byte in the middle of segment 6
        s = bytearray(segs[6])
        s[len(s) // 2] ^= 1
        segs[6] = bytes(s)
        return plain, head + b"".join(segs), 6, "segment 6 failed authentication"
    if kind == "reorder":
        segs[5], segs[6] = segs[6], segs[5]
        return plain, head + b"".join(segs), 5, "segment 5 failed authentication"
    if kind == "duplicate":
        segs.insert(7, segs[6])
        return plain, head + b"".join(segs), 7, "segment 7 failed authentication"
    if kind == "truncate":  # drop the final segment: segment 10 now ends the stream without its last flag
        return plain, head + b"".join(segs[:-1]), 10, "truncated: the stream ends after segment 10"
    if kind == "append":  # the true final segment followed by more data
        return plain, head + b"".join(segs) + segs[3], 11, "unexpected data after the final segment 11"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["flip", "reorder", "duplicate", "truncate", "append"])
@pytest.mark.parametrize("workers", [1, 2, 4])
def test_damage_fails_and_nothing_after_it_is_released(kind: str, workers: int) -> None:
    plain, ct, good, message = _damaged(kind)
    released = []
    with pytest.raises(IntegrityError, match=message):
        for view in segments(ct, workers):
            released.append(bytes(view))
    assert len(released) == good  # every segment before the damage, none after
    assert b"".join(released) == plain[:FIRST + (good - 1) * FULL]
    assert workers_alive() == []


def test_failure_scrubs_the_shared_memory() -> None:
    _, ct, _, _ = _damaged("flip")
    gen = segments(ct, 3)
    first = next(gen)  # a view into the shared memory
    assert bytes(first[:64]) != bytes(64)
    with pytest.raises(IntegrityError):
        for _ in gen:
            pass
    assert bytes(first) == bytes(len(first))  # decrypted plaintext does not outlive the failure
    assert workers_alive() == []


def test_abandoned_read_stops_the_workers_and_scrubs() -> None:
    ct = encrypt(os.urandom(8 * FULL))
    gen = segments(ct, 3)
    first = next(gen)
    assert workers_alive() != []
    gen.close()
    assert bytes(first) == bytes(len(first))
    assert workers_alive() == []


def test_a_killed_worker_is_reported_not_taken_for_tampering() -> None:
    ct = encrypt(os.urandom(40 * SMALL.plaintext_size), SMALL)
    gen = segments(ct, 2, SMALL)
    next(gen)
    for pid in workers_alive():
        os.kill(pid, signal.SIGKILL)
    with pytest.raises(parallel.WorkerError, match="killed by signal 9") as err:
        for _ in gen:
            pass
    assert not isinstance(err.value, IntegrityError)
    assert workers_alive() == []


@pytest.mark.parametrize("segment_size", [4096, 1 << 20, 4 << 20])
def test_the_preflights_worker_memory_covers_the_shared_memory_mapped(monkeypatch, segment_size: int) -> None:
    """Sizing follows the segment size: what the pool maps fits what the preflight charges for it."""
    params = Params(segment_size=segment_size)
    mapped = []
    real = parallel.Pool.__init__

    def recording(self, workers, slots, seg, key, prefix):  # type: ignore[no-untyped-def]
        real(self, workers, slots, seg, key, prefix)
        mapped.append(len(self._map))

    monkeypatch.setattr(parallel.Pool, "__init__", recording)
    ct = encrypt(os.urandom(3 * params.plaintext_size), params)
    reader = DecryptingReader(io.BytesIO(ct), KEY, AAD, params, workers=3)
    for _ in reader.segments(ring=4):  # the ring decrypt and unpack use
        pass
    assert mapped and mapped[0] <= reader.worker_memory() - 3 * parallel.WORKER_PRIVATE
    assert parallel.memory(3, segment_size) == reader.worker_memory()
    assert parallel.memory(1, segment_size) == 0


# ---- the command line ---------------------------------------------------------------

def _flip_segment(path: Path, prefix: int, index: int) -> None:
    """Flip a byte in the middle of ciphertext segment `index` of a .seal file."""
    offset = prefix + P.header_size + (FIRST + 16) + (index - 1) * P.segment_size + P.segment_size // 2
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x40]))


def test_cli_tampered_middle_segment_with_workers_exits_4_and_leaves_nothing(shm: Path, cli) -> None:
    key = shm / "key"
    assert cli("keygen", "-o", str(key)).code == 0
    model = shm / "model"
    model.mkdir()
    for i in range(3):
        (model / f"shard-{i}").write_bytes(os.urandom(5 << 20))
    sealed = shm / "m.seal"
    assert cli("seal", str(model), "-o", str(sealed), "--key", str(key)).code == 0
    from modelseal import stages

    prefix = stages.inspect(str(sealed)).prefix_bytes
    good = shm / "good"
    ok = cli("run", "--source", f"file://{sealed}", "--key", str(key), "-o", str(good), "--workers", "3")
    assert ok.code == 0, ok.stderr
    assert all((good / f"shard-{i}").read_bytes() == (model / f"shard-{i}").read_bytes() for i in range(3))
    assert any(r.get("workers") == 3 for r in ok.logs())
    _flip_segment(sealed, prefix, 8)
    out = shm / "out"
    out.mkdir()
    r = cli("decrypt", "--in", str(sealed), "--key", str(key), "-o", str(out / "m.tar"), "--workers", "3")
    assert r.code == 4, r.stderr
    assert "segment 8 failed authentication" in r.error()
    assert os.listdir(out) == []  # neither m.tar nor m.tar.partial
    r = cli("run", "--source", f"file://{sealed}", "--key", str(key), "-o", str(out / "model"), "--workers", "3")
    assert r.code == 4, r.stderr
    assert "segment 8 failed authentication" in r.error()
    assert os.listdir(out) == []  # no model, no staging directory


@pytest.mark.parametrize("value", ["0", "-2", "many", "999"])
def test_cli_bad_workers_value_is_a_usage_error(shm: Path, cli, value: str) -> None:
    r = cli("decrypt", "--in", str(shm / "none.seal"), "--key", str(shm / "key"), "-o", str(shm / "o"),
            "--workers", value)
    assert r.code == 2 and "--workers" in r.error()


def test_workers_flag_from_the_environment(shm: Path, cli) -> None:
    key = shm / "key"
    assert cli("keygen", "-o", str(key)).code == 0
    (shm / "plain").write_bytes(os.urandom(3 << 20))
    assert cli("seal", "-", "-o", str(shm / "p.seal"), "--key", str(key), stdin=(shm / "plain").read_bytes()).code == 0
    r = cli("decrypt", "--in", str(shm / "p.seal"), "--key", str(key), "-o", str(shm / "out"),
            env={"MODELSEAL_WORKERS": "2"})
    assert r.code == 0, r.stderr
    assert (shm / "out").read_bytes() == (shm / "plain").read_bytes()
    assert any(x.get("workers") == 2 for x in r.logs())


# ---- how many workers by default -----------------------------------------------------

@pytest.mark.parametrize("cpus, workers", [(1, 1), (2, 1), (2.5, 1), (3, 1), (3.9, 1), (4, 2), (6, 4),
                                           (10, 8), (16, 8), (128, 8)])
def test_default_workers_leave_a_core_each_to_the_reader_and_the_writer(cpus: float, workers: int) -> None:
    assert parallel.default_workers(cpus) == workers


def _cpu_tree(tmp: Path, version: int, levels: dict[str, dict[str, str]], own: str) -> str:
    return str(fake_cgroup(tmp, version, levels, own, "cpu"))


def test_cpu_quota_v2_tightest_level_wins(tmp_path: Path) -> None:
    proc = _cpu_tree(tmp_path, 2, {"/": {}, "/kubepods/pod1": {"cpu.max": "300000 100000"},
                                   "/kubepods/pod1/c1": {"cpu.max": "max 100000"}}, "/kubepods/pod1/c1")
    assert cgroup.cpu_quota(proc) == 3.0
    (tmp_path / "cgroup" / "kubepods" / "pod1" / "c1" / "cpu.max").write_text("150000 100000\n")
    assert cgroup.cpu_quota(proc) == 1.5


def test_cpu_quota_v1_and_unlimited(tmp_path: Path) -> None:
    proc = _cpu_tree(tmp_path, 1, {"/": {"cpu.cfs_quota_us": "-1", "cpu.cfs_period_us": "100000"},
                                   "/pod/c": {"cpu.cfs_quota_us": "250000", "cpu.cfs_period_us": "100000"}}, "/pod/c")
    assert cgroup.cpu_quota(proc) == 2.5
    (tmp_path / "cgroup" / "pod" / "c" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup.cpu_quota(proc) is None
    (tmp_path / "cgroup" / "pod" / "c" / "cpu.cfs_quota_us").write_text("garbage\n")
    assert cgroup.cpu_quota(proc) is None


def cpu_cgroup(quota: int, period: int = 100000):
    """A real CPU cgroup with a CFS quota; yields a preexec_fn that moves a child into it."""
    return real_cgroup("cpu", {"cpu.cfs_period_us": str(period), "cpu.cfs_quota_us": str(quota)},
                       {"cpu.max": f"{quota} {period}"})


def _available(preexec) -> str:
    code = "from modelseal import parallel; print(parallel.available_cpus(), parallel.default_workers())"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          preexec_fn=preexec, timeout=60).stdout.split()


def test_a_real_cpu_quota_and_affinity_cap_the_cpus() -> None:
    with cpu_cgroup(150000) as enter:
        assert _available(enter) == ["1.5", "1"]

    def one_core() -> None:
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})

    assert _available(one_core) == ["1", "1"]


# ---- what a worker imports --------------------------------------------------------------

_PLANT = "import os\nopen(os.path.join({marks!r}, {name!r}), 'w').close()\n"


def _plant(where: Path, marks: Path, tag: str) -> None:
    """`modelseal` and `cryptography` packages in `where` that leave a marker in `marks` when imported
    (an attacker's would read the stream key from the worker's pipe instead)."""
    for package in ("modelseal", "cryptography"):
        (where / package).mkdir(parents=True)
        (where / package / "__init__.py").write_text(_PLANT.format(marks=str(marks), name=f"{tag}-{package}"))
    (where / "modelseal" / "parallel.py").write_text(_PLANT.format(marks=str(marks), name=f"{tag}-parallel"))


def test_workers_import_only_the_library_their_parent_runs(shm: Path, cli) -> None:
    """A `modelseal/` or `cryptography/` in the working directory, or on PYTHONPATH, never runs in a worker.

    The stage is started as its console script starts it (no working directory on sys.path) and isolated
    from PYTHONPATH (python -I, with this library's directory given explicitly, as an image might), so
    only a worker that picks its own path up from the cwd or the environment can import the plants."""
    key = shm / "key"
    assert cli("keygen", "-o", str(key)).code == 0
    plain = os.urandom(6 * FULL + 4321)
    assert cli("seal", "-", "-o", str(shm / "p.seal"), "--key", str(key), stdin=plain).code == 0
    cwd, on_path, marks = shm / "cwd", shm / "pythonpath", shm / "marks"
    marks.mkdir()
    _plant(cwd, marks, "cwd")
    _plant(on_path, marks, "pythonpath")
    library = str(Path(parallel.__file__).resolve().parents[1])  # the library under test (a mutant's copy too)
    boot = f"import sys; sys.path.insert(0, {library!r}); from modelseal.cli import main; sys.exit(main())"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELSEAL_")}
    env["PYTHONPATH"] = str(on_path)
    r = subprocess.run([sys.executable, "-I", "-c", boot, "decrypt", "--in", str(shm / "p.seal"), "--key", str(key),
                        "-o", str(shm / "out"), "--workers", "3"],
                       cwd=cwd, env=env, capture_output=True, timeout=300)
    assert sorted(os.listdir(marks)) == []  # nothing planted ran, in the stage or in a worker
    assert r.returncode == 0, r.stderr.decode(errors="replace")[-2000:]
    assert (shm / "out").read_bytes() == plain
    assert any(json.loads(x).get("workers") == 3 for x in r.stderr.decode().splitlines() if x.startswith("{"))


def test_a_worker_starts_isolated_with_its_parents_library() -> None:
    """The worker's argv: -I, then this process's own modelseal and cryptography directories."""
    import cryptography

    argv = parallel.worker_command("1", "2", "3", "4", "5")
    assert argv[0] == sys.executable and argv[1] in ("-I", "-IB") and argv[2] == "-c"
    assert argv[4:6] == [os.path.dirname(os.path.dirname(os.path.abspath(m.__file__))) for m in (parallel, cryptography)]
    assert argv[6:] == ["1", "2", "3", "4", "5"]
