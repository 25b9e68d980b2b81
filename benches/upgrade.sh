#!/usr/bin/env bash
# The pause of a binary upgrade under load (README, "Upgrades"): for each connection
# count, a fresh release `mioket` (broadcast mode) and `mioket-load rooms` (rooms of
# MEMBERS members, PUBLISHERS publishers keeping a window of messages in flight); once
# every connection is open and messages flow, `mioket upgrade --pid` upgrades the server
# to the same binary. Reported per count (one JSON line each):
#   max_gap_us    the longest time no message was delivered to anyone (mioket-load's
#                 max_gap_us over the run): the pause the clients saw
#   max_us        the slowest delivery (sent before the pause, delivered after it)
#   gaps, reordered, misroutes   must be 0: every member saw its room's seqs 1, 2, 3...
#   handover_ms   the old process's own measure: freeze, send, the new one's restore
#                 and confirmation (its log line)
#   snapshot_B, snapshot_B_per_conn   the snapshot's size
#   rss_old_kB, rss_new_kB, rss_fresh_kB   the server's RSS just before the upgrade,
#                 the new process's after it, and a fresh server's under the same load
#   upgrade_s     `mioket upgrade`'s wall time (signal to confirmed outcome)
#
#   benches/upgrade.sh                      10,000 then 50,000 connections
#   CONNS=10000 benches/upgrade.sh
#
# Counts beyond what `ulimit -Hn` allows (the server and the load each hold one
# descriptor per connection) are skipped with a note: on this machine the hard limit
# is 20,000, so 50,000 needs a machine (or a VM, as benches/idle-vm.sh boots) that
# allows more. Knobs: CONNS, MEMBERS (10), PUBLISHERS (10), DURATION (8 s measured),
# AT (3 s into the measured run), NO_BUILD=1.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CONNS=${CONNS:-"10000 50000"}
MEMBERS=${MEMBERS:-10}
PUBLISHERS=${PUBLISHERS:-10}
DURATION=${DURATION:-8}
AT=${AT:-3}
BIN="$ROOT/target/release/mioket"
LOAD="$ROOT/target/release/mioket-load"
W="$ROOT/target/upgrade-bench"
mkdir -p "$W"
# Whatever this script started goes with it, however it ends.
trap 'kill $(jobs -p) ${new:-} 2>/dev/null || true' EXIT

if [ -z "${NO_BUILD:-}" ]; then
    (cd "$ROOT" && cargo build --release -p mioket -p mioket-load)
fi

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

open_conns() {
    curl -s "http://127.0.0.1:$1/metrics" | awk '/^mioket_connections\{state="open"\}/ {print $2}'
}

rss_kb() {
    awk '/^VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0
}

# Starts a server on $port; sets $pid.
start_server() {
    "$BIN" --port "$port" --max-connections $((conns * 2)) --history 100 --ping-interval 0 \
        >"$W/server-$1.out" 2>"$W/server-$1.log" &
    pid=$!
    for _ in $(seq 100); do
        grep -q "listening on" "$W/server-$1.out" 2>/dev/null && return
        sleep 0.05
    done
    echo "the server did not start" >&2
    exit 1
}

# Waits until the server at $port holds $conns connections (the load's setup done).
wait_for_load() {
    for _ in $(seq 1800); do
        [ "$(open_conns "$port")" -ge "$conns" ] 2>/dev/null && return
        sleep 0.1
    done
    echo "the load did not open $conns connections" >&2
    exit 1
}

for conns in $CONNS; do
    need=$((conns + 2000))
    if [ "$(ulimit -Hn)" != unlimited ] && [ "$(ulimit -Hn)" -lt "$need" ]; then
        echo "{\"conns\":$conns,\"skipped\":\"ulimit -Hn is $(ulimit -Hn), below $need\"}"
        continue
    fi
    ulimit -Sn "$need"
    rooms=$((conns / MEMBERS))
    load_args=(rooms --rooms "$rooms" --members "$MEMBERS" --publishers "$PUBLISHERS"
        --duration "$DURATION" --settle 1 --setup-timeout 600 --quiet)

    # A fresh server under the same load: its RSS, to compare with the new process's.
    port=$(free_port)
    start_server "fresh-$conns"
    "$LOAD" "${load_args[@]}" --url "ws://127.0.0.1:$port/" >"$W/fresh-$conns.json" &
    load=$!
    wait_for_load
    sleep "$AT"
    rss_fresh=$(rss_kb "$pid")
    wait "$load"
    kill "$pid"; wait "$pid" 2>/dev/null || true

    # The upgrade.
    port=$(free_port)
    start_server "old-$conns"
    old=$pid
    "$LOAD" "${load_args[@]}" --url "ws://127.0.0.1:$port/" >"$W/upgrade-$conns.json" &
    load=$!
    wait_for_load
    sleep "$AT"
    rss_old=$(rss_kb "$old")
    t0=$(date +%s.%N)
    "$BIN" upgrade --pid "$old" --timeout 60s >"$W/upgrade-$conns.out"
    t1=$(date +%s.%N)
    new=$(awk '{print $NF}' "$W/upgrade-$conns.out")
    sleep 1
    rss_new=$(rss_kb "$new")
    wait "$load"
    kill "$new" 2>/dev/null || true
    wait "$old" 2>/dev/null || true

    line=$(grep "took over" "$W/server-old-$conns.log" | grep "snapshot in" | tail -1)
    snapshot=$(echo "$line" | sed -E 's/.*a ([0-9]+)-byte snapshot.*/\1/')
    handover=$(echo "$line" | sed -E 's/.*snapshot in ([0-9.]+)(ms|s|µs).*/\1 \2/' | awk '{ if ($2=="s") print $1*1000; else if ($2=="µs") print $1/1000; else print $1 }')
    python3 - "$W/upgrade-$conns.json" <<EOF
import json, sys
r = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
out = {"conns": $conns, "rooms": $rooms, "members": $MEMBERS, "publishers": $PUBLISHERS,
       "max_gap_us": r.get("max_gap_us"), "max_us": r.get("max_us"), "p99_us": r.get("p99_us"),
       "gaps": r.get("gaps"), "reordered": r.get("reordered"), "misroutes": r.get("misroutes"),
       "handover_ms": float("$handover" or 0), "snapshot_B": int("$snapshot" or 0),
       "snapshot_B_per_conn": round(int("$snapshot" or 0) / $conns, 1),
       "rss_old_kB": $rss_old, "rss_new_kB": $rss_new, "rss_fresh_kB": $rss_fresh,
       "upgrade_s": round($t1 - $t0, 3)}
print(json.dumps(out))
EOF
done
