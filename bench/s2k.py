#!/usr/bin/env python3
"""CPU cost of a hostile OpenPGP message: 16 session key packets at the maximum S2K count.

Each packet asks for one passphrase hash of 65,011,712 bytes per hash
context (two contexts for a 256-bit key from a 160-bit hash), distinct salts
so nothing can be reused, and the passphrase file line ends in CR so both
forms are tried: 32 derivations without a cap. Measured in the same run:

- one derivation at the maximum count (what a real `gpg -c` message costs),
- the hostile message with the S2K budget (what modelseal does),
- the same message with the budget lifted (what it did before: all 32).

CPU seconds (time.process_time), not wall time: the machine may be shared.
The uncapped column takes about 40 s; BENCH_S2K_UNCAPPED=0 skips it.
"""

from __future__ import annotations

import io
import os
import random
import time

from measure import record
from modelseal import openpgp
from modelseal.openpgp import s2k as s2k_module
from modelseal.errors import IntegrityError

HASHES = {"RIPEMD-160": 3, "SHA3-512": 14, "SHA-1": 2, "SHA-256": 8}
UNCAPPED = os.environ.get("BENCH_S2K_UNCAPPED", "1") != "0"
PASSPHRASE = b"a passphrase\r\n"


def hostile(hash_id: int, packets: int = 16) -> bytes:
    rnd = random.Random(hash_id)
    out = b""
    for _ in range(packets):
        body = bytes([4, 9, 3, hash_id]) + rnd.randbytes(8) + b"\xff"  # AES-256, iterated+salted, max count
        out += bytes([0xC0 | 3, len(body)]) + body
    return out + bytes([0xC0 | 18, 65, 1]) + rnd.randbytes(64)


def cpu(fn) -> tuple[float, str]:
    start = time.process_time()
    try:
        fn()
        outcome = "decrypted"
    except IntegrityError as e:
        outcome = "budget" if "more passphrase hashing" in str(e) else "wrong passphrase"
    return time.process_time() - start, outcome


def decrypt(data: bytes) -> None:
    for _ in openpgp.DecryptingReader(io.BytesIO(data), PASSPHRASE).segments():
        pass


def main() -> None:
    print(f"S2K work of a 16-packet hostile message (budget {openpgp.S2K_BUDGET >> 20} Mi SHA-256-equivalent bytes)")
    print(f"{'hash':<11} {'one (s)':>8} {'capped (s)':>11} {'uncapped (s)':>13} {'uncapped/capped':>16}")
    for name, hash_id in HASHES.items():
        s2k = s2k_module.S2K(3, hash_id, bytes(8), openpgp.MAX_S2K_COUNT)
        one, _ = cpu(lambda: s2k.derive(PASSPHRASE[:-1], 32))
        data = hostile(hash_id)
        capped, outcome = cpu(lambda: decrypt(data))
        assert outcome == "budget", outcome
        row = f"{name:<11} {one:8.2f} {capped:11.2f}"
        bench = f"s2k: hostile 16-packet message, {name} (CPU seconds)"
        record(bench, "one derivation at the maximum count", one)
        record(bench, "the hostile message, budget on", capped)
        if UNCAPPED:
            saved = s2k_module.S2K_BUDGET
            s2k_module.S2K_BUDGET = 1 << 62  # read by each message's budget (s2k.Work)
            try:
                uncapped, outcome = cpu(lambda: decrypt(data))
            finally:
                s2k_module.S2K_BUDGET = saved
            assert outcome == "wrong passphrase", outcome
            row += f" {uncapped:13.2f} {uncapped / capped:16.1f}"
            record(bench, "the hostile message, budget lifted", uncapped, vs="the hostile message, budget on",
                   ratio=capped / uncapped)
        print(row)


if __name__ == "__main__":
    main()
