"""Model signatures written by an attacker: bounded work before anything is verified, exit 4, nothing left.

What holds `unpack --verify-key/--verify-certificate` to a small, bounded
amount of work on a bundle nobody has vouched for yet (docs/SIGNING.md,
"Limits"): the certificate path search (a few self-issued CAs under one name
made cryptography's verifier try n^8 paths), the bundle's size and the JSON
objects in it (a 60 MiB bundle of `{}` took the stage to 1.6 GiB), and a
statement that a real signer signed but that holds what JSON has no word for
(Infinity) or the wrong types. Certificates are real (cryptography's x509
builder, tests/support/signing.py); the stage is the real CLI. Work is bounded by
peak memory measured against a benign run, or by a timeout that only
catches a hang, never by wall-clock time.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from conftest import Result, modelseal
from modelseal.signing import bundle, statement, trust
from support.models import make_model
from support.signing import certificate, files, nothing_left, pack, pem, write_key

MIB = 1 << 20


def manifest(model: Path) -> bytes:
    """The v1.0 statement of the model's files (what model_signing's key method signs)."""
    digests = [(p.relative_to(model).as_posix(), hashlib.sha256(p.read_bytes()).digest())
               for p in sorted(model.rglob("*")) if p.is_file() and p.name != "model.sig"]
    return statement.build(model.name, digests, ["model.sig"])


def key_bundle(payload: bytes, key: ec.EllipticCurvePrivateKey) -> bytes:
    """A bundle as model_signing's key method writes it, signed by `key` over `payload`."""
    signature = key.sign(bundle.pae(payload), ec.ECDSA(hashes.SHA256()))
    return bundle.build(payload, signature, trust.key_hint(key.public_key()))


def certificate_bundle(payload: bytes, key: ec.EllipticCurvePrivateKey, chain: list) -> bytes:
    """A bundle of the certificate method: `chain` (leaf first) in verificationMaterial."""
    signature = key.sign(bundle.pae(payload), ec.ECDSA(hashes.SHA256()))
    der = [base64.b64encode(c.public_bytes(serialization.Encoding.DER)).decode() for c in chain]
    return json.dumps({
        "mediaType": bundle.MEDIA_TYPE,
        "verificationMaterial": {"x509CertificateChain": {"certificates": [{"rawBytes": d} for d in der]},
                                 "tlogEntries": []},
        "dsseEnvelope": {"payload": base64.b64encode(payload).decode(), "payloadType": bundle.PAYLOAD_TYPE,
                         "signatures": [{"sig": base64.b64encode(signature).decode(), "keyid": ""}]},
    }).encode()


def unpack(shm: Path, model: Path, *flags: str | Path, timeout: float = 300) -> tuple[Result, Path]:
    """`unpack --in` a tar of the model (model.sig first, as seal --sign-key writes it)."""
    tar = pack(model, shm / f"{model.name}.tar", first="model.sig" if (model / "model.sig").exists() else None)
    dest = shm / "out" / model.name
    return modelseal("unpack", "--in", str(tar), "-o", str(dest), *map(str, flags), timeout=timeout), dest


def refused_with_nothing_left(r: Result, dest: Path, says: str) -> None:
    assert r.code == 4, r.stderr[-2000:]
    assert says in r.error(), r.error()
    assert "\n" not in r.error() and len(r.error()) <= 400
    assert nothing_left(dest, dest.parents[1])


# ---- the certificate path search ------------------------------------------------------

def victim_pki(shm: Path) -> tuple[Path, ec.EllipticCurvePrivateKey, object]:
    """The root the pod trusts (--verify-certificate), its key and certificate."""
    root_key = ec.generate_private_key(ec.SECP256R1())
    root = certificate("model signing root", root_key, ca=True, usage={"key_cert_sign", "crl_sign"})
    return pem(shm / "root.pem", root), root_key, root


@pytest.mark.parametrize("n", [3, 6])
def test_self_issued_cas_under_one_name_are_refused_before_any_signature_is_checked(shm: Path, n: int):
    """n CA certificates that all name each other (same name, same key): n^8 paths for the verifier.

    6 took hours: the 300 s timeout only catches that hang, a bounded search answers at once. 3 took
    seconds, so an unbounded search ends too, with the verifier's own "candidates exhausted": the
    message says which of the two refused it."""
    root_pem, _, _ = victim_pki(shm)
    key = ec.generate_private_key(ec.SECP256R1())
    cas = [certificate("evil CA", key, ca=True, usage={"key_cert_sign"}) for _ in range(n)]
    leaf = certificate("model signer", key, cas[0], key, ca=False, usage={"digital_signature"})
    model = make_model(shm / "model", 300_000, gitignore=False)
    (model / "model.sig").write_bytes(certificate_bundle(manifest(model), key, [leaf, *cas]))
    r, dest = unpack(shm, model, "--verify-certificate", root_pem)
    refused_with_nothing_left(r, dest, f"more than {trust.MAX_PATH_TRIES} issuers to try")


