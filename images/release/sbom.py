"""A CycloneDX SBOM of an image: every Python distribution and every Debian package in it.

The Python side is cyclonedx-bom's `cyclonedx-py environment`, pointed at
the image: it asks "<python> -c 'import json,sys;json.dump(sys.path,...)'"
for the paths to read distribution metadata from. The answer is the image's
own interpreter's sys.path (run in a container of the image, no network;
under emulation for another architecture), each path given under a folder
where the image's files are unpacked (`docker export`, only the *.dist-info
and *.egg-info trees and dpkg's status): what `importlib.metadata` sees in
the image, .pth additions included (the cloud layer of the fetch stages).

The Debian side is dpkg's own record, /var/lib/dpkg/status, every package
whose status is "install ok installed" (the images purge what they drop
through dpkg, so the record stays true), each with a purl
pkg:deb/debian/NAME@VERSION?arch=ARCH&distro=debian-N as scanners read them.

The image itself is the BOM's metadata.component (type container, its purl
pkg:oci/NAME@DIGEST with arch and repository_url). No timestamp or serial
number: the same image gives the same bytes, so publishing again attaches
nothing new. The document is validated against the CycloneDX 1.6 schema.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

MEDIA_TYPE = "application/vnd.cyclonedx+json"
SPEC_VERSION = "1.6"
_SYS_PATH = "import json,sys;json.dump(sys.path,sys.stdout)"
_STATUS = "var/lib/dpkg/status"


def _docker(*args: str, **kw: Any) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], check=True, capture_output=True, **kw)


def image_sys_path(image: str) -> list[str]:
    """The image's interpreter's sys.path (python3 on its PATH, as the stages run it)."""
    out = _docker("run", "--rm", "--network", "none", "--entrypoint", "python3", image, "-c", _SYS_PATH,
                  text=True, timeout=600).stdout
    path = json.loads(out)
    if not isinstance(path, list) or not all(isinstance(p, str) for p in path):
        raise RuntimeError(f"{image}: sys.path is not a list of strings: {out[:200]!r}")
    return [p for p in path if p.startswith("/")]


def _wanted(name: str, roots: list[str]) -> bool:
    if name == _STATUS or name in ("etc/os-release", "usr/lib/os-release"):
        return True
    if not any(name.startswith(r + "/") for r in roots):
        return False
    return any(part.endswith((".dist-info", ".egg-info")) for part in name.split("/"))


def unpack(image: str, dest: Path, sys_path: list[str]) -> None:
    """The image's distribution metadata, dpkg status and os-release, unpacked under dest."""
    roots = [p.strip("/") for p in sys_path]
    container = _docker("create", image, text=True).stdout.strip()
    try:
        with subprocess.Popen(["docker", "export", container], stdout=subprocess.PIPE) as proc:
            assert proc.stdout is not None
            with tarfile.open(fileobj=proc.stdout, mode="r|") as t:
                for m in t:
                    name = m.name.lstrip("./")
                    if _wanted(name, roots) and (m.isfile() or m.isdir() or m.issym()):
                        m.name = name
                        t.extract(m, dest, filter="tar")
            if proc.wait() != 0:
                raise RuntimeError(f"docker export {image} failed")
    finally:
        _docker("rm", container)


def _stub_interpreter(workdir: Path, paths: list[str]) -> Path:
    """An executable answering cyclonedx-py's one question (sys.path) with `paths`."""
    stub = workdir / "python"
    stub.write_text("#!/bin/sh\ncat <<'EOF'\n" + json.dumps(paths) + "\nEOF\n")
    stub.chmod(stat.S_IRWXU)
    return stub


def python_bom(root: Path, sys_path: list[str], workdir: Path) -> dict[str, Any]:
    stub = _stub_interpreter(workdir, [str(root) + p for p in sys_path])
    out = subprocess.run([sys.executable, "-m", "cyclonedx_py", "environment", "--sv", SPEC_VERSION,
                          "--of", "JSON", "--output-reproducible", "-o", "-", str(stub)],
                         check=True, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    return json.loads(out.stdout)


def _os_release(root: Path) -> dict[str, str]:
    for p in (root / "etc/os-release", root / "usr/lib/os-release"):
        if p.is_file() and not p.is_symlink():
            text = p.read_text()
            return {k: v.strip().strip('"') for k, _, v in (x.partition("=") for x in text.splitlines()) if k}
    return {}


def dpkg_packages(status: str) -> list[dict[str, str]]:
    """Installed packages in dpkg's status file: {Package, Version, Architecture, Source?}."""
    out = []
    for para in status.split("\n\n"):
        fields: dict[str, str] = {}
        key = None
        for line in para.splitlines():
            if line[:1] in (" ", "\t") and key:
                continue  # a continuation line (descriptions, conffiles)
            key, _, value = line.partition(":")
            fields[key] = value.strip()
        if fields.get("Status") == "install ok installed":
            out.append(fields)
    return out


def deb_components(root: Path) -> list[dict[str, Any]]:
    from packageurl import PackageURL

    status = root / _STATUS
    if not status.is_file():
        return []
    release = _os_release(root)
    distro = f"{release.get('ID', 'debian')}-{release.get('VERSION_ID', '')}".rstrip("-")
    out = []
    for p in dpkg_packages(status.read_text()):
        purl = PackageURL(type="deb", namespace=release.get("ID", "debian"), name=p["Package"],
                          version=p["Version"], qualifiers={"arch": p["Architecture"], "distro": distro}).to_string()
        c: dict[str, Any] = {"type": "library", "bom-ref": purl, "name": p["Package"], "version": p["Version"],
                             "purl": purl}
        if p.get("Source"):
            c["properties"] = [{"name": "dpkg:source", "value": p["Source"].split(" ")[0]}]
        out.append(c)
    return sorted(out, key=lambda c: c["name"])


def inventory(image: str, workdir: Path) -> dict[str, Any]:
    """The BOM of what is inside `image`, without the image's own identity (see `document`)."""
    root = workdir / "root"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    try:
        sys_path = image_sys_path(image)
        unpack(image, root, sys_path)
        bom = python_bom(root, sys_path, workdir)
        bom["components"] = list(bom.get("components") or []) + deb_components(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return bom


def document(bom: dict[str, Any], name: str, version: str, digest: str, arch: str, registry_repo: str) -> bytes:
    """The SBOM of one published image: the inventory, with the image as metadata.component."""
    from packageurl import PackageURL

    doc = json.loads(json.dumps(bom))
    purl = PackageURL(type="oci", name=name, version=digest,
                      qualifiers={"arch": arch, "repository_url": registry_repo}).to_string()
    doc.setdefault("metadata", {})["component"] = {
        "type": "container", "bom-ref": purl, "name": registry_repo, "version": version, "purl": purl}
    body = json.dumps(doc, indent=1, sort_keys=True).encode()
    validate(body)
    return body


def validate(body: bytes) -> None:
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    error = JsonStrictValidator(SchemaVersion.V1_6).validate_str(body.decode())
    if error is not None:
        raise RuntimeError(f"the SBOM is not valid CycloneDX {SPEC_VERSION}: "
                           f"{getattr(error.data, 'message', str(error))[:300]}")
