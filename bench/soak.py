#!/usr/bin/env python3
"""The soak of issue 25: many deliveries at once, under faults and kills, and nothing lost, nothing left.

N pods start at once against one store, as in a rollout: each delivers the
model with `run`, or with the four-stage chain (fetch-key -> fetch-model ->
decrypt -> unpack), from s3rver (s3://), the test registry (oci://) or nginx
(https://, TLS ended by the proxy), through a fault proxy of its own
(tests/support/faults.py), its data key unwrapped by KMS (moto) through
another. Each delivery draws one scenario (round-robin over SCENARIOS, so
every kind occurs; its parameters from the seed): a network fault (resets,
stalls, truncations, slow trickles, 5xx bursts, the object replaced
mid-download), a SIGKILL or SIGTERM at a random point, a full volume
(ENOSPC), too few file descriptors (EMFILE), a memory limit just below the
need, a key service that answers slowly or not at all. A stage that fails is
run again, as the kubelet restarts an init container.

After every attempt and every delivery it checks the invariants:
  - the output is byte-exact (every file's SHA-256 against the manifest of
    the model that was sealed, or of its replacement) or absent;
  - a failed stage exited with a documented code and wrote one JSON line
    (event "failed") naming the cause, and nothing but JSON lines;
  - nothing is left after the retry: no NAME.partial, no staging directory,
    no stray name beside the outputs, no process of the stage's session (its
    decryption workers, whose memfd segments die with them), no POSIX
    shared-memory name in /dev/shm;
  - no secret in any log: the data keys (raw, hex, base64) and the bearer token;
  - a memory limit below the need ends in exit 6, never in an OOM kill;
    a key service that never answers ends in exit 5 within its retry budget;
  - no attempt hangs (ATTEMPT_TIMEOUT).

Why bench/ and not tools/: like the benchmarks it starts real servers,
measures (the delivery-time distribution) and prints a table. Seeded: a failing seed replays its plan (which scenario,
which fault at which byte, which kill after how long), not the machine's
timing. Exits 1 when an invariant is broken. Needs root for the tmpfs and
cgroup scenarios (skipped otherwise, and said so).

    python bench/soak.py [--seed S] [--concurrency 16] [--deliveries 64] [--time-limit 600] [--json FILE]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import random
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

from support.faults import Fault, FaultProxy, s3_error  # noqa: E402
from support.models import make_model  # noqa: E402
from support.moto import AWS_ENV, AWS_UNSET, moto_server  # noqa: E402
from support.pki import make_pki  # noqa: E402
from support.processes import LOCAL, free_port, stop_process  # noqa: E402
from support.registry import Registry  # noqa: E402
from support.s3rver import ACCESS_KEY, SECRET_KEY, missing as s3rver_missing, s3rver_server  # noqa: E402

MIB = 1 << 20
#: The exit codes a failed stage may end with (README, "Exit codes"); 1 (internal) is a bug.
DOCUMENTED = {2, 3, 4, 5, 6, 7, 128 + signal.SIGTERM, 128 + signal.SIGINT}
#: Attempts of one stage: the first and up to two restarts, as a kubelet would go on doing.
ATTEMPTS = 3
#: Seconds after which one attempt counts as hung (it is killed and reported).
ATTEMPT_TIMEOUT = 240.0
#: Seconds a stage's processes (its decryption workers) may take to follow it out.
PROCESS_GRACE = 30.0
#: Connection settings of every source: short timeouts so a stall costs seconds, not minutes.
SOURCE_QUERY = "timeout=3&retries=5&backoff=0.05&backoff_max=0.5"
KEY_TIMEOUT, KEY_RETRIES, KEY_BACKOFF_MAX = 2.0, 3, 0.3
SOURCES = ("s3", "oci", "https")
#: What each stage leaves in the pod's directory.
OUTPUTS = {"run": "model", "fetch-key": "key", "fetch-model": "model.seal", "decrypt": "model.tar", "unpack": "model"}
MODES = ("run", "chain")
CHAIN = ("fetch-key", "fetch-model", "decrypt", "unpack")
#: One scenario per delivery, round-robin: every kind occurs in any run of at least this many.
SCENARIOS = ("clean", "reset", "stall", "cut", "short", "trickle", "burst-5xx", "changed", "sigkill", "sigterm",
             "enospc", "emfile", "memory-limit", "key-slow", "key-down")
NETWORK = {"reset", "stall", "cut", "short", "trickle", "burst-5xx", "changed"}
#: Names the library could leave in /dev/shm if it ever used POSIX shared memory or semaphores (it uses memfd).
SHM_NAMES = re.compile(r"^(psm_|sem\.|mp-|wnsm_|modelseal-segments)")

NGINX = shutil.which("nginx", path="/usr/sbin:/usr/bin:/sbin:/bin")
NGINX_CONF = """
daemon off;
worker_processes 1;
user root;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {d}/tmp-body;
    proxy_temp_path {d}/tmp-proxy;
    fastcgi_temp_path {d}/tmp-fastcgi;
    uwsgi_temp_path {d}/tmp-uwsgi;
    scgi_temp_path {d}/tmp-scgi;
    sendfile on;
    server {{
        listen {host}:{port};
        root {root};
        location / {{ }}
    }}
}}
"""


# ---- the plan -------------------------------------------------------------------------------

@dataclass
class Plan:
    """One delivery (one pod): where from, how, and what goes wrong; all drawn from the seed."""

    index: int
    source: str
    mode: str
    scenario: str
    workers: int = 1  # --workers of run and decrypt (2: the decryption worker processes and their memfd)
    faults: list[dict] = field(default_factory=list)  # network faults, as Fault() arguments
    kill: tuple[str, int, float] | None = None  # (stage, signal, seconds after its start), first attempt only
    key_fault: str = ""  # "slow" | "stall" | "refused"
    fill_after: float = 0.0  # enospc: seconds into the delivery when a neighbour fills the volume
    nofile: tuple[str, int] | None = None  # emfile: (stage, RLIMIT_NOFILE of its first attempt)
    memory_stage: str = ""  # memory-limit: the stage run in a cgroup just below its need

    def label(self) -> str:
        return f"#{self.index} {self.source}/{self.mode}/{self.scenario}"


def make_plans(seed: int, count: int, model_bytes: int, privileged: bool) -> list[Plan]:
    rng = random.Random(seed)
    # clean twice a cycle: enough deliveries without faults for their own time distribution
    kinds = [s for s in SCENARIOS + ("clean",) if privileged or s not in ("enospc", "memory-limit")]
    offset = rng.randrange(len(kinds))
    plans = []
    for i in range(count):
        scenario = kinds[(i + offset) % len(kinds)]
        p = Plan(i, SOURCES[(i // len(kinds) + i) % len(SOURCES)], MODES[(i // 2 + i) % 2], scenario,
                 workers=rng.choice((1, 2)))
        at = rng.randrange(64 * 1024, model_bytes - 64 * 1024)  # a byte inside the ciphertext
        if scenario == "reset":
            p.faults = [dict(kind="reset", method="GET", times=rng.randint(1, 3))]
        elif scenario == "stall":
            p.faults = [dict(kind="stall", method="GET", after=at, seconds=rng.uniform(4, 6), times=1)]
        elif scenario == "cut":
            p.faults = [dict(kind="cut", method="GET", after=at, times=rng.randint(1, 3))]
        elif scenario == "short":
            p.faults = [dict(kind="short", method="GET", after=at, times=rng.randint(1, 2))]
        elif scenario == "trickle":
            p.faults = [dict(kind="trickle", method="GET", after=rng.choice((64, 128, 256)) * 1024,
                             seconds=rng.uniform(0.02, 0.06), times=rng.randint(1, 2))]
        elif scenario == "burst-5xx":
            p.faults = [dict(kind="status", status=rng.choice((500, 502, 503, 504)), times=rng.randint(2, 8))]
        elif scenario == "changed":
            p.faults = [dict(kind="cut", method="GET", after=at, times=1), dict(kind="tamper", method="GET", times=1)]
        elif scenario in ("sigkill", "sigterm"):
            stages = ("run",) if p.mode == "run" else CHAIN
            p.kill = (rng.choice(stages), signal.SIGKILL if scenario == "sigkill" else signal.SIGTERM,
                      rng.uniform(0.1, 1.6))
        elif scenario == "enospc":
            p.fill_after = rng.uniform(0.0, 3.0)
        elif scenario == "emfile":
            p.nofile = (rng.choice(("run",) if p.mode == "run" else CHAIN), rng.randint(6, 16))  # below 6 the interpreter cannot load itself
        elif scenario == "memory-limit":
            p.memory_stage = "run" if p.mode == "run" else "decrypt"
        elif scenario == "key-slow":
            p.key_fault = "slow"
        elif scenario == "key-down":
            p.key_fault = rng.choice(("stall", "refused"))
        if scenario in NETWORK and rng.random() < 0.3:  # and a kill on top, now and then
            stages = ("run",) if p.mode == "run" else CHAIN
            p.kill = (rng.choice(stages), rng.choice((signal.SIGKILL, signal.SIGTERM)), rng.uniform(0.1, 1.6))
        plans.append(p)
    return plans


# ---- the world: servers, models, keys --------------------------------------------------------

class Nginx:
    """nginx serving `root` over plain HTTP on 127.0.0.1 (the fault proxy in front of it speaks TLS)."""

    def __init__(self, root: str) -> None:
        self.dir = tempfile.mkdtemp(prefix="modelseal-soak-nginx-")
        self.port = free_port()
        conf = os.path.join(self.dir, "nginx.conf")
        with open(conf, "w") as f:
            f.write(NGINX_CONF.format(d=self.dir, host=LOCAL, port=self.port, root=root))
        self.proc = subprocess.Popen([str(NGINX), "-p", self.dir, "-c", conf, "-e", os.path.join(self.dir, "error.log")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection((LOCAL, self.port), timeout=1).close()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("nginx did not start: " + Path(self.dir, "error.log").read_text()[-2000:])
                time.sleep(0.05)

    def stop(self) -> None:
        stop_process(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)


def manifest(root: Path) -> dict[str, str]:
    """Every file's SHA-256 and every directory, by path relative to `root`: what a delivery must reproduce."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(MIB):
            h.update(chunk)
    return h.hexdigest()


