"""Key sources against real servers on 127.0.0.1: a TLS key server, moto (KMS, Secrets Manager),
a Vault-API server and a Confidential-Data-Hub-API server."""
# ruff: noqa: F811

from __future__ import annotations

import base64
import json
import os
import sys
import uuid

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # tests/support, whatever the import mode

from modelseal.connection import Connection
from modelseal.errors import DeniedError, IntegrityError, UnavailableError, UsageError
from modelseal.sealfile import WrappedKey
from modelseal.keys import open_key
from support.faults import Fault, FaultProxy
from support.fixtures import fast
from support.objects import CDHServer, ObjectServer
from support.processes import write_file
from support.vault import VaultServer

KEY = bytes(range(1, 33))


# --------------------------------------------------------------------------- https key server

@pytest.fixture
def keyserver(pki):
    srv = ObjectServer({
        "/raw": KEY,
        "/b64": base64.b64encode(KEY) + b"\n",
        "/hex": KEY.hex().encode(),
        "/json": json.dumps({"data": {"key": base64.b64encode(KEY).decode()}}).encode(),
        "/short": KEY[:16],
        "/huge": b"A" * (2 << 20),
    }, tls=pki.server_context())
    yield srv
    srv.close()


@pytest.mark.parametrize("path", ["/raw", "/b64", "/hex", "/json?field=data.key", "/b64?encoding=base64",
                                  "/raw?encoding=raw", "/hex?encoding=hex"])
def test_https_key_encodings(keyserver, pki, path):
    assert open_key(keyserver.url + path, fast(ca=pki.ca)).data_key() == KEY
    # our own query parameters never reach the server
    assert keyserver.requests[-1][1] == path.split("?")[0]


def test_https_key_bad_material(keyserver, pki):
    with pytest.raises(IntegrityError):
        open_key(keyserver.url + "/short?encoding=raw", fast(ca=pki.ca)).data_key()
    with pytest.raises(IntegrityError):
        open_key(keyserver.url + "/json?field=data.nope", fast(ca=pki.ca)).data_key()
    with pytest.raises(IntegrityError):  # capped answer size
        open_key(keyserver.url + "/huge", fast(ca=pki.ca)).data_key()
    with pytest.raises(IntegrityError):
        open_key(keyserver.url + "/b64?encoding=hex", fast(ca=pki.ca)).data_key()


def test_https_key_bearer_token(pki, shm_dir, capsys):
    token = "tok-" + uuid.uuid4().hex
    srv = ObjectServer({"/k": KEY}, tls=pki.server_context(), token=token)
    try:
        good = write_file(os.path.join(shm_dir, "t"), token)
        assert open_key(srv.url + "/k", fast(ca=pki.ca, token_file=good)).data_key() == KEY
        srv.reset_counters()
        bad = write_file(os.path.join(shm_dir, "b"), token + "x")
        with pytest.raises(DeniedError) as e:
            open_key(srv.url + "/k", fast(ca=pki.ca, token_file=bad)).data_key()
        assert srv.count() == 1
        missing = os.path.join(shm_dir, "missing")
        with pytest.raises(DeniedError):
            open_key(srv.url + "/k", fast(ca=pki.ca, token_file=missing)).data_key()
        text = str(e.value) + capsys.readouterr().err
        assert token not in text
    finally:
        srv.close()


def test_https_key_wrong_ca_fails(keyserver, pki):
    with pytest.raises(DeniedError) as e:
        open_key(keyserver.url + "/raw", fast(ca=pki.other_ca, retries=5)).data_key()
    assert e.value.exit_code == 3
    assert keyserver.count() == 0
    with pytest.raises(UsageError):
        open_key(keyserver.url + "/raw", fast(ca="/nonexistent/ca.pem")).data_key()


