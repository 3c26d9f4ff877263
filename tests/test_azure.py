"""Azure: azure-kv:// (Key Vault wrap/unwrap), azure-skr:// (attested release through the confidential
sidecar), azblob:// (Blob Storage), and the identities pods use (workload identity, IMDS), against real
servers on 127.0.0.1: Azurite for Blob, and the documented-shape servers of tests/support/azure.py for
what has no emulator. `cryptography` is the oracle of every RSA-OAEP-256 wrap; the Azure SDK (test-only)
is the oracle of what is stored in Azurite.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from conftest import modelseal, need, one_line, refused
from modelseal import azure
from modelseal.errors import DeniedError, IntegrityError, UnavailableError, UsageError
from modelseal.keys import open_key
from modelseal.sealfile import WrappedKey
from modelseal.sources import open_source
from support.azure import (
    CLIENT_ID, DEV_ACCOUNT, DEV_KEY, STORAGE, TENANT, VAULT, EntraServer, IMDSServer, KeyVaultServer, SKRSidecar,
    Tokens, azurite_missing, azurite_server, oaep, private_jwk, public_jwk, rsa_key)
from support.faults import Fault, FaultProxy
from support.fixtures import fast
from support.objects import ObjectServer
from support.processes import write_file

KEY = bytes(range(1, 33))
VAULT_HOST = "models-kv.vault.azure.net"
MAA = "sharedeus.eus.attest.azure.net"
ASSERTION = "eyJhbGciOiJSUzI1NiJ9.federated-service-account-token.c2ln"
MiB = 1 << 20
AZURE_VARS = ("AZURE_FEDERATED_TOKEN_FILE", "AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_AUTHORITY_HOST",
              "AZURE_POD_IDENTITY_AUTHORITY_HOST", "AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_SAS_TOKEN",
              "AZURE_STORAGE_KEY", "AZURE_STORAGE_ACCOUNT", "IDENTITY_ENDPOINT", "MSI_ENDPOINT")


@pytest.fixture(autouse=True)
def no_azure_env(monkeypatch):
    """Nothing from the machine's environment picks a credential or an endpoint for these tests."""
    for k in AZURE_VARS:
        monkeypatch.delenv(k, raising=False)


def context_hash(context: dict[str, str]) -> bytes:
    """SHA-256 of the context's RFC 8785 bytes, written out by hand for the cases used here (ASCII names)."""
    text = "{" + ",".join(f'"{k}":"{v}"' for k, v in sorted(context.items())) + "}"
    return hashlib.sha256(text.encode()).digest()


def secrets_absent(text: str, tokens: Tokens, *extra: str) -> None:
    with tokens.lock:
        issued = list(tokens.issued)
    for secret in issued + [ASSERTION, *extra]:
        assert secret not in text, f"a token or key ({secret[:12]}...) reached the output"


# --------------------------------------------------------------------------- identity fixtures

@pytest.fixture
def tokens():
    return Tokens()


@pytest.fixture
def entra(pki, tokens):
    srv = EntraServer(tokens, ASSERTION, tls=pki.server_context())
    yield srv
    srv.close()


@pytest.fixture
def imds(tokens):
    srv = IMDSServer(tokens)
    yield srv
    srv.close()


@pytest.fixture
def wi_env(entra, shm_dir):
    """What the workload identity webhook injects into a pod."""
    return {"AZURE_FEDERATED_TOKEN_FILE": write_file(os.path.join(shm_dir, "azure-identity-token"), ASSERTION),
            "AZURE_CLIENT_ID": CLIENT_ID, "AZURE_TENANT_ID": TENANT, "AZURE_AUTHORITY_HOST": entra.url + "/"}


@pytest.fixture
def workload(wi_env, monkeypatch):
    for k, v in wi_env.items():
        monkeypatch.setenv(k, v)
    return wi_env


# --------------------------------------------------------------------------- identity

def test_workload_identity_exchanges_the_federated_token_and_caches_the_answer(entra, workload, pki, tokens):
    cred = azure.credential(fast(ca=pki.ca))
    assert isinstance(cred, azure.WorkloadIdentity)
    first = cred.token(VAULT)
    assert tokens.resource_of("Bearer " + first) == VAULT
    assert [cred.token(VAULT) for _ in range(5)] == [first] * 5  # cached until it expires
    assert entra.exchanges == 1
    (method, path, headers, body), = entra.seen
    assert (method, path) == ("POST", f"/{TENANT}/oauth2/v2.0/token")
    assert headers["Content-Type"] == "application/x-www-form-urlencoded"
    from urllib.parse import parse_qs

    form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
    assert form == {"client_id": CLIENT_ID, "scope": "https://vault.azure.net/.default",
                    "grant_type": "client_credentials", "client_assertion": ASSERTION,
                    "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"}
    assert tokens.resource_of("Bearer " + cred.token(STORAGE)) == STORAGE  # another audience, another exchange
    assert entra.exchanges == 2


def test_a_token_about_to_expire_is_renewed_with_the_rotated_federated_token(pki, tokens, workload):
    short = EntraServer(tokens, ASSERTION, tls=pki.server_context(), lifetime=0)  # expires at once
    try:
        os.environ["AZURE_AUTHORITY_HOST"] = short.url
        cred = azure.credential(fast(ca=pki.ca))
        one = cred.token(VAULT)
        short.assertion = "rotated-by-the-kubelet"
        write_file(workload["AZURE_FEDERATED_TOKEN_FILE"], "rotated-by-the-kubelet")
        two = cred.token(VAULT)
        assert one != two and short.exchanges == 2  # renewed, with the new file
    finally:
        short.close()


@pytest.mark.parametrize("status,body", [
    (400, {"error": "invalid_client", "error_description": "AADSTS700213: No matching federated identity"}),
    (401, {"error": "invalid_client", "error_description": "AADSTS7000215"}),
    (403, {"error": "unauthorized_client"}),
])
def test_a_refused_exchange_is_exit_3_without_retry(entra, workload, pki, status, body):
    entra.add_fault(Fault("status", status=status, body=json.dumps(body).encode(), times=10))
    with refused(DeniedError) as e:
        azure.credential(fast(ca=pki.ca, retries=4)).token(VAULT)
    assert e.value.exit_code == 3 and "AADSTS" not in str(e.value)
    assert len(entra.seen) == 1


def test_workload_identity_wrong_assertion_is_denied(entra, workload, pki):
    entra.assertion = "another-service-account"
    with refused(DeniedError):
        azure.credential(fast(ca=pki.ca)).token(VAULT)


def test_managed_identity_through_imds(imds, tokens, monkeypatch):
    monkeypatch.setenv("AZURE_POD_IDENTITY_AUTHORITY_HOST", imds.url)
    cred = azure.credential(fast())
    assert isinstance(cred, azure.ManagedIdentity)
    token = cred.token(STORAGE)
    assert tokens.resource_of("Bearer " + token) == STORAGE and cred.token(STORAGE) == token
    (method, path, headers, _), = imds.seen
    assert method == "GET" and headers["Metadata"] == "true"
    assert path == "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fstorage.azure.com"
    monkeypatch.setenv("AZURE_CLIENT_ID", CLIENT_ID)  # a user-assigned identity is asked for by client_id
    azure.credential(fast()).token(STORAGE)
    assert imds.seen[-1][1].endswith(f"&client_id={CLIENT_ID}")
    monkeypatch.setenv("AZURE_CLIENT_ID", "not-assigned-to-this-node")
    with refused(DeniedError):  # IMDS: 400 Identity not found
        azure.credential(fast()).token(STORAGE)


def test_imds_updating_or_throttling_is_retried(imds, monkeypatch):
    monkeypatch.setenv("AZURE_POD_IDENTITY_AUTHORITY_HOST", imds.url)
    imds.add_fault(Fault("status", status=404), Fault("status", status=410), Fault("status", status=429))
    assert azure.credential(fast(retries=4)).token(VAULT)
    assert imds.count() == 4


