# shellcheck shell=bash
# Start a local Docker engine for the tests, installing it first when it is missing.
#
#   source scripts/start-dockerd.sh   # from .ci/run: exports DOCKWARD_REQUIRE_DOCKER=1 on success
#   bash scripts/start-dockerd.sh     # by hand: exit status 0 when an engine answers
#
# Idempotent: when /var/run/docker.sock already answers no engine is started (only missing test
# packages are installed), so running it twice is harmless. Packages come from Debian: docker.io (dockerd, containerd,
# runc), busybox-static (the test image is built from /bin/busybox), socat (the UDP echo
# target the tests run inside a container), redis-server and dnsmasq-base (the idle-sleep
# tests' servers), docker-compose and libcap2-bin (tests/deploy.rs). dockerd runs without iptables rules and without
# the default bridge: the tests only use host-network containers listening on loopback.
#
# Environment:
#   DOCKWARD_DOCKERD_LOG   where dockerd's output goes (default /tmp/dockward-dockerd.log)
#   DOCKWARD_DOCKERD_WAIT  seconds to wait for the engine to answer (default 60)
#
# Written to be sourced, also by a shell under `set -euo pipefail` (.ci/run): it sets no
# shell option, never exits the sourcing shell, and leaves behind only
# DOCKWARD_REQUIRE_DOCKER, dockward_start_status and a few dockward_* functions.

dockward_dockerd_log() { printf 'start-dockerd: %s\n' "$*" >&2; }

dockward_engine_answers() {
    timeout 10 docker version >/dev/null 2>&1
}

# The pid of a live dockerd (from its pid file; a zombie does not count), or nothing.
dockward_dockerd_pid() {
    local pid
    pid="$(cat /var/run/docker.pid 2>/dev/null)" || return 1
    [ -n "$pid" ] && [ -d "/proc/$pid" ] || return 1
    grep -q '^State:[[:space:]]*Z' "/proc/$pid/status" 2>/dev/null && return 1
    echo "$pid"
}

dockward_install_docker() {
    local missing=()
    command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
    command -v docker >/dev/null 2>&1 || missing+=(docker.io)
    # The test image needs a static busybox (the dynamic one from `busybox` would need libc).
    dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'ok installed' || missing+=(busybox-static)
    command -v socat >/dev/null 2>&1 || missing+=(socat)
    # tests/idle_sleep.rs: real servers put to sleep and woken (run in the test image with the
    # host's /usr and /lib mounted): redis for TCP, dnsmasq for UDP.
    [ -x /usr/bin/redis-server ] || missing+=(redis-server)
    [ -x /usr/sbin/dnsmasq ] || missing+=(dnsmasq-base)
    # tests/deploy.rs: compose files validated, the test image's binary given a capability.
    command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
    command -v setcap >/dev/null 2>&1 || missing+=(libcap2-bin)
    if [ "${#missing[@]}" -eq 0 ]; then
        return 0
    fi
    if [ "$(id -u)" -ne 0 ]; then
        dockward_dockerd_log "missing ${missing[*]} and not root: cannot install"
        return 1
    fi
    dockward_dockerd_log "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null || return 1
    # Sort -u: docker.io may be listed twice.
    # shellcheck disable=SC2046
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        $(printf '%s\n' "${missing[@]}" | sort -u) >/dev/null || return 1
}

dockward_start_dockerd() {
    local log="${DOCKWARD_DOCKERD_LOG:-/tmp/dockward-dockerd.log}"
    local wait="${DOCKWARD_DOCKERD_WAIT:-60}"

    if dockward_engine_answers; then
        dockward_dockerd_log "engine already answers"
        # The tests' own packages (socat, redis-server, dnsmasq, ...) may still be missing.
        dockward_install_docker || dockward_dockerd_log "test packages are missing and could not be installed"
        return 0
    fi
    dockward_install_docker || return 1

    if ! dockward_dockerd_pid >/dev/null; then
        if [ "$(id -u)" -ne 0 ]; then
            dockward_dockerd_log "dockerd is not running and this is not root: cannot start it"
            return 1
        fi
        # A stale pid file from a killed dockerd makes the next one refuse to start.
        rm -f /var/run/docker.pid
        dockward_dockerd_log "starting dockerd (log: $log)"
        # setsid: the daemon outlives this shell and is not in its job table.
        setsid dockerd --iptables=false --bridge=none >>"$log" 2>&1 </dev/null &
    else
        dockward_dockerd_log "dockerd is running but not answering yet; waiting"
    fi

    local i
    for ((i = 0; i < wait * 2; i++)); do
        if dockward_engine_answers; then
            dockward_dockerd_log "engine answers after ~$((i / 2)) s"
            return 0
        fi
        sleep 0.5
    done
    dockward_dockerd_log "engine did not answer within ${wait} s; last lines of $log:"
    tail -n 20 "$log" >&2 2>/dev/null
    return 1
}

if dockward_start_dockerd; then
    export DOCKWARD_REQUIRE_DOCKER=1
    dockward_start_status=0
else
    dockward_start_status=1
fi

# Sourced: return the status to the caller without ending its shell. Run: exit with it.
if [ "${BASH_SOURCE[0]}" != "$0" ]; then
    # shellcheck disable=SC2317
    return "$dockward_start_status"
else
    exit "$dockward_start_status"
fi
