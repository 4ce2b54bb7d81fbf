#!/usr/bin/env python3
"""Helpers for bench/run.sh (stdlib only).

  report.py mem PGID              RSS and PSS summed over a process group, as one JSON object
  report.py iperf FILE            one iperf3 -J result reduced to {"bps": ...}
  report.py sockperf FILE         a sockperf ping-pong --full-rtt log reduced to p50/p99 (us)
  report.py strace FILE           an `strace -c` summary reduced to {"calls": {name: n}, "errors": {name: n}}
  report.py table RESULTS.jsonl   the markdown report (machine, table, details) on stdout

Each line of RESULTS.jsonl is {"target": ..., "scenario": ..., ...measurement fields...}.
"""

import json
import os
import platform
import re
import statistics
import subprocess
import sys
from datetime import datetime, timezone

from wake import table as wake_table

TARGETS = ["direct", "dockward", "haproxy", "nginx", "socat"]
PEERS = ["haproxy", "nginx", "socat"]


# ---------------------------------------------------------------- helpers for run.sh


def mem(pgid: int) -> dict:
    """VmRSS and Pss (kB) summed over every process in process group `pgid`."""
    rss = pss = procs = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
            # Fields after the command name (which may contain spaces) start at ") ".
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[2]) != pgid:  # state, ppid, pgrp
                continue
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss += int(line.split()[1])
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        pss += int(line.split()[1])
            procs += 1
        except (OSError, ValueError, IndexError):
            continue
    return {"rss_kb": rss, "pss_kb": pss, "procs": procs}


def iperf(path: str) -> dict:
    with open(path) as f:
        data = json.load(f)
    if "error" in data:
        return {"error": data["error"]}
    end = data["end"]
    received = end["sum_received"]
    return {
        "bps": received["bits_per_second"],
        "sent_bps": end["sum_sent"]["bits_per_second"],
        "duration_s": received.get("seconds"),
    }


def strace_summary(path: str) -> dict:
    """`strace -c -f` output: calls and errors per system call name."""
    calls, errors = {}, {}
    for line in open(path, errors="replace"):
        f = line.split()
        # % time, seconds, usecs/call, calls, [errors,] syscall
        if len(f) < 5 or not f[0][0].isdigit() or f[-1] == "total":
            continue
        try:
            calls[f[-1]] = int(f[3])
            if len(f) == 6:
                errors[f[-1]] = int(f[4])
        except ValueError:
            continue
    return {"calls": calls, "errors": errors}


def sockperf(path: str) -> dict:
    text = open(path, errors="replace").read()
    out = {}
    for key, pat in (("p50_us", r"percentile 50\.000 =\s*([\d.]+)"), ("p99_us", r"percentile 99\.000 =\s*([\d.]+)")):
        m = re.search(pat, text)
        if m:
            out[key] = float(m.group(1))
    return out if out else {"error": "no percentiles in sockperf output"}


# ---------------------------------------------------------------- the report


def load(path):
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    pass
    return rows


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=10).stdout.strip()
    except Exception:
        return ""


def machine():
    model = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_total = ""
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal:"):
                mem_total = f"{int(line.split()[1]) / 1048576:.1f} GiB"
    except OSError:
        pass
    commit = sh("git rev-parse --short=12 HEAD") or "unknown"
    if sh("git status --porcelain --untracked-files=no"):
        commit += " (with uncommitted changes)"
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "model": model,
        "memory": mem_total,
        "kernel": platform.release(),
        "commit": commit,
        "haproxy": sh("haproxy -v 2>/dev/null | head -1 | awk '{print $3}'"),
        "nginx": sh("nginx -v 2>&1 | sed 's|.*/||'"),
        "socat": sh("socat -V 2>/dev/null | sed -n 's/^socat version \\([^ ]*\\).*/\\1/p'"),
        "iperf3": sh("iperf3 --version 2>/dev/null | head -1 | awk '{print $2}'"),
        "sockperf": sh("sockperf --version 2>/dev/null | sed -n 's/.*version \\([^ ]*\\).*/\\1/p' | head -1"),
    }


class Metric:
    """One row: a value per target, which way is better, and how to show it."""

    def __init__(self, name, values, higher_better, fmt, kind="absolute", target_note=""):
        self.name, self.values, self.higher_better, self.fmt = name, values, higher_better, fmt
        self.kind, self.target_note = kind, target_note

    def best_peer(self):
        peers = [(t, self.values.get(t)) for t in PEERS if self.values.get(t) is not None]
        if not peers:
            return None, None
        pick = max if self.higher_better else min
        return pick(peers, key=lambda p: p[1])


