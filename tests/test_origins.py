"""Credentials stay with their origin; user info and odd endpoint URLs are refused without being echoed.

Two listeners on 127.0.0.1 are two origins (scheme, host, port); so are
127.0.0.1 and localhost on the same port. The "elsewhere" server records every
request's path, headers and body, so a test can say that it never saw the
token, the JWT or the client certificate, not just that the call failed.
"""
# ruff: noqa: F811

from __future__ import annotations

import base64
import json
import os
import ssl
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from conftest import modelseal
from modelseal import aws
from modelseal.errors import DeniedError, UsageError
from modelseal.sealfile import WrappedKey
from modelseal.keys import open_key
from modelseal.sources import open_source
from modelseal.connection import Connection
from modelseal.uri import URI
from support.faults import Fault
from support.fixtures import fast
from support.objects import CDHServer, ObjectServer
from support.processes import write_file
from support.vault import VaultServer

KEY = bytes(range(1, 33))
TOKEN = "hvs.CAESIsecret-vault-token"
JWT = "eyJhbGciOiJSUzI1NiJ9.secret-service-account-jwt.sig"
BEARER = "bearer-secret-7f3a"
REDIRECTS = [301, 302, 303, 307, 308]


def _optional_client_cert(pki) -> ssl.SSLContext:
    ctx = pki.server_context()
    ctx.verify_mode = ssl.CERT_OPTIONAL  # asks for a client certificate and records what it gets
    ctx.load_verify_locations(pki.ca)
    return ctx


@pytest.fixture
def elsewhere(pki):
    """Another origin, serving what a stolen credential would be worth; it must never see one."""
    srv = ObjectServer({"/k": KEY, "/m": b"model" * 1000}, tls=_optional_client_cert(pki))
    yield srv
    srv.close()


def _never_saw_credentials(srv) -> None:
    for secret in (TOKEN, JWT, BEARER):
        assert not srv.saw(secret), f"{secret} reached another origin"
    for _, _, headers, _ in srv.seen:
        assert not {k.lower() for k in headers} & {"authorization", "x-vault-token"}
    assert not any(srv.peer_certs), "the client certificate was presented to another origin"


# --------------------------------------------------------------------------- key services: no redirects

@pytest.fixture
def vault(pki):
    srv = VaultServer(tls=pki.server_context())
    srv.put_secret("secret", "model", {"key": base64.b64encode(KEY).decode()})
    srv.add_transit_key("k")
    with srv.lock:
        srv.tokens.add(TOKEN)
        srv.roles["reader"] = JWT
    yield srv
    srv.close()


@pytest.mark.parametrize("status", REDIRECTS)
@pytest.mark.parametrize("call", ["login", "kv", "transit"])
def test_vault_credentials_never_follow_a_redirect(vault, elsewhere, pki, shm_dir, status, call):
    jwt = write_file(os.path.join(shm_dir, "jwt"), JWT)
    token = write_file(os.path.join(shm_dir, "token"), TOKEN)
    base = f"127.0.0.1:{vault.port}"
    path = {"login": "/v1/auth/kubernetes/login", "kv": "/v1/secret/data/model", "transit": "/v1/transit/"}[call]
    vault.add_fault(Fault("status", status=status, path=path, headers={"Location": elsewhere.url + path}))
    if call == "login":
        source = open_key(f"vault://{base}/secret/model?role=reader&jwt_file={jwt}", fast(ca=pki.ca))
    elif call == "kv":
        source = open_key(f"vault://{base}/secret/model", fast(ca=pki.ca, token_file=token))
    else:
        source = open_key(f"vault-transit://{base}/transit/k", fast(ca=pki.ca, token_file=token))
    with pytest.raises(UsageError, match="redirect"):
        if call == "transit":
            source.data_key(WrappedKey("vault-transit", "transit/k", b"vault:v1:AAAA", {}))
        else:
            source.data_key()
    assert elsewhere.seen == [] and vault.count(path=path) == 1  # not followed, not retried
    _never_saw_credentials(elsewhere)


