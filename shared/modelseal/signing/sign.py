"""Signing a model directory at seal time, in model_signing's format (key method, files, sha256).

The result is what `model_signing sign key --private-key PEM MODEL` writes:
every regular file `seal` archives (archive.plan_tar: links inside MODEL
followed, the output left out), except the signature itself and the git
paths, which are recorded in `ignore_paths`. Each file is hashed through a
descriptor checked to be the file that was planned. `seal --sign-key` puts it into the archive as `model.sig`,
ahead of the files, so a verifying unpack knows the manifest before the
data arrives.
"""

from __future__ import annotations

import hashlib
import os

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ..archive import Identity, identity
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


def _digest(path: str, planned: Identity) -> bytes:
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        if identity(os.fstat(f.fileno())) != planned:
            raise UsageError(f"cannot sign {path}: it was replaced while being sealed")
        buf = bytearray(READ)
        while n := f.readinto(buf):
            h.update(memoryview(buf)[:n])
    return h.digest()


def _signed(files: list[tuple[str, str, Identity]]) -> list[tuple[str, str, Identity]]:
    """The files the statement lists: all but the git paths (recorded in ignore_paths instead)."""
    git: list[tuple[str, ...]] = [(p,) for p in statement.GIT_PATHS]
    return [f for f in files if not statement.ignored(tuple(f[1].split("/")), git)]


def sign_tree(src: str, key_path: str, log: Log, files: list[tuple[str, str, Identity]]) -> bytes:
    """model.sig for the directory `src`, signed with the EC private key at `key_path`.

    `files`: (path, name in the archive, identity) of the files sealed, archive.Plan.regular_files()."""
    key = load_private_key(key_path)
    if not os.path.isdir(src):
        raise UsageError(f"--sign-key signs a model directory; {src} is not one")
    if os.path.lexists(os.path.join(src, SIGNATURE)):
        raise UsageError(f"{src} already holds {SIGNATURE}: seal it without --sign-key, or remove it")
    digests = [(arc, _digest(path, ident)) for path, arc, ident in _signed(files)]
    payload = statement.build(os.path.basename(os.path.abspath(src)), digests,
                              [SIGNATURE, *statement.GIT_PATHS])
    signature = key.sign(bundle.pae(payload), ec.ECDSA(curve_hash(key.public_key())))
    log.info("signed", files=len(digests), signature=SIGNATURE, key_hint=key_hint(key.public_key())[:16])
    return bundle.build(payload, signature, key_hint(key.public_key()))
