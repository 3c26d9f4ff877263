"""The pod resources and volume sizes a sealed model needs, for each stage shape.

The rule behind every number: pages written to a memory-backed emptyDir are
charged to the memory cgroup of the container that writes them, so a stage's
memory limit covers what it writes plus its own working set; the pages stay
charged to the pod after the writer exits, until they are deleted, so the
pod's effective limit (the larger of the largest init container's limit and
the sum of the app containers' limits) covers what is on the volumes at each
moment; and the serving container, which keeps the model pages in the pod,
needs the model plus what the server itself uses. README.md "Sizing" says the
same in prose.

shapes() is the one place these numbers are computed (tree_shapes() for a
model known only by its unpacked size): `inspect --resources` (advice.py)
formats them as YAML, and an injection into a workload (inject/sizes.py)
formats them into its containers and volumes.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..sealfile import AES256_GCM_HKDF_1MB, Fixed
from .need import MIB, Need, mib, pages, tree_need

#: Working sets (memory beyond the tmpfs pages a stage writes), from the
#: peaks tests/containers/test_sizing.py measures with a 1 GiB model: peak RSS
#: 33-65 MiB for fetch-key, decrypt and unpack. Rounded up with headroom.
WORKING_SET = {
    "fetch-key": 128 * MIB,
    "fetch-model": 96 * MIB,
    "decrypt": 96 * MIB,
    "unpack": 96 * MIB,
    "run": 96 * MIB,
}
#: What reading from s3:// adds to fetch-model and run: botocore's client and
#: `concurrency` (4) parts of `part_size` (8 MiB) in flight plus the one being
#: read, into reused buffers (sources/s3.py). Measured by bench/fetch.py from
#: s3rver, 1 GiB: peak RSS 111 MiB for fetch-model, 121 MiB for run (145 and
#: 154 MiB at concurrency 8; 229 MiB before the buffers were reused). Raising
#: --concurrency adds 8 MiB per part to this.
S3_READER = 96 * MIB
#: The memory volume the four-stage shape's fetch-key writes the data key to.
SECRETS_VOLUME = 1 * MIB


@dataclass(frozen=True)
class SingleStage:
    """examples/kubernetes/single-stage.yaml: one `run` init container writes the tree."""

    init_memory: int  # the init container's request and limit, reading from https://, oci:// or file://
    init_memory_s3: int  # the same, reading a source of parallel parts (PARALLEL_PARTS: s3://, gs://, azblob://)
    serving_memory: int  # the tree the serving container keeps in the pod (plus what the server needs)
    models_volume: int  # the models emptyDir's sizeLimit


@dataclass(frozen=True)
class FourStage:
    """examples/kubernetes/four-stage.yaml: fetch-key, fetch-model, decrypt, unpack."""

    fetch_key_memory: int
    fetch_model_memory: int  # from s3://; the ciphertext goes to disk
    decrypt_memory: int
    unpack_memory: int  # the tar is still in the pod while the tree is written
    serving_memory: int
    secrets_volume: int
    ciphertext_volume: int  # on disk
    plaintext_volume: int
    models_volume: int


@dataclass(frozen=True)
class Shapes:
    """What a sealed model needs, each number in bytes (pages, as the preflight counts them)."""

    tree: int | None  # the unpacked tree; None: the header does not say
    tree_text: str  # how the tree's size is known, for people
    plaintext: int | None  # the decrypted payload's length; None: unknown
    payload: int | None  # the decrypted payload (the tar) on a memory volume, page-rounded
    single_stage: SingleStage | None  # None without the tree's size
    four_stage: FourStage | None  # None without the tree's or the payload's size


def shapes(header: Fixed, payload_bytes: int | None, prefix_bytes: int = 0) -> Shapes:
    """The numbers of each stage shape for a .seal of this header, whose payload (the ciphertext after
    the prefix) is `payload_bytes` long (None: unknown, e.g. read from stdin)."""
    plaintext = None if payload_bytes is None else AES256_GCM_HKDF_1MB.plaintext_size_of(payload_bytes)
    sizes = header.sizes
    need = tree_need(sizes, plaintext, header.compression)
    tree = need.bytes
    if tree is None:
        tree_text = f"unknown ({need.source})"
    elif sizes.file_bytes is not None and sizes.files is not None:
        tree_text = f"{mib(sizes.file_bytes)} in {sizes.files:,} files"
    else:
        tree_text = f"about {mib(tree)} ({need.source}: the header records no sizes)"
    return _shapes(tree, tree_text, plaintext, payload_bytes, prefix_bytes)


def tree_shapes(tree_bytes: int) -> Shapes:
    """The numbers of a model known only by its unpacked size (`modelseal.dev/size`, the models volume
    `inspect --resources` printed): the single stage's; the four stages' need the payload's length."""
    tree = pages(tree_bytes)
    return _shapes(tree, f"{mib(tree)} (given)", None, None, 0)


def _shapes(tree: int | None, tree_text: str, plaintext: int | None, payload_bytes: int | None,
            prefix_bytes: int) -> Shapes:
    payload = Need.file(plaintext, "").bytes if plaintext is not None else None
    single = four = None
    if tree is not None:
        single = SingleStage(init_memory=tree + WORKING_SET["run"],
                             init_memory_s3=tree + WORKING_SET["run"] + S3_READER,
                             serving_memory=tree, models_volume=tree)
        if payload is not None:
            four = FourStage(
                fetch_key_memory=WORKING_SET["fetch-key"],
                fetch_model_memory=WORKING_SET["fetch-model"] + S3_READER,
                decrypt_memory=payload + WORKING_SET["decrypt"],
                unpack_memory=payload + tree + WORKING_SET["unpack"],
                serving_memory=tree,
                secrets_volume=SECRETS_VOLUME,
                ciphertext_volume=payload_bytes + prefix_bytes if payload_bytes is not None else payload,
                plaintext_volume=payload,
                models_volume=tree)
    return Shapes(tree, tree_text, plaintext, payload, single, four)

