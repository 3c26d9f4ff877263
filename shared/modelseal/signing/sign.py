"""Signing a model directory at seal time, in model_signing's format (key method, files, sha256).

The result is what `model_signing sign key --private-key PEM MODEL` writes:
every regular file under MODEL (symlinks followed, as `seal` archives
them), except the signature itself and the git paths, which are recorded in
`ignore_paths`. `seal --sign-key` puts it into the archive as `model.sig`,
ahead of the files, so a verifying unpack knows the manifest before the
data arrives.
"""

from __future__ import annotations

import hashlib
import os

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ..errors import UsageError
from ..log import Log
from . import bundle, statement
from .stream import SIGNATURE
from .trust import check_curve, curve_hash, key_hint

READ = 1 << 20


def load_private_key(path: str) -> ec.EllipticCurvePrivateKey:
    try:
        with open(path, "rb") as f:
            pem = f.read(1 << 20)
    except OSError as e:
        raise UsageError(f"--sign-key {path}: {e.strerror}") from None
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except TypeError:
        raise UsageError(f"--sign-key {path}: an encrypted private key (give an unencrypted PEM on tmpfs)") from None
    except (ValueError, UnsupportedAlgorithm):
        raise UsageError(f"--sign-key {path}: not a PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise UsageError(f"--sign-key {path}: not an EC key on P-256, P-384 or P-521 (model signing's key method)")
    check_curve(key.public_key(), f"--sign-key {path}")
    return key


def _digest(path: str) -> bytes:
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(READ)
        while n := f.readinto(buf):
            h.update(memoryview(buf)[:n])
    return h.digest()


def _files(src: str) -> list[tuple[str, str]]:
    """(path, name relative to src) of every regular file, symlinks followed, git paths left out."""
    out = []
    for root, dirs, files in os.walk(src, followlinks=True):
        rel = os.path.relpath(root, src)
        for name in sorted(dirs + files):
            path = os.path.join(root, name)
            arc = name if rel == "." else f"{rel}/{name}"
            if statement.ignored(tuple(arc.split("/")), [(p,) for p in statement.GIT_PATHS]):
                if name in dirs:
                    dirs.remove(name)
                continue
            if name in files and os.path.isfile(path):
                out.append((path, arc))
    return out


def sign_tree(src: str, key_path: str, log: Log) -> bytes:
    """model.sig for the directory `src`, signed with the EC private key at `key_path`."""
    key = load_private_key(key_path)
    if not os.path.isdir(src):
        raise UsageError(f"--sign-key signs a model directory; {src} is not one")
    if os.path.lexists(os.path.join(src, SIGNATURE)):
        raise UsageError(f"{src} already holds {SIGNATURE}: seal it without --sign-key, or remove it")
    digests = [(arc, _digest(path)) for path, arc in _files(src)]
    payload = statement.build(os.path.basename(os.path.abspath(src)), digests,
                              [SIGNATURE, *statement.GIT_PATHS])
    signature = key.sign(bundle.pae(payload), ec.ECDSA(curve_hash(key.public_key())))
    log.info("signed", files=len(digests), signature=SIGNATURE, key_hint=key_hint(key.public_key())[:16])
    return bundle.build(payload, signature, key_hint(key.public_key()))
