#!/usr/bin/env python3
"""Markdown report of a benches/compare.sh run: compare_report.py DIR [REPS DURATION]."""

import json
import statistics
import sys
from collections import defaultdict

out = sys.argv[1]
reps = sys.argv[2] if len(sys.argv) > 2 else "?"
duration = sys.argv[3] if len(sys.argv) > 3 else "?"
candidate = sys.argv[4] if len(sys.argv) > 4 else None
SERVERS = ["mioket"] + (["candidate"] if candidate else []) + ["fastwebsockets", "tungstenite", "tcp"]
NAMES = {"mioket": "mioket", "candidate": "candidate", "fastwebsockets": "fastwebsockets", "tungstenite": "tokio-tungstenite", "tcp": "plain TCP"}

runs = defaultdict(list)  # (id, server) -> [result]
for line in open(f"{out}/results.jsonl"):
    line = line.strip()
    if line:
        r = json.loads(line)
        runs[(r["id"], r["server"])].append(r["result"])

counts = {}  # (tool, id, server) -> per-unit value
for line in open(f"{out}/counts.jsonl"):
    line = line.strip()
    if not line:
        continue
    c = json.loads(line)
    dn = c["n1"] - c["n2"]
    if dn > 0:
        counts[(c["tool"], c["id"], c["server"])] = (c["v1"] - c["v2"]) / dn


# Correctness counts: the worst run is quoted, not the median.
WORST = {"misroutes", "gaps", "reordered"}


def value(r, key):
    """A field of a result; loadgen_busy_pct is derived (load generator CPU over wall time)."""
    if key == "loadgen_busy_pct":
        return 100 * r["loadgen_cpu_s"] / r["seconds"] if r.get("loadgen_cpu_s") is not None and r.get("seconds") else None
    if key == "server_busy_pct":
        return 100 * r["server_cpu_s"] / r["seconds"] if r.get("server_cpu_s") is not None and r.get("seconds") else None
    if key == "rss_end_mib":
        return r["rss_end"] / 2**20 if r.get("rss_end") is not None else None
    if key == "compressed_pct":
        return 100 * r["compressed"] / r["deliveries"] if r.get("compressed") is not None and r.get("deliveries") else None
    return r.get(key)


def median(id_, server, key):
    vals = [v for v in (value(r, key) for r in runs.get((id_, server), [])) if v is not None]
    if not vals:
        return None
    return max(vals) if key in WORST else statistics.median(vals)


def nreps(id_):
    return max((len(runs.get((id_, s), [])) for s in SERVERS), default=0)


def fmt(v, digits=None):
    if v is None:
        return "–"
    if digits is None:
        digits = 0 if abs(v) >= 100 else (1 if abs(v) >= 10 else 2)
    return f"{v:,.{digits}f}"


def ratio(a, b):
    if a is None or b is None or b == 0:
        return "–"
    return f"{a / b:.2f}x"


LABELS = {
    "echo_20": "echo, 100 conns x 20 B",
    "echo_1024": "echo, 100 conns x 1 KiB",
    "echo_65536": "echo, 100 conns x 64 KiB",
    "bcast_100x1": "broadcast, 100 subscribers, 1 publisher",
    "bcast_100x10": "broadcast, 100 subscribers, 10 publishers",
    "bcast_1000x1": "broadcast, 1,000 subscribers, 1 publisher",
    "bcast_1000x10": "broadcast, 1,000 subscribers, 10 publishers",
    "bcast_10000x1": "broadcast, 10,000 subscribers, 1 publisher",
    "bcast_10000x10": "broadcast, 10,000 subscribers, 10 publishers",
    "rooms_1000x10": "rooms, 1,000 rooms x 10 members, 10 publishers x 10 in flight",
    "rooms_1000x10_w1000": "rooms, 1,000 rooms x 10 members, 10 publishers x 1,000 in flight (saturating)",
    "connect": "connect (open, upgrade, close), 64 in flight",
    "idle_10000": "idle, 10,000 connections",
    "idle_max": "idle, as many connections as the fd limit allows",
    "idle_rooms_10000": "idle, 10,000 connections in 1,000 rooms",
    "idle_room1_10000": "idle, 10,000 connections in one room",
    "empty_rooms": "empty rooms: 10,000 made and left",
}
ORDER = list(LABELS)