def secret_forms(secret: bytes) -> list[bytes]:
    """The ways a secret could show up in a log."""
    return [secret, secret.hex().encode(), secret.hex().upper().encode(), base64.b64encode(secret),
            base64.urlsafe_b64encode(secret).rstrip(b"="), base64.b64encode(secret).rstrip(b"=")]


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "modelseal", *args]


def stage_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELSEAL_") and k not in AWS_UNSET}
    env.update(AWS_ENV)
    env.update(AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY, NO_PROXY="127.0.0.1,localhost")
    for k in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "https_proxy", "http_proxy", "all_proxy"):
        env.pop(k, None)
    return env


class World:
    """The servers, the two models (A is sealed; B replaces it mid-download) and what the checks compare against."""

    def __init__(self, root: Path, model_mib: float) -> None:
        self.root = root
        self.env = stage_env()
        self.privileged = os.geteuid() == 0
        self.stopping: list[Callable[[], None]] = []
        why = s3rver_missing() or ("" if NGINX else "nginx is not installed") or \
            ("" if shutil.which("docker-registry") else "docker-registry is not installed")
        if why:
            raise SystemExit(f"soak: {why} (tools/host-packages.sh, make setup)")
        work = root / "work"
        work.mkdir()
        (root / "pki").mkdir()
        self.pki = make_pki(str(root / "pki"))
        self.token = uuid.uuid4().hex + uuid.uuid4().hex  # the https:// bearer token: must never be logged
        (work / "token").write_text(self.token)
        self.token_file = work / "token"
        weights = int(model_mib * MIB)
        self.models = {name: make_model(work / f"model-{name}", weights) for name in ("A", "B")}
        self.manifests = {name: manifest(path) for name, path in self.models.items()}
        assert self.manifests["A"] != self.manifests["B"]  # random weights: a mix-up cannot pass for either

        self.moto = moto_server()
        import boto3

        kms = boto3.client("kms", endpoint_url=self.moto.url, region_name="us-east-1",
                           aws_access_key_id="testing", aws_secret_access_key="testing")
        key_id = kms.create_key()["KeyMetadata"]["KeyId"]
        kms.create_alias(AliasName="alias/soak", TargetKeyId=key_id)
        direct_kms = self.key_uri(self.moto.port)
        # Two ciphertexts per model: a file (s3://, https://) and an OCI artifact; each has its own data key.
        self.seals: dict[str, Path] = {}
        for name, path in self.models.items():
            self.seals[name] = work / f"{name}.seal"
            self.must(cli("seal", str(path), "-o", str(self.seals[name]), "--key-uri", direct_kms, "--name", "soak"))
        self.ciphertexts = {name: sha256(p) for name, p in self.seals.items()}
        self.keys: dict[str, bytes] = {}
        for name, path in self.seals.items():
            out = work / f"key-{name}"
            self.must(cli("fetch-key", "--key-uri", direct_kms, "--wrapped-from", str(path), "-o", str(out)))
            self.keys[name] = out.read_bytes()
            out.unlink()

        self.s3 = s3rver_server()
        self.s3_client = boto3.client("s3", endpoint_url=self.s3.url, region_name="us-east-1",
                                      aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY)
        self.s3_client.create_bucket(Bucket="soak")

        self.www = root / "www"
        self.www.mkdir()
        os.chmod(self.www, 0o755)
        self.nginx = Nginx(str(self.www))
        self.stopping.append(self.nginx.stop)

        self.registry = Registry(root=str(root))
        self.stopping.append(self.registry.stop)
        self.oci_manifests: dict[str, tuple[bytes, str]] = {}
        for name, path in self.models.items():
            ref = f"oci://{self.registry.host}/models/soak:{name.lower()}"
            r = self.must(cli("seal", str(path), "-o", ref, "--key-uri", direct_kms, "--allow-http", "--name", "soak"))
            pushed = next(json.loads(x) for x in r.stderr.splitlines() if '"pushed"' in x)
            self.ciphertexts["oci-" + name] = pushed["layer"].split(":", 1)[1]
            out = work / f"key-oci-{name}"
            self.must(cli("fetch-key", "--key-uri", direct_kms, "--source", ref, "--allow-http", "-o", str(out)))
            self.keys["oci-" + name] = out.read_bytes()
            out.unlink()
            self.oci_manifests[name] = self._get_manifest(name.lower())
        self.secrets = [form for k in self.keys.values() for form in secret_forms(k)] + [self.token.encode()]
        self.model_bytes = self.seals["A"].stat().st_size

    def must(self, argv: list[str]) -> subprocess.CompletedProcess:
        r = subprocess.run(argv, capture_output=True, text=True, env=self.env, timeout=300)
        if r.returncode:
            raise SystemExit(f"soak setup: {' '.join(argv[2:4])} failed ({r.returncode}): {r.stderr[-2000:]}")
        return r

    def key_uri(self, port: int) -> str:
        return (f"aws-kms://alias/soak?endpoint_url=http://{LOCAL}:{port}&allow_http=true&timeout={KEY_TIMEOUT}"
                f"&retries={KEY_RETRIES}&backoff=0.05&backoff_max={KEY_BACKOFF_MAX}")

    # the per-delivery objects, and replacing one mid-download

    def _get_manifest(self, tag: str) -> tuple[bytes, str]:
        req = urllib.request.Request(f"{self.registry.url}/v2/models/soak/manifests/{tag}", headers={
            "Accept": "application/vnd.oci.image.manifest.v1+json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.read(), r.headers["Content-Type"]

    def _put_manifest(self, tag: str, which: str) -> None:
        body, kind = self.oci_manifests[which]
        req = urllib.request.Request(f"{self.registry.url}/v2/models/soak/manifests/{tag}", data=body,
                                     method="PUT", headers={"Content-Type": kind})
        urllib.request.urlopen(req, timeout=30).close()

    def place(self, plan: Plan) -> None:
        """Model A under this delivery's own name, so its faults and replacement touch no other delivery."""
        name = f"d{plan.index}"
        if plan.source == "s3":
            self.s3_client.upload_file(str(self.seals["A"]), "soak", f"{name}.seal")
        elif plan.source == "https":
            shutil.copyfile(self.seals["A"], self.www / f"{name}.seal")
            os.chmod(self.www / f"{name}.seal", 0o644)
        else:
            self._put_manifest(name, "A")

    def replace(self, plan: Plan) -> None:
        """The object replaced by model B's, as a new version uploaded while pods download the old one."""
        name = f"d{plan.index}"
        if plan.source == "s3":
            self.s3_client.upload_file(str(self.seals["B"]), "soak", f"{name}.seal")
        elif plan.source == "https":
            tmp = self.www / f".{name}.new"
            shutil.copyfile(self.seals["B"], tmp)
            os.chmod(tmp, 0o644)
            os.replace(tmp, self.www / f"{name}.seal")
        else:
            self._put_manifest(name, "B")

    def upstream(self, source: str) -> int:
        return {"s3": int(self.s3.url.rsplit(":", 1)[1]), "oci": self.registry.port, "https": self.nginx.port}[source]

    def source_uri(self, plan: Plan, port: int) -> str:
        name = f"d{plan.index}"
        if plan.source == "s3":
            return f"s3://soak/{name}.seal?endpoint_url=http://{LOCAL}:{port}&allow_http=true&{SOURCE_QUERY}"
        if plan.source == "oci":
            return f"oci://{LOCAL}:{port}/models/soak:{name}?allow_http=true&{SOURCE_QUERY}"
        return f"https://{LOCAL}:{port}/{name}.seal?ca={self.pki.ca}&token_file={self.token_file}&{SOURCE_QUERY}"

    def stop(self) -> None:
        for stop in reversed(self.stopping):
            try:
                stop()
            except Exception as exc:  # noqa: BLE001 - go on stopping the others
                print(f"soak: stopping a server: {exc}", file=sys.stderr)


# ---- resource faults: a volume of its own, a memory cgroup -----------------------------------

class Volume:
    """A small tmpfs of its own (root), so a neighbour can fill it at a random point: ENOSPC."""

    def __init__(self, where: Path, size: int) -> None:
        where.mkdir()
        self.path = where
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(where)], check=True)

    def fill(self) -> None:
        """Write until the volume is full (what a neighbour sharing the emptyDir might do)."""
        try:
            with open(self.path / ".neighbour", "wb") as f:
                chunk = b"\0" * (256 * 1024)
                while True:
                    f.write(chunk)
                    f.flush()
        except OSError:
            pass

    def drain(self) -> None:
        try:
            os.unlink(self.path / ".neighbour")
        except FileNotFoundError:
            pass

    def close(self) -> None:
        for _ in range(50):
            if subprocess.run(["umount", str(self.path)], capture_output=True).returncode == 0:
                break
            time.sleep(0.1)
        shutil.rmtree(self.path, ignore_errors=True)


