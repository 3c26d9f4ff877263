#!/usr/bin/env bash
# Let this machine run another architecture's programs, for images built for
# it (RUN steps, debootstrap's second stage) and containers run from them:
# Debian's qemu-user-static, registered in binfmt_misc with the F flag (the
# kernel opens the emulator once, so it works inside containers and chroots
# that do not hold it). Idempotent; nothing to do for the engine's own arch.
#
#   images/emulation.sh arm64          # Docker's architecture names
#
# Docker Desktop and hosts set up with tonistiigi/binfmt already emulate: an
# existing registration with the F flag is used as it is.
set -euo pipefail

log() { echo "emulation: $*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

arch=${1:?usage: emulation.sh ARCH (amd64, arm64, ...)}
engine=$(docker info -f '{{.Architecture}}')
# Docker's names -> the kernel's (uname -m) and so qemu's.
machine() {
    case $1 in
        amd64 | x86_64) echo x86_64 ;; arm64 | aarch64) echo aarch64 ;;
        ppc64le) echo ppc64le ;; s390x) echo s390x ;; riscv64) echo riscv64 ;;
        *) log "no emulator known for architecture $1"; exit 2 ;;
    esac
}
want=$(machine "$arch")
[ "$want" = "$(machine "$engine")" ] && exit 0

binfmt=/proc/sys/fs/binfmt_misc
entry=$binfmt/qemu-$want
if [ ! -e "$binfmt/register" ]; then
    as_root mount -t binfmt_misc binfmt_misc "$binfmt"
fi
if [ -e "$entry" ] && grep -qx enabled "$entry" && grep -q '^flags:.*F' "$entry"; then
    exit 0
fi

conf=/usr/lib/binfmt.d/qemu-$want.conf
if [ ! -e "$conf" ]; then
    command -v apt-get >/dev/null || { log "cannot emulate $arch: no apt-get to install qemu-user-static"; exit 1; }
    log "installing qemu-user-static"
    as_root apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -q --no-install-recommends qemu-user-static >&2
fi
# Without the F flag the emulator's path would be looked up inside each
# container: replace such an entry. Debian's file carries F.
[ -e "$entry" ] && echo -1 | as_root tee "$entry" >/dev/null
grep -v '^#' "$conf" | as_root tee "$binfmt/register" >/dev/null
grep -q '^flags:.*F' "$entry" || { log "$entry has no F flag"; exit 1; }
log "registered $(sed -n 's/^interpreter //p' "$entry") for $want"
