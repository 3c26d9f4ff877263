"""oci:// against a real registry: Debian's docker-registry (CNCF distribution) on 127.0.0.1.

End to end through the command line: `seal -o oci://` pushes, `fetch-model`,
`run` and `fetch-key --source` read; skopeo reads what we push and oras-py
writes what we read. Three registries: anonymous over plain HTTP, TLS (the
test CA) with htpasswd basic auth, and the server's token auth with the
tests' token issuer and the redirect storage middleware. Faults: the fault
proxy of tests/support/faults.py cutting a blob mid-stream or failing requests, and a
blob or manifest altered on the registry's disk (a compromised store).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from conftest import modelseal
from modelseal.errors import IntegrityError, UsageError
from modelseal.registry import credentials, manifest
from modelseal.registry.reference import Reference
from modelseal.uri import URI
from support.registry import docker_config, HeaderProxy, need_tool, Registry, REQUIRE, Storage, TokenIssuer
from support.faults import Fault
from support.processes import write_file
from support.vault import VaultServer

MiB = 1 << 20
FAST = "backoff=0.01&backoff_max=0.05"


def need_module(name: str):
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError:
        why = f"python module {name} is missing (requirements-dev.txt)"
        if REQUIRE:
            pytest.fail(f"MODELSEAL_REQUIRE_IMAGES=1 but {why}", pytrace=False)
        pytest.skip(why)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def event(result, name: str) -> dict:
    found = [r for r in result.logs() if r.get("event") == name]
    assert found, f"no {name!r} event in {result.stderr[-2000:]}"
    return found[-1]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A model (12 MiB of random files in two directories) and its key, on tmpfs."""
    root = Path(os.environ.get("MODELSEAL_TEST_SHM", "/dev/shm")) / f"modelseal-oci-{uuid.uuid4().hex[:8]}"
    (root / "model" / "variables").mkdir(parents=True)
    (root / "model" / "saved_model.pb").write_bytes(os.urandom(5 * MiB + 123))
    (root / "model" / "variables" / "data").write_bytes(os.urandom(7 * MiB + 7))
    (root / "empty").mkdir()  # a Docker config dir with nothing in it
    r = modelseal("keygen", "-o", str(root / "key"))
    assert r.code == 0, r.stderr
    yield root
    subprocess.run(["rm", "-rf", str(root)])


def ms(*args: str, config: Path | str, env: dict | None = None):
    """The CLI with DOCKER_CONFIG set, so the host's ~/.docker never plays a part."""
    return modelseal(*args, env={"DOCKER_CONFIG": str(config), **(env or {})})


@pytest.fixture(scope="module")
def anon():
    with Registry() as r:
        yield r


@pytest.fixture
def out(work):
    d = work / f"out-{uuid.uuid4().hex[:8]}"
    d.mkdir()
    yield d
    subprocess.run(["rm", "-rf", str(d)])


def push(work: Path, ref: str, *extra: str, config: Path | None = None):
    r = ms("seal", str(work / "model"), "-o", ref, "--key", str(work / "key"), *extra,
           config=config or work / "empty")
    assert r.code == 0, r.stderr
    return event(r, "pushed")


# ---- anonymous, plain HTTP --------------------------------------------------------------

def test_seal_push_fetch_run_byte_exact(anon, work, out):
    ref = f"oci://{anon.host}/models/resnet:1"
    pushed = push(work, ref, "--allow-http")
    assert pushed["pinned"] == f"oci://{anon.host}/models/resnet@{pushed['digest']}"
    r = ms("fetch-model", "--source", ref, "--allow-http", "-o", str(out / "m.seal"), config=work / "empty")
    assert r.code == 0, r.stderr
    assert sha256_file(out / "m.seal") == pushed["layer"]
    assert json.loads(modelseal("inspect", str(out / "m.seal")).stdout)["name"] == "model"
    # by digest, single pass
    r = ms("run", "--source", pushed["pinned"], "--allow-http", "--key", str(work / "key"), "-o", str(out / "tree"),
           config=work / "empty")
    assert r.code == 0, r.stderr
    assert tree(out / "tree") == tree(work / "model")
    assert event(r, "manifest")["digest"] == pushed["digest"]


