"""Every parser of untrusted bytes, fed what an attacker would send: one error path, the right exit code.

Each table below is a parser's hostile inputs: deep nesting (json.loads raises
RecursionError, not ValueError), numbers of thousands of digits (int() raises
ValueError past 4300), a string or a list where an object belongs
(AttributeError), bytes that are not UTF-8, lone surrogates, NaN, lengths that
lie. The services are real servers on 127.0.0.1 that answer hostile bytes
(tests/support/); the archive and OpenPGP parsers also get a seeded mutation
run. A pass is a ModelsealError of the expected class (never a bare Python
exception, which the CLI reports as exit 1), with a one-line, bounded message.
"""
# ruff: noqa: F811

from __future__ import annotations

import base64
import bz2
import gzip
import hashlib
import io
import json
import lzma
import os
import random
import shutil
import struct
import sys
import tarfile
import zipfile

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import zstandard

from conftest import one_line, refused
from modelseal import sealfile
from modelseal import openpgp, retry, streaming, tinkkeyset
from modelseal.errors import CapacityError, DeniedError, IntegrityError, ModelsealError, UnsafeError, UsageError
from modelseal.sealfile import WrappedKey
from modelseal.keys import decode, open_key
from modelseal.sources import open_source
from modelseal.unpack import extract
from support.faults import Fault, FaultProxy
from support.fixtures import fast
from support.http import Server
from support.objects import ObjectServer
from support.processes import write_file
from support.tinkkeys import keyset_json

KEY = bytes(range(1, 33))
DEEP = b"[" * 100_000 + b"]" * 100_000  # RecursionError in json.loads
DEEP_OBJ = b'{"a":' * 50_000 + b"1" + b"}" * 50_000
NESTED_40 = b"[" * 40 + b"]" * 40  # parses fine, but deeper than anything we accept
BIG_INT = b"9" * 5000  # int() refuses more than 4300 digits


class CannedServer(Server):
    """A hostile service: every request gets `answer` = (status, headers, body)."""

    def __init__(self, tls=None) -> None:
        self.answer: tuple[int, dict[str, str], bytes] = (200, {}, b"")
        super().__init__(tls)

    def handle(self, h, body, fault) -> None:  # type: ignore[no-untyped-def]
        status, headers, data = self.answer
        h.respond(status, data, dict(headers), fault)


@pytest.fixture
def canned():
    srv = CannedServer()
    yield srv
    srv.close()


@pytest.fixture
def canned_tls(pki):
    srv = CannedServer(pki.server_context())
    yield srv
    srv.close()


# --------------------------------------------------------------------------- .seal headers

def _prefix(body: bytes) -> bytes:
    return b"MSEAL\x01" + struct.pack(">I", len(body)) + body


def _header(**changes) -> bytes:
    obj = sealfile.Header(key_id="00" * 8, name="m").to_json()
    obj.update(changes)
    return json.dumps(obj).encode()


def _wrapped(**changes) -> bytes:
    wk = WrappedKey("aws-kms", "alias/x", b"blob", {"modelseal": "v1"}).to_json()
    wk.update(changes)
    return _header(wrapped_key=wk)


HOSTILE_HEADERS = {
    "deep array": DEEP,
    "deep object": DEEP_OBJ,
    "deep in an unknown field": _header()[:-1] + b',"x":' + NESTED_40 + b"}",
    "deep in the context": _wrapped(context={"a": json.loads(NESTED_40)}),
    "a string": b'"MSEAL"',
    "a list": b"[1,2]",
    "null": b"null",
    "big integer version": _header()[:-1] + b',"v":' + BIG_INT + b"}",
    "version true": _header(v=True),
    "version 1.0": _header(v=1.0),
    "version as text": _header(v="1"),
    "NaN": _header()[:-1] + b',"x":NaN}',
    "Infinity": _header()[:-1] + b',"x":-Infinity}',
    "float overflow": _header()[:-1] + b',"x":1e999}',
    "segment size 1048576.0": _header(segment_size=1048576.0),
    "alg a list": _header(alg=["AES256_GCM_HKDF_1MB"]),
    "key_id a list": _header(key_id=["00"] * 8),
    "key_id a number": _header(key_id=12345),
    "name an object": _header(name={"a": 1}),
    "version a number": _header(version=3),
    "created a list": _header(created=[]),
    "content a string": _header(content="tar"),
    "compression a list": _header(content={"type": "tar", "compression": ["gzip"]}),
    "compression an object": _header(content={"compression": {"gzip": 1}}),
    "compression unknown": _header(content={"compression": "lz4"}),
    "content type a number": _header(content={"type": 5, "compression": "none"}),
    "wrapped_key a string": _header(wrapped_key="aws-kms"),
    "wrapped_key a list": _header(wrapped_key=[]),
    "provider a number": _wrapped(provider=5),
    "provider empty": _wrapped(provider=""),
    "ciphertext not base64": _wrapped(ciphertext="not base64!"),
    "ciphertext a number": _wrapped(ciphertext=5),
    "context a list": _wrapped(context=["a"]),
    "context value an object": _wrapped(context={"a": {"b": "c"}}),
    "context value a number": _wrapped(context={"a": 1}),
    "not UTF-8": b'{"v":1,"name":"\xff"}',
    "UTF-16": _header().decode().encode("utf-16"),
    "UTF-8 BOM": b"\xef\xbb\xbf" + _header(),
    "truncated JSON": _header()[:-5],
}


