"""The numbers an injected pod carries: placement.shapes() of the model's header, as `inspect --resources` prints them.

model_shapes() gets placement's Shapes of the model (placement.shapes() of its
header, or tree_shapes() of a model known only by `modelseal.dev/size`), and
numbers() is the one adapter between injection and that rule: it picks the
asked shape's numbers and rounds them to quantities as `inspect --resources`
does. Nothing in inject/ computes a size.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from .. import sealfile, stages
from ..connection import Connection
from ..errors import UsageError
from ..placement import Shapes, shapes, tree_shapes
from ..placement.need import quantity
from ..sources import backend_class, open_source
from .params import PREFIX, Checked, quantity_bytes


@dataclass(frozen=True)
class Numbers:
    """Bytes, each already a quantity (as `inspect --resources` rounds them)."""

    volumes: dict[str, int]  # role (models, plaintext, ciphertext, secrets) -> sizeLimit
    memory: dict[str, int]  # stage (run, fetch-key, fetch-model, decrypt, unpack) -> request = limit
    serving: int  # the model's pages: the least the serving container's memory limit must hold


def model_shapes(p: Checked, connection: Connection, seal: str | None = None) -> Shapes:
    """What the model needs, by placement's rule: from the header of `seal` (a local .seal file), else from
    `modelseal.dev/size`, else from the header a ranged read of the source gets."""
    if seal:
        seen = stages.inspect(seal)
    elif p.size is not None:
        return tree_shapes(p.size)
    else:
        source = open_source(p.source, connection)
        header, prefix = sealfile.read_prefix(io.BytesIO(source.read_prefix(stages.PREFIX_READ)))
        size = source.size
        seen = stages.Inspection(header, len(prefix), None if size is None else size - len(prefix))
    return shapes(seen.header.fixed, seen.payload_bytes, seen.prefix_bytes)


def _q(n: int) -> int:
    return quantity_bytes(quantity(n), "quantity")


def numbers(s: Shapes, shape: str, source: str) -> Numbers:
    """The sizeLimits, memory limits and serving floor of one stage shape, for a pod reading `source`."""
    one = s.single_stage
    if one is None:
        raise UsageError(f"cannot size the pod: the model's unpacked size is {s.tree_text}; reseal it with "
                         f"modelseal seal, or set {PREFIX}size to the models volume's size from "
                         "`modelseal inspect --resources`")
    if shape == "single":
        parallel = backend_class(source).PARALLEL_PARTS
        return Numbers(volumes={"models": _q(one.models_volume)},
                       memory={"run": _q(one.init_memory_s3 if parallel else one.init_memory)},
                       serving=_q(one.serving_memory))
    four = s.four_stage
    if four is None:
        raise UsageError("cannot size the four-stage shape: the decrypted payload's size comes from the .seal "
                         "object's length, which is not known here; use shape single, or give the .seal file")
    return Numbers(
        volumes={"secrets": four.secrets_volume, "ciphertext": _q(four.ciphertext_volume),
                 "plaintext": _q(four.plaintext_volume), "models": _q(four.models_volume)},
        memory={"fetch-key": _q(four.fetch_key_memory), "fetch-model": _q(four.fetch_model_memory),
                "decrypt": _q(four.decrypt_memory), "unpack": _q(four.unpack_memory)},
        serving=_q(four.serving_memory))