def test_https_key_client_certificate(pki):
    srv = ObjectServer({"/k": KEY}, tls=pki.server_context(require_client_cert=True))
    try:
        with pytest.raises(DeniedError):
            open_key(srv.url + "/k", fast(ca=pki.ca, retries=5)).data_key()
        assert srv.settled_tls_failures() == 1 and srv.count() == 0
        opts = fast(ca=pki.ca, cert=pki.client_cert, cert_key=pki.client_key)
        assert open_key(srv.url + "/k", opts).data_key() == KEY
        assert srv.count() == 1
    finally:
        srv.close()


def test_https_key_retries_transient_then_gives_up(keyserver, pki, capsys):
    keyserver.add_fault(Fault("status", status=503), Fault("cut", after=5, method="GET"))
    assert open_key(keyserver.url + "/raw", fast(ca=pki.ca)).data_key() == KEY
    assert keyserver.count() == 3
    err = capsys.readouterr().err
    assert err.count('"event":"retry"') == 2
    assert KEY.hex() not in err and base64.b64encode(KEY).decode() not in err
    keyserver.reset_counters()
    keyserver.add_fault(Fault("status", status=500, times=10))
    with pytest.raises(UnavailableError) as e:
        open_key(keyserver.url + "/raw", fast(ca=pki.ca, retries=2)).data_key()
    assert "after 2 attempts" in str(e.value)
    assert keyserver.count() == 2


def test_http_key_needs_allow_http(capsys):
    srv = ObjectServer({"/k": KEY})
    try:
        with pytest.raises(UsageError):
            open_key(srv.url + "/k", fast())
        assert open_key(srv.url + "/k", fast(allow_http=True)).data_key() == KEY
        assert "plain_http" in capsys.readouterr().err
    finally:
        srv.close()


# --------------------------------------------------------------------------- AWS KMS

@pytest.fixture
def kms(moto, aws_env):
    import boto3

    client = boto3.client("kms", endpoint_url=moto.url, region_name="us-east-1")
    meta = client.create_key(Description="modelseal test")["KeyMetadata"]
    alias = "alias/ms-" + uuid.uuid4().hex[:8]
    client.create_alias(AliasName=alias, TargetKeyId=meta["KeyId"])
    return client, meta, alias


def test_kms_wrap_unwrap_round_trip(kms, moto):
    _, meta, alias = kms
    opts = fast(endpoint_url=moto.url)
    src = open_key(f"aws-kms://{alias}?context.model=llama", opts)
    assert src.unwraps
    wrapped = src.wrap(KEY)
    assert wrapped.provider == "aws-kms"
    assert wrapped.key_id == meta["Arn"]
    assert wrapped.context == {"modelseal": "v2", "model": "llama"}
    assert KEY not in wrapped.ciphertext
    # the header round trip, then unwrap by alias, by ARN and by key id
    again = WrappedKey.from_json(json.loads(json.dumps(wrapped.to_json())))
    for uri in (f"aws-kms://{alias}", f"aws-kms://{meta['Arn']}", f"aws-kms://{meta['KeyId']}",
                f"aws-kms:///{alias}?context.model=llama"):
        assert open_key(uri, opts).data_key(again) == KEY


def test_kms_encryption_context_is_enforced(kms, moto):
    _, _, alias = kms
    opts = fast(endpoint_url=moto.url)
    wrapped = open_key(f"aws-kms://{alias}?context.model=llama", opts).wrap(KEY)
    tampered = WrappedKey(wrapped.provider, wrapped.key_id, wrapped.ciphertext,
                          {"modelseal": "v2", "model": "mistral"})
    with pytest.raises(IntegrityError) as e:  # KMS: InvalidCiphertextException
        open_key(f"aws-kms://{alias}", opts).data_key(tampered)
    assert e.value.exit_code == 4
    with pytest.raises(IntegrityError):  # the pod insists on another model: refused before KMS
        open_key(f"aws-kms://{alias}?context.model=mistral", opts).data_key(wrapped)
    flipped = bytearray(wrapped.ciphertext)
    flipped[-5] ^= 1
    with pytest.raises(IntegrityError):
        open_key(f"aws-kms://{alias}", opts).data_key(
            WrappedKey(wrapped.provider, wrapped.key_id, bytes(flipped), wrapped.context))


