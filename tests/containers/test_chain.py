"""The example pod specs, run on the real engine against S3 and KMS (moto on 127.0.0.1).

examples/kubernetes/four-stage.yaml, single-stage.yaml and seal-job.yaml are
played container by container (tests/containers/harness.py: same images,
commands, args, env, volumes and hardening; only the bucket, the KMS alias
and the digest pin are substituted, and the AWS endpoint and dummy
credentials are injected as the IRSA webhook would inject a role).

- the chain and the single `run` stage deliver the model byte for byte, and
  leave nothing else behind (key, ciphertext and tar deleted as the spec asks);
- plaintext never on disk: a model holding a random canary goes through both
  variants; before and after teardown the Docker data root and the host's
  temporary folders hold neither the canary nor the data key (in any of its
  usual encodings), while the tmpfs volume did hold the canary;
- hostile input: a tampered .seal stops at fetch-model (digest pin) or at
  decrypt (exit 4) with nothing written; an archive with a `../` entry stops
  at unpack or run (exit 7) with no partial tree.
"""

from __future__ import annotations

import base64
import hashlib
import io
import re
import os
import secrets
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest

import harness
from conftest import modelseal
from support.models import make_model
from harness import (  # noqa: F401 - images_built is a fixture
    PLACEHOLDER_PIN, SPEC_KEY, SPEC_OBJECT, Pod, images_built, load_example, need, subtree, tree_of)

pytestmark = pytest.mark.usefixtures("images_built")


@pytest.fixture(scope="module")
def moto():
    try:
        import boto3  # noqa: F401
        import moto as _moto  # noqa: F401

        from support import moto as moto_support
    except ImportError as exc:
        need(f"moto[server] and boto3 are needed on the host ({exc}); make setup installs them")
    return moto_support.moto_server()


def spec_region(doc: dict) -> str:
    for c in harness.pod_spec(doc).get("initContainers", []) + harness.pod_spec(doc)["containers"]:
        for e in c.get("env", []):
            if e["name"] == "AWS_REGION":
                return e["value"]
    return "us-east-1"


@dataclass
class Account:
    """A bucket and a KMS key (with an alias) in moto, standing in for the examples' models bucket and alias/models."""

    url: str
    region: str
    bucket: str
    alias: str
    s3: object
    kms: object

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/resnet/1.seal"

    @property
    def key_uri(self) -> str:
        return f"aws-kms://{self.alias}"

    def creds(self) -> dict[str, str]:
        """What the IRSA / Pod Identity webhook would inject into every container (and the host's CLI env)."""
        return {"AWS_ENDPOINT_URL": self.url, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": self.region, "AWS_REGION": self.region,
                "AWS_EC2_METADATA_DISABLED": "true"}

    def host_env(self) -> dict[str, str]:
        return {**self.creds(), "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null"}

    def subst(self, pin: str | None = None) -> dict[str, str]:
        out = {SPEC_OBJECT: self.uri, SPEC_KEY: self.key_uri}
        if pin:
            out[PLACEHOLDER_PIN] = pin
        return out

    def get(self) -> bytes:
        return self.s3.get_object(Bucket=self.bucket, Key="resnet/1.seal")["Body"].read()

    def put(self, data: bytes) -> None:
        self.s3.put_object(Bucket=self.bucket, Key="resnet/1.seal", Body=data)

    def data_key(self, sealed: bytes) -> bytes:
        """Unwrap the .seal's data key with KMS, as fetch-key does (for the disk search)."""
        from modelseal import sealfile
        from modelseal.recipients import kms

        [stanza] = sealfile.read_prefix(io.BytesIO(sealed))[0].stanzas  # format v2: its one KMS recipient
        wrapped = kms.wrapped_of(stanza)
        return self.kms.decrypt(CiphertextBlob=wrapped.ciphertext, EncryptionContext=wrapped.context,
                                KeyId=wrapped.key_id)["Plaintext"]


