#!/usr/bin/env bash
# Side-by-side comparison of mioket with echo/broadcast/rooms servers built on
# tokio-tungstenite and fastwebsockets (benches/peers, one current-thread runtime each)
# and a plain TCP relay (the physical-limit proxy), driven by mioket-load.
# Rooms (rooms by request path) run against mioket and the two WebSocket peers only:
# plain TCP has no path. TLS (the tls_* workloads): mioket with --tls-cert/--tls-key and
# tokio-tungstenite over tokio-rustls (tt-tls-server), each beside its plaintext self in
# the same rotation, with a certificate made for the run (openssl; the load generator
# checks it with --tls-ca).
# Backplane (the backplane_* workloads, when redis-server is installed): broadcast against
# one mioket node without Redis, one with --redis and two with --redis sharing one port
# (--reuse-port), through a redis-server started for the run on a free 127.0.0.1 port
# (no persistence) and stopped at the end; Redis's side from each node's /metrics and
# Redis's INFO. backplane_rooms_2nodes: the rooms workload on two nodes over one Redis, each
# with rooms of its own (each node's Redis input bytes and CPU); backplane_shards3: one
# node with three Redis servers (--redis x3) against one (DIR/backplane_rooms.jsonl).
#
#   benches/compare.sh            full run (about 20 minutes on 2 cores, builds included)
#   benches/compare.sh --quick    about 4 minutes
#
# Options: --reps N (repetitions of the core workloads, servers alternating; medians
# are quoted), --duration SECS (per measurement), --no-build, --no-callgrind,
# --no-strace, --counts-only (callgrind and strace only), --only ID,ID (workload ids,
# e.g. echo_65536,bcast_1000x10,rooms_1000x10), --candidate PATH (a second mioket binary, e.g. a
# patched build, run as server "candidate" with mioket's flags), --out DIR (default: a fresh directory under target/compare).
#
# Each server is pinned to CPU 0 and the load generator to CPU 1 (taskset). Servers
# bind 127.0.0.1 only, are started fresh for every measurement and killed after it.
# Instructions per message come from callgrind (the difference of two runs with
# different message counts, so start-up and connection set-up cancel out); syscalls
# per message from strace -c -f the same way; server CPU from /proc/PID/stat.
# permessage-deflate (the deflate_* workloads): broadcast of JSON documents and of chat
# lines with the load generator's --deflate, against mioket (shared mode, and with
# --deflate off or --deflate-min-size 0 beside it), Node's ws with perMessageDeflate and
# Python's websockets (benches/peers/node, benches/peers/python; npm and pip install them
# under target/ when node and python3 are there).
# Results: DIR/results.jsonl, DIR/counts.jsonl (DIR/backplane.jsonl: the backplane's
# counters) and the markdown table DIR/report.md.
set -uo pipefail

QUICK=0
REPS=""
DURATION=""
BUILD=1
CALLGRIND=1
STRACE=1
LOADS=1
ONLY=""
CANDIDATE=""
OUT=""
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) QUICK=1 ;;
        --reps) REPS=$2; shift ;;
        --duration) DURATION=$2; shift ;;
        --no-build) BUILD=0 ;;
        --no-callgrind) CALLGRIND=0 ;;
        --no-strace) STRACE=0 ;;
        --counts-only) LOADS=0 ;;
        --only) ONLY=",$2,"; shift ;;
        --candidate) CANDIDATE=$(cd "$(dirname "$2")" && pwd)/$(basename "$2"); shift ;;
        --out) OUT=$2; shift ;;
        -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "compare.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
