#!/usr/bin/env bash
# Push every stage image and the admission webhook's to a registry, tagged with
# its version and `latest`, and print the digest of each, ready to pin in a pod
# spec (the webhook's in the chart's image.repository and stageImages.prefix):
#
#   make publish REGISTRY=registry.example.com/modelseal
#   REGISTRY=127.0.0.1:5000/modelseal images/publish.sh      # images already built
#
# stdout, one line per image:  <stage> <REGISTRY>/<stage>:<version>@sha256:<digest>
# Pin with the digest (examples/kubernetes/*.yaml show where):
#   image: registry.example.com/modelseal/run:0.1.0@sha256:...
#
# The local images are modelseal/<stage>:$MODELSEAL_IMAGE_TAG (default: the
# version), as images/build.sh made them. TLS and plain HTTP are the Docker
# engine's business: it speaks plain HTTP only to 127.0.0.0/8 and to hosts
# listed in its insecure-registries, so a local registry works as is.
# Progress goes to stderr.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
REGISTRY=${REGISTRY:-}
[ -n "$REGISTRY" ] || { echo "publish: set REGISTRY=host[:port]/prefix (e.g. make publish REGISTRY=127.0.0.1:5000/modelseal)" >&2; exit 2; }
REGISTRY=${REGISTRY%/}
case "$REGISTRY" in
    *://*) echo "publish: REGISTRY is host[:port]/prefix, without a scheme" >&2; exit 2 ;;
esac
VERSION=$(sed -n 's/^version *= *"\([^"]*\)".*/\1/p' "$repo/shared/pyproject.toml" | head -n1)
SOURCE_TAG=${MODELSEAL_IMAGE_TAG:-$VERSION}
STAGES=(fetch-key fetch-model decrypt unpack run webhook)

for s in "${STAGES[@]}"; do
    docker image inspect "modelseal/$s:$SOURCE_TAG" >/dev/null 2>&1 \
        || { echo "publish: modelseal/$s:$SOURCE_TAG is not built (make images)" >&2; exit 1; }
done
for s in "${STAGES[@]}"; do
    for t in "$VERSION" latest; do
        docker tag "modelseal/$s:$SOURCE_TAG" "$REGISTRY/$s:$t"
        echo "publish: $REGISTRY/$s:$t" >&2
        docker push "$REGISTRY/$s:$t" >&2
    done
    digest=$(docker image inspect --format '{{range .RepoDigests}}{{println .}}{{end}}' "$REGISTRY/$s:$VERSION" \
             | sed -n "s|^$REGISTRY/$s@\(sha256:[0-9a-f]\{64\}\)$|\1|p" | head -n1)
    [ -n "$digest" ] || { echo "publish: no digest for $REGISTRY/$s after the push" >&2; exit 1; }
    echo "$s $REGISTRY/$s:$VERSION@$digest"
done
