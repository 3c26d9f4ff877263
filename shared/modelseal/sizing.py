"""`modelseal inspect --resources`: the pod resources and emptyDir sizes a sealed model needs.

The rule behind every number: pages written to a memory-backed emptyDir are
charged to the memory cgroup of the container that writes them, so a stage's
memory limit covers what it writes plus its own working set; the pages stay
charged to the pod after the writer exits, until they are deleted, so the
pod's effective limit (the larger of the largest init container's limit and
the sum of the app containers' limits) covers what is on the volumes at each
moment; and the serving container, which keeps the model pages in the pod,
needs the model plus what the server itself uses. README.md "Sizing" says the
same in prose.
"""

from __future__ import annotations

from typing import Any

from . import untrusted
from .capacity import MIB, Need, mib, quantity, tree_need
from .sealfile import Sizes

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


def _tree_bytes(content: dict[str, Any], plaintext: int | None) -> tuple[int | None, str]:
    """The unpacked tree's pages, by the preflight's own rule (capacity.tree_need), and how it is known."""
    sizes = Sizes.from_json(content)
    compression = content.get("compression", "none")
    need = tree_need(sizes, plaintext, compression)
    if need.bytes is None:
        return None, f"unknown ({need.source})"
    if sizes.file_bytes is not None and sizes.files is not None:
        return need.bytes, f"{mib(sizes.file_bytes)} in {sizes.files:,} files"
    return need.bytes, f"about {mib(need.bytes)} ({need.source}: the header records no sizes)"


def _comment(value: Any, limit: int) -> str:
    """A header string (unauthenticated: anyone can edit a .seal's header) fit for a YAML comment.

    As it is when it is short and printable; else quoted and shortened (untrusted.show escapes
    line breaks, YAML's U+0085/U+2028/U+2029 included, and ESC), so it can neither end the comment
    and add keys nor reach a terminal as a control sequence."""
    if isinstance(value, str) and value.isprintable() and len(value) <= limit:
        return value
    return untrusted.show(value, limit)


def _resources(memory: int) -> str:
    q = quantity(memory)
    return f"{{resources: {{requests: {{memory: {q}}}, limits: {{memory: {q}}}}}}}"


def advice(info: dict[str, Any]) -> str:
    """YAML (with comments) giving limits and sizeLimits for the example pod specs' shapes."""
    content = info.get("content") or {}
    plaintext = info.get("plaintext_bytes")
    payload = info.get("payload_bytes")
    tree, tree_text = _tree_bytes(content, plaintext)
    tar = Need.file(plaintext, "").bytes if isinstance(plaintext, int) else None  # pages, as the preflight counts them
    lines = [f"# {_comment(info.get('name') or 'model', 80)} {_comment(info.get('version') or '', 40)}".rstrip(),
             f"# unpacked: {tree_text}",
             f"# decrypted payload ({_comment(content.get('compression', 'none'), 20)} tar): "
             + (mib(plaintext) if isinstance(plaintext, int) else "unknown (read from stdin)"),
             "# tmpfs pages count against the memory limit of the container that writes them, and stay",
             "# in the pod until deleted (README.md, Sizing). Memory requests equal limits: the pages are real.",
             ""]
    if tree is None:
        lines.append("# Cannot size the pod without the model's unpacked size: reseal it with modelseal seal.")
        return "\n".join(lines) + "\n"
    lines += [
        "single-stage:                      # examples/kubernetes/single-stage.yaml",
        "  initContainers:",
        f"    modelseal: {_resources(tree + WORKING_SET['run'] + S3_READER)}   # from s3://; "
        f"https:// or file://: {quantity(tree + WORKING_SET['run'])}",
        "  containers:",
        f"    serving: {{resources: {{limits: {{memory: {quantity(tree)}}}}}}}   # plus what the server itself needs",
        "  volumes:",
        f"    models: {{emptyDir: {{medium: Memory, sizeLimit: {quantity(tree)}}}}}",
    ]
    if tar is None:
        lines.append("# four-stage: the decrypted payload's size is unknown (give the .seal file, not stdin)")
        return "\n".join(lines) + "\n"
    lines += [
        "four-stage:                        # examples/kubernetes/four-stage.yaml",
        "  initContainers:",
        f"    fetch-key: {_resources(WORKING_SET['fetch-key'])}",
        f"    fetch-model: {_resources(WORKING_SET['fetch-model'] + S3_READER)}   # from s3://; ciphertext to disk",
        f"    decrypt: {_resources(tar + WORKING_SET['decrypt'])}",
        f"    unpack: {_resources(tar + tree + WORKING_SET['unpack'])}   # the tar is still in the pod while the tree is written",
        "  containers:",
        f"    serving: {{resources: {{limits: {{memory: {quantity(tree)}}}}}}}   # plus what the server itself needs",
        "  volumes:",
        "    secrets: {emptyDir: {medium: Memory, sizeLimit: 1Mi}}",
        f"    ciphertext: {{emptyDir: {{sizeLimit: {quantity(payload + info.get('prefix_bytes', 0) if isinstance(payload, int) else tar)}}}}}",
        f"    plaintext: {{emptyDir: {{medium: Memory, sizeLimit: {quantity(tar)}}}}}",
        f"    models: {{emptyDir: {{medium: Memory, sizeLimit: {quantity(tree)}}}}}",
    ]
    return "\n".join(lines) + "\n"