def test_imds_is_asked_directly_never_through_a_proxy(imds, monkeypatch):
    proxy = ObjectServer({})
    try:
        monkeypatch.setenv("AZURE_POD_IDENTITY_AUTHORITY_HOST", imds.url)
        for k in ("HTTP_PROXY", "http_proxy", "ALL_PROXY"):
            monkeypatch.setenv(k, proxy.url)
        monkeypatch.setenv("NO_PROXY", "")
        assert azure.credential(fast()).token(VAULT)
        assert proxy.count() == 0 and imds.count() == 1
    finally:
        proxy.close()


def test_imds_address_is_checked(monkeypatch):
    monkeypatch.setenv("AZURE_POD_IDENTITY_AUTHORITY_HOST", "http://10.0.0.1:80")
    with refused(UsageError, "plain http"):
        azure.credential(fast())
    monkeypatch.delenv("AZURE_POD_IDENTITY_AUTHORITY_HOST")
    assert azure.credential(fast()).url == "http://169.254.169.254/metadata/identity/oauth2/token"


@pytest.mark.parametrize("answer", [
    b"not json", b"[" * 100 + b"]" * 100, b'["a list"]', b"{}",
    b'{"access_token": 7, "expires_in": 3599}',
    b'{"access_token": "two words", "expires_in": 3599}',
    b'{"access_token": "", "expires_in": 3599}',
    b'{"access_token": "tok", "token_type": "pop", "expires_in": 3599}',
    b'{"access_token": "tok"}',
    b'{"access_token": "tok", "expires_in": "soon"}',
    b'{"access_token": "tok", "expires_in": -5}',
    b'{"access_token": "tok", "expires_in": "9' + b"9" * 30 + b'"}',
])
@pytest.mark.parametrize("source", ["workload", "imds"])
def test_malformed_token_answers_are_exit_4(entra, imds, wi_env, monkeypatch, pki, answer, source):
    if source == "workload":
        for k, v in wi_env.items():
            monkeypatch.setenv(k, v)
        server = entra
    else:
        monkeypatch.setenv("AZURE_POD_IDENTITY_AUTHORITY_HOST", imds.url)
        server = imds
    server.add_fault(Fault("status", status=200, body=answer, headers={"Content-Type": "application/json"}))
    with refused(IntegrityError):
        azure.credential(fast(ca=pki.ca)).token(VAULT)


def test_identity_usage_errors(monkeypatch, shm_dir):
    monkeypatch.setenv("AZURE_FEDERATED_TOKEN_FILE", os.path.join(shm_dir, "t"))
    with refused(UsageError, "AZURE_CLIENT_ID"):  # the webhook sets all three, or none
        azure.credential(fast())
    with refused(UsageError):
        azure.credential(fast(extra={"identity": "kerberos"}))
    with refused(UsageError, "token-file"):
        azure.credential(fast(extra={"identity": "token_file"}))
    monkeypatch.delenv("AZURE_FEDERATED_TOKEN_FILE")
    assert isinstance(azure.credential(fast(extra={"identity": "imds"})), azure.ManagedIdentity)
    assert azure.resource_of("x.vault.azure.cn") == "https://vault.azure.cn"
    assert azure.resource_of("hsm1.managedhsm.azure.net") == "https://managedhsm.azure.net"
    with refused(UsageError):
        azure.resource_of("x.vault.azure.net", "http://evil")


# --------------------------------------------------------------------------- Key Vault

@pytest.fixture
def kv(pki, tokens):
    srv = KeyVaultServer(tokens, VAULT_HOST, tls=pki.server_context())
    srv.version, srv.key = srv.add_key("models")
    yield srv
    srv.close()


def kv_open(kv, pki, path: str = "models", query: str = "", **kw):
    return open_key(f"azure-kv://{VAULT_HOST}/keys/{path}{query}", fast(ca=pki.ca, endpoint_url=kv.url, **kw))


def test_kv_wrap_is_rsa_oaep_256_of_the_key_and_context_hash(kv, workload, pki):
    wrapped = kv_open(kv, pki, query="?context.model=llama").wrap(KEY)
    assert wrapped.provider == "azure-kv"
    assert wrapped.key_id == f"https://{VAULT_HOST}/keys/models/{kv.version}"  # the version that wrapped
    assert wrapped.context == {"modelseal": "v2", "model": "llama"}
    # The oracle: cryptography's RSA-OAEP(SHA-256, MGF1-SHA-256) with Key Vault's private key.
    assert kv.key.decrypt(wrapped.ciphertext, oaep()) == KEY + context_hash(wrapped.context)
    assert hashlib.sha256(b'{"model":"llama","modelseal":"v2"}').digest() == context_hash(wrapped.context)
    method, path, headers, body = kv.seen[-1]
    assert (method, path) == ("POST", "/keys/models/wrapkey?api-version=7.4")
    assert json.loads(body)["alg"] == "RSA-OAEP-256"
    assert headers["Authorization"].startswith("Bearer ")


def test_kv_unwrap_round_trip_at_the_version_that_wrapped(kv, workload, pki):
    wrapped = kv_open(kv, pki).wrap(KEY)
    kv.add_key("models")  # rotated: the latest version is another key now
    assert kv_open(kv, pki).data_key(wrapped) == KEY
    method, path, _, body = kv.seen[-1]
    assert (method, path) == ("POST", f"/keys/models/{kv.version}/unwrapkey?api-version=7.4")
    assert json.loads(body) == {"alg": "RSA-OAEP-256",
                                "value": base64.urlsafe_b64encode(wrapped.ciphertext).rstrip(b"=").decode()}
    assert kv_open(kv, pki, f"models/{kv.version}").data_key(wrapped) == KEY  # pinned to the same version
    assert kv_open(kv, pki, "MODELS").data_key(wrapped) == KEY  # Key Vault's names are case-insensitive


def test_kv_context_is_enforced_before_and_by_the_unwrap(kv, workload, pki):
    wrapped = kv_open(kv, pki, query="?context.model=llama").wrap(KEY)
    calls = len(kv.seen)
    with refused(IntegrityError, "does not have model=mistral"):
        kv_open(kv, pki, query="?context.model=mistral").data_key(wrapped)
    assert len(kv.seen) == calls  # refused before Key Vault is asked
    assert kv_open(kv, pki, query="?context.model=llama").data_key(wrapped) == KEY
    relabelled = WrappedKey(wrapped.provider, wrapped.key_id, wrapped.ciphertext, {"modelseal": "v2", "model": "x"})
    with refused(IntegrityError, "not the one its data key was wrapped with"):
        kv_open(kv, pki).data_key(relabelled)


def test_kv_refuses_a_file_wrapped_by_another_key_without_asking(kv, workload, pki):
    wrapped = kv_open(kv, pki).wrap(KEY)
    calls = len(kv.seen)
    for kid in (f"https://other.vault.azure.net/keys/models/{kv.version}", f"https://{VAULT_HOST}/keys/other/v1",
                "arn:aws:kms:x", f"https://{VAULT_HOST}/keys/models/{kv.version}?x=1"):
        with refused(IntegrityError, "another key"):
            kv_open(kv, pki).data_key(WrappedKey("azure-kv", kid, wrapped.ciphertext, wrapped.context))
    with refused(IntegrityError, "another key"):  # the URI pins another version
        kv_open(kv, pki, "models/0123456789abcdef").data_key(wrapped)
    with refused(UsageError, "not by azure-kv"):
        kv_open(kv, pki).data_key(WrappedKey("aws-kms", wrapped.key_id, wrapped.ciphertext, wrapped.context))
    assert len(kv.seen) == calls


