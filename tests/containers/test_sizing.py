"""The example pod specs at real size: a model as large as the spec's own sizeLimit, the spec's own limits.

examples/kubernetes/four-stage.yaml and single-stage.yaml are played with
their own args, env, volumes (a Docker tmpfs volume of the spec's sizeLimit
for each memory emptyDir) and memory limits (`docker run --memory`, no swap
on these machines), with a generated model of about 1 GiB: 4 weight shards
and 1000 small files filling the models volume to within 16 MiB of its
sizeLimit, sealed with zstd and a KMS-wrapped key as seal-job.yaml does. Since
tmpfs pages are charged to the container that writes them, this is what
proves the limits: at the old limits (128Mi for decrypt, 384Mi for run) the
same model is OOM-killed.

Also: a memory limit too small (exit 6 naming memory, nothing on the
volume), a tmpfs too small (exit 6 before anything is written), and a stage
killed mid-way then run again, as the kubelet retries an init container
(byte-exact). S3 is s3rver (fast enough for 1 GiB); KMS is moto. The
termination messages' peaks (cgroup_peak_mib: tmpfs pages included) are
printed, for the examples' comments.
"""

from __future__ import annotations

import copy
import hashlib
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

import harness
from support import s3rver as s3rver_support
from conftest import SHM, modelseal
from harness import (  # noqa: F401 - images_built is a fixture
    PLACEHOLDER_PIN, SPEC_KEY, SPEC_OBJECT, Pod, digests_of, images_built, load_example, need, pod_spec, quantity_bytes)
from support.models import make_model

pytestmark = pytest.mark.usefixtures("images_built")

MIB = 1 << 20


def size_limit(doc: dict, volume: str) -> int:
    v = next(v for v in pod_spec(doc)["volumes"] if v["name"] == volume)
    return quantity_bytes(v["emptyDir"]["sizeLimit"])


@dataclass
class Sealed:
    bucket: str
    alias: str
    env: dict[str, str]  # what the IRSA webhook would inject, pointed at the test's stores
    pin: str
    digests: dict[str, str | None]
    tree_bytes: int

    def subst(self) -> dict[str, str]:
        return {SPEC_OBJECT: f"s3://{self.bucket}/resnet/1.seal", SPEC_KEY: f"aws-kms://{self.alias}",
                PLACEHOLDER_PIN: self.pin}


@pytest.fixture(scope="module")
def sealed() -> Sealed:
    need(s3rver_support.missing())
    try:
        import boto3

        from support import moto as moto_support
    except ImportError as exc:
        need(f"boto3 and moto[server] are needed on the host ({exc}); make setup installs them")
    s3rver, moto = s3rver_support.s3rver_server(), moto_support.moto_server()
    region = "eu-west-1"
    env = {"AWS_ENDPOINT_URL_S3": s3rver.url, "AWS_ENDPOINT_URL_KMS": moto.url,
           "AWS_ACCESS_KEY_ID": s3rver_support.ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": s3rver_support.SECRET_KEY,
           "AWS_REGION": region, "AWS_DEFAULT_REGION": region, "AWS_EC2_METADATA_DISABLED": "true"}
    kw = dict(region_name=region, aws_access_key_id=s3rver_support.ACCESS_KEY, aws_secret_access_key=s3rver_support.SECRET_KEY)
    bucket, alias = f"models-{secrets.token_hex(4)}", f"alias/models-{secrets.token_hex(4)}"
    boto3.client("s3", endpoint_url=s3rver.url, **kw).create_bucket(Bucket=bucket)
    kms = boto3.client("kms", endpoint_url=moto.url, **kw)
    kms.create_alias(AliasName=alias, TargetKeyId=kms.create_key()["KeyMetadata"]["KeyId"])

    limits = {size_limit(load_example(n), "models") for n in ("four-stage.yaml", "single-stage.yaml")}
    assert len(limits) == 1, "the two specs are sized for one model size"
    tree_bytes = limits.pop() - 16 * MIB
    base = SHM / f"modelseal-sizing-{secrets.token_hex(4)}"
    base.mkdir()
    try:
        model = make_model(base / "resnet", tree_bytes=tree_bytes)
        r = modelseal("seal", str(model), "-o", f"s3://{bucket}/resnet/1.seal", "--key-uri", f"aws-kms://{alias}",
                      "--name", "resnet", "--model-version", "1", "--compress", "zstd",
                      env={**env, "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null"},
                      timeout=600)
        assert r.code == 0, r.stderr
        obj = boto3.client("s3", endpoint_url=s3rver.url, **kw).get_object(Bucket=bucket, Key="resnet/1.seal")
        h = hashlib.sha256()
        for chunk in obj["Body"].iter_chunks(8 * MIB):
            h.update(chunk)
        yield Sealed(bucket, alias, env, h.hexdigest(), digests_of(model), tree_bytes)
    finally:
        import shutil

        shutil.rmtree(base, ignore_errors=True)


def peaks(results: list[harness.Result]) -> str:
    return ", ".join(f"{r.name} {r.termination.get('cgroup_peak_mib')} MiB (rss {r.termination.get('peak_rss_mib')})"
                     for r in results if r.termination)


def delivered(pod: Pod, volume: str, rel: str) -> dict[str, str | None]:
    pre = rel.rstrip("/") + "/"
    return {k[len(pre):]: v for k, v in pod.digests(volume).items() if k.startswith(pre)}


# ---- the specs as shipped, at their size --------------------------------------------

