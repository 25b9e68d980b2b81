#!/usr/bin/env bash
# The upgrade pause at 50,000 connections (README, "Upgrades"), which this machine's
# descriptor limit (20,000) cannot hold: benches/upgrade.sh runs, unchanged, inside the
# VM of benches/vm-lib.sh for 10,000 then 50,000 connections in the SAME VM run, and on
# the host for 10,000.
#
# Reading the numbers: under TCG (software emulation) every instruction is slower, so
# the VM's pauses are not real times. What carries over is their ratio: the estimate for
# 50,000 on this machine is the host's 10,000 pause times the VM's 50,000 / 10,000 pause
# ratio. The snapshot's size per connection and the new process's RSS against a fresh
# one's do not depend on speed: the VM's numbers at 50,000 are real.
#
#   benches/upgrade-vm.sh                    (6-8 minutes on 2 busy cores)
#   PUBLISHERS=2 benches/upgrade-vm.sh       a lower message rate, for VM and host alike
#   HOST=0 benches/upgrade-vm.sh             the VM only (no estimate)
#
# Knobs (environment): CONNS ("10000 50000"; the first is the base of the ratio),
# MEMBERS (10), PUBLISHERS (10), DURATION (30 s measured in the VM: the upgrade takes
# seconds under TCG and must end inside it), AT (3 s), UPGRADE_TIMEOUT (120 s in the VM),
# SETUP_TIMEOUT (900 s), HOST (1); and vm-lib.sh's VM_MEM, VM_SMP, ACCEL, THP, TIMEOUT,
# NO_BUILD. Output: target/upgrade-vm/console.log (serial log), results.jsonl (the VM's
# upgrade.sh lines), host.jsonl (the host's), and a summary with a last JSON line.
set -euo pipefail

BENCHES=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
W="$BENCHES/../target/upgrade-vm"
VM_TAG=UPGRADEVM
. "$BENCHES/vm-lib.sh"
CONNS=${CONNS:-"10000 50000"}
MEMBERS=${MEMBERS:-10}
PUBLISHERS=${PUBLISHERS:-10}
DURATION=${DURATION:-30}
AT=${AT:-3}
UPGRADE_TIMEOUT=${UPGRADE_TIMEOUT:-120}
SETUP_TIMEOUT=${SETUP_TIMEOUT:-900}
HOST=${HOST:-1}
base=${CONNS%% *}

vm_prepare
vm_rootfs
mkdir -p "$R/bench"
cp "$BENCHES/upgrade.sh" "$R/bench/upgrade.sh"
cat >>"$R/etc/bench.conf" <<EOF
export CONNS="$CONNS" MEMBERS=$MEMBERS PUBLISHERS=$PUBLISHERS DURATION=$DURATION AT=$AT
export UPGRADE_TIMEOUT=$UPGRADE_TIMEOUT SETUP_TIMEOUT=$SETUP_TIMEOUT
EOF
cat >"$R/etc/workload.sh" <<'WORKLOAD'
t0=$(date +%s)
BIN=/bin/mioket LOAD=/bin/mioket-load W=/tmp/upgrade-bench NO_BUILD=1 \
    sh /bench/upgrade.sh >/tmp/results.jsonl && rc=0 || rc=$?
sed 's/^/RESULT /' /tmp/results.jsonl
say "upgrade.sh exited $rc after $(( $(date +%s) - t0 )) s"
for f in /tmp/upgrade-bench/server-old-*.log; do
    say "$f: $(grep -E 'upgraded|took over|upgrade failed' "$f" | tr '\n' ' ')"
done
WORKLOAD
vm_pack
vm_log "for: $CONNS connections, $PUBLISHERS publishers"
vm_boot

# The host's pause at the base count, same session and settings (DURATION is the
# host's default: the pause is milliseconds here).
: >"$W/host.jsonl"
if [ "$HOST" = 1 ]; then
    vm_log "the host at $base connections"
    CONNS=$base MEMBERS=$MEMBERS PUBLISHERS=$PUBLISHERS AT=$AT NO_BUILD=1 W="$W/host" \
        sh "$BENCHES/upgrade.sh" >"$W/host.jsonl" || true
fi

echo
echo "== the upgrade pause in a VM ($(cat "$K/kernel-release" 2>/dev/null), $ACCEL, $VM_SMP cpus, $VM_SECS s in all)"
ok=1
for n in $CONNS; do
    line=$(grep "\"conns\":$n," "$W/results.jsonl" || true)
    if [ -z "$line" ] || [ "$(vm_field max_gap_us "$line")" = null ]; then
        echo "$n: no result (see $W/console.log)"; ok=0; continue
    fi
    echo "RESULT vm $line"
done
host=$(grep "\"conns\":$base," "$W/host.jsonl" || true)
[ -z "$host" ] || echo "RESULT host $host"
[ $ok = 1 ] || exit 1

set -- $CONNS
top=${!#}
vm_base=$(grep "\"conns\":$base," "$W/results.jsonl")
vm_top=$(grep "\"conns\":$top," "$W/results.jsonl")
calc() { awk "BEGIN { printf \"%.${1}f\", $2 }"; }
gap_base=$(vm_field max_gap_us "$vm_base") gap_top=$(vm_field max_gap_us "$vm_top")
ratio=$(calc 2 "$gap_top / $gap_base")
hratio=$(calc 2 "$(vm_field handover_ms "$vm_top") / $(vm_field handover_ms "$vm_base")")
echo "VM (TCG, not real times): pause $(calc 0 "$gap_base / 1000") ms at $base," \
    "$(calc 0 "$gap_top / 1000") ms at $top: ratio $ratio" \
    "(handover $(vm_field handover_ms "$vm_base") ms and $(vm_field handover_ms "$vm_top") ms: ratio $hratio)"
for n in $base $top; do
    l=$(grep "\"conns\":$n," "$W/results.jsonl")
    echo "VM at $n (real, not time-dependent): snapshot $(vm_field snapshot_B_per_conn "$l") B/conn;" \
        "RSS old / new / fresh $(vm_field rss_old_kB "$l") / $(vm_field rss_new_kB "$l") / $(vm_field rss_fresh_kB "$l") kB"
done
summary="{\"vm_base_conns\":$base,\"vm_top_conns\":$top,\"vm_pause_base_us\":$gap_base,\"vm_pause_top_us\":$gap_top,\"vm_ratio\":$ratio,\"vm_handover_ratio\":$hratio,\"vm_secs\":$VM_SECS"
if [ -n "$host" ]; then
    hgap=$(vm_field max_gap_us "$host")
    est=$(calc 0 "$hgap * $ratio / 1000")
    echo "host: pause $(calc 0 "$hgap / 1000") ms at $base (handover $(vm_field handover_ms "$host") ms)"
    echo "estimate for $top on this host: $(calc 0 "$hgap / 1000") ms x $ratio = $est ms" \
        "(the host's $base pause times the VM's ratio: an estimate, not a measurement)"
    summary="$summary,\"host_pause_base_us\":$hgap,\"estimate_top_ms\":$est"
fi
echo "SUMMARY $summary}"
