#!/usr/bin/env bash
# The demo with containers: the owner trains a model (scikit-learn's iris
# data) and seals it with a KMS-wrapped key into S3 (moto); the init-container
# images deliver it over tmpfs volumes; MLServer serves it, and we ask it
# about rows of known class.
#
#   demo/compose.sh [all]           # make demo: every chain in turn, each asked, all removed
#   demo/compose.sh four-stage      # one chain: four-stage | single-stage | legacy
#   demo/compose.sh up [CHAIN]      # make demo-up: run one chain (single-stage by default),
#                                   # ask, and leave the server answering on 127.0.0.1
#   demo/compose.sh down            # make demo-down: remove its containers, volumes, network
#
# Chains: four-stage (fetch-key -> fetch-model -> decrypt -> unpack),
# single-stage (`run`), legacy (the old recipe's `gpg -c` file and plain-http
# key server, migrated: `run --format openpgp`). All end in the same server.
#
# On a fresh Debian machine it installs and starts the Docker engine
# (images/engine.sh) and builds every image offline (images/build.sh,
# demo/images/build.sh); the host needs only python3 (demo/ask.py).
# Any failure prints the failing stage and its logs, removes everything and
# exits 1 (2: usage).
#
# Env: MODELSEAL_DEMO_MOTO_PORT (47561), MODELSEAL_DEMO_SERVER_PORT (47562),
#      MODELSEAL_DEMO_KEYSERVER_PORT (47563), MODELSEAL_DEMO_PROJECT (modelseal-demo),
#      MODELSEAL_DEMO_SKIP_BUILD=1 (use the images as they are), MODELSEAL_IMAGE_TAG.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
usage() { echo "usage: $0 [all|four-stage|single-stage|legacy] | up [four-stage|single-stage|legacy] | down" >&2; exit 2; }
chain_ok() { case $1 in four-stage|single-stage|legacy) ;; *) usage ;; esac; }

