#!/usr/bin/env bash
# Server RSS per idle WebSocket connection at 50,000 connections (and 10,000 to
# compare), measured inside a throwaway Linux VM.
#
# Why a VM, and how it boots: benches/vm-lib.sh (this machine's hard RLIMIT_NOFILE is
# 20,000). In the VM, for each count, a fresh `mioket --mode echo` and
# `mioket-load idle --server-pid PID`.
#
#   benches/idle-vm.sh                      10,000 then 50,000 connections
#   CONNS="10000 20000 50000" benches/idle-vm.sh
#   THP=always benches/idle-vm.sh           Debian's default THP instead of the host's
#
# Time: about 1 minute on 2 cores (boot ~5 s, 10k 12-17 s, 50k 25-50 s, mostly
# connection setup under TCG) once the packages are there; the first run also installs
# qemu-system-x86, busybox-static and cpio and downloads the kernel .deb (~70 MB).
#
# Reading the numbers: rss_per_conn_* (mioket-load's) and vm_rss_per_conn (sampled
# here while the connections are held) are the server's Rss from /proc/PID/smaps_rollup,
# a walk of its page tables, grown per connection; vm_anon_per_conn is the anonymous
# part (the heap). Not VmRSS from /proc/PID/status: this 6.1 kernel syncs those
# counters only every 64 page faults, which put ~1.7 MB of start-up pages into the run
# (~170 B/conn more at 10k).
#
# Knobs (environment): CONNS (default "10000 50000"), VM_MEM (6G), VM_SMP (2),
# ACCEL (tcg), THP (the host's setting), DURATION (5 s measured idle), SETTLE (1 s),
# SETUP_TIMEOUT (900 s per count), TIMEOUT (whole VM run, 3600 s), NO_BUILD=1.
# Output: serial log target/idle-vm/console.log, JSON lines target/idle-vm/results.jsonl
# (one per count: mioket-load's line with vm_conns, vm_kernel, vm_thp, vm_rss_kB and
# vm_anon_kB [before, held], vm_rss_per_conn and vm_anon_per_conn prefixed). Exit status
# 1 unless every count was fully opened.
set -euo pipefail

W="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/target/idle-vm"
VM_TAG=IDLEVM
. "$(dirname "${BASH_SOURCE[0]}")/vm-lib.sh"
CONNS=${CONNS:-"10000 50000"}
DURATION=${DURATION:-5}
SETTLE=${SETTLE:-1}
SETUP_TIMEOUT=${SETUP_TIMEOUT:-900}
PORT=8765

vm_prepare
vm_rootfs
cat >>"$R/etc/bench.conf" <<EOF
CONNS="$CONNS"
DURATION=$DURATION
SETTLE=$SETTLE
SETUP_TIMEOUT=$SETUP_TIMEOUT
PORT=$PORT
EOF
cat >"$R/etc/workload.sh" <<'WORKLOAD'
kb() { sed -n "s/^$1:[[:space:]]*\([0-9]*\) kB/\1/p" /proc/$2/smaps_rollup; }
pin0= pin1=
if [ "$(nproc)" -ge 2 ]; then pin0="taskset -c 0" pin1="taskset -c 1"; fi

for n in $CONNS; do
    t0=$(date +%s)
    $pin0 /bin/mioket --mode echo --host 127.0.0.1 --port "$PORT" --max-connections 60000 \
        --ping-interval 0 >/tmp/server.out 2>/tmp/server.err &
    spid=$!
    i=0
    until grep -q '^listening on' /tmp/server.out 2>/dev/null; do
        i=$((i + 1))
        if [ $i -gt 600 ] || ! kill -0 $spid 2>/dev/null; then
            say "FAIL $n server did not start"; tail -n 20 /tmp/server.err; exit 1
        fi
        sleep 0.2
    done
    say "start $n server pid $spid ($(cat /tmp/server.out))"
    r0=$(kb Rss $spid) a0=$(kb Anonymous $spid) r1=0 a1=0
    rm -f /tmp/load.out /tmp/load.err  # the sampler below waits for a new report
    $pin1 /bin/mioket-load idle --conns "$n" --url "ws://127.0.0.1:$PORT/" --server-pid $spid \
        --duration "$DURATION" --settle "$SETTLE" --setup-timeout "$SETUP_TIMEOUT" \
        --label mioket-vm --hold 3 >/tmp/load.out 2>/tmp/load.err &
    lpid=$!
    # Kernel's view while the connections are held (sampled during --hold).
    while kill -0 $lpid 2>/dev/null; do
        if [ -s /tmp/load.out ]; then
            say "sockstat $n $(grep -E '^(TCP|sockets):' /proc/net/sockstat | tr '\n' ' ')"
            say "slab_kB $n $(sed -n 's/^Slab: *\([0-9]*\).*/\1/p' /proc/meminfo)" \
                "server_fds $(ls /proc/$spid/fd | wc -l)" \
                "server $(grep -E '^(VmRSS|RssAnon|RssFile|RssShmem):' /proc/$spid/status | tr -s ' \t\n' ' ')" \
                "$(grep AnonHugePages /proc/$spid/smaps_rollup | tr -s ' ')"
            r1=$(kb Rss $spid) a1=$(kb Anonymous $spid)
            break
        fi
        sleep 0.1
    done
    wait $lpid 2>/dev/null && rc=0 || rc=$?
    : "${r0:=0}" "${r1:=0}" "${a0:=0}" "${a1:=0}"
    sed 's/^/IDLEVM load: /' /tmp/load.err
    if [ -s /tmp/load.out ]; then
        echo "RESULT {\"vm_conns\":$n,\"vm_kernel\":\"$(uname -r)\",\"vm_thp\":\"$THP\",\"vm_rss_kB\":[$r0,$r1],\"vm_anon_kB\":[$a0,$a1],\"vm_rss_per_conn\":$(( (r1 - r0) * 1024 / n )),\"vm_anon_per_conn\":$(( (a1 - a0) * 1024 / n )),$(tail -c +2 /tmp/load.out)"
    else
        say "FAIL $n load generator exited $rc without a result"
    fi
    kill $spid; wait $spid 2>/dev/null || true
    say "server stderr: $(wc -l </tmp/server.err) lines, last: $(tail -n 1 /tmp/server.err)"
    say "end $n after $(( $(date +%s) - t0 )) s"
done
WORKLOAD
vm_pack
vm_log "for: $CONNS connections"
vm_boot
secs=$VM_SECS

echo
echo "== idle connections in a VM ($(cat "$K/kernel-release" 2>/dev/null), $ACCEL, THP $THP, $secs s in all)"
ok=1
for n in $CONNS; do
    line=$(grep "\"vm_conns\":$n," "$W/results.jsonl" || true)
    if [ -z "$line" ]; then
        echo "$n: no result (see $W/console.log)"; ok=0; continue
    fi
    echo "RESULT $line"
    opened=$(vm_field opened "$line")
    echo "$n: opened $opened, server RSS $(vm_field rss_per_conn_open "$line") B/conn at open," \
        "$(vm_field rss_per_conn_end "$line") B/conn at end, $(vm_field vm_rss_per_conn "$line") B/conn held" \
        "(heap $(vm_field vm_anon_per_conn "$line") B/conn)"
    [ "$opened" = "$n" ] || ok=0
done
[ $ok = 1 ] || exit 1
