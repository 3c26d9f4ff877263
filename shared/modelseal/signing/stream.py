"""Verification in the stream: every file hashed as the tree writer writes it, checked before the rename.

The tree writer (unpack/tree.py) calls `file(parts, declared)` when it
creates a file and feeds the returned sink each piece right after writing
it; `symlink(parts, target)` for a link. Nothing is read back from the
staging tree. When the input has ended, unpack.extract calls `finish()`,
which verifies the signature, compares every file with the signed manifest
and raises IntegrityError (exit 4) naming the first offending file, before
the staging directory is renamed (so on failure nothing is left).

Where the signature comes from: a path inside the model (default
`model.sig`; captured from the stream as it is written, at most
bundle.MAX_BUNDLE bytes), or a separate file (an absolute path), read and
verified before any input is read. Once the signature is known (the
separate file, or model.sig ahead of the files it covers, as `seal
--sign-key` writes it), files are hashed the way the manifest says (files or
shards); files that arrived before it are hashed whole, which a `files`
signature needs and a `shards` one cannot use (say so, exit 4).

Speed: SHA-256 runs at about the speed of the rest of `run` on one core, so
large files are hashed in a background thread (hashlib releases the GIL):
each piece is copied into one of a few 1 MiB buffers (the writer's buffer is
reused at its next read) and hashed there while this thread decrypts and
writes the next one. Small files are hashed in place.

What is ignored, as model_signing's verifier ignores it: the signature file
itself when it is inside the model, the git paths (.git, .gitattributes,
.github, .gitignore) and the manifest's `ignore_paths`. Symlinks (only with
--allow-symlinks) are followed as model_signing does with --allow-symlinks: a
link to a file of the model counts as a file with the target's content.
"""

from __future__ import annotations

import hashlib
import os
from functools import partial
from typing import Callable

from ..errors import IntegrityError, UsageError
from ..log import Log
from ..overlap import WriteBehind
from . import bundle as bundles
from . import statement
from .statement import Items, Manifest
from .trust import Trust

SIGNATURE = "model.sig"
CHUNK = 1 << 20
INLINE_BELOW = 1 << 20  # files smaller than this are hashed in place
DEPTH = 4  # pieces queued to the hashing thread


def _name(parts: tuple[bytes, ...]) -> str:
    return "/".join(p.decode("utf-8", "surrogateescape") for p in parts)


def _show(name: str, limit: int = 120) -> str:
    text = repr(name)
    return text if len(text) <= limit else text[: limit - 5] + "...'"


class _Hasher:
    """The digests of one file: whole (files) or per shard (shards); fed in order, on one thread."""

    def __init__(self, name: str, shard_size: int | None, done: Callable[[str, Items], None]) -> None:
        self.name, self.shard_size, self._done = name, shard_size, done
        self._h = hashlib.sha256()
        self._pos = self._start = 0
        self._items: list[tuple[str, str, bytes]] = []

    def feed(self, view: memoryview) -> None:
        if self.shard_size is None:
            self._h.update(view)
            return
        while view:
            room = self._start + self.shard_size - self._pos
            piece, view = view[:room], view[room:]
            self._h.update(piece)
            self._pos += len(piece)
            if self._pos == self._start + self.shard_size:
                self._cut()

    def _cut(self) -> None:
        self._items.append((f"{self.name}:{self._start}:{self._pos}",
                            f"{statement.HASH_TYPE}-sharded-{self.shard_size}", self._h.digest()))
        self._h = hashlib.sha256()
        self._start = self._pos

    def finalize(self) -> None:
        if self.shard_size is None:
            self._done(self.name, ((self.name, statement.HASH_TYPE, self._h.digest()),))
            return
        if self._pos > self._start:
            self._cut()
        self._done(self.name, tuple(self._items))  # an empty file has no shards


class _Sink:
    """What the tree writer feeds one file's pieces to."""

    def __init__(self, feed: Callable[[memoryview], None], end: Callable[[], None]) -> None:
        self.update, self.end = feed, end


