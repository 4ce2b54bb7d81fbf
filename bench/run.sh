#!/usr/bin/env bash
# bench/run.sh: what `make bench` runs. See bench/README.md.
#
# Measures, in one run and on loopback only (127.0.0.1), the same work through: direct (no
# proxy), dockward, HAProxy, nginx stream and socat. Installs missing peers from Debian, builds
# dockward (release) and bench/loadgen, raises the fd limit, pins the proxy and the load to
# different CPUs, and writes a markdown table to bench/RESULTS.md (BENCH_QUICK=1: a short smoke
# run, written to bench/out/RESULTS.md so the committed full-run table is kept).
#
# Every step is bounded in time and count; every process it starts is stopped on exit.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
BENCH=$ROOT/bench
OUT=$BENCH/out
START_SECONDS=$SECONDS
export BENCH_QUICK=${BENCH_QUICK:-0}

log() { printf '[bench %4ds] %s\n' $((SECONDS - START_SECONDS)) "$*" >&2; }

# ------------------------------------------------------------------------------ parameters
if [ "$BENCH_QUICK" != 0 ]; then
    IPERF_SECS=1 IPERF_RUNS=1 LAT_SECS=1 LAT_ROUNDS=1 SOCKPERF_SECS=0 CHURN_SECS=1 CHURN_ROUNDS=1
    IDLE_CONNS=2000 SOCAT_CONNS=200 UDP_STEP_SECS=0.25 UDP_BISECT=1 UDP_ROUNDS=1 UDP_SESSIONS=2000
    ROUTE_EDITS=5 CHURN_ROUTES=1000 ROUTE_CHURN_SECS=5 WAKE_ROUNDS=5
else
    IPERF_SECS=3 IPERF_RUNS=5 LAT_SECS=2 LAT_ROUNDS=3 SOCKPERF_SECS=3 CHURN_SECS=2 CHURN_ROUNDS=3
    IDLE_CONNS=10000 SOCAT_CONNS=1000 UDP_STEP_SECS=1 UDP_BISECT=3 UDP_ROUNDS=3 UDP_SESSIONS=10000
    ROUTE_EDITS=20 CHURN_ROUTES=1000 ROUTE_CHURN_SECS=15 WAKE_ROUNDS=20
fi
WAKE_ROUNDS=${BENCH_WAKE_ROUNDS:-$WAKE_ROUNDS}
IPERF_SECS=${BENCH_IPERF_SECS:-$IPERF_SECS}
IPERF_RUNS=${BENCH_IPERF_RUNS:-$IPERF_RUNS}
IDLE_CONNS=${BENCH_IDLE_CONNS:-$IDLE_CONNS}
UDP_SESSIONS=${BENCH_UDP_SESSIONS:-$UDP_SESSIONS}
SOCAT_CONNS=${BENCH_SOCAT_CONNS:-$SOCAT_CONNS}
CHURN_CONC=${BENCH_CHURN_CONCURRENCY:-50}
# Which targets to run (a subset is handy while developing).
read -r -a TARGETS <<<"${BENCH_TARGETS:-direct dockward haproxy nginx socat}"
# Which scenarios to run (a subset for a targeted measurement; the report shows what ran).
SCENARIOS=" ${BENCH_SCENARIOS:-bulk latency churn udp idle sessions route wake access_log} "
want() { [[ "$SCENARIOS" == *" $1 "* ]]; }

# Everything the bench starts runs at this priority, so a compile in the background disturbs the
# figures less (0 to turn off; negative values need root).
NICE=${BENCH_NICE:--10}
[ "$(nice -n "$NICE" nice 2>/dev/null)" = "$NICE" ] || NICE=0

if [ "$(nproc)" -ge 2 ]; then
    PROXY_CPU=${BENCH_PROXY_CPU:-0}
    LOAD_CPU=${BENCH_LOAD_CPU:-1}
    PINNING="proxy on CPU $PROXY_CPU; clients and the echo/iperf3/sockperf servers on CPU $LOAD_CPU (direct: all on CPU $LOAD_CPU)"
else
    PROXY_CPU=0 LOAD_CPU=0
    PINNING="none: one CPU"
fi
PINNING="$PINNING; every bench process at nice $NICE"

# ------------------------------------------------------------------------------ processes
rm -rf "$OUT"
mkdir -p "$OUT"
RESULTS=$OUT/results.jsonl
: >"$RESULTS"
T=$(mktemp -d /tmp/dockward-bench.XXXXXX)
declare -A RUNNING=()   # pid -> name, of every process group this script started

# start_bg NAME CPU CMD...: runs CMD in a process group of its own (so socat's forks and nginx's
# worker go with it), pinned to CPU, output to $T/NAME.log. Sets BG_PID.
start_bg() {
    local name=$1 cpu=$2
    shift 2
    setsid nice -n "$NICE" taskset -c "$cpu" "$@" >"$T/$name.log" 2>&1 </dev/null &
    BG_PID=$!
    RUNNING[$BG_PID]=$name
}

