"""Releasing the stage images: what `make publish` runs (images/publish.sh).

For each stage, one OCI image index with a manifest per architecture built by
images/build.sh, a CycloneDX SBOM of each architecture's image attached as an
OCI referrer, and cosign-compatible signatures of the index and of every
manifest in it; then the version tag and `latest`.

Modules: `oci` (the documents and the layers from `docker save`), `store`
(writes to a registry through modelseal.registry.client), `referrers` (the
OCI 1.1 referrers, with the tag-schema fallback), `sbom`, `cosign`,
`publish` (the order of it all). Run as `python3 -m release` with images/ and
shared/ on PYTHONPATH.
"""