PEERS_TARGET=${PEERS_TARGET_DIR:-$TARGET/peers}
BIN=$TARGET/release
PBIN=$PEERS_TARGET/release
OUT=${OUT:-$TARGET/compare/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT/callgrind"
# The sources the binaries were built from, for callgrind_annotate of the profiles.
rm -rf "$OUT/src-snapshot" && cp -r "$ROOT/src" "$OUT/src-snapshot"
: > "$OUT/results.jsonl"
: > "$OUT/counts.jsonl"
: > "$OUT/backplane.jsonl"
: > "$OUT/backplane_rooms.jsonl"
: > "$OUT/server.err"
START=$(date +%s)

if [ "$QUICK" = 1 ]; then
    REPS=${REPS:-1}; DURATION=${DURATION:-2}; IDLE_HOLD=2
else
    REPS=${REPS:-5}; DURATION=${DURATION:-4}; IDLE_HOLD=11
fi

log() { printf '[compare %4ss] %s\n' $(( $(date +%s) - START )) "$*" >&2; }

if [ "$BUILD" = 1 ]; then
    log "building mioket and mioket-load (release)"
    (cd "$ROOT" && cargo build --release --quiet -p mioket -p mioket-load) || exit 1
    log "building the peers (benches/peers, release)"
    cargo build --release --quiet --manifest-path "$ROOT/benches/peers/Cargo.toml" --target-dir "$PEERS_TARGET" || exit 1
fi
NEEDED=("$BIN/mioket" "$BIN/mioket-load")
# The peers only when a selected workload may run them (the backplane_* ones never do).
if [ -z "$ONLY" ] || [ -n "$(tr ',' '\n' <<< "$ONLY" | grep -v -e '^$' -e '^backplane_')" ]; then
    NEEDED+=("$PBIN/tt-server" "$PBIN/fws-server" "$PBIN/tcp-relay" "$PBIN/tt-tls-server")
fi
for b in "${NEEDED[@]}"; do
    [ -x "$b" ] || { echo "compare.sh: missing $b (build first)" >&2; exit 1; }
done

# As many descriptors as we may have: the idle workload wants them all.
ulimit -n "$(ulimit -Hn)" 2>/dev/null
FD_LIMIT=$(ulimit -n)
IDLE_MAX=$(( FD_LIMIT - 64 ))
[ "$IDLE_MAX" -gt 50000 ] && IDLE_MAX=50000

# TLS: a P-256 certificate for 127.0.0.1 (not a CA: the load generator checks it as its
# own trust anchor).
TLS_CERT=$OUT/tls-cert.pem
TLS_KEY=$OUT/tls-key.pem
if ! openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=localhost \
    -addext subjectAltName=DNS:localhost,IP:127.0.0.1 -addext basicConstraints=critical,CA:FALSE \
    -days 1 -keyout "$TLS_KEY" -out "$TLS_CERT" 2>/dev/null; then
    log "openssl could not make a certificate: no TLS workloads"
    TLS_CERT=""
fi

if command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then
    PIN_SERVER=(taskset -c 0); PIN_LOAD=(taskset -c 1)
else
    PIN_SERVER=(); PIN_LOAD=()
    log "no taskset or a single CPU: not pinning"
fi

server_cmd() { # name mode
    case "$1" in
        mioket|candidate)
            local exe=$BIN/mioket
            [ "$1" = candidate ] && exe=$CANDIDATE
            if [ "$2" = echo ]; then
                CMD=("$exe" --mode echo --port 0 --max-connections 60000)
            elif [ "$2" = backplane ]; then
                # The backplane workloads keep the default history (100): with --redis
                # every publish then also XADDs to the room's stream, as in production.
                CMD=("$exe" --mode broadcast --welcome '' --port 0 --max-connections 60000)
            else
                # Broadcast and rooms (mioket's broadcast mode is rooms by path). No
                # welcome and no history: the peers send neither, and only live
                # messages count.
                CMD=("$exe" --mode broadcast --welcome '' --history 0 --port 0 --max-connections 60000)
            fi ;;
        mioket-tls)
            server_cmd mioket "$2"
            CMD+=(--tls-cert "$TLS_CERT" --tls-key "$TLS_KEY") ;;
        mioket-redis|mioket-redis2)
            # A backplane node: its /metrics on a port of its own (with --reuse-port the
            # main port reaches either node).
            server_cmd mioket "$2"
            CMD+=(--redis "redis://127.0.0.1:$REDIS_PORT/0" --metrics-listen "127.0.0.1:$(free_port)")
            [ "$1" = mioket-redis2 ] && CMD+=(--reuse-port) ;;
        mioket-nodeflate)
            server_cmd mioket "$2"
            CMD+=(--deflate off) ;;
        mioket-min0)
            server_cmd mioket "$2"
            CMD+=(--deflate-min-size 0) ;;
        node-ws) CMD=(env NODE_PATH="$NODE_DIR/node_modules" node "$ROOT/benches/peers/node/broadcast.js" --port 0) ;;
        python-websockets) CMD=("$PY_VENV/bin/python" "$ROOT/benches/peers/python/broadcast.py" --port 0) ;;
        tungstenite) CMD=("$PBIN/tt-server" --mode "$2") ;;
        tungstenite-tls) CMD=("$PBIN/tt-tls-server" --mode "$2" --tls-cert "$TLS_CERT" --tls-key "$TLS_KEY") ;;
        fastwebsockets) CMD=("$PBIN/fws-server" --mode "$2") ;;
        tcp) CMD=("$PBIN/tcp-relay" --mode "$2") ;;
    esac
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

SP=""
SP2=""
PORT=""
wait_listening() { # FILE PID: until the server's listening line, its exit, or 15 s
    for _ in $(seq 300); do
        grep -q listening "$1" 2>/dev/null && break
        kill -0 "$2" 2>/dev/null || break
        sleep 0.05
    done
}

start_server() { # name mode [wrapper words...]
    local name=$1 mode=$2
    shift 2
    server_cmd "$name" "$mode"
    : > "$OUT/server.out"
    RUST_LOG=warn "$@" "${CMD[@]}" > "$OUT/server.out" 2>>"$OUT/server.err" &
    SP=$!
    wait_listening "$OUT/server.out" "$SP"
    PORT=$(grep -o '[0-9]*$' "$OUT/server.out" | head -1)
    if [ -z "$PORT" ]; then
        log "server $name did not start"
        return 1
    fi
    if [ "$name" = mioket-redis2 ]; then
        # The second node on the first one's port (both with --reuse-port): the kernel
        # spreads the load generator's connections over the two.
        local cmd2=() prev=""
        for w in "${CMD[@]}"; do
            if [ "$prev" = --port ]; then cmd2+=("$PORT")
            elif [ "$prev" = --metrics-listen ]; then cmd2+=("127.0.0.1:$(free_port)")
            else cmd2+=("$w"); fi
            prev=$w
        done
        : > "$OUT/server2.out"
        RUST_LOG=warn "$@" "${cmd2[@]}" > "$OUT/server2.out" 2>>"$OUT/server.err" &
        SP2=$!
        wait_listening "$OUT/server2.out" "$SP2"
        grep -q listening "$OUT/server2.out" || { log "second node of $name did not start"; return 1; }
    fi
}

stop_pid() { # pid: TERM, then KILL after 5 s
    kill -TERM "$1" 2>/dev/null
    for _ in $(seq 100); do
        kill -0 "$1" 2>/dev/null || break
        sleep 0.05
    done
    kill -KILL "$1" 2>/dev/null
    wait "$1" 2>/dev/null
}
stop_server() {
    local p
    for p in $SP $SP2; do stop_pid "$p"; done
    SP=""
    SP2=""
}

# The backplane's Redis: started below when a backplane workload will run.
REDIS_PID=""
REDIS_PORT=""
REDIS_DIR=""
stop_redis() {
    [ -n "$REDIS_PID" ] || return 0
    kill -TERM "$REDIS_PID" 2>/dev/null
    for _ in $(seq 100); do
        kill -0 "$REDIS_PID" 2>/dev/null || break
        sleep 0.05
    done
    kill -KILL "$REDIS_PID" 2>/dev/null
    wait "$REDIS_PID" 2>/dev/null
    REDIS_PID=""
    rm -rf "$REDIS_DIR"
}
trap 'stop_server; exit 130' INT TERM
trap 'stop_server; stop_nodes 2>/dev/null; stop_extra_redis 2>/dev/null; stop_redis' EXIT

