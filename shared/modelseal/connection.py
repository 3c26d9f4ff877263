"""How every backend reaches its service: timeouts, TLS, credentials' files, endpoints, retries.

One group of settings shared by the sources, the key services, the registry
client and the web and retry layers; each may also come from a URI's query
(`?timeout=5&ca=/etc/ca.pem`). Its own module, below everything that takes
it, so that the backends need nothing of the stage options (options.py) that
open them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

from . import bounds
from .errors import UsageError


@dataclass(frozen=True)
class Connection:
    """Connection settings common to every backend; any may come from the URI query."""

    timeout: float = field(default=30.0, metadata={"number": bounds.TIMEOUT})
    ca: str | None = field(default=None, metadata={"check": True})  # CA bundle for TLS
    cert: str | None = None  # client certificate (PEM, may hold the key)
    cert_key: str | None = None  # client key, when separate
    token_file: str | None = None  # bearer token
    endpoint_url: str | None = None
    allow_http: bool = False
    retries: int = field(default=6, metadata={"number": bounds.RETRIES})
    #: S3 parts in flight: (concurrency + 1) x part_size of memory
    concurrency: int = field(default=4, metadata={"number": bounds.CONCURRENCY})
    cdh_url: str = "http://127.0.0.1:8006"
    role: str | None = None  # Vault Kubernetes-auth role
    extra: dict[str, str] = field(default_factory=dict)

    def with_query(self, query: dict[str, str]) -> "Connection":
        """These settings with the URI query's values; numbers are read by their bounds.Number rule,
        and a setting that asks for a check (`ca`) may not be empty, as with its flag."""
        known = {f.name: f for f in fields(self) if f.name != "extra"}
        changes: dict[str, Any] = {}
        extra = dict(self.extra)
        for k, v in query.items():
            f = known.get(k)
            if f is None:
                extra[k] = v
            elif "number" in f.metadata:
                changes[k] = f.metadata["number"].parse(v, f"query parameter {k}")
            elif f.metadata.get("check") and not v.strip():
                raise UsageError(f"query parameter {k}: an empty value would turn its check off; "
                                 "give a value or leave it out")
            elif isinstance(getattr(self, k), bool):
                changes[k] = v.lower() in ("1", "true", "yes")
            else:
                changes[k] = v
        return replace(self, extra=extra, **changes)

    @classmethod
    def checks(cls) -> tuple[str, ...]:
        """The settings that ask for a check (a trust anchor): an empty value is refused."""
        return tuple(f.name for f in fields(cls) if f.metadata.get("check"))