def test_kv_tampered_ciphertext_is_exit_4(kv, workload, pki):
    wrapped = kv_open(kv, pki).wrap(KEY)
    bad = bytearray(wrapped.ciphertext)
    bad[7] ^= 1
    with refused(IntegrityError, "refused to unwrap") as e:
        kv_open(kv, pki).data_key(WrappedKey("azure-kv", wrapped.key_id, bytes(bad), wrapped.context))
    assert e.value.exit_code == 4


def test_kv_denials_are_exit_3_without_retry(kv, workload, pki, tokens, shm_dir):
    wrapped = kv_open(kv, pki).wrap(KEY)
    kv.forbidden = True  # authenticated, but no role on the key: 403
    n = len(kv.seen)
    with refused(DeniedError):
        kv_open(kv, pki, retries=4).data_key(wrapped)
    assert len(kv.seen) == n + 1
    stale = write_file(os.path.join(shm_dir, "token"), "not-a-token-it-issued")
    with refused(DeniedError):  # a token Key Vault does not accept: 401
        open_key(f"azure-kv://{VAULT_HOST}/keys/models", fast(ca=pki.ca, endpoint_url=kv.url,
                                                             token_file=stale)).wrap(KEY)
    with refused(DeniedError):  # no such key: 404
        kv_open(kv, pki, "missing").wrap(KEY)


def test_kv_5xx_and_429_are_retried(kv, workload, pki):
    kv.add_fault(Fault("status", status=503), Fault("status", status=429, headers={"Retry-After": "0"}))
    assert kv_open(kv, pki).wrap(KEY).provider == "azure-kv"
    kv.add_fault(Fault("status", status=500, times=10))
    with refused(UnavailableError):
        kv_open(kv, pki, retries=2).wrap(KEY)


def _kv_answer(kv, body) -> Fault:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return Fault("status", status=200, body=raw, headers={"Content-Type": "application/json"}, method="POST")


@pytest.mark.parametrize("op", ["wrap", "unwrap"])
@pytest.mark.parametrize("case", ["not json", "deep", "list", "no kid", "other kid", "other vault", "no value",
                                  "value not b64url", "value wrong size", "value number"])
def test_kv_malformed_answers_are_exit_4(kv, workload, pki, op, case):
    wrapped = kv_open(kv, pki).wrap(KEY)
    kid = wrapped.key_id
    good = base64.urlsafe_b64encode(wrapped.ciphertext if op == "wrap" else KEY + context_hash(wrapped.context))
    value = good.rstrip(b"=").decode()
    body = {"not json": b"<html>", "deep": b'{"kid":' * 40 + b"1" + b"}" * 40, "list": [kid, value],
            "no kid": {"value": value}, "other kid": {"kid": kid.replace("/models/", "/other/"), "value": value},
            "other vault": {"kid": kid.replace(VAULT_HOST, "evil.vault.azure.net"), "value": value},
            "no value": {"kid": kid}, "value not b64url": {"kid": kid, "value": value[:-4] + "+/+/"},
            "value wrong size": {"kid": kid, "value": value[:-8]}, "value number": {"kid": kid, "value": 12}}[case]
    kv.add_fault(_kv_answer(kv, body))
    with refused(IntegrityError) as e:
        if op == "wrap":
            kv_open(kv, pki).wrap(KEY)
        else:
            kv_open(kv, pki).data_key(wrapped)
    assert e.value.exit_code == 4


def test_kv_token_never_follows_a_redirect(kv, workload, pki, tokens):
    elsewhere = ObjectServer({}, tls=pki.server_context())
    try:
        kv.add_fault(Fault("status", status=307, headers={"Location": f"{elsewhere.url}/keys/models/wrapkey"}))
        with refused(UsageError, "redirect"):
            kv_open(kv, pki).wrap(KEY)
        assert elsewhere.count() == 0
        with tokens.lock:
            assert tokens.issued and not any(elsewhere.saw(t) for t in tokens.issued)
    finally:
        elsewhere.close()


def test_the_federated_token_never_follows_a_redirect(entra, workload, pki):
    elsewhere = ObjectServer({}, tls=pki.server_context())
    try:
        entra.add_fault(Fault("status", status=308, headers={"Location": f"{elsewhere.url}/token"}))
        with refused(UsageError, "redirect"):
            azure.credential(fast(ca=pki.ca)).token(VAULT)
        assert elsewhere.count() == 0 and not elsewhere.saw(ASSERTION)
    finally:
        elsewhere.close()


@pytest.mark.parametrize("uri", [
    "azure-kv://myvault.vault.azure.net/models", "azure-kv://myvault.vault.azure.net/keys/",
    "azure-kv://myvault.vault.azure.net/keys/a/b/c", "azure-kv://myvault/keys/k",
    "azure-kv://myvault.vault.azure.net/keys/bad_name", "azure-kv://myvault.vault.azure.net/keys/k/v-1",
    "azure-kv://myvault.vault.azure.net/secrets/k", "azure-kv:///keys/k",
])
def test_kv_uri_usage_errors(uri):
    with refused(UsageError):
        open_key(uri, fast())


# --------------------------------------------------------------------------- SKR: seal side

@pytest.fixture
def skr_key(kv):
    return kv.key


