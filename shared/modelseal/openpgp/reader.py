"""Symmetric OpenPGP messages (`gpg -c`), decrypted as a stream in constant memory.

Decision: a careful streaming implementation on `cryptography` and the
standard library, not the `gpg` binary driven through pipes. The decrypt image
then carries no gpg, gpg-agent or pinentry, there is no passphrase hand-over
to another process (no `--passphrase-fd` plumbing, no agent socket, no
GNUPGHOME on a read-only root filesystem), the errors are ours (categorised,
one line, exit 4, nothing half-written), and it is faster: gpg -d does
everything on one core (about 0.15 GB/s on its default, compressed output),
this spreads decrypting, the MDC's SHA-1 and inflating over threads that run
in parallel (see "How it is fast" and bench/openpgp.py).

What is accepted (RFC 4880 / RFC 9580, version 4 symmetric messages):
    [marker | PKESK (skipped) | SKESK v4]...  SEIPD v1 (tag 18) with its MDC
    inside: [compressed data (tag 8: uncompressed, ZIP, ZLIB, BZip2)]
            literal data (tag 11), optionally with one-pass signature and
            signature packets around it (skipped: there is no public key to
            check them against; the MDC protects the whole message)
with old- and new-format packet headers, partial body lengths at every level
and old-format indeterminate lengths. S2K simple, salted and iterated+salted
with MD5, SHA-1, RIPEMD-160, SHA-2 or SHA-3; a SKESK may carry an encrypted
session key (gpg writes one for `gpg -c -e`). Ciphers: AES-128/192/256,
Camellia, CAST5, Blowfish, 3DES and IDEA (the 64-bit ones from
`cryptography`'s decrepit module). Refused, exit 4 with a one-line reason:
a symmetrically encrypted packet without MDC (tag 9, "no integrity
protection"), AEAD (tag 20, SEIPD v2, SKESK v5/v6), Twofish, Argon2 and GNU
S2K, ASCII armor (dearmor first), public-key-only messages, and anything
malformed, truncated, tampered with or followed by extra data. The
passphrase hashing all session key packets together may ask for is capped
(S2K_BUDGET, twice the costliest single real derivation), so a hostile
message costs about a second of CPU before its exit 4, not 16 packets' worth.

The passphrase is the first line of the key file, as `gpg --passphrase-file`
reads it: up to the first "\\n". gpg keeps a "\\r" before it; if the key
check fails with that "\\r", the line without it is tried too (a key file
written on Windows for a message made on Linux or the other way round).

How it is fast. OpenPGP's CFB mode (zero IV, no resync for SEIPD) decrypts as
    P_i = C_i xor E(C_{i-1})
which OpenSSL's CFB computes one block after the other (~0.5 GB/s). The same
thing as two pipelined passes (~3.4 GB/s together):
    X   = AES-ECB-encrypt(C)                          X_i = E(C_i)
    P   = AES-CBC-decrypt(X, IV = E(C_{-1}) = E(0))    P_i = D(X_i) xor X_{i-1}
                                                          = C_i xor E(C_{i-1})
A trailing partial block (the body length need not be a multiple of the
block size) is XORed by hand. The MDC's SHA-1 (hashlib, which releases the
GIL) runs in its own thread, reading and decrypting in another
(overlap.read_ahead), and inflating (zlib, also GIL-free) in the caller's.
Input is read in 64 KiB pieces into buffers that stay in cache (a third of
the kernel's copying cost of 1 MiB reads) and gathered, with the partial
body lengths (gpg writes 8 KiB pieces) cut out, into 1 MiB chunks; big
pieces (inflated or decrypted data) are passed along as views without copying. Buffers come from pools that reuse a
buffer only once no view of it is left anywhere (see _Pool), so a chunk the
consumer keeps is never overwritten and nothing is allocated per chunk.

Throughput is bounded by zlib's inflate for compressed messages (gpg's
default; about 0.3 GB/s per core for high-entropy data, gpg itself pays the
same) and by SHA-1 otherwise; in CPU seconds this costs about what gpg does,
and the gain in wall time comes from using a second core.

Release rule. Plaintext is released as it is decrypted, before the MDC at the
very end can be checked (the whole point of streaming); consumers only write
it to NAME.partial or a staging directory that are removed on failure. The
reader raises IntegrityError before its final chunk (so before EOF) when the
MDC does not verify, when anything follows the MDC or the encrypted packet,
or when the literal or compressed data is truncated or corrupt. When inner
data is malformed, the rest of the ciphertext is still decrypted to tell
tampering (MDC mismatch) apart from a well-formed but unsupported message.

Constant memory: chunks of 1 MiB, a few in flight; decompression is bounded
per call (max_length), so a compression bomb never inflates in memory
(limiting its size on disk is the unpack stage's job).
"""

