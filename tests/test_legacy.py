"""The original recipe migrated: real `gpg -c` files through the real CLI."""

from __future__ import annotations

import http.server
import os
import subprocess
import tarfile
import threading

import pytest

from conftest import modelseal

PASSPHRASE = b"correct horse battery staple"


@pytest.fixture
def legacy(shm):
    """A model dir, `tar -cf model.tar`, then `gpg -c model.tar` with gpg's defaults (as the old recipe)."""
    model = shm / "model"
    (model / "variables").mkdir(parents=True)
    (model / "variables" / "w.bin").write_bytes(os.urandom(3 * 2**20 + 11))
    (model / "saved_model.pb").write_bytes(b"\x08\x01" * 1000)
    (shm / "pass").write_bytes(PASSPHRASE + b"\n")
    home = shm / "gnupg"
    home.mkdir(mode=0o700)
    subprocess.run(["tar", "-C", str(shm), "-cf", str(shm / "model.tar"), "model"], check=True)
    subprocess.run(["gpg", "--homedir", str(home), "--batch", "--pinentry-mode", "loopback", "--passphrase-file",
                    str(shm / "pass"), "-c", "-o", str(shm / "model.tar.gpg"), str(shm / "model.tar")],
                   check=True, capture_output=True)
    return shm


class _KeyServer(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Length", str(len(PASSPHRASE)))
        self.end_headers()
        self.wfile.write(PASSPHRASE)

    def log_message(self, *a):
        pass


@pytest.fixture
def keyserver():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _KeyServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/keys/model"
    server.shutdown()


def test_decrypt_format_openpgp_matches_gpg(legacy):
    r = modelseal("decrypt", "--format", "openpgp", "--in", str(legacy / "model.tar.gpg"), "--key",
                  str(legacy / "pass"), "-o", str(legacy / "out.tar"))
    assert r.code == 0, r.stderr
    assert (legacy / "out.tar").read_bytes() == (legacy / "model.tar").read_bytes()


def test_old_pod_flow_with_modelseal(legacy, keyserver):
    """fetch-key over plain http (explicitly allowed, warned), then run --format openpgp."""
    r = modelseal("fetch-key", "--key-uri", keyserver, "--passphrase", "-o", str(legacy / "k"))
    assert r.code == 2 and "http" in r.error()
    r = modelseal("fetch-key", "--key-uri", keyserver, "--allow-http", "--passphrase", "-o", str(legacy / "k"))
    assert r.code == 0, r.stderr
    assert any(rec["level"] == "warning" for rec in r.logs())
    assert (legacy / "k").read_bytes() == PASSPHRASE
    r = modelseal("run", "--format", "openpgp", "--source", f"file://{legacy / 'model.tar.gpg'}",
                  "--key", str(legacy / "k"), "--delete-key", "-o", str(legacy / "models" / "m" / "1"))
    assert r.code == 0, r.stderr
    out = legacy / "models" / "m" / "1" / "model"
    assert (out / "variables" / "w.bin").read_bytes() == (legacy / "model" / "variables" / "w.bin").read_bytes()
    assert not (legacy / "k").exists()


def test_wrong_passphrase_and_tampering_leave_nothing(legacy):
    (legacy / "bad").write_bytes(b"wrong\n")
    r = modelseal("run", "--format", "openpgp", "--source", str(legacy / "model.tar.gpg"), "--key",
                  str(legacy / "bad"), "-o", str(legacy / "out"))
    assert r.code == 4 and not (legacy / "out").exists()
    data = bytearray((legacy / "model.tar.gpg").read_bytes())
    data[len(data) // 2] ^= 1
    (legacy / "t.gpg").write_bytes(data)
    for args in (["run", "--source", str(legacy / "t.gpg"), "-o", str(legacy / "out")],
                 ["decrypt", "--in", str(legacy / "t.gpg"), "-o", str(legacy / "out.tar")]):
        r = modelseal(*args, "--format", "openpgp", "--key", str(legacy / "pass"))
        assert r.code == 4, r.stderr
    assert not (legacy / "out").exists() and not (legacy / "out.tar").exists()
    assert not [p for p in legacy.iterdir() if "partial" in p.name or "staging" in p.name]


def test_convert_to_seal(legacy):
    assert modelseal("keygen", "-o", str(legacy / "key")).code == 0
    r = modelseal("convert", str(legacy / "model.tar.gpg"), "--passphrase-file", str(legacy / "pass"),
                  "--key", str(legacy / "key"), "-o", str(legacy / "model.seal"))
    assert r.code == 0, r.stderr
    r = modelseal("decrypt", "--in", str(legacy / "model.seal"), "--key", str(legacy / "key"),
                  "-o", str(legacy / "m.tar"))
    assert r.code == 0
    assert (legacy / "m.tar").read_bytes() == (legacy / "model.tar").read_bytes()
    with tarfile.open(legacy / "m.tar") as t:
        assert "model/saved_model.pb" in t.getnames()
    (legacy / "bad").write_bytes(b"nope\n")
    r = modelseal("convert", str(legacy / "model.tar.gpg"), "--passphrase-file", str(legacy / "bad"),
                  "--key", str(legacy / "key"), "-o", str(legacy / "x.seal"))
    assert r.code == 4 and not (legacy / "x.seal").exists() and not (legacy / "x.seal.partial").exists()


def test_passphrase_from_a_key_uri(legacy):
    """--format openpgp takes the passphrase from any key URI, raw, not only from a file."""
    r = modelseal("decrypt", "--format", "openpgp", "--in", str(legacy / "model.tar.gpg"),
                  "--key-uri", "env:OLD_PASSPHRASE", "-o", str(legacy / "out.tar"),
                  env={"OLD_PASSPHRASE": PASSPHRASE.decode()})
    assert r.code == 0, r.stderr
    assert (legacy / "out.tar").read_bytes() == (legacy / "model.tar").read_bytes()


def test_the_legacy_examples_next_step_works(legacy):
    """examples/kubernetes/legacy-modelseal.yaml's "Next step" commands, run as written (in the model's
    directory, with its file names), make a .seal that decrypts to the same tar: the old text lacked the
    passphrase and the key, and failed."""
    import re
    import shlex
    from pathlib import Path

    text = (Path(__file__).parents[1] / "examples" / "kubernetes" / "legacy-modelseal.yaml").read_text()
    step = text[text.index("# Next step"):].split("\n#\n")[0]
    commands = [shlex.split(c) for c in re.findall(r"modelseal ([a-z-]+ [^`\n]*?)(?:`|\n|$)", step)]
    assert [c[0] for c in commands] == ["keygen", "convert"], step
    (legacy / "passphrase.txt").write_bytes(PASSPHRASE + b"\n")
    cwd = os.getcwd()
    os.chdir(legacy)
    try:
        for args in commands:
            r = modelseal(*args)
            assert r.code == 0, (args, r.stderr)
        r = modelseal("decrypt", "--in", "model.seal", "--key", "model.key", "-o", "again.tar")
    finally:
        os.chdir(cwd)
    assert r.code == 0, r.stderr
    assert (legacy / "again.tar").read_bytes() == (legacy / "model.tar").read_bytes()
