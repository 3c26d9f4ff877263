"""Flag values that would quietly turn a check off: empty check flags, NaN and out-of-range numbers.

A pod spec is a template: an unset variable becomes `MODELSEAL_VERIFY_KEY=""`
or `--sha256=`, and before this an empty value for a flag that asks for a
check was read as "no check", so an unsigned model unpacked with exit 0.
NaN compares false with everything, so `--max-ratio nan` turned the
decompression-bomb check off. Each is now exit 2 with one line that names the
flag (or its variable) and the value, read the same way from the command line
and from the environment (cli._read_values, bounds.Number).
"""

from __future__ import annotations

import gzip
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from conftest import modelseal, one_line

MIB = 1 << 20


@pytest.fixture
def unsigned(shm: Path) -> Path:
    """An unsigned model as a tar, and sealed (m.seal, key): what an attacker swaps in for the signed one."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        data = b"attacker's weights " * 1000
        info = tarfile.TarInfo("weights.bin")
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
    (shm / "m.tar").write_bytes(buf.getvalue())
    (shm / "key").write_bytes(os.urandom(32))
    r = modelseal("seal", str(shm / "m.tar"), "-o", str(shm / "m.seal"), "--key", str(shm / "key"))
    assert r.code == 0, r.stderr
    return shm


def _refused(shm: Path, *args: str, env: dict | None = None, names: str, value: str | None = None) -> str:
    """Run; it must exit 2 with one line naming `names` (and `value`), and create nothing."""
    term = shm / "termination-log"
    term.write_text("")
    before = sorted(os.listdir(shm))
    r = modelseal(*args, env={"MODELSEAL_TERMINATION_LOG": str(term), **(env or {})})
    assert r.code == 2, r.stderr
    error = r.error()
    assert names in error and (value is None or value in error), error
    one_line(ValueError(error))
    assert json.loads(term.read_text())["category"] == "usage"
    assert [line for line in r.stderr.splitlines() if '"event":"failed"' in line] == [r.stderr.splitlines()[-1]]
    assert sorted(os.listdir(shm)) == before, "something was created"
    return error


# ---- an empty value for a flag that asks for a check -------------------------------------------

EMPTY_CHECKS = [
    # (stage, flag as given, what the error names)
    ("unpack", ("--verify-key=",), {}, "--verify-key"),
    ("unpack", ("--verify-certificate", ""), {}, "--verify-certificate"),
    ("unpack", ("--verify-key", "  "), {}, "--verify-key"),
    ("unpack", ("--signature", ""), {}, "--signature"),
    ("unpack", (), {"MODELSEAL_VERIFY_KEY": ""}, "$MODELSEAL_VERIFY_KEY"),
    ("unpack", (), {"MODELSEAL_VERIFY_CERTIFICATE": ""}, "$MODELSEAL_VERIFY_CERTIFICATE"),
    ("run", ("--verify-key=",), {}, "--verify-key"),
    ("run", (), {"MODELSEAL_VERIFY_KEY": ""}, "$MODELSEAL_VERIFY_KEY"),
    ("run", ("--sha256=",), {}, "--sha256"),
    ("run", (), {"MODELSEAL_SHA256": ""}, "$MODELSEAL_SHA256"),
    ("run", ("--ca", ""), {}, "--ca"),
    ("fetch-model", ("--sha256", ""), {}, "--sha256"),
    ("fetch-model", (), {"MODELSEAL_CA": ""}, "$MODELSEAL_CA"),
]


@pytest.mark.parametrize("stage, flags, env, names", EMPTY_CHECKS)
def test_an_empty_check_flag_is_a_usage_error_not_a_check_turned_off(unsigned: Path, stage, flags, env, names):
    shm = unsigned
    args = {"unpack": ["unpack", "--in", str(shm / "m.tar"), "-o", str(shm / "model")],
            "run": ["run", "--source", str(shm / "m.seal"), "--key", str(shm / "key"), "-o", str(shm / "model")],
            "fetch-model": ["fetch-model", "--source", str(shm / "m.seal"), "-o", str(shm / "copy.seal")]}[stage]
    error = _refused(shm, *args, *flags, env=env, names=names)
    assert "empty" in error


def test_an_empty_ca_in_a_uri_query_is_a_usage_error(shm: Path):
    """`?ca=` would fall back to the system's roots instead of the one CA the spec names."""
    _refused(shm, "fetch-model", "--source", "https://127.0.0.1:1/m.seal?ca=", "--retries", "1",
             "-o", str(shm / "m.seal"), names="query parameter ca")


