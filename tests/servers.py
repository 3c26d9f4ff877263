"""Real servers on 127.0.0.1 for the fetch-stage tests: no mocks of the thing under test.

- MotoServer: moto in server mode as a subprocess (S3, KMS, Secrets Manager over HTTP).
- PKI: a test CA, a server certificate for 127.0.0.1/localhost, a client
  certificate, and a second CA that signed none of them (made with `cryptography`).
- ObjectServer: a threaded HTTP(S) server of byte objects with Range/If-Range,
  ETags, optional bearer token, and scripted faults; it also plays the
  Confidential Data Hub (CDHServer) and the HTTPS key server.
- VaultServer: Vault's KV v2, Kubernetes auth login and transit encrypt/decrypt APIs.
- FaultProxy: an HTTP reverse proxy (in front of moto) with the same faults.

Faults are scripted per request: `Fault("status", 503)`, `Fault("cut", after=N)`
(send N body bytes of a full-length answer, then close), `Fault("stall", seconds=S,
after=N)` (send headers and N body bytes, then stall S seconds and close),
`Fault("tamper", drop_headers=("If-Range",), before=fn)` (a server that ignores
a request header, and `fn()` run first, e.g. to replace the object mid-download).
Servers count requests and body bytes sent, and keep every request's headers
and the client certificate presented (if any), so tests can prove "no retry",
"resumed, not restarted" and "this origin never saw the token".

Fixtures (imported by the test modules; tests/conftest.py is left to the lead):
moto, pki, shm_dir, aws_env, no_proxy_env (autouse where imported).
"""

from __future__ import annotations

import atexit
import base64
import ctypes
import datetime
import email.utils
import hashlib
import http.client
import json
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

LOCAL = "127.0.0.1"


# --------------------------------------------------------------------------- helpers

def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOCAL, 0))
        return s.getsockname()[1]


def make_shm_dir(prefix: str = "modelseal-test-") -> str:
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    return tempfile.mkdtemp(prefix=prefix, dir=base)


def write_file(path: str, data: bytes | str, mode: int = 0o600) -> str:
    if isinstance(data, str):
        data = data.encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path


# --------------------------------------------------------------------------- moto

def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def stop_process(proc: subprocess.Popen) -> None:
    """End a server child: SIGTERM, then SIGKILL after 10 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def start_child(argv: list[str], ready, what: str, env: dict | None = None,
                timeout: float = 30) -> subprocess.Popen:
    """Start a server as a child process (dies with us) and wait until `ready()`; on failure stop it
    and raise with the tail of its output."""
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=_die_with_parent)
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_process(proc)
            log.seek(0)
            raise RuntimeError(f"{what} did not start: " + log.read()[-2000:].decode(errors="replace"))
        time.sleep(0.1)
    return proc


class MotoServer:
    """`python -m moto.server` on 127.0.0.1 as a child process (dies with us)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://{LOCAL}:{self.port}"
        env = dict(os.environ, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                   AWS_DEFAULT_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true")
        def ready() -> bool:
            try:
                with urllib.request.urlopen(f"{self.url}/moto-api/", timeout=1) as r:
                    return r.status == 200
            except OSError:
                return False

        self.proc = start_child([sys.executable, "-m", "moto.server", "-p", str(self.port), "-H", LOCAL],
                                ready, "moto server", env=env)

    def stop(self) -> None:
        stop_process(self.proc)


_moto: MotoServer | None = None
_moto_lock = threading.Lock()


def moto_server() -> MotoServer:
    """One moto server for the whole test run."""
    global _moto
    with _moto_lock:
        if _moto is None:
            _moto = MotoServer()
            atexit.register(_moto.stop)
        return _moto


AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",  # never reach for 169.254.169.254
    "AWS_CONFIG_FILE": "/dev/null",
    "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
}
AWS_UNSET = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3",
             "AWS_ENDPOINT_URL_KMS", "AWS_ENDPOINT_URL_SECRETS_MANAGER", "AWS_ROLE_ARN",
             "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
             "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CA_BUNDLE", "HTTPS_PROXY", "HTTP_PROXY",
             "https_proxy", "http_proxy")


