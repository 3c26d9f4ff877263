"""Who may sign: model_signing's "key" and "certificate" methods, checked as model_signing checks them.

key (`--verify-key PEM`): an EC public key on P-256, P-384 or P-521. A
bundle's `publicKey.hint`, when present, must be the SHA-256 of that key's
SubjectPublicKeyInfo PEM (else: signed with another key); the ECDSA
signature, with the curve's hash (SHA-256/384/512), must verify over the
DSSE PAE, or over the pre-1.0 encoding (bundle.pae_compat).

certificate (`--verify-certificate PEM`): the bundle's chain (leaf first,
then intermediates) must chain up to a self-signed certificate of the PEM
file, checked at the leaf's notBefore (a signature stays valid after its
certificate expires, as in model_signing); every CA in the path must be a CA
(basicConstraints cA, keyCertSign when keyUsage is present, path lengths);
unknown critical extensions are refused; the leaf must allow signing
(keyUsage digitalSignature, or extendedKeyUsage codeSigning) and hold an EC
key on one of the curves above. The signature verifies as for a key; the
pre-1.0 encoding with SHA-256 (model_signing v0.2 hard-coded it for
certificates). model_signing's certificate method checks no name: any leaf
the chain vouches for may sign. Certificates of the PEM file that are not
self-signed serve as intermediates, as in OpenSSL's default (no partial
chains).

model_signing builds the chain with OpenSSL (pyOpenSSL's X509Store); this
uses cryptography's verifier with the policy above. It is stricter in
corners a signing PKI rarely meets: X.509 v3 only, positive serials of at
most 20 bytes, validity dates encoded as RFC 5280 says, RSA CAs of at least
2048 bits, no SHA-1 or DSA signatures, and at most 8 intermediates.
"""

from __future__ import annotations

import hashlib
from typing import Protocol

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID

from ..errors import IntegrityError, UsageError
from .bundle import MEDIA_TYPE, PAYLOAD_TYPE, Bundle, pae, pae_compat

CURVES = {"secp256r1": hashes.SHA256, "secp384r1": hashes.SHA384, "secp521r1": hashes.SHA512}


class Trust(Protocol):
    """A verification method: returns the payload of a bundle it accepts, else IntegrityError."""

    def verify(self, bundle: Bundle, where: str) -> bytes: ...


def curve_hash(key: ec.EllipticCurvePublicKey) -> hashes.HashAlgorithm:
    return CURVES[key.curve.name]()


def check_curve(key: object, what: str, error: type = UsageError) -> ec.EllipticCurvePublicKey:
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name not in CURVES:
        raise error(f"{what}: not an EC key on P-256, P-384 or P-521 (model signing's key method)")
    return key


def key_hint(key: ec.EllipticCurvePublicKey) -> str:
    """model_signing's publicKey.hint: the SHA-256 of the SubjectPublicKeyInfo PEM."""
    pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(pem).hexdigest()