METRICS = {
    "echo": [("msgs_per_s", "messages/s"), ("p99_us", "round trip p99 (us)"), ("server_cpu_us_per_msg", "server CPU us/message")],
    "bcast": [
        ("deliveries_per_s", "deliveries/s"),
        ("p50_us", "delivery latency p50 (us)"),
        ("p99_us", "delivery latency p99 (us)"),
        ("server_cpu_us_per_delivery", "server CPU us/delivery"),
    ],
    "rooms": [
        ("deliveries_per_s", "deliveries/s"),
        ("p50_us", "delivery latency p50 (us)"),
        ("p99_us", "delivery latency p99 (us)"),
        ("server_cpu_us_per_delivery", "server CPU us/delivery"),
        ("loadgen_busy_pct", "load generator CPU (% of a core)"),
        ("misroutes", "misroutes (worst run)"),
        ("gaps", "lost in a room (worst run)"),
    ],
    "empty": [("rooms", "rooms made"), ("rss_per_room", "RSS B/room after a warm-up"), ("rss_per_room_cold", "RSS B/room from a fresh start")],
    "connect": [("handshakes_per_s", "handshakes/s"), ("p99_us", "upgrade p99 (us)"), ("server_cpu_us_per_handshake", "server CPU us/handshake")],
    "idle": [("opened", "connections held"), ("rss_per_conn_open", "RSS B/conn just after opening"), ("rss_per_conn_end", "RSS B/conn at the end of the hold")],
}

print(f"## mioket compared (medians of {reps} alternating runs of the core workloads, {duration} s each)\n")
print("Servers pinned to CPU 0, load generator to CPU 1. Plain TCP is a mio relay without WebSocket")
print("(load generator in --raw mode): the ceiling of the kernel and the load generator.")
print("Rooms: mioket in broadcast mode (rooms by path), the peers with --mode rooms (a tokio")
print("broadcast channel per path); plain TCP has no path. Idle in rooms: the same servers, each")
print("connection to /room-<n % rooms>. Empty rooms (mioket only; the peers drop a room with its")
print("last member): RSS growth over 10,000 open-upgrade-close cycles each to a room of its own,")
print("after 10,000 to one room.\n")
if candidate:
    print(f"candidate: {candidate} (a second mioket build, same flags).\n")
print("| workload | measure | " + " | ".join(NAMES[s] for s in SERVERS) + " | mioket / fastwebsockets |")
print("|---|---|" + "---|" * len(SERVERS) + "---|")
for id_ in ORDER:
    if not any((id_, s) in runs for s in SERVERS):
        continue
    kind = id_.split("_")[0]
    label = LABELS[id_] + (f" ({nreps(id_)} runs)" if nreps(id_) > 1 else "")
    if id_ == "idle_max":
        held = median(id_, "mioket", "conns")
        label = f"idle, {int(held):,} connections (fd limit)" if held else label
    for key, what in METRICS[kind]:
        vals = {s: median(id_, s, key) for s in SERVERS}
        digits = 0 if key in WORST or key == "rooms" else None
        cells = " | ".join(fmt(vals[s], digits) for s in SERVERS)
        print(f"| {label} | {what} | {cells} | {ratio(vals['mioket'], vals['fastwebsockets'])} |")
        label = ""