def test_standard_tools_read_what_we_push(anon, work, out):
    skopeo = need_tool("skopeo")
    oras = need_module("oras.client")
    ref = f"{anon.host}/models/tools:1"
    pushed = push(work, "oci://" + ref, "--allow-http", "--model-version", "7")
    raw = subprocess.run([skopeo, "inspect", "--raw", "--tls-verify=false", f"docker://{ref}"],
                         capture_output=True, text=True, check=True).stdout
    assert "sha256:" + hashlib.sha256(raw.encode()).hexdigest() == pushed["digest"]
    m = json.loads(raw)
    assert m["artifactType"] == manifest.ARTIFACT_TYPE == "application/vnd.modelseal.model.v1"
    assert m["config"]["mediaType"] == "application/vnd.oci.empty.v1+json"
    (layer,) = m["layers"]
    assert layer["mediaType"] == manifest.seal_layer(2) == "application/vnd.modelseal.seal.v2"  # seal writes v2
    assert layer["annotations"]["org.opencontainers.image.title"] == "model.seal"
    assert m["annotations"]["org.opencontainers.image.version"] == "7"
    files = oras.OrasClient(hostname=anon.host, insecure=True).pull(target=ref, outdir=str(out / "oras"))
    assert [os.path.basename(f) for f in files] == ["model.seal"]
    r = ms("fetch-model", "--source", "oci://" + ref, "--allow-http", "-o", str(out / "m.seal"), config=work / "empty")
    assert r.code == 0, r.stderr
    assert (out / "oras" / "model.seal").read_bytes() == (out / "m.seal").read_bytes()


def test_oras_pushed_plain_file_is_read(anon, work, out):
    oras = need_module("oras.client")
    r = modelseal("seal", str(work / "model"), "-o", str(out / "model.seal"), "--key", str(work / "key"))
    assert r.code == 0, r.stderr
    cwd = os.getcwd()
    os.chdir(out)
    try:
        resp = oras.OrasClient(hostname=anon.host, insecure=True).push(
            target=f"{anon.host}/models/plain:1", files=["model.seal"], quiet=True)
    finally:
        os.chdir(cwd)
    assert resp.status_code == 201
    ref = f"oci://{anon.host}/models/plain:1"
    r = ms("fetch-model", "--source", ref, "--allow-http", "-o", str(out / "got.seal"), config=work / "empty")
    assert r.code == 0, r.stderr
    assert (out / "got.seal").read_bytes() == (out / "model.seal").read_bytes()
    assert event(r, "manifest")["media_type"] == "application/vnd.oci.image.layer.v1.tar"
    r = ms("run", "--source", ref, "--allow-http", "--key", str(work / "key"), "-o", str(out / "tree"),
           config=work / "empty")
    assert r.code == 0, r.stderr
    assert tree(out / "tree") == tree(work / "model")


def _flip(path: str, at: int) -> None:
    with open(path, "r+b") as f:
        f.seek(at)
        b = f.read(1)
        f.seek(at)
        f.write(bytes([b[0] ^ 0x01]))


def test_blob_altered_on_the_registry_is_exit_4_with_nothing_left(anon, work, out):
    ref = f"oci://{anon.host}/models/tampered:1"
    pushed = push(work, ref, "--allow-http")
    blob = anon.blob_path(pushed["layer"])
    _flip(blob, os.path.getsize(blob) - 100)  # in the last segment: only the digest can tell before EOF
    r = ms("fetch-model", "--source", ref, "--allow-http", "-o", str(out / "m.seal"), config=work / "empty")
    assert r.code == 4, r.stderr
    assert "sha256 mismatch" in r.error() and pushed["layer"] in r.error()
    assert os.listdir(out) == []
    r = ms("run", "--source", ref, "--allow-http", "--key", str(work / "key"), "-o", str(out / "tree"),
           config=work / "empty")
    assert r.code == 4, r.stderr
    assert os.listdir(out) == []
    # shorter than the manifest says: refused at the first answer
    os.truncate(blob, os.path.getsize(blob) - 5)
    r = ms("fetch-model", "--source", ref, "--allow-http", "-o", str(out / "m.seal"), config=work / "empty")
    assert r.code == 4, r.stderr
    assert "bytes for a" in r.error()
    assert os.listdir(out) == []


