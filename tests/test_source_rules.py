"""What a source checks in every answer, pinned one rule per test (issue 27's sweep of sources/ and web.py).

Real servers on 127.0.0.1: the suite's object server for https:// (plain
http with allow_http: the rules do not depend on TLS), and moto behind the
fault proxy for s3://, whose scripted answers are what a broken or hostile
store (or a cache in front of it) could send. Each rule has its mutant in
tools/mutants.toml: a check that, deleted, let these answers through.
"""

from __future__ import annotations

import os
import socketserver
import threading
import time
import uuid

import pytest

from modelseal.errors import IntegrityError, UnavailableError, UsageError
from modelseal.sources import open_source
from support.faults import Fault, FaultProxy
from support.fixtures import fast
from support.objects import ObjectServer
from support.processes import write_file

MiB = 1 << 20


def read_all(stream) -> bytes:
    out = bytearray()
    buf = bytearray(1 << 20)
    while n := stream.readinto(buf):
        out += buf[:n]
    return bytes(out)


# ---- https:// ---------------------------------------------------------------------------------------

@pytest.fixture
def web():
    blob = os.urandom(300_000)
    srv = ObjectServer({"/m.seal": blob})
    srv.blob = blob
    yield srv
    srv.close()


def _open(srv: ObjectServer, **options):
    return open_source(f"{srv.url}/m.seal", fast(allow_http=True, **options)).open()


def test_an_encoded_answer_is_refused(web):
    """identity was asked for: a server (or proxy) that compresses anyway would hand us other bytes."""
    web.add_fault(Fault("status", 200, body=web.blob, headers={"Content-Encoding": "gzip",
                                                               "ETag": ObjectServer.etag(web.blob)}))
    with pytest.raises(IntegrityError, match="sent Content-Encoding gzip although identity was asked for"):
        read_all(_open(web))
    assert read_all(_open(web)) == web.blob  # the same object, answered plainly


def test_an_object_that_shrank_during_the_download_is_refused(web):
    """Cut after 100,000 bytes; the resumed request is answered 416 (nothing there any more): the object
    shrank, an integrity error, not a request of ours that was wrong."""
    web.add_fault(Fault("cut", after=100_000, method="GET"),
                  Fault("status", 416, method="GET", headers={"Content-Range": "bytes */50000",
                                                              "ETag": ObjectServer.etag(web.blob)}))
    with pytest.raises(IntegrityError, match="the object shrank during the download"):
        read_all(_open(web))
    assert [r[2] for r in web.requests] == [None, "bytes=100000-"]


def test_a_bearer_token_file_over_the_cap_is_refused(web, tmp_path):
    """A token file is read at each request (it rotates): one over 1 MiB is a usage error, never sent."""
    big = write_file(str(tmp_path / "token"), b"t" * ((1 << 20) + 1))
    with pytest.raises(UsageError, match="token file .* is too large"):
        _open(web, token_file=big)
    assert web.count() == 0


def test_a_rotated_token_is_read_again_for_each_request(tmp_path):
    """Kubernetes rotates a projected service-account token in place: a download resumed after the
    rotation sends the new token (the server no longer takes the old one)."""
    blob = os.urandom(300_000)
    srv = ObjectServer({"/m.seal": blob}, token="token-before-rotation")
    try:
        token = write_file(str(tmp_path / "token"), "token-before-rotation\n")
        srv.add_fault(Fault("cut", after=100_000, method="GET"))
        stream = open_source(f"{srv.url}/m.seal", fast(allow_http=True, token_file=token)).open()
        write_file(token, "token-after-rotation\n")
        srv.token = "token-after-rotation"
        assert read_all(stream) == blob
        assert [r[2] for r in srv.requests] == [None, "bytes=100000-"]
        assert [h.get("Authorization") for _, _, h, _ in srv.seen] == [
            "Bearer token-before-rotation", "Bearer token-after-rotation"]
    finally:
        srv.close()


def test_redirects_are_followed_at_most_five_times(tmp_path):
    """A download follows redirects (presigned URLs, CDNs), but a loop ends after the fifth: six
    requests in all, then a usage error."""
    srv = ObjectServer({})
    try:
        srv.redirects["/loop"] = f"{srv.url}/loop?again"
        with pytest.raises(UsageError, match="more than 5 redirects"):
            open_source(f"{srv.url}/loop", fast(allow_http=True)).open()
        assert srv.count("GET", "/loop") == 6
    finally:
        srv.close()


