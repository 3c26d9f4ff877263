"""The documents a user relies on stay true: README's table of flags is the parser's, every test the
threat model names exists, LICENSE is the Apache-2.0 text the package metadata claims."""

from __future__ import annotations

import ast
import hashlib
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import readme_flags  # noqa: E402

#: sha256 of https://www.apache.org/licenses/LICENSE-2.0.txt (also Debian's /usr/share/common-licenses/Apache-2.0)
APACHE_2_0 = "cfc7749b96f63bd31c3c42b5c471bf756814053e847c10f3eb003417bc523d30"


def test_readme_flag_table_is_the_parsers(monkeypatch):
    for name in [n for n in __import__("os").environ if n.startswith("MODELSEAL_")]:
        monkeypatch.delenv(name)
    text = (ROOT / "README.md").read_text()
    assert readme_flags.rewritten(text, readme_flags.table()) == text, \
        "README.md's table of flags is stale: run PYTHONPATH=shared python tools/readme_flags.py"
    from modelseal.cli import build_parser
    from modelseal.usage import subcommands

    table = text.split(readme_flags.BEGIN)[1].split(readme_flags.END)[0]
    for sub in subcommands(build_parser()).values():  # every flag of every command has its row
        for action in sub._actions:
            for option in action.option_strings:
                if option.startswith("--") and option != "--help":
                    assert f"`{option}`" in table, option


def _named_tests(path: Path) -> set[str]:
    return set(re.findall(r"(tests/[\w/]+\.py::test_\w+)", path.read_text()))


def _defined(module: Path) -> set[str]:
    tree = ast.parse(module.read_text())
    return {node.name for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}


def test_every_test_the_threat_model_names_exists():
    named = _named_tests(ROOT / "docs" / "THREAT-MODEL.md")
    assert len(named) >= 25
    missing = []
    for ref in sorted(named):
        module, name = ref.split("::")
        if not (ROOT / module).exists() or name not in _defined(ROOT / module):
            missing.append(ref)
    assert not missing, f"docs/THREAT-MODEL.md names tests that do not exist: {missing}"


@pytest.mark.parametrize("section", ["node", "kubelet", "serving container", "memory encryption",
                                     "compromised key service", "owner's machine"])
def test_the_threat_model_says_what_is_out_of_scope(section: str):
    out_of_scope = (ROOT / "docs" / "THREAT-MODEL.md").read_text().split("## What modelseal does not protect")[1]
    assert section.lower() in out_of_scope.lower()


def test_license_is_the_apache_2_0_text():
    assert hashlib.sha256((ROOT / "LICENSE").read_bytes()).hexdigest() == APACHE_2_0
    assert re.search(r'^license = (\{text = )?"Apache-2.0"', (ROOT / "shared" / "pyproject.toml").read_text(), re.M)


def test_changelog_keeps_a_changelog():
    text = (ROOT / "CHANGELOG.md").read_text()
    assert "Keep a Changelog" in text
    assert re.findall(r"^## \[([^\]]+)\]", text, re.M) == ["Unreleased", "0.1.0"]
    for issue in ("18", "20", "21", "22", "23", "24", "26", "27"):  # on main; 19 and the soak have their lines
        assert f"(issue {issue})" in text, issue


def test_security_policy_says_how_to_report_and_what_is_supported():
    text = (ROOT / "SECURITY.md").read_text()
    assert "## Reporting a vulnerability" in text and "## Supported versions" in text
    assert "0.1.x" in text


def test_the_quick_start_runs(shm, monkeypatch):
    """README's Quick start, command by command (the install and completion lines aside), on a small model."""
    import os
    import shlex

    from conftest import modelseal

    text = (ROOT / "README.md").read_text()
    block = text.split("## Quick start", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    commands = [shlex.split(line.split(" #", 1)[0]) for line in block.splitlines() if line.startswith("modelseal ")]
    assert [c[1] for c in commands] == ["keygen", "seal", "inspect", "inspect", "run"], commands
    (shm / "my-model").mkdir()
    (shm / "my-model" / "weights.bin").write_bytes(os.urandom(200_000))
    monkeypatch.chdir(shm)
    for args in commands:
        args = [str(shm / "out" / a[len("/dev/shm/"):]) if a.startswith("/dev/shm/") else a for a in args[1:]]
        r = modelseal(*args)
        assert r.code == 0, (args, r.stderr)
    assert (shm / "out" / "my-model" / "weights.bin").read_bytes() == (shm / "my-model" / "weights.bin").read_bytes()
