"""The OpenPGP (`gpg -c`) decryptor against real gpg output, tampered copies and crafted packets.

gpg runs with a throwaway GNUPGHOME on tmpfs; plaintexts live on tmpfs too.
Hand-built messages cover what gpg cannot be made to write (a valid MDC around
malformed contents, encrypted session keys without a public key, AEAD).
"""

from __future__ import annotations

import bz2
import gc
import hashlib
import io
import os
import random
import re
import shutil
import struct
import subprocess
import sys
import threading
import time
import uuid
import zlib
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

try:
    from cryptography.hazmat.decrepit.ciphers.modes import CFB
except ImportError:  # pragma: no cover
    from cryptography.hazmat.primitives.ciphers.modes import CFB

from modelseal import openpgp
from modelseal.errors import IntegrityError, UsageError

from conftest import SHM, modelseal

GPG = shutil.which("gpg")
pytestmark = pytest.mark.skipif(GPG is None, reason="gpg is not installed")

PASSPHRASE = b"correct horse battery staple"
MiB = 1 << 20


# ---- helpers -------------------------------------------------------------------

class Gpg:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.passfile = home / "passphrase"
        self.passfile.write_bytes(PASSPHRASE + b"\n")

    def argv(self, *args: str, passfile: Path | None = None) -> list[str]:
        return [GPG, "--homedir", str(self.home), "--batch", "--yes", "--quiet", "--pinentry-mode", "loopback",
                "--passphrase-file", str(passfile or self.passfile), *args]

    def encrypt(self, plain: Path, out: Path, *opts: str, stdin: bool = False, passfile: Path | None = None) -> Path:
        if stdin:  # gpg does not know the size: partial body lengths everywhere
            with open(plain, "rb") as f:
                data = subprocess.run(self.argv(*opts, "-c", passfile=passfile), stdin=f, check=True,
                                      capture_output=True).stdout
            out.write_bytes(data)
        else:
            subprocess.run(self.argv(*opts, "-c", "-o", str(out), str(plain), passfile=passfile), check=True,
                           capture_output=True)
        return out

    def packets(self, path: Path) -> str:
        proc = subprocess.run(self.argv("--list-packets", str(path)), capture_output=True, text=True)
        assert proc.stdout, f"gpg --list-packets printed nothing: {proc.stderr[-300:]}"
        return proc.stdout

    def decrypt(self, path: Path) -> bytes:
        return subprocess.run(self.argv("-d", str(path)), check=True, capture_output=True).stdout


@pytest.fixture(scope="module")
def workdir() -> Path:
    path = SHM / f"modelseal-openpgp-{uuid.uuid4().hex[:12]}"
    path.mkdir(mode=0o700)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def gpg(workdir: Path) -> Gpg:
    home = workdir / "gnupg"
    home.mkdir(mode=0o700)
    yield Gpg(home)
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], capture_output=True)


def plaintext(workdir: Path, size: int, kind: str = "random") -> Path:
    path = workdir / f"plain-{kind}-{size}"
    if not path.exists():
        if kind == "random":
            data = os.urandom(size)
        elif kind == "zeros":
            data = bytes(size)
        else:  # compressible but not trivially so
            words = [b"weights", b"layer", b"tensor", b"bias", b"\x00\x01\x02", b"\n"]
            rnd = os.urandom(size)
            data = b"".join(words[b % len(words)] for b in rnd)[:size]
        path.write_bytes(data)
    return path


def decrypt(data: bytes | Path, passphrase: bytes = PASSPHRASE + b"\n", read_ahead: int = 2) -> bytes:
    src = open(data, "rb") if isinstance(data, Path) else io.BytesIO(data)
    with src:
        reader = openpgp.DecryptingReader(src, passphrase)
        out = bytearray()
        for chunk in reader.segments(ring=2, read_ahead=read_ahead):
            assert 0 < len(chunk) <= 2 * MiB
            out += chunk
        assert reader.plaintext_bytes == len(out)
        return bytes(out)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---- real gpg output ------------------------------------------------------------

