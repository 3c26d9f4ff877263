"""Safe extraction of a tar or zip stream into a new directory.

`extract(archive, dest)` reads an archive from a (generally non-seekable) stream,
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
    decompress.py  the archive as read, bounded decompressors (gzip/xz/bzip2/zstd), the ratio check
    tar.py         the streaming tar reader (ustar / pax / GNU)
    zip.py         zip, spooled to an anonymous file on the target filesystem
    tree.py        name checks and the fd-relative writer of the staging tree
    limits.py      the limits counted on the stream: the header's sizes, else given, else the defaults

Formats are detected from content: zip by its signature, otherwise tar, plain
or gzip / xz / bzip2 / zstd compressed (modelseal.archive.detect_compression).

Destination: `dest` must not exist, or be an empty directory (replaced by the
rename). A non-empty directory, a file, a symlink or a mount point is refused
with UsageError (exit 2) before anything is read. Leftover `.NAME.staging-*`
directories beside dest, from a killed earlier attempt (a restarted init
container on the same emptyDir), are removed first, and so is a delivery
record (`.NAME.delivered`) beside an absent or empty dest; two extractions to the
same dest at the same time are not supported. A resumable Destination (run,
unpack) lets a non-empty dest through when a delivery record sits beside it
(delivered.py, `.NAME.delivered`, written just before the rename): the caller
authenticates its input, then already_delivered() leaves dest as it is when
the record names that input, and refuses it as above otherwise.
"""

from __future__ import annotations

import errno
import hashlib
import os
import secrets
import shutil
import stat
import time

from .. import delivered
from ..archive import detect_compression
from ..atomic import Parents, TargetRule
from ..errors import IntegrityError, UsageError
from ..log import Log
from ..overlap import WriteBehind
from ..placement import Preflight, tree_need
from ..sealfile import MAGIC, Sizes
from ..streaming import Readable
from .decompress import Archive, Decompressed, producer
from .limits import Limits
from .tar import extract_tar
from .tree import DIR_FLAGS, Digests, Tree, fs_error
from .zip import ZIP_MAGICS, extract_zip

__all__ = ["Destination", "Limits", "extract"]


class _NullStream:
    def write(self, _: str) -> int:
        return 0

    def flush(self) -> None:
        pass



def _staging_prefix(name: str) -> str:
    if len(name.encode("utf-8", "surrogateescape")) > 200:
        name = hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return f".{name}.staging-"


def _check_dest(parent_fd: int, name: str, dest: str, resumable: bool = False) -> str | None:
    """Refuse a dest that is not absent or an empty directory; with `resumable`, a non-empty one that has
    a delivery record beside it is let through: its recorded identity is returned for the caller to match."""
    try:
        st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(st.st_mode):
        raise UsageError(f"{dest} is a symlink: give a new directory to extract into")
    if not stat.S_ISDIR(st.st_mode):
        raise UsageError(f"{dest} exists and is not a directory")
    if st.st_dev != os.fstat(parent_fd).st_dev:
        raise _mount_point(dest)
    fd = os.open(name, DIR_FLAGS, dir_fd=parent_fd)
    try:
        if not os.listdir(fd):
            return None
    finally:
        os.close(fd)
    recorded = delivered.read(parent_fd, name) if resumable else None
    if recorded is None:
        raise _refusal(dest)
    return recorded


def _refusal(dest: str) -> UsageError:
    return UsageError(f"{dest} exists and is not empty: refusing to overwrite it")


#: Descriptors held back while the staging tree is filled and given back to remove it when the fill
#: fails: a fill that failed for want of descriptors (EMFILE) left its staging directory behind, as
#: shutil.rmtree holds one per level and one more (the soak's find, issue 25). Enough for 6 levels.
CLEANUP_DESCRIPTORS = 8


def _mount_point(dest: str) -> UsageError:
    return UsageError(f"{dest} is a mount point: give a new directory inside it (e.g. {dest.rstrip('/')}/model)")


def _refuse_mount_point(parent: str, name: str, dest: str) -> None:
    """`-o /models` where /models is the memory volume itself: say so, before the memory rule would
    refuse its parent (`/`, on disk) with a message about the wrong filesystem. Only a message:
    _check_dest decides again on the opened parent."""
    try:
        if os.stat(os.path.join(parent, name), follow_symlinks=False).st_dev != os.stat(parent).st_dev:
            raise _mount_point(dest)
    except OSError:
        pass  # no such dest (the usual case), or a parent that is not a directory: said later


def _remove(parent_fd: int, name: str) -> None:
    st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    if stat.S_ISDIR(st.st_mode):
        assert shutil.rmtree.avoids_symlink_attacks
        shutil.rmtree(name, dir_fd=parent_fd)
    else:
        os.unlink(name, dir_fd=parent_fd)


