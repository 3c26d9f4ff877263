"""An injected pod at real size: `modelseal inject` sizes it from the header, the harness plays it (issue 23).

A Pod annotated for a model of about 600 MiB (S3 on s3rver, a KMS-wrapped key
on moto) goes through the real `modelseal inject`, which reads the header with
one ranged read and computes the init container's memory limit and the
volume's sizeLimit; tests/containers/harness.py then plays the injected spec
on Docker as a kubelet would (a tmpfs volume of that sizeLimit, `docker run
--memory` at that limit). The model arrives byte-exact, and its tmpfs pages
were charged to the init container: a guessed limit (512Mi) is refused
before the first byte (exit 6), where without the preflight the kernel would
OOM-kill it.
"""

from __future__ import annotations

import copy
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from conftest import SHM, modelseal
from harness import Pod, digests_of, images_built, need, pod_spec, quantity_bytes  # noqa: F401 - a fixture
from support import s3rver as s3rver_support
from support.models import make_model

pytestmark = pytest.mark.usefixtures("images_built")

MIB = 1 << 20
TREE = 600 * MIB


@dataclass
class Sealed:
    source: str
    key_uri: str
    env: dict[str, str]  # what the IRSA webhook would inject, pointed at the test's stores
    digests: dict[str, str | None]


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
    base = SHM / f"modelseal-inject-{secrets.token_hex(4)}"
    base.mkdir()
    try:
        model = make_model(base / "resnet", tree_bytes=TREE)
        source = f"s3://{bucket}/resnet/1.seal"
        r = modelseal("seal", str(model), "-o", source, "--key-uri", f"aws-kms://{alias}", "--name", "resnet",
                      "--compress", "zstd", env={**env, "AWS_CONFIG_FILE": "/dev/null",
                                                 "AWS_SHARED_CREDENTIALS_FILE": "/dev/null"}, timeout=600)
        assert r.code == 0, r.stderr
        yield Sealed(source, f"aws-kms://{alias}", env, digests_of(model))
    finally:
        shutil.rmtree(base, ignore_errors=True)


def injected(sealed: Sealed, shm: Path) -> dict:
    """The annotated Pod through the real `modelseal inject` (the header by a ranged read of S3)."""
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "resnet", "annotations": {
               "modelseal.dev/source": sealed.source, "modelseal.dev/key-uri": sealed.key_uri,
               "modelseal.dev/container": "serving", "modelseal.dev/mount": "/models/resnet/1"}},
           "spec": {"securityContext": {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532,
                                        "fsGroup": 65532, "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [{"name": "serving", "image": "tensorflow/serving:2.16.1",
                                    "resources": {"limits": {"memory": "2Gi"}}}]}}
    path = shm / "pod.yaml"
    path.write_text(yaml.safe_dump(pod))
    r = modelseal("inject", "-f", str(path), env={**sealed.env, "AWS_CONFIG_FILE": "/dev/null",
                                                   "AWS_SHARED_CREDENTIALS_FILE": "/dev/null"})
    assert r.code == 0, r.stderr
    return yaml.safe_load(r.stdout)


def test_an_injected_pod_delivers_600_mib_byte_exact_at_the_limits_it_computed(sealed: Sealed, shm: Path) -> None:
    doc = injected(sealed, shm)
    spec = pod_spec(doc)
    (run,) = spec["initContainers"]
    limit = quantity_bytes(run["resources"]["limits"]["memory"])
    size = quantity_bytes(spec["volumes"][0]["emptyDir"]["sizeLimit"])
    assert TREE <= size < TREE + 32 * MIB and size < limit <= size + 192 * MIB  # from the header, not a guess
    with Pod(doc, shm, env=sealed.env) as pod:
        (result,) = pod.run_init()
        print(f"\ninjected single-stage, {TREE / MIB:.0f} MiB model: limit {limit / MIB:.0f} MiB, "
              f"cgroup peak {result.termination and result.termination.get('cgroup_peak_mib')} MiB")
        assert result.code == 0, str(result)
        delivered = {k.removeprefix("model/"): v for k, v in pod.digests("modelseal-models").items() if k.startswith("model/")}
        assert delivered == sealed.digests
        peak = result.termination["cgroup_peak_mib"] * MIB
        assert TREE <= peak <= limit  # the tmpfs pages were charged to it, within what inject gave it


def test_a_guessed_limit_is_refused_before_the_first_byte(sealed: Sealed, shm: Path) -> None:
    doc = copy.deepcopy(injected(sealed, shm))
    resources = pod_spec(doc)["initContainers"][0]["resources"]
    resources["limits"]["memory"] = resources["requests"]["memory"] = "512Mi"
    with Pod(doc, shm, env=sealed.env) as pod:
        (result,) = pod.run_init()
        assert result.code == 6, str(result)
        assert "raise resources.limits.memory to at least" in result.error()
        assert pod.volume_bytes("modelseal-models") == 0
