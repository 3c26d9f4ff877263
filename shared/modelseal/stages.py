"""The stages, each a composition of the same streaming pieces.

    source --(DigestReader)--> ciphertext --(open_sealed / DecryptingReader)--> plaintext
           --> PartialFile (decrypt)  or, read as an archive, unpack.extract --> tree (unpack, run)

`run` is fetch + decrypt + unpack composed in one process over these same
readers; nothing here is a second implementation of a stage. Each stage takes
what it was asked as the groups of options.py, built once by the CLI.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import stat
from dataclasses import dataclass
from typing import Any, Callable

from . import archive, sealfile, tinkkeyset
from .atomic import PARTIAL_SUFFIX, PartialFile, remove_quietly
from .digest import DigestReader, parse_pin
from .errors import DeniedError, IntegrityError, UsageError
from .keys import KeySource, open_key
from .log import Log, Progress
from .options import (
    FORMATS,
    Connection,
    Decryption,
    Guards,
    KeySpec,
    Output,
    Sealing,
    SourceSpec,
    Unwrapping,
)
from .overlap import BackgroundWriter
from .placement import Need, Preflight, file_need
from .placement.need import declared_payload
from .placement.tmpfs import memory_only
from .sources import Stream, open_sink, open_source
from .sources.file import open_local as open_file
from .streaming import ChunkReader, DecryptingReader, Readable, Writable
from .streaming import _read_full as read_full
from .uri import URI

PREFIX_READ = 6 + 4 + sealfile.MAX_HEADER  # enough bytes to hold any .seal prefix
__all__ = ["FORMATS", "KeySpec", "convert", "decrypt", "fetch_key", "fetch_model", "inspect", "keygen", "run",
           "seal", "unpack"]


# ---- building blocks -------------------------------------------------------

@dataclass(frozen=True)
class Opened:
    """An opened input (a ciphertext, or an archive for unpack): its stream, its length when known,
    and what its source buffers ahead."""

    stream: Stream
    size: int | None
    buffers: int = 0


def open_ciphertext(source: SourceSpec, connection: Connection, log: Log) -> Opened:
    """The ciphertext stream of a source URI, checked against a --sha256 pin at EOF."""
    pin = parse_pin(source.sha256)  # a bad pin is a usage error, found before any I/O
    backend = open_source(source.source, connection)
    log.info("source", uri=backend.uri.redacted())
    stream = backend.open()
    return Opened(DigestReader(stream, pin) if pin else stream, backend.size, backend.buffer_bytes)


def open_local(path: str, log: Log) -> Opened:
    """A local input file (`--in`), or stdin for `-`: a path, never parsed as a URI."""
    stream = open_file(path)
    log.info("input", path=path)
    st = os.fstat(stream.fileno())
    return Opened(stream, st.st_size if stat.S_ISREG(st.st_mode) else None)


def header_from(unwrapping: Unwrapping, connection: Connection) -> sealfile.Header | None:
    """A .seal header for unwrapping: from a local file, or the model source's first bytes."""
    if unwrapping.wrapped_from:
        with open(unwrapping.wrapped_from, "rb") as f:
            return sealfile.read_prefix(f)[0]
    if unwrapping.source:
        prefix = open_source(unwrapping.source, connection).read_prefix(PREFIX_READ)
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


def decrypting(ciphertext: Opened, decryption: Decryption, key: KeySpec, key_source: KeySource, log: Log) -> Plaintext:
    """Verified plaintext of a ciphertext stream in any supported format."""
    fmt, workers = decryption.format, decryption.workers
    if fmt == "seal":

        def key_for(header: sealfile.Header) -> bytes:
            # Not authenticated yet: its strings are quoted and shortened.
            log.info("header", **header.log_fields(), **header.sizes.to_json())
            return key_source.data_key(header.wrapped_key)

        header, reader = sealfile.open_sealed(ciphertext.stream, key_for)
        reader.workers = workers
        log.info("decrypting", workers=workers)
        payload = None if ciphertext.size is None else ciphertext.size - reader.associated_data_size
        size = None if payload is None else sealfile.AES256_GCM_HKDF_1MB.plaintext_size_of(payload)
        return Plaintext(reader, header, size)
    if fmt == "tink":
        ikm, params = tinkkeyset.load(key.secret(key_source, fmt), decryption.tink_template)
        log.info("decrypting", workers=workers)
        size = None if ciphertext.size is None else params.plaintext_size_of(ciphertext.size)
        return Plaintext(DecryptingReader(ciphertext.stream, ikm, decryption.associated_data, params, workers), None,
                         size)
    if fmt == "openpgp":
        from . import openpgp

        return Plaintext(openpgp.DecryptingReader(ciphertext.stream, key.secret(key_source, fmt)))
    raise UsageError(f"unknown format {fmt!r} ({', '.join(FORMATS)})")


