"""The sizes `decrypt` leaves beside its output, so `unpack` checks capacity from the .seal header.

In the four-stage chain (fetch-model, decrypt, unpack) the authenticated
header is gone by the time `unpack` reads the tar, and a compressed tar's
own length says nothing of what it unpacks to. So `decrypt`, once every
segment is verified, writes the header's content sizes (sealfile.Sizes) as
JSON to `OUT.sizes` and renames it into place just before the tar itself
(the same PartialFile rule: whole or absent); `unpack IN` reads
`IN.sizes` when present and treats it as the header: the preflight sizes
the tree by it, the limits follow it, the archive is held to it (more files
or bytes than declared is exit 4). `unpack --delete-input` removes it with
the tar. A decrypt whose header declares no sizes removes a stale one.

Trust: the file lives on the pod's own memory volume, beside the tar, and is
written by decrypt after verification. Whoever can write that volume can
replace the tar itself, so the sizes file gives them nothing more: a smaller
count fails the extraction (exit 4), a larger one is refused by the
preflight when it exceeds the room there is, and otherwise only lifts the
limits to what that volume and memory limit hold anyway. It is parsed as
untrusted input (untrusted.py): a malformed one is exit 4, never a crash.

It also carries the header's delivery identity (delivered.py, member
`delivery`), so a restarted `unpack` that finds its own completed tree at
DEST exits 0 (issue 25): the tar alone has no authenticated identity.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
from typing import Any

from .atomic import PartialFile, TargetRule, remove_quietly
from .errors import IntegrityError
from .sealfile import Sizes
from .untrusted import json_document, show

SUFFIX = ".sizes"
IDENTITY = "delivery"  # the member holding delivered.identity_of the verified header
_HEX256 = re.compile(r"[0-9a-f]{64}")
#: Bytes read at most: three 63-bit numbers and their names fit in a tenth of it.
MAX_BYTES = 4096


def path_of(output: str) -> str | None:
    """Where the sizes of the decrypted file `output` go (None for stdout)."""
    return None if output == "-" else output + SUFFIX


def prepare(output: str, sizes: Sizes | None, rule: TargetRule | None,
            identity: str | None = None, dir_fd: int | None = None) -> PartialFile | None:
    """Write `sizes` and the delivery `identity` to OUT.sizes.partial (commit() it just before the tar's
    own commit); None when there is nothing to write, after removing a stale OUT.sizes. `dir_fd`: the
    output's directory as opened and checked for the tar (PartialFile.dir_fd), never reopened by path."""
    path = path_of(output)
    if path is None:
        return None
    content: dict[str, Any] = dict(sizes.to_json()) if sizes is not None else {}
    if identity is not None:
        content[IDENTITY] = identity
    if not content:
        remove_quietly(path)
        return None
    f = PartialFile(path, 0o600, rule=rule, dir_fd=dir_fd)
    try:
        f.write(json_bytes(content))
    except BaseException:
        f.abort()
        raise
    return f


def json_bytes(content: dict[str, Any]) -> bytes:
    return (json.dumps(content, sort_keys=True) + "\n").encode()


def read(archive: str) -> Sizes | None:
    """The sizes decrypt left beside `archive`, or None when there are none (or the input is stdin)."""
    doc = _document(archive)
    sizes = Sizes.from_json(doc) if doc is not None else None
    return sizes if sizes is not None and sizes.to_json() else None


def identity(archive: str) -> str | None:
    """The delivery identity decrypt left beside `archive` (delivered.py), or None."""
    doc = _document(archive)
    found = doc.get(IDENTITY) if doc is not None else None
    if found is not None and not (isinstance(found, str) and _HEX256.fullmatch(found)):
        raise IntegrityError(f"{show(path_of(archive) or '')}: malformed, {IDENTITY} is not a SHA-256 in hex")
    return found


def _document(archive: str) -> dict[str, Any] | None:
    path = path_of(archive)
    if path is None:
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise IntegrityError(f"{show(path)} is a symlink, not the sizes decrypt writes") from None
        if e.errno in (errno.EMFILE, errno.ENFILE):
            raise  # out of descriptors: a capacity error (exit 6, errors.classify), not a bad file
        raise IntegrityError(f"cannot read {show(path)}: {e.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise IntegrityError(f"{show(path)} is not a regular file, not the sizes decrypt writes")
        data = os.read(fd, MAX_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_BYTES:
        raise IntegrityError(f"{show(path)} is over {MAX_BYTES} bytes, not the sizes decrypt writes")
    doc = json_document(data, show(path))
    if not isinstance(doc, dict):
        raise IntegrityError(f"{show(path)}: malformed, not a JSON object")
    return doc


def remove(archive: str) -> bool:
    """Remove the sizes beside `archive` (unpack --delete-input); report whether there were any."""
    path = path_of(archive)
    return path is not None and remove_quietly(path)
