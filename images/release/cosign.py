"""Image signatures in cosign's form, key-based: what `cosign verify --key`, the
sigstore policy-controller, Kyverno's verifyImages, Ratify's cosign verifier
and containers/image's `sigstoreSigned` policy (skopeo, podman, CRI-O) read.

The shapes, from sigstore's sources:
- the payload is the "simple signing" document of
  sigstore/sigstore pkg/signature/payload/payload.go (`Cosign.MarshalJSON`):
  {"critical":{"identity":{"docker-reference":REPO},"image":{"docker-manifest-digest":DIGEST},
  "type":"cosign container image signature"},"optional":null}, with Go's field
  order and compact encoding; REPO is the repository without tag or digest
  (`name.Digest.Repository.Name()`), "optional" null when there are no annotations;
- the signature is ECDSA P-256 over SHA-256 of the payload, ASN.1 DER,
  base64 (cosign's default signer, sigstore pkg/signature ECDSA);
- it is stored in the image's repository under the tag `sha256-<hex>.sig`
  (cosign pkg/oci/remote/remote.go `normalize`, suffix "sig"), an OCI image
  manifest (pkg/oci/empty/empty.go: OCI manifest and config media types)
  whose every layer is one signature: media type
  application/vnd.dev.cosign.simplesigning.v1+json (pkg/types/media.go),
  the payload as the blob, and the signature in the layer's annotation
  dev.cosignproject.cosign/signature (pkg/oci/static/signature.go), its
  config listing each layer's digest as a diff_id (mutate.Append on
  go-containerregistry's empty image).

Signing again replaces our own earlier layer for the same payload (the one
our key verifies) and keeps every other signer's. Keys: PEM (PKCS#8 or SEC1) EC P-256; `cosign verify
--key` takes the public key's PEM as written here.
"""

from __future__ import annotations

import base64
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from . import oci
from .store import Repository

SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
SIGNATURE_TYPE = "cosign container image signature"


def payload(repository: str, digest: str) -> bytes:
    """The simple-signing payload for `repository@digest`, byte for byte as cosign writes it."""
    doc = {"critical": {"identity": {"docker-reference": repository},
                        "image": {"docker-manifest-digest": digest},
                        "type": SIGNATURE_TYPE},
           "optional": None}
    return json.dumps(doc, separators=(",", ":")).encode()


def signature_tag(digest: str) -> str:
    algorithm, hex_ = digest.split(":", 1)
    return f"{algorithm}-{hex_}.sig"


def load_key(path: Path, password: bytes | None = None) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=password)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise ValueError(f"{path}: not an EC P-256 private key (cosign's kind)")
    return key


def ensure_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """The key at `path`, made there (mode 0600, its public key beside it as .pub) when absent."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
    key = load_key(path)
    public_path(path).write_bytes(public_pem(key))
    return key


def public_path(key_path: Path) -> Path:
    return key_path.with_suffix(".pub")


def public_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


def sign(key: ec.EllipticCurvePrivateKey, body: bytes) -> str:
    return base64.b64encode(key.sign(body, ec.ECDSA(hashes.SHA256()))).decode()


def _config(layers: list[dict[str, Any]]) -> bytes:
    """The signature image's config, as go-containerregistry's mutate.Append writes it for cosign."""
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return oci.canonical({"architecture": "", "created": now, "os": "", "config": {},
                          "history": [{"created": "0001-01-01T00:00:00Z"} for _ in layers],
                          "rootfs": {"type": "layers", "diff_ids": [x["digest"] for x in layers]}})


def attach(repo: Repository, key: ec.EllipticCurvePrivateKey, digest: str) -> str:
    """Sign `digest` (a manifest or index in `repo`) and store it; the digest of the .sig manifest."""
    body = payload(f"{repo.registry}/{repo.name}", digest)
    layer = oci.descriptor(SIMPLE_SIGNING, body, annotations={SIGNATURE_ANNOTATION: sign(key, body)})
    tag = signature_tag(digest)
    layers = [x for x in _existing_layers(repo, tag) if not _ours(key, x, layer["digest"], body)] + [layer]
    config = _config(layers)
    repo.push_blob(layer["digest"], body)
    repo.push_blob(oci.digest_of(config), config)
    manifest = oci.image_manifest(oci.descriptor(oci.IMAGE_CONFIG, config), layers)
    sig_digest, _ = repo.put_manifest(tag, manifest, oci.OCI_MANIFEST)
    return sig_digest


def _ours(key: ec.EllipticCurvePrivateKey, layer: dict[str, Any], digest: str, body: bytes) -> bool:
    """An existing signature layer of this payload by this key (signing again replaces it)."""
    if layer.get("digest") != digest:
        return False
    try:
        signature = base64.b64decode(layer.get("annotations", {}).get(SIGNATURE_ANNOTATION, ""), validate=True)
        key.public_key().verify(signature, body, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        return False
    return True


def _existing_layers(repo: Repository, tag: str) -> list[dict[str, Any]]:
    got = repo.manifest(tag)
    if got is None:
        return []
    doc = json.loads(got[1])
    return [x for x in doc.get("layers") or [] if x.get("mediaType") == SIMPLE_SIGNING]
