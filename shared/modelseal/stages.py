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

from . import archive, delivered, header_v2, recipients, sealfile, sizesfile, tinkkeyset
from .atomic import PARTIAL_SUFFIX, PartialFile, remove_quietly
from .connection import Connection
from .digest import DigestReader, parse_pin
from .errors import DeniedError, IntegrityError, UsageError
from .keys import KeySource, open_key
from .log import Log, Progress
from .options import (
    FORMATS,
    Decryption,
    Guards,
    KeySpec,
    Output,
    Rewrapping,
    Sealing,
    SourceSpec,
    Unwrapping,
)
from .overlap import BackgroundWriter
from .placement import Need, Preflight, file_need
from .placement.tmpfs import memory_only
from .sealheader import declared_payload
from .sources import Stream, open_sink, open_source
from .sources.file import open_local as open_file
from .streaming import ChunkReader, DecryptingReader, Readable, Writable
from .streaming import _read_full as read_full
from .uri import URI

PREFIX_READ = sealfile.MAX_PREFIX  # enough bytes to hold any .seal prefix, of either version
__all__ = ["FORMATS", "KeySpec", "convert", "decrypt", "fetch_key", "fetch_model", "inspect", "keygen", "rewrap",
           "run", "seal", "unpack"]


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


def header_from(unwrapping: Unwrapping, connection: Connection) -> sealfile.AnyHeader | None:
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
    header: sealfile.AnyHeader | None = None  # .seal only
    size: int | None = None  # exact length, when the ciphertext's length is known
    identity: str | None = None  # delivered.identity_of the authenticated .seal header; None for other formats

    @property
    def sizes(self) -> sealfile.Sizes | None:
        """What the .seal header says the payload unpacks to."""
        return self.header.fixed.sizes if self.header is not None else None

    @property
    def compression(self) -> str:
        return self.header.fixed.compression if self.header is not None else "none"

    def file_need(self, buffers: int = 0) -> Need:
        """What decrypt writes: the plaintext itself."""
        return file_need(self.size, self.sizes, self.compression, buffers)

    def most_bytes(self) -> float:
        """What decrypt may write: the header's tar_bytes for an uncompressed payload (what the preflight
        sized the target by when the input's length is unknown), else no bound (inf)."""
        declared = declared_payload(self.sizes, self.compression)
        return math.inf if declared is None else declared


def data_key_of(header: sealfile.AnyHeader, key_source: KeySource | None, identity: KeySource | None) -> bytes:
    """A header's data key: version 1's from its one key, version 2's unlocked by any of the keys given
    that is one of its recipients (checked against the header MAC)."""
    if isinstance(header, sealfile.Header):
        if key_source is None:
            raise UsageError("a version 1 .seal has one key and no recipients: --identity cannot open it; "
                             "give --key or --key-uri")
        return key_source.data_key(header.wrapped_key)
    return header.unlock(recipients.identities(key_source, identity))


def decrypting(ciphertext: Opened, decryption: Decryption, key: KeySpec, key_source: KeySource | None,
               identity: KeySource | None, log: Log) -> Plaintext:
    """Verified plaintext of a ciphertext stream in any supported format."""
    fmt, workers = decryption.format, decryption.workers
    if fmt == "seal":

        keys: list[bytes] = []

        def key_for(header: sealfile.AnyHeader) -> bytes:
            # Not authenticated yet: its strings are quoted and shortened.
            log.info("header", **header.log_fields(), **header.fixed.sizes.to_json())
            keys.append(data_key_of(header, key_source, identity))
            return keys[-1]

        header, reader = sealfile.open_sealed(ciphertext.stream, key_for)  # the key checked against the header
        reader.workers = workers
        log.info("decrypting", workers=workers)
        payload = None if ciphertext.size is None else ciphertext.size - reader.associated_data_size
        size = None if payload is None else sealfile.AES256_GCM_HKDF_1MB.plaintext_size_of(payload)
        return Plaintext(reader, header, size, delivered.identity_of(header, keys[-1]))
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


def _recipients(key: KeySpec, sealing: Sealing, connection: Connection) -> list[recipients.Recipient]:
    """Who a new .seal is for: each --recipient, and --key / --key-uri (at least one of them)."""
    if key.key_file and key.key_uri:
        raise UsageError("give exactly one of --key FILE or --key-uri URI")
    found = [recipients.recipient(text, connection) for text in sealing.recipient]
    if key.key_file or key.key_uri:
        source = key.source(connection)
        assert source is not None
        found.append(recipients.of_key(source))
    if not found:
        raise UsageError("no recipient: give --recipient R (age1..., a key service URI), --key FILE or --key-uri URI")
    return found


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


