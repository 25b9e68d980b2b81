#!/usr/bin/env bash
# Server RSS per idle WebSocket connection at 50,000 connections (and 10,000 to
# compare), measured inside a throwaway Linux VM.
#
# Why a VM: on this machine the hard RLIMIT_NOFILE is 20,000 and the sandbox lacks
# CAP_SYS_RESOURCE, so neither mioket nor mioket-load can hold 50,000 sockets here.
# This script boots Debian's kernel under qemu (TCG software emulation by default:
# /dev/kvm exists here but a guest under it hangs at boot) with an initramfs whose
# /init runs as root with every capability, raises the limits there (nofile 1,000,000,
# ports 10000-64999, somaxconn 65535) and runs the real release binaries: for each
# count a fresh `mioket --mode echo` and `mioket-load idle --server-pid PID`. The VM
# has no network device; everything runs on its own loopback (127.0.0.1 .. 127.0.0.K).
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

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
W="$ROOT/target/idle-vm"
CONNS=${CONNS:-"10000 50000"}
VM_MEM=${VM_MEM:-6G}
VM_SMP=${VM_SMP:-2}
ACCEL=${ACCEL:-tcg}
DURATION=${DURATION:-5}
SETTLE=${SETTLE:-1}
SETUP_TIMEOUT=${SETUP_TIMEOUT:-900}
TIMEOUT=${TIMEOUT:-3600}
# Transparent huge pages in the VM: the host's own setting by default, so that the
# numbers compare (Debian's kernel defaults to "always", which rounds the server's
# heap growth up to 2 MiB pages and inflates B/conn).
THP=${THP:-$(sed -n 's/.*\[\(.*\)\].*/\1/p' /sys/kernel/mm/transparent_hugepage/enabled 2>/dev/null)}
THP=${THP:-madvise}
PORT=8765

log() { printf 'idle-vm: %s\n' "$*" >&2; }
mkdir -p "$W"

# 1. Host tools: qemu, a static busybox and cpio (apt), the kernel from its .deb (not installed).
need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
dpkg -s busybox-static >/dev/null 2>&1 || need+=(busybox-static)
command -v cpio >/dev/null || need+=(cpio)
if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >"$W/apt.log" 2>&1 \
        || { cat "$W/apt.log" >&2; exit 1; }
fi

if [ ! -s "$W/vmlinuz" ]; then
    # linux-image-amd64 is a metapackage: download the versioned image it depends on.
    pkg=$(apt-cache depends linux-image-amd64 | sed -n 's/^ *Depends: \(linux-image-[0-9].*\)$/\1/p' | head -n1)
    [ -n "$pkg" ] || { log "cannot resolve the kernel package behind linux-image-amd64"; exit 1; }
    log "downloading $pkg"
    rm -rf "$W/kernel" && mkdir -p "$W/kernel"
    (cd "$W/kernel" && apt-get download -q -o APT::Sandbox::User=root "$pkg" >/dev/null)
    dpkg-deb -x "$W/kernel"/"$pkg"_*.deb "$W/kernel/x"
    cp "$W/kernel/x/boot/vmlinuz-"* "$W/vmlinuz.tmp" && mv "$W/vmlinuz.tmp" "$W/vmlinuz"
    basename "$W/kernel/x/boot/vmlinuz-"* | sed 's/^vmlinuz-//' >"$W/kernel-release"
    rm -rf "$W/kernel"
fi

# 2. Binaries (a no-op when target/release is up to date).
if [ "${NO_BUILD:-0}" != 1 ]; then
    (cd "$ROOT" && cargo build --release --quiet -p mioket -p mioket-load)
fi
for b in mioket mioket-load; do
    [ -x "$ROOT/target/release/$b" ] || { log "missing target/release/$b"; exit 1; }
done