@pytest.mark.parametrize("case", list(HOSTILE_HEADERS), ids=list(HOSTILE_HEADERS))
def test_hostile_seal_header(case):
    with refused(IntegrityError):
        sealfile.read_prefix(io.BytesIO(_prefix(HOSTILE_HEADERS[case])))


def test_header_values_in_messages_are_quoted_and_short():
    """A forged header cannot write its own text into a message."""
    forged = "x" * 10_000 + "\n{\"level\":\"info\"}"
    for body in (_header(v=forged), _header(alg=forged), _header(content={"compression": forged})):
        with refused(IntegrityError) as e:
            sealfile.read_prefix(io.BytesIO(_prefix(body)))
        text = one_line(e.value, 200)
        assert '{"level"' not in text
    header = sealfile.read_prefix(io.BytesIO(_prefix(_header(key_id=forged, name=forged))))[0]
    fields = header.log_fields()
    assert all(len(v) <= 80 for v in fields.values() if v) and "\n" not in json.dumps(fields)
    with refused(IntegrityError) as e:
        sealfile.open_sealed(io.BytesIO(_prefix(_header(key_id=forged))), lambda h: KEY)
    assert "wrong key" in one_line(e.value, 300)


def test_valid_header_still_reads():
    header, _ = sealfile.read_prefix(io.BytesIO(_prefix(_wrapped())))
    assert header.wrapped_key is not None and header.wrapped_key.context == {"modelseal": "v1"}
    assert header.name == "m" and header.key_id == "00" * 8


# --------------------------------------------------------------------------- key material (field=, encoding=)

HOSTILE_MATERIAL = {
    "deep array": DEEP,
    "deep object": DEEP_OBJ,
    "nested 40": b'{"k":' + NESTED_40 + b"}",
    "top-level list": b'[{"k":"x"}]',
    "top-level string": b'"k"',
    "field through a string": b'{"data":"k"}',
    "field through a list": b'{"data":["k"]}',
    "value a number": b'{"data":{"k":5}}',
    "value big number": b'{"data":{"k":' + BIG_INT + b"}}",
    "value a list": b'{"data":{"k":["a"]}}',
    "value null": b'{"data":{"k":null}}',
    "value a lone surrogate": b'{"data":{"k":"\\ud800"}}',
    "NaN": b'{"data":{"k":NaN}}',
    "not UTF-8": b'{"data":{"k":"\xff\xfe"}}',
    "UTF-16": '{"data":{"k":"x"}}'.encode("utf-16"),
    "not JSON": b"<html>oops</html>",
}


@pytest.mark.parametrize("case", list(HOSTILE_MATERIAL), ids=list(HOSTILE_MATERIAL))
def test_hostile_key_material_field(case):
    with refused(IntegrityError):
        decode(HOSTILE_MATERIAL[case], "data.k", "base64")


def test_hostile_field_answer_from_a_real_key_server(pki):
    srv = ObjectServer({f"/{i}": body for i, body in enumerate(HOSTILE_MATERIAL.values())},
                       tls=pki.server_context())
    try:
        for i, case in enumerate(HOSTILE_MATERIAL):
            with refused(IntegrityError):
                open_key(f"{srv.url}/{i}?field=data.k", fast(ca=pki.ca)).data_key()
        good = json.dumps({"data": {"k": base64.b64encode(KEY).decode()}}).encode()
        srv.objects["/good"] = good
        assert open_key(f"{srv.url}/good?field=data.k", fast(ca=pki.ca)).data_key() == KEY
    finally:
        srv.close()