def _sealed_header(fixed: sealfile.Fixed, to: list[recipients.Recipient]) -> tuple[header_v2.Header, bytes]:
    """A new version 2 header: a fresh data key for this file alone, wrapped for each recipient
    (a key service's wrap is a network call: made after the cheap checks)."""
    data_key = header_v2.new_data_key()
    return header_v2.seal(fixed, data_key, to), data_key


def _write_sealed(out: str, header: header_v2.Header, data_key: bytes, fill: Callable[[Writable, Progress], int],
                  connection: Connection, log: Log, total: int | None = None) -> dict:
    """Stream `fill`'s plaintext into a .seal at `out`; nothing is left on failure. `fill` moves the progress
    by the bytes of `total`'s kind (the tar's, before any compression)."""
    sink = open_sink(out, connection)
    progress = log.progress("seal", total)
    sha256 = hashlib.sha256()
    try:
        with BackgroundWriter(sha256.update, depth=4) as behind:
            writer = header_v2.seal_writer(_Hashing(sink, behind), header, data_key)
            files = fill(writer, progress)
            writer.close()
        sink.close()  # completes the object: the rename, the multipart completion, the manifest
    except BaseException:
        sink.abort()
        raise
    parsed = URI.parse(out)
    digest = "sha256:" + sha256.hexdigest()
    listed = [r["recipient"] for r in header.recipients()]
    # key_id: the data key's public id, which fetch-key's key_written names too
    log.info("sealed", out=parsed.path if parsed.scheme == "file" else parsed.redacted(), files=files,
             plaintext_bytes=writer.plaintext_bytes, bytes=writer.ciphertext_bytes + len(header.encode()),
             recipients=listed, key_id=sealfile.key_id(data_key), sha256=digest)
    return {"bytes": writer.plaintext_bytes, "files": files, "recipients": len(listed),
            "key_id": sealfile.key_id(data_key), "sha256": digest}


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
    to = _recipients(key, sealing, connection)
    default_name = os.path.basename(os.path.abspath(model)) if model != "-" else ""
    header, data_key = _sealed_header(sealfile.Fixed(
        compression=content_compression, name=sealing.name or default_name, version=sealing.model_version,
        sizes=plan.sizes() if plan is not None else sizes,
    ), to)

    def tar(writer: Writable, progress: Progress) -> int:
        assert plan is not None
        comp = archive.compressor(writer, compress)
        files = archive.write_tar(plan, _Counted(comp, progress))
        comp.close()
        return files

    if wrap_in_tar:
        return _write_sealed(out, header, data_key, tar, connection, log, total=header.fixed.sizes.tar_bytes)
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
    to = _recipients(key, sealing, connection)
    ciphertext = open_local(path, log)
    with ciphertext.stream:
        reader = openpgp.DecryptingReader(ciphertext.stream, passphrase)
        chunks = reader.segments()
        first = next(chunks, memoryview(b""))
        default_name = os.path.basename(path).removesuffix(".gpg").removesuffix(".tar") if path != "-" else ""
        header, data_key = _sealed_header(sealfile.Fixed(
            compression=archive.detect_compression(bytes(first[:8])), name=sealing.name or default_name,
            version=sealing.model_version), to)

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

    header: sealfile.AnyHeader
    prefix_bytes: int
    payload_bytes: int | None  # None: read from stdin

    def to_json(self) -> dict:
        """Version 1: its header; version 2: its fixed fields and its recipients (type and who: no secret is
        in a stanza, and the list shows none of their bodies)."""
        if isinstance(self.header, sealfile.Header):
            info = self.header.to_json()
        else:
            info = self.header.fixed.to_json()
            info["recipients"] = self.header.recipients()
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


def _read_header(stream: Readable, location: str) -> tuple[sealfile.AnyHeader, bytes]:
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


