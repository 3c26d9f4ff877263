"""Kubernetes pod specs played on a real Docker engine, for the container tests.

A `Pod` reads one of examples/kubernetes/*.yaml and runs its containers the
way a kubelet would, as far as Docker allows:

- volumes: `emptyDir: {medium: Memory}` is a Docker tmpfs volume (sizeLimit,
  owned by runAsUser:fsGroup); a plain `emptyDir` is a Docker volume on the
  engine's disk. A sandbox container (the pod's "pause" container) keeps
  every volume mounted for the pod's lifetime, because Docker empties a tmpfs
  volume when the last container using it exits, and hands the disk volumes
  to runAsUser:fsGroup (fsGroup's job), with CHOWN as its only capability;
- each container: the spec's image, command, args and env (with the
  test's substitutions: bucket, KMS alias, digest pin), its volumeMounts
  (readOnly honoured), runAsUser:runAsGroup, readOnlyRootFilesystem ->
  --read-only, capabilities.drop -> --cap-drop, allowPrivilegeEscalation:
  false -> no-new-privileges, limits -> --memory/--cpus, a
  terminationMessagePath file on tmpfs; host networking (a pod has a
  network; these machines allow only loopback);
- the IRSA / Pod Identity webhook's part is `Pod(env=...)`: the test's AWS
  endpoint and dummy credentials, injected into every container.

Nothing here writes plaintext to disk: volumes are read back through a
hardened reader container whose output is a tar on a pipe (logging driver
"none", so Docker keeps no copy), and termination messages go to /dev/shm.

Skips: without a Docker engine or the images the container tests skip,
unless MODELSEAL_REQUIRE_IMAGES=1, where every such skip is a failure (CI
builds the images first).
"""

from __future__ import annotations

import io
import json
import os
import re
import secrets
import shutil
import stat
import subprocess
import tarfile
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterable

import pytest

from conftest import need  # noqa: F401  (re-exported: the container tests call harness.need)

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = Path(os.environ.get("MODELSEAL_EXAMPLES_DIR", REPO / "examples" / "kubernetes"))
TAG = os.environ.get("MODELSEAL_IMAGE_TAG", "latest")
STAGES = ["fetch-key", "fetch-model", "decrypt", "unpack"]
ALL = STAGES + ["run"]
LABEL = "org.modelseal.test"


def image(name: str, tag: str = TAG) -> str:
    return f"modelseal/{name}:{tag}"




@lru_cache(maxsize=None)
def engine_missing() -> str:
    if shutil.which("docker") is None:
        return "no docker client"
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        return "no Docker engine (images/engine.sh starts one)"
    return ""


def images_missing(*names: str) -> str:
    why = engine_missing()
    if why:
        return why
    refs = [n if ":" in n else image(n) for n in names]
    absent = [r for r in refs if subprocess.run(["docker", "image", "inspect", r], capture_output=True).returncode]
    return f"images not built (images/build.sh): {', '.join(absent)}" if absent else ""


#: What the example specs name, which a test replaces with its own: the key URI,
#: the sealed model's S3 object (also what the seal Job uploads) and the
#: placeholder --sha256 pin.
SPEC_KEY = "aws-kms://alias/models"
SPEC_OBJECT = "s3://models/resnet/1.seal"
PLACEHOLDER_PIN = "0" * 64


@pytest.fixture
def images_built() -> None:
    """Every stage image and the base are built; otherwise skip (fail under CI).

    A module uses it with `pytestmark = pytest.mark.usefixtures("images_built")`.
    """
    need(images_missing(*ALL, "base"))


def docker(*args: str, timeout: float = 120, check: bool = True, text: bool = True,
           ) -> subprocess.CompletedProcess:
    r = subprocess.run(["docker", *args], capture_output=True, text=text, timeout=timeout)
    if check and r.returncode != 0:
        err = r.stderr if text else r.stderr.decode(errors="replace")
        raise AssertionError(f"docker {' '.join(args[:3])} ... failed ({r.returncode}): {err.strip()[-2000:]}")
    return r


# ---- pod specs --------------------------------------------------------------

def load_example(name: str) -> dict:
    import yaml

    docs = [d for d in yaml.safe_load_all((EXAMPLES / name).read_text()) if d]
    assert len(docs) == 1, f"{name}: expected one document"
    return docs[0]


def pod_spec(doc: dict) -> dict:
    return doc["spec"]["template"]["spec"] if doc["kind"] in ("Job", "Deployment") else doc["spec"]


_QUANTITY = re.compile(r"^(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|k|M|G|T|m)?$")
_FACTORS = {None: 1, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9,
            "T": 10**12}


def quantity_bytes(q: str | int) -> int:
    m = _QUANTITY.match(str(q))
    assert m and m.group(2) != "m", f"not a byte quantity: {q!r}"
    return int(float(m.group(1)) * _FACTORS[m.group(2)])


