#!/usr/bin/env python3
"""Build the .seal v1 test vectors in tests/vectors/seal-v1/, byte for byte, from fixed inputs.

    python tests/vectors/generate.py           # (re)write the files and manifest.json
    python tests/vectors/generate.py --check   # exit 1 unless the committed files are exactly these

Two good files (one segment; one full segment and a short final one) sealed
with a fixed data key, salt and nonce prefix, and failure vectors made from
them the way age's CCTV publishes its own: each a whole file, tagged in
manifest.json with what a reader must do with it (the exit code of
`modelseal decrypt --in FILE --key KEY -o OUT`, the error class, words its
one-line message contains, and why). docs/FORMAT.md lists them;
tests/test_vectors.py runs every one through the real command line.

Needs the modelseal library (PYTHONPATH=shared): the good files are sealed by
it, and tests/test_vectors.py also checks the one-segment file against the
hex vector published in docs/FORMAT.md.
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

from modelseal import sealfile
from modelseal.streaming import AES256_GCM_HKDF_1MB as PARAMS
from modelseal.streaming import EncryptingWriter

OUT = Path(__file__).resolve().parent / "seal-v1"

DATA_KEY = bytes(range(32))  # 000102...1f, as in seal-v1.json
WRONG_KEY = hashlib.sha256(b"modelseal test vector: the wrong key").digest()
SALT = b"\xa5" * 32
NONCE_PREFIX = b"\x5a" * 7
CREATED = "2026-01-01T00:00:00Z"
HELLO = b"hello, sealed world\n"
#: One full segment 0 and a final segment of 20 bytes: the smallest file with a segment boundary.
TWO_SEGMENTS = (HELLO * (PARAMS.first_plaintext_size // len(HELLO) + 2))[:PARAMS.first_plaintext_size + 20]


@dataclass(frozen=True)
class Vector:
    name: str
    data: bytes
    reason: str
    key: str = "data.key"
    exit: int = 4
    error: str = "IntegrityError"
    says: str = ""
    plaintext: bytes | None = None  # for a good file: what it decrypts to

    def entry(self) -> dict:
        entry = {"file": f"{self.name}.seal", "key": self.key, "exit": self.exit,
                 "sha256": hashlib.sha256(self.data).hexdigest(), "reason": self.reason}
        if self.plaintext is None:
            entry.update(error=self.error, says=self.says)
        else:
            entry.update(plaintext_bytes=len(self.plaintext),
                         plaintext_sha256=hashlib.sha256(self.plaintext).hexdigest())
        return entry


def seal(plaintext: bytes, name: str) -> bytes:
    header = sealfile.Header(key_id=sealfile.key_id(DATA_KEY), name=name, version="1", created=CREATED)
    prefix = sealfile.encode_prefix(header)
    out = io.BytesIO()
    out.write(prefix)
    with EncryptingWriter(out, DATA_KEY, prefix, PARAMS, salt=SALT, nonce_prefix=NONCE_PREFIX) as w:
        w.write(plaintext)
    return out.getvalue()


def flip(data: bytes, at: int, bit: int = 0) -> bytes:
    b = bytearray(data)
    b[at] ^= 1 << bit
    return bytes(b)


def payload_at(data: bytes) -> int:
    """Where the payload (Tink's header, then segment 0) starts: after magic, length and header."""
    return 10 + struct.unpack(">I", data[6:10])[0]


def vectors() -> list[Vector]:
    one = seal(HELLO, "vector")
    two = seal(TWO_SEGMENTS, "vector")
    p1, p2 = payload_at(one), payload_at(two)
    seg1 = p2 + PARAMS.segment_size  # where the final segment of `two` starts
    name_at = one.index(b'"name":"vector"') + len('"name":"')
    key_id = sealfile.key_id(DATA_KEY).encode()
    return [
        Vector("ok-one-segment", one, "the published vector (docs/FORMAT.md): one final segment",
               exit=0, plaintext=HELLO),
        Vector("ok-two-segments", two, "a full segment 0, then a final segment of 20 bytes",
               exit=0, plaintext=TWO_SEGMENTS),
        Vector("empty", b"", "an empty file", says="empty"),
        Vector("bad-magic", flip(one, 0), "the first byte of the magic changed", says="bad magic"),
        Vector("bad-version", one[:5] + b"\x02" + one[6:], "format version 2", says="version 2"),
        Vector("header-oversized", one[:6] + struct.pack(">I", 65537) + one[10:],
               "the header length says 65537, over the 65536-byte limit", says="limit"),
        Vector("header-truncated", one[:p1 - 3], "the file ends inside the header", says="truncated"),
        Vector("header-not-json", flip(one, 10, 1), "the header's first byte is no longer '{'", says="bad header"),
        Vector("header-flipped-byte", flip(one, name_at), 'one header byte changed ("vector" to "wector"): '
               "still valid JSON, caught by the associated data", says="segment 0"),
        Vector("wrong-key", one, "decrypted with another key: its key id differs", key="wrong.key",
               says="wrong key"),
        Vector("wrong-key-forged-id", one.replace(key_id, sealfile.key_id(WRONG_KEY).encode(), 1),
               "the header's key id forged to the wrong key's: the key id is a hint, segment 0 still fails",
               key="wrong.key", says="segment 0"),
        Vector("tink-header-flipped", flip(one, p1 + 5), "a byte of the salt changed", says="segment 0"),
        Vector("payload-flipped", flip(one, len(one) - 20), "a ciphertext byte of the only segment changed",
               says="segment 0"),
        Vector("truncated-in-tag", one[:-5], "the file ends inside the final segment's tag", says="segment 0"),
        Vector("appended-bytes", one + bytes(17), "17 zero bytes after the final segment", says="segment 0"),
        Vector("truncated-at-segment-boundary", two[:seg1],
               "the final segment removed: segment 0 is whole but not marked final", says="truncated"),
        Vector("appended-segment", two + two[seg1:], "a copy of the final segment appended after it",
               says="segment 1"),
        Vector("dropped-segment", two[:p2 + PARAMS.header_size] + two[seg1:],
               "segment 0 removed (Tink's header kept): the final segment is read as segment 0", says="segment 0"),
        Vector("reordered-segments", two[:p2 + PARAMS.header_size] + two[seg1:] + two[p2 + PARAMS.header_size:seg1],
               "the final segment moved before segment 0", says="segment 0"),
        Vector("last-segment-flipped", flip(two, len(two) - 20), "a ciphertext byte of the final segment changed",
               says="segment 1"),
    ]


def files() -> dict[str, bytes]:
    """Every file of tests/vectors/seal-v1/, by name."""
    vs = vectors()
    manifest = {
        "description": "modelseal .seal v1 test vectors (docs/FORMAT.md): run each as "
                       "`modelseal decrypt --in FILE --key KEY -o OUT`; a failure must exit with `exit`, "
                       "name the problem in one line containing `says`, and leave neither OUT nor OUT.partial",
        "generator": "tests/vectors/generate.py",
        "keys": {"data.key": DATA_KEY.hex(), "wrong.key": WRONG_KEY.hex()},
        "vectors": [v.entry() for v in vs],
    }
    out = {f"{v.name}.seal": v.data for v in vs}
    out["data.key"] = DATA_KEY
    out["wrong.key"] = WRONG_KEY
    out["manifest.json"] = (json.dumps(manifest, indent=1) + "\n").encode()
    return out


def main(argv: list[str]) -> int:
    want = files()
    if argv[1:] == ["--check"]:
        have = {p.name for p in OUT.iterdir()} if OUT.is_dir() else set()
        wrong = sorted(n for n, data in want.items() if not (OUT / n).is_file() or (OUT / n).read_bytes() != data)
        extra = sorted(have - set(want))
        for n in wrong:
            print(f"differs or missing: {OUT / n}", file=sys.stderr)
        for n in extra:
            print(f"not made by the generator: {OUT / n}", file=sys.stderr)
        return 1 if wrong or extra else 0
    if argv[1:]:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    OUT.mkdir(exist_ok=True)
    for p in OUT.iterdir():
        if p.name not in want:
            p.unlink()
    for n, data in want.items():
        (OUT / n).write_bytes(data)
    print(f"{len(want)} files in {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