@pytest.fixture
def aws(moto) -> Account:
    import boto3

    region = spec_region(load_example("four-stage.yaml"))
    kw = dict(endpoint_url=moto.url, region_name=region, aws_access_key_id="testing",
              aws_secret_access_key="testing")
    s3, kms = boto3.client("s3", **kw), boto3.client("kms", **kw)
    bucket, alias = f"models-{secrets.token_hex(4)}", f"alias/models-{secrets.token_hex(4)}"
    s3.create_bucket(Bucket=bucket, **({} if region == "us-east-1" else
                                       {"CreateBucketConfiguration": {"LocationConstraint": region}}))
    key_id = kms.create_key(Description="modelseal container tests")["KeyMetadata"]["KeyId"]
    kms.create_alias(AliasName=alias, TargetKeyId=key_id)
    return Account(moto.url, region, bucket, alias, s3, kms)


def world_readable(root: Path) -> None:
    for p in [root, *root.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)


def seal_on_host(aws: Account, src: Path, compress: str = "zstd") -> bytes:
    r = modelseal("seal", str(src), "-o", aws.uri, "--key-uri", aws.key_uri, "--name", "resnet",
                  "--model-version", "1", "--compress", compress, env=aws.host_env())
    assert r.code == 0, r.stderr
    return aws.get()


def output_location(pod: Pod, container: str, path: str) -> tuple[str, str]:
    """(volume, path inside it) of an absolute path in `container`'s mounts."""
    for m in pod.container(container).get("volumeMounts", []):
        mount = m["mountPath"].rstrip("/")
        if path == mount or path.startswith(mount + "/"):
            return m["name"], path[len(mount) + 1:]
    raise AssertionError(f"{container}: {path} is on no volume")


def arg_after(pod: Pod, container: str, flag: str) -> str:
    args = [str(a) for a in pod.container(container).get("args", [])]
    return args[args.index(flag) + 1]


def env_of(pod: Pod, container: str, name: str) -> str:
    return next(str(e["value"]) for e in pod.container(container).get("env", []) if e["name"] == name)


def model_dir_of_four_stage(pod: Pod) -> tuple[str, str]:
    return output_location(pod, "unpack", arg_after(pod, "unpack", "-o"))


def model_dir_of_single_stage(pod: Pod) -> tuple[str, str]:
    (name,) = pod.init_names()
    return output_location(pod, name, env_of(pod, name, "MODELSEAL_OUTPUT"))


def record_of(rel: str) -> str:
    """The delivery record a finished run/unpack leaves beside its tree (shared/modelseal/delivered.py)."""
    parent, _, name = rel.rpartition("/")
    return f"{parent}/.{name}.delivered" if parent else f".{name}.delivered"


def parents_of(rel: str) -> set[str]:
    parts = rel.split("/")
    return {"/".join(parts[:i]) for i in range(1, len(parts))}


def assert_ok(results: list[harness.Result], names: list[str]) -> None:
    assert [r.name for r in results] == names, "\n".join(map(str, results))
    for r in results:
        assert r.code == 0, str(r)
        assert r.termination and r.termination["status"] == "ok", (r.name, r.termination)


# ---- delivery ----------------------------------------------------------------

def test_four_stage_pod_spec_delivers_the_model_byte_for_byte(aws: Account, shm: Path) -> None:
    # The owner's side: examples/kubernetes/seal-job.yaml, its PVC played by a tmpfs directory.
    job = load_example("seal-job.yaml")
    export = shm / "export"
    src = next(str(a) for a in harness.pod_spec(job)["containers"][0]["args"] if str(a).startswith("/export/"))
    model = make_model(export / src.removeprefix("/export/"))
    world_readable(export)
    with Pod(job, shm, subst=aws.subst(), env=aws.creds(), binds={"export": export}) as sealer:
        r = sealer.run("seal")
        assert r.code == 0, str(r)
    sealed = aws.get()
    pin = hashlib.sha256(sealed).hexdigest()

    with Pod(load_example("four-stage.yaml"), shm, subst=aws.subst(pin), env=aws.creds()) as pod:
        results = pod.run_init()
        assert_ok(results, harness.STAGES)
        fetched = [x for x in results[1].logs() if x.get("event") == "source"]
        assert fetched and fetched[0]["uri"] == aws.uri  # the substituted spec, really from S3
        volume, rel = model_dir_of_four_stage(pod)
        tree = pod.read_volume(volume)
        assert subtree(tree, rel) == tree_of(model)
        assert set(tree) == parents_of(rel) | {rel, record_of(rel)} | {f"{rel}/{k}" for k in tree_of(model)}
        assert pod.read_volume("plaintext") == {}  # --delete-input: the tar is gone
        assert pod.read_volume("secrets") == {}  # --delete-key
        assert pod.read_volume("ciphertext") == {}  # --delete-input
        from modelseal import sealfile

        header = sealfile.read_prefix(io.BytesIO(sealed))[0]
        assert [(s.type, s.args[0]) for s in header.stanzas] == [("kms", "aws-kms")]  # a KMS recipient alone
        assert re.fullmatch(r"[0-9a-f]{16}", results[0].termination["key_id"])  # the data key's id, no key