class MemoryCgroup:
    """A memory cgroup (v1 or v2) with `limit` bytes and no swap; `enter` moves a child into it."""

    def __init__(self, limit: int) -> None:
        own = Path("/proc/self/cgroup").read_text()
        v1 = any("memory" in line.split(":")[1].split(",") for line in own.splitlines() if line.count(":") >= 2)
        self.path = Path("/sys/fs/cgroup/memory" if v1 else "/sys/fs/cgroup") / f"modelseal-soak-{uuid.uuid4().hex[:8]}"
        self.path.mkdir()
        files = ({"memory.limit_in_bytes": limit, "memory.memsw.limit_in_bytes": limit} if v1 else
                 {"memory.max": limit, "memory.swap.max": 0})
        for name, value in files.items():
            if (self.path / name).exists():
                (self.path / name).write_text(str(value))
        self.procs = str(self.path / "cgroup.procs")

    def enter(self) -> None:  # runs in the forked child
        with open(self.procs, "w") as f:
            f.write(str(os.getpid()))

    def oom_kills(self) -> int:
        for name in ("memory.events", "memory.oom_control"):
            try:
                text = (self.path / name).read_text()
            except OSError:
                continue
            for line in text.splitlines():
                k, _, v = line.partition(" ")
                if k == "oom_kill":
                    return int(v)
        return 0

    def close(self) -> None:
        for _ in range(100):
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.1)


