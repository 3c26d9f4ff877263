"""The fixtures every test module may use, registered for the whole suite by tests/conftest.py.

moto (one server for the run), pki (the TLS test PKI), shm_dir (a private
tmpfs directory), aws_env (dummy credentials, nothing beyond 127.0.0.1),
and no_proxy_env (autouse: test traffic never goes through a proxy from the
environment); fast() is the connection settings of in-process source tests.
"""

from __future__ import annotations

import shutil
from typing import Any

import pytest

from .moto import AWS_ENV, AWS_UNSET, MotoServer, moto_server
from .pki import make_pki
from .processes import make_shm_dir


@pytest.fixture(scope="session")
def moto() -> MotoServer:
    return moto_server()


@pytest.fixture(scope="session")
def pki() -> Any:
    d = make_shm_dir("modelseal-pki-")
    try:
        yield make_pki(d)
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def shm_dir() -> Any:
    """A private directory on tmpfs for keys, tokens and plaintext."""
    d = make_shm_dir()
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(autouse=True)
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Test traffic goes straight to 127.0.0.1, never through a proxy from the environment."""
    for k in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "https_proxy", "http_proxy", "all_proxy"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Dummy credentials, a region, and nothing that could reach beyond 127.0.0.1."""
    for k in AWS_UNSET:
        monkeypatch.delenv(k, raising=False)
    for k, v in AWS_ENV.items():
        monkeypatch.setenv(k, v)


def fast(**kw: Any) -> Any:
    """Connection settings for tests: short timeouts, tiny backoff, 127.0.0.1 only."""
    from modelseal.connection import Connection

    extra = {"backoff": "0.01", "backoff_max": "0.05"}
    extra.update(kw.pop("extra", {}))
    kw.setdefault("timeout", 5.0)
    kw.setdefault("retries", 4)
    return Connection(extra=extra, **kw)
