"""What every version of a .seal header holds (docs/FORMAT.md): the magic, the limits, the data
key's id, a wrapped key, the content sizes and the fixed fields.

Its own module, under sealfile (which reads either version) and header_v2
(version 2's recipients), so the key sources and the recipients that need a
data key's size, its id or a wrapped key do not import the reader that
dispatches to them.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, ClassVar

from . import untrusted
from .errors import IntegrityError, UsageError
from .streaming import AES256_GCM_HKDF_1MB

MAGIC = b"MSEAL"
MAX_HEADER = 65536
#: The longest prefix of either version (version 2's: magic, two lengths, two sections, the MAC), so a
#: reader that fetches the first bytes of a remote .seal (fetch-key --source, rewrap, an OCI push) has it all.
MAX_PREFIX = 6 + 4 + MAX_HEADER + 4 + MAX_HEADER + 32
ALG = "AES256_GCM_HKDF_1MB"
DATA_KEY_SIZE = 32
COMPRESSIONS = ("none", "gzip", "zstd", "xz", "bzip2")




def key_id(data_key: bytes) -> str:
    """A short public identifier of a data key, so a wrong key is named as such.

    Safe to publish because data keys are 256 random bits, never passphrases.
    """
    return hashlib.sha256(b"modelseal key id v1\x00" + data_key).hexdigest()[:16]


@dataclass
class WrappedKey:
    """The data key encrypted by a key-encryption key (envelope encryption)."""

    provider: str
    key_id: str
    ciphertext: bytes
    context: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "key_id": self.key_id,
            "ciphertext": base64.b64encode(self.ciphertext).decode(),
            "context": dict(self.context),
        }

    @classmethod
    def from_json(cls, obj: Any) -> "WrappedKey":
        bad = "bad header: malformed wrapped_key"
        if not isinstance(obj, dict):
            raise IntegrityError(f"{bad} (not a JSON object)")
        provider, kid, ciphertext = obj.get("provider"), obj.get("key_id"), obj.get("ciphertext")
        if not (isinstance(provider, str) and provider and isinstance(kid, str) and isinstance(ciphertext, str)):
            raise IntegrityError(f"{bad} (provider, key_id and ciphertext must be strings)")
        context = obj.get("context") or {}
        if not isinstance(context, dict) or not all(isinstance(v, str) for v in context.values()):
            raise IntegrityError(f"{bad} (context must map names to strings)")
        try:
            blob = base64.b64decode(ciphertext, validate=True)
        except ValueError:
            raise IntegrityError(f"{bad} (ciphertext is not base64)") from None
        return cls(provider=provider, key_id=kid, ciphertext=blob, context=dict(context))


@dataclass(frozen=True)
class Sizes:
    """What the payload unpacks to, recorded by `seal` (authenticated with the header).

    Stages check before their first write that the target filesystem and
    their memory limit hold this much; unpack holds the archive to it.
    None: not known when the file was sealed (stdin, an archive sealed as is).
    """

    tar_bytes: int | None = None  # the tar archive, before any compression
    file_bytes: int | None = None  # the regular files in it
    files: int | None = None  # how many regular files

    FIELDS = ("tar_bytes", "file_bytes", "files")

    def to_json(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in self.FIELDS if getattr(self, k) is not None}

    @classmethod
    def from_json(cls, content: dict[str, Any]) -> "Sizes":
        values: dict[str, int] = {}
        for k in cls.FIELDS:
            v = content.get(k)
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 1 << 63:
                raise IntegrityError(f"bad header: content.{k} is not a byte or file count")
            values[k] = v
        return cls(**values)


@dataclass
class Fixed:
    """What a .seal says about its model, bound to the payload for good: both versions' common fields.

    Version 2's fixed section is exactly this (docs/FORMAT.md); version 1's
    header is this plus its one key (Header). One set of reading rules for
    both: the header is read before it is authenticated (the key comes
    later), so every member is the type it must be or the header is
    malformed (exit 4), and values named in messages are quoted and
    shortened (untrusted.show).
    """

    compression: str = "none"
    content_type: str = "tar"
    name: str = ""
    version: str = ""
    created: str = ""
    sizes: Sizes = field(default_factory=Sizes)
    extra: dict[str, Any] = field(default_factory=dict)  # unknown members, kept as read

    #: The format version whose header this is, and the members it knows (the others go to `extra`).
    FORMAT: ClassVar[int] = 2
    KNOWN: ClassVar[frozenset[str]] = frozenset({"v", "alg", "segment_size", "content", "name", "version",
                                                 "created"})

    def __post_init__(self) -> None:
        if not self.created:
            self.created = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")

    @property
    def fixed(self) -> "Fixed":
        """The fields bound for good (a version 1 header is all of them; version 2's keeps them apart)."""
        return self

    def to_json(self) -> dict[str, Any]:
        obj: dict[str, Any] = dict(self.extra)
        obj.update({
            "v": self.FORMAT,
            "alg": ALG,
            "segment_size": AES256_GCM_HKDF_1MB.segment_size,
            "content": {"type": self.content_type, "compression": self.compression, **self.sizes.to_json()},
            "name": self.name,
            "version": self.version,
            "created": self.created,
        })
        return obj

    def encode(self) -> bytes:
        """The canonical bytes: keys sorted, no whitespace, ASCII with \\u escapes."""
        body = json.dumps(self.to_json(), separators=(",", ":"), sort_keys=True).encode("ascii")
        if len(body) > MAX_HEADER:
            raise UsageError(f"header is {len(body)} bytes, over the {MAX_HEADER}-byte limit")
        return body

    @classmethod
    def from_json(cls, obj: Any) -> Any:
        """Check a parsed header (module docstring: the reading rules); return it as this class."""
        if not isinstance(obj, dict):
            raise IntegrityError("bad header: not a JSON object")
        if not _is_int(obj.get("v"), cls.FORMAT):
            raise IntegrityError(f"bad header: header version {untrusted.show(obj.get('v'), 40)} in a "
                                 f"version {cls.FORMAT} file")
        if obj.get("alg") != ALG or not _is_int(obj.get("segment_size"), AES256_GCM_HKDF_1MB.segment_size):
            raise IntegrityError(f"bad header: unsupported algorithm {untrusted.show(obj.get('alg'), 60)}")
        content = obj.get("content") or {}
        if not isinstance(content, dict):
            raise IntegrityError("bad header: content is not a JSON object")
        compression = content.get("compression", "none")
        if not isinstance(compression, str) or compression not in COMPRESSIONS:
            raise IntegrityError(f"bad header: unsupported content compression {untrusted.show(compression, 40)}")
        texts = {name: untrusted.text(obj.get(name), f"bad header: {name}") for name in ("name", "version", "created")}
        return cls(compression=compression,
                   content_type=untrusted.text(content.get("type", "tar"), "bad header: content.type"),
                   sizes=Sizes.from_json(content), extra={k: v for k, v in obj.items() if k not in cls.KNOWN},
                   **texts, **cls._own_members(obj))

    @classmethod
    def _own_members(cls, obj: dict[str, Any]) -> dict[str, Any]:
        """A version's members beyond the common ones, checked (none in version 2's fixed section)."""
        return {}


def declared_payload(sizes: Sizes | None, compression: str) -> int | None:
    """The decrypted payload's length a header declares: its tar_bytes, for an uncompressed payload."""
    if sizes is not None and sizes.tar_bytes is not None and compression == "none":
        return sizes.tar_bytes
    return None


def _is_int(value: Any, expected: int) -> bool:
    """value is the integer `expected` (JSON true and 1.0 are not 1)."""
    return type(value) is int and value == expected



def check_data_key(data_key: bytes) -> None:
    if len(data_key) != DATA_KEY_SIZE:
        raise UsageError(f"data key must be {DATA_KEY_SIZE} bytes, got {len(data_key)}")
