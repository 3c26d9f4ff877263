"""A real OCI registry for the tests: Debian's `docker-registry` (the CNCF distribution server).

- Registry: `docker-registry serve` on 127.0.0.1 (a free port) as a child
  process, storage on a directory of the test: anonymous over plain HTTP,
  TLS (the test CA) with htpasswd basic auth (bcrypt), or the server's
  `token` auth trusting a TokenIssuer; optionally the `redirect` storage
  middleware, so blob GETs are answered with a redirect to a Storage server
  (as S3 or GCS backends do with signed URLs).
- TokenIssuer: the distribution token spec's endpoint (GET with Basic auth,
  POST with an OAuth2 refresh token), signing ES256 JWTs with an x5c chain
  the registry's rootcertbundle trusts. It records the Authorization header
  of every request, so tests can prove where credentials went.
- Storage: serves the registry's blob files by storage path, with Range,
  and records the Authorization header of every request.
- HeaderProxy: the fault proxy (faults.py), recording Authorization too.

Missing tools (docker-registry, skopeo, oras) skip, or fail under
MODELSEAL_REQUIRE_IMAGES=1 (CI installs them: tools/host-packages.sh,
requirements-dev.txt).
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import secrets
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from .faults import FaultProxy
from .http import Server
from .objects import ObjectServer
from .pki import PKI
from .processes import LOCAL, die_with_parent, free_port, stop_process, write_file

REQUIRE = os.environ.get("MODELSEAL_REQUIRE_IMAGES") == "1"


def need_tool(name: str) -> str:
    """The tool's path; skip (or fail under MODELSEAL_REQUIRE_IMAGES=1) when it is missing."""
    path = shutil.which(name)
    if path is None:
        why = f"{name} is not installed (tools/host-packages.sh installs it)"
        if REQUIRE:
            pytest.fail(f"MODELSEAL_REQUIRE_IMAGES=1 but {why}", pytrace=False)
        pytest.skip(why)
    return path


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenIssuer(Server):
    """The registry token endpoint: users with passwords, refresh tokens, per-repository grants."""

    def __init__(self, directory: str, *, tls: Any = None, service: str = "modelseal-test-registry") -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        self.service = service
        self.issuer = "modelseal-test-issuer"
        self.users: dict[str, str] = {}  # user -> password
        self.refresh_tokens: dict[str, str] = {}  # refresh token -> user
        self.grants: dict[tuple[str, str], set[str]] = {}  # (user or "", repository) -> actions
        self.authorizations: list[tuple[str, str | None]] = []  # (method, Authorization)
        self.issued: list[str] = []
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "modelseal token signer")])
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - datetime.timedelta(minutes=5))
                     .not_valid_after(now + datetime.timedelta(days=1))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                     .sign(self.key, hashes.SHA256()))
        self.cert_path = write_file(os.path.join(directory, "token-signer.pem"),
                                    self.cert.public_bytes(serialization.Encoding.PEM), 0o644)
        self._x5c = base64.b64encode(self.cert.public_bytes(serialization.Encoding.DER)).decode()
        super().__init__(tls)

    @property
    def realm(self) -> str:
        return f"{self.url}/token"

    def grant(self, user: str, repository: str, *actions: str) -> None:
        self.grants.setdefault((user, repository), set()).update(actions)

    def sign(self, subject: str, access: list[dict]) -> str:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

        now = int(time.time())
        header = {"typ": "JWT", "alg": "ES256", "x5c": [self._x5c]}
        claims = {"iss": self.issuer, "sub": subject, "aud": self.service, "exp": now + 300, "nbf": now - 10,
                  "iat": now, "jti": secrets.token_hex(8), "access": access}
        signing_input = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(claims).encode())
        r, s = decode_dss_signature(self.key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
        return signing_input + "." + b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))

    def _user(self, h: Any, body: bytes) -> str | None:
        """The authenticated user ("" for anonymous), or None when the credentials are wrong."""
        if h.command == "POST":
            form = parse_qs(body.decode())
            user = self.refresh_tokens.get((form.get("refresh_token") or [""])[0])
            return user if user is not None else None
        auth = h.headers.get("Authorization")
        if not auth:
            return ""
        if not auth.startswith("Basic "):
            return None
        user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
        return user if user in self.users and secrets.compare_digest(self.users[user], password) else None

    def handle(self, h: Any, body: bytes, fault: Any) -> None:
        with self.lock:
            self.authorizations.append((h.command, h.headers.get("Authorization")))
        parts = urlsplit(h.path)
        if parts.path != "/token" or h.command not in ("GET", "POST"):
            h.send_json(404, {"errors": ["not found"]})
            return
        query = parse_qs(parts.query)
        if h.command == "POST":
            query = {**query, **parse_qs(body.decode())}
        user = self._user(h, body)
        if user is None:
            h.send_json(401, {"details": "incorrect username or password"})
            return
        access = []
        for scope in query.get("scope", []):
            kind, _, rest = scope.partition(":")
            repo, _, wanted = rest.rpartition(":")
            allowed = self.grants.get((user, repo), set()) | self.grants.get(("", repo), set())
            actions = sorted(set(wanted.split(",")) & allowed)
            if kind == "repository" and actions:
                access.append({"type": "repository", "name": repo, "actions": actions})
        token = self.sign(user or "anonymous", access)
        with self.lock:
            self.issued.append(token)
        h.send_json(200, {"token": token, "access_token": token, "expires_in": 300})


