"""The unpack stage: benign archives from real tools come out byte-exact; every
hostile construction is refused with its category, leaving nothing behind."""

from __future__ import annotations

import gzip
import io
import os
import stat
import subprocess
import tarfile
import time
import zipfile
from pathlib import Path

import pytest
import zstandard

from support.archives import (COMPRESSIONS, Chunked, compress, d, end, f, gnu_tar, hard, header, local_header,
                              pad, pax_header, raw_zip, snapshot, sym, tar_bytes, tree, zip_bytes, zip_symlink)
from conftest import refused
from modelseal import unpack
from modelseal.archive import compressor, write_tar
from modelseal.errors import CapacityError, IntegrityError, UnsafeError, UsageError
from modelseal.log import Log
from modelseal.sealfile import Sizes
from modelseal.unpack import Limits, extract


class Box:
    """dest is <sandbox>/p/q/dest: `..` entries land in the sandbox, where they show."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.parent = root / "p" / "q"
        self.parent.mkdir(parents=True)
        self.dest = self.parent / "dest"
        self.outside = root / "outside"
        self.outside.mkdir()
        (self.outside / "victim").write_bytes(b"victim")
        (root / "p" / "sibling").write_bytes(b"sibling")

    def before(self) -> None:
        self._snap = self.snap()

    def snap(self) -> dict:
        """Everything in the sandbox but dest's parent's mtime (staging comes and goes there)."""
        out = snapshot(self.root)
        out["p/q"] = out["p/q"][:2]
        return out

    def run(self, data: bytes | object, **kw) -> dict:
        src = data if not isinstance(data, (bytes, bytearray)) else Chunked(bytes(data))
        return extract(src, str(self.dest), **kw)

    def refused(self, data, exc: type, match: str | None = None, **kw) -> Exception:
        """Extraction fails with `exc`; dest and staging are gone; nothing else changed."""
        self.before()
        with pytest.raises(exc, match=match) as info:
            self.run(data, **kw)
        assert not self.dest.exists() and not self.dest.is_symlink()
        assert sorted(os.listdir(self.parent)) == [], "staging left behind"
        assert self.snap() == self._snap, "something outside dest changed"
        return info.value

    def reset(self) -> None:
        subprocess.run(["rm", "-rf", str(self.dest)], check=True)

    def ok(self, data, **kw) -> dict:
        self.before()
        stats = self.run(data, **kw)
        assert sorted(os.listdir(self.parent)) == ["dest"]
        after = self.snap()
        assert {k: v for k, v in after.items() if not k.startswith("p/q")} == \
               {k: v for k, v in self._snap.items() if not k.startswith("p/q")}
        return stats


@pytest.fixture
def box(shm: Path) -> Box:
    return Box(shm)


# ====================================================================== benign


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """A tree with every shape the rules mention, on tmpfs."""
    base = Path(os.environ.get("MODELSEAL_TEST_SHM", "/dev/shm")) / f"modelseal-test-model-{os.getpid()}"
    src = base / "src"
    rnd = __import__("random").Random(7)
    (src / "empty" / "nested-empty").mkdir(parents=True)
    (src / "weights").mkdir(parents=True)
    for size in (0, 1, 511, 512, 513, 10240, (1 << 20) + 3):
        (src / "weights" / f"w{size}.bin").write_bytes(rnd.randbytes(size))
    (src / "weights" / "zeros.bin").write_bytes(bytes(3 << 20))
    run = src / "bin" / "serve.sh"
    run.parent.mkdir()
    run.write_bytes(b"#!/bin/sh\necho serving\n")
    run.chmod(0o755)
    (src / ("n" * 180)).write_bytes(b"long name")
    (src / ("d" * 180)).mkdir()
    (src / ("d" * 180) / ("f" * 180 + ".json")).write_bytes(b"{}")
    (src / "unicodé 日本語 ✓").mkdir()
    (src / "unicodé 日本語 ✓" / "ファイル.txt").write_bytes("ok ✓".encode())
    deep = src.joinpath(*[f"l{i}" for i in range(30)])
    deep.mkdir(parents=True)
    (deep / "bottom.txt").write_bytes(b"30 levels down")
    yield src
    subprocess.run(["rm", "-rf", str(base)], check=True)


def assert_same(src: Path, dest: Path) -> None:
    assert tree(dest) == tree(src)
    for dirpath, dirnames, filenames in os.walk(dest):
        for n in dirnames:
            assert stat.S_IMODE(os.lstat(os.path.join(dirpath, n)).st_mode) == 0o755
        for n in filenames:
            mode = stat.S_IMODE(os.lstat(os.path.join(dirpath, n)).st_mode)
            assert mode in (0o644, 0o755)
    assert stat.S_IMODE(os.stat(dest).st_mode) == 0o755


@pytest.mark.parametrize("compression", COMPRESSIONS)
@pytest.mark.parametrize("fmt", ["gnu", "pax"])
def test_gnu_tar_archives_extract_byte_exact(box: Box, model: Path, fmt: str, compression: str) -> None:
    data = gnu_tar(model, fmt, compression)
    stats = box.ok(Chunked(data))
    assert_same(model, box.dest)
    assert stats["format"] == "tar" and stats["compression"] == compression
    assert stats["files"] == sum(1 for v in tree(model).values() if v[0] == "file")
    assert stats["bytes"] == sum(len(v[1]) for v in tree(model).values() if v[0] == "file")
    assert os.access(box.dest / "bin" / "serve.sh", os.X_OK)
    assert stat.S_IMODE(os.stat(box.dest / "weights" / "w1.bin").st_mode) == 0o644


@pytest.mark.parametrize("method", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_python_zip_archives_extract_byte_exact(box: Box, model: Path, method: int) -> None:
    entries = []
    for dirpath, dirnames, filenames in os.walk(model):
        for n in sorted(dirnames):
            p = Path(dirpath) / n
            entries.append((str(p.relative_to(model)) + "/", b"", 0o40755))
        for n in sorted(filenames):
            p = Path(dirpath) / n
            entries.append((str(p.relative_to(model)), p.read_bytes(), 0o100000 | stat.S_IMODE(p.stat().st_mode)))
    stats = box.ok(zip_bytes(entries, method))
    assert_same(model, box.dest)
    assert stats["format"] == "zip"


@pytest.mark.parametrize("compression", ["none", "gzip", "zstd"])
def test_seal_writer_roundtrip(box: Box, model: Path, compression: str) -> None:
    """What `modelseal seal` writes (archive.write_tar + compressor) unpacks to the same tree."""
    buf = io.BytesIO()
    with compressor(buf, compression) as out:
        write_tar(str(model), out)
    box.ok(buf.getvalue())
    assert_same(model, box.dest)


def test_file_mtimes_kept(box: Box) -> None:
    box.ok(tar_bytes([d("a"), f("a/x", b"1", mtime=1_234_567_890)]))
    assert os.stat(box.dest / "a" / "x").st_mtime == 1_234_567_890


def test_tiny_reads_for_every_compression(box: Box) -> None:
    """Reads of 1..7 bytes: magic sniffing and every decompressor cross chunk boundaries."""
    data = tar_bytes([d("a"), f("a/x", os.urandom(5000)), f("b", b"")])
    for c in COMPRESSIONS:
        box.ok(Chunked(compress(data, c), sizes=(1, 2, 3, 7)))
        assert (box.dest / "a" / "x").stat().st_size == 5000
        box.reset()


def test_concatenated_streams_and_zero_padding(box: Box) -> None:
    data = tar_bytes([f("a", b"A" * 3000), f("b", b"B" * 3000)])
    half = len(data) // 2
    cases = {
        "gzip": gzip.compress(data[:half]) + gzip.compress(data[half:]) + bytes(100),
        "bzip2": compress(data[:half], "bzip2") + compress(data[half:], "bzip2"),
        "xz": compress(data[:half], "xz") + bytes(8) + compress(data[half:], "xz"),
        "zstd": compress(data[:half], "zstd") + compress(data[half:], "zstd"),
        "tar+padding": data + bytes(100_000),
    }
    for name, blob in cases.items():
        box.ok(blob)
        assert (box.dest / "b").read_bytes() == b"B" * 3000, name
        box.reset()


def test_zstd_multithreaded_cli_output(box: Box, model: Path) -> None:
    plain = gnu_tar(model, "pax", "none")
    blob = subprocess.run(["zstd", "-T2", "-3", "-c", "--no-check"], input=plain, capture_output=True, check=True).stdout
    box.ok(blob)
    assert_same(model, box.dest)


def test_directory_entries_merge_and_root_entry(box: Box) -> None:
    box.ok(tar_bytes([d("."), d("a"), f("a/x"), d("a/"), d("./a"), f("./a/y"), d("e")]))
    assert tree(box.dest) == {"a": ("dir",), "a/x": ("file", b"x", False), "a/y": ("file", b"x", False), "e": ("dir",)}


def test_implied_parent_directories(box: Box) -> None:
    stats = box.ok(tar_bytes([f("x/y/z/file", b"deep")]))
    assert (box.dest / "x" / "y" / "z" / "file").read_bytes() == b"deep"
    assert stats["dirs"] == 3
    assert stat.S_IMODE(os.stat(box.dest / "x" / "y").st_mode) == 0o755


# ====================================================================== destination


def test_existing_empty_dest_is_replaced(box: Box) -> None:
    box.dest.mkdir()
    box.ok(tar_bytes([f("a")]))
    assert (box.dest / "a").read_bytes() == b"x"


def test_existing_nonempty_dest_is_refused_before_reading(box: Box) -> None:
    box.dest.mkdir()
    (box.dest / "keep").write_bytes(b"keep")
    src = Chunked(tar_bytes([f("a")]))
    with pytest.raises(UsageError, match="not empty"):
        extract(src, str(box.dest))
    assert src.reads == 0
    assert os.listdir(box.dest) == ["keep"] and os.listdir(box.parent) == ["dest"]


@pytest.mark.parametrize("kind", ["symlink", "file"])
def test_dest_that_is_a_symlink_or_file_is_refused(box: Box, kind: str) -> None:
    if kind == "symlink":
        box.dest.symlink_to(box.outside)
    else:
        box.dest.write_bytes(b"")
    with pytest.raises(UsageError):
        extract(Chunked(tar_bytes([f("a")])), str(box.dest))
    assert os.listdir(box.outside) == ["victim"]


def test_missing_parents_of_dest_are_created(box: Box) -> None:
    """TF Serving wants /models/NAME/1: the stage makes /models/NAME itself."""
    dest = box.parent / "resnet" / "1" / "dest"
    extract(Chunked(tar_bytes([f("a", b"x")])), str(dest))
    assert (dest / "a").read_bytes() == b"x"


def test_parents_made_for_dest_are_removed_on_failure(box: Box) -> None:
    with pytest.raises(UnsafeError):
        extract(Chunked(tar_bytes([f("../evil")])), str(box.parent / "resnet" / "1"))
    assert not (box.parent / "resnet").exists()


def test_stale_staging_from_a_killed_attempt_is_removed(box: Box) -> None:
    stale = box.parent / ".dest.staging-0123456789abcdef"
    (stale / "half").mkdir(parents=True)
    (stale / "half" / "written").write_bytes(b"partial")
    (stale / "link").symlink_to(box.outside)  # removal must not follow it
    other = box.parent / ".other.staging-00"
    other.mkdir()
    extract(Chunked(tar_bytes([f("a")])), str(box.dest))
    assert sorted(os.listdir(box.parent)) == [".other.staging-00", "dest"]
    assert os.listdir(box.outside) == ["victim"]


def test_staging_is_private_while_extracting(box: Box) -> None:
    seen = {}

    class Spy(Chunked):
        def readinto(self, buf):
            for n in os.listdir(box.parent):
                seen[n] = stat.S_IMODE(os.lstat(box.parent / n).st_mode)
            return super().readinto(buf)

    extract(Spy(tar_bytes([f("a")])), str(box.dest))
    staging = [n for n in seen if n.startswith(".dest.staging-")]
    assert staging and all(seen[n] == 0o700 for n in staging)


# ====================================================================== names


@pytest.mark.parametrize("name", ["/etc/evil", "//tmp/evil", "/"])
def test_absolute_names_refused(box: Box, name: str) -> None:
    box.refused(tar_bytes([f(name)]), UnsafeError, "absolute")
    box.refused(zip_bytes([(name, b"x", None)]), UnsafeError, "absolute")


@pytest.mark.parametrize("name", ["../outside/evil", "a/../../outside/evil", "a/..", "..", "a/b/../../../evil"])
def test_dotdot_refused(box: Box, name: str) -> None:
    box.refused(tar_bytes([f(name)]), UnsafeError, r"'\.\.'")
    box.refused(zip_bytes([(name, b"x", None)]), UnsafeError, r"'\.\.'")
    box.refused(tar_bytes([d(name)]), UnsafeError, r"'\.\.'")


def test_nul_in_names_refused(box: Box) -> None:
    blob = pax_header({b"path": b"good\0/../../outside/evil"}) + pad(header(b"good", size=1) + b"x") + end()
    box.refused(blob, UnsafeError, "NUL")
    raw = raw_zip([("a\0../../evil", b"x", None)])
    box.refused(raw, UnsafeError, "NUL")


def test_backslash_refused(box: Box) -> None:
    box.refused(tar_bytes([f("..\\..\\outside\\evil")]), UnsafeError, "backslash")
    box.refused(zip_bytes([("a\\b", b"x", None)]), UnsafeError, "backslash")


def test_empty_name_refused(box: Box) -> None:
    box.refused(header(b"", size=1) + pad(b"x") + end(), UnsafeError, "empty name")


def test_name_length_limits(box: Box) -> None:
    box.ok(tar_bytes([f("c" * 255)]))
    box.reset()
    box.refused(tar_bytes([f("c" * 256)]), UnsafeError, "over 255")
    long = "/".join(["a" * 200] * 21)  # 4220 bytes
    box.refused(tar_bytes([f(long)]), UnsafeError, "over 4096")
    box.refused(tar_bytes([f("abc/def")]), UnsafeError, "over 5", limits=Limits(max_name=5))


def test_depth_limit(box: Box) -> None:
    box.refused(tar_bytes([f("/".join(["d"] * 65))]), UnsafeError, "65 levels deep")
    box.refused(zip_bytes([("a/b/c/d", b"x", None)]), UnsafeError, "4 levels", limits=Limits(max_depth=3))
    box.ok(tar_bytes([f("/".join(["d"] * 64))]))


# ====================================================================== links


def test_symlinks_refused_by_default(box: Box) -> None:
    box.refused(tar_bytes([f("a"), sym("l", "a")]), UnsafeError, "symlinks are not allowed")
    box.refused(zip_bytes([("a", b"x", None), zip_symlink("l", "a")]), UnsafeError, "symlinks are not allowed")


@pytest.mark.parametrize("allow", [False, True])
@pytest.mark.parametrize("target", ["sub", "..", "../../outside", "/tmp"])
def test_symlink_then_write_through(box: Box, allow: bool, target: str) -> None:
    """`a -> somewhere` then `a/evil`: the file is never written through the link."""
    blob = tar_bytes([d("sub"), sym("a", target), f("a/evil", b"pwned")])
    box.refused(blob, UnsafeError, allow_symlinks=allow)
    blob = tar_bytes([d("sub"), sym("a", target), d("a/newdir")])
    box.refused(blob, UnsafeError, allow_symlinks=allow)
    blob = tar_bytes([d("sub"), sym("a", "sub"), f("a", b"over the link")])
    box.refused(blob, UnsafeError, allow_symlinks=allow)


@pytest.mark.parametrize("target", ["/etc/passwd", "..", "../x", "a/../../x", "a/b/../../..", "./../x", "a//../..",
                                    "", "a\\..\\..", "/"])
def test_symlink_escaping_refused(box: Box, target: str) -> None:
    box.refused(tar_bytes([d("a"), d("a/b"), sym("l", target)]), UnsafeError, allow_symlinks=True)
    box.refused(zip_bytes([zip_symlink("l", target)]), UnsafeError, allow_symlinks=True)


@pytest.mark.parametrize("layer", ["at creation", "after the tree is built"])
def test_each_symlink_check_alone_refuses_escapes(box: Box, monkeypatch, layer: str) -> None:
    """The lexical check at creation and the final resolution against the tree each stop escapes."""
    if layer == "at creation":
        monkeypatch.setattr(unpack.tree.Tree, "finish", lambda self: None)
    else:
        monkeypatch.setattr(unpack.tree, "climbs_out", lambda depth, comps: False)
    for target in ["..", "../outside/victim", "a/../../x", "a/b/../../../outside"]:
        box.refused(tar_bytes([d("a"), d("a/b"), sym("l", target)]), UnsafeError, "outside", allow_symlinks=True)
        box.refused(tar_bytes([d("a"), d("a/b"), sym("a/b/l", "../../" + target)]), UnsafeError, "outside",
                    allow_symlinks=True)


def test_long_symlink_targets_in_gnu_and_pax(box: Box) -> None:
    target = "/".join(["t" * 50] * 4) + "/file"  # over the 100-byte ustar field: K header or pax linkpath
    for fmt in (tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
        box.ok(tar_bytes([f(target, b"far"), sym("l", target)], format=fmt), allow_symlinks=True)
        assert os.readlink(box.dest / "l") == target and (box.dest / "l").read_bytes() == b"far"
        box.reset()


def test_symlink_escaping_from_a_subdirectory_refused(box: Box) -> None:
    box.refused(tar_bytes([d("x"), d("x/y"), sym("x/y/l", "../../../outside")]), UnsafeError, "outside",
                allow_symlinks=True)


def test_symlinks_inside_are_extracted_when_allowed(box: Box) -> None:
    """The Hugging Face cache layout: snapshots/<rev>/file -> ../../blobs/<hash>."""
    blob = tar_bytes([
        d("blobs"), f("blobs/abc", b"tensor"), d("snapshots"), d("snapshots/r1"),
        sym("snapshots/r1/model.bin", "../../blobs/abc"), sym("latest", "snapshots/r1"),
        sym("chain", "snapshots/r1/model.bin"), sym("dangling", "nowhere/x"), sym("self", "."),
    ])
    stats = box.ok(blob, allow_symlinks=True)
    assert stats["symlinks"] == 5
    assert os.readlink(box.dest / "snapshots" / "r1" / "model.bin") == "../../blobs/abc"
    assert (box.dest / "chain").read_bytes() == b"tensor"
    assert (box.dest / "latest" / "model.bin").read_bytes() == b"tensor"
    box2 = box.dest.parent / "zipdest"
    extract(Chunked(zip_bytes([("blobs/abc", b"t", None), zip_symlink("m", "blobs/abc")])), str(box2),
            allow_symlinks=True)
    assert os.readlink(box2 / "m") == "blobs/abc" and (box2 / "m").read_bytes() == b"t"


def test_symlink_targets_never_pass_through_symlinks(box: Box) -> None:
    """Only the last component of a target may be a symlink (documented rule), even if it would stay inside."""
    blob = tar_bytes([d("real"), f("real/x"), sym("alias", "real"), sym("via", "alias/x")])
    box.refused(blob, UnsafeError, "through another symlink", allow_symlinks=True)


@pytest.mark.parametrize("order", ["link-first", "link-last"])
def test_link_chains_that_repoint_after_creation(box: Box, order: str) -> None:
    """`s -> .` and `l -> s/..` are each inside lexically, but l resolves to dest's parent."""
    links = [sym("s", "."), sym("l", "s/..")]
    if order == "link-first":
        links.reverse()
    box.refused(tar_bytes(links), UnsafeError, "through another symlink", allow_symlinks=True)
    # jwilk's dirsymlink2a without the file write: cur -> ., par -> cur/..
    box.refused(tar_bytes([sym("cur", "."), sym("par", "cur/..")]), UnsafeError, allow_symlinks=True)
    # a link into a deeper directory, then a climb out of it: x/y is real, s -> x/y, l -> s/../../..
    box.refused(tar_bytes([d("x"), d("x/y"), sym("s", "x/y"), sym("l", "s/../../..")]), UnsafeError,
                allow_symlinks=True)


