"""OpenSSF model signatures: verified in the stream by unpack/run, made by seal --sign-key.

The oracle is the real model_signing CLI (and, for shards, its library):
what it signs we must verify, what we sign it must verify, and each way a
model can differ from its signature fails with exit 4, one line naming the
file, and nothing left behind.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import tarfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from conftest import modelseal
from support.models import make_model
from support.signing import CODE_SIGNING, files, model_signing, nothing_left, pack, pki, write_key


@pytest.fixture
def signed(shm: Path):
    """A model signed by model_signing's key method (model.sig inside), and its keys."""
    model = shm / "model"
    model.mkdir()
    make_model(model)
    private, public, _ = write_key(shm, "signer")
    r = model_signing("sign", "key", "--private_key", private, "--signature", model / "model.sig", model)
    assert r.returncode == 0, r.stderr
    return model, private, public


def seal_then_run(shm: Path, model: Path, public: Path):
    """Seal `model` (with the signature it holds) and deliver it with `run --verify-key`."""
    key = shm / "data.key"
    assert modelseal("keygen", "-o", str(key)).code == 0
    assert modelseal("seal", str(model), "-o", str(shm / "m.seal"), "--key", str(key)).code == 0
    dest = shm / "out"
    return modelseal("run", "--source", f"file://{shm / 'm.seal'}", "--key", str(key), "-o", str(dest),
                     "--verify-key", str(public)), dest


def unpack(tar: Path, dest: Path, *flags: str | Path):
    return modelseal("unpack", "--in", str(tar), "-o", str(dest), *map(str, flags))


# ---- signed by model_signing, verified by us ---------------------------------

@pytest.mark.parametrize("curve", ["P-256", "P-384", "P-521"])
def test_key_signature_from_model_signing_verifies(shm: Path, curve: str):
    model = shm / "model"
    model.mkdir()
    make_model(model)
    private, public, _ = write_key(shm, "signer", curve)
    assert model_signing("sign", "key", "--private_key", private, "--signature", model / "model.sig",
                         model).returncode == 0
    dest = shm / "out" / "model"
    r = unpack(pack(model, shm / "m.tar"), dest, "--verify-key", public)
    assert r.code == 0, r.error()
    assert files(dest) == files(model)
    done = [x for x in r.logs() if x.get("event") == "signature_verified"]
    assert done and done[0]["files"] == 4  # .gitignore and model.sig are not signed


def test_run_verifies_in_the_same_pass(shm: Path, signed):
    model, _, public = signed
    r, dest = seal_then_run(shm, model, public)
    assert r.code == 0, r.error()
    assert files(dest) == files(model)
    assert any(x.get("event") == "signature_verified" for x in r.logs())  # checked, not just delivered


def test_separate_signature_file_and_signature_elsewhere_in_the_model(shm: Path):
    model = shm / "model"
    model.mkdir()
    make_model(model)
    private, public, _ = write_key(shm, "signer")
    outside = shm / "detached.sig"
    assert model_signing("sign", "key", "--private_key", private, "--signature", outside, model).returncode == 0
    tar = pack(model, shm / "m.tar")
    r = unpack(tar, shm / "a", "--verify-key", public, "--signature", outside)
    assert r.code == 0, r.error()
    r = unpack(tar, shm / "b", "--verify-key", public)  # the default place, model.sig, holds nothing
    assert r.code == 4 and "no signature" in r.error() and nothing_left(shm / "b")

    inside = model / "sub" / "model.sig"
    shutil.copy(outside, inside)
    r = unpack(pack(model, shm / "m2.tar"), shm / "c", "--verify-key", public, "--signature", "sub/model.sig")
    # model_signing signed without sub/model.sig; it is the signature, so it is ignored, not extra
    assert r.code == 0, r.error()


def test_ignore_paths_of_the_manifest_are_honoured(shm: Path):
    model = shm / "model"
    model.mkdir()
    make_model(model)
    (model / "notes").mkdir()
    (model / "notes" / "README.md").write_text("unsigned notes")
    private, public, _ = write_key(shm, "signer")
    assert model_signing("sign", "key", "--private_key", private, "--signature", model / "model.sig",
                         "--ignore-paths", model / "notes", model).returncode == 0
    (model / "notes" / "README.md").write_text("changed, and still fine: ignored by the signer")
    (model / "notes" / "more.txt").write_text("added under an ignored path")
    (model / ".gitattributes").write_text("* binary\n")  # a git path: ignored by both sides
    oracle = model_signing("verify", "key", "--signature", model / "model.sig", "--public_key", public, model)
    assert oracle.returncode == 0, oracle.stderr
    r = unpack(pack(model, shm / "m.tar"), shm / "out", "--verify-key", public)
    assert r.code == 0, r.error()


