"""Unpack's limits follow the model (issue 19): the .seal header's sizes are the limits.

A model whose header declares more than the fixed defaults needs no flag;
a limit given below what the header declares is refused before the first
byte, naming the flag and its value (exit 6); a limit hit on the stream
names its flag and its current value. The fixed defaults (bounds.UNPACK_DEFAULTS)
hold only input without sizes. 64 GiB cannot be written in a test: the rule
is proven on the one default a small model can exceed honestly (the ratio:
64 MiB of zeros compresses more than 1000 to 1), and on the arithmetic.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from conftest import modelseal
from modelseal import bounds
from modelseal.errors import CapacityError
from modelseal.sealfile import Sizes
from modelseal.unpack.limits import Limits

MIB = 1 << 20
GIB = 1 << 30


def _zeros_model(shm: Path) -> tuple[Path, Path, Path]:
    """A model whose zstd tar decompresses over 1000x (the default --max-ratio): 64 MiB of zeros + a config."""
    src = shm / "src"
    src.mkdir()
    with open(src / "model-00001-of-00001.safetensors", "wb") as f:
        f.truncate(64 * MIB)
    (src / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    key = shm / "key"
    key.write_bytes(os.urandom(32))
    seal = shm / "m.seal"
    r = modelseal("seal", str(src), "-o", str(seal), "--key", str(key), "--compress", "zstd")
    assert r.code == 0, r.stderr
    assert seal.stat().st_size * 1000 < 64 * MIB  # over the default ratio, or this test proves nothing
    return src, key, seal


def _tree_equal(a: Path, b: Path) -> None:
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    for rel in files:
        assert (a / rel).read_bytes() == (b / rel).read_bytes()


def test_header_sizes_lift_the_fixed_defaults_with_no_flag(shm: Path) -> None:
    src, key, seal = _zeros_model(shm)
    # run: the header declares the sizes, so no ratio applies (tar_bytes bounds the stream)
    r = modelseal("run", "--source", str(seal), "--key", str(key), "-o", str(shm / "out" / "m"))
    assert r.code == 0, r.stderr
    _tree_equal(src, shm / "out" / "m")
    # four-stage: decrypt leaves the header's sizes beside the tar; unpack follows them, no flag either
    r = modelseal("decrypt", "--in", str(seal), "--key", str(key), "-o", str(shm / "m.tar.zst"))
    assert r.code == 0, r.stderr
    r = modelseal("unpack", "--in", str(shm / "m.tar.zst"), "-o", str(shm / "four" / "m"))
    assert r.code == 0, r.stderr
    _tree_equal(src, shm / "four" / "m")
    # The same tar without sizes (a .tar.zst from elsewhere) is held to the fixed default, named
    os.unlink(shm / "m.tar.zst.sizes")
    r = modelseal("unpack", "--in", str(shm / "m.tar.zst"), "-o", str(shm / "bare" / "m"))
    assert r.code == 6, r.stderr
    assert "--max-ratio 1000, the default for input without sizes in a .seal header" in r.error()
    assert not (shm / "bare").exists()


def test_the_header_sizes_set_each_limit_a_default_would() -> None:
    """The arithmetic behind 'a 150 GB model needs no flag' (no 150 GB in a test)."""
    declared = Sizes(tar_bytes=150 * GIB + 40 * MIB, file_bytes=150 * GIB, files=40)
    applied = Limits().applied(declared, 150 * GIB, "none")
    assert applied.max_bytes == applied.max_file_size == 150 * GIB  # over the defaults of 64G and 32G
    assert applied.max_bytes > bounds.UNPACK_DEFAULTS["max_bytes"]
    assert applied.max_files >= (150 * GIB) // 512  # whatever a tar of that length can hold
    assert applied.max_ratio == float("inf") and applied.max_tar == declared.tar_bytes
    bare = Limits().applied(None, 150 * GIB, "none")
    assert (bare.max_bytes, bare.max_file_size, bare.max_files, bare.max_ratio) == \
        tuple(bounds.UNPACK_DEFAULTS[k] for k in ("max_bytes", "max_file_size", "max_files", "max_ratio"))
    given = Limits(max_bytes=200 * GIB).applied(declared, 150 * GIB, "none")
    assert given.max_bytes == 200 * GIB and "--max-bytes 200G, as given" in given.over("max_bytes")
    with pytest.raises(CapacityError, match=r"over --max-bytes 100G: raise it to at least 150G"):
        Limits(max_bytes=100 * GIB).applied(declared, 150 * GIB, "none")


@pytest.mark.parametrize("flag, value, env, shown", [
    ("--max-bytes", "1M", None, "--max-bytes 1M"),
    ("--max-files", "1", None, "--max-files 1"),
    ("--max-ratio", "2", None, "--max-ratio 2"),
    (None, "1M", "MODELSEAL_MAX_BYTES", "$MODELSEAL_MAX_BYTES 1M"),
])
@pytest.mark.parametrize("stage", ["run", "unpack"])
def test_a_limit_below_the_header_fails_before_any_write(shm: Path, stage: str, flag: str | None, value: str,
                                                         env: str | None, shown: str) -> None:
    src, key, seal = _zeros_model(shm)
    vol = shm / "vol"
    vol.mkdir()
    if stage == "unpack":
        r = modelseal("decrypt", "--in", str(seal), "--key", str(key), "-o", str(shm / "m.tar.zst"))
        assert r.code == 0, r.stderr
        args = ["unpack", "--in", str(shm / "m.tar.zst"), "-o", str(vol / "m")]
    else:
        args = ["run", "--source", str(seal), "--key", str(key), "-o", str(vol / "m")]
    r = modelseal(*args, *([flag, value] if flag else []), env={env: value} if env else None)
    assert r.code == 6, r.stderr
    assert "the .seal header declares" in r.error() and f"over {shown}: raise it to at least" in r.error()
    assert not [x for x in r.logs() if x["event"] in ("progress", "preflight")]  # refused before the preflight
    assert os.listdir(vol) == []  # no staging directory, no parents, nothing written


def test_a_limit_hit_on_the_stream_names_its_flag_and_value(shm: Path) -> None:
    src = shm / "src"
    src.mkdir()
    (src / "a.safetensors").write_bytes(os.urandom(300_000))
    subprocess.run(["tar", "-cf", str(shm / "m.tar"), "-C", str(src), "."], check=True)  # no .seal: no sizes
    for flag, value, shown in (("--max-file-size", "100K", "--max-file-size 100K, as given"),
                               ("--max-bytes", "200K", "--max-bytes 200K, as given")):
        r = modelseal("unpack", "--in", str(shm / "m.tar"), "-o", str(shm / "m"), flag, value)
        assert r.code == 6 and shown in r.error(), r.stderr
        assert not (shm / "m").exists()


def test_help_shows_the_defaults_for_input_without_sizes() -> None:
    r = modelseal("unpack", "--help")
    text = " ".join(r.stdout.decode().split())
    for default in ("64G for input without sizes", "32G for input without sizes",
                    "1000000 for input without sizes", "1000 for input without sizes"):
        assert default in text, default
