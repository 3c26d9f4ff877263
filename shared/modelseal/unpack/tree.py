"""The output side: archive names checked and the staging tree built only through directory file descriptors.

Everything is created through directory file descriptors, one component at a
time, with O_NOFOLLOW (directories opened O_DIRECTORY|O_NOFOLLOW, files
created O_CREAT|O_EXCL|O_NOFOLLOW, mkdir/symlink relative to a dir fd). A
symlink, wherever it came from, can never be walked through or written
through: an entry whose path crosses a symlink is refused (exit 7).

Names: absolute names, `..` components, NUL bytes and backslashes are
refused (exit 7). A backslash is an ordinary byte on Linux, but archives
carrying one are almost always Windows-made traversal attempts
(`..\\..\\x`), and refusing is clearer than creating `..\\..\\x` files.
`.` components and repeated slashes are dropped (`./a//b` is `a/b`); a name
longer than max_name bytes, a component longer than 255 bytes or a path
deeper than max_depth components is refused (exit 7).

Symlinks only with allow_symlinks=True, only with a relative target that,
resolved lexically from the link's directory, never climbs above the
destination; once the whole tree exists, every link target is resolved again
against it and refused if it passes through another symlink (the kernel would
follow it and its "..", so lexical resolution alone is not enough: `s -> .`
plus `l -> s/..` escapes).

Duplicates: a second entry for an existing file, symlink or directory name is
refused (O_EXCL), except a directory entry for an existing directory
(merged). A directory entry over a file or symlink is refused. Modes are
fixed, not copied: files 0644, or 0755 when the archive gives any execute
bit; directories 0755; never setuid/setgid/sticky; no chown. Regular files
keep the archive's modification time; directories and symlinks get the
extraction time. Over a limit, or ENOSPC: CapacityError (exit 6).
"""

from __future__ import annotations

import errno
import os
import stat
from functools import partial
from typing import Iterable, Protocol

from ..errors import (
    CapacityError,
    IntegrityError,
    ModelsealError,
    UnsafeError,
    from_os_error,
)
from ..log import Log
from ..overlap import WriteBehind
from ..sealfile import Sizes
from ..untrusted import show  # entry names in messages: quoted, shortened
from .limits import Applied, Limits

NAME_MAX = 255
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
SMALL_FILE = 64 << 10  # files up to this size are written on the parsing thread (Tree.add_file)


def parts_of(raw: bytes, limits: Limits | Applied, what: str = "entry") -> tuple[bytes, ...]:
    """Validate an archive name and split it into path components."""
    if not raw:
        raise UnsafeError(f"refusing {what} with an empty name")
    if b"\0" in raw:
        raise UnsafeError(f"refusing {what} {show(raw)}: NUL byte in its name")
    if b"\\" in raw:
        raise UnsafeError(f"refusing {what} {show(raw)}: backslash in its name (a Windows path?)")
    if raw.startswith(b"/"):
        raise UnsafeError(f"refusing {what} {show(raw)}: absolute name")
    if len(raw) > limits.max_name:
        raise UnsafeError(f"refusing {what} {show(raw)}: name of {len(raw)} bytes, over {limits.max_name}")
    parts = tuple(p for p in raw.split(b"/") if p not in (b"", b"."))
    for p in parts:
        if p == b"..":
            raise UnsafeError(f"refusing {what} {show(raw)}: '..' in its name")
        if len(p) > NAME_MAX:
            raise UnsafeError(f"refusing {what} {show(raw)}: a name component over {NAME_MAX} bytes")
    if len(parts) > limits.max_depth:
        raise UnsafeError(f"refusing {what} {show(raw)}: {len(parts)} levels deep, over {limits.max_depth}")
    return parts