def test_directory_entry_over_existing_symlink(box: Box) -> None:
    blob = tar_bytes([d("x"), sym("d", "x"), d("d")])
    box.refused(blob, UnsafeError, "file or symlink of that name exists", allow_symlinks=True)
    blob = tar_bytes([sym("d", "../../outside"), d("d")])
    box.refused(blob, UnsafeError, allow_symlinks=True)
    box.refused(tar_bytes([f("d"), d("d")]), UnsafeError, "file or symlink of that name exists")


def test_symlink_over_existing_entry_refused(box: Box) -> None:
    box.refused(tar_bytes([f("a"), sym("a", "b")]), UnsafeError, "duplicate", allow_symlinks=True)
    box.refused(tar_bytes([d("a"), sym("a", "b")]), UnsafeError, "duplicate", allow_symlinks=True)


def test_pathmax_deep_symlink_chains(box: Box) -> None:
    """Long chains and PATH_MAX-sized targets neither hang nor escape."""
    chain = [f("end", b"the end")] + [sym(f"l{i}", f"l{i + 1}" if i < 199 else "end") for i in range(200)]
    climb = "a/" + "b/../" * 800 + "../end"  # 4011 bytes, stays inside
    chain += [d("a"), d("a/b"), sym("climb", climb)]
    stats = box.ok(tar_bytes(chain), allow_symlinks=True)
    assert stats["symlinks"] == 201
    assert (box.dest / "l190").read_bytes() == b"the end"  # 10 hops: within the kernel's 40
    assert (box.dest / "climb").read_bytes() == b"the end"
    box.reset()
    over = "a/" + "b/../" * 820
    box.refused(tar_bytes([d("a"), sym("x", over)]), UnsafeError, "over 4096", allow_symlinks=True)
    deep_escape = "/".join(["a"] * 60) + "/" + "/".join([".."] * 61)
    box.refused(tar_bytes([sym("x", deep_escape)]), UnsafeError, "outside", allow_symlinks=True)