TLS_LABELS = {
    "tls_echo_20": "echo, 100 conns x 20 B",
    "tls_bcast_1000x1": "broadcast, 1,000 subscribers, 1 publisher",
    "tls_bcast_1000x10": "broadcast, 1,000 subscribers, 10 publishers",
    "tls_idle_10000": "idle, 10,000 connections",
}
TLS_METRICS = {
    "echo": [("msgs_per_s", "messages/s"), ("p99_us", "round trip p99 (us)"), ("server_cpu_us_per_msg", "server CPU us/message")],
    "bcast": [
        ("deliveries_per_s", "deliveries/s"),
        ("p99_us", "delivery latency p99 (us)"),
        ("server_cpu_us_per_delivery", "server CPU us/delivery"),
        ("loadgen_busy_pct", "load generator CPU (% of a core)"),
    ],
    "idle": [("opened", "connections held"), ("rss_per_conn_end", "RSS B/conn at the end of the hold")],
}
if any(id_.startswith("tls_") for id_, _ in runs):
    print("\n## TLS (wss://): each server plain and over TLS in the same rotation\n")
    print("mioket with --tls-cert/--tls-key (rustls 0.23, ring); tokio-tungstenite over tokio-rustls")
    print("(tt-tls-server, the same rustls and provider). A P-256 certificate made for the run; the")
    print("load generator (rustls client) checks it.\n")
    print("| workload | measure | mioket ws | mioket wss | wss / ws | tokio-tungstenite ws | tokio-tungstenite wss | wss / ws | mioket wss / tokio-tungstenite wss |")
    print("|---|---|---|---|---|---|---|---|---|")
    for id_, label in TLS_LABELS.items():
        if not any((id_, s) in runs for s in ("mioket-tls", "tungstenite-tls")):
            continue
        n = max(len(runs.get((id_, s), [])) for s in ("mioket", "mioket-tls", "tungstenite", "tungstenite-tls"))
        label += f" ({n} runs)" if n > 1 else ""
        for key, what in TLS_METRICS[id_.split("_")[1]]:
            m, mt, t, tt = (median(id_, s, key) for s in ("mioket", "mioket-tls", "tungstenite", "tungstenite-tls"))
            print(f"| {label} | {what} | {fmt(m)} | {fmt(mt)} | {ratio(mt, m)} | {fmt(t)} | {fmt(tt)} | {ratio(tt, t)} | {ratio(mt, tt)} |")
            label = ""

# Backplane: per-run counters of the nodes (their /metrics) and of Redis (INFO), by (id, server).
backplane = defaultdict(list)
try:
    for line in open(f"{out}/backplane.jsonl"):
        if line.strip():
            b = json.loads(line)
            backplane[(b["id"], b["server"])].append(b)
except FileNotFoundError:
    pass


def bp_median(id_, server, f):
    """Median over runs of f(run), a value derived from one run's counters (None skipped)."""
    vals = []
    for b in backplane.get((id_, server), []):
        try:
            v = f(b)
        except (KeyError, TypeError, ZeroDivisionError):
            v = None
        if v is not None:
            vals.append(v)
    return statistics.median(vals) if vals else None


def bp_sum(b, key):
    return sum(n[key] for n in b["nodes"])


