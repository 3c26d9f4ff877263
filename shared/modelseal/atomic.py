"""Outputs that appear whole or not at all.

A stage writes `NAME.partial` and renames it to NAME only once every byte is
verified; any failure removes the partial file, so a consumer never sees a
half-written key, ciphertext or plaintext.

The output's directory is opened once, and everything after that (the check
of where the bytes will land, creating the partial file, the rename) goes
through that directory's descriptor: swapping the directory for a symlink,
or a `..` through a symlink in the path, cannot redirect the bytes after the
check.
"""

from __future__ import annotations

import os
import stat
import sys
from types import TracebackType
from typing import Callable

from .errors import UsageError

PARTIAL_SUFFIX = ".partial"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC

#: Where an output may land: called as rule(fd, where) on each descriptor it is written through
#: (the output's directory, then the open partial file or stdout; unpack: each directory it opens),
#: before any byte is written; raises to refuse. The memory-only rule is placement.tmpfs.memory_only.
TargetRule = Callable[[int, str], None]


class PartialFile:
    """A file written under NAME.partial, renamed to NAME by commit().

    `path == "-"` writes to stdout instead (no rename: the consumer must
    rely on our exit code); `rule` sees stdout's descriptor too.
    """

    def __init__(self, path: str, mode: int = 0o600, *, rule: TargetRule | None = None) -> None:
        self.path = path
        self.stdout = path == "-"
        self.bytes_written = 0
        self._committed = False
        self._made = False  # NAME.partial exists and is ours: abort() removes it, whatever failed
        self.dir_fd = -1
        self.fd = -1
        if self.stdout:
            self.where = "standard output"
            self.fd = sys.stdout.fileno()
            if rule is not None:
                rule(self.fd, self.where)
            return
        parent, self.name = os.path.split(path)
        if self.name in ("", ".", ".."):
            raise UsageError(f"{path!r} names a directory: give the file to write")
        self.partial = self.name + PARTIAL_SUFFIX
        self.where = path
        # The operator's path, followed as the kernel follows it; what it
        # resolves to is what `rule` sees.
        self.dir_fd = os.open(parent or ".", _DIR_FLAGS)
        try:
            if rule is not None:
                rule(self.dir_fd, parent or ".")
            try:
                st = os.stat(self.name, dir_fd=self.dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                pass
            else:
                if stat.S_ISDIR(st.st_mode):
                    raise UsageError(f"{path} is a directory: give the file to write")
            # A partial file left by a killed earlier attempt (a restarted init
            # container on the same emptyDir) is ours to replace.
            try:
                os.unlink(self.partial, dir_fd=self.dir_fd)
            except FileNotFoundError:
                pass
            self.fd = os.open(self.partial, _NEW_FILE, mode, dir_fd=self.dir_fd)
            self._made = True
            if rule is not None:
                rule(self.fd, path + PARTIAL_SUFFIX)
        except BaseException:
            self.abort()
            raise

    def write(self, data: bytes | bytearray | memoryview) -> int:
        view = memoryview(data).cast("B")
        total = len(view)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]
        self.bytes_written += total
        return total

    def commit(self) -> None:
        if self.stdout:
            sys.stdout.flush()
            self._committed = True
            return
        try:
            os.close(self.fd)
            self.fd = -1
            os.replace(self.partial, self.name, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
        except BaseException:
            self.abort()
            raise
        self._made = False
        self._committed = True
        self._close_dir()

    def abort(self) -> None:
        if self._committed or self.stdout:
            return
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self._made:  # also after a failed commit(): the rename can fail (EISDIR, EBUSY on a mount point)
            self._made = False
            try:
                os.unlink(self.partial, dir_fd=self.dir_fd)
            except FileNotFoundError:
                pass
        self._close_dir()

    def _close_dir(self) -> None:
        if self.dir_fd >= 0:
            os.close(self.dir_fd)
            self.dir_fd = -1

    def __enter__(self) -> "PartialFile":
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        if not self._committed:
            self.abort()


def remove_quietly(path: str) -> bool:
    """Delete a file we were told to consume (key, ciphertext); report success."""
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False
