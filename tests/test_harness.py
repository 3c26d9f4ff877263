"""The test harness itself: a failing test must fail, promptly, wherever it runs.

tools/mutants.py counts a mutant as caught only when pytest reports a failed
test; a failure that hangs while pytest explains it looks like a timeout
instead (this happened under CI, where pytest diffs every failed comparison
in full). Each case runs a real pytest, with this suite's conftest, on a test
that compares two 1 MiB byte strings.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

FAILING = '''
import os

def test_plaintext_not_scrubbed():
    left = os.urandom(1 << 20)
    assert left == bytes(len(left))

def test_plaintext_cut_short():
    left = os.urandom(1 << 20)
    assert left[:-5] == left
'''


@pytest.mark.parametrize("env", [{}, {"CI": "true"}, {"BUILD_NUMBER": "7"}], ids=["local", "CI", "BUILD_NUMBER"])
@pytest.mark.parametrize("verbosity", ["-q", "-v", "-vv"])
def test_a_failed_comparison_of_large_bytes_fails_promptly_and_says_where(tmp_path: Path, env: dict,
                                                                          verbosity: str) -> None:
    shutil.copy(Path(__file__).with_name("conftest.py"), tmp_path / "conftest.py")
    shutil.copytree(Path(__file__).with_name("support"), tmp_path / "support",  # the fixtures conftest registers
                    ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "test_big.py").write_text(FAILING)
    clean = {k: v for k, v in os.environ.items() if k not in ("CI", "BUILD_NUMBER")}
    p = subprocess.run([sys.executable, "-m", "pytest", verbosity, "-p", "no:cacheprovider", "test_big.py"],
                       cwd=tmp_path, env={**clean, **env}, capture_output=True, text=True, timeout=120)
    assert p.returncode == 1, p.stdout[-2000:]
    assert "2 failed" in p.stdout
    assert "first difference at offset 0:" in p.stdout and "the right side is all zeros" in p.stdout
    assert "first difference at offset 1048571: (end) vs " in p.stdout
