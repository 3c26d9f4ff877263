"""The stages, each a composition of the same streaming pieces.

    source --(DigestReader)--> ciphertext --(open_sealed / DecryptingReader)--> plaintext
           --> PartialFile (decrypt)  or  unpack.extract (unpack, run)

`run` is fetch + decrypt + unpack composed in one process over these same
readers; nothing here is a second implementation of a stage.
"""

from __future__ import annotations

import io
import math
import os
import stat
from dataclasses import dataclass
from typing import BinaryIO, Callable

from . import archive, sealfile, tinkkeyset
from .atomic import PARTIAL_SUFFIX, PartialFile, remove_quietly
from .digest import DigestReader, parse_pin
from .errors import DeniedError, IntegrityError, UsageError
from .keys import KeySource, open_key
from .log import Log
from .sources import open_source
from .streaming import ChunkReader, DecryptingReader
from .overlap import BackgroundWriter
from .placement import Need, Preflight, file_need
from .placement.need import declared_payload
from .placement.tmpfs import memory_only
from .uri import URI, Options

PREFIX_READ = 6 + 4 + sealfile.MAX_HEADER  # enough bytes to hold any .seal prefix
FORMATS = ("seal", "tink", "openpgp")


@dataclass(frozen=True)
class KeySpec:
    """Where the key comes from: a key file (`--key`) or a key URI (`--key-uri`)."""

    key_file: str | None = None
    key_uri: str | None = None

    def source(self, options: Options) -> KeySource:
        if bool(self.key_file) == bool(self.key_uri):
            raise UsageError("give exactly one of --key FILE or --key-uri URI")
        if self.key_file:  # a path is a path: `#` and `?` in it are not URI syntax
            return open_key(URI.for_path(os.path.abspath(self.key_file)), options)
        return open_key(self.key_uri or "", options)

    def file(self) -> str | None:
        """The key file on disk, if the key comes from one (--key, or a file:// key URI)."""
        if self.key_file:
            return self.key_file
        uri = URI.parse(self.key_uri or "")
        return uri.path if uri.scheme == "file" and uri.path != "-" else None

    def deletable(self, delete_key: bool) -> str | None:
        """The key file --delete-key removes after success; refused when there is none."""
        if not delete_key:
            return None
        path = self.file()
        if path is None:
            raise UsageError(f"--delete-key: the key comes from {URI.parse(self.key_uri or '').scheme}:, "
                             "not from a key file; there is nothing to delete")
        return path

    def secret(self, source: KeySource, fmt: str) -> bytes:
        """The key material a format needs: a key file's bytes as they are (a Tink
        keyset, a raw key, a passphrase), or what the key URI yields."""
        if self.key_file:
            with open(self.key_file, "rb") as f:
                return f.read(1 << 20)
        return source.secret(encoding="raw") if fmt == "openpgp" else source.data_key()


# ---- building blocks -------------------------------------------------------

@dataclass(frozen=True)
class Input:
    """An opened input stream, its length when known, and what its source buffers ahead."""

    stream: BinaryIO
    size: int | None
    buffers: int = 0


def open_ciphertext(source_uri: str, options: Options, sha256: str | None, log: Log) -> Input:
    """The ciphertext stream of a source URI, checked against a --sha256 pin at EOF."""
    pin = parse_pin(sha256)  # a bad pin is a usage error, found before any I/O
    source = open_source(source_uri, options)
    log.info("source", uri=source.uri.redacted())
    stream = source.open()
    return Input(DigestReader(stream, pin) if pin else stream, source.size,  # type: ignore[arg-type]
                 source.buffer_bytes)


def open_input(path: str, log: Log) -> Input:
    """A local input file (`--in`), or stdin for `-`: a path, never parsed as a URI."""
    if path == "-":
        stream = os.fdopen(os.dup(0), "rb", buffering=0)
    else:
        stream = open(path, "rb", buffering=0)
    log.info("input", path=path)
    st = os.fstat(stream.fileno())
    return Input(stream, st.st_size if stat.S_ISREG(st.st_mode) else None)


def header_from(wrapped_from: str | None, source_uri: str | None, options: Options) -> sealfile.Header | None:
    """A .seal header for unwrapping: from a local file, or the model source's first bytes."""
    if wrapped_from:
        with open(wrapped_from, "rb") as f:
            return sealfile.read_prefix(f)[0]
    if source_uri:
        prefix = open_source(source_uri, options).read_prefix(PREFIX_READ)
        return sealfile.read_prefix(io.BytesIO(prefix))[0]
    return None