def _consume(paths: list[tuple[bool, str | None]], log: Log) -> None:
    """Delete inputs the user asked us to consume (the key, the ciphertext)."""
    for wanted, path in paths:
        if wanted and path and path != "-" and remove_quietly(path):
            log.info("deleted", path=path)


# ---- the stages -----------------------------------------------------------

def keygen(output: Output, log: Log) -> dict:
    out = output.path
    if out == "-" and os.isatty(1):
        raise UsageError("refusing to print a key on a terminal: give -o FILE, or pipe it")
    if out != "-" and os.path.lexists(out):
        raise UsageError(f"{out} exists: refusing to overwrite a key")
    with PartialFile(out, 0o400) as f:
        f.write(os.urandom(sealfile.DATA_KEY_SIZE))
        f.commit()
    log.info("key_written", path=out)
    return {"path": out}


def _data_key(key: KeySpec, connection: Connection) -> tuple[bytes, sealfile.WrappedKey | None]:
    """The data key for a new .seal; key services that wrap get a fresh key per file."""
    key_source = key.source(connection)
    if key_source.unwraps:  # envelope encryption
        data_key = os.urandom(sealfile.DATA_KEY_SIZE)
        return data_key, key_source.wrap(data_key)
    return key_source.data_key(), None


class _Hashing:
    """The .seal's bytes on their way to the sink, hashed as they pass: seal's `sha256:` for --sha256 pins,
    in the same pass (a remote sink cannot be read back cheaply). hashlib releases the GIL and AES-GCM does
    not (overlap.py), so the hash runs on a thread of its own, on another core, from a copy of each
    segment (the encryptor reuses its buffer): about a second per 256 MiB taken off the sealing thread."""

    def __init__(self, sink: Writable, behind: BackgroundWriter) -> None:
        self.sink = sink
        self.behind = behind

    def write(self, data: Any) -> int:
        self.sink.write(data)
        self.behind.write(memoryview(bytes(data)))
        return len(data)


class _Counted:
    """A plaintext writer that moves the progress bar (once per write: a tar block run or a 1 MiB chunk)."""

    def __init__(self, writer: Writable, progress: Progress) -> None:
        self.writer, self.progress = writer, progress

    def write(self, data: Any) -> int:
        self.writer.write(data)
        n = len(data)
        self.progress.add(n)
        return n

    def close(self) -> None:
        """The writer's owner closes it (the compressor's trailer, the last segment)."""


def refuse_overwrite(output: Output) -> None:
    """seal and convert refuse an existing local output unless --force, as keygen does. Remote outputs are
    replaced as their stores replace objects (the object store's versioning, the registry's tag)."""
    parsed = URI.parse(output.path)
    if parsed.scheme == "file" and parsed.path != "-" and not output.force and os.path.lexists(parsed.path):
        raise UsageError(f"{parsed.path} exists: refusing to overwrite it (give --force to replace it)")


