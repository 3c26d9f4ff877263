"""The first hour of a new user (issue 20): a terminal that talks to people, errors that say what to do.

The CLI runs in a subprocess as everywhere else; where a terminal matters it runs under a real
pseudo-terminal (the `pty` module), so isatty() answers as it does for a person.
"""

from __future__ import annotations

import hashlib
import json
import os
import pty
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import modelseal
from support.objects import ObjectServer

ROOT = Path(__file__).resolve().parents[1]


# ---- helpers ------------------------------------------------------------------------------------------

def under_pty(*args: str, stdout_tty: bool = False, env: dict | None = None, timeout: float = 120) -> tuple[int, str, bytes]:
    """Run the CLI with stderr (and stdout, if asked) on a pseudo-terminal: (exit code, what the terminal
    showed, stdout when it was a pipe)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MODELSEAL_")}
    full_env.update({"COLUMNS": "100", **(env or {})})
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "modelseal", *args], stdin=subprocess.DEVNULL,
                                stdout=slave if stdout_tty else subprocess.PIPE, stderr=slave, env=full_env)
    finally:
        os.close(slave)
    chunks = []
    out = proc.stdout.read() if proc.stdout is not None else b""
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: every writer of the terminal has closed it
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    code = proc.wait(timeout=timeout)
    return code, b"".join(chunks).decode(errors="replace"), out


def screen(raw: str) -> list[str]:
    """The lines a person is left with: each line's text after its last carriage return or erase."""
    lines = []
    for line in raw.replace("\r\n", "\n").split("\n"):
        lines.append(re.split(r"\r(?:\x1b\[K)?", line)[-1])
    return [line for line in lines if line]


@pytest.fixture
def owner(shm: Path) -> Path:
    """A model (2 MiB of random bytes in two files) and a key, as on the owner's laptop."""
    model = shm / "model"
    (model / "variables").mkdir(parents=True)
    (model / "variables" / "w.bin").write_bytes(os.urandom(2 * 2**20 + 7))
    (model / "saved_model.pb").write_bytes(os.urandom(1000))
    assert modelseal("keygen", "-o", str(shm / "key")).code == 0
    return shm


def sealed(owner: Path) -> Path:
    r = modelseal("seal", str(owner / "model"), "-o", str(owner / "m.seal"), "--key", str(owner / "key"))
    assert r.code == 0, r.stderr
    return owner / "m.seal"


# ---- a person at a terminal ---------------------------------------------------------------------------

def test_text_lines_and_a_progress_bar_on_a_terminal(owner: Path):
    code, shown, _ = under_pty("seal", str(owner / "model"), "-o", str(owner / "m.seal"), "--key",
                               str(owner / "key"))
    assert code == 0, shown
    assert "{" not in shown.split("sealed")[0], shown  # no JSON for a person
    # The bar: drawn in place (\r, erase), with what runs, done/total bytes, the rate and the ETA.
    bar = re.search(r"\r\x1b\[Kseal +\d+%\|[^|]*\| [\d.]+(?:Ki|Mi)?B/2\.0MiB [\d.]+(?:Ki|Mi|Gi)?B/s ETA [\d:?]+",
                    shown)
    assert bar, repr(shown)
    lines = screen(shown)
    assert lines[0] == f"sealed {owner / 'm.seal'}", lines  # the bar was erased before the summary
    assert lines[1].startswith("  size ") and "2 files" in lines[1], lines
    digest = "sha256:" + hashlib.sha256((owner / "m.seal").read_bytes()).hexdigest()
    assert f"  sha256      {digest}" in lines, lines
    assert re.fullmatch(r"done in [\d.]+ s( \(peak memory [\d.]+ MiB\))?", lines[-1]), lines