def test_hostile_cdh_answer(canned):
    canned.answer = (200, {}, DEEP)
    with refused(IntegrityError):
        open_key("kbs:///repo/key/tag?field=k", fast(cdh_url=canned.url)).data_key()
    canned.answer = (200, {"Content-Length": BIG_INT.decode()}, KEY)
    with refused(IntegrityError, match="Content-Length"):
        open_key("kbs:///repo/key/tag", fast(cdh_url=canned.url)).data_key()


# --------------------------------------------------------------------------- Vault, vault-transit

VAULT_KV = {  # answer body -> the error class it must give
    "deep": (DEEP, IntegrityError),
    "nested 40": (b'{"data":{"data":{"k":' + NESTED_40 + b"}}}", IntegrityError),
    "not JSON": (b"<html>", IntegrityError),
    "a string": (b'"x"', IntegrityError),
    "a list": (b"[]", IntegrityError),
    "data a string": (b'{"data":"x"}', IntegrityError),
    "data a list": (b'{"data":[1]}', IntegrityError),
    "data.data a string": (b'{"data":{"data":"x"}}', IntegrityError),
    "data.data a list": (b'{"data":{"data":["k"]}}', IntegrityError),
    "value a number": (b'{"data":{"data":{"k":5}}}', IntegrityError),
    "value big": (b'{"data":{"data":{"k":' + BIG_INT + b"}}}", IntegrityError),
    "value a lone surrogate": (b'{"data":{"data":{"k":"\\udc80"}}}', IntegrityError),
    "not UTF-8": (b'{"data":{"data":{"k":"\xc3"}}}', IntegrityError),
    "deleted version": (b'{"data":{"data":null,"metadata":{"deletion_time":"x"}}}', DeniedError),
    "no data": (b"{}", DeniedError),
    "null": (b"null", DeniedError),
}


@pytest.mark.parametrize("case", list(VAULT_KV), ids=list(VAULT_KV))
def test_hostile_vault_kv_answer(canned_tls, pki, shm_dir, case):
    body, expected = VAULT_KV[case]
    canned_tls.answer = (200, {"Content-Type": "application/json"}, body)
    token = write_file(os.path.join(shm_dir, "token"), "hvs.test")
    uri = f"vault://127.0.0.1:{canned_tls.port}/secret/model"
    with refused(expected):
        open_key(uri, fast(ca=pki.ca, token_file=token)).data_key()


@pytest.mark.parametrize("body, expected", [
    (DEEP, IntegrityError), (b'{"auth":"x"}', IntegrityError), (b'{"auth":[]}', IntegrityError),
    (b'{"auth":{"client_token":5}}', DeniedError), (b'{"auth":null}', DeniedError), (b"[1]", IntegrityError),
])
def test_hostile_vault_login_answer(canned_tls, pki, shm_dir, body, expected):
    canned_tls.answer = (200, {}, body)
    jwt = write_file(os.path.join(shm_dir, "jwt"), "eyJ.test.jwt")
    uri = f"vault://127.0.0.1:{canned_tls.port}/secret/model?role=r&jwt_file={jwt}"
    with refused(expected):
        open_key(uri, fast(ca=pki.ca)).data_key()


@pytest.mark.parametrize("body", [
    DEEP, b'"x"', b'{"data":"x"}', b'{"data":["plaintext"]}', b'{"data":{"plaintext":5}}',
    b'{"data":{"plaintext":"not base64!"}}', b'{"data":{"plaintext":"\\ud800"}}', b'{"data":{}}',
])
def test_hostile_vault_transit_answer(canned_tls, pki, shm_dir, body):
    canned_tls.answer = (200, {}, body)
    token = write_file(os.path.join(shm_dir, "token"), "hvs.test")
    source = open_key(f"vault-transit://127.0.0.1:{canned_tls.port}/transit/k", fast(ca=pki.ca, token_file=token))
    with refused(IntegrityError):
        source.data_key(WrappedKey("vault-transit", "transit/k", b"vault:v1:AAAA", {}))
    with refused(IntegrityError):
        source.wrap(KEY)