def _write_sealed(out: str, header: sealfile.Header, data_key: bytes, fill: Callable[[Writable, Progress], int],
                  connection: Connection, log: Log, total: int | None = None) -> dict:
    """Stream `fill`'s plaintext into a .seal at `out`; nothing is left on failure. `fill` moves the progress
    by the bytes of `total`'s kind (the tar's, before any compression)."""
    sink = open_sink(out, connection)
    progress = log.progress("seal", total)
    sha256 = hashlib.sha256()
    try:
        with BackgroundWriter(sha256.update, depth=4) as behind:
            writer = sealfile.seal_writer(_Hashing(sink, behind), header, data_key)
            files = fill(writer, progress)
            writer.close()
        sink.close()  # completes the object: the rename, the multipart completion, the manifest
    except BaseException:
        sink.abort()
        raise
    parsed = URI.parse(out)
    digest = "sha256:" + sha256.hexdigest()
    size = writer.ciphertext_bytes + len(sealfile.encode_prefix(header))
    log.info("sealed", out=parsed.path if parsed.scheme == "file" else parsed.redacted(), files=files,
             plaintext_bytes=writer.plaintext_bytes, bytes=size, key_id=header.key_id,
             wrapped=header.wrapped_key.provider if header.wrapped_key else None, sha256=digest)
    return {"bytes": writer.plaintext_bytes, "key_id": header.key_id, "files": files, "sha256": digest}


def _copy(stream: Readable) -> Callable[[Writable, Progress], int]:
    def fill(sealing: Writable, progress: Progress) -> int:
        writer = _Counted(sealing, progress)
        buf = bytearray(1 << 20)
        while n := stream.readinto(buf):
            writer.write(memoryview(buf)[:n])
        return 0
    return fill


def _outputs(out: str) -> frozenset[archive.Identity]:
    """Identities of the local output and of a partial file left by an earlier run, when they exist:
    a model that holds them does not seal them (archive.plan_tar's `skip`)."""
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


def seal(model: str, output: Output, key: KeySpec, sealing: Sealing, connection: Connection, log: Log) -> dict:
    """Tar (optionally compress) and encrypt a model directory, or seal an archive or stdin as it is."""
    out, compress, sign_key = output.path, sealing.compress, sealing.sign_key
    refuse_overwrite(output)
    if model != "-" and not os.path.exists(model):
        raise DeniedError(f"{model}: no such file or directory")
    content_compression, wrap_in_tar, sizes = compress, True, sealfile.Sizes()
    if model != "-" and os.path.isfile(model):
        with open(model, "rb") as f:
            head = f.read(512)
        detected = archive.detect_compression(head)
        if detected != "none" or _is_tar(model):
            content_compression, wrap_in_tar = detected, False  # already an archive: seal as is
            if detected == "none":
                sizes = archive.scan_tar(model)
    elif model == "-":
        wrap_in_tar = False
    if sign_key and not wrap_in_tar:
        raise UsageError(f"--sign-key signs a model directory; {model} is an archive or stdin")
    plan = archive.plan_tar(model, follow_external=sealing.follow_external_symlinks, skip=_outputs(out),
                            log=log) if wrap_in_tar else None
    if sign_key:  # model.sig for exactly the planned files (model_signing's format), the archive's first member
        from . import (
            signing,  # x509 and friends: 60 ms of imports every other command does without
        )

        assert plan is not None
        plan = plan.with_first([(signing.SIGNATURE, signing.sign_tree(model, sign_key, log, plan.regular_files()))])
    data_key, wrapped = _data_key(key, connection)  # after the cheap checks: it may call KMS
    default_name = os.path.basename(os.path.abspath(model)) if model != "-" else ""
    header = sealfile.Header(
        key_id="", compression=content_compression, name=sealing.name or default_name, version=sealing.model_version,
        wrapped_key=wrapped, sizes=plan.sizes() if plan is not None else sizes,
    )

    def tar(writer: Writable, progress: Progress) -> int:
        assert plan is not None
        comp = archive.compressor(writer, compress)
        files = archive.write_tar(plan, _Counted(comp, progress))
        comp.close()
        return files

    if wrap_in_tar:
        return _write_sealed(out, header, data_key, tar, connection, log, total=header.sizes.tar_bytes)
    with open_file(model) as stream:
        size = os.fstat(stream.fileno()).st_size if model != "-" else None
        return _write_sealed(out, header, data_key, _copy(stream), connection, log, total=size or None)


