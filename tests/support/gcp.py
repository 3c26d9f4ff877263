"""Google Cloud on 127.0.0.1 for tests/test_gcp.py: an emulator where one exists, documented-shape servers elsewhere.

- GCSEmulator: gcp-storage-emulator (PyPI, pinned in requirements-dev.txt) as a
  child process, in memory. It serves the JSON API's metadata, ranged media
  reads and resumable uploads. It lacks what the generation pin and the
  cancel need: it ignores `ifGenerationMatch` and `generation=` on media reads,
  sends no `x-goog-generation`, and has no DELETE on an upload session. Those
  parts are tested against GCSServer below.
- GCSServer: the JSON API parts gs:// uses, as documented:
  https://cloud.google.com/storage/docs/json_api/v1/objects/get (metadata; `alt=media`
  with Range, `generation=`, `ifGenerationMatch` answered 412 when the live
  generation differs, `x-goog-generation` on every media answer),
  https://cloud.google.com/storage/docs/performing-resumable-uploads (POST
  `uploadType=resumable` answered with a `Location` session URI; PUT chunks with
  `Content-Range: bytes a-b/*` answered 308 and `Range: bytes=0-N`; the last
  chunk or `bytes */TOTAL` completes with the object resource; DELETE cancels,
  answered 499, and the session answers 404 after).
- MetadataServer: the GCE / GKE metadata server's token endpoint,
  https://cloud.google.com/compute/docs/access/authenticate-workloads#applications
  and https://cloud.google.com/kubernetes-engine/docs/concepts/workload-identity#metadata_server:
  GET /computeMetadata/v1/instance/service-accounts/default/token needs
  `Metadata-Flavor: Google` (403 without it, as the real one; also 403 to a
  request with X-Forwarded-For) and answers {access_token, expires_in, token_type}
  with `Metadata-Flavor: Google`. Plain http, as in real life.
- OAuthServer: Google's OAuth 2.0 token endpoint for service accounts,
  https://developers.google.com/identity/protocols/oauth2/service-account#httprest:
  POST grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer&assertion=JWT; the
  JWT's RS256 signature is verified with the service account's public key, its
  kid, iss, scope, aud (this endpoint's URL), iat and exp (at most an hour)
  checked; anything wrong is 400 {"error": "invalid_grant"}.
- KMSServer: Cloud KMS's encrypt and decrypt,
  https://cloud.google.com/kms/docs/reference/rest/v1/projects.locations.keyRings.cryptoKeys/encrypt
  and .../decrypt, with the CRC32C fields of
  https://cloud.google.com/kms/docs/data-integrity-guidelines (google-crc32c as
  the reference): real AES-256-GCM under a per-key secret with the AAD bound,
  400 INVALID_ARGUMENT when a ciphertext does not decrypt, 401 without a
  known bearer token, 403 for a key the caller may not use.

Every server records each request (http.Server.seen), so tests check what
the client sent: the Metadata-Flavor header, the JWT, the bearer, the AAD.
`answer` hooks replace an answer to play malformed variants.
"""

from __future__ import annotations

import atexit
import base64
import json
import os
import re
import secrets
import sys
import threading
import time
import urllib.error
import urllib.request
from typing import Any, Callable
from urllib.parse import parse_qs, quote, unquote, urlsplit

import google_crc32c

from .faults import Fault
from .http import Server
from .processes import LOCAL, free_port, start_child, stop_process, write_file

METADATA_TOKEN_PATH = "/computeMetadata/v1/instance/service-accounts/default/token"
SCOPE = "https://www.googleapis.com/auth/cloud-platform"


def crc(data: bytes) -> int:
    return google_crc32c.value(data)


def new_token() -> str:
    return "ya29." + secrets.token_urlsafe(24)


# --------------------------------------------------------------------------- the emulator

