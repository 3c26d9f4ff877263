"""`modelseal webhook`: a mutating admission webhook (AdmissionReview v1 over TLS) around `inject()`.

The answer to a review is the JSON Patch from the object to what
`inject.inject()` makes of it (inject/patch.py), so the webhook and
`modelseal inject` give the same pod by construction. An object without a
`modelseal.dev/*` annotation is allowed unchanged; an annotated one that
cannot be injected (a missing container, a limit below the model, a source
that cannot be read) is denied with the one-line reason: fail closed, since
a pod started without its model is a server without a model, and the
deployment's failurePolicy: Fail does the same when the webhook is down.

Only the standard library serves: http.server, one thread per connection,
TLS from `ssl`. The certificate and key are re-read when either file
changes (a Secret updated by cert-manager), checked at each new connection
(two stat calls), so a rotation needs no restart; a pair that does not load
(the files caught mid-update) keeps the previous one and is logged.
`/healthz` answers while the process serves, `/readyz` once a certificate is
loaded.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import unquote, urlsplit

from . import untrusted
from .connection import Connection
from .errors import ModelsealError, Stopped, UsageError, classify
from .inject import Checked, Images, inject, model_shapes
from .inject.patch import diff
from .log import Log
from .placement import Shapes


@dataclass(frozen=True)
class Serving:
    """How the webhook serves (`modelseal webhook`'s flags, of the same names)."""

    tls_cert: str  # the serving certificate chain (PEM), re-read when it changes
    tls_key: str  # its private key (PEM), re-read when it changes
    listen: str = "0.0.0.0:8443"  # HOST:PORT; port 0: any free port, logged
    allow_sources: str | None = None  # PREFIX,...: the only sources whose headers it reads (default: all but file://)


API_VERSION = "admission.k8s.io/v1"
#: Larger than any object the API server stores (etcd's request limit is 1.5 MiB).
MAX_BODY = 3 << 20
#: Seconds a connection may take to hand over its TLS handshake and request (a stalled client holds one thread).
IO_TIMEOUT = 10.0
#: HTTP status of a denial, by the error's class (what `kubectl` shows beside the message).
DENIAL = {"usage": 400, "denied": 403, "integrity": 422, "unavailable": 503, "capacity": 422}


class Certificates:
    """The serving certificate chain and key, loaded again whenever either file changes."""

    def __init__(self, cert: str, key: str, log: Log) -> None:
        self.cert, self.key, self.log = cert, key, log
        self._lock = threading.Lock()
        self._stamp: tuple[Any, ...] | None = None
        self._context: ssl.SSLContext | None = None
        self.loads = 0  # successful (re)loads, for the log and the tests
        self.context()
        if self._context is None:
            raise UsageError(f"cannot load the TLS certificate {self.cert} and key {self.key}")

    def _stat(self) -> tuple[Any, ...]:
        stamps: list[tuple[Any, ...]] = []
        for path in (self.cert, self.key):
            try:
                st = os.stat(path)  # follows the Secret volume's ..data symlink: a new file, a new inode
                stamps.append((st.st_ino, st.st_dev, st.st_mtime_ns, st.st_size))
            except OSError as exc:
                stamps.append((exc.errno,))
        return tuple(stamps)

    def context(self) -> ssl.SSLContext | None:
        with self._lock:
            stamp = self._stat()
            if stamp != self._stamp:
                try:
                    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
                    ctx.load_cert_chain(self.cert, self.key)
                except (OSError, ssl.SSLError, ValueError) as exc:
                    self.log.warning("certificate_not_loaded", cert=self.cert, key=self.key,
                                     error=type(exc).__name__, message="keeping the certificate loaded before"
                                     if self._context else "no certificate yet")
                else:
                    self._context = ctx
                    self.loads += 1
                    self.log.info("certificate_loaded", cert=self.cert, loads=self.loads)
                self._stamp = stamp  # a pair that failed is tried again when a file changes again
            return self._context


def _status(err: ModelsealError) -> dict[str, Any]:
    return {"code": DENIAL.get(err.category, 500), "message": str(err)}


def review(body: bytes, mutate: Callable[[Any], Any]) -> tuple[int, dict[str, Any]]:
    """(HTTP status, answer) for one AdmissionReview: the patch to `mutate(object)`, or a denial.

    A body that is no AdmissionReview with a request uid cannot be answered as
    one: HTTP 400 with the reason (the API server then applies the webhook's
    failurePolicy, Fail in the charts).
    """
    try:
        doc = untrusted.json_document(body, "AdmissionReview", UsageError)
        request = untrusted.member(doc, "request", "AdmissionReview", UsageError)
        if not isinstance(doc, dict) or doc.get("apiVersion") != API_VERSION or doc.get("kind") != "AdmissionReview":
            raise UsageError(f"not an {API_VERSION} AdmissionReview")
        uid = request.get("uid") if isinstance(request, dict) else None
        if not isinstance(uid, str) or not uid:
            raise UsageError("AdmissionReview: request.uid is missing")
    except ModelsealError as err:
        return 400, {"error": str(err)}
    response: dict[str, Any] = {"uid": uid, "allowed": True}
    obj = request.get("object")
    if obj is not None:
        try:
            mutated = mutate(obj)
            ops = diff(obj, mutated) if mutated is not obj else []
        except Exception as exc:  # fail closed: every failure, our own bugs included, is a denial
            response.update(allowed=False, status=_status(classify(exc)))
        else:
            if ops:
                response["patchType"] = "JSONPatch"
                response["patch"] = base64.b64encode(json.dumps(ops, separators=(",", ":")).encode()).decode()
    return 200, {"apiVersion": API_VERSION, "kind": "AdmissionReview", "response": response}


class _Handler(BaseHTTPRequestHandler):
    server: "WebhookServer"
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        self.request.settimeout(IO_TIMEOUT)
        try:
            self.request.do_handshake()
        except (OSError, ssl.SSLError):
            self.close_connection = True
            self.handshake_failed = True
        else:
            self.handshake_failed = False
        super().setup()

    def handle(self) -> None:
        if not self.handshake_failed:
            try:
                super().handle()
            except (OSError, ssl.SSLError):
                pass  # the client went away

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the server logs JSON lines itself
        pass

    def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            self._send(200, b"ok\n", "text/plain")
        elif path == "/readyz":
            ready = self.server.certificates.context() is not None
            self._send(200 if ready else 503, b"ok\n" if ready else b"no certificate\n", "text/plain")
        else:
            self._send(404, b"not found\n", "text/plain")

    def do_POST(self) -> None:  # noqa: N802
        started = time.monotonic()
        if self.path.split("?", 1)[0] not in ("/mutate", "/"):
            self._send(404, b"not found\n", "text/plain")
            return
        length = untrusted.decimal(self.headers.get("Content-Length"))
        if length is None or length > MAX_BODY:
            self.close_connection = True
            self._send(413 if length else 411, json.dumps(
                {"error": f"a review needs a Content-Length of at most {MAX_BODY} bytes"}).encode())
            return
        body = self.rfile.read(length)
        status, answer = review(body, self.server.mutate)
        self._send(status, json.dumps(answer, separators=(",", ":")).encode())
        response = answer.get("response") or {}
        self.server.log.info("review", uid=response.get("uid"), allowed=response.get("allowed"),
                             patched="patch" in response, error=answer.get("error")
                             or (response.get("status") or {}).get("message"),
                             seconds=round(time.monotonic() - started, 4))


class WebhookServer(ThreadingHTTPServer):
    """HTTPS: each accepted connection is wrapped with the certificate loaded now; the handshake runs in its thread."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], certificates: Certificates, mutate: Callable[[Any], Any],
                 log: Log) -> None:
        self.certificates, self.mutate, self.log = certificates, mutate, log
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.address_family = family
        super().__init__(address, _Handler)

    def get_request(self) -> tuple[Any, Any]:
        sock, addr = super().get_request()
        ctx = self.certificates.context()
        if ctx is None:  # cannot happen after a first load; refuse the connection rather than serve plain HTTP
            sock.close()
            raise OSError("no TLS certificate loaded")
        return ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr


def parse_listen(text: str) -> tuple[str, int]:
    """HOST:PORT (or [V6]:PORT) to listen on."""
    host, sep, port = text.rpartition(":")
    number = untrusted.decimal(port, 5)
    if not sep or number is None or not 0 <= number <= 65535:
        raise UsageError(f"--listen {untrusted.show(text, 60)}: give HOST:PORT, e.g. 0.0.0.0:8443")
    return host.strip("[]") or "0.0.0.0", number


def under(source: str, prefix: str) -> bool:
    """`source` lies under the `--allow-sources` prefix: at a boundary (`s3://models` admits
    s3://models/m.seal, not s3://models-private/m.seal), with no `.` or `..` segment (plain or
    percent-encoded) that a server could resolve to outside it."""
    if not source.startswith(prefix):
        return False
    rest = source[len(prefix):]
    if rest and not prefix.endswith("/") and rest[0] not in "/?":
        return False
    return not any(unquote(segment) in (".", "..") for segment in urlsplit(source).path.split("/"))


def header_reader(allow_sources: str | None, connection: Connection) -> Callable[[Checked], Shapes]:
    """What the webhook knows of a model: the header of a source it may read (a ranged read), or the
    modelseal.dev/size annotation. It never reads its own filesystem (file://) unless that is listed."""
    allowed = [s.strip() for s in (allow_sources or "").split(",") if s.strip()]

    def read(checked: Checked) -> Shapes:
        if checked.size is None and not (any(under(checked.source, s) for s in allowed) if allowed
                                         else checked.scheme != "file"):
            # The source is not quoted: its query may hold a credential (an Azure SAS).
            raise UsageError(f"this webhook reads no header from that {checked.scheme}: source"
                             + (f" (it reads only under {', '.join(allowed)})" if allowed else "")
                             + "; set modelseal.dev/size, or inject with `modelseal inject`")
        return model_shapes(checked, connection)

    return read


def serve(serving: Serving, images: Images, connection: Connection, log: Log) -> dict[str, Any]:
    """`modelseal webhook`: answer reviews until SIGTERM; the summary for the last log line."""
    certificates = Certificates(serving.tls_cert, serving.tls_key, log)
    read = header_reader(serving.allow_sources, connection)
    server = WebhookServer(parse_listen(serving.listen), certificates, lambda obj: inject(obj, read, images=images),
                           log)
    log.info("listening", address=server.server_address[0], port=server.server_address[1])
    try:
        server.serve_forever()
    except Stopped:
        log.info("stopping")
    finally:
        server.server_close()
    return {"certificate_loads": certificates.loads}
