#!/usr/bin/env bash
# bench/wake.sh: how long a client waits for a sleeping container (issue 14), against the floor.
#
# One host-network container running the host's redis-server (with /usr, /lib, /lib64 mounted
# read-only into the test image, `dockward-test-busybox:latest`, imported from the host's
# busybox when missing: nothing is pulled) on 127.0.0.1, labelled for idle sleep
# (`proxy.idle_timeout=1s`), and one `dockward run --allow-container-control` watching only it.
# bench/wake.py then times, in interleaved rounds, from a stopped container to the first byte of
# the reply to one PING: `docker start` + a connect loop (the floor, as a script does it), the
# engine API's start + the same loop (what dockward calls), and a client at dockward's port.
# Target: dockward's p50 within 25 ms of the floor's.
#
# Without a reachable engine (or without redis-server) it prints why and exits 0. Everything
# stays on 127.0.0.1; the container carries a run label and is removed on exit, dockward stopped.
#
# Knobs: BENCH_WAKE_ROUNDS (20; 5 with BENCH_QUICK=1), BENCH_DOCKWARD_BIN (use this binary),
# BENCH_WAKE_RESULTS (append the JSON record to this results.jsonl, as bench/run.sh does),
# BENCH_NICE (-10).
set -euo pipefail

BENCH=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$BENCH")
if [ "${BENCH_QUICK:-0}" != 0 ]; then ROUNDS=${BENCH_WAKE_ROUNDS:-5}; else ROUNDS=${BENCH_WAKE_ROUNDS:-20}; fi
IMAGE=dockward-test-busybox:latest
RUN_LABEL=dockward.bench.run
RUN=wake-$$-$(date +%s)

skip() {
    echo "wake: skipped: $1" >&2
    if [ -n "${BENCH_WAKE_RESULTS:-}" ]; then
        python3 -c 'import json,sys; print(json.dumps({"target": "dockward", "scenario": "note", "message": "wake: skipped: " + sys.argv[1]}))' \
            "$1" >>"$BENCH_WAKE_RESULTS"
    fi
    exit 0
}

command -v docker >/dev/null || skip "no docker CLI"
timeout 20 docker info >/dev/null 2>&1 || skip "no Docker engine reachable (docker info failed; scripts/start-dockerd.sh starts one)"
REDIS=$(command -v redis-server) || skip "no redis-server on the host (apt-get install redis-server)"

NICE=${BENCH_NICE:--10}
[ "$(nice -n "$NICE" nice 2>/dev/null)" = "$NICE" ] || NICE=0

# The test image, built as tests/common/docker.rs builds it: the host's static busybox, a few
# links to it, and empty mount points for the host's libraries.
if ! docker image inspect "$IMAGE" >/dev/null 2>&1; then
    BUSYBOX=$(command -v busybox) || skip "no busybox on the host to build $IMAGE from (apt-get install busybox-static)"
    IMG=$(mktemp -d)
    mkdir -p "$IMG/bin" "$IMG/usr" "$IMG/lib" "$IMG/lib64" "$IMG/tmp" "$IMG/etc"
    cp "$BUSYBOX" "$IMG/bin/busybox"
    for a in sh nc sleep httpd cat echo true ls; do ln -s busybox "$IMG/bin/$a"; done
    tar -C "$IMG" -cf - . | docker import - "$IMAGE" >/dev/null
    rm -rf "$IMG"
fi

DW=${BENCH_DOCKWARD_BIN:-}
if [ -z "$DW" ]; then
    echo "wake: building dockward (release)" >&2
    cargo build --quiet --release -p dockward --manifest-path "$ROOT/Cargo.toml"
    DW=$(cargo metadata --format-version 1 --no-deps --manifest-path "$ROOT/Cargo.toml" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release/dockward
fi

T=$(mktemp -d /tmp/dockward-wake.XXXXXX)
DW_PID=""
NAME=dockward-bench-$RUN
cleanup() {
    if [ -n "$DW_PID" ]; then
        kill "$DW_PID" 2>/dev/null || true
        wait "$DW_PID" 2>/dev/null || true
    fi
    # dockward's log (its wake and sleep lines, with took_ms) outlives the run.
    mkdir -p "$BENCH/out" && cp "$T/dockward.log" "$BENCH/out/wake-dockward.log" 2>/dev/null || true
    docker ps -aq --filter "label=$RUN_LABEL=$RUN" | xargs -r docker rm -f >/dev/null 2>&1 || true
    rm -rf "$T"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

read -r LISTEN TARGET <<<"$(python3 "$BENCH/wake.py" ports 2)"
BINDS=()
for d in /usr /lib /lib64; do [ -e "$d" ] && BINDS+=(-v "$d:$d:ro"); done
docker create --pull never --name "$NAME" --network host "${BINDS[@]}" \
    --label "$RUN_LABEL=$RUN" --label proxy.aliases=wake --label "proxy.wake.port=$LISTEN:$TARGET" \
    --label proxy.wake.bind=127.0.0.1 --label proxy.idle_timeout=1s \
    "$IMAGE" "$REDIS" --port "$TARGET" --bind 127.0.0.1 --save "" --appendonly no >/dev/null

nice -n "$NICE" "$DW" run --allow-container-control --docker-label-filter "$RUN_LABEL=$RUN" \
    --admin 127.0.0.1:0 --admin-addr-file "$T/admin.addr" --log-level info >"$T/dockward.log" 2>&1 &
DW_PID=$!
for _ in $(seq 1 500); do [ -s "$T/admin.addr" ] && break; sleep 0.02; done
[ -s "$T/admin.addr" ] || { echo "wake: dockward did not start:" >&2; tail -5 "$T/dockward.log" >&2; exit 1; }
ADMIN=$(cat "$T/admin.addr")

echo "wake: $ROUNDS rounds, redis on 127.0.0.1:$TARGET, dockward's port 127.0.0.1:$LISTEN (idle_timeout 1s)" >&2
if ! nice -n "$NICE" python3 "$BENCH/wake.py" run --container="$NAME" --alias=wake --admin="$ADMIN" \
    --listen="$LISTEN" --target="$TARGET" --rounds="$ROUNDS" --log="$T/dockward.log" >"$T/record.json"; then
    echo "wake: failed; dockward's log ends:" >&2
    tail -20 "$T/dockward.log" >&2
    exit 1
fi
if [ -n "${BENCH_WAKE_RESULTS:-}" ]; then cat "$T/record.json" >>"$BENCH_WAKE_RESULTS"; fi
python3 "$BENCH/wake.py" table "$T/record.json"
