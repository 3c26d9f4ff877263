"""The owner CLI and the decrypt stage, end to end through the real command line."""

from __future__ import annotations

import base64
import io
import json
import os
import stat
import tarfile

import pytest

from conftest import modelseal, payload_aad, payload_offset
from modelseal.streaming import AES256_GCM_HKDF_1MB as P
from support.tinkkeys import keyset_json, tink_primitive

SIZES = [0, 1, P.first_plaintext_size, P.first_plaintext_size + 1,
         P.first_plaintext_size + P.plaintext_size, P.first_plaintext_size + P.plaintext_size + 1, 7 * 2**20 + 5]


def make_tree(root, big: int = 3 * 2**20):
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "empty").mkdir()
    (root / "weights.bin").write_bytes(os.urandom(big))
    (root / "sub" / "config.json").write_text('{"layers": 3}')
    (root / "sub" / "deeper" / "zeros.bin").write_bytes(bytes(500_000))
    (root / "run.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(root / "run.sh", 0o755)


def tree(root) -> dict:
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root)
            st = os.lstat(p)
            out[rel] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode) & 0o111,
                        open(p, "rb").read() if stat.S_ISREG(st.st_mode) else None)
    return out


@pytest.fixture
def key(shm):
    path = shm / "key"
    r = modelseal("keygen", "-o", str(path))
    assert r.code == 0, r.stderr
    return path


def test_keygen_makes_a_0400_key_and_never_overwrites(shm, key):
    assert stat.S_IMODE(key.stat().st_mode) == 0o400 and len(key.read_bytes()) == 32
    before = key.read_bytes()
    r = modelseal("keygen", "-o", str(key))
    assert r.code == 2 and "exists" in r.error()
    assert key.read_bytes() == before


@pytest.mark.parametrize("size", SIZES)
def test_round_trip_at_segment_boundaries(shm, key, size):
    data = os.urandom(size)
    r = modelseal("seal", "-", "-o", "-", "--key", str(key), stdin=data)
    assert r.code == 0, r.stderr
    prefix_len = payload_offset(r.stdout)
    assert len(r.stdout) == prefix_len + P.ciphertext_size(size)
    (shm / "m.seal").write_bytes(r.stdout)
    r = modelseal("decrypt", "--in", str(shm / "m.seal"), "--key", str(key), "-o", str(shm / "out"))
    assert r.code == 0, r.stderr
    assert (shm / "out").read_bytes() == data


@pytest.mark.parametrize("compress", ["none", "gzip", "zstd"])
def test_seal_directory_round_trip(shm, key, compress):
    src = shm / "model"
    src.mkdir()
    make_tree(src)
    r = modelseal("seal", str(src), "-o", str(shm / "m.seal"), "--key", str(key), "--compress", compress,
                  "--name", "demo", "--model-version", "7")
    assert r.code == 0, r.stderr
    info = json.loads(modelseal("inspect", str(shm / "m.seal")).stdout)
    files = [p for p in src.rglob("*") if p.is_file()]
    sizes = {"file_bytes": sum(p.stat().st_size for p in files), "files": len(files)}
    assert {k: v for k, v in info["content"].items() if k != "tar_bytes"} == {
        "type": "tar", "compression": compress, **sizes}
    assert info["name"] == "demo" and info["version"] == "7" and info["v"] == 2 and "wrapped_key" not in info
    assert [r["type"] for r in info["recipients"]] == ["symmetric"]  # --key: the one recipient
    r = modelseal("decrypt", "--in", str(shm / "m.seal"), "--key", str(key), "-o", str(shm / "m.tar"))
    assert r.code == 0, r.stderr
    out = shm / "out"
    raw = (shm / "m.tar").read_bytes()
    if compress == "none":
        assert info["plaintext_bytes"] == len(raw)
    if compress == "zstd":
        import zstandard

        raw = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(raw)).read()
    elif compress == "gzip":
        import gzip

        raw = gzip.decompress(raw)
    assert info["content"]["tar_bytes"] == len(raw)  # planned before a byte was written, exact
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:*") as t:
        t.extractall(out, filter="data")  # test oracle only; the product never extracts this way
    assert tree(out) == tree(src)


def test_seal_is_deterministic_in_member_order(shm, key):
    src = shm / "model"
    src.mkdir()
    make_tree(src, big=1000)
    names = []
    for i in range(2):
        assert modelseal("seal", str(src), "-o", str(shm / f"{i}.seal"), "--key", str(key)).code == 0
        assert modelseal("decrypt", "--in", str(shm / f"{i}.seal"), "--key", str(key),
                         "-o", str(shm / f"{i}.tar")).code == 0
        with tarfile.open(shm / f"{i}.tar") as t:
            names.append([(m.name, m.uid, m.uname) for m in t.getmembers()])
    assert names[0] == names[1]
    assert [n for n, _, _ in names[0]] == ["empty", "run.sh", "sub", "weights.bin", "sub/config.json",
                                           "sub/deeper", "sub/deeper/zeros.bin"]
    assert all(uid == 0 and uname == "" for _, uid, uname in names[0])