BP_LABELS = {"backplane_100x10": "broadcast, 100 subscribers, 10 publishers", "backplane_1000x10": "broadcast, 1,000 subscribers, 10 publishers"}
BP_SERVERS = ("mioket", "mioket-redis", "mioket-redis2")
if any((id_, s) in runs for id_ in BP_LABELS for s in BP_SERVERS[1:]):
    print("\n## Backplane: one node without Redis, one node with --redis, two nodes with --redis (--reuse-port)\n")
    print("mioket --welcome '' (history 100, so each publish also XADDs to the room's stream); a")
    print("redis-server 7 started for the run (no persistence), flushed before each run. The nodes and")
    print("Redis share CPU 0, the load generator has CPU 1 (their CPU: from the load generator's start to")
    print("its end, set-up included). Round trips and commands from the nodes'")
    print("/metrics (summed over the nodes, whole run), script calls and their time from Redis's INFO.\n")
    print("| workload | measure | one node | one node + Redis | two nodes + Redis |")
    print("|---|---|---|---|---|")
    for id_, label in BP_LABELS.items():
        if not any((id_, s) in runs for s in BP_SERVERS):
            continue
        n = max(len(runs.get((id_, s), [])) for s in BP_SERVERS)
        label += f" ({n} runs)" if n > 1 else ""
        d = [median(id_, s, "deliveries_per_s") for s in BP_SERVERS]
        p50 = [median(id_, s, "p50_us") for s in BP_SERVERS]
        p99 = [median(id_, s, "p99_us") for s in BP_SERVERS]
        busy = [median(id_, s, "loadgen_busy_pct") for s in BP_SERVERS]
        rows = [
            ("deliveries/s", [fmt(v) for v in d]),
            ("deliveries/s against one node", ["1.00x"] + [ratio(v, d[0]) for v in d[1:]]),
            ("delivery latency p50 (us)", [fmt(v) for v in p50]),
            ("delivery latency p99 (us)", [fmt(v) for v in p99]),
            ("added p99 against one node (us)", ["–"] + [fmt(None if v is None or p99[0] is None else v - p99[0]) for v in p99[1:]]),
            ("load generator CPU (% of a core)", [fmt(v) for v in busy]),
            ("nodes + Redis CPU (% of a core)", [fmt(bp_median(id_, s, lambda b: b["servers_cpu_pct"])) for s in BP_SERVERS]),
            ("CPU 0 / CPU 1 busy, every process of the machine (%)", [f"{fmt(bp_median(id_, s, lambda b: b['cpu0_busy_pct']))} / {fmt(bp_median(id_, s, lambda b: b['cpu1_busy_pct']))}" for s in BP_SERVERS]),
        ]
        bp_rows = [
            ("Redis round trips per published message", lambda b: bp_sum(b, "round_trips") / bp_sum(b, "publishes"), 3),
            ("commands sent per published message", lambda b: bp_sum(b, "commands") / bp_sum(b, "publishes"), 3),
            ("EVALSHA calls in Redis per published message", lambda b: b["redis"]["cmdstat_evalsha"]["calls"] / bp_sum(b, "publishes"), 3),
            ("mean round trip (us)", lambda b: 1e6 * bp_sum(b, "rtt_sum_s") / bp_sum(b, "round_trips"), None),
            ("Redis time per script call (us)", lambda b: b["redis"]["cmdstat_evalsha"]["usec"] / b["redis"]["cmdstat_evalsha"]["calls"], None),
            ("publishes refused (worst run)", None, 0),
        ]
        for what, f, digits in bp_rows:
            if f is None:
                vals = [max((bp_sum(b, "refused") for b in backplane.get((id_, s), [])), default=None) for s in BP_SERVERS[1:]]
            else:
                vals = [bp_median(id_, s, f) for s in BP_SERVERS[1:]]
            rows.append((what, ["–"] + [fmt(v, digits) for v in vals]))
        for what, cells in rows:
            print(f"| {label} | {what} | " + " | ".join(cells) + " |")
            label = ""

