"""The contract (suite.py) for s3://: moto in server mode behind the fault proxy; 1 MiB parts, one at a time."""

from __future__ import annotations

import secrets
from typing import Any, Iterator

import pytest

from contract.suite import Contract, Store
from modelseal.connection import Connection
from support.faults import FaultProxy, s3_error
from support.fixtures import fast

#: Small parts (an object of 3 MiB is three ranged GETs), a tiny backoff for the retries.
QUERY = "part_size=1MiB&concurrency=1&backoff=0.01&backoff_max=0.05"


class S3Store(Store):
    def __init__(self, moto: Any) -> None:
        import boto3

        self.client = boto3.client("s3", endpoint_url=moto.url, region_name="us-east-1")
        self.bucket = f"contract-{secrets.token_hex(4)}"
        self.client.create_bucket(Bucket=self.bucket)
        self.proxy = self.faults = FaultProxy(int(moto.url.rsplit(":", 1)[1]))

    def uri(self, name: str) -> str:
        return f"s3://{self.bucket}/{name}?{QUERY}"

    def write_uri(self, name: str) -> str:
        return f"s3://{self.bucket}/{name}?part_size=1MiB&concurrency=1"  # multipart: S3's 5 MiB minimum applies

    def put(self, name: str, data: bytes) -> str:
        self.client.put_object(Bucket=self.bucket, Key=name, Body=data)
        return self.uri(name)

    def replace(self, name: str, data: bytes) -> None:
        self.put(name, data)

    def read(self, name: str) -> bytes | None:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=name)["Body"].read()
        except self.client.exceptions.NoSuchKey:
            return None

    def leftovers(self) -> list[str]:
        uploads = self.client.list_multipart_uploads(Bucket=self.bucket).get("Uploads", [])
        return [u["Key"] for u in uploads]

    def args(self) -> list[str]:
        return ["--endpoint-url", self.proxy.url, "--timeout", "5"]

    def connection(self) -> Connection:
        return fast(endpoint_url=self.proxy.url)

    def data_path(self, name: str) -> str:
        return f"/{self.bucket}/{name}"

    def denial(self) -> Any:
        fault = s3_error("AccessDenied", 403)
        fault.times = 1000
        return fault

    def outage(self) -> Any:
        fault = s3_error("ServiceUnavailable", 503)
        fault.times = 1000
        return fault


class TestS3(Contract):
    @pytest.fixture
    def store(self, moto: Any, aws_env: None) -> Iterator[S3Store]:
        s = S3Store(moto)
        try:
            yield s
        finally:
            s.proxy.close()