class StreamVerifier:
    """A verifying digest recorder for one extraction (see the module docstring)."""

    def __init__(self, trust: Trust, signature: str = SIGNATURE, log: Log | None = None) -> None:
        self.trust = trust
        self.log = log
        self.manifest: Manifest | None = None
        self._ignore_always = [tuple(p.split("/")) for p in statement.GIT_PATHS]
        if os.path.isabs(signature):
            self.where = signature
            self._sig_parts: tuple[str, ...] | None = None
            self._accept(self._read_separate(signature))
        else:
            parts = statement.components(signature)
            if not parts:
                raise UsageError(f"--signature {signature!r}: give a path inside the model (e.g. model.sig) "
                                 "or an absolute path to a separate file")
            self.where = "/".join(parts)
            self._sig_parts = parts
            self._ignore_always.append(parts)
        self._digests: dict[str, Items] = {}
        self._order: list[tuple[str, str | None]] = []  # (name, link target or None), in archive order
        self._whole: set[str] = set()  # hashed before the manifest was known: whole-file digests
        self._thread: WriteBehind | None = None
        self._ring = [bytearray(CHUNK) for _ in range(DEPTH + 2)]
        self._next = 0

    # -- the signature ----------------------------------------------------

    @staticmethod
    def _read_separate(path: str) -> bytes:
        try:
            with open(path, "rb") as f:
                data = f.read(bundles.MAX_BUNDLE + 1)
        except FileNotFoundError:
            raise IntegrityError(f"no signature: {path} does not exist") from None
        except OSError as e:
            raise IntegrityError(f"no signature: {path}: {e.strerror}") from None
        return data

    def _accept(self, data: bytes) -> None:
        """Verify the bundle now: from here on files are hashed as its manifest says."""
        payload = self.trust.verify(bundles.parse(data, self.where), self.where)
        self.manifest = statement.parse(payload, self.where)

    # -- the tree writer's hook -------------------------------------------

    def file(self, parts: tuple[bytes, ...], declared: int) -> _Sink | None:
        name = _name(parts)
        if self._sig_parts is not None and tuple(name.split("/")) == self._sig_parts:
            return self._capture(declared)
        self._order.append((name, None))
        if statement.ignored(tuple(name.split("/")), self._ignore_always):
            return None
        m = self.manifest
        if m is None:
            self._whole.add(name)
        h = _Hasher(name, m.shard_size if m is not None and m.method == "shards" else None, self._digests.__setitem__)
        if declared < INLINE_BELOW:
            return _Sink(h.feed, h.finalize)
        return _Sink(lambda view: self._queue(h, view), lambda: self._jobs().put(h.finalize))

    def symlink(self, parts: tuple[bytes, ...], target: list[bytes]) -> None:
        stack = list(parts[:-1])
        for c in target:
            if c == b"..":
                if stack:
                    stack.pop()
            else:
                stack.append(c)
        self._order.append((_name(parts), _name(tuple(stack))))

    def _capture(self, declared: int) -> _Sink:
        if declared > bundles.MAX_BUNDLE:
            raise IntegrityError(f"{self.where}: {declared} bytes, over {bundles.MAX_BUNDLE}: not a model signature")
        buf = bytearray()

        def end() -> None:
            self._accept(bytes(buf))

        return _Sink(buf.extend, end)

    def _jobs(self) -> WriteBehind:
        if self._thread is None:
            self._thread = WriteBehind(depth=DEPTH, name="modelseal-hasher")
        return self._thread

    def _queue(self, h: _Hasher, view: memoryview) -> None:
        jobs = self._jobs()
        if isinstance(view.obj, bytes):  # a decompressor's output: immutable, so no copy
            jobs.put(lambda: h.feed(view))
            return
        while view:  # a view of a buffer the reader reuses: copy it into the ring
            buf = self._ring[self._next % len(self._ring)]  # free: DEPTH + 1 puts have returned since its last use
            self._next += 1
            n = min(len(view), CHUNK)
            buf[:n] = view[:n]
            piece, view = memoryview(buf)[:n], view[n:]
            jobs.put(partial(h.feed, piece))

    def drain(self) -> None:
        """Wait for the hashing thread and stop it (the tree writer's close)."""
        if self._thread is not None:
            thread, self._thread = self._thread, None
            thread.close()

    # -- the check ---------------------------------------------------------

    def finish(self) -> dict:
        """After the input ended: compare every file with the signed manifest."""
        self.drain()
        if self.manifest is None:
            raise IntegrityError(f"no signature: {self.where} is not in the model "
                                 "(verification was asked for; see --signature)")
        m = self.manifest
        ignore = self._ignore_always + m.ignore_paths
        actual: dict[str, Items] = {}
        for name, target in self._order:
            if statement.ignored(tuple(name.split("/")), ignore):
                continue
            if target is not None:
                items = self._link_items(name, target, m)
            else:
                if m.method == "shards" and name in self._whole:
                    raise IntegrityError(f"{self.where}: signed by shards, but {_show(name)} came before the "
                                         "signature in the archive (put the signature first, or pass --signature)")
                items = self._digests[name]
            if not items:
                continue  # an empty file has no shards: a shards manifest cannot name it (model_signing alike)
            expected = m.files.get(name)
            if expected is None:
                raise IntegrityError(f"signature check failed: {_show(name)} is not in the signed manifest "
                                     "(an extra file)")
            if sorted(items) != sorted(expected):
                raise IntegrityError(f"signature check failed: {_show(name)} was changed (its digest differs "
                                     "from the signed manifest)")
            actual[name] = items
        for name in sorted(m.files, key=lambda n: tuple(n.split("/"))):
            if name not in actual:
                raise IntegrityError(f"signature check failed: {_show(name)} is in the signed manifest but "
                                     "missing from the model")
        if self.log:
            self.log.info("signature_verified", signature=self.where, files=len(actual), method=m.method)
        return {"signed_files": len(actual)}

    def _link_items(self, name: str, target: str, m: Manifest) -> Items:
        """A symlink counts as a file with its target's content (model_signing with --allow-symlinks)."""
        links = {n: t for n, t in self._order if t is not None}
        seen = {name}
        while target in links:
            if target in seen:
                break
            seen.add(target)
            target = links[target]
        items = self._digests.get(target)
        if items is None:
            raise IntegrityError(f"signature check failed: symlink {_show(name)} does not point to a file of the "
                                 "model (verification covers files only)")
        if m.method == "shards":
            return tuple((f"{name}{n[len(target):]}", a, d) for n, a, d in items)
        return tuple((name, a, d) for _, a, d in items)
