"""The Kubernetes examples: valid, restricted, and true to the command line."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from modelseal.cli import build_parser

EXAMPLES = sorted((Path(__file__).parents[1] / "examples" / "kubernetes").glob("*.yaml"))
MODELSEAL_IMAGE = "modelseal/"


def pod_specs(doc: dict) -> dict:
    return doc["spec"]["template"]["spec"] if doc["kind"] in ("Job", "Deployment") else doc["spec"]


def test_there_are_examples():
    names = {p.name for p in EXAMPLES}
    assert {"four-stage.yaml", "single-stage.yaml", "confidential-kbs.yaml", "seal-job.yaml"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_kubernetes_validate_strict(path):
    exe = shutil.which("kubernetes-validate", path=str(Path(sys.executable).parent)) or "kubernetes-validate"
    r = subprocess.run([exe, "--strict", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_restricted_pod_security_and_memory_volumes(path):
    for doc in yaml.safe_load_all(path.read_text()):
        if not doc or doc.get("kind") not in ("Pod", "Job", "Deployment"):
            continue
        spec = pod_specs(doc)
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        for c in spec.get("initContainers", []) + spec["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"], c["name"]
            assert sc["readOnlyRootFilesystem"] is True, c["name"]
            assert "limits" in c["resources"], c["name"]
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for name in ("models", "secrets"):
            if name in volumes:
                assert volumes[name]["emptyDir"]["medium"] == "Memory" and "sizeLimit" in volumes[name]["emptyDir"]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_modelseal_arguments_parse(path):
    """Every modelseal container's args are accepted by the real parser."""
    for doc in yaml.safe_load_all(path.read_text()):
        if not doc or doc.get("kind") not in ("Pod", "Job", "Deployment"):
            continue
        spec = pod_specs(doc)
        for c in spec.get("initContainers", []) + spec["containers"]:
            # modelseal/<stage>:<tag>, or <registry>/<prefix>/modelseal/<stage>:<tag>@sha256:... (pinned)
            name = c["image"].split("@")[0].rsplit(":", 1)[0]
            if not ("/" + name).rsplit("/", 2)[-2] + "/" == MODELSEAL_IMAGE:
                continue
            stage = name.rsplit("/", 1)[-1]
            argv = c.get("command", ["modelseal", stage])[1:] + c.get("args", [])
            if not c.get("command") and stage == "run":
                argv = ["run"] + c.get("args", [])
            env = {e["name"]: e["value"] for e in c.get("env", []) if "value" in e}
            # flags may come from MODELSEAL_* variables: supply them as the container would
            with pytest.MonkeyPatch.context() as mp:
                for k, v in env.items():
                    mp.setenv(k, v)
                args = build_parser().parse_args(argv)
            assert args.command == argv[0]


def _quantity(q: str | int) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9}
    text = str(q)
    for unit, factor in units.items():
        if text.endswith(unit):
            return int(float(text[: -len(unit)]) * factor)
    return int(text)


def _memory_limit(c: dict) -> int:
    return _quantity(c["resources"]["limits"]["memory"])


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_memory_limits_cover_what_each_container_writes_to_tmpfs(path):
    """tmpfs pages are charged to the writer's memory cgroup and stay in the pod until deleted.

    Each container's limit covers the sizeLimits of the memory volumes it may write (mounted
    writable), plus a minimal working set; the pod's effective limit (the largest init
    container's limit, or the app containers' sum) covers every memory volume at once; the app
    containers cover the memory volumes they serve from. tests/containers/test_sizing.py plays
    four-stage and single-stage with a model as large as their sizeLimit."""
    for doc in yaml.safe_load_all(path.read_text()):
        if not doc or doc.get("kind") not in ("Pod", "Job", "Deployment"):
            continue
        spec = pod_specs(doc)
        memory = {v["name"]: _quantity(v["emptyDir"]["sizeLimit"]) for v in spec.get("volumes", [])
                  if (v.get("emptyDir") or {}).get("medium") == "Memory"}
        inits, apps = spec.get("initContainers", []), spec["containers"]
        for c in inits + apps:
            writes = sum(memory.get(m["name"], 0) for m in c.get("volumeMounts", []) if not m.get("readOnly"))
            floor = 32 * 2**20 if c["image"].startswith(MODELSEAL_IMAGE) else 0
            assert _memory_limit(c) >= writes + floor, (path.name, c["name"], _memory_limit(c) >> 20, writes >> 20)
            if writes:  # a writer's request is its limit: the pages are real, not a burst
                assert _quantity(c["resources"].get("requests", {}).get("memory", 0)) in (0, _memory_limit(c)), \
                    (path.name, c["name"])
        pod = max(max((_memory_limit(c) for c in inits), default=0), sum(_memory_limit(c) for c in apps))
        assert pod >= sum(memory.values()), path.name
        served = {m["name"] for c in apps for m in c.get("volumeMounts", [])}
        assert sum(_memory_limit(c) for c in apps) >= sum(v for k, v in memory.items() if k in served), path.name
