"""`https://host/path` (and `http://` only with allow_http, logged): a key from a web key server.

One GET under the retry policy, with a bearer token read from `token_file`
(a projected service-account token works: it is read again at each
request), a client certificate (`cert`, `cert_key`) and a CA bundle (`ca`).
The answer is capped at 1 MiB and then goes through `field=` and
`encoding=` like every fetched key. Query parameters that are ours
(`ca=`, `token_file=`, `field=`, ...) are removed from the URL the server
sees; any other query is passed on unchanged.

Certificate failures (an untrusted server, a refused client certificate) are
not retried and exit 3: they will not fix themselves. A redirect is an error
(exit 2): the token and certificate are for this server only (web.Client).
"""

from __future__ import annotations

from typing import Any

from .. import web
from ..connection import Connection
from ..sealheader import WrappedKey
from ..uri import URI
from . import KeySource

SCHEMES = ("https", "http")


class Backend(KeySource):
    def __init__(self, uri: URI, connection: Connection) -> None:
        super().__init__(uri, connection)  # URI.parse has refused user info
        self.what = uri.redacted()
        web.check_scheme(uri.scheme, uri.hostname, self.connection, self.what)
        self.url = web.server_url(uri)
        self._client: Any = None

    def material(self, wrapped: WrappedKey | None) -> bytes:
        if self._client is None:
            self._client = web.Client(self.connection, bearer=True)
        _, body = web.request_small(self._client, "GET", self.url, self.what)
        return body
