"""The `.seal` file format, version 1 (docs/FORMAT.md).

    magic "MSEAL\\x01" || uint32_be(hlen) || header (hlen bytes of JSON) || payload

The payload is a Tink AES256_GCM_HKDF_1MB stream whose associated data is the
whole prefix before it, so any change to the header fails on segment 0.
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

from . import untrusted
from .errors import IntegrityError, UsageError
from .streaming import (
    AES256_GCM_HKDF_1MB,
    DecryptingReader,
    EncryptingWriter,
    Readable,
    Writable,
    _read_full,
)

MAGIC = b"MSEAL"
VERSION = 1
MAX_HEADER = 65536
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
class Header:
    key_id: str
    compression: str = "none"
    content_type: str = "tar"
    name: str = ""
    version: str = ""
    created: str = ""
    wrapped_key: WrappedKey | None = None
    sizes: Sizes = field(default_factory=Sizes)
    extra: dict[str, Any] = field(default_factory=dict)  # unknown fields, kept as read

    def __post_init__(self) -> None:
        if not self.created:
            self.created = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")

    def to_json(self) -> dict[str, Any]:
        obj: dict[str, Any] = dict(self.extra)
        obj.update(
            {
                "v": VERSION,
                "alg": ALG,
                "segment_size": AES256_GCM_HKDF_1MB.segment_size,
                "key_id": self.key_id,
                "wrapped_key": self.wrapped_key.to_json() if self.wrapped_key else None,
                "content": {"type": self.content_type, "compression": self.compression, **self.sizes.to_json()},
                "name": self.name,
                "version": self.version,
                "created": self.created,
            }
        )
        return obj

    @classmethod
    def from_json(cls, obj: Any) -> "Header":
        """Check a parsed header; every field is the type it must be, or the header is malformed.

        The header is not authenticated yet when this runs (the key comes later),
        so values named in messages are quoted and shortened (untrusted.show).
        """
        if not isinstance(obj, dict):
            raise IntegrityError("bad header: not a JSON object")
        if not _is_int(obj.get("v"), VERSION):
            raise IntegrityError(f"bad header: unsupported header version {untrusted.show(obj.get('v'), 40)}")
        if obj.get("alg") != ALG or not _is_int(obj.get("segment_size"), AES256_GCM_HKDF_1MB.segment_size):
            raise IntegrityError(f"bad header: unsupported algorithm {untrusted.show(obj.get('alg'), 60)}")
        content = obj.get("content") or {}
        if not isinstance(content, dict):
            raise IntegrityError("bad header: content is not a JSON object")
        compression = content.get("compression", "none")
        if not isinstance(compression, str) or compression not in COMPRESSIONS:
            raise IntegrityError(f"bad header: unsupported content compression {untrusted.show(compression, 40)}")
        fields = {}
        for name in ("key_id", "name", "version", "created"):
            fields[name] = untrusted.text(obj.get(name), f"bad header: {name}")
        content_type = untrusted.text(content.get("type", "tar"), "bad header: content.type")
        known = {"v", "alg", "segment_size", "key_id", "wrapped_key", "content", "name", "version", "created"}
        wrapped = obj.get("wrapped_key")
        return cls(
            compression=compression,
            content_type=content_type,
            wrapped_key=WrappedKey.from_json(wrapped) if wrapped is not None else None,
            sizes=Sizes.from_json(content),
            extra={k: v for k, v in obj.items() if k not in known},
            **fields,
        )

    def log_fields(self) -> dict[str, Any]:
        """What a log line may say about a header that is not authenticated yet: quoted, shortened."""
        return {"name": untrusted.shorten(self.name, 80), "version": untrusted.shorten(self.version, 40),
                "key_id": untrusted.shorten(self.key_id, 40),
                "wrapped": untrusted.shorten(self.wrapped_key.provider, 40) if self.wrapped_key else None}


def _is_int(value: Any, expected: int) -> bool:
    """value is the integer `expected` (JSON true and 1.0 are not 1)."""
    return type(value) is int and value == expected


def encode_prefix(header: Header) -> bytes:
    body = json.dumps(header.to_json(), separators=(",", ":"), sort_keys=True).encode()
    if len(body) > MAX_HEADER:
        raise UsageError(f"header is {len(body)} bytes, over the {MAX_HEADER}-byte limit")
    return MAGIC + bytes([VERSION]) + struct.pack(">I", len(body)) + body


def read_prefix(src: Readable) -> tuple[Header, bytes]:
    """Read and parse magic, length and header; return the header and the raw prefix."""
    fixed = bytearray(len(MAGIC) + 1 + 4)
    n = _read_full(src, memoryview(fixed))
    if n == 0:
        raise IntegrityError("empty input: not a .seal file")
    if n < len(MAGIC) or fixed[: len(MAGIC)] != MAGIC:
        raise IntegrityError("not a .seal file: bad magic")
    if n < len(MAGIC) + 1:
        raise IntegrityError("truncated: input ends inside the magic")
    if fixed[len(MAGIC)] != VERSION:
        raise IntegrityError(f"unsupported .seal format version {fixed[len(MAGIC)]}")
    if n < len(fixed):
        raise IntegrityError("truncated: input ends inside the header length")
    (hlen,) = struct.unpack(">I", fixed[-4:])
    if hlen > MAX_HEADER:
        raise IntegrityError(f"bad header: length {hlen} is over the {MAX_HEADER}-byte limit")
    body = bytearray(hlen)
    if _read_full(src, memoryview(body)) < hlen:
        raise IntegrityError("truncated: input ends inside the header")
    obj = untrusted.json_document(bytes(body), "bad header")
    return Header.from_json(obj), bytes(fixed) + bytes(body)


def open_sealed(src: Readable, key_for: Callable[[Header], bytes]) -> tuple[Header, DecryptingReader]:
    """Parse the prefix, ask `key_for` for the data key, return a plaintext reader.

    `key_for` sees the header first so envelope keys can be unwrapped from it.
    """
    header, prefix = read_prefix(src)
    data_key = key_for(header)
    check_data_key(data_key)
    if header.key_id and header.key_id != key_id(data_key):
        raise IntegrityError(
            f"wrong key (or tampered header): the file was sealed with key id {untrusted.show(header.key_id, 40)}, "
            f"the key given has id {key_id(data_key)}"
        )
    return header, DecryptingReader(src, data_key, prefix, AES256_GCM_HKDF_1MB)


def seal_writer(out: Writable, header: Header, data_key: bytes) -> EncryptingWriter:
    """Write the prefix to `out`; return the writer for the plaintext."""
    check_data_key(data_key)
    header.key_id = key_id(data_key)
    prefix = encode_prefix(header)
    out.write(prefix)
    return EncryptingWriter(out, data_key, prefix, AES256_GCM_HKDF_1MB)


def check_data_key(data_key: bytes) -> None:
    if len(data_key) != DATA_KEY_SIZE:
        raise UsageError(f"data key must be {DATA_KEY_SIZE} bytes, got {len(data_key)}")