def test_kms_wrong_key_and_missing_key(kms, moto):
    client, _, alias = kms
    opts = fast(endpoint_url=moto.url)
    wrapped = open_key(f"aws-kms://{alias}", opts).wrap(KEY)
    other = client.create_key()["KeyMetadata"]["KeyId"]
    # AWS answers IncorrectKeyException (exit 4), moto AccessDeniedException (exit 3): never the key.
    with pytest.raises((IntegrityError, DeniedError)):
        open_key(f"aws-kms://{other}", opts).data_key(wrapped)
    with pytest.raises(DeniedError):
        open_key("aws-kms://alias/does-not-exist", opts).data_key(wrapped)
    with pytest.raises(DeniedError):
        open_key("aws-kms://alias/does-not-exist", opts).wrap(KEY)


def test_kms_usage_errors(kms, moto):
    _, _, alias = kms
    opts = fast(endpoint_url=moto.url)
    with pytest.raises(UsageError):  # unwrapping needs a header
        open_key(f"aws-kms://{alias}", opts).data_key(None)
    with pytest.raises(UsageError):  # wrapped by another provider
        open_key(f"aws-kms://{alias}", opts).data_key(WrappedKey("vault-transit", "transit/k", b"vault:v1:x", {}))
    with pytest.raises(UsageError):
        open_key("aws-kms://", opts)
    with pytest.raises(UsageError):
        open_key(f"aws-kms://{alias}", opts).wrap(b"short")


def test_kms_throttling_and_5xx_are_retried(kms, moto):
    _, _, alias = kms
    proxy = FaultProxy(moto.port)
    try:
        throttled = Fault("status", status=400, method="POST",
                          body=b'{"__type":"ThrottlingException","message":"slow down"}',
                          headers={"Content-Type": "application/x-amz-json-1.1"})
        unavailable = Fault("status", status=503, method="POST", body=b'{"__type":"KMSInternalException"}',
                            headers={"Content-Type": "application/x-amz-json-1.1"})
        proxy.add_fault(throttled, unavailable)
        opts = fast(endpoint_url=proxy.url)
        wrapped = open_key(f"aws-kms://{alias}", opts).wrap(KEY)
        assert proxy.count("POST") == 3
        assert open_key(f"aws-kms://{alias}", opts).data_key(wrapped) == KEY
        proxy.reset_counters()
        denied = Fault("status", status=400, method="POST", times=5,
                       body=b'{"__type":"AccessDeniedException","message":"no"}',
                       headers={"Content-Type": "application/x-amz-json-1.1"})
        proxy.add_fault(denied)
        with pytest.raises(DeniedError):
            open_key(f"aws-kms://{alias}", opts).data_key(wrapped)
        assert proxy.count("POST") == 1
    finally:
        proxy.close()


def test_kms_without_region_or_credentials(moto, aws_env, monkeypatch):
    for k in ("AWS_DEFAULT_REGION", "AWS_REGION"):
        monkeypatch.delenv(k)
    with pytest.raises(UsageError):
        open_key("aws-kms://alias/x", fast(endpoint_url=moto.url)).wrap(KEY)
    arn = "arn:aws:kms:us-east-1:123456789012:key/00000000-0000-0000-0000-000000000000"
    with pytest.raises(DeniedError):  # the ARN gives the region; moto has no such key
        open_key(f"aws-kms://{arn}", fast(endpoint_url=moto.url)).wrap(KEY)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(DeniedError) as e:
        open_key(f"aws-kms://{arn}", fast(endpoint_url=moto.url)).wrap(KEY)
    assert "credentials" in str(e.value)


# --------------------------------------------------------------------------- Secrets Manager

@pytest.fixture
def sm(moto, aws_env):
    import boto3

    return boto3.client("secretsmanager", endpoint_url=moto.url, region_name="us-east-1")


