"""Google Cloud: gcp-kms://, gs:// and the identities pods use, against servers on 127.0.0.1.

GCS against gcp-storage-emulator (through the fault proxy) where it has the
feature; the generation pin, the upload cancel and hostile answers against
tests/support/gcp.GCSServer, which follows the documented shapes. Cloud KMS,
the metadata server and the OAuth token endpoint have no emulator: see
tests/support/gcp.py for the documents each server follows.
"""

from __future__ import annotations

import base64
import json
import os
import random
import sys
import uuid

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # tests/support, whatever the import mode

from conftest import modelseal
from modelseal import gcp
from modelseal.crc32c import crc32c
from modelseal.errors import DeniedError, IntegrityError, UnavailableError, UsageError
from modelseal.keys import open_key
from modelseal.keys.gcpkms import canonical_context
from modelseal.sealfile import WrappedKey
from modelseal.sources import open_source
from support.faults import Fault, FaultProxy
from support.fixtures import fast
from support.gcp import (GCSServer, KMSServer, MetadataServer, OAuthServer, crc, gcs_emulator,
                         make_service_account)
from support.objects import ObjectServer
from test_cli import make_tree, tree

MiB = 1 << 20
KEY = bytes(range(32))
KEY_NAME = "projects/test-project/locations/global/keyRings/models/cryptoKeys/llama"
OTHER_KEY = "projects/test-project/locations/global/keyRings/models/cryptoKeys/mistral"
GCP_VARS = ("GOOGLE_APPLICATION_CREDENTIALS", "GCE_METADATA_HOST", "STORAGE_EMULATOR_HOST")


