"""demo/compose.yml and demo/compose.sh: hardened like the pod specs, and ending in a real server.

Every chain of the demo (four-stage, single-stage `run`, the migrated old
recipe through `--format openpgp`) delivers the model the owner trained to
MLServer, which must then classify rows of the iris data correctly; a
ciphertext changed in storage must stop every chain at exit 4 with no
plaintext left and no server started. Each test runs under its own compose
project on free ports. The demo-only images (moto, model-server, owner) are
built when missing, which downloads their wheels from PyPI once.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import urllib.request
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

import harness
from harness import REPO, load_example, need, pod_spec

COMPOSE_FILE = REPO / "demo" / "compose.yml"
TAMPER_FILE = Path(__file__).parent / "compose" / "tamper.yml"  # the attacker, over the demo
PROFILES = ["--profile", "four-stage", "--profile", "single-stage", "--profile", "legacy"]
UID = "65532:65532"
ROWS = json.loads((REPO / "demo" / "iris-rows.json").read_text())
DEMO_IMAGES = ("moto", "model-server", "owner")
# chain -> (its server service, the stage that decrypts: where a changed byte must stop it)
CHAINS = {"four-stage": ("model-server", "decrypt"), "single-stage": ("model-server-run", "run"),
          "legacy": ("model-server-legacy", "legacy-run")}


@lru_cache(maxsize=None)
def compose_command() -> tuple[str, ...]:
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ("docker", "compose")
    if shutil.which("docker-compose"):
        return ("docker-compose",)
    return ()


def need_compose() -> None:
    if not compose_command():
        need("no compose command (images/engine.sh installs Debian's docker-compose)")


def compose_config(*files: Path) -> dict:
    args = [a for f in files for a in ("-f", str(f))]
    r = subprocess.run([*compose_command(), "-p", "modelseal-config", *args, *PROFILES, "config"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return yaml.safe_load(r.stdout)


@pytest.fixture(scope="module")
def config() -> dict:
    need_compose()
    return compose_config(COMPOSE_FILE)


@pytest.fixture(scope="module")
def demo_images() -> None:
    """Every image the compose demo runs; the demo-only ones are built here when missing."""
    need(harness.images_missing(*harness.ALL, "base"))
    need_compose()
    if harness.images_missing(*DEMO_IMAGES):
        r = subprocess.run([str(REPO / "demo" / "images" / "build.sh")], capture_output=True, text=True, timeout=1800)
        assert r.returncode == 0, r.stderr[-3000:]
    need(harness.images_missing(*DEMO_IMAGES))


class Project:
    """One compose project of the demo on free ports; `close` removes whatever is left of it."""

    def __init__(self) -> None:
        from support import processes

        self.name = f"modelseal-demo-test-{secrets.token_hex(3)}"
        self.server_port = processes.free_port()
        self.env = {**os.environ, "MODELSEAL_DEMO_PROJECT": self.name, "MODELSEAL_DEMO_SKIP_BUILD": "1",
                    "MODELSEAL_DEMO_MOTO_PORT": str(processes.free_port()),
                    "MODELSEAL_DEMO_SERVER_PORT": str(self.server_port),
                    "MODELSEAL_DEMO_KEYSERVER_PORT": str(processes.free_port())}
        self.url = f"http://127.0.0.1:{self.server_port}"

    def script(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run([str(REPO / "demo" / "compose.sh"), *args], capture_output=True, text=True,
                              env=self.env, timeout=timeout)

    def compose(self, *args: str, files: tuple[Path, ...] = (COMPOSE_FILE,), timeout: float = 600,
                ) -> subprocess.CompletedProcess:
        fargs = [a for f in files for a in ("-f", str(f))]
        return subprocess.run([*compose_command(), "-p", self.name, *fargs, *PROFILES, *args],
                              capture_output=True, text=True, env=self.env, timeout=timeout)

    def containers(self, service: str = "") -> list[dict]:
        filters = ["--filter", f"label=com.docker.compose.project={self.name}"]
        if service:
            filters += ["--filter", f"label=com.docker.compose.service={service}"]
        ids = harness.docker("ps", "-aq", *filters).stdout.split()
        return json.loads(harness.docker("inspect", *ids).stdout) if ids else []

    def leftovers(self) -> list[str]:
        """Containers, volumes and networks of the project that still exist."""
        label = f"label=com.docker.compose.project={self.name}"
        out = []
        for kind in (["ps", "-aq"], ["volume", "ls", "-q"], ["network", "ls", "-q"]):
            out += harness.docker(*kind, "--filter", label).stdout.split()
        return out

    def file_digests(self, volume: str, path: str) -> dict[str, str]:
        """sha256 of every file under `path` of a volume, read by a hardened container (no copy anywhere)."""
        script = ("import hashlib, json, os, sys\n"
                  "root = sys.argv[1]\n"
                  "print(json.dumps({os.path.relpath(os.path.join(d, f), root):"
                  " hashlib.sha256(open(os.path.join(d, f), 'rb').read()).hexdigest()"
                  " for d, _, fs in os.walk(root) for f in fs}))")
        r = harness.docker("run", "--rm", "--network", "none", "--read-only", "--cap-drop", "ALL",
                           "--security-opt", "no-new-privileges", "--user", UID,
                           "-v", f"{self.name}_{volume}:/volume:ro", "--entrypoint", "python3",
                           harness.image("base"), "-c", script, f"/volume/{path}")
        return json.loads(r.stdout)

    def close(self) -> None:
        self.compose("down", "-v", "--remove-orphans", "-t", "3", files=(COMPOSE_FILE, TAMPER_FILE))


@pytest.fixture
def project():
    p = Project()
    yield p
    p.close()


def infer(url: str, features: list[float]) -> dict:
    body = {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP32", "data": features}]}
    req = urllib.request.Request(f"{url}/v2/models/iris/infer", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def get(url: str) -> tuple[int, dict]:
    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read()
        return resp.status, json.loads(text) if text.strip() else {}


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


# ---- the compose file --------------------------------------------------------

def flags(args: list) -> list[str]:
    return sorted(str(a) for a in args if str(a).startswith("-"))


def test_every_service_is_hardened_like_the_pods() -> None:
    need_compose()
    services = compose_config(COMPOSE_FILE, TAMPER_FILE)["services"]
    assert {"moto", "pod", "train", "owner", "seal", *harness.STAGES, "run", "legacy-owner", "keyserver",
            "legacy-copy-ciphertext", "legacy-fetch-key", "legacy-run", "tamper", "tamper-legacy",
            *(server for server, _ in CHAINS.values())} <= set(services)
    for name, s in services.items():
        assert s.get("read_only") is True, name
        assert s.get("cap_drop") == ["ALL"], name
        assert "no-new-privileges:true" in s.get("security_opt", []), name
        assert not s.get("privileged"), name
        if name == "pod":  # the volume keeper: root with CHOWN only (fsGroup's job), no network
            assert s["user"] == "0:0" and s.get("cap_add") == ["CHOWN"] and s["network_mode"] == "none"
            continue
        assert s.get("user") == UID and not s.get("cap_add"), name
        assert s.get("network_mode") in ("host", "none"), name
        assert s.get("mem_limit"), f"{name}: no memory limit"


def test_volumes_for_keys_and_plaintext_are_tmpfs(config: dict) -> None:
    vols = config["volumes"]
    for name in ("export", "secrets", "models", "legacy-keys"):
        opts = vols[name]["driver_opts"]
        assert opts["type"] == "tmpfs" and opts["device"] == "tmpfs", name
    for server, _ in CHAINS.values():
        assert config["services"][server]["volumes"] == ["models:/models:ro"], server


def test_every_chain_ends_in_the_same_server(config: dict) -> None:
    """One MLServer configuration, serving /models/iris, which each chain's last stage writes."""
    services = config["services"]
    servers = [services[server] for server, _ in CHAINS.values()]
    for s in servers:
        assert s["image"].split(":")[0] == "modelseal/model-server"
        assert s["command"] == ["/models/iris"]
        assert {k: v for k, v in s.items() if k not in ("depends_on", "profiles")} == \
            {k: v for k, v in servers[0].items() if k not in ("depends_on", "profiles")}
    assert services["unpack"]["command"][services["unpack"]["command"].index("-o") + 1] == "/models/iris"
    assert services["run"]["environment"]["MODELSEAL_OUTPUT"] == "/models/iris"
    legacy = services["legacy-run"]["command"]
    assert legacy[legacy.index("-o") + 1] == "/models/iris"
    assert services["seal"]["command"][0] == services["train"]["command"][-1] == "/export/iris"


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
    # The old recipe migrated: copy the baked ciphertext, fetch the passphrase, run --format openpgp.
    legacy = pod_spec(load_example("legacy-modelseal.yaml"))["initContainers"]
    previous = "legacy-owner"
    for c, name in zip(legacy, ["legacy-copy-ciphertext", "legacy-fetch-key", "legacy-run"], strict=True):
        s = services[name]
        if c["image"].startswith("modelseal/"):
            assert s["image"].split(":")[0] == c["image"].split(":")[0], name
        if "command" in c:
            assert s["entrypoint"] == c["command"][:len(s["entrypoint"])], name
        spec_args = c.get("command", [])[1:] + c.get("args", [])
        assert flags(s["command"]) == flags(spec_args), name
        assert s["depends_on"][previous] == {"condition": "service_completed_successfully"}, name
        previous = name
    assert services["legacy-fetch-key"]["depends_on"]["keyserver"] == {"condition": "service_healthy"}