class Storage(ObjectServer):
    """The registry's blob store seen over HTTP (the redirect middleware's target)."""

    def __init__(self) -> None:
        self.root = ""  # the registry's data directory, set once it exists
        self.authorizations: list[tuple[str, str | None]] = []  # (path, Authorization)
        super().__init__({})
        storage = self

        class Files(dict):
            def get(self, path: str, default: Any = None) -> Any:
                root = storage.root
                full = os.path.normpath(os.path.join(root, path.lstrip("/")))
                if not root or not full.startswith(root + os.sep) or not os.path.isfile(full):
                    return default
                with open(full, "rb") as f:
                    return f.read()

        self.objects = Files()

    def handle(self, h: Any, body: bytes, fault: Any) -> None:
        with self.lock:
            self.authorizations.append((h.path, h.headers.get("Authorization")))
        super().handle(h, body, fault)


class HeaderProxy(FaultProxy):
    """The fault proxy, recording each request's Authorization header."""

    def __init__(self, upstream_port: int, tls: Any = None) -> None:
        self.authorizations: list[tuple[str, str, str | None]] = []  # (method, path, Authorization)
        super().__init__(upstream_port, tls)

    def handle(self, h: Any, body: bytes, fault: Any) -> None:
        with self.lock:
            self.authorizations.append((h.command, h.path, h.headers.get("Authorization")))
        super().handle(h, body, fault)


class Registry:
    """`docker-registry serve` on 127.0.0.1; `stop()` (or the context manager) ends it.

    `external_url`: the registry's configured external address (`http.host`),
    which its answers' Locations are built on, as behind a reverse proxy."""

    def __init__(self, *, root: str | None = None, pki: PKI | None = None,
                 htpasswd: dict[str, str] | None = None, token: TokenIssuer | None = None,
                 storage: Storage | None = None, external_url: str | None = None) -> None:
        exe = need_tool("docker-registry")
        self.dir = tempfile.mkdtemp(prefix="modelseal-registry-", dir=root)
        self.data = os.path.join(self.dir, "data")
        os.mkdir(self.data)
        self.port = free_port()
        self.tls = pki is not None
        self.host = f"{LOCAL}:{self.port}"
        http: dict[str, Any] = {"addr": self.host, "secret": secrets.token_hex(16),
                                "headers": {"X-Content-Type-Options": ["nosniff"]}}
        if pki is not None:
            http["tls"] = {"certificate": pki.server_cert, "key": pki.server_key}
        if external_url is not None:  # the base of the URLs it hands out (upload Locations), as behind a proxy
            http["host"] = external_url
        store: dict[str, Any] = {"filesystem": {"rootdirectory": self.data}, "delete": {"enabled": True},
                                   "maintenance": {"uploadpurging": {"enabled": False}}}
        config: dict[str, Any] = {"version": 0.1, "log": {"level": "info", "accesslog": {"disabled": True}},
                                  "storage": store, "http": http}
        if htpasswd:
            import bcrypt

            lines = [f"{u}:{bcrypt.hashpw(p.encode(), bcrypt.gensalt(rounds=4)).decode()}" for u, p in htpasswd.items()]
            path = write_file(os.path.join(self.dir, "htpasswd"), "\n".join(lines) + "\n")
            config["auth"] = {"htpasswd": {"realm": "modelseal-test", "path": path}}
        if token is not None:
            config["auth"] = {"token": {"realm": token.realm, "service": token.service, "issuer": token.issuer,
                                        "rootcertbundle": token.cert_path}}
        if storage is not None:
            storage.root = self.data
            config["middleware"] = {"storage": [{"name": "redirect", "options": {"baseurl": storage.url + "/"}}]}
        self.config = write_file(os.path.join(self.dir, "config.yml"), json.dumps(config), 0o644)
        self.log = open(os.path.join(self.dir, "registry.log"), "wb")
        self.proc = subprocess.Popen([exe, "serve", self.config], stdout=self.log, stderr=subprocess.STDOUT,
                                     preexec_fn=die_with_parent)
        self._wait(pki)

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}"

    def _wait(self, pki: PKI | None) -> None:
        import ssl

        ctx = ssl.create_default_context(cafile=pki.ca) if pki else None
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/v2/", timeout=1, context=ctx).close()
                return
            except urllib.error.HTTPError:
                return  # 401: up, and asking for credentials
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("docker-registry did not start: " + self.log_text()[-2000:])
            time.sleep(0.05)

    def log_text(self) -> str:
        with open(self.log.name, "rb") as f:
            return f.read().decode(errors="replace")

    def blob_path(self, digest: str) -> str:
        hexd = digest.split(":", 1)[1]
        return os.path.join(self.data, "docker/registry/v2/blobs/sha256", hexd[:2], hexd, "data")

    def stop(self) -> None:
        stop_process(self.proc)
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "Registry":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def docker_config(directory: str, registry: str, *, user: str | None = None, password: str | None = None,
                  identity_token: str | None = None, name: str = "config.json") -> str:
    """A Docker config dir (or a pull secret's .dockerconfigjson) with credentials for `registry`."""
    os.makedirs(directory, exist_ok=True)
    entry: dict[str, str] = {}
    if user is not None:
        entry["auth"] = base64.b64encode(f"{user}:{password}".encode()).decode()
    if identity_token is not None:
        entry["identitytoken"] = identity_token
    write_file(os.path.join(directory, name), json.dumps({"auths": {registry: entry}}))
    return directory
