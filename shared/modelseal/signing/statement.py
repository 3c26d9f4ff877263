"""The signed manifest: an in-toto v1 statement with the model_signing predicate.

v1.0 (`predicateType: https://model_signing/signature/v1.0`):

    subject:   [{name: MODEL_NAME, digest: {sha256: ROOT}}]
    predicate: {serialization: {method: files|shards, hash_type: sha256,
                                allow_symlinks, ignore_paths?, shard_size?},
                resources: [{name, algorithm, digest(hex)}, ...]}

ROOT is the SHA-256 of every resource digest, concatenated in the order
listed. `files` names each file by its POSIX path relative to the model
root (algorithm `sha256`); `shards` names `PATH:START:END` byte ranges of
`shard_size` (algorithm `sha256-sharded-SIZE`). `ignore_paths` are paths
relative to the root; a file at or under one is not part of the signature.

v0.1 (`https://model_signing/Digests/v0.1`, signatures made before
model_signing 1.0): one subject per file, {name: PATH, digest: {sha256}}, no
root digest, serialized by files.

The payload is parsed only after its signature verified, but it is still
input: a payload model_signing would reject is rejected here (exit 4).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from .. import untrusted
from ..errors import IntegrityError

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_V1 = "https://model_signing/signature/v1.0"
PREDICATE_V01 = "https://model_signing/Digests/v0.1"
HASH_TYPE = "sha256"
# What model_signing's signer leaves out by default (and records in ignore_paths).
GIT_PATHS = (".git", ".gitattributes", ".github", ".gitignore")
MAX_SHARD = 1 << 63  # a shard_size beyond any file

Items = tuple[tuple[str, str, bytes], ...]  # (resource name, algorithm, digest) of one file


def components(path: str) -> tuple[str, ...] | None:
    """A relative POSIX path as components, normalised like pathlib (`./a//b` is a/b);
    None for a path no file of an unpacked tree can have (absolute, or with `..`)."""
    if path.startswith("/"):
        return None
    parts = tuple(p for p in path.split("/") if p not in ("", "."))
    return None if ".." in parts else parts


def ignored(parts: tuple[str, ...], ignore: list[tuple[str, ...]]) -> bool:
    """At or under one of the ignored paths (by components, like PurePath.is_relative_to)."""
    return any(parts[: len(p)] == p for p in ignore)


@dataclass
class Manifest:
    method: str  # files | shards
    shard_size: int | None
    ignore_paths: list[tuple[str, ...]]
    files: dict[str, Items] = field(default_factory=dict)  # path -> its resources, in order
    model_name: str = ""
    _shards: set[str] = field(default_factory=set, repr=False, compare=False)  # names seen, while parsing

    def algorithm(self) -> str:
        return HASH_TYPE if self.method == "files" else f"{HASH_TYPE}-sharded-{self.shard_size}"


class _Bad(Exception):
    pass


def _get(obj: Any, key: str, kind: type | tuple[type, ...]) -> Any:
    if not isinstance(obj, dict) or not isinstance(obj.get(key), kind):
        raise _Bad(f"{key!r} is missing or of the wrong type")
    return obj[key]


def _digest(value: Any) -> bytes:
    if not isinstance(value, str) or len(value) != 64:
        raise _Bad("a sha256 digest is not 64 hex digits")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise _Bad("a sha256 digest is not hex") from None


def _add(m: Manifest, path: str, span: tuple[int, int] | None, algorithm: str, digest: bytes) -> None:
    """One resource, under its file's canonical path (resource names compare like model_signing's keys)."""
    parts = components(path)
    if parts is None:
        raise _Bad(f"resource {path!r} is not a relative path inside the model")
    key = "/".join(parts)
    if span is None and key in m.files:
        raise _Bad(f"file {key!r} is listed twice")
    name = key if span is None else f"{key}:{span[0]}:{span[1]}"
    if span is not None:
        if name in m._shards:
            raise _Bad(f"shard {name!r} is listed twice")
        m._shards.add(name)
    # Lists while parsing; parse() makes each a tuple (Items) before it returns.
    m.files.setdefault(key, []).append((name, algorithm, digest))  # type: ignore[attr-defined, arg-type]


def _v1(doc: dict) -> Manifest:
    subjects = _get(doc, "subject", list)
    if len(subjects) != 1:
        raise _Bad(f"expected one subject, got {len(subjects)}")
    root = _digest(_get(_get(subjects[0], "digest", dict), "sha256", str))
    predicate = _get(doc, "predicate", dict)
    ser = _get(predicate, "serialization", dict)
    method = _get(ser, "method", str)
    if method not in ("files", "shards"):
        raise _Bad(f"unsupported serialization method {method!r} (files, shards)")
    if _get(ser, "hash_type", str) != HASH_TYPE:
        raise _Bad(f"unsupported hash_type {ser['hash_type']!r} (modelseal verifies {HASH_TYPE})")
    shard_size = None
    if method == "shards":
        shard_size = _get(ser, "shard_size", (int, float))  # a protobuf Struct number: 1048576.0 (finite: JSON)
        if isinstance(shard_size, bool) or not 0 < shard_size < MAX_SHARD or shard_size != int(shard_size):
            raise _Bad("shard_size must be a positive integer")
        shard_size = int(shard_size)
    ignore = []
    ignore_paths = ser.get("ignore_paths")
    if ignore_paths is not None and not isinstance(ignore_paths, list):
        raise _Bad("ignore_paths is not a list")
    for p in ignore_paths or []:
        if not isinstance(p, str):
            raise _Bad("ignore_paths holds a non-string")
        parts = components(p)
        if parts is not None:  # absolute or climbing paths ignore nothing inside the model
            ignore.append(parts)
    m = Manifest(method, shard_size, ignore, model_name=str(_get(subjects[0], "name", str)))
    h = hashlib.sha256()
    for r in _get(predicate, "resources", list):
        name, digest = _get(r, "name", str), _digest(_get(r, "digest", str))
        h.update(digest)
        algorithm = _get(r, "algorithm", str)
        if method == "files":
            _add(m, name, None, algorithm, digest)
            continue
        fields = name.split(":")  # model_signing's shard names: exactly PATH:START:END
        try:
            span = (int(fields[1]), int(fields[2])) if len(fields) == 3 else None
        except ValueError:
            span = None
        if span is None:
            raise _Bad(f"shard {name!r} is not PATH:START:END")
        _add(m, fields[0], span, algorithm, digest)
    if h.digest() != root:
        raise _Bad("the subject digest is not the digest of the resources (an inconsistent manifest)")
    return m


def _v01(doc: dict) -> Manifest:
    m = Manifest("files", None, [], model_name="compat-undefined-not-present")
    for s in _get(doc, "subject", list):
        _add(m, _get(s, "name", str), None, HASH_TYPE, _digest(_get(_get(s, "digest", dict), HASH_TYPE, str)))
    return m


def parse(payload: bytes, where: str) -> Manifest:
    """The manifest of a verified in-toto payload; anything malformed is one IntegrityError.

    Parsed through untrusted.json_document: NaN and Infinity (which json.loads takes) and deep
    nesting are refused there, so no number below is ever infinite."""
    doc = untrusted.json_document(payload, f"{where}: bad signed manifest")
    try:
        if _get(doc, "_type", str) != STATEMENT_TYPE:
            raise _Bad(f"not an in-toto {STATEMENT_TYPE} statement")
        predicate_type = _get(doc, "predicateType", str)
        if predicate_type not in (PREDICATE_V1, PREDICATE_V01):
            raise _Bad(f"unknown predicate type {predicate_type!r}")
        m = _v1(doc) if predicate_type == PREDICATE_V1 else _v01(doc)
        m.files = {k: tuple(v) for k, v in m.files.items()}  # appended in linear time, then fixed
        m._shards.clear()
        return m
    except _Bad as e:
        raise IntegrityError(f"{where}: bad signed manifest: {e}") from None


def build(model_name: str, digests: list[tuple[str, bytes]], ignore_paths: list[str]) -> bytes:
    """A v1.0 statement for files serialized with sha256, resources in model_signing's order."""
    ordered = sorted(digests, key=lambda nd: tuple(nd[0].split("/")))  # PurePosixPath order
    root = hashlib.sha256(b"".join(d for _, d in ordered)).hexdigest()
    doc = {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": model_name, "digest": {"sha256": root}}],
        "predicateType": PREDICATE_V1,
        "predicate": {
            "serialization": {"method": "files", "hash_type": HASH_TYPE, "allow_symlinks": False,
                              "ignore_paths": sorted(ignore_paths)},
            "resources": [{"name": n, "algorithm": HASH_TYPE, "digest": d.hex()} for n, d in ordered],
        },
    }
    return json.dumps(doc, indent=2).encode()