def test_secretsmanager_string_binary_json(sm, moto):
    p = "ms/" + uuid.uuid4().hex[:8]
    sm.create_secret(Name=f"{p}/b64", SecretString=base64.b64encode(KEY).decode())
    sm.create_secret(Name=f"{p}/bin", SecretBinary=KEY)
    arn = sm.create_secret(Name=f"{p}/json", SecretString=json.dumps({"key": KEY.hex()}))["ARN"]
    opts = fast(endpoint_url=moto.url)
    assert open_key(f"secretsmanager://{p}/b64", opts).data_key() == KEY
    assert open_key(f"secretsmanager://{p}/bin", opts).data_key() == KEY
    assert open_key(f"secretsmanager://{p}/json?field=key", opts).data_key() == KEY
    assert open_key(f"secretsmanager://{arn}?field=key&encoding=hex", opts).data_key() == KEY
    with pytest.raises(IntegrityError):
        open_key(f"secretsmanager://{p}/json", opts).data_key()  # JSON text is not a key


def test_secretsmanager_versions_and_missing(sm, moto):
    name = "ms/" + uuid.uuid4().hex[:8]
    first = sm.create_secret(Name=name, SecretBinary=KEY)["VersionId"]
    sm.put_secret_value(SecretId=name, SecretBinary=bytes(32))
    opts = fast(endpoint_url=moto.url)
    assert open_key(f"secretsmanager://{name}", opts).data_key() == bytes(32)
    assert open_key(f"secretsmanager://{name}?version_id={first}", opts).data_key() == KEY
    assert open_key(f"secretsmanager://{name}?version_stage=AWSPREVIOUS", opts).data_key() == KEY
    with pytest.raises(DeniedError):
        open_key("secretsmanager://ms/does-not-exist", opts).data_key()


# --------------------------------------------------------------------------- Vault

@pytest.fixture
def vault(pki):
    srv = VaultServer(tls=pki.server_context())
    srv.put_secret("secret", "models/llama", {"key": base64.b64encode(KEY).decode(), "note": "x"})
    srv.put_secret("secret", "single", {"value": KEY.hex()})
    srv.put_secret("secret", "single", {"value": bytes(32).hex()})
    srv.add_transit_key("modelseal")
    srv.add_transit_key("other")
    yield srv
    srv.close()


def _vault_uri(srv, path: str) -> str:
    return f"vault://127.0.0.1:{srv.port}/{path}"


def test_vault_kv2_with_token_file(vault, pki, shm_dir):
    token = write_file(os.path.join(shm_dir, "vault-token"), vault.add_token() + "\n")
    opts = fast(ca=pki.ca, token_file=token)
    assert open_key(_vault_uri(vault, "secret/models/llama?field=key"), opts).data_key() == KEY
    assert open_key(_vault_uri(vault, "secret/single"), opts).data_key() == bytes(32)  # latest
    assert open_key(_vault_uri(vault, "secret/single?version=1"), opts).data_key() == KEY
    assert open_key(_vault_uri(vault, "secret/single?field=value&encoding=hex&version=1"), opts).data_key() == KEY
    assert ("GET", "/v1/secret/data/models/llama", None) in vault.requests
    with pytest.raises(UsageError):  # two fields and no field=
        open_key(_vault_uri(vault, "secret/models/llama"), opts).data_key()
    with pytest.raises(DeniedError):
        open_key(_vault_uri(vault, "secret/missing"), opts).data_key()


def test_vault_bad_token_is_denied_once(vault, pki, shm_dir):
    token = write_file(os.path.join(shm_dir, "t"), "hvs.not-valid")
    with pytest.raises(DeniedError):
        open_key(_vault_uri(vault, "secret/single"), fast(ca=pki.ca, token_file=token, retries=5)).data_key()
    assert vault.count() == 1


