"""The sealed-model OCI artifact: its media types, the manifest we push, and the layer we read.

Pushed by `seal -o oci://` (docs/FORMAT.md, "OCI artifact"): an OCI image
manifest with `artifactType` ARTIFACT_TYPE, the empty config of the OCI 1.1
artifact guidance, and one layer of media type SEAL_LAYERS[v] (v: the .seal's format version) whose blob is the
.seal file byte for byte, titled `model.seal`.

Read from any manifest (ours, or one written by `oras push model.seal`):
the layer is, in this order, the one layer of a SEAL_LAYERS type, else the one
layer titled `*.seal`, else the only layer. An image index, a container
image (image config and tar layers: mount those as an image volume and read
`file:///...`), or a choice that is not unique is a usage error; a manifest
that does not parse, or a descriptor without a sha256 digest and a size, is
an integrity error (exit 4).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from .. import untrusted
from ..errors import IntegrityError, UsageError

ARTIFACT_TYPE = "application/vnd.modelseal.model.v1"
SEAL_LAYER = "application/vnd.modelseal.seal.v1"
#: The layer's media type names the .seal format version of its blob (the blob's own version byte decides
#: how it is read): version 1's layer type as ever, version 2's its own, so a registry's listing, a
#: policy or an older reader (which then picks the layer by its `*.seal` title and refuses the version
#: with its own message) can tell them apart.
SEAL_LAYERS = {1: SEAL_LAYER, 2: "application/vnd.modelseal.seal.v2"}


def seal_layer(version: int) -> str:
    """The layer media type of a .seal of this format version."""
    return SEAL_LAYERS[version]


TITLE = "org.opencontainers.image.title"
LAYER_TITLE = "model.seal"

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
ACCEPT = ", ".join((OCI_MANIFEST, DOCKER_MANIFEST, OCI_INDEX, DOCKER_LIST))
IMAGE_CONFIGS = frozenset({"application/vnd.oci.image.config.v1+json",
                           "application/vnd.docker.container.image.v1+json"})
EMPTY_CONFIG_TYPE = "application/vnd.oci.empty.v1+json"
EMPTY_CONFIG = b"{}"
MAX_MANIFEST = 4 << 20  # distribution's own limit

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] = field(default_factory=dict)

    @property
    def hex(self) -> str:
        return self.digest.split(":", 1)[1]

    @property
    def title(self) -> str:
        return self.annotations.get(TITLE, "")

    def to_json(self) -> dict[str, Any]:
        obj: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.annotations:
            obj["annotations"] = dict(self.annotations)
        return obj

    @classmethod
    def from_json(cls, obj: Any, what: str) -> "Descriptor":
        if not isinstance(obj, dict):
            raise IntegrityError(f"{what}: malformed manifest: a descriptor is not an object")
        digest, size, media = obj.get("digest"), obj.get("size"), obj.get("mediaType", "")
        if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
            raise IntegrityError(f"{what}: a layer digest is not sha256:<64 hex> (only sha256 is supported)")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise IntegrityError(f"{what}: malformed manifest: a descriptor has no valid size")
        annotations = obj.get("annotations") or {}
        if not isinstance(media, str) or not isinstance(annotations, dict):
            raise IntegrityError(f"{what}: malformed manifest: bad mediaType or annotations")
        return cls(media, digest, size, {str(k): str(v) for k, v in annotations.items()})


EMPTY = Descriptor(EMPTY_CONFIG_TYPE, digest_of(EMPTY_CONFIG), len(EMPTY_CONFIG))


def build(layer: Descriptor, annotations: dict[str, str]) -> bytes:
    """The manifest of a sealed model, as the exact bytes to PUT (their digest names it)."""
    obj: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": ARTIFACT_TYPE,
        "config": EMPTY.to_json(),
        "layers": [layer.to_json()],
    }
    if annotations:
        obj["annotations"] = dict(sorted(annotations.items()))
    return json.dumps(obj, separators=(",", ":")).encode()


def sealed_layer(body: bytes, what: str) -> Descriptor:
    """The layer holding the .seal, chosen from a manifest's bytes."""
    obj = untrusted.json_document(body, f"{what}: the manifest")
    if not isinstance(obj, dict) or obj.get("schemaVersion") != 2:
        raise IntegrityError(f"{what}: not an OCI or Docker v2 manifest (schemaVersion 2)")
    media = obj.get("mediaType")
    if media in (OCI_INDEX, DOCKER_LIST) or "manifests" in obj:
        raise UsageError(f"{what}: is an image index (several manifests); name one manifest by its digest")
    if media not in (None, OCI_MANIFEST, DOCKER_MANIFEST):
        raise UsageError(f"{what}: unsupported manifest type {untrusted.show(media, 80)}")
    layers_json = obj.get("layers")
    if not isinstance(layers_json, list) or not layers_json:
        raise IntegrityError(f"{what}: the manifest lists no layers")
    layers = [Descriptor.from_json(x, what) for x in layers_json]
    config = obj.get("config")
    if not isinstance(config, dict):
        config = {}
    config_type = config.get("mediaType")
    if config_type is not None and not isinstance(config_type, str):
        raise IntegrityError(f"{what}: malformed manifest: config.mediaType is not a string")
    for pick in (lambda d: d.media_type in SEAL_LAYERS.values(), lambda d: d.title.endswith(".seal")):
        chosen = [d for d in layers if pick(d)]
        if len(chosen) == 1:
            return chosen[0]
        if len(chosen) > 1:
            raise UsageError(f"{what}: {len(chosen)} layers could be the sealed model; push one .seal per tag")
    if isinstance(config_type, str) and config_type in IMAGE_CONFIGS:
        raise UsageError(f"{what}: is a container image, not a sealed-model artifact; mount it as an image "
                         "volume and read file:///..., or push the .seal itself (seal -o oci://, oras push)")
    if len(layers) == 1:
        return layers[0]
    raise UsageError(f"{what}: {len(layers)} layers and none is a .seal ({' or '.join(SEAL_LAYERS.values())} or "
                     "titled *.seal)")