@dataclass(frozen=True)
class Plaintext:
    """Verified plaintext of a ciphertext, and what is known up front about its size."""

    reader: ChunkReader
    header: sealfile.Header | None = None  # .seal only
    size: int | None = None  # exact length, when the ciphertext's length is known

    @property
    def sizes(self) -> sealfile.Sizes | None:
        """What the .seal header says the payload unpacks to."""
        return self.header.sizes if self.header is not None else None

    def file_need(self, buffers: int = 0) -> Need:
        """What decrypt writes: the plaintext itself."""
        return file_need(self.size, self.sizes, self.header.compression if self.header else "none", buffers)

    def most_bytes(self) -> float:
        """What decrypt may write: the header's tar_bytes for an uncompressed payload (what the preflight
        sized the target by when the input's length is unknown), else no bound (inf)."""
        declared = declared_payload(self.sizes, self.header.compression if self.header else "none")
        return math.inf if declared is None else declared


def plaintext(
    input: Input, fmt: str, keys: KeySpec, key_source: KeySource, log: Log,
    associated_data: bytes = b"", tink_template: str = "AES256_GCM_HKDF_1MB", workers: int = 1,
) -> Plaintext:
    """Verified plaintext of a ciphertext stream in any supported format (`workers`: see modelseal.parallel)."""
    if fmt == "seal":

        def key_for(header: sealfile.Header) -> bytes:
            log.info("header", **header.log_fields(), **header.sizes.to_json())  # not authenticated yet: quoted, shortened
            return key_source.data_key(header.wrapped_key)

        header, reader = sealfile.open_sealed(input.stream, key_for)
        reader.workers = workers
        log.info("decrypting", workers=workers)
        payload = None if input.size is None else input.size - reader.associated_data_size
        size = None if payload is None else sealfile.AES256_GCM_HKDF_1MB.plaintext_size_of(payload)
        return Plaintext(reader, header, size)
    if fmt == "tink":
        ikm, params = tinkkeyset.load(keys.secret(key_source, fmt), tink_template)
        log.info("decrypting", workers=workers)
        size = None if input.size is None else params.plaintext_size_of(input.size)
        return Plaintext(DecryptingReader(input.stream, ikm, associated_data, params, workers), None, size)
    if fmt == "openpgp":
        from . import openpgp

        return Plaintext(openpgp.DecryptingReader(input.stream, keys.secret(key_source, fmt)))
    raise UsageError(f"unknown format {fmt!r} ({', '.join(FORMATS)})")


def _consume(paths: list[tuple[bool, str | None]], log: Log) -> None:
    """Delete inputs the user asked us to consume (the key, the ciphertext)."""
    for wanted, path in paths:
        if wanted and path and path != "-" and remove_quietly(path):
            log.info("deleted", path=path)


# ---- the stages -----------------------------------------------------------

def keygen(out: str, log: Log) -> dict:
    if out == "-" and os.isatty(1):
        raise UsageError("refusing to print a key on a terminal: give -o FILE, or pipe it")
    if out != "-" and os.path.lexists(out):
        raise UsageError(f"{out} exists: refusing to overwrite a key")
    with PartialFile(out, 0o400) as f:
        f.write(os.urandom(sealfile.DATA_KEY_SIZE))
        f.commit()
    log.info("key_written", path=out)
    return {"path": out}


def _data_key(keys: KeySpec, options: Options) -> tuple[bytes, sealfile.WrappedKey | None]:
    """The data key for a new .seal; key services that wrap get a fresh key per file."""
    key_source = keys.source(options)
    if key_source.unwraps:  # envelope encryption
        data_key = os.urandom(sealfile.DATA_KEY_SIZE)
        return data_key, key_source.wrap(data_key)
    return key_source.data_key(), None


def _write_sealed(out: str, header: sealfile.Header, data_key: bytes, fill: Callable[[BinaryIO], int],
                  options: Options, log: Log) -> dict:
    """Stream `fill`'s plaintext into a .seal at `out`; nothing is left on failure."""
    sink = _open_sink(out, options)
    try:
        writer = sealfile.seal_writer(sink, header, data_key)  # type: ignore[arg-type]
        files = fill(writer)  # type: ignore[arg-type]
        writer.close()
        sink.commit()
    except BaseException:
        sink.abort()
        raise
    log.info("sealed", out=URI.parse(out).redacted(), files=files, plaintext_bytes=writer.plaintext_bytes,
             bytes=writer.ciphertext_bytes + len(sealfile.encode_prefix(header)), key_id=header.key_id)
    return {"bytes": writer.plaintext_bytes, "key_id": header.key_id, "files": files}


def _copy(src: BinaryIO) -> Callable[[BinaryIO], int]:
    def fill(writer: BinaryIO) -> int:
        buf = bytearray(1 << 20)
        while n := src.readinto(buf):
            writer.write(memoryview(buf)[:n])
        return 0
    return fill


