"""The record of a completed delivery, so a restarted stage that finds its own output exits 0 (issue 25).

A stage killed after renaming its staging directory to DEST, but before it
exited, is restarted by the kubelet; without this record the restart sees a
non-empty DEST and refuses it (exit 2) forever. So, just before that rename,
the stage writes `.NAME.delivered` beside DEST in its parent (NAME.partial,
then a rename, through the parent's descriptor): one line holding the
identity of what it delivered. A restart that finds DEST non-empty and this
record naming the same identity logs `already_delivered` and exits 0,
without touching DEST; anything else is refused as before.

The identity is taken only from authenticated bytes: SHA-256 over the data
key's public id (sealfile.key_id) and the header's associated data, computed
once the key has opened the header (version 2: the header MAC verified;
version 1: the key id checked). A version 2 data key is fresh per file, so
two different seals never share an identity; a rewrapped file keeps it (same
data key, same payload). No authenticated identity (tink, openpgp, a tar
without decrypt's record): no record, and a non-empty DEST is refused.

Trust: the record lives on the pod's volume beside DEST. Whoever can write
there can replace DEST itself, so a forged record gives them nothing more
than they have (it can only make a restart leave DEST as it is).
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import os
import stat

from .sealfile import AnyHeader, key_id

SUFFIX = ".delivered"
_PARTIAL = ".partial"
_TAG = "modelseal-delivered-v1"
#: Bytes read at most: the tag and a SHA-256 in hex fit in a third of it.
MAX_BYTES = 256
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def identity_of(header: AnyHeader, data_key: bytes) -> str:
    """The identity of a .seal, from a header the data key has opened (call only after that check)."""
    digest = hashlib.sha256(_TAG.encode() + b"\0" + key_id(data_key).encode() + b"\0")
    digest.update(header.aad)
    return digest.hexdigest()


def record_name(name: str) -> str:
    """The record's name in DEST's parent: hidden, like the staging directories (long names hashed)."""
    if len(name.encode("utf-8", "surrogateescape")) > 200:
        name = hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return f".{name}{SUFFIX}"


def read(parent_fd: int, name: str) -> str | None:
    """The identity recorded for DEST `name`, or None when there is no record (or not one of ours)."""
    try:
        fd = os.open(record_name(name), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=parent_fd)
    except OSError as e:
        if e.errno in (errno.EMFILE, errno.ENFILE):
            raise  # a limit of this process (exit 6, errors.from_os_error): no verdict on the record
        return None  # absent, a symlink (ELOOP), unreadable: not a record of ours
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        data = os.read(fd, MAX_BYTES + 1)
    finally:
        os.close(fd)
    fields = data.decode("ascii", "replace").split()
    if len(data) > MAX_BYTES or len(fields) != 2 or fields[0] != _TAG:
        return None
    return fields[1]


def matches(recorded: str | None, identity: str | None) -> bool:
    """Whether a record names this delivery (nothing matches an unknown identity)."""
    return recorded is not None and identity is not None and hmac.compare_digest(recorded, identity)


def write(parent_fd: int, name: str, identity: str) -> None:
    """Record `identity` for DEST `name`, whole or not at all."""
    final = record_name(name)
    partial = final + _PARTIAL
    remove(parent_fd, partial, exact=True)
    fd = os.open(partial, _NEW_FILE, 0o644, dir_fd=parent_fd)
    try:
        data = f"{_TAG} {identity}\n".encode()
        os.write(fd, data)  # a few dozen bytes: written whole, or an error raised
        os.close(fd)
        fd = -1
        os.replace(partial, final, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        remove(parent_fd, partial, exact=True)
        raise


def remove(parent_fd: int, name: str, *, exact: bool = False) -> None:
    """Remove the record for DEST `name` (or, `exact`, the file `name` itself), if any."""
    try:
        os.unlink(name if exact else record_name(name), dir_fd=parent_fd)
    except FileNotFoundError:
        pass