@pytest.mark.parametrize("size", [0, 1, 100 * 1024, 3 * MiB + 5, 9 * MiB + 17])
def test_default_settings_sizes(gpg: Gpg, workdir: Path, size: int) -> None:
    plain = plaintext(workdir, size)
    enc = gpg.encrypt(plain, workdir / f"default-{size}.gpg")
    listing = gpg.packets(enc)
    assert "symkey enc packet: version 4, cipher 9" in listing, listing
    assert "mdc_method: 2" in listing, listing
    assert sha(decrypt(enc)) == sha(plain.read_bytes())
    if size > 8 * MiB and "compressed packet" in listing:  # gpg now and then skips compressing random data
        assert "partial" in listing  # the encrypted packet's body comes in partial lengths


@pytest.mark.parametrize(
    "opts",
    [
        ("--compress-algo", "none"),
        ("--compress-algo", "zip"),
        ("--compress-algo", "zlib"),
        ("--compress-algo", "bzip2"),
        ("--cipher-algo", "AES128"),
        ("--cipher-algo", "AES192"),
        ("--cipher-algo", "CAMELLIA256"),
        ("--cipher-algo", "CAST5"),
        ("--cipher-algo", "BLOWFISH"),
        ("--cipher-algo", "3DES", "--force-mdc"),
        ("--s2k-mode", "3", "--s2k-digest-algo", "SHA512"),
        ("--s2k-mode", "3", "--s2k-digest-algo", "SHA224", "--s2k-count", "1024"),
        ("--s2k-mode", "1", "--s2k-digest-algo", "SHA256"),
        ("--s2k-mode", "1", "--s2k-digest-algo", "SHA384", "--cipher-algo", "AES128"),
        ("--s2k-mode", "3", "--s2k-digest-algo", "RIPEMD160"),
        ("--s2k-mode", "3", "--s2k-digest-algo", "MD5"),
        ("--compress-level", "9", "--compress-algo", "zlib"),
    ],
    ids=lambda o: " ".join(o),
)
@pytest.mark.parametrize("kind", ["random", "text"])
def test_gpg_options(gpg: Gpg, workdir: Path, opts: tuple[str, ...], kind: str) -> None:
    plain = plaintext(workdir, 2 * MiB + 3, kind)
    enc = workdir / f"opts-{uuid.uuid4().hex[:8]}.gpg"
    try:
        gpg.encrypt(plain, enc, *opts)
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"this gpg cannot {' '.join(opts)}: {exc.stderr.decode(errors='replace')[-200:]}")
    assert sha(decrypt(enc)) == sha(plain.read_bytes())


def test_simple_s2k(gpg: Gpg, workdir: Path) -> None:
    plain = plaintext(workdir, 1000)
    enc = workdir / "s2k0.gpg"
    try:
        gpg.encrypt(plain, enc, "--s2k-mode", "0", "--s2k-digest-algo", "SHA256")
    except subprocess.CalledProcessError:
        pytest.skip("this gpg refuses simple S2K")
    assert decrypt(enc) == plain.read_bytes()


@pytest.mark.parametrize("size", [0, 1, 200 * 1024, 5 * MiB + 1])
@pytest.mark.parametrize("compress", ["default", "none", "bzip2"])
def test_stdin_partial_lengths(gpg: Gpg, workdir: Path, size: int, compress: str) -> None:
    """`gpg -c < file` does not know the size: partial lengths for the literal packet too."""
    plain = plaintext(workdir, size, "text")
    opts = () if compress == "default" else ("--compress-algo", compress)
    enc = gpg.encrypt(plain, workdir / f"stdin-{compress}-{size}.gpg", *opts, stdin=True)
    listing = gpg.packets(enc)
    if size > 64 * 1024:  # gpg buffers small inputs whole and then knows their size
        assert "raw data: unknown length" in listing and re.search(r"tag=11 .*partial", listing)
    assert decrypt(enc) == plain.read_bytes()
    assert decrypt(enc, read_ahead=0) == plain.read_bytes()


def test_textmode_matches_gpg(gpg: Gpg, workdir: Path) -> None:
    """gpg -d drops the CRs of text-mode data on Unix; so do we (byte-exact with gpg -d)."""
    plain = workdir / "text-crlf.txt"
    plain.write_bytes(b"line 1\nline 2\r\nlone\rcarriage\n" * 1000)
    enc = gpg.encrypt(plain, workdir / "text.gpg", "--textmode")
    assert "mode t" in gpg.packets(enc)
    assert decrypt(enc) == gpg.decrypt(enc)


