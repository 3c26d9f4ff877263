#!/usr/bin/env bash
# The stage images: the targets of images/stages/Dockerfile (`FROM ... AS <target>`),
# one per line, in the file's order.
#
#   images/targets.sh [DOCKERFILE]
#
# images/build.sh builds, images/publish.sh publishes (the index, the SBOMs, the
# signatures) and images/sizes.sh measures exactly these, so a target added to
# the Dockerfile is built, signed and released with no other list to update.
set -euo pipefail

dockerfile=${1:-$(dirname "$0")/stages/Dockerfile}
targets=$(sed -n 's/^[Ff][Rr][Oo][Mm][[:space:]].*[[:space:]][Aa][Ss][[:space:]][[:space:]]*\([A-Za-z0-9._-][A-Za-z0-9._-]*\)[[:space:]]*$/\1/p' "$dockerfile")
[ -n "$targets" ] || { echo "targets: no 'FROM ... AS <target>' in $dockerfile" >&2; exit 1; }
echo "$targets"
