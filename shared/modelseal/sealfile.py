"""The `.seal` file format (docs/FORMAT.md): what both versions share, version 1, and reading either.

    version 1: "MSEAL" 0x01 || uint32_be(hlen) || header (JSON: Fixed, key_id, wrapped_key) || payload
    version 2: "MSEAL" 0x02 || uint32_be(flen) || fixed (JSON: Fixed) || recipients || header MAC || payload
               (modelseal.header_v2)

The payload is a Tink AES256_GCM_HKDF_1MB stream. Version 1 binds its whole
prefix to it as associated data, so any change to the header fails on
segment 0; version 2 binds the fixed fields only, and its recipient list by
a MAC keyed from the data key. `seal` writes version 2; readers open both
through read_prefix, the one place that dispatches on the version byte.
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Union

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

if TYPE_CHECKING:
    from .header_v2 import Header as HeaderV2

MAGIC = b"MSEAL"
VERSION = 1
MAX_HEADER = 65536
#: The longest prefix of either version (version 2's: magic, two lengths, two sections, the MAC), so a
#: reader that fetches the first bytes of a remote .seal (fetch-key --source, rewrap, an OCI push) has it all.
MAX_PREFIX = 6 + 4 + MAX_HEADER + 4 + MAX_HEADER + 32
ALG = "AES256_GCM_HKDF_1MB"
DATA_KEY_SIZE = 32
COMPRESSIONS = ("none", "gzip", "zstd", "xz", "bzip2")


#: A header as read_prefix returns it: version 1's, or version 2's (header_v2.Header).
AnyHeader = Union["Header", "HeaderV2"]


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


@dataclass
class Header(Fixed):
    """A version 1 header: the common fields and the file's one key (its id, and how it is wrapped, if it is).

    Version 1 binds the whole prefix to the payload: `raw`, as read, is the associated data.
    """

    key_id: str = ""
    wrapped_key: WrappedKey | None = None
    raw: bytes = field(default=b"", repr=False, compare=False)  # the prefix as read (empty: made to be written)

    FORMAT: ClassVar[int] = VERSION
    KNOWN: ClassVar[frozenset[str]] = Fixed.KNOWN | {"key_id", "wrapped_key"}

    def to_json(self) -> dict[str, Any]:
        obj = super().to_json()
        obj.update({"key_id": self.key_id, "wrapped_key": self.wrapped_key.to_json() if self.wrapped_key else None})
        return obj

    @classmethod
    def _own_members(cls, obj: dict[str, Any]) -> dict[str, Any]:
        wrapped = obj.get("wrapped_key")
        return {"key_id": untrusted.text(obj.get("key_id"), "bad header: key_id"),
                "wrapped_key": WrappedKey.from_json(wrapped) if wrapped is not None else None}

    @property
    def aad(self) -> bytes:
        """The payload's associated data: the whole prefix, as read."""
        return self.raw

    @property
    def prefix_size(self) -> int:
        return len(self.raw)

    def log_fields(self) -> dict[str, Any]:
        """What a log line may say about a header that is not authenticated yet: quoted, shortened."""
        return {"name": untrusted.shorten(self.name, 80), "version": untrusted.shorten(self.version, 40),
                "key_id": untrusted.shorten(self.key_id, 40),
                "wrapped": untrusted.shorten(self.wrapped_key.provider, 40) if self.wrapped_key else None}


def _is_int(value: Any, expected: int) -> bool:
    """value is the integer `expected` (JSON true and 1.0 are not 1)."""
    return type(value) is int and value == expected


def encode_prefix(header: Header) -> bytes:
    """A version 1 prefix (tests and tools: `seal` writes version 2)."""
    body = Header.encode(header)
    return MAGIC + bytes([VERSION]) + struct.pack(">I", len(body)) + body


def read_prefix(src: Readable) -> tuple[AnyHeader, bytes]:
    """Read and check a .seal prefix of either version; return its header and the prefix's bytes as stored.

    The one place that reads the magic and dispatches on the version byte:
    version 1 here, version 2 in header_v2. Each length is checked against
    its limit before its bytes are read.
    """
    magic = bytearray(len(MAGIC) + 1)
    n = _read_full(src, memoryview(magic))
    if n == 0:
        raise IntegrityError("empty input: not a .seal file")
    if n < len(MAGIC) or magic[: len(MAGIC)] != MAGIC:
        raise IntegrityError("not a .seal file: bad magic")
    if n < len(magic):
        raise IntegrityError("truncated: input ends inside the magic")
    if magic[-1] == 2:
        from . import header_v2

        header = header_v2.read_after_magic(src)
        return header, header.encode()
    if magic[-1] != VERSION:
        raise IntegrityError(f"unsupported .seal format version {magic[-1]}")
    length = bytearray(4)
    if _read_full(src, memoryview(length)) < 4:
        raise IntegrityError("truncated: input ends inside the header length")
    (hlen,) = struct.unpack(">I", length)
    if hlen > MAX_HEADER:
        raise IntegrityError(f"bad header: length {hlen} is over the {MAX_HEADER}-byte limit")
    body = bytearray(hlen)
    if _read_full(src, memoryview(body)) < hlen:
        raise IntegrityError("truncated: input ends inside the header")
    obj = untrusted.json_document(bytes(body), "bad header")
    header = Header.from_json(obj)
    header.raw = bytes(magic) + bytes(length) + bytes(body)
    return header, header.raw


def open_sealed(src: Readable, key_for: Callable[[AnyHeader], bytes]) -> tuple[AnyHeader, DecryptingReader]:
    """Parse the prefix, ask `key_for` for the data key, return a plaintext reader.

    `key_for` sees the header first, so the key can be unwrapped from it. The
    key it returns is checked before any payload byte is read: against a
    version 1 header's key id (naming a wrong key), or a version 2 header's MAC.
    """
    header, _ = read_prefix(src)
    data_key = key_for(header)
    check_data_key(data_key)
    if isinstance(header, Header):
        if header.key_id and header.key_id != key_id(data_key):
            raise IntegrityError(
                f"wrong key (or tampered header): the file was sealed with key id "
                f"{untrusted.show(header.key_id, 40)}, the key given has id {key_id(data_key)}"
            )
    elif not header.verifies(data_key):
        raise IntegrityError(f"the header MAC does not verify with the key with id {key_id(data_key)}: a wrong key, "
                             "a changed recipient list or a stanza from another file")
    return header, DecryptingReader(src, data_key, header.aad, AES256_GCM_HKDF_1MB)


def seal_writer(out: Writable, header: Header, data_key: bytes) -> EncryptingWriter:
    """Write a version 1 prefix to `out`; return the writer for the plaintext (tests and tools: `seal` writes
    version 2, header_v2.seal_writer)."""
    check_data_key(data_key)
    header.key_id = key_id(data_key)
    prefix = encode_prefix(header)
    out.write(prefix)
    return EncryptingWriter(out, data_key, prefix, AES256_GCM_HKDF_1MB)


def check_data_key(data_key: bytes) -> None:
    if len(data_key) != DATA_KEY_SIZE:
        raise UsageError(f"data key must be {DATA_KEY_SIZE} bytes, got {len(data_key)}")