def test_readinto_interface(gpg: Gpg, workdir: Path) -> None:
    plain = plaintext(workdir, 3 * MiB + 5)
    enc = gpg.encrypt(plain, workdir / "readinto.gpg")
    with open(enc, "rb") as f:
        reader = openpgp.DecryptingReader(f, PASSPHRASE)
        got = bytearray()
        buf = bytearray(100_003)
        while n := reader.readinto(buf):
            got += buf[:n]
        reader.close()
    assert bytes(got) == plain.read_bytes()
    assert reader.cipher == "AES256" and reader.literal_format == "b"
    listing = gpg.packets(enc)
    assert reader.compression == ("ZIP" if "compressed packet: algo=1" in listing else None), listing
    with open(enc, "rb") as f:  # io.RawIOBase.read on top of readinto
        assert openpgp.DecryptingReader(f, PASSPHRASE).read() == plain.read_bytes()


def test_views_stay_valid(gpg: Gpg, workdir: Path) -> None:
    """Chunks may be kept (a background writer queues them): none is overwritten."""
    for opts in ((), ("--compress-algo", "none")):
        plain = plaintext(workdir, 9 * MiB + 1, "text")
        enc = gpg.encrypt(plain, workdir / f"views{len(opts)}.gpg", *opts, stdin=True)
        with open(enc, "rb") as f:
            kept = list(openpgp.DecryptingReader(f, PASSPHRASE).segments(ring=1))
        assert b"".join(kept) == plain.read_bytes()


def test_abandoned_read_stops_its_threads(gpg: Gpg, workdir: Path) -> None:
    plain = plaintext(workdir, 9 * MiB + 1)
    enc = gpg.encrypt(plain, workdir / "abandon.gpg")
    before = threading.active_count()
    with open(enc, "rb") as f:
        reader = openpgp.DecryptingReader(f, PASSPHRASE)
        chunks = reader.segments()
        first = bytes(next(chunks))
        chunks.close()
        with pytest.raises(UsageError, match="only once"):
            next(reader.segments())
    assert plain.read_bytes().startswith(first)
    gc.collect()
    deadline = time.monotonic() + 10
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threading.active_count() <= before


def test_passphrase_file_first_line(gpg: Gpg, workdir: Path) -> None:
    plain = plaintext(workdir, 1000)
    enc = gpg.encrypt(plain, workdir / "pp.gpg")
    for variant in (PASSPHRASE, PASSPHRASE + b"\n", PASSPHRASE + b"\r\n", PASSPHRASE + b"\nsecond line\n"):
        assert decrypt(enc, variant) == plain.read_bytes()
    with pytest.raises(IntegrityError, match="wrong passphrase"):
        decrypt(enc, PASSPHRASE + b" \n")
    # gpg keeps a CR before the newline: a message made with "pw\r\n" opens with that file too.
    crfile = workdir / "pass-cr"
    crfile.write_bytes(b"pw\r\n")
    enc_cr = gpg.encrypt(plain, workdir / "pp-cr.gpg", passfile=crfile)
    assert decrypt(enc_cr, b"pw\r\n") == plain.read_bytes()
    assert decrypt(enc_cr, b"pw\r") == plain.read_bytes()
    with pytest.raises(IntegrityError, match="wrong passphrase"):
        decrypt(enc_cr, b"pw\n")
    for empty in (b"", b"\n", b"\r\n", b"\nsecond"):
        with pytest.raises(UsageError, match="empty"):
            openpgp.DecryptingReader(io.BytesIO(enc.read_bytes()), empty)


def test_wrong_passphrase(gpg: Gpg, workdir: Path) -> None:
    enc = gpg.encrypt(plaintext(workdir, 100 * 1024), workdir / "wrong.gpg")
    with pytest.raises(IntegrityError, match="wrong passphrase or corrupt message") as info:
        decrypt(enc, b"not the passphrase\n")
    assert "not the passphrase" not in str(info.value)


