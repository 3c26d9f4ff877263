"""Test helpers for model signatures: keys, a small signing PKI, the model_signing CLI (the oracle), tars."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import tarfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CURVES = {"P-256": ec.SECP256R1, "P-384": ec.SECP384R1, "P-521": ec.SECP521R1}


def write_key(dirpath: Path, name: str, curve: str = "P-256") -> tuple[Path, Path, ec.EllipticCurvePrivateKey]:
    """(private PEM, public PEM, key) of a new EC key."""
    key = ec.generate_private_key(CURVES[curve]())
    private, public = dirpath / f"{name}.pem", dirpath / f"{name}.pub"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public, key


def certificate(name: str, key, issuer=None, issuer_key=None, *, ca: bool, usage: set[str] = frozenset(),
                eku: list | None = None) -> x509.Certificate:
    now = dt.datetime.now(dt.timezone.utc)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = (x509.CertificateBuilder().subject_name(subject)
               .issuer_name(issuer.subject if issuer is not None else subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=30))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    flags = ["digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
             "key_agreement", "key_cert_sign", "crl_sign"]
    if usage:
        builder = builder.add_extension(x509.KeyUsage(**{f: f in usage for f in flags}, encipher_only=False,
                                                      decipher_only=False), critical=True)
    if eku:
        builder = builder.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
    return builder.sign(issuer_key if issuer_key is not None else key, hashes.SHA256())


def pem(path: Path, *certs: x509.Certificate) -> Path:
    path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs))
    return path


def pki(dirpath: Path, leaf_usage: set[str] = frozenset({"digital_signature"}), leaf_eku=None) -> dict:
    """root -> intermediate -> leaf, EC P-256; files: root.pem, inter.pem, leaf.pem, leaf-key.pem."""
    rk, ik = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    leaf_key_path, _, lk = write_key(dirpath, "leaf-key")
    root = certificate("test root", rk, ca=True, usage={"key_cert_sign", "crl_sign"})
    inter = certificate("test intermediate", ik, root, rk, ca=True, usage={"key_cert_sign"})
    leaf = certificate("model signer", lk, inter, ik, ca=False, usage=leaf_usage, eku=leaf_eku)
    return {"root": pem(dirpath / "root.pem", root), "inter": pem(dirpath / "inter.pem", inter),
            "leaf": pem(dirpath / "leaf.pem", leaf), "leaf_key": leaf_key_path}


CODE_SIGNING = ExtendedKeyUsageOID.CODE_SIGNING


def model_signing(*args: str | Path) -> subprocess.CompletedProcess:
    """The model_signing CLI (the oracle), as installed from requirements-dev.txt."""
    return subprocess.run([sys.executable, "-m", "model_signing", *map(str, args)], capture_output=True,
                          text=True, timeout=300)


def pack(model: Path, out: Path, first: str | None = None) -> Path:
    """A tar of the model's contents (sorted, like tar's own order); `first` goes ahead of the rest."""
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        if first:
            tar.add(model / first, arcname=first)
        for p in sorted(model.rglob("*")):
            rel = p.relative_to(model).as_posix()
            if rel != first:
                tar.add(p, arcname=rel, recursive=False)
    return out


def files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def nothing_left(dest: Path, root: Path | None = None) -> bool:
    """No output, no staging directory, and no parent made for it: nothing new under `root`
    (default: dest's parent), where the first missing component of dest's path began."""
    root = dest.parent if root is None else root
    top = root / dest.relative_to(root).parts[0]
    return not top.exists() and not [n for n in os.listdir(root) if n.startswith(f".{top.name}.staging-")]
