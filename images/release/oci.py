"""The OCI documents a release writes, and the layers of a locally built image.

Every document is serialised once, to the exact bytes that are pushed and
whose sha256 names them (canonical: sorted keys, no spaces). The image
layers come from `docker save` (the classic engine's layout and the OCI
layout both carry manifest.json): each layer tar is gzip-compressed here,
deterministically (no name, mtime 0), so the same image gives the same
blobs and the same digests every time, and its sha256 is checked against the
config's diff_ids on the way.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelseal.registry.manifest import (  # noqa: F401 - re-exported for the other modules
    EMPTY,
    EMPTY_CONFIG,
    OCI_INDEX,
    OCI_MANIFEST,
    Descriptor,
    digest_of,
)

IMAGE_CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
GZIP_LEVEL = 6  # gzip's and Docker's default


def canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def descriptor(media_type: str, body: bytes, **extra: Any) -> dict[str, Any]:
    """The descriptor of `body` (extra fields: platform, artifactType, annotations, data)."""
    return {"mediaType": media_type, "digest": digest_of(body), "size": len(body), **extra}


def image_manifest(config: dict[str, Any], layers: list[dict[str, Any]]) -> bytes:
    return canonical({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": layers})


def index(manifests: list[dict[str, Any]], annotations: dict[str, str] | None = None) -> bytes:
    obj: dict[str, Any] = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}
    if annotations:
        obj["annotations"] = annotations
    return canonical(obj)


def artifact(artifact_type: str, layer: dict[str, Any], subject: dict[str, Any],
             annotations: dict[str, str]) -> bytes:
    """An OCI 1.1 artifact manifest about `subject`: the empty config, one layer."""
    return canonical({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": artifact_type,
                      "config": {**EMPTY.to_json(), "data": "e30="}, "layers": [layer],
                      "subject": subject, "annotations": annotations})


def platform(config: dict[str, Any]) -> dict[str, str]:
    """The index's platform entry for an image config (arm64 is v8, as the registries' own images say)."""
    p = {"architecture": config["architecture"], "os": config["os"]}
    variant = config.get("variant") or ("v8" if config["architecture"] == "arm64" else "")
    if variant:
        p["variant"] = variant
    return p


@dataclass
class Layer:
    diff_id: str  # sha256 of the tar
    path: Path  # the gzip blob
    digest: str
    size: int


@dataclass
class Image:
    ref: str  # the local name it was saved from
    config: bytes  # the image config, byte for byte (its digest is the image ID)
    layers: list[Layer]

    @property
    def config_json(self) -> dict[str, Any]:
        return json.loads(self.config)

    def manifest(self) -> bytes:
        return image_manifest(descriptor(IMAGE_CONFIG, self.config),
                              [{"mediaType": LAYER_GZIP, "digest": x.digest, "size": x.size} for x in self.layers])


def _compress(src: Any, dest: Path) -> tuple[str, str, int]:
    """gzip src into dest; (sha256 of the input, sha256 of the output, output size)."""
    plain, packed = hashlib.sha256(), hashlib.sha256()
    size = 0

    class Sink:
        def write(self, b: bytes) -> int:
            nonlocal size
            packed.update(b)
            size += len(b)
            return out.write(b)

        def flush(self) -> None:
            out.flush()

    with open(dest, "wb") as out:
        with gzip.GzipFile(filename="", mode="wb", fileobj=Sink(), compresslevel=GZIP_LEVEL, mtime=0) as z:  # type: ignore[arg-type]
            while chunk := src.read(1 << 20):
                plain.update(chunk)
                z.write(chunk)
    return "sha256:" + plain.hexdigest(), "sha256:" + packed.hexdigest(), size


def save(refs: list[str], workdir: Path) -> dict[str, Image]:
    """The images `refs` of the local engine, their layers compressed under workdir (each distinct layer once)."""
    archive = workdir / "save.tar"
    subprocess.run(["docker", "save", "-o", str(archive), *refs], check=True)
    images: dict[str, Image] = {}
    done: dict[str, Layer] = {}
    with tarfile.open(archive) as outer:
        entries = json.load(outer.extractfile("manifest.json"))  # type: ignore[arg-type]
        for entry in entries:
            config = outer.extractfile(entry["Config"]).read()  # type: ignore[union-attr]
            diff_ids = json.loads(config)["rootfs"]["diff_ids"]
            if len(diff_ids) != len(entry["Layers"]):
                raise RuntimeError(f"{entry['RepoTags']}: {len(entry['Layers'])} layers, {len(diff_ids)} diff_ids")
            layers = []
            for diff_id, name in zip(diff_ids, entry["Layers"]):
                if diff_id not in done:
                    dest = Path(tempfile.mkstemp(dir=workdir, suffix=".tar.gz")[1])
                    got, digest, size = _compress(outer.extractfile(name), dest)
                    if got != diff_id:
                        raise RuntimeError(f"{name}: the layer's sha256 is {got}, the config says {diff_id}")
                    done[diff_id] = Layer(diff_id, dest, digest, size)
                layers.append(done[diff_id])
            for tag in entry.get("RepoTags") or []:
                images[tag] = Image(tag, config, layers)
    archive.unlink()
    missing = [r for r in refs if r not in images]
    if missing:
        raise RuntimeError(f"docker save did not return {', '.join(missing)}")
    return images
