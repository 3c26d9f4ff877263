"""`modelseal inject` and the one injection function behind it (issue 23).

The numbers come from the sealed header by `inspect --resources`' rule (the
same printed values); the header is read by a ranged read of the source or
from --seal; injecting twice changes nothing; a workload that contradicts
what the model needs is refused with one line, exit 2, and nothing printed;
every injected kind validates with kubernetes-validate --strict.
"""

from __future__ import annotations

import copy
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import modelseal, one_line
from modelseal.cli import build_parser
from modelseal.errors import UsageError
from modelseal.inject import Images, Params, inject, model_shapes
from modelseal.inject.params import check
from modelseal.connection import Connection
from modelseal.stages import PREFIX_READ
from support.injection import ANNOTATIONS, KINDS, keyed_seal, pod_spec, serving, spec_of, validate_strict, workload
from support.models import make_model
from support.objects import ObjectServer
from support.processes import make_shm_dir

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples" / "kubernetes"
MIB = 1 << 20


@pytest.fixture(scope="module")
def sealed():
    """A model of about 6 MiB in 60 files, sealed with zstd (sizes in the header), and its key."""
    d = Path(make_shm_dir("modelseal-inject-"))
    try:
        model = make_model(d / "resnet", tree_bytes=6 * MIB, shards=2, small=58)
        seal, key = keyed_seal(d, model, "--compress", "zstd")
        yield seal
    finally:
        shutil.rmtree(d, ignore_errors=True)


def reader(seal: Path):
    def read(checked):
        return model_shapes(checked, Connection(), str(seal))
    return read


def run_inject(*args: str, stdin: bytes | None = None):
    return modelseal("inject", *args, stdin=stdin)


def docs(out: bytes) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(out) if d]


def init(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in spec_of(obj).get("initContainers", [])}


def memory(c: dict[str, Any]) -> str:
    assert c["resources"]["requests"]["memory"] == c["resources"]["limits"]["memory"], c["name"]
    return c["resources"]["limits"]["memory"]


def size_limits(obj: dict[str, Any]) -> dict[str, str]:
    return {v["name"]: v["emptyDir"]["sizeLimit"] for v in spec_of(obj).get("volumes", []) if "emptyDir" in v}


# ---- the numbers: the header, by inspect --resources' rule --------------------------------------

def test_the_numbers_are_what_inspect_resources_prints(sealed: Path, shm: Path) -> None:
    r = modelseal("inspect", "--resources", str(sealed))
    assert r.code == 0, r.stderr
    advice = yaml.safe_load(r.stdout)
    src = shm / "workload.yaml"
    src.write_text(yaml.safe_dump(workload("Deployment")))
    single = docs(run_inject("-f", str(src), "--seal", str(sealed)).stdout)[0]
    four = docs(run_inject("-f", str(src), "--seal", str(sealed), "--shape", "four").stdout)[0]

    s = advice["single-stage"]
    assert memory(init(single)["modelseal"]) == s["initContainers"]["modelseal"]["resources"]["limits"]["memory"]
    assert size_limits(single) == {"modelseal-models": s["volumes"]["models"]["emptyDir"]["sizeLimit"]}
    f = advice["four-stage"]
    assert {n.removeprefix("modelseal-"): memory(c) for n, c in init(four).items()} == \
        {n: c["resources"]["limits"]["memory"] for n, c in f["initContainers"].items()}
    assert size_limits(four) == {f"modelseal-{n}": v["emptyDir"]["sizeLimit"] for n, v in f["volumes"].items()}
    # and they grow with the model: more than the working set alone (a 6 MiB tree, zstd)
    assert int(memory(init(single)["modelseal"]).removesuffix("Mi")) > 96 + 96


@pytest.mark.parametrize("source", ["s3://models/m.seal", "gs://models/m.seal", "azblob://acct/models/m.seal",
                                    "https://models.example/m.seal", "oci://registry.example/models/m:1",
                                    "file:///models/m.seal"])
def test_a_source_read_in_parallel_parts_gets_inspects_s3_number(sealed: Path, source: str) -> None:
    comment = modelseal("inspect", "--resources", str(sealed)).stdout.decode()
    s3, other = re.search(r"modelseal: .*memory: (\d+Mi)\}\}\}   # from azblob://, gs://, s3://; other sources: (\d+Mi)",
                          comment).groups()
    assert s3 != other
    obj = inject(workload("Pod"), reader(sealed), Params(source=source))
    parallel = source.split(":")[0] in ("s3", "gs", "azblob")  # their streams hold parts in flight (ranged.py)
    assert memory(init(obj)["modelseal"]) == (s3 if parallel else other)