class GCSEmulator:
    """gcp-storage-emulator on 127.0.0.1 (in memory), a child process that dies with us."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://{LOCAL}:{self.port}"
        self.host = f"{LOCAL}:{self.port}"

        def ready() -> bool:
            try:
                with urllib.request.urlopen(f"{self.url}/", timeout=1) as r:
                    return r.status == 200
            except OSError:
                return False

        self.proc = start_child([sys.executable, "-m", "gcp_storage_emulator", "start", "--port", str(self.port),
                                 "-H", LOCAL, "--in-memory", "-q"], ready, "gcp-storage-emulator")

    def stop(self) -> None:
        stop_process(self.proc)

    # An independent client (urllib), the oracle of what the emulator holds.
    def create_bucket(self, name: str) -> None:
        req = urllib.request.Request(f"{self.url}/storage/v1/b?project=test", method="POST",
                                     data=json.dumps({"name": name}).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 200

    def put(self, bucket: str, name: str, data: bytes) -> None:
        req = urllib.request.Request(
            f"{self.url}/upload/storage/v1/b/{bucket}/o?uploadType=media&name={quote(name, safe='')}",
            method="POST", data=data, headers={"Content-Type": "application/octet-stream"})
        with urllib.request.urlopen(req, timeout=30) as r:
            assert r.status == 200

    def get(self, bucket: str, name: str) -> bytes | None:
        """The object's bytes, or None when there is no such object."""
        try:
            with urllib.request.urlopen(f"{self.url}/storage/v1/b/{bucket}/o/{quote(name, safe='')}?alt=media",
                                        timeout=30) as r:
                return r.read()
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return None
            raise


_emulator: GCSEmulator | None = None
_emulator_lock = threading.Lock()


def gcs_emulator() -> GCSEmulator:
    """One emulator for the whole test run."""
    global _emulator
    with _emulator_lock:
        if _emulator is None:
            _emulator = GCSEmulator()
            atexit.register(_emulator.stop)
        return _emulator


# --------------------------------------------------------------------------- GCS (documented shapes)

_RANGE = re.compile(r"bytes=(\d+)-(\d+)$")
_CONTENT_RANGE = re.compile(r"bytes (?:(\d+)-(\d+)|\*)/(\d+|\*)$")