def pattern(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


@pytest.fixture(autouse=True)
def gcp_env(monkeypatch):
    """No Google configuration from the host, and no token cached from another test."""
    for k in GCP_VARS:
        monkeypatch.delenv(k, raising=False)
    gcp._cache.clear()
    yield
    gcp._cache.clear()


@pytest.fixture
def metadata(monkeypatch):
    srv = MetadataServer()
    monkeypatch.setenv("GCE_METADATA_HOST", srv.host)
    yield srv
    srv.close()


@pytest.fixture
def kms(pki, metadata):
    srv = KMSServer(tls=pki.server_context(), tokens=lambda: metadata.tokens)
    srv.add_key(KEY_NAME)
    srv.add_key(OTHER_KEY)
    yield srv
    srv.close()


@pytest.fixture
def elsewhere(pki):
    """Another origin: what a leaked bearer token would reach. It must never see one."""
    srv = ObjectServer({"/token": b"{}"}, tls=pki.server_context())
    yield srv
    srv.close()


def kms_uri(kms, pki, name: str = KEY_NAME, query: str = "") -> str:
    return f"gcp-kms://{name}?endpoint_url={kms.url}&ca={pki.ca}" + (f"&{query}" if query else "")


def no_authorization(srv) -> bool:
    return all("authorization" not in {k.lower() for k in h} for _, _, h, _ in srv.seen)


# --------------------------------------------------------------------------- pure logic

def test_crc32c_matches_google_crc32c():
    assert crc32c(b"123456789") == 0xE3069283  # RFC 3720 B.4's check value
    rng = random.Random(1)
    for n in [0, 1, 31, 32, 33, 255, 1000, 4099]:
        data = rng.randbytes(n)
        assert crc32c(data) == crc(data), n


def test_context_is_serialised_by_rfc8785():
    assert canonical_context({"modelseal": "v1", "model": "llama"}) == b'{"model":"llama","modelseal":"v1"}'
    # Members by UTF-16 code units: U+1F600 (D83D DE00) sorts before U+E000; code points say otherwise.
    assert canonical_context({"\ue000": "a", "\U0001f600": "b"}) == '{"\U0001f600":"b","\ue000":"a"}'.encode()
    # Escapes only where JSON must; non-ASCII as UTF-8.
    assert canonical_context({"k": 'a"\\\n\x01é'}) == '{"k":"a\\"\\\\\\n\\u0001é"}'.encode()
    with pytest.raises(IntegrityError):  # a lone surrogate (a forged header) has no UTF-8
        canonical_context({"k": "\ud800"})


# --------------------------------------------------------------------------- the metadata server

def test_metadata_server_token_is_asked_with_the_flavor_header_and_cached(metadata):
    creds = gcp.credentials(fast())
    first = creds.headers()
    assert first == {"Authorization": f"Bearer {metadata.token}"}
    assert gcp.credentials(fast()).headers() == first  # cached in the process: no second request
    assert metadata.count() == 1
    _, path, headers, _ = metadata.seen[0]
    assert path == "/computeMetadata/v1/instance/service-accounts/default/token"
    assert headers.get("Metadata-Flavor") == "Google"


def test_metadata_token_is_renewed_before_it_expires(metadata):
    metadata.expires_in = gcp.REFRESH_MARGIN  # already within the margin: never reused
    creds = gcp.credentials(fast())
    a, b = creds.headers(), creds.headers()
    assert a != b and metadata.count() == 2


def test_metadata_answer_without_the_flavor_header_is_not_the_metadata_server(metadata):
    metadata.answer = (200, json.dumps({"access_token": "ya29.x", "expires_in": 3599}).encode(), {})
    with pytest.raises(IntegrityError, match="Metadata-Flavor") as e:
        gcp.credentials(fast()).headers()
    assert e.value.exit_code == 4


MALFORMED_TOKENS = [
    b"not json", b"[]", b'"ya29"', b"{}", b'{"access_token": ""}',
    b'{"access_token": "ya29.a b", "expires_in": 3599}',  # a space: not a bearer token
    b'{"access_token": "ya29.\\u0000", "expires_in": 3599}',
    b'{"access_token": 12, "expires_in": 3599}',
    b'{"access_token": "ya29.x"}', b'{"access_token": "ya29.x", "expires_in": "3599"}',
    b'{"access_token": "ya29.x", "expires_in": true}', b'{"access_token": "ya29.x", "expires_in": -1}',
    b'{"access_token": "ya29.x", "expires_in": 3599, "token_type": "MAC"}',
    b'{"access_token": "' + b"x" * 9000 + b'", "expires_in": 3599}',
    b"[" * 100000,
]


@pytest.mark.parametrize("body", MALFORMED_TOKENS, ids=range(len(MALFORMED_TOKENS)))
def test_metadata_malformed_answers_exit_4(metadata, body):
    metadata.answer = (200, body, {"Metadata-Flavor": "Google", "Content-Type": "application/json"})
    with pytest.raises(IntegrityError) as e:
        gcp.credentials(fast()).headers()
    assert e.value.exit_code == 4 and "ya29" not in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("status", [401, 403, 404])
def test_metadata_denial_exits_3_without_retry(metadata, status):
    metadata.answer = (status, b"denied", {"Metadata-Flavor": "Google"})
    with pytest.raises(DeniedError):
        gcp.credentials(fast()).headers()
    assert metadata.count() == 1


def test_metadata_unavailable_is_retried(metadata):
    metadata.add_fault(Fault("status", 503, times=2))
    assert gcp.credentials(fast()).headers() == {"Authorization": f"Bearer {metadata.token}"}
    assert metadata.count() == 3


def test_metadata_server_absent_is_unavailable(monkeypatch):
    from support.processes import free_port

    monkeypatch.setenv("GCE_METADATA_HOST", f"127.0.0.1:{free_port()}")
    with pytest.raises(UnavailableError):
        gcp.credentials(fast(retries=2)).headers()


@pytest.mark.parametrize("host", ["evil.example/x", "127.0.0.1:80@evil", "a b", "h:99999999"])
def test_metadata_host_is_host_and_port_only(monkeypatch, host):
    monkeypatch.setenv("GCE_METADATA_HOST", host)
    with pytest.raises(UsageError):
        gcp.credentials(fast())


def test_metadata_redirect_is_refused_and_carries_nothing(metadata, elsewhere):
    metadata.answer = (302, b"", {"Location": f"{elsewhere.url}/token", "Metadata-Flavor": "Google"})
    with pytest.raises(UsageError, match="redirect"):
        gcp.credentials(fast()).headers()
    assert elsewhere.count() == 0


# --------------------------------------------------------------------------- service-account key files

@pytest.fixture
def oauth(pki):
    srv = OAuthServer(tls=pki.server_context())
    yield srv
    srv.close()


@pytest.fixture
def key_file(oauth, shm_dir, monkeypatch):
    path, key, kid = make_service_account(shm_dir, oauth.token_uri)
    oauth.register("modelseal@test-project.iam.gserviceaccount.com", key.public_key(), kid)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", path)
    return path, key, kid


def test_service_account_jwt_is_verified_and_exchanged(oauth, key_file, pki):
    _, _, kid = key_file
    creds = gcp.credentials(fast(ca=pki.ca))
    assert isinstance(creds, gcp.ServiceAccountKey)
    assert creds.headers() == {"Authorization": f"Bearer {oauth.tokens[-1]}"}
    assert gcp.credentials(fast(ca=pki.ca)).headers()["Authorization"].endswith(oauth.tokens[-1])
    assert oauth.count() == 1  # cached
    [(header, claims)] = oauth.assertions  # the server verified the RS256 signature with the public key
    assert header == {"alg": "RS256", "typ": "JWT", "kid": kid}
    assert claims["iss"] == "modelseal@test-project.iam.gserviceaccount.com"
    assert claims["aud"] == oauth.token_uri and claims["scope"] == gcp.SCOPE
    assert claims["exp"] - claims["iat"] == 3600


def test_service_account_assertion_signed_by_another_key_is_denied(oauth, key_file, pki):
    from cryptography.hazmat.primitives.asymmetric import rsa

    _, _, kid = key_file
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    oauth.register("modelseal@test-project.iam.gserviceaccount.com", stranger.public_key(), kid)
    with pytest.raises(DeniedError) as e:  # invalid_grant (HTTP 400)
        gcp.credentials(fast(ca=pki.ca)).headers()
    assert e.value.exit_code == 3 and oauth.count() == 1


@pytest.mark.parametrize("body", MALFORMED_TOKENS, ids=range(len(MALFORMED_TOKENS)))
def test_service_account_malformed_answers_exit_4(oauth, key_file, pki, body):
    oauth.answer = (200, body)
    with pytest.raises(IntegrityError):
        gcp.credentials(fast(ca=pki.ca)).headers()


@pytest.mark.parametrize("status", [401, 403])
def test_token_endpoint_denial_exits_3(oauth, key_file, pki, status):
    oauth.add_fault(Fault("status", status, body=b'{"error": "unauthorized_client"}'))
    with pytest.raises(DeniedError):
        gcp.credentials(fast(ca=pki.ca)).headers()
    assert oauth.count() == 1


def test_token_endpoint_redirect_is_refused_and_carries_nothing(oauth, key_file, pki, elsewhere):
    oauth.add_fault(Fault("status", 307, headers={"Location": f"{elsewhere.url}/token"}))
    with pytest.raises(UsageError, match="redirect"):
        gcp.credentials(fast(ca=pki.ca)).headers()
    assert elsewhere.count() == 0


def _key_doc(**changes) -> dict:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    def pem(k):
        return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption()).decode()

    doc = {"type": "service_account", "client_email": "a@b.iam.gserviceaccount.com", "private_key_id": "k",
           "private_key": pem(rsa.generate_private_key(public_exponent=65537, key_size=2048)),
           "token_uri": "https://oauth2.googleapis.com/token"}
    if changes.pop("ec", False):
        doc["private_key"] = pem(ec.generate_private_key(ec.SECP256R1()))
    doc.update(changes)
    return doc