def test_a_bundle_with_more_certificates_than_a_path_can_use_is_refused(shm: Path):
    root_pem, _, _ = victim_pki(shm)
    key = ec.generate_private_key(ec.SECP256R1())
    chain = [certificate(f"ca {i}", key, ca=True, usage={"key_cert_sign"}) for i in range(trust.MAX_BUNDLE_CERTS)]
    leaf = certificate("model signer", key, chain[0], key, ca=False, usage={"digital_signature"})
    model = make_model(shm / "model", 300_000, gitignore=False)
    (model / "model.sig").write_bytes(certificate_bundle(manifest(model), key, [leaf, *chain]))
    r, dest = unpack(shm, model, "--verify-certificate", root_pem)
    refused_with_nothing_left(r, dest, f"carries {trust.MAX_BUNDLE_CERTS + 1} certificates")



@pytest.mark.parametrize("which", ["leaf", "intermediate"])
def test_a_certificate_whose_name_does_not_parse_exits_4(shm: Path, which: str):
    """Names are decoded when the path search is counted: bytes that are no string are exit 4, not a crash."""
    root_pem, root_key, root = victim_pki(shm)
    key = ec.generate_private_key(ec.SECP256R1())
    inter = certificate("QQQQQQQQ inter", key, root, root_key, ca=True, usage={"key_cert_sign"})
    leaf = certificate("QQQQQQQQ leaf", key, inter, key, ca=False, usage={"digital_signature"})
    der = [c.public_bytes(serialization.Encoding.DER) for c in (leaf, inter)]
    i = 0 if which == "leaf" else 1
    der[i] = der[i].replace(b"QQQQQQQQ", bytes(range(0xf8, 0x100)))  # not UTF-8, where a UTF8String belongs
    model = make_model(shm / "model", 300_000, gitignore=False)
    doc = json.loads(certificate_bundle(manifest(model), key, [leaf, inter]))
    doc["verificationMaterial"]["x509CertificateChain"]["certificates"] = [
        {"rawBytes": base64.b64encode(d).decode()} for d in der]
    (model / "model.sig").write_text(json.dumps(doc))
    r, dest = unpack(shm, model, "--verify-certificate", root_pem)
    refused_with_nothing_left(r, dest, "model.sig: ")


def test_real_chains_stay_well_inside_the_bound(shm: Path):
    """The bound leaves room: a chain that also carries the root, a re-issued root and the intermediate
    again in the PEM file verifies, and byte-exact; its search is a few tries."""
    root_pem, root_key, root = victim_pki(shm)
    inter_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    inter = certificate("model signing intermediate", inter_key, root, root_key, ca=True, usage={"key_cert_sign"})
    leaf = certificate("model signer", leaf_key, inter, inter_key, ca=False, usage={"digital_signature"})
    reissued = certificate("model signing root", root_key, ca=True, usage={"key_cert_sign", "crl_sign"})
    assert trust._path_tries(leaf, [inter, reissued], [root], trust.MAX_PATH_TRIES) <= trust.MAX_PATH_TRIES // 4
    model = make_model(shm / "model", 300_000, gitignore=False)
    (model / "model.sig").write_bytes(certificate_bundle(manifest(model), leaf_key, [leaf, inter, reissued]))
    pem(root_pem, root, inter)
    r, dest = unpack(shm, model, "--verify-certificate", root_pem)
    assert r.code == 0, r.stderr[-2000:]
    assert files(dest) == files(model)
    assert any(x.get("event") == "signature_verified" for x in r.logs())


# ---- the bundle's size and structure, before it is parsed ---------------------------------

#: Runs argv and prints its exit code and peak RSS (KiB). A child's ru_maxrss starts from the RSS of the
#: process that forked it (the kernel keeps the old image's high-water mark across exec), so the stage
#: is forked from this small interpreter, not from pytest, whose size would hide the stage's own.
_MEASURE = ("import os, subprocess, sys; p = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL); "
            "_, status, usage = os.wait4(p.pid, 0); p.returncode = 0; "
            "print(os.waitstatus_to_exitcode(status), usage.ru_maxrss)")