def test_single_stage_pod_spec_delivers_only_the_model(aws: Account, shm: Path) -> None:
    model = make_model(shm / "model")
    seal_on_host(aws, model)
    with Pod(load_example("single-stage.yaml"), shm, subst=aws.subst(), env=aws.creds()) as pod:
        assert_ok(pod.run_init(), pod.init_names())
        volume, rel = model_dir_of_single_stage(pod)
        tree = pod.read_volume(volume)
        # Nothing but the model tree: no ciphertext, no tar, no staging directory, ever stored.
        assert set(tree) == parents_of(rel) | {rel, record_of(rel)} | {f"{rel}/{k}" for k in tree_of(model)}
        assert subtree(tree, rel) == tree_of(model)


def test_the_pod_specs_aws_region_alone_is_enough(aws: Account, shm: Path) -> None:
    """The example pods set only AWS_REGION; no AWS_DEFAULT_REGION from a webhook here."""
    seal_on_host(aws, make_model(shm / "model", 1024))
    env = {k: v for k, v in aws.creds().items() if k not in ("AWS_DEFAULT_REGION", "AWS_REGION")}
    with Pod(load_example("four-stage.yaml"), shm, subst=aws.subst(), env=env) as pod:
        r = pod.run("fetch-key")
        assert r.code == 0, str(r)


# ---- plaintext never on disk -------------------------------------------------