# --------------------------------------------------------------------------- AWS answers (parsed by botocore)

AWS_ANSWERS = {
    "deep": DEEP,
    "deep member": b'{"Plaintext":' + b"[" * 3000 + b"]" * 3000 + b"}",
    "a string": b'"x"',
    "a list": b"[1]",
    "null": b"null",
    "missing": b"{}",
    "a number": b'{"Plaintext":5,"SecretString":5,"CiphertextBlob":5}',
    "an object": b'{"Plaintext":{},"SecretString":{},"CiphertextBlob":{}}',
    "big integer": b'{"Plaintext":' + BIG_INT + b"}",
    "not JSON": b"<html>",
    "not UTF-8": b'{"Plaintext":"\xff","SecretString":"\xff"}',
}


@pytest.mark.parametrize("case", list(AWS_ANSWERS), ids=list(AWS_ANSWERS))
def test_hostile_kms_and_secrets_manager_answers(canned, aws_env, case):
    canned.answer = (200, {"Content-Type": "application/x-amz-json-1.1"}, AWS_ANSWERS[case])
    options = fast(endpoint_url=canned.url, retries=1)
    wrapped = WrappedKey("aws-kms", "alias/k", b"blob", {"modelseal": "v1"})
    with refused(IntegrityError):
        open_key("aws-kms://alias/k", options).data_key(wrapped)
    with refused(IntegrityError):
        open_key("aws-kms://alias/k", options).wrap(KEY)
    body = AWS_ANSWERS[case].replace(b"Plaintext", b"SecretString")
    canned.answer = (200, {"Content-Type": "application/x-amz-json-1.1"}, body)
    with refused(IntegrityError):
        open_key("secretsmanager://model-key", options).data_key()


def test_hostile_aws_error_answer(canned, aws_env):
    """A forged error code is quoted and shortened; a deep error body is malformed."""
    code = "X" * 5000 + "\nforged"
    canned.answer = (400, {"Content-Type": "application/x-amz-json-1.1"}, json.dumps({"__type": code}).encode())
    with refused(UsageError) as e:
        open_key("secretsmanager://model-key", fast(endpoint_url=canned.url, retries=1)).data_key()
    assert "forged" not in one_line(e.value, 300)
    canned.answer = (400, {"Content-Type": "application/x-amz-json-1.1"}, DEEP)
    with refused(IntegrityError):
        open_key("secretsmanager://model-key", fast(endpoint_url=canned.url, retries=1)).data_key()


@pytest.mark.parametrize("headers", [
    {"Content-Length": BIG_INT.decode()}, {"Content-Length": "-5"}, {"Content-Length": "1e3"},
    {"Content-Length": "\xb2"},
])
def test_hostile_s3_head_answer(canned, aws_env, headers):
    canned.answer = (200, headers, b"")
    with refused(IntegrityError):
        open_source("s3://bucket/model.seal", fast(endpoint_url=canned.url, retries=1)).size


@pytest.mark.parametrize("content_range", [
    "bytes 0-9/" + "9" * 5000, "bytes " + "1" * 30 + "-0/10", "bytes 5-2/10", "bytes 0-9/5", "bytes 0-9/\xb3",
    "octets 0-9/10",
])
def test_hostile_s3_content_range(canned, aws_env, content_range):
    canned.answer = (200, {"ETag": '"e"', "Content-Range": content_range, "Content-Length": "10"}, bytes(10))
    with refused(IntegrityError):
        open_source("s3://bucket/model.seal", fast(endpoint_url=canned.url, retries=1)).read_prefix(10)


# --------------------------------------------------------------------------- HTTP headers of key servers and sources

BAD_LENGTHS = [BIG_INT.decode(), "\xb2", "-1", "1e3", "32, 32", "0x20", "+32"]


@pytest.mark.parametrize("length", BAD_LENGTHS)
def test_hostile_content_length(canned, length):
    canned.answer = (200, {"Content-Length": length}, KEY)
    with refused(IntegrityError, match="Content-Length"):
        open_key(canned.url + "/k", fast(allow_http=True, retries=1)).data_key()
    with refused(IntegrityError, match="Content-Length"):
        open_source(canned.url + "/m", fast(allow_http=True, retries=1)).open()