def test_vault_redirect_to_itself_is_refused_too(vault, pki, shm_dir):
    """No redirects at all from a key service: a 307 to the same origin is an error as well."""
    token = write_file(os.path.join(shm_dir, "token"), TOKEN)
    vault.add_fault(Fault("status", status=307, path="/v1/secret/data/model",
                          headers={"Location": f"{vault.url}/v1/secret/data/model"}))
    with pytest.raises(UsageError, match="redirect"):
        open_key(f"vault://127.0.0.1:{vault.port}/secret/model", fast(ca=pki.ca, token_file=token)).data_key()
    assert open_key(f"vault://127.0.0.1:{vault.port}/secret/model?field=key",
                    fast(ca=pki.ca, token_file=token)).data_key() == KEY


@pytest.mark.parametrize("status", REDIRECTS)
def test_https_key_server_redirect_is_refused(elsewhere, pki, shm_dir, status):
    srv = ObjectServer({"/k": KEY}, tls=pki.server_context(), token=BEARER)
    try:
        srv.add_fault(Fault("status", status=status, headers={"Location": elsewhere.url + "/k"}))
        token = write_file(os.path.join(shm_dir, "t"), BEARER)
        with pytest.raises(UsageError, match="redirect"):
            open_key(srv.url + "/k", fast(ca=pki.ca, token_file=token, cert=pki.client_cert,
                                          cert_key=pki.client_key)).data_key()
        assert elsewhere.seen == []
        assert open_key(srv.url + "/k", fast(ca=pki.ca, token_file=token)).data_key() == KEY
    finally:
        srv.close()


def test_cdh_redirect_is_refused(elsewhere):
    cdh = CDHServer()
    try:
        cdh.put("repo/key/tag", KEY)
        cdh.add_fault(Fault("status", status=307, headers={"Location": elsewhere.url + "/k"}))
        with pytest.raises(UsageError, match="redirect"):
            open_key("kbs:///repo/key/tag", fast(cdh_url=cdh.url)).data_key()
        assert elsewhere.seen == []
        assert open_key("kbs:///repo/key/tag", fast(cdh_url=cdh.url)).data_key() == KEY
    finally:
        cdh.close()


# --------------------------------------------------------------------------- downloads: redirects, no credentials

@pytest.fixture
def origin_server(pki, elsewhere):
    """The URL we are given: token required, redirecting to another origin (like a presigned URL)."""
    srv = ObjectServer({"/own": b"own" * 100}, tls=pki.server_context(), token=BEARER,
                       redirects={"/m": elsewhere.url + "/m", "/loop": "/loop",
                                  "/userinfo": f"https://u:{BEARER}@127.0.0.1:{elsewhere.port}/m",
                                  "/ftp": "ftp://127.0.0.1/m", "/file": "file:///etc/passwd"})
    yield srv
    srv.close()


def _source_connection(pki, shm_dir, **kw) -> Connection:
    token = write_file(os.path.join(shm_dir, "bearer"), BEARER)
    return fast(ca=pki.ca, token_file=token, cert=pki.client_cert, cert_key=pki.client_key, **kw)


def test_download_redirect_drops_token_and_certificate(origin_server, elsewhere, pki, shm_dir):
    with open_source(origin_server.url + "/m", _source_connection(pki, shm_dir)).open() as s:
        assert s.read() == b"model" * 1000
    assert elsewhere.count("GET", "/m") == 1
    _never_saw_credentials(elsewhere)
    assert origin_server.saw(BEARER)  # it did go to the origin it is for


@pytest.mark.parametrize("spelling", ["https://localhost:{port}/m", "//localhost:{port}/m",
                                      "HTTPS://LOCALHOST:{port}/m", " https://127.0.0.1:{port}/m ",
                                      "https://127.0.0.1:{port}/x/../m#fragment"])
def test_download_redirect_spellings_all_leave_credentials_home(origin_server, elsewhere, pki, shm_dir, spelling):
    origin_server.redirects["/spelled"] = spelling.format(port=elsewhere.port)
    with open_source(origin_server.url + "/spelled", _source_connection(pki, shm_dir)).open() as s:
        assert s.read() == b"model" * 1000
    _never_saw_credentials(elsewhere)


def test_cookies_set_by_the_origin_do_not_travel(origin_server, elsewhere, pki, shm_dir):
    """Cookies ignore ports: one set by 127.0.0.1:A would go to 127.0.0.1:B. None is kept at all."""
    origin_server.add_fault(Fault("status", status=302, path="/c", headers={
        "Location": elsewhere.url + "/m", "Set-Cookie": f"session={BEARER}; Path=/"}))
    with open_source(origin_server.url + "/c", _source_connection(pki, shm_dir)).open() as s:
        assert s.read() == b"model" * 1000
    _never_saw_credentials(elsewhere)
    assert all("Cookie" not in h for _, _, h, _ in elsewhere.seen + origin_server.seen)