def link_parts(target: bytes, limits: Limits | Applied, name: bytes) -> list[bytes]:
    if not target:
        raise UnsafeError(f"refusing symlink {show(name)}: empty target")
    if b"\0" in target or b"\\" in target:
        raise UnsafeError(f"refusing symlink {show(name)}: NUL or backslash in its target")
    if target.startswith(b"/"):
        raise UnsafeError(f"refusing symlink {show(name)} -> {show(target)}: absolute target")
    if len(target) > limits.max_name:
        raise UnsafeError(f"refusing symlink {show(name)}: target of {len(target)} bytes, over {limits.max_name}")
    return [p for p in target.split(b"/") if p not in (b"", b".")]


def climbs_out(depth: int, comps: list[bytes]) -> bool:
    """Lexically, from a directory `depth` levels below dest, does the path ever go above dest?"""
    for c in comps:
        depth += -1 if c == b".." else 1
        if depth < 0:
            return True
    return False



def fs_error(exc: OSError, what: str) -> ModelsealError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return CapacityError(f"{what}: {exc.strerror or 'no space left'}")
    if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EEXIST, errno.ENAMETOOLONG, errno.EMLINK):
        return UnsafeError(f"{what}: {exc.strerror}")
    return from_os_error(exc, what)


def write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _write_piece(fd: int, piece: bytes | memoryview, name: bytes) -> None:
    try:
        write_all(fd, piece)
    except OSError as e:
        raise fs_error(e, f"writing {show(name)}") from None


def _finish_file(fd: int, mode: int | None, mtime: float | None, name: bytes) -> None:
    """Fixed mode and the archive's mtime (mode None: the extraction failed, only close)."""
    try:
        if mode is not None:
            os.fchmod(fd, 0o755 if mode & 0o111 else 0o644)
            if mtime is not None and 0 <= mtime < 2**40:
                os.utime(fd, (mtime, mtime))
    except OSError as e:
        raise fs_error(e, f"finishing {show(name)}") from None
    finally:
        os.close(fd)


class Digests(Protocol):
    """Per-file hashing as files are written (signing.StreamVerifier): no second read."""

    def file(self, parts: tuple[bytes, ...], declared: int): ...  # a sink with update(piece), end(); or None
    def symlink(self, parts: tuple[bytes, ...], target: list[bytes]) -> None: ...
    def drain(self) -> None: ...
    def finish(self) -> dict: ...  # after the input ended, before the rename: raises if the tree is not as signed


