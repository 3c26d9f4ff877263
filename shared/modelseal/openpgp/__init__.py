"""Symmetric OpenPGP messages (`gpg -c`), decrypted as a stream in constant memory.

A streaming implementation on `cryptography` and the standard library, not
the `gpg` binary driven through pipes: the decrypt image carries no gpg,
agent or pinentry, no passphrase is handed to another process, and the
errors are ours (categorised, one line, exit 4, nothing half-written). Why
this design, how it is fast and what it costs: docs/OPENPGP.md.

What is accepted (RFC 4880 / RFC 9580, version 4 symmetric messages):
    [marker | PKESK (skipped) | SKESK v4]...  SEIPD v1 (tag 18) with its MDC
    inside: [compressed data (tag 8: uncompressed, ZIP, ZLIB, BZip2)]
            literal data (tag 11), optionally with one-pass signature and
            signature packets around it (skipped: there is no public key to
            check them against; the MDC protects the whole message)
with old- and new-format packet headers, partial body lengths at every level
and old-format indeterminate lengths. Refused with IntegrityError (exit 4)
and a one-line reason: a symmetrically encrypted packet without MDC (tag 9,
"no integrity protection"), AEAD (tag 20, SEIPD v2, SKESK v5/v6), Twofish,
Argon2 and GNU S2K, ASCII armor (dearmor first), public-key-only messages,
and anything malformed, truncated, tampered with or followed by extra data.

Release rule: plaintext is released as it is decrypted; the last chunk only
after the MDC and every other check passed (see mdc.py), so consumers write
to NAME.partial or a staging directory that are removed on failure.

Modules: packets (framing), s2k and session_keys (passphrase to key),
ciphers and cfb (decryption), mdc (integrity), inflate (compressed data),
buffers (pooled memory), reader (the layers put together).
"""

from .reader import DecryptingReader
from .s2k import MAX_S2K_COUNT, S2K_BUDGET

__all__ = ["DecryptingReader", "MAX_S2K_COUNT", "S2K_BUDGET"]
