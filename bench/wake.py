#!/usr/bin/env python3
"""The timing half of bench/wake.sh (stdlib only): idle sleep's wake against the floor.

  wake.py ports N                 N loopback TCP ports free a moment ago, space-separated
  wake.py run OPTIONS             the interleaved rounds; one JSON line on stdout (see below)
  wake.py table RECORD.json       the markdown table of a `run` record

`run` measures, per round and in a rotating order, three wakes of the same stopped redis
container, each to the first byte of `+PONG` after one `PING`:

  floor-cli   `docker start NAME`, then connect to redis directly until a PING is answered
              (the issue's floor: what a script does)
  floor-api   the same with the engine API's start (POST /containers/ID/start on the unix
              socket), which is what dockward calls: no CLI process in the figure
  dockward    connect to dockward's port (the container asleep) and send the PING; dockward
              holds the client, starts the container, waits until redis accepts, forwards

Between two measurements the container is put back to sleep by dockward itself (its
idle_timeout), and the next one starts only once the engine says `exited` and dockward's
/routes row says `sleeping`. All traffic is on 127.0.0.1.
"""

import http.client
import json
import math
import os
import re
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

REQUEST = b"PING\r\n"
KINDS = ["floor-cli", "floor-api", "dockward"]
RETRY_S = 0.001  # the floor's connect loop: retry every millisecond (dockward probes every 5 ms)


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over the engine's unix socket."""

    def __init__(self, path, timeout):
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self.path)
        self.sock = s


def engine_socket():
    host = os.environ.get("DOCKER_HOST", "")
    if not host:
        return "/var/run/docker.sock"
    if host.startswith("unix://"):
        return host[len("unix://"):]
    return None


def api(method, path, timeout=30):
    sock = engine_socket()
    if sock is None:
        raise RuntimeError("DOCKER_HOST is not a unix socket: the API floor needs one")
    c = UnixHTTPConnection(sock, timeout)
    try:
        c.request(method, path)
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def ask(addr, deadline):
    """One PING on a fresh connection: True once the first reply byte is in; False when
    refused or reset (not listening yet)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(max(0.001, deadline - time.perf_counter()))
    try:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.connect(addr)
        s.sendall(REQUEST)
        return len(s.recv(1)) == 1
    except (ConnectionRefusedError, ConnectionResetError, BrokenPipeError):
        return False
    finally:
        s.close()


def until_answered(addr, deadline):
    """Loops `ask` until a reply; the number of tries."""
    tries = 0
    while True:
        tries += 1
        if ask(addr, deadline):
            return tries
        if time.perf_counter() >= deadline:
            raise TimeoutError(f"no reply from {addr[0]}:{addr[1]} in time")
        time.sleep(RETRY_S)


def floor_cli(container, target, limit):
    wall0, t0 = time.time_ns(), time.perf_counter()
    r = subprocess.run(["docker", "start", container], capture_output=True, text=True, timeout=limit)
    started = time.perf_counter()
    if r.returncode != 0:
        raise RuntimeError(f"docker start: {r.stderr.strip()}")
    tries = until_answered(target, t0 + limit)
    t1, wall1 = time.perf_counter(), time.time_ns()
    return {"ms": (t1 - t0) * 1e3, "start_ms": (started - t0) * 1e3, "tries": tries, "wall": (wall0, wall1)}


def floor_api(container, target, limit):
    wall0, t0 = time.time_ns(), time.perf_counter()
    status, body = api("POST", f"/containers/{container}/start", timeout=limit)
    started = time.perf_counter()
    if status not in (204, 304):
        raise RuntimeError(f"POST /containers/{container}/start: HTTP {status} {body[:200]!r}")
    tries = until_answered(target, t0 + limit)
    t1, wall1 = time.perf_counter(), time.time_ns()
    return {"ms": (t1 - t0) * 1e3, "start_ms": (started - t0) * 1e3, "tries": tries, "wall": (wall0, wall1)}


def through_dockward(listen, limit):
    wall0, t0 = time.time_ns(), time.perf_counter()
    s = socket.create_connection(listen, timeout=limit)
    try:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        connected = time.perf_counter()
        s.sendall(REQUEST)
        first = s.recv(1)
        t1, wall1 = time.perf_counter(), time.time_ns()
    finally:
        s.close()
    if not first:
        raise RuntimeError("dockward closed the connection without a reply (the wake failed?)")
    return {"ms": (t1 - t0) * 1e3, "connect_ms": (connected - t0) * 1e3, "wall": (wall0, wall1)}


def state(container):
    if engine_socket() is None:
        r = subprocess.run(["docker", "inspect", "-f", "{{.State.Status}}", container],
                           capture_output=True, text=True, timeout=30)
        return r.stdout.strip()
    status, body = api("GET", f"/containers/{container}/json")
    if status != 200:
        raise RuntimeError(f"inspect {container}: HTTP {status}")
    return json.loads(body)["State"]["Status"]


def row_state(admin, source, alias):
    with urllib.request.urlopen(f"http://{admin}/routes", timeout=10) as r:
        rows = json.load(r)
    for row in rows:
        if row.get("source") == source and row.get("alias") == alias:
            return row.get("state")
    return None


def wait_asleep(container, admin, alias, limit):
    """Until the engine says exited and dockward's row says sleeping."""
    deadline = time.monotonic() + limit
    seen = None
    while time.monotonic() < deadline:
        seen = (state(container), row_state(admin, container, alias))
        if seen[0] in ("exited", "created") and seen[1] == "sleeping":
            return
        time.sleep(0.02)
    raise TimeoutError(f"{container} not asleep within {limit} s (engine, dockward: {seen})")