def test_the_bar_follows_run_and_unpack_to_the_headers_total(owner: Path):
    m = sealed(owner)
    code, shown, _ = under_pty("run", "--source", str(m), "--key", str(owner / "key"), "-o", str(owner / "out"))
    assert code == 0, shown
    assert re.search(r"\r\x1b\[K\w+ +\d+%\|.*/2\.0MiB ", shown), repr(shown)  # the header's file bytes
    assert (owner / "out" / "variables" / "w.bin").read_bytes() == (owner / "model" / "variables" /
                                                                    "w.bin").read_bytes()
    assert not any(line.startswith("{") for line in screen(shown))


def test_json_lines_when_stderr_is_not_a_terminal(owner: Path):
    """Pods keep the documented format: one JSON object per line, ts/level/stage/event first, no bar."""
    r = modelseal("seal", str(owner / "model"), "-o", str(owner / "m.seal"), "--key", str(owner / "key"))
    assert r.code == 0
    assert "\r" not in r.stderr and "\x1b" not in r.stderr
    records = [json.loads(line) for line in r.stderr.splitlines()]
    for rec in records:
        assert list(rec)[:4] == ["ts", "level", "stage", "event"]
        assert json.dumps(rec, separators=(",", ":"), ensure_ascii=False) in r.stderr  # compact, as documented
    sealed_rec = next(rec for rec in records if rec["event"] == "sealed")
    assert sealed_rec["sha256"] == "sha256:" + hashlib.sha256((owner / "m.seal").read_bytes()).hexdigest()
    assert [rec["event"] for rec in records][-1] == "done"


def test_log_format_json_on_a_terminal_and_text_in_a_pipe(owner: Path):
    code, shown, _ = under_pty("keygen", "-o", str(owner / "k2"), "--log-format", "json")
    assert code == 0 and json.loads(screen(shown)[0])["event"] == "key_written"
    r = modelseal("keygen", "-o", str(owner / "k3"), env={"MODELSEAL_LOG_FORMAT": "text"})
    assert r.code == 0 and r.stderr.splitlines()[0] == f"key_written: path={owner / 'k3'}"


def test_quiet_keeps_only_errors(owner: Path):
    code, shown, _ = under_pty("seal", str(owner / "model"), "-o", str(owner / "m.seal"), "--key",
                               str(owner / "key"), "--quiet")
    assert code == 0 and shown == "", repr(shown)
    code, shown, _ = under_pty("seal", str(owner / "model"), "-o", str(owner / "m.seal"), "--key",
                               str(owner / "key"), "-q")
    assert code == 2
    assert screen(shown) == [f"error: {owner / 'm.seal'} exists: refusing to overwrite it (give --force to "
                             "replace it) (exit 2, usage)"]


# ---- seal's summary and --force -----------------------------------------------------------------------

def test_seal_refuses_to_overwrite_unless_forced(owner: Path):
    m = sealed(owner)
    before = m.read_bytes()
    r = modelseal("seal", str(owner / "model"), "-o", str(m), "--key", str(owner / "key"))
    assert r.code == 2 and r.error() == f"{m} exists: refusing to overwrite it (give --force to replace it)"
    assert m.read_bytes() == before
    r = modelseal("seal", str(owner / "model"), "-o", str(m), "--key", str(owner / "key"), "--force")
    assert r.code == 0 and m.read_bytes() != before  # a fresh nonce: new bytes
    summary = next(rec for rec in r.logs() if rec["event"] == "sealed")
    assert summary["sha256"] == "sha256:" + hashlib.sha256(m.read_bytes()).hexdigest()
    assert summary["files"] == 2 and summary["bytes"] == m.stat().st_size and len(summary["recipients"]) == 1
    pinned = modelseal("run", "--source", str(m), "--key", str(owner / "key"), "-o", str(owner / "out"),
                       "--sha256", summary["sha256"])
    assert pinned.code == 0, pinned.stderr  # the printed pin is the one run checks


# ---- the command line ---------------------------------------------------------------------------------

def test_modelseal_alone_prints_the_help_and_fails():
    r = modelseal()
    assert r.code == 2
    assert r.stderr.startswith("usage: modelseal") and "fetch-model" in r.stderr and "completion" in r.stderr


