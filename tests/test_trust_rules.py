"""Who may sign, and what a signed manifest must hold: each rule of docs/SIGNING.md, pinned by a test.

The certificate method (`--verify-certificate`) is checked as model_signing
checks it: chains made here with cryptography's x509 builder, signed by the
model_signing CLI (the oracle, which also says whether it accepts them), and
verified by the real `unpack` in a subprocess. One rule per test, each case
named by what it breaks, so that dropping or weakening a rule fails the test
named after it (tools/mutants.toml, issue 27). The manifest rules (the root
digest, `ignore_paths` by whole path components, the size cap of an
in-model `model.sig`) use statements signed here with the key method.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from conftest import modelseal, open_fifo_writer
from support.models import make_model
from support.signing import files, model_signing, nothing_left, pack, write_key

NOW = dt.datetime.now(dt.timezone.utc)
DAY = dt.timedelta(days=1)
CODE_SIGNING, SERVER_AUTH = ExtendedKeyUsageOID.CODE_SIGNING, ExtendedKeyUsageOID.SERVER_AUTH
_USAGES = ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment", "key_agreement",
           "key_cert_sign", "crl_sign")


# ---- a PKI of three levels, each certificate described by what the case changes ----------------

@dataclass(frozen=True)
class Cert:
    """One certificate of a test chain. ca=None: no basicConstraints at all; usage=None: no keyUsage."""

    ca: bool | None = True
    usage: frozenset[str] | None = frozenset({"key_cert_sign", "crl_sign"})
    eku: tuple = ()
    path_length: int | None = None
    not_before: dt.datetime = NOW - 10 * DAY
    not_after: dt.datetime = NOW + 30 * DAY
    critical_unknown: bool = False  # an extension no verifier knows, marked critical


LEAF = Cert(ca=False, usage=frozenset({"digital_signature"}), not_before=NOW - DAY)


def _build(name: str, key, spec: Cert, issuer: x509.Certificate | None = None, issuer_key=None) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    b = (x509.CertificateBuilder().subject_name(subject)
         .issuer_name(issuer.subject if issuer is not None else subject)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(spec.not_before).not_valid_after(spec.not_after))
    if spec.ca is not None:
        b = b.add_extension(x509.BasicConstraints(ca=spec.ca, path_length=spec.path_length), critical=True)
    if spec.usage is not None:
        b = b.add_extension(x509.KeyUsage(**{u: u in spec.usage for u in _USAGES}, encipher_only=False,
                                          decipher_only=False), critical=True)
    if spec.eku:
        b = b.add_extension(x509.ExtendedKeyUsage(list(spec.eku)), critical=False)
    if spec.critical_unknown:
        b = b.add_extension(x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.55555.1"), b"\x05\x00"),
                            critical=True)
    return b.sign(issuer_key if issuer_key is not None else key, hashes.SHA256())


def _pem(path: Path, *certs: x509.Certificate) -> Path:
    path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs))
    return path


@dataclass
class Chain:
    root: Path  # the root alone (what --verify-certificate is normally given)
    inter: Path
    leaf: Path
    leaf_key: Path
    certs: dict[str, x509.Certificate] = field(default_factory=dict)


def chain(d: Path, root: Cert = Cert(), inter: Cert = Cert(), leaf: Cert = LEAF) -> Chain:
    """root -> intermediate -> leaf (EC P-256), as the case describes each one."""
    d.mkdir(parents=True, exist_ok=True)
    rk, ik = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    leaf_key, _, lk = write_key(d, "leaf-key")
    r = _build("test root", rk, root)
    i = _build("test intermediate", ik, inter, r, rk)
    lf = _build("model signer", lk, leaf, i, ik)
    return Chain(_pem(d / "root.pem", r), _pem(d / "inter.pem", i), _pem(d / "leaf.pem", lf), leaf_key,
                 {"root": r, "inter": i, "leaf": lf})


def _signed_tar(shm: Path, c: Chain, intermediates: list[Path] | None = None) -> tuple[Path, Path]:
    """(tar, model dir): a small model signed by model_signing's certificate method with c's leaf."""
    model = shm / "model"
    if not model.exists():
        model.mkdir()
        make_model(model, 1000)
    sig = model / "model.sig"
    sig.unlink(missing_ok=True)
    chain_args = [a for p in (intermediates if intermediates is not None else [c.inter])
                  for a in ("--certificate_chain", str(p))]
    r = model_signing("sign", "certificate", "--private_key", c.leaf_key, "--signing_certificate", c.leaf,
                      *chain_args, "--signature", sig, model)
    assert r.returncode == 0, r.stderr
    return pack(model, shm / "m.tar"), model


def _oracle_accepts(model: Path, anchors: Path) -> bool:
    return model_signing("verify", "certificate", "--signature", model / "model.sig", "--certificate_chain",
                         anchors, model).returncode == 0


def _unpack(tar: Path, dest: Path, *flags: str | Path):
    return modelseal("unpack", "--in", str(tar), "-o", str(dest), *map(str, flags))


def _check(shm: Path, c: Chain, anchors: Path | None = None, *, ok: bool, says: str = "", oracle: bool | None = None,
           intermediates: list[Path] | None = None) -> None:
    """Sign with c, verify with `anchors` (default: the root): accepted or refused (exit 4, `says`, nothing
    left), and the oracle agrees (or, where modelseal is documented as stricter, `oracle` says what it does)."""
    tar, model = _signed_tar(shm, c, intermediates)
    anchors = anchors or c.root
    dest = shm / "out" / "model"
    r = _unpack(tar, dest, "--verify-certificate", anchors)
    if ok:
        assert r.code == 0, r.error()
        assert files(dest) == files(model)
    else:
        assert r.code == 4, r.stderr
        assert says in r.error() and "\n" not in r.error(), r.error()
        assert nothing_left(dest, shm)
    assert _oracle_accepts(model, anchors) == (ok if oracle is None else oracle)
    subprocess.run(["rm", "-rf", str(shm / "out")], check=True)


# ---- the certificate method ------------------------------------------------------------------------

def test_a_valid_chain_verifies(shm: Path):
    """The baseline every refusal below differs from in one respect."""
    _check(shm, chain(shm / "pki"), ok=True)


@pytest.mark.parametrize("case", ["intermediate cA false", "intermediate without basicConstraints", "root cA false"])
def test_only_ca_certificates_may_issue(shm: Path, case: str):
    """basicConstraints cA=true on every issuer, the root included."""
    c = {"intermediate cA false": lambda: chain(shm / "pki", inter=Cert(ca=False)),
         "intermediate without basicConstraints": lambda: chain(shm / "pki", inter=Cert(ca=None)),
         "root cA false": lambda: chain(shm / "pki", root=Cert(ca=False))}[case]()
    _check(shm, c, ok=False, says="does not chain to --verify-certificate")


@pytest.mark.parametrize("where", ["intermediate", "root"])
def test_an_issuer_with_key_usage_needs_key_cert_sign(shm: Path, where: str):
    usage = Cert(usage=frozenset({"digital_signature", "crl_sign"}))
    c = chain(shm / "pki", **{"inter" if where == "intermediate" else "root": usage})
    _check(shm, c, ok=False, says="keyUsage lacks keyCertSign")


def test_path_length_constraints_hold(shm: Path):
    _check(shm, chain(shm / "pki", root=Cert(path_length=0)), ok=False, says="path length")
    subprocess.run(["rm", "-rf", str(shm / "pki"), str(shm / "model")], check=True)
    _check(shm, chain(shm / "pki", root=Cert(path_length=1)), ok=True)


@pytest.mark.parametrize("where", ["leaf", "intermediate"])
def test_unknown_critical_extensions_are_refused(shm: Path, where: str):
    bad = {"leaf": {"leaf": replace(LEAF, critical_unknown=True)}, "intermediate": {"inter": Cert(critical_unknown=True)}}
    _check(shm, chain(shm / "pki", **bad[where]), ok=False, says="critical extensions")


def test_only_the_given_roots_are_trust_anchors(shm: Path):
    """No partial chains: an intermediate handed to --verify-certificate is not an anchor, neither alone
    (a usage error: no root in the file) nor beside an unrelated root; beside its own root it serves as
    an intermediate (the bundle then need not carry it)."""
    c = chain(shm / "pki")
    other = chain(shm / "other")
    tar, model = _signed_tar(shm, c)

    r = _unpack(tar, shm / "alone", "--verify-certificate", c.inter)
    assert r.code == 2 and "no self-signed (root) certificate" in r.error(), r.stderr
    assert nothing_left(shm / "alone")
    assert not _oracle_accepts(model, c.inter)

    beside = _pem(shm / "inter-and-other-root.pem", c.certs["inter"], other.certs["root"])
    r = _unpack(tar, shm / "beside", "--verify-certificate", beside)
    assert r.code == 4 and "does not chain to --verify-certificate" in r.error(), r.stderr
    assert nothing_left(shm / "beside")
    assert not _oracle_accepts(model, beside)

    # The signer's own chain in the bundle ends in a root of its making: that root is no anchor either.
    rogue = chain(shm / "rogue")
    tar, model = _signed_tar(shm, rogue, intermediates=[rogue.inter, rogue.root])
    r = _unpack(tar, shm / "rogue-out", "--verify-certificate", c.root)
    assert r.code == 4 and "does not chain" in r.error(), r.stderr
    assert not _oracle_accepts(model, c.root)

    both = _pem(shm / "root-and-inter.pem", c.certs["root"], c.certs["inter"])
    _check(shm, c, both, ok=True, intermediates=[c.root])  # the intermediate only in the file


LEAF_USAGE = {  # case: (keyUsage or None, extendedKeyUsage, may sign)
    "digitalSignature": ({"digital_signature"}, (), True),
    "digitalSignature+EKU serverAuth": ({"digital_signature"}, (SERVER_AUTH,), True),  # keyUsage suffices
    "EKU codeSigning": (None, (CODE_SIGNING,), True),
    "EKU serverAuth+codeSigning": (None, (SERVER_AUTH, CODE_SIGNING), True),
    "keyEncipherment+EKU codeSigning": ({"key_encipherment"}, (CODE_SIGNING,), True),
    "keyEncipherment+EKU serverAuth": ({"key_encipherment"}, (SERVER_AUTH,), False),  # no stand-in for codeSigning
    "EKU serverAuth": (None, (SERVER_AUTH,), False),
    "neither extension": (None, (), False),  # nothing says it may sign
    "keyEncipherment+keyAgreement": ({"key_encipherment", "key_agreement"}, (), False),
}


@pytest.mark.parametrize("case", list(LEAF_USAGE))
def test_the_leaf_must_be_allowed_to_sign(shm: Path, case: str):
    """keyUsage digitalSignature, or extendedKeyUsage codeSigning: model_signing's rule, case by case."""
    usage, eku, ok = LEAF_USAGE[case]
    leaf = replace(LEAF, usage=None if usage is None else frozenset(usage), eku=eku)
    _check(shm, chain(shm / "pki", leaf=leaf), ok=ok, says="the signing certificate may not sign")


