"""The registry client's credential rules, each pinned by a test against a real registry.

Debian's docker-registry (tests/support/registry.py) with the suite's token issuer
and the redirect storage middleware; the real CLI in a subprocess. Who gets
what (modelseal/registry/client.py): a 401 from another origin, reached by a
redirect or asked directly, is never answered with the registry's
credentials or its token flow; the token endpoint must be https unless
--allow-http; Docker config `auths` are matched by exact host[:port]; an
upload's body (or a refresh token in a POST) is never re-sent to the origin
a redirect names; the token endpoint's user info and query never reach a
message. Each rule has its mutant in tools/mutants.toml (issue 27).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import SHM, modelseal
from modelseal.registry import credentials
from support.registry import HeaderProxy, Registry, Storage, TokenIssuer
from support.faults import Fault
from support.http import Server
from support.objects import ObjectServer
from support.processes import write_file

MiB = 1 << 20
FAST = "backoff=0.01&backoff_max=0.05"
REPO = "models/resnet"


@pytest.fixture(scope="module")
def work():
    """A 3 MiB model (three 1 MiB upload chunks and a rest) and its key, on tmpfs."""
    root = SHM / f"modelseal-regrules-{uuid.uuid4().hex[:8]}"
    (root / "model").mkdir(parents=True)
    (root / "model" / "weights.bin").write_bytes(os.urandom(3 * MiB + 4321))
    (root / "empty").mkdir()
    assert modelseal("keygen", "-o", str(root / "key")).code == 0
    yield root
    subprocess.run(["rm", "-rf", str(root)], check=True)


def config(directory: Path, auths: dict[str, dict[str, str]]) -> Path:
    """A Docker config directory holding exactly these `auths` entries."""
    directory.mkdir(parents=True, exist_ok=True)
    write_file(str(directory / "config.json"), json.dumps({"auths": auths}))
    return directory


def basic(user: str, password: str) -> dict[str, str]:
    return {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}


def ms(*args: str, docker: Path, termination: Path | None = None):
    """The CLI with DOCKER_CONFIG set (the host's ~/.docker plays no part), and a termination log."""
    env = {"DOCKER_CONFIG": str(docker)}
    if termination is not None:
        termination.write_text("")
        env["MODELSEAL_TERMINATION_LOG"] = str(termination)
    return modelseal(*args, env=env)


def seal(work: Path, ref: str, *flags: str, docker: Path):
    return ms("seal", str(work / "model"), "-o", ref, "--key", str(work / "key"), *flags, docker=docker)


def fetch(ref: str, out: Path, *flags: str, docker: Path, termination: Path | None = None):
    return ms("fetch-model", "--source", ref, "-o", str(out), *flags, docker=docker, termination=termination)


def no_authorization(server: Server) -> bool:
    """The server was asked, and no request it saw carried an Authorization header."""
    return bool(server.seen) and not any(k.lower() == "authorization" for _, _, h, _ in server.seen for k in h)


def never_said(r, termination: Path | None, *secrets: str) -> None:
    """None of `secrets` in the logs, the error or the termination message."""
    texts = [r.stderr] + ([termination.read_text()] if termination is not None else [])
    for secret in secrets:
        assert secret and not any(secret in t for t in texts), f"{secret!r} reached a log or message"


# ---- token auth with blobs redirected to storage: who answers a 401 ----------------------------------

@pytest.fixture(scope="module")
def token_registry(tmp_path_factory):
    """Token auth (the suite's issuer), blobs redirected to Storage, and an evil token issuer that a
    challenge from elsewhere names, recording anything sent to it."""
    issuer = TokenIssuer(str(tmp_path_factory.mktemp("issuer")))
    issuer.users = {"alice": "alice-pass-1234", "bob": "bob-pass-5678"}
    issuer.grant("alice", REPO, "pull", "push")
    issuer.grant("bob", REPO, "pull")
    evil = TokenIssuer(str(tmp_path_factory.mktemp("evil")), service="evil")
    storage = Storage()
    registry = Registry(token=issuer, storage=storage)
    yield SimpleNamespace(issuer=issuer, evil=evil, storage=storage, registry=registry)
    registry.stop()
    storage.close()
    evil.close()
    issuer.close()


def _evil_challenge(t) -> dict[str, str]:
    return {"WWW-Authenticate": f'Bearer realm="{t.evil.realm}",service="evil",scope="repository:{REPO}:pull"'}


def test_a_401_from_storage_reached_by_a_redirect_gets_no_credentials(token_registry, work, tmp_path):
    """The blob GET is redirected to storage, which answers 401 with a challenge of its own: that is a
    denial (exit 3), not a reason to send bob's password to the realm it names, nor the registry's token
    to storage."""
    t = token_registry
    ref = f"oci://{t.registry.host}/{REPO}:1"
    host = t.registry.host
    alice = config(tmp_path / "alice", {host: basic("alice", "alice-pass-1234")})
    bob = config(tmp_path / "bob", {host: basic("bob", "bob-pass-5678")})
    assert seal(work, ref, "--allow-http", docker=alice).code == 0
    t.storage.reset_counters()
    t.storage.add_fault(Fault("status", 401, method="GET", path="/data", times=20, headers=_evil_challenge(t)))
    try:
        term = tmp_path / "termination"
        r = fetch(f"{ref}?{FAST}", tmp_path / "m.seal", "--allow-http", docker=bob, termination=term)
    finally:
        t.storage.faults.clear()
    assert r.code == 3 and "HTTP 401" in r.error(), r.stderr
    assert t.evil.authorizations == []  # no token flow with the challenge of another origin
    assert no_authorization(t.storage)
    assert not (tmp_path / "m.seal").exists()
    never_said(r, term, "bob-pass-5678", *t.issuer.issued)
    # the same fetch without the storage's 401: the redirect itself is fine
    r = fetch(ref, tmp_path / "m.seal", "--allow-http", docker=bob)
    assert r.code == 0, r.stderr


def test_a_401_from_another_origin_asked_directly_gets_no_credentials(token_registry, work, tmp_path):
    """An upload Location on another origin (here: storage, through a proxy that rewrites the registry's
    answer) that answers 401 with a challenge: alice's password goes to no realm it names."""
    t = token_registry
    proxy = HeaderProxy(t.registry.port)
    try:
        host = f"127.0.0.1:{proxy.port}"
        alice = config(tmp_path / "alice", {host: basic("alice", "alice-pass-1234")})
        proxy.add_fault(Fault("status", 202, method="POST", path="/blobs/uploads/",
                              headers={"Location": f"{t.storage.url}/uploads/elsewhere", "Content-Length": "0"}))
        t.storage.reset_counters()
        t.storage.add_fault(Fault("status", 401, path="/uploads/elsewhere", times=20, headers=_evil_challenge(t)))
        r = seal(work, f"oci://{host}/{REPO}:direct?part_size=1MiB&{FAST}", "--allow-http", docker=alice)
        assert r.code == 3 and "HTTP 401" in r.error(), r.stderr
        assert t.evil.authorizations == []
        assert no_authorization(t.storage)
        assert proxy.count("PUT", "/manifests/") == 0  # no tag
    finally:
        t.storage.faults.clear()
        proxy.close()


# ---- the token endpoint must be https unless --allow-http ------------------------------------------

def test_a_plain_http_token_endpoint_is_refused_without_allow_http(pki, work, tmp_path):
    """A TLS registry whose challenge names an http:// realm: exit 2 before the token endpoint hears a
    word (the password would cross the network in the clear)."""
    issuer = TokenIssuer(str(tmp_path))  # plain http
    issuer.users = {"alice": "alice-pass-1234"}
    issuer.grant("alice", REPO, "pull", "push")
    try:
        with Registry(pki=pki, token=issuer) as registry:
            alice = config(tmp_path / "alice", {registry.host: basic("alice", "alice-pass-1234")})
            term = tmp_path / "termination"
            r = fetch(f"oci://{registry.host}/{REPO}:1", tmp_path / "m.seal", "--ca", pki.ca, docker=alice,
                      termination=term)
            assert r.code == 2, r.stderr
            assert f"token endpoint {issuer.realm}: plain http is refused" in r.error()
            assert issuer.authorizations == []
            never_said(r, term, "alice-pass-1234")
            r = seal(work, f"oci://{registry.host}/{REPO}:1", "--ca", pki.ca, docker=alice)
            assert r.code == 2 and "plain http is refused" in r.error(), r.stderr
            assert issuer.authorizations == []
    finally:
        issuer.close()


# ---- Docker config auths: exact host[:port], never a prefix ------------------------------------------

@pytest.fixture(scope="module")
def basic_registry(pki, work):
    """TLS with htpasswd basic auth, holding a model pushed with the right credentials."""
    with Registry(pki=pki, htpasswd={"alice": "s3cret-pass-alice"}) as r:
        d = work / f"cfg-{uuid.uuid4().hex[:6]}"
        pushed = seal(work, f"oci://{r.host}/{REPO}:1", "--ca", pki.ca,
                      docker=config(d, {r.host: basic("alice", "s3cret-pass-alice")}))
        assert pushed.code == 0, pushed.stderr
        yield r


def test_docker_config_entries_match_the_exact_host_and_port(basic_registry, pki, tmp_path):
    """Entries for look-alike names hold the right password: were it sent, the registry would take it and
    the fetch would succeed. It is not: exit 3, the config has nothing for this registry."""
    r0 = basic_registry
    port = str(r0.port)
    good = basic("alice", "s3cret-pass-alice")
    lookalikes = ["127.0.0.1",  # the host without the port: another registry
                  f"127.0.0.1:{port[:-1]}",  # a port that is a prefix of the registry's
                  f"127.0.0.1:{port}0",  # a port the registry's is a prefix of
                  f"127.0.0.1:{port}.evil.example", f"127.0.0.10:{port}", f"27.0.0.1:{port}"]
    for i, name in enumerate(lookalikes):
        term = tmp_path / f"termination-{i}"
        r = fetch(f"oci://{r0.host}/{REPO}:1", tmp_path / "m.seal", "--ca", pki.ca, termination=term,
                  docker=config(tmp_path / f"c{i}", {name: good}))
        assert r.code == 3, (name, r.stderr)
        assert f"no Docker config (DOCKER_CONFIG, ~/.docker/config.json) has them for {r0.host}" in r.error(), name
        never_said(r, term, "s3cret-pass-alice")
    assert not (tmp_path / "m.seal").exists()
    # the spellings of the same registry that docker writes do match
    for i, name in enumerate([r0.host, f"https://{r0.host}", f"https://{r0.host}/v1/", f"http://{r0.host}/v2/"]):
        out = tmp_path / f"ok-{i}.seal"
        r = fetch(f"oci://{r0.host}/{REPO}:1", out, "--ca", pki.ca, docker=config(tmp_path / f"ok{i}", {name: good}))
        assert r.code == 0, (name, r.stderr)


@pytest.mark.parametrize("key,registry,matches", [
    ("reg.corp", "reg.corp.evil.io", False),
    ("reg.corp.evil.io", "reg.corp", False),
    ("https://reg.corp", "reg.corp.evil.io", False),
    ("reg.corp", "evilreg.corp", False),
    ("evilreg.corp", "reg.corp", False),
    ("reg.corp:5000", "reg.corp:50001", False),
    ("reg.corp:50001", "reg.corp:5000", False),
    ("reg.corp", "reg.corp:5000", False),
    ("reg.corp:5000", "reg.corp", False),
    ("reg.corp", "reg.corp", True),
    ("https://REG.corp:5000/v2/", "reg.corp:5000", True),
    ("https://index.docker.io/v1/", "registry-1.docker.io", True),
])
def test_docker_config_lookup_is_by_exact_name(tmp_path, key, registry, matches):
    """credentials.lookup alone (pure logic): every look-alike pair, both ways round."""
    config(tmp_path, {key: {"username": "u", "password": "p"}})
    found = credentials.lookup(registry, {"DOCKER_CONFIG": str(tmp_path)})
    assert (found is not None) == matches


# ---- an upload's body, or a refresh token, never follows a redirect --------------------------------

@pytest.fixture(scope="module")
def anon():
    with Registry() as r:
        yield r


@pytest.mark.parametrize("method", ["PATCH", "PUT"])
def test_an_upload_is_never_resent_to_where_a_redirect_points(anon, work, tmp_path, method):
    """A 307 to a chunk (PATCH) or to the final PUT: a redirect of a request with a body is refused
    (exit 2), so the ciphertext never reaches the origin it names, and no tag is written."""
    proxy = HeaderProxy(anon.port)
    elsewhere = ObjectServer({})
    try:
        proxy.add_fault(Fault("status", 307, method=method, path="/blobs/uploads/", times=20,
                              headers={"Location": f"{elsewhere.url}/collect", "Content-Length": "0"}))
        ref = f"oci://127.0.0.1:{proxy.port}/{REPO}:{method.lower()}?part_size=1MiB&{FAST}"
        r = seal(work, ref, "--allow-http", docker=work / "empty")
        assert r.code == 2 and "unexpected HTTP 307 answer" in r.error(), r.stderr
        assert elsewhere.requests == []  # nothing went there, body or not
        assert proxy.count("PUT", "/manifests/") == 0
        assert proxy.count("DELETE", "/blobs/uploads/") == 1  # the upload was cancelled
    finally:
        elsewhere.close()
        proxy.close()


def test_a_refresh_token_is_never_resent_to_where_a_redirect_points(work, tmp_path):
    """The OAuth2 refresh token goes in a POST's body to the token endpoint; a 307 there names another
    origin: refused (exit 2), and the token never reaches it nor a message."""
    issuer = TokenIssuer(str(tmp_path))
    issuer.refresh_tokens = {"refresh-token-for-bob-9876": "bob"}
    issuer.grant("bob", REPO, "pull")
    front = HeaderProxy(issuer.port)  # the realm the registry names: the issuer behind a proxy
    elsewhere = ObjectServer({})
    realm = SimpleNamespace(realm=f"{front.url}/token", service=issuer.service, issuer=issuer.issuer,
                            cert_path=issuer.cert_path)
    try:
        with Registry(token=realm) as registry:
            front.add_fault(Fault("status", 307, method="POST", times=20,
                                  headers={"Location": f"{elsewhere.url}/token", "Content-Length": "0"}))
            bob = config(tmp_path / "bob", {registry.host: {"identitytoken": "refresh-token-for-bob-9876"}})
            term = tmp_path / "termination"
            r = fetch(f"oci://{registry.host}/{REPO}:1?{FAST}", tmp_path / "m.seal", "--allow-http", docker=bob,
                      termination=term)
            assert r.code == 2 and "unexpected HTTP 307 answer" in r.error(), r.stderr
            assert front.count("POST") == 1 and elsewhere.requests == []
            assert not elsewhere.saw("refresh-token-for-bob-9876")
            never_said(r, term, "refresh-token-for-bob-9876")
    finally:
        elsewhere.close()
        front.close()
        issuer.close()


# ---- the token endpoint's user info and query never reach a message ---------------------------------

def test_the_realms_user_info_and_query_are_never_repeated(work, tmp_path):
    """The challenge's realm comes from the registry: its user info is refused without repeating it
    (exit 4), and its query (a signature, say) is left out of every message about the token endpoint."""
    issuer = TokenIssuer(str(tmp_path))
    issuer.add_fault(Fault("status", 500, times=100))
    try:
        for realm, code, says in (
                (f"http://tok-user:realm-password-1@127.0.0.1:{issuer.port}/token", 4, "no usable realm"),
                (f"{issuer.realm}?X-Sig=realm-signature-2&token=realm-token-3", 5,
                 f"token endpoint {issuer.realm} unavailable after 2 attempts: HTTP 500")):
            spec = SimpleNamespace(realm=realm, service=issuer.service, issuer=issuer.issuer,
                                   cert_path=issuer.cert_path)
            with Registry(token=spec) as registry:
                term = tmp_path / "termination"
                r = fetch(f"oci://{registry.host}/{REPO}:1?{FAST}", tmp_path / "m.seal", "--allow-http",
                          "--retries", "2", docker=work / "empty", termination=term)
                assert r.code == code and says in r.error(), r.stderr
                never_said(r, term, "realm-password-1", "tok-user", "realm-signature-2", "realm-token-3")
        assert issuer.count() == 2  # the realm with user info was never asked
    finally:
        issuer.close()


# ---- what the registry and its token endpoint answer is checked ---------------------------------------

def test_a_token_that_is_not_one_is_refused(token_registry, work, tmp_path):
    """The token goes into an Authorization header: visible ASCII, no spaces, at most 16 KiB. Anything
    else in the endpoint's answer is no token (exit 4), and none of it is sent anywhere."""
    t = token_registry
    host = t.registry.host
    bob = config(tmp_path / "bob", {host: basic("bob", "bob-pass-5678")})
    issued = t.issuer.sign
    try:
        for bad in ("token\r\nX-Injected: yes", "two words", "x" * 16385, ""):
            t.issuer.sign = lambda subject, access, bad=bad: bad  # the endpoint answers this as its token
            r = fetch(f"oci://{host}/{REPO}:1?{FAST}", tmp_path / "m.seal", "--allow-http", docker=bob)
            assert r.code == 4, (bad[:20], r.stderr)
            assert r.error() == f"token endpoint {t.issuer.realm}: the answer holds no token", r.error()
            assert "X-Injected" not in r.stderr
    finally:
        t.issuer.sign = issued
    assert not (tmp_path / "m.seal").exists()


def test_a_registry_token_from_the_docker_config_is_sent_as_the_bearer(token_registry, work, tmp_path):
    """`registrytoken` is a bearer token for the registry itself: sent from the first request, so the
    token endpoint is never asked."""
    t = token_registry
    host = t.registry.host
    alice = config(tmp_path / "alice", {host: basic("alice", "alice-pass-1234")})
    assert seal(work, f"oci://{host}/{REPO}:1", "--allow-http", docker=alice).code == 0
    token = t.issuer.sign("bob", [{"type": "repository", "name": REPO, "actions": ["pull"]}])
    asked = len(t.issuer.authorizations)
    r = fetch(f"oci://{host}/{REPO}:1", tmp_path / "m.seal", "--allow-http",
              docker=config(tmp_path / "token", {host: {"registrytoken": token}}))
    assert r.code == 0, r.stderr
    assert len(t.issuer.authorizations) == asked  # never asked for another
    assert token not in r.stderr


@pytest.mark.parametrize("content,says", [
    (b"{" + b" " * (1 << 20) + b"}", "larger than 1048576 bytes"),
    (json.dumps({"auths": {"reg.corp": {"auth": base64.b64encode(b"no-colon-here").decode()}}}).encode(),
     "'auth' for reg.corp is not base64 of user:password"),
    (json.dumps({"auths": {"reg.corp": {"username": 7, "password": "p"}}}).encode(), "'username' of an auths entry"),
    (json.dumps({"auths": ["reg.corp"]}).encode(), "expected an object with an 'auths' object"),
    (json.dumps({"auths": {"reg.corp": "user:pa55"}}).encode(), "the auths entry for reg.corp is not an object"),
], ids=["over 1 MiB", "auth without a colon", "username a number", "auths a list", "entry a string"])
def test_a_malformed_docker_config_is_a_usage_error_naming_the_file(tmp_path, content, says):
    """Pure logic: each way a Docker config is unusable, one line naming the file, never its content."""
    from modelseal.errors import UsageError

    (tmp_path / "config.json").write_bytes(content)
    with pytest.raises(UsageError) as e:
        credentials.lookup("reg.corp", {"DOCKER_CONFIG": str(tmp_path)})
    assert says in str(e.value) and str(tmp_path / "config.json") in str(e.value)
    assert "\n" not in str(e.value) and "no-colon-here" not in str(e.value) and "pa55" not in str(e.value)


def test_a_manifest_over_the_cap_is_refused(anon, work, tmp_path):
    """A registry (or a cache in front of it) answering a manifest of more than 4 MiB: exit 4, read no
    further than the cap."""
    proxy = HeaderProxy(anon.port)
    try:
        proxy.add_fault(Fault("status", 200, method="GET", path="/manifests/", times=20,
                              body=b'{"schemaVersion": 2, "layers": []' + b" " * (4 << 20) + b"}",
                              headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"}))
        r = fetch(f"oci://127.0.0.1:{proxy.port}/{REPO}:big?{FAST}", tmp_path / "m.seal", "--allow-http",
                  docker=work / "empty")
        assert r.code == 4 and "answer is larger than 4194304 bytes" in r.error(), r.stderr
        assert not (tmp_path / "m.seal").exists()
    finally:
        proxy.close()


@pytest.mark.parametrize("where", ["/blobs/uploads/", "/manifests/"])
def test_a_registry_that_stored_another_digest_fails_the_push(anon, work, tmp_path, where):
    """The registry's Docker-Content-Digest names what it stored: another digest than ours for the blob
    or the manifest is exit 4, not a push reported as done."""
    proxy = HeaderProxy(anon.port)
    try:
        proxy.add_fault(Fault("status", 201, method="PUT", path=where, times=20,
                              headers={"Docker-Content-Digest": "sha256:" + "0" * 64, "Location": "/v2/"}))
        r = seal(work, f"oci://127.0.0.1:{proxy.port}/{REPO}:lied?{FAST}", "--allow-http", docker=work / "empty")
        assert r.code == 4, r.stderr
        assert f"the registry stored sha256:{'0' * 64}, not sha256:" in r.error()
        assert not any(x.get("event") == "pushed" for x in r.logs())
    finally:
        proxy.close()


def test_an_upload_chunk_is_at_least_a_mib(anon, work):
    r = seal(work, f"oci://{anon.host}/{REPO}:small?part_size=512KiB", "--allow-http", docker=work / "empty")
    assert r.code == 2 and "part_size must be at least 1048576 bytes for an OCI upload" in r.error(), r.stderr


def test_an_upload_status_beyond_what_was_sent_fails_the_push(anon, work):
    """A chunk's PATCH fails; asked where the upload stands, the registry claims more bytes than were ever
    sent: exit 4 (the blob would not be ours), the upload cancelled, no tag."""
    proxy = HeaderProxy(anon.port)
    try:
        proxy.add_fault(Fault("status", 500, method="PATCH"),
                        Fault("status", 204, method="GET", path="/blobs/uploads/", headers={
                            "Range": "0-99999999", "Location": f"/v2/{REPO}/blobs/uploads/claimed"}))
        r = seal(work, f"oci://127.0.0.1:{proxy.port}/{REPO}:claimed?part_size=1MiB&{FAST}", "--allow-http",
                 docker=work / "empty")
        assert r.code == 4, r.stderr
        assert "the registry holds 100000000 bytes of the upload, expected 0 to 1048576" in r.error()
        assert proxy.count("PUT", "/manifests/") == 0
    finally:
        proxy.close()