def test_certificate_signature_from_model_signing_verifies(shm: Path):
    p = pki(shm)
    model = shm / "model"
    model.mkdir()
    make_model(model)
    r = model_signing("sign", "certificate", "--private_key", p["leaf_key"], "--signing_certificate", p["leaf"],
                      "--certificate_chain", p["inter"], "--signature", model / "model.sig", model)
    assert r.returncode == 0, r.stderr
    oracle = model_signing("verify", "certificate", "--signature", model / "model.sig", "--certificate_chain",
                           p["root"], model)
    assert oracle.returncode == 0, oracle.stderr
    tar = pack(model, shm / "m.tar")
    r = unpack(tar, shm / "ok", "--verify-certificate", p["root"])
    assert r.code == 0, r.error()

    (shm / "other").mkdir()
    other = pki(shm / "other")
    r = unpack(tar, shm / "wrong-root", "--verify-certificate", other["root"])
    assert r.code == 4 and "does not chain" in r.error() and nothing_left(shm / "wrong-root")
    assert model_signing("verify", "certificate", "--signature", model / "model.sig", "--certificate_chain",
                         other["root"], model).returncode != 0

    r = unpack(tar, shm / "as-key", "--verify-key", shm / "leaf-key.pub")
    assert r.code == 4 and "certificate, not a key" in r.error()


@pytest.mark.parametrize("usage,eku,ok", [
    ({"digital_signature"}, None, True),
    ({"key_encipherment"}, [CODE_SIGNING], True),
    ({"key_encipherment"}, None, False),
])
def test_certificate_usage_is_checked_like_model_signing(shm: Path, usage, eku, ok):
    p = pki(shm, leaf_usage=usage, leaf_eku=eku)
    model = shm / "model"
    model.mkdir()
    make_model(model, 1000)
    assert model_signing("sign", "certificate", "--private_key", p["leaf_key"], "--signing_certificate", p["leaf"],
                         "--certificate_chain", p["inter"], "--signature", model / "model.sig", model).returncode == 0
    oracle = model_signing("verify", "certificate", "--signature", model / "model.sig", "--certificate_chain",
                           p["root"], model)
    assert (oracle.returncode == 0) == ok
    r = unpack(pack(model, shm / "m.tar"), shm / "out", "--verify-certificate", p["root"])
    assert r.code == (0 if ok else 4), r.error()
    if not ok:
        assert "may not sign" in r.error() and nothing_left(shm / "out")


def _pae_v02(payload: bytes) -> bytes:
    """What model_signing v0.2 signed (its PAE bug), written here from its description, not ours."""
    t = "application/vnd.in-toto+json"
    return ("DSSEV1 %d %s %d %s" % (len(t), t, len(payload), str(payload))).encode()


def test_v01_digests_signature_verifies(shm: Path):
    """A bundle in the pre-1.0 format (Digests/v0.1 predicate, the old PAE, rawBytes key material):
    model_signing 1.1.1 accepts it, and so must we."""
    model = shm / "model"
    model.mkdir()
    make_model(model, 100_000)
    (model / ".gitignore").unlink()
    _, public, key = write_key(shm, "old")
    subjects = [{"name": name, "digest": {"sha256": hashlib.sha256(data).hexdigest()},
                 "annotations": {"actual_hash_algorithm": "file-sha256"}} for name, data in files(model).items()]
    payload = json.dumps({"_type": "https://in-toto.io/Statement/v1", "subject": subjects,
                          "predicateType": "https://model_signing/Digests/v0.1",
                          "predicate": {"unused": "Unused, just passed due to API requirements"}}, indent=2).encode()
    sig = key.sign(_pae_v02(payload), ec.ECDSA(hashes.SHA256()))  # P-256: the curve's hash
    bundle = {"mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
              "verificationMaterial": {"publicKey": {"rawBytes": base64.b64encode(public.read_bytes()).decode(),
                                                     "keyDetails": "PKIX_ECDSA_P256_SHA_256"}},
              "dsseEnvelope": {"payload": base64.b64encode(payload).decode(),
                               "payloadType": "application/vnd.in-toto+json",
                               "signatures": [{"sig": base64.b64encode(sig).decode(), "keyid": None}]}}
    (model / "model.sig").write_text(json.dumps(bundle))
    oracle = model_signing("verify", "key", "--signature", model / "model.sig", "--public_key", public, model)
    assert oracle.returncode == 0, oracle.stderr
    r = unpack(pack(model, shm / "m.tar"), shm / "out", "--verify-key", public)
    assert r.code == 0, r.error()
    (model / "config.json").write_text("changed")
    r = unpack(pack(model, shm / "m2.tar"), shm / "out2", "--verify-key", public)
    assert r.code == 4 and "'config.json' was changed" in r.error()