# ---- one delivery --------------------------------------------------------------------------

@dataclass
class Attempt:
    stage: str
    code: int
    seconds: float
    signalled: int = 0  # the signal we sent, if it was sent before the stage ended
    stderr: str = ""


@dataclass
class Outcome:
    plan: Plan
    code: int = 0  # the last attempt's exit code (0: delivered)
    delivered: str = ""  # "A" or "B": which model the output is, when present
    seconds: float = 0.0
    attempts: list[Attempt] = field(default_factory=list)
    faults: Counter = field(default_factory=Counter)  # fault kind -> times it was served
    violations: list[str] = field(default_factory=list)
    leftovers: int = 0
    corrupt: int = 0
    key_requests: int = 0
    key_seconds: float = 0.0
    error: str = ""  # the last attempt's "failed" line: its cause
    rerun_refused: int = 0  # a stage killed after its commit, then refusing its own output when run again
    redelivered: int = 0  # a stage killed after its commit, run again: found its own delivery, exit 0



TICKS = os.sysconf("SC_CLK_TCK")


def boot_ticks() -> float:
    """Now, in the clock ticks since boot that /proc/PID/stat's start time counts."""
    return time.clock_gettime(time.CLOCK_BOOTTIME) * TICKS


def session_processes(sid: int, started_by: float) -> list[int]:
    """The live processes of session `sid` started by `started_by` (boot ticks): a stage runs in a session
    of its own, so these are its workers. The start time keeps out a later session that reuses the pid."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z" and int(fields[19]) <= started_by + 1:
            found.append(int(entry))
    return found


def held_shm(names: set[str]) -> set[str]:
    """Which of these /dev/shm names some live process still has open or mapped (a neighbour's, not a leak)."""
    held = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            maps = Path(f"/proc/{entry}/maps").read_text()
            fds = [os.readlink(f"/proc/{entry}/fd/{fd}") for fd in os.listdir(f"/proc/{entry}/fd")]
        except OSError:
            continue
        for n in names:
            if f"/dev/shm/{n}" in maps or f"/dev/shm/{n}" in fds:
                held.add(n)
    return held


class Delivery:
    def __init__(self, world: World, plan: Plan, calibration: dict[str, int], shm_before: set[str]) -> None:
        self.world = world
        self.plan = plan
        self.calibration = calibration
        self.shm_before = shm_before
        self.out = Outcome(plan)
        self.dir = world.root / "pods" / f"d{plan.index}"
        self.volume: Volume | None = None

    # the checks

    def violation(self, what: str) -> None:
        self.out.violations.append(f"{self.plan.label()}: {what}")

    def expected_names(self, upto: int) -> set[str]:
        """The names the first `upto` completed stages leave in the pod's directory."""
        # run and unpack record their delivery beside the tree (.model.delivered), decrypt its header's
        # sizes and identity beside the tar (model.tar.sizes): each written with its stage's output.
        if self.plan.mode == "run":
            return {"model", ".model.delivered"} if upto else set()
        return set(["key", "model.seal", "model.tar", "model"][:upto]) | (
            {"model.tar.sizes"} if upto >= 3 else set()) | ({".model.delivered"} if upto >= 4 else set())

    def check_names(self, done: int, when: str) -> None:
        names = {n for n in os.listdir(self.dir) if n != ".neighbour" and n != "lost+found"}
        stray = names - self.expected_names(done)
        if stray:
            self.out.leftovers += len(stray)
            self.violation(f"left behind {when}: {sorted(stray)}")

    def check_output(self) -> None:
        """Byte-exact or absent: the tree against model A's or B's manifest, the chain's files against theirs."""
        model = self.dir / "model"
        if model.exists():
            got = manifest(model)
            which = [n for n, m in self.world.manifests.items() if m == got]
            if not which:
                self.out.corrupt += 1
                self.violation("the delivered tree matches neither model's manifest")
            else:
                self.out.delivered = which[0]
        if self.plan.mode == "chain":
            seal = self.dir / "model.seal"
            if seal.exists() and sha256(seal) not in self.world.ciphertexts.values():
                self.out.corrupt += 1
                self.violation("model.seal is neither ciphertext")
            key = self.dir / "key"
            if key.exists() and key.read_bytes() not in self.world.keys.values():
                self.out.corrupt += 1
                self.violation("the key file is no data key")

    def check_attempt(self, a: Attempt, proc_pid: int, ended: float) -> None:
        lines = [x for x in a.stderr.splitlines() if x.strip()]
        if a.code < 0 and a.signalled and lines and not a.stderr.endswith("\n"):
            lines.pop()  # a line cut short by our SIGKILL
        records = []
        for x in lines:
            try:
                records.append(json.loads(x))
            except ValueError:
                self.violation(f"{a.stage}: a log line that is not JSON: {x[:160]!r}")
        raw = a.stderr.encode(errors="surrogateescape")
        for s in self.world.secrets:
            if s in raw:
                self.violation(f"{a.stage}: a secret in its log")
                break
        failed = [r for r in records if r.get("event") == "failed"]
        if a.code > 0:
            if a.code not in DOCUMENTED:
                self.violation(f"{a.stage}: exit {a.code} is not a documented failure: {failed[-1:]}")
            if len(failed) != 1 or not str(failed[0].get("error", "")).strip() or failed[0].get("exit_code") != a.code:
                self.violation(f"{a.stage}: exit {a.code} without one 'failed' line naming the cause: {failed}")
        elif a.code == 0 and failed:
            self.violation(f"{a.stage}: exit 0 with a 'failed' line")
        elif a.code < 0 and -a.code != a.signalled:
            self.violation(f"{a.stage}: killed by signal {-a.code} that the soak did not send (an OOM kill?)")
        deadline = time.monotonic() + PROCESS_GRACE
        while (left := session_processes(proc_pid, ended)) and time.monotonic() < deadline:
            time.sleep(0.1)
        if left:
            memfds = 0
            for pid in left:
                try:
                    memfds += sum(os.readlink(f"/proc/{pid}/fd/{fd}").startswith("/memfd:")
                                  for fd in os.listdir(f"/proc/{pid}/fd"))
                except OSError:
                    pass
            self.out.leftovers += len(left)
            self.violation(f"{a.stage}: {len(left)} process(es) of the stage still alive after it exited, "
                           f"holding {memfds} memfd segment(s)")
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass

    def check_shm(self) -> None:
        new = {n for n in os.listdir("/dev/shm") if SHM_NAMES.match(n)} - self.shm_before
        new -= held_shm(new)  # the machine is shared: a live neighbour's segment is not our leak
        if new:
            self.out.leftovers += len(new)
            self.violation(f"shared memory left in /dev/shm: {sorted(new)[:5]}")

    # running stages

    def argv(self, stage: str, source: str, key_uri: str) -> list[str]:
        d = str(self.dir)
        workers = ["--workers", str(self.plan.workers)]
        if stage == "run":
            return cli("run", "--source", source, "--key-uri", key_uri, "-o", f"{d}/model", *workers)
        if stage == "fetch-key":
            return cli("fetch-key", "--key-uri", key_uri, "--source", source, "-o", f"{d}/key")
        if stage == "fetch-model":
            return cli("fetch-model", "--source", source, "-o", f"{d}/model.seal")
        if stage == "decrypt":
            return cli("decrypt", "--in", f"{d}/model.seal", "--key", f"{d}/key", "-o", f"{d}/model.tar", *workers)
        return cli("unpack", "--in", f"{d}/model.tar", "-o", f"{d}/model")

    def attempt(self, stage: str, number: int, argv: list[str], preexec: Callable[[], None] | None) -> Attempt:
        kill = self.plan.kill if number == 1 and self.plan.kill and self.plan.kill[0] == stage else None
        err = tempfile.TemporaryFile()
        started = time.monotonic()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                env=self.world.env, start_new_session=True, preexec_fn=preexec)
        signalled = 0
        try:
            if kill is not None:
                try:
                    proc.wait(kill[2])
                except subprocess.TimeoutExpired:
                    if proc.poll() is None:  # this thread alone waits on proc: not reaped, so the pid is its
                        proc.send_signal(kill[1])
                        signalled = kill[1]
            try:
                proc.wait(ATTEMPT_TIMEOUT)
                ended = boot_ticks()
            except subprocess.TimeoutExpired:
                self.violation(f"{stage}: attempt {number} still running after {ATTEMPT_TIMEOUT:.0f} s (hung)"
                               + (" after SIGTERM" if signalled == signal.SIGTERM else ""))
                proc.kill()
                proc.wait()
                ended = boot_ticks()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        err.seek(0)
        a = Attempt(stage, proc.returncode, time.monotonic() - started, signalled,
                    err.read().decode(errors="surrogateescape"))
        err.close()
        self.out.attempts.append(a)
        self.out.error = next((json.loads(x).get("error", "") for x in reversed(a.stderr.splitlines())
                               if x.startswith("{") and '"failed"' in x), "")
        self.check_attempt(a, proc.pid, ended)
        return a

    def run(self) -> Outcome:
        plan, world = self.plan, self.world
        world.place(plan)
        proxy = FaultProxy(world.upstream(plan.source), tls=world.pki.server_context() if plan.source == "https" else None)
        key_proxy = FaultProxy(world.moto.port)
        cgroup: MemoryCgroup | None = None
        filler: threading.Timer | None = None
        refusing: socket.socket | None = None
        try:
            for f in plan.faults:
                kw = dict(f)
                kw["path"] = {"s3": f"/d{plan.index}.seal", "https": f"/d{plan.index}.seal", "oci": "/blobs/"}[plan.source]
                if kw["kind"] == "status" and plan.source == "oci":
                    kw["path"] = "/v2/"
                if kw["kind"] == "tamper":
                    kw["before"] = lambda: world.replace(plan)
                if kw["kind"] == "status" and plan.source == "s3":
                    fault = s3_error("SlowDown" if kw["status"] == 503 else "InternalError", kw["status"])
                    fault.times, fault.path = kw["times"], kw["path"]
                else:
                    fault = Fault(**kw)
                proxy.add_fault(fault)
            if plan.key_fault == "slow":
                key_proxy.add_fault(Fault("tamper", before=lambda: time.sleep(KEY_TIMEOUT * 0.5), times=1))
            elif plan.key_fault == "stall":
                key_proxy.add_fault(Fault("stall", seconds=KEY_TIMEOUT + 1.5, times=1000))
            key_port = key_proxy.port
            if plan.key_fault == "refused":
                # bound, never listening: refused, and no other server can be given the port meanwhile
                refusing = socket.socket()
                refusing.bind((LOCAL, 0))
                key_port = refusing.getsockname()[1]
            source, key_uri = world.source_uri(plan, proxy.port), world.key_uri(key_port)

            if plan.scenario == "enospc":
                # room for the chain's three copies and a little more; a neighbour fills it at a random point
                self.volume = Volume(self.dir, 4 * world.model_bytes + 96 * 1024 * 16)
                filler = threading.Timer(plan.fill_after, self.volume.fill)
            else:
                self.dir.mkdir(parents=True)
            if plan.memory_stage:
                cgroup = MemoryCgroup(self.calibration[plan.memory_stage if plan.memory_stage == "decrypt"
                                                       else f"run-{plan.source}"])

            stages = ["run"] if plan.mode == "run" else list(CHAIN)
            started = time.monotonic()
            if filler is not None:
                filler.start()
            code = 0
            for done, stage in enumerate(stages):
                finished = False  # a killed attempt had committed the stage's output before the signal
                for number in range(1, ATTEMPTS + 1):
                    preexec = None
                    if plan.nofile and plan.nofile[0] == stage and number == 1:
                        limit = plan.nofile[1]

                        def preexec(limit: int = limit) -> None:
                            resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
                    elif cgroup is not None and plan.memory_stage == stage:
                        preexec = cgroup.enter
                    t = time.monotonic()
                    a = self.attempt(stage, number, self.argv(stage, source, key_uri), preexec)
                    if stage == "fetch-key" or stage == "run":
                        self.out.key_seconds = max(self.out.key_seconds, time.monotonic() - t)
                    code = a.code
                    if a.code == 0:
                        if finished and '"event":"already_delivered"' in a.stderr:
                            self.out.redelivered += 1  # the restart found its own delivery (issue 25)
                        break
                    finished = finished or bool(a.signalled and (self.dir / OUTPUTS[stage]).exists())
                    if a.code > 0 or a.signalled == signal.SIGTERM:
                        # An unwound stage leaves nothing: no NAME.partial, no staging directory. Its output
                        # may stand when the signal came after the commit (checked whole at the end).
                        self.check_names(done + (1 if finished else 0), f"by {stage} (exit {a.code})")
                    if finished and a.code == 2 and "exists and is not empty" in self.out.error:
                        # Killed after its rename, the stage is run again and refuses its own complete
                        # output (exit 2): a pod would loop there. Fixed (a restart finds its delivery record
                        # and exits 0); still reported as a finding if it ever happens again, not an invariant
                        # broken (the output is whole); the delivery goes on from it.
                        self.out.rerun_refused += 1
                        code = 0
                        break
                    if plan.scenario == "enospc" and self.volume is not None:
                        if filler is not None:
                            filler.join()
                        self.volume.drain()  # the neighbour goes away; the kubelet restarts the stage
                    time.sleep(0.2)  # the kubelet's back-off, shortened
                if code != 0:
                    break
                self.check_names(done + 1, f"after {stage}")
            self.out.seconds = time.monotonic() - started
            self.out.code = code if code >= 0 else 128 - code
            if filler is not None:
                filler.cancel()
                filler.join()
            if self.volume is not None:
                self.volume.drain()
            self.check_output()
            if code == 0 and not self.out.delivered:
                self.violation("exit 0 but no model delivered")
            if code != 0 and self.out.delivered:
                self.violation(f"exit {code} but a model was delivered")
            if code < 0:
                self.violation(f"the last attempt died by signal {-code}")
            self.check_shm()
            self.expectations(cgroup, key_proxy)
        finally:
            self.out.faults.update(self.served(proxy, key_proxy))
            proxy.close()
            key_proxy.close()
            if refusing is not None:
                refusing.close()
            if cgroup is not None:
                cgroup.close()
            if filler is not None:
                filler.cancel()
            if self.volume is not None:
                self.volume.close()
            shutil.rmtree(self.dir, ignore_errors=True)
        return self.out

    def served(self, proxy: FaultProxy, key_proxy: FaultProxy) -> Counter:
        """The faults the proxies actually served (a fault not reached before success is not counted)."""
        c: Counter = Counter()
        for f, planned in zip(proxy.faults, self.plan.faults):
            c[{"status": "5xx", "tamper": "changed"}.get(f.kind, f.kind)] += planned["times"] - f.times
        for f in key_proxy.faults:
            c["key-" + ("slow" if f.kind == "tamper" else "stall")] += (1 if f.kind == "tamper" else 1000) - f.times
        if self.plan.key_fault == "refused":
            c["key-refused"] += 1
        for a in self.out.attempts:
            if a.signalled:
                c["SIGKILL" if a.signalled == signal.SIGKILL else "SIGTERM"] += 1
        if self.plan.scenario == "enospc":
            c["volume filled"] += 1
        if self.plan.nofile:
            c["low nofile"] += 1
        if self.plan.memory_stage:
            c["memory limit"] += 1
        self.out.key_requests = key_proxy.count()
        return c

    def expectations(self, cgroup: MemoryCgroup | None, key_proxy: FaultProxy) -> None:
        """What some scenarios promise beyond the invariants."""
        if cgroup is not None:
            ours = [a for a in self.out.attempts if a.stage == self.plan.memory_stage]
            if any(a.code != 6 for a in ours) or cgroup.oom_kills():
                self.violation(f"memory limit below the need: {[a.code for a in ours]}, "
                               f"{cgroup.oom_kills()} OOM kill(s) (want exit 6, never an OOM kill)")
        if self.plan.key_fault in ("stall", "refused"):
            first = self.out.attempts[0]
            if first.code != 5:
                self.violation(f"a key service that never answers: exit {first.code}, want 5")
            per_attempt = KEY_RETRIES * (KEY_TIMEOUT + KEY_BACKOFF_MAX)
            if self.plan.key_fault == "stall" and self.out.key_requests > KEY_RETRIES * len(self.out.attempts):
                self.violation(f"{self.out.key_requests} key requests over {len(self.out.attempts)} attempts: "
                               f"more than the budget of {KEY_RETRIES} each")
            if self.out.key_seconds > 3 * per_attempt + 60:  # generous: catches a budget ignored, not a slow box
                self.violation(f"a key attempt took {self.out.key_seconds:.0f} s, beyond its budget")