def test_every_flag_shows_its_default_in_help():
    from modelseal.cli import build_parser
    from modelseal.usage import subcommands

    for command, sub in subcommands(build_parser()).items():
        sub.format_help()
        for action in sub._actions:
            if not action.option_strings or action.dest == "help":
                continue
            help_text = " ".join(sub._get_formatter()._expand_help(action).split())
            assert re.search(r"\((default[: ][^)]*|required)\)", help_text), (command, action.dest, help_text)


def test_an_unknown_flag_is_named_under_its_commands_usage_with_a_suggestion(owner: Path):
    r = modelseal("run", "--source", "x.seal", "--key", "k", "--out", str(owner / "o"))
    assert r.code == 2 and not (owner / "o").exists()
    assert r.stderr.startswith("usage: modelseal run ")
    assert r.stderr.splitlines()[-1] == "modelseal run: error: unrecognized argument: --out; did you mean --output?"
    r = modelseal("sael", "x")
    assert r.code == 2 and "did you mean 'seal'?" in r.stderr


def test_abbreviations_are_off():
    """argparse would take `--out` for `--output`, and a flag added later would change what it meant."""
    from modelseal.cli import build_parser

    parser = build_parser()
    with pytest.raises(SystemExit) as e:
        parser.parse_args(["fetch-model", "--source", "s", "--out", "o"])
    assert e.value.code == 2
    assert parser.parse_args(["fetch-model", "--source", "s", "--output", "o"]).output == "o"


def test_a_misspelled_variable_is_warned_about_once(owner: Path):
    r = modelseal("keygen", "-o", str(owner / "k2"), env={"MODELSEAL_SORCE": "s3://b/m.seal",
                                                         "MODELSEAL_TEST_ANYTHING": "1"})
    assert r.code == 0
    warnings = [rec for rec in r.logs() if rec["level"] == "warning"]
    assert [(w["event"], w["variable"]) for w in warnings] == [("unknown_variable", "MODELSEAL_SORCE")]
    assert warnings[0]["message"] == "$MODELSEAL_SORCE is not a modelseal setting; did you mean $MODELSEAL_SOURCE?"
    r = modelseal("keygen", "-o", str(owner / "k3"), env={"MODELSEAL_SOURCE": "s3://b/m.seal"})
    assert r.code == 0 and not any(rec["level"] == "warning" for rec in r.logs())


def test_bash_completion_completes_commands_flags_and_choices(tmp_path: Path):
    r = modelseal("completion", "bash")
    assert r.code == 0 and r.stderr == ""
    script = tmp_path / "c.bash"
    script.write_bytes(r.stdout)

    def complete(*words: str) -> list[str]:
        line = " ".join(f"'{w}'" for w in ("modelseal", *words))
        out = subprocess.run(["bash", "-c", f'source {script}; COMP_WORDS=({line}); '
                              f'COMP_CWORD={len(words)}; _modelseal; printf "%s\\n" "${{COMPREPLY[@]}}"'],
                             capture_output=True, text=True, check=True)
        return out.stdout.split()

    assert complete("fe") == ["fetch-key", "fetch-model"]
    assert "--output" in complete("seal", "--ou") and "--compress" in complete("seal", "--co")
    assert complete("seal", "--compress", "z") == ["zstd"]


@pytest.mark.parametrize("shell", ["zsh", "fish"])
def test_zsh_and_fish_completion_scripts(shell: str):
    r = modelseal("completion", shell)
    assert r.code == 0
    text = r.stdout.decode()
    if shell == "fish":
        assert "complete -c modelseal -n '__fish_seen_subcommand_from run' -s o -l output" in text
    else:
        assert text.startswith("#compdef modelseal\n") and "complete -o filenames" in text
    if shutil.which(shell):
        check = [shell, "-n"] if shell == "zsh" else [shell, "--no-execute"]
        assert subprocess.run([*check], input=r.stdout, capture_output=True).returncode == 0


# ---- errors that say what to do -----------------------------------------------------------------------

