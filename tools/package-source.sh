#!/usr/bin/env bash
# Lay out modelseal's package source in DEST, with the commit it is built from
# written into it (modelseal/_build.py, read by `modelseal --version`):
#
#   tools/package-source.sh DEST
#
# `make dist` (tools/dist.sh) and the images' wheelhouse (images/wheelhouse.sh)
# build from this copy, never in shared/ itself: a build there would leave
# build/ and *.egg-info behind, and a _build.py that a checkout would then
# report instead of its own `git describe`.
#
# The commit is `git rev-parse HEAD`, with "-dirty" when shared/ differs from
# it (changed or untracked files: the package is then not that commit's);
# "unknown" outside a git checkout.
# Env: PACKAGE_DIR, the modelseal package to copy (default shared/modelseal;
# the tests pass the one they import, so tools/mutants.py's copy is what they build).
set -euo pipefail

[ $# -eq 1 ] || { echo "usage: $0 DEST" >&2; exit 2; }
dest=$1
repo=$(cd "$(dirname "$0")/.." && pwd)
package=${PACKAGE_DIR:-$repo/shared/modelseal}

commit=unknown
if head=$(git -C "$repo" rev-parse --verify -q HEAD 2>/dev/null); then
    commit=$head
    if [ -n "$(git -C "$repo" status --porcelain -- shared 2>/dev/null)" ] ||
        [ "$(cd "$package" && pwd -P)" != "$(cd "$repo/shared/modelseal" && pwd -P)" ]; then
        commit=$head-dirty
    fi
fi

mkdir -p "$dest/modelseal"
cp "$repo/shared/pyproject.toml" "$repo/shared/README.md" "$dest/"
# The package without build leftovers (and without a _build.py of its own).
tar -C "$package" --exclude=__pycache__ --exclude='*.pyc' --exclude=_build.py -cf - . | tar -C "$dest/modelseal" -xf -
cat >"$dest/modelseal/_build.py" <<PY
"""Written by tools/package-source.sh when this package was built: the commit it came from."""

COMMIT = "$commit"
PY
echo "$commit"