def test_four_stage_holds_a_model_as_large_as_its_size_limit(sealed: Sealed, shm: Path) -> None:
    with Pod(load_example("four-stage.yaml"), shm, subst=sealed.subst(), env=sealed.env) as pod:
        results = pod.run_init()
        print(f"\nfour-stage, {sealed.tree_bytes / MIB:.0f} MiB model: {peaks(results)}")
        assert [r.code for r in results] == [0, 0, 0, 0], "\n".join(map(str, results))
        assert delivered(pod, "models", "resnet/1") == sealed.digests
        assert pod.digests("plaintext") == {} and pod.digests("ciphertext") == {} and pod.digests("secrets") == {}
        decrypt, unpack = results[2].termination, results[3].termination
        assert decrypt["cgroup_peak_mib"] * MIB >= sealed.tree_bytes  # its tmpfs pages were charged to it
        assert unpack["cgroup_peak_mib"] * MIB >= sealed.tree_bytes


def test_single_stage_holds_a_model_as_large_as_its_size_limit(sealed: Sealed, shm: Path) -> None:
    with Pod(load_example("single-stage.yaml"), shm, subst=sealed.subst(), env=sealed.env) as pod:
        results = pod.run_init()
        print(f"\nsingle-stage, {sealed.tree_bytes / MIB:.0f} MiB model: {peaks(results)}")
        assert [r.code for r in results] == [0], "\n".join(map(str, results))
        assert delivered(pod, "models", "resnet/1") == sealed.digests
        assert set(pod.digests("models")) - {"resnet"} == {f"resnet/1/{k}" for k in sealed.digests} | \
            {"resnet/1", "resnet/.1.delivered"}
        assert results[0].termination["cgroup_peak_mib"] * MIB >= sealed.tree_bytes


# ---- too small ------------------------------------------------------------------------

CASES = {  # spec, the stage that writes plaintext, the memory volume it writes, init containers before it
    "four-stage": ("four-stage.yaml", "decrypt", "plaintext", ["fetch-key", "fetch-model"]),
    "single-stage": ("single-stage.yaml", "modelseal", "models", []),
}


def _container(doc: dict, name: str) -> dict:
    spec = pod_spec(doc)
    return next(c for c in spec.get("initContainers", []) + spec["containers"] if c["name"] == name)


@pytest.mark.parametrize("case", CASES)
def test_memory_limit_too_small_exits_6_naming_memory(sealed: Sealed, shm: Path, case: str) -> None:
    spec, stage, volume, before = CASES[case]
    doc = copy.deepcopy(load_example(spec))
    res = _container(doc, stage)["resources"]
    res["limits"]["memory"] = res["requests"]["memory"] = "512Mi"
    with Pod(doc, shm, subst=sealed.subst(), env=sealed.env) as pod:
        results = pod.run_init(before + [stage])
        assert [r.code for r in results] == [0] * len(before) + [6], "\n".join(map(str, results))
        error = results[-1].error()
        assert "memory limit leaves" in error and "raise resources.limits.memory to at least" in error, error
        assert pod.digests(volume) == {} and pod.volume_bytes(volume) == 0


@pytest.mark.parametrize("case", CASES)
def test_tmpfs_too_small_exits_6_before_anything_is_written(sealed: Sealed, shm: Path, case: str) -> None:
    spec, stage, volume, before = CASES[case]
    doc = copy.deepcopy(load_example(spec))
    next(v for v in pod_spec(doc)["volumes"] if v["name"] == volume)["emptyDir"]["sizeLimit"] = "512Mi"
    with Pod(doc, shm, subst=sealed.subst(), env=sealed.env) as pod:
        results = pod.run_init(before + [stage])
        assert [r.code for r in results] == [0] * len(before) + [6], "\n".join(map(str, results))
        error = results[-1].error()
        assert "free: raise the emptyDir sizeLimit to at least" in error, error
        assert not [x for x in results[-1].logs() if x.get("event") == "progress"]
        assert pod.digests(volume) == {} and pod.volume_bytes(volume) == 0


# ---- killed mid-way, then retried --------------------------------------------------------

@pytest.mark.parametrize("case", CASES)
def test_killed_mid_way_then_retried_delivers_the_model(sealed: Sealed, shm: Path, case: str) -> None:
    spec, stage, volume, before = CASES[case]
    with Pod(load_example(spec), shm, subst=sealed.subst(), env=sealed.env) as pod:
        assert [r.code for r in pod.run_init(before)] == [0] * len(before)
        name = pod.start_container(stage)
        deadline = time.monotonic() + 120
        while pod.volume_bytes(volume) < 128 * MIB:  # well into it: pages written, nothing renamed yet
            assert time.monotonic() < deadline, harness.docker("logs", name, check=False).stderr[-2000:]
            time.sleep(0.05)
        harness.docker("kill", name)  # SIGKILL, as the OOM killer or node pressure would
        assert pod.volume_bytes(volume) > 0  # the killed attempt left its partial output behind
        retry = pod.run(stage)  # the kubelet runs the same init container again
        assert retry.code == 0, str(retry)
        rest = pod.run_init(pod.init_names()[len(before) + 1:])
        assert all(r.code == 0 for r in rest), "\n".join(map(str, rest))
        assert delivered(pod, "models", "resnet/1") == sealed.digests
        if case == "four-stage":
            assert pod.digests("plaintext") == {}  # the stale .partial went with the retry, the tar with unpack
