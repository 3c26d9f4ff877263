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

# Guard against drift: every pin in shared/pyproject.toml (core deps and the
# "cloud" extra) must appear, identically, in the requirements files.
python3 - "$repo/shared/pyproject.toml" "$here"/requirements-core.txt "$here"/requirements-cloud.txt <<'PY'
import re, sys, tomllib
proj = tomllib.load(open(sys.argv[1], "rb"))["project"]
wanted = list(proj.get("dependencies", [])) + list(proj.get("optional-dependencies", {}).get("cloud", []))
norm = lambda s: re.sub(r"[-_.]+", "-", s.strip().lower())
pins = {}
for f in sys.argv[2:]:
    for line in open(f):
        line = line.split("#")[0].strip()
        if line:
            name, _, ver = line.partition("==")
            pins[norm(name)] = ver.strip()
bad = []
for req in wanted:
    m = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)\s*(?:\[[^]]*\])?\s*==\s*([^\s;]+)\s*", req)
    if not m:
        bad.append(f"{req!r} is not pinned with ==")
    elif pins.get(norm(m[1])) != m[2]:
        bad.append(f"{req!r} but images/requirements-*.txt have {pins.get(norm(m[1]))!r}")
if bad:
    sys.exit("wheelhouse: shared/pyproject.toml and images/requirements-*.txt disagree:\n  " + "\n  ".join(bad))
PY

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
# Copy without build leftovers; building in place would write into shared/.
tar -C "$repo/shared" --exclude=build --exclude='*.egg-info' --exclude=__pycache__ \
    --exclude=.pytest_cache -cf - . | tar -C "$tmp" -xf -
find "$out" -maxdepth 1 -name 'modelseal-*.whl' -delete
# Fixed zip timestamps: the same source gives the same wheel bytes, so Docker's
# layer cache survives a rebuild that changed nothing.
SOURCE_DATE_EPOCH=315532800 PIP_NO_INDEX=1 PIP_FIND_LINKS="$out/build" \
    $PIP wheel --quiet --no-deps --wheel-dir "$out" "$tmp" >&2
ls "$out"/modelseal-*.whl >&2