def test_decrypt_to_a_terminal_is_refused(owner: Path):
    m = sealed(owner)
    code, shown, _ = under_pty("decrypt", "--in", str(m), "--key", str(owner / "key"), "-o", "-", stdout_tty=True,
                               env={"MODELSEAL_LOG_FORMAT": "json"})
    assert code == 2
    failed = json.loads(screen(shown)[-1])
    assert failed["error"].startswith("refusing to write the plaintext model to a terminal")
    r = modelseal("decrypt", "--in", str(m), "--key", str(owner / "key"), "-o", "-")  # a pipe: fine
    assert r.code == 0 and len(r.stdout) > 2 * 2**20


def test_a_16_byte_key_says_its_size(owner: Path):
    m = sealed(owner)
    (owner / "short.key").write_bytes(os.urandom(16))
    r = modelseal("decrypt", "--in", str(m), "--key", str(owner / "short.key"), "-o", str(owner / "out"))
    assert r.code == 2 and r.error() == "a data key is 32 bytes (raw, base64 or hex); this one is 16"
    assert not (owner / "out").exists() and not list(owner.glob("*.partial"))


def test_a_file_uri_with_two_slashes_explains_itself(owner: Path):
    m = sealed(owner)
    r = modelseal("decrypt", "--in", str(m), "--key-uri", "file://model.key", "-o", str(owner / "out"))
    assert r.code == 2
    assert r.error() == ("file://model.key: a file URI takes an absolute path after three slashes "
                         "(file:///abs/path/model.key); for a relative path give the path itself "
                         "(--key PATH, --source PATH)")
    r = modelseal("fetch-model", "--source", "file://m.seal", "-o", str(owner / "copy"))
    assert r.code == 2 and "three slashes" in r.error()


def _mount_point_over_disk() -> str:
    """A mount point whose parent is `/` (not memory-backed in a test container or on a laptop)."""
    root = os.stat("/").st_dev
    for path in ("/dev", "/proc", "/sys", "/run"):
        try:
            if os.stat(path).st_dev != root:
                return path
        except OSError:
            pass
    pytest.skip("no mount point directly under /")


@pytest.mark.parametrize("command", ["run", "unpack"])
def test_the_memory_volumes_mount_point_gets_the_mount_point_hint(owner: Path, command: str):
    target = _mount_point_over_disk()
    m = sealed(owner)
    args = (["run", "--source", str(m), "--key", str(owner / "key")] if command == "run"
            else ["unpack", "--in", str(owner / "model" / "saved_model.pb")])
    r = modelseal(*args, "-o", target)
    assert r.code == 2
    assert r.error() == f"{target} is a mount point: give a new directory inside it (e.g. {target}/model)"


def test_unpack_of_a_seal_names_decrypt_and_run(owner: Path):
    m = sealed(owner)
    r = modelseal("unpack", "--in", str(m), "-o", str(owner / "out"))
    assert r.code == 2 and not (owner / "out").exists()
    assert "is a sealed model (.seal), not an archive: decrypt it first" in r.error()
    assert "modelseal run --source" in r.error()


def test_inspect_of_an_openpgp_file_names_convert(owner: Path):
    gpg = owner / "model.tar.gpg"
    gpg.write_bytes(b"\x8c\x0d\x04\x09\x03\x02" + os.urandom(200))  # a gpg -c symmetric-key packet
    r = modelseal("inspect", str(gpg))
    assert r.code == 2
    assert r.error().startswith(f"{gpg} is not a .seal but an OpenPGP (gpg -c) file: convert it (modelseal "
                                "convert")
    assert "--format openpgp" in r.error()


@pytest.mark.parametrize("command", ["seal", "convert"])
def test_seal_and_convert_help_do_not_describe_format(command: str):
    r = modelseal(command, "--help")
    assert r.code == 0 and b"--format" not in r.stdout
    assert b"--format" in modelseal("decrypt", "--help").stdout


