"""VaultServer: Vault's HTTP API, the parts modelseal uses (KV v2, Kubernetes auth, transit)."""

from __future__ import annotations

import base64
import json
import os
import secrets
import ssl
from typing import Any

from .faults import Fault
from .http import Server, _Handler


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