# Workloads: id, server mode, mioket-load arguments[, servers (default: all)].
# Server mode rooms: mioket in broadcast mode, the peers with --mode rooms.
WS_ONLY="mioket,candidate,fastwebsockets,tungstenite"
CORE=(
    "echo_20|echo|echo --conns 100 --size 20"
    "echo_65536|echo|echo --conns 100 --size 65536"
    "bcast_1000x1|broadcast|broadcast --subscribers 1000 --publishers 1"
    "bcast_1000x10|broadcast|broadcast --subscribers 1000 --publishers 10"
    "rooms_1000x10|rooms|rooms --rooms 1000 --members 10 --publishers 10 --window 10|$WS_ONLY"
    # Saturating: 1,000 in flight per publisher, about 10 per room (members get several).
    "rooms_1000x10_w1000|rooms|rooms --rooms 1000 --members 10 --publishers 10 --window 1000|$WS_ONLY"
    "connect|echo|connect --inflight 64"
)
# Memory of rooms: idle connections spread over rooms by path (every server), and the
# RSS an empty room keeps (mioket only: the peers drop a room with its last member).
ROOMS_MEMORY=(
    "idle_rooms_10000|rooms|idle --conns 10000 --rooms 1000 --settle 1|$WS_ONLY"
    "empty_rooms|rooms|empty-rooms --rooms 10000|mioket,candidate"
)
# TLS: each workload on mioket and tokio-tungstenite, plain and over TLS, in one rotation.
TLS_SERVERS=(mioket mioket-tls tungstenite tungstenite-tls)
TLS=(
    "tls_echo_20|echo|echo --conns 100 --size 20"
    "tls_bcast_1000x1|broadcast|broadcast --subscribers 1000 --publishers 1"
    "tls_bcast_1000x10|broadcast|broadcast --subscribers 1000 --publishers 10"
)
TLS_EXTRA=("tls_idle_10000|echo|idle --conns 10000 --settle 1")
if [ -z "$TLS_CERT" ]; then TLS=(); TLS_EXTRA=(); fi
# Backplane: broadcast through Redis (one node with --redis, two sharing one port) beside
# one node without Redis, in one rotation. Redis is pinned with the servers (CPU 0).
BACKPLANE_SERVERS=(mioket mioket-redis mioket-redis2)
BACKPLANE=(
    "backplane_100x10|backplane|broadcast --subscribers 100 --publishers 10"
    "backplane_1000x10|backplane|broadcast --subscribers 1000 --publishers 10"
)
# Backplane rooms (the rooms workload through Redis, run by run_backplane_rooms below):
# backplane_rooms_2nodes, two nodes over one Redis, each with rooms of its own (paths /a/
# and /b/, 1,000 and 250 rooms, the same messages in flight per room), each node's
# mioket_redis_input_bytes_total and CPU seconds; backplane_shards3, one node with three
# Redis servers (--redis x3) against one with one Redis, each Redis's INFO commandstats.
BACKPLANE_ROOMS=(backplane_rooms_2nodes backplane_shards3)
start_redis() { # port dir log: a redis-server pinned with the servers; its pid in LAST_REDIS
    "${PIN_SERVER[@]}" redis-server --port "$1" --bind 127.0.0.1 --dir "$2" \
        --save '' --appendonly no > "$3" 2>&1 &
    LAST_REDIS=$!
    for _ in $(seq 100); do
        [ "$(redis-cli -p "$1" ping 2>/dev/null)" = PONG ] && return 0
        sleep 0.05
    done
    return 1
}
if [ "$LOADS" = 1 ] && { [ -z "$ONLY" ] || [[ "$ONLY" == *",backplane_"* ]]; }; then
    if command -v redis-server >/dev/null && command -v redis-cli >/dev/null; then
        REDIS_DIR=$(mktemp -d)
        REDIS_PORT=$(free_port)
        start_redis "$REDIS_PORT" "$REDIS_DIR" "$OUT/redis.log"
        REDIS_PID=$LAST_REDIS
        if [ "$(redis-cli -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ]; then
            log "redis-server $(redis-server --version | grep -o 'v=[0-9.]*') on 127.0.0.1:$REDIS_PORT"
        else
            log "redis-server did not start (see $OUT/redis.log): no backplane workloads"
            stop_redis
            BACKPLANE=()
            BACKPLANE_ROOMS=()
        fi
    else
        log "redis-server not found (apt-get install redis-server): no backplane workloads"
        BACKPLANE=()
        BACKPLANE_ROOMS=()
    fi
else
    BACKPLANE=()
    BACKPLANE_ROOMS=()
fi
# permessage-deflate: broadcast of JSON documents (1-16 KiB) and chat lines (60-200 B),
# compressed; a warm-up of 2 s first (the peers make a compressor per connection on its
# first message) and a window of at least 6 s counting what arrives (their latency is
# seconds). mioket-nodeflate: --deflate off; mioket-min0: --deflate-min-size 0.
NODE_DIR=$TARGET/peers-node
PY_VENV=$TARGET/peers-venv
DEFLATE_SERVERS=(mioket mioket-nodeflate mioket-min0 node-ws python-websockets)
DEFLATE=(
    "deflate_json_1000x10|broadcast|broadcast --subscribers 1000 --publishers 10 --deflate --corpus json --warmup 2|mioket,mioket-nodeflate,node-ws,python-websockets"
    "deflate_chat_1000x10|broadcast|broadcast --subscribers 1000 --publishers 10 --deflate --corpus chat --warmup 2|mioket,mioket-min0"
)
if [ "$LOADS" = 1 ] && { [ -z "$ONLY" ] || [[ "$ONLY" == *",deflate_"* ]]; }; then
    if command -v node >/dev/null && command -v npm >/dev/null; then
        if [ "$BUILD" = 1 ] || [ ! -d "$NODE_DIR/node_modules/ws" ]; then
            log "installing the Node peer (npm: ws) in $NODE_DIR"
            mkdir -p "$NODE_DIR" && cp "$ROOT/benches/peers/node/package.json" "$NODE_DIR/" &&
                (cd "$NODE_DIR" && npm install --no-audit --no-fund --silent) >> "$OUT/install.log" 2>&1
        fi
    fi
    if command -v python3 >/dev/null; then
        if [ "$BUILD" = 1 ] || [ ! -x "$PY_VENV/bin/python" ]; then
            log "installing the Python peer (pip: websockets) in $PY_VENV"
            { [ -x "$PY_VENV/bin/python" ] || python3 -m venv "$PY_VENV"; } >> "$OUT/install.log" 2>&1 &&
                "$PY_VENV/bin/pip" install -q -r "$ROOT/benches/peers/python/requirements.txt" >> "$OUT/install.log" 2>&1
        fi
    fi
    keep=()
    for s in "${DEFLATE_SERVERS[@]}"; do
        case "$s" in
            node-ws) [ -d "$NODE_DIR/node_modules/ws" ] || { log "no Node ws (see $OUT/install.log): deflate without it"; continue; } ;;
            python-websockets) "$PY_VENV/bin/python" -c 'import websockets' 2>/dev/null || { log "no Python websockets (see $OUT/install.log): deflate without it"; continue; } ;;
        esac
        keep+=("$s")
    done
    DEFLATE_SERVERS=("${keep[@]}")
