#!/usr/bin/env bash
# Build the demo-only images: modelseal/moto (moto server: S3 + KMS) and
# modelseal/model-server (a stdlib HTTP server for the unpacked demo model).
# Neither is a pod stage, so neither counts toward the image size budget.
#
#   images/build-demo.sh        # after images/build.sh (which made the base)
#
# Offline like build.sh: the base image comes from images/base.sh (a public
# python:3.11-slim-bookworm, or one built from Debian packages), and moto's
# wheels are downloaded from PyPI once into images/.wheelhouse-demo/ (pinned
# in images/moto/requirements.txt, for the images' CPython 3.11). Progress on
# stderr; the last stdout line lists the images.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
out=$here/.wheelhouse-demo
PIP=${PIP:-python3 -m pip}
log() { echo "build-demo: $*" >&2; }

"$here/engine.sh" >/dev/null
BASE_IMAGE=$("$here/base.sh" | tail -n1)
VERSION=$(sed -n 's/^version *= *"\([^"]*\)".*/\1/p' "$repo/shared/pyproject.toml" | head -n1)
arch=${WHEEL_ARCH:-$(docker info -f '{{.Architecture}}' 2>/dev/null || uname -m)}
case $arch in amd64) arch=x86_64 ;; arm64) arch=aarch64 ;; esac

stamp=$(cat "$here/moto/requirements.txt" "$here/requirements-build.txt" | sha256sum | cut -c1-16)-$arch
if [ "$(cat "$out/.stamp" 2>/dev/null)" != "$stamp" ]; then
    log "downloading moto's wheels for cp311 manylinux $arch into $out"
    rm -rf "$out"
    mkdir -p "$out"
    platforms=()
    for v in $(seq 36 -1 17); do platforms+=("--platform" "manylinux_2_${v}_$arch"); done
    platforms+=("--platform" "manylinux2014_$arch")
    $PIP download --quiet --dest "$out" --only-binary=:all: \
        --implementation cp --python-version 3.11 --abi cp311 "${platforms[@]}" \
        -r "$here/moto/requirements.txt"
    $PIP download --quiet --dest "$out" --only-binary=:all: --no-deps \
        "$(grep '^pip==' "$here/requirements-build.txt")"
    echo "$stamp" >"$out/.stamp"
fi
cp "$here/moto/requirements.txt" "$out/requirements.txt"

# MODELSEAL_IMAGE_TAG set: only that tag (as images/build.sh does).
if [ -n "${MODELSEAL_IMAGE_TAG:-}" ]; then tags=("$MODELSEAL_IMAGE_TAG"); else tags=("$VERSION" latest); fi

build() {  # name, context, then extra docker build args
    local name=$1 context=$2 t targs=(); shift 2
    for t in "${tags[@]}"; do targs+=(-t "modelseal/$name:$t"); done
    log "modelseal/$name:${tags[0]}"
    # shellcheck disable=SC2086  # DOCKER_BUILD_FLAGS is a word list on purpose
    docker build ${DOCKER_BUILD_FLAGS:-} -f "$here/$name/Dockerfile" \
        --build-arg BASE_IMAGE="$BASE_IMAGE" --build-arg VERSION="$VERSION" \
        "${targs[@]}" "$@" "$context" >&2
}

build moto "$out"
build model-server "$here/model-server"
echo "modelseal/{moto,model-server}:${tags[0]}"