def test_manifest_digest_is_checked_for_pinned_references(anon, work, out):
    ref = f"oci://{anon.host}/models/pinned:1"
    pushed = push(work, ref, "--allow-http")
    path = anon.blob_path(pushed["digest"])
    body = Path(path).read_bytes()
    Path(path).write_bytes(body.replace(b'"model.seal"', b'"other.seal"'))
    r = ms("fetch-model", "--source", pushed["pinned"], "--allow-http", "-o", str(out / "m.seal"),
           config=work / "empty")
    assert r.code == 4, r.stderr
    assert "manifest whose digest is" in r.error()
    assert os.listdir(out) == []
    # by tag nothing is pinned: the (still valid) layer is read
    r = ms("fetch-model", "--source", ref, "--allow-http", "-o", str(out / "m.seal"), config=work / "empty")
    assert r.code == 0, r.stderr


def test_cut_blob_resumes_with_range(anon, work, out):
    ref = f"{anon.host}/models/cut:1"
    pushed = push(work, "oci://" + ref, "--allow-http")
    proxy = HeaderProxy(anon.port)
    try:
        proxy.add_fault(Fault("cut", after=3 * MiB + 17, method="GET", path="/blobs/", times=2))
        src = f"oci://127.0.0.1:{proxy.port}/models/cut:1?{FAST}"
        r = ms("fetch-model", "--source", src, "--allow-http", "-o", str(out / "m.seal"), config=work / "empty")
        assert r.code == 0, r.stderr
        assert sha256_file(out / "m.seal") == pushed["layer"]
        blob_gets = [rng for m, p, rng in proxy.requests if m == "GET" and "/blobs/" in p]
        assert len(blob_gets) == 3 and blob_gets[0] is None
        assert [int(x[6:].rstrip("-")) for x in blob_gets[1:]] == [3 * MiB + 17, 2 * (3 * MiB + 17)]
        size = os.path.getsize(out / "m.seal")
        assert proxy.bytes_sent < size + 64 * 1024  # resumed, not restarted
    finally:
        proxy.close()


def test_unavailable_denied_and_plain_http_rules(anon, work, out):
    push(work, f"oci://{anon.host}/models/codes:1", "--allow-http")
    proxy = HeaderProxy(anon.port)
    try:
        base = f"oci://127.0.0.1:{proxy.port}/models"
        proxy.add_fault(Fault("status", 503, path="/manifests/", times=100))
        r = ms("fetch-model", "--source", f"{base}/codes:1?{FAST}", "--allow-http", "--retries", "3",
               "-o", str(out / "m.seal"), config=work / "empty")
        assert r.code == 5, r.stderr
        assert "after 3 attempts" in r.error()
        assert proxy.count("GET", "/manifests/") == 3
        proxy.faults.clear()
        proxy.reset_counters()
        for missing in ("codes:2", "nothing:1"):
            r = ms("fetch-model", "--source", f"{base}/{missing}?{FAST}", "--allow-http", "-o", str(out / "m.seal"),
                   config=work / "empty")
            assert r.code == 3, r.stderr
            assert "HTTP 404" in r.error()
        assert proxy.count("GET") == 2  # not retried
        proxy.reset_counters()
        # without --allow-http it speaks TLS only: the plain-HTTP registry never sees a request
        r = ms("fetch-model", "--source", f"{base}/codes:1", "-o", str(out / "m.seal"), config=work / "empty")
        assert r.code == 3 and "TLS" in r.error(), r.stderr
        assert proxy.count() == 0
        assert os.listdir(out) == []
    finally:
        proxy.close()


def test_failed_push_leaves_no_tag_and_a_dropped_chunk_resumes(anon, work, out):
    proxy = HeaderProxy(anon.port)
    try:
        base = f"oci://127.0.0.1:{proxy.port}/models"
        proxy.add_fault(Fault("status", 500, method="PATCH", times=100))
        r = ms("seal", str(work / "model"), "-o", f"{base}/failed:1?part_size=1MiB&{FAST}", "--retries", "2",
               "--key", str(work / "key"), "--allow-http", config=work / "empty")
        assert r.code == 5, r.stderr
        assert proxy.count("DELETE", "/blobs/uploads/") == 1  # the upload was cancelled
        assert proxy.count("PUT", "/manifests/") == 0
        r = ms("fetch-model", "--source", f"oci://{anon.host}/models/failed:1", "--allow-http",
               "-o", str(out / "m.seal"), config=work / "empty")
        assert r.code == 3, r.stderr
        proxy.faults.clear()
        proxy.reset_counters()
        proxy.add_fault(Fault("status", 503, method="PATCH", times=2))
        r = ms("seal", str(work / "model"), "-o", f"{base}/resumed:1?part_size=1MiB&{FAST}",
               "--key", str(work / "key"), "--allow-http", config=work / "empty")
        assert r.code == 0, r.stderr
        assert proxy.count("GET", "/blobs/uploads/") == 2  # asked where the upload stood, twice
        r = ms("run", "--source", f"oci://{anon.host}/models/resumed:1", "--allow-http", "--key",
               str(work / "key"), "-o", str(out / "tree"), config=work / "empty")
        assert r.code == 0, r.stderr
        assert tree(out / "tree") == tree(work / "model")
    finally:
        proxy.close()