class Destination:
    """The directory an extraction creates, opened and checked before a byte of input is read.

    dest's nearest existing ancestor is opened and shown to `rule`, then each
    missing parent (e.g. /models/resnet for /models/resnet/1) is created
    through the descriptor of the one above it, never by joined path
    strings; stale staging directories go; a private staging directory is made
    beside dest and shown to `rule` too. extract() fills it and renames it to
    dest; a failure, or close() without a successful extract(), removes the
    staging directory and every parent made here. The path is the operator's
    configuration: it is followed as the kernel follows it, and what it
    resolves to is what `rule` sees.
    """

    def __init__(self, dest: str, *, rule: TargetRule | None = None, log: Log | None = None,
                 resumable: bool = False) -> None:
        self.dest = dest
        self.log = log if log is not None else Log("unpack", stream=_NullStream())
        parent, self.name = os.path.split(os.path.abspath(dest))
        if self.name in ("", ".", ".."):
            raise UsageError(f"cannot extract into {dest!r}: give a new directory's path")
        self._parents: Parents | None = None
        self.staging: str | None = None
        self.root = -1
        self._done = False
        self._reserve: list[int] = []  # CLEANUP_DESCRIPTORS, closed to remove the staging tree
        self._recording = False  # our delivery record is beside dest: close() removes it unless renamed
        self.recorded: str | None = None
        try:
            _refuse_mount_point(parent, self.name, dest)  # before the rule looks at the parent (on disk, often)
            self._parents = Parents(parent, rule, f"cannot extract into {dest}")
            self.parent_fd = self._parents.fd
            # A non-empty dest with a delivery record beside it (resumable): already_delivered() decides.
            self.recorded = _check_dest(self.parent_fd, self.name, dest, resumable)
            prefix = _staging_prefix(self.name)
            for stale in os.listdir(self.parent_fd):
                if stale.startswith(prefix):
                    self.log.warning("stale_staging_removed", name=stale)
                    _remove(self.parent_fd, stale)
            if self.recorded is not None:
                return  # nothing to stage: the caller authenticates its input, then already_delivered()
            delivered.remove(self.parent_fd, self.name)  # dest absent or empty: a stale record vouches for nothing
            for _ in range(CLEANUP_DESCRIPTORS):  # before anything is made that would need them
                self._reserve.append(os.dup(self.parent_fd))
            staging = prefix + secrets.token_hex(8)
            try:
                os.mkdir(staging, 0o700, dir_fd=self.parent_fd)
            except OSError as e:
                raise fs_error(e, f"creating a staging directory beside {dest}") from None
            self.staging = staging
            self.root = os.open(staging, DIR_FLAGS, dir_fd=self.parent_fd)
            if rule is not None:
                rule(self.root, dest)
        except BaseException:
            self.close()
            raise

    def already_delivered(self, identity: str | None) -> bool:
        """Whether dest is this very delivery, done (the record beside it names `identity`, an identity
        taken from authenticated input): then log it and leave dest as it is. A non-empty dest with a
        record naming anything else (or an unknown identity) is refused as any non-empty dest is.
        False when dest was absent or empty: extract() delivers."""
        if self.recorded is None:
            return False
        if not delivered.matches(self.recorded, identity):
            raise _refusal(self.dest)
        self.log.info("already_delivered", path=self.dest)
        return True

    def extract(self, archive: Readable, *, limits: Limits = Limits(), allow_symlinks: bool = False,
                preflight: Preflight | None = None, size: int | None = None, declared: Sizes | None = None,
                buffers: int = 0, verify: Digests | None = None, identity: str | None = None) -> dict:
        """Fill the staging directory from `archive`, then rename it to dest; see extract().
        `identity` (delivered.py), when the input has one, is recorded beside dest just before the rename."""
        if self.recorded is not None:
            raise AssertionError("dest holds a recorded delivery: call already_delivered() first")
        started = time.monotonic()
        try:
            stats = _extract_into(archive, self.root, self.dest, limits, allow_symlinks, self.log, preflight,
                                  size, declared, buffers, verify)
            if verify is not None:
                stats.update(verify.finish())  # the input has ended: check before the rename
            os.fchmod(self.root, 0o755)
            assert self.staging is not None  # made in __init__, removed only by close()
            self._record(identity)
            try:
                os.rename(self.staging, self.name, src_dir_fd=self.parent_fd, dst_dir_fd=self.parent_fd)
            except OSError as e:
                if e.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR, errno.EBUSY):
                    raise UsageError(f"{self.dest} appeared or changed during the extraction: {e.strerror}") from None
                raise fs_error(e, f"renaming the staging directory to {self.dest}") from None
            self._done = True
        finally:
            self.close()
        stats["seconds"] = round(time.monotonic() - started, 3)
        return stats

    def _record(self, identity: str | None) -> None:
        """Before the rename: a kill between the two leaves a record and no dest, and the restart
        delivers again (overwriting it). No identity: a stale record goes, so none names this dest."""
        try:
            if identity is None:
                delivered.remove(self.parent_fd, self.name)
            else:
                self._recording = True
                delivered.write(self.parent_fd, self.name, identity)
        except OSError as e:
            raise fs_error(e, f"recording the delivery beside {self.dest}") from None

    def close(self) -> None:
        """Remove what was made here unless the extraction finished; release the descriptors."""
        if self.root >= 0:
            os.close(self.root)
            self.root = -1
        while self._reserve:
            os.close(self._reserve.pop())
        if not self._done:
            if self._recording:  # the rename failed: the record must not vouch for whatever dest is
                self._recording = False
                try:
                    delivered.remove(self.parent_fd, self.name)
                except OSError as e:
                    self.log.error("record_cleanup_failed", error=e.strerror)
            if self.staging is not None:
                try:
                    _remove(self.parent_fd, self.staging)
                except OSError as e:
                    self.log.error("staging_cleanup_failed", name=self.staging, error=e.strerror)
            if self._parents is not None:
                self._parents.remove()  # parents made for dest go too
        self.staging = None
        if self._parents is not None:
            self._parents.close()

    def __enter__(self) -> "Destination":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def extract(archive: Readable, dest: str, *, limits: Limits = Limits(), allow_symlinks: bool = False,
            log: Log | None = None, rule: TargetRule | None = None, preflight: Preflight | None = None,
            size: int | None = None, declared: Sizes | None = None, buffers: int = 0,
            verify: Digests | None = None) -> dict:
    """Extract a tar (ustar/pax/GNU; none/gzip/xz/bzip2/zstd) or zip from the stream `archive` into a new
    directory `dest`.

    Returns stats {"files", "dirs", "symlinks", "bytes", "format", "compression", "seconds"}.
    Raises UsageError (bad dest), UnsafeError (hostile entry, or `rule` refused the target),
    CapacityError (limit, no space, `preflight`), IntegrityError (corrupt or truncated archive, or more
    than `declared`), or whatever `archive` raises; on any failure nothing is left beside dest.
    `preflight` sizes the tree once the compression is known, before the first write, by
    placement.tree_need: from `declared` (a .seal header's sizes), else from the archive's length
    `size`, with `buffers` bytes the input side holds on top.
    `verify` (a signing.StreamVerifier) hashes each file as it is written and
    checks the tree against its signed manifest before the rename.
    """
    with Destination(dest, rule=rule, log=log) as destination:
        return destination.extract(archive, limits=limits, allow_symlinks=allow_symlinks, preflight=preflight,
                                   size=size, declared=declared, buffers=buffers, verify=verify)


