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

import io
import struct
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Union

from . import header_v2, untrusted
from .errors import IntegrityError
from .header_v2 import Header as HeaderV2
from .sealheader import ALG as ALG
from .sealheader import COMPRESSIONS as COMPRESSIONS
from .sealheader import DATA_KEY_SIZE as DATA_KEY_SIZE
from .sealheader import MAGIC as MAGIC
from .sealheader import MAX_HEADER as MAX_HEADER
from .sealheader import MAX_PREFIX as MAX_PREFIX
from .sealheader import Fixed as Fixed
from .sealheader import Sizes as Sizes
from .sealheader import WrappedKey as WrappedKey
from .sealheader import check_data_key as check_data_key
from .sealheader import declared_payload
from .sealheader import key_id as key_id
from .streaming import (
    AES256_GCM_HKDF_1MB,
    DecryptingReader,
    EncryptingWriter,
    Readable,
    Writable,
    _read_full,
)

VERSION = 1

#: A header as read_prefix returns it: version 1's, or version 2's (header_v2.Header).
AnyHeader = Union["Header", "HeaderV2"]


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


def declared_length(prefix: bytes) -> int | None:
    """The whole file's length that the .seal prefix at the start of `prefix` declares, or None.

    Known when the payload is uncompressed and the header gives its tar_bytes:
    the prefix plus that many bytes as the stream format encrypts them. So
    fetch-model, which holds no key, can tell a download that a server ended
    cleanly but early (a Content-Length that agrees with a short body) from
    a whole one. Unauthenticated: a liar can only make the fetch fail, which
    serving other bytes does as well. None for bytes that are not a .seal
    prefix (fetch-model also carries other formats).
    """
    try:
        header, raw = read_prefix(io.BytesIO(prefix))
    except IntegrityError:
        return None
    payload = declared_payload(header.fixed.sizes, header.fixed.compression)
    return None if payload is None else len(raw) + AES256_GCM_HKDF_1MB.ciphertext_size(payload)