def test_the_header_is_read_by_one_ranged_read_of_the_source(sealed: Path, shm: Path, pki) -> None:
    data = sealed.read_bytes()
    assert len(data) > 4 * PREFIX_READ
    src = shm / "workload.yaml"
    src.write_text(yaml.safe_dump(workload("Pod")))
    with ObjectServer({"/m.seal": data}, tls=pki.server_context()) as server:
        source = f"{server.url}/m.seal"
        local = run_inject("-f", str(src), "--source", source, "--seal", str(sealed))
        assert local.code == 0 and server.count() == 0, local.stderr  # --seal: the source is not read
        remote = run_inject("-f", str(src), "--source", source, "--ca", pki.ca)
        assert remote.code == 0, remote.stderr
        assert remote.stdout == local.stdout
        assert server.bytes_sent <= PREFIX_READ + 1 < len(data)  # ranged: never the model itself


def test_the_size_annotation_sizes_by_the_same_rule(sealed: Path, shm: Path) -> None:
    advice = yaml.safe_load(modelseal("inspect", "--resources", str(sealed)).stdout)
    models = advice["single-stage"]["volumes"]["models"]["emptyDir"]["sizeLimit"]
    src = shm / "workload.yaml"
    src.write_text(yaml.safe_dump(workload("Deployment", {**ANNOTATIONS, "modelseal.dev/size": models})))
    by_size = docs(run_inject("-f", str(src)).stdout)[0]  # no header read at all: s3:// is not reachable here
    by_header = docs(run_inject("-f", str(src), "--seal", str(sealed)).stdout)[0]
    assert spec_of(by_size) == spec_of(by_header)


def test_the_expanded_example_is_what_inject_makes_now() -> None:
    r = run_inject("-f", str(EXAMPLES / "deployment-annotated.yaml"))
    assert r.code == 0, r.stderr
    assert r.stdout.decode() == (EXAMPLES / "deployment-injected.yaml").read_text(), \
        "regenerate examples/kubernetes/deployment-injected.yaml with modelseal inject (README, Injecting)"