@pytest.mark.parametrize("allow", [False, True])
@pytest.mark.parametrize("target", ["../outside/victim", "/etc/passwd", "a", "../../outside/victim"])
def test_hardlinks_refused(box: Box, allow: bool, target: str) -> None:
    blob = tar_bytes([f("a", b"inside"), hard("h", target), f("h2", b"x")])
    box.refused(blob, UnsafeError, "hard link", allow_symlinks=allow)
    assert os.stat(box.outside / "victim").st_nlink == 1
    assert os.stat("/etc/passwd").st_nlink == 1


@pytest.mark.parametrize("type_,what", [(tarfile.FIFOTYPE, "FIFO"), (tarfile.CHRTYPE, "character device"),
                                        (tarfile.BLKTYPE, "block device"), (tarfile.CONTTYPE, "contiguous"),
                                        (tarfile.GNUTYPE_SPARSE, "sparse"), (b"V", "unsupported"),
                                        (b"D", "unsupported"), (b"Z", "unsupported")])
def test_special_entries_refused(box: Box, type_: bytes, what: str) -> None:
    box.refused(header(b"special", type_) + end(), UnsafeError, what, allow_symlinks=True)


def test_pax_sparse_refused(box: Box) -> None:
    blob = pax_header({b"GNU.sparse.major": b"1", b"GNU.sparse.minor": b"0", b"GNU.sparse.name": b"s",
                       b"GNU.sparse.realsize": b"10"}) + header(b"s", size=512) + bytes(512) + end()
    box.refused(blob, UnsafeError, "sparse")


