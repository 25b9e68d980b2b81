#!/bin/sh
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
#                 (Rss of /proc/PID/smaps_rollup: older kernels update VmRSS lazily)
#   upgrade_s     `mioket upgrade`'s wall time (signal to confirmed outcome)
#
#   benches/upgrade.sh                      10,000 then 50,000 connections
#   CONNS=10000 benches/upgrade.sh
#
# Counts beyond what `ulimit -Hn` allows (the server and the load each hold one
# descriptor per connection) are skipped with a note: on this machine the hard limit
# is 20,000, so 50,000 runs in a VM: benches/upgrade-vm.sh boots one and runs this very
# script there. Hence plain POSIX sh with busybox's tools only (no python3, no curl
# needed: wget does; the servers take a free port with --port 0).
# Knobs: CONNS, MEMBERS (10), PUBLISHERS (10), DURATION (8 s measured), AT (3 s after
# every connection is open), SETUP_TIMEOUT (600 s), UPGRADE_TIMEOUT (the server's
# --upgrade-timeout, 5 s), NO_BUILD=1; BIN, LOAD (the binaries, target/release's) and W
# (where logs go, target/upgrade-bench).
set -eu

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CONNS=${CONNS:-"10000 50000"}
MEMBERS=${MEMBERS:-10}
PUBLISHERS=${PUBLISHERS:-10}
DURATION=${DURATION:-8}
AT=${AT:-3}
SETUP_TIMEOUT=${SETUP_TIMEOUT:-600}
UPGRADE_TIMEOUT=${UPGRADE_TIMEOUT:-5}
BIN=${BIN:-$ROOT/target/release/mioket}
LOAD=${LOAD:-$ROOT/target/release/mioket-load}
W=${W:-$ROOT/target/upgrade-bench}
mkdir -p "$W"
pid= load= new=
# Whatever this script started goes with it, however it ends.
trap 'kill $pid $load $new 2>/dev/null || true' EXIT

if [ -z "${NO_BUILD:-}" ]; then
    (cd "$ROOT" && cargo build --release -p mioket -p mioket-load)
fi

note() { echo "upgrade.sh: $*" >&2; }

# Seconds since boot, to 10 ms (busybox's date has no %N).
now() { awk '{ print $1 }' /proc/uptime; }

# A number field of a JSON line ("null" when absent): field NAME LINE.
field() {
    v=$(echo "$2" | sed -n "s/.*\"$1\":\([^,}]*\).*/\1/p")
    echo "${v:-null}"
}

open_conns() {
    url="http://127.0.0.1:$1/metrics"
    if command -v curl >/dev/null; then curl -s "$url"; else wget -q -O - "$url"; fi \
        | awk '/^mioket_connections\{state="open"\}/ { print $2 }'
}

rss_kb() {
    awk '/^Rss:/ { print $2 }' "/proc/$1/smaps_rollup" 2>/dev/null || echo 0
}

# Starts a server on a free port; sets $pid and $port.
start_server() {
    "$BIN" --port 0 --max-connections $((conns * 2)) --history 100 --ping-interval 0 \
        --upgrade-timeout "$UPGRADE_TIMEOUT" >"$W/server-$1.out" 2>"$W/server-$1.log" &
    pid=$!
    for _ in $(seq 200); do
        port=$(sed -n 's/^listening on ws:\/\/127\.0\.0\.1:\([0-9]*\)$/\1/p' "$W/server-$1.out" 2>/dev/null)
        [ -n "$port" ] && return
        sleep 0.05
    done
    note "the server did not start"
    exit 1
}

# Starts the load against $port, its report into $1; sets $load.
start_load() {
    "$LOAD" rooms --rooms "$rooms" --members "$MEMBERS" --publishers "$PUBLISHERS" \
        --duration "$DURATION" --settle 1 --setup-timeout "$SETUP_TIMEOUT" --quiet \
        --url "ws://127.0.0.1:$port/" >"$1" &
    load=$!
}

# Waits until the server at $port holds $conns connections (the load's setup done).
wait_for_load() {
    for _ in $(seq $((SETUP_TIMEOUT * 10))); do
        [ "$(open_conns "$port")" -ge "$conns" ] 2>/dev/null && return
        sleep 0.1
    done
    note "the load did not open $conns connections"
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

    # A fresh server under the same load: its RSS, to compare with the new process's
    # (the load's own report is not needed: it is stopped once the RSS is read).
    start_server "fresh-$conns"
    start_load "$W/fresh-$conns.json"
    note "$conns: fresh server $pid on port $port, opening connections"
    wait_for_load
    sleep "$AT"
    rss_fresh=$(rss_kb "$pid")
    kill "$load"; wait "$load" 2>/dev/null || true
    kill "$pid"; wait "$pid" 2>/dev/null || true
    load= pid=

    # The upgrade.
    start_server "old-$conns"
    old=$pid
    start_load "$W/upgrade-$conns.json"
    note "$conns: server $old on port $port, opening connections"
    wait_for_load
    sleep "$AT"
    rss_old=$(rss_kb "$old")
    note "$conns: upgrading"
    t0=$(now)
    "$BIN" upgrade --pid "$old" --timeout 600s >"$W/upgrade-$conns.out"
    t1=$(now)
    new=$(awk '{ print $NF }' "$W/upgrade-$conns.out")
    sleep 1
    rss_new=$(rss_kb "$new")
    note "$conns: upgraded to $new, waiting for the load's report"
    wait "$load"
    kill "$new" 2>/dev/null || true
    wait "$old" 2>/dev/null || true
    load= pid= new=

    line=$(grep "took over" "$W/server-old-$conns.log" | grep "snapshot in" | tail -n 1)
    snapshot=$(echo "$line" | sed -n 's/.*a \([0-9]*\)-byte snapshot.*/\1/p')
    handover=$(echo "$line" | sed -n 's/.*snapshot in \([0-9.]*\)\(ms\|s\|µs\).*/\1 \2/p' \
        | awk '{ if ($2 == "s") print $1 * 1000; else if ($2 == "µs") print $1 / 1000; else print $1 }')
    r=$(tail -n 1 "$W/upgrade-$conns.json")
    printf '{"conns":%s,"rooms":%s,"members":%s,"publishers":%s,' "$conns" "$rooms" "$MEMBERS" "$PUBLISHERS"
    for f in max_gap_us max_us p99_us gaps reordered misroutes; do
        printf '"%s":%s,' "$f" "$(field "$f" "$r")"
    done
    printf '"handover_ms":%s,"snapshot_B":%s,"snapshot_B_per_conn":%s,' "${handover:-0}" "${snapshot:-0}" \
        "$(awk -v s="${snapshot:-0}" -v c="$conns" 'BEGIN { printf "%.1f", s / c }')"
    printf '"rss_old_kB":%s,"rss_new_kB":%s,"rss_fresh_kB":%s,"upgrade_s":%s}\n' \
        "$rss_old" "$rss_new" "$rss_fresh" "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')"
done