from __future__ import annotations

import bz2
import collections
import hashlib
import hmac
import itertools
import queue
import threading
import zlib
from dataclasses import dataclass
from typing import BinaryIO, Callable, Iterable, Iterator

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from . import overlap
from .errors import IntegrityError, UsageError
from .streaming import ChunkReader

try:  # the 64-bit ciphers (and, in newer releases, Camellia) live in "decrepit"
    from cryptography.hazmat.decrepit.ciphers import algorithms as _old
except ImportError:  # pragma: no cover - older cryptography
    _old = algorithms  # type: ignore[assignment]

CHUNK = 1 << 20  # plaintext/ciphertext chunk size
READ = 1 << 16  # input read size: small reads into hot buffers cost a third of 1 MiB reads
DIRECT = 1 << 17  # pieces at least this big are passed on without copying
INFLATE_FEED = 1 << 18  # compressed input per decompress call
MAX_ESK_PACKET = 1 << 12
MAX_SKESKS = 16  # and all their passphrase hashing together within S2K_BUDGET
MAX_POOL = 64  # buffers per pool before falling back to plain allocation
MAX_NESTING = 8  # compressed packets inside compressed packets
MDC_LEN = 22  # 0xD3 0x14 + SHA-1
MDC_HEADER = b"\xd3\x14"

_EMPTY = memoryview(b"")


@dataclass(frozen=True)
class _Algo:
    name: str
    key_size: int
    block_size: int
    factory: Callable[[bytes], object]


_camellia = getattr(_old, "Camellia", None) or algorithms.Camellia


_CIPHERS: dict[int, _Algo] = {
    1: _Algo("IDEA", 16, 8, lambda k: _old.IDEA(k)),
    2: _Algo("3DES", 24, 8, lambda k: _old.TripleDES(k)),
    3: _Algo("CAST5", 16, 8, lambda k: _old.CAST5(k)),
    4: _Algo("Blowfish", 16, 8, lambda k: _old.Blowfish(k)),
    7: _Algo("AES128", 16, 16, algorithms.AES),
    8: _Algo("AES192", 24, 16, algorithms.AES),
    9: _Algo("AES256", 32, 16, algorithms.AES),
    11: _Algo("Camellia128", 16, 16, _camellia),
    12: _Algo("Camellia192", 24, 16, _camellia),
    13: _Algo("Camellia256", 32, 16, _camellia),
}
_UNSUPPORTED_CIPHERS = {0: "plaintext", 5: "SAFER-SK128", 6: "DES/SK", 10: "Twofish"}

