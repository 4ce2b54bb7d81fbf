#!/usr/bin/env bash
# bench/admin-load.sh: does the admin API slow the data plane? (issue 15 item 9)
#
# dockward with 2,000 routes; a 64-byte ping-pong through one of them (loadgen pingpong),
# idle and while `wrk -c64` fetches /routes (1.5 MB each) as fast as it can. Rounds are
# interleaved (idle, loaded, idle, loaded, ...); the figure is the median p99 of each kind and
# their ratio. Target: loaded p99 within 2x of idle. Loopback only; everything it starts is
# stopped on exit.
#
# Knobs: BENCH_ADMIN_ROUTES (2000), BENCH_ADMIN_ROUNDS (3), BENCH_ADMIN_SECS (3, per ping-pong),
# BENCH_ADMIN_CONNS (64, wrk connections), BENCH_DOCKWARD_BIN (use this binary).
set -euo pipefail

BENCH=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$BENCH")
ROUTES=${BENCH_ADMIN_ROUTES:-2000}
ROUNDS=${BENCH_ADMIN_ROUNDS:-3}
SECS=${BENCH_ADMIN_SECS:-3}
CONNS=${BENCH_ADMIN_CONNS:-64}

command -v wrk >/dev/null || { echo "admin-load: needs wrk (apt-get install wrk)" >&2; exit 1; }
DW=${BENCH_DOCKWARD_BIN:-}
if [ -z "$DW" ]; then
    cargo build --quiet --release -p dockward --manifest-path "$ROOT/Cargo.toml"
    DW=$ROOT/target/release/dockward
fi
LG=$BENCH/loadgen/target/release/loadgen
cargo build --quiet --release --manifest-path "$BENCH/loadgen/Cargo.toml"

T=$(mktemp -d)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$T"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

ECHO=$(free_port)
"$LG" echo-server --tcp "127.0.0.1:$ECHO" --udp "127.0.0.1:$ECHO" >/dev/null 2>&1 &
PIDS+=($!)
"$LG" wait-tcp --addr "127.0.0.1:$ECHO"

PING=$(free_port)
{
    echo "routes:"
    echo "  ping: {bind: 127.0.0.1, port: '$PING:$ECHO'}"
    for i in $(seq 1 $((ROUTES - 1))); do echo "  r$i: {scheme: tcp, bind: 127.0.0.1, port: $ECHO}"; done
} >"$T/routes.yml"
"$DW" run --no-docker --routes "$T/routes.yml" --admin 127.0.0.1:0 --admin-addr-file "$T/admin.addr" \
    --log-level warn >"$T/dockward.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 500); do [ -s "$T/admin.addr" ] && break; sleep 0.02; done
ADMIN=$(cat "$T/admin.addr")
"$LG" wait-tcp --addr "127.0.0.1:$PING"
for _ in $(seq 1 500); do
    [ "$(curl -s "http://$ADMIN/routes" | grep -c '"state": "listening"')" -ge "$ROUTES" ] && break
    sleep 0.1
done
SIZE=$(curl -s "http://$ADMIN/routes" | wc -c)
echo "dockward $("$DW" version | cut -d' ' -f2), $ROUTES routes, /routes is $SIZE bytes; $(nproc) CPUs"

p99() { python3 -c 'import json,sys; print(json.loads(sys.stdin.read())["p99_us"])'; }
IDLE=() LOADED=()
for round in $(seq 1 "$ROUNDS"); do
    IDLE+=("$("$LG" pingpong --addr "127.0.0.1:$PING" --size 64 --secs "$SECS" | p99)")
    wrk -t2 -c"$CONNS" -d$((SECS + 2))s "http://$ADMIN/routes" >"$T/wrk.$round" 2>&1 &
    WRK=$!
    sleep 1
    LOADED+=("$("$LG" pingpong --addr "127.0.0.1:$PING" --size 64 --secs "$SECS" | p99)")
    wait "$WRK"
    echo "round $round: p99 idle ${IDLE[-1]} us, under wrk -c$CONNS /routes ${LOADED[-1]} us" \
        "($(grep -o 'Requests/sec: *[0-9.]*' "$T/wrk.$round"))"
done
python3 - "${IDLE[*]}" "${LOADED[*]}" <<'PY'
import statistics, sys
idle = statistics.median(float(x) for x in sys.argv[1].split())
loaded = statistics.median(float(x) for x in sys.argv[2].split())
ratio = loaded / idle
print(f"median p99: idle {idle:.0f} us, loaded {loaded:.0f} us, ratio {ratio:.2f} "
      f"({'within' if ratio <= 2 else 'OVER'} the 2x target)")
PY
