#!/usr/bin/env bash
# Print the uncompressed size of each modelseal image and the total of the
# DISTINCT layers of the four stage images (what a node pulls and stores for
# a pod using all four: shared layers count once).
#
#   images/sizes.sh              # tag "latest"
#   TAG=0.1.0 images/sizes.sh
#
# How: `docker image inspect .Size` per image; for the distinct total,
# `docker save` of the four images together (it writes each layer once) and
# the sum of each layer's file bytes (the same measure as .Size; tar headers
# and padding excluded). Budget: each image <=150 MB, the four <=200 MB.
set -euo pipefail

TAG=${TAG:-latest}
stages=(fetch-key fetch-model decrypt unpack)
extra=(base cloud-base run webhook)
MB=1000000  # docker's "MB" is 10^6 bytes

printf '%-28s %10s %8s %7s\n' IMAGE BYTES MB LAYERS
for n in "${stages[@]}" "${extra[@]}"; do
    img=modelseal/$n:$TAG
    docker image inspect "$img" >/dev/null 2>&1 || { printf '%-28s %10s\n' "$img" missing; continue; }
    size=$(docker image inspect -f '{{.Size}}' "$img")
    layers=$(docker image inspect -f '{{len .RootFS.Layers}}' "$img")
    printf '%-28s %10d %8.1f %7d\n' "$img" "$size" "$(awk -v s="$size" -v m=$MB 'BEGIN { print s / m }')" "$layers"
done

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
refs=()
for n in "${stages[@]}"; do refs+=("modelseal/$n:$TAG"); done
docker save -o "$tmp/all.tar" "${refs[@]}"
python3 - "$tmp/all.tar" "$MB" <<'PY'
import json, sys, tarfile
path, mb = sys.argv[1], int(sys.argv[2])
with tarfile.open(path) as outer:
    # Layer file names in a save depend on the image (legacy v1 ids), so
    # layers are told apart by their content digest (the config's diff_ids).
    by_digest = {}
    for m in json.load(outer.extractfile("manifest.json")):
        diff_ids = json.load(outer.extractfile(m["Config"]))["rootfs"]["diff_ids"]
        by_digest.update(zip(diff_ids, m["Layers"]))
    total = 0
    for name in by_digest.values():
        with tarfile.open(fileobj=outer.extractfile(name)) as inner:
            total += sum(e.size for e in inner if e.isreg())
print(f"{'4 stages, distinct layers':28} {total:10d} {total / mb:8.1f} {len(by_digest):7d}")
PY