def _extract_into(source: Readable, root: int, dest: str, limits: Limits, allow_symlinks: bool, log: Log,
                  preflight: Preflight | None, size: int | None, declared: Sizes | None, buffers: int,
                  verify: Digests | None) -> dict:
    behind = WriteBehind(name="modelseal-tree-writer")
    archive = Archive(source, behind)
    try:
        head = archive.peek(8)
        if not head:
            raise IntegrityError("empty input: not a tar or zip archive")
        if head.startswith(MAGIC):
            raise UsageError(f"{dest}: the input is a sealed model (.seal), not an archive: decrypt it first "
                             "(modelseal decrypt --in M.seal --key KEY -o M.tar), or use modelseal run --source "
                             "M.seal, which decrypts and unpacks in one pass")
        if head[:4] in ZIP_MAGICS:
            fmt, compression = "zip", "none"
        else:
            fmt, compression = "tar", detect_compression(head)
        log.info("unpack_start", format=fmt, compression=compression)
        # The header's sizes are the limits; a given limit below them is refused here, before any write.
        applied = limits.applied(declared, size, compression)
        if preflight is not None:  # once the compression is known, before the first byte is written
            preflight(root, dest, tree_need(declared, size, compression, buffers))
        tree = Tree(root, applied, allow_symlinks, log, declared, verify, behind)
        # The bar's total: the header's file bytes, else an uncompressed archive's own length (about them)
        tree.progress.total = (declared.file_bytes if declared is not None and declared.file_bytes is not None
                               else size if compression == "none" else None)
        try:
            if fmt == "zip":
                extract_zip(archive, tree)
            else:
                extract_tar(Decompressed(producer(archive, compression), applied), tree)
            tree.finish()
        finally:
            tree.close()
        # Paranoia: whatever the path, the whole input has been read.
        if archive.chunk(1):
            raise IntegrityError("unexpected data after the end of the archive")
        behind.close()  # every byte written (or the first write error raised) before the rename
    except BaseException as exc:
        behind.__exit__(type(exc), exc, None)  # wait for the thread to stop; keep this error
        raise
    finally:
        archive.close()
    return {"files": tree.files, "dirs": tree.dirs, "symlinks": tree.symlinks, "bytes": tree.bytes,
            "format": fmt, "compression": compression}
