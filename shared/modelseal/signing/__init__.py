"""OpenSSF model signing (model_signing v1.0 format): verified while unpacking, made at seal time.

A model signature is an in-toto statement (statement.py) in a DSSE envelope
in a Sigstore bundle (bundle.py), signed by an EC key or a certificate
(trust.py). `unpack` and `run` verify it in the stream (stream.py: each file
is hashed as the tree writer writes it, and compared with the signed
manifest before the staging directory is renamed); `seal --sign-key` makes
one (sign.py).

Why not the `model-signing` library itself: its dependency tree (sigstore,
pydantic, protobuf, rich, pygments, requests, tuf, rfc3161-client, dnspython,
blake3, pyOpenSSL, ... 48.6 MB installed beyond cryptography, measured with
model-signing 1.1.1) would take every stage image over the 150 MB budget
(base 102.0 MB -> ~150.7, run/fetch 113.3 MB -> ~162; see images/sizes.sh)
and put an HTTP stack into the decrypt and unpack images, which carry none.
The key and certificate methods need only ECDSA, X.509 path validation and
JSON, which `cryptography` (already in every image) does, so they are
implemented here on it; the library stays the test oracle
(requirements-dev.txt): its CLI signs what these tests verify and verifies
what `seal --sign-key` signs. Keyless Sigstore signatures (Fulcio
certificates, Rekor) are not supported: they need the transparency log.
"""

from __future__ import annotations

from .stream import SIGNATURE, StreamVerifier
from .trust import CertificateTrust, KeyTrust

__all__ = ["SIGNATURE", "StreamVerifier", "verifier", "sign_tree"]


def verifier(key: str | None, certificate: str | None, signature: str | None, log) -> StreamVerifier | None:
    """The verifier the --verify-key / --verify-certificate / --signature flags ask for, or None."""
    from ..errors import UsageError

    if key and certificate:
        raise UsageError("give --verify-key or --verify-certificate, not both")
    if not key and not certificate:
        if signature:
            raise UsageError("--signature needs --verify-key or --verify-certificate")
        return None
    trust: KeyTrust | CertificateTrust = KeyTrust(key) if key else CertificateTrust(certificate or "")
    return StreamVerifier(trust, signature or SIGNATURE, log)


def sign_tree(src: str, key_path: str, log, files: list) -> bytes:
    from .sign import sign_tree as _sign

    return _sign(src, key_path, log, files)