DEFLATE_LABELS = {
    "deflate_json_1000x10": "broadcast, 1,000 subscribers, 10 publishers, JSON documents of 1-16 KiB",
    "deflate_chat_1000x10": "broadcast, 1,000 subscribers, 10 publishers, chat lines of 60-200 B",
}
DEFLATE_SERVERS = ["mioket", "mioket-nodeflate", "mioket-min0", "node-ws", "python-websockets"]
DEFLATE_NAMES = {
    "mioket": "mioket (shared)",
    "mioket-nodeflate": "mioket --deflate off",
    "mioket-min0": "mioket --deflate-min-size 0",
    "node-ws": "Node ws (perMessageDeflate)",
    "python-websockets": "Python websockets",
}
DEFLATE_METRICS = [
    ("deliveries_per_s", "deliveries/s", None),
    ("server_cpu_us_per_delivery", "server CPU us/delivery", None),
    ("server_busy_pct", "server CPU (% of a core)", None),
    ("p50_us", "delivery latency p50 (us)", None),
    ("p99_us", "delivery latency p99 (us)", None),
    ("ratio", "bytes on the wire / payload bytes", 3),
    ("compressed_pct", "deliveries that came compressed (%)", None),
    ("rss_end_mib", "server RSS at the end (MiB)", 1),
    ("loadgen_busy_pct", "load generator CPU (% of a core)", None),
    ("bad_payloads", "payloads not as sent (worst run)", 0),
]
WORST.add("bad_payloads")
if any(id_.startswith("deflate_") for id_, _ in runs):
    print("\n## permessage-deflate: compressed broadcast\n")
    print("mioket-load --deflate (offers permessage-deflate; client_no_context_takeover;")
    print("client_max_window_bits, inflates what comes compressed, compresses what it publishes) with")
    print("--corpus json or chat; a 2 s warm-up, then a window that counts what arrives in it. mioket in")
    print("shared mode (no context takeover, one compression per message for every recipient, messages")
    print("under 256 B plain); Node ws 8 and Python websockets compress per connection with context")
    print("takeover. Bytes on the wire: frame bytes (headers included) over inflated payload bytes.\n")
    present = [s for s in DEFLATE_SERVERS if any((id_, s) in runs for id_ in DEFLATE_LABELS)]
    print("| workload | measure | " + " | ".join(DEFLATE_NAMES[s] for s in present) + " | mioket / Node ws | mioket / Python websockets |")
    print("|---|---|" + "---|" * len(present) + "---|---|")
    for id_, label in DEFLATE_LABELS.items():
        if not any((id_, s) in runs for s in present):
            continue
        n = max(len(runs.get((id_, s), [])) for s in present)
        label += f" ({n} runs)" if n > 1 else ""
        for key, what, digits in DEFLATE_METRICS:
            vals = {s: median(id_, s, key) for s in present}
            cells = " | ".join(fmt(vals[s], digits) if (id_, s) in runs else "" for s in present)
            m = vals.get("mioket")
            r = [ratio(m, vals.get(p)) if key == "deliveries_per_s" else "" for p in ("node-ws", "python-websockets")]
            print(f"| {label} | {what} | {cells} | {r[0]} | {r[1]} |")
            label = ""

if counts:
    print("\n## Counts (deterministic: difference of two runs with different message counts)\n")
    print("| measure | " + " | ".join(NAMES[s] for s in SERVERS) + " | mioket / fastwebsockets |")
    print("|---|" + "---|" * len(SERVERS) + "---|")
    rows = [
        ("callgrind", "echo_20", "user-space instructions per echoed 20 B message"),
        ("callgrind", "echo_65536", "user-space instructions per echoed 64 KiB message"),
        ("callgrind", "bcast_1000x1", "user-space instructions per delivery (1,000 subscribers)"),
        ("callgrind", "connect", "user-space instructions per handshake (open, upgrade, close)"),
        ("strace", "echo_20", "syscalls per echoed 20 B message"),
        ("strace", "echo_65536", "syscalls per echoed 64 KiB message"),
        ("strace", "bcast_1000x10", "syscalls per delivery (1,000 subscribers, 10 publishers)"),
        ("callgrind", "rooms_100x10", "user-space instructions per delivery (rooms, 100 x 10 members)"),
        ("strace", "rooms_1000x10", "syscalls per delivery (rooms, 1,000 x 10 members)"),
    ]
    for tool, id_, what in rows:
        vals = {s: counts.get((tool, id_, s)) for s in SERVERS}
        if not any(v is not None for v in vals.values()):
            continue
        digits = 3 if tool == "strace" else None
        cells = " | ".join(fmt(vals[s], digits) for s in SERVERS)
        print(f"| {what} | {cells} | {ratio(vals['mioket'], vals['fastwebsockets'])} |")


