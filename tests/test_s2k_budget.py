"""The passphrase hashing (S2K) a hostile OpenPGP message can ask for is capped, across all its packets.

Without a cap, 16 session key packets at the maximum iteration count with a
slow hash (RIPEMD-160: two hash contexts of 65 MB each for a 256-bit key,
both passphrase forms when the passphrase file has a CR) cost about 18 s of
CPU before the exit 4; bench/s2k.py measures it side by side. The tests count
derivations rather than time them.
"""

from __future__ import annotations

import io
import random
import shutil
import subprocess

import pytest

from conftest import need, refused
from modelseal import openpgp
from modelseal.openpgp import s2k
from modelseal.errors import IntegrityError


def _skesk_packet(hash_id: int, salt: bytes, count_byte: int = 0xFF, cipher: int = 9) -> bytes:
    body = bytes([4, cipher, 3, hash_id]) + salt + bytes([count_byte])
    return bytes([0xC0 | 3, len(body)]) + body


def _count_derivations(monkeypatch) -> list:
    calls: list = []
    real = s2k.S2K.derive

    def counting(self, passphrase, key_size):
        calls.append((self.hash_id, self.count))
        return real(self, passphrase, key_size)

    monkeypatch.setattr(s2k.S2K, "derive", counting)
    return calls


@pytest.mark.parametrize("hash_id", [3, 14, 2, 8], ids=["RIPEMD-160", "SHA3-512", "SHA-1", "SHA-256"])
def test_s2k_work_is_capped_across_packets(monkeypatch, hash_id):
    """16 session key packets at the maximum count: refused once the budget is spent, not after all 32 hashes."""
    calls = _count_derivations(monkeypatch)
    rnd = random.Random(hash_id)
    data = b"".join(_skesk_packet(hash_id, rnd.randbytes(8)) for _ in range(16))
    data += bytes([0xC0 | 18, 65]) + b"\x01" + rnd.randbytes(64)
    with refused(IntegrityError, match="more passphrase hashing"):
        for _ in openpgp.DecryptingReader(io.BytesIO(data), b"passphrase\r\n").segments():
            pass
    name = s2k.HASHES[hash_id]
    per = s2k.S2K(3, hash_id, bytes(8), openpgp.MAX_S2K_COUNT).cost(len(b"passphrase"), 32)
    assert len(calls) == openpgp.S2K_BUDGET // per  # every derivation that fits, and not one more
    assert len(calls) < 32, f"{name}: all 16 packets x 2 passphrase forms were hashed"


def test_identical_session_key_packets_are_hashed_once(monkeypatch):
    """16 copies of one max-count packet cost one derivation: a wrong passphrase is just that, not a budget error."""
    from test_openpgp import PASSPHRASE, literal_body, packet, seipd

    calls = _count_derivations(monkeypatch)
    salt = bytes(range(8))
    key = s2k.S2K(3, 3, salt, openpgp.MAX_S2K_COUNT).derive(PASSPHRASE, 32)
    calls.clear()
    data = _skesk_packet(3, salt) * 16 + seipd(key, packet(11, literal_body(b"model")))
    with refused(IntegrityError, match="wrong passphrase"):
        for _ in openpgp.DecryptingReader(io.BytesIO(data), b"not it").segments():
            pass
    assert len(calls) == 1
    calls.clear()
    out = b"".join(bytes(c) for c in openpgp.DecryptingReader(io.BytesIO(data), PASSPHRASE).segments())
    assert out == b"model" and len(calls) == 1


def test_real_message_at_the_maximum_count_fits_the_budget(shm):
    """gpg -c at its maximum S2K count with its slowest digest, a passphrase file with a CR: both forms tried."""
    gpg = shutil.which("gpg")
    need("" if gpg else "gpg is not installed")
    home = shm / "gnupg"
    home.mkdir(mode=0o700)
    (shm / "pass").write_bytes(b"correct horse\n")
    (shm / "plain").write_bytes(b"weights" * 1000)
    subprocess.run([gpg, "--homedir", str(home), "--batch", "--yes", "--quiet", "--pinentry-mode", "loopback",
                    "--passphrase-file", str(shm / "pass"), "--s2k-count", "65011712", "--s2k-digest-algo",
                    "RIPEMD160", "--cipher-algo", "AES256", "-c", "-o", str(shm / "m.gpg"), str(shm / "plain")],
                   check=True, capture_output=True)
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], capture_output=True)
    with open(shm / "m.gpg", "rb") as f:
        reader = openpgp.DecryptingReader(f, b"correct horse\r\n")  # tried as "...\r" first, then without
        out = b"".join(bytes(c) for c in reader.segments())
    assert out == b"weights" * 1000 and reader.s2k == "iterated+salted RIPEMD160"