# ---- calibration, the run, the table ---------------------------------------------------------

def calibrate(world: World) -> dict[str, int]:
    """A memory limit just below each stage's need: the stage's usage at its preflight plus half of what it needs.

    Measured once per stage and source in a roomy cgroup (its preflight logs the limit and the headroom;
    a cloud SDK imported is tens of MiB), so the limit sits tens of MiB below the need, far beyond the
    few MiB that usage varies from run to run, and above what the stage uses before its preflight."""
    if not world.privileged:
        return {}
    limits = {}
    d = world.root / "calibrate"
    d.mkdir()
    try:
        shutil.copyfile(world.seals["A"], d / "model.seal")
        (d / "key").write_bytes(world.keys["A"])
        runs = [("decrypt", cli("decrypt", "--in", str(d / "model.seal"), "--key", str(d / "key"),
                                "-o", str(d / "model.tar"), "--workers", "2"))]
        for source in SOURCES:
            plan = Plan(-1, source, "run", "calibrate")
            world.place(plan)
            uri = world.source_uri(plan, world.upstream(source)).replace("https://", "http://") \
                + ("&allow_http=true" if source == "https" else "")
            runs.append((f"run-{source}", cli("run", "--source", uri, "--key-uri", world.key_uri(world.moto.port),
                                              "-o", str(d / f"model-{source}"), "--workers", "2")))
        for stage, argv in runs:
            cg = MemoryCgroup(1 << 30)
            try:
                r = subprocess.run(argv, capture_output=True, text=True, env=world.env, preexec_fn=cg.enter, timeout=300)
            finally:
                cg.close()
            if r.returncode:
                raise SystemExit(f"soak calibration: {stage} failed: {r.stderr[-2000:]}")
            pre = next(json.loads(x) for x in r.stderr.splitlines() if '"preflight"' in x)
            in_use = pre["memory_limit"] - pre["memory_headroom"]
            total_need = pre["needs"] + 48 * MIB  # placement.preflight.WRITE_BUFFERS on top of the pages
            limits[stage] = in_use + total_need // 2
    finally:
        shutil.rmtree(d, ignore_errors=True)
    return limits


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(round(q / 100 * (len(s) - 1)))))]