@pytest.mark.parametrize("case", ["intermediate expired before the leaf began", "intermediate not yet valid",
                                  "root expired before the leaf began"])
def test_every_certificate_in_the_path_is_valid_when_the_leaf_began(shm: Path, case: str):
    """Validity is checked at the leaf's notBefore, for every certificate in the path."""
    leaf = replace(LEAF, not_before=NOW - 5 * DAY, not_after=NOW + 5 * DAY)
    c = {"intermediate expired before the leaf began": lambda: chain(
            shm / "pki", inter=Cert(not_before=NOW - 20 * DAY, not_after=NOW - 6 * DAY), leaf=leaf),
         "intermediate not yet valid": lambda: chain(
            shm / "pki", inter=Cert(not_before=NOW - 4 * DAY, not_after=NOW + 30 * DAY), leaf=leaf),
         "root expired before the leaf began": lambda: chain(
            shm / "pki", root=Cert(not_before=NOW - 40 * DAY, not_after=NOW - 6 * DAY),
            inter=Cert(not_before=NOW - 30 * DAY), leaf=leaf)}[case]()
    _check(shm, c, ok=False, says="not valid at validation time")


def test_a_signature_outlives_its_certificates(shm: Path):
    """As in model_signing: a leaf (and an intermediate) that expired after the leaf began still verifies."""
    c = chain(shm / "pki", root=Cert(not_before=NOW - 40 * DAY), inter=Cert(not_before=NOW - 30 * DAY, not_after=NOW - DAY),
              leaf=replace(LEAF, not_before=NOW - 20 * DAY, not_after=NOW - 2 * DAY))
    _check(shm, c, ok=True)


