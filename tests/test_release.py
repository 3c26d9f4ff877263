"""What users install: the wheel `make dist` builds, in a fresh venv, and the release workflows.

The wheel is built by tools/dist.sh (what `make dist` runs) from the library
these tests import (so tools/mutants.py's copy is what gets built), installed
offline into a new virtualenv the way the images install it (`pip install
--no-index --require-hashes` from the pinned, hashed images/requirements-*.txt,
the wheels from tests/.wheelhouse, which `make setup` downloads, or the
images' own wheelhouse), and run from there: not from this checkout.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import modelseal
from conftest import modelseal as checkout_cli

REPO = Path(__file__).resolve().parents[1]
WHEELHOUSES = [REPO / "tests" / ".wheelhouse", REPO / "images" / ".wheelhouse"]
WORKFLOWS = REPO / ".github" / "workflows"
ZIZMOR_CONFIG = REPO / ".github" / "zizmor.yml"
MiB = 1 << 20


def run(*args: str | Path, env: dict | None = None, cwd: Path | None = None,
        timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def git(*args: str) -> str:
    return run("git", "-C", REPO, *args).stdout.strip()


def clean_env(**extra: str) -> dict:
    """The environment without anything that would make the venv see the checkout or another index,
    reach beyond 127.0.0.1 (proxies, AWS endpoints and profiles) or pick another configuration."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PIP_", "PYTHON", "MODELSEAL_", "VIRTUAL_ENV", "AWS_")) and "proxy" not in k.lower()}
    env["NO_PROXY"] = "127.0.0.1,localhost"
    env["PIP_CONFIG_FILE"] = os.devnull  # no pip.conf: no extra index, no find-links, no constraints
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env.update(extra)
    return env


def pins(path: Path) -> dict[str, tuple[str, list[str]]]:
    """A hashed requirements file: canonical name -> (version, sha256s)."""
    logical = re.sub(r"\\\n", " ", path.read_text())
    out = {}
    for line in logical.splitlines():
        text = line.split("#")[0].strip()
        if not text:
            continue
        hashes = re.findall(r"--hash=sha256:([0-9a-f]{64})", text)
        req = re.sub(r"--hash=\S+", "", text).strip()
        name, _, version = req.partition("==")
        assert version and re.fullmatch(r"[A-Za-z0-9_.-]+", name), f"{path.name}: {req!r} is not name==version"
        out[canonicalize_name(name)] = (version.strip(), hashes)
    return out


# --------------------------------------------------------------------------- the wheel

@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    """sdist and wheel of the library under test, as `make dist` builds them."""
    out = tmp_path_factory.mktemp("dist")
    env = dict(os.environ, PYTHON=sys.executable, PACKAGE_DIR=os.path.dirname(modelseal.__file__))
    r = run(REPO / "tools" / "dist.sh", out, env=env)
    assert r.returncode == 0, r.stderr
    return out


@dataclass
class Venv:
    path: Path
    links: list[str | Path]  # --find-links for pip: the wheelhouses and dist/
    wheel: Path


@pytest.fixture(scope="module")
def venv(tmp_path_factory, dist) -> Venv:
    """A fresh virtualenv holding the wheel and its core dependencies, installed as the base image does."""
    wheelhouse = [w for w in WHEELHOUSES if list(w.glob("cryptography-*.whl"))]
    if not wheelhouse:
        pytest.fail("no wheelhouse with the images' pinned wheels: run `make setup` (tests/.wheelhouse)")
    root = tmp_path_factory.mktemp("venv")
    venv = root / "venv"
    r = run(sys.executable, "-m", "venv", venv, env=clean_env())
    assert r.returncode == 0, r.stderr
    # Only the dependencies from the wheelhouses: images/.wheelhouse also holds the
    # modelseal wheel an image build made, from another build of this version,
    # which pip may pick over dist/'s and fail its hash (the CI's find).
    deps = root / "deps"
    deps.mkdir()
    for w in wheelhouse:
        for whl in w.glob("*.whl"):
            if not whl.name.startswith("modelseal-") and not (deps / whl.name).exists():
                (deps / whl.name).symlink_to(whl)
    links = [a for w in (deps, dist) for a in ("--find-links", w)]
    wheel = wheel_of(dist)
    (root / "modelseal.txt").write_text(f"modelseal=={modelseal.__version__} --hash=sha256:{sha256(wheel)}\n")
    r = pip(venv, "install", "--no-index", "--require-hashes", *links,
            "-r", REPO / "images" / "requirements-core.txt", "-r", root / "modelseal.txt")
    assert r.returncode == 0, r.stderr
    return Venv(venv, links, wheel)


def wheel_of(dist: Path) -> Path:
    (wheel,) = dist.glob(f"modelseal-{modelseal.__version__}-py3-none-any.whl")
    return wheel


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def pip(venv: Path, *args: str | Path) -> subprocess.CompletedProcess:
    return run(venv / "bin" / "python", "-m", "pip", *args, env=clean_env(), cwd=venv)