# 3. initramfs: busybox, both binaries, their shared libraries (and the loader at its
#    path), /init.
R="$W/rootfs"
rm -rf "$R"
mkdir -p "$R"/{bin,sbin,proc,sys,dev,tmp,etc,root}
cp /bin/busybox "$R/bin/busybox"
cp "$ROOT/target/release/mioket" "$ROOT/target/release/mioket-load" "$R/bin/"
for lib in $(for b in mioket mioket-load; do ldd "$ROOT/target/release/$b"; done \
        | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' | sort -u); do
    mkdir -p "$R$(dirname "$lib")"
    cp -L "$lib" "$R$lib"
done
cat >"$R/etc/bench.conf" <<EOF
CONNS="$CONNS"
DURATION=$DURATION
SETTLE=$SETTLE
SETUP_TIMEOUT=$SETUP_TIMEOUT
PORT=$PORT
THP=$THP
EOF
cat >"$R/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/sbin HOME=/root
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
. /etc/bench.conf
say() { echo "IDLEVM $*"; }
kb() { sed -n "s/^$1:[[:space:]]*\([0-9]*\) kB/\1/p" /proc/$2/smaps_rollup; }
finish() { say DONE; sync; poweroff -f; }
trap finish EXIT

ip link set lo up
echo 2000000 >/proc/sys/fs/nr_open
echo 4000000 >/proc/sys/fs/file-max
ulimit -n 1000000                      # soft and hard
echo "10000 64999" >/proc/sys/net/ipv4/ip_local_port_range
echo 65535 >/proc/sys/net/core/somaxconn
echo 65535 >/proc/sys/net/ipv4/tcp_max_syn_backlog
echo "$THP" >/sys/kernel/mm/transparent_hugepage/enabled

say "kernel $(uname -r) cpus $(nproc) mem_kB $(sed -n 's/^MemTotal: *\([0-9]*\).*/\1/p' /proc/meminfo)" \
    "nofile $(ulimit -n) ports $(cat /proc/sys/net/ipv4/ip_local_port_range | tr '\t' -)" \
    "thp $(cat /sys/kernel/mm/transparent_hugepage/enabled 2>/dev/null)"
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
INIT
chmod +x "$R/init"
(cd "$R" && find . -print0 | sort -z | cpio --null -o -H newc --quiet) | gzip -1 >"$W/initramfs.gz"
log "initramfs $(du -h "$W/initramfs.gz" | cut -f1), kernel $(cat "$W/kernel-release" 2>/dev/null)"

# 4. Boot; the serial console goes to the terminal and to console.log.
log "booting qemu ($ACCEL, $VM_SMP cpus, $VM_MEM, THP $THP) for: $CONNS connections"
start=$(date +%s)
set +e
timeout "$TIMEOUT" qemu-system-x86_64 -accel "$ACCEL" -m "$VM_MEM" -smp "$VM_SMP" \
    -kernel "$W/vmlinuz" -initrd "$W/initramfs.gz" \
    -append "console=ttyS0 panic=-1 quiet" \
    -nographic -no-reboot -nic none </dev/null 2>&1 \
    | sed -u 's/\r//g; s/\x1b\[[0-9;?]*[a-zA-Z]//g; s/\x1bc//g' | tee "$W/console.log"
qrc=${PIPESTATUS[0]}
set -e
secs=$(( $(date +%s) - start ))
log "qemu exited $qrc after $secs s"

grep '^RESULT ' "$W/console.log" | sed 's/^RESULT //' >"$W/results.jsonl" || true
field() { sed -n "s/.*\"$1\":\([^,}]*\).*/\1/p" <<<"$2"; }
echo
echo "== idle connections in a VM ($(cat "$W/kernel-release" 2>/dev/null), $ACCEL, THP $THP, $secs s in all)"
ok=1
for n in $CONNS; do
    line=$(grep "\"vm_conns\":$n," "$W/results.jsonl" || true)
    if [ -z "$line" ]; then
        echo "$n: no result (see $W/console.log)"; ok=0; continue
    fi
    echo "RESULT $line"
    opened=$(field opened "$line")
    echo "$n: opened $opened, server RSS $(field rss_per_conn_open "$line") B/conn at open," \
        "$(field rss_per_conn_end "$line") B/conn at end, $(field vm_rss_per_conn "$line") B/conn held" \
        "(heap $(field vm_anon_per_conn "$line") B/conn)"
    [ "$opened" = "$n" ] || ok=0
done
[ $ok = 1 ] || exit 1