def test_sed_without_mdc_refused(gpg: Gpg, workdir: Path) -> None:
    enc = workdir / "sed.gpg"
    gpg.encrypt(plaintext(workdir, 1000), enc, "--rfc2440")
    assert "tag=9" in gpg.packets(enc)
    with pytest.raises(IntegrityError, match="no integrity protection"):
        decrypt(enc)
    # and one built by hand, in case a gpg no longer writes them
    with pytest.raises(IntegrityError, match="no integrity protection"):
        decrypt(skesk_salted() + packet(9, os.urandom(100)))


def test_public_and_symmetric(gpg: Gpg, workdir: Path) -> None:
    """`gpg -c -e -r KEY`: a PKESK (skipped) and a SKESK carrying an encrypted session key."""
    uid = "modelseal-test@example.invalid"
    made = subprocess.run([GPG, "--homedir", str(gpg.home), "--batch", "--passphrase", "", "--quick-gen-key", uid,
                           "future-default", "default", "never"], capture_output=True)
    if made.returncode != 0:
        pytest.skip("gpg cannot generate a key here")
    plain = plaintext(workdir, 300 * 1024)
    enc = gpg.encrypt(plain, workdir / "pk-and-sym.gpg", "-e", "-r", uid, "--trust-model", "always")
    listing = gpg.packets(enc)
    assert "tag=1 " in listing and "tag=3 " in listing
    assert decrypt(enc) == plain.read_bytes()
    with pytest.raises(IntegrityError, match="wrong passphrase"):
        decrypt(enc, b"nope")
    only_pk = workdir / "pk-only.gpg"
    subprocess.run(gpg.argv("-e", "-r", uid, "--trust-model", "always", "-o", str(only_pk), str(plain)), check=True,
                   capture_output=True)
    with pytest.raises(IntegrityError, match="public-key"):
        decrypt(only_pk)


# ---- tampering -------------------------------------------------------------------

def _flip(data: bytes, offset: int, bit: int = 0) -> bytes:
    b = bytearray(data)
    b[offset] ^= 1 << bit
    return bytes(b)


@pytest.fixture(scope="module", params=["default", "none"])
def sample(request, gpg: Gpg, workdir: Path) -> tuple[bytes, bytes]:
    plain = plaintext(workdir, 2 * MiB + 100, "text")
    opts = () if request.param == "default" else ("--compress-algo", "none")
    enc = gpg.encrypt(plain, workdir / f"tamper-{request.param}.gpg", *opts)
    return enc.read_bytes(), plain.read_bytes()


def _expect_integrity_error(data: bytes) -> str:
    with pytest.raises(IntegrityError) as info:
        decrypt(data)
    return str(info.value)


def test_untampered_sample(sample) -> None:
    enc, plain = sample
    assert decrypt(enc) == plain


def test_tampered_salt(sample) -> None:
    enc, _ = sample
    assert enc[:6] == b"\x8c\x0d\x04\x09\x03\x02"  # SKESK v4, AES-256, S2K 3: the salt is at 6..13
    for offset in (6, 9, 13):
        msg = _expect_integrity_error(_flip(enc, offset))
        assert "wrong passphrase" in msg or "integrity check failed" in msg


@pytest.mark.parametrize("where", [0.0, 0.001, 0.25, 0.5, 0.9, 0.999, 1.0])
def test_tampered_body(sample, where: float) -> None:
    enc, _ = sample
    start, end = 17, len(enc) - 1  # after the SKESK and the encrypted packet's first length octet
    offset = int(start + (end - start) * where)
    if offset == start:
        offset = start + 1  # the version octet is checked separately; flip the first ciphertext byte
    _expect_integrity_error(_flip(enc, offset, bit=3))


def _length_octets(enc: bytes, start: int = 16) -> set[int]:
    """Offsets of the encrypted packet's body length octets (new format, partial lengths from `start`)."""
    pos, found = start, set()
    while (b := enc[pos]) >= 224 and b != 255:
        found.add(pos)
        pos += 1 + (1 << (b & 0x1F))
    return found | set(range(pos, pos + (1 if b < 192 else 2 if b < 224 else 5)))