# ---- the demo, end to end ------------------------------------------------------

def answers_in(stdout: str, chain: str) -> list[tuple[str, str, str]]:
    """(expected, answer, verdict) of every row demo/ask.py printed for `chain`."""
    rows = re.findall(rf"^{chain}:\s+\d+\s+\[[^]]*\]\s+(\S+)\s+(\S+)\s+(\S+)", stdout, re.M)
    return rows


def test_make_demo_every_chain_answers_correctly(demo_images: None, project: Project) -> None:
    """`make demo`: each chain, then every row's answer printed beside its known class; nothing left."""
    r = project.script("all", timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    expected = [row["class"] for row in ROWS["rows"]]
    for chain in CHAINS:
        rows = answers_in(r.stdout, chain)
        assert [e for e, _, _ in rows] == expected, r.stdout
        assert [a for _, a, _ in rows] == expected, r.stdout
        assert all(v == "ok" for _, _, v in rows) and f"{chain}: 6/6 answers match" in r.stdout
    assert project.leftovers() == []


@pytest.mark.parametrize("chain", list(CHAINS))
def test_demo_up_leaves_mlserver_serving_the_trained_model(demo_images: None, project: Project,
                                                           chain: str) -> None:
    """`make demo-up`: the delivered files are the trained ones, byte for byte, and MLServer
    classifies every held-out row; `make demo-down` then removes containers, volumes and network."""
    r = project.script("up", chain)
    assert r.returncode == 0, r.stdout + r.stderr
    server, _ = CHAINS[chain]
    (state,) = [c["State"] for c in project.containers(server)]
    assert state["Running"], state
    # Our own V2 client, not the demo's.
    assert get(f"{project.url}/v2/health/ready")[0] == 200
    status, meta = get(f"{project.url}/v2/models/iris")
    assert status == 200 and meta["name"] == "iris" and meta["platform"] == "sklearn", meta
    for row in ROWS["rows"]:
        out = infer(project.url, row["features"])["outputs"][0]
        assert out["data"] == [row["class"]], (row, out)
    # What the server loaded is what the owner trained (export) and nothing else.
    delivered = project.file_digests("models", "iris")
    assert set(delivered) == {"model-settings.json", "model.joblib"}
    assert delivered == project.file_digests("export", "iris")

    r = project.script("down")
    assert r.returncode == 0, r.stderr
    assert project.leftovers() == []
    assert not listening(project.server_port)


@pytest.mark.parametrize("chain", list(CHAINS))
def test_tampered_ciphertext_never_reaches_the_server(demo_images: None, project: Project, chain: str) -> None:
    """One byte changed in storage: the decrypting stage exits 4, no plaintext, and no server ever starts."""
    server, stage = CHAINS[chain]
    r = project.compose("up", "-d", server, files=(COMPOSE_FILE, TAMPER_FILE))
    assert r.returncode != 0, r.stdout + r.stderr
    tamper = "tamper-legacy" if chain == "legacy" else "tamper"
    assert [c["State"]["ExitCode"] for c in project.containers(tamper)] == [0]
    (failed,) = project.containers(stage)
    assert failed["State"]["ExitCode"] == 4, failed["State"]
    logs = harness.docker("logs", failed["Id"]).stderr
    errors = [json.loads(x) for x in logs.splitlines() if x.startswith("{") and '"failed"' in x]
    assert errors and errors[-1]["category"] == "integrity", logs
    for c in project.containers(server):  # created perhaps, never started
        assert not c["State"]["Running"] and c["State"]["StartedAt"].startswith("0001-"), c["State"]
    assert not listening(project.server_port)
    # The pod still holds the models tmpfs: nothing was left in it.
    assert project.file_digests("models", "") == {}


def test_demo_fails_clearly_and_leaves_nothing() -> None:
    """A bad chain is a usage error; a taken port is named, and nothing is left running."""
    need(harness.engine_missing())
    need_compose()
    for args in (["no-such-chain"], ["up", "nope"], ["down", "extra"]):
        r = subprocess.run([str(REPO / "demo" / "compose.sh"), *args], capture_output=True, text=True)
        assert r.returncode == 2 and "usage" in r.stderr, args
    project = Project()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        project.env["MODELSEAL_DEMO_SERVER_PORT"] = str(port)
        r = project.script(timeout=300)
    assert r.returncode == 1 and f"port {port}" in r.stderr, shlex.join(r.args) + "\n" + r.stderr
    assert project.leftovers() == []


# ---- demo/ask.py: the verdict ------------------------------------------------------

class _V2Server(BaseHTTPRequestHandler):
    """A V2 endpoint that answers each row with `answers[i]` in turn (a label or an index)."""

    answers: list = []

    def do_GET(self):  # noqa: N802
        self._send(200, {})

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        value = self.answers.pop(0)
        datatype = "BYTES" if isinstance(value, str) else "INT64"
        self._send(200, {"model_name": "iris", "outputs": [{"name": "predict", "shape": [1, 1],
                                                            "datatype": datatype, "data": [value]}]})

    def _send(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *a):
        pass


@pytest.mark.parametrize("wrong", [False, True])
def test_ask_prints_each_answer_and_fails_on_a_wrong_one(wrong: bool) -> None:
    classes = ROWS["classes"]
    answers: list = [row["class"] for row in ROWS["rows"]]
    answers[1] = classes.index(answers[1])  # an index is read as a class too
    if wrong:
        answers[-1] = "setosa" if answers[-1] != "setosa" else "virginica"
    handler = type("H", (_V2Server,), {"answers": answers})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        r = subprocess.run([sys.executable, str(REPO / "demo" / "ask.py"),
                            f"http://127.0.0.1:{server.server_address[1]}", "--wait", "5"],
                           capture_output=True, text=True, timeout=60)
    finally:
        server.shutdown()
    verdicts = re.findall(r"^\s+\d+\s+\[[^]]*\]\s+\S+\s+\S+\s+(\S+)$", r.stdout, re.M)
    assert len(verdicts) == len(ROWS["rows"]), r.stdout
    if wrong:
        assert r.returncode == 1 and verdicts[-1] == "WRONG" and verdicts.count("ok") == 5, r.stdout
        assert "5/6 answers match" in r.stdout
    else:
        assert r.returncode == 0 and verdicts == ["ok"] * 6, r.stdout + r.stderr


def test_ask_fails_when_no_server_answers() -> None:
    from support import processes

    port = processes.free_port()
    r = subprocess.run([sys.executable, str(REPO / "demo" / "ask.py"), f"http://127.0.0.1:{port}", "--wait", "1"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "not ready" in r.stderr, r.stderr