@pytest.mark.parametrize("content_range", [
    "bytes 0-0/" + "9" * 5000, "bytes " + "1" * 30 + "-0/5", "bytes 0-0/\xb2", "bytes 3-1/9", "bytes 0-9/9",
])
def test_hostile_content_range(canned, content_range):
    canned.answer = (206, {"Content-Range": content_range}, b"x")
    with refused(IntegrityError, match="Content-Range"):
        open_source(canned.url + "/m", fast(allow_http=True, retries=1)).size


@pytest.mark.parametrize("value, expected", [
    ("nan", None), ("inf", None), ("1e999", None), ("9" * 5000, None), ("-5", None), ("\xb2", None),
    ("Wed, 21 Oct 2015 07:28:00 GMT", None), ("7", 7.0),
])
def test_hostile_retry_after(value, expected):
    assert retry.status_error(503, {"Retry-After": value}).retry_after == expected


# --------------------------------------------------------------------------- tar and zip

def _pax_tar(records: dict[str, bytes], data: bytes = b"abc") -> bytes:
    body = b""
    for k, v in records.items():
        rec = b" " + k.encode() + b"=" + v + b"\n"
        n = len(rec) + len(str(len(rec)))
        n += len(str(n)) - len(str(len(rec)))
        body += str(n).encode() + rec
    x = tarfile.TarInfo("././@PaxHeader")
    x.type, x.size = tarfile.XHDTYPE, len(body)
    m = tarfile.TarInfo("f")
    m.size = len(data)
    return (x.tobuf(tarfile.USTAR_FORMAT) + body + bytes(-len(body) % 512) + m.tobuf(tarfile.USTAR_FORMAT)
            + data + bytes(-len(data) % 512) + bytes(1024))


def _extract(data: bytes, dest) -> dict:
    shutil.rmtree(dest, ignore_errors=True)
    return extract(io.BytesIO(data), str(dest))


@pytest.mark.parametrize("records", [
    {"size": BIG_INT}, {"size": b"0" * 4999 + b"3"}, {"size": b"-3"}, {"size": b"3.0"}, {"size": b" "},
    {"size": "\u0663".encode()}, {"size": b"9" * 20},
], ids=["5000 digits", "leading zeros", "negative", "fraction", "blank", "arabic digit", "20 digits"])
def test_hostile_pax_size(shm, records):
    with refused(IntegrityError, match="pax size"):
        _extract(_pax_tar(records), shm / "d")
    assert not (shm / "d").exists()


@pytest.mark.parametrize("mtime", [BIG_INT, b"inf", b"nan", b"1e20", b"1_000", b"-1e300", "\u0661".encode(), b""])
def test_hostile_pax_mtime_is_ignored(shm, mtime):
    stats = _extract(_pax_tar({"mtime": mtime, "atime": BIG_INT, "uid": BIG_INT}), shm / "d")
    assert stats["files"] == 1 and (shm / "d" / "f").read_bytes() == b"abc"


def test_pax_mtime_still_applies(shm):
    _extract(_pax_tar({"mtime": b"1700000000.25"}), shm / "d")
    assert os.stat(shm / "d" / "f").st_mtime == 1700000000.25


def _zip() -> bytes:
    b = io.BytesIO()
    with zipfile.ZipFile(b, "w") as z:
        z.writestr("a.txt", b"a" * 1000, compress_type=zipfile.ZIP_DEFLATED)
    return b.getvalue()


@pytest.mark.parametrize("where, fmt, value", [
    ("eocd", "<L", 0xFFFFFFF0),  # central directory offset
    ("eocd-size", "<L", 0xFFFFFFF0),
    ("cd-offset", "<L", 0xFFFFFFF0),  # local header offset
    ("cd-csize", "<L", 0xFFFFFFF0),
    ("cd-usize", "<L", 0xFFFFFFFF),
])
def test_hostile_zip_numbers(shm, where, fmt, value):
    data = bytearray(_zip())
    eocd, cd = data.rindex(b"PK\x05\x06"), data.index(b"PK\x01\x02")
    offset = {"eocd": eocd + 16, "eocd-size": eocd + 12, "cd-offset": cd + 42, "cd-csize": cd + 20,
              "cd-usize": cd + 24}[where]
    struct.pack_into(fmt, data, offset, value)
    with refused(IntegrityError):
        _extract(bytes(data), shm / "d")