def test_zip_special_files_refused(box: Box) -> None:
    box.refused(zip_bytes([("fifo", b"", stat.S_IFIFO | 0o644)]), UnsafeError, "not a file")
    box.refused(zip_bytes([("dev", b"", stat.S_IFCHR | 0o644)]), UnsafeError, "not a file")


# ====================================================================== modes


def test_mode_bits_fixed_and_special_bits_stripped(box: Box) -> None:
    blob = tar_bytes([
        d("sticky", 0o1777), d("ro", 0o555), f("ro/file", b"r", 0o444), f("suid", b"s", 0o4755),
        f("sgid", b"g", 0o2644), f("none", b"n", 0o000), f("gx", b"x", 0o610), f("world", b"w", 0o666),
    ])
    box.ok(blob)

    def mode(p: str) -> int:
        return stat.S_IMODE(os.lstat(box.dest / p).st_mode)

    assert mode("sticky") == 0o755 and mode("ro") == 0o755
    assert mode("ro/file") == 0o644 and mode("suid") == 0o755 and mode("sgid") == 0o644
    assert mode("none") == 0o644 and mode("gx") == 0o755 and mode("world") == 0o644
    box2 = box.parent / "z"
    extract(Chunked(zip_bytes([("s", b"s", 0o104755), ("p", b"p", 0o100600), ("dos", b"d", None)])), str(box2))
    assert [stat.S_IMODE(os.stat(box2 / n).st_mode) for n in ("s", "p", "dos")] == [0o755, 0o644, 0o644]