def test_fetch_key_reads_the_header_with_one_ranged_get(anon, work, out, pki):
    vault = VaultServer(tls=pki.server_context())
    try:
        vault.add_transit_key("modelseal")
        token = write_file(str(out / "vault-token"), vault.add_token())
        key_uri = f"vault-transit://127.0.0.1:{vault.port}/transit/modelseal?ca={pki.ca}&token_file={token}"
        r = ms("seal", str(work / "model"), "-o", f"oci://{anon.host}/models/wrapped:1", "--key-uri", key_uri,
               "--allow-http", config=work / "empty")
        assert r.code == 0, r.stderr
        key_id = event(r, "sealed")["key_id"]
        proxy = HeaderProxy(anon.port)
        try:
            r = ms("fetch-key", "--key-uri", key_uri, "--source", f"oci://127.0.0.1:{proxy.port}/models/wrapped:1",
                   "--allow-http", "-o", str(out / "key"), config=work / "empty")
            assert r.code == 0, r.stderr
            assert event(r, "key_written")["key_id"] == key_id
            blob_gets = [rng for m, p, rng in proxy.requests if "/blobs/" in p]
            # one ranged GET of the longest prefix (version 2's: magic, two lengths, two 64 KiB sections, the MAC)
            assert blob_gets == [f"bytes=0-{6 + 4 + 65536 + 4 + 65536 + 32 - 1}"]
        finally:
            proxy.close()
    finally:
        vault.close()


# ---- TLS and basic auth -----------------------------------------------------------------

@pytest.fixture(scope="module")
def basic(pki):
    with Registry(pki=pki, htpasswd={"alice": "s3cret-pass-alice"}) as r:
        yield r


def test_tls_and_basic_auth_from_docker_config(basic, work, out, pki):
    ok = docker_config(str(out / "ok"), basic.host, user="alice", password="s3cret-pass-alice")
    ref = f"oci://{basic.host}/models/private:1"
    r = ms("seal", str(work / "model"), "-o", ref, "--key", str(work / "key"), "--ca", pki.ca, config=ok)
    assert r.code == 0, r.stderr
    assert "s3cret-pass-alice" not in r.stderr
    fetch = ["fetch-model", "--source", ref, "-o", str(out / "m.seal")]
    r = ms(*fetch, "--ca", pki.ca, config=ok)
    assert r.code == 0, r.stderr
    assert event(r, "registry_credentials")["config"] == os.path.join(ok, "config.json")
    os.unlink(out / "m.seal")
    # a Kubernetes pull secret (kubernetes.io/dockerconfigjson) mounted as DOCKER_CONFIG
    secret = docker_config(str(out / "secret"), basic.host, user="alice", password="s3cret-pass-alice",
                           name=".dockerconfigjson")
    r = ms(*fetch, "--ca", pki.ca, config=secret)
    assert r.code == 0, r.stderr
    os.unlink(out / "m.seal")
    # ~/.docker/config.json when DOCKER_CONFIG is unset
    home = out / "home"
    docker_config(str(home / ".docker"), basic.host, user="alice", password="s3cret-pass-alice")
    r = modelseal(*fetch, "--ca", pki.ca, env={"HOME": str(home)})
    assert r.code == 0, r.stderr
    os.unlink(out / "m.seal")
    # refusals, each exit 3 with nothing written
    bad = docker_config(str(out / "bad"), basic.host, user="alice", password="wrong-password-x")
    for cfg, flags, says in ((work / "empty", ["--ca", pki.ca], "no Docker config"),
                             (bad, ["--ca", pki.ca], "refused the credentials"),
                             (ok, [], "TLS"), (ok, ["--ca", pki.other_ca], "TLS")):
        r = ms(*fetch, *flags, config=cfg)
        assert r.code == 3, (says, r.stderr)
        assert says in r.error()
        assert "wrong-password-x" not in r.stderr and "s3cret-pass-alice" not in r.stderr
    assert set(os.listdir(out)) == {"ok", "secret", "home", "bad"}


