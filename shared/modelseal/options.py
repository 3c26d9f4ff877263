"""What a command asks of a stage, grouped: built once by the CLI from its flags, taken whole by the stages.

A field is named as its flag's destination (`--tink-template` -> tink_template),
so cli.py builds each group by name: a new flag is one edit in the parser and
one here. Fields whose value is read from several flags or made into an
object (the associated data, the workers, the unpack limits, the signature
verifier) are built by the CLI and named in its builder.

    KeySpec     where the key comes from: a key file or a key URI
    SourceSpec  where the ciphertext comes from, and the digest it must have
    Decryption  how the ciphertext is read: its format, associated data, Tink template, workers
    Guards      what a write must respect: memory only, the preflight, the unpack limits, a signature
    Output      where the result goes, and what is consumed after success
    Sealing     what `seal` and `convert` record and pack
    Unwrapping  where `fetch-key` finds the wrapped key, and what kind of secret it writes
    Rewrapping  what `rewrap` unlocks with, and the recipients it adds and removes
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .connection import Connection
from .errors import UsageError
from .keys import KeySource, open_key
from .uri import URI

if TYPE_CHECKING:
    from .signing import StreamVerifier
    from .unpack.limits import Limits


@dataclass(frozen=True)
class KeySpec:
    """Where the key comes from: a key file (`--key`) or a key URI (`--key-uri`), and for a version 2
    .seal an age identity (`--identity URI`): any of them that is one of the file's recipients opens it."""

    key_file: str | None = None
    key_uri: str | None = None
    identity: str | None = None

    def source(self, connection: Connection) -> KeySource | None:
        """The --key / --key-uri source (None: only --identity was given)."""
        if self.key_file and self.key_uri:
            raise UsageError("give exactly one of --key FILE or --key-uri URI")
        if not (self.key_file or self.key_uri):
            if self.identity:
                return None
            raise UsageError("give exactly one of --key FILE or --key-uri URI (or, for a version 2 .seal, "
                             "--identity URI)")
        if self.key_file:  # a path is a path: `#` and `?` in it are not URI syntax
            return open_key(URI.for_path(os.path.abspath(self.key_file)), connection)
        return open_key(self.key_uri or "", connection)

    def identity_source(self, connection: Connection) -> KeySource | None:
        """Where the age identity comes from (opened early: a bad URI is a usage error before any input)."""
        return open_key(self.identity, connection) if self.identity else None

    def file(self) -> str | None:
        """The key file on disk, if the key comes from one (--key, or a file:// key URI)."""
        if self.key_file:
            return self.key_file
        if not self.key_uri:
            return None  # --identity only
        uri = URI.parse(self.key_uri)
        return uri.path if uri.scheme == "file" and uri.path != "-" else None

    def deletable(self, delete_key: bool) -> str | None:
        """The key file --delete-key removes after success; refused when there is none."""
        if not delete_key:
            return None
        path = self.file()
        if path is None and not self.key_uri:
            raise UsageError("--delete-key deletes a --key file; an --identity is not deleted (it is a Secret's, "
                             "say, and may open other files)")
        if path is None:
            raise UsageError(f"--delete-key: the key comes from {URI.parse(self.key_uri or '').scheme}:, "
                             "not from a key file; there is nothing to delete")
        return path

    def secret(self, source: KeySource | None, fmt: str) -> bytes:
        """The key material a format needs: a key file's bytes as they are (a Tink
        keyset, a raw key, a passphrase), or what the key URI yields."""
        if source is None:
            raise UsageError(f"--identity opens a version 2 .seal only; --format {fmt} needs --key or --key-uri")
        if self.key_file:
            with open(self.key_file, "rb") as f:
                return f.read(1 << 20)
        return source.secret(encoding="raw") if fmt == "openpgp" else source.data_key()


@dataclass(frozen=True)
class SourceSpec:
    """Where the ciphertext comes from (`--source`, a URI), and the SHA-256 it must have (`--sha256`)."""

    source: str
    sha256: str | None = None


#: The input formats `decrypt` and `run` read.
FORMATS = ("seal", "tink", "openpgp")


@dataclass(frozen=True)
class Decryption:
    """How the ciphertext is read (`workers`: see modelseal.parallel)."""

    format: str = "seal"
    associated_data: bytes = b""  # --format tink
    tink_template: str = "AES256_GCM_HKDF_1MB"  # --format tink with a raw key
    workers: int = 1


@dataclass(frozen=True)
class Guards:
    """What a stage's writes must respect."""

    allow_disk: bool = False  # plaintext (or a key) on a filesystem that is not memory, logged
    preflight: bool = True  # room on the target and under the memory limit, checked before writing
    limits: Limits | None = None  # unpack's limits (None: unpack.Limits())
    allow_symlinks: bool = False  # unpack symlinks that stay inside the tree
    verify: StreamVerifier | None = None  # the model's signature, checked in the stream before the rename


@dataclass(frozen=True)
class Output:
    """Where the result goes (`-o`), and which inputs are deleted once it is there."""

    path: str
    delete_key: bool = False
    delete_input: bool = False
    force: bool = False  # seal, convert: replace an existing local file


@dataclass(frozen=True)
class Sealing:
    """What `seal` (and `convert`, name and version only) records in the header and packs."""

    name: str | None = None  # default: the model's file name
    model_version: str = ""
    compress: str = "none"
    sign_key: str | None = None
    follow_external_symlinks: bool = False
    recipient: tuple[str, ...] = ()  # --recipient R, repeatable: age1... or a key URI (recipients.recipient)


@dataclass(frozen=True)
class Unwrapping:
    """Where `fetch-key` finds a wrapped key's .seal header, and whether the secret is a passphrase."""

    wrapped_from: str | None = None  # a local .seal
    source: str | None = None  # the model's source: a ranged read of its first bytes
    passphrase: bool = False  # a secret of any length, not a 32-byte data key
    identity: str | None = None  # an age identity's key URI: unlocks a version 2 header's data key


@dataclass(frozen=True)
class Rewrapping:
    """`rewrap`: who unlocks the file (an age identity, or a key URI / key file), and the list's changes."""

    key: KeySpec = field(default_factory=KeySpec)
    add: tuple[str, ...] = ()  # recipients as `seal --recipient` takes them
    remove: tuple[str, ...] = ()  # the same, or as `inspect` lists them
