"""What `seal` takes from SRC: the owner's side of the attack surface.

A model directory is often someone else's (a downloaded repository, a
colleague's checkout): a symlink in it to /etc/passwd or ~/.aws/credentials
was sealed and shipped without a word. seal also swallowed its own earlier
output and sealed an empty directory. Links that leave SRC are refused unless
--follow-external-symlinks (decided on the opened target's real path, by
components), links inside SRC are stored as the files they point to, the
output is left out by identity (st_dev, st_ino), other .seal files are sealed
with a warning, and a model without a byte of content is refused.
"""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from conftest import modelseal, refused
from modelseal import archive
from modelseal.errors import UsageError

SECRET = b"root:x:0:0:the owner's secret, never to leave this machine\n"


@pytest.fixture
def owner(shm: Path) -> Path:
    """A model directory (weights, a config in a subdirectory), a data key, and a secret outside the model."""
    model = shm / "model"
    (model / "sub").mkdir(parents=True)
    (model / "weights.bin").write_bytes(os.urandom(300_000))
    (model / "sub" / "config.json").write_bytes(b'{"layers": 12}')
    (shm / "key").write_bytes(os.urandom(32))
    (shm / "secret.txt").write_bytes(SECRET)
    (shm / "model2").mkdir()  # a sibling whose name starts with the model's
    (shm / "model2" / "secret.txt").write_bytes(SECRET)
    return shm


def seal(shm: Path, *args: str, src: str = "model", out: str = "m.seal"):
    return modelseal("seal", str(shm / src), "-o", str(shm / out), "--key", str(shm / "key"), *args)


def members(shm: Path, sealed: str = "m.seal") -> dict[str, bytes | None]:
    """The archive's members (name -> bytes, None for a directory), decrypted as a pod would."""
    r = modelseal("decrypt", "--in", str(shm / sealed), "--key", str(shm / "key"), "-o", str(shm / "m.tar"))
    assert r.code == 0, r.stderr
    with tarfile.open(shm / "m.tar") as t:
        out = {m.name: (t.extractfile(m).read() if m.isfile() else None) for m in t}
        assert all(m.isfile() or m.isdir() for m in t), "only files and directories are sealed"
    (shm / "m.tar").unlink()
    return out


# ---- links that leave SRC ----------------------------------------------------------------------------

@pytest.mark.parametrize("name, target", [
    ("config.json", "/etc/passwd"),                 # absolute
    ("tokenizer.json", "../secret.txt"),            # relative, up and out
    ("sub/vocab.txt", "../../secret.txt"),          # from a subdirectory
    ("extra", ".."),                                # a directory outside (the model's parent)
    ("sibling.txt", "../model2/secret.txt"),        # a sibling whose path starts with SRC's as a string
    ("chained.txt", "hop"),                         # an inside link to a link that leaves
])
def test_a_symlink_out_of_the_model_is_refused(owner: Path, name: str, target: str):
    shm = owner
    (shm / "model" / name).symlink_to(target)
    if name == "chained.txt":
        (shm / "model" / "hop").symlink_to("../secret.txt")
    r = seal(shm)
    assert r.code == 2, r.stderr
    assert "outside the model directory" in r.error() and "--follow-external-symlinks" in r.error()
    assert not (shm / "m.seal").exists() and not (shm / "m.seal.partial").exists()
    assert SECRET.decode() not in r.stderr


def test_follow_external_symlinks_seals_what_they_point_to(owner: Path):
    """The owner's explicit choice (a Hugging Face snapshot is made of links into ../../blobs)."""
    shm = owner
    (shm / "model" / "tokenizer.json").symlink_to("../secret.txt")
    r = seal(shm, "--follow-external-symlinks")
    assert r.code == 0, r.stderr
    assert members(shm)["tokenizer.json"] == SECRET


def test_a_symlink_inside_the_model_is_stored_as_the_file_it_points_to(owner: Path):
    shm = owner
    (shm / "model" / "latest.bin").symlink_to("weights.bin")
    (shm / "model" / "sub" / "weights.bin").symlink_to("../weights.bin")
    (shm / "model" / "cfg").symlink_to(str(shm / "model" / "sub" / "config.json"))  # absolute, but inside
    r = seal(shm)
    assert r.code == 0, r.stderr
    got = members(shm)
    weights = (shm / "model" / "weights.bin").read_bytes()
    assert got["latest.bin"] == got["sub/weights.bin"] == got["weights.bin"] == weights
    assert got["cfg"] == b'{"layers": 12}'
    r = modelseal("run", "--source", str(shm / "m.seal"), "--key", str(shm / "key"), "-o", str(shm / "out"))
    assert r.code == 0, r.stderr  # unpack refuses links by default: as files, they arrive
    assert (shm / "out" / "latest.bin").read_bytes() == weights and not (shm / "out" / "latest.bin").is_symlink()


