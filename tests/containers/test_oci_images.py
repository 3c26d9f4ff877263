"""Through a real registry: the stage images pulled from it, the sealed model read from it.

A test registry (Debian's docker-registry, anonymous, plain HTTP on 127.0.0.1,
which the Docker engine allows) receives the stage images from
images/publish.sh (what `make publish REGISTRY=...` runs once the images are
built: an index per stage, its SBOMs and signatures; test_release_images.py
checks those); every stage is pulled back by the index digest publish
printed, and the pods run those references:

- examples/kubernetes/oci-registry.yaml: fetch-key reads the .seal header from
  oci://...@sha256: (KMS unwrap, moto), fetch-model streams the artifact that
  `seal -o oci://` pushed, decrypt and unpack deliver the model byte for byte;
  the pull secret is mounted as DOCKER_CONFIG, as in the spec;
- examples/kubernetes/image-volume.yaml: the sealed model baked into an image
  (`FROM scratch`, `COPY model.seal /`), pushed and pulled by digest, its root
  filesystem mounted read-only at /sealed as the kubelet's image volume would,
  and `run --source file:///sealed/model.seal` delivers the model.

Docker keeps the layers it already has, so the pull downloads manifests and
configs and verifies them against the registry, not the shared layers again.
"""
# The fixtures come from test_chain (aws, moto): the test arguments naming them shadow the imports.
# ruff: noqa: F811

from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

import harness
from conftest import modelseal
from harness import (  # noqa: F401 - images_built is a fixture
    SPEC_KEY, Pod, docker, images_built, load_example, need, subtree, tree_of)
from support.models import make_model
from test_chain import assert_ok, aws, moto, output_location, world_readable  # noqa: F401, F811 - fixtures

pytestmark = pytest.mark.usefixtures("images_built")

SPEC_REF = "oci://registry.example.com/models/resnet@sha256:" + "2" * 64


@pytest.fixture(scope="module")
def published():
    from support.registry import need_tool, Registry

    need(harness.engine_missing())
    need(harness.images_missing("webhook"))  # publish.sh pushes it with the stages
    need_tool("docker-registry")
    registry = Registry()
    prefix = f"{registry.host}/modelseal"
    env = {**os.environ, "REGISTRY": prefix, "MODELSEAL_IMAGE_TAG": harness.TAG,
           "SIGNING_KEY": os.path.join(registry.dir, "cosign.key"), "PYTHON": os.environ.get("PYTHON", "python3")}
    r = subprocess.run([str(harness.REPO / "images" / "publish.sh")], capture_output=True, text=True, env=env,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    refs = dict(line.split() for line in r.stdout.splitlines())
    assert sorted(refs) == sorted([*harness.ALL, "webhook"])
    version = refs["run"].split(":", 2)[-1].split("@")[0]
    for stage, ref in refs.items():
        assert ref.startswith(f"{prefix}/{stage}:{version}@sha256:")
        by_digest = f"{prefix}/{stage}@{ref.split('@')[1]}"
        docker("pull", by_digest, timeout=300)
        refs[stage] = by_digest
    yield registry, refs
    for ref in refs.values():
        docker("rmi", ref, check=False)
    registry.stop()


def pull_secret(dir: Path, registry: str) -> Path:
    """A kubernetes.io/dockerconfigjson secret as the kubelet mounts it (anonymous registry: no entry used)."""
    dir.mkdir()
    (dir / ".dockerconfigjson").write_text(json.dumps({"auths": {"other.example.com": {"auth": "dTpw"}}}))
    world_readable(dir)
    return dir


def image_of(container: str) -> str:
    return docker("inspect", "-f", "{{.Config.Image}}", container).stdout.strip()


def test_oci_registry_example_runs_from_the_registry(published, aws, shm: Path) -> None:
    registry, refs = published
    model = make_model(shm / "model")
    r = modelseal("seal", str(model), "-o", f"oci://{registry.host}/models/resnet:1", "--allow-http",
                  "--key-uri", aws.key_uri, "--name", "resnet", "--compress", "zstd",
                  env={**aws.host_env(), "DOCKER_CONFIG": str(shm)})
    assert r.code == 0, r.stderr
    pinned = next(x for x in r.logs() if x.get("event") == "pushed")["pinned"]
    doc = load_example("oci-registry.yaml")
    subst = {SPEC_REF: pinned + "?allow_http=true", SPEC_KEY: aws.key_uri}
    binds = {"registry-auth": pull_secret(shm / "registry-auth", registry.host)}
    with Pod(doc, shm, subst=subst, env=aws.creds(), binds=binds, images=refs) as pod:
        results = pod.run_init()
        assert_ok(results, pod.init_names())
        for res in results:
            assert image_of(f"{pod.id}-{res.name}") == refs[res.name]  # the digest pulled from the registry
        fetched = next(x for x in results[1].logs() if x.get("event") == "manifest")
        assert fetched["digest"] == pinned.split("@")[1]
        volume, rel = output_location(pod, "unpack", "/models/resnet/1")
        got = pod.read_volume(volume)
        assert subtree(got, rel) == tree_of(model)
        assert not [k for k in got if k.endswith((".tar", ".partial"))]
        assert pod.read_volume("secrets") == {} and pod.read_volume("ciphertext") == {}


def test_image_volume_example_reads_the_baked_model(published, aws, shm: Path, tmp_path: Path) -> None:
    registry, refs = published
    model = make_model(shm / "model")
    build = tmp_path / "build"  # ciphertext only: disk is fine
    build.mkdir()
    r = modelseal("seal", str(model), "-o", str(build / "model.seal"), "--key-uri", aws.key_uri,
                  env=aws.host_env())
    assert r.code == 0, r.stderr
    tag = f"{registry.host}/models/resnet-sealed:1"
    subprocess.run(["docker", "build", "-q", "-t", tag, "-f", "-", str(build)], input=b"FROM scratch\nCOPY model.seal /\n",
                   check=True, capture_output=True, timeout=300)
    docker("push", tag, timeout=300)
    digest = docker("image", "inspect", "-f", "{{index .RepoDigests 0}}", tag).stdout.strip()
    docker("rmi", tag)
    docker("pull", digest, timeout=300)
    # the kubelet mounts the image's root filesystem read-only: here, its files exported to a directory
    container = docker("create", digest, "/model.seal").stdout.strip()
    try:
        exported = docker("export", container, text=False).stdout
    finally:
        docker("rm", container, check=False)
        docker("rmi", digest, check=False)
    sealed = tmp_path / "sealed"
    sealed.mkdir()
    with tarfile.open(fileobj=io.BytesIO(exported)) as t:
        member = t.getmember("model.seal")
        (sealed / "model.seal").write_bytes(t.extractfile(member).read())
    assert (sealed / "model.seal").read_bytes() == (build / "model.seal").read_bytes()
    world_readable(sealed)
    doc = load_example("image-volume.yaml")
    with Pod(doc, shm, subst={SPEC_KEY: aws.key_uri}, env=aws.creds(), binds={"sealed": sealed},
             images=refs) as pod:
        (name,) = pod.init_names()
        results = pod.run_init()
        assert_ok(results, [name])
        assert image_of(f"{pod.id}-{name}") == refs["run"]
        volume, rel = output_location(pod, name, "/models/resnet/1")
        assert subtree(pod.read_volume(volume), rel) == tree_of(model)
