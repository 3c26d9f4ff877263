#!/usr/bin/env bash
# Build every modelseal image, tagged modelseal/<name>:<version> and :latest
# (version from shared/modelseal/__init__.py). Works offline here (local Debian base,
# wheelhouse) and on a machine that can pull python:3.11-slim-bookworm.
#
#   images/build.sh                       # everything, for the engine's architecture
#   PLATFORMS=linux/amd64,linux/arm64 images/build.sh   # both (make images PLATFORMS=...)
#   BASE_IMAGE=my/python:3.11 images/build.sh
#   DOCKER_BUILD_FLAGS=--no-cache images/build.sh
#   MODELSEAL_IMAGE_TAG=dev images/build.sh   # only :dev (side by side with another checkout's images)
#
# Platforms: the engine's own architecture is built as always and tagged
# plainly (modelseal/run:0.1.0); another is built through qemu-user-static
# (images/emulation.sh registers it), with the classic builder's --platform
# (Debian's docker.io has no buildx), from its own base (images/base.sh) and
# wheelhouse (images/.wheelhouse-ARCH), and tagged with the architecture
# appended (modelseal/run:0.1.0-arm64): Docker's classic image store holds
# one image per name. images/publish.sh joins them into one index per stage.
#
# Order matters: base <- cloud-base <- stages. Progress on stderr; the last
# stdout line lists the images built.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
log() { echo "build: $*" >&2; }

"$here/engine.sh" >/dev/null
engine=$(docker info -f '{{.Architecture}}')
case $engine in x86_64) engine=amd64 ;; aarch64) engine=arm64 ;; esac
PLATFORMS=${PLATFORMS:-linux/$engine}
archs=()
IFS=, read -r -a platforms <<<"$PLATFORMS"
for p in "${platforms[@]}"; do
    case $p in
        linux/amd64 | linux/arm64) archs+=("${p#linux/}") ;;
        *) log "PLATFORMS: '$p' is not linux/amd64 or linux/arm64 (comma-separated)"; exit 2 ;;
    esac
done

# Every target of images/stages/Dockerfile (images/targets.sh: publish and sizes take the same list).
stage_list=$("$here/targets.sh")
mapfile -t stages <<<"$stage_list"

VERSION=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$repo/shared/modelseal/__init__.py")
[ -n "$VERSION" ] || { log "no __version__ in shared/modelseal/__init__.py"; exit 1; }
SOURCE_URL=$(git -C "$repo" remote get-url origin 2>/dev/null || true)
# The tags every image gets; the first one chains the layers (base <- stages).
if [ -n "${MODELSEAL_IMAGE_TAG:-}" ]; then tags=("$MODELSEAL_IMAGE_TAG"); else tags=("$VERSION" latest); fi
CHAIN=${tags[0]}

build() {  # name, Dockerfile, context, then extra docker build args; $suffix and $platform set by the loop
    local name=$1 dockerfile=$2 context=$3; shift 3
    local t targs=()
    for t in "${tags[@]}"; do targs+=(-t "modelseal/$name:$t$suffix"); done
    log "modelseal/$name:$CHAIN$suffix"
    # shellcheck disable=SC2086  # DOCKER_BUILD_FLAGS is a word list on purpose
    docker build ${DOCKER_BUILD_FLAGS:-} ${platform:+--platform "$platform"} -f "$dockerfile" \
        --build-arg VERSION="$VERSION" "${targs[@]}" "$@" "$context" >&2
}

built=()
for arch in "${archs[@]}"; do
    start=$SECONDS
    if [ "$arch" = "$engine" ]; then
        suffix="" platform="" wheelhouse=images/.wheelhouse
    else
        suffix=-$arch platform=linux/$arch wheelhouse=images/.wheelhouse-$arch
        "$here/emulation.sh" "$arch"
    fi
    base_image=$(ARCH=$arch "$here/base.sh" | tail -n1)
    case $arch in amd64) wheel_arch=x86_64 ;; arm64) wheel_arch=aarch64 ;; esac
    WHEEL_ARCH=$wheel_arch WHEELHOUSE=$repo/$wheelhouse "$here/wheelhouse.sh"

    build base "$here/base/Dockerfile" "$repo" --build-arg BASE_IMAGE="$base_image" \
        --build-arg SOURCE_URL="$SOURCE_URL" --build-arg WHEELHOUSE="$wheelhouse"
    build cloud-base "$here/cloud-base/Dockerfile" "$repo" --build-arg BASE="modelseal/base:$CHAIN$suffix" \
        --build-arg WHEELHOUSE="$wheelhouse"
    # The stages: one Dockerfile, one target each; they copy nothing, so their context is that folder alone.
    for s in "${stages[@]}"; do
        build "$s" "$here/stages/Dockerfile" "$here/stages" --target "$s" \
            --build-arg BASE="modelseal/base:$CHAIN$suffix" --build-arg CLOUD_BASE="modelseal/cloud-base:$CHAIN$suffix"
    done
    log "linux/$arch: $((SECONDS - start)) s"
    built+=("modelseal/{base,cloud-base,$(IFS=,; echo "${stages[*]}")}:$CHAIN$suffix")
done
echo "${built[*]}"