def quantity_cpus(q: str | int) -> str:
    m = _QUANTITY.match(str(q))
    assert m, f"not a CPU quantity: {q!r}"
    return str(float(m.group(1)) / 1000) if m.group(2) == "m" else m.group(1)


def substitute(text: str, subst: dict[str, str]) -> str:
    for old, new in subst.items():
        text = text.replace(old, new)
    return text


@dataclass
class Result:
    name: str
    code: int
    stderr: str
    termination: dict | None

    def logs(self) -> list[dict]:
        return [json.loads(x) for x in self.stderr.splitlines() if x.startswith("{")]

    def error(self) -> str:
        failed = [r for r in self.logs() if r.get("event") == "failed"]
        return failed[-1].get("error", "") if failed else ""

    def __str__(self) -> str:
        return f"{self.name}: exit {self.code}\n{self.stderr[-3000:]}"


_SANDBOX = """
import os, signal, sys
uid, gid = int(sys.argv[1]), int(sys.argv[2])
for path in sys.argv[3:]:
    os.chmod(path, 0o770)
    os.chown(path, uid, gid)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
print("ready", flush=True)
signal.pause()
"""

_READER = """
import sys, tarfile
with tarfile.open(fileobj=sys.stdout.buffer, mode="w|") as t:
    t.add("/volume", arcname=".")
"""

_DIGESTS = """
import hashlib, json, os, sys
out = {}
for root, dirs, files in os.walk("/volume"):
    for name in dirs + files:
        path = os.path.join(root, name)
        rel = os.path.relpath(path, "/volume")
        if os.path.isdir(path) and not os.path.islink(path):
            out[rel] = None
            continue
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        out[rel] = h.hexdigest()
print(json.dumps(out))
"""