def _mutate(rnd: random.Random, data: bytes) -> bytes:
    """A seeded mutation of `data` that is never `data` itself.

    A byte set to its own value, or a pattern written over the same bytes,
    changes nothing; a test that expects a mutated input to be refused would
    then see a valid one (and the input of a random stream, a fresh salt each
    run, makes that a flake). Such a draw is drawn again."""
    while True:
        mutated = _mutate_once(rnd, data)
        if mutated != data:
            return mutated


def _mutate_once(rnd: random.Random, data: bytes) -> bytes:
    d = bytearray(data)
    k = rnd.random()
    if k < 0.4:
        for _ in range(rnd.randint(1, 8)):
            d[rnd.randrange(len(d))] = rnd.randrange(256)
    elif k < 0.55:
        del d[rnd.randrange(len(d)):]
    elif k < 0.75:
        pos = rnd.randrange(len(d) + 1)
        d[pos:pos] = rnd.choice([BIG_INT, b"\xff" * 8, bytes(512), b"%d" % rnd.getrandbits(64),
                                 rnd.randbytes(rnd.randint(1, 40))])
    else:
        pos = rnd.randrange(len(d))
        d[pos:pos + 12] = rnd.choice([b"\x80" + b"\xff" * 11, b"77777777777\x00", b"\xff" * 12, bytes(12)])
    return bytes(d)


def _archives() -> dict[str, bytes]:
    b = io.BytesIO()
    with tarfile.open(fileobj=b, mode="w", format=tarfile.PAX_FORMAT) as t:
        for i in range(3):
            data = random.Random(i).randbytes(700)
            ti = tarfile.TarInfo(f"dir/f{i}-\u00e9")
            ti.size, ti.mtime, ti.pax_headers = len(data), 1700000000.5, {"comment": "x"}
            t.addfile(ti, io.BytesIO(data))
    tar = b.getvalue()
    return {"tar": tar, "gzip": gzip.compress(tar), "xz": lzma.compress(tar), "bzip2": bz2.compress(tar),
            "zstd": zstandard.ZstdCompressor().compress(tar), "zip": _zip()}


@pytest.mark.parametrize("kind", list(_archives()))
def test_mutated_archives_fail_only_with_categorised_errors(shm, kind):
    rnd = random.Random(f"archive-{kind}")
    sample = _archives()[kind]
    for _ in range(120):
        data = _mutate(rnd, sample)
        try:
            _extract(data, shm / "d")
        except ModelsealError as e:
            assert e.exit_code in (4, 6, 7), e
            one_line(e)
            assert not (shm / "d").exists()


# --------------------------------------------------------------------------- Tink keysets and streams

def _keyset(**key_data) -> bytes:
    ks = json.loads(keyset_json(KEY))
    ks["key"][0]["keyData"].update(key_data)
    return json.dumps(ks).encode()


def _field(number: int, value) -> bytes:
    from support.tinkkeys import _field as f
    return f(number, value)


def _key_value(params: bytes, ikm: bytes | int = KEY) -> str:
    return base64.b64encode(_field(1, 0) + _field(2, params) + _field(3, ikm)).decode()


HOSTILE_KEYSETS = {
    "deep": b"{" + DEEP[1:],
    "deep object": DEEP_OBJ,
    "key a string": b'{"primaryKeyId":1,"key":"x"}',
    "key entries strings": b'{"primaryKeyId":1,"key":["x"]}',
    "keyData a string": b'{"primaryKeyId":1,"key":[{"keyId":1,"keyData":"x"}]}',
    "typeUrl a number": _keyset(typeUrl=5),
    "value a number": _keyset(value=5),
    "value not base64": _keyset(value="!!!"),
    "value empty": _keyset(value=""),
    "params a varint": _keyset(value=base64.b64encode(_field(2, 7) + _field(3, KEY)).decode()),
    "ikm a varint": _keyset(value=_key_value(_field(1, 1 << 20) + _field(2, 32) + _field(3, 3), ikm=5)),
    "segment size as bytes": _keyset(value=_key_value(_field(1, b"x") + _field(2, 32) + _field(3, 3))),
    "key size 7": _keyset(value=_key_value(_field(1, 1 << 20) + _field(2, 7) + _field(3, 3))),
    "segment size 0": _keyset(value=_key_value(_field(1, 0) + _field(2, 32) + _field(3, 3))),
    "hash 99": _keyset(value=_key_value(_field(1, 1 << 20) + _field(2, 32) + _field(3, 99))),
    "truncated protobuf": _keyset(value=base64.b64encode(b"\x1a\xff\x01").decode()),
    "varint overflow": _keyset(value=base64.b64encode(b"\x08" + b"\xff" * 11).decode()),
    "NaN": b'{"primaryKeyId":NaN,"key":[]}',
}