class GCSServer(Server):
    """Objects with generations, ranged media reads pinned by generation, resumable uploads with cancel.

    `token`: the bearer every request must carry (401 otherwise). `ignore_preconditions`:
    serve the live object whatever ifGenerationMatch/generation say (a store that
    ignores them), still naming its generation. `session_base`: the origin put in
    upload session URIs (another server's, to play a hostile answer).
    """

    def __init__(self, *, tls: Any = None, token: str | None = None) -> None:
        self.token = token
        self.ignore_preconditions = False
        self.session_base: str | None = None
        self.objects: dict[tuple[str, str], list[tuple[int, bytes]]] = {}  # every generation, live last
        self.sessions: dict[str, dict[str, Any]] = {}
        self.next_generation = 1_700_000_000_000_000
        self.answer: Callable[[str, dict[str, str]], tuple[int, dict[str, str]] | None] | None = None
        super().__init__(tls)

    def put(self, bucket: str, name: str, data: bytes) -> str:
        with self.lock:
            self.next_generation += 1
            gen = self.next_generation
            self.objects.setdefault((bucket, name), []).append((gen, data))
        return str(gen)

    def live(self, bucket: str, name: str) -> tuple[int, bytes] | None:
        with self.lock:
            versions = self.objects.get((bucket, name))
            return versions[-1] if versions else None

    def handle(self, h: Any, body: bytes, fault: Fault | None) -> None:
        if self.token is not None and h.headers.get("Authorization") != f"Bearer {self.token}":
            h.send_json(401, {"error": {"code": 401, "message": "Invalid Credentials"}})
            return
        parts = urlsplit(h.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        path = parts.path
        m = re.fullmatch(r"/storage/v1/b/([^/]+)/o/([^/]+)", path)
        if m and h.command == "GET":
            self._get(h, unquote(m.group(1)), unquote(m.group(2)), query, fault)
            return
        m = re.fullmatch(r"/upload/storage/v1/b/([^/]+)/o", path)
        if m and h.command == "POST" and query.get("uploadType") == "resumable":
            sid = secrets.token_urlsafe(12)
            with self.lock:
                self.sessions[sid] = {"bucket": unquote(m.group(1)), "name": query["name"], "data": bytearray(),
                                      "state": "open", "auth": h.headers.get("Authorization")}
            base = self.session_base or self.url
            h.respond(200, b"", {"Location": f"{base}/upload/storage/v1/b/{m.group(1)}/o?uploadType=resumable"
                                             f"&name={quote(query['name'], safe='')}&upload_id={sid}"})
            return
        if m and h.command in ("PUT", "DELETE") and "upload_id" in query:
            self._session(h, query["upload_id"], body, fault)
            return
        h.send_json(404, {"error": {"code": 404, "message": "No such object"}})

    def _get(self, h: Any, bucket: str, name: str, query: dict[str, str], fault: Fault | None) -> None:
        with self.lock:
            versions = list(self.objects.get((bucket, name), []))
        if not versions:
            h.send_json(404, {"error": {"code": 404, "message": "No such object"}})
            return
        gen, data = versions[-1]
        if not self.ignore_preconditions:
            if "generation" in query:
                found = [v for v in versions if str(v[0]) == query["generation"]]
                if not found:
                    h.send_json(404, {"error": {"code": 404, "message": "No such object"}})
                    return
                gen, data = found[0]
            if "ifGenerationMatch" in query and query["ifGenerationMatch"] != str(gen):
                h.send_json(412, {"error": {"code": 412, "message": "Precondition Failed"}})
                return
        if query.get("alt") != "media":
            h.send_json(200, {"kind": "storage#object", "bucket": bucket, "name": name, "size": str(len(data)),
                              "generation": str(gen), "metageneration": "1"})
            return
        headers = {"x-goog-generation": str(gen), "x-goog-metageneration": "1",
                   "Content-Type": "application/octet-stream"}
        m = _RANGE.match(h.headers.get("Range") or "")
        if m:
            start, end = int(m.group(1)), min(int(m.group(2)), len(data) - 1)
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            if self.answer is not None:
                replaced = self.answer("media", headers)
                if replaced is not None:
                    status, headers = replaced
                    h.respond(status, data[start:end + 1], headers, fault)
                    return
            h.respond(206, data[start:end + 1], headers, fault)
            return
        h.respond(200, data, headers, fault)

    def _session(self, h: Any, sid: str, body: bytes, fault: Fault | None) -> None:
        with self.lock:
            s = self.sessions.get(sid)
        if s is None or s["state"] != "open":
            h.send_json(404, {"error": {"code": 404, "message": "No such upload"}})
            return
        if h.command == "DELETE":
            with self.lock:
                s["state"] = "cancelled"
            h.respond(499, b"")
            return
        m = _CONTENT_RANGE.match(h.headers.get("Content-Range") or "")
        if not m:
            h.send_json(400, {"error": {"code": 400, "message": "bad Content-Range"}})
            return
        if m.group(1) is not None:
            start, end = int(m.group(1)), int(m.group(2))
            if start != len(s["data"]) or end - start + 1 != len(body):
                h.send_json(400, {"error": {"code": 400, "message": "Content-Range does not follow"}})
                return
            s["data"] += body
        if fault is not None and fault.kind == "cut":  # persisted, then the connection drops unanswered
            h.close_connection = True
            return
        total = None if m.group(3) == "*" else int(m.group(3))
        if total is not None and total == len(s["data"]):
            gen = self.put(s["bucket"], s["name"], bytes(s["data"]))
            with self.lock:
                s["state"] = "done"
            h.send_json(200, {"kind": "storage#object", "bucket": s["bucket"], "name": s["name"],
                              "size": str(total), "generation": gen})
            return
        headers = {"Range": f"bytes=0-{len(s['data']) - 1}"} if s["data"] else {}
        h.respond(308, b"", headers, fault)


# --------------------------------------------------------------------------- the metadata server

class MetadataServer(Server):
    """The metadata server's token endpoint. `answer`: (status, body, headers) instead of a token."""

    def __init__(self, *, expires_in: int = 3599) -> None:
        self.expires_in = expires_in
        self.tokens: list[str] = []
        self.answer: tuple[int, bytes, dict[str, str]] | None = None
        super().__init__(None)

    @property
    def host(self) -> str:
        return f"{LOCAL}:{self.port}"

    @property
    def token(self) -> str:
        return self.tokens[-1]

    def handle(self, h: Any, body: bytes, fault: Fault | None) -> None:
        if h.headers.get("Metadata-Flavor") != "Google" or h.headers.get("X-Forwarded-For"):
            h.respond(403, b"Missing Metadata-Flavor:Google header.", {"Metadata-Flavor": "Google"})
            return
        if h.command != "GET" or urlsplit(h.path).path != METADATA_TOKEN_PATH:
            h.respond(404, b"not found", {"Metadata-Flavor": "Google"})
            return
        if self.answer is not None:
            status, data, headers = self.answer
            h.respond(status, data, headers)
            return
        token = new_token()
        with self.lock:
            self.tokens.append(token)
        h.respond(200, json.dumps({"access_token": token, "expires_in": self.expires_in,
                                   "token_type": "Bearer"}).encode(),
                  {"Content-Type": "application/json", "Metadata-Flavor": "Google"})


# --------------------------------------------------------------------------- OAuth (service-account keys)

def make_service_account(directory: str, token_uri: str, *, email: str = "modelseal@test-project.iam.gserviceaccount.com"
                         ) -> tuple[str, Any, str]:
    """A service-account key file (Google's JSON shape) and its RSA key: (path, private key, key id)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    kid = secrets.token_hex(20)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    doc = {"type": "service_account", "project_id": "test-project", "private_key_id": kid, "private_key": pem,
           "client_email": email, "client_id": "1234567890", "token_uri": token_uri,
           "auth_uri": "https://accounts.google.com/o/oauth2/auth"}
    path = write_file(os.path.join(directory, "sa.json"), json.dumps(doc))
    return path, key, kid


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class OAuthServer(Server):
    """POST /token: the jwt-bearer grant, the assertion verified with the registered public key."""

    def __init__(self, *, tls: Any) -> None:
        self.accounts: dict[str, tuple[Any, str]] = {}  # client_email -> (public key, key id)
        self.tokens: list[str] = []
        self.assertions: list[tuple[dict, dict]] = []  # (header, claims) of every verified JWT
        self.answer: tuple[int, bytes] | None = None
        super().__init__(tls)

    @property
    def token_uri(self) -> str:
        return f"{self.url}/token"

    def register(self, email: str, public_key: Any, kid: str) -> None:
        self.accounts[email] = (public_key, kid)

    def _verify(self, form: dict[str, str]) -> str | None:
        """None when the grant is good, else why not."""
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            return "grant_type"
        parts = form.get("assertion", "").split(".")
        if len(parts) != 3:
            return "assertion"
        header, claims = json.loads(_unb64url(parts[0])), json.loads(_unb64url(parts[1]))
        account = self.accounts.get(claims.get("iss"))
        if account is None:
            return "iss"
        public, kid = account
        try:
            public.verify(_unb64url(parts[2]), f"{parts[0]}.{parts[1]}".encode(), padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            return "signature"
        now = time.time()
        if header.get("alg") != "RS256" or header.get("kid") != kid:
            return "header"
        if claims.get("aud") != self.token_uri or claims.get("scope") != SCOPE:
            return "aud/scope"
        if not (claims["iat"] - 300 <= now <= claims["exp"] + 300) or claims["exp"] - claims["iat"] > 3600:
            return "time"
        with self.lock:
            self.assertions.append((header, claims))
        return None

    def handle(self, h: Any, body: bytes, fault: Fault | None) -> None:
        if h.command != "POST" or urlsplit(h.path).path != "/token":
            h.send_json(404, {"error": "not_found"})
            return
        if "application/x-www-form-urlencoded" not in (h.headers.get("Content-Type") or ""):
            h.send_json(400, {"error": "invalid_request"})
            return
        form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
        why = self._verify(form)
        if why is not None:
            h.send_json(400, {"error": "invalid_grant", "error_description": why})
            return
        if self.answer is not None:
            status, data = self.answer
            h.respond(status, data, {"Content-Type": "application/json"})
            return
        token = new_token()
        with self.lock:
            self.tokens.append(token)
        h.send_json(200, {"access_token": token, "expires_in": 3599, "token_type": "Bearer"})


# --------------------------------------------------------------------------- Cloud KMS

class KMSServer(Server):
    """POST /v1/{name}:encrypt and :decrypt for CryptoKeys, with AAD and the CRC32C integrity fields.

    `tokens`: the bearer tokens accepted (a callable, so a test can hand over its
    metadata server's). `denied`: key names the caller may not use (403).
    `answer(method, doc) -> doc`: rewrites a good answer (malformed variants).
    """

    def __init__(self, *, tls: Any, tokens: Callable[[], list[str]]) -> None:
        self.tokens = tokens
        self.keys: dict[str, list[bytes]] = {}  # CryptoKey name -> secrets of its versions
        self.denied: set[str] = set()
        self.aads: list[bytes] = []  # the AAD of every request
        self.answer: Callable[[str, dict], Any] | None = None
        super().__init__(tls)

    def add_key(self, name: str) -> str:
        with self.lock:
            self.keys.setdefault(name, []).append(os.urandom(32))
        return name

    def handle(self, h: Any, body: bytes, fault: Fault | None) -> None:
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        auth = h.headers.get("Authorization") or ""
        if not auth.startswith("Bearer ") or auth[len("Bearer "):] not in self.tokens():
            h.send_json(401, {"error": {"code": 401, "status": "UNAUTHENTICATED",
                                        "message": "Request had invalid authentication credentials."}})
            return
        m = re.fullmatch(r"/v1/(projects/[^/]+/locations/[^/]+/keyRings/[^/]+/cryptoKeys/[^/:]+):(encrypt|decrypt)",
                         urlsplit(h.path).path)
        if h.command != "POST" or not m:
            h.send_json(404, {"error": {"code": 404, "status": "NOT_FOUND"}})
            return
        name, method = m.group(1), m.group(2)
        if name in self.denied:
            h.send_json(403, {"error": {"code": 403, "status": "PERMISSION_DENIED",
                                        "message": f"Permission 'cloudkms.cryptoKeyVersions.use{method.title()}' "
                                                   "denied"}})
            return
        versions = self.keys.get(name)
        if versions is None:
            h.send_json(404, {"error": {"code": 404, "status": "NOT_FOUND", "message": f"{name} not found."}})
            return
        req = json.loads(body)
        aad = base64.b64decode(req.get("additionalAuthenticatedData", ""))
        with self.lock:
            self.aads.append(aad)
        if method == "encrypt":
            pt = base64.b64decode(req["plaintext"])
            verified_pt = "plaintextCrc32c" in req
            verified_aad = "additionalAuthenticatedDataCrc32c" in req
            if (verified_pt and int(req["plaintextCrc32c"]) != crc(pt)) or (
                    verified_aad and int(req["additionalAuthenticatedDataCrc32c"]) != crc(aad)):
                h.send_json(400, {"error": {"code": 400, "status": "INVALID_ARGUMENT", "message": "checksum"}})
                return
            version = len(versions)
            nonce = os.urandom(12)
            ct = version.to_bytes(4, "big") + nonce + AESGCM(versions[-1]).encrypt(nonce, pt, aad)
            doc = {"name": f"{name}/cryptoKeyVersions/{version}", "ciphertext": base64.b64encode(ct).decode(),
                   "ciphertextCrc32c": str(crc(ct)), "verifiedPlaintextCrc32c": verified_pt,
                   "verifiedAdditionalAuthenticatedDataCrc32c": verified_aad, "protectionLevel": "SOFTWARE"}
        else:
            ct = base64.b64decode(req["ciphertext"])
            if ("ciphertextCrc32c" in req and int(req["ciphertextCrc32c"]) != crc(ct)) or (
                    "additionalAuthenticatedDataCrc32c" in req and int(req["additionalAuthenticatedDataCrc32c"])
                    != crc(aad)):
                h.send_json(400, {"error": {"code": 400, "status": "INVALID_ARGUMENT", "message": "checksum"}})
                return
            version = int.from_bytes(ct[:4], "big")
            try:
                if not 1 <= version <= len(versions):
                    raise ValueError
                pt = AESGCM(versions[version - 1]).decrypt(ct[4:16], ct[16:], aad)
            except (ValueError, InvalidTag):
                h.send_json(400, {"error": {"code": 400, "status": "INVALID_ARGUMENT",
                                            "message": "Decryption failed: the ciphertext is invalid."}})
                return
            doc = {"plaintext": base64.b64encode(pt).decode(), "plaintextCrc32c": str(crc(pt)),
                   "usedPrimary": version == len(versions), "protectionLevel": "SOFTWARE"}
        if self.answer is not None:
            doc = self.answer(method, doc)
        data = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
        h.respond(200, data, {"Content-Type": "application/json; charset=UTF-8"})