def summarize(outcomes: list[Outcome], args: argparse.Namespace, wall: float, loads: list[float],
              skipped: list[str]) -> dict[str, Any]:
    codes = Counter(o.code for o in outcomes)
    faults: Counter = Counter()
    for o in outcomes:
        faults.update(o.faults)
    clean = [o.seconds for o in outcomes if o.plan.scenario == "clean" and o.code == 0]
    faulted = [o.seconds for o in outcomes if o.plan.scenario != "clean"]
    attempts = sum(len(o.attempts) for o in outcomes)
    stages = sum(1 if o.plan.mode == "run" else 4 for o in outcomes)
    return {
        "seed": args.seed, "concurrency": args.concurrency, "deliveries": len(outcomes),
        "by_scenario": dict(Counter(o.plan.scenario for o in outcomes)),
        "by_source": dict(Counter(f"{o.plan.source}/{o.plan.mode}" for o in outcomes)),
        "faults": dict(faults), "attempts": attempts,
        "retries": sum(max(0, len([a for a in o.attempts if a.stage == s]) - 1)
                       for o in outcomes for s in {a.stage for a in o.attempts}),
        "stages_planned": stages,
        "kills": faults["SIGKILL"] + faults["SIGTERM"],
        "outcomes": {str(k): v for k, v in sorted(codes.items())},
        "delivered_B": sum(1 for o in outcomes if o.delivered == "B"),
        "corrupt": sum(o.corrupt for o in outcomes), "leftovers": sum(o.leftovers for o in outcomes),
        "rerun_refused": sum(o.rerun_refused for o in outcomes),
        "redelivered": sum(o.redelivered for o in outcomes),
        "violations": [v for o in outcomes for v in o.violations],
        "seconds_clean": {"n": len(clean), "p50": percentile(clean, 50), "p99": percentile(clean, 99),
                          "max": max(clean, default=float("nan"))},
        "seconds_faulted": {"n": len(faulted), "p50": percentile(faulted, 50), "p99": percentile(faulted, 99),
                            "max": max(faulted, default=float("nan"))},
        "key_down": [{"how": o.plan.key_fault, "attempts": len(o.attempts), "requests": o.key_requests,
                      "longest_attempt": round(o.key_seconds, 2), "code": o.code}
                     for o in outcomes if o.plan.key_fault in ("stall", "refused")],
        "key_budget": {"retries": KEY_RETRIES, "timeout": KEY_TIMEOUT, "backoff_max": KEY_BACKOFF_MAX},
        "wall_seconds": round(wall, 1), "load_average": [round(x, 2) for x in loads],
        "cpus": os.cpu_count(), "skipped": skipped,
    }