class _Dropping(socketserver.ThreadingTCPServer):
    """A TCP server that closes every connection at once, as a restarting server or a load balancer
    does: the TLS handshake sees EOF, a dropped connection, not a refused peer."""

    daemon_threads = True

    def __init__(self) -> None:
        self.connections = 0

        class Drop(socketserver.BaseRequestHandler):
            def handle(inner) -> None:  # noqa: N805 - the handler's own self
                self.connections += 1
                inner.request.close()

        super().__init__(("127.0.0.1", 0), Drop)
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()


def test_a_connection_dropped_during_the_tls_handshake_is_retried():
    """EOF during the handshake is transient (retried, then exit 5); only a refused handshake (a
    certificate the CA does not vouch for) is a denial at once."""
    srv = _Dropping()
    try:
        with pytest.raises(UnavailableError, match="unavailable after 3 attempts"):
            open_source(f"https://127.0.0.1:{srv.server_address[1]}/m.seal", fast(retries=3)).open()
        assert srv.connections == 3
    finally:
        srv.shutdown()
        srv.server_close()


# ---- s3:// -------------------------------------------------------------------------------------------

@pytest.fixture
def s3(moto, aws_env):
    import boto3

    client = boto3.client("s3", endpoint_url=moto.url, region_name="us-east-1")
    bucket = "b-" + uuid.uuid4().hex[:12]
    client.create_bucket(Bucket=bucket)
    data = os.urandom(3 * MiB)
    client.put_object(Bucket=bucket, Key="m.seal", Body=data)
    proxy = FaultProxy(moto.port)
    yield client, bucket, data, proxy
    proxy.close()


def _s3(bucket: str, proxy: FaultProxy, concurrency: int = 1):
    return open_source(f"s3://{bucket}/m.seal?part_size=1MiB", fast(endpoint_url=proxy.url, concurrency=concurrency))


@pytest.mark.parametrize("answered", ["a shorter range", "another total"])
def test_an_s3_part_must_be_the_range_asked_for(s3, answered):
    """Part 1 (bytes 0-1048575 of 3 MiB) answered with the right ETag but another range: a part that ends
    elsewhere, or an object of another length, is not the object HeadObject described."""
    client, bucket, data, proxy = s3
    etag = client.head_object(Bucket=bucket, Key="m.seal")["ETag"]
    end = MiB // 2 - 1 if answered == "a shorter range" else MiB - 1
    total = len(data) if answered == "a shorter range" else len(data) + 1
    proxy.add_fault(Fault("status", 206, method="GET", body=data[:end + 1], headers={
        "Content-Range": f"bytes 0-{end}/{total}", "ETag": etag, "Content-Type": "binary/octet-stream"}))
    with pytest.raises(IntegrityError, match="asked for bytes 0-1048575, the store answered another range"):
        read_all(_s3(bucket, proxy).open())


def test_an_s3_object_of_no_usable_length_is_refused(s3):
    client, bucket, data, proxy = s3
    etag = client.head_object(Bucket=bucket, Key="m.seal")["ETag"]
    proxy.add_fault(Fault("status", 200, method="HEAD", headers={"Content-Length": str(1 << 57), "ETag": etag}))
    with pytest.raises(IntegrityError, match="the store's HeadObject answer has no usable length"):
        _s3(bucket, proxy).open()
    assert proxy.count("GET") == 0


def test_s3_concurrency_is_at_least_one(s3):
    client, bucket, data, proxy = s3
    with pytest.raises(UsageError, match="concurrency must be at least 1"):
        _s3(bucket, proxy, concurrency=0)
    assert proxy.count() == 0


def test_an_aborted_upload_stops_retrying_at_once(s3):
    """A part upload is in its first attempt when the upload is aborted (a seal failed): no further
    attempt is made, whatever the retry budget, and nothing is left. The proxy holds the attempt for a
    minute; the 5 s timeout ends it, long after the abort was asked for."""
    client, bucket, data, proxy = s3
    proxy.add_fault(Fault("stall", seconds=60, method="PUT", path="partNumber=1", times=10))
    src = open_source(f"s3://{bucket}/aborted?part_size=5MiB",
                      fast(endpoint_url=proxy.url, timeout=5, retries=4, extra={"backoff": "0.01", "backoff_max": "0.02"}))
    w = src.open_write()
    w.write(os.urandom(6 * MiB))  # the first part goes up in the background
    deadline = time.monotonic() + 60
    while proxy.count("PUT", "partNumber=1") == 0:  # the attempt has reached the store
        assert time.monotonic() < deadline, "the part upload never started"
        time.sleep(0.01)
    w.abort()
    assert proxy.count("PUT", "partNumber=1") == 1
    assert "Contents" not in client.list_objects_v2(Bucket=bucket, Prefix="aborted")
    assert not client.list_multipart_uploads(Bucket=bucket).get("Uploads")
