#!/usr/bin/env bash
# Side-by-side comparison of mioket with echo/broadcast/rooms servers built on
# tokio-tungstenite and fastwebsockets (benches/peers, one current-thread runtime each)
# and a plain TCP relay (the physical-limit proxy), driven by mioket-load.
# Rooms (rooms by request path) run against mioket and the two WebSocket peers only:
# plain TCP has no path. TLS (the tls_* workloads): mioket with --tls-cert/--tls-key and
# tokio-tungstenite over tokio-rustls (tt-tls-server), each beside its plaintext self in
# the same rotation, with a certificate made for the run (openssl; the load generator
# checks it with --tls-ca).
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
# Results: DIR/results.jsonl, DIR/counts.jsonl and the markdown table DIR/report.md.
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
        -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
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
for b in "$BIN/mioket" "$BIN/mioket-load" "$PBIN/tt-server" "$PBIN/fws-server" "$PBIN/tcp-relay" "$PBIN/tt-tls-server"; do
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
            else
                # Broadcast and rooms (mioket's broadcast mode is rooms by path). No
                # welcome and no history: the peers send neither, and only live
                # messages count.
                CMD=("$exe" --mode broadcast --welcome '' --history 0 --port 0 --max-connections 60000)
            fi ;;
        mioket-tls)
            server_cmd mioket "$2"
            CMD+=(--tls-cert "$TLS_CERT" --tls-key "$TLS_KEY") ;;
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

SP=""
PORT=""
start_server() { # name mode [wrapper words...]
    local name=$1 mode=$2
    shift 2
    server_cmd "$name" "$mode"
    : > "$OUT/server.out"
    RUST_LOG=warn "$@" "${CMD[@]}" > "$OUT/server.out" 2>>"$OUT/server.err" &
    SP=$!
    for _ in $(seq 300); do
        grep -q listening "$OUT/server.out" 2>/dev/null && break
        kill -0 "$SP" 2>/dev/null || break
        sleep 0.05
    done
    PORT=$(grep -o '[0-9]*$' "$OUT/server.out" | head -1)
    if [ -z "$PORT" ]; then
        log "server $name did not start"
        return 1
    fi
}

stop_server() {
    [ -n "$SP" ] || return 0
    kill -TERM "$SP" 2>/dev/null
    for _ in $(seq 100); do
        kill -0 "$SP" 2>/dev/null || break
        sleep 0.05
    done
    kill -KILL "$SP" 2>/dev/null
    wait "$SP" 2>/dev/null
    SP=""
}
trap 'stop_server; exit 130' INT TERM

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
    start_server "$server" "$mode" "${PIN_SERVER[@]}" || return
    local line
    line=$("${PIN_LOAD[@]}" "$BIN/mioket-load" "$@" "${raw[@]}" --url "$url:$PORT/" \
        --duration "$dur" --server-pid "$SP" --label "$server" --quiet 2>>"$OUT/load.err")
    stop_server
    if [ -n "$line" ]; then
        echo "{\"id\":\"$id\",\"rep\":$rep,\"server\":\"$server\",\"result\":$line}" >> "$OUT/results.jsonl"
        log "$id $server: $(echo "$line" | grep -oE '"(msgs_per_s|deliveries_per_s|handshakes_per_s|rss_per_conn_end|rss_per_room|p99_us|misroutes|gaps|ratio)":[0-9.]+' | tr '\n' ' ')"
    else
        log "$id $server: no result (see $OUT/load.err)"
    fi
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
        run_set "$rep" "${CORE[@]}" "${TLS[@]}" "${DEFLATE[@]}"
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
cat "$OUT/report.md"
log "total $(( $(date +%s) - START )) s"
