"""`modelseal inspect --resources`: the numbers of pods.shapes() as YAML with comments, for the example pod specs."""

from __future__ import annotations

from typing import Any

from .. import untrusted
from ..errors import UsageError
from ..sealfile import Fixed
from ..sources import parallel_schemes
from .need import MIB, mib, quantity
from .pods import shapes


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


def advice(header: Fixed, payload_bytes: int | None, prefix_bytes: int = 0) -> str:
    """YAML (with comments) giving limits and sizeLimits for the example pod specs' shapes."""
    s = shapes(header, payload_bytes, prefix_bytes)
    lines = [f"# {_comment(header.name or 'model', 80)} {_comment(header.version or '', 40)}".rstrip(),
             f"# unpacked: {s.tree_text}",
             f"# decrypted payload ({_comment(header.compression, 20)} tar): "
             + (mib(s.plaintext) if s.plaintext is not None else "unknown (read from stdin)"),
             "# tmpfs pages count against the memory limit of the container that writes them, and stay",
             "# in the pod until deleted (README.md, Sizing). Memory requests equal limits: the pages are real.",
             ""]
    one = s.single_stage
    if one is None:
        lines.append("# Cannot size the pod without the model's unpacked size: reseal it with modelseal seal.")
        return "\n".join(lines) + "\n"
    parallel = ", ".join(f"{scheme}://" for scheme in parallel_schemes())  # read in parallel parts in flight
    lines += [
        "single-stage:                      # examples/kubernetes/single-stage.yaml",
        "  initContainers:",
        f"    modelseal: {_resources(one.init_memory_s3)}   # from {parallel}; "
        f"other sources: {quantity(one.init_memory)}",
        "  containers:",
        f"    serving: {{resources: {{limits: {{memory: {quantity(one.serving_memory)}}}}}}}   "
        "# plus what the server itself needs",
        "  volumes:",
        f"    models: {{emptyDir: {{medium: Memory, sizeLimit: {quantity(one.models_volume)}}}}}",
    ]
    four = s.four_stage
    if four is None:
        lines.append("# four-stage: the decrypted payload's size is unknown (give the .seal file, not stdin)")
        return "\n".join(lines) + "\n"
    lines += [
        "four-stage:                        # examples/kubernetes/four-stage.yaml",
        "  initContainers:",
        f"    fetch-key: {_resources(four.fetch_key_memory)}",
        f"    fetch-model: {_resources(four.fetch_model_memory)}   # from s3://; ciphertext to disk",
        f"    decrypt: {_resources(four.decrypt_memory)}",
        f"    unpack: {_resources(four.unpack_memory)}   # the tar is still in the pod while the tree is written",
        "  containers:",
        f"    serving: {{resources: {{limits: {{memory: {quantity(four.serving_memory)}}}}}}}   "
        "# plus what the server itself needs",
        "  volumes:",
        f"    secrets: {{emptyDir: {{medium: Memory, sizeLimit: {four.secrets_volume // MIB}Mi}}}}",
        f"    ciphertext: {{emptyDir: {{sizeLimit: {quantity(four.ciphertext_volume)}}}}}",
        f"    plaintext: {{emptyDir: {{medium: Memory, sizeLimit: {quantity(four.plaintext_volume)}}}}}",
        f"    models: {{emptyDir: {{medium: Memory, sizeLimit: {quantity(four.models_volume)}}}}}",
    ]
    return "\n".join(lines) + "\n"


#: The names examples/kubernetes/single-stage.yaml gives its init container, serving container and volume:
#: a strategic-merge patch merges containers and volumes by name.
INIT, SERVING, VOLUME = "modelseal", "serving", "models"


def numbers(header: Fixed, payload_bytes: int | None, prefix_bytes: int = 0) -> dict[str, Any]:
    """`inspect --resources -o json`: the same numbers as advice(), as Kubernetes quantities."""
    s = shapes(header, payload_bytes, prefix_bytes)
    out: dict[str, Any] = {"tree_bytes": s.tree, "plaintext_bytes": s.plaintext, "single_stage": None,
                           "four_stage": None}
    if s.single_stage is not None:
        out["single_stage"] = {k: quantity(v) for k, v in vars(s.single_stage).items()}
    if s.four_stage is not None:
        out["four_stage"] = {k: quantity(v) if k != "secrets_volume" else f"{v // MIB}Mi"
                             for k, v in vars(s.four_stage).items()}
    return out


def patch(header: Fixed, payload_bytes: int | None, prefix_bytes: int = 0, *, kind: str = "Deployment",
          parallel: bool = True, workload: str | None = None) -> dict[str, Any]:
    """`inspect --resources -o patch`: a strategic-merge patch setting the single-stage init container's memory
    and the models volume's sizeLimit (`kubectl patch deployment NAME --patch-file F`, or a kustomize patch).
    The serving container is left alone: its limit is the tree plus what the server needs, which only its
    owner knows (patch_text() says the tree's share in a comment)."""
    one = shapes(header, payload_bytes, prefix_bytes).single_stage
    if one is None:
        raise UsageError("cannot size the pod: the .seal header records no unpacked size (reseal it with "
                         "modelseal seal)")
    init = quantity(one.init_memory_s3 if parallel else one.init_memory)
    spec = {
        "initContainers": [{"name": INIT, "resources": {"requests": {"memory": init}, "limits": {"memory": init}}}],
        "volumes": [{"name": VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": quantity(one.models_volume)}}],
    }
    doc: dict[str, Any] = {}
    if workload:  # kustomize finds what a patch applies to by these; `kubectl patch` is told on its command line
        doc = {"apiVersion": "apps/v1" if kind == "Deployment" else "v1", "kind": kind, "metadata": {"name": workload}}
    doc["spec"] = {"template": {"spec": spec}} if kind == "Deployment" else spec
    return doc


def patch_text(header: Fixed, payload_bytes: int | None, prefix_bytes: int = 0, *, kind: str = "Deployment",
               parallel: bool = True, workload: str | None = None) -> str:
    """patch() as YAML-readable JSON, after comments naming what it is for and the serving container's share."""
    import json

    one = shapes(header, payload_bytes, prefix_bytes).single_stage
    doc = patch(header, payload_bytes, prefix_bytes, kind=kind, parallel=parallel, workload=workload)
    assert one is not None  # patch() refused otherwise
    return "\n".join([
        f"# modelseal inspect --resources -o patch: {_comment(header.name or 'model', 80)} "
        f"{_comment(header.version or '', 40)}".rstrip(),
        f"# for a {kind} shaped like examples/kubernetes/single-stage.yaml (init container {INIT!r}, volume "
        f"{VOLUME!r}):",
        f"#   kubectl patch {kind.lower()} {workload or 'NAME'} --type strategic --patch-file THIS"
        + (", or a kustomize patch" if workload else " (for kustomize: inspect --workload NAME)"),
        f"# the {SERVING!r} container's memory limit: {quantity(one.serving_memory)} for the model's pages, plus what "
        "the server itself needs",
        json.dumps(doc, indent=2), ""])