# --------------------------------------------------------------------------- PKI

@dataclass
class PKI:
    dir: str
    ca: str  # CA certificate (PEM)
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str
    other_ca: str  # a CA that signed nothing here

    def server_context(self, require_client_cert: bool = False) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.server_cert, self.server_key)
        if require_client_cert:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(self.ca)
        return ctx


def make_pki(directory: str) -> PKI:
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def key() -> ec.EllipticCurvePrivateKey:
        return ec.generate_private_key(ec.SECP256R1())

    def ca(cn: str) -> tuple[Any, Any]:
        k = key()
        cert = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(name(cn))
                .public_key(k.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                             content_commitment=False, key_encipherment=False,
                                             data_encipherment=False, key_agreement=False,
                                             encipher_only=False, decipher_only=False), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(k.public_key()), critical=False)
                .sign(k, hashes.SHA256()))
        return k, cert

    def leaf(cn: str, ca_key: Any, ca_cert: Any, server: bool) -> tuple[Any, Any]:
        k = key()
        b = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(ca_cert.subject)
             .public_key(k.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(minutes=5))
             .not_valid_after(now + datetime.timedelta(days=1))
             .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
             .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server
                                                   else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
             .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                            critical=False))
        if server:
            b = b.add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(LOCAL))]), critical=False)
        return k, b.sign(ca_key, hashes.SHA256())

    def pem_cert(c: Any) -> bytes:
        return c.public_bytes(serialization.Encoding.PEM)

    def pem_key(k: Any) -> bytes:
        return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption())

    ca_key, ca_cert = ca("modelseal test CA")
    _, other_cert = ca("modelseal other CA")
    s_key, s_cert = leaf("127.0.0.1", ca_key, ca_cert, server=True)
    c_key, c_cert = leaf("modelseal test client", ca_key, ca_cert, server=False)
    p = lambda n: os.path.join(directory, n)  # noqa: E731
    return PKI(
        dir=directory,
        ca=write_file(p("ca.pem"), pem_cert(ca_cert), 0o644),
        server_cert=write_file(p("server.pem"), pem_cert(s_cert), 0o644),
        server_key=write_file(p("server.key"), pem_key(s_key)),
        client_cert=write_file(p("client.pem"), pem_cert(c_cert), 0o644),
        client_key=write_file(p("client.key"), pem_key(c_key)),
        other_ca=write_file(p("other-ca.pem"), pem_cert(other_cert), 0o644),
    )


# --------------------------------------------------------------------------- servers

