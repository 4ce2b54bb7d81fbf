# shellcheck shell=bash
# Start a Podman API service for the tests, installing Podman first when it is missing.
#
#   source scripts/start-podman.sh   # from .ci/run: exports DOCKWARD_PODMAN_HOST and
#                                    # DOCKWARD_REQUIRE_PODMAN=1 on success
#   bash scripts/start-podman.sh     # by hand: exit status 0 when the service answers
#
# Podman's Docker-compatible API on a socket of the tests' own (DOCKWARD_PODMAN_SOCK, default
# /run/dockward-podman/podman.sock), so the machine's /run/podman/podman.sock (systemd's
# podman.socket) is left alone. Idempotent: when the socket already answers nothing is
# installed or started. Packages come from Debian: podman (4.3), runc (from docker.io, which
# start-dockerd.sh installs; crun refuses this machine's hybrid cgroup setup) and
# busybox-static (the test image is `podman import`ed from /bin/busybox; nothing is pulled).
# The service runs its containers with runc and cgroupfs, and with nofile and nproc limits of
# 1024 (Podman's defaults are refused here), from a containers.conf next to the socket.
#
# Environment:
#   DOCKWARD_PODMAN_SOCK  the socket path (default /run/dockward-podman/podman.sock)
#   DOCKWARD_PODMAN_LOG   where the service's output goes (default /tmp/dockward-podman.log)
#   DOCKWARD_PODMAN_WAIT  seconds to wait for the service to answer (default 60)
#
# Written to be sourced, also by a shell under `set -euo pipefail` (.ci/run): it sets no
# shell option, never exits the sourcing shell, and leaves behind only DOCKWARD_PODMAN_HOST,
# DOCKWARD_REQUIRE_PODMAN, dockward_podman_status and a few dockward_podman_* functions.

dockward_podman_log() { printf 'start-podman: %s\n' "$*" >&2; }

dockward_podman_sock() { printf '%s' "${DOCKWARD_PODMAN_SOCK:-/run/dockward-podman/podman.sock}"; }

dockward_podman_answers() {
    local sock
    sock="$(dockward_podman_sock)"
    [ -S "$sock" ] && timeout 10 curl -sf --unix-socket "$sock" http://podman/_ping >/dev/null 2>&1
}

dockward_podman_install() {
    local missing=()
    command -v podman >/dev/null 2>&1 || missing+=(podman)
    command -v runc >/dev/null 2>&1 || missing+=(runc)
    command -v curl >/dev/null 2>&1 || missing+=(curl)
    # User-mode networking of rootless containers (tests/docker_e2e.rs).
    command -v slirp4netns >/dev/null 2>&1 || missing+=(slirp4netns)
    dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'ok installed' || missing+=(busybox-static)
    if [ "${#missing[@]}" -eq 0 ]; then
        return 0
    fi
    if [ "$(id -u)" -ne 0 ]; then
        dockward_podman_log "missing ${missing[*]} and not root: cannot install"
        return 1
    fi
    dockward_podman_log "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 update -qq >/dev/null || return 1
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null || return 1
}

dockward_podman_start() {
    local sock dir log wait
    sock="$(dockward_podman_sock)"
    dir="$(dirname "$sock")"
    log="${DOCKWARD_PODMAN_LOG:-/tmp/dockward-podman.log}"
    wait="${DOCKWARD_PODMAN_WAIT:-60}"

    dockward_podman_install || return 1
    if dockward_podman_answers; then
        dockward_podman_log "service already answers on $sock"
        return 0
    fi
    if [ "$(id -u)" -ne 0 ]; then
        dockward_podman_log "the service is not running and this is not root: cannot start it"
        return 1
    fi
    mkdir -p "$dir" || return 1
    cat >"$dir/containers.conf" <<'CONF'
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
CONF
    rm -f "$sock"
    dockward_podman_log "starting podman system service on $sock (log: $log)"
    # setsid: the service outlives this shell and is not in its job table. --time=0: it never
    # exits for want of requests.
    CONTAINERS_CONF="$dir/containers.conf" setsid podman --runtime runc --cgroup-manager cgroupfs \
        system service --time=0 "unix://$sock" >>"$log" 2>&1 </dev/null &

    local i
    for ((i = 0; i < wait * 2; i++)); do
        if dockward_podman_answers; then
            dockward_podman_log "service answers after ~$((i / 2)) s"
            return 0
        fi
        sleep 0.5
    done
    dockward_podman_log "service did not answer within ${wait} s; last lines of $log:"
    tail -n 20 "$log" >&2 2>/dev/null
    return 1
}

if dockward_podman_start; then
    DOCKWARD_PODMAN_HOST="unix://$(dockward_podman_sock)"
    export DOCKWARD_PODMAN_HOST
    export DOCKWARD_REQUIRE_PODMAN=1
    dockward_podman_status=0
else
    dockward_podman_status=1
fi

# Sourced: return the status to the caller without ending its shell. Run: exit with it.
if [ "${BASH_SOURCE[0]}" != "$0" ]; then
    # shellcheck disable=SC2317
    return "$dockward_podman_status"
else
    exit "$dockward_podman_status"
fi
