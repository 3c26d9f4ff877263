"""Model sources (s3://, https://) against real servers on 127.0.0.1: moto, a TLS object server, a fault proxy."""
# ruff: noqa: F811

from __future__ import annotations

import array
import hashlib
import json
import os
import sys
import time
import uuid

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # tests/support, whatever the import mode

from modelseal.errors import DeniedError, IntegrityError, UnavailableError, UsageError
from modelseal.sources import open_source
from support.faults import Fault, FaultProxy, s3_error
from support.fixtures import fast
from support.objects import ObjectServer
from support.processes import write_file

MiB = 1 << 20


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_all(stream, chunk: int = 1 << 20) -> bytes:
    out = bytearray()
    buf = bytearray(chunk)
    while True:
        n = stream.readinto(buf)
        if not n:
            return bytes(out)
        out += buf[:n]


def pattern(n: int, seed: int = 0) -> bytes:
    """Deterministic bytes where every 4-byte word differs (so a misplaced range shows)."""
    words = array.array("I", range(seed, seed + (n + 3) // 4))
    return words.tobytes()[:n]


# --------------------------------------------------------------------------- S3

@pytest.fixture
def s3(moto, aws_env):
    import boto3

    client = boto3.client("s3", endpoint_url=moto.url, region_name="us-east-1")
    bucket = "b-" + uuid.uuid4().hex[:12]
    client.create_bucket(Bucket=bucket)
    return client, bucket


@pytest.fixture
def proxy(moto):
    p = FaultProxy(moto.port)
    yield p
    p.close()


@pytest.mark.parametrize("size", [0, 1, 100_000, 1 * MiB, 1 * MiB + 1, 40 * MiB + 12345])
def test_s3_get_byte_exact(s3, proxy, size):
    client, bucket = s3
    data = pattern(size, seed=size)
    client.put_object(Bucket=bucket, Key="m.seal", Body=data)
    src = open_source(f"s3://{bucket}/m.seal?part_size=1MiB" if size <= 2 * MiB
                      else f"s3://{bucket}/m.seal", fast(endpoint_url=proxy.url, concurrency=4))
    assert src.size == size
    with src.open() as stream:
        got = read_all(stream, chunk=300_001)
    assert digest(got) == digest(data)
    parts = max(0, -(-size // (1 * MiB if size <= 2 * MiB else 8 * MiB)))
    assert proxy.count("GET") == parts  # one ranged GET per part, nothing more
    assert proxy.count("HEAD") == 1


def test_s3_parallel_parts_in_flight_are_bounded(s3, proxy):
    client, bucket = s3
    data = pattern(12 * MiB, seed=7)
    client.put_object(Bucket=bucket, Key="m", Body=data)
    src = open_source(f"s3://{bucket}/m?part_size=1MiB", fast(endpoint_url=proxy.url, concurrency=3))
    stream = src.open()
    time.sleep(0.5)  # workers fill the window, then must wait for the reader
    assert proxy.count("GET") == 3
    assert stream.read(10) == data[:10]
    got = data[:10] + read_all(stream)
    stream.close()
    assert got == data
    assert proxy.count("GET") == 12


def test_s3_read_prefix_is_one_ranged_get(s3, proxy):
    client, bucket = s3
    data = pattern(3 * MiB)
    client.put_object(Bucket=bucket, Key="m", Body=data)
    src = open_source(f"s3://{bucket}/m", fast(endpoint_url=proxy.url))
    assert src.read_prefix(1000) == data[:1000]
    gets = [r for r in proxy.requests if r[0] == "GET"]
    assert [(m, p.split("?")[0], r) for m, p, r in gets] == [("GET", f"/{bucket}/m", "bytes=0-999")]
    assert presigned_v4(gets[0][1])
    client.put_object(Bucket=bucket, Key="empty", Body=b"")
    assert open_source(f"s3://{bucket}/empty", fast(endpoint_url=proxy.url)).read_prefix(10) == b""


def presigned_v4(path: str) -> bool:
    """Whether a request path carries a SigV4 query-string signature of 900 s and nothing else of ours."""
    from urllib.parse import parse_qs, urlsplit

    query = parse_qs(urlsplit(path).query)
    return (set(query) - {"X-Amz-Security-Token"} == {"X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Date",
                                                       "X-Amz-Expires", "X-Amz-SignedHeaders", "X-Amz-Signature"}
            and query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"] and query["X-Amz-Expires"] == ["900"])


def test_s3_parts_are_presigned_gets_on_kept_connections(s3, proxy):
    """Every part is a SigV4-presigned ranged GET (not botocore's call, ~2 ms of CPU each) on one URL, signed
    once (the Range header is not in the signature), and a part read whole hands its connection back: 25 parts over the HEAD's connection and one per worker, where a
    connection per part was opened before (a TLS handshake per 8 MiB from a real store)."""
    client, bucket = s3
    data = pattern(24 * MiB + 5, seed=21)
    client.put_object(Bucket=bucket, Key="m", Body=data)
    src = open_source(f"s3://{bucket}/m?part_size=1MiB", fast(endpoint_url=proxy.url, concurrency=3))
    signed = []
    presign = src.gets.presigner.generate_presigned_url
    src.gets.presigner.generate_presigned_url = lambda *a, **kw: signed.append(kw) or presign(*a, **kw)
    assert digest(read_all(src.open())) == digest(data)
    gets = [p for m, p, _ in proxy.requests if m == "GET"]
    assert len(gets) == 25 and all(presigned_v4(p) for p in gets)
    assert len(signed) == 1  # one URL for every part: the Range header is not in its signature
    assert proxy.connections <= 1 + 3


@pytest.mark.parametrize("code, status", [("SignatureDoesNotMatch", 403), ("AuthorizationQueryParametersError", 400),
                                          ("PermanentRedirect", 301)])
def test_s3_store_refusing_presigned_urls_is_read_through_the_sdk(s3, proxy, code, status):
    """A store that does not take query-string authentication (a 403 or 400 to any presigned GET), or a
    redirect the SDK knows how to follow, costs one request: that attempt and every later one go through the
    SDK, and the bytes are the object's."""
    client, bucket = s3
    data = pattern(5 * MiB + 3, seed=22)
    client.put_object(Bucket=bucket, Key="m", Body=data)
    refuse = s3_error(code, status)
    refuse.method, refuse.path, refuse.times = "GET", "X-Amz-Signature=", 100
    proxy.add_fault(refuse)
    src = open_source(f"s3://{bucket}/m?part_size=1MiB", fast(endpoint_url=proxy.url, concurrency=1, retries=1))
    assert digest(read_all(src.open())) == digest(data)
    gets = [p for m, p, _ in proxy.requests if m == "GET"]
    assert len(gets) == 6 + 1 and sum(presigned_v4(p) for p in gets) == 1


def test_s3_a_presigned_url_of_another_scheme_is_never_sent(aws_env):
    """A presigned URL is sent only with the scheme of the endpoint that was checked: one that would turn
    https into plain http is dropped, and the SDK call is used. Both clients are botocore's own; nothing
    listens, and nothing is sent."""
    from modelseal import aws
    from modelseal.sources.s3get import RangedGets

    session = aws.session()
    https = aws.client("s3", fast(endpoint_url="https://127.0.0.1:9"), from_session=session)
    http = aws.client("s3", fast(endpoint_url="http://127.0.0.1:9"), from_session=session, signature_version="s3v4")
    gets = RangedGets(https, http, "bucket", "key", "s3://bucket/key")
    assert gets._presigned(0, 9, '"etag"', None) is None
    assert gets.presigned is False


@pytest.mark.parametrize("fault", ["reset", "stall"])
def test_s3_a_failed_presigned_get_names_no_signature(s3, proxy, fault):
    """The presigned URL is a bearer credential: what a failed send raises (the same botocore class the SDK
    call raises, so the retry policy treats it the same) holds no signature, not even as its context."""
    from modelseal.sources.s3 import Backend
    from modelseal.uri import URI

    client, bucket = s3
    client.put_object(Bucket=bucket, Key="m", Body=pattern(3 * MiB))
    proxy.add_fault(Fault(fault, method="GET", seconds=3, after=0))
    b = Backend(URI.parse(f"s3://{bucket}/m"), fast(endpoint_url=proxy.url, timeout=1))
    size, etag, _ = b.head()
    with pytest.raises(Exception) as e:
        b.gets.get(0, size - 1, etag, None)
    exc = e.value
    assert type(exc).__module__ == "botocore.exceptions" and exc.__context__ is None and exc.__cause__ is None
    inner = exc.kwargs.get("error")
    shown = " ".join([str(exc), repr(exc), repr(exc.kwargs), str(inner), repr(getattr(inner, "url", ""))])
    assert "Signature" not in shown and "X-Amz" not in shown and "testing" not in shown
    assert proxy.count("GET") == 1 and presigned_v4([p for m, p, _ in proxy.requests if m == "GET"][0])


def test_s3_a_stalled_content_encoded_body_names_no_signature(s3, proxy):
    """An object stored with a Content-Encoding is read through urllib3 (never decoded: the stored bytes
    are the ciphertext). When its body stalls, nothing in what is raised, down the whole chain, holds the
    presigned URL's signature (urllib3 2.x raises its read timeout with no URL)."""
    import threading

    from modelseal.sources.s3 import Backend
    from modelseal.uri import URI

    client, bucket = s3
    data = pattern(3 * MiB, seed=26)
    client.put_object(Bucket=bucket, Key="m", Body=data, ContentEncoding="gzip")
    proxy.add_fault(Fault("stall", method="GET", after=100_000, seconds=3))
    b = Backend(URI.parse(f"s3://{bucket}/m"), fast(endpoint_url=proxy.url, timeout=1, retries=1))
    size, etag, version = b.head()
    with pytest.raises(Exception) as e:
        b.fetch(0, size - 1, size, etag, version, threading.Event())
    chain, exc = [], e.value
    while exc is not None and len(chain) < 10:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    shown = " ".join(f"{x!s} {x!r} {getattr(x, 'url', '')!r} {getattr(x, 'kwargs', '')!r}" for x in chain)
    assert "Signature" not in shown and "X-Amz" not in shown
    assert any("timed out" in str(x).lower() or isinstance(x, TimeoutError) for x in chain)
    assert proxy.count("GET") == 1 and presigned_v4([p for m, p, _ in proxy.requests if m == "GET"][0])
    assert b.fetch(0, size - 1, size, etag, version, threading.Event()) == data  # and read whole, undecoded


def test_s3_object_deleted_mid_download_is_denied_from_the_presigned_answer(s3, proxy):
    """The presigned GET's 404 is parsed by botocore's own parser into the ClientError get_object raises:
    NoSuchKey, exit 3, in one request (not asked again, not retried)."""
    client, bucket = s3
    client.put_object(Bucket=bucket, Key="m", Body=pattern(2 * MiB))
    src = open_source(f"s3://{bucket}/m?part_size=1MiB", fast(endpoint_url=proxy.url, concurrency=1, retries=4))
    assert src.size == 2 * MiB
    client.delete_object(Bucket=bucket, Key="m")
    with pytest.raises(DeniedError, match="NoSuchKey") as e:
        read_all(src.open())
    assert e.value.exit_code == 3
    # The first part was asked once; the next may have been sent before the stream saw the error.
    assert [r for m, _, r in proxy.requests if m == "GET" and r.startswith("bytes=0-")] == ["bytes=0-1048575"]


def test_s3_an_error_answer_too_large_to_be_one_is_malformed(s3, proxy):
    """An error answer is read for its code only up to 64 KiB: a longer one is malformed, exit 4."""
    client, bucket = s3
    client.put_object(Bucket=bucket, Key="m", Body=b"z" * 1000)
    f = s3_error("InternalError", 500)
    f.method, f.body = "GET", b"<Error>" + b"x" * (100 << 10) + b"</Error>"
    proxy.add_fault(f)
    with pytest.raises(IntegrityError, match="error answer .HTTP 500. of more than 65536 bytes") as e:
        read_all(open_source(f"s3://{bucket}/m", fast(endpoint_url=proxy.url, retries=3)).open())
    assert e.value.exit_code == 4
    assert proxy.count("GET") == 1


def test_s3_no_such_key_is_denied_without_retry(s3, proxy):
    _, bucket = s3
    src = open_source(f"s3://{bucket}/missing", fast(endpoint_url=proxy.url))
    with pytest.raises(DeniedError) as e:
        src.open()
    assert e.value.exit_code == 3
    assert len(proxy.requests) == 1
    with pytest.raises(DeniedError):
        open_source("s3://no-such-bucket-x1/k", fast(endpoint_url=proxy.url)).open()


def test_s3_403_is_denied_at_once(s3, proxy):
    client, bucket = s3
    client.put_object(Bucket=bucket, Key="m", Body=b"x" * 1000)
    denied = s3_error("AccessDenied", 403)
    denied.method, denied.times = "GET", 5
    proxy.add_fault(denied)
    src = open_source(f"s3://{bucket}/m", fast(endpoint_url=proxy.url, retries=5))
    with pytest.raises(DeniedError) as e:
        read_all(src.open())
    assert "AccessDenied" in str(e.value)
    # A 403 to the presigned GET may be about the URL itself (a store without query-string
    # authentication): the same attempt asks once more through the SDK, whose 403 counts. Not retried.
    gets = [p for m, p, _ in proxy.requests if m == "GET"]
    assert len(gets) == 2 and presigned_v4(gets[0]) and "?" not in gets[1]


def test_s3_500_503_then_success(s3, proxy):
    client, bucket = s3
    data = pattern(2 * MiB + 5, seed=3)
    client.put_object(Bucket=bucket, Key="m", Body=data)
    for code, status in (("InternalError", 500), ("SlowDown", 503)):
        f = s3_error(code, status)
        f.method = "GET"
        proxy.add_fault(f)
    src = open_source(f"s3://{bucket}/m", fast(endpoint_url=proxy.url, retries=4))
    assert read_all(src.open()) == data
    assert proxy.count("GET") == 3


def test_s3_unavailable_after_n_attempts(s3, proxy):
    client, bucket = s3
    client.put_object(Bucket=bucket, Key="m", Body=b"y" * 100)
    f = s3_error("ServiceUnavailable", 503)
    f.method, f.times = "GET", 100
    proxy.add_fault(f)
    src = open_source(f"s3://{bucket}/m", fast(endpoint_url=proxy.url, retries=3))
    with pytest.raises(UnavailableError) as e:
        read_all(src.open())
    assert e.value.exit_code == 5
    assert "after 3 attempts" in str(e.value)
    assert proxy.count("GET") == 3


def test_s3_cut_connections_resume_within_the_part(s3, proxy):
    client, bucket = s3
    size = 40 * MiB + 777
    data = pattern(size, seed=11)
    client.put_object(Bucket=bucket, Key="m", Body=data)
    cut_at = 3 * MiB + 12345
    proxy.add_fault(Fault("cut", after=cut_at, method="GET", times=4))
    src = open_source(f"s3://{bucket}/m", fast(endpoint_url=proxy.url, concurrency=4))
    got = read_all(src.open())
    assert digest(got) == digest(data)
    gets = [r for r in proxy.requests if r[0] == "GET"]
    assert len(gets) == 6 + 4  # 6 parts of 8 MiB, 4 of them resumed once
    resumed = [r for r in gets if r[2] and int(r[2][6:].split("-")[0]) % (8 * MiB) == cut_at]
    assert len(resumed) == 4  # each resumed exactly where its cut happened
    # Restarting a part would re-send >= 3 MiB per cut; resuming re-sends at most a read chunk.
    assert proxy.bytes_sent - size <= 4 * 256 * 1024


@pytest.fixture
def tls_proxy(moto, pki):
    """moto behind an https front signed by the test CA: parts arrive on TLS sockets."""
    p = FaultProxy(moto.port, tls=pki.server_context())
    yield p
    p.close()


def test_s3_over_tls_every_part_is_read_whole_by_the_pump(s3, tls_proxy, pki):
    """TLS bodies on the pump's thread: a TLS socket is read until it needs the network again (data that
    OpenSSL has decrypted does not wake epoll), so no part waits for its timeout and none is asked twice."""
    client, bucket = s3
    data = pattern(20 * MiB + 7, seed=23)
    client.put_object(Bucket=bucket, Key="m", Body=data)
    src = open_source(f"s3://{bucket}/m?part_size=1MiB",
                      fast(endpoint_url=tls_proxy.url, ca=pki.ca, concurrency=3, timeout=30))
    assert digest(read_all(src.open())) == digest(data)
    assert tls_proxy.count("GET") == 21  # one GET per part: no timeout, no retry
    assert tls_proxy.connections <= 1 + 3


@pytest.mark.parametrize("fault", ["stall", "cut"])
def test_s3_a_part_stopped_mid_body_resumes_from_its_exact_byte(s3, tls_proxy, pki, fault):
    """The pump counts every byte that arrived before a stall's timeout or a cut, so the part resumes
    there: nothing is fetched twice (the HTTP layer's reads lost up to a read chunk, 256 KiB)."""
    client, bucket = s3
    data = pattern(6 * MiB + 11, seed=24)
    client.put_object(Bucket=bucket, Key="m", Body=data)
    stop_at = 2 * MiB + 300_001  # no chunk boundary
    tls_proxy.add_fault(Fault(fault, method="GET", after=stop_at, seconds=3))
    src = open_source(f"s3://{bucket}/m", fast(endpoint_url=tls_proxy.url, ca=pki.ca, concurrency=1, timeout=1))
    assert digest(read_all(src.open())) == digest(data)
    ranges = [r for m, _, r in tls_proxy.requests if m == "GET"]
    assert ranges == [f"bytes=0-{len(data) - 1}", f"bytes={stop_at}-{len(data) - 1}"]


def test_s3_a_closed_stream_stops_a_part_waiting_on_a_stalled_store(s3, proxy):
    """Closing the stream (a failed decryption, SIGTERM) cancels the part the pump is reading: its worker
    ends long before the store's stall or the socket timeout would end it."""
    import threading

    from modelseal import pump

    client, bucket = s3
    client.put_object(Bucket=bucket, Key="m", Body=pattern(2 * MiB))
    proxy.add_fault(Fault("stall", method="GET", after=1000, seconds=30))
    src = open_source(f"s3://{bucket}/m", fast(endpoint_url=proxy.url, concurrency=1, timeout=60))
    stream = src.open()
    deadline = time.monotonic() + 20
    while not pump.pump()._reads and time.monotonic() < deadline:  # the part is in the pump, waiting
        time.sleep(0.02)
    assert pump.pump()._reads
    workers = [t for t in threading.enumerate() if t.name.startswith("modelseal-s3")]
    assert workers
    stream.close()
    for t in workers:
        t.join(timeout=10)
    assert not any(t.is_alive() for t in workers)


def test_a_pump_that_fails_fails_its_reads_and_a_new_one_serves_the_next():
    """A bug on the pump's thread must fail every read waiting on it, never leave a worker waiting forever;
    the next read gets a new pump."""
    import socket
    import threading

    from modelseal import pump

    a, b = socket.socketpair()
    try:
        broken = pump.pump()

        def boom(*_):
            raise RuntimeError("a bug")

        broken._pull = boom  # the instance only
        b.sendall(b"x" * 10)
        buf = memoryview(bytearray(10))
        answers: list = []
        reader = threading.Thread(target=lambda: answers.append(broken.readinto(a, buf, None)), daemon=True)
        reader.start()
        reader.join(timeout=30)
        assert not reader.is_alive(), "a read waited on a pump that had stopped"
        [(n, error)] = answers
        assert n == 0 and isinstance(error, RuntimeError) and "RuntimeError" in str(error)
        with pytest.raises(RuntimeError, match="body reader stopped"):
            broken.readinto(a, buf, None)
        assert a.gettimeout() is None  # the socket is the caller's again, as it was
        fresh = pump.pump()
        assert fresh is not broken
        assert fresh.readinto(a, buf, None) == (10, None) and bytes(buf) == b"x" * 10
    finally:
        a.close()
        b.close()


def test_the_pump_times_out_a_socket_that_sends_nothing():
    """A store that answered and then sends not one body byte times out after the socket's timeout, as a
    blocking read would (the part is then asked again); it is not left waiting."""
    import socket
    import threading

    from modelseal import pump

    a, b = socket.socketpair()
    a.settimeout(0.5)
    answers: list = []
    try:
        reader = threading.Thread(target=lambda: answers.append(
            pump.pump().readinto(a, memoryview(bytearray(10)), None)), daemon=True)
        reader.start()
        reader.join(timeout=30)
        assert not reader.is_alive(), "a read of a silent socket never timed out"
        [(n, error)] = answers
        assert n == 0 and isinstance(error, TimeoutError)
        assert a.gettimeout() == 0.5  # the socket is the caller's again, as it was
    finally:
        a.close()
        b.close()


def test_the_pump_reads_what_tls_has_decrypted_already(pki):
    """One TLS record holds more than a read asks for: the rest is in OpenSSL, not in the kernel, so epoll
    never reports it; the next read on that socket must still get it, not wait for its timeout."""
    import socket
    import ssl
    import threading

    from modelseal import pump

    listener = socket.create_server(("127.0.0.1", 0))
    record = bytes(range(256)) * 40  # 10 KiB: one write, one record

    def serve():
        conn, _ = listener.accept()
        with pki.server_context().wrap_socket(conn, server_side=True) as tls:
            tls.sendall(record)
            tls.recv(1)  # hold the connection open until the client is done

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    client = ssl.create_default_context(cafile=pki.ca).wrap_socket(
        socket.create_connection(listener.getsockname()), server_hostname="127.0.0.1")
    client.settimeout(2.0)  # the pump's timeout for it: without the rule, the second read times out
    try:
        first, rest = memoryview(bytearray(100)), memoryview(bytearray(len(record) - 100))
        assert pump.pump().readinto(client, first, None) == (100, None)
        assert client.pending() > 0  # the record's other bytes wait in OpenSSL
        assert pump.pump().readinto(client, rest, None) == (len(rest), None)
        assert bytes(first) + bytes(rest) == record
        client.sendall(b"!")
    finally:
        client.close()
        listener.close()
        server.join(timeout=10)


def test_s3_a_slow_link_is_not_a_stall(s3, proxy):
    """The timeout is for a store that stops sending, not for a slow one: a part that takes longer than
    --timeout but never pauses that long is read in one GET."""
    client, bucket = s3
    data = pattern(2 * MiB, seed=25)
    client.put_object(Bucket=bucket, Key="m", Body=data)
    # 8 pauses of 0.4 s: 3.2 s in all, against a timeout of 2 s that no single pause comes near
    proxy.add_fault(Fault("trickle", after=256 << 10, seconds=0.4, method="GET"))
    src = open_source(f"s3://{bucket}/m", fast(endpoint_url=proxy.url, timeout=2))
    assert read_all(src.open()) == data
    assert proxy.count("GET") == 1


@pytest.mark.parametrize("after", [0, 1000])
def test_s3_stalled_server_times_out_then_retries(s3, proxy, after):
    client, bucket = s3
    data = pattern(300_000, seed=5)
    client.put_object(Bucket=bucket, Key="m", Body=data)
    proxy.add_fault(Fault("stall", after=after, seconds=4, method="GET"))
    src = open_source(f"s3://{bucket}/m", fast(endpoint_url=proxy.url, timeout=1))
    start = time.monotonic()
    assert read_all(src.open()) == data
    assert 1 <= time.monotonic() - start < 4
    assert proxy.count("GET") == 2


def test_s3_object_replaced_mid_download_is_integrity_error(s3, proxy):
    client, bucket = s3
    client.put_object(Bucket=bucket, Key="m", Body=pattern(3 * MiB))
    src = open_source(f"s3://{bucket}/m?part_size=1MiB", fast(endpoint_url=proxy.url, concurrency=1))
    stream = src.open()
    assert stream.read(100) == pattern(3 * MiB)[:100]
    client.put_object(Bucket=bucket, Key="m", Body=pattern(3 * MiB, seed=99))
    with pytest.raises(IntegrityError):
        read_all(stream)


def test_s3_usage_errors(aws_env):
    with pytest.raises(UsageError):
        open_source("s3://bucket-only", fast())
    with pytest.raises(UsageError):
        open_source("s3://bkt/k?part_size=10", fast())
    with pytest.raises(UsageError):  # plain http to a non-loopback endpoint needs allow_http
        _ = open_source("s3://bkt/k", fast(endpoint_url="http://s3.example.invalid")).size


# --------------------------------------------------------------------------- S3 upload

def test_s3_open_write_multipart_byte_exact(s3, moto):
    client, bucket = s3
    data = pattern(17 * MiB + 3, seed=21)
    w = open_source(f"s3://{bucket}/out.seal?part_size=5MiB", fast(endpoint_url=moto.url, concurrency=2)).open_write()
    for i in range(0, len(data), 1_048_536):  # the writer's segment-sized writes
        w.write(memoryview(data)[i:i + 1_048_536])
    w.close()
    assert w.parts == 4
    assert client.get_object(Bucket=bucket, Key="out.seal")["Body"].read() == data
    assert not client.list_multipart_uploads(Bucket=bucket).get("Uploads")


@pytest.mark.parametrize("size", [0, 1000])
def test_s3_open_write_small_objects(s3, moto, size):
    client, bucket = s3
    data = os.urandom(size)
    with open_source(f"s3://{bucket}/small", fast(endpoint_url=moto.url)).open_write() as w:
        w.write(data)
    assert client.get_object(Bucket=bucket, Key="small")["Body"].read() == data


def test_s3_open_write_abort_leaves_nothing(s3, moto):
    client, bucket = s3
    src = open_source(f"s3://{bucket}/gone?part_size=5MiB", fast(endpoint_url=moto.url))
    w = src.open_write()
    w.write(os.urandom(11 * MiB))  # two parts uploaded
    w.abort()
    with pytest.raises(ValueError):
        w.write(b"x")
    assert "Contents" not in client.list_objects_v2(Bucket=bucket)
    assert not client.list_multipart_uploads(Bucket=bucket).get("Uploads")
    # An exception inside `with`, and a writer dropped without close, abort too.
    with pytest.raises(RuntimeError):
        with src.open_write() as w2:
            w2.write(os.urandom(6 * MiB))
            raise RuntimeError("seal failed")
    w3 = src.open_write()
    w3.write(os.urandom(6 * MiB))
    del w3
    import gc

    gc.collect()
    assert "Contents" not in client.list_objects_v2(Bucket=bucket)
    assert not client.list_multipart_uploads(Bucket=bucket).get("Uploads")


def test_s3_open_write_retries_a_failed_part(s3, moto, proxy):
    client, bucket = s3
    data = pattern(11 * MiB, seed=4)
    f = s3_error("InternalError", 500)
    f.method, f.path = "PUT", "partNumber=2"
    proxy.add_fault(f)
    w = open_source(f"s3://{bucket}/r?part_size=5MiB", fast(endpoint_url=proxy.url)).open_write()
    w.write(data)
    w.close()
    assert client.get_object(Bucket=bucket, Key="r")["Body"].read() == data
    assert proxy.count("PUT", "partNumber=2") == 2


# --------------------------------------------------------------------------- https

@pytest.fixture
def blob():
    return pattern(3 * MiB + 17, seed=42)


@pytest.fixture
def web(pki, blob):
    srv = ObjectServer({"/m.seal": blob, "/empty": b""}, tls=pki.server_context())
    yield srv
    srv.close()


def test_https_get_byte_exact(web, pki, blob):
    src = open_source(web.url + "/m.seal", fast(ca=pki.ca))
    assert src.size == len(blob)
    assert src.read_prefix(50) == blob[:50]
    web.reset_counters()
    with src.open() as s:
        assert read_all(s, chunk=65536) == blob
    assert web.requests == [("GET", "/m.seal", None)]
    with open_source(web.url + "/empty", fast(ca=pki.ca)).open() as s:
        assert s.read() == b""


def test_https_cut_mid_body_resumes_from_last_byte(web, pki, blob):
    web.add_fault(Fault("cut", after=1_000_003, method="GET"), Fault("cut", after=500_000, method="GET"))
    with open_source(web.url + "/m.seal", fast(ca=pki.ca)).open() as s:
        got = read_all(s)
    assert got == blob
    assert [r[2] for r in web.requests] == [None, "bytes=1000003-", "bytes=1500003-"]
    assert web.bytes_sent == len(blob)  # nothing sent twice


def test_https_server_ignoring_range_skips_delivered_bytes(pki, blob, capsys):
    srv = ObjectServer({"/m": blob}, tls=pki.server_context(), ignore_range=True)
    try:
        srv.add_fault(Fault("cut", after=700_000, method="GET"))
        with open_source(srv.url + "/m", fast(ca=pki.ca)).open() as s:
            assert read_all(s) == blob
        assert srv.bytes_sent == len(blob) + 700_000
        assert "range_ignored" in capsys.readouterr().err
    finally:
        srv.close()


def test_https_object_changed_during_download_is_integrity_error(web, pki, blob):
    web.add_fault(Fault("cut", after=100_000, method="GET"))
    with open_source(web.url + "/m.seal", fast(ca=pki.ca)).open() as s:
        first = b""
        while len(first) < 100_000:
            first += s.read(100_000 - len(first))
        assert first == blob[:100_000]
        web.objects["/m.seal"] = pattern(len(blob), seed=1)
        with pytest.raises(IntegrityError) as e:
            read_all(s)
    assert e.value.exit_code == 4


def test_https_bearer_token(pki, blob, shm_dir):
    token = "s3cr3t-" + uuid.uuid4().hex
    srv = ObjectServer({"/m": blob}, tls=pki.server_context(), token=token)
    try:
        good = write_file(os.path.join(shm_dir, "token"), token + "\n")
        with open_source(srv.url + "/m", fast(ca=pki.ca, token_file=good)).open() as s:
            assert read_all(s) == blob
        srv.reset_counters()
        bad = write_file(os.path.join(shm_dir, "bad"), "wrong-" + token)
        with pytest.raises(DeniedError) as e:
            open_source(srv.url + "/m", fast(ca=pki.ca, token_file=bad, retries=5)).open().read()
        assert srv.count() == 1  # 401: no retry
        assert token not in str(e.value)
    finally:
        srv.close()


def test_https_404_denied_and_5xx_retried(web, pki, blob):
    with pytest.raises(DeniedError):
        open_source(web.url + "/nope", fast(ca=pki.ca, retries=5)).open().read()
    assert web.count() == 1
    web.reset_counters()
    web.add_fault(Fault("status", status=500), Fault("status", status=503))
    with open_source(web.url + "/m.seal", fast(ca=pki.ca)).open() as s:
        assert read_all(s) == blob
    assert web.count() == 3


def test_https_stall_times_out_then_resumes(web, pki, blob):
    from modelseal.sources.https import READ_PIECE

    web.add_fault(Fault("stall", after=600_000, seconds=4, method="GET"))
    start = time.monotonic()
    with open_source(web.url + "/m.seal", fast(ca=pki.ca, timeout=1)).open() as s:
        assert read_all(s) == blob
    assert 1 <= time.monotonic() - start < 4
    # Resumed after the last whole piece read before the stall: at most one piece (256 KiB) again.
    delivered = 600_000 // READ_PIECE * READ_PIECE
    assert [r[2] for r in web.requests] == [None, f"bytes={delivered}-"]


def test_https_unavailable_after_retries(pki):
    srv = ObjectServer({"/m": b"z"}, tls=pki.server_context())
    srv.add_fault(Fault("status", status=502, times=50))
    try:
        with pytest.raises(UnavailableError) as e:
            open_source(srv.url + "/m", fast(ca=pki.ca, retries=3)).open().read()
        assert "after 3 attempts" in str(e.value) and "HTTP 502" in str(e.value)
        assert srv.count() == 3
    finally:
        srv.close()


def test_https_connection_refused_is_unavailable(pki):
    from support.processes import free_port

    with pytest.raises(UnavailableError):
        open_source(f"https://127.0.0.1:{free_port()}/m", fast(ca=pki.ca, retries=2)).open().read()


def test_https_wrong_ca_fails_without_retry(web, pki):
    with pytest.raises(DeniedError) as e:
        open_source(web.url + "/m.seal", fast(ca=pki.other_ca, retries=5)).open().read()
    assert "TLS" in str(e.value)
    assert web.count() == 0
    with pytest.raises(DeniedError):  # the system CAs do not know our test CA either
        open_source(web.url + "/m.seal", fast(retries=5)).open().read()


def test_https_client_certificate(pki, blob):
    srv = ObjectServer({"/m": blob}, tls=pki.server_context(require_client_cert=True))
    try:
        with pytest.raises(DeniedError):
            open_source(srv.url + "/m", fast(ca=pki.ca, retries=5)).open().read()
        assert srv.settled_tls_failures() == 1  # refused once, not retried
        opts = fast(ca=pki.ca, cert=pki.client_cert, cert_key=pki.client_key)
        with open_source(srv.url + "/m", opts).open() as s:
            assert read_all(s) == blob
    finally:
        srv.close()


def test_http_needs_allow_http_and_is_logged(blob, capsys):
    srv = ObjectServer({"/m": blob})
    try:
        with pytest.raises(UsageError):
            open_source(srv.url + "/m", fast())
        assert srv.count() == 0
        with open_source(srv.url + "/m", fast(allow_http=True)).open() as s:
            assert read_all(s) == blob
        line = json.loads([ln for ln in capsys.readouterr().err.splitlines() if "plain_http" in ln][0])
        assert line["level"] == "warning"
    finally:
        srv.close()


def test_https_our_query_parameters_are_not_sent(web, pki, blob):
    url = f"{web.url}/m.seal?X-Amz-Signature=abc%2Fdef&timeout=3&ca={pki.ca}"
    with open_source(url, fast()).open() as s:
        assert read_all(s) == blob
    assert web.requests[-1][1] == "/m.seal?X-Amz-Signature=abc%2Fdef"


def test_s3_endpoint_from_aws_endpoint_url(s3, proxy, monkeypatch):
    client, bucket = s3
    client.put_object(Bucket=bucket, Key="m", Body=b"via env")
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)  # boto3 reads it natively
    with open_source(f"s3://{bucket}/m", fast()).open() as s:
        assert read_all(s) == b"via env"
    assert proxy.count("GET") == 1


def test_https_redirect_to_plain_http_is_refused_before_it_is_sent(pki, blob, shm_dir):
    plain = ObjectServer({"/m": blob})
    srv = ObjectServer({"/m": blob}, tls=pki.server_context(), token="t0ken",
                       redirects={"/r": plain.url + "/m", "/s": "/m"})
    try:
        token = write_file(os.path.join(shm_dir, "t"), "t0ken")
        with pytest.raises(UsageError):
            open_source(srv.url + "/r", fast(ca=pki.ca, token_file=token)).open().read()
        assert plain.count() == 0
        with open_source(srv.url + "/s", fast(ca=pki.ca, token_file=token)).open() as s:  # same host: fine
            assert read_all(s) == blob
        with open_source(srv.url + "/r", fast(ca=pki.ca, token_file=token, allow_http=True)).open() as s:
            assert read_all(s) == blob
        assert plain.count() == 1
    finally:
        plain.close()
        srv.close()


def test_https_open_connects_and_knows_the_size(web, pki, blob):
    src = open_source(web.url + "/m.seal", fast(ca=pki.ca))
    stream = src.open()
    assert src.size == len(blob)
    assert web.count() == 1  # the size came with the answer
    assert read_all(stream) == blob
    stream.close()
    with pytest.raises(DeniedError):  # a missing object fails at open(), before any read
        open_source(web.url + "/missing", fast(ca=pki.ca)).open()


@pytest.mark.parametrize("encoding", ["gzip", "identity"])
def test_s3_object_stored_with_a_content_encoding_is_read_byte_exact(s3, moto, encoding):
    """An object uploaded with Content-Encoding (some tools set gzip on anything): the bytes
    stored are the .seal, whatever the header says; the socket-to-buffer path must not alter them."""
    client, bucket = s3
    data = pattern(3 * MiB + 777, seed=11)
    client.put_object(Bucket=bucket, Key="enc.seal", Body=data, ContentEncoding=encoding)
    assert client.head_object(Bucket=bucket, Key="enc.seal").get("ContentEncoding") == encoding
    src = open_source(f"s3://{bucket}/enc.seal?part_size=1MiB", fast(endpoint_url=moto.url, concurrency=2))
    with src.open() as stream:
        assert digest(read_all(stream, chunk=300_001)) == digest(data)


@pytest.mark.parametrize("good", [True, False])
def test_s3_fetch_model_writes_from_the_part_buffers_and_checks_the_pin(s3, moto, shm_dir, good):
    """fetch-model writes S3 parts without a copy (read_view), through the --sha256 pin."""
    from conftest import modelseal

    client, bucket = s3
    data = pattern(20 * MiB + 12345, seed=3)
    client.put_object(Bucket=bucket, Key="m.seal", Body=data)
    out = os.path.join(shm_dir, "m.seal")
    pin = digest(data) if good else digest(data + b"x")
    r = modelseal("fetch-model", "--source", f"s3://{bucket}/m.seal?part_size=4MiB", "-o", out,
                  "--endpoint-url", moto.url, "--sha256", pin)
    if good:
        assert r.code == 0, r.stderr
        with open(out, "rb") as f:
            assert f.read() == data
    else:
        assert r.code == 4 and "sha256 mismatch" in r.error()
        assert os.listdir(shm_dir) == []
