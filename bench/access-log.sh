#!/usr/bin/env bash
# The access log's cost: connection churn through two dockward processes serving the same
# echo server, one writing its access log to a file (text), one without, in interleaved
# rounds (off, on, off, on, ...). Prints, per round and as medians, connections/s and the
# proxy's CPU time per 1,000 connections, and the ratios on / off. The goal (issue 16):
# within 5 %. Loopback only; ports picked free at run time.
#
#   bash bench/access-log.sh               # 6 rounds of 2 s each
#   BENCH_AL_ROUNDS=10 BENCH_AL_SECS=3 bash bench/access-log.sh
#
# Uses target/release/dockward (BENCH_DOCKWARD_BIN to override) and bench/loadgen
# (BENCH_LOADGEN_BIN to override), building them when missing. One JSON line per measurement goes to bench/out/access-log.jsonl.
set -euo pipefail

BENCH=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$BENCH")
ROUNDS=${BENCH_AL_ROUNDS:-6}
SECS=${BENCH_AL_SECS:-2}
CONC=${BENCH_CHURN_CONCURRENCY:-50}
DW=${BENCH_DOCKWARD_BIN:-$ROOT/target/release/dockward}
LG=${BENCH_LOADGEN_BIN:-$BENCH/loadgen/target/release/loadgen}
OUT=$BENCH/out/access-log.jsonl

log() { printf '[access-log bench] %s\n' "$*" >&2; }

[ -x "$DW" ] || (cd "$ROOT" && cargo build --release -p dockward)
[ -x "$LG" ] || cargo build --release --manifest-path "$BENCH/loadgen/Cargo.toml"
mkdir -p "$BENCH/out"
: >"$OUT"

T=$(mktemp -d /tmp/dockward-access-log-bench.XXXXXX)
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$T"
}
trap cleanup EXIT

read -r P_ECHO P_OFF P_ON P_ADMIN_OFF P_ADMIN_ON <<<"$("$LG" ports --count 5)"
"$LG" echo-server --tcp "127.0.0.1:$P_ECHO" >"$T/echo.log" 2>&1 &
PIDS+=($!)

# start NAME PORT ADMIN-PORT [ARGS...]: a dockward serving 127.0.0.1:PORT -> the echo server.
start() {
    local name=$1 port=$2 admin=$3
    shift 3
    printf 'routes:\n  churn:\n    bind: 127.0.0.1\n    port: "%s:%s"\n' "$port" "$P_ECHO" >"$T/$name.yml"
    "$DW" run --no-docker --routes "$T/$name.yml" --admin "127.0.0.1:$admin" --log-level warn "$@" \
        >"$T/$name.log" 2>&1 </dev/null &
    PIDS+=($!)
    eval "PID_$name=$!"
    "$LG" wait-tcp --addr "127.0.0.1:$port" --timeout-ms 10000
}
start off "$P_OFF" "$P_ADMIN_OFF"
start on "$P_ON" "$P_ADMIN_ON" --access-log "$T/access.log"
"$LG" wait-tcp --addr "127.0.0.1:$P_ECHO" --timeout-ms 10000

# cpu_ticks PID: utime + stime of the process so far.
cpu_ticks() {
    local f
    f=$(sed 's/.*) //' "/proc/$1/stat")
    set -- $f
    echo $((${12} + ${13}))
}

# Warm-up for both, not measured.
for p in "$P_OFF" "$P_ON"; do "$LG" churn --addr "127.0.0.1:$p" --concurrency 4 --secs 0.3 >/dev/null; done

HZ=$(getconf CLK_TCK)
for round in $(seq "$ROUNDS"); do
    for name in off on; do
        pid_var=PID_$name
        port_var=P_$(echo "$name" | tr a-z A-Z)
        before=$(cpu_ticks "${!pid_var}")
        line=$("$LG" churn --addr "127.0.0.1:${!port_var}" --concurrency "$CONC" --secs "$SECS")
        after=$(cpu_ticks "${!pid_var}")
        python3 - "$name" "$round" "$line" "$before" "$after" "$HZ" >>"$OUT" <<'EOF'
import json, sys
name, rnd, line, before, after, hz = sys.argv[1:]
r = json.loads(line)
r.update(target=name, round=int(rnd), proxy_cpu_s=(int(after) - int(before)) / int(hz))
print(json.dumps(r))
EOF
    done
done

lines=$(wc -l <"$T/access.log")
python3 - "$OUT" "$lines" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def med(name, f):
    return statistics.median(f(r) for r in rows if r["target"] == name)
rate = {n: med(n, lambda r: r["conns_per_s"]) for n in ("off", "on")}
cpu = {n: med(n, lambda r: 1000 * 1000 * r["proxy_cpu_s"] / max(r["conns"], 1)) for n in ("off", "on")}
for r in rows:
    print(f'round {r["round"]} {r["target"]:>3}: {r["conns_per_s"]:9.0f} conns/s, proxy CPU {r["proxy_cpu_s"]:.2f} s')
print(f'median conns/s: off {rate["off"]:.0f}, on {rate["on"]:.0f}; on/off = {rate["on"] / rate["off"]:.3f}')
print(f'median proxy CPU ms per 1,000 connections: off {cpu["off"]:.1f}, on {cpu["on"]:.1f}; on/off = {cpu["on"] / cpu["off"]:.3f}')
print(f'access-log lines written: {sys.argv[2]}')
EOF
