#!/usr/bin/env bash
# Ensure a Docker engine and a compose command are usable; idempotent.
#
#   COMPOSE=$(images/engine.sh)      # last stdout line: "docker compose" or "docker-compose"
#   $COMPOSE -f demo/compose.yml up
#
# Why: the test machines reach no container registry and may have only a docker
# client; Debian's docker.io provides dockerd (20.10) and Debian bookworm ships
# compose only as the v1 python `docker-compose` (no docker-compose-plugin).
# On a normal machine with Docker already running this only checks and prints.
# All progress goes to stderr so stdout stays machine-readable.
set -euo pipefail

log() { echo "engine: $*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

apt_updated=
apt_install() {
    # Only Debian/Ubuntu hosts can be fixed up here; elsewhere we just fail clearly.
    command -v apt-get >/dev/null || { log "cannot install $*: no apt-get"; exit 1; }
    if [ -z "$apt_updated" ]; then as_root apt-get update -q >&2; apt_updated=1; fi
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -q --no-install-recommends "$@" >&2
}

if ! docker info >/dev/null 2>&1; then
    # A client may exist without an engine (this machine: /usr/local/bin/docker).
    command -v dockerd >/dev/null || apt_install docker.io ca-certificates
    if ! pgrep -x dockerd >/dev/null; then
        log "starting dockerd (log: /var/log/dockerd.log)"
        # setsid+nohup: the daemon must outlive this script and the caller's shell.
        as_root setsid nohup dockerd >>/var/log/dockerd.log 2>&1 </dev/null &
    fi
    for _ in $(seq 60); do
        docker info >/dev/null 2>&1 && break
        sleep 1
    done
    docker info >/dev/null 2>&1 || { log "dockerd did not answer in 60s"; tail -20 /var/log/dockerd.log >&2; exit 1; }
    log "dockerd is up"
fi

# Prefer the v2 plugin; fall back to v1; install Debian's package if neither.
if docker compose version >/dev/null 2>&1; then
    echo "docker compose"
else
    command -v docker-compose >/dev/null || apt_install docker-compose
    docker-compose version >/dev/null 2>&1 || { log "docker-compose does not run"; exit 1; }
    echo "docker-compose"
fi