# ====================================================================== duplicates


def test_duplicate_file_entries_refused(box: Box) -> None:
    box.refused(tar_bytes([f("a", b"first"), f("a", b"second")]), UnsafeError, "duplicate")
    box.refused(zip_bytes([("a", b"first", None), ("a", b"second", None)]), UnsafeError, "duplicate")
    box.refused(tar_bytes([d("a"), f("a", b"file over dir")]), UnsafeError, "duplicate")
    box.refused(tar_bytes([f("a"), f("a/b")]), UnsafeError, "goes through a symlink or a file")


# ====================================================================== limits


@pytest.mark.parametrize("kind", ["gzip", "bzip2", "xz", "zstd"])
def test_ratio_bombs(box: Box, kind: str) -> None:
    size = {"gzip": 64 << 20, "bzip2": 16 << 20, "xz": 16 << 20, "zstd": 256 << 20}[kind]
    info, _ = f("model.bin", size=size)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        t.addfile(info, io.BytesIO(bytes(size)))
    bomb = compress(buf.getvalue(), kind) if kind != "gzip" else gzip.compress(buf.getvalue(), 9)
    assert len(bomb) * 1000 < size
    t0 = time.monotonic()
    err = box.refused(bomb, CapacityError, "compression ratio")
    assert time.monotonic() - t0 < 5
    assert "decompression bomb" in str(err)


def test_ratio_limit_configurable_and_small_archives_fine(box: Box) -> None:
    data = tar_bytes([f("z", bytes(8 << 20))])
    box.refused(gzip.compress(data), CapacityError, "ratio over 10", limits=Limits(max_ratio=10))
    box.ok(gzip.compress(tar_bytes([f("z", bytes(3 << 20))])), limits=Limits(max_ratio=2))  # under the grace


def test_decompressed_stream_is_held_to_the_header_tar_bytes(shm: Path) -> None:
    """Under a .seal header's sizes the ratio is off (a model of zeros compresses past any ratio): its
    tar_bytes bounds the decompressed stream instead, so a payload that lies about it is still no bomb."""
    data = tar_bytes([f("model.safetensors", bytes(8 << 20))])
    bomb = zstandard.ZstdCompressor().compress(data)
    assert len(bomb) * 1000 < len(data)  # over the default ratio: only the header's sizes let it through
    stats = extract(io.BytesIO(bomb), str(shm / "ok"), declared=Sizes(tar_bytes=len(data)), size=len(bomb))
    assert stats["bytes"] == 8 << 20
    with refused(IntegrityError, "decompresses to more than the 1048576 bytes its .seal header declares"):
        extract(io.BytesIO(bomb), str(shm / "lie"), declared=Sizes(tar_bytes=1 << 20), size=len(bomb))
    assert sorted(os.listdir(shm)) == ["ok"]


