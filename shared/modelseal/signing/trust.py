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

The path search is bounded before it starts. cryptography 48's verifier
tries every certificate whose subject names the working certificate's
issuer, recursively, to the depth limit, with no budget: a bundle of a few
self-issued CAs under one name is a search of n^8 signature checks (6 of
them kept `unpack` busy for hours). So a bundle carries at most
MAX_BUNDLE_CERTS certificates, duplicates are dropped, and the search the
verifier would make is first walked by names alone (no signature checked):
more than MAX_PATH_TRIES issuer candidates in all, and the bundle is refused
(exit 4). A real chain (leaf, an intermediate or two, maybe the root) tries
a handful.
"""

from __future__ import annotations

import hashlib
from typing import Callable, Protocol

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID

from ..errors import IntegrityError, UsageError
from .bundle import MEDIA_TYPE, PAYLOAD_TYPE, Bundle, pae, pae_compat

CURVES: dict[str, Callable[[], hashes.HashAlgorithm]] = {
    "secp256r1": hashes.SHA256, "secp384r1": hashes.SHA384, "secp521r1": hashes.SHA512}
#: Intermediates a path may stack: cryptography's default, set explicitly so that _path_tries counts the same search.
MAX_CHAIN_DEPTH = 8
#: Certificates a bundle's chain may carry: the leaf, MAX_CHAIN_DEPTH intermediates and a copy of the root.
MAX_BUNDLE_CERTS = MAX_CHAIN_DEPTH + 2
#: Issuer candidates the path search may try in all (Go and rustls-webpki stop at 100 signature
#: checks, later cryptography releases at 128); counted by names, before any signature is checked.
MAX_PATH_TRIES = 128


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
        if len(bundle.certificates) > MAX_BUNDLE_CERTS:
            raise IntegrityError(f"{where}: the bundle carries {len(bundle.certificates)} certificates, more than "
                                 f"{MAX_BUNDLE_CERTS} (a leaf, at most {MAX_CHAIN_DEPTH} intermediates and the root)")
        try:
            chain = [x509.load_der_x509_certificate(der) for der in bundle.certificates]
        except ValueError:
            raise IntegrityError(f"{where}: malformed Sigstore bundle: a certificate is not DER X.509") from None
        leaf = chain[0]
        intermediates = _distinct(chain[1:] + self.intermediates)
        try:
            tries = _path_tries(leaf, intermediates, self.anchors, MAX_PATH_TRIES)
        except ValueError:  # a name that does not parse (cryptography decodes names when asked for them)
            raise IntegrityError(f"{where}: malformed Sigstore bundle: a certificate's name does not parse") from None
        if tries > MAX_PATH_TRIES:
            raise IntegrityError(f"{where}: the certificate chain offers more than {MAX_PATH_TRIES} issuers to try "
                                 "(certificates that name each other): refused before checking any signature")
        verifier = (
            verification.PolicyBuilder()
            .store(verification.Store(self.anchors))
            .time(leaf.not_valid_before_utc)
            .max_chain_depth(MAX_CHAIN_DEPTH)
            .extension_policies(ee_policy=verification.ExtensionPolicy.permit_all(), ca_policy=self._ca_policy)
            .build_client_verifier()
        )
        try:
            verifier.verify(leaf, intermediates)
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


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def _distinct(certs: list[x509.Certificate]) -> list[x509.Certificate]:
    """The certificates, each once, in order (the bundle and the PEM file may both carry an intermediate)."""
    return list({_der(c): c for c in certs}.values())


def _path_tries(leaf: x509.Certificate, intermediates: list[x509.Certificate], anchors: list[x509.Certificate],
                limit: int) -> int:
    """How many issuer candidates cryptography's path builder may try for `leaf`, counting up to limit + 1.

    Its search, walked by names only: from each certificate (the leaf at depth 0) that is not an anchor
    and not deeper than MAX_CHAIN_DEPTH, every anchor and every intermediate whose subject is its issuer
    is a candidate (a signature check); an intermediate candidate is searched in turn one level deeper.
    Signatures only prune that search, so this bounds its work. Names compare as cryptography's Name
    objects do, which is no stricter than the verifier's comparison of their encodings.
    """
    anchor_der = {_der(a) for a in anchors}
    nodes = [(c.subject, c.issuer, _der(c)) for c in intermediates]
    anchor_subjects = [a.subject for a in anchors]
    tries = 0
    todo = [(leaf.issuer, _der(leaf), 0)]
    while todo:
        issuer, der, depth = todo.pop()
        if der in anchor_der or depth > MAX_CHAIN_DEPTH:
            continue
        tries += sum(1 for subject in anchor_subjects if subject == issuer)
        for subject, next_issuer, next_der in nodes:
            if subject == issuer:
                tries += 1
                todo.append((next_issuer, next_der, depth + 1))
        if tries > limit:
            break
    return tries


def _self_signed(cert: x509.Certificate) -> bool:
    if cert.subject != cert.issuer:
        return False
    try:
        cert.verify_directly_issued_by(cert)
        return True
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