# ---- token auth, redirect to storage ----------------------------------------------------

@pytest.fixture(scope="module")
def token_registry(tmp_path_factory):
    issuer = TokenIssuer(str(tmp_path_factory.mktemp("issuer")))
    issuer.users = {"alice": "alice-pass-1234", "bob": "bob-pass-5678"}
    issuer.refresh_tokens = {"refresh-token-for-bob-9876": "bob"}
    issuer.grant("alice", "models/resnet", "pull", "push")
    issuer.grant("bob", "models/resnet", "pull")
    storage = Storage()
    registry = Registry(token=issuer, storage=storage)
    proxy = HeaderProxy(registry.port)  # sees every request to the registry origin
    yield issuer, storage, registry, proxy
    proxy.close()
    registry.stop()
    storage.close()
    issuer.close()


def test_token_flow_and_where_credentials_go(token_registry, work, out):
    issuer, storage, registry, proxy = token_registry
    ref = f"oci://127.0.0.1:{proxy.port}/models/resnet:1"
    alice = docker_config(str(out / "alice"), f"127.0.0.1:{proxy.port}", user="alice", password="alice-pass-1234")
    bob = docker_config(str(out / "bob"), f"127.0.0.1:{proxy.port}", user="bob", password="bob-pass-5678")
    bob_oauth = docker_config(str(out / "bob-oauth"), f"127.0.0.1:{proxy.port}",
                              identity_token="refresh-token-for-bob-9876")
    pushed = push(work, ref, "--allow-http", config=Path(alice))
    outputs = []
    for cfg in (bob, bob_oauth):
        r = ms("fetch-model", "--source", ref, "--allow-http", "-o", str(out / f"m{len(outputs)}.seal"), config=cfg)
        assert r.code == 0, r.stderr
        outputs.append(r.stderr)
        assert sha256_file(out / f"m{len(outputs) - 1}.seal") == pushed["layer"]
    assert ("POST", None) in issuer.authorizations  # the refresh token went in the form body, to the issuer only
    # who got what: Basic only to the token issuer, bearer tokens only to the registry, nothing to storage
    registry_auth = {a.split()[0] for _, _, a in proxy.authorizations if a}
    assert registry_auth == {"Bearer"}
    assert {a.split()[0] for m, a in issuer.authorizations if a} == {"Basic"}
    assert storage.authorizations and all(a is None for _, a in storage.authorizations)
    for text in outputs:
        for secret in ("bob-pass-5678", "refresh-token-for-bob-9876", *issuer.issued):
            assert secret not in text
    # denials: pull-only bob pushing, anonymous pulling, a wrong password
    r = ms("seal", str(work / "model"), "-o", f"oci://127.0.0.1:{proxy.port}/models/resnet:2",
           "--key", str(work / "key"), "--allow-http", config=bob)
    assert r.code == 3, r.stderr
    wrong = docker_config(str(out / "wrong"), f"127.0.0.1:{proxy.port}", user="bob", password="nope-nope")
    for cfg, says in ((work / "empty", "HTTP 401"), (wrong, "token endpoint")):
        r = ms("fetch-model", "--source", ref, "--allow-http", "-o", str(out / "x.seal"), config=cfg)
        assert r.code == 3, r.stderr
        assert says in r.error()
    assert not (out / "x.seal").exists()


def test_blob_redirected_to_storage_resumes_there(token_registry, work, out):
    issuer, storage, registry, proxy = token_registry
    ref = f"oci://127.0.0.1:{proxy.port}/models/resnet:1"
    alice = docker_config(str(out / "alice"), f"127.0.0.1:{proxy.port}", user="alice", password="alice-pass-1234")
    pushed = push(work, ref, "--allow-http", config=Path(alice))
    storage.reset_counters()
    storage.add_fault(Fault("cut", after=2 * MiB, method="GET", path="/data"))
    r = ms("fetch-model", "--source", f"{ref}?{FAST}", "--allow-http", "-o", str(out / "m.seal"), config=alice)
    assert r.code == 0, r.stderr
    assert sha256_file(out / "m.seal") == pushed["layer"]
    assert [rng for m, p, rng in storage.requests if m == "GET"] == [None, f"bytes={2 * MiB}-"]


