"""Requests to one registry, with the auth flow; credentials only ever go to their own origin.

The flow, as `docker` does it: a request goes out anonymous (or with what an
earlier challenge taught us); a 401 carries `WWW-Authenticate`:

- `Basic realm=...`: resend with the Docker config's username and password,
  to the registry itself;
- `Bearer realm=URL,service=S,scope=...`: ask the token endpoint at URL for
  a token for S and the scope (our own `repository:REPO:pull[,push]` when the
  challenge names none), with the username and password as Basic auth, or
  the `identitytoken` as an OAuth2 refresh token (POST), or anonymously;
  then resend to the registry with `Authorization: Bearer <token>`.

Each request answers at most one challenge, so a refused credential is a
denial (exit 3), not a loop; an expired token is simply fetched again on the
next 401. Who gets what:

- the registry origin gets the Basic credentials only when it asked for
  Basic, else only the bearer token;
- the token endpoint gets the Docker config's credentials, never a token;
- any other origin (an upload Location elsewhere, a blob redirected to
  storage) gets no Authorization from us (and requests drops the header
  when a redirect leaves the host).

The token endpoint must be https unless allow_http is set, like the registry.
"""

from __future__ import annotations

import re
import threading
from typing import Any
from urllib.parse import urlencode, urlsplit

from .. import retry, untrusted, web
from ..connection import Connection
from ..errors import DeniedError, IntegrityError, UsageError
from . import credentials
from .reference import Reference

_PARAM = re.compile(r'\s*([A-Za-z][\w-]*)\s*=\s*("(?:[^"\\]|\\.)*"|[^,\s]*)\s*,?')
_TOKEN = re.compile(r"[\x21-\x7e]{1,16384}")
MAX_TOKEN_ANSWER = 1 << 20


def parse_challenge(value: str | None) -> tuple[str, dict[str, str]]:
    """`Bearer realm="...",service="...",scope="..."` -> ("bearer", {...}); the first challenge only."""
    m = re.match(r"\s*([A-Za-z][\w-]*)\s*(.*)$", value or "", re.S)
    if not m:
        return "", {}
    params: dict[str, str] = {}
    rest = m.group(2)
    while rest:
        p = _PARAM.match(rest)
        if not p or not p.group(0):
            break
        raw = p.group(2)
        params[p.group(1).lower()] = re.sub(r"\\(.)", r"\1", raw[1:-1]) if raw.startswith('"') else raw
        rest = rest[p.end():]
    return m.group(1).lower(), params


