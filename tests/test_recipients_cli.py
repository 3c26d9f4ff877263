""".seal v2 through the real command line: recipients (age keys, a KMS key, a key file), --identity,
inspect's recipient list, rewrap on files, s3:// and oci:// with the payload byte for byte, and every
tampering of the recipient list refused with exit 4 and nothing left behind (issue 21)."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import struct
import uuid
from pathlib import Path

import pyrage
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from conftest import modelseal, payload_offset
from modelseal import errors

VECTORS = Path(__file__).parent / "vectors" / "seal-v2"
MANIFEST = json.loads((VECTORS / "manifest.json").read_text())


class Age:
    """An age key pair made by pyrage (age's own implementation): the identity on tmpfs, as a
    Kubernetes Secret mounted as a file would give it."""

    def __init__(self, where: Path, name: str) -> None:
        identity = pyrage.x25519.Identity.generate()
        self.recipient = str(identity.to_public())
        self.file = where / f"{name}.agekey"
        self.file.write_text(f"# created by pyrage for the test\n{identity}\n")
        self.uri = f"file://{self.file}"


def sections(data: bytes) -> dict[str, tuple[int, int]]:
    """Where each part of a v2 file is, by docs/FORMAT.md's layout (not by modelseal's code)."""
    flen = struct.unpack(">I", data[6:10])[0]
    rlen = struct.unpack(">I", data[10 + flen:14 + flen])[0]
    at = 14 + flen + rlen
    return {"fixed": (10, 10 + flen), "list": (14 + flen, at), "mac": (at, at + 32), "payload": (at + 32, len(data))}


def payload(data: bytes) -> bytes:
    return data[payload_offset(data):]


def spec_mac(data_key: bytes, authenticated: bytes) -> bytes:
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"modelseal/v2/header").derive(data_key)
    return hmac.new(key, authenticated, hashlib.sha256).digest()


@pytest.fixture
def model(shm: Path) -> Path:
    src = shm / "model"
    (src / "sub").mkdir(parents=True)
    (src / "weights.bin").write_bytes(os.urandom(1_500_000))  # two segments
    (src / "sub" / "config.json").write_text('{"layers": 3}')
    return src


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def kms_key(moto, aws_env) -> tuple[str, str]:
    """A KMS key in moto: its alias URI and its ARN (what the stanza records)."""
    import boto3

    client = boto3.client("kms", endpoint_url=moto.url, region_name="us-east-1")
    meta = client.create_key(Description="modelseal v2 cli test")["KeyMetadata"]
    alias = "alias/ms-" + uuid.uuid4().hex[:8]
    client.create_alias(AliasName=alias, TargetKeyId=meta["KeyId"])
    return f"aws-kms://{alias}?endpoint_url={moto.url}", meta["Arn"]


def decrypts(shm: Path, sealed: Path, *key: str) -> tuple[int, str]:
    """decrypt with these key flags: (exit code, error); on success the plaintext is checked by the caller."""
    out = shm / "plain.tar"
    if out.exists():
        out.unlink()
    r = modelseal("decrypt", "--in", str(sealed), "-o", str(out), *key)
    if r.code:
        assert not out.exists() and not Path(str(out) + ".partial").exists(), "a failed decrypt left output"
    return r.code, r.error()


def recipients_of(sealed: Path) -> list[dict]:
    r = modelseal("inspect", str(sealed))
    assert r.code == 0, r.stderr
    return json.loads(r.stdout)["recipients"]


def test_two_age_recipients_and_a_kms_key_each_unlock_and_rewrap_swaps_one(shm, model, kms_key):
    alice, bob, carol = Age(shm, "alice"), Age(shm, "bob"), Age(shm, "carol")
    kms_uri, arn = kms_key
    sealed = shm / "m.seal"
    r = modelseal("seal", str(model), "-o", str(sealed), "--recipient", alice.recipient, "--recipient",
                  bob.recipient, "--recipient", kms_uri)
    assert r.code == 0, r.stderr
    assert sealed.read_bytes()[:6] == b"MSEAL\x02"
    listed = recipients_of(sealed)
    assert listed == [{"type": "X25519", "recipient": alice.recipient}, {"type": "X25519", "recipient": bob.recipient},
                      {"type": "kms", "recipient": f"aws-kms {arn}"}]
    assert "body" not in json.dumps(listed)  # no stanza body (a wrapped key) in inspect's output
    first = None
    for key in (["--identity", alice.uri], ["--identity", bob.uri], ["--key-uri", kms_uri]):
        code, error = decrypts(shm, sealed, *key)
        assert code == 0, (key, error)
        first = first or (shm / "plain.tar").read_bytes()
        assert (shm / "plain.tar").read_bytes() == first
    code, error = decrypts(shm, sealed, "--identity", carol.uri)
    assert code == 4 and "not a recipient" in error

    rewrapped = shm / "r.seal"
    r = modelseal("rewrap", str(sealed), "-o", str(rewrapped), "--identity", alice.uri, "--remove", bob.recipient,
                  "--add", carol.recipient)
    assert r.code == 0, r.stderr
    assert [x["recipient"] for x in recipients_of(rewrapped)] == [alice.recipient, f"aws-kms {arn}", carol.recipient]
    assert payload(rewrapped.read_bytes()) == payload(sealed.read_bytes())  # the payload, byte for byte
    before, after = sealed.read_bytes(), rewrapped.read_bytes()
    assert before[slice(*sections(before)["fixed"])] == after[slice(*sections(after)["fixed"])]
    code, error = decrypts(shm, rewrapped, "--identity", bob.uri)
    assert code == 4 and "not a recipient" in error
    for key in (["--identity", carol.uri], ["--identity", alice.uri], ["--key-uri", kms_uri]):
        code, error = decrypts(shm, rewrapped, *key)
        assert code == 0, (key, error)
        assert (shm / "plain.tar").read_bytes() == first
    # the KMS key removed by the URI that added it (its alias; the stanza names the ARN), by the KMS key
    r = modelseal("rewrap", str(rewrapped), "-o", str(rewrapped), "--key-uri", kms_uri, "--remove", kms_uri)
    assert r.code == 0, r.stderr
    assert [x["recipient"] for x in recipients_of(rewrapped)] == [alice.recipient, carol.recipient]
    assert payload(rewrapped.read_bytes()) == payload(sealed.read_bytes())
    code, error = decrypts(shm, rewrapped, "--key-uri", kms_uri)
    assert code == 4 and "is a recipient of this file" in error  # "no aws-kms key is ..."


def test_rewrap_refuses_to_remove_the_last_recipient_and_leaves_nothing(shm, model):
    alice = Age(shm, "alice")
    sealed = shm / "m.seal"
    assert modelseal("seal", str(model), "-o", str(sealed), "--recipient", alice.recipient).code == 0
    before = sealed.read_bytes()
    for out in (shm / "new.seal", sealed):
        r = modelseal("rewrap", str(sealed), "-o", str(out), "--identity", alice.uri, "--remove", alice.recipient)
        assert r.code == 2 and "last recipient" in r.error()
    assert sealed.read_bytes() == before
    assert sorted(p.name for p in shm.iterdir()) == ["alice.agekey", "m.seal", "model"]


def test_rewrap_with_a_key_that_is_no_recipient_is_exit_4_and_leaves_nothing(shm, model):
    alice, mallory = Age(shm, "alice"), Age(shm, "mallory")
    sealed = shm / "m.seal"
    assert modelseal("seal", str(model), "-o", str(sealed), "--recipient", alice.recipient).code == 0
    r = modelseal("rewrap", str(sealed), "-o", str(shm / "new.seal"), "--identity", mallory.uri, "--add",
                  mallory.recipient)
    assert r.code == 4 and "not a recipient" in r.error()
    assert not (shm / "new.seal").exists() and not (shm / "new.seal.partial").exists()


def test_rewrap_refuses_a_version_1_file(shm):
    v1 = Path(__file__).parent / "vectors" / "seal-v1" / "ok-one-segment.seal"
    key = Path(__file__).parent / "vectors" / "seal-v1" / "data.key"
    alice = Age(shm, "alice")
    r = modelseal("rewrap", str(v1), "-o", str(shm / "new.seal"), "--key", str(key), "--add", alice.recipient)
    assert r.code == 2 and "version 1" in r.error()
    assert not (shm / "new.seal").exists()


def test_a_key_file_is_a_symmetric_recipient_and_the_data_key_opens_too(shm, model):
    """--key FILE seals to that key; fetch-key --identity writes the data key, which decrypt --key takes."""
    alice = Age(shm, "alice")
    assert modelseal("keygen", "-o", str(shm / "k")).code == 0
    sealed = shm / "m.seal"
    assert modelseal("seal", str(model), "-o", str(sealed), "--key", str(shm / "k"), "--recipient",
                     alice.recipient).code == 0
    assert [x["type"] for x in recipients_of(sealed)] == ["X25519", "symmetric"]
    r = modelseal("fetch-key", "--identity", alice.uri, "--wrapped-from", str(sealed), "-o", str(shm / "data.key"))
    assert r.code == 0, r.stderr
    assert (shm / "data.key").read_bytes() != (shm / "k").read_bytes()
    for key in (shm / "k", shm / "data.key"):
        code, error = decrypts(shm, sealed, "--key", str(key))
        assert code == 0, error
    (shm / "wrong.key").write_bytes(os.urandom(32))
    code, error = decrypts(shm, sealed, "--key", str(shm / "wrong.key"))
    assert code == 4 and "header MAC" in error
    # removed as inspect lists it (the key file itself need not be at hand), by the data key
    label = recipients_of(sealed)[1]["recipient"]
    assert label.startswith("key id ")
    r = modelseal("rewrap", str(sealed), "-o", str(sealed), "--key", str(shm / "data.key"), "--remove", label)
    assert r.code == 0, r.stderr
    assert [x["type"] for x in recipients_of(sealed)] == ["X25519"]
    code, error = decrypts(shm, sealed, "--key", str(shm / "k"))
    assert code == 4
    code, error = decrypts(shm, sealed, "--key", str(shm / "data.key"))  # the data key still opens: no revocation
    assert code == 0, error


@pytest.fixture
def two_files(shm, model):
    """Two files sealed to the same two age keys (so two data keys), and the keys."""
    alice, bob = Age(shm, "alice"), Age(shm, "bob")
    files = []
    for name in ("one", "two"):
        f = shm / f"{name}.seal"
        assert modelseal("seal", str(model), "-o", str(f), "--recipient", alice.recipient, "--recipient",
                         bob.recipient, "--name", "m", "--model-version", "1").code == 0
        files.append(f)
    return files, alice, bob


def test_a_flipped_byte_anywhere_in_the_recipient_list_is_exit_4(shm, two_files):
    (one, _), alice, bob = two_files
    data = one.read_bytes()
    start, end = sections(data)["list"]
    # bytes across the whole list: brackets, type names, arguments and both stanzas' bodies
    for at in sorted({start, end - 1, *range(start, end, max(1, (end - start) // 9))}):
        bad = bytearray(data)
        bad[at] ^= 0x01
        forged = shm / "forged.seal"
        forged.write_bytes(bytes(bad))
        for identity in (alice, bob):
            code, error = decrypts(shm, forged, "--identity", identity.uri)
            assert code == 4, (at - start, identity.recipient, error)


def test_a_stanza_moved_from_another_file_is_exit_4(shm, two_files):
    (one, two), alice, bob = two_files
    a, b = one.read_bytes(), two.read_bytes()
    mine, theirs = json.loads(a[slice(*sections(a)["list"])]), json.loads(b[slice(*sections(b)["list"])])
    assert mine[0] != theirs[0]  # the same recipient, another data key
    moved = json.dumps([theirs[0], mine[1]], sort_keys=True, separators=(",", ":")).encode()
    fixed_end = sections(a)["fixed"][1]
    forged = a[:fixed_end] + struct.pack(">I", len(moved)) + moved + a[sections(a)["mac"][0]:]
    (shm / "forged.seal").write_bytes(forged)
    code, error = decrypts(shm, shm / "forged.seal", "--identity", alice.uri)  # unwraps file two's data key
    assert code == 4 and "header MAC" in error
    code, error = decrypts(shm, shm / "forged.seal", "--identity", bob.uri)  # its own stanza, a changed list
    assert code == 4 and "header MAC" in error


def test_a_header_mac_from_another_data_key_is_exit_4(shm, two_files):
    (one, two), alice, _ = two_files
    a = one.read_bytes()
    r = modelseal("fetch-key", "--identity", alice.uri, "--wrapped-from", str(two), "-o", str(shm / "two.key"))
    assert r.code == 0, r.stderr
    other_key = (shm / "two.key").read_bytes()
    at = sections(a)["mac"][0]
    forged = a[:at] + spec_mac(other_key, a[:at]) + a[at + 32:]  # a valid MAC, under file two's data key
    assert forged != a
    (shm / "forged.seal").write_bytes(forged)
    code, error = decrypts(shm, shm / "forged.seal", "--identity", alice.uri)
    assert code == 4 and "header MAC" in error
    code, error = decrypts(shm, shm / "forged.seal", "--key", str(shm / "two.key"))  # file two's key: no
    assert code == 4


@pytest.mark.parametrize("vector", MANIFEST["vectors"], ids=lambda v: v["name"])
def test_v2_vector_through_the_cli(vector, shm):
    """decrypt does with each published vector what the manifest says, and a failure leaves nothing."""
    key = (["--identity", f"file://{VECTORS / vector['identity']}"] if "identity" in vector
           else ["--key", str(VECTORS / vector["key"])])
    out = shm / "out"
    r = modelseal("decrypt", "--in", str(VECTORS / vector["file"]), "-o", str(out), *key)
    assert r.code == vector["exit"], (vector["name"], r.stderr[-600:])
    if vector["exit"] == 0:
        data = out.read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (vector["plaintext_bytes"],
                                                                 vector["plaintext_sha256"])
        return
    assert vector["says"] in r.error() and "\n" not in r.error(), (vector["name"], r.error())
    assert getattr(errors, vector["error"]).exit_code == vector["exit"]
    assert list(shm.iterdir()) == []


def test_the_four_stage_chain_with_an_age_identity_from_a_secret_file(shm, model):
    """fetch-key --identity (the Secret's file) writes the data key from the source's header (a ranged read),
    then fetch-model, decrypt --key, unpack: the pod's four init containers."""
    alice = Age(shm, "alice")
    sealed = shm / "m.seal"
    assert modelseal("seal", str(model), "-o", str(sealed), "--recipient", alice.recipient).code == 0
    steps = [("fetch-key", "--identity", alice.uri, "--source", f"file://{sealed}", "-o", str(shm / "data.key")),
             ("fetch-model", "--source", f"file://{sealed}", "-o", str(shm / "fetched.seal")),
             ("decrypt", "--in", str(shm / "fetched.seal"), "--key", str(shm / "data.key"), "-o",
              str(shm / "m.tar"), "--delete-input", "--delete-key"),
             ("unpack", "--in", str(shm / "m.tar"), "-o", str(shm / "tree"), "--delete-input")]
    for step in steps:
        r = modelseal(*step)
        assert r.code == 0, (step[0], r.stderr)
    assert tree(shm / "tree") == tree(model)
    assert not (shm / "data.key").exists() and not (shm / "m.tar").exists()


def test_identity_usage_errors_are_exit_2(shm, model):
    alice = Age(shm, "alice")
    sealed = shm / "m.seal"
    assert modelseal("seal", str(model), "-o", str(sealed), "--recipient", alice.recipient).code == 0
    (shm / "not-age").write_text("hello\n")
    for args, says in ((["seal", str(model), "-o", str(shm / "x.seal"), "--recipient", "age1notakey"], "age1"),
                       (["seal", str(model), "-o", str(shm / "x.seal")], "no recipient"),
                       (["decrypt", "--in", str(sealed), "-o", str(shm / "o"), "--identity",
                         f"file://{shm / 'not-age'}"], "not an age identity"),
                       (["fetch-key", "--identity", alice.uri, "-o", str(shm / "k")], "--wrapped-from"),
                       (["decrypt", "--in", str(sealed), "-o", str(shm / "o"), "--identity", alice.uri,
                         "--delete-key"], "an --identity is not deleted"),
                       (["rewrap", str(sealed), "-o", str(shm / "x.seal"), "--identity", alice.uri], "nothing to do")):
        r = modelseal(*args)
        assert r.code == 2 and says in r.error(), (args[0], r.error())
        assert not (shm / "x.seal").exists() and not (shm / "o").exists() and not (shm / "k").exists()
    secret = alice.file.read_text().split()[-1]  # an identity given where a recipient goes: never echoed
    r = modelseal("seal", str(model), "-o", str(shm / "x.seal"), "--recipient", secret)
    assert r.code == 2 and "public key" in r.error() and secret[15:] not in r.stderr
    assert not (shm / "x.seal").exists()


# ---- rewrap on object stores and registries: the payload streamed through ---------------------------------

@pytest.fixture
def s3(moto, aws_env):
    import boto3

    client = boto3.client("s3", endpoint_url=moto.url, region_name="us-east-1")
    bucket = "b-" + uuid.uuid4().hex[:12]
    client.create_bucket(Bucket=bucket)
    return client, bucket


def test_rewrap_on_s3_keeps_the_payload(shm, model, s3, moto):
    client, bucket = s3
    alice, bob = Age(shm, "alice"), Age(shm, "bob")
    src, dst = f"s3://{bucket}/m.seal?endpoint_url={moto.url}", f"s3://{bucket}/r.seal?endpoint_url={moto.url}"
    assert modelseal("seal", str(model), "-o", src, "--recipient", alice.recipient).code == 0
    r = modelseal("rewrap", src, "-o", dst, "--identity", alice.uri, "--add", bob.recipient)
    assert r.code == 0, r.stderr
    before = client.get_object(Bucket=bucket, Key="m.seal")["Body"].read()
    after = client.get_object(Bucket=bucket, Key="r.seal")["Body"].read()
    assert payload(after) == payload(before) and len(after) > len(before)
    r = modelseal("run", "--source", dst, "--identity", bob.uri, "-o", str(shm / "tree"))
    assert r.code == 0, r.stderr
    assert tree(shm / "tree") == tree(model)


def test_rewrap_on_oci_keeps_the_payload(shm, model):
    from support.registry import Registry

    alice, bob = Age(shm, "alice"), Age(shm, "bob")
    (shm / "docker").mkdir()
    env = {"DOCKER_CONFIG": str(shm / "docker")}
    with Registry() as reg:
        src, dst = f"oci://{reg.host}/models/m:1", f"oci://{reg.host}/models/m:2"
        assert modelseal("seal", str(model), "-o", src, "--recipient", alice.recipient, "--allow-http",
                         env=env).code == 0
        r = modelseal("rewrap", src, "-o", dst, "--identity", alice.uri, "--add", bob.recipient, "--remove",
                      alice.recipient, "--allow-http", env=env)
        assert r.code == 0, r.stderr
        for ref, name in ((src, "m.seal"), (dst, "r.seal")):
            r = modelseal("fetch-model", "--source", ref, "-o", str(shm / name), "--allow-http", env=env)
            assert r.code == 0, r.stderr
        assert payload((shm / "r.seal").read_bytes()) == payload((shm / "m.seal").read_bytes())
        r = modelseal("run", "--source", dst, "--identity", bob.uri, "-o", str(shm / "tree"), "--allow-http", env=env)
        assert r.code == 0, r.stderr
        assert tree(shm / "tree") == tree(model)
        code, error = decrypts(shm, shm / "r.seal", "--identity", alice.uri)
        assert code == 4 and "not a recipient" in error


def test_a_version_1_file_wrapped_by_kms_with_the_v1_context_still_opens(shm, kms_key, moto):
    """Files sealed before version 2 carry {"modelseal": "v1"}: the context goes back to KMS as stored."""
    import io

    import boto3

    from modelseal import sealfile

    kms_uri, arn = kms_key
    data_key, plaintext = os.urandom(32), os.urandom(70_000)
    client = boto3.client("kms", endpoint_url=moto.url, region_name="us-east-1")
    blob = client.encrypt(KeyId=arn, Plaintext=data_key, EncryptionContext={"modelseal": "v1"})["CiphertextBlob"]
    header = sealfile.Header(key_id="", wrapped_key=sealfile.WrappedKey("aws-kms", arn, blob, {"modelseal": "v1"}))
    out = io.BytesIO()
    with sealfile.seal_writer(out, header, data_key) as w:
        w.write(plaintext)
    (shm / "v1.seal").write_bytes(out.getvalue())
    assert out.getvalue()[:6] == b"MSEAL\x01"
    code, error = decrypts(shm, shm / "v1.seal", "--key-uri", kms_uri)
    assert code == 0, error
    assert (shm / "plain.tar").read_bytes() == plaintext
    r = modelseal("fetch-key", "--key-uri", kms_uri, "--wrapped-from", str(shm / "v1.seal"), "-o", str(shm / "k"))
    assert r.code == 0, r.stderr
    assert (shm / "k").read_bytes() == data_key


def test_repeatable_flags_from_the_environment(shm, model):
    """$MODELSEAL_RECIPIENT / _ADD / _REMOVE, as a pod spec sets them: words on one line, or one a line (an
    inspect label has spaces)."""
    alice, bob = Age(shm, "alice"), Age(shm, "bob")
    assert modelseal("keygen", "-o", str(shm / "k")).code == 0
    sealed = shm / "m.seal"
    r = modelseal("seal", str(model), "-o", str(sealed),
                  env={"MODELSEAL_RECIPIENT": f"{alice.recipient} {bob.recipient}"})
    assert r.code == 0, r.stderr
    r = modelseal("rewrap", str(sealed), "-o", str(sealed), "--identity", alice.uri,
                  env={"MODELSEAL_ADD": f"file://{shm / 'k'}"})
    assert r.code == 0, r.stderr
    label = recipients_of(sealed)[2]["recipient"]
    r = modelseal("rewrap", str(sealed), "-o", str(sealed), "--identity", alice.uri,
                  env={"MODELSEAL_REMOVE": f"{label}\n{bob.recipient}\n"})
    assert r.code == 0, r.stderr
    assert recipients_of(sealed) == [{"type": "X25519", "recipient": alice.recipient}]
