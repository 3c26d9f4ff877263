"""The real images in a real Docker engine: hardened flags, tmpfs volumes.

Needs the images built first (`images/build.sh`, i.e. `make images`). Without
a Docker engine or the images these tests skip, unless
MODELSEAL_REQUIRE_IMAGES=1, where every such skip is a failure (CI after
`make images`); see harness.need.
Every container runs as the pods run them: non-root, read-only root
filesystem, all capabilities dropped, no-new-privileges; decrypt and unpack
with no network at all, the fetch stages with host networking (127.0.0.1
only). Plaintext goes only to a /dev/shm (tmpfs) directory bind-mounted at
the same path.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

import harness
from conftest import modelseal
from harness import images_built  # noqa: F401 - images_built is a fixture

pytestmark = pytest.mark.usefixtures("images_built")

REPO = harness.REPO
TAG = harness.TAG
STAGES = harness.STAGES
ALL = harness.ALL
MB = 1_000_000
image = harness.image


def run(name: str, *args: str, network: str = "none", mounts: tuple[Path, ...] = (),
        entrypoint: str | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    cmd = ["docker", "run", "--rm", "--read-only", "--cap-drop", "ALL",
           "--security-opt", "no-new-privileges", f"--network={network}"]
    for m in mounts:
        cmd += ["-v", f"{m}:{m}"]
    if entrypoint:
        cmd += ["--entrypoint", entrypoint]
    return subprocess.run(cmd + [image(name), *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def box(shm: Path) -> Path:
    """A tmpfs directory the images' uid 65532 may write (bind-mounted as is)."""
    for d in ("src", "cache", "models"):
        (shm / d).mkdir()
    for d in (shm, shm / "cache", shm / "models"):
        d.chmod(0o777)  # the containers run as 65532, the test as someone else
    return shm


@pytest.fixture
def sealed(box: Path) -> tuple[Path, Path, Path]:
    """A small model, its key and its .seal, made by the host's own CLI."""
    model = box / "src" / "tiny-model"
    (model / "sub").mkdir(parents=True)
    (model / "weights.bin").write_bytes(os.urandom(3 << 20))
    (model / "sub" / "config.json").write_text('{"layers": 2}\n')
    key, seal = box / "src" / "key", box / "src" / "tiny.seal"
    assert modelseal("keygen", "-o", str(key)).code == 0
    r = modelseal("seal", str(model), "-o", str(seal), "--key", str(key), "--compress", "zstd")
    assert r.code == 0, r.stderr
    for p in (box / "src", key, seal):
        p.chmod(0o755 if p.is_dir() else 0o444)
    return model, key, seal


def same_tree(a: Path, b: Path) -> bool:
    def files(root: Path) -> list[Path]:
        return sorted(p.relative_to(root) for p in root.rglob("*"))

    return files(a) == files(b) and all(
        (a / p).read_bytes() == (b / p).read_bytes() for p in files(a) if (a / p).is_file())


@pytest.mark.parametrize("name", ALL)
def test_help_runs_hardened(name: str) -> None:
    r = run(name, "--help")
    assert r.returncode == 0, r.stderr
    assert f"modelseal {name}" in r.stdout


@pytest.mark.parametrize("name", ALL)
def test_config_nonroot_entrypoint_labels(name: str) -> None:
    out = subprocess.run(["docker", "image", "inspect", image(name)], capture_output=True, text=True, check=True)
    cfg = json.loads(out.stdout)[0]["Config"]
    assert cfg["User"] == "65532:65532"
    assert cfg["Entrypoint"] == ["modelseal", name]
    assert cfg["Labels"]["org.opencontainers.image.licenses"] == "Apache-2.0"
    assert cfg["Labels"]["org.opencontainers.image.version"]


@pytest.mark.parametrize("name", ["decrypt", "unpack"])
def test_offline_stages_carry_no_cloud_sdk_and_no_pip(name: str) -> None:
    for mod in ("boto3", "botocore", "requests", "pip"):
        r = run(name, "-c", f"import {mod}", entrypoint="python3")
        assert r.returncode != 0 and "ModuleNotFoundError" in r.stderr, mod


