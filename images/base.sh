#!/usr/bin/env bash
# Decide the base image for images/base/Dockerfile; print its name as the last
# stdout line (progress goes to stderr).
#
#   BASE_IMAGE=$(images/base.sh)
#   BASE_IMAGE=$(ARCH=arm64 images/base.sh)     # another architecture (images/emulation.sh first)
#
# Order: $BASE_IMAGE if set; else python:3.11-slim-bookworm if present or
# pullable; else a local modelseal/debian-python:bookworm built from Debian
# packages with debootstrap (the test machines reach no container registry,
# only Debian's apt mirrors). Bookworm's python3 is 3.11, like the public image.
# The Dockerfiles call `python3` from PATH, so /usr/bin (Debian) and
# /usr/local/bin (python:slim) both work.
#
# Another architecture (ARCH=arm64 on an amd64 engine): Docker's classic image
# store keeps one image per name, so that architecture's base gets a name of
# its own: the public image pulled with --platform and re-tagged
# $PUBLIC_BASE-$ARCH (the engine's own $PUBLIC_BASE is put back), or the local
# one tagged $LOCAL_BASE-$ARCH, debootstrapped for ARCH through qemu-user-static
# (images/emulation.sh registers it). Every candidate is checked to be of ARCH.
#
# Env: BASE_IMAGE, ARCH (Docker's name: amd64, arm64; default the engine's),
#      PUBLIC_BASE (default python:3.11-slim-bookworm),
#      LOCAL_BASE (default modelseal/debian-python:bookworm), DEBIAN_MIRROR,
#      DEBIAN_SECURITY_MIRROR, PULL_TIMEOUT (seconds, default 60).
set -euo pipefail

log() { echo "base: $*" >&2; }

if [ -n "${BASE_IMAGE:-}" ]; then echo "$BASE_IMAGE"; exit 0; fi

ENGINE_ARCH=$(docker info -f '{{.Architecture}}')
case $ENGINE_ARCH in x86_64) ENGINE_ARCH=amd64 ;; aarch64) ENGINE_ARCH=arm64 ;; esac
ARCH=${ARCH:-$ENGINE_ARCH}
PUBLIC_BASE=${PUBLIC_BASE:-python:3.11-slim-bookworm}
LOCAL_BASE=${LOCAL_BASE:-modelseal/debian-python:bookworm}
public=$PUBLIC_BASE local=$LOCAL_BASE
if [ "$ARCH" != "$ENGINE_ARCH" ]; then public=$PUBLIC_BASE-$ARCH local=$LOCAL_BASE-$ARCH; fi

# An image of that name, built for ARCH.
have_image() { [ "$(docker image inspect -f '{{.Architecture}}' "$1" 2>/dev/null)" = "$ARCH" ]; }

pull() {  # the public base for ARCH, under the name $public
    timeout "${PULL_TIMEOUT:-60}" docker pull -q --platform "linux/$ARCH" "$PUBLIC_BASE" >&2 || return 1
    [ "$public" = "$PUBLIC_BASE" ] && return 0
    docker tag "$PUBLIC_BASE" "$public"
    # The name now holds ARCH's image: give it back the engine's, if it had one.
    if [ -n "$engines" ]; then docker tag "$engines" "$PUBLIC_BASE"; else docker rmi -f "$PUBLIC_BASE" >/dev/null; fi
}

if have_image "$public"; then echo "$public"; exit 0; fi
# Cache: a local base built earlier wins over another pull attempt.
if have_image "$local"; then log "using cached $local"; echo "$local"; exit 0; fi
engines=$(docker image inspect -f '{{.Id}}' "$PUBLIC_BASE" 2>/dev/null || true)
log "trying docker pull --platform linux/$ARCH $PUBLIC_BASE"
if pull; then echo "$public"; exit 0; fi
log "pull failed; building $local from Debian packages"

if ! command -v debootstrap >/dev/null; then
    apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends debootstrap >&2
fi

# Mirrors: the ones this machine's apt is configured with (one-line or deb822
# sources alike, via apt itself), else Debian's public ones.
apt_uri() {  # $1 = suite; prints the first configured repository URI for it
    # shellcheck disable=SC2016  # $(...) here is apt's own placeholder syntax
    apt-get indextargets --format '$(REPO_URI) $(RELEASE)' 'Created-By: Packages' 2>/dev/null |
        awk -v s="$1" '$2 == s { print $1; exit }'
}
MIRROR=${DEBIAN_MIRROR:-$(apt_uri bookworm)}
MIRROR=${MIRROR:-http://deb.debian.org/debian/}
SECURITY=${DEBIAN_SECURITY_MIRROR:-$(apt_uri bookworm-security)}
SECURITY=${SECURITY:-http://deb.debian.org/debian-security/}

root=$(mktemp -d /var/tmp/modelseal-rootfs.XXXXXX)
cleanup() {
    umount "$root/proc" 2>/dev/null || true
    # --one-file-system: never descend into a /proc that failed to unmount.
    rm -rf --one-file-system "$root" "$root.image"
}
trap cleanup EXIT

log "debootstrap bookworm ($ARCH) from $MIRROR into $root"
# Another architecture's second stage runs its own binaries in the chroot,
# through binfmt_misc and qemu-user-static (images/emulation.sh).
debootstrap --arch "$ARCH" --variant=minbase --include=python3,ca-certificates \
    bookworm "$root" "$MIRROR" >&2

# Security and point-release fixes (python3.11, openssl) come from the other
# suites, which debootstrap alone does not use.
cat >"$root/etc/apt/sources.list" <<EOF
deb $MIRROR bookworm main
deb $MIRROR bookworm-updates main
deb $SECURITY bookworm-security main
EOF
mount -t proc proc "$root/proc"
chroot "$root" sh -ec '
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get -y -q -o Dpkg::Options::=--force-confold upgrade
    apt-get -y -q clean
' >&2
umount "$root/proc"

# Stay small: no docs (copyright files kept), man pages, locales, apt lists,
# caches or logs. The image build strips further (images/base/Dockerfile).
(
    cd "$root"
    find usr/share/doc -type f ! -name copyright -delete
    find usr/share/doc -type d -empty -delete
    rm -rf usr/share/man/* usr/share/info/* usr/share/locale/* usr/share/lintian \
        var/lib/apt/lists/* var/cache/apt/* var/cache/debconf/*-old \
        var/log/* dev/* tmp/* root/.bash_history
)

# The root filesystem becomes an image through a FROM scratch build rather
# than docker import: the classic builder labels it with --platform's
# architecture, where the 20.10 engine's import writes its own whatever it is
# told. ENV/CMD are the only metadata.
ctx=$root.image
mkdir "$ctx"
tar -C "$root" --numeric-owner -cf "$ctx/rootfs.tar" .
cat >"$ctx/Dockerfile" <<'EOF'
FROM scratch
ADD rootfs.tar /
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8
CMD ["python3"]
EOF
docker build -q --platform "linux/$ARCH" -t "$local" "$ctx" >&2
log "built $local"
echo "$local"