def test_max_files(box: Box) -> None:
    members = [f(f"f{i}") for i in range(5)]
    box.refused(tar_bytes(members), CapacityError, "more than 3 entries", limits=Limits(max_files=3))
    box.refused(tar_bytes([f("a/b/c/x")]), CapacityError, "more than 3 entries", limits=Limits(max_files=3))
    box.refused(zip_bytes([(f"f{i}", b"x", None) for i in range(5)]), CapacityError, "entries",
                limits=Limits(max_files=3))
    box.ok(tar_bytes(members), limits=Limits(max_files=5))


def test_max_bytes_and_max_file_size(box: Box) -> None:
    two = [f("a", b"x" * 600), f("b", b"y" * 600)]
    box.refused(tar_bytes(two), CapacityError, "1000", limits=Limits(max_bytes=1000))
    box.refused(tar_bytes(two), CapacityError, "per-file", limits=Limits(max_file_size=500))
    box.refused(zip_bytes([("a", b"x" * 600, None), ("b", b"y" * 600, None)]), CapacityError, "1000",
                limits=Limits(max_bytes=1000))
    box.refused(zip_bytes([("a", b"x" * 600, None)]), CapacityError, "per-file", limits=Limits(max_file_size=500))
    box.refused(zip_bytes([("a", b"x" * 6000, None)], zipfile.ZIP_STORED), CapacityError, "zip archive over",
                limits=Limits(max_bytes=5000))


def test_declared_sizes_over_a_limit_refused_before_reading(box: Box) -> None:
    """A header claiming 40 GiB is refused at once, not after streaming up to the limit."""
    src = Chunked(header(b"huge", size=40 << 30) + bytes(1 << 20), sizes=(65536,))
    box.refused(src, CapacityError, "declares")
    assert src.reads < 10
    box.refused(tar_bytes([f("a", b"x" * 600)]), CapacityError, "would take the total", limits=Limits(max_bytes=500))
    box.refused(zip_bytes([("a", b"x" * 600, None)]), CapacityError, "declares", limits=Limits(max_file_size=500))


def test_sizes_counted_on_the_stream_not_the_zip_header(box: Box) -> None:
    """A zip entry whose header understates its size: the real bytes decide."""
    body = b"A" * 100_000
    blob = bytearray(zip_bytes([("a", body, None)]))
    # patch the uncompressed size to 10 in the local header and central directory
    for sig, off in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        at = blob.index(sig) + off
        blob[at : at + 4] = (10).to_bytes(4, "little")
    box.refused(bytes(blob), IntegrityError, "CRC|bytes")
    # and one that overstates it: refused as corrupt, not trusted
    blob = bytearray(zip_bytes([("a", body, None)]))
    for sig, off in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        at = blob.index(sig) + off
        blob[at : at + 4] = (200_000).to_bytes(4, "little")
    box.refused(bytes(blob), IntegrityError)


def test_sizes_counted_on_the_bytes_written(shm: Path) -> None:
    """Below the parsers: a data stream longer than its declared size still meets the limits."""
    root = os.open(shm, os.O_RDONLY | os.O_DIRECTORY)
    log = Log("t", io.StringIO())
    try:
        tree_ = unpack.tree.Tree(root, Limits(max_bytes=1000, max_file_size=700), False, log)
        with pytest.raises(CapacityError, match="per-file"):
            tree_.add_file((b"a",), b"a", 0o644, None, 0, iter([b"x" * 600, b"y" * 600]))
        tree_ = unpack.tree.Tree(root, Limits(max_bytes=1000, max_file_size=700), False, log)
        tree_.add_file((b"b",), b"b", 0o644, None, 0, iter([b"x" * 600]))
        with pytest.raises(CapacityError, match="more than 1000 bytes"):
            tree_.add_file((b"c",), b"c", 0o644, None, 0, iter([b"x" * 300, b"y" * 300]))
        assert os.path.getsize(shm / "a") <= 700 and os.path.getsize(shm / "c") <= 400
    finally:
        os.close(root)


def test_zip_central_directory_cap(box: Box, monkeypatch) -> None:
    monkeypatch.setattr(unpack.zip, "ZIP_CD_MAX", 4096)
    box.refused(zip_bytes([(f"file{i:04d}", b"", None) for i in range(100)]), CapacityError, "central directory")


def test_limits_must_be_positive() -> None:
    with pytest.raises(UsageError):
        Limits(max_bytes=0)
    with pytest.raises(UsageError):
        Limits(max_ratio=-1.0)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tiny tmpfs needs root")
def test_no_space_left_is_a_capacity_error(shm: Path) -> None:
    mnt = shm / "tiny"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)]).returncode != 0:
        pytest.skip("cannot mount tmpfs here")
    try:
        with pytest.raises(CapacityError, match="No space left"):
            extract(Chunked(tar_bytes([f("big", os.urandom(3 << 20))])), str(mnt / "dest"))
        assert os.listdir(mnt) == []
        zipped = zip_bytes([("big", os.urandom(1 << 20), None)], zipfile.ZIP_STORED)
        with pytest.raises(CapacityError, match="No space left"):
            extract(Chunked(zipped + zipped[:0]), str(mnt / "dest"))
        assert os.listdir(mnt) == []
        with pytest.raises(UsageError, match="mount point"):  # an emptyDir's own mount path
            extract(Chunked(tar_bytes([f("a")])), str(mnt))
        assert os.listdir(mnt) == [] and os.listdir(shm) == ["tiny"]
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


# ====================================================================== zip structure