@dataclass
class Fault:
    """One scripted fault, applied to the next `times` requests that match."""

    kind: str  # "status" | "cut" | "stall" | "tamper" | "short" (a clean, short body) | "offset" (a 206 elsewhere)
    status: int = 503
    after: int = 0  # body bytes sent before a cut or stall
    seconds: float = 0.0
    method: str | None = None  # match only this method
    path: str | None = None  # match only paths containing this
    times: int = 1
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    drop_headers: tuple[str, ...] = ()  # request headers the server acts as if it never got
    before: Any = None  # called before the request is handled

    def matches(self, method: str, path: str) -> bool:
        return self.times > 0 and (self.method is None or self.method == method) and (
            self.path is None or self.path in path)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "_HTTPServer"

    def setup(self) -> None:
        app = self.server.app
        self.tls_failed = False
        if app.tls is not None:
            self.request.settimeout(10)
            ssock = app.tls.wrap_socket(self.request, server_side=True, do_handshake_on_connect=False)
            try:
                ssock.do_handshake()
                cert = ssock.getpeercert(binary_form=True)
                with app.lock:
                    app.peer_certs.append(cert)
            except (ssl.SSLError, OSError):
                with app.lock:
                    app.tls_failures += 1
                self.tls_failed = True
                # Let the client read our alert before the socket goes away,
                # so it sees the TLS error rather than a connection reset.
                try:
                    raw = socket.socket(fileno=os.dup(ssock.fileno()))
                    raw.settimeout(1)
                    try:
                        while raw.recv(65536):
                            pass
                    finally:
                        raw.close()
                except OSError:
                    pass
                ssock.close()
            self.request = ssock
        super().setup()

    def handle(self) -> None:
        if not self.tls_failed:
            try:
                super().handle()
            except (ConnectionError, ssl.SSLError, TimeoutError):
                pass

    def finish(self) -> None:
        try:
            super().finish()
        except (OSError, ValueError):
            pass

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    def _dispatch(self) -> None:
        app = self.server.app
        with app.lock:
            app.requests.append((self.command, self.path, self.headers.get("Range")))
        body = b""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = _read_chunked(self.rfile)
        elif self.headers.get("Content-Length"):
            body = self.rfile.read(int(self.headers["Content-Length"]))
        with app.lock:
            app.seen.append((self.command, self.path, dict(self.headers.items()), body))
        fault = app.take_fault(self.command, self.path)
        if fault is not None and fault.before is not None:
            fault.before()
        for name in fault.drop_headers if fault is not None else ():
            del self.headers[name]
        if fault is not None and fault.kind == "status":
            self.respond(fault.status, fault.body, dict(fault.headers))
            return
        if fault is not None and fault.kind == "stall" and fault.after == 0 and fault.seconds:
            time.sleep(fault.seconds)
            self.close_connection = True
            return
        app.handle(self, body, fault)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _dispatch

    def respond(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
                fault: Fault | None = None, length: int | None = None) -> None:
        """Send an answer; a cut or stall fault sends only `fault.after` body bytes, then closes."""
        app = self.server.app
        self.send_response(status)
        headers = dict(headers or {})
        if fault is not None and fault.kind == "short":
            # A well-formed answer that ends cleanly after `after` bytes: Content-Length
            # says so, the connection stays open; only a length known otherwise tells.
            body = body[: fault.after]
            headers["Content-Length"] = str(len(body))
        headers.setdefault("Content-Length", str(len(body) if length is None else length))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command == "HEAD":
            return
        if fault is not None and fault.kind in ("cut", "stall"):
            part = body[: fault.after]
            self.wfile.write(part)
            self.wfile.flush()
            with app.lock:
                app.bytes_sent += len(part)
            if fault.kind == "stall":
                time.sleep(fault.seconds)
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        view = memoryview(body)
        for i in range(0, len(view), 1 << 20):
            self.wfile.write(view[i:i + (1 << 20)])
            with app.lock:
                app.bytes_sent += len(view[i:i + (1 << 20)])

    def send_json(self, status: int, obj: Any) -> None:
        self.respond(status, json.dumps(obj).encode(), {"Content-Type": "application/json"})


def _read_chunked(rfile: Any) -> bytes:
    out = bytearray()
    while True:
        line = rfile.readline()
        size = int(line.split(b";")[0].strip() or b"0", 16)
        if size == 0:
            while rfile.readline() not in (b"\r\n", b"\n", b""):
                pass
            return bytes(out)
        out += rfile.read(size)
        rfile.readline()


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    app: "Server"


