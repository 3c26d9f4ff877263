"""`oci://REGISTRY[:PORT]/REPO[:TAG|@sha256:DIGEST]`, checked against the distribution grammar.

The repository grammar is distribution's (lowercase path components joined
by `.`, `_`, `__` or dashes); a missing tag means `latest`, as for `docker
pull`. Checking here means a typo is a usage error before any request.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import UsageError
from ..uri import URI

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_TAG = re.compile(r"[\w][\w.-]{0,127}")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_HOST = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
                   r"|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?")
DEFAULT_TAG = "latest"


@dataclass(frozen=True)
class Reference:
    registry: str  # host[:port], as written (the key of Docker config `auths`)
    repository: str
    tag: str | None = None
    digest: str | None = None  # "sha256:<hex>"

    @property
    def reference(self) -> str:
        """What goes after /manifests/: the digest when pinned, else the tag."""
        return self.digest or self.tag or DEFAULT_TAG

    @property
    def host(self) -> str:
        """The host without the port (for TLS and the plain-http rule)."""
        host = self.registry
        if host.startswith("["):
            return host[1:host.index("]")]
        return host.rsplit(":", 1)[0]

    def __str__(self) -> str:
        suffix = f"@{self.digest}" if self.digest else f":{self.reference}"
        return f"oci://{self.registry}/{self.repository}{suffix}"

    def pinned(self, digest: str) -> str:
        return f"oci://{self.registry}/{self.repository}@{digest}"

    @classmethod
    def parse(cls, uri: URI) -> "Reference":
        shown = uri.redacted()
        if "@" in uri.netloc:
            raise UsageError(f"{shown}: credentials in the URI are refused; use a Docker config file")
        if not _HOST.fullmatch(uri.netloc or ""):
            raise UsageError(f"{shown}: not a registry host[:port]")
        rest = uri.path.lstrip("/")
        digest = tag = None
        if "@" in rest:
            rest, digest = rest.split("@", 1)
            if not _DIGEST.fullmatch(digest):
                raise UsageError(f"{shown}: a digest reference must be @sha256: and 64 lowercase hex digits")
        last = rest.rsplit("/", 1)[-1]
        if ":" in last:
            rest, tag = rest.rsplit(":", 1)
            if not _TAG.fullmatch(tag):
                raise UsageError(f"{shown}: bad tag {tag!r}")
        if not _REPOSITORY.fullmatch(rest) or len(rest) > 255:
            raise UsageError(f"{shown}: bad repository name {rest!r} (lowercase letters, digits, . _ - and /)")
        return cls(uri.netloc.lower(), rest, tag, digest)