@pytest.mark.parametrize("doc", [
    _key_doc(type="authorized_user"), _key_doc(type="external_account"), _key_doc(private_key="-----BEGIN x"),
    _key_doc(ec=True), _key_doc(client_email=None), _key_doc(token_uri="http://oauth.example/token"),
    _key_doc(token_uri="https://user:pw@oauth.example/token"), [1, 2], "not json",
], ids=["authorized_user", "external_account", "bad-pem", "ec-key", "no-email", "http", "userinfo", "array",
        "text"])
def test_service_account_key_file_problems_exit_2(shm_dir, monkeypatch, doc):
    path = os.path.join(shm_dir, "sa.json")
    with open(path, "w") as f:
        f.write(doc if isinstance(doc, str) else json.dumps(doc))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", path)
    with pytest.raises(UsageError) as e:
        gcp.credentials(fast())
    assert "PRIVATE KEY" not in str(e.value) and "\n" not in str(e.value)


# --------------------------------------------------------------------------- Cloud KMS

def test_kms_wrap_unwrap_round_trip(kms, pki, metadata):
    src = open_key(kms_uri(kms, pki, query="context.model=llama"), fast())
    assert src.unwraps
    wrapped = src.wrap(KEY)
    assert wrapped.provider == "gcp-kms" and wrapped.key_id == f"{KEY_NAME}/cryptoKeyVersions/1"
    assert wrapped.context == {"modelseal": "v2", "model": "llama"}
    assert KEY not in wrapped.ciphertext
    aad = b'{"model":"llama","modelseal":"v2"}'
    _, path, headers, body = kms.seen[-1]
    assert path == f"/v1/{KEY_NAME}:encrypt" and headers["Authorization"] == f"Bearer {metadata.token}"
    sent = json.loads(body)
    assert base64.b64decode(sent["additionalAuthenticatedData"]) == aad
    assert sent["plaintextCrc32c"] == str(crc(KEY)) and sent["additionalAuthenticatedDataCrc32c"] == str(crc(aad))
    again = WrappedKey.from_json(json.loads(json.dumps(wrapped.to_json())))  # through a header
    for query in ("", "context.model=llama"):
        assert open_key(kms_uri(kms, pki, query=query), fast()).data_key(again) == KEY
    _, path, _, body = kms.seen[-1]
    sent = json.loads(body)
    assert path == f"/v1/{KEY_NAME}:decrypt" and base64.b64decode(sent["additionalAuthenticatedData"]) == aad
    assert sent["ciphertextCrc32c"] == str(crc(wrapped.ciphertext))
    assert metadata.count() == 1  # one token for the whole process


def test_kms_context_is_bound_to_the_ciphertext(kms, pki):
    wrapped = open_key(kms_uri(kms, pki, query="context.model=llama"), fast()).wrap(KEY)
    plain = open_key(kms_uri(kms, pki), fast())
    tampered = WrappedKey(wrapped.provider, wrapped.key_id, wrapped.ciphertext, {"modelseal": "v2", "model": "mistral"})
    with pytest.raises(IntegrityError, match="does not match") as e:  # Cloud KMS: 400, the AAD differs
        plain.data_key(tampered)
    assert e.value.exit_code == 4
    assert base64.b64decode(json.loads(kms.seen[-1][3])["additionalAuthenticatedData"]) == \
        b'{"model":"mistral","modelseal":"v2"}'
    dropped = WrappedKey(wrapped.provider, wrapped.key_id, wrapped.ciphertext, {"modelseal": "v2"})
    with pytest.raises(IntegrityError):
        plain.data_key(dropped)
    before = kms.count()
    with pytest.raises(IntegrityError, match="model=mistral"):  # the pod insists on another model: not asked
        open_key(kms_uri(kms, pki, query="context.model=mistral"), fast()).data_key(wrapped)
    assert kms.count() == before
    flipped = bytearray(wrapped.ciphertext)
    flipped[-3] ^= 1
    with pytest.raises(IntegrityError):
        plain.data_key(WrappedKey(wrapped.provider, wrapped.key_id, bytes(flipped), wrapped.context))
    with pytest.raises(IntegrityError):  # decrypted under the URI's key, not the one that wrapped it
        open_key(kms_uri(kms, pki, name=OTHER_KEY), fast()).data_key(wrapped)


def _drop(name):
    return lambda doc: {k: v for k, v in doc.items() if k != name}


def _set(name, value):
    return lambda doc: {**doc, name: value}


