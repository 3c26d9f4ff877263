#!/usr/bin/env bash
# Host tools the tests and benchmarks drive: gpg (the old recipe), tar with
# every compressor, GNU time (peak RSS in bench/), node and npm (s3rver, tools/s3rver),
# the CNCF distribution registry and skopeo (the OCI tests and bench/oci.py), nginx
# (bench/https.py starts its own, on a free port with its own configuration),
# the shell linter of `make lint`, and kubectl (kustomize) for the webhook's deployment. Installed from Debian when missing.
set -euo pipefail
need=()
command -v gpg >/dev/null || need+=(gnupg)
command -v zstd >/dev/null || need+=(zstd)
command -v xz >/dev/null || need+=(xz-utils)
command -v bzip2 >/dev/null || need+=(bzip2)
[ -x /usr/bin/time ] || need+=(time)
command -v npm >/dev/null || need+=(nodejs npm)  # s3rver (tools/s3rver) for the size tests, Azurite (tools/azurite) for the Blob tests
command -v docker-registry >/dev/null || need+=(docker-registry)
command -v skopeo >/dev/null || need+=(skopeo)
[ -x /usr/sbin/nginx ] || need+=(nginx-light)
command -v shellcheck >/dev/null || need+=(shellcheck)  # make lint
command -v kubectl >/dev/null || need+=(kubernetes-client)  # `kubectl kustomize` renders deploy/kustomize (tests/test_deploy.py)
python3 -c 'import ensurepip' 2>/dev/null || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null
fi