def test_every_flag_reads_its_environment_variable(shm, key):
    data = os.urandom(100_000)
    (shm / "in.bin").write_bytes(data)
    env = {"MODELSEAL_SRC": str(shm / "in.bin"), "MODELSEAL_OUTPUT": str(shm / "m.seal"), "MODELSEAL_KEY": str(key)}
    assert modelseal("seal", env=env).code == 0
    env = {"MODELSEAL_INPUT": str(shm / "m.seal"), "MODELSEAL_OUTPUT": str(shm / "out.tar"),
           "MODELSEAL_KEY_URI": f"file://{key}", "MODELSEAL_DELETE_INPUT": "true"}
    r = modelseal("decrypt", env=env)
    assert r.code == 0, r.stderr
    with tarfile.open(shm / "out.tar") as t:
        assert t.extractfile("in.bin").read() == data
    assert not (shm / "m.seal").exists()


def test_key_from_env_uri(shm, key):
    data = os.urandom(5000)
    env = {"MODEL_KEY": base64.b64encode(key.read_bytes()).decode()}
    r = modelseal("seal", "-", "-o", str(shm / "m.seal"), "--key-uri", "env:MODEL_KEY", stdin=data, env=env)
    assert r.code == 0, r.stderr
    r = modelseal("decrypt", "--in", str(shm / "m.seal"), "--key-uri", "env:MODEL_KEY", "-o", str(shm / "o"), env=env)
    assert r.code == 0 and (shm / "o").read_bytes() == data


def test_non_tmpfs_target_refused_with_7(shm, key, disk_dir):
    assert modelseal("seal", "-", "-o", str(shm / "m.seal"), "--key", str(key), stdin=b"x" * 1000).code == 0
    r = modelseal("decrypt", "--in", str(shm / "m.seal"), "--key", str(key), "-o", str(disk_dir / "m.tar"))
    assert r.code == 7 and "not tmpfs" in r.error()
    assert list(disk_dir.iterdir()) == []
    r = modelseal("decrypt", "--in", str(shm / "m.seal"), "--key", str(key), "-o", str(disk_dir / "m.tar"),
                  "--allow-disk")
    assert r.code == 0
    assert any(rec.get("event") == "allow_disk" and rec["level"] == "warning" for rec in r.logs())


def test_delete_key_and_input_after_success(shm, key):
    assert modelseal("seal", "-", "-o", str(shm / "m.seal"), "--key", str(key), stdin=b"abc").code == 0
    r = modelseal("decrypt", "--in", str(shm / "m.seal"), "--key", str(key), "-o", str(shm / "o"),
                  "--delete-key", "--delete-input")
    assert r.code == 0 and (shm / "o").read_bytes() == b"abc"
    assert not key.exists() and not (shm / "m.seal").exists()


def test_failed_decrypt_keeps_key_and_input(shm, key):
    assert modelseal("seal", "-", "-o", str(shm / "m.seal"), "--key", str(key), stdin=b"abc" * 1000).code == 0
    data = bytearray((shm / "m.seal").read_bytes())
    data[-1] ^= 1
    (shm / "m.seal").write_bytes(data)
    r = modelseal("decrypt", "--in", str(shm / "m.seal"), "--key", str(key), "-o", str(shm / "o"),
                  "--delete-key", "--delete-input")
    assert r.code == 4 and key.exists() and (shm / "m.seal").exists() and not (shm / "o").exists()


def test_no_key_material_in_any_output(shm, key):
    term = shm / "termination-log"
    raw = key.read_bytes()
    forms = [raw.hex(), base64.b64encode(raw).decode(), base64.b64encode(raw).decode().rstrip("=")]
    env = {"MODELSEAL_TERMINATION_LOG": str(term), "MODEL_KEY": raw.hex()}
    term.write_text("")
    runs = [
        modelseal("seal", "-", "-o", str(shm / "m.seal"), "--key-uri", "env:MODEL_KEY", stdin=b"x" * 5000, env=env),
        modelseal("decrypt", "--in", str(shm / "m.seal"), "--key-uri", "env:MODEL_KEY", "-o", str(shm / "o"), env=env),
        modelseal("decrypt", "--in", str(shm / "m.seal"), "--key", str(key), "-o", "/var/tmp/x", env=env),
        modelseal("inspect", str(shm / "m.seal"), env=env),
    ]
    tampered = bytearray((shm / "m.seal").read_bytes())
    tampered[-3] ^= 1
    (shm / "bad.seal").write_bytes(tampered)
    runs.append(modelseal("decrypt", "--in", str(shm / "bad.seal"), "--key", str(key), "-o", str(shm / "o2"), env=env))
    assert [r.code for r in runs] == [0, 0, 7, 0, 4]
    for r in runs:
        text = r.stderr + r.stdout.decode(errors="replace")
        for form in forms:
            assert form not in text
    summary = json.loads(term.read_text())
    assert summary["exit_code"] == 4 and summary["category"] == "integrity"
    assert all(form not in term.read_text() for form in forms)