class Registry:
    """One repository on one registry. `request` has the signature of web.Client.request,
    so web.request_small works on it too."""

    def __init__(self, ref: Reference, connection: Connection, *, push: bool = False) -> None:
        self.ref = ref
        self.connection = connection
        self.what = str(ref)
        scheme = "http" if connection.allow_http else "https"
        web.check_scheme(scheme, ref.host, connection, self.what)
        self.base = f"{scheme}://{ref.registry}"
        self.origin = web.origin(self.base)
        self.scope = f"repository:{ref.repository}:{'pull,push' if push else 'pull'}"
        self.client = web.Client(connection, redirects=True)  # blobs redirect to storage; credentials stay here
        self.credentials = credentials.lookup(ref.registry)
        self._lock = threading.Lock()
        self._authorization: str | None = None
        if self.credentials is not None:
            retry.log().info("registry_credentials", registry=ref.registry, config=self.credentials.source)
            if self.credentials.registry_token:
                self._authorization = "Bearer " + self.credentials.registry_token

    def url(self, path: str) -> str:
        """A URL of this repository's API: path is /manifests/REF, /blobs/DIGEST or /blobs/uploads/."""
        return f"{self.base}/v2/{self.ref.repository}{path}"

    def request(self, method: str, url: str, what: str, *, headers: dict[str, str] | None = None,
                json: Any = None, data: Any = None) -> Any:
        """One request (not retried here) that answers one 401 challenge of the registry and resends.

        `data` must be bytes (it may be sent twice)."""
        own = web.origin(url) == self.origin
        for attempt in (1, 2):
            with self._lock:
                sent = self._authorization if own else None
            h = dict(headers or {})
            if sent:
                h["Authorization"] = sent
            resp = self.client.request(method, url, what, headers=h, json=json, data=data)
            if resp.status_code != 401 or not own or web.origin(resp.url) != self.origin:
                return resp
            challenge = resp.headers.get("WWW-Authenticate")
            resp.close()
            if attempt == 2:
                raise self._refused(sent, what)
            answer = self._answer(challenge, sent, what)
            with self._lock:
                self._authorization = answer
        raise AssertionError("unreachable")

    def _refused(self, sent: str | None, what: str) -> DeniedError:
        """The registry said 401 to what its own challenge asked for."""
        if sent and sent.startswith("Basic ") and self.credentials is not None:
            return DeniedError(f"{what}: the registry refused the credentials from {self.credentials.source} "
                               "(HTTP 401)")
        return DeniedError(f"{what}: denied (HTTP 401): the token does not grant {self.scope}")

    def _answer(self, challenge: str | None, sent: str | None, what: str) -> str:
        scheme, params = parse_challenge(challenge)
        creds = self.credentials
        if scheme == "basic":
            basic = creds.basic if creds else None
            if basic is None:
                raise DeniedError(f"{what}: the registry asks for a username and password, and no Docker config "
                                  f"(DOCKER_CONFIG, ~/.docker/config.json) has them for {self.ref.registry}")
            if sent == basic:
                assert creds is not None  # basic came from them
                raise DeniedError(f"{what}: the registry refused the credentials from {creds.source} (HTTP 401)")
            return basic
        if scheme == "bearer":
            return "Bearer " + self._token(params)
        if not scheme:
            raise DeniedError(f"{what}: denied (HTTP 401, no challenge)")
        raise DeniedError(f"{what}: denied (HTTP 401); unsupported auth scheme {scheme!r}")

    def _token(self, params: dict[str, str]) -> str:
        """A bearer token from the challenge's realm (the distribution token spec)."""
        realm = params.get("realm", "")
        parts = urlsplit(realm)
        what = f"token endpoint {parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}{parts.path}"
        if not parts.hostname or "@" in parts.netloc:
            raise IntegrityError(f"{self.what}: the registry's bearer challenge has no usable realm")
        web.check_scheme(parts.scheme, parts.hostname, self.connection, what)
        query = [("service", params["service"])] if params.get("service") else []
        query += [("scope", s) for s in (params.get("scope") or self.scope).split()]
        creds = self.credentials
        if creds is not None and creds.identity_token:
            form = urlencode([("grant_type", "refresh_token"), ("refresh_token", creds.identity_token),
                              ("client_id", "modelseal"), *query])
            _, body = web.request_small(self.client, "POST", realm, what, data=form,
                                        headers={"Content-Type": "application/x-www-form-urlencoded"},
                                        max_bytes=MAX_TOKEN_ANSWER)
        else:
            headers = {}
            if creds is not None and creds.basic:
                headers["Authorization"] = creds.basic
                query.append(("account", creds.username or ""))
            url = realm + ("&" if parts.query else "?") + urlencode(query)
            _, body = web.request_small(self.client, "GET", url, what, headers=headers,
                                        max_bytes=MAX_TOKEN_ANSWER)
        answer = untrusted.json_document(body, what)
        token = (answer.get("token") or answer.get("access_token")) if isinstance(answer, dict) else None
        if not isinstance(token, str) or not _TOKEN.fullmatch(token):
            raise IntegrityError(f"{what}: the answer holds no token")
        return token


def check_push_target(ref: Reference) -> None:
    if ref.digest:
        raise UsageError(f"{ref}: push to a tag (oci://REGISTRY/REPO:TAG); the digest is known only after the push")