def render(s: dict[str, Any]) -> str:
    rows = [["deliveries (concurrent)", f"{s['deliveries']} ({s['concurrency']})"],
            ["  by source/mode", ", ".join(f"{k} {v}" for k, v in sorted(s["by_source"].items()))],
            ["  by scenario", ", ".join(f"{k} {v}" for k, v in sorted(s["by_scenario"].items()))],
            ["faults injected", ", ".join(f"{k} {v}" for k, v in sorted(s["faults"].items()))],
            ["stage attempts / retries", f"{s['attempts']} / {s['retries']}"],
            ["kills (SIGKILL + SIGTERM)", str(s["kills"])],
            ["outcomes by exit code", ", ".join(f"{k}: {v}" for k, v in s["outcomes"].items())],
            ["  delivered the replacement (B)", str(s["delivered_B"])],
            ["corrupt outputs (must be 0)", str(s["corrupt"])],
            ["leftovers (must be 0)", str(s["leftovers"])],
            ["invariant violations", str(len(s["violations"]))],
            ["restart found its own whole output (exit 0)", str(s["redelivered"])],
            ["restart refused its own whole output (exit 2, must be 0)", str(s["rerun_refused"])]]
    for name in ("clean", "faulted"):
        t = s[f"seconds_{name}"]
        rows.append([f"delivery seconds, {'no faults' if name == 'clean' else 'under faults'} (n={t['n']})",
                     f"p50 {t['p50']:.2f}  p99 {t['p99']:.2f}  max {t['max']:.2f}"])
    b = s["key_budget"]
    for how in ("stall", "refused"):
        down = [k for k in s["key_down"] if k["how"] == how]
        if down:
            per = (f"{sum(k['requests'] for k in down) / sum(k['attempts'] for k in down):.1f} requests/attempt, "
                   if how == "stall" else "")
            rows.append([f"key service {'silent' if how == 'stall' else 'refusing'} (n={len(down)})",
                         f"exit {sorted({k['code'] for k in down})}, {per}longest attempt "
                         f"{max(k['longest_attempt'] for k in down):.1f} s (budget {b['retries']} tries x "
                         f"{b['timeout']:g} s timeout + backoff <= {b['backoff_max']:g} s)"])
    rows.append(["wall seconds; load average 1/5/15", f"{s['wall_seconds']}; {' '.join(map(str, s['load_average']))}"
                 f" ({s['cpus']} CPUs)"])
    width = max(len(r[0]) for r in rows)
    return "\n".join([f"soak, seed {s['seed']}", "-" * (width + 40)] + [f"{k:<{width}}  {v}" for k, v in rows])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=None, help="replays a run's plan (default: a random one, printed)")
    ap.add_argument("--concurrency", type=int, default=16, help="deliveries at once (pods of a rollout)")
    ap.add_argument("--deliveries", type=int, default=128, help="deliveries in all")
    ap.add_argument("--time-limit", type=float, default=900, help="seconds after which no delivery is started")
    ap.add_argument("--model-mib", type=float, default=3.0, help="size of the model's weights")
    ap.add_argument("--json", help="write the summary here")
    args = ap.parse_args(argv)
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1, 10**6)
    print(f"soak: seed {args.seed} (replay with --seed {args.seed})", flush=True)
    root = Path(tempfile.mkdtemp(prefix="modelseal-soak-", dir="/dev/shm"))
    world = None
    skipped = [] if os.geteuid() == 0 else ["enospc and memory-limit (need root: a tmpfs mount, a cgroup)"]
    try:
        os.chmod(root, 0o700)
        (root / "pods").mkdir()
        world = World(root, args.model_mib)
        calibration = calibrate(world)
        plans = make_plans(args.seed, args.deliveries, world.model_bytes, world.privileged)
        shm_before = {n for n in os.listdir("/dev/shm") if SHM_NAMES.match(n)}
        started = time.monotonic()
        outcomes: list[Outcome] = []
        lock = threading.Lock()

        def one(plan: Plan) -> None:
            if time.monotonic() - started > args.time_limit:
                return
            try:
                o = Delivery(world, plan, calibration, shm_before).run()
            except Exception as exc:  # noqa: BLE001 - the soak itself failed: that is reported, not hidden
                o = Outcome(plan, code=-1, violations=[f"{plan.label()}: the soak failed: {type(exc).__name__}: {exc}"])
            with lock:
                outcomes.append(o)
                mark = "ok" if not o.violations else "VIOLATION"
                codes = " ".join(f"{a.stage}:{a.code}" for a in o.attempts)
                print(f"  {plan.label():32} exit {o.code:3}  {o.seconds:6.2f} s  {mark}  [{codes}]  {o.error[:120]}",
                      flush=True)

        with ThreadPoolExecutor(max_workers=args.concurrency) as pool:
            list(pool.map(one, plans))
        wall = time.monotonic() - started
        outcomes.sort(key=lambda o: o.plan.index)
        summary = summarize(outcomes, args, wall, list(os.getloadavg()), skipped)
    finally:
        if world is not None:
            world.stop()
        subprocess.run(["rm", "-rf", "--one-file-system", str(root)], check=False)
    print(render(summary))
    for v in summary["violations"]:
        print("VIOLATION", v)
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1, default=str))
    return 1 if summary["violations"] or summary["corrupt"] or summary["leftovers"] else 0


if __name__ == "__main__":
    sys.exit(main())