def run_peak(*args: str, timeout: float = 300) -> tuple[Result, int]:
    """The CLI, and its own peak resident memory in bytes."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELSEAL_")}
    with subprocess.Popen([sys.executable, "-c", _MEASURE, sys.executable, "-m", "modelseal", *args],
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                          start_new_session=True) as p:
        try:
            out, err = p.communicate(timeout=timeout)  # only a hang ever reaches it
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            raise
    code, kib = map(int, out.split())
    return Result(code, b"", err.decode(errors="replace")), kib * 1024


def empty_objects(size: int) -> bytes:
    """A JSON array of `{}` of about `size` bytes: 72 bytes of Python objects for every 3 bytes."""
    return b"[" + b"{}," * (size // 3) + b"{}]"


@pytest.mark.parametrize("content, says", [
    (empty_objects(bundle.MAX_BUNDLE + MIB), f"over {bundle.MAX_BUNDLE}"),  # refused by its size
    (empty_objects(8 * MIB), "JSON objects and arrays"),  # under the size cap: refused by its structure
], ids=["oversized", "millions-of-objects"])
def test_a_huge_bundle_is_refused_before_it_is_parsed(shm: Path, content: bytes, says: str):
    """Exit 4, one line, nothing left, and the stage's peak memory stays near that of a tiny bad bundle."""
    _, public, _ = write_key(shm, "signer")
    model = make_model(shm / "model", 300_000, gitignore=False)
    (model / "model.sig").write_bytes(b"[]")
    tar = pack(model, shm / "small.tar", first="model.sig")
    baseline, base_peak = run_peak("unpack", "--in", str(tar), "-o", str(shm / "out" / "small"),
                                   "--verify-key", str(public))
    assert baseline.code == 4 and "expected an object" in baseline.error(), baseline.stderr[-2000:]
    (model / "model.sig").write_bytes(content)
    tar = pack(model, shm / "big.tar", first="model.sig")
    dest = shm / "out" / "big"
    r, peak = run_peak("unpack", "--in", str(tar), "-o", str(dest), "--verify-key", str(public))
    assert r.code == 4, r.stderr[-2000:]
    # Parsing it would cost hundreds of MiB (24 bytes of objects a byte); reading it, its size at most twice.
    assert peak - base_peak < 2 * len(content) + 16 * MIB, f"peak {peak >> 20} MiB, {base_peak >> 20} MiB for []"
    refused_with_nothing_left(r, dest, says)


@pytest.mark.parametrize("content", [b"[" * 1_000_000 + b"]" * 1_000_000, b'{"a":' * 500 + b"1" + b"}" * 500],
                         ids=["beyond-the-recursion-limit", "within-it"])
def test_a_deeply_nested_bundle_exits_4(shm: Path, content: bytes):
    _, public, _ = write_key(shm, "signer")
    model = make_model(shm / "model", 300_000, gitignore=False)
    (model / "model.sig").write_bytes(content)
    r, dest = unpack(shm, model, "--verify-key", public)
    refused_with_nothing_left(r, dest, "model.sig: malformed Sigstore bundle")


# ---- a signed statement that is still hostile ---------------------------------------------

def _shards_statement(model: Path, serialization_changes: dict) -> bytes:
    """A shards statement of the model (signed properly), its serialization changed as given."""
    size = 1 << 20
    resources = []
    for p in sorted(model.rglob("*")):
        if p.is_file() and p.name != "model.sig":
            data = p.read_bytes()
            for start in range(0, len(data), size):
                end = min(start + size, len(data))
                resources.append({"name": f"{p.relative_to(model).as_posix()}:{start}:{end}",
                                  "algorithm": f"sha256-sharded-{size}",
                                  "digest": hashlib.sha256(data[start:end]).hexdigest()})
    root = hashlib.sha256(b"".join(bytes.fromhex(r["digest"]) for r in resources)).hexdigest()
    ser = {"method": "shards", "hash_type": "sha256", "shard_size": size, "allow_symlinks": False,
           "ignore_paths": ["model.sig"], **serialization_changes}
    return json.dumps({"_type": statement.STATEMENT_TYPE,
                       "subject": [{"name": model.name, "digest": {"sha256": root}}],
                       "predicateType": statement.PREDICATE_V1,
                       "predicate": {"serialization": ser, "resources": resources}}).encode()


@pytest.mark.parametrize("changes, says", [
    ({}, None),  # the statement itself is good: it verifies
    ({"shard_size": float("inf")}, "not valid UTF-8 JSON"),  # json.dumps writes Infinity
    ({"shard_size": float("nan")}, "not valid UTF-8 JSON"),
    ({"shard_size": 1e300}, "shard_size must be a positive integer"),
    ({"ignore_paths": 5}, "ignore_paths is not a list"),
    ({"ignore_paths": {"model.sig": True}}, "ignore_paths is not a list"),
], ids=["good", "infinity", "nan", "huge", "number", "object"])
def test_a_signed_statement_of_the_wrong_shape_exits_4(shm: Path, changes: dict, says: str | None):
    """A signer's key signed it, so the signature verifies; what it says is still input."""
    private, public, key = write_key(shm, "signer")
    model = make_model(shm / "model", 300_000, gitignore=False)
    (model / "model.sig").write_bytes(key_bundle(_shards_statement(model, changes), key))
    r, dest = unpack(shm, model, "--verify-key", public)
    if says is None:
        assert r.code == 0, r.stderr[-2000:]
        assert (dest / "weights.bin").read_bytes() == (model / "weights.bin").read_bytes()
        return
    refused_with_nothing_left(r, dest, f"model.sig: bad signed manifest: {says}")