def test_tampered_mdc(sample) -> None:
    enc, _ = sample
    framing = _length_octets(enc)
    assert 16 in framing and max(framing) < len(enc)
    # gpg's last partial piece is often short, so its length octet can fall in the last 22 bytes:
    # a flip there is a framing error ("truncated"), not a tampered MDC.
    for back in (b for b in (1, 5, 20, 21, 22) if len(enc) - b not in framing):
        msg = _expect_integrity_error(_flip(enc, len(enc) - back))
        assert "integrity" in msg or "MDC" in msg or "corrupt" in msg


@pytest.mark.parametrize("cut", [1, 2, 10, 15, 16, 17, 40, 1000, 0.5, -1, -2, -21, -22, -23, -8194])
def test_truncated(sample, cut) -> None:
    enc, _ = sample
    n = int(len(enc) * cut) if isinstance(cut, float) else (cut if cut > 0 else len(enc) + cut)
    msg = _expect_integrity_error(enc[:n])
    assert "truncated" in msg or "integrity" in msg or "malformed" in msg, msg


@pytest.mark.parametrize("extra", [b"\x00", b"\xd3\x14" + bytes(20), b"garbage" * 100])
def test_appended(sample, extra: bytes) -> None:
    enc, _ = sample
    msg = _expect_integrity_error(enc + extra)
    assert "after the encrypted data" in msg


def test_error_comes_before_the_last_chunk(sample) -> None:
    """A consumer that reads to EOF meets the error first: the last chunk waits for the MDC.

    At most the chunks before the last one are released unchecked (they go to a
    .partial file or a staging directory that the failure removes); not one byte
    of the last one, whatever the threads' timing."""
    enc, plain = sample
    chunks = [len(c) for c in openpgp.DecryptingReader(io.BytesIO(enc), PASSPHRASE).segments()]
    assert sum(chunks) == len(plain) and len(chunks) >= 2
    # Inside the MDC (its last 20 bytes), never on a length octet of gpg's short last partial piece.
    framing = _length_octets(enc)
    bad = _flip(enc, next(len(enc) - back for back in range(3, 20) if len(enc) - back not in framing))
    got = bytearray()
    with pytest.raises(IntegrityError, match="MDC"):
        for chunk in openpgp.DecryptingReader(io.BytesIO(bad), PASSPHRASE).segments():
            got += chunk
    assert len(got) <= sum(chunks[:-1]) and len(plain) - len(got) >= chunks[-1] > 0
    assert bytes(got) == plain[: len(got)]


def test_not_openpgp() -> None:
    for data, pattern in ((b"", "empty input"), (b"hello world", "not an OpenPGP message"),
                          (b"-----BEGIN PGP MESSAGE-----\n\njA0E\n", "ASCII-armored"),
                          (packet(11, literal_body(b"x")), "not an encrypted message"),
                          (skesk_salted(), "truncated"),
                          (packet(18, b"\x01" + os.urandom(40)), "no symmetric-key")):
        with pytest.raises(IntegrityError, match=pattern):
            decrypt(data)


# ---- hand-built messages ----------------------------------------------------------------

SALT = bytes(range(8))


def packet(tag: int, body: bytes, old: bool = False, length_bytes: int | None = None) -> bytes:
    n = len(body)
    if old:
        kind = {1: 0, 2: 1, 4: 2}[length_bytes or 4]
        return bytes([0x80 | tag << 2 | kind]) + n.to_bytes(1 << kind, "big") + body
    if length_bytes == 1 or (length_bytes is None and n < 192):
        return bytes([0xC0 | tag, n]) + body
    if length_bytes == 2 or (length_bytes is None and n < 8384):
        n -= 192
        return bytes([0xC0 | tag, (n >> 8) + 192, n & 0xFF]) + body
    return bytes([0xC0 | tag, 255]) + struct.pack(">I", n) + body


def partial_packet(tag: int, body: bytes, sizes=(512, 1, 2, 4096, 8192)) -> bytes:
    out = bytearray([0xC0 | tag])
    i = 0
    for size in itertools_cycle(sizes):
        if len(body) - i <= size:
            break
        out += bytes([224 + size.bit_length() - 1]) + body[i:i + size]
        i += size
    rest = body[i:]
    out += packet(tag, rest)[1:]  # the final, definite length (may be 0)
    return bytes(out)