@pytest.mark.parametrize("case", list(HOSTILE_KEYSETS), ids=list(HOSTILE_KEYSETS))
def test_hostile_tink_keyset(case):
    with refused(IntegrityError):
        tinkkeyset.load(HOSTILE_KEYSETS[case])


def test_tink_keyset_of_another_type_is_a_usage_error():
    with refused(UsageError, match="not an AES-GCM-HKDF"):
        tinkkeyset.load(_keyset(typeUrl="type.googleapis.com/google.crypto.tink.AesGcmKey"))
    assert tinkkeyset.load(keyset_json(KEY).encode())[0] == KEY


def test_mutated_tink_stream():
    rnd = random.Random("tink-stream")
    out = io.BytesIO()
    w = streaming.EncryptingWriter(out, KEY, b"aad")
    w.write(rnd.randbytes(3000))
    w.close()
    for _ in range(200):
        with refused(IntegrityError):
            for _ in streaming.DecryptingReader(io.BytesIO(_mutate(rnd, out.getvalue())), KEY, b"aad").segments():
                pass


# --------------------------------------------------------------------------- OpenPGP

def _pgp_messages() -> list[bytes]:
    from test_openpgp import compressed_body, literal_body, message, packet, partial_packet

    return [message(packet(11, literal_body(b"a" * 3000))),
            message(packet(8, compressed_body(2, packet(11, literal_body(b"x" * 5000)))), partial=True),
            message(partial_packet(8, compressed_body(3, packet(11, literal_body(b"y" * 3000)))))]


def test_mutated_openpgp_messages():
    from test_openpgp import PASSPHRASE

    rnd = random.Random("openpgp")
    for sample in _pgp_messages():
        for _ in range(150):
            data = _mutate(rnd, sample)
            try:
                for _ in openpgp.DecryptingReader(io.BytesIO(data), PASSPHRASE).segments():
                    pass
            except (IntegrityError, CapacityError, UnsafeError) as e:
                one_line(e)


def test_raw_tink_key_starting_with_a_brace_is_a_raw_key():
    """One random raw key in 256 starts with 0x7b ("{"); it is a key, not a malformed keyset."""
    rnd = random.Random("brace")
    for _ in range(50):
        raw = b"{" + rnd.randbytes(31)
        if all(32 <= b < 127 for b in raw):
            continue  # printable ASCII through and through: text (one key in 10**14)
        assert tinkkeyset.load(raw)[0] == raw
    assert tinkkeyset.load(b"  \n{" + bytes(31))[0] == b"  \n{" + bytes(31)


# --------------------------------------------------------------------------- registries (real ones)

@pytest.fixture(scope="module")
def sealed_on_a_registry(tmp_path_factory):
    """A real registry holding a sealed model (models/m:1), and a fault proxy in front of it."""
    from support.registry import Registry

    from conftest import modelseal

    work = tmp_path_factory.mktemp("registry-work")
    (work / "empty").mkdir()
    (work / "model").mkdir()
    (work / "model" / "weights.bin").write_bytes(os.urandom(100_000))
    assert modelseal("keygen", "-o", str(work / "key")).code == 0
    with Registry() as registry:
        proxy = FaultProxy(registry.port)
        r = modelseal("seal", str(work / "model"), "-o", f"oci://{registry.host}/models/m:1", "--key",
                      str(work / "key"), "--allow-http", env={"DOCKER_CONFIG": str(work / "empty")})
        assert r.code == 0, r.stderr
        pushed = [x for x in r.logs() if x.get("event") == "pushed"][-1]
        yield work, registry, proxy, pushed
        proxy.close()


def _fetch(work, host: str, config, out):  # type: ignore[no-untyped-def]
    from conftest import modelseal

    return modelseal("fetch-model", "--source", f"oci://{host}/models/m:1", "--allow-http", "-o", str(out),
                     env={"DOCKER_CONFIG": str(config)})