class Pod:
    """One pod spec on the Docker engine; use as a context manager (tears everything down)."""

    def __init__(self, doc: dict, work: Path, subst: dict[str, str] | None = None,
                 env: dict[str, str] | None = None, binds: dict[str, Path] | None = None,
                 images: dict[str, str] | None = None) -> None:
        self.doc, self.spec = doc, pod_spec(doc)
        self.work = work  # a tmpfs directory of the test (termination messages)
        self.subst = subst or {}
        self.env = env or {}
        self.binds = {k: str(v) for k, v in (binds or {}).items()}  # other volume kinds (a PVC): host paths
        self.images = dict(images or {})  # stage -> image reference (e.g. pulled from a test registry by digest)
        self.id = f"modelseal-ct-{secrets.token_hex(4)}"
        psc = self.spec.get("securityContext", {})
        assert psc.get("runAsNonRoot") is True and psc.get("runAsUser"), "the pod must run as non-root"
        self.uid, self.gid = int(psc["runAsUser"]), int(psc.get("runAsGroup", psc["runAsUser"]))
        self.fs_group = int(psc.get("fsGroup", self.gid))
        self.volumes: dict[str, str] = {}  # pod volume name -> docker volume
        self.memory: set[str] = set()
        self.containers: list[str] = []
        self.sandbox = f"{self.id}-sandbox"

    # -- lifecycle
    def __enter__(self) -> "Pod":
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        disk = []
        for v in self.spec.get("volumes", []):
            name, vol = v["name"], f"{self.id}-{v['name']}"
            empty = v.get("emptyDir")
            if empty is None:
                assert name in self.binds, f"volume {name}: not an emptyDir; give the test a bind for it"
                continue
            args = ["volume", "create", "--label", LABEL + "=1"]
            if empty.get("medium") == "Memory":
                size = quantity_bytes(empty.get("sizeLimit", "64Mi"))
                args += ["--driver", "local", "--opt", "type=tmpfs", "--opt", "device=tmpfs",
                         "--opt", f"o=size={size},uid={self.uid},gid={self.fs_group},mode=0770"]
                self.memory.add(name)
            else:
                disk.append(f"/v/{name}")
            docker(*args, vol)
            self.volumes[name] = vol
        mounts = [a for name, vol in self.volumes.items() for a in ("-v", f"{vol}:/v/{name}")]
        docker("run", "-d", "--name", self.sandbox, "--label", LABEL + "=1", "--user", "0:0", "--read-only",
               "--cap-drop", "ALL", "--cap-add", "CHOWN", "--security-opt", "no-new-privileges",
               "--network", "none", *mounts, "--entrypoint", "python3", image("base"),
               "-c", _SANDBOX, str(self.uid), str(self.fs_group), *disk)
        deadline = time.monotonic() + 30
        while "ready" not in docker("logs", self.sandbox).stdout:
            state = docker("inspect", "-f", "{{.State.Status}}", self.sandbox).stdout.strip()
            assert state == "running" and time.monotonic() < deadline, \
                f"pod sandbox: {state}: {docker('logs', self.sandbox, check=False).stderr}"
            time.sleep(0.1)

    def close(self) -> None:
        for c in self.containers + [self.sandbox]:
            docker("rm", "-f", "-v", c, check=False)
        for vol in self.volumes.values():
            docker("volume", "rm", "-f", vol, check=False)

    # -- containers
    def container(self, name: str) -> dict:
        for c in self.spec.get("initContainers", []) + self.spec["containers"]:
            if c["name"] == name:
                return c
        raise KeyError(name)

    def init_names(self) -> list[str]:
        return [c["name"] for c in self.spec.get("initContainers", [])]

    def docker_args(self, name: str, env: dict[str, str] | None = None) -> tuple[list[str], Path]:
        """`docker run` arguments that reproduce container `name` of the spec."""
        c = self.container(name)
        sc = c.get("securityContext", {})
        cname = f"{self.id}-{name}"
        attempt = 1
        while cname in self.containers:  # the same init container run again (a retry)
            attempt += 1
            cname = f"{self.id}-{name}-{attempt}"
        term = self.work / f"termination-{name}"
        term.write_bytes(b"")
        term.chmod(0o666)
        args = ["run", "--name", cname, "--label", LABEL + "=1", "--network", "host",
                "--user", f"{sc.get('runAsUser', self.uid)}:{sc.get('runAsGroup', self.gid)}",
                "-v", f"{term}:{c.get('terminationMessagePath', '/dev/termination-log')}"]
        if sc.get("readOnlyRootFilesystem"):
            args.append("--read-only")
        for cap in sc.get("capabilities", {}).get("drop", []):
            args += ["--cap-drop", cap]
        assert not sc.get("capabilities", {}).get("add"), f"{name}: adds capabilities"
        if sc.get("allowPrivilegeEscalation") is False:
            args += ["--security-opt", "no-new-privileges"]
        limits = c.get("resources", {}).get("limits", {})
        if "memory" in limits:
            args += ["--memory", str(quantity_bytes(limits["memory"]))]
        if "cpu" in limits:
            args += ["--cpus", quantity_cpus(limits["cpu"])]
        for m in c.get("volumeMounts", []):
            source = self.binds.get(m["name"]) or self.volumes[m["name"]]
            args += ["-v", f"{source}:{m['mountPath']}" + (":ro" if m.get("readOnly") else "")]
        merged = {e["name"]: substitute(str(e["value"]), self.subst) for e in c.get("env", [])}
        merged.update(self.env)
        merged.update(env or {})
        for k, v in merged.items():
            args += ["-e", f"{k}={v}"]
        command = list(c.get("command", []))
        if command:
            args += ["--entrypoint", command[0]]
        stage = c["image"].split("@")[0].rsplit(":", 1)[0].rsplit("/", 1)[-1]
        ref = c["image"] if "MODELSEAL_IMAGE_TAG" not in os.environ else c["image"].rsplit(":", 1)[0] + f":{TAG}"
        ref = self.images.get(stage, ref)
        args.append(ref)
        args += command[1:] + [substitute(str(a), self.subst) for a in c.get("args", [])]
        return args, term

    def run(self, name: str, env: dict[str, str] | None = None, timeout: float = 180) -> Result:
        args, term = self.docker_args(name, env)
        self.containers.append(args[args.index("--name") + 1])
        r = docker(*args, timeout=timeout, check=False)
        text = term.read_text().strip()
        return Result(name, r.returncode, r.stderr, json.loads(text) if text else None)

    def start_container(self, name: str, env: dict[str, str] | None = None) -> str:
        """Start container `name` in the background (for a kill); returns its Docker name."""
        args, _ = self.docker_args(name, env)
        cname = args[args.index("--name") + 1]
        self.containers.append(cname)
        docker(args[0], "-d", *args[1:])
        return cname

    def volume_bytes(self, name: str) -> int:
        """Bytes in use on a memory volume right now (seen from the sandbox, which holds it)."""
        r = docker("exec", self.sandbox, "python3", "-c",
                   f"import os; s = os.statvfs('/v/{name}'); print((s.f_blocks - s.f_bfree) * s.f_frsize)")
        return int(r.stdout.strip())

    def digests(self, name: str) -> dict[str, str | None]:
        """Every entry of a volume: relative path -> SHA-256 of the file (None for a directory).

        For models of real size: the bytes stay in the volume, read by a hardened container."""
        r = docker("run", "--rm", "--log-driver", "none", "--network", "none", "--read-only",
                   "--cap-drop", "ALL", "--security-opt", "no-new-privileges", "--user", f"{self.uid}:{self.gid}",
                   "-v", f"{self.volumes[name]}:/volume:ro", "--entrypoint", "python3", image("base"),
                   "-c", _DIGESTS, timeout=600)
        return json.loads(r.stdout)

    def run_init(self, names: Iterable[str] | None = None) -> list[Result]:
        """The init containers in order, stopping at the first failure (as the kubelet does)."""
        results = []
        for n in (self.init_names() if names is None else names):
            results.append(self.run(n))
            if results[-1].code != 0:
                break
        return results

    def read_volume(self, name: str) -> dict[str, bytes | None]:
        """Every entry of a volume: relative path -> file bytes (None for a directory).

        Read by a hardened container (non-root, read-only, no network, volume
        mounted read-only) writing a tar to a pipe: no copy lands on disk."""
        r = docker("run", "--rm", "--log-driver", "none", "--network", "none", "--read-only",
                   "--cap-drop", "ALL", "--security-opt", "no-new-privileges", "--user", f"{self.uid}:{self.gid}",
                   "-v", f"{self.volumes[name]}:/volume:ro", "--entrypoint", "python3", image("base"),
                   "-c", _READER, text=False)
        out: dict[str, bytes | None] = {}
        with tarfile.open(fileobj=io.BytesIO(r.stdout), mode="r|") as t:
            for m in t:
                path = os.path.normpath(m.name)
                if path == ".":
                    continue
                f = t.extractfile(m) if m.isreg() else None
                out[path] = f.read() if f else None
        return out


