"""The stages, each a composition of the same streaming pieces.

    source --(DigestReader)--> ciphertext --(open_sealed / DecryptingReader)--> plaintext
           --> PartialFile (decrypt)  or  unpack.extract (unpack, run)

`run` is fetch + decrypt + unpack composed in one process over these same
readers; nothing here is a second implementation of a stage.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from typing import BinaryIO, Callable

from . import archive, format as sealfmt, tinkkeyset, tmpfs
from .atomic import PartialFile, remove_quietly
from .digest import DigestReader, parse_pin
from .errors import DeniedError, UsageError
from .keys import KeySource, open_key
from .log import Log
from .sources import open_source
from .streaming import ChunkReader, DecryptingReader
from .overlap import BackgroundWriter
from .uri import URI, Options

PREFIX_READ = 6 + 4 + sealfmt.MAX_HEADER  # enough bytes to hold any .seal prefix
FORMATS = ("seal", "tink", "openpgp")


@dataclass(frozen=True)
class KeySpec:
    """Where the key comes from: a key file (`--key`) or a key URI (`--key-uri`)."""

    key_file: str | None = None
    key_uri: str | None = None

    def source(self, options: Options) -> KeySource:
        if bool(self.key_file) == bool(self.key_uri):
            raise UsageError("give exactly one of --key FILE or --key-uri URI")
        return open_key(self.key_uri or f"file://{os.path.abspath(self.key_file or '')}", options)

    def secret(self, source: KeySource, fmt: str) -> bytes:
        """The key material a format needs: a key file's bytes as they are (a Tink
        keyset, a raw key, a passphrase), or what the key URI yields."""
        if self.key_file:
            with open(self.key_file, "rb") as f:
                return f.read(1 << 20)
        return source.secret(encoding="raw") if fmt == "openpgp" else source.data_key()


# ---- building blocks -------------------------------------------------------

def open_ciphertext(source_uri: str, options: Options, sha256: str | None, log: Log) -> tuple[BinaryIO, int | None]:
    """The ciphertext stream of a source, checked against a --sha256 pin at EOF."""
    pin = parse_pin(sha256)  # a bad pin is a usage error, found before any I/O
    source = open_source(source_uri, options)
    log.info("source", uri=source.uri.redacted())
    stream = source.open()
    return (DigestReader(stream, pin) if pin else stream), source.size  # type: ignore[return-value]


def header_from(wrapped_from: str | None, source_uri: str | None, options: Options) -> sealfmt.Header | None:
    """A .seal header for unwrapping: from a local file, or the model source's first bytes."""
    if wrapped_from:
        with open(wrapped_from, "rb") as f:
            return sealfmt.read_prefix(f)[0]
    if source_uri:
        prefix = open_source(source_uri, options).read_prefix(PREFIX_READ)
        return sealfmt.read_prefix(io.BytesIO(prefix))[0]
    return None


def plaintext(
    stream: BinaryIO, fmt: str, keys: KeySpec, key_source: KeySource, log: Log,
    associated_data: bytes = b"", tink_template: str = "AES256_GCM_HKDF_1MB",
) -> ChunkReader:
    """Verified plaintext of a ciphertext stream in any supported format."""
    if fmt == "seal":

        def key_for(header: sealfmt.Header) -> bytes:
            log.info("header", **header.log_fields())  # not authenticated yet: quoted, shortened
            return key_source.data_key(header.wrapped_key)

        return sealfmt.open_sealed(stream, key_for)[1]
    if fmt == "tink":
        ikm, params = tinkkeyset.load(keys.secret(key_source, fmt), tink_template)
        return DecryptingReader(stream, ikm, associated_data, params)
    if fmt == "openpgp":
        from . import openpgp

        return openpgp.DecryptingReader(stream, keys.secret(key_source, fmt))
    raise UsageError(f"unknown format {fmt!r} ({', '.join(FORMATS)})")


def _consume(paths: list[tuple[bool, str | None]], log: Log) -> None:
    """Delete inputs the user asked us to consume (the key, the ciphertext)."""
    for wanted, path in paths:
        if wanted and path and path != "-" and remove_quietly(path):
            log.info("deleted", path=path)


def _memory_target(path: str, allow_disk: bool, log: Log, what: str = "plaintext") -> None:
    if path == "-":
        return
    tmpfs.require_memory_fs(os.path.dirname(os.path.abspath(path)), allow_disk, log, what)
    tmpfs.warn_if_swap(log)


# ---- the stages -----------------------------------------------------------

def keygen(out: str, log: Log) -> dict:
    if out != "-" and os.path.lexists(out):
        raise UsageError(f"{out} exists: refusing to overwrite a key")
    with PartialFile(out, 0o400) as f:
        f.write(os.urandom(sealfmt.DATA_KEY_SIZE))
        f.commit()
    log.info("key_written", path=out)
    return {"path": out}