else
    DEFLATE=()
fi
if [ "$QUICK" = 1 ]; then
    EXTRA=("idle_10000|echo|idle --conns 10000 --settle 1" "${ROOMS_MEMORY[@]}")
else
    EXTRA=(
        "echo_1024|echo|echo --conns 100 --size 1024"
        "bcast_100x1|broadcast|broadcast --subscribers 100 --publishers 1"
        "bcast_100x10|broadcast|broadcast --subscribers 100 --publishers 10"
        "bcast_10000x1|broadcast|broadcast --subscribers 10000 --publishers 1"
        "bcast_10000x10|broadcast|broadcast --subscribers 10000 --publishers 10"
        "idle_10000|echo|idle --conns 10000 --settle 1"
        "idle_max|echo|idle --conns $IDLE_MAX --settle 1"
        "idle_room1_10000|rooms|idle --conns 10000 --rooms 1 --settle 1|$WS_ONLY"
        "${ROOMS_MEMORY[@]}"
    )
fi
SERVERS=(mioket fastwebsockets tungstenite tcp)
[ -n "$CANDIDATE" ] && SERVERS=(mioket candidate fastwebsockets tungstenite tcp)

run_one() { # rep server id mode args...
    local rep=$1 server=$2 id=$3 mode=$4
    shift 4
    local raw=() dur=$DURATION url="ws://127.0.0.1"
    [ "$server" = tcp ] && raw=(--raw)
    case "$server" in *-tls) url="wss://127.0.0.1"; raw=(--tls-ca "$TLS_CERT") ;; esac
    case "$id" in idle_*|tls_idle_*) dur=$IDLE_HOLD ;; deflate_*) [ "$dur" -lt 6 ] && dur=6 ;; esac
    if [[ "$server" == mioket-redis* ]]; then
        # Every backplane run starts from an empty Redis with zeroed statistics.
        redis-cli -p "$REDIS_PORT" flushall > /dev/null
        redis-cli -p "$REDIS_PORT" config resetstat > /dev/null
    fi
    start_server "$server" "$mode" "${PIN_SERVER[@]}" || { stop_server; return; }
    local line t0 c0 s0
    t0=$(date +%s%N); c0=$(cpu_ticks $SP $SP2 $REDIS_PID); s0=$(grep -E '^cpu[01] ' /proc/stat)
    line=$("${PIN_LOAD[@]}" "$BIN/mioket-load" "$@" "${raw[@]}" --url "$url:$PORT/" \
        --duration "$dur" --server-pid "$SP" --label "$server" --quiet 2>>"$OUT/load.err")
    if [[ "$id" == backplane_* ]]; then
        # CPU 0's share taken by the nodes and Redis from the load generator's start to its
        # end (connection set-up included).
        local busy
        busy=$(( ($(cpu_ticks $SP $SP2 $REDIS_PID) - c0) * 100000000000000 / CLK_TCK / ($(date +%s%N) - t0) ))
        backplane_stats "$rep" "$server" "$id" "$busy" "$s0" "$(grep -E '^cpu[01] ' /proc/stat)"
    fi
    stop_server
    if [ -n "$line" ]; then
        echo "{\"id\":\"$id\",\"rep\":$rep,\"server\":\"$server\",\"result\":$line}" >> "$OUT/results.jsonl"
        log "$id $server: $(echo "$line" | grep -oE '"(msgs_per_s|deliveries_per_s|handshakes_per_s|rss_per_conn_end|rss_per_room|p99_us|misroutes|gaps|ratio)":[0-9.]+' | tr '\n' ' ')"
    else
        log "$id $server: no result (see $OUT/load.err)"
    fi
}

CLK_TCK=$(getconf CLK_TCK)
cpu_ticks() { # pids...: utime + stime of all their threads, in clock ticks
    local p t=0
    for p in "$@"; do
        [ -r "/proc/$p/stat" ] && t=$(( t + $(sed 's/.*) //' "/proc/$p/stat" | awk '{print $12 + $13}') ))
    done
    echo "$t"
}