def test_shard_signature_verifies_when_the_signature_comes_first(shm: Path):
    import model_signing as lib  # the oracle's library: its CLI cannot sign by shards

    model = shm / "model"
    model.mkdir()
    make_model(model, 3 * 2**20 + 12345)
    private, public, _ = write_key(shm, "signer")
    detached = shm / "shards.sig"
    (lib.signing.Config().use_elliptic_key_signer(private_key=private)
     .set_hashing_config(lib.hashing.Config().use_shard_serialization(shard_size=1 << 20))
     .sign(model, detached))
    assert json.loads(base64.b64decode(json.loads(detached.read_text())["dsseEnvelope"]["payload"]))[
        "predicate"]["serialization"]["method"] == "shards"
    tar = pack(model, shm / "m.tar")
    r = unpack(tar, shm / "a", "--verify-key", public, "--signature", detached)
    assert r.code == 0, r.error()
    shutil.copy(detached, model / "model.sig")
    r = unpack(pack(model, shm / "first.tar", first="model.sig"), shm / "b", "--verify-key", public)
    assert r.code == 0, r.error()
    r = unpack(pack(model, shm / "last.tar"), shm / "c", "--verify-key", public)  # model.sig after config.json
    assert r.code == 4 and "came before the signature" in r.error() and nothing_left(shm / "c")
    r = unpack(pack(model, shm / "extra.tar"), shm / "e", "--verify-key", public, "--signature", detached)
    assert r.code == 4 and "'model.sig' is not in the signed manifest" in r.error()  # not ignored: not the signature
    (model / "model.sig").unlink()
    with open(model / "weights.bin", "r+b") as f:
        f.seek(2 * 2**20 + 7)
        f.write(b"\xff")
    r = unpack(pack(model, shm / "bad.tar"), shm / "d", "--verify-key", public, "--signature", detached)
    assert r.code == 4 and "'weights.bin' was changed" in r.error() and nothing_left(shm / "d")


def test_symlinks_count_as_their_targets(shm: Path):
    model = shm / "model"
    model.mkdir()
    make_model(model, 1000)
    (model / "latest.json").symlink_to("config.json")
    private, public, _ = write_key(shm, "signer")
    assert model_signing("sign", "key", "--private_key", private, "--signature", model / "model.sig",
                         "--allow_symlinks", model).returncode == 0
    tar = pack(model, shm / "m.tar")
    r = unpack(tar, shm / "out", "--verify-key", public, "--allow-symlinks")
    assert r.code == 0, r.error()
    assert (shm / "out" / "latest.json").is_symlink()


# ---- signed by us, verified by model_signing --------------------------------

@pytest.mark.parametrize("compress", ["none", "zstd"])
def test_seal_sign_key_verifies_with_model_signing(shm: Path, compress: str):
    model = shm / "model"
    model.mkdir()
    make_model(model)
    (model / "link.bin").symlink_to("weights.bin")  # seal follows links: a file in the archive
    private, public, _ = write_key(shm, "signer", "P-384")
    key = shm / "data.key"
    assert modelseal("keygen", "-o", str(key)).code == 0
    r = modelseal("seal", str(model), "-o", str(shm / "m.seal"), "--key", str(key), "--sign-key", str(private),
                  "--compress", compress)
    assert r.code == 0, r.error()
    assert not (model / "model.sig").exists()  # the source tree is left as it was

    dest = shm / "plain"
    r = modelseal("run", "--source", f"file://{shm / 'm.seal'}", "--key", str(key), "-o", str(dest))
    assert r.code == 0, r.error()
    oracle = model_signing("verify", "key", "--signature", dest / "model.sig", "--public_key", public, dest)
    assert oracle.returncode == 0, oracle.stderr + oracle.stdout

    r = modelseal("run", "--source", f"file://{shm / 'm.seal'}", "--key", str(key), "-o", str(shm / "checked"),
                  "--verify-key", str(public))
    assert r.code == 0, r.error()
    assert files(shm / "checked") == files(dest)

    # four stages: the signature is the tar's first member, so the manifest is known before the data
    tar = shm / "m.tar"
    assert modelseal("decrypt", "--in", str(shm / "m.seal"), "--key", str(key), "-o", str(tar)).code == 0
    if compress == "none":
        with tarfile.open(tar) as t:
            assert t.getnames()[0] == "model.sig"
    r = unpack(tar, shm / "staged", "--verify-key", public)
    assert r.code == 0, r.error()


