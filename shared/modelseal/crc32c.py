"""CRC-32C (Castagnoli, RFC 3720 appendix B.4): the checksum of Google Cloud's integrity fields.

Pure Python, table-driven. It covers Cloud KMS requests and answers of a few
hundred bytes, where it costs microseconds; google-crc32c (a C extension,
184 KB installed) would only pay off on large data, and would be one more
compiled package in the fetch image. The tests check this one against it.
"""

from __future__ import annotations

_POLY = 0x82F63B78  # the Castagnoli polynomial, bit-reversed


def _table() -> tuple[int, ...]:
    out = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ _POLY if c & 1 else c >> 1
        out.append(c)
    return tuple(out)


_TABLE = _table()


def crc32c(data: bytes | bytearray | memoryview) -> int:
    crc = 0xFFFFFFFF
    for b in bytes(data):
        crc = _TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF
