"""Plain HTTP(S) plumbing shared by the https, vault, vault-transit and kbs backends.

One place decides: which URL the server sees (our own query parameters are
taken out, the rest is kept byte for byte so presigned URLs stay valid),
whether plain http is allowed (only with `allow_http`, and logged; loopback
only for the CDH), how TLS is set up (CA bundle, client certificate), where
a bearer token comes from (a file, read at each request so a rotated
projected token is picked up), and how a small secret is fetched under the
retry policy with a size cap and a timeout.

`requests` is imported lazily: discovery imports every backend module, and
the decrypt and unpack images do not ship it.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import fields
from typing import Any
from urllib.parse import unquote_plus, urlsplit, urlunsplit

from . import extras, retry
from .errors import IntegrityError, UsageError, from_os_error
from .uri import URI, Options

#: Query parameters that are ours, not the server's (plus every Options field).
OWN_PARAMS = frozenset({f.name for f in fields(Options)} - {"extra"}) | frozenset({
    "field", "encoding", "backoff", "backoff_max", "part_size",
})
#: The largest key or secret answer we accept.
MAX_SECRET = 1 << 20


def server_url(uri: URI, scheme: str | None = None) -> str:
    """The URL to request: the URI without our own query parameters."""
    parts = urlsplit(uri.raw)
    kept = [p for p in parts.query.split("&") if p and unquote_plus(p.split("=", 1)[0]) not in OWN_PARAMS]
    return urlunsplit((scheme or parts.scheme, parts.netloc, parts.path, "&".join(kept), ""))


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_scheme(scheme: str, host: str, options: Options, what: str, *, loopback_ok: bool = False) -> None:
    """https always; plain http only with allow_http (warned), or to loopback where that is the design."""
    if scheme == "https":
        return
    if scheme != "http":
        raise UsageError(f"{what}: unsupported URL scheme {scheme!r}")
    if loopback_ok and is_loopback(host):
        return
    if not options.allow_http:
        raise UsageError(f"{what}: plain http is refused; use https, or pass allow_http explicitly")
    retry.log().warning("plain_http", what=what,
                        note="allow_http is set: this connection is not encrypted or authenticated")


def read_secret_file(path: str, what: str) -> str:
    """A token or JWT from a file (Kubernetes projects and rotates these)."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_SECRET + 1)
    except OSError as exc:
        raise from_os_error(exc, f"{what} file {path}") from None
    if len(data) > MAX_SECRET:
        raise UsageError(f"{what} file {path} is too large")
    text = data.decode("utf-8", "replace").strip()
    if not text:
        raise UsageError(f"{what} file {path} is empty")
    return text


def _check_file(path: str | None, what: str) -> None:
    if path and not os.path.isfile(path):
        raise UsageError(f"{what} {path} does not exist")


class _Bearer:
    """requests auth hook: the bearer token, read from its file at each request.

    Set as the session's auth even without a token, so requests never falls
    back to ~/.netrc credentials (which would also replace our header). On a
    redirect to another host requests drops the header and does not re-apply
    this hook, so the token never follows a redirect off its host.
    """

    def __init__(self, token_file: str | None) -> None:
        self.token_file = token_file

    def __call__(self, r: Any) -> Any:
        if self.token_file:
            r.headers["Authorization"] = "Bearer " + read_secret_file(self.token_file, "token")
        return r


class Client:
    """A requests.Session with the TLS settings of `options`, passed on every request.

    verify/cert go with each request, not on the session: requests lets
    REQUESTS_CA_BUNDLE override a session's CA, never a request's. Proxies
    from the environment are honoured (`use_env`), except for loopback
    services such as the CDH.
    """

    def __init__(self, options: Options, *, bearer: bool = False, use_env: bool = True) -> None:
        requests = extras.require("requests", "HTTP(S)")
        _check_file(options.ca, "CA bundle")
        _check_file(options.cert, "client certificate")
        _check_file(options.cert_key, "client key")
        self.options = options
        self.verify: Any = options.ca or True
        self.cert: Any = None
        if options.cert:
            self.cert = (options.cert, options.cert_key) if options.cert_key else options.cert
        allow_http = options.allow_http

        class Session(requests.Session):
            def rebuild_auth(self, prepared: Any, response: Any) -> None:
                # Called before each redirect is followed: refuse a downgrade before it is sent.
                if urlsplit(prepared.url).scheme != "https" and not allow_http:
                    response.close()
                    raise UsageError("redirected to plain http; refused (allow_http is not set)")
                super().rebuild_auth(prepared, response)

        s = Session()
        s.trust_env = use_env
        s.auth = _Bearer(options.token_file if bearer else None)
        s.max_redirects = 5
        s.headers["Accept-Encoding"] = "identity"
        s.headers["User-Agent"] = "modelseal"
        self.session = s

    def request(self, method: str, url: str, what: str, *, headers: dict[str, str] | None = None,
                json: Any = None, data: Any = None) -> Any:
        """One streaming request (not retried here); a redirect to plain http is refused."""
        try:
            return self.session.request(method, url, headers=headers, json=json, data=data, stream=True,
                                        timeout=timeouts(self.options), verify=self.verify, cert=self.cert)
        except UsageError as exc:
            raise UsageError(f"{what}: {exc}") from None


def timeouts(options: Options) -> tuple[float, float]:
    if options.timeout <= 0:
        raise UsageError("timeout must be positive")
    return (options.timeout, options.timeout)


def request_small(client: Client, method: str, url: str, what: str, *,
                  headers: dict[str, str] | None = None, json: Any = None, data: Any = None,
                  ok: tuple[int, ...] = (200,), statuses: dict[int, type] | None = None,
                  max_bytes: int = MAX_SECRET) -> tuple[int, bytes]:
    """One request for a small answer (a key, a token, a JSON document), under the retry policy.

    `statuses` maps an HTTP status to the ModelsealError class it means for
    this API (e.g. Vault transit answers 400 when a ciphertext does not
    authenticate). Returns (status, body).
    """
    def once() -> tuple[int, bytes]:
        resp = client.request(method, url, what, headers=headers, json=json, data=data)
        try:
            status = resp.status_code
            if statuses and status in statuses:
                raise statuses[status](f"{what}: rejected (HTTP {status})")
            retry.check_status(status, what, resp.headers, ok)
            body = resp.raw.read(max_bytes + 1, decode_content=False)
            if len(body) > max_bytes:
                raise IntegrityError(f"{what}: answer is larger than {max_bytes} bytes")
            length = resp.headers.get("Content-Length")
            if length is not None and length.isdigit() and int(length) != len(body):
                raise retry.TransientError(f"body cut short ({len(body)} of {length} bytes)")
            return status, body
        finally:
            resp.close()

    return retry.call(what, client.options, once)
