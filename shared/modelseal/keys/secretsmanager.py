"""`secretsmanager://<secret name or ARN>`: a key stored in AWS Secrets Manager.

GetSecretValue with the pod's AWS identity (IRSA / Pod Identity), under the
retry policy. A SecretString is taken as text (base64 or hex by default,
`field=` picks a member of a JSON secret); a SecretBinary is taken as bytes
(raw 32 bytes by default). `version_id=` or `version_stage=` pin a version
(the default is AWSCURRENT). A missing secret or a denied read exits 3.
The name is percent-decoded, so a secret named `team@example` is
`secretsmanager://team%40example` (user info in a URI is refused).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

from .. import aws, untrusted
from ..connection import Connection
from ..errors import IntegrityError, UsageError
from ..sealheader import WrappedKey
from ..uri import URI
from . import KeySource

SCHEMES = ("secretsmanager",)


class Backend(KeySource):
    def __init__(self, uri: URI, connection: Connection) -> None:
        super().__init__(uri, connection)
        # Percent-decoded: a name may hold "@" (as %40), which the URI's authority refuses.
        self.secret_id = unquote((uri.netloc + uri.path).strip("/"))
        if not self.secret_id:
            raise UsageError("secretsmanager: the URI needs a secret: secretsmanager://<name-or-arn>")
        self.what = f"secretsmanager://{self.secret_id}"

    def material(self, wrapped: WrappedKey | None) -> bytes:
        client: Any = aws.client("secretsmanager", self.connection, region=aws.region_of_arn(self.secret_id),
                                 require_region=True)
        kwargs: dict[str, Any] = {"SecretId": self.secret_id}
        if self.connection.extra.get("version_id"):
            kwargs["VersionId"] = self.connection.extra["version_id"]
        if self.connection.extra.get("version_stage"):
            kwargs["VersionStage"] = self.connection.extra["version_stage"]
        resp = aws.call(self.what, self.connection, client.get_secret_value, **kwargs)
        binary = resp.get("SecretBinary") if isinstance(resp, dict) else None
        string = resp.get("SecretString") if isinstance(resp, dict) else None
        if isinstance(binary, bytes):
            return binary
        if isinstance(string, str):
            return untrusted.utf8(string, f"{self.what}: the SecretString")
        raise IntegrityError(f"{self.what}: the secret has no value")
