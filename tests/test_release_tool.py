"""The release tool's parts (images/release) against a real registry, without images.

The container tests (tests/containers/test_release_images.py) publish the
real stage images; these check the same parts on a tiny image in seconds,
so `make test-fast` and the mutants cover them:

- a signature is cosign's, byte for byte where it can be, and cosign
  (Debian's, the independent verifier) accepts it for exactly the repository
  and digest signed; signing again replaces our own signature, keeps others';
- a referrer is findable through the referrers tag schema (Debian's
  docker-registry has no referrers API), listed once however often attached,
  beside the others;
- dpkg's status file gives the installed packages only; layers compress to
  the same bytes every time.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from support.registry import Registry, need_tool

sys.path.append(str(Path(__file__).resolve().parents[1] / "images"))  # appended: a PYTHONPATH copy (mutants) wins

from release import cosign, oci, referrers, sbom  # noqa: E402
from release.store import Repository  # noqa: E402

from modelseal.connection import Connection  # noqa: E402


@pytest.fixture(scope="module")
def registry():
    r = Registry()
    yield r
    r.stop()


@pytest.fixture
def repo(registry, request) -> Repository:
    return Repository(registry.host, f"release/{request.node.name.replace('_', '-')[:60]}",
                      Connection(allow_http=True, timeout=30, retries=1))


def tiny_image(repo: Repository) -> str:
    """A one-layer image pushed by digest; its manifest digest."""
    layer = gzip.compress(b"not really a tar", mtime=0)
    config = oci.canonical({"architecture": "amd64", "os": "linux", "rootfs": {
        "type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(b"not really a tar").hexdigest()]}})
    repo.push_blob(oci.digest_of(layer), layer)
    repo.push_blob(oci.digest_of(config), config)
    body = oci.image_manifest(oci.descriptor(oci.IMAGE_CONFIG, config), [oci.descriptor(oci.LAYER_GZIP, layer)])
    return repo.put_manifest(oci.digest_of(body), body, oci.OCI_MANIFEST)[0]


def verify(repo: Repository, digest: str, pub: Path) -> subprocess.CompletedProcess:
    cmd = ["cosign", "verify", "--key", str(pub), "--insecure-ignore-tlog", "--allow-insecure-registry",
           "--allow-http-registry", "--output", "json", f"{repo.registry}/{repo.name}@{digest}"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "TUF_ROOT": str(pub.parent / "tuf")})


def test_payload_is_cosigns_byte_for_byte() -> None:
    """As sigstore's payload.Cosign.MarshalJSON writes it (Go field order, compact, optional null)."""
    got = cosign.payload("127.0.0.1:5000/modelseal/run", "sha256:" + "ab" * 32)
    assert got == (b'{"critical":{"identity":{"docker-reference":"127.0.0.1:5000/modelseal/run"},'
                   b'"image":{"docker-manifest-digest":"sha256:' + b"ab" * 32 + b'"},'
                   b'"type":"cosign container image signature"},"optional":null}')
    assert cosign.signature_tag("sha256:" + "ab" * 32) == "sha256-" + "ab" * 32 + ".sig"


def test_a_signature_verifies_with_cosign_for_what_was_signed(repo: Repository, tmp_path: Path) -> None:
    need_tool("cosign")
    key = cosign.ensure_key(tmp_path / "cosign.key")
    assert (tmp_path / "cosign.key").stat().st_mode & 0o777 == 0o600
    pub = cosign.public_path(tmp_path / "cosign.key")
    digest = tiny_image(repo)
    cosign.attach(repo, key, digest)
    r = verify(repo, digest, pub)
    assert r.returncode == 0, r.stderr
    (claims,) = json.loads(r.stdout)
    assert claims["critical"]["identity"]["docker-reference"] == f"{repo.registry}/{repo.name}"
    assert claims["critical"]["image"]["docker-manifest-digest"] == digest

    # signing again replaces our own signature of that payload; another signer's stays
    other = cosign.ensure_key(tmp_path / "other.key")
    cosign.attach(repo, other, digest)
    cosign.attach(repo, key, digest)
    sig = json.loads(repo.manifest(cosign.signature_tag(digest))[1])
    assert sig["mediaType"] == oci.OCI_MANIFEST and sig["config"]["mediaType"] == oci.IMAGE_CONFIG
    assert [x["mediaType"] for x in sig["layers"]] == [cosign.SIMPLE_SIGNING] * 2
    assert all(cosign.SIGNATURE_ANNOTATION in x["annotations"] for x in sig["layers"])
    assert verify(repo, digest, pub).returncode == 0
    assert verify(repo, digest, cosign.public_path(tmp_path / "other.key")).returncode == 0
    stranger = cosign.ensure_key(tmp_path / "stranger.key")
    assert stranger and verify(repo, digest, cosign.public_path(tmp_path / "stranger.key")).returncode != 0

    # a signature is for that digest only
    other_digest = tiny_image(Repository(repo.registry, repo.name + "-b", repo.connection))
    assert verify(Repository(repo.registry, repo.name + "-b", repo.connection), other_digest, pub).returncode != 0