class Server:
    """A threaded HTTP(S) server on 127.0.0.1 with request/byte counters and a fault script."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.tls = tls
        self.lock = threading.Lock()
        self.requests: list[tuple[str, str, str | None]] = []
        self.bytes_sent = 0
        self.tls_failures = 0
        self.faults: list[Fault] = []
        self.seen: list[tuple[str, str, dict[str, str], bytes]] = []  # method, path, headers, body
        self.peer_certs: list[bytes | None] = []  # the client certificate of each TLS connection
        self.httpd = _HTTPServer((LOCAL, 0), _Handler)
        self.httpd.app = self
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{LOCAL}:{self.port}"

    def add_fault(self, *faults: Fault) -> None:
        with self.lock:
            self.faults.extend(faults)

    def take_fault(self, method: str, path: str) -> Fault | None:
        with self.lock:
            for f in self.faults:
                if f.matches(method, path):
                    f.times -= 1
                    return f
        return None

    def count(self, method: str | None = None, path: str | None = None) -> int:
        with self.lock:
            return sum(1 for m, p, _ in self.requests
                       if (method is None or m == method) and (path is None or path in p))

    def settled_tls_failures(self, at_least: int = 1, timeout: float = 3.0) -> int:
        """The TLS handshake failures, once the server threads have counted them.

        A client sees the alert before the server thread that sent it gets to
        count it; wait for `at_least`, then a little more for any retry.
        """
        deadline = time.monotonic() + timeout
        while self.tls_failures < at_least and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.3)
        return self.tls_failures

    def reset_counters(self) -> None:
        with self.lock:
            self.requests.clear()
            self.seen.clear()
            self.bytes_sent = 0

    def saw(self, secret: str | bytes) -> bool:
        """Whether `secret` reached this server anywhere: a path, a header, a body."""
        s = secret.encode() if isinstance(secret, str) else secret
        with self.lock:
            return any(s in m.encode() + p.encode() + repr(h).encode() + b for m, p, h, b in self.seen)

    def handle(self, h: _Handler, body: bytes, fault: Fault | None) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")


class ObjectServer(Server):
    """GET/HEAD of byte objects by path, with Range, If-Range and a strong ETag.

    `token`: require `Authorization: Bearer <token>` (401 otherwise).
    `ignore_range`: answer 200 with the whole object to every GET (a server without Range support).
    `redirects`: path -> URL answered with 302.
    `validators`: "etag" (the default), "last-modified" (a date derived from the content, no ETag),
    or None (neither, like some minimal servers).
    """

    def __init__(self, objects: dict[str, bytes] | None = None, *, tls: ssl.SSLContext | None = None,
                 token: str | None = None, ignore_range: bool = False,
                 redirects: dict[str, str] | None = None, validators: str | None = "etag") -> None:
        self.objects = dict(objects or {})
        self.redirects = dict(redirects or {})
        self.token = token
        self.ignore_range = ignore_range
        self.validators = validators
        super().__init__(tls)

    @staticmethod
    def etag(data: bytes) -> str:
        return '"' + hashlib.sha256(data).hexdigest()[:32] + '"'

    def handle(self, h: _Handler, body: bytes, fault: Fault | None) -> None:
        if h.command not in ("GET", "HEAD"):
            h.respond(405)
            return
        if self.token is not None and h.headers.get("Authorization") != f"Bearer {self.token}":
            h.respond(401, b"unauthorized")
            return
        path = h.path.split("?", 1)[0]
        if path in self.redirects:
            h.respond(302, b"", {"Location": self.redirects[path]})
            return
        with self.lock:
            data = self.objects.get(path)
        if data is None:
            h.respond(404, b"not found")
            return
        etag = self.etag(data)
        headers = {"ETag": etag, "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        if self.validators != "etag":
            del headers["ETag"]
        if self.validators == "last-modified":
            etag = email.utils.formatdate(1_600_000_000 + int(etag[1:7], 16), usegmt=True)
            headers["Last-Modified"] = etag
        rng = h.headers.get("Range")
        if_range = h.headers.get("If-Range")
        if rng and not self.ignore_range and (if_range is None or if_range == etag):
            m = _RANGE.match(rng.strip())
            if m:
                start = int(m.group(1))
                end = int(m.group(2)) if m.group(2) else len(data) - 1
                end = min(end, len(data) - 1)
                if start >= len(data):
                    h.respond(416, b"", {"Content-Range": f"bytes */{len(data)}"})
                    return
                if fault is not None and fault.kind == "offset":
                    start = max(0, start - fault.after)  # a 206 that starts before the byte asked for
                headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
                h.respond(206, data[start:end + 1], headers, fault)
                return
        h.respond(200, data, headers, fault)


class CDHServer(ObjectServer):
    """The Confidential Data Hub's REST API: GET /cdh/resource/<repository>/<type>/<tag>."""

    def put(self, resource: str, data: bytes) -> None:
        with self.lock:
            self.objects["/cdh/resource/" + resource.strip("/")] = data