def test_fetch_model_creates_the_outputs_parent_and_removes_it_on_failure(owner: Path):
    m = sealed(owner)
    r = modelseal("fetch-model", "--source", str(m), "-o", str(owner / "a" / "b" / "m.seal"))
    assert r.code == 0, r.stderr
    assert (owner / "a" / "b" / "m.seal").read_bytes() == m.read_bytes()
    r = modelseal("fetch-model", "--source", str(m), "-o", str(owner / "c" / "d" / "m.seal"), "--sha256", "0" * 64)
    assert r.code == 4 and not (owner / "c").exists()


# ---- inspect reads what the stages read ---------------------------------------------------------------

def test_inspect_reads_an_https_source_by_a_ranged_read(owner: Path, pki):
    m = sealed(owner)
    blob = m.read_bytes()
    local = modelseal("inspect", str(m))
    with ObjectServer({"/m.seal": blob}, tls=pki.server_context()) as web:
        r = modelseal("inspect", web.url + "/m.seal", "--ca", str(pki.ca))
        assert r.code == 0, r.stderr
        assert json.loads(r.stdout) == json.loads(local.stdout)  # the same header and lengths
        from modelseal.stages import PREFIX_READ

        assert web.bytes_sent < PREFIX_READ + 1024 < len(blob) // 8  # the most a header can take, not the model
    r = modelseal("inspect", f"file://{m}")
    assert r.code == 0 and json.loads(r.stdout) == json.loads(local.stdout)


def test_inspect_reads_an_s3_source(owner: Path, moto, aws_env):
    """The same header from s3:// (read_prefix: one ranged GET, tests/test_sources.py), the --resources numbers
    for a pod that reads S3 (its reader's parts in flight counted)."""
    import boto3

    m = sealed(owner)
    client = boto3.client("s3", endpoint_url=moto.url, region_name="us-east-1")
    client.create_bucket(Bucket="first-hour")
    client.put_object(Bucket="first-hour", Key="m.seal", Body=m.read_bytes())
    r = modelseal("inspect", "s3://first-hour/m.seal", "--endpoint-url", moto.url)
    assert r.code == 0, r.stderr
    assert json.loads(r.stdout) == json.loads(modelseal("inspect", str(m)).stdout)
    from_s3 = modelseal("inspect", "s3://first-hour/m.seal", "--endpoint-url", moto.url, "--resources", "-o", "patch")
    local = modelseal("inspect", str(m), "--resources", "-o", "patch")
    assert b"\"memory\": \"208Mi\"" in from_s3.stdout, from_s3.stdout.decode()  # S3 parts in flight
    assert b"\"memory\": \"112Mi\"" in local.stdout


