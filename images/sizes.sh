#!/usr/bin/env bash
# Print each modelseal image's size per architecture, uncompressed (Docker's
# .Size) and compressed (gzip, as make publish pushes it), and the total of the
# DISTINCT layers of the four stage images (what a node pulls and stores for
# a pod using all four: shared layers count once). images/release/sizes.py
# does the measuring.
#
#   images/sizes.sh                                   # tag "latest", the engine's architecture
#   TAG=0.1.0 PLATFORMS=linux/amd64,linux/arm64 images/sizes.sh
#
# Budget: each image <=150 MB uncompressed, the four <=200 MB
# (tests/containers/test_images.py::test_sizes_within_budget).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
engine=$(docker info -f '{{.Architecture}}')
case $engine in x86_64) engine=amd64 ;; aarch64) engine=arm64 ;; esac
PLATFORMS=${PLATFORMS:-linux/$engine}
archs=${PLATFORMS//linux\//}
# Every target of images/stages/Dockerfile (images/targets.sh), after base and cloud-base.
stage_list=$("$here/targets.sh")
mapfile -t stages <<<"$stage_list"
PYTHONPATH="$repo/shared:$here${PYTHONPATH:+:$PYTHONPATH}" exec "${PYTHON:-python3}" -m release.sizes \
    --tag "${TAG:-latest}" --archs "$archs" --engine-arch "$engine" --stages "$(IFS=,; echo "${stages[*]}")"