def test_the_leaf_key_must_be_on_a_supported_curve(shm: Path):
    """A chain that holds, a leaf that may sign, but its key is on secp256k1: not model signing's."""
    rk, ik, lk = (ec.generate_private_key(c()) for c in (ec.SECP256R1, ec.SECP256R1, ec.SECP256K1))
    root = _build("test root", rk, Cert())
    inter = _build("test intermediate", ik, Cert(), root, rk)
    leaf = _build("model signer", lk, LEAF, inter, ik)
    model = shm / "model"
    model.mkdir()
    make_model(model, 1000)
    (model / "model.sig").write_bytes(_sign_statement(lk, _statement(model), [leaf, inter]))
    r = _unpack(pack(model, shm / "m.tar"), shm / "out", "--verify-certificate", _pem(shm / "root.pem", root))
    assert r.code == 4, r.stderr
    assert "the signing certificate's key: not an EC key on P-256, P-384 or P-521" in r.error()
    assert nothing_left(shm / "out")


@pytest.mark.parametrize("field,value,says", [
    ("mediaType", "application/vnd.dev.sigstore.bundle.v0.2+json", "bundle media type"),
    ("payloadType", "application/json", "DSSE payload type"),
])
def test_the_envelope_must_be_model_signings(shm: Path, field: str, value: str, says: str):
    """Neither the bundle's media type nor the DSSE payload type is covered by the signature (the PAE
    names the in-toto type itself): another value in a validly signed bundle is refused, as model_signing
    refuses it."""
    model = shm / "model"
    model.mkdir()
    make_model(model, 1000)
    private, public, _ = write_key(shm, "signer")
    assert model_signing("sign", "key", "--private_key", private, "--signature", model / "model.sig",
                         model).returncode == 0
    bundle = json.loads((model / "model.sig").read_text())
    (bundle if field == "mediaType" else bundle["dsseEnvelope"])[field] = value
    (model / "model.sig").write_text(json.dumps(bundle))
    r = _unpack(pack(model, shm / "m.tar"), shm / "out", "--verify-key", public)
    assert r.code == 4 and f"model.sig: {says} {value!r}" in r.error(), r.stderr
    assert nothing_left(shm / "out")
    assert model_signing("verify", "key", "--signature", model / "model.sig", "--public_key", public,
                         model).returncode != 0