# ---- what is added ---------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", ["single", "four"])
def test_what_is_added_is_hardened_sized_and_parses(sealed: Path, shape: str) -> None:
    obj = inject(workload("Deployment", {**ANNOTATIONS, "modelseal.dev/shape": shape,
                                         "modelseal.dev/verify-key": "model-signing-key"}), reader(sealed))
    spec = spec_of(obj)
    names = [c["name"] for c in spec["initContainers"]]
    assert names == (["modelseal"] if shape == "single" else
                     ["modelseal-fetch-key", "modelseal-fetch-model", "modelseal-decrypt", "modelseal-unpack"])
    volumes = {v["name"]: v for v in spec["volumes"]}
    for c in spec["initContainers"]:
        assert c["securityContext"] == {**{"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                           "capabilities": {"drop": ["ALL"]}},
                                        "runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532,
                                        "seccompProfile": {"type": "RuntimeDefault"}}
        memory(c)
        stage = c["image"].rsplit("/", 1)[1].split(":")[0]
        assert c["image"] == f"modelseal/{stage}:0.1.0"
        args = build_parser().parse_args(([stage] if stage != "run" else ["run"]) + c["args"])
        assert args.command == stage
        for m in c["volumeMounts"]:
            v = volumes[m["name"]]
            assert v.get("configMap") or (v["emptyDir"].get("medium") == "Memory") == (m["name"] != "modelseal-ciphertext")
    last = spec["initContainers"][-1]
    assert "/modelseal/verify-key/signer.pub" in last["args"]
    assert volumes["modelseal-verify-key"]["configMap"]["name"] == "model-signing-key"
    mounts = spec["containers"][0]["volumeMounts"]
    assert mounts == [{"name": "modelseal-models", "mountPath": "/models/resnet/1", "subPath": "model",
                       "readOnly": True}]


def test_an_identity_is_passed_to_the_stage_as_its_identity_flag(sealed: Path) -> None:
    notes = {k: v for k, v in ANNOTATIONS.items() if k != "modelseal.dev/key-uri"}
    obj = inject(workload("Pod", {**notes, "modelseal.dev/identity": "file:///etc/age/identity.txt"}),
                 reader(sealed))
    args = init(obj)["modelseal"]["args"]
    assert args[args.index("--identity") + 1] == "file:///etc/age/identity.txt" and "--key-uri" not in args


def test_flags_win_over_annotations_and_images_are_configurable(sealed: Path) -> None:
    obj = inject(workload("Pod"), reader(sealed), Params(mount="/mnt/models", source="https://example.test/m.seal"),
                 Images("registry.example.com/ms", "9.9"))
    c = init(obj)["modelseal"]
    assert c["image"] == "registry.example.com/ms/run:9.9"
    assert c["args"][:2] == ["--source", "https://example.test/m.seal"]
    assert spec_of(obj)["containers"][0]["volumeMounts"][0]["mountPath"] == "/mnt/models"
    notes = obj["metadata"]["annotations"]  # written back: the webhook, seeing these pods, changes nothing
    assert notes["modelseal.dev/mount"] == "/mnt/models" and notes["modelseal.dev/source"] == c["args"][1]
    assert inject(obj, reader(sealed), images=Images("registry.example.com/ms", "9.9")) == obj
    deployment = inject(workload("Deployment"), reader(sealed), Params(shape="four"))
    assert deployment["spec"]["template"]["metadata"]["annotations"]["modelseal.dev/shape"] == "four"
    assert "annotations" not in deployment["metadata"]
    assert inject(deployment, reader(sealed)) == deployment
    plain = inject(workload("Pod", annotations={}), reader(sealed), Params(**{k.split("/")[1].replace("-", "_"): v
                                                                             for k, v in ANNOTATIONS.items()}))
    assert plain["metadata"]["annotations"] == {} and spec_of(plain)["initContainers"]  # flags alone: no annotations


def test_a_serving_container_without_a_memory_limit_gets_the_models_pages_as_its_request(sealed: Path) -> None:
    obj = inject(workload("Pod", spec=pod_spec(serving(memory=None))), reader(sealed))
    c = spec_of(obj)["containers"][0]
    assert "memory" not in c["resources"]["limits"]
    assert c["resources"]["requests"]["memory"] == size_limits(obj)["modelseal-models"]


# ---- idempotence --------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", ["single", "four"])
@pytest.mark.parametrize("kind", KINDS)
def test_injecting_twice_changes_nothing(sealed: Path, kind: str, shape: str) -> None:
    given = Params(shape=shape)
    original = workload(kind)
    frozen = copy.deepcopy(original)
    once = inject(original, reader(sealed), given)
    assert original == frozen  # never modified in place
    assert once != original and spec_of(once)["initContainers"]
    assert inject(once, reader(sealed), given) == once


def test_injecting_twice_through_the_command_line_prints_the_same_yaml(sealed: Path, shm: Path) -> None:
    src = shm / "w.yaml"
    src.write_text(yaml.safe_dump_all([workload("Deployment"), workload("Job")]))
    once = run_inject("-f", str(src), "--seal", str(sealed), "--shape", "four")
    assert once.code == 0, once.stderr
    twice = run_inject("-f", "-", "--seal", str(sealed), "--shape", "four", stdin=once.stdout)
    assert twice.code == 0 and twice.stdout == once.stdout


def test_another_shape_replaces_the_first_one(sealed: Path) -> None:
    four = inject(workload("Deployment"), reader(sealed), Params(shape="four"))
    single = Params(shape="single")
    assert inject(four, reader(sealed), single) == inject(workload("Deployment"), reader(sealed), single)


def test_what_the_user_had_is_kept_in_place(sealed: Path) -> None:
    spec = pod_spec(serving(), {"name": "sidecar", "image": "busybox", "securityContext": {}})
    spec["initContainers"] = [{"name": "setup", "image": "busybox"}]
    spec["volumes"] = [{"name": "cache", "emptyDir": {}}]
    spec["containers"][0]["volumeMounts"] = [{"name": "cache", "mountPath": "/cache"}]
    obj = inject(workload("Pod", spec=spec), reader(sealed))
    out = spec_of(obj)
    assert [c["name"] for c in out["initContainers"]] == ["setup", "modelseal"]
    assert [v["name"] for v in out["volumes"]] == ["cache", "modelseal-models"]
    assert [m["name"] for m in out["containers"][0]["volumeMounts"]] == ["cache", "modelseal-models"]
    assert out["containers"][1] == spec["containers"][1]


# ---- multi-document YAML, pass-through ------------------------------------------------------------

def test_other_documents_pass_through_in_order(sealed: Path, shm: Path) -> None:
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "resnet"},
               "spec": {"selector": {"app": "resnet"}, "ports": [{"port": 8501}]}}
    plain = workload("Deployment", annotations={})
    annotated = workload("Pod")
    src = shm / "all.yaml"
    src.write_text(yaml.safe_dump_all([service, plain, annotated]))
    r = run_inject("-f", str(src), "--seal", str(sealed))
    assert r.code == 0, r.stderr
    out = docs(r.stdout)
    assert out[:2] == [service, plain] and out[2]["kind"] == "Pod" and init(out[2])
    piped = run_inject("-f", "-", "--seal", str(sealed), stdin=src.read_bytes())
    assert piped.stdout == r.stdout


# ---- refusals ----------------------------------------------------------------------------------------