def test_vault_kubernetes_auth(vault, pki, shm_dir):
    jwt = "eyJhbGciOiJSUzI1NiJ9." + uuid.uuid4().hex + ".sig"
    vault.roles["model-reader"] = jwt
    jwt_file = write_file(os.path.join(shm_dir, "sa-token"), jwt)
    opts = fast(ca=pki.ca, role="model-reader", extra={"jwt_file": jwt_file})
    assert open_key(_vault_uri(vault, "secret/models/llama?field=key"), opts).data_key() == KEY
    assert vault.logins == 1
    # token_file is the service-account JWT when a role is given
    opts2 = fast(ca=pki.ca, role="model-reader", token_file=jwt_file)
    assert open_key(_vault_uri(vault, "secret/single?version=1"), opts2).data_key() == KEY
    wrong = write_file(os.path.join(shm_dir, "wrong"), jwt + "x")
    with pytest.raises(DeniedError) as e:
        open_key(_vault_uri(vault, "secret/single"), fast(ca=pki.ca, role="model-reader", token_file=wrong)).data_key()
    assert jwt not in str(e.value)
    with pytest.raises(UsageError):  # Vault: 400 invalid role name
        open_key(_vault_uri(vault, "secret/single"), fast(ca=pki.ca, role="nope", token_file=jwt_file)).data_key()


def test_vault_sealed_is_retried(vault, pki, shm_dir):
    token = write_file(os.path.join(shm_dir, "t"), vault.add_token())
    vault.add_fault(Fault("status", status=503, body=b'{"errors":["Vault is sealed"]}'))
    assert open_key(_vault_uri(vault, "secret/single?version=1"), fast(ca=pki.ca, token_file=token)).data_key() == KEY
    assert vault.count() == 2


def test_vault_usage_and_tls(vault, pki, shm_dir):
    token = write_file(os.path.join(shm_dir, "t"), vault.add_token())
    with pytest.raises(UsageError):  # no auth configured
        open_key(_vault_uri(vault, "secret/single"), fast(ca=pki.ca))
    with pytest.raises(UsageError):  # no mount
        open_key(_vault_uri(vault, "single"), fast(ca=pki.ca, token_file=token))
    with pytest.raises(UsageError):
        open_key(_vault_uri(vault, "secret/single?scheme=http"), fast(token_file=token))
    with pytest.raises(DeniedError):
        open_key(_vault_uri(vault, "secret/single"), fast(ca=pki.other_ca, token_file=token)).data_key()
    plain = VaultServer()
    try:
        plain.put_secret("secret", "k", {"v": KEY.hex()})
        t2 = write_file(os.path.join(shm_dir, "t2"), plain.add_token())
        uri = f"vault://127.0.0.1:{plain.port}/secret/k?scheme=http"
        assert open_key(uri, fast(token_file=t2, allow_http=True)).data_key() == KEY
    finally:
        plain.close()


def test_vault_transit_wrap_unwrap(vault, pki, shm_dir):
    token = write_file(os.path.join(shm_dir, "t"), vault.add_token())
    opts = fast(ca=pki.ca, token_file=token)
    src = open_key(f"vault-transit://127.0.0.1:{vault.port}/transit/modelseal", opts)
    assert src.unwraps
    wrapped = src.wrap(KEY)
    assert wrapped.provider == "vault-transit" and wrapped.key_id == "transit/modelseal"
    assert wrapped.ciphertext.startswith(b"vault:v1:")
    again = WrappedKey.from_json(json.loads(json.dumps(wrapped.to_json())))
    assert src.data_key(again) == KEY
    # the default mount, and Kubernetes auth
    jwt = "jwt-" + uuid.uuid4().hex
    vault.roles["r"] = jwt
    jwt_file = write_file(os.path.join(shm_dir, "jwt"), jwt)
    k8s = fast(ca=pki.ca, role="r", token_file=jwt_file)
    assert open_key(f"vault-transit://127.0.0.1:{vault.port}/modelseal", k8s).data_key(wrapped) == KEY