@pytest.mark.parametrize("target", ["nothing.json", "sub"])
def test_a_symlink_to_no_file_of_the_model_is_refused(shm: Path, target: str):
    """With --allow-symlinks a link counts as its target's content: a link to nothing, or to a
    directory, has none (verification covers files only)."""
    model = shm / "model"
    model.mkdir()
    make_model(model, 1000)
    private, public, _ = write_key(shm, "signer")
    assert model_signing("sign", "key", "--private_key", private, "--signature", model / "model.sig",
                         "--allow_symlinks", model).returncode == 0
    (model / "latest").symlink_to(target)
    r = _unpack(pack(model, shm / "m.tar"), shm / "out", "--verify-key", public, "--allow-symlinks")
    assert r.code == 4, r.stderr
    assert "symlink 'latest' does not point to a file of the model" in r.error()
    assert nothing_left(shm / "out")


# ---- the statement: signed with the key method, built here ----------------------------------------

def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _sign_statement(key: ec.EllipticCurvePrivateKey, statement: dict,
                    certificates: list[x509.Certificate] | None = None) -> bytes:
    """A model.sig over `statement`, as model_signing writes it (DSSE PAE, SHA-256): the key method's
    publicKey hint, or the certificate method's chain (leaf first) when `certificates` are given."""
    payload = json.dumps(statement).encode()
    ptype = "application/vnd.in-toto+json"
    pae = b"DSSEv1 %d %s %d %s" % (len(ptype), ptype.encode(), len(payload), payload)
    if certificates:
        material = {"x509CertificateChain": {"certificates": [
            {"rawBytes": base64.b64encode(c.public_bytes(serialization.Encoding.DER)).decode()} for c in certificates]}}
    else:
        pub = key.public_key().public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
        material = {"publicKey": {"hint": _digest(pub)}}
    return json.dumps({
        "mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
        "verificationMaterial": {**material, "tlogEntries": []},
        "dsseEnvelope": {"payload": base64.b64encode(payload).decode(), "payloadType": ptype,
                         "signatures": [{"sig": base64.b64encode(key.sign(pae, ec.ECDSA(hashes.SHA256()))).decode(),
                                         "keyid": ""}]}}).encode()


