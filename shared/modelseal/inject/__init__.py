"""Injection: a workload annotated with `modelseal.dev/*` (or given `modelseal inject`'s flags)
becomes one that delivers the sealed model over tmpfs, sized from the model's own header.

`inject()` is the one function behind `modelseal inject` (inject_documents())
and the admission webhook (webhook.py answers with the JSON Patch from an
object to what `inject()` returns), so the two give the same pod for the
same input by construction. Its parts: params.py (what is asked, and its
checks), workloads.py (where each kind keeps its pod), sizes.py (the
numbers: placement.shapes(), what `inspect --resources` prints), podspec.py
(what is added, and what is refused), documents.py (YAML in and out).
"""

from __future__ import annotations

import copy
from typing import Any, Callable

from ..connection import Connection
from ..errors import UsageError
from ..placement import Shapes
from . import documents, podspec
from .params import ANNOTATIONS, PREFIX, Checked, Images, Params, check
from .sizes import Numbers, model_shapes, numbers
from .workloads import KINDS, find

__all__ = ["ANNOTATIONS", "KINDS", "PREFIX", "Checked", "Images", "Numbers", "Params", "inject", "inject_documents",
           "model_shapes"]


def inject(obj: Any, read: Callable[[Checked], Shapes], given: Params = Params(),
           images: Images = Images()) -> Any:
    """`obj` with the model's delivery added, or `obj` itself when there is nothing to inject.

    Nothing to inject: a kind without a pod (workloads.KINDS), or one with no
    `modelseal.dev/*` annotation when no parameters are `given`. `given`
    (flags) wins over the annotations. `read` turns the checked parameters
    into what the model needs (sizes.model_shapes: a ranged read of the
    source, a local .seal, or modelseal.dev/size). Raises UsageError (one
    line, naming the object) when the workload contradicts what the model
    needs; `obj` is never modified. Where the workload is annotated, the
    annotations given as flags are updated to the flags' values.
    """
    work = copy.deepcopy(obj)
    workload = find(work)
    if workload is None or not (workload.annotated() or given.given()):
        return obj
    params = given.over(Params.from_annotations(workload.annotations, workload.where))
    checked = check(params, workload.where, containers=workload.names())
    podspec.apply(workload, checked, numbers(read(checked), checked.shape, checked.source), images)
    # Flags that override annotations are written back: the annotations stay the truth, and the
    # webhook, meeting the pods of this workload later, finds nothing to change.
    workload.annotate({PREFIX + note: getattr(given, name) for note, name in ANNOTATIONS.items()
                       if getattr(given, name)})
    return work


def inject_documents(path: str, seal: str | None, given: Params, images: Images, connection: Connection
                     ) -> tuple[str, int]:
    """`modelseal inject`: the YAML documents of `path` (`-`: stdin), each injected; (the YAML, how many).

    The model's header is read once per source (a ranged read, or `seal`), however many workloads
    name it; the YAML is returned only once every document is done, so a refusal prints nothing.
    """
    if seal == "-" and path == "-":
        raise UsageError("--seal - and -f - both read standard input: give one of them as a file")
    cache: dict[tuple[str, int | None], Shapes] = {}

    def read(checked: Checked) -> Shapes:
        key = (checked.source, checked.size)
        if key not in cache:
            cache[key] = model_shapes(checked, connection, seal)
        return cache[key]

    out = [inject(doc, read, given, images) for doc in documents.load(path)]
    return documents.dump(out), len(out)