def pem_of(key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def skr_uri(path: str = "models", **query: str) -> str:
    q = "&".join(f"{k}={v}" for k, v in query.items())
    return f"azure-skr://{VAULT_HOST}/keys/{path}" + (f"?{q}" if q else "")


@pytest.mark.parametrize("form", ["pem", "bundle", "jwk"])
def test_skr_seal_side_wraps_offline_with_the_public_key(kv, skr_key, shm_dir, form):
    if form == "pem":
        data = pem_of(skr_key)
    elif form == "bundle":  # `az keyvault key show` / get-key: {"key": JsonWebKey, "attributes": ...}
        data = json.dumps(kv.bundle("models")).encode()
    else:
        data = json.dumps(public_jwk(skr_key, kv.kid("models", kv.version), kty="RSA")).encode()
    path = write_file(os.path.join(shm_dir, "public"), data)
    wrapped = open_key(skr_uri(public_key=path, **{"context.model": "llama"}), fast()).wrap(KEY)
    assert wrapped.provider == "azure-skr"
    assert wrapped.context == {"modelseal": "v2", "model": "llama"}
    # The oracle decrypts what was wrapped with the private key, independently.
    assert skr_key.decrypt(wrapped.ciphertext, oaep()) == KEY + context_hash(wrapped.context)
    assert len(wrapped.ciphertext) == 256
    versioned = f"https://{VAULT_HOST}/keys/models/{kv.version}"
    assert wrapped.key_id == (f"https://{VAULT_HOST}/keys/models" if form == "pem" else versioned)
    assert kv.seen == []  # offline: nothing was asked of Key Vault


def test_skr_sealed_files_unwrap_with_key_vault_too(kv, skr_key, workload, pki, shm_dir):
    path = write_file(os.path.join(shm_dir, "bundle.json"), json.dumps(kv.bundle("models")))
    wrapped = open_key(skr_uri(public_key=path), fast()).wrap(KEY)
    assert kv_open(kv, pki).data_key(wrapped) == KEY


@pytest.mark.parametrize("case,pattern", [
    ("ec", "not an RSA"), ("sign-only", "key_ops do not allow"), ("oct", "not an RSA"), ("small", "1024 bits"),
    ("garbage", "not valid UTF-8 JSON"), ("bad pem", "not a PEM"), ("other key", "for another key"),
])
def test_skr_public_key_file_is_checked(kv, skr_key, shm_dir, case, pattern):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    kid = kv.kid("models", kv.version)
    data = {
        "ec": ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
        "sign-only": json.dumps({"key": public_jwk(skr_key, kid, ops=("sign", "verify"))}),
        "oct": json.dumps({"kty": "oct-HSM", "k": "AAAA"}),
        "small": pem_of(rsa_key(1024)),
        "garbage": b"\xff\xfe not a key",
        "bad pem": b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
        "other key": json.dumps({"key": public_jwk(skr_key, kid.replace("/models/", "/other/"))}),
    }[case]
    path = write_file(os.path.join(shm_dir, "public"), data)
    with refused(UsageError, pattern):
        open_key(skr_uri(public_key=path), fast()).wrap(KEY)


def test_skr_seal_without_public_key_is_a_usage_error():
    with refused(UsageError, "public_key="):
        open_key(skr_uri(), fast()).wrap(KEY)


# --------------------------------------------------------------------------- SKR: pod side

@pytest.fixture
def sidecar(pki, kv):
    srv = SKRSidecar(MAA, tls=pki.server_context())
    srv.put(VAULT_HOST, "models", kv.version, kv.key)
    yield srv
    srv.close()


@pytest.fixture
def sealed(kv, shm_dir):
    path = write_file(os.path.join(shm_dir, "bundle.json"), json.dumps(kv.bundle("models")))
    return open_key(skr_uri(public_key=path, **{"context.model": "llama"}), fast()).wrap(KEY)


def skr_open(sidecar, pki, path: str = "models", **kw):
    query = {"maa": MAA, "sidecar": sidecar.url, **kw}
    return open_key(skr_uri(path, **query), fast(ca=pki.ca))


def test_skr_release_and_local_unwrap(sidecar, sealed, pki):
    assert skr_open(sidecar, pki).data_key(sealed) == KEY
    (method, path, headers, body), = sidecar.seen
    assert (method, path) == ("POST", "/key/release")
    sidecar_version = sealed.key_id.rsplit("/", 1)[1]
    assert json.loads(body) == {"maa_endpoint": MAA, "akv_endpoint": VAULT_HOST, "kid": f"models/{sidecar_version}"}
    assert "Authorization" not in headers  # the sidecar has its own identity
    assert skr_open(sidecar, pki, maa=f"https://{MAA}").data_key(sealed) == KEY  # either spelling of maa=


def test_skr_sidecar_on_plain_http_loopback(kv, sealed):
    plain = SKRSidecar(MAA)
    try:
        plain.put(VAULT_HOST, "models", kv.version, kv.key)
        assert open_key(skr_uri(maa=MAA, sidecar=plain.url), fast()).data_key(sealed) == KEY
        with refused(UsageError, "plain http"):
            open_key(skr_uri(maa=MAA, sidecar="http://10.1.2.3:8080"), fast()).data_key(sealed)
    finally:
        plain.close()


def test_skr_not_attested_is_exit_3(sidecar, sealed, pki):
    sidecar.attested = False
    with refused(DeniedError) as e:
        skr_open(sidecar, pki).data_key(sealed)
    assert e.value.exit_code == 3 and len(sidecar.seen) == 1  # 403: not retried


def test_skr_sidecar_starting_up_is_retried(sidecar, sealed, pki):
    sidecar.add_fault(Fault("status", status=503), Fault("status", status=500))
    assert skr_open(sidecar, pki).data_key(sealed) == KEY
    assert len(sidecar.seen) == 3


def test_skr_context_is_enforced(sidecar, sealed, pki):
    with refused(IntegrityError, "does not have model=mistral"):
        skr_open(sidecar, pki, **{"context.model": "mistral"}).data_key(sealed)
    assert sidecar.seen == []
    assert skr_open(sidecar, pki, **{"context.model": "llama"}).data_key(sealed) == KEY
    relabelled = WrappedKey(sealed.provider, sealed.key_id, sealed.ciphertext, {"modelseal": "v2", "model": "gpt"})
    with refused(IntegrityError, "not the one its data key was wrapped with"):
        skr_open(sidecar, pki).data_key(relabelled)


def _jwk(key, **changes) -> dict:
    jwk = private_jwk(key)
    for k, v in changes.items():
        if v is None:
            jwk.pop(k, None)
        else:
            jwk[k] = v
    return jwk


@pytest.mark.parametrize("case", ["kty RSA-HSM", "no key_ops", "unwrapKey only", "decrypt only", "no CRT members",
                                  "key as an object", "4096 bits"])
def test_skr_accepts_what_key_vault_and_the_sidecar_write(sidecar, kv, pki, shm_dir, case):
    key = rsa_key(4096) if case == "4096 bits" else kv.key
    jwk = {"kty RSA-HSM": _jwk(key, kty="RSA-HSM"), "no key_ops": _jwk(key, key_ops=None),
           "unwrapKey only": _jwk(key, key_ops=["unwrapKey"]), "decrypt only": _jwk(key, key_ops=["decrypt"]),
           "no CRT members": _jwk(key, p=None, q=None, dp=None, dq=None, qi=None),
           "key as an object": private_jwk(key), "4096 bits": private_jwk(key)}[case]
    answer = {"key": jwk if case == "key as an object" else json.dumps(jwk)}
    path = write_file(os.path.join(shm_dir, "pub.pem"), pem_of(key))
    wrapped = open_key(skr_uri(public_key=path), fast()).wrap(KEY)
    sidecar.add_fault(Fault("status", status=200, body=json.dumps(answer).encode()))
    assert skr_open(sidecar, pki).data_key(wrapped) == KEY


def _malformed(key, case: str) -> bytes:
    n = private_jwk(key)["n"]
    small = private_jwk(rsa_key(1024))
    bad_p = private_jwk(key)
    bad_p["p"] = private_jwk(rsa_key(2048))["p"]
    jwks = {
        "kty EC": _jwk(key, kty="EC"), "kty oct": {"kty": "oct", "k": "AAAA", "key_ops": ["unwrapKey"]},
        "kty missing": _jwk(key, kty=None), "kty number": _jwk(key, kty=3),
        "no n": _jwk(key, n=None), "no e": _jwk(key, e=None), "no d": _jwk(key, d=None),
        "public only": _jwk(key, d=None, p=None, q=None, dp=None, dq=None, qi=None),
        "key_ops sign": _jwk(key, key_ops=["sign", "verify"]), "key_ops empty": _jwk(key, key_ops=[]),
        "key_ops string": _jwk(key, key_ops="unwrapKey"), "key_ops numbers": _jwk(key, key_ops=[1, 2]),
        "1024 bits": small, "n not b64url": _jwk(key, n=n[:-3] + "+/="), "n huge": _jwk(key, n="A" * 5000),
        "n number": _jwk(key, n=12345), "d too large": _jwk(key, d=n), "some CRT": _jwk(key, dq=None),
        "CRT of another key": bad_p, "e even": _jwk(key, e="AQAA"),
        "another key": private_jwk(rsa_key(2048)),
    }
    answers = {
        "not json": b"<html>sidecar</html>", "not an object": b'["key"]', "no key": b'{"error": ""}',
        "key null": b'{"key": null}', "key number": b'{"key": 7}',
        "key string not json": json.dumps({"key": "{not json"}).encode(),
        "key string a list": json.dumps({"key": "[1, 2]"}).encode(),
        "deep": b'{"key":' * 40 + b'"x"' + b"}" * 40,
        "deep inside the string": json.dumps({"key": "[" * 5000 + "]" * 5000}).encode(),
        "not utf-8": b'{"key": "\xff\xfe"}', "huge": b'{"key": "' + b"A" * (70 << 10) + b'"}',
    }
    if case in answers:
        return answers[case]
    return json.dumps({"key": json.dumps(jwks[case])}).encode()


MALFORMED = ["not json", "not an object", "no key", "key null", "key number", "key string not json",
             "key string a list", "deep", "deep inside the string", "not utf-8", "huge", "kty EC", "kty oct",
             "kty missing", "kty number", "no n", "no e", "no d", "public only", "key_ops sign", "key_ops empty",
             "key_ops string", "key_ops numbers", "1024 bits", "n not b64url", "n huge", "n number", "d too large",
             "some CRT", "CRT of another key", "e even", "another key"]


@pytest.mark.parametrize("case", MALFORMED)
def test_skr_malformed_answers_are_exit_4(sidecar, sealed, kv, pki, case):
    sidecar.add_fault(Fault("status", status=200, body=_malformed(kv.key, case),
                            headers={"Content-Type": "application/json"}))
    with refused(IntegrityError) as e:
        skr_open(sidecar, pki).data_key(sealed)
    assert e.value.exit_code == 4
    assert len(sidecar.seen) == 1  # a malformed key is not asked for again


def test_skr_key_ops_and_kty_checks_name_what_was_wrong(sidecar, sealed, kv, pki):
    for case, pattern in (("key_ops sign", "key_ops do not allow unwrapKey or decrypt"),
                          ("kty EC", "not an RSA key"), ("1024 bits", "1024 bits")):
        sidecar.add_fault(Fault("status", status=200, body=_malformed(kv.key, case)))
        with refused(IntegrityError, pattern):
            skr_open(sidecar, pki).data_key(sealed)


@pytest.mark.parametrize("uri", [skr_uri(sidecar="https://127.0.0.1:1"), skr_uri(maa="", sidecar="https://x.y"),
                                 skr_uri(maa="http://a.b.c"), skr_uri(maa="not a host")])
def test_skr_pod_side_usage_errors(sealed, uri):
    with refused(UsageError):
        open_key(uri, fast()).data_key(sealed)


# --------------------------------------------------------------------------- Blob against Azurite

@pytest.fixture(scope="module")
def azurite():
    need(azurite_missing())
    return azurite_server()


@pytest.fixture
def proxy(azurite):
    p = FaultProxy(azurite.port)
    yield p
    p.close()


@pytest.fixture
def container(azurite):
    import uuid

    name = "c-" + uuid.uuid4().hex[:12]
    svc = azurite.service()
    svc.create_container(name)
    return svc.get_container_client(name)


def pattern(n: int, seed: int = 0) -> bytes:
    import array

    return array.array("I", range(seed, seed + (n + 3) // 4)).tobytes()[:n]


def blob_uri(container, name: str = "m.seal", query: str = "") -> str:
    return f"azblob://{DEV_ACCOUNT}/{container.container_name}/{name}" + query


@pytest.fixture
def key_env(monkeypatch):
    monkeypatch.setenv("AZURE_STORAGE_KEY", DEV_KEY)


def via(proxy) -> str:
    return f"{proxy.url}/{DEV_ACCOUNT}"


@pytest.mark.parametrize("size", [0, 1, 65536, 65537, 1 * MiB + 3])
def test_blob_read_byte_exact_in_parallel_parts(container, proxy, key_env, size):
    data = pattern(size, seed=size)
    container.upload_blob("m.seal", data)
    src = open_source(blob_uri(container, query="?part_size=64KiB"), fast(endpoint_url=via(proxy), concurrency=4))
    assert src.size == size
    with src.open() as stream:
        got = stream.read()
    assert got == data
    gets = [r for r in proxy.requests if r[0] == "GET"]
    assert len(gets) == -(-size // 65536)  # one ranged GET per part, nothing more
    assert sorted(g[2] for g in gets) == sorted(f"bytes={i}-{min(i + 65536, size) - 1}" for i in range(0, size, 65536))
    assert proxy.count("HEAD") == 1
    assert all(h.get("If-Match") == container.get_blob_client("m.seal").get_blob_properties().etag
               for m, _, h, _ in proxy.seen if m == "GET")


def test_blob_parts_are_read_on_kept_connections(container, proxy, key_env):
    """A part read whole hands its connection back for the next: 25 parts over one connection per worker
    and the HEAD's, where each part opened its own before (a TLS handshake per part from Azure)."""
    data = pattern(6 * MiB + 5, seed=31)
    container.upload_blob("m.seal", data)
    src = open_source(blob_uri(container, query="?part_size=256KiB"), fast(endpoint_url=via(proxy), concurrency=3))
    with src.open() as stream:
        assert stream.read() == data
    assert len([r for r in proxy.requests if r[0] == "GET"]) == 25
    assert proxy.connections <= 1 + 3


def test_blob_read_prefix_is_one_ranged_get(container, proxy, key_env):
    data = pattern(300_000)
    container.upload_blob("m.seal", data)
    src = open_source(blob_uri(container), fast(endpoint_url=via(proxy)))
    assert src.read_prefix(1000) == data[:1000]
    assert [r for r in proxy.requests if r[0] == "GET"] == [
        ("GET", f"/{DEV_ACCOUNT}/{container.container_name}/m.seal", "bytes=0-999")]


def test_blob_resumes_after_cuts_within_the_part(container, proxy, key_env):
    size = 3 * MiB + 777
    data = pattern(size, seed=11)
    container.upload_blob("m.seal", data)
    cut_at = 300_001
    proxy.add_fault(Fault("cut", after=cut_at, method="GET", times=3))
    src = open_source(blob_uri(container, query="?part_size=1MiB"), fast(endpoint_url=via(proxy), concurrency=2))
    with src.open() as stream:
        assert stream.read() == data
    gets = [r for r in proxy.requests if r[0] == "GET"]
    assert len(gets) == 4 + 3  # 4 parts, 3 of them resumed once
    starts = [int(r[2][6:].split("-")[0]) % MiB for r in gets]
    resumed = [s for s in starts if s]
    # Each resumed where its cut happened (a resumed request may be cut again), not at its part's start.
    assert len(resumed) == 3 and all(s % cut_at == 0 for s in resumed)
    assert proxy.bytes_sent - size <= 3 * 256 * 1024


def test_blob_replaced_mid_download_is_exit_4(container, proxy, key_env):
    container.upload_blob("m.seal", pattern(1 * MiB))
    src = open_source(blob_uri(container, query="?part_size=64KiB"), fast(endpoint_url=via(proxy), concurrency=1))
    stream = src.open()
    assert stream.read(100) == pattern(1 * MiB)[:100]
    container.upload_blob("m.seal", pattern(1 * MiB, seed=99), overwrite=True)
    with refused(IntegrityError, "changed during the download") as e:
        stream.read()
    assert e.value.exit_code == 4


def test_blob_replaced_and_the_store_ignores_if_match_is_exit_4(container, proxy, azurite, shm_dir):
    """A store that ignores If-Match (the proxy drops it) still cannot splice: every answer's ETag is compared."""
    from datetime import datetime, timedelta, timezone

    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    container.upload_blob("m.seal", pattern(1 * MiB))
    sas = generate_container_sas(DEV_ACCOUNT, container.container_name, account_key=DEV_KEY,
                                 permission=ContainerSasPermissions(read=True),
                                 expiry=datetime.now(timezone.utc) + timedelta(hours=1))
    sas_file = write_file(os.path.join(shm_dir, "sas"), sas)
    proxy.add_fault(Fault("tamper", drop_headers=("If-Match",), method="GET", times=1000))
    src = open_source(blob_uri(container, query=f"?part_size=64KiB&sas_file={sas_file}"),
                      fast(endpoint_url=via(proxy), concurrency=1))
    stream = src.open()
    stream.read(100)
    container.upload_blob("m.seal", pattern(1 * MiB, seed=5), overwrite=True)
    with refused(IntegrityError, "another ETag"):
        stream.read()


@pytest.mark.parametrize("case,message", [
    ("HEAD without ETag", "no usable ETag"), ("HEAD with a bad length", "malformed Content-Length"),
    ("GET of another range", "another range"), ("GET ignoring Range", "unexpected answer"),
    ("GET with another ETag", "another ETag"), ("GET with a bad Content-Range", "malformed Content-Range"),
])
def test_blob_malformed_store_answers_are_exit_4(container, proxy, key_env, case, message):
    data = pattern(200_000, seed=21)
    container.upload_blob("m.seal", data)
    etag = container.get_blob_client("m.seal").get_blob_properties().etag
    method = case.split()[0]
    headers = {"HEAD without ETag": {"Content-Length": "200000"},
               "HEAD with a bad length": {"Content-Length": "12abc", "ETag": etag},
               "GET of another range": {"Content-Range": "bytes 5-99/200000", "ETag": etag},
               "GET ignoring Range": {"ETag": etag},
               "GET with another ETag": {"Content-Range": "bytes 0-199999/200000", "ETag": '"0x1"'},
               "GET with a bad Content-Range": {"Content-Range": "bytes 0-x/200000", "ETag": etag}}[case]
    status = 206 if method == "GET" and case != "GET ignoring Range" else 200
    body = b"" if method == "HEAD" else data[:95 if "another range" in case else 200_000]
    proxy.add_fault(Fault("status", status=status, method=method, body=body, headers=headers))
    with refused(IntegrityError, message) as e:
        with open_source(blob_uri(container), fast(endpoint_url=via(proxy))).open() as stream:
            stream.read()
    assert e.value.exit_code == 4


def test_fetch_model_blob_replaced_mid_download_exits_4_and_leaves_nothing(container, proxy, shm):
    container.upload_blob("m.seal", pattern(2 * MiB))
    replace = lambda: container.upload_blob("m.seal", pattern(2 * MiB, seed=3), overwrite=True)  # noqa: E731
    proxy.add_fault(Fault("tamper", method="GET"), Fault("tamper", method="GET", before=replace))
    out = shm / "m.seal"
    r = modelseal("fetch-model", "--source", blob_uri(container, query="?part_size=64KiB"), "-o", str(out),
                  "--endpoint-url", via(proxy), "--concurrency", "1", env={"AZURE_STORAGE_KEY": DEV_KEY})
    assert r.code == 4 and "changed during the download" in r.error(), r.stderr
    assert list(shm.iterdir()) == []


@pytest.fixture
def model_dir(shm) -> Path:
    root = shm / "model"
    (root / "variables").mkdir(parents=True)
    (root / "variables" / "weights.bin").write_bytes(os.urandom(3 * MiB + 5))
    (root / "saved_model.pb").write_bytes(os.urandom(4321))
    return root


def tree(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def test_seal_to_blob_then_run_from_blob(container, proxy, model_dir, shm):
    key = shm / "key"
    key.write_bytes(os.urandom(32))
    uri = blob_uri(container, "resnet/1.seal", "?part_size=1MiB")
    env = {"AZURE_STORAGE_CONNECTION_STRING": proxy_connection_string(proxy)}
    r = modelseal("seal", str(model_dir), "-o", uri, "--key", str(key), env=env)
    assert r.code == 0, r.stderr
    stored = container.get_blob_client("resnet/1.seal")
    assert len(stored.get_block_list("committed")[0]) == 4  # 1 MiB blocks, committed by Put Block List
    puts = [p for m, p, _, _ in proxy.seen if m == "PUT" and "comp=block&" in p]
    assert len(puts) == 4 and all("Content-MD5" in h for m, p, h, _ in proxy.seen if "comp=block&" in p)
    out = shm / "out"
    r = modelseal("run", "--source", uri, "--key", str(key), "-o", str(out), env=env)
    assert r.code == 0, r.stderr
    assert tree(out) == tree(model_dir)


def proxy_connection_string(proxy) -> str:
    return (f"DefaultEndpointsProtocol=http;AccountName={DEV_ACCOUNT};AccountKey={DEV_KEY};"
            f"BlobEndpoint={via(proxy)};")


def test_small_seal_goes_up_in_one_put_blob(container, proxy, shm):
    key = shm / "key"
    key.write_bytes(os.urandom(32))
    uri = blob_uri(container, "small.seal")
    r = modelseal("seal", "-", "-o", uri, "--key", str(key), stdin=b"tiny model",
                  env={"AZURE_STORAGE_CONNECTION_STRING": proxy_connection_string(proxy)})
    assert r.code == 0, r.stderr
    assert [(m, p) for m, p, _, _ in proxy.seen] == [("PUT", f"/{DEV_ACCOUNT}/{container.container_name}/small.seal")]
    r = modelseal("decrypt", "--in", "-", "--key", str(key), "-o", str(shm / "o"),
                  stdin=container.download_blob("small.seal").readall())
    assert r.code == 0 and (shm / "o").read_bytes() == b"tiny model"


@pytest.mark.parametrize("fail,code", [("commit", 5), ("block", 3), ("md5", 4)])
def test_a_failed_upload_leaves_no_blob_and_an_existing_blob_as_it_was(container, proxy, model_dir, shm, fail, code):
    key = shm / "key"
    key.write_bytes(os.urandom(32))
    if fail == "commit":
        proxy.add_fault(Fault("status", status=500, method="PUT", path="comp=blocklist", times=100))
    else:  # the third block is refused (no permission, or its Content-MD5 did not match): the seal stops mid-stream
        proxy.add_fault(Fault("tamper", method="PUT", path="comp=block&", times=2),
                        Fault("status", status=403 if fail == "block" else 400, method="PUT", path="comp=block&",
                              times=100))
    env = {"AZURE_STORAGE_CONNECTION_STRING": proxy_connection_string(proxy)}
    container.upload_blob("old.seal", b"the previous model")
    for name in ("new.seal", "old.seal"):
        r = modelseal("seal", str(model_dir), "-o", blob_uri(container, name, "?part_size=1MiB"), "--key", str(key),
                      "--retries", "2", env=env)
        assert r.code == code, r.stderr
        assert fail != "md5" or "Content-MD5" in r.error()
    assert [b.name for b in container.list_blobs()] == ["old.seal"]
    assert container.download_blob("old.seal").readall() == b"the previous model"


def test_blob_sas_token_works_from_a_file_the_environment_and_a_connection_string(container, proxy, shm_dir,
                                                                                 monkeypatch):
    from datetime import datetime, timedelta, timezone

    from azure.storage.blob import BlobSasPermissions, generate_blob_sas

    data = pattern(200_000, seed=4)
    container.upload_blob("m.seal", data)
    sas = generate_blob_sas(DEV_ACCOUNT, container.container_name, "m.seal", account_key=DEV_KEY,
                            permission=BlobSasPermissions(read=True),
                            expiry=datetime.now(timezone.utc) + timedelta(hours=1))
    path = write_file(os.path.join(shm_dir, "sas"), "?" + sas)
    assert open_source(blob_uri(container, query=f"?sas_file={path}"), fast(endpoint_url=via(proxy))).open().read() \
        == data
    assert all("Authorization" not in h and "sig=" in p for _, p, h, _ in proxy.seen)
    monkeypatch.setenv("AZURE_STORAGE_SAS_TOKEN", sas)
    assert open_source(blob_uri(container), fast(endpoint_url=via(proxy))).open().read() == data
    monkeypatch.delenv("AZURE_STORAGE_SAS_TOKEN")
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", f"BlobEndpoint={via(proxy)};SharedAccessSignature={sas}")
    assert open_source(blob_uri(container), fast()).open().read() == data
    wrong = sas.replace("sig=", "sig=AAAA")
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", f"BlobEndpoint={via(proxy)};SharedAccessSignature={wrong}")
    with refused(DeniedError):
        open_source(blob_uri(container), fast()).open()


def test_blob_account_key_from_a_file_and_the_environment(container, proxy, shm_dir, monkeypatch):
    data = pattern(100_000, seed=8)
    container.upload_blob("m.seal", data)
    path = write_file(os.path.join(shm_dir, "key"), DEV_KEY + "\n")
    assert open_source(blob_uri(container, query=f"?account_key_file={path}"),
                       fast(endpoint_url=via(proxy))).read_prefix(10) == data[:10]
    assert all(h["Authorization"].startswith(f"SharedKey {DEV_ACCOUNT}:") for _, _, h, _ in proxy.seen)
    monkeypatch.setenv("AZURE_STORAGE_KEY", DEV_KEY)
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT", DEV_ACCOUNT)
    assert open_source(blob_uri(container), fast(endpoint_url=via(proxy))).open().read() == data
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT", "someoneelse")
    with refused(UsageError, "AZURE_STORAGE_ACCOUNT"):
        open_source(blob_uri(container), fast(endpoint_url=via(proxy)))


def test_blob_connection_strings_explicit_and_development_storage(container, proxy, azurite, monkeypatch):
    data = pattern(70_000, seed=2)
    container.upload_blob("m.seal", data)
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", proxy_connection_string(proxy))
    assert open_source(blob_uri(container), fast()).open().read() == data
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", "UseDevelopmentStorage=true")
    # Azurite's well-known account and key; the endpoint is 127.0.0.1:10000 unless --endpoint-url says otherwise.
    src = open_source(blob_uri(container), fast(endpoint_url=via(proxy)))
    assert src.open().read() == data
    assert open_source(blob_uri(container), fast()).url.startswith("http://127.0.0.1:10000/devstoreaccount1/")
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", "AccountName=other;AccountKey=" + DEV_KEY)
    with refused(UsageError, "for account"):
        open_source(blob_uri(container), fast())
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", "AccountName")
    with refused(UsageError, "malformed"):
        open_source(blob_uri(container), fast())


def test_blob_wrong_key_is_exit_3_and_the_key_is_not_shown(container, proxy, shm):
    container.upload_blob("m.seal", b"x" * 1000)
    wrong = base64.b64encode(os.urandom(64)).decode()
    term = shm / "termination"
    term.write_text("")
    r = modelseal("fetch-model", "--source", blob_uri(container), "-o", str(shm / "m.seal"),
                  "--endpoint-url", via(proxy), env={"AZURE_STORAGE_KEY": wrong,
                                                     "MODELSEAL_TERMINATION_LOG": str(term)})
    assert r.code == 3 and "403" in r.error(), r.stderr
    assert wrong not in r.stderr + term.read_text()
    assert proxy.count() == 1  # not retried
    assert not (shm / "m.seal").exists() and not (shm / "m.seal.partial").exists()


def test_blob_wrong_sas_is_exit_3_and_the_sas_is_not_shown(container, proxy, shm):
    container.upload_blob("m.seal", b"x" * 1000)
    sas = "sv=2024-08-04&sr=b&sp=r&se=2099-01-01T00%3A00%3A00Z&sig=d3JvbmctYnV0LXNlY3JldC1zaWduYXR1cmU%3D"
    term = shm / "termination"
    term.write_text("")
    r = modelseal("run", "--source", blob_uri(container), "-o", str(shm / "m"), "--key", "/dev/null",
                  "--endpoint-url", via(proxy), env={"AZURE_STORAGE_SAS_TOKEN": sas,
                                                     "MODELSEAL_TERMINATION_LOG": str(term)})
    assert r.code == 3 and "403" in r.error(), r.stderr
    assert "d3JvbmctYnV0LXNlY3JldC1zaWduYXR1cmU" not in r.stdout.decode() + r.stderr + term.read_text()
    assert "sig=" in proxy.seen[0][1]  # it was sent, to the store only
    assert not (shm / "m").exists()


def test_blob_missing_is_exit_3(container, proxy, key_env):
    with refused(DeniedError):
        open_source(blob_uri(container, "missing"), fast(endpoint_url=via(proxy))).open()


@pytest.mark.parametrize("credential", ["account key", "SAS", "bearer token"])
def test_blob_credentials_never_follow_a_redirect(container, proxy, pki, shm_dir, credential):
    """A redirect from the store is refused (exit 2): no key signature, SAS or token is sent on anywhere."""
    elsewhere = ObjectServer({}, tls=pki.server_context())
    sas = "sv=2024-08-04&sr=b&sp=r&sig=c2VjcmV0LXNhcy1zaWduYXR1cmU%3D"
    token = "eyJ0eXAiOiJKV1QifQ.secret-storage-token.c2ln"
    query = {"account key": f"?account_key_file={write_file(os.path.join(shm_dir, 'key'), DEV_KEY)}",
             "SAS": f"?sas_file={write_file(os.path.join(shm_dir, 'sas'), sas)}",
             "bearer token": f"?identity=token_file&token_file={write_file(os.path.join(shm_dir, 'tok'), token)}"}
    try:
        for status in (301, 302, 307, 308):
            proxy.add_fault(Fault("status", status=status, headers={"Location": f"{elsewhere.url}/m.seal"}))
            with refused(UsageError, "redirect"):
                open_source(blob_uri(container, query=query[credential]),
                            fast(endpoint_url=via(proxy), ca=pki.ca)).open()
        assert elsewhere.count() == 0
        assert not elsewhere.saw(token) and not elsewhere.saw("c2VjcmV0LXNhcy1zaWduYXR1cmU")
    finally:
        elsewhere.close()


@pytest.mark.parametrize("uri", [
    "azblob://Devstore/c-abc/m", "azblob://ab/c-abc/m", "azblob://acct/C/m", "azblob://acct/c--d/m",
    "azblob://acct/cont", "azblob://acct/cont/", "azblob://acct/cont/a/../b", "azblob://acct/cont/a%5Cb",
    "azblob://acct/cont/" + "x" * 1025,
])
def test_blob_uri_usage_errors(uri, key_env):
    from urllib.parse import unquote

    with refused(UsageError):
        open_source(unquote(uri), fast())


def test_blob_string_to_sign_matches_the_documented_example():
    """The Shared Key string-to-sign of a Put Block, as the documentation lays it out field by field."""
    from modelseal.sources.azblob import string_to_sign

    headers = {"x-ms-date": "Sun, 11 Oct 2009 21:49:13 GMT", "x-ms-version": "2009-09-19", "Content-Length": "0",
               "Content-MD5": "Q2hlY2sgSW50ZWdyaXR5IQ=="}
    text = string_to_sign("PUT", "/mycontainer/myblob", [("comp", "block"), ("blockid", "AAAA")], headers,
                          "myaccount")
    assert text == ("PUT\n\n\n\nQ2hlY2sgSW50ZWdyaXR5IQ==\n\n\n\n\n\n\n\n"
                    "x-ms-date:Sun, 11 Oct 2009 21:49:13 GMT\nx-ms-version:2009-09-19\n"
                    "/myaccount/mycontainer/myblob\nblockid:AAAA\ncomp:block")


# --------------------------------------------------------------------------- Blob with an Entra token

@pytest.fixture(scope="module")
def azurite_oauth(pki_module):
    need(azurite_missing())
    return azurite_server(tls=(pki_module.server_cert, pki_module.server_key))


@pytest.fixture(scope="module")
def pki_module():
    from support.pki import make_pki
    from support.processes import make_shm_dir

    d = make_shm_dir("modelseal-azpki-")
    try:
        yield make_pki(d)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_blob_with_a_workload_identity_token(azurite_oauth, pki_module, shm_dir, tokens):
    entra = EntraServer(tokens, ASSERTION, tls=pki_module.server_context())
    try:
        svc = azurite_oauth.service(ca=pki_module.ca)
        svc.create_container("wid")
        data = pattern(150_000, seed=6)
        svc.get_blob_client("wid", "m.seal").upload_blob(data, overwrite=True)
        env = {"AZURE_FEDERATED_TOKEN_FILE": write_file(os.path.join(shm_dir, "fed"), ASSERTION),
               "AZURE_CLIENT_ID": CLIENT_ID, "AZURE_TENANT_ID": TENANT, "AZURE_AUTHORITY_HOST": entra.url}
        out = os.path.join(shm_dir, "got.seal")
        term = write_file(os.path.join(shm_dir, "termination"), "")
        r = modelseal("fetch-model", "--source", f"azblob://{DEV_ACCOUNT}/wid/m.seal?part_size=64KiB", "-o", out,
                      "--endpoint-url", azurite_oauth.endpoint, "--ca", pki_module.ca,
                      env={**env, "MODELSEAL_TERMINATION_LOG": term})
        assert r.code == 0, r.stderr
        assert Path(out).read_bytes() == data
        assert entra.exchanges == 1  # one token for the HEAD and every part
        secrets_absent(r.stderr + Path(term).read_text(), tokens)
        entra.assertion = "revoked"
        r = modelseal("fetch-model", "--source", f"azblob://{DEV_ACCOUNT}/wid/m.seal", "-o", out + "2",
                      "--endpoint-url", azurite_oauth.endpoint, "--ca", pki_module.ca, env=env)
        assert r.code == 3, r.stderr
    finally:
        entra.close()


# --------------------------------------------------------------------------- the CLI, end to end

def test_seal_with_key_vault_then_run_with_the_attested_release(kv, sidecar, wi_env, pki, model_dir, shm, tokens):
    sealed = shm / "m.seal"
    term = shm / "termination"
    term.write_text("")
    r = modelseal("seal", str(model_dir), "-o", str(sealed), "--ca", pki.ca, "--key-uri",
                  f"azure-kv://{VAULT_HOST}/keys/models?endpoint_url={kv.url}&context.model=resnet",
                  env={**wi_env, "MODELSEAL_TERMINATION_LOG": str(term)})
    assert r.code == 0, r.stderr
    seal_output = r.stderr
    header = json.loads(modelseal("inspect", str(sealed)).stdout)
    assert header["recipients"] == [{"type": "kms", "recipient": f"azure-kv {kv.kid('models', kv.version)}"}]
    out = shm / "out"
    r = modelseal("run", "--source", str(sealed), "-o", str(out), "--ca", pki.ca, "--key-uri",
                  f"azure-skr://{VAULT_HOST}/keys/models?maa={MAA}&sidecar={sidecar.url}&context.model=resnet",
                  env={"MODELSEAL_TERMINATION_LOG": str(term)})
    assert r.code == 0, r.stderr
    assert tree(out) == tree(model_dir)
    assert len(sidecar.seen) == 1
    everything = seal_output + r.stderr + term.read_text()
    assert tokens.issued  # the seal side did exchange and use a token
    secrets_absent(everything, tokens, private_jwk(kv.key)["d"][:40])


def test_seal_offline_with_the_public_key_then_fetch_key_from_key_vault(kv, sidecar, wi_env, pki, model_dir, shm,
                                                                        tokens):
    bundle = write_file(str(shm / "models.json"), json.dumps(kv.bundle("models")))
    sealed = shm / "m.seal"
    r = modelseal("seal", str(model_dir), "-o", str(sealed), "--key-uri",
                  f"azure-skr://{VAULT_HOST}/keys/models?public_key={bundle}")
    assert r.code == 0, r.stderr
    key = shm / "key"
    term = shm / "termination"
    term.write_text("")
    r = modelseal("fetch-key", "--key-uri", f"azure-kv://{VAULT_HOST}/keys/models?endpoint_url={kv.url}",
                  "--wrapped-from", str(sealed), "-o", str(key), "--ca", pki.ca,
                  env={**wi_env, "MODELSEAL_TERMINATION_LOG": str(term)})
    assert r.code == 0, r.stderr
    r2 = modelseal("fetch-key", "--key-uri", f"azure-skr://{VAULT_HOST}/keys/models?maa={MAA}&sidecar={sidecar.url}",
                   "--wrapped-from", str(sealed), "-o", str(shm / "key2"), "--ca", pki.ca)
    assert r2.code == 0, r2.stderr
    assert key.read_bytes() == (shm / "key2").read_bytes()
    secrets_absent(r.stderr + r2.stderr + term.read_text(), tokens, key.read_bytes().hex())


def test_cli_denials_and_malformed_release_exit_codes_without_secrets(kv, sidecar, wi_env, pki, model_dir, shm,
                                                                      tokens):
    sealed = shm / "m.seal"
    r = modelseal("seal", str(model_dir), "-o", str(sealed), "--ca", pki.ca, "--key-uri",
                  f"azure-kv://{VAULT_HOST}/keys/models?endpoint_url={kv.url}", env=wi_env)
    assert r.code == 0, r.stderr
    skr = f"azure-skr://{VAULT_HOST}/keys/models?maa={MAA}&sidecar={sidecar.url}"
    sidecar.attested = False
    r = modelseal("run", "--source", str(sealed), "-o", str(shm / "o"), "--ca", pki.ca, "--key-uri", skr)
    assert r.code == 3 and "HTTP 403" in r.error(), r.stderr
    sidecar.attested = True
    sidecar.add_fault(Fault("status", status=200, body=_malformed(kv.key, "key_ops sign")))
    r = modelseal("run", "--source", str(sealed), "-o", str(shm / "o"), "--ca", pki.ca, "--key-uri", skr)
    assert r.code == 4 and "key_ops" in r.error(), r.stderr
    one_line(Exception(r.error()))
    assert not (shm / "o").exists()
    kv.forbidden = True
    term = shm / "termination"
    term.write_text("")
    r = modelseal("fetch-key", "--key-uri", f"azure-kv://{VAULT_HOST}/keys/models?endpoint_url={kv.url}",
                  "--wrapped-from", str(sealed), "-o", str(shm / "k"), "--ca", pki.ca,
                  env={**wi_env, "MODELSEAL_TERMINATION_LOG": str(term)})
    assert r.code == 3 and "HTTP 403" in r.error(), r.stderr
    secrets_absent(r.stderr + term.read_text(), tokens)


def test_managed_identity_end_to_end_through_the_cli(kv, imds, pki, shm, tokens):
    r = modelseal("seal", "-", "-o", str(shm / "m.seal"), "--ca", pki.ca, "--key-uri",
                  f"azure-kv://{VAULT_HOST}/keys/models?endpoint_url={kv.url}", stdin=b"weights" * 1000,
                  env={"AZURE_POD_IDENTITY_AUTHORITY_HOST": imds.url})
    assert r.code == 0, r.stderr
    r = modelseal("decrypt", "--in", str(shm / "m.seal"), "-o", str(shm / "o"), "--ca", pki.ca, "--key-uri",
                  f"azure-kv://{VAULT_HOST}/keys/models?endpoint_url={kv.url}",
                  env={"AZURE_POD_IDENTITY_AUTHORITY_HOST": imds.url})
    assert r.code == 0, r.stderr
    assert (shm / "o").read_bytes() == b"weights" * 1000
    assert imds.count() == 2  # one token per process
    secrets_absent(r.stderr, tokens)


# --------------------------------------------------------------------------- the examples

@pytest.mark.parametrize("name", ["aks-workload-identity.yaml", "aks-confidential-skr.yaml"])
def test_the_aks_examples_name_uris_the_backends_accept(name):
    """The examples' --source and --key-uri parse with the real backends (a typo in a URI would exit 2 in the pod)."""
    import yaml

    from modelseal.cli import build_parser

    path = Path(__file__).parents[1] / "examples" / "kubernetes" / name
    pods = [d for d in yaml.safe_load_all(path.read_text()) if d and d["kind"] == "Pod"]
    (c,) = [c for p in pods for c in p["spec"]["initContainers"] if c["image"].startswith("modelseal/")]
    with pytest.MonkeyPatch.context() as mp:
        for e in c.get("env", []):
            mp.setenv(e["name"], e["value"])
        args = build_parser().parse_args(["run", *c.get("args", [])])
    assert open_source(args.source, fast()).what.startswith("azblob://")
    key = open_key(args.key_uri, fast())
    assert key.what.startswith(("azure-kv://", "azure-skr://")) and key.user_context == {"model": "resnet"}
    if key.what.startswith("azure-skr://"):
        assert key._maa() == MAA and key._sidecar() == "http://127.0.0.1:8080"
