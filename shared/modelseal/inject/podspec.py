"""What injection adds to a pod spec, and what it refuses to overwrite.

Added: the init container(s) of the stage shape (`run` alone, or fetch-key,
fetch-model, decrypt, unpack), each hardened (non-root 65532, read-only root,
no capabilities, no privilege escalation, seccomp RuntimeDefault) with its
memory request equal to its limit (tmpfs pages are real, README "Sizing");
the volumes with their sizeLimits (`medium: Memory` for keys and plaintext);
the model, mounted read-only into the serving container at the path asked
for. The serving container's memory limit must hold the model's pages, which
stay charged to the pod while it serves.

Everything added carries a reserved name (`modelseal`, `modelseal-*`), and
injecting again replaces those in place: injecting twice changes nothing,
and injecting with other parameters (another shape, another mount) leaves
only what the new ones ask for. Anything else that contradicts the injection
(a volume of a reserved name that is not what injection makes, a mount path
already taken, a memory limit below the model) is refused, never overwritten.
"""

from __future__ import annotations

from typing import Any

from ..errors import UsageError
from ..untrusted import show
from .params import Checked, Images, quantity_bytes
from .sizes import Numbers
from .workloads import Workload, name_of

INIT = "/modelseal"  # where the init containers mount the volumes
MODEL_DIR = "model"  # the model's directory inside the models volume: the serving container's subPath
SINGLE = {"run": "modelseal"}
FOUR = {s: f"modelseal-{s}" for s in ("fetch-key", "fetch-model", "decrypt", "unpack")}
RESERVED_CONTAINERS = (*SINGLE.values(), *FOUR.values())
VOLUMES = {role: f"modelseal-{role}" for role in ("models", "plaintext", "ciphertext", "secrets", "verify-key")}
MEMORY = ("models", "plaintext", "secrets")  # roles on memory-backed emptyDirs
CPU = {"run": ("1", "2"), "fetch-key": ("100m", "1"), "fetch-model": ("500m", "2"), "decrypt": ("1", "2"),
       "unpack": ("1", "2")}  # (request, limit), as the examples have them
UID = 65532


def hardened() -> dict[str, Any]:
    """The init containers' securityContext: restricted Pod Security, whatever the pod's own says."""
    return {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]},
            "runAsNonRoot": True, "runAsUser": UID, "runAsGroup": UID, "seccompProfile": {"type": "RuntimeDefault"}}


def mi(n: int) -> str:
    return f"{n >> 20}Mi"


def _mount(role: str, read_only: bool = False) -> dict[str, Any]:
    m: dict[str, Any] = {"name": VOLUMES[role], "mountPath": f"{INIT}/{role}"}
    if read_only:
        m["readOnly"] = True
    return m


def _container(stage: str, name: str, images: Images, args: list[str], mounts: list[dict[str, Any]],
               memory: int) -> dict[str, Any]:
    cpu_request, cpu_limit = CPU[stage]
    return {"name": name, "image": images.of(stage), "args": args, "volumeMounts": mounts,
            "securityContext": hardened(),
            "resources": {"requests": {"cpu": cpu_request, "memory": mi(memory)},
                          "limits": {"cpu": cpu_limit, "memory": mi(memory)}}}


def init_containers(p: Checked, n: Numbers, images: Images) -> list[dict[str, Any]]:
    key = ["--key-uri", p.key_uri] if p.key_uri else ["--identity", p.identity or ""]
    model = f"{INIT}/models/{MODEL_DIR}"
    verify, verify_mount = [], []
    if p.verify_key:
        verify = ["--verify-key", f"{INIT}/verify-key/{p.verify_key[1]}"]
        verify_mount = [_mount("verify-key", read_only=True)]
    if p.shape == "single":
        return [_container("run", SINGLE["run"], images, ["--source", p.source, *key, "-o", model, *verify],
                           [_mount("models"), *verify_mount], n.memory["run"])]
    ciphertext, plaintext = f"{INIT}/ciphertext/model.seal", f"{INIT}/plaintext/model.tar"
    secret = f"{INIT}/secrets/key"
    return [
        _container("fetch-key", FOUR["fetch-key"], images, [*key, "--source", p.source, "-o", secret],
                   [_mount("secrets")], n.memory["fetch-key"]),
        _container("fetch-model", FOUR["fetch-model"], images, ["--source", p.source, "-o", ciphertext],
                   [_mount("ciphertext")], n.memory["fetch-model"]),
        _container("decrypt", FOUR["decrypt"], images,
                   ["--in", ciphertext, "--key", secret, "-o", plaintext, "--delete-key", "--delete-input"],
                   [_mount("secrets"), _mount("ciphertext"), _mount("plaintext")], n.memory["decrypt"]),
        _container("unpack", FOUR["unpack"], images, ["--in", plaintext, "-o", model, "--delete-input", *verify],
                   [_mount("plaintext"), _mount("models"), *verify_mount], n.memory["unpack"]),
    ]