def test_download_redirect_back_home_gets_the_token_again(origin_server, elsewhere, pki, shm_dir):
    elsewhere.redirects["/back"] = origin_server.url + "/own"
    origin_server.redirects["/away"] = elsewhere.url + "/back"
    with open_source(origin_server.url + "/away", _source_connection(pki, shm_dir)).open() as s:
        assert s.read() == b"own" * 100  # /own needs the token: it was sent at home, only there
    _never_saw_credentials(elsewhere)


def test_same_server_under_another_host_name_is_another_origin(origin_server, pki, shm_dir):
    """127.0.0.1:P -> localhost:P is the same server but not the same origin: no token there."""
    origin_server.redirects["/renamed"] = f"https://localhost:{origin_server.port}/own"
    with pytest.raises(DeniedError):
        open_source(origin_server.url + "/renamed", _source_connection(pki, shm_dir)).open()
    renamed = [h for _, p, h, _ in origin_server.seen if p == "/own"]
    assert renamed and all("Authorization" not in h for h in renamed)


@pytest.mark.parametrize("path, pattern", [
    ("/userinfo", "user info"), ("/ftp", "not http"), ("/file", "not http"), ("/loop", "more than 5 redirects"),
])
def test_download_redirect_refusals(origin_server, elsewhere, pki, shm_dir, path, pattern):
    with pytest.raises(UsageError, match=pattern) as e:
        open_source(origin_server.url + path, _source_connection(pki, shm_dir)).open()
    assert BEARER not in str(e.value)
    assert elsewhere.seen == []


# --------------------------------------------------------------------------- user info in URIs (exit 2, never echoed)

SECRET = "s3cr3tPASS"
AKID = "AKIAIOSFODNN7EXAMPLE"
KEY_URIS = [
    f"aws-kms://{AKID}:{SECRET}@alias/model",
    f"secretsmanager://{AKID}:{SECRET}@model-key",
    f"vault://reader:{SECRET}@127.0.0.1:8200/secret/model",
    f"vault-transit://reader:{SECRET}@127.0.0.1:8200/transit/k",
    f"https://user:{SECRET}@127.0.0.1:1/key",
    f"https://{SECRET}@127.0.0.1:1/key",  # a token as the user name
    f"http://user:{SECRET}@127.0.0.1:1/key",
    f"kbs://user:{SECRET}@kbs.example/repo/key/tag",
    f"file://user:{SECRET}@localhost/etc/key",
]
SOURCE_URIS = [
    f"s3://{AKID}:{SECRET}@bucket/model.seal",
    f"https://user:{SECRET}@127.0.0.1:1/model.seal",
    f"file://user:{SECRET}@localhost/model.seal",
]


@pytest.mark.parametrize("uri", KEY_URIS + SOURCE_URIS)
def test_user_info_is_refused_in_the_library(uri):
    with pytest.raises(UsageError) as e:
        URI.parse(uri)
    assert SECRET not in str(e.value) and AKID not in str(e.value)


def _run_quietly(shm, *args: str):
    term = shm / "termination-log"
    term.write_text("")
    r = modelseal(*args, env={"MODELSEAL_TERMINATION_LOG": str(term), "AWS_EC2_METADATA_DISABLED": "true"})
    return r, term.read_text()


@pytest.mark.parametrize("uri", KEY_URIS)
def test_user_info_in_a_key_uri_exits_2_and_is_not_echoed(shm, uri):
    for args in (("fetch-key", "--key-uri", uri, "-o", str(shm / "k")),
                 ("decrypt", "--in", "-", "--key-uri", uri, "-o", str(shm / "o"))):
        r, term = _run_quietly(shm, *args)
        assert r.code == 2, r.stderr
        for text in (r.stderr, r.stdout.decode(errors="replace"), term):
            assert SECRET not in text and AKID not in text
        assert json.loads(term)["category"] == "usage"


