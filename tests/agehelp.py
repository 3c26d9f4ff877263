"""age v1 files for the interop tests, written and read as C2SP age.md specifies them.

The header: the version line, stanzas (`-> type args...`, then the body in
unpadded base64 wrapped at 64 columns, ending with a shorter line), then
`--- ` and the header MAC = HMAC-SHA-256(HKDF-SHA-256(file key, salt empty,
info "header"), every byte up to and including `---`). The payload: a
16-byte nonce, then STREAM: 64 KiB chunks of ChaCha20-Poly1305 under
HKDF-SHA-256(file key, salt = nonce, info "payload"), nonce = 11-byte
big-endian counter || 0x01 on the final chunk, else 0x00.

This is the test's own reading of the spec, independent of the code under
test: only the stanza (type, args, body) passes between the two.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

VERSION_LINE = b"age-encryption.org/v1\n"
CHUNK = 64 << 10


def _hkdf(ikm: bytes, salt: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(ikm)


def header_mac(file_key: bytes, upto_dashes: bytes) -> bytes:
    return hmac.new(_hkdf(file_key, b"", b"header"), upto_dashes, hashlib.sha256).digest()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


@dataclass
class RawStanza:
    type: str
    args: list[str]
    body_b64: str  # as written in the file (possibly not canonical: the vectors test that)


@dataclass
class AgeFile:
    stanzas: list[RawStanza]
    upto_dashes: bytes  # what the MAC covers
    mac: bytes
    payload: bytes


def write(file_key: bytes, stanzas: list[tuple[str, list[str], bytes]], plaintext: bytes,
          nonce: bytes | None = None) -> bytes:
    """A whole age file around stanzas made elsewhere."""
    out = bytearray(VERSION_LINE)
    for type_, args, body in stanzas:
        out += ("-> " + " ".join([type_, *args]) + "\n").encode()
        text = b64(body)
        lines = [text[i:i + 64] for i in range(0, len(text), 64)]
        if not lines or len(lines[-1]) == 64:
            lines.append("")
        out += "".join(line + "\n" for line in lines).encode()
    out += b"---"
    mac = header_mac(file_key, bytes(out))
    out += b" " + b64(mac).encode() + b"\n"
    nonce = os.urandom(16) if nonce is None else nonce
    return bytes(out) + nonce + stream_encrypt(file_key, nonce, plaintext)


def parse(data: bytes) -> AgeFile:
    """Split an age file into its stanzas, the MAC and the payload (strict about the layout only)."""
    assert data.startswith(VERSION_LINE), "not an age v1 file"
    pos = len(VERSION_LINE)
    stanzas: list[RawStanza] = []
    while data.startswith(b"-> ", pos):
        end = data.index(b"\n", pos)
        type_, *args = data[pos + 3:end].decode().split(" ")
        pos = end + 1
        body = ""
        while True:
            end = data.index(b"\n", pos)
            line = data[pos:end].decode()
            pos = end + 1
            body += line
            if len(line) < 64:
                break
        stanzas.append(RawStanza(type_, args, body))
    assert data.startswith(b"--- ", pos), "no header MAC line"
    upto = data[:pos + 3]
    end = data.index(b"\n", pos)
    mac = unb64(data[pos + 4:end].decode())
    return AgeFile(stanzas, upto, mac, data[end + 1:])


def _chunk_nonce(i: int, last: bool) -> bytes:
    return i.to_bytes(11, "big") + (b"\x01" if last else b"\x00")


def stream_encrypt(file_key: bytes, nonce: bytes, plaintext: bytes) -> bytes:
    aead = ChaCha20Poly1305(_hkdf(file_key, nonce, b"payload"))
    chunks = [plaintext[i:i + CHUNK] for i in range(0, len(plaintext), CHUNK)] or [b""]
    return b"".join(aead.encrypt(_chunk_nonce(i, i == len(chunks) - 1), c, None) for i, c in enumerate(chunks))


def stream_decrypt(file_key: bytes, payload: bytes) -> bytes:
    nonce, rest = payload[:16], payload[16:]
    aead = ChaCha20Poly1305(_hkdf(file_key, nonce, b"payload"))
    size = CHUNK + 16
    chunks = [rest[i:i + size] for i in range(0, len(rest), size)]
    return b"".join(aead.decrypt(_chunk_nonce(i, i == len(chunks) - 1), c, None) for i, c in enumerate(chunks))
