"""Plain HTTP(S) plumbing shared by the https, vault, vault-transit and kbs backends.

One place decides: which URL the server sees (our own query parameters are
taken out, the rest is kept byte for byte so presigned URLs stay valid),
whether plain http is allowed (only with `allow_http`, and logged; loopback
only for the CDH), how TLS is set up (CA bundle, client certificate), where
a bearer token comes from (a file, read at each request so a rotated
projected token is picked up), how a small secret is fetched under the
retry policy with a size cap and a timeout, which redirects are followed and
with which credentials (Client: none from key services; downloads send
credentials only to the origin given), how an endpoint URL is parsed
(parse_endpoint: once, with urlsplit's hostname), and how the length headers
of an answer are read (a malformed one is an integrity error).

`requests` is imported lazily: discovery imports every backend module, and
the decrypt and unpack images do not ship it.
"""

from __future__ import annotations

import http.client
import http.cookiejar
import ipaddress
import os
import re
from dataclasses import fields
from typing import Any, Protocol
from urllib.parse import SplitResult, unquote_plus, urljoin, urlsplit, urlunsplit

from . import extras, retry, untrusted
from .connection import Connection
from .errors import IntegrityError, UsageError, from_os_error
from .uri import URI

#: Query parameters that are ours, not the server's (plus every Connection field).
OWN_PARAMS = frozenset({f.name for f in fields(Connection)} - {"extra"}) | frozenset({
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


#: What an endpoint URL may contain: printable ASCII, no space, no backslash.
_ENDPOINT_CHARS = re.compile(r"[!-\[\]-~]+", re.ASCII)


def parse_endpoint(url: str, what: str, connection: Connection, *, loopback_ok: bool = False) -> SplitResult:
    """An endpoint URL (endpoint_url, AWS_ENDPOINT_URL*, cdh_url, a Vault address), parsed once.

    The host that decides "loopback" and "plain http" is `urlsplit(url).hostname`,
    the host urllib3 and botocore connect to. User info (any `@`), a query and a fragment
    are refused, as are spaces, control characters and backslashes: each is
    where URL parsers disagree (`http://HOST#@127.0.0.1` connects to HOST), and
    none has a use in an endpoint. Messages never repeat the URL (it may carry
    a password).
    """
    if not isinstance(url, str) or not _ENDPOINT_CHARS.fullmatch(url):
        raise UsageError(f"{what}: the URL is empty or has spaces, control characters or backslashes")
    parts = urlsplit(url)
    if "?" in url or "#" in url:
        raise UsageError(f"{what}: a query or fragment is refused in an endpoint URL")
    if "@" in url:  # user info, also a secret holding "/" (uri.has_user_info); no endpoint needs an "@"
        raise UsageError(f"{what}: user info (user:password@) is refused in an endpoint URL; "
                         "credentials come from token files or the SDK's credential chain")
    if not parts.hostname:
        raise UsageError(f"{what}: the URL needs a scheme and a host, e.g. https://host:port")
    try:
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        raise UsageError(f"{what}: the URL has a malformed port") from None
    check_scheme(parts.scheme.lower(), parts.hostname, connection, what, loopback_ok=loopback_ok)
    return parts


def check_scheme(scheme: str, host: str, connection: Connection, what: str, *, loopback_ok: bool = False) -> None:
    """https always; plain http only with allow_http (warned), or to loopback where that is the design."""
    if scheme == "https":
        return
    if scheme != "http":
        raise UsageError(f"{what}: unsupported URL scheme {scheme!r}")
    if loopback_ok and is_loopback(host):
        return
    if not connection.allow_http:
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
    text = data.decode("ascii", "replace").strip()
    if not text:
        raise UsageError(f"{what} file {path} is empty")
    if not is_token(text):  # it goes into an HTTP header: never let http.client quote it in an error
        raise UsageError(f"{what} file {path} holds spaces, control or non-ASCII characters: not a token")
    return text


_TOKEN = re.compile(r"[!-~]+", re.ASCII)


def is_token(text: str) -> bool:
    """Bearer tokens, JWTs and Vault tokens are visible ASCII, nothing else (RFC 6750 b64token and more)."""
    return _TOKEN.fullmatch(text) is not None


def _check_file(path: str | None, what: str) -> None:
    if path and not os.path.isfile(path):
        raise UsageError(f"{what} {path} does not exist")


class _Bearer:
    """requests auth hook: the bearer token, read from its file at each request.

    Always set (also without a token, and as an empty hook on requests to
    another origin), so requests never falls back to ~/.netrc credentials or
    to user info in a URL.
    """

    def __init__(self, token_file: str | None) -> None:
        self.token_file = token_file

    def __call__(self, r: Any) -> Any:
        if self.token_file:
            r.headers["Authorization"] = "Bearer " + read_secret_file(self.token_file, "token")
        return r


_NO_CREDENTIALS = _Bearer(None)
#: Redirects followed for one request (model downloads only).
MAX_REDIRECTS = 5


def origin(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of a URL: credentials are for one origin only."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        raise UsageError("malformed port in a URL") from None
    return scheme, parts.hostname or "", port or {"https": 443, "http": 80}.get(scheme, 0)


#: The only request headers a redirect may carry to another origin: the caller's own
#: headers can hold credentials (Authorization from a registry's token flow,
#: X-Vault-Token), which stay with the origin they were meant for.
_PORTABLE_HEADERS = frozenset({"range", "if-range", "if-match", "if-none-match", "accept", "accept-encoding",
                               "user-agent"})


def _across_origins(headers: dict[str, str] | None) -> dict[str, str] | None:
    return {k: v for k, v in headers.items() if k.lower() in _PORTABLE_HEADERS} if headers else headers


class Client:
    """A requests.Session with the TLS settings of `connection`, and our own redirect rule.

    Redirects (decided here, never by requests): a key service (Vault,
    vault-transit, the CDH, an https key server) is not followed anywhere:
    a 3xx is a clear error, so its token, JWT or client certificate can never
    be sent elsewhere. A model download (`redirects=True`) follows up to
    MAX_REDIRECTS, as presigned URLs and CDNs need, but our credentials (the
    bearer token, the client certificate) go only to the origin (scheme,
    host, port) of the URL we were given, and of the caller's own headers
    only those in _PORTABLE_HEADERS follow it elsewhere; never to plain http
    unless allow_http; never to a URL with user info. The URL a request starts
    from obeys the same rule (it may be a server's: an upload Location), so no
    answer downgrades a conversation to plain http. Cookies are never kept.

    verify/cert go with each request, not on the session: requests lets
    REQUESTS_CA_BUNDLE override a session's CA, never a request's. Proxies
    from the environment are honoured (`use_env`), except for loopback
    services such as the CDH.
    """

    def __init__(self, connection: Connection, *, bearer: bool = False, use_env: bool = True,
                 redirects: bool = False, loopback_http: bool = False) -> None:
        requests = extras.require("requests", "HTTP(S)")
        _check_file(connection.ca, "CA bundle")
        _check_file(connection.cert, "client certificate")
        _check_file(connection.cert_key, "client key")
        self.connection = connection
        self.redirects = redirects
        self.loopback_http = loopback_http
        self.verify: Any = connection.ca or True
        self.cert: Any = None
        if connection.cert:
            self.cert = (connection.cert, connection.cert_key) if connection.cert_key else connection.cert
        s = requests.Session()
        s.trust_env = use_env
        s.auth = _Bearer(connection.token_file if bearer else None)
        # No cookies: they are scoped by host, not origin (a port does not count), so one
        # set by the first server would be sent to another on the same host after a redirect.
        s.cookies.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
        s.headers["Accept-Encoding"] = "identity"
        s.headers["User-Agent"] = "modelseal"
        self.session = s

    def request(self, method: str, url: str, what: str, *, headers: dict[str, str] | None = None,
                json: Any = None, data: Any = None, answers: tuple[int, ...] = ()) -> Any:
        """One streaming request (not retried here), following redirects by the rule above.

        `url` itself passes the same rule as every hop: it may come from a
        server's answer (a registry's upload Location), so an https
        conversation is never continued over plain http without allow_http.
        `answers`: 3xx statuses that are this API's answers, not redirects
        (GCS answers 308 Resume Incomplete to a resumable upload's chunks)."""
        home = origin(self._target(url, what, "a request to"))
        current = url
        for _ in range(MAX_REDIRECTS + 1):
            ours = origin(current) == home
            resp = self.session.request(
                method, current, headers=headers if ours else _across_origins(headers), json=json, data=data,
                stream=True, allow_redirects=False,
                timeout=timeouts(self.connection), verify=self.verify,
                cert=self.cert if ours else None, auth=None if ours else _NO_CREDENTIALS)
            if not 300 <= resp.status_code < 400 or resp.status_code in answers:
                return resp
            status, location = resp.status_code, resp.headers.get("Location")
            resp.close()
            if not self.redirects:
                raise UsageError(f"{what}: the key service answered a redirect (HTTP {status}); redirects from key "
                                 "services are refused so that credentials never leave the configured server: "
                                 "give its final address")
            if not location or method not in ("GET", "HEAD"):
                raise UsageError(f"{what}: unexpected HTTP {status} answer")
            current = self._next_hop(current, location, what)
        raise UsageError(f"{what}: more than {MAX_REDIRECTS} redirects")

    def _next_hop(self, current: str, location: str, what: str) -> str:
        parts = urlsplit(self._target(urljoin(current, location.strip()), what, "redirected to"))
        return urlunsplit((parts.scheme, parts.netloc, parts.path, parts.query, ""))

    def _target(self, url: str, what: str, how: str) -> str:
        """Where a request may go: http(s) with a host, no user info, plain http only with allow_http
        (or to loopback for a client made with loopback_http, the CDH). Messages never repeat the URL."""
        parts = urlsplit(url)
        if "@" in parts.netloc:
            raise UsageError(f"{what}: {how} a URL with user info; refused")
        scheme = parts.scheme.lower()
        if scheme not in ("https", "http") or not parts.hostname:
            raise UsageError(f"{what}: {how} a URL that is not http(s); refused")
        if scheme != "https" and not self.connection.allow_http and not (
                self.loopback_http and is_loopback(parts.hostname)):
            raise UsageError(f"{what}: {how} plain http; refused (allow_http is not set)")
        origin(url)  # a malformed port is refused before anything is sent
        return url


def content_length(headers: Any, what: str) -> int | None:
    """Content-Length: None when absent; present but not a plain decimal is malformed
    (http.client would ignore it and read to the end of the connection)."""
    return _header(headers, "Content-Length", untrusted.decimal, what)


def content_range(headers: Any, what: str) -> tuple[int, int, int | None] | None:
    """Content-Range (first, last, total or None): None when absent; present but malformed is malformed."""
    return _header(headers, "Content-Range", untrusted.content_range, what)


def _header(headers: Any, name: str, parse: Any, what: str) -> Any:
    raw = headers.get(name)
    if raw is None:
        return None
    value = parse(raw)
    if value is None:
        raise IntegrityError(f"{what}: malformed {name} {untrusted.show(raw, 60)}")
    return value


def timeouts(connection: Connection) -> tuple[float, float]:
    if connection.timeout <= 0:
        raise UsageError("timeout must be positive")
    return (connection.timeout, connection.timeout)


class Requester(Protocol):
    """What sends one request: a Client, or a client of its own kind (registry.client.Registry)."""

    connection: Connection

    def request(self, method: str, url: str, what: str, *, headers: dict[str, str] | None = None,
                json: Any = None, data: Any = None) -> Any: ...


def request_small(client: Requester, method: str, url: str, what: str, *,
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
            length = content_length(resp.headers, what)
            body = resp.raw.read(max_bytes + 1, decode_content=False)
            if len(body) > max_bytes:
                raise IntegrityError(f"{what}: answer is larger than {max_bytes} bytes")
            if length is not None and length != len(body):
                raise retry.TransientError(f"body cut short ({len(body)} of {length} bytes)")
            return status, body
        finally:
            resp.close()

    return retry.call(what, client.connection, once)


def untouched_body(raw: Any) -> http.client.HTTPResponse | None:
    """The http.client response under a urllib3 response whose body may be read past urllib3, else None.

    That is a body without Content-Encoding that urllib3 has not started to
    read (nothing decoded, nothing buffered), through the layers as urllib3
    2.x builds them."""
    fp = getattr(raw, "_fp", None)
    headers = getattr(raw, "headers", None)
    if not isinstance(fp, http.client.HTTPResponse) or headers is None:
        return None
    if (headers.get("content-encoding") or "identity").strip().lower() != "identity":
        return None
    if getattr(raw, "_fp_bytes_read", 0) or getattr(raw, "_has_decoded_content", False):
        return None
    buffered = getattr(raw, "_decoded_buffer", None)
    if buffered is not None and len(buffered):
        return None
    return fp


def direct_readinto(raw: Any) -> Any:
    """readinto straight from the socket into the caller's buffer, for a urllib3 response body; None when unsafe.

    urllib3's read/read1/readinto each read into a new bytes object (read1:
    one TLS record, ~16 KiB, per call) and copy it; the http.client response
    under it reads into the buffer it is given, a whole buffer per call.
    Measured: the difference between 0.3x and about curl's speed from nginx,
    and the top user-space cost of fetch-model from S3. Taken only for an
    untouched body (`untouched_body`); callers check lengths themselves.
    """
    fp = untouched_body(raw)
    return None if fp is None else fp.readinto