def test_zip_overlapping_entries_refused(box: Box) -> None:
    inner = local_header("b", b"payload")
    blob = raw_zip([("a", inner, None), ("b", b"payload", 30 + 1)])  # b's header sits inside a's data
    box.refused(blob, UnsafeError, "overlap")
    blob = raw_zip([("a", b"same", None), ("a2", b"same", 0)])  # two names, one local header
    box.refused(blob, UnsafeError, "overlap|corrupt")


def test_zip_encrypted_and_unsupported_methods_refused(box: Box) -> None:
    box.refused(raw_zip([("a", b"x", None)], flags=1), UnsafeError, "encrypted")
    box.refused(zip_bytes([("a", b"x" * 100, None)], zipfile.ZIP_BZIP2), UnsafeError, "compression method 12")
    box.refused(zip_bytes([("a", b"x" * 100, None)], zipfile.ZIP_LZMA), UnsafeError, "compression method 14")


def test_zip_crc_mismatch_and_truncation(box: Box) -> None:
    blob = bytearray(zip_bytes([("a", b"hello world" * 100, None)], zipfile.ZIP_STORED))
    blob[blob.index(b"hello") + 3] ^= 0xFF
    box.refused(bytes(blob), IntegrityError, "CRC")
    good = zip_bytes([("a", os.urandom(5000), None)])
    box.refused(good[:-30], IntegrityError)
    box.refused(good[:2000], IntegrityError)
    box.refused(b"PK\x03\x04" + bytes(100), IntegrityError)


# ====================================================================== corrupt tar


def test_corrupt_and_truncated_tar(box: Box) -> None:
    good = tar_bytes([f("a", os.urandom(3000)), f("b", os.urandom(3000))])
    bad = bytearray(good)
    bad[3584 + 10] ^= 0x01  # inside b's header: checksum no longer matches
    box.refused(bytes(bad), IntegrityError, "corrupt tar header")
    box.refused(good[:2000], IntegrityError, "truncated")  # inside a's data
    box.refused(good[:3584], IntegrityError, "end-of-archive")  # at a header boundary
    box.refused(good[:3584 + 100], IntegrityError, "inside a header")
    box.refused(good[:3584 + 512 + 3000], IntegrityError, "padding")
    box.refused(os.urandom(4096), IntegrityError, "not a tar or zip")
    box.refused(b"", IntegrityError, "empty input")
    box.refused(b"hello", IntegrityError)


def test_tar_ends_only_at_its_end_block(box: Box) -> None:
    """tarfile would stop silently at a bad header mid-archive; we refuse it."""
    good = tar_bytes([f("a", b"1"), f("b", b"2")])
    box.refused(good[:1024] + b"\xff" * 512 + good[1536:], IntegrityError, "corrupt tar header")


def test_data_after_the_end_of_the_tar_refused(box: Box) -> None:
    one, two = tar_bytes([f("a")]), tar_bytes([f("b")])
    box.refused(one + two, IntegrityError, "after the end of the tar")
    box.refused(one + b"junk", IntegrityError, "after the end of the tar")
    box.refused(gzip.compress(one) + b"junk", IntegrityError, "after the end of the gzip")
    box.refused(compress(one, "zstd") + b"junkjunk", IntegrityError)