# ---- no downgrade to plain http, anywhere in a push or a pull ----------------------------

def test_push_never_follows_an_upload_location_down_to_plain_http(work, out, pki):
    """An https registry (a TLS-terminating proxy in front) whose configured external URL is http://:
    every upload Location it hands out is plain http. Following one sends the sealed blob (and any
    token) in the clear to whoever answers there; the push must stop with exit 2 instead."""
    clear = HeaderProxy(0)  # the plain-http address the Locations name: it must never see a request
    registry = Registry(external_url=clear.url)
    clear.upstream_port = registry.port
    front = HeaderProxy(registry.port, tls=pki.server_context())  # https: what the owner pushes to
    try:
        for part_size in ("1MiB", "16MiB"):  # PATCHes, then the final PUT; or the final PUT alone
            ref = f"oci://127.0.0.1:{front.port}/models/downgrade:{part_size}"
            r = ms("seal", str(work / "model"), "-o", f"{ref}?part_size={part_size}", "--key", str(work / "key"),
                   "--ca", pki.ca, config=work / "empty")
            assert r.code == 2, r.stderr
            assert "plain http" in r.error() and "allow_http" in r.error(), r.error()
            assert front.count("POST", "/blobs/uploads/") >= 1  # it did start, over https
        assert clear.count() == 0, clear.requests  # not a byte went out in the clear
        assert front.count("PUT", "/manifests/") == 0  # no tag
    finally:
        front.close()
        registry.stop()
        clear.close()


def test_pull_never_follows_a_blob_redirect_down_to_plain_http(work, out, pki):
    """The same registry over https whose blobs redirect to plain-http storage: refused, nothing fetched there."""
    storage = Storage()
    registry = Registry(storage=storage)
    front = HeaderProxy(registry.port, tls=pki.server_context())
    try:
        push(work, f"oci://{registry.host}/models/redirected:1", "--allow-http")
        storage.reset_counters()
        ref = f"oci://127.0.0.1:{front.port}/models/redirected:1"
        for args in (("fetch-model", "--source", ref, "-o", str(out / "m.seal")),
                     ("run", "--source", ref, "--key", str(work / "key"), "-o", str(out / "tree"))):
            r = ms(*args, "--ca", pki.ca, config=work / "empty")
            assert r.code == 2, r.stderr
            assert "plain http" in r.error(), r.error()
        assert front.count("GET", "/blobs/") >= 1 and storage.count() == 0
        assert os.listdir(out) == []
    finally:
        front.close()
        registry.stop()
        storage.close()


# ---- pure logic: references, Docker config, layer choice ----------------------------------

@pytest.mark.parametrize("uri", [
    "oci://Reg.example.com/models/resnet:1", "oci://r:5000/models/resnet",
    "oci://[::1]:5000/a/b@sha256:" + "a" * 64, "oci://r/a/b:t@sha256:" + "b" * 64])
def test_reference_parse(uri):
    ref = Reference.parse(URI.parse(uri))
    assert ref.registry == ref.registry.lower() and ref.repository in ("models/resnet", "a/b")
    assert ref.reference in ("1", "latest") or ref.reference.startswith("sha256:")


@pytest.mark.parametrize("uri", [
    "oci://user:pw@r/models/m:1", "oci://r/Models/m:1", "oci://r/models/m@sha256:abc", "oci://r/models/m:bad tag",
    "oci:///models/m:1", "oci://r/"])
def test_reference_refused(uri):
    with pytest.raises(UsageError) as e:
        Reference.parse(URI.parse(uri))
    assert "pw" not in str(e.value)


def test_push_needs_a_tag(anon, work):
    r = ms("seal", str(work / "model"), "-o", f"oci://{anon.host}/models/m@sha256:{'c' * 64}",
           "--key", str(work / "key"), "--allow-http", config=work / "empty")
    assert r.code == 2 and "push to a tag" in r.error()