def _refusals() -> dict[str, tuple[dict[str, Any], str]]:
    low = workload("Deployment", spec=pod_spec(serving(memory="8Mi")))
    host = workload("Deployment")
    host["spec"]["template"]["spec"]["volumes"] = [{"name": "modelseal-models", "hostPath": {"path": "/models"}}]
    disk = workload("Deployment")
    disk["spec"]["template"]["spec"]["volumes"] = [{"name": "modelseal-models", "emptyDir": {}}]
    taken = workload("Pod")
    taken["spec"]["volumes"] = [{"name": "weights", "emptyDir": {}}]
    taken["spec"]["containers"][0]["volumeMounts"] = [{"name": "weights", "mountPath": "/models/resnet/1"}]
    reserved = workload("Pod", spec=pod_spec(serving(), serving("modelseal")))
    both = workload("Pod", {**ANNOTATIONS, "modelseal.dev/identity": "file:///id"})
    return {
        "memory limit below the model": (low, "below the model's"),
        "a hostPath volume of the reserved name": (host, "is not a memory emptyDir"),
        "a disk emptyDir of the reserved name": (disk, "is not a memory emptyDir"),
        "mount path taken": (taken, "already mounts volume 'weights' at /models/resnet/1"),
        "missing container": (workload("Pod", {**ANNOTATIONS, "modelseal.dev/container": "server"}),
                              "'server' is not a container of this pod"),
        "unknown annotation (a typo)": (workload("Pod", {**ANNOTATIONS, "modelseal.dev/keyuri": "x"}),
                                        "unknown annotation 'modelseal.dev/keyuri'"),
        "a key URI and an identity": (both, "give exactly one of"),
        "no mount": (workload("Pod", {k: v for k, v in ANNOTATIONS.items() if not k.endswith("mount")}),
                     "set modelseal.dev/mount"),
        "a mount that is not clean": (workload("Pod", {**ANNOTATIONS, "modelseal.dev/mount": "/models/../etc"}),
                                      "is not a clean absolute path"),
        "a reserved container name": (reserved, "reserved for modelseal's init containers"),
        "an unknown shape": (workload("Pod", {**ANNOTATIONS, "modelseal.dev/shape": "three"}), "give single or four"),
        "four stages from a size alone": (workload("Pod", {**ANNOTATIONS, "modelseal.dev/shape": "four",
                                                           "modelseal.dev/size": "1Gi"}),
                                          "cannot size the four-stage shape"),
        "user info in the source": (workload("Pod", {**ANNOTATIONS,
                                                     "modelseal.dev/source": "https://u:p@example.test/m"}),
                                    "user info"),
    }


REFUSALS = _refusals()


@pytest.mark.parametrize("case", REFUSALS)
def test_a_contradiction_is_refused_with_one_line_and_nothing_printed(sealed: Path, shm: Path, case: str) -> None:
    obj, message = REFUSALS[case]
    src = shm / "w.yaml"
    lead = workload("Deployment", {**ANNOTATIONS, "modelseal.dev/size": "1Gi"})  # alone, it would inject
    src.write_text(yaml.safe_dump_all([lead, obj]))
    seal = [] if "size" in case else ["--seal", str(sealed)]
    r = run_inject("-f", str(src), *seal)
    assert r.code == 2, (r.code, r.stderr)
    assert r.stdout == b""
    error = r.error()
    assert message in error and "\n" not in error, error
    assert "u:p@" not in r.stderr
    with pytest.raises(UsageError) as e:
        inject(obj, reader(sealed) if seal else lambda checked: model_shapes(checked, Connection()))
    assert message in one_line(e.value)


def test_bad_yaml_is_one_line_exit_2(shm: Path) -> None:
    src = shm / "bad.yaml"
    src.write_text("kind: Pod\nspec: [unclosed\n")
    r = run_inject("-f", str(src), "--seal", "/nonexistent")
    assert r.code == 2 and r.stdout == b"" and "not valid YAML at line" in r.error(), r.stderr


# ---- valid objects -------------------------------------------------------------------------------------

def test_every_injected_kind_validates_strict(sealed: Path, shm: Path) -> None:
    objects = []
    for kind in KINDS:
        for shape in ("single", "four"):
            objects.append(inject(workload(kind), reader(sealed), Params(shape=shape)))
        objects.append(inject(workload(kind, {**ANNOTATIONS, "modelseal.dev/verify-key": "keys/signer.pub"}),
                              reader(sealed)))
    validate_strict(objects, shm)


def test_check_names_the_only_container_when_none_is_given() -> None:
    p = Params(source="s3://b/m.seal", key_uri="aws-kms://alias/x", mount="/models")
    assert check(p, "Pod/x", containers=["server"]).container == "server"
    with pytest.raises(UsageError, match="set modelseal.dev/container"):
        check(p, "Pod/x", containers=["server", "proxy"])