def test_seal_sign_key_refusals(shm: Path, signed):
    model, private, public = signed
    key = shm / "data.key"
    assert modelseal("keygen", "-o", str(key)).code == 0
    r = modelseal("seal", str(model), "-o", str(shm / "x.seal"), "--key", str(key), "--sign-key", str(private))
    assert r.code == 2 and "already holds model.sig" in r.error()
    r = modelseal("seal", str(model / "config.json"), "-o", str(shm / "y.seal"), "--key", str(key),
                  "--sign-key", str(private))
    assert r.code == 2 and "model directory" in r.error()
    r = modelseal("seal", str(model), "-o", str(shm / "z.seal"), "--key", str(key), "--sign-key", str(public))
    assert r.code == 2 and "not a PEM private key" in r.error()
    assert not any((shm / n).exists() for n in ("x.seal", "y.seal", "z.seal"))


# ---- every failure: exit 4, one line naming what, nothing left ---------------

def _bundle(model: Path) -> dict:
    return json.loads((model / "model.sig").read_text())


def _payload(b: dict) -> dict:
    return json.loads(base64.b64decode(b["dsseEnvelope"]["payload"]))


def _set_payload(b: dict, statement: dict) -> None:
    b["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()


def _change(model: Path, public: Path, shm: Path) -> tuple[Path, str]:
    with open(model / "weights.bin", "r+b") as f:
        f.seek(2**20 + 3)
        f.write(b"\x00" if f.read(1) != b"\x00" else b"\x01")
    return public, "'weights.bin' was changed"


def _missing(model, public, shm):
    (model / "sub" / "deeper" / "vocab.txt").unlink()
    return public, "'sub/deeper/vocab.txt' is in the signed manifest but missing"


def _extra(model, public, shm):
    (model / "sub" / "extra.bin").write_bytes(b"not signed")
    return public, "'sub/extra.bin' is not in the signed manifest (an extra file)"


def _bad_signature(model, public, shm):
    b = _bundle(model)
    sig = bytearray(base64.b64decode(b["dsseEnvelope"]["signatures"][0]["sig"]))
    sig[-3] ^= 0x40
    b["dsseEnvelope"]["signatures"][0]["sig"] = base64.b64encode(bytes(sig)).decode()
    (model / "model.sig").write_text(json.dumps(b))
    return public, "model.sig: bad signature"


def _tampered_manifest(model, public, shm):
    b = _bundle(model)
    st = _payload(b)
    st["predicate"]["resources"][0]["digest"] = "00" * 32
    _set_payload(b, st)
    (model / "model.sig").write_text(json.dumps(b))
    return public, "model.sig: bad signature"


def _wrong_key(model, public, shm):
    return write_key(shm, "stranger")[1], "model.sig: signed with another key"


def _wrong_key_no_hint(model, public, shm):
    b = _bundle(model)
    del b["verificationMaterial"]["publicKey"]["hint"]  # older bundles name no key
    (model / "model.sig").write_text(json.dumps(b))
    return write_key(shm, "stranger")[1], "model.sig: bad signature"


def _no_signature(model, public, shm):
    (model / "model.sig").unlink()
    return public, "no signature: model.sig is not in the model"


@pytest.mark.parametrize("breakage", [_change, _missing, _extra, _bad_signature, _tampered_manifest, _wrong_key,
                                      _wrong_key_no_hint, _no_signature], ids=lambda f: f.__name__.strip("_"))
def test_each_failure_exits_4_names_it_and_leaves_nothing(shm: Path, signed, breakage):
    model, _, public = signed
    key, expected = breakage(model, public, shm)
    dest = shm / "out" / "model"
    r = unpack(pack(model, shm / "m.tar"), dest, "--verify-key", key)
    assert r.code == 4, r.stderr
    assert expected in r.error()
    assert "\n" not in r.error()
    assert nothing_left(dest, shm)  # out/ was made for it: gone too
    # the oracle agrees that this model does not verify
    assert model_signing("verify", "key", "--signature", model / "model.sig", "--public_key", key,
                         model).returncode != 0 or breakage is _no_signature


def test_a_failure_in_run_leaves_nothing(shm: Path, signed):
    model, _, public = signed
    (model / "config.json").write_text('{"layers": 4}')
    r, dest = seal_then_run(shm, model, public)
    assert r.code == 4 and "'config.json' was changed" in r.error()
    assert nothing_left(dest)


@pytest.mark.parametrize("content,reason", [
    (b"not json at all", "not valid UTF-8 JSON"),
    (b"[1, 2]", "expected an object"),
    (b'{"mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json", "verificationMaterial": {}}', "dsseEnvelope"),
    (json.dumps({"mediaType": "x", "verificationMaterial": {}, "dsseEnvelope": {
        "payload": "!!!", "payloadType": "application/vnd.in-toto+json", "signatures": [{"sig": "AA=="}]}}).encode(),
     "not valid base64"),
    (json.dumps({"mediaType": "x", "verificationMaterial": {}, "dsseEnvelope": {
        "payload": "", "payloadType": "t", "signatures": []}}).encode(), "no signature"),
    (b"\xff\xfe garbage", "not valid UTF-8 JSON"),
])
def test_malformed_bundles_exit_4(shm: Path, signed, content: bytes, reason: str):
    model, _, public = signed
    (model / "model.sig").write_bytes(content)
    dest = shm / "out"
    r = unpack(pack(model, shm / "m.tar"), dest, "--verify-key", public)
    assert r.code == 4, r.stderr
    assert "model.sig: malformed Sigstore bundle" in r.error() and reason in r.error()
    assert nothing_left(dest)


def test_missing_separate_signature_exits_4_before_reading(shm: Path, signed):
    model, _, public = signed
    r = unpack(shm / "does-not-matter.tar", shm / "out", "--verify-key", public, "--signature", shm / "nope.sig")
    assert r.code == 4 and "no signature" in r.error() and "nope.sig" in r.error()


def test_without_a_verify_flag_nothing_changes(shm: Path, signed):
    model, _, public = signed
    _bad_signature(model, public, shm)
    (model / "config.json").write_text("tampered, and nobody asked")
    r = unpack(pack(model, shm / "m.tar"), shm / "out")
    assert r.code == 0, r.error()
    assert files(shm / "out") == files(model)
    assert not [x for x in r.logs() if x.get("event") == "signature_verified"]


def test_flag_usage_errors(shm: Path, signed):
    model, private, public = signed
    tar = pack(model, shm / "m.tar")
    cases = [
        (["--signature", "model.sig"], "needs --verify-key"),
        (["--verify-key", str(public), "--verify-certificate", str(public)], "not both"),
        (["--verify-key", str(private)], "not a PEM public key"),
        (["--verify-key", str(shm / "absent.pub")], "No such file"),
        (["--verify-certificate", str(public)], "no PEM certificates"),
        (["--verify-key", str(public), "--signature", "../model.sig"], "inside the model"),
    ]
    k1 = ec.generate_private_key(ec.SECP256K1()).public_key()
    (shm / "k1.pub").write_bytes(k1.public_bytes(serialization.Encoding.PEM,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo))
    cases.append((["--verify-key", str(shm / "k1.pub")], "P-256, P-384 or P-521"))
    for flags, message in cases:
        r = unpack(tar, shm / "out", *flags)
        assert r.code == 2 and message in r.error(), (flags, r.stderr)
        assert nothing_left(shm / "out")


@pytest.mark.parametrize("name", ["verified-four-stage.yaml", "verified-single-stage.yaml"])
def test_verified_examples_take_the_key_from_their_configmap(shm: Path, name: str):
    """The pod reads signer.pub from the ConfigMap the file's comment tells the user to create from their own
    key: the example embeds nobody's public key (issue 20)."""
    import re
    import shlex

    import yaml

    text = (Path(__file__).parents[1] / "examples" / "kubernetes" / name).read_text()
    assert "BEGIN PUBLIC KEY" not in text
    docs = [d for d in yaml.safe_load_all(text) if d]
    assert [d["kind"] for d in docs] == ["Pod"]
    pod = docs[0]
    create = shlex.split(re.search(r"^#\s+(kubectl create configmap .*)$", text, re.M)[1])
    config_name = create[3]
    assert create[4] == "--from-file=signer.pub=signer.pub"  # its key is signer.pub, whatever the file is called
    volume = next(v["name"] for v in pod["spec"]["volumes"] if v.get("configMap", {}).get("name") == config_name)
    verifying = [c for c in pod["spec"]["initContainers"]
                 if "--verify-key" in c.get("args", []) or any(e["name"] == "MODELSEAL_VERIFY_KEY" for e in c.get("env", []))]
    assert len(verifying) == 1
    c = verifying[0]
    path = (c["args"][c["args"].index("--verify-key") + 1] if "--verify-key" in c.get("args", [])
            else next(e["value"] for e in c["env"] if e["name"] == "MODELSEAL_VERIFY_KEY"))
    mount = next(m for m in c["volumeMounts"] if m["name"] == volume)
    assert path == f"{mount['mountPath']}/signer.pub"