def _data_key(keys: KeySpec, options: Options) -> tuple[bytes, sealfmt.WrappedKey | None]:
    """The data key for a new .seal; key services that wrap get a fresh key per file."""
    key_source = keys.source(options)
    if key_source.unwraps:  # envelope encryption
        data_key = os.urandom(sealfmt.DATA_KEY_SIZE)
        return data_key, key_source.wrap(data_key)
    return key_source.data_key(), None


def _write_sealed(out: str, header: sealfmt.Header, data_key: bytes, fill: Callable[[BinaryIO], int],
                  options: Options, log: Log) -> dict:
    """Stream `fill`'s plaintext into a .seal at `out`; nothing is left on failure."""
    sink = _open_sink(out, options)
    try:
        writer = sealfmt.seal_writer(sink, header, data_key)  # type: ignore[arg-type]
        files = fill(writer)  # type: ignore[arg-type]
        writer.close()
        sink.commit()
    except BaseException:
        sink.abort()
        raise
    log.info("sealed", out=URI.parse(out).redacted(), files=files, plaintext_bytes=writer.plaintext_bytes,
             bytes=writer.ciphertext_bytes + len(sealfmt.encode_prefix(header)), key_id=header.key_id)
    return {"bytes": writer.plaintext_bytes, "key_id": header.key_id, "files": files}


def _copy(src: BinaryIO) -> Callable[[BinaryIO], int]:
    def fill(writer: BinaryIO) -> int:
        buf = bytearray(1 << 20)
        while n := src.readinto(buf):
            writer.write(memoryview(buf)[:n])
        return 0
    return fill


def seal(
    src: str, out: str, keys: KeySpec, options: Options, log: Log,
    name: str | None = None, version: str = "", compress: str = "none",
) -> dict:
    if src != "-" and not os.path.exists(src):
        raise DeniedError(f"{src}: no such file or directory")
    data_key, wrapped = _data_key(keys, options)  # after the cheap checks: it may call KMS
    content_compression, wrap_in_tar = compress, True
    if src != "-" and os.path.isfile(src):
        with open(src, "rb") as f:
            head = f.read(512)
        detected = archive.detect_compression(head)
        if detected != "none" or _is_tar(src):
            content_compression, wrap_in_tar = detected, False  # already an archive: seal as is
    elif src == "-":
        wrap_in_tar = False
    default_name = os.path.basename(os.path.abspath(src)) if src != "-" else ""
    header = sealfmt.Header(
        key_id="", compression=content_compression, name=name or default_name, version=version, wrapped_key=wrapped
    )

    def tar(writer: BinaryIO) -> int:
        comp = archive.compressor(writer, compress)
        files = archive.write_tar(src, comp)
        comp.close()
        return files

    if wrap_in_tar:
        return _write_sealed(out, header, data_key, tar, options, log)
    with (open(src, "rb", buffering=0) if src != "-" else os.fdopen(os.dup(0), "rb", buffering=0)) as f:
        return _write_sealed(out, header, data_key, _copy(f), options, log)


def convert(
    input: str, out: str, passphrase_file: str, keys: KeySpec, options: Options, log: Log,
    name: str | None = None, version: str = "",
) -> dict:
    """Re-encrypt an OpenPGP (`gpg -c`) file into a .seal in one streaming pass."""
    from . import openpgp

    with open(passphrase_file, "rb") as f:
        passphrase = f.read(1 << 16)
    data_key, wrapped = _data_key(keys, options)  # after the cheap checks: it may call KMS
    stream, _ = open_ciphertext(input, options, None, log)
    with stream:
        reader = openpgp.DecryptingReader(stream, passphrase)
        chunks = reader.segments()
        first = next(chunks, memoryview(b""))
        default_name = os.path.basename(input).removesuffix(".gpg").removesuffix(".tar") if input != "-" else ""
        header = sealfmt.Header(key_id="", compression=archive.detect_compression(bytes(first[:8])),
                                name=name or default_name, version=version, wrapped_key=wrapped)

        def fill(writer: BinaryIO) -> int:
            writer.write(first)
            for chunk in chunks:
                writer.write(chunk)
            return 0

        return _write_sealed(out, header, data_key, fill, options, log)


def _is_tar(path: str) -> bool:
    import tarfile

    try:
        return tarfile.is_tarfile(path)
    except OSError:
        return False


class _Sink:
    """Where sealed bytes go: a local file (atomic) or a backend's upload stream."""

    def __init__(self, write: Callable, commit: Callable[[], None], abort: Callable[[], None]) -> None:
        self.write, self.commit, self.abort = write, commit, abort


def _open_sink(out: str, options: Options) -> _Sink:
    parsed = URI.parse(out)
    if parsed.scheme == "file":
        f = PartialFile(parsed.path, 0o644)
        return _Sink(f.write, f.commit, f.abort)
    source = open_source(out, options)
    opener = getattr(source, "open_write", None)
    if opener is None:
        raise UsageError(f"{parsed.scheme}: cannot write sealed output there")
    upload = opener()
    return _Sink(upload.write, upload.close, upload.abort)


