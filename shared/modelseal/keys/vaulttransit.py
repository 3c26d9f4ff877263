"""`vault-transit://host:port/<mount>/<key>`: envelope encryption with Vault's transit engine.

Like aws-kms, but the key-encryption key lives in Vault: `seal` posts the
fresh data key to `/v1/<mount>/encrypt/<key>` and stores the returned
`vault:v1:...` ciphertext in the header's `wrapped_key`; `fetch-key` posts it
to `/v1/<mount>/decrypt/<key>` and gets the data key back (base64). The
transit key never leaves Vault and can be rotated (old versions keep
decrypting) or have decryption revoked by policy. With a single path segment
the mount is `transit`.

Authentication and TLS are those of `vault://` (Kubernetes auth with `role=`,
or `token_file=`). Vault answers 400 when a ciphertext does not authenticate
under the key (tampered, or another key): exit 4.
"""

from __future__ import annotations

import base64
import binascii

from .. import untrusted
from ..connection import Connection
from ..errors import IntegrityError, UsageError
from ..sealheader import DATA_KEY_SIZE, WrappedKey
from ..uri import URI
from . import KeySource
from .vault import VaultClient, _path, split_mount

SCHEMES = ("vault-transit",)
PROVIDER = "vault-transit"


class Backend(KeySource):
    unwraps = True
    provider = PROVIDER

    def __init__(self, uri: URI, connection: Connection) -> None:
        super().__init__(uri, connection)
        self.what = uri.redacted()
        self.mount, rest = split_mount(uri, self.connection, self.what, default_mount="transit")
        if len(rest) != 1:
            raise UsageError(f"{self.what}: the URI is vault-transit://host:port/<mount>/<key>")
        self.key = rest[0]
        self.key_id = f"{self.mount}/{self.key}"
        self.vault = VaultClient(uri, self.connection, self.what)

    def _api(self, op: str) -> str:
        return f"{_path(self.mount.split('/'))}/{op}/{_path([self.key])}"

    def material(self, wrapped: WrappedKey | None) -> bytes:
        wrapped = self.unwrappable(wrapped, {}, self.what)
        try:
            ciphertext = wrapped.ciphertext.decode("ascii")
        except UnicodeDecodeError:
            raise IntegrityError(f"{self.what}: the wrapped key is not a Vault ciphertext") from None
        if not ciphertext.startswith("vault:v"):
            raise IntegrityError(f"{self.what}: the wrapped key is not a Vault ciphertext")
        answer = self.vault.request("POST", self._api("decrypt"), json_body={"ciphertext": ciphertext},
                                    statuses={400: IntegrityError})
        plaintext = untrusted.member(answer, "data.plaintext", self.what)
        if not isinstance(plaintext, str):
            raise IntegrityError(f"{self.what}: Vault's decrypt answer has no plaintext")
        try:
            return base64.b64decode(plaintext, validate=True)
        except (binascii.Error, ValueError):
            raise IntegrityError(f"{self.what}: Vault's plaintext is not base64") from None

    def wrap(self, data_key: bytes) -> WrappedKey:
        if len(data_key) != DATA_KEY_SIZE:
            raise UsageError(f"data key must be {DATA_KEY_SIZE} bytes")
        answer = self.vault.request("POST", self._api("encrypt"),
                                    json_body={"plaintext": base64.b64encode(data_key).decode()})
        ciphertext = untrusted.member(answer, "data.ciphertext", self.what)
        if not isinstance(ciphertext, str) or not ciphertext.startswith("vault:v"):
            raise IntegrityError(f"{self.what}: Vault's encrypt answer has no ciphertext")
        return WrappedKey(provider=PROVIDER, key_id=self.key_id, ciphertext=untrusted.utf8(ciphertext, self.what),
                          context={})

    def wrapped_by(self, key_id: str) -> bool:
        return key_id == self.key_id
