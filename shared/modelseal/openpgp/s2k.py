"""String-to-key (RFC 4880 section 3.7): a passphrase turned into a key, within a budget.

Simple, salted and iterated+salted S2K with MD5, SHA-1, RIPEMD-160, SHA-2 or
SHA-3. GNU's extension (101), Argon2 (4) and other types or hashes raise
IntegrityError (exit 4). The hashing all session key packets of one message
may ask for together is capped (S2K_BUDGET), so a hostile message costs about
a second of CPU before its exit 4, not 16 packets' worth.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from ..errors import IntegrityError

UNIT = 1 << 20  # passphrase-and-salt repetitions hashed per update call

HASHES = {1: "md5", 2: "sha1", 3: "ripemd160", 8: "sha256", 9: "sha384", 10: "sha512", 11: "sha224",
          12: "sha3_256", 14: "sha3_512"}
_DIGEST_SIZES = {"md5": 16, "sha1": 20, "ripemd160": 20, "sha256": 32, "sha384": 48, "sha512": 64, "sha224": 28,
                 "sha3_256": 32, "sha3_512": 64}
# CPU per byte hashed, relative to SHA-256 and rounded up (hashlib on x86-64: RIPEMD-160 and SHA3-512
# are about 2.6 and 3.1 times slower than SHA-256; MD5, SHA-1 and SHA-2 are at most as slow).
_HASH_COST = {"md5": 1, "sha1": 1, "ripemd160": 3, "sha256": 1, "sha384": 1, "sha512": 1, "sha224": 1,
              "sha3_256": 2, "sha3_512": 3}
#: The largest iteration count an S2K specifier can encode (count byte 0xFF), gpg's maximum too.
MAX_S2K_COUNT = (16 + 15) << (15 + 6)
#: Passphrase hashing one message may ask for, in SHA-256-equivalent bytes: twice the costliest
#: single derivation (the maximum count, RIPEMD-160, two contexts for a 256-bit key), so any real
#: message, even at the maximum count and tried with and without a trailing CR, fits; a hostile
#: one with 16 such packets costs this much (about a second) instead of 16 times more.
S2K_BUDGET = 2 * MAX_S2K_COUNT * 2 * _HASH_COST["ripemd160"]


@dataclass(frozen=True)
class S2K:
    kind: int
    hash_id: int
    salt: bytes = b""
    count: int = 0

    @property
    def description(self) -> str:
        names = {0: "simple", 1: "salted", 3: "iterated+salted"}
        return f"{names[self.kind]} {HASHES[self.hash_id].upper()}"

    def hashed(self, passphrase_len: int) -> int:
        """Bytes one hash context takes in for a passphrase of this length."""
        data = len(self.salt) + passphrase_len
        return max(self.count, data) if self.kind == 3 else data

    def cost(self, passphrase_len: int, key_size: int) -> int:
        """The work of one derivation in SHA-256-equivalent bytes (see S2K_BUDGET)."""
        name = HASHES[self.hash_id]
        contexts = -(-key_size // _DIGEST_SIZES[name])
        return self.hashed(passphrase_len) * contexts * _HASH_COST[name]

    def derive(self, passphrase: bytes, key_size: int) -> bytes:
        try:
            first = hashlib.new(HASHES[self.hash_id])
        except ValueError:
            raise IntegrityError(f"unsupported S2K hash {HASHES[self.hash_id]} in this build") from None
        data = self.salt + passphrase
        total = self.hashed(len(passphrase))
        contexts = [first] + [hashlib.new(first.name) for _ in range(1, -(-key_size // first.digest_size))]
        unit = data * max(1, UNIT // max(1, len(data)))  # whole repetitions, so every unit starts aligned
        full, rem = divmod(total, len(unit)) if data else (0, 0)
        for i, h in enumerate(contexts):
            h.update(bytes(i))  # the i-th context is preloaded with i zero bytes
            for _ in range(full):
                h.update(unit)
            h.update(unit[:rem])
        return b"".join(h.digest() for h in contexts)[:key_size]


class Work:
    """The passphrase hashing one message may ask for: at most S2K_BUDGET in all.

    Charged before each derivation, so a hostile message costs at most the
    budget (and a clear exit 4), whatever its number of session key packets;
    a derivation asked for twice (the same S2K, key size and passphrase) is
    done once.
    """

    def __init__(self, budget: int | None = None) -> None:
        self.left = S2K_BUDGET if budget is None else budget
        self._done: dict[tuple[S2K, bytes, int], bytes] = {}

    def derive(self, s2k: S2K, passphrase: bytes, key_size: int) -> bytes:
        known = self._done.get((s2k, passphrase, key_size))
        if known is not None:
            return known
        cost = s2k.cost(len(passphrase), key_size)
        if cost > self.left:
            raise IntegrityError(
                "the session key packets ask for more passphrase hashing (S2K) than any real message needs: "
                f"over {S2K_BUDGET >> 20} Mi SHA-256-equivalent bytes in all; refused")
        self.left -= cost
        key = s2k.derive(passphrase, key_size)
        self._done[(s2k, passphrase, key_size)] = key
        return key


def parse(data: bytes) -> tuple[S2K, int]:
    """An S2K specifier at the start of data, and how many bytes it used."""
    if not data:
        raise IntegrityError("malformed symmetric-key encrypted session key packet: no S2K specifier")
    kind = data[0]
    if kind == 101:
        raise IntegrityError("unsupported S2K type 101 (GNU extension: no passphrase-derived key)")
    if kind == 4:
        raise IntegrityError("unsupported S2K type 4 (Argon2, used with AEAD messages)")
    if kind not in (0, 1, 3):
        raise IntegrityError(f"unsupported S2K type {kind}")
    need = {0: 2, 1: 10, 3: 11}[kind]
    if len(data) < need:
        raise IntegrityError("malformed symmetric-key encrypted session key packet: short S2K specifier")
    hash_id = data[1]
    if hash_id not in HASHES:
        raise IntegrityError(f"unsupported S2K hash algorithm {hash_id}")
    if kind == 0:
        return S2K(0, hash_id), need
    salt = bytes(data[2:10])
    if kind == 1:
        return S2K(1, hash_id, salt), need
    c = data[10]
    return S2K(3, hash_id, salt, (16 + (c & 15)) << ((c >> 4) + 6)), need
