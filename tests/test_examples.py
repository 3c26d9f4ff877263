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
        if not doc or doc.get("kind") not in ("Pod", "Job"):
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
        if not doc or doc.get("kind") not in ("Pod", "Job"):
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
