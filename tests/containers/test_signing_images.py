"""Signature verification inside the real unpack and run images (issue 13).

The images carry no model_signing library: verification is modelseal's own,
on cryptography. A model sealed with `seal --sign-key` on the host verifies
in the unpack image (no network, read-only root) and in the run image; a
model whose signature names another key exits 4 and leaves nothing.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import harness
from conftest import modelseal
from support.models import make_model
from support.signing import files, write_key
from test_images import box, run  # noqa: F401  (box is a fixture)


@pytest.fixture(autouse=True)
def _images() -> None:
    harness.need(harness.images_missing("unpack", "run", "decrypt"))


@pytest.fixture
def signed_seal(box: Path):  # noqa: F811
    model = box / "src" / "model"
    model.mkdir()
    make_model(model)
    private, public, _ = write_key(box / "src", "signer")
    key, seal = box / "src" / "key", box / "src" / "m.seal"
    assert modelseal("keygen", "-o", str(key)).code == 0
    r = modelseal("seal", str(model), "-o", str(seal), "--key", str(key), "--sign-key", str(private))
    assert r.code == 0, r.stderr
    _, stranger, _ = write_key(box / "src", "stranger")
    for p in (public, stranger, key, seal):
        p.chmod(0o444)
    (box / "src").chmod(0o755)
    return model, key, seal, public, stranger


def test_unpack_and_run_images_verify(box: Path, signed_seal) -> None:  # noqa: F811
    model, key, seal, public, stranger = signed_seal
    tar = box / "cache" / "m.tar"
    assert modelseal("decrypt", "--in", str(seal), "--key", str(key), "-o", str(tar)).code == 0
    tar.chmod(0o444)
    tar.with_name("m.tar.sizes").chmod(0o444)  # decrypt's record of the header's sizes, read with the tar
    r = run("unpack", "--in", str(tar), "-o", f"{box}/models/a", "--verify-key", str(public), mounts=(box,))
    assert r.returncode == 0, r.stderr
    assert '"signature_verified"' in r.stderr
    out = files(box / "models" / "a")
    assert out.pop("model.sig")  # added by seal --sign-key; the rest is the model as it was
    assert out == files(model)

    r = run("unpack", "--in", str(tar), "-o", f"{box}/models/b", "--verify-key", str(stranger), mounts=(box,))
    assert r.returncode == 4 and "signed with another key" in r.stderr
    assert not (box / "models" / "b").exists()

    r = run("run", "--source", f"file://{seal}", "--key", str(key), "-o", f"{box}/models/c",
            "--verify-key", str(public), network="host", mounts=(box,))
    assert r.returncode == 0, r.stderr
    assert files(box / "models" / "c") == files(box / "models" / "a")