keep=
case ${1:-all} in
    all) [ $# -le 1 ] || usage; chains=(four-stage single-stage legacy) ;;
    up) [ $# -le 2 ] || usage; keep=1; chains=("${2:-single-stage}"); chain_ok "${chains[0]}" ;;
    down) [ $# -eq 1 ] || usage; chains=() ;;
    *) [ $# -eq 1 ] || usage; chain_ok "$1"; chains=("$1") ;;
esac

export MODELSEAL_DEMO_MOTO_PORT=${MODELSEAL_DEMO_MOTO_PORT:-47561}
export MODELSEAL_DEMO_SERVER_PORT=${MODELSEAL_DEMO_SERVER_PORT:-47562}
export MODELSEAL_DEMO_KEYSERVER_PORT=${MODELSEAL_DEMO_KEYSERVER_PORT:-47563}
project=${MODELSEAL_DEMO_PROJECT:-modelseal-demo}
started=$SECONDS
say() { printf 'demo [%3ss]: %s\n' "$((SECONDS - started))" "$*" >&2; }

COMPOSE=$("$repo/images/engine.sh" | tail -n1)
# Every profile always, so `down` also finds the containers of the others.
dc() { $COMPOSE -p "$project" -f "$here/compose.yml" \
    --profile four-stage --profile single-stage --profile legacy "$@"; }
down() { dc down -v --remove-orphans -t 3 >/dev/null 2>&1 || true; }

if [ "${1:-}" = down ]; then
    n=$(docker ps -aq --filter "label=com.docker.compose.project=$project" | wc -l)
    down
    say "removed $project: $n containers, its volumes and network"
    exit 0
fi

buildlog=$(mktemp /var/tmp/modelseal-demo-build.XXXXXX.log)  # kept only when the build fails
uplog=$(mktemp)
finish() {
    local rc=$?
    # Torn down on every failure, and at the end unless `up` succeeded.
    if [ $rc -ne 0 ] || [ -z "$keep" ]; then down; fi
    rm -f "$uplog"
    [ -n "$buildlog" ] && rm -f "$buildlog"
    exit $rc
}
trap finish EXIT
trap 'exit 130' INT TERM

if [ "${MODELSEAL_DEMO_SKIP_BUILD:-}" != 1 ]; then
    say "building the images (first time: several minutes; log: $buildlog)"
    if ! { "$repo/images/build.sh" && "$here/images/build.sh"; } >"$buildlog" 2>&1; then
        tail -n 30 "$buildlog" >&2
        say "FAILED: building the images (full log: $buildlog)"
        buildlog=
        exit 1
    fi
fi

if [ -n "$(docker ps -aq --filter "label=com.docker.compose.project=$project")" ]; then
    say "removing an earlier run of $project (make demo-up leaves one running)"
    down
fi
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
ports=("$MODELSEAL_DEMO_MOTO_PORT" "$MODELSEAL_DEMO_SERVER_PORT")
[[ " ${chains[*]} " == *" legacy "* ]] && ports+=("$MODELSEAL_DEMO_KEYSERVER_PORT")
for p in "${ports[@]}"; do
    if port_busy "$p"; then
        say "port $p on 127.0.0.1 is taken; set MODELSEAL_DEMO_MOTO_PORT / _SERVER_PORT / _KEYSERVER_PORT"
        exit 1
    fi
done

stage_summary() {  # service...: each one's exit code and the last status line it logged
    local logs s line id code
    logs=$(dc logs --no-color "$@" 2>/dev/null | grep -E '"event": ?"(done|ready|trained|failed)"' || true)
    for s in "$@"; do
        line=$(grep -E "^${s}_[0-9]+ +\\|" <<<"$logs" | tail -n1 | sed 's/^[^|]*| //' || true)
        id=$(dc ps -q "$s" 2>/dev/null | head -n1)
        code=$( [ -n "$id" ] && docker inspect -f '{{.State.ExitCode}}' "$id" 2>/dev/null || echo -)
        printf '  %-22s exit %-2s %s\n' "$s" "${code:--}" "${line:-}" >&2
    done
}

for chain in "${chains[@]}"; do
    case $chain in
        four-stage) server=model-server; stages=(train owner seal fetch-key fetch-model decrypt unpack) ;;
        single-stage) server=model-server-run; stages=(train owner seal run) ;;
        legacy) server=model-server-legacy
                stages=(train legacy-owner legacy-copy-ciphertext legacy-fetch-key legacy-run) ;;
    esac
    say "$chain: ${stages[*]}, then MLServer ($server) on 127.0.0.1:$MODELSEAL_DEMO_SERVER_PORT"
    if ! dc up -d "$server" >"$uplog" 2>&1; then
        grep -v '^\(Creating\|Starting\)' "$uplog" >&2 || true
        stage_summary "${stages[@]}"
        say "FAILED: $chain; the services' logs:"
        dc logs --no-color 2>&1 | grep -v '"event": \?"progress"' | tail -n 60 >&2
        exit 1
    fi
    stage_summary "${stages[@]}"
    if ! python3 "$here/ask.py" "http://127.0.0.1:$MODELSEAL_DEMO_SERVER_PORT" --label "$chain"; then
        dc logs --no-color --tail 30 "$server" >&2 || true
        say "FAILED: $chain: the served model did not answer every row correctly"
        exit 1
    fi
    if [ -n "$keep" ]; then
        say "$chain: OK; MLServer keeps answering on http://127.0.0.1:$MODELSEAL_DEMO_SERVER_PORT (make demo-down removes it):"
        echo "  curl -s -H 'Content-Type: application/json' http://127.0.0.1:$MODELSEAL_DEMO_SERVER_PORT/v2/models/iris/infer \\" >&2
        echo "    -d '{\"inputs\": [{\"name\": \"input-0\", \"shape\": [1, 4], \"datatype\": \"FP32\", \"data\": [5.9, 3.0, 5.1, 1.8]}]}'" >&2
    else
        down
        say "$chain: OK (containers and volumes removed)"
    fi
done