def itertools_cycle(sizes):
    while True:
        yield from sizes


def old_indeterminate(tag: int, body: bytes) -> bytes:
    return bytes([0x80 | tag << 2 | 3]) + body


def literal_body(data: bytes, fmt: bytes = b"b", name: bytes = b"model.tar") -> bytes:
    return fmt + bytes([len(name)]) + name + struct.pack(">I", 1700000000) + data


def compressed_body(algo: int, inner: bytes) -> bytes:
    if algo == 1:
        c = zlib.compressobj(6, zlib.DEFLATED, -15)
        return b"\x01" + c.compress(inner) + c.flush()
    if algo == 2:
        return b"\x02" + zlib.compress(inner)
    if algo == 3:
        return b"\x03" + bz2.compress(inner)
    return bytes([algo]) + inner


def s2k_key(passphrase: bytes) -> bytes:
    return hashlib.sha256(SALT + passphrase).digest()  # salted S2K, SHA-256, 32 bytes for AES-256


def skesk_salted(algo: int = 9, esk: bytes = b"") -> bytes:
    return packet(3, bytes([4, algo, 1, 8]) + SALT + esk)


def cfb(key: bytes, data: bytes, iv: bytes | None = None) -> bytes:
    return Cipher(algorithms.AES(key), CFB(iv or bytes(16))).encryptor().update(data)


def seipd(key: bytes, inner: bytes, *, mdc_ok: bool = True, after_mdc: bytes = b"", partial: bool = False,
          version: int = 1, prefix: bytes | None = None) -> bytes:
    rnd = os.urandom(16)
    prefix = prefix if prefix is not None else rnd + rnd[-2:]
    digest = hashlib.sha1(prefix + inner + b"\xd3\x14").digest()
    if not mdc_ok:
        digest = bytes([digest[0] ^ 1]) + digest[1:]
    body = bytes([version]) + cfb(key, prefix + inner + b"\xd3\x14" + digest + after_mdc)
    return partial_packet(18, body) if partial else packet(18, body)


def message(inner: bytes, passphrase: bytes = PASSPHRASE, **kw) -> bytes:
    return skesk_salted() + seipd(s2k_key(passphrase), inner, **kw)


def test_crafted_roundtrip_headers() -> None:
    data = os.urandom(300_000)
    lit = literal_body(data)
    cases = [
        (packet(11, lit), data), (packet(11, lit, old=True), data), (partial_packet(11, lit), data),
        (packet(11, literal_body(b"abc"), old=True, length_bytes=1), b"abc"),
        (packet(11, literal_body(b"abc" * 50), old=True, length_bytes=2), b"abc" * 50),
        (packet(11, literal_body(b"abc" * 100), length_bytes=2), b"abc" * 100),
        (packet(11, literal_body(b"abc"), length_bytes=5), b"abc"),
        (packet(11, literal_body(b"")), b""),
        (old_indeterminate(8, compressed_body(1, packet(11, lit))), data),
        (packet(8, compressed_body(2, partial_packet(11, lit))), data),
        (partial_packet(8, compressed_body(3, packet(11, lit))), data),
        (packet(8, compressed_body(0, packet(11, lit))), data),
        # compressed inside compressed; signatures around the literal and a marker (skipped)
        (packet(8, compressed_body(1, packet(8, compressed_body(2, packet(11, lit))))), data),
        (packet(4, b"\x03" + bytes(12)) + packet(11, lit) + packet(2, os.urandom(80)), data),
        (packet(10, b"PGP") + packet(11, lit), data),
    ]
    for inner, want in cases:
        for partial in (False, True):
            assert decrypt(message(inner, partial=partial)) == want


def test_crafted_empty_final_partial() -> None:
    """A partial body whose final part has length 0."""
    data = os.urandom(4096 - len(literal_body(b"")))
    body = literal_body(data)
    assert len(body) == 4096
    inner = bytes([0xC0 | 11, 224 + 12]) + body + b"\x00"
    assert decrypt(message(inner)) == data
    assert decrypt(message(inner, partial=True)) == data


