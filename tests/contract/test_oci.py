"""The contract (suite.py) for oci://: Debian's docker-registry behind the fault proxy, oras-py as the other writer.

An OCI reference names a manifest, and the manifest the blob's digest: a tag moved to another
model mid-download leaves the download on the blob it started with (the original bytes).
"""

from __future__ import annotations

import json
import os
import tempfile
import urllib.error
import urllib.request
from typing import Iterator

import pytest

from conftest import need
from contract.suite import Contract, Store
from modelseal.connection import Connection
from support.faults import FaultProxy
from support.fixtures import fast
from support.registry import Registry

REPOSITORY = "contract"


class OciStore(Store):
    replaced = "reads-old"  # pinned by the manifest's digest

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.proxy = self.faults = FaultProxy(registry.port)
        self.host = f"127.0.0.1:{self.proxy.port}"

    def uri(self, name: str) -> str:
        return f"oci://{self.host}/{REPOSITORY}/{name}:1"

    def write_uri(self, name: str) -> str:
        return self.uri(name) + "?part_size=1MiB"

    def put(self, name: str, data: bytes) -> str:
        import oras.client

        with tempfile.TemporaryDirectory() as work:
            with open(os.path.join(work, "model.seal"), "wb") as f:
                f.write(data)
            cwd = os.getcwd()
            os.chdir(work)  # oras names the layer by the path it is given
            try:
                resp = oras.client.OrasClient(hostname=self.registry.host, insecure=True).push(
                    target=f"{self.registry.host}/{REPOSITORY}/{name}:1", files=["model.seal"], quiet=True)
            finally:
                os.chdir(cwd)
        assert resp.status_code == 201
        return self.uri(name)

    def replace(self, name: str, data: bytes) -> None:
        self.put(name, data)  # the tag now names another manifest, and it another blob

    def _get(self, path: str, accept: str = "") -> bytes | None:
        req = urllib.request.Request(f"{self.registry.url}/v2/{REPOSITORY}/{path}", headers={"Accept": accept})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.read()
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return None
            raise

    def read(self, name: str) -> bytes | None:
        manifest = self._get(f"{name}/manifests/1", "application/vnd.oci.image.manifest.v1+json")
        if manifest is None:
            return None
        return self._get(f"{name}/blobs/{json.loads(manifest)['layers'][0]['digest']}")

    def args(self) -> list[str]:
        return ["--allow-http", "--timeout", "5"]

    def connection(self) -> Connection:
        return fast(allow_http=True)

    def data_path(self, name: str) -> str:
        return "/blobs/"


class TestOci(Contract):
    @pytest.fixture(scope="class")
    def registry(self) -> Iterator[Registry]:
        try:
            import oras.client  # noqa: F401 - the other writer (requirements-dev.txt)
        except ImportError as exc:
            need(f"oras-py is not installed ({exc})")
        with Registry() as registry:
            yield registry

    @pytest.fixture
    def store(self, registry: Registry) -> Iterator[OciStore]:
        s = OciStore(registry)
        try:
            yield s
        finally:
            s.proxy.close()