def digests_of(root: Path) -> dict[str, str | None]:
    """A host directory in the form Pod.digests returns."""
    import hashlib

    out: dict[str, str | None] = {}
    for p in sorted(root.rglob("*")):
        if p.is_dir():
            out[str(p.relative_to(root))] = None
            continue
        h = hashlib.sha256()
        with open(p, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        out[str(p.relative_to(root))] = h.hexdigest()
    return out


def tree_of(root: Path) -> dict[str, bytes | None]:
    """A host directory in the form Pod.read_volume returns."""
    out: dict[str, bytes | None] = {}
    for p in sorted(root.rglob("*")):
        out[str(p.relative_to(root))] = p.read_bytes() if p.is_file() else None
    return out


def subtree(tree: dict[str, bytes | None], prefix: str) -> dict[str, bytes | None]:
    pre = prefix.rstrip("/") + "/"
    return {k[len(pre):]: v for k, v in tree.items() if k.startswith(pre)}


# ---- plaintext on disk -------------------------------------------------------

_NOT_DISK = {"tmpfs", "ramfs", "overlay", "proc", "sysfs", "devtmpfs", "devpts", "mqueue", "nsfs", "cgroup",
             "cgroup2", "securityfs", "debugfs", "tracefs", "fusectl", "configfs", "pstore", "bpf", "autofs",
             "hugetlbfs", "binfmt_misc", "efivarfs"}


def _unescape(path: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), path)


def skipped_mounts() -> set[str]:
    """Mount points that are not disk: memory filesystems (where plaintext may be),
    kernel filesystems, and overlay views (their layers are scanned where they live)."""
    out = set()
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            fstype = fields[fields.index("-") + 1]
            if fstype in _NOT_DISK:
                out.add(_unescape(fields[4]))
    return out


def on_disk(path: str) -> bool:
    """False for memory, kernel and overlay filesystems (statfs), where a search proves nothing."""
    from modelseal.placement import tmpfs

    return tmpfs.fs_type(path) not in (tmpfs.TMPFS_MAGIC, tmpfs.RAMFS_MAGIC, 0x794C7630, 0x9FA0, 0x62656572)


def docker_root() -> str:
    return docker("info", "-f", "{{.DockerRootDir}}").stdout.strip() or "/var/lib/docker"


def find_on_disk(needles: list[bytes], roots: Iterable[str]) -> list[tuple[str, int]]:
    """(path, needle index) for every regular file under `roots`, on a disk
    filesystem, holding one of `needles`. Symlinks are not followed; memory,
    kernel and overlay mounts are skipped; /proc, /sys and /dev never entered."""
    skip = skipped_mounts() | {"/proc", "/sys", "/dev"}
    overlap = max(map(len, needles)) - 1
    hits: list[tuple[str, int]] = []
    for root in roots:
        if not os.path.isdir(root) or root in skip:
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if os.path.join(dirpath, d) not in skip]
            for fn in filenames:
                path = os.path.join(dirpath, fn)
                try:
                    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
                except OSError:
                    continue  # vanished, a symlink, a socket
                try:
                    if not stat.S_ISREG(os.fstat(fd).st_mode):
                        continue
                    tail = b""
                    while chunk := os.read(fd, 8 << 20):
                        buf = tail + chunk
                        for i, needle in enumerate(needles):
                            if needle in buf and (path, i) not in hits:
                                hits.append((path, i))
                        tail = buf[-overlap:] if overlap else b""
                except OSError:
                    pass
                finally:
                    os.close(fd)
    return hits