def _statement(model: Path, root: str | None = None, ignore: list[str] | None = None,
               resources: list[dict] | None = None) -> dict:
    """A v1.0 files statement of the model's files (or of `resources`), its root digest computed (or `root`)."""
    if resources is None:
        resources = [{"name": n, "algorithm": "sha256", "digest": _digest(d)} for n, d in files(model).items()
                     if n != "model.sig" and not n.startswith(".git")]
    digest = root or _root(resources)
    return {"_type": "https://in-toto.io/Statement/v1", "subject": [{"name": "model", "digest": {"sha256": digest}}],
            "predicateType": "https://model_signing/signature/v1.0",
            "predicate": {"serialization": {"method": "files", "hash_type": "sha256", "allow_symlinks": False,
                                            "ignore_paths": ignore or ["model.sig"]},
                          "resources": resources}}


def _root(resources: list[dict]) -> str:
    """The subject digest: SHA-256 over the resource digests, in order (hex digests that are not hex: zeros)."""
    raw = b""
    for r in resources:
        try:
            raw += bytes.fromhex(r["digest"])
        except ValueError:
            raw += bytes(32)
    return hashlib.sha256(raw).hexdigest()


def test_the_root_digest_must_be_that_of_the_resources(shm: Path):
    """Every resource matches the files, the signature verifies, only the subject's digest is not the
    digest of the resources: refused, as model_signing refuses it."""
    model = shm / "model"
    model.mkdir()
    make_model(model, 1000)
    _, public, key = write_key(shm, "signer")
    (model / "model.sig").write_bytes(_sign_statement(key, _statement(model)))
    r = _unpack(pack(model, shm / "good.tar"), shm / "good", "--verify-key", public)
    assert r.code == 0, r.error()  # the same statement with its true root digest: accepted

    (model / "model.sig").write_bytes(_sign_statement(key, _statement(model, root=_digest(b"another model"))))
    r = _unpack(pack(model, shm / "m.tar"), shm / "out", "--verify-key", public)
    assert r.code == 4 and "the subject digest is not the digest of the resources" in r.error(), r.stderr
    assert nothing_left(shm / "out")
    assert model_signing("verify", "key", "--signature", model / "model.sig", "--public_key", public,
                         model).returncode != 0


@pytest.mark.parametrize("added", ["model.sig.py", "model.sigs/extra.bin", "notes.md", "notesX/a.txt", ".gitx"])
def test_ignore_paths_match_whole_path_components(shm: Path, added: str):
    """`model.sig` ignores neither model.sig.py nor model.sigs/, `notes` not notes.md, `.git` not .gitx:
    a file added there after signing is an extra file, here and for model_signing."""
    model = shm / "model"
    model.mkdir()
    make_model(model, 1000)
    (model / "notes").mkdir()
    (model / "notes" / "README.md").write_text("unsigned notes")
    private, public, _ = write_key(shm, "signer")
    assert model_signing("sign", "key", "--private_key", private, "--signature", model / "model.sig",
                         "--ignore-paths", model / "notes", model).returncode == 0
    (model / "notes" / "later.txt").write_text("under an ignored path: fine")
    r = _unpack(pack(model, shm / "ok.tar"), shm / "ok", "--verify-key", public)
    assert r.code == 0, r.error()

    path = model / added
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("added after signing, beside an ignored path")
    r = _unpack(pack(model, shm / "m.tar"), shm / "out", "--verify-key", public)
    assert r.code == 4 and f"{added!r} is not in the signed manifest (an extra file)" in r.error(), r.stderr
    assert nothing_left(shm / "out")
    assert model_signing("verify", "key", "--signature", model / "model.sig", "--public_key", public,
                         model).returncode != 0