def test_plaintext_and_key_never_reach_the_disk(aws: Account, shm: Path) -> None:
    canary = secrets.token_hex(32).encode()  # 64 bytes nobody else has; only ever in memory and on tmpfs
    model = shm / "canary-model"
    (model / "variables").mkdir(parents=True)
    # Uncompressed and repeated across segment boundaries, so the plaintext tar holds it verbatim too.
    (model / "variables" / "canary.bin").write_bytes(canary * ((3 << 20) // len(canary)))
    (model / "config.json").write_bytes(b'{"canary": "' + canary + b'"}')
    world_readable(model)
    sealed = seal_on_host(aws, model, compress="none")
    key = aws.data_key(sealed)
    needles = [canary, key, key.hex().encode(), base64.b64encode(key)]
    roots = [harness.docker_root(), "/tmp", "/var/tmp"]
    if not harness.on_disk(roots[0]):
        need(f"the Docker data root {roots[0]} is not on a disk filesystem: nothing to search")

    # The search itself works: a marker in a disk file under a root is found.
    marker = secrets.token_hex(32).encode()
    probe = Path("/var/tmp") / f"modelseal-scan-probe-{secrets.token_hex(4)}"
    probe.write_bytes(b"x" * 100 + marker)
    try:
        assert harness.find_on_disk([marker], ["/var/tmp"]) == [(str(probe), 0)]
    finally:
        probe.unlink()

    pin = hashlib.sha256(sealed).hexdigest()
    with Pod(load_example("four-stage.yaml"), shm, subst=aws.subst(pin), env=aws.creds()) as chain, \
            Pod(load_example("single-stage.yaml"), shm, subst=aws.subst(), env=aws.creds()) as single:
        assert_ok(chain.run_init(), harness.STAGES)
        assert_ok(single.run_init(), single.init_names())
        for pod, where in ((chain, model_dir_of_four_stage(chain)), (single, model_dir_of_single_stage(single))):
            tree = pod.read_volume(where[0])
            assert canary in tree[f"{where[1]}/config.json"]  # it is there, on tmpfs
            assert subtree(tree, where[1]) == tree_of(model)
        # Containers stopped but not removed: their logs and writable layers are still on disk.
        found = harness.find_on_disk(needles, roots)
        assert not found, f"plaintext or key on disk before teardown: {found}"
    found = harness.find_on_disk(needles, roots)
    assert not found, f"plaintext or key on disk after teardown: {found}"


# ---- hostile input --------------------------------------------------------------

def test_tampered_seal_stops_at_fetch_or_decrypt_with_nothing_written(aws: Account, shm: Path) -> None:
    model = make_model(shm / "model")
    good = seal_on_host(aws, model, compress="none")
    bad = bytearray(good)
    bad[len(bad) - 100] ^= 0x01  # the last segment: earlier ones verify and get written first
    aws.put(bytes(bad))

    # With the pod's pin of the real ciphertext, fetch-model refuses the swapped object.
    with Pod(load_example("four-stage.yaml"), shm, subst=aws.subst(hashlib.sha256(good).hexdigest()),
             env=aws.creds()) as pod:
        results = pod.run_init()
        assert [r.code for r in results] == [0, 4], "\n".join(map(str, results))
        assert results[-1].termination["exit_code"] == 4
        assert pod.read_volume("ciphertext") == {}
        assert pod.read_volume("plaintext") == {} and pod.read_volume("models") == {}

    # Pinned to the tampered bytes (or not pinned), decrypt catches it and writes nothing.
    with Pod(load_example("four-stage.yaml"), shm, subst=aws.subst(hashlib.sha256(bad).hexdigest()),
             env=aws.creds()) as pod:
        results = pod.run_init()
        assert [r.code for r in results] == [0, 0, 4], "\n".join(map(str, results))
        t = results[-1].termination
        assert t["exit_code"] == 4 and t["category"] == "integrity", t
        assert pod.read_volume("plaintext") == {}  # no model.tar, no model.tar.partial
        assert pod.read_volume("models") == {}
        assert list(pod.read_volume("secrets")) == ["key"]  # deleted only on success

    # The single pass too: nothing on the volume.
    with Pod(load_example("single-stage.yaml"), shm, subst=aws.subst(), env=aws.creds()) as pod:
        (r,) = pod.run_init()
        assert r.code == 4, str(r)
        assert pod.read_volume("models") == {}


def hostile_tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for name, data in (("config.json", b'{"ok": true}'), ("variables/w.bin", os.urandom(1 << 20)),
                           ("../escaped.txt", b"outside the model directory")):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_hostile_archive_stops_at_unpack_with_no_partial_tree(aws: Account, shm: Path) -> None:
    archive = shm / "hostile.tar"
    archive.write_bytes(hostile_tar())
    seal_on_host(aws, archive)  # a tar is sealed as is
    pin = hashlib.sha256(aws.get()).hexdigest()

    with Pod(load_example("four-stage.yaml"), shm, subst=aws.subst(pin), env=aws.creds()) as pod:
        results = pod.run_init()
        assert [r.code for r in results] == [0, 0, 0, 7], "\n".join(map(str, results))
        t = results[-1].termination
        assert t["exit_code"] == 7 and t["category"] == "unsafe", t
        # Only unpack's input is left (it deletes it on success only, so a retry can run);
        # no model directory, no staging directory, nothing escaped beside it.
        tar_volume, tar_rel = output_location(pod, "decrypt", arg_after(pod, "decrypt", "-o"))
        assert sorted(pod.read_volume(tar_volume)) == [tar_rel, tar_rel + ".sizes"]  # decrypt's, kept with the tar
        assert pod.read_volume("models") == {}

    with Pod(load_example("single-stage.yaml"), shm, subst=aws.subst(), env=aws.creds()) as pod:
        (r,) = pod.run_init()
        assert r.code == 7, str(r)
        assert pod.read_volume("models") == {}