MALFORMED_KMS = {
    "encrypt": [_drop("ciphertext"), _set("ciphertext", "!!"), _set("ciphertext", ""), _set("ciphertext", 5),
                _set("ciphertextCrc32c", "1"), _drop("ciphertextCrc32c"), _set("ciphertextCrc32c", "-1"),
                _set("verifiedPlaintextCrc32c", False), _drop("verifiedAdditionalAuthenticatedDataCrc32c"),
                _set("name", f"{OTHER_KEY}/cryptoKeyVersions/1"), _drop("name"),
                lambda d: b"not json", lambda d: b"[]", lambda d: b"[" * 50000,
                lambda d: {**d, "ciphertextCrc32c": str(1 << 40)}],
    "decrypt": [_drop("plaintext"), _set("plaintext", "%%"), _set("plaintext", base64.b64encode(b"x" * 31).decode()),
                _set("plaintextCrc32c", "7"), _drop("plaintextCrc32c"), _set("plaintextCrc32c", "1e3"),
                lambda d: b"not json", lambda d: b"{}", lambda d: b'"plaintext"'],
}


@pytest.mark.parametrize("method,i", [(m, i) for m, v in MALFORMED_KMS.items() for i in range(len(v))])
def test_kms_malformed_answers_exit_4(kms, pki, method, i):
    good = open_key(kms_uri(kms, pki), fast()).wrap(KEY)
    kms.answer = lambda m, doc: MALFORMED_KMS[method][i](doc) if m == method else doc
    src = open_key(kms_uri(kms, pki), fast())
    with pytest.raises(IntegrityError) as e:
        src.wrap(KEY) if method == "encrypt" else src.data_key(good)
    assert e.value.exit_code == 4 and "\n" not in str(e.value)


def test_kms_denial_exits_3_at_once(kms, pki, metadata):
    wrapped = open_key(kms_uri(kms, pki), fast()).wrap(KEY)
    kms.denied.add(KEY_NAME)
    before = kms.count()
    with pytest.raises(DeniedError):  # 403 PERMISSION_DENIED
        open_key(kms_uri(kms, pki), fast()).data_key(wrapped)
    assert kms.count() == before + 1
    missing = "projects/test-project/locations/global/keyRings/models/cryptoKeys/nope"
    with pytest.raises(DeniedError):  # 404
        open_key(kms_uri(kms, pki, name=missing), fast()).wrap(KEY)
    kms.tokens = lambda: []  # the token is not accepted: 401
    with pytest.raises(DeniedError):
        open_key(kms_uri(kms, pki, name=OTHER_KEY), fast()).wrap(KEY)


def test_kms_unavailable_is_retried(kms, pki):
    kms.add_fault(Fault("status", 503, times=2), Fault("status", 429, times=1))
    wrapped = open_key(kms_uri(kms, pki), fast()).wrap(KEY)
    assert kms.count() == 4
    assert open_key(kms_uri(kms, pki), fast()).data_key(wrapped) == KEY


def test_kms_redirect_never_carries_the_token(kms, pki, metadata, elsewhere):
    kms.add_fault(Fault("status", 307, headers={"Location": f"{elsewhere.url}/v1/{KEY_NAME}:encrypt"}))
    with pytest.raises(UsageError, match="redirect"):
        open_key(kms_uri(kms, pki), fast()).wrap(KEY)
    assert elsewhere.count() == 0 and not elsewhere.saw(metadata.token)


@pytest.mark.parametrize("uri", [
    "gcp-kms://", "gcp-kms://projects/p", "gcp-kms://projects/p/locations/l/keyRings/r/cryptoKeys/",
    "gcp-kms://projects/p/locations/l/keyRings/r/cryptoKeys/k/cryptoKeyVersions/1",
    "gcp-kms://projects/p/locations/l/keyRings/../cryptoKeys/k", "gcp-kms://projects/p%2F/locations/l/keyRings/r/cryptoKeys/k",
    f"gcp-kms://{KEY_NAME}?endpoint_url=http://kms.example", f"gcp-kms://{KEY_NAME}?endpoint_url=https://h/?x=1",
])
def test_kms_usage_errors(uri):
    with pytest.raises(UsageError):
        open_key(uri, fast())


def test_kms_refuses_other_providers_and_short_keys(kms, pki):
    src = open_key(kms_uri(kms, pki), fast())
    with pytest.raises(UsageError):
        src.data_key(None)
    with pytest.raises(UsageError):
        src.data_key(WrappedKey("aws-kms", "alias/x", b"blob", {"modelseal": "v1"}))
    with pytest.raises(UsageError):
        src.wrap(b"short")


# --------------------------------------------------------------------------- GCS: the emulator

@pytest.fixture
def emulator(monkeypatch):
    emu = gcs_emulator()
    bucket = "b-" + uuid.uuid4().hex[:12]
    emu.create_bucket(bucket)
    return emu, bucket


@pytest.fixture
def proxy(emulator):
    p = FaultProxy(gcs_emulator().port)
    yield p
    p.close()


def media_gets(srv) -> list:
    return [r for r in srv.requests if r[0] == "GET" and "alt=media" in r[1]]