def test_crafted_esk_and_several_skesks() -> None:
    """A SKESK with an encrypted session key, after one for another passphrase."""
    session = os.urandom(32)
    data = os.urandom(50_000)
    inner = packet(11, literal_body(data))
    other = packet(3, bytes([4, 9, 1, 8]) + SALT[::-1] + cfb(hashlib.sha256(SALT[::-1] + b"other").digest(),
                                                                   b"\x09" + session))
    esk = cfb(s2k_key(PASSPHRASE), b"\x09" + session)
    msg = other + skesk_salted(esk=esk) + seipd(session, inner)
    assert decrypt(msg) == data
    assert decrypt(msg, b"other") == data
    with pytest.raises(IntegrityError, match="wrong passphrase"):
        decrypt(msg, b"third")


@pytest.mark.parametrize(
    "inner, kw, pattern",
    [
        (packet(11, literal_body(b"x" * 1000))[:-10], {}, "truncated"),
        (partial_packet(11, literal_body(b"x" * 20000))[:-1], {}, "truncated"),
        (packet(11, literal_body(b"x")) + b"\x00\x01", {}, "malformed packet header"),
        (packet(11, literal_body(b"x")) * 2, {}, "more than one literal"),
        (packet(8, compressed_body(1, packet(11, literal_body(b"x" * 1000))))[:-5], {}, "truncated"),
        (old_indeterminate(8, compressed_body(1, packet(11, literal_body(b"y" * 1000)))[:-3]), {}, "truncated"),
        (old_indeterminate(8, compressed_body(2, packet(11, literal_body(b"y" * 1000))) + b"zz"), {}, "after the end"),
        # Fixed noise (random noise is, now and then, a deflate stream that ends early: "after the end").
        (packet(8, b"\x01" + random.Random(8).randbytes(2000)), {}, "corrupt ZIP|truncated|after the end"),
        (packet(8, b"\x03BZh9" + random.Random(9).randbytes(2000)), {}, "corrupt BZip2"),
        (packet(8, b"\x07" + bytes(10)), {}, "unsupported compression"),
        (b"", {}, "no literal"),
        (packet(2, bytes(40)), {}, "no literal"),
        (packet(13, b"user id"), {}, "unexpected user ID"),
        (packet(19, bytes(20)) + packet(11, literal_body(b"x")), {}, "MDC packet inside"),
        (packet(11, literal_body(b"data")), {"mdc_ok": False}, "MDC does not match"),
        (packet(11, literal_body(b"data")), {"after_mdc": b"\x00"}, "integrity check failed"),
        (packet(11, literal_body(b"data")), {"prefix": bytes(16) + b"\x01\x02"}, "wrong passphrase"),
        (packet(11, literal_body(b"data")), {"version": 2}, "unsupported.*version 2"),
        (packet(11, literal_body(b"data")), {"version": 3}, "unsupported encrypted data packet version"),
    ],
)
def test_crafted_malformed(inner: bytes, kw: dict, pattern: str) -> None:
    for partial in (False, True):
        with pytest.raises(IntegrityError, match=pattern):
            decrypt(message(inner, partial=partial, **kw))


