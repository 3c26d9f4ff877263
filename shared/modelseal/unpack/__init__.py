"""Safe extraction of a tar or zip stream into a new directory.

`extract(src, dest)` reads an archive from a (generally non-seekable) stream,
the verified-plaintext reader of a decrypting stream in `run`, and builds the
tree in a private staging directory beside `dest`, renamed to `dest` only
after the archive and then the whole input stream have been read without
error. Any failure (a hostile entry, a limit, a corrupt archive, an exception
raised by the input stream itself, KeyboardInterrupt) wipes the staging
directory and re-raises: nothing is left in dest's parent.

Safe by construction rather than by filtering paths (tree.py): files are
created only through directory descriptors with O_NOFOLLOW|O_EXCL; only
regular files and directories by default; names, modes and limits are
checked and counted on the stream. Corrupt, truncated or malformed archives
and compressed streams: IntegrityError (exit 4).

The pieces, one per module:
    decompress.py  the raw input, bounded decompressors (gzip/xz/bzip2/zstd), the ratio check
    tar.py         the streaming tar reader (ustar / pax / GNU)
    zip.py         zip, spooled to an anonymous file on the target filesystem
    tree.py        name checks and the fd-relative writer of the staging tree
    limits.py      the limits counted on the stream

Formats are detected from content: zip by its signature, otherwise tar, plain
or gzip / xz / bzip2 / zstd compressed (modelseal.archive.detect_compression).

Destination: `dest` must not exist, or be an empty directory (replaced by the
rename). A non-empty directory, a file, a symlink or a mount point is refused
with UsageError (exit 2) before anything is read. Leftover `.NAME.staging-*`
directories beside dest, from a killed earlier attempt (a restarted init
container on the same emptyDir), are removed first; two extractions to the
same dest at the same time are not supported.
"""

from __future__ import annotations

import errno
import hashlib
import os
import secrets
import shutil
import stat
import time
from typing import BinaryIO

from ..archive import detect_compression
from ..errors import IntegrityError, UsageError
from ..log import Log
from .decompress import Plain, Raw, producer
from .limits import Limits
from .tar import extract_tar
from .tree import DIR_FLAGS, Digests, Tree, fs_error
from .zip import ZIP_MAGICS, extract_zip

__all__ = ["Limits", "extract"]


class _NullStream:
    def write(self, _: str) -> int:
        return 0

    def flush(self) -> None:
        pass



def _staging_prefix(name: str) -> str:
    if len(name.encode("utf-8", "surrogateescape")) > 200:
        name = hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return f".{name}.staging-"


def _check_dest(parent_fd: int, name: str, dest: str) -> None:
    try:
        st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        raise UsageError(f"{dest} is a symlink: give a new directory to extract into")
    if not stat.S_ISDIR(st.st_mode):
        raise UsageError(f"{dest} exists and is not a directory")
    if st.st_dev != os.fstat(parent_fd).st_dev:
        raise UsageError(f"{dest} is a mount point: give a new directory inside it (e.g. {dest.rstrip('/')}/model)")
    fd = os.open(name, DIR_FLAGS, dir_fd=parent_fd)
    try:
        if os.listdir(fd):
            raise UsageError(f"{dest} exists and is not empty: refusing to overwrite it")
    finally:
        os.close(fd)


def _remove(parent_fd: int, name: str) -> None:
    st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    if stat.S_ISDIR(st.st_mode):
        assert shutil.rmtree.avoids_symlink_attacks
        shutil.rmtree(name, dir_fd=parent_fd)
    else:
        os.unlink(name, dir_fd=parent_fd)


def _make_parents(parent: str, dest: str) -> list[str]:
    """Create dest's missing parents (0755), e.g. /models/resnet for /models/resnet/1.

    The path is the operator's configuration, not archive input, so plain
    mkdir is fine here; returns what was created, shallowest first.
    """
    missing = []
    path = parent
    while not os.path.lexists(path):
        missing.append(path)
        path = os.path.dirname(path)
    created = []
    for path in reversed(missing):
        try:
            os.mkdir(path, 0o755)
        except FileExistsError:
            continue
        except OSError as e:
            raise UsageError(f"cannot extract into {dest}: creating {path}: {e.strerror}") from None
        created.append(path)
    return created