def target(name, measured, goal, met):
    state = "–" if met is None else ("met" if met else "**missed**")
    print(f"| {name} | {measured} | {goal} | {state} |")


print("\n## Targets\n")
print("| target | measured | goal | |")
print("|---|---|---|---|")
m, f = counts.get(("callgrind", "echo_20", "mioket")), counts.get(("callgrind", "echo_20", "fastwebsockets"))
target("echo 20 B: instructions/message", f"{fmt(m)} vs {fmt(f)} ({ratio(m, f)})", "<= 0.5x fastwebsockets", None if m is None or f is None else m <= 0.5 * f)
m, f = counts.get(("strace", "echo_20", "mioket")), counts.get(("strace", "echo_20", "fastwebsockets"))
target("echo 20 B: syscalls/message", f"{fmt(m, 3)} vs {fmt(f, 3)}", "<= fastwebsockets", None if m is None or f is None else m <= f)
m, t = median("echo_20", "mioket", "msgs_per_s"), median("echo_20", "tcp", "msgs_per_s")
target("echo 20 B: messages/s vs plain TCP", f"{fmt(m)} vs {fmt(t)} ({ratio(m, t)})", ">= 0.95x plain TCP", None if m is None or t is None else m >= 0.95 * t)
m, f = median("echo_65536", "mioket", "server_cpu_us_per_msg"), median("echo_65536", "fastwebsockets", "server_cpu_us_per_msg")
target("echo 64 KiB: server CPU/message", f"{fmt(m)} us vs {fmt(f)} us ({ratio(m, f)})", "<= 0.8x fastwebsockets", None if m is None or f is None else m <= 0.8 * f)
for pubs, goal in (("1", 1.3), ("10", 2.0)):
    m, f = median(f"bcast_1000x{pubs}", "mioket", "deliveries_per_s"), median(f"bcast_1000x{pubs}", "fastwebsockets", "deliveries_per_s")
    target(f"broadcast 1,000 x {pubs} publisher(s): deliveries/s", f"{fmt(m)} vs {fmt(f)} ({ratio(m, f)})", f">= {goal}x fastwebsockets", None if m is None or f is None else m >= goal * f)
for pubs in ("1", "10"):
    id_ = f"bcast_1000x{pubs}"
    m = median(id_, "mioket", "p99_us")
    peers = {s: median(id_, s, "p99_us") for s in ("fastwebsockets", "tungstenite")}
    shown = ", ".join(f"{NAMES[s]} {fmt(v)}" for s, v in peers.items())
    ok = None if m is None or any(v is None for v in peers.values()) else all(m < v for v in peers.values())
    target(f"broadcast 1,000 x {pubs}: p99 delivery latency", f"{fmt(m)} us vs {shown}", "lower than every peer", ok)
m, f = counts.get(("callgrind", "connect", "mioket")), counts.get(("callgrind", "connect", "fastwebsockets"))
target("handshake: instructions/handshake", f"{fmt(m)} vs {fmt(f)} ({ratio(m, f)})", "<= 0.5x fastwebsockets", None if m is None or f is None else m <= 0.5 * f)
for id_ in ("idle_10000", "idle_max"):
    m = median(id_, "mioket", "rss_per_conn_end")
    held = median(id_, "mioket", "opened")
    if m is not None:
        target(f"idle memory, {int(held):,} connections", f"{fmt(m)} B/conn", "<= 256 B RSS/conn", m <= 256)