def test_the_checks_still_run_when_their_flags_are_given(unsigned: Path):
    """The refusal above is about empty values only: a real key still refuses the unsigned model (exit 4)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    pub = ec.generate_private_key(ec.SECP256R1()).public_key()
    (unsigned / "signer.pub").write_bytes(pub.public_bytes(serialization.Encoding.PEM,
                                                           serialization.PublicFormat.SubjectPublicKeyInfo))
    r = modelseal("unpack", "--in", str(unsigned / "m.tar"), "-o", str(unsigned / "model"),
                  env={"MODELSEAL_VERIFY_KEY": str(unsigned / "signer.pub")})
    assert r.code == 4, r.stderr
    assert not (unsigned / "model").exists()


# ---- numeric flags: finite, in range, one rule ---------------------------------------------------

@pytest.fixture
def bomb(shm: Path) -> Path:
    """A gzip tar of 64 MiB of zeros: a ratio near 1000, what --max-ratio exists to stop."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as t:
        info = tarfile.TarInfo("zeros.bin")
        info.size = 64 * MIB
        t.addfile(info, io.BytesIO(bytes(info.size)))
    (shm / "bomb.tar.gz").write_bytes(gzip.compress(raw.getvalue(), 9))
    return shm / "bomb.tar.gz"


@pytest.mark.parametrize("flags, env, names", [
    (("--max-ratio", "nan"), {}, "--max-ratio"),
    (("--max-ratio=NaN",), {}, "--max-ratio"),
    (("--max-ratio", "inf"), {}, "--max-ratio"),
    (("--max-ratio", "1e999"), {}, "--max-ratio"),
    ((), {"MODELSEAL_MAX_RATIO": "nan"}, "$MODELSEAL_MAX_RATIO"),
    ((), {"MODELSEAL_MAX_RATIO": "Infinity"}, "$MODELSEAL_MAX_RATIO"),
])
def test_a_nan_ratio_does_not_turn_the_bomb_check_off(shm: Path, bomb: Path, flags, env, names):
    r = modelseal("unpack", "--in", str(bomb), "-o", str(shm / "b"), "--max-ratio", "10")
    assert r.code == 6 and "ratio" in r.error(), r.stderr  # the bomb is one: a finite limit stops it
    _refused(shm, "unpack", "--in", str(bomb), "-o", str(shm / "b"), *flags, env=env, names=names)


#: (stage, flag, bad values): NaN, the infinities, negatives, zero where it means nothing, the wrong kind.
BAD_NUMBERS = [
    ("fetch-model", "timeout", ["nan", "inf", "-inf", "1e999", "0", "-1", "x", "100000"]),
    ("fetch-model", "retries", ["nan", "0", "-1", "1.5", "1e3", "101", "١٢"]),
    ("fetch-model", "concurrency", ["nan", "0", "-3", "inf", "4_0"]),
    ("unpack", "max-bytes", ["nan", "0", "-1", "1e9", "inf", "99999999999T"]),
    ("unpack", "max-files", ["nan", "0", "-1", "inf", "2.5"]),
    ("unpack", "max-file-size", ["nan", "0", "-5M"]),
    ("unpack", "max-ratio", ["nan", "-inf", "0", "0.5", "-1"]),
    ("decrypt", "workers", ["nan", "0", "-1", "inf", "257", ""]),
]


@pytest.mark.parametrize("stage, flag, values", BAD_NUMBERS, ids=[b[1] for b in BAD_NUMBERS])
def test_every_numeric_flag_refuses_nan_infinities_and_out_of_range_values(unsigned: Path, stage, flag, values):
    shm = unsigned
    args = {"fetch-model": ["fetch-model", "--source", str(shm / "m.seal"), "-o", str(shm / "copy.seal")],
            "unpack": ["unpack", "--in", str(shm / "m.tar"), "-o", str(shm / "model")],
            "decrypt": ["decrypt", "--in", str(shm / "m.seal"), "--key", str(shm / "key"), "-o", str(shm / "m.out")]}
    env_name = "MODELSEAL_" + flag.upper().replace("-", "_")
    for value in values:
        _refused(shm, *args[stage], f"--{flag}={value}", names=f"--{flag}", value=repr(value)[1:-1])
        _refused(shm, *args[stage], env={env_name: value}, names=f"${env_name}")


def test_numeric_flags_in_range_are_taken(unsigned: Path):
    shm = unsigned
    r = modelseal("unpack", "--in", str(shm / "m.tar"), "-o", str(shm / "model"), "--max-ratio", "1e3",
                  "--max-bytes", "1G", "--max-files", "+10", "--max-file-size", "64KiB")
    assert r.code == 0, r.stderr
    r = modelseal("fetch-model", "--source", str(shm / "m.seal"), "-o", str(shm / "copy.seal"), "--timeout", "0.5",
                  "--retries", "1", "--concurrency", "256")
    assert r.code == 0, r.stderr
    r = modelseal("decrypt", "--in", str(shm / "m.seal"), "--key", str(shm / "key"), "-o", str(shm / "m.out"),
                  env={"MODELSEAL_WORKERS": "auto"})
    assert r.code == 0, r.stderr
    assert (shm / "m.out").read_bytes() == (shm / "m.tar").read_bytes()


@pytest.mark.parametrize("query", ["timeout=nan", "timeout=inf", "retries=0", "concurrency=-1", "timeout=0"])
def test_numeric_query_parameters_follow_the_same_rule(shm: Path, query: str):
    _refused(shm, "fetch-model", "--source", f"https://127.0.0.1:1/m.seal?{query}", "--retries", "1",
             "-o", str(shm / "m.seal"), names=f"query parameter {query.split('=')[0]}")
