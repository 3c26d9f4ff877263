"""`aws-kms://<key-id | alias/name | key or alias ARN>`: envelope encryption with AWS KMS.

The data key of a `.seal` file is random and per file; KMS only ever sees
those 32 bytes, never the model. `seal` asks KMS to Encrypt the fresh data
key and stores the result in the header's `wrapped_key`; `fetch-key` asks
KMS to Decrypt it. The KMS key never leaves KMS, access is an IAM decision
(IRSA / Pod Identity role of the pod), and every unwrap is in CloudTrail.

The encryption context is `{"modelseal": "v2"}` (the format version `seal`
writes; version 1 files carry `{"modelseal": "v1"}`) plus any
`context.NAME=VALUE` query parameters given to `seal`. It is stored with the
wrapped key (a v2 `kms` stanza, v1's `wrapped_key`) and passed back to
Decrypt as stored, which fails unless it matches exactly (KMS authenticates
it): so files of either version open, and CloudTrail says which was opened.
`context.NAME=VALUE` given to `fetch-key` must also appear in the header, so
a pod can insist on, say, `context.model=llama` and refuse other files.

Decrypt is called with `KeyId` set to the URI's key, so a file wrapped by
another key is refused rather than unwrapped by whatever key made it.
InvalidCiphertextException / IncorrectKeyException (wrong context, wrong key,
tampered blob) exit 4; AccessDenied / NotFound / disabled exit 3.
"""

from __future__ import annotations

from typing import Any

from .. import aws
from ..connection import Connection
from ..errors import IntegrityError, UsageError
from ..sealheader import DATA_KEY_SIZE, WrappedKey
from ..uri import URI
from . import KeySource

SCHEMES = ("aws-kms",)
PROVIDER = "aws-kms"
BASE_CONTEXT = {"modelseal": "v2"}


class Backend(KeySource):
    unwraps = True
    provider = PROVIDER

    def __init__(self, uri: URI, connection: Connection) -> None:
        super().__init__(uri, connection)
        self.key_id = (uri.netloc + uri.path).strip("/")
        if not self.key_id:
            raise UsageError("aws-kms: the URI needs a key: aws-kms://<key-id|alias/name|arn>")
        self.what = f"aws-kms://{self.key_id}"
        self.user_context = {k[len("context."):]: v for k, v in self.connection.extra.items()
                             if k.startswith("context.") and len(k) > len("context.")}
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = aws.client("kms", self.connection, region=aws.region_of_arn(self.key_id),
                                      require_region=True)
        return self._client

    def material(self, wrapped: WrappedKey | None) -> bytes:
        wrapped = self.unwrappable(wrapped, self.user_context, self.what)
        resp = aws.call(self.what, self.connection, self.client.decrypt,
                        CiphertextBlob=wrapped.ciphertext, KeyId=self.key_id,
                        EncryptionContext=dict(wrapped.context))
        plaintext = resp.get("Plaintext") if isinstance(resp, dict) else None
        if not isinstance(plaintext, bytes):
            raise IntegrityError(f"{self.what}: KMS's Decrypt answer has no plaintext")
        return plaintext

    def wrap(self, data_key: bytes) -> WrappedKey:
        if len(data_key) != DATA_KEY_SIZE:
            raise UsageError(f"data key must be {DATA_KEY_SIZE} bytes")
        context = dict(BASE_CONTEXT)
        context.update(self.user_context)
        resp = aws.call(self.what, self.connection, self.client.encrypt,
                        KeyId=self.key_id, Plaintext=data_key, EncryptionContext=context)
        blob = resp.get("CiphertextBlob") if isinstance(resp, dict) else None
        kid = resp.get("KeyId") if isinstance(resp, dict) else None
        if not isinstance(blob, bytes) or not blob:
            raise IntegrityError(f"{self.what}: KMS's Encrypt answer has no ciphertext")
        return WrappedKey(provider=PROVIDER, key_id=kid if isinstance(kid, str) and kid else self.key_id,
                          ciphertext=blob, context=context)

    def wrapped_by(self, key_id: str) -> bool:
        """KMS names the wrapping key by its ARN; the URI may give the ARN, the key id or an alias (then
        DescribeKey, a call only rewrap --remove makes, resolves it)."""
        mine = self.key_id
        if key_id == mine or (not mine.startswith(("arn:", "alias/")) and key_id.endswith(f":key/{mine}")):
            return True
        if "alias/" not in mine:
            return False
        resp = aws.call(self.what, self.connection, self.client.describe_key, KeyId=mine)
        meta = resp.get("KeyMetadata") if isinstance(resp, dict) else None
        return isinstance(meta, dict) and meta.get("Arn") == key_id