class StartEvents:
    """The engine's `start` events of one container, followed live (the engine keeps only its
    last ~1,000 events, which a busy engine turns over in minutes), as nanosecond wall-clock
    times: the engine's clock is this machine's."""

    def __init__(self, container):
        self.times = []
        self.proc = subprocess.Popen(
            ["docker", "events", "--filter", f"container={container}", "--filter", "type=container",
             "--filter", "event=start", "--format", "{{.TimeNano}}"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        for line in self.proc.stdout:
            if line.strip().isdigit():
                self.times.append(int(line))

    def stop(self):
        """Every event so far (waits a moment for the last one to be read)."""
        time.sleep(0.5)
        self.proc.terminate()
        self.proc.wait(timeout=10)
        self.thread.join(timeout=10)
        return sorted(self.times)


def split_at_start(details, events):
    """Each measurement cut at the engine's `start` event that fell inside it: (request →
    event, event → reply) in ms; None when no event did."""
    out = []
    for d in details:
        w0, w1 = d["wall"]
        ev = next((e for e in events if w0 <= e <= w1), None)
        out.append(None if ev is None else ((ev - w0) / 1e6, (w1 - ev) / 1e6))
    return out


def awake_times(log_path):
    """dockward's own figure for each wake: `container awake ... took_ms=N`."""
    try:
        text = open(log_path, errors="replace").read()
    except OSError:
        return []
    return [float(m) for m in re.findall(r"container awake.*?took_ms=(\d+)", text)]


def percentile(xs, p):
    """Nearest rank: with 20 samples, p99 is the slowest."""
    if not xs:
        return None
    s = sorted(xs)
    return s[max(0, math.ceil(p / 100 * len(s)) - 1)]


def run(args):
    container, alias, admin = args["container"], args["alias"], args["admin"]
    listen = ("127.0.0.1", int(args["listen"]))
    target = ("127.0.0.1", int(args["target"]))
    rounds, limit = int(args["rounds"]), float(args.get("limit", 30))
    log_path = args.get("log", "")
    samples = {k: [] for k in KINDS}
    details = {k: [] for k in KINDS}
    api_ok = engine_socket() is not None
    wait_asleep(container, admin, alias, limit)
    follow = StartEvents(container)
    time.sleep(0.5)  # let `docker events` subscribe; an event it misses only leaves a split out
    try:
        measure(rounds, container, admin, alias, listen, target, limit, api_ok, samples, details)
    finally:
        events = follow.stop()
    rec = {"target": "dockward", "scenario": "wake", "rounds": rounds, "samples_ms": samples}
    summarise(rec, samples, details, events, log_path)
    return rec


def measure(rounds, container, admin, alias, listen, target, limit, api_ok, samples, details):
    """The rounds: each kind once per round, in a rotating order."""
    for n in range(rounds):
        order = KINDS[n % 3:] + KINDS[:n % 3]
        for kind in order:
            if kind == "floor-api" and not api_ok:
                continue
            if kind == "floor-cli":
                d = floor_cli(container, target, limit)
            elif kind == "floor-api":
                d = floor_api(container, target, limit)
            else:
                d = through_dockward(listen, limit)
            samples[kind].append(d["ms"])
            details[kind].append(d)
            # Dockward puts it back to sleep after its idle_timeout (nobody is connected).
            wait_asleep(container, admin, alias, limit)
        print(f"wake round {n + 1}/{rounds}: "
              + ", ".join(f"{k} {samples[k][-1]:.1f} ms" for k in KINDS if samples[k]), file=sys.stderr)


def summarise(rec, samples, details, events, log_path):
    """Percentiles, the start calls' own times, the cuts at the engine's start events, and
    dockward's own wake figures, into `rec`."""
    for k in KINDS:
        xs = samples[k]
        if xs:
            rec[k] = {"p50_ms": statistics.median(xs), "p99_ms": percentile(xs, 99), "min_ms": min(xs), "n": len(xs)}
    for k in ("floor-cli", "floor-api"):
        if details[k]:
            rec[k]["start_p50_ms"] = statistics.median(d["start_ms"] for d in details[k])
            # Connect tries after the start call returned: 1 means redis listened by then.
            rec[k]["tries_max"] = max(d["tries"] for d in details[k])
            rec[k]["tries"] = [d["tries"] for d in details[k]]
    for k in KINDS:
        if k not in rec:
            continue
        cuts = [c for c in split_at_start(details[k], events) if c is not None]
        if cuts:
            rec[k]["to_start_event_p50_ms"] = statistics.median(c[0] for c in cuts)
            rec[k]["after_start_event_p50_ms"] = statistics.median(c[1] for c in cuts)
            rec[k]["cut"] = len(cuts)
        rec[k]["split_ms"] = [None if c is None else [round(c[0], 1), round(c[1], 1)]
                              for c in split_at_start(details[k], events)]
    inside = awake_times(log_path)[-len(samples["dockward"]):] if log_path else []
    if inside:
        rec["dockward"]["inside_p50_ms"] = statistics.median(inside)


def fmt(v):
    return "–" if v is None else f"{v:,.1f}"


def table(rec):
    """The markdown table of one `run` record."""
    out = []
    w = out.append
    d = rec.get("dockward", {})
    w(f"| from a sleeping container to the first reply byte, {rec['rounds']} rounds (ms) | p50 | p99 | min | "
      "p50 to the engine's `start` event | p50 from it to the reply | dockward p50 − this p50 |")
    w("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    names = {
        "floor-cli": "floor: `docker start` (CLI) + connect loop",
        "floor-api": "floor: engine API start + connect loop",
        "dockward": "dockward: connect to its port + PING",
    }
    for k in KINDS:
        r = rec.get(k)
        if not r:
            continue
        gap = "" if k == "dockward" or not d else f"{d['p50_ms'] - r['p50_ms']:+.1f}"
        w(f"| {names[k]} | {fmt(r['p50_ms'])} | {fmt(r['p99_ms'])} | {fmt(r['min_ms'])} | "
          f"{fmt(r.get('to_start_event_p50_ms'))} | {fmt(r.get('after_start_event_p50_ms'))} | {gap} |")
    cli = rec.get("floor-cli")
    if d and cli:
        gap = d["p50_ms"] - cli["p50_ms"]
        w(f"| issue 14 target: dockward p50 within 25 ms of the floor's | | | | | | "
          f"{'met' if gap <= 25 else 'missed'} ({gap:+.1f}) |")
    w("")
    parts = []
    for k, what in (("floor-cli", "`docker start` itself"), ("floor-api", "the API start call itself")):
        if rec.get(k, {}).get("start_p50_ms") is not None:
            parts.append(f"{what} took {fmt(rec[k]['start_p50_ms'])} ms (p50)")
    if d.get("inside_p50_ms") is not None:
        parts.append(f"dockward's own wake figure (its inspect, start and readiness wait: `took_ms` in its log) "
                     f"{fmt(d['inside_p50_ms'])} ms (p50)")
    tries = [rec[k]["tries_max"] for k in ("floor-cli", "floor-api") if rec.get(k, {}).get("tries_max")]
    if tries:
        parts.append(f"the floors' connect loop needed at most {max(tries)} tries after the start call returned")
    if parts:
        w("Of that: " + "; ".join(parts) + ".")
    return "\n".join(out) + "\n"


def main(argv):
    if len(argv) >= 3 and argv[1] == "ports":
        socks = []
        for _ in range(int(argv[2])):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        print(" ".join(str(s.getsockname()[1]) for s in socks))
        for s in socks:
            s.close()
        return 0
    if len(argv) >= 2 and argv[1] == "run":
        args = {}
        for a in argv[2:]:
            k, _, v = a.lstrip("-").partition("=")
            args[k] = v
        print(json.dumps(run(args)))
        return 0
    if len(argv) >= 3 and argv[1] == "table":
        with open(argv[2]) as f:
            sys.stdout.write(table(json.loads(f.readline())))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