def test_a_directory_reached_twice_through_a_link_is_refused(owner: Path):
    shm = owner
    (shm / "model" / "again").symlink_to("sub")
    with refused(UsageError, "reached twice"):
        archive.plan_tar(str(shm / "model"))


def test_a_file_swapped_for_a_link_after_planning_is_refused(owner: Path):
    """The plan keeps what it opened: a file replaced by a link to the secret before it is read is refused."""
    shm = owner
    plan = archive.plan_tar(str(shm / "model"))
    weights = shm / "model" / "weights.bin"
    weights.unlink()
    weights.symlink_to(shm / "secret.txt")
    out = io.BytesIO()
    with refused(UsageError, "replaced while being sealed"):
        archive.write_tar(plan, out)
    assert SECRET not in out.getvalue()


# ---- its own output, other .seal files ---------------------------------------------------------------

def test_the_output_inside_the_model_is_left_out(owner: Path):
    """Sealing into SRC twice: the second seal would carry the first (and grow each time)."""
    shm = owner
    assert seal(shm, out="model/m.seal").code == 0
    first = members(shm, "model/m.seal")
    os.link(shm / "model" / "m.seal", shm / "model" / "backup.bin")  # the same file under another name
    (shm / "model" / "m.seal.partial").write_bytes(b"left by a killed run")
    os.mkdir(shm / "elsewhere")
    r = modelseal("seal", str(shm / "model"), "-o", str(shm / "elsewhere" / ".." / "model" / "m.seal"),
                  "--key", str(shm / "key"), "--force")  # replacing the first seal
    assert r.code == 0, r.stderr
    assert set(members(shm, "model/m.seal")) == set(first)  # neither m.seal, backup.bin nor the partial file
    skipped = [line for line in r.stderr.splitlines() if "seal_output_skipped" in line]
    assert len(skipped) == 3, r.stderr


def test_another_seal_file_inside_the_model_is_sealed_with_a_warning(owner: Path):
    shm = owner
    (shm / "model" / "v1.seal").write_bytes(b"MSEAL an older output")
    r = seal(shm)
    assert r.code == 0, r.stderr
    assert members(shm)["v1.seal"] == b"MSEAL an older output"
    warnings = [line for line in r.stderr.splitlines() if '"level":"warning"' in line]
    assert len(warnings) == 1 and "v1.seal" in warnings[0], r.stderr


def test_a_signed_seal_into_the_model_signs_what_it_seals(owner: Path):
    """--sign-key signs exactly the planned files: the skipped output is neither sealed nor listed."""
    from support.signing import write_key

    shm = owner
    private, public, _ = write_key(shm, "signer")
    for _ in range(2):
        r = seal(shm, "--sign-key", str(private), "--force", out="model/m.seal")
        assert r.code == 0, r.stderr
    r = modelseal("run", "--source", str(shm / "model" / "m.seal"), "--key", str(shm / "key"),
                  "-o", str(shm / "out"), "--verify-key", str(public))
    assert r.code == 0, r.stderr
    assert not (shm / "out" / "m.seal").exists()


# ---- an empty model ----------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["empty", "empty-subdirectories", "empty-files", "only-the-output"])
def test_an_empty_model_is_refused(shm: Path, layout: str):
    (shm / "key").write_bytes(os.urandom(32))
    model = shm / "model"
    model.mkdir()
    if layout == "empty-subdirectories":
        (model / "a" / "b").mkdir(parents=True)
    elif layout == "empty-files":
        (model / "a").mkdir()
        (model / "a" / "weights.bin").write_bytes(b"")
    elif layout == "only-the-output":
        (model / "m.seal").write_bytes(b"an earlier output")
    out = "model/m.seal" if layout == "only-the-output" else "m.seal"
    r = seal(shm, "--force", out=out)
    assert r.code == 2, r.stderr
    assert "empty model" in r.error()
    assert not (shm / "m.seal").exists() and not list(shm.rglob("*.partial"))