@pytest.mark.parametrize("uri", SOURCE_URIS)
def test_user_info_in_a_source_or_output_exits_2_and_is_not_echoed(shm, uri):
    (shm / "key").write_bytes(KEY)
    runs = [("fetch-model", "--source", uri, "-o", str(shm / "m.seal")),
            ("run", "--source", uri, "--key", str(shm / "key"), "-o", str(shm / "model"))]
    if uri.startswith("s3://"):
        (shm / "src").write_bytes(b"x")
        runs.append(("seal", str(shm / "src"), "-o", uri, "--key", str(shm / "key")))
    for args in runs:
        r, term = _run_quietly(shm, *args)
        assert r.code == 2, (args[0], r.stderr)
        for text in (r.stderr, r.stdout.decode(errors="replace"), term):
            assert SECRET not in text and AKID not in text
    assert sorted(os.listdir(shm)) == sorted(["key", "termination-log"] + (["src"] if uri.startswith("s3") else []))


def test_user_info_in_an_endpoint_in_the_query_is_refused(aws_env):
    for uri in (f"aws-kms://alias/k?endpoint_url=http://u:{SECRET}@127.0.0.1:9",
                "secretsmanager://k?endpoint_url=http://127.0.0.1:9%23@evil.invalid",
                f"kbs:///repo/key/tag?cdh_url=http://u:{SECRET}@127.0.0.1:8006"):
        with pytest.raises(UsageError) as e:
            source = open_key(uri, Connection())
            source.data_key(WrappedKey("aws-kms", "alias/k", b"x", {"modelseal": "v1"}))
        assert SECRET not in str(e.value)


def test_secret_names_with_an_at_sign_are_percent_encoded(moto, aws_env):
    import boto3

    client = boto3.client("secretsmanager", endpoint_url=moto.url, region_name="us-east-1")
    client.create_secret(Name="team@example/model", SecretString=base64.b64encode(KEY).decode())
    assert open_key("secretsmanager://team%40example/model", fast(endpoint_url=moto.url)).data_key() == KEY


# --------------------------------------------------------------------------- a secret holding "/" (AWS keys do)

#: A URL parser ends the authority at the first "/", so `s3://AKID:abc/def@bucket/key` has no user info for it:
#: host AKID, port "abc", path "/def@bucket/key". Each piece must stay out of every output.
SLASHED = "Zq9Ab/Kx7Yw+Pv3/Tn5Rm"
PIECES = (AKID, *SLASHED.split("/"))
SLASHED_SOURCES = [
    f"s3://{AKID}:{SLASHED}@bucket/model.seal",
    f"https://{AKID}:{SLASHED}@127.0.0.1:1/model.seal",
    f"oci://{AKID}:{SLASHED}@127.0.0.1:1/models/m:1",
    f"file://{AKID}:{SLASHED}@localhost/model.seal",
]
SLASHED_KEYS = [
    f"aws-kms://{AKID}:{SLASHED}@alias/model",
    f"secretsmanager://{AKID}:{SLASHED}@model-key",
    f"vault://{AKID}:{SLASHED}@127.0.0.1:8200/secret/model",
    f"vault-transit://{AKID}:{SLASHED}@127.0.0.1:8200/transit/k",
    f"https://{AKID}:{SLASHED}@127.0.0.1:1/key",
]


def _no_piece(*texts: str) -> None:
    for text in texts:
        for piece in PIECES:
            assert piece not in text, f"{piece!r} leaked: {text[-600:]}"


@pytest.mark.parametrize("uri", SLASHED_SOURCES + SLASHED_KEYS)
def test_user_info_whose_secret_holds_a_slash_is_refused_in_the_library(uri):
    with pytest.raises(UsageError) as e:
        URI.parse(uri)
    _no_piece(str(e.value))


@pytest.mark.parametrize("uri", SLASHED_SOURCES)
def test_user_info_whose_secret_holds_a_slash_exits_2_and_is_never_shown(shm, uri):
    (shm / "key").write_bytes(KEY)
    (shm / "src").write_bytes(b"x")
    runs = [("fetch-model", "--source", uri, "-o", str(shm / "m.seal")),
            ("run", "--source", uri, "--key", str(shm / "key"), "-o", str(shm / "model")),
            ("fetch-key", "--key-uri", "aws-kms://alias/k", "--source", uri, "-o", str(shm / "k"))]
    if not uri.startswith(("https", "file")):
        runs.append(("seal", str(shm / "src"), "-o", uri, "--key", str(shm / "key")))
    for args in runs:
        r, term = _run_quietly(shm, *args)
        assert r.code == 2, (args[0], r.stderr)
        assert json.loads(term)["category"] == "usage"
        _no_piece(r.stderr, r.stdout.decode(errors="replace"), term)
    assert sorted(os.listdir(shm)) == ["key", "src", "termination-log"]


