#!/usr/bin/env bash
# Build every modelseal image, tagged modelseal/<name>:<version> and :latest
# (version from shared/pyproject.toml). Works offline here (local Debian base,
# wheelhouse) and on a machine that can pull python:3.11-slim-bookworm.
#
#   images/build.sh                       # everything
#   BASE_IMAGE=my/python:3.11 images/build.sh
#   DOCKER_BUILD_FLAGS=--no-cache images/build.sh
#
# Order matters: base <- cloud-base <- stages. Progress on stderr; the last
# stdout line lists the images built.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")

"$here/engine.sh" >/dev/null
BASE_IMAGE=$("$here/base.sh" | tail -n1)
"$here/wheelhouse.sh"

VERSION=$(sed -n 's/^version *= *"\([^"]*\)".*/\1/p' "$repo/shared/pyproject.toml" | head -n1)
[ -n "$VERSION" ] || { echo "build: no version in shared/pyproject.toml" >&2; exit 1; }
SOURCE_URL=$(git -C "$repo" remote get-url origin 2>/dev/null || true)

build() {  # name, then extra docker build args
    local name=$1; shift
    echo "build: modelseal/$name:$VERSION" >&2
    # shellcheck disable=SC2086  # DOCKER_BUILD_FLAGS is a word list on purpose
    docker build ${DOCKER_BUILD_FLAGS:-} -f "$here/$name/Dockerfile" \
        --build-arg VERSION="$VERSION" \
        -t "modelseal/$name:$VERSION" -t "modelseal/$name:latest" "$@" "$repo" >&2
}

build base --build-arg BASE_IMAGE="$BASE_IMAGE" --build-arg SOURCE_URL="$SOURCE_URL"
build cloud-base --build-arg BASE="modelseal/base:$VERSION"
for s in decrypt unpack; do build "$s" --build-arg BASE="modelseal/base:$VERSION"; done
for s in fetch-key fetch-model run; do build "$s" --build-arg BASE="modelseal/cloud-base:$VERSION"; done
echo "modelseal/{base,cloud-base,fetch-key,fetch-model,decrypt,unpack,run}:$VERSION"