def _manifest_with(pushed: dict, **config) -> bytes:  # type: ignore[no-untyped-def]
    """The pushed model's manifest, its layer untitled and of a generic type, its config as given."""
    layer = {"mediaType": "application/octet-stream", "digest": pushed["layer"], "size": pushed["bytes"]}
    return json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "config": {"digest": "sha256:" + "4" * 64, "size": 2, **config}, "layers": [layer]}).encode()


@pytest.mark.parametrize("case", ["deep array", "deep member", "config.mediaType a list", "config.mediaType a map"])
def test_hostile_manifest_from_a_registry(sealed_on_a_registry, case):
    """A registry (or a mirror in front of one) answers the manifest GET with what it likes: exit 4."""
    work, registry, proxy, pushed = sealed_on_a_registry
    body = {
        "deep array": DEEP,
        "deep member": _manifest_with(pushed)[:-1] + b', "x": ' + DEEP_OBJ + b"}",
        "config.mediaType a list": _manifest_with(pushed, mediaType=["application/vnd.oci.image.config.v1+json"]),
        "config.mediaType a map": _manifest_with(pushed, mediaType={"a": 1}),
    }[case]
    out = work / f"out-{case.replace(' ', '-')}"
    assert not out.exists()
    proxy.add_fault(Fault("status", status=200, body=body, method="GET", path="/manifests/",
                          headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"}))
    r = _fetch(work, f"127.0.0.1:{proxy.port}", work / "empty", out)
    assert r.code == 4, r.stderr[-2000:]
    assert "manifest" in r.error() and "\n" not in r.error() and len(r.error()) <= 400
    assert not out.exists() and not os.path.exists(f"{out}.partial")
    assert proxy.take_fault("GET", "/manifests/") is None  # the hostile answer was the one served


def test_a_manifest_with_a_good_config_still_reads(sealed_on_a_registry):
    """The same untitled layer with a string config type is read, byte-exact (the cases above differ by type only)."""
    work, registry, proxy, pushed = sealed_on_a_registry
    proxy.add_fault(Fault("status", status=200, body=_manifest_with(pushed, mediaType="application/vnd.oci.empty.v1+json"),
                          method="GET", path="/manifests/",
                          headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"}))
    out = work / "out-good"
    r = _fetch(work, f"127.0.0.1:{proxy.port}", work / "empty", out)
    assert r.code == 0, r.stderr[-2000:]
    assert "sha256:" + hashlib.sha256(out.read_bytes()).hexdigest() == pushed["layer"]


@pytest.mark.parametrize("body", [DEEP, DEEP_OBJ, b'{"token": ' + DEEP + b"}"], ids=["deep", "deep-object", "deep-token"])
def test_hostile_token_answer(tmp_path, body):
    """The token endpoint a registry's challenge names answers nested JSON: exit 4, not a crash."""
    from support.registry import Registry, TokenIssuer

    issuer = TokenIssuer(str(tmp_path))
    issuer.grant("", "models/m", "pull")
    try:
        with Registry(token=issuer) as registry:
            issuer.add_fault(Fault("status", status=200, body=body, path="/token",
                                   headers={"Content-Type": "application/json"}))
            (tmp_path / "empty").mkdir()
            r = _fetch(tmp_path, registry.host, tmp_path / "empty", tmp_path / "m.seal")
    finally:
        issuer.close()
    assert r.code == 4, r.stderr[-2000:]
    assert "token endpoint" in r.error() and "nested" in r.error() and "\n" not in r.error()
    assert not (tmp_path / "m.seal").exists()


@pytest.mark.parametrize("body", [DEEP, b'{"auths": ' + DEEP_OBJ + b"}", NESTED_40], ids=["deep", "deep-auths", "nested-40"])
def test_hostile_docker_config_is_a_configuration_error(sealed_on_a_registry, tmp_path, body):
    """A Docker config (a pull secret mounted as a volume) nested too deeply: exit 2, naming the file."""
    work, registry, proxy, pushed = sealed_on_a_registry
    (tmp_path / "config.json").write_bytes(body)
    r = _fetch(work, registry.host, tmp_path, tmp_path / "m.seal")
    assert r.code == 2, r.stderr[-2000:]
    assert f"Docker config {tmp_path / 'config.json'}" in r.error() and "\n" not in r.error()
    assert not (tmp_path / "m.seal").exists()
