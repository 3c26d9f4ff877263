"""Where a workload keeps its pod: the kinds injection knows, and their annotations.

A Pod is its own pod spec; Deployment, StatefulSet, DaemonSet, ReplicaSet and
Job keep one in `spec.template`, a CronJob in its job template, and a KServe
InferenceService in `spec.predictor` (a PodSpec with KServe's fields beside
it: a custom predictor's `containers`, or the `model` container). Any other
kind is passed through untouched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import UsageError
from ..untrusted import show
from .params import PREFIX

TEMPLATED = ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job")
KINDS = ("Pod", *TEMPLATED, "CronJob", "InferenceService")
#: KServe's name for the container of a predictor's `model` (its ModelSpec).
KSERVE_CONTAINER = "kserve-container"


@dataclass
class Workload:
    """One object's pod spec (a live reference into the object) and its `modelseal.dev/*` annotations."""

    where: str  # "Deployment/name", for messages
    spec: dict[str, Any]
    annotations: dict[str, Any]
    model_container: dict[str, Any] | None = None  # an InferenceService's spec.predictor.model
    places: tuple[dict[str, Any], ...] = ()  # the live annotation maps that hold modelseal.dev/* keys

    def annotate(self, values: dict[str, str]) -> None:
        """Set `values` wherever the workload keeps its modelseal.dev/* annotations (so they stay the truth)."""
        for place in self.places:
            place.update(values)

    def containers(self) -> list[dict[str, Any]]:
        found = list(self.spec.get("containers") or [])
        if self.model_container is not None:
            found.append(self.model_container)
        return found

    def names(self) -> list[str]:
        """The app containers' names (a predictor's `model` is KServe's kserve-container unless named)."""
        return [name_of(c) for c in self.containers()]

    def annotated(self) -> bool:
        return any(isinstance(k, str) and k.startswith(PREFIX) for k in self.annotations)


def name_of(container: Any) -> str:
    if not isinstance(container, dict):
        raise UsageError("a container is not an object")
    name = container.get("name", KSERVE_CONTAINER)
    return name if isinstance(name, str) else ""


def _object(value: Any, where: str, path: str) -> dict[str, Any]:
    """A member that must be a JSON object (created empty when absent)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UsageError(f"{where}: {path} is not an object")
    return value


def _member(parent: dict[str, Any], key: str, where: str, path: str) -> dict[str, Any]:
    value = _object(parent.get(key), where, path)
    parent[key] = value
    return value


def _annotations(meta: Any, where: str, path: str) -> dict[str, Any]:
    return _object(_object(meta, where, path).get("annotations"), where, path + ".annotations")


def _places(*maps: dict[str, Any]) -> tuple[dict[str, Any], ...]:
    return tuple(m for m in maps if any(isinstance(k, str) and k.startswith(PREFIX) for k in m))


def find(obj: Any) -> Workload | None:
    """The workload in `obj` (modified in place when injected), or None for a kind injection leaves alone."""
    if not isinstance(obj, dict):
        raise UsageError("the object is not a JSON/YAML mapping")
    kind = obj.get("kind")
    if kind not in KINDS:
        return None
    meta = _object(obj.get("metadata"), str(kind), "metadata")
    name = meta.get("name") or meta.get("generateName") or ""
    where = f"{kind}/{show(name, 80)[1:-1]}" if name else str(kind)
    own = _annotations(meta, where, "metadata")
    spec = _member(obj, "spec", where, "spec")
    if kind == "Pod":
        return Workload(where, spec, dict(own), places=_places(own))
    if kind == "InferenceService":
        predictor = _member(spec, "predictor", where, "spec.predictor")
        model = predictor.get("model")
        if model is not None:
            model = _object(model, where, "spec.predictor.model")
        return Workload(where, predictor, dict(own), model, _places(own))
    if kind == "CronJob":
        spec = _member(_member(spec, "jobTemplate", where, "spec.jobTemplate"), "spec", where,
                       "spec.jobTemplate.spec")
        prefix = "spec.jobTemplate.spec.template"
    else:
        prefix = "spec.template"
    template = _member(spec, "template", where, prefix)
    inner = _annotations(template.get("metadata"), where, prefix + ".metadata")
    merged = dict(own)
    for key, value in inner.items():
        if isinstance(key, str) and key.startswith(PREFIX) and key in own and own[key] != value:
            raise UsageError(f"{where}: annotation {key} differs between metadata and {prefix}.metadata")
        merged[key] = value
    return Workload(where, _member(template, "spec", where, prefix + ".spec"), merged, places=_places(own, inner))