def _outputs(out: str) -> frozenset[archive.Identity]:
    """Identities of the local output and of a partial file left by an earlier run, when they exist:
    a SRC that holds them does not seal them (archive.plan_tar's `skip`)."""
    parsed = URI.parse(out)
    if parsed.scheme != "file" or parsed.path == "-":
        return frozenset()
    found = set()
    for path in (parsed.path, parsed.path + PARTIAL_SUFFIX):
        try:
            found.add(archive.identity(os.stat(path)))
        except OSError:
            pass
    return frozenset(found)


def seal(
    src: str, out: str, keys: KeySpec, options: Options, log: Log,
    name: str | None = None, version: str = "", compress: str = "none", sign_key: str | None = None,
    follow_external_symlinks: bool = False,
) -> dict:
    if src != "-" and not os.path.exists(src):
        raise DeniedError(f"{src}: no such file or directory")
    content_compression, wrap_in_tar, sizes = compress, True, sealfile.Sizes()
    if src != "-" and os.path.isfile(src):
        with open(src, "rb") as f:
            head = f.read(512)
        detected = archive.detect_compression(head)
        if detected != "none" or _is_tar(src):
            content_compression, wrap_in_tar = detected, False  # already an archive: seal as is
            if detected == "none":
                sizes = archive.scan_tar(src)
    elif src == "-":
        wrap_in_tar = False
    if sign_key and not wrap_in_tar:
        raise UsageError(f"--sign-key signs a model directory; {src} is an archive or stdin")
    plan = archive.plan_tar(src, follow_external=follow_external_symlinks, skip=_outputs(out),
                            log=log) if wrap_in_tar else None
    if sign_key:  # model.sig for exactly the planned files (model_signing's format), the archive's first member
        from . import signing  # x509 and friends: 60 ms of imports every other command does without

        assert plan is not None
        plan = plan.with_first([(signing.SIGNATURE, signing.sign_tree(src, sign_key, log, plan.regular_files()))])
    data_key, wrapped = _data_key(keys, options)  # after the cheap checks: it may call KMS
    default_name = os.path.basename(os.path.abspath(src)) if src != "-" else ""
    header = sealfile.Header(
        key_id="", compression=content_compression, name=name or default_name, version=version, wrapped_key=wrapped,
        sizes=plan.sizes() if plan is not None else sizes,
    )

    def tar(writer: BinaryIO) -> int:
        assert plan is not None
        comp = archive.compressor(writer, compress)
        files = archive.write_tar(plan, comp)
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
    source = open_input(input, log)
    with source.stream:
        reader = openpgp.DecryptingReader(source.stream, passphrase)
        chunks = reader.segments()
        first = next(chunks, memoryview(b""))
        default_name = os.path.basename(input).removesuffix(".gpg").removesuffix(".tar") if input != "-" else ""
        header = sealfile.Header(key_id="", compression=archive.detect_compression(bytes(first[:8])),
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


@dataclass(frozen=True)
class Inspection:
    """A .seal's header and lengths, as `inspect` reads them (no key needed)."""

    header: sealfile.Header
    prefix_bytes: int
    payload_bytes: int | None  # None: read from stdin

    def to_json(self) -> dict:
        info = self.header.to_json()
        info["prefix_bytes"] = self.prefix_bytes
        if self.payload_bytes is not None:
            info["payload_bytes"] = self.payload_bytes
            info["plaintext_bytes"] = sealfile.AES256_GCM_HKDF_1MB.plaintext_size_of(self.payload_bytes)
        return info


def inspect(path: str) -> Inspection:
    with (open(path, "rb") if path != "-" else os.fdopen(os.dup(0), "rb")) as f:
        header, prefix = sealfile.read_prefix(f)
        size = os.fstat(f.fileno()).st_size if path != "-" else None
    return Inspection(header, len(prefix), None if size is None else size - len(prefix))


def fetch_key(
    key_uri: str, out: str, options: Options, log: Log, allow_disk: bool = False,
    wrapped_from: str | None = None, source: str | None = None, passphrase: bool = False,
) -> dict:
    if out == "-":
        raise UsageError("refusing to write a key to standard output (in a pod, that is the container's log): "
                         "give -o FILE on a memory-backed volume")
    key_source = open_key(key_uri, options)
    with PartialFile(out, 0o400, rule=memory_only(allow_disk, log, "the key")) as f:
        wrapped = None
        if key_source.unwraps:
            header = header_from(wrapped_from, source, options)
            wrapped = header.wrapped_key if header else None
            if header is not None and wrapped is None:
                raise UsageError(f"{key_uri.split('?')[0]}: the .seal header carries no wrapped key")
        log.info("key_source", uri=key_source.uri.redacted())
        key = key_source.secret(wrapped, encoding="raw") if passphrase else key_source.data_key(wrapped)
        f.write(key)
        f.commit()
    if passphrase:  # a passphrase may be guessable: no fingerprint of it in logs
        log.info("key_written", path=out)
        return {"path": out}
    log.info("key_written", path=out, key_id=sealfile.key_id(key))
    return {"path": out, "key_id": sealfile.key_id(key)}


def fetch_model(source: str, out: str, options: Options, log: Log, sha256: str | None = None) -> dict:
    """Ciphertext may live on disk; only plaintext and keys are tmpfs-only."""
    input = open_ciphertext(source, options, sha256, log)
    progress = log.progress("fetch", input.size)
    with input.stream, PartialFile(out, 0o644) as f:
        read_view = getattr(input.stream, "read_view", None)  # S3: write straight from the part buffers
        if callable(read_view):
            while view := read_view(1 << 20):
                f.write(view)
                progress.add(len(view))
        else:
            buf = bytearray(1 << 20)
            while n := input.stream.readinto(buf):
                f.write(memoryview(buf)[:n])
                progress.add(n)
        f.commit()
    log.info("fetched", path=out, **progress.summary())
    return progress.summary()


def decrypt(
    input: str, out: str, keys: KeySpec, options: Options, log: Log, *, fmt: str = "seal",
    allow_disk: bool = False, delete_key: bool = False, delete_input: bool = False,
    associated_data: bytes = b"", tink_template: str = "AES256_GCM_HKDF_1MB", preflight: bool = True,
    workers: int = 1,
) -> dict:
    key_source = keys.source(options)  # configuration errors first, before touching any input
    key_file = keys.deletable(delete_key)
    preflight_check = Preflight(preflight, log).announce()
    with PartialFile(out, 0o600, rule=memory_only(allow_disk, log)) as f:
        source = open_input(input, log)
        progress = log.progress("decrypt", source.size)
        with source.stream:
            plain = plaintext(source, fmt, keys, key_source, log, associated_data, tink_template, workers)
            preflight_check(f.fd, f.where, plain.file_need(plain.reader.worker_memory()))
            most, written = plain.most_bytes(), 0
            with BackgroundWriter(f.write) as background:
                for segment in plain.reader.segments(ring=background.depth + 2):
                    written += len(segment)
                    if written > most:  # held to the header's size, as unpack holds each file to its own
                        raise IntegrityError(f"the payload is larger than the {most} bytes its .seal header "
                                             "declares (content.tar_bytes): refused before writing past them")
                    background.write(segment)
                    progress.add(len(segment))
        f.commit()
    _consume([(delete_key, key_file), (delete_input, input)], log)
    log.info("decrypted", path=out, **progress.summary())
    return progress.summary()


def unpack(input: str, out: str, log: Log, *, allow_disk: bool = False, delete_input: bool = False,
           allow_symlinks: bool = False, limits=None, preflight: bool = True, verify=None) -> dict:
    from . import unpack as unpacker

    preflight_check = Preflight(preflight, log).announce()
    with unpacker.Destination(out, rule=memory_only(allow_disk, log), log=log) as dest:
        source = open_input(input, log)
        with source.stream:
            stats = dest.extract(source.stream, limits=limits or unpacker.Limits(), allow_symlinks=allow_symlinks,
                                 preflight=preflight_check, size=source.size, verify=verify)
    _consume([(delete_input, input)], log)
    log.info("unpacked", path=out, **stats)
    return stats


def run(
    source: str, out: str, keys: KeySpec, options: Options, log: Log, *, fmt: str = "seal",
    sha256: str | None = None, allow_disk: bool = False, allow_symlinks: bool = False, limits=None,
    delete_key: bool = False, associated_data: bytes = b"", tink_template: str = "AES256_GCM_HKDF_1MB",
    preflight: bool = True, verify=None, workers: int = 1,
) -> dict:
    """fetch -> decrypt -> unpack in one pass: no ciphertext or tar is ever stored.

    `verify` (signing.StreamVerifier): check the model's signature in the same pass."""
    from . import unpack as unpacker

    key_source = keys.source(options)  # configuration errors first, before touching any input
    key_file = keys.deletable(delete_key)
    preflight_check = Preflight(preflight, log).announce()
    with unpacker.Destination(out, rule=memory_only(allow_disk, log), log=log) as dest:
        input = open_ciphertext(source, options, sha256, log)
        with input.stream:
            plain = plaintext(input, fmt, keys, key_source, log, associated_data, tink_template, workers)
            buffers = input.buffers + plain.reader.worker_memory()
            stats = dest.extract(plain.reader, limits=limits or unpacker.Limits(), allow_symlinks=allow_symlinks,
                                 preflight=preflight_check, size=plain.size, declared=plain.sizes, buffers=buffers,
                                 verify=verify)
    _consume([(delete_key, key_file)], log)
    log.info("unpacked", path=out, **stats)
    return stats
