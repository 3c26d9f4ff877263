"""The Kubernetes examples: valid, restricted, and true to the command line."""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from modelseal.cli import build_parser

EXAMPLES = sorted((Path(__file__).parents[1] / "examples" / "kubernetes").glob("*.yaml"))
MODELSEAL_IMAGE = "modelseal/"


#: Kinds whose pod spec the pod checks below read; an InferenceService's predictor is a PodSpec (custom predictor).
POD_KINDS = ("Pod", "Job", "Deployment", "InferenceService")


def pod_specs(doc: dict) -> dict:
    if doc["kind"] == "InferenceService":
        return doc["spec"]["predictor"]
    return doc["spec"]["template"]["spec"] if doc["kind"] in ("Job", "Deployment") else doc["spec"]


def as_validatable(doc: dict) -> dict:
    """`doc`, or for an InferenceService (no schema in kubernetes-validate) its predictor as the Pod it becomes."""
    if doc["kind"] != "InferenceService":
        return doc
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": doc["metadata"]["name"]},
            "spec": copy.deepcopy(doc["spec"]["predictor"])}


def test_there_are_examples():
    names = {p.name for p in EXAMPLES}
    assert {"four-stage.yaml", "single-stage.yaml", "confidential-kbs.yaml", "seal-job.yaml", "vllm.yaml",
            "kserve.yaml"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_kubernetes_validate_strict(path, tmp_path):
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    checked = tmp_path / path.name
    checked.write_text(yaml.safe_dump_all([as_validatable(d) for d in docs], sort_keys=False))
    exe = shutil.which("kubernetes-validate", path=str(Path(sys.executable).parent)) or "kubernetes-validate"
    r = subprocess.run([exe, "--strict", str(checked)], capture_output=True, text=True)
    assert r.returncode == 0 and "Couldn't find schema" not in r.stdout + r.stderr, r.stdout + r.stderr


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_restricted_pod_security_and_memory_volumes(path):
    for doc in yaml.safe_load_all(path.read_text()):
        if not doc or doc.get("kind") not in POD_KINDS:
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
        if not doc or doc.get("kind") not in POD_KINDS:
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
        if not doc or doc.get("kind") not in POD_KINDS:
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


# ---- what a user replaces (issue 20) ------------------------------------------------------------------

REPLACE = "# Replace before applying (each value occurs below; tests/test_examples.py checks this list):\n"


def _replace_block(text: str) -> list[str]:
    """The values the block at the top of an example lists."""
    assert text.startswith(REPLACE), "the example does not start with its block of values to replace"
    block = text[len(REPLACE):].split("\n#\n", 1)[0]
    return [line[4:] for line in block.splitlines() if line.startswith("#   ") and not line.startswith("#    ")]


def _uncommented(text: str) -> str:
    return "\n".join(line.split(" #", 1)[0] for line in text.splitlines() if not line.lstrip().startswith("#"))


def _must_replace(doc: dict) -> set[str]:
    """What a user of another cluster has to change: images, service accounts and their identity annotations,
    sources, key URIs, regions, Secrets and ConfigMaps referred to."""
    found: set[str] = set()
    if doc["kind"] == "ServiceAccount":
        found |= {v for k, v in (doc["metadata"].get("annotations") or {}).items()
                  if k.endswith(("/client-id", "/gcp-service-account", "/role-arn"))}
        return found
    spec = pod_specs(doc)
    if spec.get("serviceAccountName"):
        found.add(spec["serviceAccountName"])
    annotations = (doc["spec"]["template"]["metadata"].get("annotations") or {}) if doc["kind"] == "Deployment" else {}
    found |= {v for k, v in annotations.items() if k in ("modelseal.dev/source", "modelseal.dev/key-uri")}
    for c in spec.get("initContainers", []) + spec["containers"]:
        found.add(c["image"])
        for e in c.get("env", []):
            if e["name"] in ("MODELSEAL_SOURCE", "MODELSEAL_KEY_URI", "AWS_REGION", "MODELSEAL_SHA256") and \
                    "value" in e and not e["value"].startswith(("env:", "file:")):
                found.add(e["value"])
            ref = (e.get("valueFrom") or {}).get("secretKeyRef")
            if ref:
                found.add(ref["name"])
        args = c.get("args", [])
        for flag in ("--source", "--key-uri", "--sha256"):
            if flag in args and not args[args.index(flag) + 1].startswith(("file:", "/", "env:")):
                found.add(args[args.index(flag) + 1])
    for v in spec.get("volumes", []):
        if "configMap" in v:
            found.add(v["configMap"]["name"])
        if "secret" in v:
            found.add(v["secret"]["secretName"])
        if "image" in v:
            found.add(v["image"]["reference"])
    return found


#: made by `modelseal inject` from deployment-annotated.yaml, which carries the block (tests/test_inject.py)
GENERATED = ("deployment-injected.yaml",)


@pytest.mark.parametrize("path", [p for p in EXAMPLES if p.name not in GENERATED], ids=lambda p: p.name)
def test_each_example_says_at_its_top_what_to_replace(path):
    text = path.read_text()
    listed = _replace_block(text)
    body = _uncommented(text)
    for value in listed:  # the block stays true to the file
        assert value in body, (path.name, value)
    needed = set().union(*(_must_replace(d) for d in yaml.safe_load_all(text) if d))
    assert needed <= set(listed), (path.name, sorted(needed - set(listed)))
    if "serviceAccountName" in body:  # the identity it needs: IRSA, Workload Identity (GKE, AKS)
        assert any(a in text for a in ("eks.amazonaws.com/role-arn", "iam.gke.io/gcp-service-account",
                                       "azure.workload.identity/client-id")), path.name


def test_the_secret_key_example_runs_with_a_key_from_its_secret(shm):
    """secret-key.yaml's init container, played by the real CLI: its env with the Secret's value as
    `kubectl create secret generic ... --from-literal=key="$(base64 -w0 model.key)"` stores it."""
    import base64
    import hashlib
    import os

    from conftest import modelseal

    path = EXAMPLES[0].parent / "secret-key.yaml"
    pod = next(d for d in yaml.safe_load_all(path.read_text()) if d and d["kind"] == "Pod")
    [init] = pod["spec"]["initContainers"]
    (shm / "model").mkdir()
    (shm / "model" / "w.bin").write_bytes(os.urandom(300_000))
    assert modelseal("keygen", "-o", str(shm / "model.key")).code == 0
    assert modelseal("seal", str(shm / "model"), "-o", str(shm / "m.seal"), "--key", str(shm / "model.key")).code == 0
    secret = {"model-key": {"key": base64.b64encode((shm / "model.key").read_bytes()).decode()}}
    env = {}
    for e in init["env"]:
        if "valueFrom" in e:
            ref = e["valueFrom"]["secretKeyRef"]
            env[e["name"]] = secret[ref["name"]][ref["key"]]
        else:
            env[e["name"]] = e["value"]
    assert env["MODELSEAL_KEY_URI"] == "env:MODEL_KEY" and "MODEL_KEY" in env
    env["MODELSEAL_SOURCE"] = str(shm / "m.seal")  # the cluster's https:// server, here the file it serves
    env["MODELSEAL_SHA256"] = "sha256:" + hashlib.sha256((shm / "m.seal").read_bytes()).hexdigest()
    env["MODELSEAL_OUTPUT"] = str(shm / env["MODELSEAL_OUTPUT"].lstrip("/"))
    r = modelseal("run", env=env)
    assert r.code == 0, r.stderr
    out = Path(env["MODELSEAL_OUTPUT"]) / "w.bin"
    assert out.read_bytes() == (shm / "model" / "w.bin").read_bytes()
    assert env["MODEL_KEY"] not in r.stderr