def fmt_num(v, fmt):
    if v is None:
        return "–"
    return fmt.format(v)


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def build_metrics(rows):
    by = {}
    for r in rows:
        by.setdefault((r.get("scenario"), r.get("target")), []).append(r)

    def per_target(scenario, fn):
        out = {}
        for t in TARGETS:
            rs = by.get((scenario, t), [])
            v = fn(rs) if rs else None
            if v is not None:
                out[t] = v
        return out

    metrics = []
    # 1. bulk
    for streams in (1, 4):
        for reverse in (False, True):
            label = f"TCP bulk, {streams} stream{'s' if streams > 1 else ''}, {'target→client (-R)' if reverse else 'client→target'} (Gbit/s)"

            def f(rs, s=streams, rv=reverse):
                return median(
                    [r["bps"] / 1e9 for r in rs if r.get("streams") == s and r.get("reverse") == rv and "bps" in r]
                )

            metrics.append(Metric(label, per_target("bulk", f), True, "{:.2f}", target_note="≥ 0.85 × direct"))
    def gbit_per_cpu_second(rs):
        # Throughput per second of the proxy's own CPU time, over every bulk run: what the
        # proxy costs, apart from the cross-CPU wake-ups that cap every proxy's Gbit/s here.
        pairs = [(r.get("bps"), r.get("duration_s"), r.get("proxy_cpu_s")) for r in rs]
        return median([b * d / 1e9 / s for b, d, s in pairs if b and d and s])

    metrics.append(Metric("  bulk: Gbit moved per proxy CPU-second", per_target("bulk", gbit_per_cpu_second), True, "{:.1f}"))
    # 2. latency, per placement of the proxy: on the load CPU ("same") or its own ("split").
    for placement, where in (("same", "proxy on the load CPU"), ("split", "proxy on its own CPU")):
        def lat(key, p=placement):
            return per_target(
                "latency", lambda rs: median([r.get(key) for r in rs if r.get("placement", "split") == p])
            )

        lat50, lat99 = lat("p50_us"), lat("p99_us")
        if not lat50:
            continue
        metrics.append(Metric(f"TCP 64 B ping-pong p50, {where} (µs)", lat50, False, "{:.1f}"))
        metrics.append(Metric(f"TCP 64 B ping-pong p99, {where} (µs)", lat99, False, "{:.1f}"))
        if "direct" in lat50:
            add50 = {t: v - lat50["direct"] for t, v in lat50.items() if t != "direct"}
            add99 = {t: v - lat99["direct"] for t, v in lat99.items() if t != "direct" and "direct" in lat99}
            metrics.append(Metric("  added p50 over direct (µs)", add50, False, "{:+.1f}", kind="added"))
            metrics.append(
                Metric("  added p99 over direct (µs)", add99, False, "{:+.1f}", kind="added", target_note="≤ best peer")
            )
        sp = lambda key, p=placement: per_target(
            "sockperf", lambda rs: median([r.get(key) for r in rs if r.get("placement", "split") == p])
        )
        sp50, sp99 = sp("p50_us"), sp("p99_us")
        if sp50:
            metrics.append(Metric("  cross-check: sockperf RTT p50 / p99 (µs)", sp50, False, "{:.1f}", kind="pair"))
            metrics[-1].second = sp99
    # 3. churn
    cps = per_target("churn", lambda rs: median([r.get("conns_per_s") for r in rs]))
    c99 = per_target("churn", lambda rs: median([r.get("p99_us") for r in rs]))
    conc = next((r.get("concurrency") for r in rows if r.get("scenario") == "churn"), "N")
    metrics.append(
        Metric(f"Connection churn, {conc} concurrent (conns/s)", cps, True, "{:,.0f}", target_note="≥ 1.2 × best peer")
    )
    metrics.append(Metric("  churn p99 connection time (µs)", c99, False, "{:,.0f}"))

    def per_cpu_second(rs):
        # Connections per second of the proxy's own CPU time: the rate one CPU could carry,
        # which ranks proxies even when the load generator caps conns/s for all of them.
        pairs = [(r.get("conns"), r.get("proxy_cpu_s")) for r in rs]
        return median([c / s for c, s in pairs if c and s])

    cpu = per_target("churn", per_cpu_second)
    metrics.append(
        Metric(
            "  churn: connections per proxy CPU-second",
            cpu,
            True,
            "{:,.0f}",
            target_note="≥ 1.2 × best peer (the proxy's capacity)",
        )
    )

    def per_conn_of(key):
        def f(rs):
            return median([r[key] / r["conns"] for r in rs if r.get(key) is not None and r.get("conns")])

        return f

    sc = per_target("churn", per_conn_of("syscalls"))
    metrics.append(
        Metric(
            "  churn: system calls per connection (proxy, perf)",
            sc,
            False,
            "{:.1f}",
            target_note="≤ HAProxy (issue 17)",
        )
    )
    metrics.append(
        Metric("  churn: context switches per connection (proxy, perf)", per_target("churn", per_conn_of("cswitches")), False, "{:.3f}")
    )

    # 4. idle TCP, 5. UDP sessions: memory per connection / session
    def per_conn(rs, count_key, use_pss=False):
        r = rs[-1]
        n = r.get(count_key) or 0
        if n <= 0 or "before" not in r or "after" not in r:
            return None
        key = "pss_kb" if use_pss else "rss_kb"
        return (r["after"][key] - r["before"][key]) * 1024 / n

    idle = per_target("idle", lambda rs: per_conn(rs, "conns"))
    idle_pss = per_target("idle", lambda rs: per_conn(rs, "conns", True))
    idle_n = {t: by[("idle", t)][-1].get("conns") for t in TARGETS if ("idle", t) in by}
    metrics.append(
        Metric("Idle TCP: proxy RSS per connection (bytes)", idle, False, "{:,.0f}", target_note="≤ 2,048 B")
    )
    metrics.append(Metric("  same, PSS (shared pages split; fairer for socat's forks)", idle_pss, False, "{:,.0f}"))
    # 5. UDP rate
    for size in (64, 1400):
        v = per_target(
            "udp-search", lambda rs, s=size: median([r.get("best_pps") / 1000 for r in rs if r.get("size") == s])
        )
        metrics.append(
            Metric(
                f"UDP {size} B: highest rate under 0.1 % loss (kpps)",
                v,
                True,
                "{:,.0f}",
                target_note="≥ 2 × nginx",
            )
        )
    sess = per_target("udp-sessions", lambda rs: per_conn(rs, "sessions"))
    sess_pss = per_target("udp-sessions", lambda rs: per_conn(rs, "sessions", True))
    metrics.append(
        Metric("UDP sessions: proxy RSS per session (bytes)", sess, False, "{:,.0f}", target_note="≤ 512 B")
    )
    metrics.append(Metric("  same, PSS", sess_pss, False, "{:,.0f}"))
    return metrics, by, idle_n