def _read_pem(path: str, flag: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(1 << 20)
    except OSError as e:
        raise UsageError(f"{flag} {path}: {e.strerror}") from None


def _envelope(bundle: Bundle, where: str) -> None:
    if bundle.media_type != MEDIA_TYPE:
        raise IntegrityError(f"{where}: bundle media type {bundle.media_type!r}, expected {MEDIA_TYPE}")
    if bundle.payload_type != PAYLOAD_TYPE:
        raise IntegrityError(f"{where}: DSSE payload type {bundle.payload_type!r}, expected {PAYLOAD_TYPE}")


def _verify_ecdsa(key: ec.EllipticCurvePublicKey, bundle: Bundle, compat_hash: hashes.HashAlgorithm) -> bool:
    for message, algorithm in ((pae(bundle.payload), curve_hash(key)), (pae_compat(bundle.payload), compat_hash)):
        try:
            key.verify(bundle.signature, message, ec.ECDSA(algorithm))
            return True
        except InvalidSignature:
            continue
    return False


class KeyTrust:
    def __init__(self, path: str) -> None:
        try:
            key = serialization.load_pem_public_key(_read_pem(path, "--verify-key"))
        except (ValueError, UnsupportedAlgorithm):
            raise UsageError(f"--verify-key {path}: not a PEM public key") from None
        self.key = check_curve(key, f"--verify-key {path}")
        self.hint = key_hint(self.key)

    def verify(self, bundle: Bundle, where: str) -> bytes:
        _envelope(bundle, where)
        if bundle.certificates and not bundle.public_key:
            raise IntegrityError(f"{where}: signed with a certificate, not a key (use --verify-certificate)")
        if bundle.key_hint is not None and bundle.key_hint != self.hint:
            raise IntegrityError(f"{where}: signed with another key (its key hint is not that of --verify-key)")
        if not _verify_ecdsa(self.key, bundle, curve_hash(self.key)):
            raise IntegrityError(f"{where}: bad signature: it does not verify with --verify-key")
        return bundle.payload


def _can_sign(leaf: x509.Certificate) -> bool:
    try:
        if leaf.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature:
            return True
    except x509.ExtensionNotFound:
        pass
    try:
        return ExtendedKeyUsageOID.CODE_SIGNING in leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return False


def _must_be_ca(policy, cert, ext) -> None:  # cryptography's extension-validator signature
    if not ext.ca:
        raise ValueError("basicConstraints cA is false: not a CA")


def _ca_key_usage(policy, cert, ext) -> None:
    if ext is not None and not ext.key_cert_sign:
        raise ValueError("keyUsage lacks keyCertSign: not a CA")


class CertificateTrust:
    def __init__(self, path: str) -> None:
        try:
            certs = x509.load_pem_x509_certificates(_read_pem(path, "--verify-certificate"))
        except ValueError:
            raise UsageError(f"--verify-certificate {path}: no PEM certificates in it") from None
        self.anchors = [c for c in certs if _self_signed(c)]
        self.intermediates = [c for c in certs if not _self_signed(c)]
        if not self.anchors:
            raise UsageError(f"--verify-certificate {path}: no self-signed (root) certificate in it")
        self._ca_policy = (
            verification.ExtensionPolicy.permit_all()
            .require_present(x509.BasicConstraints, verification.Criticality.AGNOSTIC, _must_be_ca)
            .may_be_present(x509.KeyUsage, verification.Criticality.AGNOSTIC, _ca_key_usage)
        )

    def _leaf_key(self, bundle: Bundle, where: str) -> ec.EllipticCurvePublicKey:
        if not bundle.certificates:
            raise IntegrityError(f"{where}: signed with a key, not a certificate (use --verify-key)")
        try:
            chain = [x509.load_der_x509_certificate(der) for der in bundle.certificates]
        except ValueError:
            raise IntegrityError(f"{where}: malformed Sigstore bundle: a certificate is not DER X.509") from None
        leaf = chain[0]
        verifier = (
            verification.PolicyBuilder()
            .store(verification.Store(self.anchors))
            .time(leaf.not_valid_before_utc)
            .extension_policies(ee_policy=verification.ExtensionPolicy.permit_all(), ca_policy=self._ca_policy)
            .build_client_verifier()
        )
        try:
            verifier.verify(leaf, chain[1:] + self.intermediates)
        except verification.VerificationError as e:
            raise IntegrityError(f"{where}: the signing certificate does not chain to --verify-certificate: "
                                 f"{str(e).split(' (encountered')[0]}") from None
        except ValueError as e:  # e.g. an unsupported name type in a chain that otherwise holds
            raise IntegrityError(f"{where}: the signing certificate cannot be verified: {e}") from None
        if not _can_sign(leaf):
            raise IntegrityError(f"{where}: the signing certificate may not sign "
                                 "(no keyUsage digitalSignature, no extendedKeyUsage codeSigning)")
        return check_curve(leaf.public_key(), f"{where}: the signing certificate's key", IntegrityError)

    def verify(self, bundle: Bundle, where: str) -> bytes:
        _envelope(bundle, where)
        key = self._leaf_key(bundle, where)
        if not _verify_ecdsa(key, bundle, hashes.SHA256()):
            raise IntegrityError(f"{where}: bad signature: it does not verify with the signing certificate's key")
        return bundle.payload


def _self_signed(cert: x509.Certificate) -> bool:
    if cert.subject != cert.issuer:
        return False
    try:
        cert.verify_directly_issued_by(cert)
        return True
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
