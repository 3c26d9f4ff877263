"""OCI 1.1 referrers: artifacts that point at an image through their `subject`.

A registry with the referrers API (distribution-spec 1.1) indexes such a
manifest itself and says so with an `OCI-Subject` header on the PUT. One
without it (Debian's docker-registry, distribution 2.8) gets the spec's
referrers tag schema, as oras and cosign maintain it: an image index tagged
`sha256-<hex of the subject's digest>` listing each referrer's descriptor
with its artifactType and annotations, read, extended and pushed back.
Readers (`oras discover`, Ratify, Kyverno) try the API first, then the tag.
"""

from __future__ import annotations

import json
from typing import Any

from . import oci
from .store import Repository


def fallback_tag(digest: str) -> str:
    algorithm, hex_ = digest.split(":", 1)
    return f"{algorithm}-{hex_}"


def attach(repo: Repository, body: bytes) -> str:
    """Push the artifact manifest `body` (it has a subject) and make it findable; its digest."""
    doc = json.loads(body)
    subject = doc["subject"]["digest"]
    digest, headers = repo.put_manifest(oci.digest_of(body), body, oci.OCI_MANIFEST)
    if (headers.get("OCI-Subject") or "").strip() == subject:
        return digest
    entry = {"mediaType": oci.OCI_MANIFEST, "digest": digest, "size": len(body),
             "artifactType": doc["artifactType"]}
    if doc.get("annotations"):
        entry["annotations"] = doc["annotations"]
    listed = [m for m in _tagged(repo, subject) if m.get("digest") != digest]
    repo.put_manifest(fallback_tag(subject), oci.index(listed + [entry]), oci.OCI_INDEX)
    return digest


def _tagged(repo: Repository, subject: str) -> list[dict[str, Any]]:
    got = repo.manifest(fallback_tag(subject))
    if got is None:
        return []
    doc = json.loads(got[1])
    return list(doc.get("manifests") or []) if doc.get("mediaType") == oci.OCI_INDEX else []


def find(repo: Repository, subject: str, artifact_type: str | None = None) -> list[dict[str, Any]]:
    """The referrers of `subject` (the API's answer, else the fallback tag's), of one artifactType if given."""
    api = repo.referrers_api(subject)
    found = json.loads(api).get("manifests") or [] if api is not None else _tagged(repo, subject)
    return [m for m in found if artifact_type is None or m.get("artifactType") == artifact_type]
