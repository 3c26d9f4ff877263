"""Real model sizes: the header's sizes, the capacity preflight, the memory cgroup, retries after a kill.

The preflight is tested against real limits: a tmpfs mounted at a small size,
and a real memory cgroup (v1 here, v2 where the host runs it) that the CLI's
process is moved into before it starts. The cgroup reader's arithmetic for
both versions is also checked on file trees laid out as the kernel lays them
out (the only way to see v2 on a v1 host). Models are hundreds of MiB, made
on /dev/shm: a 3 MiB model says nothing about memory limits.
"""

from __future__ import annotations

import io
import json
import os
import signal
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from support.cgroups import fake_cgroup, real_cgroup
from conftest import SHM, modelseal, need, open_fifo_writer
from modelseal import archive, sealfile
from modelseal.placement import cgroup
from modelseal.placement.need import PAGE, Need, quantity
from modelseal.streaming import AES256_GCM_HKDF_1MB as P
from support.models import make_model

MIB = 1 << 20


# ---- units: what the numbers are --------------------------------------------------

@pytest.mark.parametrize("n", [0, 1, P.first_plaintext_size - 1, P.first_plaintext_size, P.first_plaintext_size + 1,
                               P.first_plaintext_size + P.plaintext_size, 5 * P.plaintext_size + 7])
def test_plaintext_length_from_the_ciphertext_length(n: int) -> None:
    assert P.plaintext_size_of(P.ciphertext_size(n)) == n


def test_plaintext_length_of_malformed_lengths_is_unknown() -> None:
    assert P.plaintext_size_of(39) is None  # shorter than the header
    assert P.plaintext_size_of(P.header_size + 15) is None  # shorter than a tag
    assert P.plaintext_size_of(P.segment_size + 5) is None  # a last segment shorter than a tag


def test_planned_tar_size_is_exact(shm: Path) -> None:
    root = shm / "m"
    (root / "d" / ("ü" * 60) / ("x" * 120)).mkdir(parents=True)  # pax headers for long, non-ASCII names
    (root / "empty.bin").write_bytes(b"")
    (root / "one").write_bytes(b"1")
    (root / "d" / ("ü" * 60) / ("x" * 120) / ("long" * 40)).write_bytes(os.urandom(70_000))
    (root / "block").write_bytes(bytes(512 * 21))
    plan = archive.plan_tar(str(root))
    out = io.BytesIO()
    assert archive.write_tar(plan, out) == 4
    assert plan.tar_bytes == len(out.getvalue())
    assert plan.files == 4 and plan.file_bytes == 1 + 70_000 + 512 * 21
    members = tarfile.open(fileobj=io.BytesIO(out.getvalue())).getmembers()
    assert sum(m.size for m in members if m.isreg()) == plan.file_bytes


def test_header_sizes_round_trip_and_malformed_sizes_are_integrity_errors() -> None:
    h = sealfile.Header(key_id="k", sizes=sealfile.Sizes(tar_bytes=10, file_bytes=5, files=1))
    again, _ = sealfile.read_prefix(io.BytesIO(sealfile.encode_prefix(h)))
    assert again.sizes == h.sizes
    for bad in (-1, True, "12", 1.5, 2**64):
        obj = h.to_json()
        obj["content"]["files"] = bad
        with pytest.raises(sealfile.IntegrityError, match="content.files"):
            sealfile.Header.from_json(obj)


def _cgroup_tree(tmp: Path, version: int, levels: dict[str, dict[str, str]], own: str, mount_root: str = "/",
                 ) -> Path:
    return fake_cgroup(tmp, version, levels, own, "memory", mount_root)


def test_cgroup_v2_tightest_level_wins_and_file_cache_is_reclaimable(tmp_path: Path) -> None:
    stat = "anon 100\nactive_file 30000000\ninactive_file 20000000\nshmem 40000000\n"
    proc = _cgroup_tree(tmp_path, 2, {
        "/": {"memory.stat": stat},  # the root has no memory.max
        "/kubepods/pod1": {"memory.max": str(900 * MIB), "memory.current": str(800 * MIB), "memory.stat": stat},
        "/kubepods/pod1/c1": {"memory.max": str(2048 * MIB), "memory.current": str(300 * MIB),
                              "memory.stat": stat, "memory.peak": str(400 * MIB)},
    }, own="/kubepods/pod1/c1")
    mem = cgroup.memory(str(proc))
    assert mem is not None and mem.version == 2 and mem.path.endswith("pod1")  # the pod's limit is tighter
    assert mem.in_use == 800 * MIB - 50_000_000 and mem.headroom == 100 * MIB + 50_000_000
    assert cgroup.peak(str(proc)) == 400 * MIB