class VaultServer(Server):
    """Vault's HTTP API, the parts modelseal uses.

    - KV v2:  GET /v1/<kv mount>/data/<path>[?version=N]
    - auth:   POST /v1/auth/kubernetes/login {role, jwt} -> auth.client_token
    - transit: POST /v1/<transit mount>/encrypt/<key> {plaintext(b64)},
               POST /v1/<transit mount>/decrypt/<key> {ciphertext "vault:v1:..."}
               (real AES-256-GCM with a per-key secret, like Vault's default key type)
    """

    def __init__(self, *, tls: ssl.SSLContext | None = None) -> None:
        self.kv: dict[str, list[dict[str, Any]]] = {}  # "mount/path" -> versions
        self.kv_mounts = {"secret"}
        self.transit_mounts = {"transit"}
        self.transit_keys: dict[str, bytes] = {}
        self.tokens: set[str] = set()
        self.roles: dict[str, str] = {}  # role -> the JWT it accepts
        self.logins = 0
        super().__init__(tls)

    def put_secret(self, mount: str, path: str, data: dict[str, Any]) -> None:
        with self.lock:
            self.kv.setdefault(f"{mount}/{path}", []).append(data)

    def add_token(self) -> str:
        token = "hvs." + secrets.token_urlsafe(18)
        with self.lock:
            self.tokens.add(token)
        return token

    def add_transit_key(self, name: str, mount: str = "transit") -> None:
        with self.lock:
            self.transit_keys[f"{mount}/{name}"] = os.urandom(32)

    def _split(self, path: str, mounts: set[str]) -> tuple[str, str] | None:
        for m in sorted(mounts, key=len, reverse=True):
            if path.startswith(m + "/"):
                return m, path[len(m) + 1:]
        return None

    def handle(self, h: _Handler, body: bytes, fault: Fault | None) -> None:
        from urllib.parse import parse_qs, unquote, urlsplit

        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        parts = urlsplit(h.path)
        path = unquote(parts.path)
        query = parse_qs(parts.query)
        if not path.startswith("/v1/"):
            h.send_json(404, {"errors": []})
            return
        api = path[len("/v1/"):]
        if h.command == "POST" and api == "auth/kubernetes/login":
            try:
                req = json.loads(body)
            except ValueError:
                h.send_json(400, {"errors": ["invalid JSON"]})
                return
            with self.lock:
                self.logins += 1
                expected = self.roles.get(req.get("role"))
            if expected is None:
                h.send_json(400, {"errors": [f'invalid role name "{req.get("role")}"']})
                return
            if req.get("jwt") != expected:
                h.send_json(403, {"errors": ["permission denied"]})
                return
            token = self.add_token()
            h.send_json(200, {"auth": {"client_token": token, "lease_duration": 600, "renewable": True}})
            return
        with self.lock:
            allowed = h.headers.get("X-Vault-Token") in self.tokens
        if not allowed:
            h.send_json(403, {"errors": ["permission denied"]})
            return
        kv = self._split(api, self.kv_mounts)
        if h.command == "GET" and kv and kv[1].startswith("data/"):
            key = f"{kv[0]}/{kv[1][len('data/'):]}"
            with self.lock:
                versions = self.kv.get(key)
            if not versions:
                h.send_json(404, {"errors": []})
                return
            n = int(query.get("version", [len(versions)])[0])
            if not 1 <= n <= len(versions):
                h.send_json(404, {"errors": []})
                return
            h.send_json(200, {"data": {"data": versions[n - 1], "metadata": {"version": n}}})
            return
        tr = self._split(api, self.transit_mounts)
        if h.command == "POST" and tr and "/" in tr[1]:
            op, name = tr[1].split("/", 1)
            with self.lock:
                secret = self.transit_keys.get(f"{tr[0]}/{name}")
            if secret is None:
                h.send_json(400, {"errors": ["encryption key not found"]})
                return
            req = json.loads(body or b"{}")
            if op == "encrypt":
                pt = base64.b64decode(req["plaintext"])
                nonce = os.urandom(12)
                ct = "vault:v1:" + base64.b64encode(nonce + AESGCM(secret).encrypt(nonce, pt, None)).decode()
                h.send_json(200, {"data": {"ciphertext": ct, "key_version": 1}})
                return
            if op == "decrypt":
                ct = str(req.get("ciphertext", ""))
                try:
                    if not ct.startswith("vault:v1:"):
                        raise ValueError
                    blob = base64.b64decode(ct[len("vault:v1:"):])
                    pt = AESGCM(secret).decrypt(blob[:12], blob[12:], None)
                except (ValueError, InvalidTag):
                    h.send_json(400, {"errors": ["cipher: message authentication failed"]})
                    return
                h.send_json(200, {"data": {"plaintext": base64.b64encode(pt).decode()}})
                return
        h.send_json(404, {"errors": []})