def convert(path: str, output: Output, passphrase_file: str, key: KeySpec, sealing: Sealing, connection: Connection,
            log: Log) -> dict:
    """Re-encrypt an OpenPGP (`gpg -c`) file into a .seal in one streaming pass."""
    from . import openpgp

    refuse_overwrite(output)
    with open(passphrase_file, "rb") as f:
        passphrase = f.read(1 << 16)
    data_key, wrapped = _data_key(key, connection)  # after the cheap checks: it may call KMS
    ciphertext = open_local(path, log)
    with ciphertext.stream:
        reader = openpgp.DecryptingReader(ciphertext.stream, passphrase)
        chunks = reader.segments()
        first = next(chunks, memoryview(b""))
        default_name = os.path.basename(path).removesuffix(".gpg").removesuffix(".tar") if path != "-" else ""
        header = sealfile.Header(key_id="", compression=archive.detect_compression(bytes(first[:8])),
                                 name=sealing.name or default_name, version=sealing.model_version, wrapped_key=wrapped)

        def fill(sealing: Writable, progress: Progress) -> int:
            writer = _Counted(sealing, progress)
            writer.write(first)
            for chunk in chunks:
                writer.write(chunk)
            return 0

        return _write_sealed(output.path, header, data_key, fill, connection, log)


def _is_tar(path: str) -> bool:
    import tarfile

    try:
        return tarfile.is_tarfile(path)
    except OSError:
        return False


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


def inspect(location: str, connection: Connection = Connection()) -> Inspection:
    """The header of a .seal wherever the stages read it (a path, file://, s3://, https://, oci://, ...):
    a ranged read of the prefix only, and the object's length from the source."""
    if location == "-":
        with os.fdopen(os.dup(0), "rb") as f:
            header, prefix = _read_header(f, location)
        return Inspection(header, len(prefix), None)
    backend = open_source(location, connection)
    header, prefix = _read_header(io.BytesIO(backend.read_prefix(PREFIX_READ)), location)
    size = backend.size
    return Inspection(header, len(prefix), None if size is None else size - len(prefix))


#: The first bytes of what is not a .seal, and the command that reads it.
_NOT_SEALED = (
    ((b"\x8c", b"\x8d", b"\xc3"), "an OpenPGP (gpg -c) file: convert it (modelseal convert IN -o OUT.seal "
     "--passphrase-file F --key KEY), or decrypt it as it is (decrypt/run --format openpgp)"),
    ((b"\x1f\x8b", b"\x28\xb5\x2f\xfd", b"PK\x03\x04"), "an archive, not sealed: seal it (modelseal seal IN -o "
     "OUT.seal --key KEY)"),
)


def _read_header(stream: Readable, location: str) -> tuple[sealfile.Header, bytes]:
    """sealfile.read_prefix, naming the right command when the input is something else we know."""
    buf = bytearray(8)
    head = bytes(buf[:read_full(stream, memoryview(buf))])
    for magics, what in _NOT_SEALED:
        if head.startswith(magics):
            raise UsageError(f"{location} is not a .seal but {what}")
    return sealfile.read_prefix(_Rejoined(head, stream))


class _Rejoined:
    """The bytes already read, then the rest of the stream."""

    def __init__(self, head: bytes, rest: Readable) -> None:
        self.head, self.rest = head, rest

    def readinto(self, buf: memoryview | bytearray) -> int:
        if self.head:
            n = min(len(buf), len(self.head))
            buf[:n] = self.head[:n]
            self.head = self.head[n:]
            return n
        return self.rest.readinto(buf) or 0


def fetch_key(key_uri: str, output: Output, unwrapping: Unwrapping, guards: Guards, connection: Connection,
              log: Log) -> dict:
    out, passphrase = output.path, unwrapping.passphrase
    if out == "-":
        raise UsageError("refusing to write a key to standard output (in a pod, that is the container's log): "
                         "give -o FILE on a memory-backed volume")
    key_source = open_key(key_uri, connection)
    with PartialFile(out, 0o400, rule=memory_only(guards.allow_disk, log, "the key")) as f:
        wrapped = None
        if key_source.unwraps:
            header = header_from(unwrapping, connection)
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