def test_cgroup_v2_inside_a_namespace_and_unlimited(tmp_path: Path) -> None:
    proc = _cgroup_tree(tmp_path, 2, {"/": {"memory.max": "max", "memory.current": "1000", "memory.stat": ""}},
                        own="/")
    assert cgroup.memory(str(proc)) is None  # "max": no limit to respect
    (tmp_path / "cgroup" / "memory.max").write_text(str(512 * MIB))
    mem = cgroup.memory(str(proc))
    assert mem is not None and mem.limit == 512 * MIB and mem.in_use == 1000


def test_cgroup_v1_container_view_and_hierarchical_limit(tmp_path: Path) -> None:
    """Docker / kubelet on v1 mount the container's own cgroup at the mount point (mountinfo root = its path)."""
    proc = _cgroup_tree(tmp_path, 1, {"/": {
        "memory.limit_in_bytes": str(9223372036854771712), "memory.usage_in_bytes": str(200 * MIB),
        "memory.stat": f"total_active_file 1000\ntotal_inactive_file {10 * MIB}\nhierarchical_memory_limit {600 * MIB}\n",
        "memory.max_usage_in_bytes": str(250 * MIB)}},
        own="/kubepods/burstable/pod1/abc", mount_root="/kubepods/burstable/pod1/abc")
    mem = cgroup.memory(str(proc))
    assert mem is not None and mem.version == 1
    assert mem.limit == 600 * MIB and mem.in_use == 190 * MIB - 1000
    assert cgroup.peak(str(proc)) == 250 * MIB


def test_no_cgroup_means_no_limit(tmp_path: Path) -> None:
    (tmp_path / "cgroup").write_text("")
    (tmp_path / "mountinfo").write_text("")
    assert cgroup.memory(str(tmp_path)) is None


def test_tree_need_rounds_every_file_up_to_pages() -> None:
    need = Need.tree(10, 3, "x")
    assert need.bytes == 10 + 3 * (PAGE - 1) and need.files == 3
    assert quantity(700 * MIB + 1) == "704Mi" and quantity(16 * MIB) == "16Mi"


# ---- real limits --------------------------------------------------------------------

@pytest.fixture(scope="module")
def model() -> tuple[Path, Path, Path]:
    """A 256 MiB model, its key and its .seal (zstd), made once on tmpfs for this module."""
    base = SHM / f"modelseal-cap-{uuid.uuid4().hex[:8]}"
    base.mkdir()
    try:
        src = make_model(base / "src", tree_bytes=256 * MIB, shards=2, small=50)
        key = base / "key"
        key.write_bytes(os.urandom(32))
        r = modelseal("seal", str(src), "-o", str(base / "m.seal"), "--key", str(key), "--compress", "zstd")
        assert r.code == 0, r.stderr
        yield src, key, base / "m.seal"
    finally:
        subprocess.run(["rm", "-rf", "--one-file-system", str(base)], check=False)