def test_termination_message_on_success(shm, key):
    term = shm / "term"
    term.write_text("")
    assert modelseal("seal", "-", "-o", str(shm / "m.seal"), "--key", str(key), stdin=b"y" * 10).code == 0
    r = modelseal("decrypt", "--in", str(shm / "m.seal"), "--key", str(key), "-o", str(shm / "o"),
                  env={"MODELSEAL_TERMINATION_LOG": str(term)})
    assert r.code == 0
    summary = json.loads(term.read_text())
    assert summary["status"] == "ok" and summary["stage"] == "decrypt" and summary["bytes"] == 10


def test_logs_are_json_lines(shm, key):
    r = modelseal("seal", "-", "-o", str(shm / "m.seal"), "--key", str(key), stdin=b"z" * 10)
    assert r.code == 0
    assert all(line.startswith("{") for line in r.stderr.splitlines())
    assert {rec["stage"] for rec in r.logs()} == {"seal"}


def test_usage_errors_exit_2(shm, key):
    assert modelseal("decrypt", "--in", "x").code == 2  # missing -o
    r = modelseal("decrypt", "--in", str(shm / "nope"), "--key", str(key), "--key-uri", "env:X", "-o", str(shm / "o"))
    assert r.code == 2 and "exactly one" in r.error()
    r = modelseal("decrypt", "--in", str(shm / "nope"), "--key-uri", "gopher://x", "-o", str(shm / "o"))
    assert r.code == 2 and "unknown key URI scheme" in r.error()


def test_missing_input_exits_3(shm, key):
    r = modelseal("decrypt", "--in", str(shm / "nope.seal"), "--key", str(key), "-o", str(shm / "o"))
    assert r.code == 3 and "nope.seal" in r.error()


# ---- Tink interoperability through the command line -----------------------

@pytest.mark.parametrize("key_form", ["keyset", "raw"])
def test_tink_stream_decrypts_with_format_tink(shm, key_form):
    ikm = os.urandom(32)
    keyset = keyset_json(ikm)
    data = os.urandom(3 * 2**20 + 77)
    sink = io.BytesIO()
    sink.close = lambda: None  # tink closes what it writes to
    with tink_primitive(keyset).new_encrypting_stream(sink, b"model-v1") as w:
        w.write(data)
    (shm / "m.tink").write_bytes(sink.getvalue())
    (shm / "k").write_bytes(keyset.encode() if key_form == "keyset" else ikm)
    r = modelseal("decrypt", "--format", "tink", "--in", str(shm / "m.tink"), "--key", str(shm / "k"),
                  "--associated-data", "model-v1", "-o", str(shm / "o"))
    assert r.code == 0, r.stderr
    assert (shm / "o").read_bytes() == data
    r = modelseal("decrypt", "--format", "tink", "--in", str(shm / "m.tink"), "--key", str(shm / "k"),
                  "--associated-data", "model-v2", "-o", str(shm / "o2"))
    assert r.code == 4 and not (shm / "o2").exists()


def test_seal_payload_decrypts_with_tink(shm, key):
    data = os.urandom(2 * 2**20 + 3)
    r = modelseal("seal", "-", "-o", str(shm / "m.seal"), "--key", str(key), stdin=data)
    assert r.code == 0
    sealed = (shm / "m.seal").read_bytes()
    r = modelseal("fetch-key", "--key-uri", f"file://{key}", "--wrapped-from", str(shm / "m.seal"), "-o",
                  str(shm / "data.key"))  # the data key, which the symmetric recipient's key unlocks
    assert r.code == 0, r.stderr
    primitive = tink_primitive(keyset_json((shm / "data.key").read_bytes()))
    with primitive.new_decrypting_stream(io.BytesIO(sealed[payload_offset(sealed):]), payload_aad(sealed)) as rd:
        assert rd.read() == data


def test_bad_sha256_pin_is_a_usage_error_before_any_io(shm):
    r = modelseal("fetch-model", "--source", str(shm / "absent.seal"), "--sha256", "not-hex", "-o", str(shm / "o"))
    assert r.code == 2 and "--sha256" in r.error()


def test_unpack_limits_from_environment(shm, key):
    data = os.urandom(300_000)
    (shm / "in.bin").write_bytes(data)
    assert modelseal("seal", str(shm / "in.bin"), "-o", str(shm / "m.seal"), "--key", str(key)).code == 0
    r = modelseal("run", "--source", str(shm / "m.seal"), "--key", str(key), "-o", str(shm / "out"),
                  env={"MODELSEAL_MAX_FILE_SIZE": "100K"})
    assert r.code == 6 and not (shm / "out").exists()
    r = modelseal("run", "--source", str(shm / "m.seal"), "--key", str(key), "-o", str(shm / "out"),
                  env={"MODELSEAL_MAX_FILE_SIZE": "1M"})
    assert r.code == 0 and (shm / "out" / "in.bin").read_bytes() == data
