"""OpenPGP's CFB mode (RFC 4880 section 13.9: zero IV, no resync for SEIPD), decrypted.

`decrypt` runs the stream as two pipelined passes, ECB then CBC, that give
the same bytes as CFB much faster (the derivation is in docs/OPENPGP.md);
`decrypt_small` is plain CFB for the few blocks of a key check or an
encrypted session key.
"""

from __future__ import annotations

from typing import Iterable, Iterator

from .buffers import CHUNK, Pool
from .ciphers import Algo, cbc_decryptor, ecb


def xor(a: bytes, b: bytes) -> bytes:
    n = min(len(a), len(b))
    return (int.from_bytes(a[:n], "big") ^ int.from_bytes(b[:n], "big")).to_bytes(n, "big")


def decrypt_small(algo: Algo, key: bytes, data: bytes, iv: bytes | None = None) -> bytes:
    """Plain CFB decryption of a few blocks (key checks, encrypted session keys)."""
    enc = ecb(algo, key)
    bs = algo.block_size
    prev = iv if iv is not None else bytes(bs)
    out = bytearray()
    for i in range(0, len(data), bs):
        block = data[i:i + bs]
        out += xor(block, enc.update(prev))
        prev = block
    return bytes(out)


def decrypt(chunks: Iterable[memoryview], algo: Algo, key: bytes) -> Iterator[memoryview]:
    """The plaintext of a CFB stream: P_i = C_i xor E(C_{i-1}), computed as CBC-decrypt(ECB-encrypt(C)).

    Chunks come out as views of pooled buffers (reused once no view is left);
    a trailing partial block is XORed by hand.
    """
    bs = algo.block_size
    enc = ecb(algo, key)
    cbc = cbc_decryptor(algo, key, ecb(algo, key).update(bytes(bs)))
    pool = Pool(CHUNK + 2 * bs)
    x = bytearray(CHUNK + 2 * bs)
    total = 0
    tail = b""  # the last 2 blocks of ciphertext, for a final partial block
    for chunk in chunks:
        n = len(chunk)
        if not n:
            continue
        if n + 2 * bs > len(x):
            x = bytearray(n + 2 * bs)
        k = enc.update_into(chunk, x)
        total += n
        tail = (tail + bytes(chunk[-2 * bs:]))[-2 * bs:]
        if k:
            out = pool.get() if k + bs <= pool.size else bytearray(k + bs)
            cbc.update_into(memoryview(x)[:k], out)
            yield memoryview(out)[:k]
    rem = total % bs
    if rem:
        prev = tail[-rem - bs:-rem] if total > bs else bytes(bs)
        yield memoryview(xor(tail[-rem:], ecb(algo, key).update(prev)))