def test_keys_that_are_not_p256_are_refused(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    path = tmp_path / "p384.key"
    path.write_bytes(ec.generate_private_key(ec.SECP384R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    with pytest.raises(ValueError, match="not an EC P-256 private key"):
        cosign.load_key(path)


def artifact(subject: dict, text: bytes, kind: str = sbom.MEDIA_TYPE) -> bytes:
    layer = oci.descriptor(kind, text)
    return oci.artifact(kind, layer, subject, {"org.opencontainers.image.created": "2026-01-01T00:00:00Z"})


def test_referrers_are_found_through_the_tag_schema(repo: Repository) -> None:
    digest = tiny_image(repo)
    size = len(repo.manifest(digest)[1])
    subject = {"mediaType": oci.OCI_MANIFEST, "digest": digest, "size": size}
    repo.push_blob(oci.EMPTY.digest, oci.EMPTY_CONFIG)
    bodies = [artifact(subject, b'{"bomFormat":"CycloneDX"}'), artifact(subject, b"other", "text/plain")]
    for text in (b'{"bomFormat":"CycloneDX"}', b"other"):
        repo.push_blob(oci.digest_of(text), text)
    attached = [referrers.attach(repo, bodies[0]), referrers.attach(repo, bodies[1]), referrers.attach(repo, bodies[0])]
    assert attached[0] == attached[2] == oci.digest_of(bodies[0])

    assert repo.referrers_api(digest) is None  # docker-registry 2.8: no API, hence the tag
    kind, body = repo.manifest(referrers.fallback_tag(digest))
    listed = json.loads(body)
    assert kind == oci.OCI_INDEX and listed["mediaType"] == oci.OCI_INDEX
    assert [(m["digest"], m["artifactType"]) for m in listed["manifests"]] == [
        (attached[1], "text/plain"), (attached[0], sbom.MEDIA_TYPE)]
    assert all(m["annotations"] == {"org.opencontainers.image.created": "2026-01-01T00:00:00Z"}
               for m in listed["manifests"])
    assert [m["digest"] for m in referrers.find(repo, digest, sbom.MEDIA_TYPE)] == [attached[0]]
    stored = json.loads(repo.manifest(attached[0])[1])
    assert stored["subject"] == subject and stored["artifactType"] == sbom.MEDIA_TYPE


STATUS = """Package: libc6
Status: install ok installed
Architecture: arm64
Source: glibc
Version: 2.36-9+deb12u14
Description: GNU C Library: Shared libraries
 Contains the standard libraries.
 Status: install ok installed

Package: perl-base
Status: deinstall ok config-files
Architecture: arm64
Version: 5.36.0-7+deb12u4

Package: tzdata
Status: install ok half-configured
Architecture: all
Version: 2026f-0+deb12u1

Package: base-files
Status: install ok installed
Architecture: arm64
Version: 12.4+deb12u15
"""


def test_dpkg_status_gives_the_installed_packages_only() -> None:
    got = [(p["Package"], p["Version"], p["Architecture"]) for p in sbom.dpkg_packages(STATUS)]
    assert got == [("libc6", "2.36-9+deb12u14", "arm64"), ("base-files", "12.4+deb12u15", "arm64")]


def test_layers_compress_to_the_same_bytes(tmp_path: Path) -> None:
    data = os.urandom(3 << 20) + bytes(1 << 20)
    outs = []
    for name in ("a", "b"):
        diff_id, digest, size = oci._compress(io.BytesIO(data), tmp_path / name)
        assert diff_id == "sha256:" + hashlib.sha256(data).hexdigest()
        blob = (tmp_path / name).read_bytes()
        assert (digest, size) == (oci.digest_of(blob), len(blob))
        assert gzip.decompress(blob) == data
        outs.append(blob)
    assert outs[0] == outs[1]


def test_arm64_is_v8_in_the_index() -> None:
    assert oci.platform({"architecture": "arm64", "os": "linux"}) == {"architecture": "arm64", "os": "linux",
                                                                      "variant": "v8"}
    assert oci.platform({"architecture": "amd64", "os": "linux"}) == {"architecture": "amd64", "os": "linux"}


# --------------------------------------------------------------------------- which images are released

IMAGES = Path(__file__).resolve().parents[1] / "images"


def targets(dockerfile: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(IMAGES / "targets.sh"), *([str(dockerfile)] if dockerfile else [])],
                          capture_output=True, text=True, timeout=60)


def test_every_target_of_the_stages_dockerfile_is_released(tmp_path: Path) -> None:
    """images/targets.sh is the one list that build.sh, publish.sh and sizes.sh take: every
    `FROM ... AS <target>` of images/stages/Dockerfile, so a target added there (a webhook) is
    built, published with its SBOMs and signed with no other list to update."""
    text = (IMAGES / "stages" / "Dockerfile").read_text()
    declared = [m.split()[-1] for m in text.splitlines() if m.upper().startswith("FROM ") and " AS " in m.upper()]
    r = targets()
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == declared and {"fetch-key", "fetch-model", "decrypt", "unpack", "run"} <= set(declared)

    planted = tmp_path / "Dockerfile"
    planted.write_text(text + "\nFROM ${CLOUD_BASE} AS webhook\nENTRYPOINT [\"modelseal\", \"webhook\"]\n")
    assert targets(planted).stdout.split() == [*declared, "webhook"]
    planted.write_text("FROM scratch\n")
    r = targets(planted)
    assert r.returncode == 1 and r.stderr.strip() == f"targets: no 'FROM ... AS <target>' in {planted}"

    for script in ("build.sh", "publish.sh", "sizes.sh"):
        code = [line for line in (IMAGES / script).read_text().splitlines() if not line.lstrip().startswith("#")]
        assert any('"$here/targets.sh"' in line for line in code), script
        assert not any(t in line for t in declared if t != "run" for line in code), script  # no list of its own


def dockerignore_lets_through(path: str) -> bool:
    """Whether the root .dockerignore leaves `path` in the build context: the last rule that matches the
    path or a folder above it wins; `*` stays within one path segment (Go's filepath.Match, as Docker)."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    included = True
    for line in (IMAGES.parent / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keep = line.startswith("!")
        pattern = "".join("[^/]*" if c == "*" else re.escape(c) for c in line.lstrip("!"))
        if any(re.fullmatch(pattern, p) for p in prefixes):
            included = keep
    return included


def test_every_architectures_wheelhouse_reaches_the_image_build() -> None:
    """images/base/Dockerfile copies ${WHEELHOUSE}/ (images/.wheelhouse, or images/.wheelhouse-ARCH for
    another architecture: images/build.sh) and installs modelseal by the hash in its
    requirements-modelseal.txt (--require-hashes): both must be in the context for every architecture."""
    for wheelhouse in (".wheelhouse", ".wheelhouse-arm64", ".wheelhouse-amd64"):
        for name in ("modelseal-0.1.0-py3-none-any.whl", "requirements-modelseal.txt", "debs/binutils_2.40.deb"):
            assert dockerignore_lets_through(f"images/{wheelhouse}/{name}"), (wheelhouse, name)
    assert dockerignore_lets_through("images/requirements-core.txt")
    assert not dockerignore_lets_through("shared/modelseal/cli.py")
    assert not dockerignore_lets_through("images/.signing/cosign.key")
