"""The numbers an injected pod carries, from the sealed model's header.

`numbers()` is the one adapter between injection and the sizing rule
(capacity.tree_need, sizing.py's working sets: what `inspect --resources`
prints and what each stage's preflight checks): nothing else in inject/
computes a size, so pointing injection at another home of that rule is an
edit of this one function.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass

from .. import format as sealfmt
from ..capacity import MIB, Need, quantity, tree_need
from ..errors import UsageError
from ..sizing import S3_READER, WORKING_SET
from ..sources import open_source
from ..streaming import AES256_GCM_HKDF_1MB
from ..uri import Options
from .params import PREFIX, Checked, quantity_bytes

#: The data key's volume (four-stage): a few bytes, as the examples size it.
SECRETS = 1 * MIB
#: Enough bytes to hold any .seal prefix (magic, length, header).
PREFIX_READ = 6 + 4 + sealfmt.MAX_HEADER


@dataclass(frozen=True)
class SealedModel:
    """What is known of the model: its header and the whole object's length, or only its unpacked size."""

    header: sealfmt.Header | None = None
    object_bytes: int | None = None  # the .seal object's length (None: the source did not say)
    prefix_bytes: int = 0
    unpacked: int | None = None  # modelseal.dev/size, when no header was read


@dataclass(frozen=True)
class Numbers:
    """Bytes, each already a quantity (a whole multiple of 16Mi, as `inspect --resources` rounds)."""

    volumes: dict[str, int]  # role (models, plaintext, ciphertext, secrets) -> sizeLimit
    memory: dict[str, int]  # stage (run, fetch-key, fetch-model, decrypt, unpack) -> request = limit
    serving: int  # the model's pages: the least the serving container's memory limit must hold


def read_model(p: Checked, options: Options, seal: str | None = None) -> SealedModel:
    """The header from `seal` (a local .seal file), else `modelseal.dev/size`, else a ranged read of the source."""
    if seal:
        with open(seal, "rb") as f:
            header, prefix = sealfmt.read_prefix(f)
            return SealedModel(header, os.fstat(f.fileno()).st_size, len(prefix))
    if p.size is not None:
        return SealedModel(unpacked=p.size)
    source = open_source(p.source, options)
    header, prefix = sealfmt.read_prefix(io.BytesIO(source.read_prefix(PREFIX_READ)))
    return SealedModel(header, source.size, len(prefix))


def _q(n: int) -> int:
    return quantity_bytes(quantity(n), "quantity")


def numbers(model: SealedModel, shape: str, scheme: str) -> Numbers:
    """The sizeLimits, memory limits and serving floor of one stage shape, by `inspect --resources`' rule."""
    reader = S3_READER if scheme == "s3" else 0
    plaintext = None
    if model.header is not None:
        if model.object_bytes is not None:
            plaintext = AES256_GCM_HKDF_1MB.plaintext_size_of(model.object_bytes - model.prefix_bytes)
        need = tree_need(model.header.sizes, plaintext, model.header.compression)
    else:
        need = tree_need(None, model.unpacked, "none")  # the unpacked size stands for the tree
    if need.bytes is None:
        raise UsageError(f"cannot size the pod: the model's unpacked size is unknown ({need.source}); reseal it "
                         f"with modelseal seal, or set {PREFIX}size to the models volume's size from "
                         "`modelseal inspect --resources`")
    tree = need.bytes
    if shape == "single":
        return Numbers(volumes={"models": _q(tree)}, memory={"run": _q(tree + WORKING_SET["run"] + reader)},
                       serving=_q(tree))
    tar = Need.file(plaintext, "").bytes if plaintext is not None else None
    if tar is None:
        raise UsageError("cannot size the four-stage shape: the decrypted payload's size comes from the .seal "
                         f"object's length, which is not known here; use shape single, or give the .seal file")
    return Numbers(
        volumes={"secrets": SECRETS, "ciphertext": _q(model.object_bytes or tar), "plaintext": _q(tar),
                 "models": _q(tree)},
        memory={"fetch-key": _q(WORKING_SET["fetch-key"]), "fetch-model": _q(WORKING_SET["fetch-model"] + reader),
                "decrypt": _q(tar + WORKING_SET["decrypt"]), "unpack": _q(tar + tree + WORKING_SET["unpack"])},
        serving=_q(tree))
