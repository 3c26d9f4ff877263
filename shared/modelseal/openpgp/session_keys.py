"""Symmetric-key encrypted session key packets (tag 3, version 4): the passphrase to the session key.

A packet names a cipher and an S2K; it may carry the session key encrypted
under the derived key (gpg writes one for `gpg -c -e`), or the derived key
is the session key. Versions 5 and 6 (AEAD) and anything malformed raise
IntegrityError (exit 4); a passphrase that unlocks no packet does too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ..errors import IntegrityError, UsageError
from .cfb import decrypt_small
from .ciphers import CIPHERS, Algo, cipher
from .s2k import S2K, Work
from .s2k import parse as parse_s2k


@dataclass(frozen=True)
class SKESK:
    algo_id: int
    s2k: S2K
    esk: bytes

    def session_key(self, passphrase: bytes, work: Work) -> tuple[Algo, bytes] | None:
        """The session key this passphrase gives, or None when it cannot be right."""
        algo = cipher(self.algo_id)
        key = work.derive(self.s2k, passphrase, algo.key_size)
        if not self.esk:
            return algo, key
        plain = decrypt_small(algo, key, self.esk)
        inner = CIPHERS.get(plain[0])
        if inner is None or len(plain) - 1 != inner.key_size:
            return None  # a wrong passphrase decrypts to garbage
        return inner, plain[1:]


def parse(data: bytes) -> SKESK:
    """A session key packet's body."""
    if len(data) < 2:
        raise IntegrityError("malformed symmetric-key encrypted session key packet")
    if data[0] in (5, 6):
        raise IntegrityError(f"unsupported: version {data[0]} symmetric-key encrypted session key (AEAD)")
    if data[0] != 4:
        raise IntegrityError(f"unsupported symmetric-key encrypted session key version {data[0]}")
    cipher(data[1])
    spec, used = parse_s2k(data[2:])
    esk = bytes(data[2 + used:])
    if spec.kind == 0 and esk:
        raise IntegrityError("malformed symmetric-key encrypted session key packet: simple S2K with an encrypted key")
    return SKESK(data[1], spec, esk)


def passphrases(raw: bytes) -> list[bytes]:
    """The passphrases to try: the first line of the key file, as `gpg --passphrase-file` reads it.

    gpg keeps a "\\r" before the "\\n"; when the key check fails with it, the
    line without it is tried too (a key file written on Windows for a message
    made on Linux or the other way round). An empty line is a usage error.
    """
    line = bytes(raw).split(b"\n", 1)[0]
    if not line.rstrip(b"\r"):
        raise UsageError("the passphrase is empty (gpg reads the first line of the passphrase file)")
    return [line, line[:-1]] if line.endswith(b"\r") else [line]


def unlock(skesks: Sequence[SKESK], phrases: Sequence[bytes], head: bytes) -> tuple[SKESK, Algo, bytes]:
    """The first packet and passphrase whose session key passes the "quick check" on head.

    head is the start of the encrypted data: a random prefix of one block
    whose last two bytes are repeated. Every derivation is charged to one
    budget (s2k.Work); raises IntegrityError when no key passes.
    """
    work = Work()
    for skesk in skesks:
        for passphrase in phrases:
            session = skesk.session_key(passphrase, work)
            if session is None:
                continue
            algo, key = session
            bs = algo.block_size
            prefix = decrypt_small(algo, key, head[:bs + 2])
            if prefix[bs - 2:bs] == prefix[bs:bs + 2]:  # the "quick check"
                return skesk, algo, key
    raise IntegrityError("wrong passphrase or corrupt message (the session key check failed)")