def fetch_key(key_uri: str | None, output: Output, unwrapping: Unwrapping, guards: Guards, connection: Connection,
              log: Log) -> dict:
    """The key onto tmpfs: a key source's key as it is, or a .seal's data key: unwrapped by a key service,
    or, from a version 2 header, unlocked by any recipient's key (--key-uri) or an age identity (--identity)."""
    out, passphrase = output.path, unwrapping.passphrase
    if out == "-":
        raise UsageError("refusing to write a key to standard output (in a pod, that is the container's log): "
                         "give -o FILE on a memory-backed volume")
    if bool(key_uri) == bool(unwrapping.identity):
        raise UsageError("give exactly one of --key-uri URI or --identity URI")
    if unwrapping.identity and passphrase:
        raise UsageError("--passphrase: an age identity unlocks a .seal's data key, not a passphrase")
    key_source = open_key(key_uri, connection) if key_uri else None
    identity = open_key(unwrapping.identity, connection) if unwrapping.identity else None
    named = key_source or identity
    assert named is not None
    with PartialFile(out, 0o400, rule=memory_only(guards.allow_disk, log, "the key")) as f:
        log.info("key_source", uri=named.uri.redacted())
        header = None if passphrase else header_from(unwrapping, connection)
        if key_source is not None and not key_source.unwraps and not isinstance(header, header_v2.Header):
            key = key_source.secret(encoding="raw") if passphrase else key_source.data_key()  # the key as it is
        else:
            if header is None:
                raise UsageError(f"{named.uri.redacted()}: the data key is in a .seal header: give "
                                 "--wrapped-from FILE or --source URI")
            if isinstance(header, sealfile.Header) and key_source is not None and header.wrapped_key is None:
                raise UsageError(f"{key_source.uri.redacted()}: the .seal header carries no wrapped key")
            key = data_key_of(header, key_source, identity)
        f.write(key)
        f.commit()
    if passphrase:  # a passphrase may be guessable: no fingerprint of it in logs
        log.info("key_written", path=out)
        return {"path": out}
    log.info("key_written", path=out, key_id=sealfile.key_id(key))
    return {"path": out, "key_id": sealfile.key_id(key)}


def rewrap(source: str, output: Output, rewrapping: Rewrapping, connection: Connection, log: Log) -> dict:
    """A version 2 .seal for other recipients, its payload streamed through byte for byte.

    The prefix is read and unlocked (the header MAC checked with the data
    key), the recipient list rewritten under a new MAC, and the payload copied
    from the input to the output without being decrypted: it is neither
    checked nor changed (decrypt checks it, as for any file). The output
    appears whole or not at all (the sink's rename, multipart completion or
    manifest comes last).
    """
    key = rewrapping.key
    key_source = key.source(connection)  # configuration errors first, before touching any input
    identity = key.identity_source(connection)
    add = [recipients.recipient(text, connection) for text in rewrapping.add]
    remove = [recipients.removal(text, connection) for text in rewrapping.remove]
    if not add and not remove:
        raise UsageError("nothing to do: give --add R or --remove R")
    ciphertext = open_ciphertext(SourceSpec(source), connection, log)
    with ciphertext.stream as stream:
        header, _ = sealfile.read_prefix(stream)
        if isinstance(header, sealfile.Header):
            raise UsageError("a version 1 .seal has one key and no recipient list, and its whole header is bound "
                             "to the payload: re-seal it to make a version 2 file")
        log.info("header", **header.log_fields())
        data_key = data_key_of(header, key_source, identity)
        rewrapped = header.rewrap(data_key, add=add, remove=remove)
        sink = open_sink(output.path, connection)
        try:
            sink.write(rewrapped.encode())
            copied = 0
            while view := stream.read_view(1 << 20):  # the payload, as stored: never decrypted
                sink.write(view)
                copied += len(view)
            sink.close()
        except BaseException:
            sink.abort()
            raise
    listed = [r["recipient"] for r in rewrapped.recipients()]
    log.info("rewrapped", out=URI.parse(output.path).redacted(), recipients=listed, payload_bytes=copied)
    return {"recipients": len(listed), "payload_bytes": copied}