def inspect(path: str) -> dict:
    with (open(path, "rb") if path != "-" else os.fdopen(os.dup(0), "rb")) as f:
        header, prefix = sealfmt.read_prefix(f)
        size = os.fstat(f.fileno()).st_size if path != "-" else None
    info = header.to_json()
    info["prefix_bytes"] = len(prefix)
    if size is not None:
        info["payload_bytes"] = size - len(prefix)
    return info


def fetch_key(
    key_uri: str, out: str, options: Options, log: Log, allow_disk: bool = False,
    wrapped_from: str | None = None, source: str | None = None, passphrase: bool = False,
) -> dict:
    _memory_target(out, allow_disk, log, "the key")
    key_source = open_key(key_uri, options)
    wrapped = None
    if key_source.unwraps:
        header = header_from(wrapped_from, source, options)
        wrapped = header.wrapped_key if header else None
        if header is not None and wrapped is None:
            raise UsageError(f"{key_uri.split('?')[0]}: the .seal header carries no wrapped key")
    log.info("key_source", uri=key_source.uri.redacted())
    key = key_source.secret(wrapped, encoding="raw") if passphrase else key_source.data_key(wrapped)
    with PartialFile(out, 0o400) as f:
        f.write(key)
        f.commit()
    if passphrase:  # a passphrase may be guessable: no fingerprint of it in logs
        log.info("key_written", path=out)
        return {"path": out}
    log.info("key_written", path=out, key_id=sealfmt.key_id(key))
    return {"path": out, "key_id": sealfmt.key_id(key)}


def fetch_model(source: str, out: str, options: Options, log: Log, sha256: str | None = None) -> dict:
    """Ciphertext may live on disk; only plaintext and keys are tmpfs-only."""
    stream, size = open_ciphertext(source, options, sha256, log)
    progress = log.progress("fetch", size)
    with stream, PartialFile(out, 0o644) as f:
        buf = bytearray(1 << 20)
        while n := stream.readinto(buf):
            f.write(memoryview(buf)[:n])
            progress.add(n)
        f.commit()
    log.info("fetched", path=out, **progress.summary())
    return progress.summary()


def decrypt(
    input: str, out: str, keys: KeySpec, options: Options, log: Log, *, fmt: str = "seal",
    allow_disk: bool = False, delete_key: bool = False, delete_input: bool = False,
    associated_data: bytes = b"", tink_template: str = "AES256_GCM_HKDF_1MB",
) -> dict:
    key_source = keys.source(options)  # configuration errors first, before touching any input
    _memory_target(out, allow_disk, log)
    stream, size = open_ciphertext(input, options, None, log)
    progress = log.progress("decrypt", size)
    with stream, PartialFile(out, 0o600) as f:
        reader = plaintext(stream, fmt, keys, key_source, log, associated_data, tink_template)
        with BackgroundWriter(f.write) as background:
            for segment in reader.segments(ring=background.depth + 2):
                background.write(segment)
                progress.add(len(segment))
        f.commit()
    _consume([(delete_key, keys.key_file), (delete_input, input)], log)
    log.info("decrypted", path=out, **progress.summary())
    return progress.summary()


def unpack(input: str, out: str, log: Log, *, allow_disk: bool = False, delete_input: bool = False,
           allow_symlinks: bool = False, limits=None) -> dict:
    from . import unpack as unpacker

    _memory_target(out, allow_disk, log)
    stream, _ = open_ciphertext(input, Options(), None, log)
    with stream:
        stats = unpacker.extract(stream, out, limits=limits or unpacker.Limits(),
                                 allow_symlinks=allow_symlinks, log=log)
    _consume([(delete_input, input)], log)
    log.info("unpacked", path=out, **stats)
    return stats


def run(
    source: str, out: str, keys: KeySpec, options: Options, log: Log, *, fmt: str = "seal",
    sha256: str | None = None, allow_disk: bool = False, allow_symlinks: bool = False, limits=None,
    delete_key: bool = False, associated_data: bytes = b"", tink_template: str = "AES256_GCM_HKDF_1MB",
) -> dict:
    """fetch -> decrypt -> unpack in one pass: no ciphertext or tar is ever stored."""
    from . import unpack as unpacker

    key_source = keys.source(options)  # configuration errors first, before touching any input
    _memory_target(out, allow_disk, log)
    stream, _ = open_ciphertext(source, options, sha256, log)
    with stream:
        reader = plaintext(stream, fmt, keys, key_source, log, associated_data, tink_template)
        stats = unpacker.extract(reader, out, limits=limits or unpacker.Limits(),
                                 allow_symlinks=allow_symlinks, log=log)
    _consume([(delete_key, keys.key_file)], log)
    log.info("unpacked", path=out, **stats)
    return stats