def test_fetch_stages_have_a_pruned_sdk() -> None:
    code = ("import boto3\n"
            "for s in ('s3', 'kms', 'secretsmanager', 'sts'):\n"
            "    boto3.client(s, region_name='us-east-1', endpoint_url='http://127.0.0.1:9')\n"
            "try:\n    boto3.client('ec2', region_name='us-east-1')\nexcept Exception as e:\n"
            "    print(type(e).__name__)\n")
    r = run("fetch-model", "-c", code, entrypoint="python3")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "UnknownServiceError"


def test_four_stage_chain_on_tmpfs(box: Path, sealed: tuple[Path, Path, Path]) -> None:
    model, key, seal = sealed
    cache = box / "cache"
    steps = [
        ("fetch-key", "host", ["--key-uri", f"file://{key}", "-o", f"{cache}/key"]),
        ("fetch-model", "host", ["--source", f"file://{seal}", "-o", f"{cache}/model.seal"]),
        ("decrypt", "none", ["--in", f"{cache}/model.seal", "--key", f"{cache}/key", "-o", f"{cache}/model.tar"]),
        ("unpack", "none", ["--in", f"{cache}/model.tar", "-o", f"{box}/models/tiny"]),
    ]
    for name, net, args in steps:
        r = run(name, *args, network=net, mounts=(box,))
        assert r.returncode == 0, f"{name}: {r.stderr}"
    assert (cache / "key").stat().st_mode & 0o777 == 0o400
    assert same_tree(model, box / "models" / "tiny")


def test_run_single_pass_on_tmpfs(box: Path, sealed: tuple[Path, Path, Path]) -> None:
    model, key, seal = sealed
    r = run("run", "--source", f"file://{seal}", "--key", str(key), "-o", f"{box}/models/tiny",
            network="host", mounts=(box,))
    assert r.returncode == 0, r.stderr
    assert same_tree(model, box / "models" / "tiny")
    assert sorted(p.name for p in (box / "models").iterdir()) == [".tiny.delivered", "tiny"]  # and its record


@pytest.mark.parametrize("name", ["decrypt", "run"])
def test_worker_processes_run_in_the_hardened_images(box: Path, sealed: tuple[Path, Path, Path], name: str) -> None:
    """--workers 3: spawned workers and their memfd work read-only, capabilities dropped, as uid 65532."""
    model, key, seal = sealed
    if name == "decrypt":
        out = box / "cache" / "model.tar"
        r = run("decrypt", "--in", str(seal), "--key", str(key), "-o", str(out), "--workers", "3", mounts=(box,))
        assert r.returncode == 0, r.stderr
        expected = modelseal("decrypt", "--in", str(seal), "--key", str(key), "-o", "-")
        assert out.read_bytes() == expected.stdout
    else:
        r = run("run", "--source", f"file://{seal}", "--key", str(key), "-o", f"{box}/models/tiny",
                "--workers", "3", mounts=(box,))
        assert r.returncode == 0, r.stderr
        assert same_tree(model, box / "models" / "tiny")
    assert any('"workers":3' in line.replace(" ", "") for line in r.stderr.splitlines())


def test_sizes_within_budget() -> None:
    """Each image <=150 MB uncompressed; the four stages <=200 MB of distinct layers; compressed below both."""
    out = subprocess.run([str(REPO / "images" / "sizes.sh")], capture_output=True, text=True,
                         env={**os.environ, "TAG": TAG}, check=True).stdout
    rows = {}
    for line in out.splitlines()[1:]:
        label, arch, size, _, gzip_mb, _ = line.rsplit(None, 5)
        rows[(label.strip(), arch)] = (int(size), float(gzip_mb) * MB)
    archs = {arch for _, arch in rows}
    for name in ALL:
        sizes = [v for (label, _), v in rows.items() if label.split(":")[0] == image(name).split(":")[0]]
        assert len(sizes) == len(archs), (name, out)
        for size, gz in sizes:
            assert size <= 150 * MB, (name, size)
            assert 0 < gz < size, (name, gz, size)
    distinct = [v for (label, _), v in rows.items() if label.startswith("4 stages")]
    assert len(distinct) == len(archs), out
    for size, gz in distinct:
        assert size <= 200 * MB, out
        assert 0 < gz < size, out
