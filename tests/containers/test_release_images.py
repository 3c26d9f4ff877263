"""What users pull: `make publish` into a real registry, read back by independent tools.

A test registry (Debian's docker-registry 2.8: no referrers API) receives
every stage from images/publish.sh, then:

- each stage's tag names an OCI image index with one manifest per
  architecture built, and each manifest's config is the local image byte for
  byte (its digest is the image ID);
- each architecture's CycloneDX SBOM is found as an OCI referrer of its
  manifest (the referrers tag schema, read here with plain HTTP) and lists
  exactly what the image holds: every distribution importlib.metadata finds
  with the image's own interpreter (what `pip list` lists; the images carry no
  pip) and every package `dpkg-query -W` calls installed, with the same
  versions, and nothing else;
- every index and manifest verifies with cosign (Debian's, the independent
  verifier) against the publishing key, and a tampered image fails it: a
  manifest changed after signing with the genuine signature replayed onto
  it, a signature with one byte changed, another key, a tag moved to an
  unsigned index.

Multi-architecture (MODELSEAL_MULTIARCH=1, `make test-multiarch`, after
`make images PLATFORMS=linux/amd64,linux/arm64`): both architectures are in
every index, and the arm64 images pulled from the registry by digest run
the chain under qemu-user-static (`uname -m` is aarch64): the four stages
and the single `run` stage deliver a model sealed on the host, byte for byte,
on tmpfs. Without it the arm64 tests skip, even under CI's
MODELSEAL_REQUIRE_IMAGES=1: building arm64 under emulation takes minutes
(see README, Images).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

import harness
from conftest import modelseal
from harness import docker, need

MULTIARCH = os.environ.get("MODELSEAL_MULTIARCH") == "1"
SBOM_TYPE = "application/vnd.cyclonedx+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
ACCEPT = f"{OCI_INDEX}, {OCI_MANIFEST}"
#: What make publish releases: every target of images/stages/Dockerfile (images/targets.sh), the webhook too.
RELEASED = subprocess.run([str(Path(__file__).resolve().parents[2] / "images" / "targets.sh")], check=True,
                          capture_output=True, text=True).stdout.split()


def engine_arch() -> str:
    arch = docker("info", "-f", "{{.Architecture}}").stdout.strip()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(arch, arch)


def local_image(stage: str, arch: str) -> str:
    return harness.image(stage) + ("" if arch == engine_arch() else f"-{arch}")


@dataclass
class Release:
    registry: object
    host: str
    prefix: str
    version: str
    archs: list[str]
    refs: dict[str, str]  # stage -> REGISTRY/stage:version@sha256:index (publish's stdout)
    report: dict
    public_key: Path
    stderr: str

    def url(self, stage: str, path: str) -> str:
        return f"http://{self.host}/v2/{self.prefix}/{stage}{path}"

    def get(self, stage: str, path: str, accept: str = ACCEPT) -> tuple[str, bytes]:
        import requests

        r = requests.get(self.url(stage, path), headers={"Accept": accept}, timeout=60)
        assert r.status_code == 200, f"GET {path}: HTTP {r.status_code}"
        return r.headers.get("Content-Type", "").split(";")[0], r.content

    def put(self, stage: str, ref: str, body: bytes, media_type: str) -> None:
        import requests

        r = requests.put(self.url(stage, f"/manifests/{ref}"), data=body, headers={"Content-Type": media_type},
                         timeout=60)
        assert r.status_code == 201, f"PUT {ref}: HTTP {r.status_code} {r.text[:300]}"

    def index(self, stage: str) -> dict:
        return json.loads(self.get(stage, f"/manifests/{self.version}")[1])

    def repo(self, stage: str) -> str:
        return f"{self.host}/{self.prefix}/{stage}"


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    from support.registry import Registry, need_tool

    need(harness.engine_missing())
    need_tool("docker-registry")
    need_tool("cosign")
    archs = [engine_arch()] + (["arm64"] if MULTIARCH and engine_arch() != "arm64" else [])
    need(harness.images_missing(*[local_image(s, a) for s in RELEASED for a in archs]))
    work = tmp_path_factory.mktemp("release")
    registry = Registry()
    prefix = "modelseal"
    key = work / "signing" / "cosign.key"
    env = {**os.environ, "REGISTRY": f"{registry.host}/{prefix}", "MODELSEAL_IMAGE_TAG": harness.TAG,
           "PLATFORMS": ",".join(f"linux/{a}" for a in archs), "SIGNING_KEY": str(key),
           "PUBLISH_REPORT": str(work / "report.json"), "PYTHON": os.environ.get("PYTHON", "python3")}
    try:
        r = subprocess.run([str(harness.REPO / "images" / "publish.sh")], capture_output=True, text=True, env=env,
                           timeout=1200)
        assert r.returncode == 0, r.stderr[-3000:]
        refs = dict(line.split() for line in r.stdout.splitlines())
        report = json.loads((work / "report.json").read_text())
        yield Release(registry, registry.host, prefix, report["version"], archs, refs, report,
                      key.with_suffix(".pub"), r.stderr)
    finally:
        registry.stop()


def cosign_verify(release: Release, ref: str, key: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["cosign", "verify", "--key", str(key or release.public_key), "--insecure-ignore-tlog",
                           "--allow-insecure-registry", "--allow-http-registry", "--output", "json", ref],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TUF_ROOT": str(release.public_key.parent / "tuf")})


def verified_digests(r: subprocess.CompletedProcess) -> list[str]:
    assert r.returncode == 0, r.stderr[-2000:]
    return [x["critical"]["image"]["docker-manifest-digest"] for x in json.loads(r.stdout)]


# ---- the index ---------------------------------------------------------------

def test_every_stage_is_an_index_of_the_local_images(release: Release) -> None:
    assert sorted(release.refs) == sorted(RELEASED)
    for stage in RELEASED:
        kind, body = release.get(stage, f"/manifests/{release.version}")
        index = json.loads(body)
        assert kind == OCI_INDEX and index["mediaType"] == OCI_INDEX
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        assert release.refs[stage] == f"{release.repo(stage)}:{release.version}@{digest}"
        assert release.get(stage, "/manifests/latest")[1] == body
        platforms = {m["platform"]["architecture"]: m for m in index["manifests"]}
        assert sorted(platforms) == sorted(release.archs)
        for arch, m in platforms.items():
            assert m["platform"]["os"] == "linux" and m["mediaType"] == OCI_MANIFEST
            manifest = json.loads(release.get(stage, f"/manifests/{m['digest']}")[1])
            config_digest = manifest["config"]["digest"]
            config = json.loads(release.get(stage, f"/blobs/{config_digest}", accept="*/*")[1])
            assert config["architecture"] == arch
            image_id = docker("image", "inspect", "-f", "{{.Id}}", local_image(stage, arch)).stdout.strip()
            assert config_digest == image_id, f"{stage} {arch}: the registry holds another image"
            assert config["config"]["Entrypoint"] == ["modelseal", stage]


def test_publish_prints_the_digests_and_how_to_verify(release: Release) -> None:
    for stage in harness.ALL:
        for arch in release.archs:
            assert release.report["stages"][stage]["platforms"][f"linux/{arch}"]["digest"] in release.stderr
    assert f"cosign verify --key {release.public_key}" in release.stderr


# ---- SBOM ----------------------------------------------------------------------

_INSTALLED = ("import importlib.metadata as m, json\n"
              "print(json.dumps(sorted([d.metadata['Name'], d.version] for d in m.distributions())))")


def installed(image: str) -> tuple[dict[str, str], dict[str, tuple[str, str]]]:
    """(python distribution -> version, debian package -> (version, arch)), asked inside the image."""
    py = docker("run", "--rm", "--network", "none", "--entrypoint", "python3", image, "-c", _INSTALLED,
                timeout=300).stdout
    deb = docker("run", "--rm", "--network", "none", "--entrypoint", "dpkg-query", image, "-W", "-f",
                 "${db:Status-Abbrev}|${Package}|${Version}|${Architecture}\n", timeout=300).stdout
    pythons = {norm(n): v for n, v in json.loads(py)}
    debs = {}
    for line in deb.splitlines():
        status, name, version, arch = line.split("|")
        if status.strip() == "ii":
            debs[name] = (version, arch)
    return pythons, debs


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def sbom_of(release: Release, stage: str, digest: str) -> tuple[dict, dict]:
    """(the referrer's manifest, the SBOM), found through the referrers tag schema."""
    tag = digest.replace(":", "-")
    kind, body = release.get(stage, f"/manifests/{tag}")
    referrers = json.loads(body)
    assert kind == OCI_INDEX
    found = [m for m in referrers["manifests"] if m.get("artifactType") == SBOM_TYPE]
    assert len(found) == 1, referrers
    manifest = json.loads(release.get(stage, f"/manifests/{found[0]['digest']}")[1])
    assert manifest["subject"]["digest"] == digest
    assert manifest["artifactType"] == SBOM_TYPE
    (layer,) = manifest["layers"]
    assert layer["mediaType"] == SBOM_TYPE
    return manifest, json.loads(release.get(stage, f"/blobs/{layer['digest']}", accept="*/*")[1])


@pytest.mark.parametrize("arch", ["amd64", "arm64"])
@pytest.mark.parametrize("stage", harness.ALL)
def test_sbom_lists_what_is_installed(release: Release, stage: str, arch: str) -> None:
    if arch not in release.archs:
        pytest.skip(f"{arch} not published here (MODELSEAL_MULTIARCH=1 and make test-multiarch publish it)")
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    digest = release.report["stages"][stage]["platforms"][f"linux/{arch}"]["digest"]
    _, bom = sbom_of(release, stage, digest)
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(json.dumps(bom)) is None
    assert bom["metadata"]["component"]["type"] == "container"
    assert digest in bom["metadata"]["component"]["purl"] and f"arch={arch}" in bom["metadata"]["component"]["purl"]
    pythons = {norm(c["name"]): c["version"] for c in bom["components"] if c["purl"].startswith("pkg:pypi/")}
    debs = {c["name"]: (c["version"], re.search(r"arch=([^&]+)", c["purl"]).group(1))
            for c in bom["components"] if c["purl"].startswith("pkg:deb/debian/")}
    assert len(pythons) + len(debs) == len(bom["components"]), "components that are neither pypi nor deb"
    want_py, want_deb = installed(local_image(stage, arch))  # the same image (config digest: the index test)
    assert pythons == want_py
    assert debs == want_deb
    assert "modelseal" in pythons and "libc6" in debs
    assert ("boto3" in pythons) == (stage in ("fetch-key", "fetch-model", "run"))


# ---- signatures ----------------------------------------------------------------

def test_every_index_and_manifest_verifies_with_cosign(release: Release) -> None:
    for stage in harness.ALL:
        entry = release.report["stages"][stage]
        assert verified_digests(cosign_verify(release, release.refs[stage])) == [entry["index"]]
        # by tag too: what a pod spec without a digest resolves
        assert verified_digests(cosign_verify(release, f"{release.repo(stage)}:{release.version}")) == [
            entry["index"]]
        for plat in entry["platforms"].values():
            assert verified_digests(cosign_verify(release, f"{release.repo(stage)}@{plat['digest']}")) == [
                plat["digest"]]


def _changed_index(release: Release, stage: str, note: str) -> tuple[bytes, str]:
    """The stage's index with one annotation changed: another digest, pushed under it."""
    index = release.index(stage)
    index.setdefault("annotations", {})["org.opencontainers.image.description"] = note
    body = json.dumps(index, separators=(",", ":")).encode()
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    release.put(stage, digest, body, OCI_INDEX)
    return body, digest


def _sig_manifest(release: Release, stage: str, digest: str) -> dict:
    return json.loads(release.get(stage, f"/manifests/{digest.replace(':', '-')}.sig")[1])


def test_a_tampered_image_fails_cosign(release: Release, tmp_path: Path) -> None:
    stage = "run"
    genuine = release.report["stages"][stage]["index"]
    sig = _sig_manifest(release, stage, genuine)

    # 1. changed after signing, the genuine signature replayed onto its .sig tag
    _, tampered = _changed_index(release, stage, "tampered")
    release.put(stage, tampered.replace(":", "-") + ".sig", json.dumps(sig).encode(), OCI_MANIFEST)
    r = cosign_verify(release, f"{release.repo(stage)}@{tampered}")
    assert r.returncode != 0 and "no matching signatures" in r.stderr, r.stderr[-1000:]

    # 2. a signature with one byte changed (and, as a control, the same signature unchanged verifies)
    _, other = _changed_index(release, stage, "re-signed")
    payload = json.dumps({"critical": {"identity": {"docker-reference": release.repo(stage)},
                                       "image": {"docker-manifest-digest": other},
                                       "type": "cosign container image signature"},
                          "optional": None}, separators=(",", ":")).encode()
    signed = _signed_by_publish_key(release, payload)
    for flip, ok in ((False, True), (True, False)):
        raw = bytearray(base64.b64decode(signed))
        if flip:
            raw[len(raw) // 2] ^= 0x01
        _push_signature(release, stage, other, payload, base64.b64encode(bytes(raw)).decode())
        r = cosign_verify(release, f"{release.repo(stage)}@{other}")
        assert (r.returncode == 0) == ok, r.stderr[-1000:]
        if not ok:
            assert "no matching signatures" in r.stderr, r.stderr[-1000:]

    # 3. another key
    r = cosign_verify(release, release.refs[stage], key=_other_key(tmp_path))
    assert r.returncode != 0 and "no matching signatures" in r.stderr, r.stderr[-1000:]

    # 4. a tag moved to an unsigned index
    body, unsigned = _changed_index(release, stage, "unsigned")
    release.put(stage, "moved", body, OCI_INDEX)
    r = cosign_verify(release, f"{release.repo(stage)}:moved")
    assert r.returncode != 0 and "no signatures found" in r.stderr, r.stderr[-1000:]

    assert verified_digests(cosign_verify(release, release.refs[stage])) == [genuine]  # untouched


def _signed_by_publish_key(release: Release, payload: bytes) -> str:
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = serialization.load_pem_private_key(release.public_key.with_suffix(".key").read_bytes(), None)
    return base64.b64encode(key.sign(payload, ec.ECDSA(hashes.SHA256()))).decode()


def _push_signature(release: Release, stage: str, digest: str, payload: bytes, signature: str) -> None:
    """A cosign .sig manifest for `digest` holding `payload` and `signature` (blobs pushed with plain HTTP)."""
    import requests

    def blob(data: bytes) -> dict:
        d = "sha256:" + hashlib.sha256(data).hexdigest()
        r = requests.post(release.url(stage, "/blobs/uploads/"), timeout=60)
        assert r.status_code == 202, r.text
        location = requests.compat.urljoin(r.url, r.headers["Location"])
        r = requests.put(location + ("&" if "?" in location else "?") + f"digest={d}", data=data, timeout=60,
                         headers={"Content-Type": "application/octet-stream"})
        assert r.status_code == 201, r.text
        return {"digest": d, "size": len(data)}

    layer = {"mediaType": "application/vnd.dev.cosign.simplesigning.v1+json", **blob(payload),
             "annotations": {"dev.cosignproject.cosign/signature": signature}}
    config = json.dumps({"architecture": "", "os": "", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": [layer["digest"]]}}).encode()
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **blob(config)},
                "layers": [layer]}
    release.put(stage, digest.replace(":", "-") + ".sig", json.dumps(manifest).encode(), OCI_MANIFEST)


def _other_key(tmp_path: Path) -> Path:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    pub = tmp_path / "other.pub"
    pub.write_bytes(ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return pub


# ---- arm64 under emulation -----------------------------------------------------

@pytest.fixture(scope="module")
def arm64(release: Release) -> dict[str, str]:
    """Each stage's arm64 image, pulled from the registry by its manifest digest."""
    if "arm64" not in release.archs:
        pytest.skip("arm64 not published here (MODELSEAL_MULTIARCH=1 and make test-multiarch publish it)")
    refs = {}
    for stage in harness.ALL:
        ref = f"{release.repo(stage)}@{release.report['stages'][stage]['platforms']['linux/arm64']['digest']}"
        docker("pull", "--platform", "linux/arm64", ref, timeout=600)
        refs[stage] = ref
    yield refs
    for ref in refs.values():
        docker("rmi", ref, check=False)


def run_arm64(ref: str, *args: str, mounts: tuple[Path, ...] = (), network: str = "none",
              entrypoint: str | None = None) -> subprocess.CompletedProcess:
    cmd = ["docker", "run", "--rm", "--platform", "linux/arm64", "--read-only", "--cap-drop", "ALL",
           "--security-opt", "no-new-privileges", f"--network={network}"]
    for m in mounts:
        cmd += ["-v", f"{m}:{m}"]
    if entrypoint:
        cmd += ["--entrypoint", entrypoint]
    return subprocess.run(cmd + [ref, *args], capture_output=True, text=True, timeout=900)


@pytest.fixture
def sealed(shm: Path) -> tuple[Path, Path, Path]:
    """A small model, its key and its .seal, made by the host's CLI, on tmpfs the containers' uid may write."""
    model = shm / "src" / "model"
    (model / "sub").mkdir(parents=True)
    (model / "weights.bin").write_bytes(os.urandom(2 << 20))
    (model / "sub" / "config.json").write_text('{"layers": 2}\n')
    key, seal = shm / "src" / "key", shm / "src" / "model.seal"
    assert modelseal("keygen", "-o", str(key)).code == 0
    r = modelseal("seal", str(model), "-o", str(seal), "--key", str(key), "--compress", "zstd")
    assert r.code == 0, r.stderr
    for d in ("cache", "models"):
        (shm / d).mkdir()
        (shm / d).chmod(0o777)
    shm.chmod(0o755)
    for p in (shm / "src", key, seal):
        p.chmod(0o755 if p.is_dir() else 0o444)
    return model, key, seal


def tree(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def test_arm64_images_run_the_chain_under_emulation(arm64: dict[str, str], shm: Path, sealed) -> None:
    model, key, seal = sealed
    for stage, ref in arm64.items():
        r = run_arm64(ref, "-c", "import os, platform; print(os.uname().machine, platform.machine())",
                      entrypoint="python3")
        assert r.returncode == 0, r.stderr
        assert r.stdout.split() == ["aarch64", "aarch64"], (stage, r.stdout)

    cache = shm / "cache"
    steps = [("fetch-key", ["--key-uri", f"file://{key}", "-o", f"{cache}/key"]),
             ("fetch-model", ["--source", f"file://{seal}", "-o", f"{cache}/model.seal"]),
             ("decrypt", ["--in", f"{cache}/model.seal", "--key", f"{cache}/key", "-o", f"{cache}/model.tar"]),
             ("unpack", ["--in", f"{cache}/model.tar", "-o", f"{shm}/models/four"])]
    for stage, args in steps:
        r = run_arm64(arm64[stage], *args, mounts=(shm,))
        assert r.returncode == 0, f"{stage}: {r.stderr[-2000:]}"
    assert tree(shm / "models" / "four") == tree(model)

    r = run_arm64(arm64["run"], "--source", f"file://{seal}", "--key", str(key), "-o", f"{shm}/models/one",
                  mounts=(shm,))
    assert r.returncode == 0, r.stderr[-2000:]
    assert tree(shm / "models" / "one") == tree(model)


def test_publish_refuses_what_it_cannot_do() -> None:
    """One line and its exit code: no REGISTRY (2), a scheme in it (2), a platform it does not build (2),
    an architecture whose images are not built (1); nothing is pushed anywhere (no registry answers)."""
    need(harness.engine_missing())
    script = str(harness.REPO / "images" / "publish.sh")
    base = {k: v for k, v in os.environ.items() if k not in ("REGISTRY", "PLATFORMS", "MODELSEAL_IMAGE_TAG")}
    cases = [({}, 2, "set REGISTRY=host[:port]/prefix"),
             ({"REGISTRY": "https://127.0.0.1:9/x"}, 2, "without a scheme"),
             ({"REGISTRY": "127.0.0.1:9/x", "PLATFORMS": "linux/s390x"}, 2, "'linux/s390x' is not linux/amd64"),
             ({"REGISTRY": "127.0.0.1:9/x", "MODELSEAL_IMAGE_TAG": "never-built"}, 1, ":never-built is not built")]
    for env, code, message in cases:
        r = subprocess.run([script], capture_output=True, text=True, env={**base, **env}, timeout=60)
        assert (r.returncode, r.stdout) == (code, ""), (env, r.returncode, r.stderr)
        assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
