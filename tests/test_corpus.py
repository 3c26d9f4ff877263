"""Every archive of the public malicious-archive corpus (../shared/corpus/).

Each one is extracted in a child process (so a hang is a timeout and memory is
the child's own peak RSS), twice: with the defaults and with symlinks allowed.
The destination sits several levels deep inside a sandbox, with the child's
working directory beside it, so `../` escapes land where they can be seen.
Pass: either the archive is refused with a categorised exit code (4, 6 or 7)
and nothing is left, or it is extracted and everything is inside the
destination; in both cases nothing else in the sandbox, nor the usual
absolute targets (/tmp/..., /etc/passwd), changed.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from support.archives import snapshot
from conftest import need

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
ARCHIVES = sorted(p for p in CORPUS.rglob("*") if p.is_file() and p.name != "README.md") if CORPUS.is_dir() else []
MAX_RSS_MIB = 200
TIMEOUT = 60
# Absolute paths the corpus aims at; none may appear or change.
TARGETS = ["/tmp/moo", "/tmp/PWNED.txt", "/tmp/evil.txt", "/tmp/VICTIM.txt", "/etc/passwd", "/Temp/evil.txt"]

CHILD = r"""
import json, os, sys
from modelseal.errors import ModelsealError
from modelseal.unpack import extract

archive, sandbox = sys.argv[1], sys.argv[2]
results = {}
for mode in ("default", "symlinks"):
    dest = os.path.join(sandbox, mode, *[f"l{i}" for i in range(7)], "dest")
    os.chdir(os.path.dirname(dest))
    try:
        with open(archive, "rb") as src:
            stats = extract(src, dest, allow_symlinks=(mode == "symlinks"))
        results[mode] = {"ok": True, "stats": stats}
    except ModelsealError as e:
        results[mode] = {"ok": False, "code": e.exit_code, "error": str(e)}
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the forking parent (pytest) across exec.
with open("/proc/self/status") as status:
    hwm = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
print(json.dumps({"results": results, "maxrss_kib": hwm}))
"""


def _targets() -> dict[str, tuple | None]:
    out: dict[str, tuple | None] = {}
    for t in TARGETS:
        try:
            st = os.lstat(t)
            out[t] = (st.st_mode, st.st_size, st.st_nlink, st.st_mtime_ns, st.st_ino)
        except FileNotFoundError:
            out[t] = None
    return out


def _prepare(sandbox: Path) -> None:
    (sandbox / "outside").mkdir()
    (sandbox / "outside" / "victim").write_bytes(b"victim")
    for mode in ("default", "symlinks"):
        parent = sandbox / mode / Path(*[f"l{i}" for i in range(7)])
        parent.mkdir(parents=True)
        # decoys along the way up: where `../x`, `tmp/x` and friends would land
        for i, up in enumerate([parent, *parent.parents]):
            if up == sandbox:
                break
            (up / f"decoy{i}").write_bytes(b"decoy")
        (parent / "tmp").mkdir()
        (parent / "tmp" / "VICTIM.txt").write_bytes(b"victim")


def _without_dests(snap: dict[str, tuple]) -> dict[str, tuple]:
    out = {}
    for path, value in snap.items():
        if "/dest" in f"/{path}":
            continue
        if path.endswith("l6") and value[0] == "dir":
            value = value[:2]  # staging comes and goes in dest's parent: its mtime moves
        out[path] = value
    return out


def _check_inside(dest: Path) -> None:
    real = os.path.realpath(dest)
    for dirpath, dirnames, filenames in os.walk(dest):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            assert stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode), \
                f"{p}: unexpected file type {oct(st.st_mode)}"
            resolved = os.path.realpath(p)
            assert resolved == real or resolved.startswith(real + os.sep), f"{p} resolves outside: {resolved}"
            assert st.st_nlink == 1 or os.path.isdir(p), f"{p} is hard-linked"
            assert not st.st_mode & 0o7000


def test_corpus_is_present() -> None:
    """Without the corpus beside the repository this skips; under CI (MODELSEAL_REQUIRE_IMAGES=1) it fails."""
    if not CORPUS.is_dir():
        need(f"no corpus at {CORPUS}")
    assert len(ARCHIVES) >= 80, f"only {len(ARCHIVES)} archives under {CORPUS}"


@pytest.mark.parametrize("archive", ARCHIVES, ids=[str(p.relative_to(CORPUS)) for p in ARCHIVES])
def test_corpus_archive(shm: Path, archive: Path) -> None:
    sandbox = shm / "sandbox"
    sandbox.mkdir()
    _prepare(sandbox)
    before, targets = _without_dests(snapshot(sandbox)), _targets()
    proc = subprocess.run([sys.executable, "-c", CHILD, str(archive), str(sandbox)], capture_output=True,
                          timeout=TIMEOUT, cwd=str(sandbox))
    assert proc.returncode == 0, f"child failed (an internal error?): {proc.stderr.decode(errors='replace')[-2000:]}"
    report = json.loads(proc.stdout)
    assert report["maxrss_kib"] < MAX_RSS_MIB * 1024, f"peak RSS {report['maxrss_kib'] >> 10} MiB"
    for mode, result in report["results"].items():
        dest = sandbox / mode / Path(*[f"l{i}" for i in range(7)]) / "dest"
        if result["ok"]:
            assert dest.is_dir() and not dest.is_symlink()
            _check_inside(dest)
            if mode == "default":
                assert not any(os.path.islink(os.path.join(dp, n)) for dp, dn, fn in os.walk(dest) for n in dn + fn)
        else:
            assert result["code"] in (4, 6, 7), result
            assert not dest.exists() and not dest.is_symlink(), f"{mode}: dest left behind after {result}"
            leftovers = [n for n in os.listdir(dest.parent) if "staging" in n]
            assert not leftovers, f"{mode}: staging left behind: {leftovers}"
    assert _without_dests(snapshot(sandbox)) == before, "something outside the destination changed"
    assert _targets() == targets, "an absolute target changed"
    # The two bombs are refused for the reason they exist.
    if archive.name == "zbsm.zip":
        assert report["results"]["default"]["code"] == 7 and "overlap" in report["results"]["default"]["error"]
    if archive.name == "zeros-512MiB.tar.gz":
        assert report["results"]["default"]["code"] == 6 and "ratio" in report["results"]["default"]["error"]