@pytest.mark.parametrize("uri", SLASHED_KEYS)
def test_key_uri_whose_secret_holds_a_slash_exits_2_and_is_never_shown(shm, uri):
    for args in (("fetch-key", "--key-uri", uri, "-o", str(shm / "k")),
                 ("decrypt", "--in", "-", "--key-uri", uri, "-o", str(shm / "o"))):
        r, term = _run_quietly(shm, *args)
        assert r.code == 2, r.stderr
        _no_piece(r.stderr, r.stdout.decode(errors="replace"), term)
    assert os.listdir(shm) == ["termination-log"]


@pytest.mark.parametrize("endpoint", [f"http://{AKID}:{SLASHED}@127.0.0.1:9",
                                      f"http://{AKID}:12/{SLASHED}@127.0.0.1:9"])
def test_endpoint_url_whose_secret_holds_a_slash_is_refused(aws_env, endpoint):
    with pytest.raises(UsageError) as e:
        aws.client("s3", Connection(endpoint_url=endpoint, allow_http=True, extra={"region": "us-east-1"}))
    _no_piece(str(e.value))


def test_any_user_info_quoted_in_a_log_line_or_the_termination_message_is_redacted():
    """The net under every message: one we did not word (an SDK's, a parser's) may quote a URI whole."""
    import io

    from modelseal.log import Log, termination_line

    quoted = [f"s3://{AKID}:{SLASHED}@bucket/m.seal", f"https://user:{SECRET}@host/x",
              f"oci://{AKID}:{SLASHED}@127.0.0.1:5000/r:1", f"vault://u:{SECRET}@h:8200/s"]
    for uri in quoted:
        stream = io.StringIO()
        Log("test", stream).error("failed", error=f"SomeSDKError: could not reach {uri}: refused",
                                  nested={"uri": [uri]})
        line = termination_line({"error": f"{uri} " + "x" * 5000, "uri": uri})
        for text in (stream.getvalue(), line):
            _no_piece(text)
            assert SECRET not in text and "[redacted]@" in text
    # a registry with a port and a digest reference is not user info: shown, and accepted
    pinned = "oci://127.0.0.1:5000/models/m@sha256:" + "a" * 64
    stream = io.StringIO()
    Log("test", stream).info("source", uri=pinned)
    assert pinned in stream.getvalue()
    assert URI.parse(pinned).netloc == "127.0.0.1:5000"


# --------------------------------------------------------------------------- endpoint URLs: parsed once

BAD_ENDPOINTS = [
    "http://evil.invalid#@127.0.0.1:9",  # urllib3 and botocore connect to evil.invalid
    "http://evil.invalid?@127.0.0.1:9",
    "http://evil.invalid\\@127.0.0.1:9",
    f"http://user:{SECRET}@127.0.0.1:9",
    "http://127.0.0.1:9@evil.invalid",
    "http://127.0.0.1:9?x=1",
    "http://127.0.0.1:9#",
    " http://127.0.0.1:9",
    "http://127.0.0.1:9\n",
    "http://127.0.0.1:9/\tx",
    "http://127.0.0.1:99999",
    "http://127.0.0.1:port",
    "http://evil.invalid:9",  # plain http off loopback without allow_http
    "http://localhost.evil.invalid:9",
    "http://127.0.0.1.evil.invalid:9",
    "http://0x7f.0.0.1:9",
    "http://2130706433:9",
    "ftp://127.0.0.1:9",
    "127.0.0.1:9",
    "http://",
]
GOOD_ENDPOINTS = ["http://127.0.0.1:9", "http://localhost:9", "http://[::1]:9", "https://s3.example.com",
                  "https://minio.example.com:9000/base", "http://127.0.0.1:9/"]


@pytest.mark.parametrize("endpoint", BAD_ENDPOINTS)
def test_bad_endpoint_url_is_refused(aws_env, endpoint):
    for service in ("s3", "kms", "secretsmanager"):
        with pytest.raises(UsageError) as e:
            aws.client(service, Connection(endpoint_url=endpoint, extra={"region": "us-east-1"}))
        assert SECRET not in str(e.value)