def installed(venv: Venv, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """The venv's own `modelseal` command, from outside the checkout, with no PYTHONPATH."""
    return run(venv.path / "bin" / "modelseal", *args, env=clean_env(**(env or {})), cwd=venv.path, timeout=300)


def expected_commit() -> str:
    head = git("rev-parse", "HEAD")
    here = Path(modelseal.__file__).resolve().parent
    dirty = git("status", "--porcelain", "--", "shared") or here != (REPO / "shared" / "modelseal").resolve()
    return head + ("-dirty" if dirty else "")


def test_make_dist_builds_an_sdist_and_a_wheel_that_carry_the_commit(dist):
    wheel = wheel_of(dist)
    sdist = dist / f"modelseal-{modelseal.__version__}.tar.gz"
    commit_line = f'COMMIT = "{expected_commit()}"'
    with zipfile.ZipFile(wheel) as z:
        assert commit_line in z.read("modelseal/_build.py").decode()
        metadata = z.read(f"modelseal-{modelseal.__version__}.dist-info/METADATA").decode()
    with tarfile.open(sdist) as t:
        assert commit_line in t.extractfile(f"modelseal-{modelseal.__version__}/modelseal/_build.py").read().decode()
    # The ranges of shared/pyproject.toml, and the extra the error hints name.
    assert "Provides-Extra: cloud" in metadata
    declared = {canonicalize_name(Requirement(line.split(":", 1)[1].strip()).name)
                for line in metadata.splitlines() if line.startswith("Requires-Dist:")}
    assert {"cryptography", "zstandard", "boto3", "requests", "tenacity"} <= declared


def test_the_installed_wheel_runs_from_the_venv_not_the_checkout(venv):
    r = run(venv.path / "bin" / "python", "-c", "import modelseal; print(modelseal.__file__)",
            env=clean_env(), cwd=venv.path)
    assert r.returncode == 0, r.stderr
    where = Path(r.stdout.strip()).resolve()
    assert where.is_relative_to(venv.path.resolve()), where
    assert not where.is_relative_to(REPO), where


def test_version_names_the_commit_it_was_built_from(venv):
    r = installed(venv, "--version")
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"modelseal {modelseal.__version__} (commit {expected_commit()})\n"


def test_keygen_seal_run_from_the_wheel_byte_exact(venv, shm):
    src = shm / "model"
    (src / "weights").mkdir(parents=True)
    files = {"config.json": b'{"layers": 3}\n', "weights/part-0.bin": os.urandom(3 * MiB + 17),
             "weights/part-1.bin": os.urandom(65537), "empty": b""}
    for name, data in files.items():
        (src / name).write_bytes(data)
    key, sealed, out = shm / "model.key", shm / "model.seal", shm / "out"
    for args in (("keygen", "-o", key),
                 ("seal", src, "-o", sealed, "--key", key, "--compress", "zstd"),
                 ("run", "--source", sealed, "--key", key, "-o", out)):
        r = installed(venv, *map(str, args))
        assert r.returncode == 0, f"{args[0]}: {r.stderr}"
    got = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert got == files


def test_the_cloud_extra_is_what_the_hint_says_to_install(venv, shm):
    """Without the extra a fetch stage exits 2 naming `pip install 'modelseal[cloud]'`; that command
    (from the wheel and the pinned cloud wheels) makes the same stage work against S3 on 127.0.0.1."""
    from support.moto import AWS_ENV, moto_server

    args = ("fetch-model", "--source", "s3://models/m.seal", "-o", str(shm / "m.seal"))
    r = installed(venv, *args, env=AWS_ENV)
    assert r.returncode == 2, r.stderr
    assert "pip install 'modelseal[cloud]'" in r.stderr
    assert not list(shm.iterdir())

    cloud = venv.path.parent / "cloud.txt"
    cloud.write_text(f"modelseal[cloud]=={modelseal.__version__} --hash=sha256:{sha256(venv.wheel)}\n")
    r = pip(venv.path, "install", "--no-index", "--require-hashes", *venv.links, "-r", cloud,
            "-r", REPO / "images" / "requirements-core.txt", "-r", REPO / "images" / "requirements-cloud.txt")
    assert r.returncode == 0, r.stderr
    assert "does not provide the extra" not in r.stderr, r.stderr  # pip only warns when [cloud] is unknown
    r = pip(venv.path, "check")
    assert r.returncode == 0, r.stdout

    import boto3

    moto = moto_server()
    data = os.urandom(MiB + 3)
    client = boto3.client("s3", endpoint_url=moto.url, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    bucket = "release-" + os.urandom(6).hex()
    client.create_bucket(Bucket=bucket)
    client.put_object(Bucket=bucket, Key="m.seal", Body=data)
    r = installed(venv, "fetch-model", "--source", f"s3://{bucket}/m.seal", "-o", str(shm / "m.seal"),
                  "--endpoint-url", moto.url, "--sha256", hashlib.sha256(data).hexdigest(), env=AWS_ENV)
    assert r.returncode == 0, r.stderr
    assert (shm / "m.seal").read_bytes() == data


# --------------------------------------------------------------------------- version from a checkout

def test_a_checkout_names_its_git_describe_and_never_fails_without_git(tmp_path):
    if (Path(modelseal.__file__).parent / "_build.py").exists():
        pytest.skip("this library was built with a commit; the checkout's answer does not apply")
    r = checkout_cli("--version")
    assert r.code == 0, r.stderr
    if Path(modelseal.__file__).resolve().is_relative_to(REPO):
        described = run("git", "-C", Path(modelseal.__file__).parent, "describe", "--tags", "--always",
                        "--dirty", "--abbrev=12").stdout.strip()
        assert r.stdout.decode() == f"modelseal {modelseal.__version__} (git checkout {described})\n"
    no_git = tmp_path / "bin"
    no_git.mkdir()
    r = checkout_cli("--version", env={"PATH": str(no_git)})
    assert r.code == 0, r.stderr
    assert r.stdout.decode() == f"modelseal {modelseal.__version__} (commit unknown)\n"


# --------------------------------------------------------------------------- the images' pins

def declared_ranges() -> dict[str, Requirement]:
    project = tomllib.loads((REPO / "shared" / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["cloud"]]
    return {canonicalize_name(r.name): r for r in reqs}


def test_image_pins_are_hashed_and_inside_the_declared_ranges():
    """The images install exact, hashed versions; each must be one the library declares it works with."""
    locked = {**pins(REPO / "images" / "requirements-core.txt"), **pins(REPO / "images" / "requirements-cloud.txt")}
    for name, (version, hashes) in locked.items():
        assert hashes, f"{name}=={version} has no --hash in images/requirements-*.txt (run images/lock.sh)"
    for name, req in declared_ranges().items():
        assert name in locked, f"{name} is declared in shared/pyproject.toml but not pinned for the images"
        assert req.specifier.contains(locked[name][0]), f"the images pin {name}=={locked[name][0]}, outside {req}"
    for name, req in declared_ranges().items():
        assert req.specifier and all(s.operator in (">=", "<") for s in req.specifier), \
            f"{req}: the library declares a compatible range (>=low,<high), not a pin"


# --------------------------------------------------------------------------- the workflows

def lint(root: Path) -> list[str]:
    """Every finding of actionlint and zizmor on root/.github/workflows (empty when both pass)."""
    findings = []
    r = run("actionlint", "-no-color", *sorted((root / ".github" / "workflows").glob("*.yml")), cwd=root, timeout=120)
    if r.returncode != 0 or r.stdout.strip():
        findings.append(f"actionlint ({r.returncode}): {r.stdout}{r.stderr}")
    r = run("zizmor", "--offline", "--no-progress", "--config", root / ".github" / "zizmor.yml",
            root / ".github" / "workflows", timeout=120)
    if r.returncode != 0:
        findings.append(f"zizmor ({r.returncode}): {r.stdout}{r.stderr}")
    return findings


def test_workflows_pass_actionlint_and_zizmor():
    assert sorted(p.name for p in WORKFLOWS.glob("*.yml")) == ["ci.yml", "release.yml"]
    assert lint(REPO) == []


def test_every_action_is_pinned_by_commit_with_its_version():
    uses = [(p.name, m) for p in WORKFLOWS.glob("*.yml")
            for m in re.findall(r"^\s*(?:-\s*)?uses:\s*(.+)$", p.read_text(), re.M)]
    assert uses
    for name, ref in uses:
        if ref.startswith("./"):
            continue  # a workflow of this repository
        assert re.fullmatch(r"[\w.-]+/[\w./-]+@[0-9a-f]{40} # v\d+\.\d+\.\d+", ref), f"{name}: {ref}"


PLANTED = {
    "an action by tag, not commit": (
        "zizmor", lambda text: re.sub(r"actions/checkout@[0-9a-f]{40} # v(\d+)\.\S+", r"actions/checkout@v\1",
                                      text, count=1)),
    "a job that needs no such job": ("actionlint", lambda text: text.replace("needs: [test", "needs: [tset", 1)),
    "an event field pasted into a script": (
        "zizmor", lambda text: text.replace("run: make dist",
                                            'run: echo "${{ github.event.head_commit.message }}"; make dist', 1)),
}


@pytest.mark.parametrize("mistake", PLANTED)
def test_the_linters_catch_a_planted_mistake(tmp_path, mistake):
    """The lint above can fail: each planted mistake in a copy of release.yml is reported."""
    linter, plant = PLANTED[mistake]
    shutil.copytree(REPO / ".github", tmp_path / ".github")
    release = tmp_path / ".github" / "workflows" / "release.yml"
    text = release.read_text()
    assert plant(text) != text, f"{mistake}: nothing to plant it in"
    release.write_text(plant(text))
    findings = lint(tmp_path)
    assert any(f.startswith(linter) for f in findings), findings
