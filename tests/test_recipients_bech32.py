"""Bech32 as age uses it, against BIP 173's test vectors (written by hand: see recipients/bech32.py)."""

from __future__ import annotations

import pytest

from conftest import refused
from modelseal.errors import IntegrityError
from modelseal.recipients import bech32

# BIP 173, "Test vectors": valid Bech32 strings.
VALID = [
    "A12UEL5L",
    "a12uel5l",
    "an83characterlonghumanreadablepartthatcontainsthenumber1andtheexcludedcharactersbio1tt5tgs",
    "abcdef1qpzry9x8gf2tvdw0s3jn54khce6mua7lmqqqxw",
    "11" + "q" * 82 + "c8247j",  # 90 characters, the longest BIP 173 allows
    "split1checkupstagehandshakeupstreamerranterredcaperred2y9e3w",
    "?1ezyfcl",
]

# BIP 173: invalid Bech32 strings and why.
INVALID = [
    ("\x201nwldj5", "human-readable"),  # HRP character out of range
    ("\x7f1axkwrx", "human-readable"),
    ("\x801eym55h", "human-readable"),
    ("pzry9x0s0muk", "separator"),  # no separator character
    ("1pzry9x0s0muk", "separator"),  # empty HRP
    ("x1b4n0q5v", "alphabet"),  # invalid data character
    ("li1dgmt3", "separator"),  # too short checksum
    ("de1lg7wt\xff", "alphabet"),  # invalid character in checksum
    ("A1G7SGD8", "checksum"),  # checksum calculated with the upper-case form of the HRP
    ("10a06t8", "separator"),  # empty HRP
    ("1qzzfhee", "separator"),  # empty HRP
]

# BIP 173: segwit addresses; the data after the witness version regroups into the witness program.
SEGWIT = [
    ("BC1QW508D6QEJXTDG4Y5R3ZARVARY0C5XW7KV8F3T4", "751e76e8199196d454941c45d1b3a323f1433bd6"),
    ("tb1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3q0sl5k7",
     "1863143c14c5166804bd19203356da136c985678cd4d27a1b8c6329604903262"),
    ("tb1qqqqqp399et2xygdj5xreqhjjvcmzhxw4aywxecjdzew6hylgvsesrxh6hy",
     "000000c4a5cad46221b2a187905e5266362b99d5e91c6ce24d165dab93e86433"),
]


@pytest.mark.parametrize("text", VALID)
def test_bip173_valid_strings_pass_the_checksum(text):
    hrp, _ = bech32.decode_words(text, "vector")
    assert hrp == text[:text.rfind("1")]


@pytest.mark.parametrize("text,says", INVALID)
def test_bip173_invalid_strings_are_refused_in_one_line(text, says):
    with refused(IntegrityError, match=says):
        bech32.decode_words(text, "vector")


@pytest.mark.parametrize("address,program", SEGWIT)
def test_bip173_segwit_programs_regroup_from_five_bits(address, program):
    _, words = bech32.decode_words(address, "vector")
    regrouped = bech32._convert(words[1:], 5, 8, pad=False)
    assert regrouped is not None and bytes(regrouped).hex() == program


def test_age_lifts_the_90_character_limit():
    """BIP 173 refuses this one only for its length; age.md has no length limit, nor do we."""
    text = "an84characterslonghumanreadablepartthatcontainsthenumber1andtheexcludedcharactersbio1569pvx"
    assert len(text) > 90
    assert bech32.decode_words(text, "vector")[0].startswith("an84")


@pytest.mark.parametrize("hrp", ["age", "AGE-SECRET-KEY-"])
@pytest.mark.parametrize("data", [b"", b"\x00", bytes(range(32)), b"\xff" * 33])
def test_encode_decode_round_trip_keeps_the_case(hrp, data):
    text = bech32.encode(hrp, data)
    assert text == (text.upper() if hrp.isupper() else text.lower())
    assert bech32.decode(text, "round trip") == (hrp, data)


def test_bad_padding_is_refused():
    """5-bit data whose bits do not regroup into whole bytes (age's convertBits without padding)."""
    for words in ([0, 0, 0, 0, 1], [0]):  # non-zero padding; a lone group of 5 bits is too much padding
        mod = bech32._polymod(bech32._hrp_expand("age") + words + [0] * 6) ^ 1
        text = "age1" + "".join(bech32.CHARSET[w] for w in words + [(mod >> 5 * (5 - i)) & 31 for i in range(6)])
        bech32.decode_words(text, "vector")  # the checksum is fine
        with refused(IntegrityError, match="padding"):
            bech32.decode(text, "vector")
