"""The contract (suite.py) for https://: the tests' object server (Range, If-Range, ETags) with the test CA."""

from __future__ import annotations

from typing import Any, Iterator

import pytest

from contract.suite import Contract, Store
from modelseal.connection import Connection
from support.fixtures import fast
from support.objects import ObjectServer


class HttpsStore(Store):
    writes = False  # a web server is read from; `seal -o https://` is refused

    def __init__(self, pki: Any) -> None:
        self.pki = pki
        self.server = self.faults = ObjectServer({}, tls=pki.server_context())

    def uri(self, name: str) -> str:
        return f"{self.server.url}/{name}"

    def put(self, name: str, data: bytes) -> str:
        with self.server.lock:
            self.server.objects[f"/{name}"] = data
        return self.uri(name)

    def replace(self, name: str, data: bytes) -> None:
        self.put(name, data)

    def read(self, name: str) -> bytes | None:
        with self.server.lock:
            return self.server.objects.get(f"/{name}")

    def args(self) -> list[str]:
        return ["--ca", self.pki.ca, "--timeout", "5"]

    def connection(self) -> Connection:
        return fast(ca=self.pki.ca)

    def data_path(self, name: str) -> str:
        return f"/{name}"


class TestHttps(Contract):
    @pytest.fixture
    def store(self, pki: Any) -> Iterator[HttpsStore]:
        s = HttpsStore(pki)
        try:
            yield s
        finally:
            s.server.close()
