"""The contract (suite.py) for gs://: the documented-shape GCS server of tests/support/gcp.py, over TLS.

Not gcp-storage-emulator (tests/test_gcp.py reads and writes through it too): it ignores
ifGenerationMatch and sends no x-goog-generation, so a mid-download replacement cannot be told
from it, whereas GCS answers 412. GCSServer keeps every generation, pins media reads by
generation as GCS does, and keeps its upload sessions, so an abort can be seen to cancel them.
"""

from __future__ import annotations

import uuid
from typing import Any, Iterator

import pytest

from contract.suite import Contract, Store
from modelseal import gcp
from modelseal.connection import Connection
from support.fixtures import fast
from support.gcp import GCSServer

#: Anonymous (no token to fetch); small parts; a tiny backoff for the retries.
QUERY = "part_size=1MiB&concurrency=1&anonymous=true&backoff=0.01&backoff_max=0.05"


class GsStore(Store):
    def __init__(self, pki: Any) -> None:
        self.pki = pki
        self.server = self.faults = GCSServer(tls=pki.server_context())
        self.bucket = "contract-" + uuid.uuid4().hex[:12]

    def uri(self, name: str) -> str:
        return f"gs://{self.bucket}/{name}?{QUERY}"

    def put(self, name: str, data: bytes) -> str:
        self.server.put(self.bucket, name, data)
        return self.uri(name)

    def replace(self, name: str, data: bytes) -> None:
        self.server.put(self.bucket, name, data)  # a new generation

    def read(self, name: str) -> bytes | None:
        live = self.server.live(self.bucket, name)
        return None if live is None else live[1]

    def leftovers(self) -> list[str]:
        with self.server.lock:
            return [s["name"] for s in self.server.sessions.values() if s["state"] == "open"]

    def args(self) -> list[str]:
        return ["--endpoint-url", self.server.url, "--ca", self.pki.ca, "--timeout", "5"]

    def connection(self) -> Connection:
        return fast(endpoint_url=self.server.url, ca=self.pki.ca)

    def data_path(self, name: str) -> str:
        return "alt=media"


class TestGs(Contract):
    @pytest.fixture
    def store(self, pki: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[GsStore]:
        for k in ("GOOGLE_APPLICATION_CREDENTIALS", "GCE_METADATA_HOST", "STORAGE_EMULATOR_HOST"):
            monkeypatch.delenv(k, raising=False)
        gcp._cache.clear()
        s = GsStore(pki)
        try:
            yield s
        finally:
            s.server.close()