def fetch_model(source: SourceSpec, output: Output, connection: Connection, log: Log) -> dict:
    """Ciphertext may live on disk; only plaintext and keys are tmpfs-only."""
    out = output.path
    ciphertext = open_ciphertext(source, connection, log)
    progress = log.progress("fetch", ciphertext.size)
    with ciphertext.stream, PartialFile(out, 0o644) as f:
        while view := ciphertext.stream.read_view(1 << 20):  # S3: straight from the part buffers
            f.write(view)
            progress.add(len(view))
        f.commit()
    log.info("fetched", path=out, **progress.summary())
    return progress.summary()


def decrypt(path: str, output: Output, key: KeySpec, decryption: Decryption, guards: Guards,
            connection: Connection, log: Log) -> dict:
    """The ciphertext file at `path` (or stdin) decrypted onto tmpfs; the output appears only once verified."""
    if output.path == "-" and os.isatty(1):
        raise UsageError("refusing to write the plaintext model to a terminal: give -o FILE on tmpfs, or pipe it "
                         "(decrypt -o - | ...)")
    key_source = key.source(connection)  # configuration errors first, before touching any input
    key_file = key.deletable(output.delete_key)
    preflight = Preflight(guards.preflight, log).announce()
    with PartialFile(output.path, 0o600, rule=memory_only(guards.allow_disk, log)) as f:
        ciphertext = open_local(path, log)
        progress = log.progress("decrypt", ciphertext.size)
        with ciphertext.stream:
            plaintext = decrypting(ciphertext, decryption, key, key_source, log)
            preflight(f.fd, f.where, plaintext.file_need(plaintext.reader.worker_memory()))
            most, written = plaintext.most_bytes(), 0
            with BackgroundWriter(f.write) as background:
                for segment in plaintext.reader.segments(ring=background.depth + 2):
                    written += len(segment)
                    if written > most:  # held to the header's size, as unpack holds each file to its own
                        raise IntegrityError(f"the payload is larger than the {most} bytes its .seal header "
                                             "declares (content.tar_bytes): refused before writing past them")
                    background.write(segment)
                    progress.add(len(segment))
        f.commit()
    _consume([(output.delete_key, key_file), (output.delete_input, path)], log)
    log.info("decrypted", path=output.path, **progress.summary())
    return progress.summary()


def unpack(path: str, output: Output, guards: Guards, log: Log) -> dict:
    """The archive at `path` (or stdin) extracted into a new directory; it appears only once complete."""
    from . import unpack as unpacker

    preflight = Preflight(guards.preflight, log).announce()
    with unpacker.Destination(output.path, rule=memory_only(guards.allow_disk, log), log=log) as dest:
        archive = open_local(path, log)
        with archive.stream:
            stats = dest.extract(archive.stream, limits=guards.limits or unpacker.Limits(),
                                 allow_symlinks=guards.allow_symlinks, preflight=preflight, size=archive.size,
                                 verify=guards.verify)
    _consume([(output.delete_input, path)], log)
    log.info("unpacked", path=output.path, **stats)
    return stats


def run(source: SourceSpec, output: Output, key: KeySpec, decryption: Decryption, guards: Guards,
        connection: Connection, log: Log) -> dict:
    """fetch -> decrypt -> unpack in one pass: no ciphertext or tar is ever stored; a signature
    (guards.verify) is checked in the same pass."""
    from . import unpack as unpacker

    key_source = key.source(connection)  # configuration errors first, before touching any input
    key_file = key.deletable(output.delete_key)
    preflight = Preflight(guards.preflight, log).announce()
    with unpacker.Destination(output.path, rule=memory_only(guards.allow_disk, log), log=log) as dest:
        ciphertext = open_ciphertext(source, connection, log)
        with ciphertext.stream:
            plaintext = decrypting(ciphertext, decryption, key, key_source, log)
            buffers = ciphertext.buffers + plaintext.reader.worker_memory()
            stats = dest.extract(plaintext.reader, limits=guards.limits or unpacker.Limits(),
                                 allow_symlinks=guards.allow_symlinks, preflight=preflight, size=plaintext.size,
                                 declared=plaintext.sizes, buffers=buffers, verify=guards.verify)
    _consume([(output.delete_key, key_file)], log)
    log.info("unpacked", path=output.path, **stats)
    return stats
