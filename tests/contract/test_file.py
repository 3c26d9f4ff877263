"""The contract (suite.py) for file:// and plain paths: a local file, written through NAME.partial."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from contract.suite import Contract, Store
from modelseal.atomic import PARTIAL_SUFFIX


class FileStore(Store):
    cannot_deny = "root reads any file"
    replaced = "reads-old"  # an open descriptor keeps the file it opened

    def __init__(self, root: Path) -> None:
        self.root = root

    def uri(self, name: str) -> str:
        return str(self.root / name)

    def put(self, name: str, data: bytes) -> str:
        (self.root / name).write_bytes(data)
        return self.uri(name)

    def replace(self, name: str, data: bytes) -> None:
        (self.root / "new").write_bytes(data)
        os.replace(self.root / "new", self.root / name)

    def read(self, name: str) -> bytes | None:
        path = self.root / name
        return path.read_bytes() if path.exists() else None

    def leftovers(self) -> list[str]:
        return [n for n in os.listdir(self.root) if n.endswith(PARTIAL_SUFFIX)]


class TestFile(Contract):
    @pytest.fixture
    def store(self, tmp_path: Path) -> FileStore:
        return FileStore(tmp_path)  # ciphertext: any filesystem will do
