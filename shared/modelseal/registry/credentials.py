"""Registry credentials from a Docker config file, the way `docker` and the kubelet find them.

Where: `$DOCKER_CONFIG/config.json`, or `$DOCKER_CONFIG/.dockerconfigjson`
(a Kubernetes `kubernetes.io/dockerconfigjson` pull secret mounted as a
volume at $DOCKER_CONFIG), or `$DOCKER_CONFIG` itself when it names a file;
without DOCKER_CONFIG, `~/.docker/config.json`. No file, or no entry for the
registry, means anonymous.

What: the `auths` entry whose key names the registry (`host[:port]`, with or
without a scheme or a path such as `https://index.docker.io/v1/`): `auth`
(base64 of user:password) or `username`/`password`, `identitytoken` (an
OAuth2 refresh token, sent to the token endpoint) or `registrytoken` (a
bearer token for the registry itself). Credential helpers (`credsStore`,
`credHelpers`) are programs the images do not have: they are not run, and
a warning says so.

The secrets are kept out of reprs, logs and error texts: messages name the
file, never its content.
"""

from __future__ import annotations

import base64
import binascii
import os
from dataclasses import dataclass, field

from .. import retry, untrusted
from ..errors import UsageError, from_os_error

MAX_CONFIG = 1 << 20
# Docker Hub answers to several names; `docker login` writes the first.
_ALIASES = {"index.docker.io": "docker.io", "registry-1.docker.io": "docker.io", "docker.io": "docker.io"}


@dataclass(frozen=True)
class Credentials:
    source: str  # the file they came from (safe to log)
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    identity_token: str | None = field(default=None, repr=False)
    registry_token: str | None = field(default=None, repr=False)

    @property
    def basic(self) -> str | None:
        """The `Authorization: Basic` value, when there is a username and password."""
        if self.username is None or self.password is None:
            return None
        return "Basic " + base64.b64encode(f"{self.username}:{self.password}".encode()).decode()


def config_path(environ: dict[str, str] | None = None) -> str | None:
    """The Docker config file in force, or None when there is none."""
    env = os.environ if environ is None else environ
    where = env.get("DOCKER_CONFIG")
    if where:
        if os.path.isfile(where):
            return where
        for name in ("config.json", ".dockerconfigjson"):
            path = os.path.join(where, name)
            if os.path.isfile(path):
                return path
        return None
    home = env.get("HOME") or os.path.expanduser("~")
    path = os.path.join(home, ".docker", "config.json")
    return path if os.path.isfile(path) else None


def _key(name: str) -> str:
    """An `auths` key or a registry name reduced to host[:port], lowercase."""
    name = name.strip().lower()
    for prefix in ("https://", "http://"):
        name = name.removeprefix(prefix)
    name = name.split("/", 1)[0]
    return _ALIASES.get(name, name)


def _load(path: str) -> dict:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_CONFIG + 1)
    except OSError as exc:
        raise from_os_error(exc, f"Docker config {path}") from None
    if len(data) > MAX_CONFIG:
        raise UsageError(f"Docker config {path} is larger than {MAX_CONFIG} bytes")
    obj = untrusted.json_document(data, f"Docker config {path}", UsageError)
    if not isinstance(obj, dict) or not isinstance(obj.get("auths", {}), dict):
        raise UsageError(f"Docker config {path}: expected an object with an 'auths' object")
    return obj


def _text(entry: dict, name: str, path: str) -> str | None:
    value = entry.get(name)
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise UsageError(f"Docker config {path}: '{name}' of an auths entry is not a string")
    return value


def lookup(registry: str, environ: dict[str, str] | None = None) -> Credentials | None:
    """Credentials for `registry` (host[:port]) from the Docker config in force, or None."""
    path = config_path(environ)
    if path is None:
        return None
    obj = _load(path)
    want = _key(registry)
    entry = next((v for k, v in obj.get("auths", {}).items() if _key(k) == want), None)
    if entry is None:
        helpers = obj.get("credHelpers")
        if not isinstance(helpers, dict):
            helpers = {}
        if obj.get("credsStore") or any(_key(k) == want for k in helpers):
            retry.log().warning("credential_helper_ignored", registry=registry, config=path,
                                note="credential helpers are not run here; put the credentials in 'auths'")
        return None
    if not isinstance(entry, dict):
        raise UsageError(f"Docker config {path}: the auths entry for {registry} is not an object")
    username, password = _text(entry, "username", path), _text(entry, "password", path)
    auth = _text(entry, "auth", path)
    if auth is not None:
        try:
            decoded = base64.b64decode(auth, validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            raise UsageError(f"Docker config {path}: 'auth' for {registry} is not base64 of user:password") from None
        if ":" not in decoded:
            raise UsageError(f"Docker config {path}: 'auth' for {registry} is not base64 of user:password")
        username, password = decoded.split(":", 1)
    identity = _text(entry, "identitytoken", path)
    registry_token = _text(entry, "registrytoken", path)
    if username is None and identity is None and registry_token is None:
        return None
    return Credentials(path, username, password, identity, registry_token)