def target_check(m: Metric):
    d = m.values.get("dockward")
    if d is None or not m.target_note:
        return ""
    note = m.target_note
    direct = m.values.get("direct")
    _, best = m.best_peer()
    if note.startswith("≥ 0.85 × direct") and direct:
        return f"{note}: {'met' if d >= 0.85 * direct else 'missed'}"
    if note == "≤ best peer" and best is not None:
        return f"{note}: {'met' if d <= best else 'missed'}"
    if note.startswith("≥ 1.2 × best peer") and best:
        return f"{note}: {'met' if d >= 1.2 * best else 'missed'}"
    if note.startswith("≥ 2 × nginx") and m.values.get("nginx"):
        return f"{note}: {'met' if d >= 2 * m.values['nginx'] else 'missed'}"
    if note.startswith("≤ HAProxy") and m.values.get("haproxy"):
        return f"{note}: {'met' if d <= m.values['haproxy'] else 'missed'} ({d / m.values['haproxy']:.2f} × HAProxy)"
    if note.startswith("≤ 2,048"):
        return f"{note}: {'met' if d <= 2048 else 'missed'}"
    if note.startswith("≤ 512"):
        return f"{note}: {'met' if d <= 512 else 'missed'}"
    return note


def table(path):
    rows = load(path)
    env = os.environ
    mach = machine()
    metrics, by, idle_n = build_metrics(rows)
    out = []
    w = out.append
    quick = env.get("BENCH_QUICK", "0") not in ("", "0")
    w("# dockward benchmark results" + (" (BENCH_QUICK smoke run: short runs, small counts)" if quick else ""))
    w("")
    w("Produced by `make bench` (bench/run.sh); loopback only, every figure from this one run.")
    w("")
    w("| machine | |")
    w("| --- | --- |")
    w(f"| date | {mach['date']} |")
    w(f"| commit | {mach['commit']} |")
    w(f"| CPU | {mach['nproc']} × {mach['model']} |")
    w(f"| memory | {mach['memory']} |")
    w(f"| kernel | {mach['kernel']} |")
    w(
        f"| peers | HAProxy {mach['haproxy']}, nginx {mach['nginx']}, socat {mach['socat']}; "
        f"iperf3 {mach['iperf3']}, sockperf {mach['sockperf']} |"
    )
    w(f"| pinning | {env.get('BENCH_PINNING', 'none')} |")
    w("")
    w(
        "Ratios: **dockward / direct** and **dockward / best peer** (best of HAProxy, nginx, socat in the "
        "row's direction). ↑ higher is better, ↓ lower is better. `–`: not measured or not supported."
    )
    w("")
    w("| metric | | direct | dockward | HAProxy | nginx | socat | dockward / direct | dockward / best peer | issue 5 target |")
    w("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for m in metrics:
        if not m.values:
            continue
        if m.kind == "pair":
            cells = [
                "–" if m.values.get(t) is None else f"{fmt_num(m.values.get(t), m.fmt)} / {fmt_num(m.second.get(t), m.fmt)}"
                for t in TARGETS
            ]
            w(f"| {m.name} | ↓ | " + " | ".join(cells) + " | – | – | |")
            continue
        cells = [fmt_num(m.values.get(t), m.fmt) for t in TARGETS]
        d = m.values.get("dockward")
        r_direct = ratio(d, m.values.get("direct")) if m.kind == "absolute" else None
        bt, bv = m.best_peer()
        r_best = ratio(d, bv) if bv not in (None, 0) else None
        rd = f"{r_direct:.2f}" if r_direct is not None else "–"
        if m.kind == "added" and d is not None and bv is not None:
            rb = f"{d - bv:+.1f} µs vs {bt}"
        else:
            rb = f"{r_best:.2f} ({bt})" if r_best is not None else "–"
        arrow = "↑" if m.higher_better else "↓"
        w(f"| {m.name} | {arrow} | " + " | ".join(cells) + f" | {rd} | {rb} | {target_check(m)} |")
    w("")

    # Route churn (dockward only).
    ra = by.get(("route-apply", "dockward"), [])
    rc = by.get(("route-churn", "dockward"), [])
    base = by.get(("route-churn-baseline", "dockward"), [])
    during = by.get(("route-churn-stream", "dockward"), [])
    ap = by.get(("apply-probe", "dockward"), [])
    w("## Route churn (dockward only)")
    w("")
    if ap:
        r = ap[-1]
        f1 = lambda k: fmt_num(r.get(k), "{:.2f}")
        w("proxy-core in process (bench/apply-probe: `RouteTable::apply` called → port accepting, no file watcher):")
        w("")
        w("| measure | value |")
        w("| --- | ---: |")
        w(f"| apply of one new route → accepting, p50 / max over {r['edits']} (ms) | "
          f"{f1('add_accepting_p50_ms')} / {f1('add_accepting_max_ms')} |")
        w(f"| apply removing it → refusing, p50 / max (ms) | {f1('remove_refusing_p50_ms')} / {f1('remove_refusing_max_ms')} |")
        w(f"| apply of {r['bulk']} routes at once: apply returns / all sampled ports accepting (ms) | "
          f"{f1('bulk_add_apply_ms')} / {f1('bulk_add_accepting_ms')} |")
        w(f"| apply removing them: returns / all refusing (ms) | {f1('bulk_remove_apply_ms')} / {f1('bulk_remove_refusing_ms')} |")
        if r.get("failures"):
            w(f"| failed routes or time-outs | {r['failures']} |")
        d = r.get("add_accepting_p50_ms")
        if d is not None:
            w(f"| issue 5 target: apply → accepting ≤ 10 ms | {'met' if d <= 10 else 'missed'} |")
        w("")
        w("Through the binary (a routes-file edit, seen by its file watcher):")
        w("")
    if ra or rc:
        w("| measure | value |")
        w("| --- | ---: |")
        for r in ra:
            w(f"| routes-file edit → new port accepting, p50 / max over {r['edits'] // 2} edits (ms) | "
              f"{fmt_num(r.get('add_p50_ms'), '{:.1f}')} / {fmt_num(r.get('add_max_ms'), '{:.1f}')} |")
            w(f"| routes-file edit → removed port refusing, p50 / max (ms) | "
              f"{fmt_num(r.get('remove_p50_ms'), '{:.1f}')} / {fmt_num(r.get('remove_max_ms'), '{:.1f}')} |")
            if r.get("timeouts"):
                w(f"| edits that timed out | {r['timeouts']} |")
        for r in rc:
            w(f"| {r['routes']} routes added in one edit → all sampled ports accepting, p50 / max (ms) | "
              f"{fmt_num(r.get('add_all_p50_ms'), '{:,.0f}')} / {fmt_num(r.get('add_all_max_ms'), '{:,.0f}')} |")
            w(f"| same {r['routes']} removed → all refusing, p50 / max (ms) | "
              f"{fmt_num(r.get('remove_all_p50_ms'), '{:,.0f}')} / {fmt_num(r.get('remove_all_max_ms'), '{:,.0f}')} |")
            w(f"| add/remove cycles during the stream (timeouts) | {r['cycles']} ({r.get('timeouts', 0)}) |")
        if base and during and "bps" in base[-1] and "bps" in during[-1]:
            b, d = base[-1]["bps"] / 1e9, during[-1]["bps"] / 1e9
            w(f"| long TCP stream alone (Gbit/s) | {b:.2f} |")
            w(f"| same stream while the routes churn (Gbit/s) | {d:.2f} ({d / b:.2f} × alone) |")
        w("")
        w("")
        w("Through a routes file the time includes the file provider's debounce (it re-reads the file once the "
          "directory has been quiet for a while), which is why it sits well above the in-process figure.")
    else:
        w("Not measured in this run (see notes).")
    w("")

    # System calls by name during churn (strace -c, a separate short round per proxy).
    st = {t: by[("syscalls", t)][-1] for t in TARGETS if ("syscalls", t) in by}
    if st:
        w("## System calls per churn connection, by name")
        w("")
        w("`strace -c -f` attached to each proxy during one short churn round of its own (strace slows the proxy, "
          "so these rounds are not in the rates above); calls per connection, errors (EAGAIN, EINPROGRESS) in "
          "brackets.")
        w("")
        names = sorted({n for r in st.values() for n in r.get("calls", {})},
                       key=lambda n: -max(r.get("calls", {}).get(n, 0) / max(r.get("conns", 1), 1) for r in st.values()))
        display = {"direct": "direct", "dockward": "dockward", "haproxy": "HAProxy", "nginx": "nginx", "socat": "socat"}
        w("| system call | " + " | ".join(display.get(t, t) for t in st) + " |")
        w("| --- | " + " | ".join("---:" for _ in st) + " |")
        for n in names:
            cells = []
            for r in st.values():
                c, e, k = r.get("calls", {}).get(n, 0), r.get("errors", {}).get(n, 0), max(r.get("conns", 1), 1)
                cells.append("–" if c == 0 else f"{c / k:.2f}" + (f" ({e / k:.2f})" if e else ""))
            if all(x == "–" or float(x.split()[0]) < 0.005 for x in cells):
                continue
            w(f"| {n} | " + " | ".join(cells) + " |")
        totals = [f"**{sum(r.get('calls', {}).values()) / max(r.get('conns', 1), 1):.1f}**" for r in st.values()]
        w("| total | " + " | ".join(totals) + " |")
        w("| connections traced | " + " | ".join(f"{r.get('conns', 0):,}" for r in st.values()) + " |")
        w("")

    # Wake from idle sleep (bench/wake.sh, needs Docker).
    wk = by.get(("wake", "dockward"), [])
    if wk:
        w("## Wake from idle sleep (issue 14)")
        w("")
        w("bench/wake.sh: one host-network redis container (the host's redis-server in the test image), asleep "
          "(stopped by dockward after `idle_timeout=1s`); from the stopped container to the first byte of the "
          "reply to one `PING`, in interleaved rounds (rotating order): `docker start` + a connect loop "
          "(1 ms retries) straight to redis, the engine API's start + the same loop, and one client at "
          "dockward's port (held while dockward starts the container and waits until redis accepts).")
        w("")
        w(wake_table(wk[-1]))

    # The access log's cost (bench/access-log.sh).
    al = by.get(("access-log", "dockward"), [])
    if al and "rate_ratio" in al[-1]:
        a = al[-1]
        verdict = "met" if a["rate_ratio"] >= 0.95 else "missed"
        w("## Access log cost (issue 16)")
        w("")
        w("bench/access-log.sh: connection churn through two dockward processes serving the same echo server, "
          "one writing its access log to a file (text), one without, in interleaved rounds; medians.")
        w("")
        w("| | off | on | on / off |")
        w("| --- | ---: | ---: | ---: |")
        w(f"| churn conns/s | {a['rate_off']:,.0f} | {a['rate_on']:,.0f} | {a['rate_ratio']:.3f} |")
        if "cpu_ratio" in a:
            w(f"| proxy CPU ms per 1,000 connections | {a['cpu_off']:.1f} | {a['cpu_on']:.1f} | {a['cpu_ratio']:.3f} |")
        w("")
        w(f"Target: churn with the access log on within 5 % of off: **{verdict}**"
          f" ({a.get('lines', 0):,} lines written).")
        w("")

    # Notes: setup and anything skipped.
    w("## What ran")
    w("")
    w(f"- Durations and counts: {env.get('BENCH_PARAMS', '')}.")
    if idle_n:
        w("- Idle connections held per target: " + ", ".join(f"{t} {n:,}" for t, n in idle_n.items() if n is not None)
          + " (socat forks one process per connection, so it is held to fewer; its per-connection figure is a "
          "whole process).")
    w("- HAProxy: `mode tcp`, `option splice-auto`, `nbthread 1`, no logging. nginx: stream module, "
      "`worker_processes 1`, no access log. socat: one `fork` listener per port (TCP and UDP), `nodelay`. "
      "dockward: `run --no-docker --log-level warn` with a routes file (pinned to one CPU, its tokio "
      "runtime starts one worker).")
    w("- Bulk: iperf3 through each target's TCP port; Gbit/s received; the median of the runs, which are "
      "interleaved across targets so background load spreads evenly.")
    w("- Ping-pong: loadgen, one connection, 64 bytes out, wait for all 64 back, for the duration; median over "
      "rounds of each round's p50/p99. 'Proxy on the load CPU': the proxy is moved (taskset) onto the client's "
      "CPU for this test, so no cross-CPU wake-up is timed (steadier on a VM); 'on its own CPU' is the same "
      "placement as the throughput tests.")
    w("- Churn: loadgen, N tasks each looping connect → 1 byte → echo → half-close → EOF; a sample is one whole "
      "connection lifetime. 'Connections per proxy CPU-second': the connections of a round divided by the "
      "user + system CPU time the proxy's processes (with socat's reaped forks) used during it, from "
      "/proc/PID/stat; when the one-CPU load generator caps conns/s for every target, this is what still "
      "ranks the proxies: the rate one CPU of proxy could carry. 'System calls per connection': every system "
      "call the proxy's processes entered during the same rounds (perf stat, the raw_syscalls:sys_enter "
      "tracepoint: counted in the kernel, without slowing the proxy), divided by the connections; "
      "not for socat, whose forks are new processes.")
    w("- Bulk per CPU-second: bytes moved over the proxy's CPU time in the same iperf3 runs, median over all "
      "four bulk configurations.")
    w("- UDP rate: one client socket (one proxy session) sends paced datagrams with sequence numbers; a step "
      "passes when < 0.1 % of them come back missing and the sender kept up; the rate doubles from 10 kpps until "
      "a step fails, then bisects.")
    w("- UDP sessions: one client socket per session, one datagram and its echo each, then held.")
    w("- Memory: VmRSS (and PSS) summed over the proxy's process group, after minus before the connections were "
      "opened (fresh proxy per memory test), divided by the count. User space only: kernel socket buffers are "
      "not in RSS.")
    w("- HAProxy 2.6 has no UDP proxying, so its UDP cells are empty.")
    notes = [r for r in rows if r.get("scenario") == "note"]
    for r in notes:
        w(f"- {r.get('target')}: {r.get('message')}")
    w("")
    w("Raw measurements of the last run: bench/out/results.jsonl (not committed).")
    return "\n".join(out) + "\n"


def main(argv):
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    cmd, arg = argv[1], argv[2]
    if cmd == "mem":
        print(json.dumps(mem(int(arg))))
    elif cmd == "iperf":
        try:
            print(json.dumps(iperf(arg)))
        except (OSError, ValueError, KeyError) as e:
            print(json.dumps({"error": f"unreadable iperf3 output: {e}"}))
    elif cmd == "sockperf":
        print(json.dumps(sockperf(arg)))
    elif cmd == "strace":
        print(json.dumps(strace_summary(arg)))
    elif cmd == "table":
        sys.stdout.write(table(arg))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
