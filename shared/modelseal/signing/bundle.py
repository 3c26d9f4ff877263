"""The Sigstore bundle that carries a model signature, and DSSE's pre-authentication encoding.

A model signature (`model.sig`) is a Sigstore bundle, media type
`application/vnd.dev.sigstore.bundle.v0.3+json`, whose `dsseEnvelope` holds
the in-toto statement (statement.py) and one ECDSA signature over its PAE.
`verificationMaterial` names the signer: `publicKey.hint` (the SHA-256 of the
signer's SubjectPublicKeyInfo PEM; older bundles carry `rawBytes` or nothing)
or an `x509CertificateChain`, leaf first. `tlogEntries` is always empty here:
the key and certificate methods use no transparency log.

The bundle is untrusted input until its signature verifies: `parse` is its
only reader, and every way it can be malformed (not JSON, wrong types, bad
base64, missing fields, too large) ends in one IntegrityError (exit 4).
Before it is parsed, its size is capped (MAX_BUNDLE) and so are the JSON
objects and arrays in it (MAX_CONTAINERS, which also bounds the nesting):
a bundle is a handful of objects around base64 strings, while a few MiB of
`{}` parse into hundreds of MiB of Python objects.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from .. import untrusted
from ..errors import IntegrityError

MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
#: A bundle is read into memory whole. model_signing writes ~250 bytes a file (indented JSON, in base64):
#: a model of a few dozen files signs in a few KiB, and 16 MiB hold a manifest of ~65,000 files.
MAX_BUNDLE = 16 << 20
#: JSON objects and arrays in a bundle, counted as `{` and `[` bytes before parsing (its payload, signature
#: and certificates are base64, which has neither): one has about ten.
MAX_CONTAINERS = 256


@dataclass(frozen=True)
class Bundle:
    media_type: str
    payload_type: str
    payload: bytes
    signature: bytes  # the first DSSE signature (model_signing reads only that one)
    key_hint: str | None  # verificationMaterial.publicKey.hint
    public_key: bool  # verificationMaterial has a publicKey (with or without hint)
    certificates: tuple[bytes, ...]  # verificationMaterial.x509CertificateChain, DER, leaf first


class _Malformed(Exception):
    pass


def _field(obj: Any, key: str, kind: type, optional: bool = False) -> Any:
    if not isinstance(obj, dict):
        raise _Malformed(f"expected an object around {key!r}")
    value = obj.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, kind):
        raise _Malformed(f"{key!r} is missing or not a {kind.__name__}")
    return value


def _b64(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise _Malformed(f"{what} is not a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise _Malformed(f"{what} is not valid base64") from None


def parse(data: bytes, where: str) -> Bundle:
    """Read an untrusted bundle; any malformation is one IntegrityError naming `where`."""
    if len(data) > MAX_BUNDLE:
        raise IntegrityError(f"{where}: malformed Sigstore bundle: {len(data)} bytes, over {MAX_BUNDLE}")
    containers = data.count(b"{") + data.count(b"[")
    if containers > MAX_CONTAINERS:
        raise IntegrityError(f"{where}: malformed Sigstore bundle: up to {containers} JSON objects and arrays, "
                             f"more than {MAX_CONTAINERS} (a bundle has about ten)")
    doc = untrusted.json_document(data, f"{where}: malformed Sigstore bundle")
    try:
        material = _field(doc, "verificationMaterial", dict)
        envelope = _field(doc, "dsseEnvelope", dict)
        signatures = _field(envelope, "signatures", list)
        if not signatures:
            raise _Malformed("the DSSE envelope has no signature")
        key = _field(material, "publicKey", dict, optional=True)
        hint = _field(key, "hint", str, optional=True) if key is not None else None
        chain = _field(material, "x509CertificateChain", dict, optional=True)
        certs: tuple[bytes, ...] = ()
        if chain is not None:
            listed = _field(chain, "certificates", list)
            certs = tuple(_b64(_field(c, "rawBytes", str), "a certificate") for c in listed)
        return Bundle(
            media_type=_field(doc, "mediaType", str),
            payload_type=_field(envelope, "payloadType", str),
            payload=_b64(_field(envelope, "payload", str), "the DSSE payload"),
            signature=_b64(_field(signatures[0], "sig", str), "the DSSE signature"),
            key_hint=hint or None,
            public_key=key is not None,
            certificates=certs,
        )
    except _Malformed as e:
        raise IntegrityError(f"{where}: malformed Sigstore bundle: {e}") from None


def build(payload: bytes, signature: bytes, key_hint: str) -> bytes:
    """A bundle as model_signing's key method writes it (verificationMaterial.publicKey.hint)."""
    doc = {
        "mediaType": MEDIA_TYPE,
        "verificationMaterial": {"publicKey": {"hint": key_hint}, "tlogEntries": []},
        "dsseEnvelope": {
            "payload": base64.b64encode(payload).decode(),
            "payloadType": PAYLOAD_TYPE,
            "signatures": [{"sig": base64.b64encode(signature).decode(), "keyid": ""}],
        },
    }
    return json.dumps(doc, indent=2).encode() + b"\n"


def pae(payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding, over the in-toto payload type."""
    return b"DSSEv1 %d %s %d %s" % (len(PAYLOAD_TYPE), PAYLOAD_TYPE.encode(), len(payload), payload)


def pae_compat(payload: bytes) -> bytes:
    """What model_signing before 1.0 signed instead of the PAE.

    It formatted the payload bytes into a str (so their Python repr, b'...',
    with escapes) after "DSSEV1"; signatures from v0.2 need this to verify.
    model_signing 1.x still accepts them, and so do we.
    """
    return f"DSSEV1 {len(PAYLOAD_TYPE)} {PAYLOAD_TYPE} {len(payload)} {payload!r}".encode()
