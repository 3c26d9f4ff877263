"""Injection: a workload annotated with `modelseal.dev/*` (or given `modelseal inject`'s flags)
becomes one that delivers the sealed model over tmpfs, sized from the model's own header.

`inject()` is the one function behind `modelseal inject` and the admission
webhook (webhook.py answers with the JSON Patch from an object to what
`inject()` returns), so the two give the same pod for the same input by
construction. Its parts: params.py (what is asked, and its checks),
workloads.py (where each kind keeps its pod), sizes.py (the numbers, from the
header, by `inspect --resources`' rule), podspec.py (what is added, and what
is refused).
"""

from __future__ import annotations

import copy
from typing import Any, Callable

from .params import ANNOTATIONS, PREFIX, Checked, Images, Params, check
from .sizes import Numbers, SealedModel, numbers, read_model
from .workloads import KINDS, find
from . import podspec

__all__ = ["ANNOTATIONS", "KINDS", "PREFIX", "Checked", "Images", "Numbers", "Params", "SealedModel", "inject",
           "read_model"]


def inject(obj: Any, read: Callable[[Checked], SealedModel], given: Params = Params(),
           images: Images = Images()) -> Any:
    """`obj` with the model's delivery added, or `obj` itself when there is nothing to inject.

    Nothing to inject: a kind without a pod (workloads.KINDS), or one with no
    `modelseal.dev/*` annotation when no parameters are `given`. `given`
    (flags) wins over the annotations. `read` turns the checked parameters
    into what is known of the model (sizes.read_model: a ranged read of the
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
    podspec.apply(workload, checked, numbers(read(checked), checked.shape, checked.scheme), images)
    # Flags that override annotations are written back: the annotations stay the truth, and the
    # webhook, meeting the pods of this workload later, finds nothing to change.
    workload.annotate({PREFIX + note: getattr(given, name) for note, name in ANNOTATIONS.items()
                       if getattr(given, name)})
    return work
