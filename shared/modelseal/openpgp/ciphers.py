"""The block ciphers a symmetric OpenPGP message may name (RFC 4880 section 9.2), by id.

AES, Camellia and the 64-bit CAST5, Blowfish, 3DES and IDEA (from
`cryptography`'s decrepit module). Any other id raises IntegrityError (exit 4)
naming the algorithm.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from ..errors import IntegrityError

_old: ModuleType
try:  # the 64-bit ciphers (and, in newer releases, Camellia) live in "decrepit"
    from cryptography.hazmat.decrepit.ciphers import algorithms as _old
except ImportError:  # pragma: no cover - older cryptography
    _old = algorithms


@dataclass(frozen=True)
class Algo:
    name: str
    key_size: int
    block_size: int
    factory: Callable[[bytes], Any]  # a cryptography block cipher algorithm, of the key


_camellia = getattr(_old, "Camellia", None) or algorithms.Camellia


CIPHERS: dict[int, Algo] = {
    1: Algo("IDEA", 16, 8, lambda k: _old.IDEA(k)),
    2: Algo("3DES", 24, 8, lambda k: _old.TripleDES(k)),
    3: Algo("CAST5", 16, 8, lambda k: _old.CAST5(k)),
    4: Algo("Blowfish", 16, 8, lambda k: _old.Blowfish(k)),
    7: Algo("AES128", 16, 16, algorithms.AES),
    8: Algo("AES192", 24, 16, algorithms.AES),
    9: Algo("AES256", 32, 16, algorithms.AES),
    11: Algo("Camellia128", 16, 16, _camellia),
    12: Algo("Camellia192", 24, 16, _camellia),
    13: Algo("Camellia256", 32, 16, _camellia),
}
_UNSUPPORTED = {0: "plaintext", 5: "SAFER-SK128", 6: "DES/SK", 10: "Twofish"}


def cipher(algo_id: int) -> Algo:
    algo = CIPHERS.get(algo_id)
    if algo is None:
        name = _UNSUPPORTED.get(algo_id, f"algorithm {algo_id}")
        raise IntegrityError(f"unsupported cipher {name} (id {algo_id}): AES, Camellia, CAST5, Blowfish, "
                             "3DES and IDEA are supported")
    return algo


def ecb(algo: Algo, key: bytes):
    """The raw block function E (an ECB encryptor): CFB only ever encrypts."""
    return Cipher(algo.factory(key), modes.ECB()).encryptor()


def cbc_decryptor(algo: Algo, key: bytes, iv: bytes):
    return Cipher(algo.factory(key), modes.CBC(iv)).decryptor()