id_ = "rooms_1000x10"
m, f = median(id_, "mioket", "deliveries_per_s"), median(id_, "fastwebsockets", "deliveries_per_s")
if m is not None:
    target("rooms 1,000 x 10: deliveries/s", f"{fmt(m)} vs {fmt(f)} ({ratio(m, f)})", ">= 2.0x fastwebsockets", None if f is None else m >= 2.0 * f)
    m = median(id_, "mioket", "p99_us")
    peers = {s: median(id_, s, "p99_us") for s in ("fastwebsockets", "tungstenite")}
    shown = ", ".join(f"{NAMES[s]} {fmt(v)}" for s, v in peers.items())
    ok = None if m is None or any(v is None for v in peers.values()) else all(m < v for v in peers.values())
    target("rooms 1,000 x 10: p99 delivery latency", f"{fmt(m)} us vs {shown}", "lower than every peer", ok)
    bad = {k: median(id_, "mioket", k) for k in ("misroutes", "gaps", "reordered")}
    target("rooms: every message to its room only, none lost", ", ".join(f"{k} {fmt(v, 0)}" for k, v in bad.items()), "0 each", all(v == 0 for v in bad.values() if v is not None))
for id_ in ("idle_rooms_10000", "idle_room1_10000"):
    m = median(id_, "mioket", "rss_per_conn_end")
    if m is not None:
        target(LABELS[id_].replace("idle, ", "idle memory, "), f"{fmt(m)} B/conn", "<= 320 B RSS/conn", m <= 320)
m = median("empty_rooms", "mioket", "rss_per_room")
if m is not None:
    target("an empty room without history", f"{fmt(m)} B/room", "<= 1 KiB RSS", m <= 1024)
for pubs in ("1", "10"):
    id_ = f"tls_bcast_1000x{pubs}"
    m, t = median(id_, "mioket-tls", "deliveries_per_s"), median(id_, "tungstenite-tls", "deliveries_per_s")
    if m is not None:
        target(f"TLS broadcast 1,000 x {pubs}: deliveries/s", f"{fmt(m)} vs {fmt(t)} ({ratio(m, t)})", ">= 1.5x tokio-tungstenite + tokio-rustls", None if t is None else m >= 1.5 * t)
m, t = median("tls_idle_10000", "mioket-tls", "rss_per_conn_end"), median("tls_idle_10000", "tungstenite-tls", "rss_per_conn_end")
if m is not None:
    target("TLS idle memory, 10,000 connections", f"{fmt(m)} vs {fmt(t)} B/conn", "less than tokio-tungstenite + tokio-rustls; <= 4 KiB", None if t is None else m < t and m <= 4096)
id_ = "rooms_1000x10_w1000"
m, f = median(id_, "mioket", "deliveries_per_s"), median(id_, "fastwebsockets", "deliveries_per_s")
if m is not None:
    target("rooms 1,000 x 10, saturating (1,000 in flight per publisher): deliveries/s", f"{fmt(m)} vs {fmt(f)} ({ratio(m, f)})", ">= 2.0x fastwebsockets", None if f is None else m >= 2.0 * f)
id_ = "deflate_json_1000x10"
m = median(id_, "mioket", "ratio")
if m is not None:
    target("permessage-deflate, JSON 1-16 KiB: bytes on the wire (shared mode)", f"{100 * m:.1f} % of the payload", "<= 40 %", m <= 0.40)
    m = median(id_, "mioket", "deliveries_per_s")
    for peer in ("node-ws", "python-websockets"):
        p = median(id_, peer, "deliveries_per_s")
        target(f"permessage-deflate broadcast 1,000 x 10, JSON: deliveries/s vs {DEFLATE_NAMES[peer]}", f"{fmt(m)} vs {fmt(p)} ({ratio(m, p)})", ">= 3x", None if m is None or p is None else m >= 3 * p)
m = median("deflate_chat_1000x10", "mioket", "ratio")
if m is not None:
    z = median("deflate_chat_1000x10", "mioket-min0", "ratio")
    target("permessage-deflate, chat 60-200 B: bytes on the wire", f"{100 * m:.1f} % (--deflate-min-size 0: {'–' if z is None else f'{100 * z:.1f} %'})", "reported, no target", None)
target("allocations: broadcast 1 whatever N, small echo 0", "tests/allocations.rs (cargo test)", "exact counts asserted", None)