@contextmanager
def small_tmpfs(where: Path, size: str):
    where.mkdir()
    if os.geteuid() != 0:
        need("mounting a small tmpfs needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
    if r.returncode:
        need(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


@pytest.mark.parametrize("stage", ["decrypt", "run", "unpack"])
def test_tmpfs_too_small_exits_6_before_anything_is_written(shm: Path, model, stage: str) -> None:
    src, key, seal = model
    if stage == "unpack":
        r = modelseal("decrypt", "--in", str(seal), "--key", str(key), "-o", str(shm / "m.tar.zst"))
        assert r.code == 0, r.stderr
        # an uncompressed tar: its length bounds the tree (a compressed one would be "unknown")
        subprocess.run(["zstd", "-q", "-d", str(shm / "m.tar.zst"), "-o", str(shm / "m.tar")], check=True)
    with small_tmpfs(shm / "vol", "64m") as vol:
        args = {"decrypt": ["decrypt", "--in", str(seal), "--key", str(key), "-o", f"{vol}/model.tar"],
                "run": ["run", "--source", str(seal), "--key", str(key), "-o", f"{vol}/resnet/1"],
                "unpack": ["unpack", "--in", str(shm / "m.tar"), "-o", f"{vol}/resnet/1"]}[stage]
        r = modelseal(*args)
        assert r.code == 6, r.stderr
        assert f"under {vol}" in r.error() and "free" in r.error() and "sizeLimit" in r.error()
        assert not [x for x in r.logs() if x["event"] == "progress"]
        assert os.listdir(vol) == []  # no .partial, no staging directory, no parents
        assert os.statvfs(vol).f_bfree == os.statvfs(vol).f_blocks  # and no page was ever used for data


def test_inode_limit_is_checked_too(shm: Path) -> None:
    src = shm / "many"
    src.mkdir()
    for i in range(300):
        (src / f"f{i}").write_bytes(b"x")
    key = shm / "key"
    key.write_bytes(os.urandom(32))
    assert modelseal("seal", str(src), "-o", str(shm / "m.seal"), "--key", str(key)).code == 0
    with small_tmpfs(shm / "vol", "64m,nr_inodes=100") as vol:
        r = modelseal("run", "--source", str(shm / "m.seal"), "--key", str(key), "-o", f"{vol}/m")
        assert r.code == 6 and "300 files" in r.error(), r.stderr
        assert os.listdir(vol) == []


def memory_cgroup(limit: int):
    """A real memory cgroup with `limit` (and no swap); yields a preexec_fn that moves a child into it."""
    # v1: memsw (memory + swap) after the limit it may not be below; where swap accounting is off it is absent
    return real_cgroup("memory", {"memory.limit_in_bytes": str(limit), "memory.memsw.limit_in_bytes": str(limit)},
                       {"memory.max": str(limit), "memory.swap.max": "0"})


def cli_in(enter, *args: str) -> tuple[int, list[dict], str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELSEAL_")}
    p = subprocess.run([sys.executable, "-m", "modelseal", *args], capture_output=True, env=env, timeout=300,
                       preexec_fn=enter)
    err = p.stderr.decode(errors="replace")
    logs = [json.loads(x) for x in err.splitlines() if x.startswith("{")]
    return p.returncode, logs, err


def _error(logs: list[dict]) -> str:
    return next((x["error"] for x in logs if x.get("event") == "failed"), "")


@pytest.mark.parametrize("stage", ["decrypt", "run"])
def test_memory_limit_too_small_exits_6_naming_memory(shm: Path, model, stage: str) -> None:
    """tmpfs pages count against the writer's cgroup: 256 MiB of output under a 200 MiB limit cannot work."""
    src, key, seal = model
    out = shm / ("model.tar" if stage == "decrypt" else "resnet/1")
    args = (["decrypt", "--in", str(seal), "--key", str(key), "-o", str(out)] if stage == "decrypt" else
            ["run", "--source", str(seal), "--key", str(key), "-o", str(out)])
    with memory_cgroup(200 * MIB) as enter:
        code, logs, err = cli_in(enter, *args)
        assert code == 6, err
        msg = _error(logs)
        assert "memory limit leaves" in msg and "resources.limits.memory to at least" in msg
        assert "tmpfs pages count against the writer's limit" in msg
        assert os.listdir(shm) == []  # nothing on the volume: no .partial, no staging, no parents
        # The same stage with the check off: the kernel's OOM killer ends it, with no word of why.
        code, logs, err = cli_in(enter, *args, "--no-preflight")
        assert code == -signal.SIGKILL, err
        assert any(x["event"] == "preflight_off" for x in logs)
        subprocess.run(["rm", "-rf", str(shm / "model.tar.partial"), *map(str, shm.glob("*"))], check=True)


def test_a_disk_target_is_not_held_to_the_memory_limit(shm: Path, model) -> None:
    """--allow-disk: written pages are reclaimable page cache, not charged for good; only the stage's
    own memory counts, so 256 MiB onto disk under a 200 MiB limit is not refused."""
    src, key, seal = model
    disk = Path(tempfile.mkdtemp(prefix="modelseal-cap-disk-", dir="/var/tmp"))
    try:
        with memory_cgroup(200 * MIB) as enter:
            code, logs, err = cli_in(enter, "decrypt", "--in", str(seal), "--key", str(key),
                                     "-o", str(disk / "model.tar"), "--allow-disk")
        assert code == 0, err
        pre = next(x for x in logs if x["event"] == "preflight")
        assert pre["needs"] > pre["memory_headroom"]  # held to the tmpfs rule, this would have been exit 6
        assert 0 <= pre["needs"] - (disk / "model.tar").stat().st_size < PAGE  # all of it, page-rounded
    finally:
        shutil.rmtree(disk, ignore_errors=True)


def test_memory_limit_that_fits_succeeds_and_reports_the_peak(shm: Path, model) -> None:
    src, key, seal = model
    with memory_cgroup(256 * MIB + 160 * MIB) as enter:
        code, logs, err = cli_in(enter, "run", "--source", str(seal), "--key", str(key), "-o", str(shm / "m"))
        assert code == 0, err
    pre = next(x for x in logs if x["event"] == "preflight")
    assert pre["source"] == "from the .seal header" and pre["memory_headroom"] >= pre["needs"]
    assert 0 <= pre["seconds"] < 5  # recorded, not asserted tight: the closing note reports it
    done = next(x for x in logs if x["event"] == "done")
    assert done["cgroup_peak_mib"] >= 256  # the tmpfs pages this process wrote are in its peak
    assert sum(f.stat().st_size for f in (shm / "m").rglob("*") if f.is_file()) == \
        sum(f.stat().st_size for f in src.rglob("*") if f.is_file())


def test_unknown_size_is_warned_and_goes_on(shm: Path, model) -> None:
    src, key, seal = model
    r = modelseal("decrypt", "--in", "-", "--key", str(key), "-o", str(shm / "m.tar.zst"), stdin=seal.read_bytes())
    assert r.code == 0, r.stderr
    assert [x for x in r.logs() if x["event"] == "preflight_unknown"]  # stdin, zstd content: no bound
    r = modelseal("run", "--source", "-", "--key", str(key), "-o", str(shm / "m"), stdin=seal.read_bytes())
    assert r.code == 0 and [x for x in r.logs() if x["event"] == "preflight"], r.stderr  # the header knows


def test_archive_larger_than_its_header_declares_is_an_integrity_error(shm: Path) -> None:
    key = os.urandom(32)
    (shm / "key").write_bytes(key)
    tar = io.BytesIO()
    with tarfile.open(fileobj=tar, mode="w", format=tarfile.PAX_FORMAT) as t:
        for name in ("a", "b"):
            info = tarfile.TarInfo(name)
            info.size = 100_000
            t.addfile(info, io.BytesIO(os.urandom(100_000)))
    for sizes, what in ((sealfile.Sizes(file_bytes=150_000, files=2), "file bytes"),
                        (sealfile.Sizes(file_bytes=200_000, files=1), "files")):
        out = io.BytesIO()
        w = sealfile.seal_writer(out, sealfile.Header(key_id="", sizes=sizes), key)
        w.write(tar.getvalue())
        w.close()
        (shm / "lie.seal").write_bytes(out.getvalue())
        r = modelseal("run", "--source", str(shm / "lie.seal"), "--key", str(shm / "key"), "-o", str(shm / "m"))
        assert r.code == 4 and f"{what} its .seal header declares" in r.error(), r.stderr
        assert sorted(os.listdir(shm)) == ["key", "lie.seal"]



@pytest.mark.parametrize("declared, via, workers", [
    (10_000, "stdin", 1),  # 3 MiB behind a header that says 10,000 bytes
    (-1, "stdin", 1),  # one byte more than declared
    (10_000, "stdin", 2),
    (10_000, "file", 1),  # the length of a file says 3 MiB: the header's word still binds
    (0, "stdin", 1),  # exactly as declared: written, byte-exact
], ids=["3MiB-for-10000", "one-byte-over", "workers", "from-a-file", "exact"])
def test_decrypt_writes_no_more_than_its_header_declares(shm: Path, declared: int, via: str, workers: int) -> None:
    """From stdin the preflight sizes the target by the header's tar_bytes, so the output is held to it:
    exit 4 before a byte past it is written, and nothing left (as unpack holds each file to its size)."""
    key = os.urandom(32)
    (shm / "key").write_bytes(key)
    payload = os.urandom(3 * MIB + 5)
    tar_bytes = declared if declared > 0 else len(payload) + declared
    out = io.BytesIO()
    w = sealfile.seal_writer(out, sealfile.Header(key_id="", sizes=sealfile.Sizes(tar_bytes=tar_bytes)), key)
    w.write(payload)
    w.close()
    (shm / "m.seal").write_bytes(out.getvalue())
    source = ["--in", "-"] if via == "stdin" else ["--in", str(shm / "m.seal")]
    r = modelseal("decrypt", *source, "--key", str(shm / "key"), "-o", str(shm / "m.tar"), "--workers", str(workers),
                  stdin=out.getvalue() if via == "stdin" else None)
    if tar_bytes == len(payload):
        assert r.code == 0, r.stderr
        assert (shm / "m.tar").read_bytes() == payload
        return
    assert r.code == 4, r.stderr
    assert f"larger than the {tar_bytes} bytes its .seal header declares" in r.error()
    assert sorted(os.listdir(shm)) == ["key", "m.seal"]  # no m.tar, no m.tar.partial


def test_inspect_resources_prints_yaml_that_covers_the_model(shm: Path, model) -> None:
    src, key, seal = model
    r = modelseal("inspect", str(seal), "--resources")
    assert r.code == 0, r.stderr
    doc = yaml.safe_load(r.stdout)
    def to_bytes(q: str) -> int:
        return int(q.removesuffix("Mi")) * MIB

    files = [f for f in src.rglob("*") if f.is_file()]
    tree = sum(-(-f.stat().st_size // PAGE) * PAGE for f in files)
    single, four = doc["single-stage"], doc["four-stage"]
    assert to_bytes(single["volumes"]["models"]["emptyDir"]["sizeLimit"]) >= tree
    run_mem = to_bytes(single["initContainers"]["modelseal"]["resources"]["limits"]["memory"])
    assert run_mem >= tree + 128 * MIB  # run from s3:// peaks at ~121 MiB RSS (bench/fetch.py, placement.pods.S3_READER)
    tar = json.loads(modelseal("inspect", str(seal)).stdout)["plaintext_bytes"]
    assert to_bytes(four["volumes"]["plaintext"]["emptyDir"]["sizeLimit"]) >= tar
    assert to_bytes(four["initContainers"]["decrypt"]["resources"]["limits"]["memory"]) >= tar + 64 * MIB
    assert to_bytes(four["initContainers"]["unpack"]["resources"]["limits"]["memory"]) >= tar + tree



def _sealed_named(path: Path, name: str, version: str) -> Path:
    """A .seal of a small tar whose (unauthenticated) header says `name` and `version`, sizes recorded."""
    tar = io.BytesIO()
    with tarfile.open(fileobj=tar, mode="w", format=tarfile.PAX_FORMAT) as t:
        info = tarfile.TarInfo("weights.bin")
        info.size = 200_000
        t.addfile(info, io.BytesIO(os.urandom(200_000)))
    out = io.BytesIO()
    sizes = sealfile.Sizes(tar_bytes=len(tar.getvalue()), file_bytes=200_000, files=1)
    w = sealfile.seal_writer(out, sealfile.Header(key_id="", sizes=sizes, name=name, version=version), os.urandom(32))
    w.write(tar.getvalue())
    w.close()
    path.write_bytes(out.getvalue())
    return path


@pytest.mark.parametrize("name, version", [
    ("resnet\nsingle-stage: {pwned: true}\nx", "1"),  # a newline ends the comment: a key of its own
    ("resnet", "1\r\nfour-stage: null"),
    ("resnet\u2028evil: 1", "1\x85evil2: 2"),  # YAML's other line breaks (LS, NEL)
    ("\x1b]0;owned\x07\x1b[2Jresnet", "\x1b[31m1"),  # terminal control sequences
    ("r" * 5000, "1"),  # a name too long for a comment line
], ids=["newline", "crlf", "unicode-breaks", "escapes", "long"])
def test_inspect_resources_quotes_hostile_header_strings(shm: Path, name: str, version: str) -> None:
    """The YAML parses to exactly what a benign header gives, and carries no control character."""
    benign = modelseal("inspect", str(_sealed_named(shm / "benign.seal", "resnet", "1")), "--resources")
    r = modelseal("inspect", str(_sealed_named(shm / "hostile.seal", name, version)), "--resources")
    assert benign.code == 0 and r.code == 0, r.stderr
    text = r.stdout.decode()
    expected = yaml.safe_load(benign.stdout)
    assert expected and yaml.safe_load(text) == expected  # the same keys and values, nothing added
    assert not any(c in text for c in "\x1b\x07\r\x85\u2028")
    assert text.splitlines()[1:] == benign.stdout.decode().splitlines()[1:]  # only the title line differs
    title = text.splitlines()[0]
    assert title.startswith("# ") and len(title) < 160 and ("resnet" in title or name == "r" * 5000)  # shown, quoted


# ---- a killed run leaves the volume retryable -------------------------------------------

@pytest.mark.parametrize("stage", ["decrypt", "run"])
def test_killed_mid_way_then_retried_succeeds(shm: Path, model, stage: str) -> None:
    """SIGKILL (an OOM kill, node pressure) in the middle, then the same command again, as the kubelet retries."""
    src, key, seal = model
    fifo = shm / "slow.fifo"
    os.mkfifo(fifo)
    out = shm / ("m.tar" if stage == "decrypt" else "resnet/1")
    args = (["decrypt", "--in", str(fifo), "--key", str(key), "-o", str(out)] if stage == "decrypt" else
            ["run", "--source", f"file://{fifo}", "--key", str(key), "-o", str(out)])
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELSEAL_")}
    proc = subprocess.Popen([sys.executable, "-m", "modelseal", *args], stderr=subprocess.DEVNULL, env=env)
    data = seal.read_bytes()
    with open_fifo_writer(fifo, proc) as f:
        f.write(data[: len(data) // 2])  # half of it: then the writer stalls
        f.flush()
        deadline = time.monotonic() + 60
        while not _something_written(shm, out) and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert _something_written(shm, out), "the stage was killed before it wrote anything"
    fifo.unlink()
    retry = modelseal(*[a if a != str(fifo) and a != f"file://{fifo}" else str(seal) for a in args])
    assert retry.code == 0, retry.stderr
    if stage == "decrypt":
        assert not Path(str(out) + ".partial").exists() and out.stat().st_size == \
            json.loads(modelseal("inspect", str(seal)).stdout)["plaintext_bytes"]
    else:
        # the stale staging directory is gone; the delivery's record is beside the tree (issue 25)
        assert sorted(p.name for p in out.parent.iterdir()) == [".1.delivered", "1"]
        assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == \
            {p.relative_to(src): p.read_bytes() for p in src.rglob("*") if p.is_file()}


def _something_written(shm: Path, out: Path) -> bool:
    partial = Path(str(out) + ".partial")
    if partial.exists():
        return partial.stat().st_size > 0
    return any(p.is_file() and p.stat().st_size for p in out.parent.rglob("*")) if out.parent.exists() else False


# ---- too few file descriptors ------------------------------------------------------------------

@pytest.mark.parametrize("nofile", [8, 12])
def test_too_few_file_descriptors_exits_6_and_leaves_nothing(shm: Path, nofile: int) -> None:
    """A low `ulimit -n` (EMFILE) is a limit like a full volume: exit 6 naming it, not exit 1, nothing left.

    Found by the soak (bench/soak.py): it was "internal error", exit 1, "file: Too many open files"."""
    (shm / "m").mkdir()
    (shm / "m" / "w.bin").write_bytes(os.urandom(2 * MIB))
    (shm / "key").write_bytes(os.urandom(32))
    assert modelseal("seal", str(shm / "m"), "-o", str(shm / "m.seal"), "--key", str(shm / "key")).code == 0

    def low() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    (shm / "vol").mkdir()
    code, logs, err = cli_in(low, "run", "--source", str(shm / "m.seal"), "--key", str(shm / "key"),
                             "-o", str(shm / "vol" / "model"), "--workers", "2")
    assert code == 6, err
    msg = _error(logs)
    assert "too many open files" in msg and f"may open {nofile})" in msg and "ulimit -n" in msg, msg
    assert "\n" not in msg and os.listdir(shm / "vol") == []  # one line; no staging directory, no parents


def test_unpack_short_of_descriptors_at_any_point_leaves_no_staging_directory(shm: Path) -> None:
    """Whichever file or directory of the tree meets EMFILE, the staging directory goes with the failure.

    It stayed (staging_cleanup_failed): removing it takes descriptors too, one per level (the soak's find)."""
    src = shm / "m"
    (src / "sub" / "deeper").mkdir(parents=True)
    (src / "w.bin").write_bytes(os.urandom(MIB))
    (src / "sub" / "deeper" / "v.txt").write_bytes(os.urandom(5000))
    (src / "c.json").write_text("{}")
    subprocess.run(["tar", "-C", str(src), "-cf", str(shm / "m.tar"), "."], check=True)
    failed = 0
    for nofile in range(8, 30):
        def low(nofile: int = nofile) -> None:
            import resource

            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        out = shm / f"out-{nofile}"
        out.mkdir()
        code, logs, err = cli_in(low, "unpack", "--in", str(shm / "m.tar"), "-o", str(out / "model"))
        assert code in (0, 6), err
        assert not [x for x in logs if x["event"] == "staging_cleanup_failed"], err
        if code == 0:
            assert {p.relative_to(out / "model"): p.read_bytes() for p in (out / "model").rglob("*") if p.is_file()} \
                == {p.relative_to(src): p.read_bytes() for p in src.rglob("*") if p.is_file()}
        else:
            failed += 1
            assert os.listdir(out) == [], (nofile, os.listdir(out))
    assert 0 < failed < 22  # the range covers failures inside the tree and success


# ---- a partial install ------------------------------------------------------------------------

def test_partial_install_names_what_to_install(tmp_path: Path, shm: Path) -> None:
    """The library without its [cloud] extra, boto3 brought in by another tool: exit 2, one line, no traceback."""
    import boto3  # noqa: F401  (the test venv has it; only its files are linked into the partial install)

    site = tmp_path / "site"
    site.mkdir()
    import importlib.util

    for mod in ("boto3", "botocore", "s3transfer", "jmespath", "dateutil", "six", "urllib3", "cryptography",
                "cffi", "_cffi_backend", "zstandard"):
        spec = importlib.util.find_spec(mod)
        assert spec is not None and spec.origin is not None, mod
        origin = Path(spec.origin)
        target = origin.parent if origin.name == "__init__.py" else origin
        (site / target.name).symlink_to(target)
    (site / "modelseal").symlink_to(Path(__file__).resolve().parents[1] / "shared" / "modelseal")
    env = {"PYTHONPATH": str(site), "PATH": os.environ.get("PATH", ""), "AWS_ACCESS_KEY_ID": "x",
           "AWS_SECRET_ACCESS_KEY": "x", "AWS_REGION": "eu-west-1"}
    # -I: isolated from this venv's site-packages and the user's; -S: no site dir at all; only `site` is there
    code = "import sys; sys.path.insert(0, sys.argv.pop(1)); from modelseal.cli import main; sys.exit(main())"
    for args in (["fetch-model", "--source", "s3://bucket/m.seal", "-o", str(shm / "m.seal")],
                 ["fetch-key", "--key-uri", "https://127.0.0.1:1/key", "-o", str(shm / "key")]):
        p = subprocess.run([sys.executable, "-I", "-S", "-c", code, str(site), *args], capture_output=True,
                           env=env, timeout=60)
        err = p.stderr.decode()
        assert p.returncode == 2, err
        failed = [json.loads(x) for x in err.splitlines() if '"failed"' in x][0]["error"]
        assert "pip install 'modelseal[cloud]'" in failed and ("'tenacity'" in failed or "'requests'" in failed)
        assert "Traceback" not in err and "internal error" not in err


def test_four_stage_zstd_chain_checks_capacity_in_unpack(shm: Path, model) -> None:
    """decrypt leaves the verified header's sizes beside the tar (sizesfile.py): unpack sizes a zstd
    tar's tree by them, where its own length says nothing, and --delete-input takes both."""
    src, key, seal = model
    tar = shm / "m.tar.zst"
    r = modelseal("decrypt", "--in", str(seal), "--key", str(key), "-o", str(tar))
    assert r.code == 0, r.stderr
    declared = sealfile.read_prefix(io.BytesIO(seal.read_bytes()[:1 << 17]))[0].fixed.sizes
    recorded = json.loads((shm / "m.tar.zst.sizes").read_text())
    assert {k: v for k, v in recorded.items() if k != "delivery"} == declared.to_json()
    with small_tmpfs(shm / "vol", "64m") as vol:
        r = modelseal("unpack", "--in", str(tar), "-o", f"{vol}/resnet/1")
        assert r.code == 6, r.stderr
        assert f"under {vol}" in r.error() and "from the .seal header" in r.error()
        assert not [x for x in r.logs() if x["event"] in ("preflight_unknown", "progress")]
        assert os.listdir(vol) == []
    with memory_cgroup(200 * MIB) as enter:  # the tree's tmpfs pages would be charged here: refused, named
        code, logs, err = cli_in(enter, "unpack", "--in", str(tar), "-o", str(shm / "small" / "m"))
        assert code == 6 and "tmpfs pages count against the writer's limit" in _error(logs), err
        assert not (shm / "small").exists()
    r = modelseal("unpack", "--in", str(tar), "-o", str(shm / "out" / "m"), "--delete-input")
    assert r.code == 0, r.stderr
    pre = next(x for x in r.logs() if x["event"] == "preflight")
    assert pre["source"] == "from the .seal header" and pre["needs"] >= declared.file_bytes
    assert not [x for x in r.logs() if x["event"] == "preflight_unknown"]
    assert not tar.exists() and not (shm / "m.tar.zst.sizes").exists()
    assert sum(f.stat().st_size for f in (shm / "out" / "m").rglob("*") if f.is_file()) == declared.file_bytes


def test_decrypt_sizes_file_is_held_like_the_header(shm: Path) -> None:
    """unpack treats decrypt's sizes as the header: fewer than the archive holds is exit 4; a malformed or
    symlinked one is exit 4 too; a decrypt without sizes (stdin content sealed as is) removes a stale one."""
    src = make_model(shm / "src")
    key = shm / "key"
    key.write_bytes(os.urandom(32))
    assert modelseal("seal", str(src), "-o", str(shm / "m.seal"), "--key", str(key)).code == 0
    assert modelseal("decrypt", "--in", str(shm / "m.seal"), "--key", str(key), "-o", str(shm / "m.tar")).code == 0
    sizes = shm / "m.tar.sizes"
    truth = json.loads(sizes.read_text())
    for content, what in ((json.dumps({**truth, "files": truth["files"] - 1}), "files its .seal header declares"),
                          ('{"files": "many"}', "not a byte or file count"), ("[1, 2", "not valid UTF-8 JSON")):
        sizes.write_text(content)
        r = modelseal("unpack", "--in", str(shm / "m.tar"), "-o", str(shm / "out"))
        assert r.code == 4 and what in r.error(), r.stderr
        assert not (shm / "out").exists()
    sizes.unlink()
    sizes.symlink_to(shm / "key")
    r = modelseal("unpack", "--in", str(shm / "m.tar"), "-o", str(shm / "out"))
    assert r.code == 4 and "symlink" in r.error(), r.stderr
    sizes.unlink()
    sizes.write_text(json.dumps(truth))
    tar = shm / "m.tar"
    r = modelseal("seal", "-", "-o", str(shm / "bare.seal"), "--key", str(key), stdin=tar.read_bytes())
    assert r.code == 0, r.stderr
    r = modelseal("decrypt", "--in", str(shm / "bare.seal"), "--key", str(key), "-o", str(tar))
    assert r.code == 0, r.stderr
    # No sizes in that header: none left from before; only the delivery identity (issue 25) is recorded.
    assert set(json.loads(sizes.read_text())) == {"delivery"}
