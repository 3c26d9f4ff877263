"""A resumed download never mixes two versions of an object.

The servers here break the download in the middle and, on the request that
resumes it, behave like a server that ignores If-Range (https) or If-Match
(S3) while the object is replaced: the `tamper` fault drops that request
header and swaps the object just before answering. S3 is moto in server mode
behind the fault proxy (moto honours If-Match, so the proxy removes it; the
object is replaced in moto itself). Every such answer must end the download
with exit 4 and leave nothing behind; with no validator at all, a broken
download is not resumed (exit 5).
"""
# ruff: noqa: F811

from __future__ import annotations

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from conftest import modelseal
from modelseal.errors import IntegrityError, UnavailableError
from modelseal.sources import open_source
from support.faults import Fault
from support.fixtures import fast
from support.objects import ObjectServer
from test_sources import proxy, s3  # noqa: F401 - fixtures: moto's S3 with a bucket, the fault proxy

MiB = 1 << 20
OLD = bytes(range(256)) * (3 * MiB // 256)  # 3 MiB
NEW = bytes(reversed(range(256))) * (3 * MiB // 256)  # same size, other bytes
CUT = MiB + 12345


def _read(src) -> bytes:
    with src.open() as s:
        out = bytearray()
        while chunk := s.read(256 * 1024):
            out += chunk
        return bytes(out)


# --------------------------------------------------------------------------- https

def _server(pki, **kw) -> ObjectServer:
    return ObjectServer({"/m": OLD}, tls=pki.server_context(), **kw)


def _replace(srv: ObjectServer, data: bytes):
    def swap() -> None:
        with srv.lock:
            srv.objects["/m"] = data
    return swap


@pytest.mark.parametrize("validators", ["etag", "last-modified"])
@pytest.mark.parametrize("new", [NEW, NEW + b"longer", NEW[:-1000]], ids=["same size", "longer", "shorter"])
def test_https_resume_from_a_server_ignoring_if_range(pki, validators, new):
    srv = _server(pki, validators=validators)
    try:
        srv.add_fault(Fault("cut", after=CUT, method="GET", times=1),
                      Fault("tamper", drop_headers=("If-Range",), before=_replace(srv, new), times=1))
        with pytest.raises(IntegrityError, match="changed"):
            _read(open_source(srv.url + "/m", fast(ca=pki.ca)))
        resumed = [r for r in srv.requests if r[2]]
        assert resumed and resumed[0][2] == f"bytes={CUT}-"  # it did try to resume, and refused the answer
    finally:
        srv.close()


def test_https_server_ignoring_range_and_if_range_with_a_new_object(pki):
    srv = _server(pki, ignore_range=True)
    try:
        srv.add_fault(Fault("cut", after=CUT, method="GET", times=1),
                      Fault("tamper", before=_replace(srv, NEW), times=1))
        with pytest.raises(IntegrityError, match="changed"):
            _read(open_source(srv.url + "/m", fast(ca=pki.ca)))
    finally:
        srv.close()


def test_https_resume_whose_answer_lost_its_etag(pki):
    srv = _server(pki)
    try:
        srv.add_fault(Fault("cut", after=CUT, method="GET", times=1),
                      Fault("tamper", before=lambda: setattr(srv, "validators", None), times=1))
        with pytest.raises(IntegrityError, match="changed"):
            _read(open_source(srv.url + "/m", fast(ca=pki.ca)))
    finally:
        srv.close()


def test_https_resume_with_the_same_etag_but_another_length(pki):
    """A server that keeps the ETag but not the length: the total in Content-Range, or Content-Length."""
    etag = ObjectServer.etag(OLD)
    for status, headers in [
        (206, {"ETag": etag, "Content-Range": f"bytes {CUT}-{len(OLD) + 99}/{len(OLD) + 100}"}),
        (200, {"ETag": etag, "Content-Length": str(len(OLD) + 100)}),
    ]:
        srv = _server(pki)
        try:
            srv.add_fault(Fault("cut", after=CUT, method="GET", times=1),
                          Fault("status", status=status, headers=headers, body=OLD[CUT:] + bytes(100), times=1))
            with pytest.raises(IntegrityError, match="size"):
                _read(open_source(srv.url + "/m", fast(ca=pki.ca)))
        finally:
            srv.close()


def test_https_without_validators_is_not_resumed(pki):
    srv = _server(pki, validators=None)
    try:
        assert _read(open_source(srv.url + "/m", fast(ca=pki.ca))) == OLD  # unbroken: fine
        srv.add_fault(Fault("cut", after=CUT, method="GET", times=1))
        with pytest.raises(UnavailableError, match="cannot be resumed"):
            _read(open_source(srv.url + "/m", fast(ca=pki.ca)))
    finally:
        srv.close()


def test_https_honest_resume_still_works(pki):
    for validators in ("etag", "last-modified"):
        srv = _server(pki, validators=validators)
        try:
            srv.add_fault(Fault("cut", after=CUT, method="GET", times=1))
            assert _read(open_source(srv.url + "/m", fast(ca=pki.ca))) == OLD
            assert [r[2] for r in srv.requests] == [None, f"bytes={CUT}-"]
        finally:
            srv.close()


def test_fetch_model_leaves_nothing_after_a_mixed_resume(pki, shm):
    srv = _server(pki)
    try:
        srv.add_fault(Fault("cut", after=CUT, method="GET", times=1),
                      Fault("tamper", drop_headers=("If-Range",), before=_replace(srv, NEW), times=1))
        term = shm / "termination-log"
        term.write_text("")
        r = modelseal("fetch-model", "--source", srv.url + "/m", "-o", str(shm / "m.seal"), "--ca", pki.ca,
                      env={"MODELSEAL_TERMINATION_LOG": str(term)})
        assert r.code == 4, r.stderr
        assert "changed" in r.error() and json.loads(term.read_text())["exit_code"] == 4
        assert os.listdir(shm) == ["termination-log"]  # no m.seal, no .partial
    finally:
        srv.close()


# --------------------------------------------------------------------------- S3 (moto behind the fault proxy)

@pytest.fixture
def bucket(s3):
    client, name = s3
    client.put_object(Bucket=name, Key="m.seal", Body=OLD)
    return client, name


def _put(client, name: str, data: bytes):
    return lambda: client.put_object(Bucket=name, Key="m.seal", Body=data)


def _ignore_if_match(proxy, *faults: Fault) -> None:
    """The store ignores If-Match on every GET; `faults` script the first GETs (each dropping If-Match too)."""
    for f in faults:
        f.method, f.drop_headers = "GET", ("If-Match",)
    proxy.add_fault(*faults, Fault("tamper", method="GET", drop_headers=("If-Match",), times=1000))


PART = "part_size=1MiB&concurrency=1"


@pytest.mark.parametrize("new", [NEW, NEW + b"longer"], ids=["same size", "longer"])
def test_s3_part_from_a_store_ignoring_if_match(bucket, proxy, new):
    """Part 2 of 3 comes from the replaced object: moto would refuse it (412), a store ignoring If-Match does not."""
    client, name = bucket
    _ignore_if_match(proxy, Fault("tamper"), Fault("tamper", before=_put(client, name, new)))
    with pytest.raises(IntegrityError, match="changed|another range"):
        _read(open_source(f"s3://{name}/m.seal?{PART}", fast(endpoint_url=proxy.url)))
    assert proxy.count("GET") >= 2


def test_s3_resumed_part_from_a_store_ignoring_if_match(bucket, proxy):
    """A part cut in its middle resumes with a new range; that answer comes from the new object."""
    client, name = bucket
    _ignore_if_match(proxy, Fault("tamper"), Fault("cut", after=300_000),
                     Fault("tamper", before=_put(client, name, NEW)))
    with pytest.raises(IntegrityError, match="changed"):
        _read(open_source(f"s3://{name}/m.seal?{PART}", fast(endpoint_url=proxy.url)))
    ranges = [r[2] for r in proxy.requests if r[0] == "GET"]
    assert ranges[2] == f"bytes={MiB + 300_000}-{2 * MiB - 1}"  # the resume of part 2


def test_s3_store_honouring_if_match_fails_the_same_way(bucket, proxy):
    client, name = bucket
    proxy.add_fault(Fault("tamper", method="GET", times=1),
                    Fault("tamper", method="GET", before=_put(client, name, NEW)))
    with pytest.raises(IntegrityError, match="changed"):
        _read(open_source(f"s3://{name}/m.seal?{PART}", fast(endpoint_url=proxy.url)))


def test_s3_versioned_object_replaced_mid_download_reads_the_old_version(bucket, proxy):
    """With a VersionId every part names the version: replacing the object changes nothing."""
    client, name = bucket
    client.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    client.put_object(Bucket=name, Key="m.seal", Body=OLD)
    _ignore_if_match(proxy, Fault("tamper"), Fault("tamper", before=_put(client, name, NEW)))
    assert _read(open_source(f"s3://{name}/m.seal?{PART}", fast(endpoint_url=proxy.url))) == OLD


def test_s3_fetch_model_leaves_nothing(bucket, proxy, shm):
    client, name = bucket
    _ignore_if_match(proxy, Fault("tamper"), Fault("tamper", before=_put(client, name, NEW)))
    r = modelseal("fetch-model", "--source", f"s3://{name}/m.seal?{PART}", "-o", str(shm / "m.seal"),
                  "--endpoint-url", proxy.url)
    assert r.code == 4, r.stderr
    assert os.listdir(shm) == []