def extract(src: BinaryIO, dest: str, *, limits: Limits = Limits(), allow_symlinks: bool = False,
            log: Log | None = None, verify: Digests | None = None) -> dict:
    """Extract a tar (ustar/pax/GNU; none/gzip/xz/bzip2/zstd) or zip from the stream `src` into a new directory `dest`.

    Returns stats {"files", "dirs", "symlinks", "bytes", "format", "compression", "seconds"}.
    Raises UsageError (bad dest), UnsafeError (hostile entry), CapacityError
    (limit, no space), IntegrityError (corrupt or truncated archive), or
    whatever `src` raises; on any failure nothing is left beside dest.
    `verify` (a signing.StreamVerifier) hashes each file as it is written and
    checks the tree against its signed manifest before the rename.
    """
    if log is None:
        log = Log("unpack", stream=_NullStream())  # type: ignore[arg-type]
    started = time.monotonic()
    dest_abs = os.path.abspath(dest)
    parent, name = os.path.split(dest_abs)
    if name in ("", ".", ".."):
        raise UsageError(f"cannot extract into {dest!r}: give a new directory's path")
    created = _make_parents(parent, dest)
    try:
        parent_fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise UsageError(f"cannot extract into {dest}: its parent directory {parent}: {e.strerror}") from None
    try:
        _check_dest(parent_fd, name, dest)
        prefix = _staging_prefix(name)
        for stale in os.listdir(parent_fd):
            if stale.startswith(prefix):
                log.warning("stale_staging_removed", name=stale)
                _remove(parent_fd, stale)
        staging = prefix + secrets.token_hex(8)
        try:
            os.mkdir(staging, 0o700, dir_fd=parent_fd)
        except OSError as e:
            raise fs_error(e, f"creating a staging directory beside {dest}") from None
        try:
            root = os.open(staging, DIR_FLAGS, dir_fd=parent_fd)
            try:
                stats = _extract_into(src, root, limits, allow_symlinks, log, verify)
                if verify is not None:
                    stats.update(verify.finish())  # the input has ended: check before the rename
                os.fchmod(root, 0o755)
            finally:
                os.close(root)
            try:
                os.rename(staging, name, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
            except OSError as e:
                if e.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR, errno.EBUSY):
                    raise UsageError(f"{dest} appeared or changed during the extraction: {e.strerror}") from None
                raise fs_error(e, f"renaming the staging directory to {dest}") from None
        except BaseException:
            try:
                _remove(parent_fd, staging)
            except OSError as e:
                log.error("staging_cleanup_failed", name=staging, error=e.strerror)
            raise
    except BaseException:
        for path in reversed(created):  # parents we made for dest go too
            try:
                os.rmdir(path)
            except OSError:
                break
        raise
    finally:
        os.close(parent_fd)
    stats["seconds"] = round(time.monotonic() - started, 3)
    return stats


def _extract_into(src: BinaryIO, root: int, limits: Limits, allow_symlinks: bool, log: Log,
                  verify: Digests | None = None) -> dict:
    raw = Raw(src)
    head = raw.peek(8)
    if not head:
        raise IntegrityError("empty input: not a tar or zip archive")
    if head[:4] in ZIP_MAGICS:
        fmt, compression = "zip", "none"
    else:
        fmt, compression = "tar", detect_compression(head)
    log.info("unpack_start", format=fmt, compression=compression)
    tree = Tree(root, limits, allow_symlinks, log, verify)
    try:
        if fmt == "zip":
            extract_zip(raw, tree)
        else:
            extract_tar(Plain(producer(raw, compression), limits), tree)
        tree.finish()
    finally:
        tree.close()
    # Paranoia: whatever the path, the whole input has been read.
    if raw.chunk(1):
        raise IntegrityError("unexpected data after the end of the archive")
    return {"files": tree.files, "dirs": tree.dirs, "symlinks": tree.symlinks, "bytes": tree.bytes,
            "format": fmt, "compression": compression}
