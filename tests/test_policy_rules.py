"""The preflight's arithmetic, the retry policy's caps and the redaction of URLs, each rule pinned by a test.

- Preflight (placement/, stages.py, parallel.py, sources/s3.py): the memory a
  stage asks of its cgroup is the tmpfs pages it will write (page-rounded
  files, plus kernel memory per entry) and its own: the working set, the
  source's buffers in flight (S3 parts) and the --workers processes (shared
  memory and interpreters). A real memory cgroup (root; skipped elsewhere,
  failed under CI) and a .seal whose authenticated header declares the sizes:
  the stage refuses before writing, and its message carries both sums, which
  the tests recompute term by term, so dropping any one term fails.
- Retry policy (retry.py, web.py): a server's Retry-After is honoured up to
  RETRY_AFTER_MAX, the backoff never waits more than backoff_max, a call makes
  at most `retries` attempts, and each attempt ends after `timeout`: the total
  time is bounded by those caps. Real HTTP servers (tests/support/); the
  waits are recorded through the policy's own `sleep` hook, never timed.
- Redaction: a URL's query values (a presigned URL's signature, a token) and
  user info never reach a log line, an error or the termination message,
  along each path a URL takes into one (the source, key and output log
  lines, the backends' names for what they fetch, the reason of a network
  error, the text of an internal error).

Each rule has its mutant in tools/mutants.toml (issue 27).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from support.cgroups import fake_cgroup, real_cgroup
from conftest import modelseal, need
from modelseal import parallel, retry
from modelseal.placement import cgroup, preflight
from modelseal.placement.need import PAGE
from modelseal import sealfile
from modelseal.errors import UnavailableError, classify
from modelseal.sources import open_source
from modelseal.uri import URI
from support.faults import Fault
from support.fixtures import fast
from support.objects import ObjectServer
from support.processes import free_port

MIB = 1 << 20
FAST = "backoff=0.01&backoff_max=0.05"


# ---- preflight arithmetic ------------------------------------------------------------------------

#: What the header declares: 384 MiB in 20,000 files (a 3-byte tar actually follows; the stage refuses
#: on the declaration, before it reads a member). Far over the 256 MiB cgroup below, far under /dev/shm.
FILE_BYTES, FILES, TAR_BYTES = 384 * MIB, 20_000, 400 * MIB
LIMIT = 256 * MIB
S3_CONCURRENCY, S3_PART = 3, 8 * MIB


def _mib(n: int) -> str:
    return f"{n / MIB:,.0f} MiB"


def expected(*, pages: int, workers: int, buffers: int) -> tuple[str, str]:
    """(tmpfs pages, the stage's own memory) as the preflight's message must state them, recomputed here
    from the documented terms: never from the functions under test."""
    seg = sealfile.AES256_GCM_HKDF_1MB.segment_size
    # a worker pool's shared memory: two segments (ciphertext, plaintext) per slot; slots = the workers,
    # the consumer's ring of 4, a read-ahead of 2, and 3 more of look-ahead; plus an interpreter each
    pool = 0 if workers <= 1 else (workers + 4 + 2 + 3) * 2 * seg + workers * parallel.WORKER_PRIVATE
    return _mib(pages), _mib(preflight.WRITE_BUFFERS + buffers + pool)


def tree_pages() -> int:
    """The unpacked tree: every file rounded up to whole pages, and the kernel's memory per entry."""
    return FILE_BYTES + FILES * (PAGE - 1) + FILES * preflight.PER_ENTRY


def file_pages(size: int) -> int:
    return -(-size // PAGE) * PAGE + preflight.PER_ENTRY


_NEEDS = re.compile(r"needs ([\d,]+ MiB) \(([\d,]+ MiB) of tmpfs pages under .*?, and ([\d,]+ MiB) for the stage "
                    r"itself\) but this container's memory limit leaves ([\d,]+) MiB .*to at least (\d+)Mi$")


@pytest.fixture(scope="module")
def declared(tmp_path_factory) -> tuple[Path, Path]:
    """(key, .seal): a .seal whose authenticated header declares FILE_BYTES in FILES files (tar_bytes
    TAR_BYTES), holding a tiny tar. Ciphertext may live on disk."""
    d = tmp_path_factory.mktemp("declared")
    key = os.urandom(32)
    (d / "key").write_bytes(key)
    with open(d / "m.seal", "wb") as f:
        w = sealfile.seal_writer(f, sealfile.Header(key_id="", sizes=sealfile.Sizes(
            tar_bytes=TAR_BYTES, file_bytes=FILE_BYTES, files=FILES)), key)
        w.write(b"tar")
        w.close()
    return d / "key", d / "m.seal"


def in_cgroup(*args: str, stdin: bytes | None = None) -> tuple[int, str]:
    """The CLI in a fresh memory cgroup of LIMIT (no swap): (exit code, the failure's message)."""
    with real_cgroup("memory", {"memory.limit_in_bytes": str(LIMIT), "memory.memsw.limit_in_bytes": str(LIMIT)},
                     {"memory.max": str(LIMIT), "memory.swap.max": "0"}) as enter:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MODELSEAL_")}
        p = subprocess.run([sys.executable, "-m", "modelseal", *args], input=stdin, capture_output=True, env=env,
                           timeout=300, preexec_fn=enter)
    err = p.stderr.decode(errors="replace")
    failed = [json.loads(x) for x in err.splitlines() if x.startswith("{") and '"event":"failed"' in x]
    return p.returncode, failed[-1]["error"] if failed else err[-2000:]


def _refused_with(code: int, message: str, pages: str, own: str) -> None:
    """Refused (exit 6) with these two terms; and the limit it says to raise to holds what is in use
    already (the limit less the headroom it names) on top of both, rounded up to 16 Mi."""
    assert code == 6, message
    m = _NEEDS.search(message)
    assert m, message
    assert (m.group(2), m.group(3)) == (pages, own), message
    needs, in_use = _int(m.group(1)) * MIB, LIMIT - _int(m.group(4)) * MIB
    assert in_use > 0 and in_use + needs - MIB <= int(m.group(5)) * MIB < in_use + needs + 17 * MIB, message


def _int(text: str) -> int:
    return int(text.removesuffix(" MiB").replace(",", ""))


@pytest.fixture
def bucket(moto, aws_env, declared):
    import boto3

    client = boto3.client("s3", endpoint_url=moto.url, region_name="us-east-1")
    name = "b-" + uuid.uuid4().hex[:12]
    client.create_bucket(Bucket=name)
    client.put_object(Bucket=name, Key="m.seal", Body=declared[1].read_bytes())
    return name


@pytest.mark.parametrize("workers", [1, 3])
def test_preflight_counts_the_s3_parts_in_flight_and_the_workers(shm, declared, bucket, moto, workers):
    """run from S3: (concurrency + 1) parts of part_size are held while the tree is written, and each
    --workers process adds its slots of shared memory and an interpreter."""
    key, _ = declared
    code, message = in_cgroup(
        "run", "--source", f"s3://{bucket}/m.seal?part_size=8MiB", "--endpoint-url", moto.url, "--allow-http",
        "--concurrency", str(S3_CONCURRENCY), "--workers", str(workers), "--key", str(key), "-o", str(shm / "m"))
    _refused_with(code, message, *expected(pages=tree_pages(), workers=workers,
                                           buffers=(S3_CONCURRENCY + 1) * S3_PART))
    assert os.listdir(shm) == []


def test_preflight_counts_the_workers_of_a_run_from_a_file(shm, declared):
    """A local source holds one 1 MiB read buffer; three workers hold their pool."""
    key, seal = declared
    code, message = in_cgroup("run", "--source", str(seal), "--workers", "3", "--key", str(key), "-o", str(shm / "m"))
    _refused_with(code, message, *expected(pages=tree_pages(), workers=3, buffers=MIB))
    assert os.listdir(shm) == []


@pytest.mark.parametrize("workers", [1, 4])
def test_preflight_counts_the_workers_of_decrypt(shm, declared, workers):
    """decrypt from stdin: the output is the header's tar_bytes (page-rounded, one entry), and the workers."""
    key, seal = declared
    code, message = in_cgroup("decrypt", "--in", "-", "--workers", str(workers), "--key", str(key),
                              "-o", str(shm / "m.tar"), stdin=seal.read_bytes())
    _refused_with(code, message, *expected(pages=file_pages(TAR_BYTES), workers=workers, buffers=0))
    assert os.listdir(shm) == []


def test_the_size_limit_a_refusal_suggests_holds_what_the_volume_holds_already(shm, declared):
    """A volume already holding 24 MiB (a sidecar's files, an earlier model): the emptyDir sizeLimit the
    refusal names must hold those and the model, not the model alone."""
    key, seal = declared
    vol = shm / "vol"
    vol.mkdir()
    if os.geteuid() != 0:
        need("mounting a small tmpfs needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(vol)], capture_output=True)
    if mounted.returncode:
        need(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        (vol / "already-here.bin").write_bytes(bytes(24 * MIB))
        r = modelseal("run", "--source", str(seal), "--workers", "1", "--key", str(key), "-o", str(vol / "m"))
        assert r.code == 6, r.stderr
        m = re.search(r"needs ([\d,]+) MiB under .* raise the emptyDir sizeLimit to at least (\d+)Mi$", r.error())
        assert m, r.error()
        floor = _int(m.group(1)) * MIB + 24 * MIB
        assert floor - MIB <= int(m.group(2)) * MIB < floor + 17 * MIB, r.error()
        assert os.listdir(vol) == ["already-here.bin"]
    finally:
        subprocess.run(["umount", str(vol)], check=True)


# ---- retry policy: every cap -----------------------------------------------------------------------

@pytest.fixture
def web():
    srv = ObjectServer({"/m.seal": os.urandom(1000)})
    yield srv
    srv.close()


def _probe(srv: ObjectServer, waits: list[float], **options) -> None:
    """The https source's length probe under the policy, its waits recorded instead of slept."""
    src = open_source(f"{srv.url}/m.seal", fast(allow_http=True, **options))
    retry.call(src.what, src.connection, src._probe, sleep=waits.append)


def test_retry_after_is_honoured_up_to_its_cap(web):
    tiny = {"backoff": "0.001", "backoff_max": "0.002"}
    waits: list[float] = []
    web.add_fault(Fault("status", 503, headers={"Retry-After": "2"}))
    _probe(web, waits, retries=2, extra=tiny)
    assert waits == [2.0]  # honoured: far above the backoff

    waits.clear()
    web.add_fault(Fault("status", 503, headers={"Retry-After": "86400"}, times=2))
    _probe(web, waits, retries=3, extra=tiny)
    assert waits == [retry.RETRY_AFTER_MAX] * 2 and retry.RETRY_AFTER_MAX == 60.0  # a day asked, a minute given

    waits.clear()
    web.add_fault(Fault("status", 429, headers={"Retry-After": "Wed, 21 Oct 2099 07:28:00 GMT"}),
                  Fault("status", 503, headers={"Retry-After": "-5"}), Fault("status", 503, headers={"Retry-After": "1e9"}))
    _probe(web, waits, retries=4, extra=tiny)
    assert len(waits) == 3 and max(waits) <= 0.002  # dates and non-decimals are not honoured at all


def test_backoff_waits_are_capped(web):
    """A base of 1000 s grows far past the cap at once: every wait is still at most backoff_max."""
    waits: list[float] = []
    web.add_fault(Fault("status", 503, times=5))
    _probe(web, waits, retries=6, extra={"backoff": "1000", "backoff_max": "0.05"})
    assert len(waits) == 5 and all(0 <= w <= 0.05 for w in waits), waits
    assert web.count() == 6


@pytest.mark.parametrize("retries", [1, 3])
def test_attempts_are_capped(web, retries):
    waits: list[float] = []
    web.add_fault(Fault("status", 503, times=100))
    with pytest.raises(UnavailableError) as e:
        _probe(web, waits, retries=retries)
    assert f"after {retries} attempts: HTTP 503" in str(e.value)
    assert web.count() == retries and len(waits) == retries - 1


def test_each_attempt_ends_after_the_timeout(shm, web):
    """A server that accepts and then says nothing for two minutes: each attempt gives up after --timeout,
    so two attempts end the stage (exit 5) long before the server would; the subprocess's own 60 s limit
    only catches a hang."""
    web.add_fault(Fault("stall", seconds=120, times=2))
    r = modelseal("fetch-model", "--source", f"{web.url}/m.seal?{FAST}", "--allow-http", "--timeout", "1",
                  "--retries", "2", "-o", str(shm / "m.seal"), timeout=60)
    assert r.code == 5 and "after 2 attempts" in r.error(), r.stderr
    assert web.count() == 2 and os.listdir(shm) == []


@pytest.mark.parametrize("timeout", [0.0, -1.0])
def test_the_timeout_must_be_positive(web, timeout):
    """The command line's bounds refuse it first; options built any other way meet the client's own
    rule: a timeout of 0 would fail every attempt at once and read as an unavailable server."""
    from modelseal.errors import UsageError
    from modelseal.connection import Connection

    with pytest.raises(UsageError, match="^timeout must be positive$"):
        open_source(f"{web.url}/m.seal", Connection(timeout=timeout, allow_http=True)).open()
    assert web.count() == 0


# ---- redaction: query values and user info never reach a log, an error or the termination message ----

SECRETS = ("sig-value-1234abcd", "credential-value-5678", "token-value-9999")
QUERY = f"X-Amz-Signature={SECRETS[0]}&X-Amz-Credential={SECRETS[1]}&token={SECRETS[2]}"


def _run(shm: Path, *args: str):
    """The CLI with a termination log; returns (result, everything it said)."""
    term = shm / f"termination-{uuid.uuid4().hex[:6]}"
    term.write_text("")
    r = modelseal(*args, env={"MODELSEAL_TERMINATION_LOG": str(term)})
    return r, r.stdout.decode("latin-1") + r.stderr + term.read_text()


def _never_said(said: str) -> None:
    for secret in SECRETS:
        assert secret not in said, f"{secret!r} reached a log or message"


def test_a_presigned_sources_query_values_are_never_said(shm, web):
    """The source log line, the retry warnings, and the errors (denied, unavailable) name the URL with
    its query's keys only."""
    url = f"{web.url}/m.seal?{QUERY}"
    r, said = _run(shm, "fetch-model", "--source", url, "--allow-http", "-o", str(shm / "ok.seal"))
    assert r.code == 0, r.stderr
    assert web.seen[-1][1] == f"/m.seal?{QUERY}"  # the server got the signature: it is its URL
    shown = f"{web.url}/m.seal?[X-Amz-Credential,X-Amz-Signature,token]"
    assert any(x.get("event") == "source" and x["uri"] == shown for x in r.logs())
    _never_said(said)

    r, said = _run(shm, "fetch-model", "--source", url.replace("/m.seal", "/gone.seal"), "--allow-http",
                   "-o", str(shm / "gone.seal"))
    assert r.code == 3 and r.error() == f"{shown.replace('/m.seal', '/gone.seal')}: denied or not found (HTTP 404)"
    _never_said(said)

    web.add_fault(Fault("status", 503, times=3))
    r, said = _run(shm, "fetch-model", "--source", f"{url}&{FAST}", "--allow-http", "--retries", "3",
                   "-o", str(shm / "busy.seal"))
    assert r.code == 5 and sum(x.get("event") == "retry" for x in r.logs()) == 2, r.stderr
    _never_said(said)


def test_a_network_errors_text_is_never_quoted(shm, pki):
    """requests' ConnectionError quotes the URL it failed on, query and all: the reason names classes and
    the system's words only."""
    url = f"https://127.0.0.1:{free_port()}/m.seal?{QUERY}&{FAST}"
    r, said = _run(shm, "fetch-model", "--source", url, "--ca", pki.ca, "--retries", "2", "-o", str(shm / "m.seal"))
    assert r.code == 5 and "after 2 attempts: ConnectionError" in r.error() and "Connection refused" in r.error()
    assert "m.seal?" not in r.error().split(":", 3)[-1]  # past the redacted name: no URL at all
    _never_said(said)


def test_a_key_uris_query_values_are_never_said(shm):
    key = os.urandom(32)
    srv = ObjectServer({"/k": key})
    try:
        url = f"{srv.url}/k?{QUERY}"
        r, said = _run(shm, "fetch-key", "--key-uri", url, "--allow-http", "-o", str(shm / "key"))
        assert r.code == 0, r.stderr
        assert (shm / "key").read_bytes() == key
        assert any(x.get("event") == "key_source" and x["uri"].endswith("?[X-Amz-Credential,X-Amz-Signature,token]")
                   for x in r.logs())
        _never_said(said)
        r, said = _run(shm, "fetch-key", "--key-uri", url.replace("/k?", "/nothing?"), "--allow-http",
                       "-o", str(shm / "key2"))
        assert r.code == 3 and "HTTP 404" in r.error(), r.stderr
        _never_said(said)
    finally:
        srv.close()


def test_an_output_uris_query_values_are_never_said(shm):
    (shm / "model").mkdir()
    (shm / "model" / "w.bin").write_bytes(os.urandom(5000))
    assert modelseal("keygen", "-o", str(shm / "key")).code == 0
    r, said = _run(shm, "seal", str(shm / "model"), "-o", f"file://{shm / 'm.seal'}?{QUERY}", "--key", str(shm / "key"))
    assert r.code == 0, r.stderr
    assert (shm / "m.seal").exists()
    assert any(x.get("event") == "sealed" for x in r.logs())
    _never_said(said)


def test_redacted_drops_user_info_and_query_values():
    """URI.parse refuses user info, but a URI built by hand may carry it: redacted() drops it too."""
    by_hand = URI(f"https://user:{SECRETS[2]}@h.example/m?{QUERY}", "https", f"user:{SECRETS[2]}@h.example", "/m",
                  {"X-Amz-Signature": SECRETS[0], "token": SECRETS[1]})
    assert by_hand.redacted() == "https://h.example/m?[X-Amz-Signature,token]"
    assert URI.parse(f"s3://bucket/key?{QUERY}").redacted() == "s3://bucket/key?[X-Amz-Credential,X-Amz-Signature,token]"


def test_an_internal_errors_text_is_never_quoted():
    """An unexpected exception is reported by its type and place, never its text (it may quote a URL)."""
    try:
        raise ValueError(f"bad URL https://h.example/m?{QUERY}")
    except ValueError as exc:
        err = classify(exc)
    assert str(err).startswith("internal error: ValueError at test_policy_rules.py:")
    _never_said(str(err))


# ---- logs: never the reason a stage fails, never litter -------------------------------------------

@pytest.mark.parametrize("stderr", ["a pipe nobody reads", "closed (2>&-)"])
def test_a_stderr_that_cannot_be_written_does_not_fail_the_stage(shm, stderr):
    """The logs are for people; a collector that went away, or no stderr at all, changes no outcome:
    the key is written and the stage exits 0 (and a failing stage keeps its own code)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELSEAL_")}
    if stderr == "a pipe nobody reads":
        read, write = os.pipe()
        os.close(read)  # every write to it: EPIPE
        run = {"stderr": write}
    else:
        write = None
        run = {"preexec_fn": lambda: os.close(2)}
    try:
        ok = subprocess.run([sys.executable, "-m", "modelseal", "keygen", "-o", str(shm / "key")], env=env,
                            timeout=120, **run)
        failed = subprocess.run([sys.executable, "-m", "modelseal", "decrypt", "--in", str(shm / "absent.seal"),
                                 "--key", str(shm / "key"), "-o", str(shm / "out.tar")], env=env, timeout=120, **run)
    finally:
        if write is not None:
            os.close(write)
    assert ok.returncode == 0 and len((shm / "key").read_bytes()) == 32
    assert failed.returncode == 3 and not (shm / "out.tar").exists()


def test_the_termination_message_replaces_the_file_kubernetes_provides_and_creates_none(shm):
    """Written only where the file exists (a pod's /dev/termination-log), never created on a host, and
    the whole file is the new message (no tail of an earlier, longer one)."""
    absent = shm / "absent-termination-log"
    r = modelseal("keygen", "-o", str(shm / "k1"), env={"MODELSEAL_TERMINATION_LOG": str(absent)})
    assert r.code == 0, r.stderr
    assert not absent.exists()
    present = shm / "termination-log"
    present.write_text('{"stage": "an earlier run", "error": "' + "x" * 5000 + '"}\n')
    r = modelseal("keygen", "-o", str(shm / "k2"), env={"MODELSEAL_TERMINATION_LOG": str(present)})
    assert r.code == 0, r.stderr
    message = json.loads(present.read_text())
    assert message["stage"] == "keygen" and message["status"] == "ok"


# ---- what the preflight knows, and what it says it does not -------------------------------------------

def test_a_v1_limit_of_2_to_the_63_is_no_limit(tmp_path):
    """cgroup v1 writes "no limit" as 2^63 rounded down to a page (v2 writes "max"): no limit to respect,
    not a limit of eight exbibytes to report and check against."""
    unlimited = str(9223372036854771712)
    proc = fake_cgroup(tmp_path, 1, {"/": {
        "memory.limit_in_bytes": unlimited, "memory.usage_in_bytes": str(200 * MIB),
        "memory.stat": f"total_active_file 0\ntotal_inactive_file 0\nhierarchical_memory_limit {unlimited}\n"}},
        own="/", controller="memory")
    assert cgroup.memory(str(proc)) is None


def test_a_compressed_archives_length_is_no_estimate_of_its_tree(shm):
    """unpack of a zstd archive from a file: its length bounds nothing (zstd of a sparse model is a
    fraction of it), so the preflight says it cannot check and goes on, rather than size the tree by it."""
    import io
    import tarfile

    import zstandard

    data = os.urandom(200_000)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as t:
        info = tarfile.TarInfo("weights.bin")
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
    (shm / "m.tar.zst").write_bytes(zstandard.ZstdCompressor().compress(raw.getvalue()))
    r = modelseal("unpack", "--in", str(shm / "m.tar.zst"), "-o", str(shm / "out"))
    assert r.code == 0, r.stderr
    assert (shm / "out" / "weights.bin").read_bytes() == data
    unknown = [x for x in r.logs() if x.get("event") == "preflight_unknown"]
    assert unknown and "zstd-compressed" in unknown[0]["message"]
    assert not [x for x in r.logs() if x.get("event") == "preflight"]
