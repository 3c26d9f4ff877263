"""The reader: a `gpg -c` message's plaintext as a stream, every layer checked.

Three layers, each a generator over the one outside it: the outer packets
(session keys, then the encrypted packet), the decrypted body with its MDC
(mdc.checked), and the inner packets (compressed, literal, skipped
signatures). Decrypting (with SHA-1 in its own thread) runs in a thread
ahead of inflating; the layout and the measurements are in docs/OPENPGP.md.
"""

from __future__ import annotations

import itertools
from typing import Generator, Iterator

from .. import overlap
from ..errors import IntegrityError, UsageError
from ..streaming import ChunkReader, Readable
from . import cfb, mdc
from .buffers import read_chunks
from .ciphers import Algo
from .inflate import NAMES as COMPRESSION
from .inflate import decompress
from .packets import Cursor, tag_name
from .session_keys import SKESK, passphrases, unlock
from .session_keys import parse as parse_skesk

MAX_ESK_PACKET = 1 << 12
MAX_SKESKS = 16  # and all their passphrase hashing together within s2k.S2K_BUDGET
MAX_NESTING = 8  # compressed packets inside compressed packets


class DecryptingReader(ChunkReader):
    """Plaintext of a symmetric OpenPGP message (`gpg -c` output), as a stream.

    Same interface as `modelseal.streaming.DecryptingReader`. `segments()`
    yields chunks (about 1 MiB); a chunk's buffer is reused only once no view
    of it is left, so it stays valid for as long as the consumer keeps it
    (more than the `ring` contract asks). With `read_ahead` > 0 the input is
    read and decrypted in a thread, up to `read_ahead` + 2 chunks ahead of the
    caller's thread, which inflates; SHA-1 always runs in a thread of its own.
    Everything wrong with the message raises IntegrityError (exit 4) before
    the last chunk; an empty passphrase raises UsageError (exit 2).
    """

    def __init__(self, src: Readable, passphrase: bytes) -> None:
        super().__init__()
        self._src = src
        self._passphrases = passphrases(passphrase)
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

    def _open(self, cur: Cursor) -> tuple[Iterator[memoryview], Algo, bytes]:
        """Parse up to the encrypted packet; return its body, cipher and session key."""
        skesks: list[SKESK] = []
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
                skesks.append(parse_skesk(cur.take(n, "a session key packet")))
                if len(skesks) > MAX_SKESKS:
                    raise IntegrityError(f"more than {MAX_SKESKS} symmetric-key encrypted session key packets")
            elif tag in (1, 10, 21):  # a key for someone else, a marker, padding
                public_key |= tag == 1
                for _ in cur.body(n, partial, indeterminate, f"a {tag_name(tag)}"):
                    pass
            elif tag == 18:
                break
            elif tag == 9:
                raise IntegrityError("no integrity protection: symmetrically encrypted data without MDC (tag 9) "
                                     "is refused (re-encrypt with a current gpg)")
            elif tag == 20:
                raise IntegrityError("unsupported: AEAD encrypted data packet (tag 20, gpg --force-aead)")
            elif tag in (2, 4, 8, 11):
                raise IntegrityError(f"not an encrypted message: it starts with a {tag_name(tag)}")
            else:
                raise IntegrityError(f"unexpected {tag_name(tag)} before the encrypted data")
        if not skesks:
            if public_key:
                raise IntegrityError("public-key encrypted message: only passphrase-encrypted (gpg -c) messages "
                                     "are supported")
            raise IntegrityError("no symmetric-key encrypted session key packet before the encrypted data")
        what = "the encrypted data packet"
        body = Cursor(cur.body(n, partial, indeterminate, what))
        version = body.byte(what)
        if version == 2:
            raise IntegrityError("unsupported: version 2 encrypted data packet (AEAD, RFC 9580)")
        if version != 1:
            raise IntegrityError(f"unsupported encrypted data packet version {version}")
        head = body.take(18, what)  # the random prefix of the largest block size
        skesk, algo, key = unlock(skesks, self._passphrases, head)
        self.cipher, self.s2k = algo.name, skesk.s2k.description
        return itertools.chain([memoryview(head)], body.rest()), algo, key

    # -- inner layer: compressed and literal packets ------------------------------------

    def _packets(self, cur: Cursor, depth: int) -> Iterator[memoryview | bytes]:
        while True:
            hdr = cur.header("a packet header inside the encrypted data")
            if hdr is None:
                return
            tag, n, partial, indeterminate = hdr
            what = f"the {tag_name(tag)}"
            if tag == 8:
                if depth >= MAX_NESTING:
                    raise IntegrityError("compressed data nested too deeply")
                body = Cursor(cur.body(n, partial, indeterminate, what))
                algo = body.byte(what)
                self.compression = self.compression or COMPRESSION.get(algo)
                yield from self._packets(Cursor(decompress(algo, body.rest())), depth + 1)
            elif tag == 11:
                self._literals += 1
                if self._literals > 1:
                    raise IntegrityError("more than one literal data packet in the message")
                body = Cursor(cur.body(n, partial, indeterminate, what))
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
                raise IntegrityError(f"unexpected {tag_name(tag)} inside the encrypted data")

    # -- the public interface -----------------------------------------------------------------

    def segments(self, ring: int = 1, read_ahead: int = 2) -> Generator[memoryview, None, None]:
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
        outer = Cursor(read_chunks(self._src))
        ciphertext, algo, key = self._open(outer)

        def verified() -> None:
            self._mdc_ok = True
            if not outer.at_end():
                raise IntegrityError("unexpected data after the encrypted data packet")

        plain: Generator[memoryview, None, None] = mdc.checked(cfb.decrypt(ciphertext, algo, key), algo.block_size + 2,
                                                               verified)
        if read_ahead > 0:
            # Decrypting (and hashing, in its own thread) runs ahead of inflating,
            # which is the slowest step of a compressed message and releases the GIL.
            plain = overlap.read_ahead(plain, read_ahead + 2)
        held: memoryview | None = None
        try:
            try:
                for piece in self._packets(Cursor(plain), 0):
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
            if not self._mdc_ok:  # pragma: no cover - mdc.checked always checks before it ends
                raise IntegrityError("integrity check failed: the MDC was not checked")
            if not self._literals:
                raise IntegrityError("no literal data packet in the message")
            if held is not None:
                self.plaintext_bytes += len(held)
                yield held
        finally:
            # Stops the decrypting thread (and through it the reading one) when the
            # consumer gives up early; a no-op after a complete read.
            plain.close()
