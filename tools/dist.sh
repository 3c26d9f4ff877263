#!/usr/bin/env bash
# `make dist`: modelseal's sdist and wheel in OUTDIR (default dist/), built
# offline from tools/package-source.sh's copy of shared/ (which carries the
# commit for `modelseal --version`).
#
#   tools/dist.sh [OUTDIR]
#
# `python -m build --no-isolation`: the build backend (setuptools, pinned in
# requirements-dev.txt, the same pin as images/requirements-build.txt) comes
# from the calling environment, so nothing is downloaded; an isolated build
# would pip-install setuptools from the index into a fresh environment first.
# The wheel's file times are the commit's time (SOURCE_DATE_EPOCH), so one
# commit gives the same wheel bytes on any machine.
# Env: PYTHON (default python3), PACKAGE_DIR (see tools/package-source.sh).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
out=$(mkdir -p "${1:-$repo/dist}" && cd "${1:-$repo/dist}" && pwd)
PYTHON=${PYTHON:-python3}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
commit=$("$repo/tools/package-source.sh" "$tmp/src")
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$repo" log -1 --format=%ct 2>/dev/null || echo 315532800)}
export SOURCE_DATE_EPOCH
"$PYTHON" -m build --no-isolation --outdir "$out" "$tmp/src" >"$tmp/build.log" 2>&1 || {
    cat "$tmp/build.log" >&2; echo "dist: python -m build failed" >&2; exit 1; }
version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$tmp/src/modelseal/__init__.py")
echo "dist: modelseal $version, commit $commit:" >&2
ls -l "$out/modelseal-$version.tar.gz" "$out/modelseal-$version-py3-none-any.whl" >&2
