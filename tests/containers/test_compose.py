"""compose/demo.yml and demo/compose.sh: hardened like the pod specs, and working end to end.

The end-to-end test runs the README's demo (both profiles) on free ports under
its own compose project; it builds the demo-only images (moto, model-server)
when they are missing, which downloads moto's wheels from PyPI once.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import shutil
import socket
import struct
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest
import yaml

import harness
from harness import REPO, load_example, need, pod_spec

COMPOSE_FILE = REPO / "compose" / "demo.yml"
PROFILES = ["--profile", "four-stage", "--profile", "single-stage"]
UID = "65532:65532"


@lru_cache(maxsize=None)
def compose_command() -> tuple[str, ...]:
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ("docker", "compose")
    if shutil.which("docker-compose"):
        return ("docker-compose",)
    return ()


@pytest.fixture(scope="module")
def config() -> dict:
    if not compose_command():
        need("no compose command (images/engine.sh installs Debian's docker-compose)")
    r = subprocess.run([*compose_command(), "-p", "modelseal-config", "-f", str(COMPOSE_FILE), *PROFILES, "config"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return yaml.safe_load(r.stdout)


def flags(args: list) -> list[str]:
    return sorted(str(a) for a in args if str(a).startswith("-"))


def test_every_service_is_hardened_like_the_pods(config: dict) -> None:
    services = config["services"]
    assert {"moto", "pod", "owner", "seal", *harness.STAGES, "model-server", "run", "model-server-run"} <= set(services)
    for name, s in services.items():
        assert s.get("read_only") is True, name
        assert s.get("cap_drop") == ["ALL"], name
        assert "no-new-privileges:true" in s.get("security_opt", []), name
        assert not s.get("privileged"), name
        if name == "pod":  # the volume keeper: root with CHOWN only (fsGroup's job), no network
            assert s["user"] == "0:0" and s.get("cap_add") == ["CHOWN"] and s["network_mode"] == "none"
            continue
        assert s.get("user") == UID and not s.get("cap_add"), name
        assert s.get("network_mode") == "host", name


def test_volumes_for_keys_and_plaintext_are_tmpfs(config: dict) -> None:
    vols = config["volumes"]
    for name in ("export", "secrets", "models"):
        opts = vols[name]["driver_opts"]
        assert opts["type"] == "tmpfs" and opts["device"] == "tmpfs", name
    for name in ("model-server", "model-server-run"):
        assert "models:/models:ro" in config["services"][name]["volumes"]


def test_stages_use_the_pod_specs_flags_and_chaining(config: dict) -> None:
    services = config["services"]
    four = pod_spec(load_example("four-stage.yaml"))
    previous = "seal"
    for c in four["initContainers"]:
        s = services[c["name"]]
        assert s["image"].split(":")[0] == c["image"].split(":")[0]
        assert flags(s["command"]) == flags(c["args"]), c["name"]
        assert s["depends_on"] == {previous: {"condition": "service_completed_successfully"}}
        previous = c["name"]
    (run,) = pod_spec(load_example("single-stage.yaml"))["initContainers"]
    spec_env = {e["name"] for e in run["env"] if e["name"].startswith("MODELSEAL_")}
    assert {k for k in services["run"]["environment"] if k.startswith("MODELSEAL_")} == spec_env
    (seal,) = pod_spec(load_example("seal-job.yaml"))["containers"]
    assert services["seal"]["entrypoint"] == seal["command"]
    assert flags(services["seal"]["command"]) == flags(seal["args"])


def expected_label(inputs: list[float], shm: Path) -> str:
    """What the demo model answers, computed here from demo/make_model.py's own output."""
    model = shm / "expected"
    subprocess.run([sys.executable, str(REPO / "demo" / "make_model.py"), str(model)], check=True,
                   env={**os.environ, "DEMO_SHARD_BYTES": "0"})
    cfg = json.loads((model / "config.json").read_text())
    n_in, n_out = cfg["inputs"], cfg["outputs"]
    w = struct.unpack(f"<{n_in * n_out}f", (model / "variables" / "weights.f32").read_bytes())
    scores = [sum(w[o * n_in + i] * inputs[i] for i in range(n_in)) for o in range(n_out)]
    return cfg["labels"][max(range(n_out), key=scores.__getitem__)]


def test_demo_end_to_end_both_profiles(shm: Path) -> None:
    need(harness.images_missing(*harness.ALL, "base"))
    if not compose_command():
        need("no compose command")
    import servers

    inputs = [6.3, 2.9, 5.6, 1.8]
    project = f"modelseal-demo-test-{secrets.token_hex(3)}"
    env = {**os.environ, "MODELSEAL_DEMO_PROJECT": project, "MODELSEAL_DEMO_INPUTS": json.dumps(inputs),
           "MODELSEAL_DEMO_MOTO_PORT": str(servers.free_port()),
           "MODELSEAL_DEMO_SERVER_PORT": str(servers.free_port())}
    if not harness.images_missing("moto", "model-server"):
        env["MODELSEAL_DEMO_SKIP_BUILD"] = "1"  # else the script builds the demo images (the real `make demo`)
    r = subprocess.run([str(REPO / "demo" / "compose.sh"), "all"], capture_output=True, text=True,
                       env=env, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    answers = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert len(answers) == 2, r.stdout + r.stderr  # four-stage, then single-stage
    label = expected_label(inputs, shm)
    assert [a["label"] for a in answers] == [label, label], r.stderr
    # Torn down: no container or volume of the project is left.
    label_filter = f"label=com.docker.compose.project={project}"
    assert harness.docker("ps", "-aq", "--filter", label_filter).stdout.strip() == ""
    assert harness.docker("volume", "ls", "-q", "--filter", label_filter).stdout.strip() == ""


def test_demo_fails_clearly_and_leaves_nothing() -> None:
    """A bad profile is a usage error; a taken port is named, and nothing is left running."""
    need(harness.engine_missing())
    if not compose_command():
        need("no compose command")
    r = subprocess.run([str(REPO / "demo" / "compose.sh"), "no-such-profile"], capture_output=True, text=True)
    assert r.returncode == 2 and "usage" in r.stderr
    import servers

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        project = f"modelseal-demo-test-{secrets.token_hex(3)}"
        env = {**os.environ, "MODELSEAL_DEMO_PROJECT": project, "MODELSEAL_DEMO_SKIP_BUILD": "1",
               "MODELSEAL_DEMO_MOTO_PORT": str(servers.free_port()), "MODELSEAL_DEMO_SERVER_PORT": str(port)}
        r = subprocess.run([str(REPO / "demo" / "compose.sh")], capture_output=True, text=True, env=env,
                           timeout=300)
    assert r.returncode == 1 and f"port {port}" in r.stderr, shlex.join(r.args) + "\n" + r.stderr
    label_filter = f"label=com.docker.compose.project={project}"
    assert harness.docker("ps", "-aq", "--filter", label_filter).stdout.strip() == ""