class Tree:
    """The staging tree, built only through directory file descriptors."""

    def __init__(self, root: int, limits: Applied | Limits, allow_symlinks: bool, log: Log,
                 declared: Sizes | None = None, digests: Digests | None = None,
                 behind: WriteBehind | None = None) -> None:
        self.root = root
        # File data (and each file's fchmod, utime and close) go to the
        # write-behind thread when there is one: names, limits and creation
        # stay here, in archive order; a write error comes back at the next
        # file or at the end, and the whole staging tree goes either way.
        self.behind = behind
        self.digests = digests
        self.limits = limits if isinstance(limits, Applied) else limits.applied(declared, None, "none")
        # What the authenticated .seal header says the archive holds: the
        # preflight sized the target by it, so holding more is an integrity error.
        self.declared = declared if declared is not None else Sizes()
        self.allow_symlinks = allow_symlinks
        self.progress = log.progress("unpack")
        self._stack: list[tuple[bytes, int]] = []  # the open directory chain of the last parent
        self._links: list[tuple[tuple[bytes, ...], list[bytes], bytes]] = []
        self.entries = self.files = self.dirs = self.symlinks = self.bytes = 0

    def close(self) -> None:
        while self._stack:
            os.close(self._stack.pop()[1])
        if self.digests is not None:
            self.digests.drain()

    def _count(self, name: bytes) -> None:
        self.entries += 1
        if self.entries > self.limits.max_files:
            raise CapacityError(f"more than {self.limits.max_files} entries (at {show(name)}) "
                                f"{self.limits.over('max_files')}")

    def _open_dir(self, parent: int, comp: bytes, name: bytes) -> int:
        try:
            return os.open(comp, DIR_FLAGS, dir_fd=parent)
        except FileNotFoundError:
            pass
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOTDIR):
                raise UnsafeError(f"refusing entry {show(name)}: its path goes through a symlink or a file") from None
            raise fs_error(e, f"opening the directory of {show(name)}") from None
        self._count(name)  # an implied parent directory
        return self._mkdir(parent, comp, name)

    def _mkdir(self, parent: int, comp: bytes, name: bytes) -> int:
        try:
            os.mkdir(comp, 0o700, dir_fd=parent)
            fd = os.open(comp, DIR_FLAGS, dir_fd=parent)
            os.fchmod(fd, 0o755)
        except OSError as e:
            raise fs_error(e, f"creating directory {show(name)}") from None
        self.dirs += 1
        return fd

    def _parent(self, parts: tuple[bytes, ...], name: bytes) -> int:
        """An fd of the directory holding the entry, creating missing parents (0755)."""
        dirs = parts[:-1]
        i = 0
        while i < len(self._stack) and i < len(dirs) and self._stack[i][0] == dirs[i]:
            i += 1
        while len(self._stack) > i:
            os.close(self._stack.pop()[1])
        fd = self._stack[-1][1] if self._stack else self.root
        for comp in dirs[i:]:
            fd = self._open_dir(fd, comp, name)
            self._stack.append((comp, fd))
        return fd

    def add_dir(self, parts: tuple[bytes, ...], name: bytes) -> None:
        self._count(name)
        if not parts:
            return  # "./": the destination itself
        parent = self._parent(parts, name)
        try:
            os.close(self._mkdir(parent, parts[-1], name))
        except UnsafeError:
            try:
                st = os.stat(parts[-1], dir_fd=parent, follow_symlinks=False)
            except OSError as e:
                raise fs_error(e, f"directory {show(name)}") from None
            if not stat.S_ISDIR(st.st_mode):
                raise UnsafeError(f"refusing directory {show(name)}: a file or symlink of that name exists") from None

    def add_file(self, parts: tuple[bytes, ...], name: bytes, mode: int, mtime: float | None,
                 declared: int, data: Iterable[bytes | memoryview]) -> None:
        lim = self.limits
        self._count(name)
        if not parts:
            raise UnsafeError(f"refusing file {show(name)}: it names the destination itself")
        # What the header declares first: a header-sized limit (limits.py) is then never what an archive
        # that holds more than its header says runs into; that is an integrity error, not a capacity one.
        if self.declared.file_bytes is not None and self.bytes + declared > self.declared.file_bytes:
            raise IntegrityError(f"the archive holds more than the {self.declared.file_bytes} file bytes "
                                 f"its .seal header declares (at {show(name)})")
        if declared > lim.max_file_size:
            raise CapacityError(f"file {show(name)} declares {declared} bytes, over the {lim.max_file_size} "
                                f"per-file limit {lim.over('max_file_size')}")
        if self.bytes + declared > lim.max_bytes:
            raise CapacityError(f"file {show(name)} would take the total over {lim.max_bytes} bytes "
                                f"{lim.over('max_bytes')}")
        if self.declared.files is not None and self.files >= self.declared.files:
            raise IntegrityError(f"the archive holds more than the {self.declared.files} files "
                                 f"its .seal header declares (at {show(name)})")
        parent = self._parent(parts, name)
        try:
            fd = os.open(parts[-1], FILE_FLAGS, 0o600, dir_fd=parent)
        except OSError as e:
            if e.errno == errno.EEXIST:
                raise UnsafeError(f"refusing file {show(name)}: duplicate entry, or over an existing name") from None
            raise fs_error(e, f"creating {show(name)}") from None
        # A small file is written here, at once: handing it to the thread costs more than the
        # write (two hand-offs, ~1000 of them in a model's vocabulary files) and it has no
        # order to keep with the large file the thread may still be writing.
        behind = self.behind if declared > SMALL_FILE else None
        try:
            sink = self.digests.file(parts, declared) if self.digests is not None else None
            size = 0
            for piece in data:
                n = len(piece)
                size += n
                self.bytes += n
                if self.declared.file_bytes is not None and self.bytes > self.declared.file_bytes:
                    raise IntegrityError(f"the archive holds more than the {self.declared.file_bytes} file bytes "
                                         f"its .seal header declares (at {show(name)})")
                if size > lim.max_file_size:
                    raise CapacityError(f"file {show(name)} is over the {lim.max_file_size}-byte per-file limit "
                                        f"{lim.over('max_file_size')}")
                if self.bytes > lim.max_bytes:
                    raise CapacityError(f"more than {lim.max_bytes} bytes extracted (at {show(name)}) "
                                        f"{lim.over('max_bytes')}")
                if behind is not None:
                    behind.put(partial(_write_piece, fd, piece, name))
                else:
                    _write_piece(fd, piece, name)
                if sink is not None:
                    sink.update(piece)
                self.progress.add(n)
            if sink is not None:
                sink.end()
        except BaseException:
            self._finish(fd, None, None, name, behind)
            raise
        self._finish(fd, mode, mtime, name, behind)
        self.files += 1

    def _finish(self, fd: int, mode: int | None, mtime: float | None, name: bytes,
                behind: WriteBehind | None) -> None:
        """Close a file, after its queued writes (always queued when they were: the descriptor
        must not be closed, and its number reused, while a write to it waits)."""
        if behind is not None:
            behind.put(lambda: _finish_file(fd, mode, mtime, name), lambda: os.close(fd), check=mode is not None)
        else:
            _finish_file(fd, mode, mtime, name)

    def add_symlink(self, parts: tuple[bytes, ...], name: bytes, target: bytes) -> None:
        if not self.allow_symlinks:
            raise UnsafeError(f"refusing symlink {show(name)}: symlinks are not allowed (see --allow-symlinks)")
        self._count(name)
        if not parts:
            raise UnsafeError(f"refusing symlink {show(name)}: it names the destination itself")
        comps = link_parts(target, self.limits, name)
        if climbs_out(len(parts) - 1, comps):
            raise UnsafeError(f"refusing symlink {show(name)} -> {show(target)}: it points outside the destination")
        parent = self._parent(parts, name)
        try:
            os.symlink(target, parts[-1], dir_fd=parent)
        except OSError as e:
            if e.errno == errno.EEXIST:
                raise UnsafeError(f"refusing symlink {show(name)}: duplicate entry, or over an existing name") from None
            raise fs_error(e, f"creating symlink {show(name)}") from None
        if self.digests is not None:
            self.digests.symlink(parts, comps)
        self._links.append((parts[:-1], comps, name))
        self.symlinks += 1

    def finish(self) -> None:
        """Resolve every symlink against the finished tree: no path through another symlink."""
        for dirs, comps, name in self._links:
            stack = list(dirs)
            exists = True
            for i, c in enumerate(comps):
                if c == b"..":
                    if not stack:
                        raise UnsafeError(f"refusing symlink {show(name)}: it points outside the destination")
                    stack.pop()
                    continue
                stack.append(c)
                if not exists or i == len(comps) - 1:
                    continue
                # The prefix walked so far is made of real directories (checked in
                # order), so this lstat follows no symlink.
                try:
                    st = os.stat(b"/".join(stack), dir_fd=self.root, follow_symlinks=False)
                except (FileNotFoundError, NotADirectoryError):
                    exists = False  # the link dangles: the kernel stops here
                    continue
                if stat.S_ISLNK(st.st_mode):
                    raise UnsafeError(f"refusing symlink {show(name)}: its target passes through another symlink")
                if not stat.S_ISDIR(st.st_mode):
                    exists = False

