#!/usr/bin/env bash
# Build the demo-only images (none is a pod stage, so none counts toward the
# stage images' size budget):
#   modelseal/moto          moto's server: S3 + KMS on 127.0.0.1
#   modelseal/model-server  MLServer + its scikit-learn runtime (Open Inference Protocol V2)
#   modelseal/owner         the model owner's workstation: model-server's layers
#                           (the same scikit-learn trains the model) plus Debian's gpg
#                           (the old recipe's `gpg -c`)
#
#   demo/images/build.sh        # after images/build.sh (which made the base)
#
# Offline like build.sh: the base image comes from images/base.sh
# (python:3.11-slim-bookworm, or one built from Debian packages) and every
# Python package from a wheelhouse downloaded from PyPI once, one folder per
# image under demo/images/.wheelhouse/ (each image's requirements.txt pins
# every transitive dependency, for the images' CPython 3.11), which is also
# that image's build context. gpg's .debs come from Debian the same way (the
# host's apt on a bookworm host, else apt inside the base image). Progress on
# stderr; the last stdout line lists the images.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
images=$repo/images  # the stage images' scripts and wheelhouse
out=$here/.wheelhouse
PIP=${PIP:-python3 -m pip}
log() { echo "demo/images/build: $*" >&2; }

"$images/engine.sh" >/dev/null
BASE_IMAGE=$("$images/base.sh" | tail -n1)
VERSION=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$repo/shared/modelseal/__init__.py")
arch=${WHEEL_ARCH:-$(docker info -f '{{.Architecture}}' 2>/dev/null || uname -m)}
case $arch in amd64) arch=x86_64 ;; arm64) arch=aarch64 ;; esac

mkdir -p "$out"
find "$out" -maxdepth 1 -type f \( -name '*.whl' -o -name .stamp -o -name requirements.txt \) -delete  # the old flat layout

wheels() {  # image: fill $out/<image>/ from demo/images/<image>/requirements.txt, once per pin set
    local name=$1 dir=$out/$1 req=$here/$1/requirements.txt stamp v platforms=()
    stamp=$(cat "$req" "$images/requirements-build.txt" | sha256sum | cut -c1-16)-$arch
    if [ "$(cat "$dir/.stamp" 2>/dev/null)" != "$stamp" ]; then
        log "downloading $name's wheels for cp311 manylinux $arch into $dir"
        rm -rf "$dir"
        mkdir -p "$dir"
        # pip takes --platform literally: name every glibc from bookworm's 2.36 down.
        for v in $(seq 36 -1 17); do platforms+=("--platform" "manylinux_2_${v}_$arch"); done
        platforms+=("--platform" "manylinux2014_$arch")
        $PIP download --quiet --dest "$dir" --only-binary=:all: \
            --implementation cp --python-version 3.11 --abi cp311 "${platforms[@]}" -r "$req"
        $PIP download --quiet --dest "$dir" --only-binary=:all: --no-deps \
            "$(grep '^pip==' "$images/requirements-build.txt")"
        echo "$stamp" >"$dir/.stamp"
    fi
    cp "$req" "$dir/requirements.txt"
}

debs() {  # dir package...: Debian bookworm .debs (never from the image build itself)
    local dir=$1 stamp; shift
    stamp=$(echo "$* $arch" | sha256sum | cut -c1-16)
    [ "$(cat "$dir/.stamp" 2>/dev/null)" = "$stamp" ] && return 0
    rm -rf "$dir"
    mkdir -p "$dir"
    log "downloading Debian's $* into $dir"
    if grep -qs '^VERSION_CODENAME=bookworm' /etc/os-release && command -v apt-get >/dev/null; then
        (cd "$dir" && apt-get download -q "$@" >&2) ||
            { apt-get update -q >&2 && (cd "$dir" && apt-get download -q "$@" >&2); }
    else  # not a bookworm host: the base image's own apt (bookworm) fetches them
        docker run --rm --network host --user 0:0 -v "$dir:/out" --entrypoint sh "$BASE_IMAGE" \
            -ec 'apt-get update -q >&2; cd /out; apt-get download -q "$@" >&2' sh "$@"
    fi
    echo "$stamp" >"$dir/.stamp"
}

wheels moto
wheels model-server
cp "$here/model-server/slim.sh" "$out/model-server/"
# strip(1) for the server's shared objects: images/wheelhouse.sh's binutils
# .debs (unpacked in the build stage only); without them the image is larger.
rm -rf "$out/model-server/debs"
if ls "$images/.wheelhouse/debs/"*.deb >/dev/null 2>&1; then
    mkdir -p "$out/model-server/debs"
    cp "$images/.wheelhouse/debs/"*.deb "$out/model-server/debs/"
fi
debs "$out/owner" gpg gpgconf gpg-agent libassuan0 libnpth0 pinentry-tty

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

build moto "$out/moto"
build model-server "$out/model-server"
build owner "$out/owner" --build-arg SERVER="modelseal/model-server:${tags[0]}"
echo "modelseal/{moto,model-server,owner}:${tags[0]}"