def volumes(p: Checked, n: Numbers) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for role, size in n.volumes.items():
        empty: dict[str, Any] = {"medium": "Memory"} if role in MEMORY else {}
        out[VOLUMES[role]] = {"name": VOLUMES[role], "emptyDir": {**empty, "sizeLimit": mi(size)}}
    if p.verify_key:
        name, key = p.verify_key
        out[VOLUMES["verify-key"]] = {"name": VOLUMES["verify-key"],
                                      "configMap": {"name": name, "items": [{"key": key, "path": key}]}}
    return out


def _list(spec: dict[str, Any], key: str, where: str) -> list[Any]:
    value = spec.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise UsageError(f"{where}: {key} is not a list of objects")
    return value


def _check_existing_volume(v: dict[str, Any], where: str) -> None:
    """A volume of a reserved name must be the kind injection makes; anything else is the user's."""
    name = v.get("name")
    role = next(r for r, n in VOLUMES.items() if n == name)
    if role == "verify-key":
        ok = isinstance(v.get("configMap"), dict)
        kind = "a configMap volume"
    else:
        empty = v.get("emptyDir")
        ok = isinstance(empty, dict) and set(v) <= {"name", "emptyDir"} and \
            (empty.get("medium") == "Memory") == (role in MEMORY)
        kind = "a memory emptyDir (medium: Memory)" if role in MEMORY else "an emptyDir on disk"
    if not ok:
        raise UsageError(f"{where}: the pod already has a volume named {name} that is not {kind}; "
                         "modelseal-* volume names are reserved for the injected model")


def _replace_ours(items: list[dict[str, Any]], ours: list[dict[str, Any]], reserved: tuple[str, ...],
                  ) -> list[dict[str, Any]]:
    """`items` with every reserved-name entry removed and `ours` at the place of the first one (else at the end)."""
    at = next((i for i, c in enumerate(items) if c.get("name") in reserved), None)
    kept = [c for c in items if c.get("name") not in reserved]
    if at is None:
        return kept + ours
    at -= sum(1 for c in items[:at] if c.get("name") in reserved)
    return kept[:at] + ours + kept[at:]


def _serving_mount(c: dict[str, Any], mount: str, where: str) -> None:
    mounts = _list(c, "volumeMounts", where)
    ours = {"name": VOLUMES["models"], "mountPath": mount, "subPath": MODEL_DIR, "readOnly": True}
    for m in mounts:
        if m.get("name") != VOLUMES["models"] and m.get("mountPath", "").rstrip("/") == mount:
            raise UsageError(f"{where}: container {show(name_of(c), 80)} already mounts volume "
                             f"{show(m.get('name'), 80)} at {mount}: choose another {'modelseal.dev/mount'}")
    c["volumeMounts"] = _replace_ours(mounts, [ours], (VOLUMES["models"],))


def _serving_memory(c: dict[str, Any], need: int, where: str) -> None:
    """The model's pages stay charged to the pod while it serves: the serving limit must hold them."""
    resources = c.get("resources")
    if resources is None:
        resources = c["resources"] = {}
    if not isinstance(resources, dict):
        raise UsageError(f"{where}: container {show(name_of(c), 80)}: resources is not an object")
    limits = resources.get("limits") or {}
    requests = resources.get("requests") or {}
    if not isinstance(limits, dict) or not isinstance(requests, dict):
        raise UsageError(f"{where}: container {show(name_of(c), 80)}: resources.limits/requests is not an object")
    name = show(name_of(c), 80)
    if "memory" in limits:
        limit = quantity_bytes(limits["memory"], f"{where}: container {name}: resources.limits.memory")
        if limit < need:
            raise UsageError(
                f"{where}: container {name} has a memory limit of {limits['memory']}, below the model's "
                f"{mi(need)} of tmpfs pages, which stay charged to the pod while it serves: raise "
                f"resources.limits.memory to at least {mi(need)} plus what the server itself uses")
        return
    # No limit: nothing caps the pod, but the scheduler must still find room for the model's pages.
    if "memory" not in requests or quantity_bytes(requests["memory"], f"{where}: container {name}: "
                                                                       "resources.requests.memory") < need:
        requests["memory"] = mi(need)
        resources["requests"] = requests


def apply(w: Workload, p: Checked, n: Numbers, images: Images) -> None:
    """Inject into `w.spec` in place (see the module docstring); UsageError on a contradiction."""
    spec, where = w.spec, w.where
    apps = w.containers()
    clash = [name_of(c) for c in apps if name_of(c) in RESERVED_CONTAINERS]
    if clash:
        raise UsageError(f"{where}: container {show(clash[0], 80)} has a name reserved for modelseal's init "
                         "containers")
    serving = next(c for c in apps if name_of(c) == p.container)
    for v in _list(spec, "volumes", where):
        if v.get("name") in VOLUMES.values():
            _check_existing_volume(v, where)
    _serving_mount(serving, p.mount, where)
    _serving_memory(serving, n.serving, where)
    spec["initContainers"] = _replace_ours(_list(spec, "initContainers", where), init_containers(p, n, images),
                                           RESERVED_CONTAINERS)
    ours = volumes(p, n)
    spec["volumes"] = _replace_ours(_list(spec, "volumes", where), list(ours.values()), tuple(VOLUMES.values()))
