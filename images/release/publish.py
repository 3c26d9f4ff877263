"""Publish the stage images: per stage one multi-architecture index, SBOMs, signatures, then the tags.

Order, per stage: each architecture's blobs and manifest (by digest), the
index (by digest), each architecture's SBOM as a referrer of its manifest,
signatures of the index and of each manifest (cosign sign --recursive does
the same), and only then the version tag and `latest`: a tag never names
an index that is not yet signed. Layers are uploaded once per registry and
mounted into the other stages' repositories.

stdout: one line per stage, `STAGE REGISTRY/STAGE:VERSION@sha256:INDEX`
(pin it in pod specs); stderr: every digest and how to verify them; with
--report FILE, all of it as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from modelseal import web
from modelseal.connection import Connection

from . import cosign, oci, referrers, sbom
from .store import Repository


def log(msg: str) -> None:
    print(f"publish: {msg}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python3 -m release", description=__doc__.splitlines()[0])
    p.add_argument("--registry", required=True, help="host[:port]/prefix")
    p.add_argument("--version", required=True)
    p.add_argument("--source-tag", required=True, help="the local images' tag (modelseal/STAGE:TAG[-ARCH])")
    p.add_argument("--platforms", required=True, help="linux/amd64,linux/arm64")
    p.add_argument("--engine-arch", required=True, help="the architecture whose local tags have no suffix")
    p.add_argument("--key", required=True, type=Path, help="EC P-256 private key (PEM); made when absent")
    p.add_argument("--allow-http", action="store_true", help="plain HTTP to a registry that is not on loopback")
    p.add_argument("--source-url", default="")
    p.add_argument("--report", type=Path)
    p.add_argument("--stages", required=True, help="the stage images, comma-separated (images/targets.sh)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    host, _, prefix = a.registry.partition("/")
    archs = [p.split("/", 1)[1] for p in a.platforms.split(",")]
    stages = a.stages.split(",")
    http = a.allow_http or web.is_loopback(host.rsplit(":", 1)[0].strip("[]"))
    connection = Connection(allow_http=http, timeout=300)
    key = cosign.ensure_key(a.key)
    report: dict[str, Any] = {"registry": a.registry, "version": a.version,
                              "public_key": str(cosign.public_path(a.key)), "stages": {}}
    mounted: dict[str, str] = {}  # blob digest -> a repository that has it
    inventories: dict[tuple[str, ...], dict[str, Any]] = {}  # layer diff_ids -> the SBOM's inventory

    with tempfile.TemporaryDirectory(prefix="modelseal-publish-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        saved: dict[str, dict[str, oci.Image]] = {}
        for arch in archs:
            suffix = "" if arch == a.engine_arch else f"-{arch}"
            refs = {s: f"modelseal/{s}:{a.source_tag}{suffix}" for s in stages}
            log(f"docker save {' '.join(refs.values())}")
            images = oci.save(list(refs.values()), work)
            saved[arch] = {s: images[r] for s, r in refs.items()}
            for s, img in saved[arch].items():
                got = img.config_json.get("architecture")
                if got != arch:
                    raise SystemExit(f"publish: {refs[s]} is built for {got}, not {arch}")

        for stage in stages:
            name = f"{prefix}/{stage}" if prefix else stage
            repo = Repository(host, name, connection)
            entry: dict[str, Any] = {"platforms": {}}
            report["stages"][stage] = entry
            manifests = []
            for arch in archs:
                img = saved[arch][stage]
                repo.push_blob(oci.digest_of(img.config), img.config)
                for layer in img.layers:
                    repo.push_blob(layer.digest, layer.path, mount_from=mounted.get(layer.digest))
                    mounted.setdefault(layer.digest, name)
                body = img.manifest()
                digest, _ = repo.put_manifest(oci.digest_of(body), body, oci.OCI_MANIFEST)
                plat = oci.platform(img.config_json)
                manifests.append(oci.descriptor(oci.OCI_MANIFEST, body, platform=plat))
                entry["platforms"][f"linux/{arch}"] = {
                    "digest": digest, "config": oci.digest_of(img.config),
                    "compressed": sum(x.size for x in img.layers) + len(img.config) + len(body)}
            annotations = {"org.opencontainers.image.title": f"modelseal-{stage}",
                           "org.opencontainers.image.version": a.version}
            if a.source_url:
                annotations["org.opencontainers.image.source"] = a.source_url
            index = oci.index(manifests, annotations)
            index_digest, _ = repo.put_manifest(oci.digest_of(index), index, oci.OCI_INDEX)
            entry["index"] = index_digest

            for arch, desc in zip(archs, manifests):
                img = saved[arch][stage]
                layers_key = tuple(x.diff_id for x in img.layers)
                if layers_key not in inventories:
                    log(f"SBOM of {img.ref} (cyclonedx-py environment, dpkg status)")
                    inventories[layers_key] = sbom.inventory(img.ref, work)
                doc = sbom.document(inventories[layers_key], stage, a.version, desc["digest"], arch,
                                    f"{a.registry}/{stage}")
                layer = oci.descriptor(sbom.MEDIA_TYPE, doc,
                                       annotations={"org.opencontainers.image.title": f"{stage}-{arch}.cdx.json"})
                repo.push_blob(layer["digest"], doc)
                repo.push_blob(oci.EMPTY.digest, oci.EMPTY_CONFIG)
                created = img.config_json.get("created") or "1970-01-01T00:00:00Z"
                subject = {k: desc[k] for k in ("mediaType", "digest", "size")}
                art = oci.artifact(sbom.MEDIA_TYPE, layer, subject, {"org.opencontainers.image.created": created})
                entry["platforms"][f"linux/{arch}"]["sbom"] = referrers.attach(repo, art)

            entry["signature"] = cosign.attach(repo, key, index_digest)
            for arch, desc in zip(archs, manifests):
                entry["platforms"][f"linux/{arch}"]["signature"] = cosign.attach(repo, key, desc["digest"])

            for tag in dict.fromkeys((a.version, "latest")):
                repo.put_manifest(tag, index, oci.OCI_INDEX)
            entry["tags"] = [a.version, "latest"]
            print(f"{stage} {a.registry}/{stage}:{a.version}@{index_digest}", flush=True)

    summary(a, report)
    if a.report:
        a.report.write_text(json.dumps(report, indent=2) + "\n")
    return 0


def summary(a: argparse.Namespace, report: dict[str, Any]) -> None:
    pub = report["public_key"]
    for stage, e in report["stages"].items():
        log(f"{a.registry}/{stage}:{a.version}")
        log(f"  {'index':<13s}{e['index']}  signature {e['signature']}")
        for plat, p in e["platforms"].items():
            log(f"  {plat:<13s}{p['digest']}  {p['compressed'] / 1e6:.1f} MB compressed")
            log(f"  {'':<13s}SBOM {p['sbom']}  signature {p['signature']}")
    some = next(iter(report["stages"]))
    ref = f"{a.registry}/{some}@{report['stages'][some]['index']}"
    plain = a.allow_http or web.is_loopback(a.registry.partition("/")[0].rsplit(":", 1)[0].strip("[]"))
    insecure = " --allow-insecure-registry --allow-http-registry" if plain else ""
    log(f"signed with the key whose public half is {pub} (ECDSA P-256, cosign's format); verify:")
    log(f"  cosign verify --key {pub} --insecure-ignore-tlog{insecure} {ref}")
    log(f"  or a sigstoreSigned policy with keyPath {pub} (skopeo/podman/CRI-O; use-sigstore-attachments: true)")
    log("SBOMs (CycloneDX JSON) are OCI referrers of each architecture's manifest:")
    log(f"  oras discover{' --plain-http' if insecure else ''} --artifact-type {sbom.MEDIA_TYPE} "
        f"{a.registry}/{some}@<architecture digest>")
