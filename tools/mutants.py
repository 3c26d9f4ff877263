#!/usr/bin/env python3
"""Plant each curated bug (tools/mutants.toml) in a copy of the library, one at a time, and check a test catches it.

    tools/mutants.py                 # every mutant; exit 1 if one survives or no longer applies
    tools/mutants.py ID...           # only these
    MUTANT_JOBS=1 tools/mutants.py   # one at a time (default: one per CPU, at most 2)

A mutant is a snippet of shared/modelseal (or of the release tool,
images/release, for a file named release/...) that occurs exactly once and its
replacement: a small, realistic bug in a promise the README makes (a check
dropped, a bound off by one, a message that quotes a secret). Each runs the
tests it names against a copy of the library with that one change, put
first on PYTHONPATH, so the CLI subprocesses the tests start run it too. The
mutant is killed when a test fails; it survives when they all pass, which
means the promise is unguarded. A snippet that is no longer in the code
is reported as stale (the list must follow the code), and the tests are
first run once without any mutant: they must pass there.

Why a curated list and not mutmut: the promises are security properties
spread over a few lines each, and the tests that guard them start real
servers and subprocesses; a generated mutant per operator would take hours
and mostly test nothing that matters, while this list runs in minutes.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LIBRARY = REPO / "shared" / "modelseal"
RELEASE = REPO / "images" / "release"  # the release tool: a mutant's file "release/..." is one of its modules
LIST = Path(__file__).with_suffix(".toml")
PYTHON = os.environ.get("PYTHON", str(REPO / ".venv" / "bin" / "python"))


@dataclass
class Mutant:
    id: str
    file: str | list[str]  # one file for every snippet, or one per snippet (a bug spread over two modules)
    old: str | list[str]  # one snippet, or several changed together (one bug spread over two places)
    new: str | list[str]
    tests: list[str]
    why: str

    @property
    def files(self) -> str:
        return self.file if isinstance(self.file, str) else ",".join(dict.fromkeys(self.file))

    def changes(self) -> list[tuple[str, str, str]]:
        """(file, old, new) for each snippet."""
        olds = [self.old] if isinstance(self.old, str) else self.old
        news = [self.new] if isinstance(self.new, str) else self.new
        files = [self.file] * len(olds) if isinstance(self.file, str) else self.file
        if not len(olds) == len(news) == len(files):
            raise SystemExit(f"mutants: {self.id}: file, old and new differ in length")
        return list(zip(files, olds, news))


@dataclass
class Outcome:
    mutant: Mutant
    status: str  # killed | SURVIVED | STALE | BROKEN
    seconds: float
    detail: str = ""


def load() -> list[Mutant]:
    with open(LIST, "rb") as f:
        data = tomllib.load(f)
    mutants = [Mutant(**m) for m in data["mutant"]]
    ids = [m.id for m in mutants]
    dupes = {i for i in ids if ids.count(i) > 1}
    if dupes:
        sys.exit(f"mutants: duplicate ids in {LIST.name}: {', '.join(sorted(dupes))}")
    return mutants


def _env(site: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELSEAL_")}
    env["PYTHONPATH"] = site + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def _pytest(site: str, tests: list[str], timeout: float = 300) -> tuple[int, str]:
    # -v names each test as it starts, and faulthandler dumps every thread's stack when
    # one test runs past 120 s: a timeout then says which test hung, and where.
    cmd = [PYTHON, "-m", "pytest", "-x", "-v", "-p", "no:cacheprovider", "--no-header", "-rfE",
           "-o", "faulthandler_timeout=120", *tests]
    # A session of its own, so a timeout also stops the servers and CLIs the tests started.
    with subprocess.Popen(cmd, cwd=REPO, env=_env(site), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, start_new_session=True) as p:
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            out, err = p.communicate()  # everything printed before the kill
            return 124, "timed out" + _hung(out, err)
    lines = [x for x in out.splitlines() if x.strip()]
    failed = next((x for x in lines if x.startswith(("FAILED", "ERROR"))), lines[-1] if lines else "")
    return p.returncode, failed


def _hung(stdout: str, stderr: str) -> str:
    """Which test was running when the run timed out, and faulthandler's dump of its stacks."""
    started = next((x.split(" ")[0] for x in reversed(stdout.splitlines()) if x.startswith("tests/")), "")
    dump = stderr[stderr.find("Timeout ("):] if "Timeout (" in stderr else ""
    return (f" in {started}" if started else "") + ("\n" + dump.rstrip() if dump else "")