# stop_bg PID: SIGTERM to its process group, SIGKILL after 5 s.
stop_bg() {
    local pid=$1 i
    [ -n "${RUNNING[$pid]:-}" ] || return 0
    kill -TERM -- "-$pid" 2>/dev/null || true
    for i in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL -- "-$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    unset "RUNNING[$pid]"
}

cleanup() {
    local pid
    for pid in "${!RUNNING[@]}"; do stop_bg "$pid"; done
    rm -rf "$T"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

# ------------------------------------------------------------------------------ results
json_str() { local s=${1//\\/\\\\}; s=${s//\"/\\\"}; printf '"%s"' "${s//$'\n'/ }"; }

# record TARGET SCENARIO JSON-OBJECT [EXTRA-FIELDS]: one line of results.jsonl.
record() {
    local body=${3#\{}
    [ "$body" = "}" ] && body='"error":"empty"}'
    printf '{"target":"%s","scenario":"%s",%s%s\n' "$1" "$2" "${4:+$4,}" "$body" >>"$RESULTS"
}

note() {
    log "note: $1: $2"
    printf '{"target":"%s","scenario":"note","message":%s}\n' "$1" "$(json_str "$2")" >>"$RESULTS"
}

# ------------------------------------------------------------------------------ peers
install_peers() {
    local need=()
    command -v haproxy >/dev/null || need+=(haproxy)
    command -v nginx >/dev/null || need+=(nginx-light)
    [ -e /usr/lib/nginx/modules/ngx_stream_module.so ] || need+=(libnginx-mod-stream)
    command -v socat >/dev/null || need+=(socat)
    command -v iperf3 >/dev/null || need+=(iperf3)
    command -v sockperf >/dev/null || need+=(sockperf)
    command -v taskset >/dev/null || need+=(util-linux)
    [ ${#need[@]} -eq 0 ] && return 0
    log "installing ${need[*]} from Debian"
    # Keep the packages' services (nginx on :80, haproxy, iperf3) from starting on install.
    local guard=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        guard=1
    fi
    local ok=0
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}" >"$OUT/apt.log" 2>&1 && ok=1
    if [ $ok = 0 ]; then
        log "apt-get install failed; running apt-get update first"
        apt-get update >>"$OUT/apt.log" 2>&1 || true
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}" >>"$OUT/apt.log" 2>&1 && ok=1
    fi
    [ -n "$guard" ] && rm -f /usr/sbin/policy-rc.d
    [ $ok = 1 ] || { log "could not install ${need[*]} (see $OUT/apt.log)"; exit 1; }
}

# The system-call counts of the churn scenario: strace (by name) and perf (the totals). Optional:
# without them those rows stay empty.
install_tracers() {
    local need=()
    command -v strace >/dev/null || need+=(strace)
    command -v perf >/dev/null || need+=(linux-perf)
    [ ${#need[@]} -eq 0 ] && return 0
    log "installing ${need[*]} from Debian (optional)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}" >>"$OUT/apt.log" 2>&1 ||
        log "could not install ${need[*]}: the system-call rows stay empty"
}

# ------------------------------------------------------------------------------ build
install_peers
install_tracers
# perf counts system calls in the kernel (the raw_syscalls tracepoint) without slowing the
# proxy; some sandboxes refuse it.
PERF_SYSCALLS=0
if command -v perf >/dev/null && perf stat -x, -e raw_syscalls:sys_enter -- true >/dev/null 2>&1; then
    PERF_SYSCALLS=1
fi

log "building bench/loadgen"
cargo build --release --quiet --manifest-path "$BENCH/loadgen/Cargo.toml" --target-dir "$BENCH/loadgen/target"
LG=$BENCH/loadgen/target/release/loadgen

# proxy-core's apply timed in process; follows proxy-core's API, so a build failure only skips it.
APPLY_PROBE=""
if want route && [[ " ${TARGETS[*]} " == *" dockward "* ]]; then
    log "building bench/apply-probe (proxy-core, release)"
    if cargo build --release --manifest-path "$BENCH/apply-probe/Cargo.toml" --target-dir "$BENCH/apply-probe/target" \
        >"$OUT/apply-probe-build.log" 2>&1; then
        APPLY_PROBE=$BENCH/apply-probe/target/release/apply-probe
    else
        note dockward "bench/apply-probe did not build against proxy-core (bench/out/apply-probe-build.log: $(grep -m1 '^error' "$OUT/apply-probe-build.log"))"
    fi
fi

DOCKWARD=${BENCH_DOCKWARD_BIN:-}
if [ -z "$DOCKWARD" ] && [[ " ${TARGETS[*]} " == *" dockward "* ]]; then
    if [ -f crates/dockward/Cargo.toml ]; then
        log "building dockward (release)"
        if cargo build --release -p dockward >"$OUT/dockward-build.log" 2>&1; then
            DOCKWARD=$(cargo metadata --format-version 1 --no-deps 2>/dev/null |
                python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release/dockward
        else
            note dockward "release build failed (tail of bench/out/dockward-build.log: $(tail -3 "$OUT/dockward-build.log" | tr '\n' ' '))"
        fi
    else
        note dockward "crates/dockward does not exist yet"
    fi
fi
if [ -n "$DOCKWARD" ] && ! "$DOCKWARD" run --help >/dev/null 2>&1; then
    note dockward "$DOCKWARD does not run (dockward run --help failed)"
    DOCKWARD=""
fi

# ------------------------------------------------------------------------------ limits, ports
# 10,000 idle connections: the client, the proxy (two sockets each) and the echo server.
# A single-process proxy needs two descriptors per connection plus its listeners. Raising the hard
# limit needs CAP_SYS_RESOURCE; where the sandbox withholds it, the counts are cut to fit.
ulimit -Hn 262144 2>/dev/null || true
ulimit -Sn "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -Sn)
if [ "$NOFILE" -lt $((2 * IDLE_CONNS + 1000)) ]; then
    IDLE_CONNS=$(((NOFILE - 1000) / 2 / 100 * 100))
    note all "the fd limit is $NOFILE and cannot be raised here (no CAP_SYS_RESOURCE): idle connections held to $IDLE_CONNS"
fi
if [ "$NOFILE" -lt $((UDP_SESSIONS + 400)) ]; then
    UDP_SESSIONS=$(((NOFILE - 400) / 100 * 100))
    note all "the fd limit is $NOFILE: UDP sessions held to $UDP_SESSIONS"
fi

PROXIED=(dockward haproxy nginx socat)
read -r -a PORTS <<<"$("$LG" ports --count $((4 + 4 * ${#PROXIED[@]} + ROUTE_EDITS + CHURN_ROUTES)))"
ECHO=${PORTS[0]} IPERF=${PORTS[1]} SPERF=${PORTS[2]} ADMIN=${PORTS[3]}
declare -A P_ECHO=([direct]=$ECHO) P_IPERF=([direct]=$IPERF) P_SPERF=([direct]=$SPERF) P_UDP=([direct]=$ECHO)
i=4
for t in "${PROXIED[@]}"; do
    P_ECHO[$t]=${PORTS[i]} P_IPERF[$t]=${PORTS[i + 1]} P_SPERF[$t]=${PORTS[i + 2]} P_UDP[$t]=${PORTS[i + 3]}
    i=$((i + 4))
done
EDIT_PORTS=$(IFS=,; echo "${PORTS[*]:i:ROUTE_EDITS}")
printf '%s\n' "${PORTS[@]:i+ROUTE_EDITS:CHURN_ROUTES}" >"$T/churn-ports"

BENCH_PARAMS="iperf3 ${IPERF_SECS} s × ${IPERF_RUNS} runs (median); ping-pong ${LAT_ROUNDS} × ${LAT_SECS} s (median of rounds); $([ "$SOCKPERF_SECS" = 0 ] && echo "no sockperf" || echo "sockperf ${SOCKPERF_SECS} s"); churn ${CHURN_ROUNDS} × ${CHURN_SECS} s at ${CHURN_CONC} concurrent; idle ${IDLE_CONNS} connections (socat ${SOCAT_CONNS}); UDP search steps of ${UDP_STEP_SECS} s, doubling from 10 kpps then ${UDP_BISECT} bisections, ${UDP_ROUNDS} rounds (median); ${UDP_SESSIONS} UDP sessions (socat ${SOCAT_CONNS}); route apply over ${ROUTE_EDITS} edits; ${CHURN_ROUTES} routes churned for ${ROUTE_CHURN_SECS} s; ${WAKE_ROUNDS} wakes of each kind"
export BENCH_PARAMS BENCH_PINNING=$PINNING

# ------------------------------------------------------------------------------ servers
# on_load CMD...: a client, at the bench's priority, on the load CPU.
on_load() { nice -n "$NICE" taskset -c "$LOAD_CPU" "$@"; }
lg() { on_load timeout "$1" "$LG" "${@:2}"; }

start_servers() {
    start_bg echo-server "$LOAD_CPU" "$LG" echo-server --tcp "127.0.0.1:$ECHO" --udp "127.0.0.1:$ECHO"
    start_iperf_server
    start_bg sockperf-server "$LOAD_CPU" sockperf server --tcp -i 127.0.0.1 -p "$SPERF"
    if ! { "$LG" wait-tcp --addr "127.0.0.1:$ECHO" && "$LG" wait-udp --addr "127.0.0.1:$ECHO" &&
        "$LG" wait-tcp --addr "127.0.0.1:$SPERF"; }; then
        log "the echo or sockperf server did not start"
        exit 1
    fi
}

start_iperf_server() {
    start_bg iperf3-server "$LOAD_CPU" iperf3 -s -B 127.0.0.1 -p "$IPERF"
    IPERF_PID=$BG_PID
    "$LG" wait-tcp --addr "127.0.0.1:$IPERF" || { log "iperf3 server did not start"; exit 1; }
    sleep 0.2 # wait-tcp's probe connection is a failed test for iperf3; let it reset
}

# ------------------------------------------------------------------------------ proxies
declare -A TPIDS=() MEM_TCP=() MEM_UDP=() UDP_OK=()

write_configs() {
    mkdir -p "$T/dockward" "$T/base" "$T/haproxy" "$T/nginx"
    # dockward: TCP routes in one file (also the base of the route-churn edits), UDP in another,
    # so a UDP route the binary cannot serve yet does not take the TCP ones with it.
    cat >"$T/base/routes.base.yml" <<EOF
routes:
  bench-echo:
    scheme: tcp
    bind: 127.0.0.1
    host: 127.0.0.1
    port: "${P_ECHO[dockward]}:$ECHO"
  bench-iperf3:
    scheme: tcp
    bind: 127.0.0.1
    host: 127.0.0.1
    port: "${P_IPERF[dockward]}:$IPERF"
  bench-sockperf:
    scheme: tcp
    bind: 127.0.0.1
    host: 127.0.0.1
    port: "${P_SPERF[dockward]}:$SPERF"
EOF
    cat >"$T/dockward/udp.yml" <<EOF
routes:
  bench-udp-echo:
    scheme: udp
    bind: 127.0.0.1
    host: 127.0.0.1
    port: "${P_UDP[dockward]}:$ECHO"
EOF
    cat >"$T/haproxy/haproxy.cfg" <<EOF
global
    nbthread 1
    # HAProxy reserves two descriptors per connection and two per splice pipe; sized to fit
    # the fd limit with room for the idle test (pipes are only held by active transfers).
    maxconn $((IDLE_CONNS + 100))
    maxpipes $(((NOFILE - 2 * (IDLE_CONNS + 100) - 200) / 2 > 1024 ? 1024 : (NOFILE - 2 * (IDLE_CONNS + 100) - 200) / 2))
defaults
    mode tcp
    option splice-auto
    timeout connect 5s
    timeout client 10m
    timeout server 10m
listen echo
    bind 127.0.0.1:${P_ECHO[haproxy]}
    server echo 127.0.0.1:$ECHO
listen iperf3
    bind 127.0.0.1:${P_IPERF[haproxy]}
    server iperf3 127.0.0.1:$IPERF
listen sockperf
    bind 127.0.0.1:${P_SPERF[haproxy]}
    server sockperf 127.0.0.1:$SPERF
EOF
    cat >"$T/nginx/nginx.conf" <<EOF
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
daemon off;
worker_processes 1;
worker_rlimit_nofile $NOFILE;
pid $T/nginx/nginx.pid;
error_log $T/nginx/error.log warn;
events { worker_connections $((NOFILE - 100)); }
stream {
    server { listen 127.0.0.1:${P_ECHO[nginx]};  proxy_pass 127.0.0.1:$ECHO; }
    server { listen 127.0.0.1:${P_IPERF[nginx]}; proxy_pass 127.0.0.1:$IPERF; }
    server { listen 127.0.0.1:${P_SPERF[nginx]}; proxy_pass 127.0.0.1:$SPERF; }
    server { listen 127.0.0.1:${P_UDP[nginx]} udp; proxy_pass 127.0.0.1:$ECHO; proxy_timeout 5m; }
}
EOF
}

# start_target T: starts T's proxy pinned to the proxy CPU; 0 once its TCP ports accept.
start_target() {
    local t=$1 pids=() p
    UDP_OK[$t]=0
    case $t in
    direct)
        TPIDS[$t]="" UDP_OK[$t]=1
        return 0
        ;;
    dockward)
        [ -n "$DOCKWARD" ] || return 1
        cp "$T/base/routes.base.yml" "$T/dockward/routes.yml"
        start_bg dockward "$PROXY_CPU" "$DOCKWARD" run --routes "$T/dockward/routes.yml" \
            --routes "$T/dockward/udp.yml" --no-docker --admin "127.0.0.1:$ADMIN" --log-level warn
        pids=("$BG_PID")
        MEM_TCP[$t]=$BG_PID MEM_UDP[$t]=$BG_PID
        ;;
    haproxy)
        start_bg haproxy "$PROXY_CPU" haproxy -db -f "$T/haproxy/haproxy.cfg"
        pids=("$BG_PID")
        MEM_TCP[$t]=$BG_PID MEM_UDP[$t]=""
        ;;
    nginx)
        start_bg nginx "$PROXY_CPU" nginx -e "$T/nginx/error.log" -p "$T/nginx" -c "$T/nginx/nginx.conf"
        pids=("$BG_PID")
        MEM_TCP[$t]=$BG_PID MEM_UDP[$t]=$BG_PID
        ;;
    socat)
        for p in ECHO IPERF SPERF; do
            local listen=P_$p target=$p
            local -n lp=$listen
            start_bg "socat-${p,,}" "$PROXY_CPU" socat "TCP4-LISTEN:${lp[socat]},bind=127.0.0.1,reuseaddr,fork,backlog=4096,nodelay" \
                "TCP4:127.0.0.1:${!target},nodelay"
            pids+=("$BG_PID")
            [ $p = ECHO ] && MEM_TCP[$t]=$BG_PID
        done
        start_bg socat-udp "$PROXY_CPU" socat -T 300 "UDP4-LISTEN:${P_UDP[socat]},bind=127.0.0.1,reuseaddr,fork" "UDP4:127.0.0.1:$ECHO"
        pids+=("$BG_PID")
        MEM_UDP[$t]=$BG_PID
        ;;
    esac
    TPIDS[$t]="${pids[*]}"
    for p in "${P_ECHO[$t]}" "${P_IPERF[$t]}" "${P_SPERF[$t]}"; do
        if ! "$LG" wait-tcp --addr "127.0.0.1:$p" --timeout-ms 20000; then
            note "$t" "did not accept on 127.0.0.1:$p within 20 s (log: $(tail -3 "$T/$t"*.log 2>/dev/null | tr '\n' ' '))"
            stop_target "$t"
            return 1
        fi
    done
    if [ "$t" != haproxy ] && "$LG" wait-udp --addr "127.0.0.1:${P_UDP[$t]}" --timeout-ms 3000; then
        UDP_OK[$t]=1
    fi
    return 0
}

# pin_target T CPU: moves every thread of T's processes (socat's forks, nginx's worker) to CPU.
pin_target() {
    local pgid pid
    for pgid in ${TPIDS[$1]:-}; do
        for pid in $(pgrep -g "$pgid"); do taskset -a -cp "$2" "$pid" >/dev/null 2>&1 || true; done
    done
}

stop_target() {
    local pid
    for pid in ${TPIDS[$1]:-}; do stop_bg "$pid"; done
    TPIDS[$1]=""
}

# ------------------------------------------------------------------------------ scenarios
# proxy_cpu_ticks T: CPU time (clock ticks, user + system, with reaped children: socat's forks)
# of every process of target T so far; 0 for direct.
proxy_cpu_ticks() {
    local pgid pid total=0 f
    for pgid in ${TPIDS[$1]:-}; do
        for pid in $(pgrep -g "$pgid"); do
            # Fields after the ")" that ends the command name: utime is the 12th, then stime,
            # cutime, cstime.
            f=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null) || continue
            set -- $f
            total=$((total + ${12} + ${13} + ${14} + ${15}))
        done
    done
    echo "$total"
}

bulk() { # run target streams reverse
    local run=$1 t=$2 n=$3 rev=$4 flag="" rec before after
    [ "$rev" = true ] && flag=-R
    before=$(proxy_cpu_ticks "$t")
    if on_load timeout $((IPERF_SECS + 20)) iperf3 -c 127.0.0.1 -p "${P_IPERF[$t]}" \
        -t "$IPERF_SECS" -P "$n" $flag -J >"$T/iperf.json" 2>"$T/iperf.err"; then
        after=$(proxy_cpu_ticks "$t")
        rec=$(python3 "$BENCH/report.py" iperf "$T/iperf.json")
        rec="${rec%\}},\"proxy_cpu_s\":$(python3 -c "print(($after - $before) / $(getconf CLK_TCK))")}"
    else
        rec="{\"error\":$(json_str "iperf3 failed: $(python3 "$BENCH/report.py" iperf "$T/iperf.json" 2>/dev/null)")}"
        log "iperf3 through $t failed; restarting the iperf3 server"
        stop_bg "$IPERF_PID"
        start_iperf_server
    fi
    record "$t" bulk "$rec" "\"streams\":$n,\"reverse\":$rev,\"run\":$run"
}

# latency T: one request in flight, so no CPU contention: measured with the proxy on the load
# CPU (no cross-CPU wake-up: the steadier figure on a VM) and on a CPU of its own. sockperf
# (its own client and server) cross-checks loadgen's ping-pong.
# latency T ROUND: one round; the caller interleaves rounds across targets, so a noisy
# stretch of the shared machine spreads over every target instead of landing on one.
latency() {
    local t=$1 round=$2 line placement
    for placement in same split; do
        if [ "$placement" = same ]; then pin_target "$t" "$LOAD_CPU"; fi
        if line=$(lg $((LAT_SECS + 20)) pingpong --addr "127.0.0.1:${P_ECHO[$t]}" --size 64 --secs "$LAT_SECS"); then
            record "$t" latency "$line" "\"round\":$round,\"placement\":\"$placement\""
        else
            note "$t" "ping-pong failed"
        fi
        # sockperf costs ~2.5 s on top of -t: once (first round), beside the headline
        # placement; off in BENCH_QUICK.
        if [ "$placement" = split ] || [ "$SOCKPERF_SECS" = 0 ] || [ "$round" != 1 ]; then
            :
        elif on_load timeout $((SOCKPERF_SECS + 20)) sockperf ping-pong --tcp -i 127.0.0.1 \
            -p "${P_SPERF[$t]}" -m 64 -t "$SOCKPERF_SECS" --full-rtt >"$T/sockperf.out" 2>&1; then
            record "$t" sockperf "$(python3 "$BENCH/report.py" sockperf "$T/sockperf.out")" "\"placement\":\"$placement\""
        else
            note "$t" "sockperf ping-pong failed: $(tail -1 "$T/sockperf.out")"
        fi
        if [ "$placement" = same ]; then pin_target "$t" "$PROXY_CPU"; fi
    done
}

# target_pids T: every process of T, comma-separated (for perf and strace).
target_pids() {
    local pgid
    for pgid in ${TPIDS[$1]:-}; do pgrep -g "$pgid"; done | paste -sd,
}

# churn T ROUND: one round. On this 2-CPU machine every proxy reaches direct's rate (the
# load generator's CPU is the limit), so conns/s cannot rank proxies; the proxy's own CPU
# time per connection can. Each round records it, as proxy_cpu_s.
# With perf, the proxy's system calls and context switches during the round are counted too
# (not socat's: its forks are new processes).
churn() {
    local t=$1 round=$2 line before after pids perf_pid="" extra=""
    pids=$(target_pids "$t")
    if [ "$PERF_SYSCALLS" = 1 ] && [ -n "$pids" ] && [ "$t" != socat ]; then
        perf stat -x, -e raw_syscalls:sys_enter,context-switches -p "$pids" -o "$T/perf.out" >/dev/null 2>&1 &
        perf_pid=$!
        sleep 0.3 # attached before the load starts
    fi
    before=$(proxy_cpu_ticks "$t")
    if line=$(lg $((CHURN_SECS + 30)) churn --addr "127.0.0.1:${P_ECHO[$t]}" --concurrency "$CHURN_CONC" --secs "$CHURN_SECS"); then
        after=$(proxy_cpu_ticks "$t")
        if [ -n "$perf_pid" ]; then
            kill -INT "$perf_pid" 2>/dev/null || true
            wait "$perf_pid" 2>/dev/null || true
            perf_pid=""
            extra=$(awk -F, '$3 == "raw_syscalls:sys_enter" && $1 ~ /^[0-9]+$/ { printf ",\"syscalls\":%s", $1 }
                $3 == "context-switches" && $1 ~ /^[0-9]+$/ { printf ",\"cswitches\":%s", $1 }' "$T/perf.out")
        fi
        record "$t" churn "$line" "\"round\":$round,\"proxy_cpu_s\":$(python3 -c "print(($after - $before) / $(getconf CLK_TCK))")$extra"
    else
        note "$t" "churn failed"
    fi
    if [ -n "$perf_pid" ]; then
        kill -INT "$perf_pid" 2>/dev/null || true
        wait "$perf_pid" 2>/dev/null || true
    fi
    sleep 0.5
}

# syscalls_by_name T: one short churn round with strace -c -f attached to T's processes: the
# calls per connection by name. strace slows the proxy, so this round is kept out of the rates.
syscalls_by_name() {
    local t=$1 pids line strace_pid summary
    command -v strace >/dev/null || return 0
    pids=$(target_pids "$t")
    [ -n "$pids" ] || return 0
    strace -c -f -p "$pids" -o "$T/strace.out" >/dev/null 2>&1 &
    strace_pid=$!
    sleep 0.5
    line=$(lg 60 churn --addr "127.0.0.1:${P_ECHO[$t]}" --concurrency "$CHURN_CONC" --secs "$CHURN_SECS") || line=""
    kill -INT "$strace_pid" 2>/dev/null || true
    wait "$strace_pid" 2>/dev/null || true
    if [ -n "$line" ] && summary=$(python3 "$BENCH/report.py" strace "$T/strace.out"); then
        record "$t" syscalls "$summary" "\"conns\":$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["conns"])' "$line")"
    else
        note "$t" "strace churn round failed"
    fi
    sleep 0.5
}

# udp_search T SIZE ROUND: one search; rounds are interleaved across targets by the caller.
udp_search() {
    local t=$1 size=$2 round=$3 line
    [ "${UDP_OK[$t]}" = 1 ] || return 0
    if line=$(lg 300 udp-search --addr "127.0.0.1:${P_UDP[$t]}" --size "$size" --secs "$UDP_STEP_SECS" \
        --bisect "$UDP_BISECT" --max-loss-pct 0.1); then
        record "$t" udp-search "$line" "\"round\":$round"
    else
        note "$t" "UDP rate search ($size B) failed"
    fi
}

# wait_line FILE TEST SECS: prints the first JSON line of that test once it appears in FILE.
wait_line() {
    local i
    for i in $(seq $(($3 * 10))); do
        if grep -q "^{\"test\":\"$2\"" "$1" 2>/dev/null; then
            grep -m1 "^{\"test\":\"$2\"" "$1"
            return 0
        fi
        sleep 0.1
    done
    return 1
}

# hold_test T KIND: fresh proxy, warm-up, memory before, open and hold N connections or
# sessions, memory after.
hold_test() {
    local t=$1 kind=$2 n memory_pid before after line holder
    start_target "$t" || return 0
    if [ "$kind" = idle ]; then
        n=$IDLE_CONNS
        [ "$t" = socat ] && n=$SOCAT_CONNS
        memory_pid=${MEM_TCP[$t]}
        lg 30 churn --addr "127.0.0.1:${P_ECHO[$t]}" --concurrency 4 --secs 0.2 >/dev/null || true
    else
        n=$UDP_SESSIONS
        [ "$t" = socat ] && n=$SOCAT_CONNS
        memory_pid=${MEM_UDP[$t]}
        if [ "${UDP_OK[$t]}" != 1 ] || [ -z "$memory_pid" ]; then
            [ "$t" = haproxy ] || note "$t" "UDP port not bound on a fresh start: sessions not measured"
            stop_target "$t"
            return 0
        fi
        lg 30 udp-rate --addr "127.0.0.1:${P_UDP[$t]}" --rate 1000 --secs 0.2 >/dev/null || true
    fi
    sleep 0.5
    before=$(python3 "$BENCH/report.py" mem "$memory_pid")
    if [ "$kind" = idle ]; then
        start_bg "hold-$t" "$LOAD_CPU" "$LG" idle --addr "127.0.0.1:${P_ECHO[$t]}" --conns "$n" --hold-secs 300
    else
        start_bg "hold-$t" "$LOAD_CPU" "$LG" udp-sessions --addr "127.0.0.1:${P_UDP[$t]}" --sessions "$n" --hold-secs 300
    fi
    holder=$BG_PID
    local test=$kind
    [ "$kind" = sessions ] && test=udp-sessions
    if line=$(wait_line "$T/hold-$t.log" "$test" 240); then
        sleep 1
        after=$(python3 "$BENCH/report.py" mem "$memory_pid")
        record "$t" "$test" "$line" "\"before\":$before,\"after\":$after"
    else
        note "$t" "$test: $n not open within 240 s"
    fi
    stop_bg "$holder"
    stop_target "$t"
}

# apply_probe: proxy-core's RouteTable::apply timed in process, pinned like a proxy.
apply_probe() {
    local line
    [ -n "$APPLY_PROBE" ] || return 0
    log "proxy-core in process: RouteTable::apply -> port accepting (${ROUTE_EDITS} edits, ${CHURN_ROUTES} at once)"
    if line=$(nice -n "$NICE" taskset -c "$PROXY_CPU" timeout 120 "$APPLY_PROBE" --target "127.0.0.1:$ECHO" \
        --ports "$EDIT_PORTS,$(paste -sd, "$T/churn-ports")" --edits "$ROUTE_EDITS" --bulk "$CHURN_ROUTES"); then
        record dockward apply-probe "$line"
    else
        note dockward "apply-probe failed"
    fi
}

route_churn() {
    local line rc_pid
    start_target dockward || return 0
    log "dockward: routes-file edit -> port accepting, ${ROUTE_EDITS} edits"
    if line=$(lg 300 route-apply --file "$T/dockward/routes.yml" --base "$T/base/routes.base.yml" \
        --target "127.0.0.1:$ECHO" --ports "$EDIT_PORTS"); then
        record dockward route-apply "$line"
    else
        note dockward "route-apply failed: is the routes file watched?"
    fi
    log "dockward: one TCP stream alone, then while ${CHURN_ROUTES} routes are added and removed"
    if on_load timeout $((ROUTE_CHURN_SECS + 20)) iperf3 -c 127.0.0.1 -p "${P_IPERF[dockward]}" \
        -t "$ROUTE_CHURN_SECS" -J >"$T/iperf.json" 2>/dev/null; then
        record dockward route-churn-baseline "$(python3 "$BENCH/report.py" iperf "$T/iperf.json")"
    fi
    # The churner is background activity, not the measured load: normal priority, so it yields
    # the load CPU to iperf3.
    NICE=0 start_bg route-churn "$LOAD_CPU" timeout $((ROUTE_CHURN_SECS + 60)) "$LG" route-churn \
        --file "$T/dockward/routes.yml" --base "$T/base/routes.base.yml" --target "127.0.0.1:$ECHO" \
        --ports "@$T/churn-ports" --secs "$((ROUTE_CHURN_SECS + 1))" --max-cycles 10000
    rc_pid=$BG_PID
    sleep 0.5
    if on_load timeout $((ROUTE_CHURN_SECS + 20)) iperf3 -c 127.0.0.1 -p "${P_IPERF[dockward]}" \
        -t "$ROUTE_CHURN_SECS" -J >"$T/iperf.json" 2>/dev/null; then
        record dockward route-churn-stream "$(python3 "$BENCH/report.py" iperf "$T/iperf.json")"
    else
        note dockward "the long stream failed while routes churned"
    fi
    wait "$rc_pid" 2>/dev/null || true
    unset "RUNNING[$rc_pid]"
    if line=$(grep -m1 '^{"test":"route-churn"' "$T/route-churn.log"); then
        record dockward route-churn "$line"
    else
        note dockward "route churn printed no result: $(tail -2 "$T/route-churn.log" | tr '\n' ' ')"
    fi
    stop_target dockward
}

# ------------------------------------------------------------------------------ the run
write_configs
start_servers

UP=()
for t in "${TARGETS[@]}"; do
    if start_target "$t"; then UP+=("$t"); else log "$t: not available, skipped"; fi
done
log "targets up: ${UP[*]} (pinning: $PINNING)"

want bulk && log "1. TCP bulk: iperf3 ${IPERF_SECS} s, 1 and 4 streams, both directions, ${IPERF_RUNS} runs (interleaved)"
want bulk && for run in $(seq "$IPERF_RUNS"); do
    for t in "${UP[@]}"; do
        for n in 1 4; do
            for rev in false true; do bulk "$run" "$t" "$n" "$rev"; done
        done
    done
done

want latency && log "2. TCP latency: 64-byte ping-pong and sockperf, ${LAT_ROUNDS} rounds (interleaved)"
want latency && for round in $(seq "$LAT_ROUNDS"); do
    for t in "${UP[@]}"; do latency "$t" "$round"; done
done

want churn && log "3. connection churn: ${CHURN_CONC} concurrent, ${CHURN_ROUNDS} rounds (interleaved)"
want churn && for round in $(seq "$CHURN_ROUNDS"); do
    for t in "${UP[@]}"; do churn "$t" "$round"; done
done
want churn && for t in "${UP[@]}"; do
    case $t in dockward | haproxy) syscalls_by_name "$t" ;; esac
done

want udp && log "5a. UDP: highest rate under 0.1 % loss, 64 and 1400 bytes, ${UDP_ROUNDS} rounds (interleaved)"
want udp && for t in "${UP[@]}"; do
    if [ "${UDP_OK[$t]}" != 1 ] && [ "$t" != haproxy ]; then note "$t" "UDP port not bound: UDP not measured"; fi
done
want udp && for round in $(seq "$UDP_ROUNDS"); do
    for size in 64 1400; do
        for t in "${UP[@]}"; do udp_search "$t" "$size" "$round"; done
    done
done

for t in "${UP[@]}"; do stop_target "$t"; done

want idle && log "4. idle: ${IDLE_CONNS} connections held (socat: ${SOCAT_CONNS}); fresh proxy each"
want idle && for t in "${UP[@]}"; do [ "$t" = direct ] || hold_test "$t" idle; done

want sessions && log "5b. UDP sessions: ${UDP_SESSIONS} held (socat: ${SOCAT_CONNS}); fresh proxy each"
want sessions && for t in "${UP[@]}"; do [ "$t" = direct ] || hold_test "$t" sessions; done

if want route; then
    log "6. route churn"
    apply_probe
    if [[ " ${UP[*]} " == *" dockward "* ]]; then route_churn; fi
fi

# Needs Docker: bench/wake.sh says why and records a note when it cannot run.
if want wake; then
    log "7. wake from idle sleep: ${WAKE_ROUNDS} rounds, floor (docker start + connect loop) against dockward"
    if [ -z "$DOCKWARD" ]; then
        note dockward "wake: no dockward binary, not measured"
    elif ! BENCH_DOCKWARD_BIN=$DOCKWARD BENCH_WAKE_RESULTS=$RESULTS BENCH_WAKE_ROUNDS=$WAKE_ROUNDS BENCH_NICE=$NICE \
        timeout $((WAKE_ROUNDS * 60 + 120)) bash "$BENCH/wake.sh"; then
        note dockward "wake: bench/wake.sh failed (its output is above)"
    fi
fi

# The access log's cost (issue 16): churn through two dockward processes, one writing its
# access log to a file, in interleaved rounds; bench/access-log.sh prints the medians.
if want access_log; then
    log "8. access log: churn with the access log to a file against without"
    if [ -z "$DOCKWARD" ]; then
        note dockward "access log: no dockward binary, not measured"
    elif al=$(BENCH_DOCKWARD_BIN=$DOCKWARD BENCH_LOADGEN_BIN=$LG BENCH_CHURN_CONCURRENCY=$CHURN_CONC \
        BENCH_AL_ROUNDS=$((CHURN_ROUNDS * 2)) BENCH_AL_SECS=$CHURN_SECS timeout 600 bash "$BENCH/access-log.sh"); then
        printf '%s\n' "$al" >&2
        record dockward access-log "$(python3 - "$al" <<'PY'
import json, re, sys
text = sys.argv[1]
rate = re.search(r"median conns/s: off (\d+), on (\d+); on/off = ([\d.]+)", text)
cpu = re.search(r"median proxy CPU ms per 1,000 connections: off ([\d.]+), on ([\d.]+); on/off = ([\d.]+)", text)
lines = re.search(r"access-log lines written: (\d+)", text)
out = {}
if rate:
    out.update(rate_off=float(rate[1]), rate_on=float(rate[2]), rate_ratio=float(rate[3]))
if cpu:
    out.update(cpu_off=float(cpu[1]), cpu_on=float(cpu[2]), cpu_ratio=float(cpu[3]))
if lines:
    out.update(lines=int(lines[1]))
print(json.dumps(out))
PY
)"
    else
        note dockward "access log: bench/access-log.sh failed"
    fi
fi

# ------------------------------------------------------------------------------ report
# Only a full run (every scenario, every target) replaces the committed table.
if [ "$BENCH_QUICK" != 0 ] || [ -n "${BENCH_SCENARIOS:-}" ] || [ -n "${BENCH_TARGETS:-}" ]; then
    REPORT=$OUT/RESULTS.md
else
    REPORT=$BENCH/RESULTS.md
fi
python3 "$BENCH/report.py" table "$RESULTS" >"$REPORT.tmp"
mv "$REPORT.tmp" "$REPORT"
cat "$REPORT"
log "done in $((SECONDS - START_SECONDS)) s; report: ${REPORT#"$ROOT"/}, raw: ${RESULTS#"$ROOT"/}"
