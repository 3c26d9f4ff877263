#!/usr/bin/env bash
# Push every stage image to a registry as one multi-architecture OCI index,
# with a CycloneDX SBOM per architecture (an OCI referrer) and cosign-style
# signatures, tagged with its version and `latest`; print the digests:
#
#   make publish REGISTRY=registry.example.com/modelseal
#   make publish REGISTRY=... PLATFORMS=linux/amd64,linux/arm64    # both, as make images built them
#   REGISTRY=127.0.0.1:5000/modelseal images/publish.sh      # images already built
#
# stdout, one line per stage:  <stage> <REGISTRY>/<stage>:<version>@sha256:<index digest>
# Pin with the digest (examples/kubernetes/*.yaml show where):
#   image: registry.example.com/modelseal/run:0.1.0@sha256:...
# stderr: each architecture's manifest, SBOM and signature digest, and the
# commands that verify them (images/release/publish.py).
#
# The local images are modelseal/<stage>:$MODELSEAL_IMAGE_TAG (default: the
# version), as images/build.sh made them; another architecture than the
# engine's is modelseal/<stage>:<tag>-<arch>. The pushes go through modelseal's
# own registry client (shared/modelseal/registry: Docker config credentials,
# token auth, TLS), not the Docker engine: it writes the index, the referrers
# and the signatures too, which docker push cannot. Plain HTTP only to
# 127.0.0.0/8 (as Docker allows), or anywhere with PUBLISH_ALLOW_HTTP=1.
#
# Env: REGISTRY, PLATFORMS (default the engine's), SIGNING_KEY (an EC P-256
# private key, PEM; default images/.signing/cosign.key, made on first use, its
# public key beside it as cosign.pub), PUBLISH_REPORT (a file for the JSON
# record), PYTHON (default python3, which needs requests, cryptography and
# cyclonedx-bom: make setup).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
REGISTRY=${REGISTRY:-}
[ -n "$REGISTRY" ] || { echo "publish: set REGISTRY=host[:port]/prefix (e.g. make publish REGISTRY=127.0.0.1:5000/modelseal)" >&2; exit 2; }
REGISTRY=${REGISTRY%/}
case "$REGISTRY" in
    *://*) echo "publish: REGISTRY is host[:port]/prefix, without a scheme" >&2; exit 2 ;;
esac
VERSION=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$repo/shared/modelseal/__init__.py")
SOURCE_TAG=${MODELSEAL_IMAGE_TAG:-$VERSION}
# Every target of images/stages/Dockerfile, as images/build.sh built them.
stage_list=$("$here/targets.sh")
mapfile -t STAGES <<<"$stage_list"
engine=$(docker info -f '{{.Architecture}}')
case $engine in x86_64) engine=amd64 ;; aarch64) engine=arm64 ;; esac
PLATFORMS=${PLATFORMS:-linux/$engine}

IFS=, read -r -a platforms <<<"$PLATFORMS"
for p in "${platforms[@]}"; do
    case $p in linux/amd64 | linux/arm64) ;; *) echo "publish: PLATFORMS: '$p' is not linux/amd64 or linux/arm64" >&2; exit 2 ;; esac
    arch=${p#linux/}
    suffix=-$arch; [ "$arch" = "$engine" ] && suffix=
    for s in "${STAGES[@]}"; do
        docker image inspect "modelseal/$s:$SOURCE_TAG$suffix" >/dev/null 2>&1 \
            || { echo "publish: modelseal/$s:$SOURCE_TAG$suffix is not built (make images PLATFORMS=$PLATFORMS)" >&2; exit 1; }
    done
done

args=(--registry "$REGISTRY" --version "$VERSION" --source-tag "$SOURCE_TAG" --platforms "$PLATFORMS"
      --engine-arch "$engine" --stages "$(IFS=,; echo "${STAGES[*]}")" --key "${SIGNING_KEY:-$here/.signing/cosign.key}"
      --source-url "$(git -C "$repo" remote get-url origin 2>/dev/null || true)")
[ -n "${PUBLISH_REPORT:-}" ] && args+=(--report "$PUBLISH_REPORT")
[ "${PUBLISH_ALLOW_HTTP:-}" = 1 ] && args+=(--allow-http)
PYTHONPATH="$repo/shared:$here${PYTHONPATH:+:$PYTHONPATH}" exec "${PYTHON:-python3}" -m release "${args[@]}"