backplane_stats() { # rep server id busy% stat0 stat1: each node's mioket_backplane_* counters, Redis's INFO
    local rep=$1 server=$2 id=$3 busy=$4 stat0=$5 stat1=$6 f nodes=()
    for f in "$OUT/server.out" "$OUT/server2.out"; do
        [ "$server" = mioket ] && continue
        [ "$server" = mioket-redis ] && [ "$f" = "$OUT/server2.out" ] && continue
        local mport
        mport=$(tr '\0' ' ' < "/proc/$([ "$f" = "$OUT/server.out" ] && echo "$SP" || echo "$SP2")/cmdline" | grep -o -- '--metrics-listen 127.0.0.1:[0-9]*' | grep -o '[0-9]*$')
        nodes+=("$(curl -s --max-time 5 "http://127.0.0.1:$mport/metrics" | grep '^mioket_backplane_' | tr '\n' ';')")
    done
    local info
    info=$(redis-cli -p "$REDIS_PORT" info commandstats; redis-cli -p "$REDIS_PORT" info stats; redis-cli -p "$REDIS_PORT" info cpu)
    python3 - "$id" "$rep" "$server" "$busy" "$stat0" "$stat1" "$info" "${nodes[@]}" >> "$OUT/backplane.jsonl" <<'PY'
import json, sys
id_, rep, server, busy, stat0, stat1, info, *nodes = sys.argv[1:]
def cpus(text):  # /proc/stat lines of cpu0 and cpu1: (busy, total) jiffies
    out = {}
    for line in text.splitlines():
        name, *v = line.split()
        v = [int(x) for x in v[:8]]
        out[name] = (sum(v) - v[3] - v[4], sum(v))
    return out
a, b = cpus(stat0), cpus(stat1)
# How busy each CPU was over the run, all processes of the machine included.
machine = {f"{c}_busy_pct": round(100 * (b[c][0] - a[c][0]) / max(1, b[c][1] - a[c][1]), 1) for c in a if c in b}
def metrics(text):
    m = {}
    for line in text.split(";"):
        k, _, v = line.rpartition(" ")
        if k:
            m[k] = float(v)
    return {
        "publishes": m.get("mioket_backplane_publishes_total"),
        "round_trips": m.get("mioket_backplane_round_trips_total"),
        "commands": m.get("mioket_backplane_commands_total"),
        "rtt_sum_s": m.get("mioket_backplane_round_trip_seconds_sum"),
        "refused": sum(v for k, v in m.items() if k.startswith("mioket_backplane_refusals_total")),
    }
redis = {}
for line in info.splitlines():
    k, _, v = line.strip().partition(":")
    if k.startswith("cmdstat_"):
        f = dict(kv.split("=") for kv in v.split(","))
        redis[k] = {"calls": int(f["calls"]), "usec": int(f["usec"])}
    elif k in ("total_commands_processed", "total_reads_processed", "total_writes_processed"):
        redis[k] = int(v)
    elif k in ("used_cpu_sys", "used_cpu_user"):
        redis[k] = float(v)
print(json.dumps({"id": id_, "rep": int(rep), "server": server, "servers_cpu_pct": int(busy) / 1000, **machine, "nodes": [metrics(n) for n in nodes], "redis": redis}))
PY
}

# Backplane rooms: nodes started by hand (not start_server: several at once, each with
# its own --redis list and /metrics port), the rooms workload through them.
BP_NODES=()   # pid:port:metrics-port of each node started
EXTRA_REDIS=() # pid:port:dir of the shards' second and third redis-servers
start_node() { # name redis-ports...: a backplane node; appends to BP_NODES
    local name=$1 mport p
    shift
    server_cmd mioket backplane
    mport=$(free_port)
    for p in "$@"; do CMD+=(--redis "redis://127.0.0.1:$p/0"); done
    CMD+=(--metrics-listen "127.0.0.1:$mport")
    : > "$OUT/node-$name.out"
    RUST_LOG=warn "${PIN_SERVER[@]}" "${CMD[@]}" > "$OUT/node-$name.out" 2>>"$OUT/server.err" &
    local pid=$!
    wait_listening "$OUT/node-$name.out" "$pid"
    local port
    port=$(grep -o '[0-9]*$' "$OUT/node-$name.out" | head -1)
    BP_NODES+=("$pid:$port:$mport")
    [ -n "$port" ] || { log "node $name did not start"; return 1; }
}
stop_nodes() {
    local n
    for n in "${BP_NODES[@]}"; do stop_pid "${n%%:*}"; done
    BP_NODES=()
}
stop_extra_redis() {
    local r
    for r in "${EXTRA_REDIS[@]}"; do stop_pid "${r%%:*}"; rm -rf "${r##*:}"; done
    EXTRA_REDIS=()
}
node_sample() { # pid:port:mport: "input_bytes cpu_ticks"
    local pid=${1%%:*} mport=${1##*:} bytes
    bytes=$(curl -s --max-time 5 "http://127.0.0.1:$mport/metrics" | awk '$1 == "mioket_redis_input_bytes_total" {print $2}')
    echo "${bytes:-0} $(cpu_ticks "$pid")"
}
redis_reset() { # ports...: empty and zero each Redis before a run
    local p
    for p in "$@"; do
        redis-cli -p "$p" flushall > /dev/null
        redis-cli -p "$p" config resetstat > /dev/null
    done
}

# Two nodes over one Redis, each with its own rooms (node a: 1,000 rooms under /a/, node
# b: 250 under /b/; one message in flight per room on both), one load generator each,
# at once. A node's Redis input should follow its own rooms' messages only.
run_rooms_2nodes() { # rep
    local rep=$1 id=backplane_rooms_2nodes
    redis_reset "$REDIS_PORT"
    BP_NODES=()
    start_node a "$REDIS_PORT" && start_node b "$REDIS_PORT" || { stop_nodes; return; }
    local na=${BP_NODES[0]} nb=${BP_NODES[1]}
    local pa=${na#*:} pb=${nb#*:}
    pa=${pa%%:*}; pb=${pb%%:*}
    local sa0 sb0 sa1 sb1
    # Both load generators on CPU 1; each waits for its connections, then measures.
    "${PIN_LOAD[@]}" "$BIN/mioket-load" rooms --rooms 1000 --members 10 --publishers 10 --window 100 \
        --url "ws://127.0.0.1:$pa/a" --duration "$DURATION" --server-pid "${na%%:*}" --label node-a --quiet \
        > "$OUT/rooms2.a.line" 2>>"$OUT/load.err" &
    local la=$!
    "${PIN_LOAD[@]}" "$BIN/mioket-load" rooms --rooms 250 --members 10 --publishers 10 --window 25 \
        --url "ws://127.0.0.1:$pb/b" --duration "$DURATION" --server-pid "${nb%%:*}" --label node-b --quiet \
        > "$OUT/rooms2.b.line" 2>>"$OUT/load.err" &
    local lb=$!
    # Counters from the end of connection set-up (joins and fetches excluded) to the end.
    sleep 0.5
    listening() { curl -s --max-time 2 "http://127.0.0.1:$1/metrics" | awk '$1 == "mioket_backplane_listening_rooms" {n = $2} END {print n + 0}'; }
    for _ in $(seq 600); do
        [ "$(listening "${na##*:}")" -ge 1000 ] && [ "$(listening "${nb##*:}")" -ge 250 ] && break
        kill -0 "$la" 2>/dev/null || break
        sleep 0.1
    done
    sa0=$(node_sample "$na"); sb0=$(node_sample "$nb")
    # Redis's own view (sharded pub/sub): the room channels of a's and of b's rooms, and
    # the subscribers of one of each, during the run (1: its own node only).
    local chans ca cb subs_a subs_b
    chans=$(redis-cli -p "$REDIS_PORT" pubsub shardchannels 'mioket:*:live' 2>/dev/null)
    ca=$(grep -m1 'a/room-' <<< "$chans"); cb=$(grep -m1 'b/room-' <<< "$chans")
    subs_a="$(grep -c 'a/room-' <<< "$chans") channels, $(redis-cli -p "$REDIS_PORT" pubsub shardnumsub "$ca" | tail -1) subscriber(s) of $ca"
    subs_b="$(grep -c 'b/room-' <<< "$chans") channels, $(redis-cli -p "$REDIS_PORT" pubsub shardnumsub "$cb" | tail -1) subscriber(s) of $cb"
    wait "$la" "$lb"
    sa1=$(node_sample "$na"); sb1=$(node_sample "$nb")
    stop_nodes
    python3 - "$id" "$rep" "$CLK_TCK" "$sa0" "$sa1" "$sb0" "$sb1" "$(cat "$OUT/rooms2.a.line")" "$(cat "$OUT/rooms2.b.line")" \
        "$subs_a" "$subs_b" >> "$OUT/backplane_rooms.jsonl" <<'PY'
import json, sys
id_, rep, tck, a0, a1, b0, b1, la, lb, subs_a, subs_b = sys.argv[1:]
def node(name, s0, s1, line, subs):
    r = json.loads(line) if line.strip() else {}
    (bytes0, t0), (bytes1, t1) = [map(float, s.split()) for s in (s0, s1)]
    cpu = (t1 - t0) / int(tck)
    pub, dl = r.get("published", 0), r.get("deliveries", 0)
    return {"node": name, "rooms": r.get("rooms"), "published": pub, "deliveries": dl,
            "deliveries_per_s": r.get("deliveries_per_s"), "p99_us": r.get("p99_us"),
            "redis_input_bytes": bytes1 - bytes0, "cpu_s": round(cpu, 3),
            "input_bytes_per_published": round((bytes1 - bytes0) / pub, 1) if pub else None,
            "cpu_us_per_delivery": round(1e6 * cpu / dl, 3) if dl else None,
            "redis_pubsub": subs}
print(json.dumps({"id": id_, "rep": int(rep), "nodes": [node("a", a0, a1, la, subs_a), node("b", b0, b1, lb, subs_b)]}))
PY
    log "$id: $(tail -1 "$OUT/backplane_rooms.jsonl" | python3 -c 'import json,sys; d=json.load(sys.stdin); print("; ".join("node %s: %s rooms %s deliveries/s, Redis input %.0f B (%s per own message), CPU %s s (%s us/delivery)" % (n["node"], n["rooms"], n["deliveries_per_s"], n["redis_input_bytes"], n["input_bytes_per_published"], n["cpu_s"], n["cpu_us_per_delivery"]) for n in d["nodes"]))')"
}

# The same rooms workload on one node with three Redis shards against one Redis.
run_shards3() { # rep
    local rep=$1 id=backplane_shards3
    if [ "${#EXTRA_REDIS[@]}" = 0 ]; then
        local i d p
        for i in 2 3; do
            d=$(mktemp -d); p=$(free_port)
            start_redis "$p" "$d" "$OUT/redis$i.log" || { log "redis-server $i did not start: no $id"; EXTRA_REDIS+=("$LAST_REDIS:$p:$d"); stop_extra_redis; return; }
            EXTRA_REDIS+=("$LAST_REDIS:$p:$d")
        done
    fi
    local ports=("$REDIS_PORT") r
    for r in "${EXTRA_REDIS[@]}"; do r=${r#*:}; ports+=("${r%%:*}"); done
    local setups=(1 3)
    [ $(( rep % 2 )) = 0 ] && setups=(3 1)
    for n in "${setups[@]}"; do
        redis_reset "${ports[@]}"
        BP_NODES=()
        start_node "shards$n" "${ports[@]:0:$n}" || { stop_nodes; continue; }
        local nd=${BP_NODES[0]} port
        port=${nd#*:}; port=${port%%:*}
        local t0 line
        t0=$(cpu_ticks "${nd%%:*}")
        line=$("${PIN_LOAD[@]}" "$BIN/mioket-load" rooms --rooms 1000 --members 10 --publishers 10 --window 100 \
            --url "ws://127.0.0.1:$port/" --duration "$DURATION" --server-pid "${nd%%:*}" --label "shards$n" --quiet 2>>"$OUT/load.err")
        local cpu=$(( $(cpu_ticks "${nd%%:*}") - t0 )) stats=()
        for p in "${ports[@]}"; do
            stats+=("$(redis-cli -p "$p" info commandstats | grep -E '^cmdstat_(evalsha|eval|fcall):' | tr -d '\r' | tr '\n' ';')")
        done
        stop_nodes
        python3 - "$id" "$rep" "$n" "$CLK_TCK" "$cpu" "$line" "${stats[@]}" >> "$OUT/backplane_rooms.jsonl" <<'PY'
import json, sys
id_, rep, n, tck, cpu, line, *stats = sys.argv[1:]
r = json.loads(line) if line.strip() else {}
redis = []
for s in stats:
    calls = usec = 0
    for part in filter(None, s.split(";")):
        f = dict(kv.split("=") for kv in part.partition(":")[2].split(","))
        calls += int(f["calls"]); usec += int(f["usec"])
    redis.append({"script_calls": calls, "usec_per_call": round(usec / calls, 2) if calls else None})
dl = r.get("deliveries", 0)
print(json.dumps({"id": id_, "rep": int(rep), "shards": int(n), "published": r.get("published"), "deliveries": dl,
                  "deliveries_per_s": r.get("deliveries_per_s"), "p50_us": r.get("p50_us"), "p99_us": r.get("p99_us"),
                  "node_cpu_s": int(cpu) / int(tck), "cpu_us_per_delivery": round(1e6 * int(cpu) / int(tck) / dl, 3) if dl else None,
                  "redis": redis}))
PY
        log "$id $n shard(s): $(tail -1 "$OUT/backplane_rooms.jsonl" | python3 -c 'import json,sys; d=json.load(sys.stdin); print("%s deliveries/s, p99 %s us, script calls per Redis %s, us/call %s" % (d["deliveries_per_s"], d["p99_us"], [x["script_calls"] for x in d["redis"]], [x["usec_per_call"] for x in d["redis"]]))')"
    done
}

run_backplane_rooms() { # rep
    local id
    for id in "${BACKPLANE_ROOMS[@]}"; do
        if [ -n "$ONLY" ] && [[ "$ONLY" != *",$id,"* ]]; then continue; fi
        case "$id" in
            backplane_rooms_2nodes) run_rooms_2nodes "$1" ;;
            backplane_shards3) run_shards3 "$1" ;;
        esac
    done
}

run_set() { # rep workloads...
    local rep=$1
    shift
    for w in "$@"; do
        IFS='|' read -r id mode args only <<< "$w"
        if [ -n "$ONLY" ] && [[ "$ONLY" != *",$id,"* ]]; then continue; fi
        local servers=() pool=("${SERVERS[@]}")
        [[ "$id" == tls_* ]] && pool=("${TLS_SERVERS[@]}")
        [[ "$id" == deflate_* ]] && pool=("${DEFLATE_SERVERS[@]}")
        [[ "$id" == backplane_* ]] && pool=("${BACKPLANE_SERVERS[@]}")
        for s in "${pool[@]}"; do
            if [ -z "$only" ] || [[ ",$only," == *",$s,"* ]]; then servers+=("$s"); fi
        done
        local n=${#servers[@]}
        [ "$n" -gt 0 ] || continue
        # Rotate the order of servers from one workload and repetition to the next.
        local shift_by=$(( (rep + ${#id}) % n ))
        for i in $(seq 0 $(( n - 1 ))); do
            local server=${servers[$(( (i + shift_by) % n ))]}
            # shellcheck disable=SC2086
            run_one "$rep" "$server" "$id" "$mode" $args
        done
    done
}

if [ "$LOADS" = 1 ]; then
    for rep in $(seq 1 "$REPS"); do
        log "repetition $rep of $REPS (core workloads, ${DURATION}s each)"
        run_set "$rep" "${CORE[@]}" "${TLS[@]}" "${DEFLATE[@]}" "${BACKPLANE[@]}"
        run_backplane_rooms "$rep"
    done
    log "extra workloads (once)"
    run_set 1 "${EXTRA[@]}" "${TLS_EXTRA[@]}"
fi

# Counts: the difference of two runs (M1 and M2 messages) over the difference of
# what was counted, so set-up, start-up and shutdown cancel out.
count_of() { # json field
    echo "$1" | grep -oE "\"$2\":[0-9]+" | head -1 | cut -d: -f2
}

measure_counts() { # tool id mode field m1 m2 servers... -- load args...
    local tool=$1 id=$2 mode=$3 field=$4 m1=$5 m2=$6
    shift 6
    local servers=()
    while [ "$1" != -- ]; do servers+=("$1"); shift; done
    shift
    if [ -n "$ONLY" ] && [[ "$ONLY" != *",$id,"* ]]; then return; fi
    if [ -n "$CANDIDATE" ] && [ "${servers[0]}" = mioket ]; then servers=(mioket candidate "${servers[@]:1}"); fi
    for server in "${servers[@]}"; do
        local raw=() vals=() counts=()
        [ "$server" = tcp ] && raw=(--raw)
        for m in "$m1" "$m2"; do
            local file="$OUT/callgrind/$tool.$id.$server.$m"
            local wrapper=("${PIN_SERVER[@]}")
            [ "$tool" = callgrind ] && wrapper+=(valgrind --tool=callgrind --callgrind-out-file="$file" --dump-line=no)
            start_server "$server" "$mode" "${wrapper[@]}" || continue 2
            local st=""
            if [ "$tool" = strace ]; then
                strace -f -c -qq -o "$file" -p "$SP" & st=$!
                sleep 0.5
            fi
            # The load generator holds its connections for a moment after reporting, and
            # strace stops then: connection teardown, whose timing varies, is not counted.
            "${PIN_LOAD[@]}" "$BIN/mioket-load" "$@" "${raw[@]}" --url "ws://127.0.0.1:$PORT/" \
                --messages "$m" --duration 300 --setup-timeout 300 --label "$server" --quiet --hold 1 \
                > "$file.line" 2>>"$OUT/load.err" &
            local lp=$!
            while [ ! -s "$file.line" ] && kill -0 "$lp" 2>/dev/null; do sleep 0.05; done
            if [ -n "$st" ]; then
                kill -INT "$st" 2>/dev/null
                wait "$st" 2>/dev/null
            fi
            wait "$lp" 2>/dev/null
            local line
            line=$(cat "$file.line")
            stop_server
            counts+=("$(count_of "$line" "$field")")
            if [ "$tool" = callgrind ]; then
                vals+=("$(grep -E '^summary:' "$file" | awk '{print $2}')")
            else
                vals+=("$(awk '$NF == "total" {print $4}' "$file" | tail -1)")
            fi
        done
        if [ -n "${vals[0]:-}" ] && [ -n "${vals[1]:-}" ] && [ -n "${counts[0]:-}" ] && [ -n "${counts[1]:-}" ]; then
            echo "{\"tool\":\"$tool\",\"id\":\"$id\",\"server\":\"$server\",\"per\":\"$field\",\"v1\":${vals[0]},\"v2\":${vals[1]},\"n1\":${counts[0]},\"n2\":${counts[1]}}" >> "$OUT/counts.jsonl"
            log "$tool $id $server: (${vals[0]} - ${vals[1]}) / (${counts[0]} - ${counts[1]} $field)"
        else
            log "$tool $id $server: incomplete (values '${vals[*]}', counts '${counts[*]}')"
        fi
    done
}

if [ "$QUICK" = 1 ]; then SCALE=1; else SCALE=2; fi
WS=(mioket fastwebsockets tungstenite)
if [ "$CALLGRIND" = 1 ] && command -v valgrind >/dev/null; then
    log "callgrind: instructions per message and per handshake"
    measure_counts callgrind echo_20 echo messages 8000 4000 "${WS[@]}" tcp -- echo --conns 100 --size 20
    measure_counts callgrind connect echo cycles $(( 1000 * SCALE )) $(( 500 * SCALE )) "${WS[@]}" -- connect --inflight 64
    if [ "$QUICK" = 0 ]; then
        measure_counts callgrind echo_65536 echo messages 2000 1000 "${WS[@]}" -- echo --conns 100 --size 65536
        measure_counts callgrind bcast_1000x1 broadcast deliveries 60 30 "${WS[@]}" -- broadcast --subscribers 1000 --publishers 1
        # Rooms: 100 rooms (not 1,000: 10,000 handshakes under valgrind take minutes for
        # tokio-tungstenite); per delivery it is the same work.
        measure_counts callgrind rooms_100x10 rooms deliveries 2000 1000 "${WS[@]}" -- rooms --rooms 100 --members 10 --publishers 10 --window 10
    fi
elif [ "$CALLGRIND" = 1 ]; then
    log "valgrind not found (apt-get install valgrind): no instruction counts"
fi
if [ "$STRACE" = 1 ] && command -v strace >/dev/null; then
    log "strace: syscalls per message"
    measure_counts strace echo_20 echo messages $(( 10000 * SCALE )) $(( 5000 * SCALE )) "${WS[@]}" tcp -- echo --conns 100 --size 20
    if [ "$QUICK" = 0 ]; then
        measure_counts strace echo_65536 echo messages 2000 1000 "${WS[@]}" -- echo --conns 100 --size 65536
        measure_counts strace bcast_1000x10 broadcast deliveries 400 200 "${WS[@]}" tcp -- broadcast --subscribers 1000 --publishers 10
        measure_counts strace rooms_1000x10 rooms deliveries 2000 1000 "${WS[@]}" -- rooms --rooms 1000 --members 10 --publishers 10 --window 10
    fi
elif [ "$STRACE" = 1 ]; then
    log "strace not found (apt-get install strace): no syscall counts"
fi

log "done; writing $OUT/report.md"
python3 "$ROOT/benches/compare_report.py" "$OUT" "$REPS" "$DURATION" ${CANDIDATE:+"$CANDIDATE"} > "$OUT/report.md"
if [ -s "$OUT/backplane_rooms.jsonl" ]; then
    # The rooms through Redis, every run (not medians: the nodes' shares vary together).
    python3 - "$OUT/backplane_rooms.jsonl" >> "$OUT/report.md" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
two = [r for r in rows if r["id"] == "backplane_rooms_2nodes"]
if two:
    print("\n## Backplane rooms: two nodes over one Redis, each with rooms of its own\n")
    print("| run | node | rooms | published | deliveries/s | p99 (us) | Redis input bytes | per own published message | node CPU (s) | per delivery (us) | Redis pub/sub |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in two:
        for n in r["nodes"]:
            print(f"| {r['rep']} | {n['node']} | {n['rooms']} | {n['published']} | {n['deliveries_per_s']} | {n['p99_us']} | {n['redis_input_bytes']:.0f} | {n['input_bytes_per_published']} | {n['cpu_s']} | {n['cpu_us_per_delivery']} | {n['redis_pubsub']} |")
sh = [r for r in rows if r["id"] == "backplane_shards3"]
if sh:
    print("\n## Backplane rooms: one node with three Redis shards against one Redis\n")
    print("| run | shards | deliveries/s | p50 / p99 (us) | node CPU per delivery (us, set-up included) | script calls per Redis | Redis time per call (us) |")
    print("|---|---|---|---|---|---|---|")
    for r in sh:
        calls = " / ".join(str(x["script_calls"]) for x in r["redis"][: r["shards"]])
        usec = " / ".join(str(x["usec_per_call"]) for x in r["redis"][: r["shards"]])
        print(f"| {r['rep']} | {r['shards']} | {r['deliveries_per_s']} | {r['p50_us']} / {r['p99_us']} | {r['cpu_us_per_delivery']} | {calls} | {usec} |")
PY
fi
cat "$OUT/report.md"
log "total $(( $(date +%s) - START )) s"