# 0 is read from GCSServer below: the emulator fails a media upload of an empty object (the oracle's put).
@pytest.mark.parametrize("size", [1, 100_000, 1 * MiB, 1 * MiB + 1, 5 * MiB + 12345])
def test_gs_emulator_byte_exact(emulator, proxy, size):
    emu, bucket = emulator
    data = pattern(size, seed=size)
    emu.put(bucket, "dir/m.seal", data)
    src = open_source(f"gs://{bucket}/dir/m.seal?part_size=1MiB&anonymous=true", fast(endpoint_url=proxy.url))
    assert src.size == size
    with src.open() as stream:
        got = stream.read()
    assert got == data
    assert len(media_gets(proxy)) == -(-size // MiB)  # one ranged read per part
    assert {r[2] for r in media_gets(proxy)} == {f"bytes={i * MiB}-{min(size, (i + 1) * MiB) - 1}"
                                                for i in range(-(-size // MiB))}


def test_gs_emulator_host_means_no_credentials(emulator, metadata, monkeypatch):
    emu, bucket = emulator
    emu.put(bucket, "m", b"sealed bytes")
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", emu.host)  # host:port, as the SDKs take it
    assert open_source(f"gs://{bucket}/m", fast()).open().read() == b"sealed bytes"
    assert metadata.count() == 0  # no token asked for: anonymous, as the SDKs do with an emulator


def test_gs_parts_are_read_on_kept_connections(emulator, proxy):
    """A part read whole hands its connection back for the next: 25 parts over one connection per worker
    and the metadata read's, where each part opened its own before (a TLS handshake per part from GCS)."""
    emu, bucket = emulator
    data = pattern(6 * MiB + 5, seed=31)
    emu.put(bucket, "m.seal", data)
    src = open_source(f"gs://{bucket}/m.seal?part_size=256KiB&anonymous=true",
                      fast(endpoint_url=proxy.url, concurrency=3))
    with src.open() as stream:
        assert stream.read() == data
    assert len(media_gets(proxy)) == 25
    assert proxy.connections <= 1 + 3


def test_gs_cut_connections_resume_within_the_part(emulator, proxy):
    emu, bucket = emulator
    size = 4 * MiB + 777
    data = pattern(size, seed=11)
    emu.put(bucket, "m", data)
    cut_at = 300_000
    proxy.add_fault(Fault("cut", after=cut_at, method="GET", path="alt=media", times=3))
    src = open_source(f"gs://{bucket}/m?part_size=1MiB&anonymous=1", fast(endpoint_url=proxy.url, concurrency=2))
    assert src.open().read() == data
    gets = media_gets(proxy)
    assert len(gets) == 5 + 3
    resumed = [int(r[2][6:].split("-")[0]) % MiB for r in gets if int(r[2][6:].split("-")[0]) % MiB]
    # each resumed where its cut happened (a resumed read may be cut again), never restarted
    assert len(resumed) == 3 and all(offset % cut_at == 0 for offset in resumed)
    assert proxy.bytes_sent - size <= 3 * 256 * 1024 + 10_000


def test_gs_read_prefix_is_one_ranged_read(emulator, proxy):
    emu, bucket = emulator
    data = pattern(3 * MiB)
    emu.put(bucket, "m", data)
    assert open_source(f"gs://{bucket}/m?anonymous=1", fast(endpoint_url=proxy.url)).read_prefix(1000) == data[:1000]
    assert [r[2] for r in media_gets(proxy)] == ["bytes=0-999"]


def test_gs_denied_at_once_and_unavailable_retried(emulator, proxy):
    emu, bucket = emulator
    emu.put(bucket, "m", b"x" * 1000)
    with pytest.raises(DeniedError):
        open_source(f"gs://{bucket}/missing?anonymous=1", fast(endpoint_url=proxy.url)).open()
    assert proxy.count("GET") == 1
    proxy.add_fault(Fault("status", 403, method="GET", path="alt=media"))
    with pytest.raises(DeniedError):
        open_source(f"gs://{bucket}/m?anonymous=1", fast(endpoint_url=proxy.url)).open().read()
    proxy.reset_counters()
    proxy.add_fault(Fault("status", 503, method="GET", times=2))
    assert open_source(f"gs://{bucket}/m?anonymous=1", fast(endpoint_url=proxy.url)).open().read() == b"x" * 1000
    assert proxy.count("GET") == 4


@pytest.mark.parametrize("size", [0, 5, 256 * 1024, 256 * 1024 + 1, 3 * MiB + 3])
def test_gs_open_write_round_trip_through_the_emulator(emulator, proxy, size):
    emu, bucket = emulator
    data = pattern(size, seed=3)
    with open_source(f"gs://{bucket}/up/m.seal?part_size=256KiB&anonymous=1",
                     fast(endpoint_url=proxy.url)).open_write() as w:
        for i in range(0, size, 100_000):
            w.write(data[i:i + 100_000])
    assert emu.get(bucket, "up/m.seal") == data  # read back by another client
    puts = [b for m, _, _, b in proxy.seen if m == "PUT"]
    assert sum(len(b) for b in puts) == size and len(puts) == max(1, -(-size // (256 * 1024)))


def test_gs_failed_upload_leaves_no_object_in_the_emulator(emulator, proxy):
    emu, bucket = emulator
    with pytest.raises(RuntimeError):
        with open_source(f"gs://{bucket}/half?part_size=256KiB&anonymous=1",
                         fast(endpoint_url=proxy.url, retries=1)).open_write() as w:
            w.write(pattern(MiB))
            raise RuntimeError("the sealing failed")
    assert [m for m, _, _, _ in proxy.seen].count("PUT") == 3  # three chunks were up, not completed
    assert emu.get(bucket, "half") is None


def test_gs_usage_errors(monkeypatch):
    for uri in ("gs://", "gs://bucket", "gs://bucket/", "gs://Bad_Bucket/o", "gs://b/o?generation=x",
                "gs://bkt/o?part_size=1k", "gs://bkt/" + "x" * 1025, "gs://bkt/o?endpoint_url=http://gcs.example"):
        with pytest.raises(UsageError):
            open_source(uri, fast())
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "gcs.example:4443")  # plain http beyond loopback
    with pytest.raises(UsageError):
        open_source("gs://bkt/o", fast())


# --------------------------------------------------------------------------- GCS: the generation pin

@pytest.fixture
def gcs(pki):
    srv = GCSServer(tls=pki.server_context())
    yield srv
    srv.close()


def gs_uri(srv, pki, name: str = "m", query: str = "") -> str:
    return f"gs://bkt/{name}?endpoint_url={srv.url}&ca={pki.ca}&anonymous=1" + (f"&{query}" if query else "")


def _replace_on_second_read(srv, data: bytes) -> None:
    """The object is replaced between the first and the second media read."""
    srv.add_fault(Fault("tamper", path="alt=media"),
                  Fault("tamper", path="alt=media", before=lambda: srv.put("bkt", "m", data)))


def test_gs_object_replaced_mid_download_exits_4(gcs, pki):
    old = pattern(4 * MiB, seed=1)
    gen = gcs.put("bkt", "m", old)
    _replace_on_second_read(gcs, pattern(4 * MiB, seed=2))
    src = open_source(gs_uri(gcs, pki, query="part_size=1MiB"), fast(concurrency=1))
    with pytest.raises(IntegrityError, match="changed") as e:
        src.open().read()
    assert e.value.exit_code == 4
    gets = media_gets(gcs)
    assert len(gets) >= 2 and all(f"ifGenerationMatch={gen}" in path for _, path, _ in gets)


def test_gs_store_ignoring_the_precondition_is_caught_by_its_generation_header(gcs, pki):
    gcs.put("bkt", "m", pattern(4 * MiB, seed=1))
    gcs.ignore_preconditions = True
    _replace_on_second_read(gcs, pattern(4 * MiB, seed=2))
    with pytest.raises(IntegrityError, match="another generation"):
        open_source(gs_uri(gcs, pki, query="part_size=1MiB"), fast(concurrency=1)).open().read()


def test_gs_empty_object_is_read_without_a_media_request(gcs, pki):
    gcs.put("bkt", "m", b"")
    src = open_source(gs_uri(gcs, pki), fast())
    assert src.open().read() == b"" and src.read_prefix(100) == b""
    assert media_gets(gcs) == [] and gcs.count("GET") == 1


def test_gs_generation_in_the_uri_reads_that_generation(gcs, pki):
    old = pattern(2 * MiB, seed=1)
    gen = gcs.put("bkt", "m", old)
    gcs.put("bkt", "m", pattern(2 * MiB, seed=2))
    src = open_source(gs_uri(gcs, pki, query=f"generation={gen}&part_size=1MiB"), fast())
    assert src.open().read() == old
    assert all(f"generation={gen}" in path for _, path, _ in media_gets(gcs))
    with pytest.raises(DeniedError):
        open_source(gs_uri(gcs, pki, query="generation=12345"), fast()).open()


@pytest.mark.parametrize("fault", [
    Fault("status", 200, body=b'{"generation": "1"}', path="fields="),
    Fault("status", 200, body=b'{"size": "-1", "generation": "1"}', path="fields="),
    Fault("status", 200, body=b'{"size": 10, "generation": "1"}', path="fields="),
    Fault("status", 200, body=b'{"size": "10"}', path="fields="),
    Fault("status", 200, body=b'{"size": "10", "generation": 1}', path="fields="),
    Fault("status", 200, body=b"[]", path="fields="),
    Fault("status", 206, body=b"x" * 10, path="alt=media", headers={"Content-Range": "bytes 1-10/10"}),
    Fault("status", 206, body=b"x" * 10, path="alt=media", headers={"Content-Range": "bytes 0-9/11"}),
    Fault("status", 200, body=b"x" * 10, path="alt=media"),
    Fault("status", 206, body=b"x" * 10, path="alt=media",
          headers={"Content-Range": "bytes 0-9/10", "Content-Encoding": "gzip"}),
], ids=["no-size", "negative-size", "number-size", "no-generation", "number-generation", "array",
        "other-range", "other-total", "no-range", "transcoded"])
def test_gs_malformed_answers_exit_4(gcs, pki, fault):
    gcs.put("bkt", "m", b"0123456789")
    gcs.add_fault(fault)
    with pytest.raises(IntegrityError):
        open_source(gs_uri(gcs, pki), fast()).open().read()


def test_gs_bearer_goes_to_the_endpoint_and_nowhere_else(pki, metadata, elsewhere):
    with GCSServer(tls=pki.server_context()) as srv:
        srv.put("bkt", "m", b"sealed")
        uri = f"gs://bkt/m?endpoint_url={srv.url}&ca={pki.ca}"
        got = open_source(uri, fast()).open().read()
        assert got == b"sealed"
        assert {h.get("Authorization") for _, _, h, _ in srv.seen} == {f"Bearer {metadata.token}"}
        assert metadata.count() == 1
        srv.add_fault(Fault("status", 302, path="alt=media", headers={"Location": f"{elsewhere.url}/token"}))
        with pytest.raises(UsageError, match="redirect"):
            open_source(uri, fast()).open().read()
        assert elsewhere.count() == 0
        srv.token = "ya29.another"  # the store does not take this token: 401
        with pytest.raises(DeniedError):
            open_source(uri, fast()).open()


# --------------------------------------------------------------------------- GCS: resumable uploads

def test_gs_upload_resumes_after_a_dropped_chunk(gcs, pki):
    data = pattern(MiB + 100, seed=4)
    # The second chunk's connection drops after the session persisted it: asked, not re-sent.
    gcs.add_fault(Fault("tamper", method="PUT"), Fault("cut", method="PUT"))
    with open_source(gs_uri(gcs, pki, name="up", query="part_size=256KiB"), fast()).open_write() as w:
        w.write(data)
    assert gcs.live("bkt", "up")[1] == data
    bodies = [b for m, _, _, b in gcs.seen if m == "PUT"]
    assert sum(len(b) for b in bodies) == len(data)  # no byte sent twice
    spans = [h["Content-Range"] for m, _, h, _ in gcs.seen if m == "PUT"]
    assert "bytes */*" in spans  # the status query after the drop


def test_gs_abort_cancels_the_session_and_creates_nothing(gcs, pki):
    w = open_source(gs_uri(gcs, pki, name="up", query="part_size=256KiB"), fast()).open_write()
    w.write(pattern(MiB))
    w.abort()
    [session] = gcs.sessions.values()
    assert session["state"] == "cancelled" and gcs.live("bkt", "up") is None
    assert [m for m, _, _ in gcs.requests].count("DELETE") == 1
    with pytest.raises(RuntimeError):
        with open_source(gs_uri(gcs, pki, name="up2", query="part_size=256KiB"), fast()).open_write() as w2:
            w2.write(pattern(MiB))
            raise RuntimeError("the sealing failed")
    assert [s["state"] for s in gcs.sessions.values()] == ["cancelled", "cancelled"]
    assert gcs.live("bkt", "up2") is None


def test_gs_unclosed_writer_is_cancelled_when_dropped(gcs, pki):
    import gc

    w = open_source(gs_uri(gcs, pki, name="up", query="part_size=256KiB"), fast()).open_write()
    w.write(pattern(MiB))
    del w
    gc.collect()
    assert [s["state"] for s in gcs.sessions.values()] == ["cancelled"] and gcs.live("bkt", "up") is None


def test_gs_session_on_another_origin_is_refused_and_gets_no_token(pki, metadata, elsewhere):
    with GCSServer(tls=pki.server_context()) as srv:
        srv.session_base = elsewhere.url
        with pytest.raises(IntegrityError, match="another origin"):
            with open_source(f"gs://bkt/up?endpoint_url={srv.url}&ca={pki.ca}&part_size=256KiB",
                             fast()).open_write() as w:
                w.write(pattern(MiB))
        assert srv.count("POST") == 1 and srv.seen[0][2]["Authorization"] == f"Bearer {metadata.token}"
        assert elsewhere.count() == 0 and not elsewhere.saw(metadata.token)


@pytest.mark.parametrize("answer", [
    Fault("status", 308, method="PUT", headers={"Range": "bytes=0-abc"}),
    Fault("status", 308, method="PUT", headers={"Range": f"bytes=0-{10 * MiB}"}),
    Fault("status", 308, method="PUT", headers={"Range": "bytes=5-9"}),
    Fault("status", 200, method="PUT", body=b'{"size": "3"}'),
    Fault("status", 200, method="PUT", body=b"not json"),
    Fault("status", 200, method="POST"),  # no session URI
    Fault("status", 200, method="POST", headers={"Location": "ftp://127.0.0.1/x"}),
], ids=["range-not-a-number", "range-beyond", "range-not-from-0", "wrong-size", "not-json", "no-location",
        "ftp-location"])
def test_gs_malformed_upload_answers_exit_4(gcs, pki, answer):
    gcs.add_fault(answer)
    with pytest.raises(IntegrityError):
        with open_source(gs_uri(gcs, pki, name="up", query="part_size=256KiB"), fast()).open_write() as w:
            w.write(pattern(MiB))
    assert gcs.live("bkt", "up") is None


# --------------------------------------------------------------------------- end to end, through the CLI

def _cli_env(metadata, **extra) -> dict:
    env = {"GCE_METADATA_HOST": metadata.host, "NO_PROXY": "127.0.0.1"}
    env.update(extra)
    return env


def _no_token_leaked(result, term, metadata) -> None:
    for token in metadata.tokens:
        assert token not in result.stderr and token.encode() not in result.stdout
        assert token not in term.read_text()


def test_seal_to_gs_then_run_from_gs_byte_exact(emulator, kms, metadata, pki, shm):
    emu, bucket = emulator
    src = shm / "model"
    src.mkdir()
    make_tree(src, big=2 * MiB + 5)
    term = shm / "termination"
    term.write_text("")
    env = _cli_env(metadata, STORAGE_EMULATOR_HOST=emu.url, MODELSEAL_TERMINATION_LOG=str(term))
    key_uri = f"gcp-kms://{KEY_NAME}?context.model=llama&endpoint_url={kms.url}"
    r = modelseal("seal", str(src), "-o", f"gs://{bucket}/models/m.seal", "--key-uri", key_uri,
                  "--ca", pki.ca, env=env)
    assert r.code == 0, r.stderr
    _no_token_leaked(r, term, metadata)
    header = emu.get(bucket, "models/m.seal")
    assert KEY_NAME.encode() in header[:4096] and b"gcp-kms" in header[:4096]
    out = shm / "out"
    r = modelseal("run", "--source", f"gs://{bucket}/models/m.seal", "--key-uri", key_uri,
                  "--ca", pki.ca, "-o", str(out), env=env)
    assert r.code == 0, r.stderr
    assert tree(out) == tree(src)
    _no_token_leaked(r, term, metadata)
    # A pod that insists on another model refuses this file, and writes nothing.
    refused = shm / "refused"
    r = modelseal("run", "--source", f"gs://{bucket}/models/m.seal", "--key-uri",
                  f"gcp-kms://{KEY_NAME}?context.model=mistral&endpoint_url={kms.url}", "--ca", pki.ca,
                  "-o", str(refused), env=env)
    assert r.code == 4 and "model=mistral" in r.error(), r.stderr
    assert not refused.exists() or not any(refused.iterdir())
    _no_token_leaked(r, term, metadata)


def test_rewrap_on_gs_with_the_cloud_kms_key_adds_an_age_recipient(emulator, kms, metadata, pki, shm):
    """rewrap gs:// -> gs://, unlocked by Cloud KMS: the payload byte for byte, and the age key added opens it."""
    import pyrage

    from conftest import payload_offset

    emu, bucket = emulator
    src = shm / "model"
    src.mkdir()
    make_tree(src, big=MiB + 3)
    identity = pyrage.x25519.Identity.generate()
    (shm / "age.key").write_text(f"{identity}\n")
    env = _cli_env(metadata, STORAGE_EMULATOR_HOST=emu.url)
    key_uri = f"gcp-kms://{KEY_NAME}?endpoint_url={kms.url}"
    r = modelseal("seal", str(src), "-o", f"gs://{bucket}/m.seal", "--key-uri", key_uri, "--ca", pki.ca, env=env)
    assert r.code == 0, r.stderr
    r = modelseal("rewrap", f"gs://{bucket}/m.seal", "-o", f"gs://{bucket}/r.seal", "--key-uri", key_uri,
                  "--add", str(identity.to_public()), "--ca", pki.ca, env=env)
    assert r.code == 0, r.stderr
    before, after = emu.get(bucket, "m.seal"), emu.get(bucket, "r.seal")
    assert after[payload_offset(after):] == before[payload_offset(before):] and len(after) > len(before)
    r = modelseal("run", "--source", f"gs://{bucket}/r.seal", "--identity", f"file://{shm / 'age.key'}",
                  "-o", str(shm / "out"), env=env)
    assert r.code == 0, r.stderr
    assert tree(shm / "out") == tree(src)


def test_cli_one_token_for_key_and_source_and_none_in_logs(kms, metadata, pki, shm):
    """Both the key and the model come through the bearer token: asked once per process, never logged."""
    with GCSServer(tls=pki.server_context()) as gcs:
        gcs.token = None
        src = shm / "model"
        src.mkdir()
        make_tree(src, big=MiB)
        term = shm / "termination"
        term.write_text("")
        env = _cli_env(metadata, MODELSEAL_TERMINATION_LOG=str(term))
        kuri = f"gcp-kms://{KEY_NAME}?endpoint_url={kms.url}"
        suri = f"gs://bkt/m.seal?endpoint_url={gcs.url}"
        r = modelseal("seal", str(src), "-o", suri, "--key-uri", kuri, "--ca", pki.ca, env=env)
        assert r.code == 0, r.stderr
        assert metadata.count() == 1
        assert {h.get("Authorization") for _, _, h, _ in gcs.seen} == {f"Bearer {metadata.tokens[0]}"}
        r = modelseal("run", "--source", suri, "--key-uri", kuri, "--ca", pki.ca, "-o", str(shm / "out"), env=env)
        assert r.code == 0, r.stderr
        assert tree(shm / "out") == tree(src)
        assert metadata.count() == 2  # one per process, shared by the key source and the model source
        _no_token_leaked(r, term, metadata)
        kms.denied.add(KEY_NAME)  # 403: exit 3, and the token is still nowhere in the output
        r = modelseal("run", "--source", suri, "--key-uri", kuri, "--ca", pki.ca, "-o", str(shm / "o2"), env=env)
        assert r.code == 3, r.stderr
        _no_token_leaked(r, term, metadata)
        assert "denied" in term.read_text()


def test_cli_generation_changed_mid_download_exits_4_and_leaves_nothing(gcs, pki, shm):
    gcs.put("bkt", "m", pattern(2 * MiB, seed=1))
    _replace_on_second_read(gcs, pattern(2 * MiB, seed=2))
    out = shm / "m.seal"
    r = modelseal("fetch-model", "--source", gs_uri(gcs, pki, query="part_size=256KiB"), "--concurrency", "1",
                  "-o", str(out))
    assert r.code == 4 and "changed" in r.error(), r.stderr
    assert list(shm.iterdir()) == []


def test_cli_failed_seal_to_gs_cancels_the_upload(gcs, pki, kms, metadata, shm):
    src = shm / "model"
    src.mkdir()
    make_tree(src, big=2 * MiB)
    gcs.add_fault(Fault("tamper", method="PUT"), Fault("status", 403, method="PUT"))
    r = modelseal("seal", str(src), "-o", gs_uri(gcs, pki, name="m.seal", query="part_size=256KiB"),
                  "--key-uri", kms_uri(kms, pki), env=_cli_env(metadata))
    assert r.code == 3, r.stderr
    assert [s["state"] for s in gcs.sessions.values()] == ["cancelled"]
    assert gcs.live("bkt", "m.seal") is None