def test_docker_config_lookup(tmp_path, monkeypatch):
    auth = base64.b64encode(b"u:p:with:colons").decode()
    cfg = {"auths": {"https://Reg.Example.com:5000/v1/": {"auth": auth}, "other": {"username": "x", "password": "y"},
                     "https://index.docker.io/v1/": {"identitytoken": "idt"}},
           "credHelpers": {"helper.example": "ecr-login"}}
    write_file(str(tmp_path / "config.json"), json.dumps(cfg))
    env = {"DOCKER_CONFIG": str(tmp_path)}
    c = credentials.lookup("reg.example.com:5000", env)
    assert (c.username, c.password) == ("u", "p:with:colons")
    assert "p:with:colons" not in repr(c) and c.basic == "Basic " + auth
    assert credentials.lookup("other", env).password == "y"
    assert credentials.lookup("registry-1.docker.io", env).identity_token == "idt"
    assert credentials.lookup("reg.example.com", env) is None  # the port is part of the name
    assert credentials.lookup("helper.example", env) is None  # helpers are not run (warned)
    write_file(str(tmp_path / "config.json"), "{not json")
    with pytest.raises(UsageError) as e:
        credentials.lookup("other", env)
    assert "not valid UTF-8 JSON" in str(e.value)
    write_file(str(tmp_path / "config.json"), json.dumps({"auths": {"r": {"auth": "!!!"}}}))
    with pytest.raises(UsageError):
        credentials.lookup("r", env)
    assert credentials.lookup("r", {"DOCKER_CONFIG": str(tmp_path / "none")}) is None


def _manifest(*layers: dict, config: str = "application/vnd.oci.empty.v1+json", **top) -> bytes:
    return json.dumps({"schemaVersion": 2, "mediaType": manifest.OCI_MANIFEST,
                       "config": {"mediaType": config, "digest": "sha256:" + "0" * 64, "size": 2},
                       "layers": list(layers), **top}).encode()


def _layer(media: str, title: str | None = None, digest: str = "1") -> dict:
    d = {"mediaType": media, "digest": "sha256:" + digest * 64, "size": 10}
    if title:
        d["annotations"] = {manifest.TITLE: title}
    return d


def test_layer_choice():
    tar = "application/vnd.oci.image.layer.v1.tar"
    seal = _layer(manifest.SEAL_LAYER, digest="2")
    assert manifest.sealed_layer(_manifest(_layer(tar, "readme.md"), seal), "m").digest == seal["digest"]
    assert manifest.sealed_layer(_manifest(_layer(tar, "a.txt"), _layer(tar, "m.seal", "3")), "m").title == "m.seal"
    assert manifest.sealed_layer(_manifest(_layer(tar, "weights.bin")), "m").title == "weights.bin"
    refused = [
        (_manifest(seal, dict(seal, digest="sha256:" + "4" * 64)), UsageError, "layers could be"),
        (_manifest(_layer(tar + "+gzip"), config="application/vnd.oci.image.config.v1+json"), UsageError, "container image"),
        (json.dumps({"schemaVersion": 2, "mediaType": manifest.OCI_INDEX, "manifests": []}).encode(), UsageError, "index"),
        (_manifest(_layer(tar, "a"), _layer(tar, "b")), UsageError, "none is a .seal"),
        (b"\xff{", IntegrityError, "not valid UTF-8 JSON"),
        (_manifest(), IntegrityError, "no layers"),
        (_manifest({"mediaType": tar, "digest": "sha512:" + "a" * 128, "size": 1}), IntegrityError, "sha256"),
        (_manifest({"mediaType": tar, "digest": "sha256:" + "a" * 64, "size": -1}), IntegrityError, "size"),
    ]
    for body, cls, says in refused:
        with pytest.raises(cls) as e:
            manifest.sealed_layer(body, "m")
        assert says in str(e.value), says



def test_registry_credentials_never_go_to_another_origin(token_registry, work, out, monkeypatch):
    from modelseal.sources import open_source
    from modelseal.connection import Connection

    issuer, storage, registry, proxy = token_registry
    ref = f"oci://127.0.0.1:{proxy.port}/models/resnet:1"
    push(work, ref, "--allow-http", config=Path(docker_config(
        str(out / "alice"), f"127.0.0.1:{proxy.port}", user="alice", password="alice-pass-1234")))
    monkeypatch.setenv("DOCKER_CONFIG", docker_config(str(out / "bob"), f"127.0.0.1:{proxy.port}",
                                                      user="bob", password="bob-pass-5678"))
    src = open_source(ref, Connection(allow_http=True))
    src.layer()
    reg = src.registry()
    assert reg._authorization.startswith("Bearer ")
    storage.authorizations.clear()
    reg.request("GET", f"{storage.url}/elsewhere", "test").close()  # e.g. an upload Location on another host
    assert storage.authorizations == [("/elsewhere", None)]
