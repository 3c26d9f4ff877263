"""The contract (suite.py) for azblob://: Azurite behind the fault proxy (the account key), the Azure SDK as the oracle.

An aborted write commits no block list, so no blob appears; Blob Storage drops uncommitted
blocks on its own (after a week), and no API deletes them sooner: nothing is left to list.
"""

from __future__ import annotations

import uuid
from typing import Any, Iterator

import pytest

from conftest import need
from contract.suite import Contract, Store
from modelseal.connection import Connection
from support.azure import DEV_ACCOUNT, DEV_KEY, Azurite, azurite_missing, azurite_server
from support.faults import FaultProxy
from support.fixtures import fast

#: Small parts, one at a time; a tiny backoff for the retries.
QUERY = "part_size=1MiB&concurrency=1&backoff=0.01&backoff_max=0.05"
#: What the machine's environment could otherwise pick a credential or an endpoint from.
AZURE_VARS = ("AZURE_FEDERATED_TOKEN_FILE", "AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_AUTHORITY_HOST",
              "AZURE_POD_IDENTITY_AUTHORITY_HOST", "AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_SAS_TOKEN",
              "AZURE_STORAGE_ACCOUNT", "IDENTITY_ENDPOINT", "MSI_ENDPOINT")


class AzblobStore(Store):
    def __init__(self, azurite: Azurite) -> None:
        self.name = "contract-" + uuid.uuid4().hex[:12]
        self.container: Any = azurite.service().create_container(self.name)
        self.proxy = self.faults = FaultProxy(azurite.port)
        self.endpoint = f"{self.proxy.url}/{DEV_ACCOUNT}"

    def uri(self, name: str) -> str:
        return f"azblob://{DEV_ACCOUNT}/{self.name}/{name}?{QUERY}"

    def put(self, name: str, data: bytes) -> str:
        self.container.upload_blob(name, data, overwrite=True)
        return self.uri(name)

    def replace(self, name: str, data: bytes) -> None:
        self.container.upload_blob(name, data, overwrite=True)

    def read(self, name: str) -> bytes | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return self.container.download_blob(name).readall()
        except ResourceNotFoundError:
            return None

    def args(self) -> list[str]:
        return ["--endpoint-url", self.endpoint, "--timeout", "5"]

    def connection(self) -> Connection:
        return fast(endpoint_url=self.endpoint)

    def data_path(self, name: str) -> str:
        return f"/{self.name}/{name}"


class TestAzblob(Contract):
    @pytest.fixture
    def store(self, monkeypatch: pytest.MonkeyPatch) -> Iterator[AzblobStore]:
        need(azurite_missing())
        for k in AZURE_VARS:
            monkeypatch.delenv(k, raising=False)
        monkeypatch.setenv("AZURE_STORAGE_KEY", DEV_KEY)  # the account key: the CLI's environment too
        s = AzblobStore(azurite_server())
        try:
            yield s
        finally:
            s.proxy.close()