def _copy(mutant: Mutant | None) -> tuple[str, str]:
    """A copy of the library (with the mutant applied); returns (site dir, problem)."""
    site = tempfile.mkdtemp(prefix="modelseal-mutant-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    shutil.copytree(LIBRARY, os.path.join(site, "modelseal"), ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(RELEASE, os.path.join(site, "release"), ignore=shutil.ignore_patterns("__pycache__"))
    if mutant is None:
        return site, ""
    for file, old, new in mutant.changes():
        path = Path(site) / (file if file.startswith("release/") else f"modelseal/{file}")
        if not path.is_file():
            return site, f"no file {path.relative_to(site)}"
        text = path.read_text()
        count = text.count(old)
        if count != 1:
            return site, f"a snippet occurs {count} times in {file}"
        path.write_text(text.replace(old, new))
    return site, ""


def run(mutant: Mutant) -> Outcome:
    started = time.monotonic()
    site, problem = _copy(mutant)
    try:
        if problem:
            return Outcome(mutant, "STALE", 0.0, problem)
        code, failed = _pytest(site, mutant.tests)
        # Only pytest's "tests failed" (1) is a kill: a collection error (2), no tests (4, 5) or a
        # timeout means no test caught the mutant, so the promise is not shown to be guarded.
        status = {0: "SURVIVED", 1: "killed"}.get(code, "BROKEN")
        detail = {0: "all its tests passed", 1: failed}.get(code, f"pytest exited {code}: {failed}")
        return Outcome(mutant, status, time.monotonic() - started, detail)
    finally:
        shutil.rmtree(site, ignore_errors=True)


def main(argv: list[str]) -> int:
    mutants = load()
    if argv:
        unknown = set(argv) - {m.id for m in mutants}
        if unknown:
            sys.exit(f"mutants: unknown ids: {', '.join(sorted(unknown))}")
        mutants = [m for m in mutants if m.id in argv]
    tests = sorted({t for m in mutants for t in m.tests})
    started = time.monotonic()
    site, _ = _copy(None)
    try:
        code, failed = _pytest(site, tests, timeout=1800)
    finally:
        shutil.rmtree(site, ignore_errors=True)
    if code != 0:
        print(f"mutants: the tests fail without any mutant: {failed}", file=sys.stderr)
        return 1
    print(f"baseline: the {len(tests)} test selections pass unmutated ({time.monotonic() - started:.0f} s)")
    jobs = int(os.environ.get("MUTANT_JOBS") or min(2, len(os.sched_getaffinity(0))))
    print(f"{'mutant':34} {'module':22} {'result':9} {'s':>5}  caught by / why")
    outcomes = []
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        for o in pool.map(run, mutants):
            outcomes.append(o)
            detail = o.detail.split("\n")[0]
            detail = detail if o.status != "killed" else detail.removeprefix("FAILED ").split(" - ")[0]
            print(f"{o.mutant.id:34} {o.mutant.files:22} {o.status:9} {o.seconds:5.1f}  {detail}", flush=True)
    bad = [o for o in outcomes if o.status != "killed"]
    total = time.monotonic() - started
    print(f"{len(outcomes) - len(bad)} of {len(outcomes)} mutants killed in {total:.0f} s")
    for o in bad:
        print(f"  {o.status}: {o.mutant.id} ({o.mutant.files}): {o.mutant.why}")
        for line in o.detail.split("\n")[1:]:  # a hung test's stacks
            print(f"    {line}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