def test_vault_transit_tampered_or_other_key(vault, pki, shm_dir):
    token = write_file(os.path.join(shm_dir, "t"), vault.add_token())
    opts = fast(ca=pki.ca, token_file=token, retries=5)
    wrapped = open_key(f"vault-transit://127.0.0.1:{vault.port}/transit/modelseal", opts).wrap(KEY)
    vault.reset_counters()
    with pytest.raises(IntegrityError):
        open_key(f"vault-transit://127.0.0.1:{vault.port}/transit/other", opts).data_key(wrapped)
    assert vault.count() == 1  # an authentication failure is not retried
    body = base64.b64decode(wrapped.ciphertext[len(b"vault:v1:"):])
    bad = b"vault:v1:" + base64.b64encode(body[:-1] + bytes([body[-1] ^ 1]))
    with pytest.raises(IntegrityError):
        open_key(f"vault-transit://127.0.0.1:{vault.port}/transit/modelseal", opts).data_key(
            WrappedKey("vault-transit", "transit/modelseal", bad, {}))
    with pytest.raises(UsageError):
        open_key(f"vault-transit://127.0.0.1:{vault.port}/transit/modelseal", opts).data_key(
            WrappedKey("aws-kms", "alias/x", b"blob", {}))


# --------------------------------------------------------------------------- KBS via the CDH

@pytest.fixture
def cdh():
    srv = CDHServer()
    srv.put("default/key/llama", KEY)
    srv.put("default/key/b64", base64.b64encode(KEY))
    yield srv
    srv.close()


def test_kbs_through_cdh(cdh):
    opts = fast(cdh_url=cdh.url)
    assert open_key("kbs:///default/key/llama", opts).data_key() == KEY
    assert cdh.requests[-1][:2] == ("GET", "/cdh/resource/default/key/llama")
    assert open_key("kbs:///default/key/b64?encoding=base64", opts).data_key() == KEY
    assert open_key("kbs://kbs.example:8080/default/key/llama", opts).data_key() == KEY  # host ignored
    with pytest.raises(DeniedError):
        open_key("kbs:///default/key/missing", opts).data_key()


def test_kbs_cdh_unavailable_then_ready(cdh):
    cdh.add_fault(Fault("status", status=500), Fault("status", status=500))
    assert open_key("kbs:///default/key/llama", fast(cdh_url=cdh.url)).data_key() == KEY
    assert cdh.count() == 3


def test_kbs_usage_errors():
    with pytest.raises(UsageError):
        open_key("kbs:///default/key", fast())
    with pytest.raises(UsageError):
        open_key("kbs:///default/../key", fast())
    with pytest.raises(UsageError):  # plain http beyond loopback needs allow_http
        open_key("kbs:///default/key/k", fast(cdh_url="http://10.0.0.1:8006"))
    from modelseal.connection import Connection

    assert open_key("kbs:///default/key/k", Connection()).url == "http://127.0.0.1:8006/cdh/resource/default/key/k"


def test_backends_import_no_sdk_until_used():
    """Discovery imports every backend; the decrypt/unpack images have no boto3 or requests."""
    import subprocess

    code = ("import sys; from modelseal import keys, sources; keys.backends(); sources.backends(); "
            "print(sorted(m for m in ('boto3', 'botocore', 'requests', 'urllib3', 'tenacity') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"
    from modelseal import keys, sources

    assert {"https", "http", "aws-kms", "secretsmanager", "vault", "vault-transit", "kbs"} <= set(keys.backends())
    assert {"s3", "https", "http"} <= set(sources.backends())


@pytest.mark.parametrize("uri", ["vault-transit://127.0.0.1:1/transit/k?token_file=/nonexistent",
                                 "gcp-kms://projects/p/locations/l/keyRings/r/cryptoKeys/k",
                                 "aws-kms://arn:aws:kms:eu-west-1:111122223333:key/k"])
def test_a_key_wrapped_by_another_service_is_refused_before_any_call(uri):
    """A wrapping key source unwraps only its own provider's keys: another's is a usage error naming both,
    before any request (the services here are unreachable: a call would fail otherwise)."""
    source = open_key(uri, Connection(retries=1, timeout=1))
    with pytest.raises(UsageError, match=r"wrapped by 'azure-kv', not by (vault-transit|gcp-kms|aws-kms)$"):
        source.data_key(WrappedKey(provider="azure-kv", key_id="x", ciphertext=b"x", context={}))