def test_crafted_tampering_reported_as_such() -> None:
    """Tampering that breaks the inner packets is still reported as an MDC failure."""
    inner = old_indeterminate(8, compressed_body(1, packet(11, literal_body(os.urandom(100_000)))))
    msg = bytearray(message(inner))
    msg[len(msg) // 2] ^= 0x10
    with pytest.raises(IntegrityError, match="integrity check failed"):
        decrypt(bytes(msg))


def test_crafted_refusals() -> None:
    inner = packet(11, literal_body(b"data"))
    good = message(inner)
    cases = [
        (good + packet(11, literal_body(b"more")), "after the encrypted data"),
        (skesk_salted() + packet(20, bytes(60)), "unsupported: AEAD"),
        (packet(3, bytes([5, 9, 2, 3, 1, 8]) + SALT), "unsupported: version 5"),
        (packet(3, bytes([4, 10, 1, 8]) + SALT) + seipd(s2k_key(PASSPHRASE), inner), "unsupported cipher Twofish"),
        (packet(3, bytes([4, 9, 4, 8]) + SALT), "Argon2"),
        (packet(3, bytes([4, 9, 101, 2]) + b"GNU\x01"), "GNU"),
        (packet(3, bytes([4, 9, 3, 77]) + SALT + b"\x60"), "unsupported S2K hash"),
        (packet(3, bytes([4, 9])), "malformed"),
        (packet(1, bytes(60)) + seipd(s2k_key(PASSPHRASE), inner), "public-key"),
        (skesk_salted() + packet(6, bytes(10)), "unexpected public key"),
        (bytes([0xC0 | 3, 255]) + struct.pack(">I", 1 << 20) + bytes(100), "malformed symmetric-key"),
        (skesk_salted() * 17 + seipd(s2k_key(PASSPHRASE), inner), "more than 16"),
    ]
    for data, pattern in cases:
        with pytest.raises(IntegrityError, match=pattern):
            decrypt(data)


def test_crafted_bomb_stays_bounded() -> None:
    """1 GiB of zeros from a few hundred KiB: chunks stay bounded (memory stays flat)."""
    size = 1 << 30
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    literal_head = literal_body(b"")
    header = bytes([0xC0 | 11, 255]) + struct.pack(">I", len(literal_head) + size) + literal_head
    block = bytes(MiB)
    parts = [c.compress(header)] + [c.compress(block) for _ in range(size // MiB)] + [c.flush()]
    inner = old_indeterminate(8, b"\x01" + b"".join(parts))
    total = 0
    biggest = 0
    for chunk in openpgp.DecryptingReader(io.BytesIO(message(inner)), PASSPHRASE).segments():
        total += len(chunk)
        biggest = max(biggest, len(chunk))
    assert total == size and biggest <= MiB


# ---- memory and the command line ------------------------------------------------------

def file_sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(MiB):
            h.update(block)
    return h.hexdigest()


MEMORY_DRIVER = r"""
import os, sys
from modelseal import openpgp
reader = openpgp.DecryptingReader(open(sys.argv[1], "rb", buffering=0), open(sys.argv[2], "rb").read())
fd = os.open(sys.argv[3], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
for chunk in reader.segments(ring=4):
    os.write(fd, chunk)
os.close(fd)
# VmHWM, not ru_maxrss: the latter keeps the peak of the (large) pytest process we were forked from.
print(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:")))
"""


@pytest.mark.parametrize("kind", ["random", "zeros"])
def test_constant_memory(gpg: Gpg, workdir: Path, kind: str) -> None:
    size = 200 * MiB
    plain = workdir / f"mem-{kind}"
    with open(plain, "wb") as f:
        for _ in range(size // (8 * MiB)):
            f.write(os.urandom(8 * MiB) if kind == "random" else bytes(8 * MiB))
    opts = ("--compress-algo", "none") if kind == "random" else ()
    enc = gpg.encrypt(plain, workdir / f"mem-{kind}.gpg", *opts)
    want = file_sha(plain)
    plain.unlink()
    out = workdir / f"mem-{kind}.out"
    proc = subprocess.run([sys.executable, "-c", MEMORY_DRIVER, str(enc), str(gpg.passfile), str(out)],
                          capture_output=True, text=True, check=True)
    rss_mib = int(proc.stdout.split()[-1]) / 1024
    assert file_sha(out) == want
    out.unlink()
    enc.unlink()
    assert rss_mib < 80, f"peak RSS {rss_mib:.0f} MiB"


def test_cli_decrypt_openpgp(gpg: Gpg, workdir: Path) -> None:
    plain = plaintext(workdir, 3 * MiB + 1)
    enc = gpg.encrypt(plain, workdir / "cli.gpg")
    out = workdir / "cli.out"
    res = modelseal("decrypt", "--format", "openpgp", "--in", str(enc), "--key", str(gpg.passfile), "-o", str(out))
    assert res.code == 0, res.stderr
    assert out.read_bytes() == plain.read_bytes()
    out.unlink()
    bad = workdir / "cli-bad.gpg"
    bad.write_bytes(_flip(enc.read_bytes(), enc.stat().st_size // 2))
    res = modelseal("decrypt", "--format", "openpgp", "--in", str(bad), "--key", str(gpg.passfile), "-o", str(out))
    assert res.code == 4, res.stderr
    assert not out.exists() and not Path(str(out) + ".partial").exists()
    assert PASSPHRASE.decode() not in res.stderr