def fetch_model(source: SourceSpec, output: Output, connection: Connection, log: Log) -> dict:
    """Ciphertext may live on disk; only plaintext and keys are tmpfs-only."""
    out = output.path
    ciphertext = open_ciphertext(source, connection, log)
    progress = log.progress("fetch", ciphertext.size)
    head = bytearray()  # the first bytes, for the length a .seal header declares
    with ciphertext.stream, PartialFile(out, 0o644) as f:
        while view := ciphertext.stream.read_view(1 << 20):  # S3: straight from the part buffers
            if len(head) < PREFIX_READ:
                head += view[:PREFIX_READ - len(head)]
            f.write(view)
            progress.add(len(view))
        declared = sealfile.declared_length(bytes(head))
        if declared is not None and f.bytes_written != declared:  # not the URI: a presigned one holds a secret
            raise IntegrityError(f"the download is {f.bytes_written} bytes and its .seal header declares {declared}: "
                                 "the server ended it early (or serves another object); nothing kept")
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
    identity = key.identity_source(connection)
    key_file = key.deletable(output.delete_key)
    preflight = Preflight(guards.preflight, log).announce()
    rule = memory_only(guards.allow_disk, log)
    with PartialFile(output.path, 0o600, rule=rule) as f:
        ciphertext = open_local(path, log)
        progress = log.progress("decrypt", ciphertext.size)
        with ciphertext.stream:
            plaintext = decrypting(ciphertext, decryption, key, key_source, identity, log)
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
        # Verified: the header's sizes go beside the output for unpack (sizesfile.py), whole, just before it.
        sizes = sizesfile.prepare(output.path, plaintext.sizes, rule, plaintext.identity, f.dir_fd)
        if sizes is not None:
            sizes.commit()
        try:
            f.commit()
        except BaseException:
            sizesfile.remove(output.path)
            raise
    _consume([(output.delete_key, key_file), (output.delete_input, path)], log)
    log.info("decrypted", path=output.path, **progress.summary())
    return progress.summary()


def unpack(path: str, output: Output, guards: Guards, log: Log) -> dict:
    """The archive at `path` (or stdin) extracted into a new directory; it appears only once complete."""
    from . import unpack as unpacker

    preflight = Preflight(guards.preflight, log).announce()
    stats: dict = {"already_delivered": True}
    with unpacker.Destination(output.path, rule=memory_only(guards.allow_disk, log), log=log,
                              resumable=True) as dest:
        identity = sizesfile.identity(path)  # decrypt's, from the verified header: the tar has none of its own
        if not dest.already_delivered(identity):  # else a restart after the rename: the tar is not read
            archive = open_local(path, log)
            declared = sizesfile.read(path)  # decrypt's record of the verified header's sizes, if it left one
            if declared is not None:
                log.info("sizes", path=sizesfile.path_of(path), **declared.to_json())
            with archive.stream:
                stats = dest.extract(archive.stream, limits=guards.limits or unpacker.Limits(),
                                     allow_symlinks=guards.allow_symlinks, preflight=preflight, size=archive.size,
                                     declared=declared, verify=guards.verify, identity=identity)
    _consume([(output.delete_input, path)], log)
    if output.delete_input and sizesfile.remove(path):
        log.info("deleted", path=sizesfile.path_of(path))
    if "already_delivered" not in stats:
        log.info("unpacked", path=output.path, **stats)
    return stats


def run(source: SourceSpec, output: Output, key: KeySpec, decryption: Decryption, guards: Guards,
        connection: Connection, log: Log) -> dict:
    """fetch -> decrypt -> unpack in one pass: no ciphertext or tar is ever stored; a signature
    (guards.verify) is checked in the same pass."""
    from . import unpack as unpacker

    key_source = key.source(connection)  # configuration errors first, before touching any input
    identity = key.identity_source(connection)
    key_file = key.deletable(output.delete_key)
    preflight = Preflight(guards.preflight, log).announce()
    with unpacker.Destination(output.path, rule=memory_only(guards.allow_disk, log), log=log,
                              resumable=True) as dest:
        ciphertext = open_ciphertext(source, connection, log)
        with ciphertext.stream:
            plaintext = decrypting(ciphertext, decryption, key, key_source, identity, log)
            if dest.already_delivered(plaintext.identity):  # a restart after the rename: only the header read
                _consume([(output.delete_key, key_file)], log)
                return {"already_delivered": True}
            buffers = ciphertext.buffers + plaintext.reader.worker_memory()
            stats = dest.extract(plaintext.reader, limits=guards.limits or unpacker.Limits(),
                                 allow_symlinks=guards.allow_symlinks, preflight=preflight, size=plaintext.size,
                                 declared=plaintext.sizes, buffers=buffers, verify=guards.verify,
                                 identity=plaintext.identity)
    _consume([(output.delete_key, key_file)], log)
    log.info("unpacked", path=output.path, **stats)
    return stats
