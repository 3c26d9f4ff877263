#!/usr/bin/env bash
# The demo with containers: a KMS-wrapped sealed model in S3 (moto), delivered
# by the init-container images over tmpfs volumes, then served over HTTP.
#
#   demo/compose.sh                 # four-stage: fetch-key -> fetch-model -> decrypt -> unpack
#   demo/compose.sh single-stage    # the one `run` stage instead
#   demo/compose.sh all             # both, one after the other
#
# On a fresh Debian machine it installs and starts the Docker engine
# (images/engine.sh), builds every image offline (images/build.sh,
# images/build-demo.sh), runs compose/demo.yml, asks the model server for one
# prediction on 127.0.0.1, prints it, and removes every container and volume,
# also when something failed.
#
# Env: MODELSEAL_DEMO_MOTO_PORT (47561), MODELSEAL_DEMO_SERVER_PORT (47562),
#      MODELSEAL_DEMO_INPUTS (JSON list of 4 numbers), MODELSEAL_DEMO_SKIP_BUILD=1
#      (use the images as they are), MODELSEAL_DEMO_PROJECT (modelseal-demo).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
mode=${1:-four-stage}
case $mode in
    four-stage) profiles=(four-stage) ;;
    single-stage) profiles=(single-stage) ;;
    all) profiles=(four-stage single-stage) ;;
    *) echo "usage: $0 [four-stage|single-stage|all]" >&2; exit 2 ;;
esac

export MODELSEAL_DEMO_MOTO_PORT=${MODELSEAL_DEMO_MOTO_PORT:-47561}
export MODELSEAL_DEMO_SERVER_PORT=${MODELSEAL_DEMO_SERVER_PORT:-47562}
inputs=${MODELSEAL_DEMO_INPUTS:-[5.1, 3.5, 1.4, 0.2]}
project=${MODELSEAL_DEMO_PROJECT:-modelseal-demo}
started=$SECONDS
say() { printf 'demo [%3ss]: %s\n' "$((SECONDS - started))" "$*" >&2; }

COMPOSE=$("$repo/images/engine.sh" | tail -n1)
# Both profiles always, so `down` also finds the containers of the other one.
dc() { $COMPOSE -p "$project" -f "$repo/compose/demo.yml" --profile four-stage --profile single-stage "$@"; }

buildlog=$(mktemp /var/tmp/modelseal-demo-build.XXXXXX.log)  # kept only when the build fails
uplog=$(mktemp)
teardown() {
    local rc=$?
    dc down -v --remove-orphans -t 3 >/dev/null 2>&1 || true
    rm -f "$uplog"
    [ -n "$buildlog" ] && rm -f "$buildlog"
    exit $rc
}
trap teardown EXIT
trap 'exit 130' INT TERM

if [ "${MODELSEAL_DEMO_SKIP_BUILD:-}" != 1 ]; then
    say "building the images (first time: a few minutes; log: $buildlog)"
    if ! { "$repo/images/build.sh" && "$repo/images/build-demo.sh"; } >"$buildlog" 2>&1; then
        tail -n 30 "$buildlog" >&2
        say "FAILED: building the images (full log: $buildlog)"
        buildlog=
        exit 1
    fi
fi

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
dc down -v --remove-orphans -t 3 >/dev/null 2>&1 || true  # leftovers of an interrupted run
for p in "$MODELSEAL_DEMO_MOTO_PORT" "$MODELSEAL_DEMO_SERVER_PORT"; do
    if port_busy "$p"; then
        say "port $p on 127.0.0.1 is taken; set MODELSEAL_DEMO_MOTO_PORT / MODELSEAL_DEMO_SERVER_PORT"
        exit 1
    fi
done

# One HTTP request from the host: curl, else python3, else a throwaway container.
http() {  # url [json body]
    if command -v curl >/dev/null; then
        curl -fsS --max-time 5 ${2:+-H 'Content-Type: application/json' --data "$2"} "$1"
    elif command -v python3 >/dev/null; then
        python3 - "$@" <<'PY'
import sys, urllib.request
body = sys.argv[2].encode() if len(sys.argv) > 2 else None
req = urllib.request.Request(sys.argv[1], data=body, headers={"Content-Type": "application/json"})
print(urllib.request.urlopen(req, timeout=5).read().decode().strip())
PY
    else
        docker run --rm --network host --log-driver none --entrypoint python3 modelseal/model-server -c \
            'import sys, urllib.request as u; b = sys.argv[2].encode() if len(sys.argv) > 2 else None
print(u.urlopen(u.Request(sys.argv[1], data=b, headers={"Content-Type": "application/json"}), timeout=5).read().decode().strip())' "$@"
    fi
}

stage_summary() {  # service...: the last status line each one-shot service logged
    local logs s line
    logs=$(dc logs --no-color "$@" 2>/dev/null | grep -E '"event": ?"(done|ready|failed)"' || true)
    for s in "$@"; do
        line=$(grep -E "^${s}_[0-9]+ +\\|" <<<"$logs" | tail -n1 | sed 's/^[^|]*| //')
        printf '  %-12s %s\n' "$s" "${line:-(no log)}" >&2
    done
}

for profile in "${profiles[@]}"; do
    if [ "$profile" = four-stage ]; then
        server=model-server; stages=(owner seal fetch-key fetch-model decrypt unpack)
    else
        server=model-server-run; stages=(owner seal run)
    fi
    say "$profile: moto (S3 + KMS) on 127.0.0.1:$MODELSEAL_DEMO_MOTO_PORT, then ${stages[*]}, then $server"
    if ! dc up -d "$server" >"$uplog" 2>&1; then
        cat "$uplog" >&2
        say "FAILED: $profile; the services' logs:"
        dc logs --no-color 2>&1 | grep -v '"event":"progress"' | tail -n 60 >&2
        exit 1
    fi
    stage_summary "${stages[@]}"
    for _ in $(seq 60); do
        http "http://127.0.0.1:$MODELSEAL_DEMO_SERVER_PORT/healthz" >/dev/null 2>&1 && break
        sleep 0.5
    done
    say "$profile: POST http://127.0.0.1:$MODELSEAL_DEMO_SERVER_PORT/predict {\"inputs\": $inputs}"
    if ! answer=$(http "http://127.0.0.1:$MODELSEAL_DEMO_SERVER_PORT/predict" "{\"inputs\": $inputs}"); then
        dc logs --no-color "$server" >&2 || true
        say "FAILED: the model server did not answer"
        exit 1
    fi
    echo "$answer"
    dc down -v --remove-orphans -t 3 >/dev/null 2>&1
    say "$profile: OK (containers and volumes removed)"
done
