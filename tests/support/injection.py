"""Workloads to inject into, and what every injected pod must be: shared by test_inject and test_webhook."""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from conftest import modelseal
from modelseal.inject import workloads

ANNOTATIONS = {
    "modelseal.dev/source": "s3://models/resnet/1.seal",
    "modelseal.dev/key-uri": "aws-kms://alias/models",
    "modelseal.dev/container": "serving",
    "modelseal.dev/mount": "/models/resnet/1",
}
HARDENED = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}}
POD_SECURITY = {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532, "fsGroup": 65532,
                "seccompProfile": {"type": "RuntimeDefault"}}


def serving(name: str = "serving", memory: str | None = "3Gi") -> dict[str, Any]:
    c: dict[str, Any] = {"name": name, "image": "tensorflow/serving:2.16.1", "securityContext": dict(HARDENED),
                         "resources": {"requests": {"cpu": "1"}, "limits": {"cpu": "2"}}}
    if memory:
        c["resources"]["requests"]["memory"] = c["resources"]["limits"]["memory"] = memory
    return c


def pod_spec(*containers: dict[str, Any]) -> dict[str, Any]:
    return {"securityContext": dict(POD_SECURITY), "containers": list(containers) or [serving()]}


def workload(kind: str, annotations: dict[str, str] | None = None, spec: dict[str, Any] | None = None
             ) -> dict[str, Any]:
    """A `kind` whose pod is `spec` (default: one serving container), annotated where users annotate it."""
    spec = copy.deepcopy(spec or pod_spec())
    notes = dict(ANNOTATIONS if annotations is None else annotations)
    meta = {"name": f"resnet-{kind.lower()}", "labels": {"app": "resnet"}}
    template = {"metadata": {"labels": {"app": "resnet"}, "annotations": notes}, "spec": spec}
    if kind == "Pod":
        return {"apiVersion": "v1", "kind": "Pod", "metadata": {**meta, "annotations": notes}, "spec": spec}
    if kind == "InferenceService":
        spec["containers"][0]["name"] = "kserve-container"
        if notes.get("modelseal.dev/container") == "serving":
            notes["modelseal.dev/container"] = "kserve-container"
        return {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
                "metadata": {**meta, "annotations": notes}, "spec": {"predictor": spec}}
    selector = {"selector": {"matchLabels": {"app": "resnet"}}}
    if kind in ("Deployment", "StatefulSet", "DaemonSet"):
        extra = {"serviceName": "resnet"} if kind == "StatefulSet" else {}
        return {"apiVersion": "apps/v1", "kind": kind, "metadata": meta,
                "spec": {**selector, **extra, "template": template}}
    template["spec"]["restartPolicy"] = "Never"
    if kind == "Job":
        return {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "spec": {"template": template}}
    assert kind == "CronJob"
    return {"apiVersion": "batch/v1", "kind": "CronJob", "metadata": meta,
            "spec": {"schedule": "@daily", "jobTemplate": {"spec": {"template": template}}}}


KINDS = ("Pod", "Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "InferenceService")


def spec_of(obj: dict[str, Any]) -> dict[str, Any]:
    found = workloads.find(copy.deepcopy(obj))
    assert found is not None
    return found.spec


def as_pods(obj: dict[str, Any]) -> list[dict[str, Any]]:
    """`obj`, and for an InferenceService (no schema in kubernetes-validate) its predictor as a Pod."""
    if obj["kind"] != "InferenceService":
        return [obj]
    spec = copy.deepcopy(obj["spec"]["predictor"])
    return [{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": obj["metadata"]["name"]}, "spec": spec}]


def validate_strict(objects: list[dict[str, Any]], directory: Path) -> str:
    """kubernetes-validate --strict on every object (one run); returns its output. Unknown kinds fail it."""
    path = directory / "objects.yaml"
    path.write_text(yaml.safe_dump_all([p for o in objects for p in as_pods(o)], sort_keys=False))
    exe = shutil.which("kubernetes-validate", path=str(Path(sys.executable).parent)) or "kubernetes-validate"
    r = subprocess.run([exe, "--strict", str(path)], capture_output=True, text=True)
    out = r.stdout + r.stderr
    assert r.returncode == 0 and "Couldn't find schema" not in out, out
    return out


def keyed_seal(directory: Path, model: Path, *extra: str) -> tuple[Path, Path]:
    """(.seal, key file) for `model`, sealed by the real CLI with a key file."""
    key, seal = directory / "model.key", directory / "model.seal"
    assert modelseal("keygen", "-o", str(key)).code == 0
    r = modelseal("seal", str(model), "-o", str(seal), "--key", str(key), "--name", "resnet", *extra)
    assert r.code == 0, r.stderr
    return seal, key
