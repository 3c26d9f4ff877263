"""Bech32 (BIP 173) as age uses it: one case throughout, no length limit.

Written here rather than taken from PyPI: the `bech32` package is BIP 173's
reference code, unchanged since 2020, and enforces the 90-character limit
that age lifts (C2SP age.md: "Bech32 ... without length limits on the data
part"); it would also be one more dependency in every image for the sixty
lines below, which BIP 173's own vectors check (tests/test_recipients_bech32.py).
This follows age's `internal/bech32`, itself a modified reference
implementation. Errors never quote the string: it may be a secret key.
"""

from __future__ import annotations

from ..errors import IntegrityError, ModelsealError

CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_VALUES = {c: i for i, c in enumerate(CHARSET)}
_GENERATOR = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)
CHECKSUM_SIZE = 6


def _polymod(values: list[int]) -> int:
    chk = 1
    for v in values:
        top = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ v
        for i in range(5):
            if (top >> i) & 1:
                chk ^= _GENERATOR[i]
    return chk


def _hrp_expand(hrp: str) -> list[int]:
    return [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]


def _convert(data: list[int] | bytes, frombits: int, tobits: int, pad: bool) -> list[int] | None:
    """Regroup bits (BIP 173's convertbits); None for a value out of range or bad padding."""
    acc = bits = 0
    out: list[int] = []
    maxv = (1 << tobits) - 1
    for value in data:
        if value >> frombits:
            return None
        acc = acc << frombits | value
        bits += frombits
        while bits >= tobits:
            bits -= tobits
            out.append((acc >> bits) & maxv)
    if pad:
        if bits:
            out.append((acc << (tobits - bits)) & maxv)
    elif bits >= frombits or (acc << (tobits - bits)) & maxv:
        return None
    return out


def decode_words(text: str, what: str, error: type[ModelsealError] = IntegrityError) -> tuple[str, list[int]]:
    """(hrp, 5-bit data words without the checksum); the HRP keeps the string's case."""
    if text.lower() != text and text.upper() != text:
        raise error(f"{what}: mixed case")
    pos = text.rfind("1")
    if pos < 1 or pos + 1 + CHECKSUM_SIZE > len(text):
        raise error(f"{what}: no Bech32 separator where one belongs")
    hrp = text[:pos]
    if any(not 33 <= ord(c) <= 126 for c in hrp):
        raise error(f"{what}: a character outside the Bech32 human-readable range")
    words = [_VALUES.get(c, -1) for c in text[pos + 1:].lower()]
    if -1 in words:
        raise error(f"{what}: a character outside the Bech32 alphabet")
    if _polymod(_hrp_expand(hrp.lower()) + words) != 1:
        raise error(f"{what}: bad Bech32 checksum")
    return hrp, words[:-CHECKSUM_SIZE]


def decode(text: str, what: str, error: type[ModelsealError] = IntegrityError) -> tuple[str, bytes]:
    """(hrp, data bytes) of a Bech32 string (age's Decode)."""
    hrp, words = decode_words(text, what, error)
    data = _convert(words, 5, 8, pad=False)
    if data is None:
        raise error(f"{what}: bad Bech32 padding")
    return hrp, bytes(data)


def encode(hrp: str, data: bytes) -> str:
    """Bech32 of `data`, upper-case when the HRP is (age's Encode)."""
    if not hrp or any(not 33 <= ord(c) <= 126 for c in hrp) or (hrp.lower() != hrp and hrp.upper() != hrp):
        raise ValueError("invalid Bech32 human-readable part")
    lower = hrp.lower()
    words = _convert(data, 8, 5, pad=True)
    assert words is not None  # bytes are always in range
    mod = _polymod(_hrp_expand(lower) + words + [0] * CHECKSUM_SIZE) ^ 1
    checksum = [(mod >> 5 * (5 - i)) & 31 for i in range(CHECKSUM_SIZE)]
    text = lower + "1" + "".join(CHARSET[w] for w in words + checksum)
    return text if hrp == lower else text.upper()
