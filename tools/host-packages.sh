#!/usr/bin/env bash
# Host tools the tests and benchmarks drive: gpg (the old recipe), tar with
# every compressor, GNU time (peak RSS in bench/), node and npm (s3rver, tools/s3rver),
# the CNCF distribution registry and skopeo (the OCI tests and bench/oci.py), nginx
# (bench/https.py starts its own, on a free port with its own configuration),
# the shell linter of `make lint`, kubectl (kustomize) for the webhook's deployment,
# and cosign (the release tests' independent verifier, below). Installed from Debian when missing.
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

# cosign, the independent verifier of the release tests (tests/containers/test_release_images.py):
# bookworm has none; Debian trixie's package needs only libc6 >= 2.34 (bookworm has 2.36), so it is
# fetched from trixie with apt through a private state (the host's sources stay as they are) and
# installed with dpkg, which checks that dependency.
if ! command -v cosign >/dev/null && grep -qs '^VERSION_CODENAME=bookworm' /etc/os-release; then
  state=$(mktemp -d)
  # shellcheck disable=SC2016  # $(...) here is apt's own placeholder syntax
  mirror=$(apt-get indextargets --format '$(REPO_URI) $(RELEASE)' 'Created-By: Packages' 2>/dev/null |
    awk '$2 == "bookworm" { print $1; exit }')
  echo "deb ${mirror:-http://deb.debian.org/debian/} trixie main" >"$state/sources.list"
  mkdir -p "$state/lists/partial" "$state/archives/partial"
  apt=(apt-get -qq -o "Dir::Etc::sourcelist=$state/sources.list" -o Dir::Etc::sourceparts=/nonexistent
       -o "Dir::State::Lists=$state/lists" -o "Dir::Cache=$state" -o Dir::State::status=/dev/null -o APT::Sandbox::User=root)
  "${apt[@]}" update && (cd "$state" && "${apt[@]}" download cosign) &&
    dpkg -i "$state"/cosign_*.deb >/dev/null
  rm -rf "$state"
fi
