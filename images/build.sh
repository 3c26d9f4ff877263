#!/usr/bin/env bash
# Build every modelseal image, tagged modelseal/<name>:<version> and :latest
# (version from shared/pyproject.toml). Works offline here (local Debian base,
# wheelhouse) and on a machine that can pull python:3.11-slim-bookworm.
#
#   images/build.sh                       # everything
#   BASE_IMAGE=my/python:3.11 images/build.sh
#   DOCKER_BUILD_FLAGS=--no-cache images/build.sh
#   MODELSEAL_IMAGE_TAG=dev images/build.sh   # only :dev (side by side with another checkout's images)
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
# The tags every image gets; the first one chains the layers (base <- stages).
if [ -n "${MODELSEAL_IMAGE_TAG:-}" ]; then tags=("$MODELSEAL_IMAGE_TAG"); else tags=("$VERSION" latest); fi
CHAIN=${tags[0]}

build() {  # name, Dockerfile, context, then extra docker build args
    local name=$1 dockerfile=$2 context=$3; shift 3
    local t targs=()
    for t in "${tags[@]}"; do targs+=(-t "modelseal/$name:$t"); done
    echo "build: modelseal/$name:$CHAIN" >&2
    # shellcheck disable=SC2086  # DOCKER_BUILD_FLAGS is a word list on purpose
    docker build ${DOCKER_BUILD_FLAGS:-} -f "$dockerfile" \
        --build-arg VERSION="$VERSION" "${targs[@]}" "$@" "$context" >&2
}

build base "$here/base/Dockerfile" "$repo" --build-arg BASE_IMAGE="$BASE_IMAGE" --build-arg SOURCE_URL="$SOURCE_URL"
build cloud-base "$here/cloud-base/Dockerfile" "$repo" --build-arg BASE="modelseal/base:$CHAIN"
# The stages: one Dockerfile, one target each; they copy nothing, so their context is that folder alone.
for s in fetch-key fetch-model decrypt unpack run webhook; do
    build "$s" "$here/stages/Dockerfile" "$here/stages" --target "$s" \
        --build-arg BASE="modelseal/base:$CHAIN" --build-arg CLOUD_BASE="modelseal/cloud-base:$CHAIN"
done
echo "modelseal/{base,cloud-base,fetch-key,fetch-model,decrypt,unpack,run,webhook}:$CHAIN"