_HASHES = {1: "md5", 2: "sha1", 3: "ripemd160", 8: "sha256", 9: "sha384", 10: "sha512", 11: "sha224",
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

_COMPRESSION = {0: "uncompressed", 1: "ZIP", 2: "ZLIB", 3: "BZip2"}

_TAGS = {1: "public-key encrypted session key", 2: "signature", 3: "symmetric-key encrypted session key",
         4: "one-pass signature", 5: "secret key", 6: "public key", 7: "secret subkey", 8: "compressed data",
         9: "symmetrically encrypted data", 10: "marker", 11: "literal data", 12: "trust", 13: "user ID",
         14: "public subkey", 17: "user attribute", 18: "encrypted and integrity protected data",
         19: "modification detection code", 20: "AEAD encrypted data", 21: "padding"}


def _tag_name(tag: int) -> str:
    return f"{_TAGS.get(tag, 'unknown')} packet (tag {tag})"


def _truncated(what: str) -> IntegrityError:
    return IntegrityError(f"truncated: the input ends inside {what}")


def _cipher(algo_id: int) -> _Algo:
    algo = _CIPHERS.get(algo_id)
    if algo is None:
        name = _UNSUPPORTED_CIPHERS.get(algo_id, f"algorithm {algo_id}")
        raise IntegrityError(f"unsupported cipher {name} (id {algo_id}): AES, Camellia, CAST5, Blowfish, "
                             "3DES and IDEA are supported")
    return algo


def _ecb(algo: _Algo, key: bytes):
    return Cipher(algo.factory(key), modes.ECB()).encryptor()  # type: ignore[arg-type]


def _xor(a: bytes, b: bytes) -> bytes:
    n = min(len(a), len(b))
    return (int.from_bytes(a[:n], "big") ^ int.from_bytes(b[:n], "big")).to_bytes(n, "big")


def _cfb_small(algo: _Algo, key: bytes, data: bytes, iv: bytes | None = None) -> bytes:
    """Plain CFB decryption of a few blocks (key checks, encrypted session keys)."""
    enc = _ecb(algo, key)
    bs = algo.block_size
    prev = iv if iv is not None else bytes(bs)
    out = bytearray()
    for i in range(0, len(data), bs):
        block = data[i:i + bs]
        out += _xor(block, enc.update(prev))
        prev = block
    return bytes(out)


# ---- buffers ---------------------------------------------------------------------

class _Pool:
    """Buffers of one size, reused once nothing refers to them any more.

    A bytearray with a live memoryview cannot be resized, so a trial resize
    tells whether any view of it (in a queue, a thread, the consumer's hands)
    is left: a buffer is only reused when none is, and the pool simply grows
    while the consumer holds on to chunks. Fresh 1 MiB allocations would cost
    more than decrypting (mmap and page faults for every chunk).
    """

    __slots__ = ("size", "_bufs")

    def __init__(self, size: int = CHUNK) -> None:
        self.size = size
        self._bufs: collections.deque[bytearray] = collections.deque()

    def get(self) -> bytearray:
        bufs = self._bufs
        for _ in range(len(bufs)):
            buf = bufs[0]
            bufs.rotate(-1)
            try:
                buf.append(0)
                buf.pop()
            except BufferError:  # still referenced
                continue
            return buf
        buf = bytearray(self.size)
        buf.append(0)  # leave spare capacity, so the trial resize never reallocates
        buf.pop()
        if len(bufs) < MAX_POOL:
            bufs.append(buf)
        return buf


# ---- byte-level parsing ------------------------------------------------------

class _Cursor:
    """Reads packet headers and bodies from an iterator of chunks.

    Chunks (bytes or views of buffers nobody writes to again) are never
    copied unless small pieces must be stitched together: `body()` yields
    views of them directly when they are big, and gathers small pieces
    (partial body lengths) into fresh 1 MiB buffers.
    """

    __slots__ = ("_it", "buf", "pos")

    def __init__(self, chunks: Iterable) -> None:
        self._it = iter(chunks)
        self.buf = _EMPTY
        self.pos = 0

    def _fill(self) -> bool:
        """Make at least one byte available; False at the end of the input."""
        while self.pos >= len(self.buf):
            nxt = next(self._it, None)
            if nxt is None:
                self.buf, self.pos = _EMPTY, 0
                return False
            self.buf, self.pos = memoryview(nxt), 0
        return True

    def at_end(self) -> bool:
        return not self._fill()

    def byte(self, what: str) -> int:
        if not self._fill():
            raise _truncated(what)
        b = self.buf[self.pos]
        self.pos += 1
        return b

    def take(self, n: int, what: str) -> bytes:
        out = bytearray()
        while len(out) < n:
            if not self._fill():
                raise _truncated(what)
            k = min(n - len(out), len(self.buf) - self.pos)
            out += self.buf[self.pos:self.pos + k]
            self.pos += k
        return bytes(out)

    def length(self, what: str) -> tuple[int, bool]:
        """A new-format body length: (length, partial)."""
        b = self.byte(what)
        if b < 192:
            return b, False
        if b < 224:
            return ((b - 192) << 8) + self.byte(what) + 192, False
        if b == 255:
            return int.from_bytes(self.take(4, what), "big"), False
        return 1 << (b & 0x1F), True

    def header(self, what: str = "a packet header") -> tuple[int, int, bool, bool] | None:
        """(tag, length, partial, indeterminate) of the next packet, None at the end."""
        if not self._fill():
            return None
        ctb = self.byte(what)
        if not ctb & 0x80:
            raise IntegrityError(f"malformed packet header 0x{ctb:02x} in {what.removeprefix('a ')}")
        if ctb & 0x40:  # new format
            n, partial = self.length(what)
            return ctb & 0x3F, n, partial, False
        tag, kind = (ctb >> 2) & 0x0F, ctb & 3
        if kind == 3:
            return tag, 0, False, True
        return tag, int.from_bytes(self.take(1 << kind, what), "big"), False, False

    def rest(self) -> Iterator[memoryview]:
        """Everything that is left, as it comes."""
        while self._fill():
            piece = self.buf[self.pos:]
            self.pos = len(self.buf)
            yield piece

    def body(self, n: int, partial: bool, indeterminate: bool, what: str) -> Iterator[memoryview]:
        """A packet's body: big pieces as views, small ones gathered into 1 MiB chunks."""
        pool = _Pool()
        out: bytearray | None = None
        fill = 0
        buf, pos = self.buf, self.pos
        try:
            while True:
                avail = len(buf) - pos
                if indeterminate:
                    if not avail:
                        self.pos = pos
                        if not self._fill():
                            break
                        buf, pos = self.buf, self.pos
                        continue
                    take = avail
                elif n:
                    if not avail:
                        self.pos = pos
                        if not self._fill():
                            raise _truncated(what)
                        buf, pos = self.buf, self.pos
                        continue
                    take = n if n < avail else avail
                    n -= take
                elif partial:
                    b = buf[pos] if avail else 0
                    if 224 <= b < 255:
                        # Another partial length (gpg writes 8 KiB pieces): gather every
                        # whole piece of this buffer in a tight loop.
                        pos += 1
                        n = 1 << (b & 0x1F)
                        end = len(buf)
                        if out is None and n < DIRECT:
                            out, fill = pool.get(), 0
                        while out is not None:
                            stop = pos + n
                            if stop >= end or fill + n > CHUNK:
                                break
                            out[fill:fill + n] = buf[pos:stop]
                            fill += n
                            b = buf[stop]
                            if b < 224 or b == 255:
                                pos, n = stop, 0
                                break
                            pos, n = stop + 1, 1 << (b & 0x1F)
                        continue
                    self.pos = pos
                    n, partial = self.length(what)
                    buf, pos = self.buf, self.pos
                    continue
                else:
                    break
                piece = buf[pos:pos + take]
                pos += take
                if out is None:
                    if take >= DIRECT:
                        yield piece
                        continue
                    out, fill = pool.get(), 0
                room = CHUNK - fill
                if take < room:
                    out[fill:fill + take] = piece
                    fill += take
                    continue
                out[fill:CHUNK] = piece[:room]
                full, out, fill = out, None, 0
                yield memoryview(full)[:CHUNK]
                left = piece[room:]
                if len(left) >= DIRECT:
                    yield left
                elif left:
                    out, fill = pool.get(), len(left)
                    out[:fill] = left
            if out is not None and fill:
                yield memoryview(out)[:fill]
        finally:
            self.pos = pos


def _read_chunks(src: BinaryIO) -> Iterator[memoryview]:
    """The raw input in pieces of READ bytes (full reads, short only at EOF)."""
    pool = _Pool(READ)
    while True:
        view = memoryview(pool.get())
        got = 0
        while got < READ:
            n = src.readinto(view[got:READ])
            if not n:
                break
            got += n
        if not got:
            return
        yield view[:got]


# ---- key derivation ------------------------------------------------------------

@dataclass(frozen=True)
class _S2K:
    kind: int
    hash_id: int
    salt: bytes = b""
    count: int = 0

    @property
    def description(self) -> str:
        names = {0: "simple", 1: "salted", 3: "iterated+salted"}
        return f"{names[self.kind]} {_HASHES[self.hash_id].upper()}"

    def hashed(self, passphrase_len: int) -> int:
        """Bytes one hash context takes in for a passphrase of this length."""
        data = len(self.salt) + passphrase_len
        return max(self.count, data) if self.kind == 3 else data

    def cost(self, passphrase_len: int, key_size: int) -> int:
        """The work of one derivation in SHA-256-equivalent bytes (see S2K_BUDGET)."""
        name = _HASHES[self.hash_id]
        contexts = -(-key_size // _DIGEST_SIZES[name])
        return self.hashed(passphrase_len) * contexts * _HASH_COST[name]

    def derive(self, passphrase: bytes, key_size: int) -> bytes:
        try:
            first = hashlib.new(_HASHES[self.hash_id])
        except ValueError:
            raise IntegrityError(f"unsupported S2K hash {_HASHES[self.hash_id]} in this build") from None
        data = self.salt + passphrase
        total = self.hashed(len(passphrase))
        contexts = [first] + [hashlib.new(first.name) for _ in range(1, -(-key_size // first.digest_size))]
        unit = data * max(1, CHUNK // max(1, len(data)))  # whole repetitions, so every unit starts aligned
        full, rem = divmod(total, len(unit)) if data else (0, 0)
        for i, h in enumerate(contexts):
            h.update(bytes(i))  # the i-th context is preloaded with i zero bytes
            for _ in range(full):
                h.update(unit)
            h.update(unit[:rem])
        return b"".join(h.digest() for h in contexts)[:key_size]


class _S2KWork:
    """The passphrase hashing one message may ask for: at most S2K_BUDGET in all.

    Charged before each derivation, so a hostile message costs at most the
    budget (and a clear exit 4), whatever its number of session key packets;
    a derivation asked for twice (the same S2K, key size and passphrase) is
    done once.
    """

    def __init__(self, budget: int | None = None) -> None:
        self.left = S2K_BUDGET if budget is None else budget
        self._done: dict[tuple[_S2K, bytes, int], bytes] = {}

    def derive(self, s2k: _S2K, passphrase: bytes, key_size: int) -> bytes:
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


def _parse_s2k(data: bytes) -> tuple[_S2K, int]:
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
    if hash_id not in _HASHES:
        raise IntegrityError(f"unsupported S2K hash algorithm {hash_id}")
    if kind == 0:
        return _S2K(0, hash_id), need
    salt = bytes(data[2:10])
    if kind == 1:
        return _S2K(1, hash_id, salt), need
    c = data[10]
    return _S2K(3, hash_id, salt, (16 + (c & 15)) << ((c >> 4) + 6)), need


@dataclass(frozen=True)
class _SKESK:
    algo_id: int
    s2k: _S2K
    esk: bytes

    def session_key(self, passphrase: bytes, work: _S2KWork) -> tuple[_Algo, bytes] | None:
        """The session key this passphrase gives, or None when it cannot be right."""
        algo = _cipher(self.algo_id)
        key = work.derive(self.s2k, passphrase, algo.key_size)
        if not self.esk:
            return algo, key
        plain = _cfb_small(algo, key, self.esk)
        inner = _CIPHERS.get(plain[0])
        if inner is None or len(plain) - 1 != inner.key_size:
            return None  # a wrong passphrase decrypts to garbage
        return inner, plain[1:]


def _parse_skesk(data: bytes) -> _SKESK:
    if len(data) < 2:
        raise IntegrityError("malformed symmetric-key encrypted session key packet")
    if data[0] in (5, 6):
        raise IntegrityError(f"unsupported: version {data[0]} symmetric-key encrypted session key (AEAD)")
    if data[0] != 4:
        raise IntegrityError(f"unsupported symmetric-key encrypted session key version {data[0]}")
    _cipher(data[1])
    s2k, used = _parse_s2k(data[2:])
    esk = bytes(data[2 + used:])
    if s2k.kind == 0 and esk:
        raise IntegrityError("malformed symmetric-key encrypted session key packet: simple S2K with an encrypted key")
    return _SKESK(data[1], s2k, esk)


def _passphrases(raw: bytes) -> list[bytes]:
    """The first line of the key file, as gpg --passphrase-file reads it (see module doc)."""
    line = bytes(raw).split(b"\n", 1)[0]
    if not line.rstrip(b"\r"):
        raise UsageError("the passphrase is empty (gpg reads the first line of the passphrase file)")
    return [line, line[:-1]] if line.endswith(b"\r") else [line]


# ---- the decryption pipeline --------------------------------------------------------

def _decrypt(chunks: Iterable[memoryview], algo: _Algo, key: bytes) -> Iterator[memoryview]:
    """OpenPGP CFB (zero IV, no resync) as ECB + CBC; see the module doc."""
    bs = algo.block_size
    ecb = _ecb(algo, key)
    cbc = Cipher(algo.factory(key), modes.CBC(_ecb(algo, key).update(bytes(bs)))).decryptor()  # type: ignore[arg-type]
    pool = _Pool(CHUNK + 2 * bs)
    x = bytearray(CHUNK + 2 * bs)
    total = 0
    tail = b""  # the last 2 blocks of ciphertext, for a final partial block
    for chunk in chunks:
        n = len(chunk)
        if not n:
            continue
        if n + 2 * bs > len(x):
            x = bytearray(n + 2 * bs)
        k = ecb.update_into(chunk, x)
        total += n
        tail = (tail + bytes(chunk[-2 * bs:]))[-2 * bs:]
        if k:
            out = pool.get() if k + bs <= pool.size else bytearray(k + bs)
            cbc.update_into(memoryview(x)[:k], out)
            yield memoryview(out)[:k]
    rem = total % bs
    if rem:
        prev = tail[-rem - bs:-rem] if total > bs else bytes(bs)
        yield memoryview(_xor(tail[-rem:], _ecb(algo, key).update(prev)))


class _Hasher:
    """SHA-1 in a thread: hashlib releases the GIL while it hashes."""

    def __init__(self, depth: int = 4) -> None:
        self._h = hashlib.sha1()
        self._q: queue.Queue = queue.Queue(maxsize=depth)
        self._t = threading.Thread(target=self._run, name="modelseal-mdc", daemon=True)
        self._t.start()

    def _run(self) -> None:
        while (item := self._q.get()) is not None:
            self._h.update(item)

    def update(self, data) -> None:
        self._q.put(data)

    def digest(self) -> bytes:
        self.close()
        return self._h.digest()

    def close(self) -> None:
        if self._t.is_alive():
            self._q.put(None)
            self._t.join()


def _decompress(algo: int, pieces: Iterator[memoryview]) -> Iterator[bytes | memoryview]:
    """Decompressed output in bounded pieces; the stream must end exactly with its input."""
    if algo == 0:
        yield from pieces
        return
    name = _COMPRESSION.get(algo)
    if name is None:
        raise IntegrityError(f"unsupported compression algorithm {algo}")
    trailing = IntegrityError(f"unexpected data after the end of the {name} compressed stream")
    truncated = IntegrityError(f"truncated: the {name} compressed data ends early")

    def corrupt(exc: Exception) -> IntegrityError:
        return IntegrityError(f"corrupt {name} compressed data ({type(exc).__name__}: {exc})")

    if algo == 3:
        bz = bz2.BZ2Decompressor()
        for piece in pieces:
            if not piece:
                continue
            if bz.eof:
                raise trailing
            data = piece
            while True:
                try:
                    out = bz.decompress(data, CHUNK)
                except (OSError, EOFError, ValueError) as exc:
                    raise corrupt(exc) from None
                if out:
                    yield out
                if bz.eof or bz.needs_input:
                    break
                data = b""
        if not bz.eof:
            raise truncated
        if bz.unused_data:
            raise trailing
        return
    z = zlib.decompressobj(-15 if algo == 1 else 15)
    for piece in pieces:
        for i in range(0, len(piece), INFLATE_FEED):
            if z.eof:
                raise trailing
            data = piece[i:i + INFLATE_FEED]
            while True:
                try:
                    out = z.decompress(data, CHUNK)
                except zlib.error as exc:
                    raise corrupt(exc) from None
                if out:
                    yield out
                data = z.unconsumed_tail
                if z.eof or (not data and len(out) < CHUNK):
                    break
            if z.unused_data:
                raise trailing
    if not z.eof:
        raise truncated


class DecryptingReader(ChunkReader):
    """Plaintext of a symmetric OpenPGP message (`gpg -c` output), as a stream.

    Same interface as `modelseal.streaming.DecryptingReader`. `segments()`
    yields chunks (about 1 MiB); a chunk's buffer is reused only once no view
    of it is left, so it stays valid for as long as the consumer keeps it
    (more than the `ring` contract asks). With `read_ahead` > 0 the input is
    read and decrypted in a thread, up to `read_ahead` + 2 chunks ahead of the
    caller's thread, which inflates; SHA-1 always runs in a thread of its own.
    """

    def __init__(self, src: BinaryIO, passphrase: bytes) -> None:
        super().__init__()
        self._src = src
        self._passphrases = _passphrases(passphrase)
        self.plaintext_bytes = 0
        # What the message turned out to be (for logs; never the passphrase or data).
        self.cipher: str | None = None
        self.s2k: str | None = None
        self.compression: str | None = None
        self.literal_format: str | None = None
        self.literal_name: bytes | None = None  # the file name gpg recorded (may be private: not logged here)
        self.literal_time: int | None = None
        self.ignored_signatures = 0
        self._mdc_ok = False
        self._literals = 0
        self._started = False

    # -- outer layer: session key packets, then the encrypted packet ----------------

    def _open(self, cur: _Cursor) -> tuple[Iterator[memoryview], _Algo, bytes]:
        """Parse up to the encrypted packet; return its body, cipher and session key."""
        skesks: list[_SKESK] = []
        public_key = False
        first = True
        while True:
            if first and cur.at_end():
                raise IntegrityError("empty input: not an OpenPGP message")
            if first and not cur.buf[cur.pos] & 0x80:
                head = bytes(cur.buf[cur.pos:cur.pos + 16])
                if head.startswith(b"-----BEGIN PGP"):
                    raise IntegrityError("ASCII-armored input is not supported: convert it with `gpg --dearmor` first")
                raise IntegrityError("not an OpenPGP message (no packet header at the start)")
            first = False
            hdr = cur.header()
            if hdr is None:
                raise IntegrityError("truncated: no encrypted data packet after the session key packets")
            tag, n, partial, indeterminate = hdr
            if tag == 3:
                if partial or indeterminate or n > MAX_ESK_PACKET:
                    raise IntegrityError("malformed symmetric-key encrypted session key packet length")
                skesks.append(_parse_skesk(cur.take(n, "a session key packet")))
                if len(skesks) > MAX_SKESKS:
                    raise IntegrityError(f"more than {MAX_SKESKS} symmetric-key encrypted session key packets")
            elif tag in (1, 10, 21):  # a key for someone else, a marker, padding
                public_key |= tag == 1
                for _ in cur.body(n, partial, indeterminate, f"a {_tag_name(tag)}"):
                    pass
            elif tag == 18:
                break
            elif tag == 9:
                raise IntegrityError("no integrity protection: symmetrically encrypted data without MDC (tag 9) "
                                     "is refused (re-encrypt with a current gpg)")
            elif tag == 20:
                raise IntegrityError("unsupported: AEAD encrypted data packet (tag 20, gpg --force-aead)")
            elif tag in (2, 4, 8, 11):
                raise IntegrityError(f"not an encrypted message: it starts with a {_tag_name(tag)}")
            else:
                raise IntegrityError(f"unexpected {_tag_name(tag)} before the encrypted data")
        if not skesks:
            if public_key:
                raise IntegrityError("public-key encrypted message: only passphrase-encrypted (gpg -c) messages "
                                     "are supported")
            raise IntegrityError("no symmetric-key encrypted session key packet before the encrypted data")
        what = "the encrypted data packet"
        body = _Cursor(cur.body(n, partial, indeterminate, what))
        version = body.byte(what)
        if version == 2:
            raise IntegrityError("unsupported: version 2 encrypted data packet (AEAD, RFC 9580)")
        if version != 1:
            raise IntegrityError(f"unsupported encrypted data packet version {version}")
        head = body.take(18, what)  # the random prefix of the largest block size
        work = _S2KWork()
        for skesk in skesks:
            for passphrase in self._passphrases:
                session = skesk.session_key(passphrase, work)
                if session is None:
                    continue
                algo, key = session
                bs = algo.block_size
                prefix = _cfb_small(algo, key, head[:bs + 2])
                if prefix[bs - 2:bs] == prefix[bs:bs + 2]:  # the "quick check"
                    self.cipher, self.s2k = algo.name, skesk.s2k.description
                    return itertools.chain([memoryview(head)], body.rest()), algo, key
        raise IntegrityError("wrong passphrase or corrupt message (the session key check failed)")

    # -- middle layer: decrypt, hold back and check the MDC ------------------------------

    def _plain(self, ciphertext: Iterator[memoryview], algo: _Algo, key: bytes,
               at_end: Callable[[], None]) -> Iterator[memoryview]:
        """The packets inside the encrypted one, with the MDC checked before the last piece."""
        hasher = _Hasher()
        skip = algo.block_size + 2  # the random prefix: hashed, not passed on
        try:
            pending: memoryview | None = None

            def release(view: memoryview) -> memoryview:
                nonlocal skip
                hasher.update(view)
                if skip:
                    cut = min(skip, len(view))
                    skip -= cut
                    view = view[cut:]
                return view

            for chunk in _decrypt(ciphertext, algo, key):
                if pending is not None and len(chunk) < MDC_LEN:
                    pending = memoryview(bytes(pending) + chunk)  # only at the very end
                    continue
                if pending is not None:
                    out = release(pending)
                    if out:
                        yield out
                pending = memoryview(chunk)
            if pending is None or len(pending) < MDC_LEN or skip > len(pending) - MDC_LEN:
                raise IntegrityError("truncated: the encrypted data is too short to hold a message and its MDC")
            last, mdc = pending[:-MDC_LEN], bytes(pending[-MDC_LEN:])
            out = release(last)
            hasher.update(mdc[:2])
            digest = hasher.digest()
            if mdc[:2] != MDC_HEADER:
                raise IntegrityError("integrity check failed: no MDC packet at the end of the encrypted data "
                                     "(tampered, truncated or wrong passphrase)")
            if not hmac.compare_digest(digest, mdc[2:]):
                raise IntegrityError("integrity check failed: the MDC does not match "
                                     "(the message was modified or truncated)")
            self._mdc_ok = True
            at_end()
            if out:
                yield out
        finally:
            hasher.close()

    # -- inner layer: compressed and literal packets ------------------------------------

    def _packets(self, cur: _Cursor, depth: int) -> Iterator[memoryview | bytes]:
        while True:
            hdr = cur.header("a packet header inside the encrypted data")
            if hdr is None:
                return
            tag, n, partial, indeterminate = hdr
            what = f"the {_tag_name(tag)}"
            if tag == 8:
                if depth >= MAX_NESTING:
                    raise IntegrityError("compressed data nested too deeply")
                body = _Cursor(cur.body(n, partial, indeterminate, what))
                algo = body.byte(what)
                self.compression = self.compression or _COMPRESSION.get(algo)
                yield from self._packets(_Cursor(_decompress(algo, body.rest())), depth + 1)
            elif tag == 11:
                self._literals += 1
                if self._literals > 1:
                    raise IntegrityError("more than one literal data packet in the message")
                body = _Cursor(cur.body(n, partial, indeterminate, what))
                fmt = body.byte(what)
                name = body.take(body.byte(what), what)
                stamp = int.from_bytes(body.take(4, what), "big")
                self.literal_format, self.literal_name, self.literal_time = chr(fmt), name, stamp
                text = fmt in b"tum"  # gpg -d drops every CR of text-mode data on Unix; so do we
                for piece in body.rest():
                    yield bytes(piece).replace(b"\r", b"") if text else piece
            elif tag in (2, 4, 10, 21):  # signatures (unverifiable here), marker, padding
                self.ignored_signatures += tag in (2, 4)
                for _ in cur.body(n, partial, indeterminate, what):
                    pass
            elif tag == 19:
                raise IntegrityError("malformed message: an MDC packet inside the encrypted data")
            else:
                raise IntegrityError(f"unexpected {_tag_name(tag)} inside the encrypted data")

    # -- the public interface -----------------------------------------------------------------

    def segments(self, ring: int = 1, read_ahead: int = 2) -> Iterator[memoryview]:
        """Yield the plaintext in chunks of about 1 MiB.

        Each chunk is yielded only once the next one exists, and the last only
        after every check (MDC, nothing after it, complete literal and
        compressed data), so a consumer reading to the end always meets an
        IntegrityError before EOF. `ring` is accepted for interface
        compatibility: views stay valid anyway.
        """
        if self._started:
            raise UsageError("an OpenPGP reader can be read only once")
        self._started = True
        outer = _Cursor(_read_chunks(self._src))
        ciphertext, algo, key = self._open(outer)

        def at_end() -> None:
            if not outer.at_end():
                raise IntegrityError("unexpected data after the encrypted data packet")

        plain: Iterator[memoryview] = self._plain(ciphertext, algo, key, at_end)
        if read_ahead > 0:
            # Decrypting (and hashing, in its own thread) runs ahead of inflating,
            # which is the slowest step of a compressed message and releases the GIL.
            plain = overlap.read_ahead(plain, read_ahead + 2)
        held: memoryview | None = None
        try:
            try:
                for piece in self._packets(_Cursor(plain), 0):
                    if not piece:
                        continue
                    if held is not None:
                        self.plaintext_bytes += len(held)
                        yield held
                    held = memoryview(piece)
            except IntegrityError as inner:
                if not self._mdc_ok:
                    # Tell tampering apart from a malformed message: finish the MDC.
                    for _ in plain:
                        pass
                raise inner from None
            for _ in plain:  # pragma: no cover - the inner packets end only where the encrypted data does
                raise IntegrityError("unexpected data after the literal data inside the encrypted data")
            if not self._mdc_ok:  # pragma: no cover - _plain always checks before it ends
                raise IntegrityError("integrity check failed: the MDC was not checked")
            if not self._literals:
                raise IntegrityError("no literal data packet in the message")
            if held is not None:
                self.plaintext_bytes += len(held)
                yield held
        finally:
            # Stops the decrypting thread (and through it the reading one) when the
            # consumer gives up early; a no-op after a complete read.
            plain.close()  # type: ignore[attr-defined]

