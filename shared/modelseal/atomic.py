"""Outputs that appear whole or not at all.

A stage writes `NAME.partial` and renames it to NAME only once every byte is
verified; any failure removes the partial file, so a consumer never sees a
half-written key, ciphertext or plaintext.

The output's directory is opened once, and everything after that (the check
of where the bytes will land, creating the partial file, the rename) goes
through that directory's descriptor: swapping the directory for a symlink,
or a `..` through a symlink in the path, cannot redirect the bytes after the
check. Missing parents of an output are created the same way by every stage
(Parents: `fetch-model -o /ciphertext/models/m.seal` as `run -o
/models/resnet/1`), after the rule has seen the nearest existing one, and
removed again when the stage fails.
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


class Parents:
    """A directory to write into, opened through descriptors; its missing components are created.

    The nearest existing ancestor is opened and shown to `rule` before anything
    is created under it; then each missing component is made through the
    descriptor of the one above it, never by joined path strings. `fd` is the
    directory itself. remove() takes away what was made here (a failed
    stage), close() releases the descriptors.
    """

    def __init__(self, path: str, rule: TargetRule | None, failing: str) -> None:
        self.fds: list[int] = []  # every directory opened here, `path` itself last
        self.created: list[tuple[int, str]] = []  # (descriptor of its parent, name) of each directory made
        existing, missing = path, []
        while not os.path.lexists(existing):
            existing, component = os.path.split(existing)
            missing.append(component)
        try:
            fd = os.open(existing, _DIR_FLAGS)
        except OSError as e:
            raise UsageError(f"{failing}: {existing}: {e.strerror}") from None
        self.fds.append(fd)
        try:
            if rule is not None:
                rule(fd, existing)  # before anything is created under it
            for component in reversed(missing):
                try:
                    os.mkdir(component, 0o755, dir_fd=fd)
                    self.created.append((fd, component))
                except FileExistsError:
                    pass
                except OSError as e:
                    raise UsageError(f"{failing}: creating {component!r}: {e.strerror}") from None
                try:
                    fd = os.open(component, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=fd)
                except OSError as e:
                    raise UsageError(f"{failing}: opening {component!r}: {e.strerror}") from None
                self.fds.append(fd)
        except BaseException:
            self.remove()
            self.close()
            raise

    @property
    def fd(self) -> int:
        return self.fds[-1]

    def remove(self) -> None:
        """Remove the directories made here, deepest first (each only if still empty)."""
        for parent_fd, name in reversed(self.created):
            try:
                os.rmdir(name, dir_fd=parent_fd)
            except OSError:
                break
        self.created = []

    def close(self) -> None:
        while self.fds:
            os.close(self.fds.pop())


class PartialFile:
    """A file written under NAME.partial, renamed to NAME by commit().

    `path == "-"` writes to stdout instead (no rename: the consumer must
    rely on our exit code); `rule` sees stdout's descriptor too. `dir_fd`:
    the directory already opened (and checked) for a sibling output, used
    instead of opening `path`'s parent again (a file written beside another,
    as decrypt's NAME.sizes beside NAME, lands where that one does).
    """

    def __init__(self, path: str, mode: int = 0o600, *, rule: TargetRule | None = None,
                 dir_fd: int | None = None) -> None:
        self.path = path
        self.stdout = path == "-"
        self.bytes_written = 0
        self._committed = False
        self._made = False  # NAME.partial exists and is ours: abort() removes it, whatever failed
        self.dir_fd = -1
        self.fd = -1
        self._parents: Parents | None = None
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
        if dir_fd is not None:
            self.dir_fd = os.dup(dir_fd)
        elif parent and not os.path.lexists(parent):
            self._parents = Parents(parent, rule, f"cannot write {path}")
            self.dir_fd = os.dup(self._parents.fd)
        else:
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
        if self._parents is not None:
            self._parents.close()

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
        if self._parents is not None:  # the directories made for this output go too
            self._parents.remove()
            self._parents.close()

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