@pytest.mark.parametrize("variable, service", [
    ("AWS_ENDPOINT_URL", "s3"), ("AWS_ENDPOINT_URL_S3", "s3"), ("AWS_ENDPOINT_URL_KMS", "kms"),
    ("AWS_ENDPOINT_URL_SECRETS_MANAGER", "secretsmanager"),  # botocore's name, with the underscore
])
@pytest.mark.parametrize("endpoint", ["http://evil.invalid:9", "http://evil.invalid#@127.0.0.1:9",
                                      f"http://u:{SECRET}@127.0.0.1:9"])
def test_bad_endpoint_from_the_environment_is_refused(aws_env, monkeypatch, variable, service, endpoint):
    monkeypatch.setenv(variable, endpoint)
    with pytest.raises(UsageError) as e:
        aws.client(service, Connection(extra={"region": "us-east-1"}))
    assert SECRET not in str(e.value)


def test_bad_endpoint_from_the_config_file_is_refused(aws_env, monkeypatch, shm_dir):
    """What botocore resolved is checked too, whatever its source (here the config file's services section)."""
    config = write_file(os.path.join(shm_dir, "config"), "[default]\nservices = evil\n\n[services evil]\n"
                        "secrets_manager =\n  endpoint_url = http://evil.invalid:9\n")  # botocore's name
    monkeypatch.setenv("AWS_CONFIG_FILE", config)
    with pytest.raises(UsageError):
        aws.client("secretsmanager", Connection(extra={"region": "us-east-1"}))


@pytest.mark.parametrize("endpoint", GOOD_ENDPOINTS)
def test_good_endpoint_urls_pass(aws_env, endpoint):
    assert aws.client("s3", Connection(endpoint_url=endpoint, extra={"region": "us-east-1"})).meta.endpoint_url


def test_endpoint_url_with_allow_http(aws_env):
    assert aws.client("s3", Connection(endpoint_url="http://s3.example.com", allow_http=True,
                                    extra={"region": "us-east-1"}))
    with pytest.raises(UsageError):  # allow_http does not make a fragment acceptable
        aws.client("s3", Connection(endpoint_url="http://s3.example.com#@127.0.0.1", allow_http=True))


@pytest.mark.parametrize("cdh_url", BAD_ENDPOINTS + [""])
def test_bad_cdh_url_is_refused(cdh_url):
    with pytest.raises(UsageError) as e:
        open_key("kbs:///repo/key/tag", Connection(cdh_url=cdh_url))
    assert SECRET not in str(e.value)


@pytest.mark.parametrize("netloc", ["127.0.0.1:99999", "127.0.0.1:x"])
def test_bad_vault_address_is_refused(netloc, shm_dir):
    token = write_file(os.path.join(shm_dir, "t"), TOKEN)
    with pytest.raises(UsageError, match="port"):
        open_key(f"vault://{netloc}/secret/model", Connection(token_file=token))


def test_endpoint_url_on_the_command_line_exits_2_and_is_not_echoed(shm):
    r, term = _run_quietly(shm, "fetch-model", "--source", "s3://bucket/m.seal", "-o", str(shm / "m"),
                           "--endpoint-url", f"http://admin:{SECRET}@127.0.0.1:9")
    assert r.code == 2 and SECRET not in r.stderr + term
    r, term = _run_quietly(shm, "fetch-model", "--source", "s3://bucket/m.seal", "-o", str(shm / "m"),
                           "--endpoint-url", "http://evil.invalid#@127.0.0.1:9")
    assert r.code == 2 and "fragment" in r.error()


@pytest.mark.parametrize("content", [b"first-half\nsecond-half", b"first-half second-half",
                                     "first-half\u00e9second-half".encode()])
def test_a_token_file_that_is_not_one_token_exits_2_without_quoting_it(shm, pki, content):
    """It would go into an HTTP header: http.client's own error quotes the header (and exits 1)."""
    srv = ObjectServer({"/k": KEY}, tls=pki.server_context(), token=BEARER)
    try:
        token = shm / "token"
        token.write_bytes(content)
        r, term = _run_quietly(shm, "fetch-key", "--key-uri", srv.url + "/k", "--ca", str(pki.ca),
                               "--token-file", str(token), "-o", str(shm / "k"))
        assert r.code == 2, r.stderr
        assert "not a token" in json.loads(term)["error"]
        for text in (r.stderr, r.stdout.decode(errors="replace"), term):
            assert "first-half" not in text and "second-half" not in text
        assert not (shm / "k").exists() and srv.seen == []
    finally:
        srv.close()
