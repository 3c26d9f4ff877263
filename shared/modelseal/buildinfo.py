"""Which build this is: the version and the commit it was built from (`modelseal --version`).

The commit is written into the package when it is built (tools/package-source.sh
writes `_build.py` into the copy that `make dist` and the image build package),
so a wheel or an image can say which commit it came from. A git checkout has no
`_build.py` and asks git instead; anything else says "unknown". Never raises:
--version must answer on any install.
"""

from __future__ import annotations

import importlib
import os
import subprocess

from . import __version__

#: Seconds git may take to answer (a hung network file system must not hang --version).
GIT_TIMEOUT = 5.0


def built_commit() -> str | None:
    """The commit written into the package when it was built; None when there is none (a checkout)."""
    try:
        # Imported by name: _build.py is written at build time, so a checkout (and mypy) has none.
        COMMIT = getattr(importlib.import_module(f"{__package__}._build"), "COMMIT", None)
    except Exception:  # noqa: BLE001 - absent or damaged: fall back, never fail
        return None
    return COMMIT if isinstance(COMMIT, str) and COMMIT else None


def _checkout_describe() -> str | None:
    """`git describe` when this module is a tracked file of a git checkout (not an install inside one)."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        tracked = _git(here, "ls-files", "--error-unmatch", "--", "__init__.py")
        if tracked.returncode != 0:
            return None
        described = _git(here, "describe", "--tags", "--always", "--dirty", "--abbrev=12")
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    text = described.stdout.strip()
    return text if described.returncode == 0 and text else None


def _git(cwd: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", "-C", cwd, *args], stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=GIT_TIMEOUT, check=False)


def version_line() -> str:
    """What `modelseal --version` prints: the built commit, else the checkout's `git describe`, else unknown."""
    built = built_commit()
    if built:
        return f"modelseal {__version__} (commit {built})"
    described = _checkout_describe()
    if described:
        return f"modelseal {__version__} (git checkout {described})"
    return f"modelseal {__version__} (commit unknown)"