def test_inspect_resources_patch_applies_to_the_example_pod(owner: Path):
    m = sealed(owner)
    if not shutil.which("kubectl"):
        pytest.skip("kubectl (tools/host-packages.sh) is not installed")
    for kind, example in (("Pod", "single-stage.yaml"), ("Deployment", None)):
        r = modelseal("inspect", str(m), "--resources", "-o", "patch", "--kind", kind)
        assert r.code == 0, r.stderr
        patch = owner / f"{kind}.patch.yaml"
        patch.write_bytes(r.stdout)
        target = ROOT / "examples" / "kubernetes" / example if example else _deployment(owner)
        out = subprocess.run(["kubectl", "patch", "--local", "--dry-run=client", "-o", "json", "-f", str(target),
                              "--type", "strategic", "--patch-file", str(patch)], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        doc = json.loads(out.stdout)
        spec = doc["spec"] if kind == "Pod" else doc["spec"]["template"]["spec"]
        init = next(c for c in spec["initContainers"] if c["name"] == "modelseal")
        volume = next(v for v in spec["volumes"] if v["name"] == "models")
        assert init["resources"]["limits"]["memory"] == "112Mi" == init["resources"]["requests"]["memory"]
        assert volume["emptyDir"] == {"medium": "Memory", "sizeLimit": "16Mi"}
        assert len(spec["containers"]) == 1 and spec["initContainers"][0]["image"]  # merged by name, not replaced
        validated = owner / f"{kind}.json"
        validated.write_text(out.stdout)
        exe = shutil.which("kubernetes-validate", path=str(Path(sys.executable).parent)) or "kubernetes-validate"
        v = subprocess.run([exe, "--strict", str(validated)], capture_output=True, text=True)
        assert v.returncode == 0, v.stdout + v.stderr
    # kustomize: the patch names its target (--workload), and `kubectl kustomize` applies it
    kustomize = owner / "kustomize"
    kustomize.mkdir()
    shutil.copy(_deployment(owner), kustomize / "deployment.json")
    r = modelseal("inspect", str(m), "--resources", "-o", "patch", "--workload", "resnet")
    (kustomize / "patch.yaml").write_bytes(r.stdout)
    (kustomize / "kustomization.yaml").write_text("resources: [deployment.json]\npatches:\n  - path: patch.yaml\n")
    out = subprocess.run(["kubectl", "kustomize", str(kustomize)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    import yaml

    spec = yaml.safe_load(out.stdout)["spec"]["template"]["spec"]
    assert next(v for v in spec["volumes"] if v["name"] == "models")["emptyDir"]["sizeLimit"] == "16Mi"
    assert next(c for c in spec["initContainers"] if c["name"] == "modelseal")["resources"]["limits"]["memory"] \
        == "112Mi"
    r = modelseal("inspect", str(m), "--resources", "-o", "json")
    numbers = json.loads(r.stdout)
    assert numbers["single_stage"]["init_memory"] == "112Mi" and numbers["four_stage"]["models_volume"] == "16Mi"


def _deployment(owner: Path) -> Path:
    """The single-stage example's pod as a Deployment's template."""
    import yaml

    pod = yaml.safe_load((ROOT / "examples" / "kubernetes" / "single-stage.yaml").read_text())
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "resnet"},
                  "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "resnet"}},
                           "template": {"metadata": {"labels": {"app": "resnet"}}, "spec": pod["spec"]}}}
    path = owner / "deployment.json"
    path.write_text(json.dumps(deployment))
    return path


def test_without_tqdm_the_bar_is_drawn_by_hand_in_the_same_layout(owner: Path):
    """The stage images carry no tqdm (images/requirements-*.txt; wheelhouse.sh installs only those): the
    fallback draws the same line."""
    m = sealed(owner)
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MODELSEAL_")}
    master, slave = pty.openpty()
    blocked = "import sys; sys.modules['tqdm'] = None; from modelseal.cli import main; sys.exit(main())"
    proc = subprocess.Popen([sys.executable, "-c", blocked, "fetch-model", "--source", str(m), "-o",
                             str(owner / "copy" / "m.seal")], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=slave, env={**full_env, "COLUMNS": "100"})
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert proc.wait(timeout=120) == 0
    shown = b"".join(chunks).decode()
    assert re.search(r"\r\x1b\[Kfetch +\d+%\|#* *\| [\d.]+(?:Ki|Mi)?B/2\.0MiB [\d.]+(?:Ki|Mi|Gi)?B/s ETA [\d:?]+",
                     shown), repr(shown)


def test_the_drawn_bar_and_its_numbers():
    from modelseal.progress import drawn_meter, numbers

    assert numbers(3 * 2**20, 12 * 2**20, 2.0) == "3.0MiB/12.0MiB 1.5MiB/s ETA 00:06"
    assert numbers(5 * 2**30, None, 3725.0) == "5.0GiB 1.4MiB/s 1:02:05"  # no total: done, rate, time so far
    line = drawn_meter(6 * 2**20, 12 * 2**20, 2.0, 60, "run")
    assert line.startswith("run  50%|") and line.endswith("| 6.0MiB/12.0MiB 3.0MiB/s ETA 00:02") and len(line) <= 60
    assert abs(line.count("#") - line.split("|")[1].count(" ")) <= 1  # half full


def test_the_stage_images_do_not_carry_the_bar_library():
    for requirements in (ROOT / "images").glob("requirements-*.txt"):
        assert "tqdm" not in requirements.read_text().lower(), requirements.name
    assert 'cli = [\n    "tqdm==' in (ROOT / "shared" / "pyproject.toml").read_text()  # the owner's install has it