@pytest.mark.parametrize("kind", ["gzip", "xz", "bzip2", "zstd"])
def test_truncated_compressed_streams(box: Box, kind: str) -> None:
    """Cut after the tar's end block: only the compressed stream knows it is incomplete."""
    blob = compress(tar_bytes([f("a", os.urandom(2000))]), kind)
    for cut in (1, 4, 9):
        box.refused(blob[:-cut], IntegrityError, "truncated|corrupt")
    box.refused(blob[: len(blob) // 2], IntegrityError)


def test_gzip_trailer_crc_checked(box: Box) -> None:
    blob = bytearray(gzip.compress(tar_bytes([f("a", b"data")])))
    blob[-8] ^= 0xFF
    box.refused(bytes(blob), IntegrityError, "gzip")


def test_zstd_window_limit(box: Box) -> None:
    """A frame asking for a 256 MiB window (no content size to shrink it) is refused, not allocated."""
    params = zstandard.ZstdCompressionParameters.from_level(3, window_log=28)
    c = zstandard.ZstdCompressor(compression_params=params).compressobj()
    blob = c.compress(tar_bytes([f("a", os.urandom(1000))])) + c.flush()
    box.refused(blob, CapacityError, "window")


def test_extended_header_limits(box: Box) -> None:
    big = pax_header({b"comment": b"c" * (1 << 20)})
    box.refused(big + header(b"a", size=1) + pad(b"x") + end(), CapacityError, "extended header")
    chain = b"".join(pax_header({b"comment": b"c"}) for _ in range(9))
    box.refused(chain + header(b"a", size=1) + pad(b"x") + end(), IntegrityError, "extended headers in a row")
    box.refused(pax_header({b"comment": b"c"}) + end(), IntegrityError, "without a member")
    box.refused(pax_header(b"12 path=a\n"), IntegrityError)
    box.refused(pax_header(b"99999 path=a\n") + header(b"a") + end(), IntegrityError, "malformed pax")


def test_quadratic_pax_inputs_are_fast(box: Box) -> None:
    """CVE-2024-6232 shapes (long digit runs, many tiny records): linear here."""
    t0 = time.monotonic()
    box.refused(pax_header(b"1" * 60000) + header(b"a") + end(), IntegrityError, "malformed pax")
    box.refused(pax_header(b"5 aa\n" * 12000 + b"=") + header(b"a") + end(), IntegrityError, "malformed pax")
    assert time.monotonic() - t0 < 2


def test_gnu_longname_and_pax_precedence(box: Box) -> None:
    name = "x" * 150 + "/" + "y" * 150
    box.ok(tar_bytes([f(name, b"gnu")], format=tarfile.GNU_FORMAT))
    assert (box.dest / ("x" * 150) / ("y" * 150)).read_bytes() == b"gnu"
    box.reset()
    blob = pax_header({b"path": b"from-pax"}) + header(b"from-header", size=1) + pad(b"p") + end()
    box.ok(blob)
    assert os.listdir(box.dest) == ["from-pax"]
    box.reset()
    # a pax path of "../x" behind an innocent ustar name is still refused
    blob = pax_header({b"path": b"../outside/evil"}) + header(b"innocent", size=1) + pad(b"p") + end()
    box.refused(blob, UnsafeError, r"'\.\.'")
    blob = pax_header({b"path": b"/etc/evil"}, type=b"g") + header(b"innocent", size=1) + pad(b"p") + end()
    box.refused(blob, UnsafeError, "absolute")


def test_directory_or_link_with_data_refused(box: Box) -> None:
    box.refused(header(b"dir", b"5", size=512) + bytes(512) + end(), IntegrityError, "with 512 bytes")


# ====================================================================== source failures


@pytest.mark.parametrize("kind", ["none", "gzip", "zstd", "zip"])
@pytest.mark.parametrize("where", ["midway", "eof"])
def test_source_error_leaves_nothing(box: Box, kind: str, where: str) -> None:
    """The decrypting reader raises IntegrityError mid-way (tampering) or at EOF (truncation)."""
    members = [f(f"f{i}", os.urandom(300_000)) for i in range(5)]
    if kind == "zip":
        blob = zip_bytes([(i.name, data, None) for i, data in members], zipfile.ZIP_STORED)
    else:
        blob = compress(tar_bytes(members), kind)
    at = len(blob) // 2 if where == "midway" else len(blob)
    src = Chunked(blob, fail_at=at)
    box.refused(src, IntegrityError, "failed authentication")
    if where == "eof":
        assert src.exhausted  # every archive byte was read: only the final tag was missing


def test_keyboard_interrupt_wipes_staging(box: Box) -> None:
    blob = tar_bytes([f(f"f{i}", os.urandom(300_000)) for i in range(5)])
    box.refused(Chunked(blob, fail_at=len(blob) - 100, error=KeyboardInterrupt()), KeyboardInterrupt)


def test_reader_without_readinto_and_plain_files(box: Box, shm: Path) -> None:
    class ReadOnly:
        def __init__(self, data: bytes) -> None:
            self._b = io.BytesIO(data)

        def read(self, n: int = -1) -> bytes:
            return self._b.read(min(n, 1000))

    box.ok(ReadOnly(tar_bytes([f("a", b"r" * 5000)])))
    assert (box.dest / "a").read_bytes() == b"r" * 5000
    path = shm / "m.tar.zst"
    path.write_bytes(compress(tar_bytes([f("b", b"file")]), "zstd"))
    with open(path, "rb") as fh:
        extract(fh, str(shm / "out"))
    assert (shm / "out" / "b").read_bytes() == b"file"


def test_logs_and_stats(box: Box) -> None:
    from modelseal.log import Log

    stream = io.StringIO()
    stats = extract(Chunked(tar_bytes([d("a"), f("a/x", b"12345")])), str(box.dest), log=Log("unpack", stream))
    assert {k: stats[k] for k in ("files", "dirs", "symlinks", "bytes", "format", "compression")} == \
           {"files": 1, "dirs": 1, "symlinks": 0, "bytes": 5, "format": "tar", "compression": "none"}
    assert '"event":"unpack_start"' in stream.getvalue()


def test_mutated_archives_never_fail_internally(shm: Path) -> None:
    """Random byte flips, cuts and insertions: success or a categorised refusal, never an internal error."""
    import random

    from modelseal.errors import ModelsealError

    rnd = random.Random(20240611)
    base = tar_bytes([d("a"), f("a/x", rnd.randbytes(3000)), f("b" * 120, b"hello"), sym("l", "a/x"), f("c", b"")])
    gnu = tar_bytes([d("a"), f("a/x", rnd.randbytes(3000)), sym("l", "a/x" * 50)], format=tarfile.GNU_FORMAT)
    zipped = zip_bytes([("a/", b"", 0o40755), ("a/x", rnd.randbytes(3000), 0o100644), ("t", b"text " * 300, None)])
    samples = [base, gnu, zipped] + [compress(base, c) for c in COMPRESSIONS[1:]]
    outcomes = set()
    for i in range(600):
        sample = rnd.choice(samples)
        blob = bytearray(sample)
        while blob == sample:  # a byte set to its own value changes nothing: a mutation must change the bytes
            for _ in range(rnd.choice([1, 1, 2, 4, 16])):
                at, op = rnd.randrange(len(blob)), rnd.random()
                if op < 0.6:
                    blob[at] = rnd.randrange(256)
                elif op < 0.8:
                    del blob[at : at + rnd.randrange(1, 600)]
                else:
                    blob[at:at] = rnd.randbytes(rnd.randrange(1, 100))
        parent = shm / f"m{i}"
        parent.mkdir()
        try:
            extract(Chunked(bytes(blob)), str(parent / "dest"), allow_symlinks=bool(i % 2))
            outcomes.add("ok")
        except ModelsealError as e:
            assert e.exit_code in (4, 6, 7), e
            assert os.listdir(parent) == []
            outcomes.add(e.exit_code)
        subprocess.run(["rm", "-rf", str(parent)], check=True)
    assert os.listdir(shm) == []
    assert {"ok", 4, 7} <= outcomes
