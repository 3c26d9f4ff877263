#!/usr/bin/env bash
# Decide the base image for images/base/Dockerfile; print its name as the last
# stdout line (progress goes to stderr).
#
#   BASE_IMAGE=$(images/base.sh)
#
# Order: $BASE_IMAGE if set; else python:3.11-slim-bookworm if present or
# pullable; else a local modelseal/debian-python:bookworm built from Debian
# packages with debootstrap (the test machines reach no container registry,
# only Debian's apt mirrors). Bookworm's python3 is 3.11, like the public image.
# The Dockerfiles call `python3` from PATH, so /usr/bin (Debian) and
# /usr/local/bin (python:slim) both work.
#
# Env: BASE_IMAGE, PUBLIC_BASE (default python:3.11-slim-bookworm),
#      LOCAL_BASE (default modelseal/debian-python:bookworm), DEBIAN_MIRROR,
#      DEBIAN_SECURITY_MIRROR, PULL_TIMEOUT (seconds, default 60).
set -euo pipefail

log() { echo "base: $*" >&2; }

if [ -n "${BASE_IMAGE:-}" ]; then echo "$BASE_IMAGE"; exit 0; fi

PUBLIC_BASE=${PUBLIC_BASE:-python:3.11-slim-bookworm}
LOCAL_BASE=${LOCAL_BASE:-modelseal/debian-python:bookworm}

have_image() { docker image inspect "$1" >/dev/null 2>&1; }

if have_image "$PUBLIC_BASE"; then echo "$PUBLIC_BASE"; exit 0; fi
# Cache: a local base built earlier wins over another pull attempt.
if have_image "$LOCAL_BASE"; then log "using cached $LOCAL_BASE"; echo "$LOCAL_BASE"; exit 0; fi
log "trying docker pull $PUBLIC_BASE"
if timeout "${PULL_TIMEOUT:-60}" docker pull -q "$PUBLIC_BASE" >&2; then
    echo "$PUBLIC_BASE"; exit 0
fi
log "pull failed; building $LOCAL_BASE from Debian packages"

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
    rm -rf --one-file-system "$root"
}
trap cleanup EXIT

log "debootstrap bookworm from $MIRROR into $root"
debootstrap --variant=minbase --include=python3,ca-certificates \
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

# docker import takes a plain filesystem tar; ENV/CMD are the only metadata.
tar -C "$root" --numeric-owner -c . |
    docker import \
        -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        -c 'ENV LANG=C.UTF-8' \
        -c 'CMD ["python3"]' \
        - "$LOCAL_BASE" >&2
log "built $LOCAL_BASE"
echo "$LOCAL_BASE"