def _tar_header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    return info.tobuf(format=tarfile.PAX_FORMAT)


def test_an_oversized_model_sig_is_refused_by_its_declared_size_before_it_is_read(shm: Path):
    """The cap applies to the size the archive declares, before a byte of the entry is read: a stream
    that holds only the header (and never ends) is refused at once, not buffered."""
    from modelseal.signing.bundle import MAX_BUNDLE

    _, public, _ = write_key(shm, "signer")
    fifo = shm / "in.tar"
    os.mkfifo(fifo)
    dest = shm / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELSEAL_")}
    proc = subprocess.Popen([sys.executable, "-m", "modelseal", "unpack", "--in", str(fifo), "-o", str(dest),
                             "--verify-key", str(public)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        with open_fifo_writer(fifo, proc) as w:
            w.write(_tar_header("model.sig", MAX_BUNDLE + 1) + b"{" * 4096)
            w.flush()
            try:  # the writer stays open: only a refusal on the header ends the stage
                _, err = proc.communicate(timeout=45)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                pytest.fail("the stage waited for the signature's bytes instead of refusing its declared size")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    error = next(json.loads(x)["error"] for x in err.decode().splitlines() if '"event":"failed"' in x)
    assert proc.returncode == 4, err
    assert error == f"model.sig: {MAX_BUNDLE + 1} bytes, over {MAX_BUNDLE}: not a model signature"
    assert nothing_left(dest)


def test_a_model_sig_at_the_cap_is_read(shm: Path):
    """The other side of the cap: a model.sig of exactly MAX_BUNDLE bytes is read and parsed (here: not
    JSON), so the cap is not set below what it promises."""
    from modelseal.signing.bundle import MAX_BUNDLE

    _, public, _ = write_key(shm, "signer")
    tar = io.BytesIO()
    with tarfile.open(fileobj=tar, mode="w", format=tarfile.PAX_FORMAT) as t:
        info = tarfile.TarInfo("model.sig")
        info.size = MAX_BUNDLE
        t.addfile(info, io.BytesIO(b" " * (MAX_BUNDLE - 1) + b"x"))
    (shm / "m.tar").write_bytes(tar.getvalue())
    r = _unpack(shm / "m.tar", shm / "out", "--verify-key", public)
    assert r.code == 4 and r.error().startswith("model.sig: malformed Sigstore bundle: "), r.stderr
    assert "over" not in r.error() and "not a model signature" not in r.error()  # parsed, not refused by size
    assert nothing_left(shm / "out")


# ---- the statement's own rules: what model_signing would reject is rejected -------------------------

def _shards(model: Path, size: int = 1 << 20) -> dict:
    """A v1.0 shards statement of the model (each file cut in `size` pieces; empty files have none)."""
    resources = []
    for name, data in files(model).items():
        if name == "model.sig" or name.startswith(".git"):
            continue
        for start in range(0, len(data), size):
            piece = data[start:start + size]
            resources.append({"name": f"{name}:{start}:{start + len(piece)}", "algorithm": f"sha256-sharded-{size}",
                              "digest": _digest(piece)})
    st = _statement(model, resources=resources)
    st["predicate"]["serialization"].update(method="shards", shard_size=size)
    return st


def _resources(change):
    """A variant that edits the resources, the root digest recomputed so that only the edit is wrong."""
    def variant(st: dict) -> None:
        change(st["predicate"]["resources"])
        st["subject"][0]["digest"]["sha256"] = _root(st["predicate"]["resources"])
    return variant


def _set(path: str, value):
    def variant(st: dict) -> None:
        *parents, last = path.split(".")
        node = st
        for p in parents:
            node = node[p]
        node[last] = value
    return variant


STATEMENTS = {  # case: (a files or a shards statement, the edit, what the refusal names)
    "two subjects": ("files", lambda st: st["subject"].append(dict(st["subject"][0], name="other")),
                     "expected one subject, got 2"),
    "not an in-toto statement": ("files", _set("_type", "https://in-toto.io/Statement/v0.1"), "not an in-toto"),
    "an unknown predicate": ("files", _set("predicateType", "https://model_signing/signature/v2.0"),
                             "unknown predicate type"),
    "another hash": ("files", _set("predicate.serialization.hash_type", "blake2"), "unsupported hash_type 'blake2'"),
    "another method": ("files", _set("predicate.serialization.method", "digest"),
                       "unsupported serialization method 'digest'"),
    "a resource outside the model": ("files", _resources(lambda rs: rs.append(dict(rs[0], name="../outside.bin"))),
                                     "'../outside.bin' is not a relative path inside the model"),
    "an absolute resource": ("files", _resources(lambda rs: rs.append(dict(rs[0], name="/etc/passwd"))),
                             "'/etc/passwd' is not a relative path inside the model"),
    "a file listed twice": ("files", _resources(lambda rs: rs.append(dict(rs[0]))), "is listed twice"),
    "a file listed twice, spelled ./": ("files", _resources(lambda rs: rs.append(dict(rs[0], name="./" + rs[0]["name"]))),
                                        "is listed twice"),
    "a digest of 63 digits": ("files", _resources(lambda rs: rs[0].update(digest=rs[0]["digest"][:-1])),
                              "not 64 hex digits"),
    "a digest that is not hex": ("files", _resources(lambda rs: rs[0].update(digest="zz" * 32)), "not hex"),
    "shard size zero": ("shards", _set("predicate.serialization.shard_size", 0), "shard_size must be a positive"),
    "shard size a fraction": ("shards", _set("predicate.serialization.shard_size", 1.5),
                              "shard_size must be a positive"),
    "shard size true": ("shards", _set("predicate.serialization.shard_size", True), "shard_size must be a positive"),
    "a shard listed twice": ("shards", _resources(lambda rs: rs.append(dict(rs[0]))), "is listed twice"),
    "a shard without its range": ("shards", _resources(lambda rs: rs[0].update(name=rs[0]["name"].split(":")[0])),
                                  "is not PATH:START:END"),
}


@pytest.mark.parametrize("case", list(STATEMENTS))
def test_a_statement_model_signing_would_reject_is_refused(shm: Path, case: str):
    """Each edit of a valid, validly signed statement: exit 4 naming it, nothing left. The same statement
    unedited is accepted (so the edit is what is refused)."""
    method, edit, says = STATEMENTS[case]
    model = shm / "model"
    model.mkdir()
    make_model(model, 1000)
    _, public, key = write_key(shm, "signer")
    st = _statement(model) if method == "files" else _shards(model)
    sig = shm / "model.sig"
    sig.write_bytes(_sign_statement(key, st))
    tar = pack(model, shm / "m.tar")
    r = _unpack(tar, shm / "good", "--verify-key", public, "--signature", sig)
    assert r.code == 0, r.error()

    edit(st)
    sig.write_bytes(_sign_statement(key, st))
    r = _unpack(tar, shm / "out", "--verify-key", public, "--signature", sig)
    assert r.code == 4, r.stderr
    assert r.error().startswith(f"{sig}: bad signed manifest: ") and says in r.error(), r.error()
    assert nothing_left(shm / "out")
    # model_signing rejects each too, except two that modelseal refuses as ambiguous: a hash_type that is
    # not the resources' own algorithm, and a file listed twice (model_signing keeps the last entry)
    lenient = case in ("another hash", "a file listed twice", "a file listed twice, spelled ./")
    oracle = model_signing("verify", "key", "--signature", sig, "--public_key", public, model)
    assert (oracle.returncode == 0) == lenient, (case, oracle.stderr)
