#!/usr/bin/env bash
# Fill images/.wheelhouse/ with every wheel the images install, so the Docker
# builds run with --no-index (no network inside builds; this machine reaches
# PyPI but no container registry).
#
#   images/wheelhouse.sh            # from anywhere; idempotent
#   WHEEL_ARCH=aarch64 WHEELHOUSE=images/.wheelhouse-arm64 images/wheelhouse.sh
#
# Third-party wheels are downloaded for the images' Python (CPython 3.11,
# glibc 2.36 = Debian bookworm, the Docker engine's CPU), not the host's, and
# only re-downloaded when a requirements file or the target changes. The
# modelseal wheel is rebuilt from ./shared every time (its version does not
# change with every edit), offline, from a copy so shared/ gets no build files.
# Env: WHEEL_ARCH (x86_64|aarch64; default: the Docker engine's), WHEELHOUSE
# (the folder; default images/.wheelhouse, the one the Dockerfiles copy unless
# told otherwise; images/build.sh gives another architecture its own), PIP
# (default "python3 -m pip").
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
out=${WHEELHOUSE:-$here/.wheelhouse}
PIP=${PIP:-python3 -m pip}
log() { echo "wheelhouse: $*" >&2; }

arch=${WHEEL_ARCH:-$(docker info -f '{{.Architecture}}' 2>/dev/null || uname -m)}
case $arch in amd64) arch=x86_64 ;; arm64) arch=aarch64 ;; esac

# images/requirements-*.txt carry a sha256 for every wheel (images/lock.sh
# writes them), so pip downloads here, and installs in the image builds, in
# hash-checking mode. That each pin satisfies shared/pyproject.toml's ranges is
# tests/test_release.py's check (and pip's, installing modelseal in the base).

mkdir -p "$out/build"
stamp=$(cat "$here"/requirements-*.txt | sha256sum | cut -c1-16)-$arch
if [ "$(cat "$out/.stamp" 2>/dev/null)" != "$stamp" ]; then
    log "downloading wheels for cp311 manylinux $arch"
    find "$out" -name '*.whl' -delete
    # pip takes --platform literally (only manylinux2014 expands to older
    # tags), so name every glibc from bookworm's 2.36 down to 2.17, newest
    # first: pip prefers the earlier tags, as it would inside the image.
    platforms=()
    for v in $(seq 36 -1 17); do platforms+=("--platform" "manylinux_2_${v}_$arch"); done
    platforms+=("--platform" "manylinux2014_$arch")
    $PIP download --quiet --dest "$out" --only-binary=:all: \
        --implementation cp --python-version 3.11 --abi cp311 "${platforms[@]}" \
        -r "$here/requirements-core.txt" -r "$here/requirements-cloud.txt"
    $PIP download --quiet --dest "$out" --only-binary=:all: --no-deps \
        "$(grep '^pip==' "$here/requirements-build.txt")"
    $PIP download --quiet --dest "$out/build" --only-binary=:all: --no-deps \
        "$(grep '^setuptools==' "$here/requirements-build.txt")"
    echo "$stamp" >"$out/.stamp"
fi

# binutils .debs of the images' architecture (for `strip` inside the base
# build only; never installed in an image), through a private apt state for
# that architecture so the host's own apt configuration is left alone.
# Debian-bookworm hosts only: elsewhere the build just skips stripping and the
# base is ~10 MB larger.
if [ ! -e "$out/debs/.done" ] && command -v apt-get >/dev/null &&
    grep -qs '^VERSION_CODENAME=bookworm' /etc/os-release; then
    case $arch in x86_64) debarch=amd64 ;; aarch64) debarch=arm64 ;; *) debarch=$arch ;; esac
    gnu=$arch-linux-gnu; gnu=${gnu//_/-}
    state=$out/.apt-$debarch
    mkdir -p "$out/debs" "$state/lists/partial" "$state/archives/partial"
    apt=(apt-get -q -o "APT::Architecture=$debarch" -o "APT::Architectures=$debarch"
         -o "Dir::State::Lists=$state/lists" -o "Dir::Cache=$state" -o Dir::State::status=/dev/null
         -o APT::Sandbox::User=root)
    if "${apt[@]}" update >&2 && (cd "$out/debs" && "${apt[@]}" download binutils-"$gnu" binutils-common \
            libbinutils libctf0 libctf-nobfd0 libgprofng0 libjansson4 >&2); then
        touch "$out/debs/.done"
    else
        log "warning: no binutils .debs; images will not be stripped"
    fi
    rm -rf "$state"
fi

log "building the modelseal wheel from shared/"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# A copy with the commit written in (modelseal --version); building in place would write into shared/.
"$repo/tools/package-source.sh" "$tmp" >/dev/null
find "$out" -maxdepth 1 -name 'modelseal-*.whl' -delete
# Fixed zip timestamps: the same source and commit give the same wheel bytes, so
# Docker's layer cache survives a rebuild that changed nothing.
SOURCE_DATE_EPOCH=315532800 PIP_NO_INDEX=1 PIP_FIND_LINKS="$out/build" \
    $PIP wheel --quiet --no-deps --wheel-dir "$out" "$tmp" >&2
# Its hash, for the base image's `pip install --require-hashes` (the rest are images/requirements-core.txt's).
wheel=$(ls "$out"/modelseal-*.whl)
version=$(basename "$wheel" | cut -d- -f2)
printf 'modelseal==%s --hash=sha256:%s\n' "$version" "$(sha256sum "$wheel" | cut -d' ' -f1)" >"$out/requirements-modelseal.txt"
ls "$wheel" >&2