class FaultProxy(Server):
    """A reverse proxy to an HTTP upstream (moto), applying the fault script to its answers.

    Buffers each upstream answer whole (test objects are small enough) so a
    cut can happen after exactly N body bytes of a correct, full-length answer.
    """

    HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "trailer", "upgrade"}

    def __init__(self, upstream_port: int, tls: ssl.SSLContext | None = None) -> None:
        self.upstream_port = upstream_port
        super().__init__(tls)  # tls: an https front to the plain-HTTP upstream (a TLS-terminating proxy)

    def handle(self, h: _Handler, body: bytes, fault: Fault | None) -> None:
        headers = {k: v for k, v in h.headers.items() if k.lower() not in self.HOP}
        if body or h.command in ("POST", "PUT"):
            headers["Content-Length"] = str(len(body))
        conn = http.client.HTTPConnection(LOCAL, self.upstream_port, timeout=60)
        try:
            conn.request(h.command, h.path, body=body or None, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            out = {k: v for k, v in resp.getheaders() if k.lower() not in self.HOP | {"content-length"}}
            length = None
            if h.command == "HEAD":
                length = int(resp.getheader("Content-Length") or 0)
            h.respond(resp.status, data, out, fault, length=length)
        finally:
            conn.close()


def s3_error(code: str, status: int) -> Fault:
    body = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
            f"<Message>injected</Message><RequestId>test</RequestId></Error>").encode()
    return Fault("status", status=status, body=body, headers={"Content-Type": "application/xml"})


# --------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="session")
def moto() -> MotoServer:
    return moto_server()


@pytest.fixture(scope="session")
def pki() -> Any:
    d = make_shm_dir("modelseal-pki-")
    try:
        yield make_pki(d)
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def shm_dir() -> Any:
    """A private directory on tmpfs for keys, tokens and plaintext."""
    d = make_shm_dir()
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(autouse=True)
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Test traffic goes straight to 127.0.0.1, never through a proxy from the environment."""
    for k in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "https_proxy", "http_proxy", "all_proxy"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Dummy credentials, a region, and nothing that could reach beyond 127.0.0.1."""
    for k in AWS_UNSET:
        monkeypatch.delenv(k, raising=False)
    for k, v in AWS_ENV.items():
        monkeypatch.setenv(k, v)


def fast(**kw: Any) -> Any:
    """Connection settings for tests: short timeouts, tiny backoff, 127.0.0.1 only."""
    from modelseal.options import Connection

    extra = {"backoff": "0.01", "backoff_max": "0.05"}
    extra.update(kw.pop("extra", {}))
    kw.setdefault("timeout", 5.0)
    kw.setdefault("retries", 4)
    return Connection(extra=extra, **kw)
