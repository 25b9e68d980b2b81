# Shared by benches/idle-vm.sh and benches/upgrade-vm.sh (sourced, bash): boot a
# throwaway Linux VM that runs a workload with the real release binaries.
#
# Why a VM: on this machine the hard RLIMIT_NOFILE is 20,000 and the sandbox lacks
# CAP_SYS_RESOURCE, so neither mioket nor mioket-load can hold 50,000 sockets here.
# This boots Debian's kernel under qemu (TCG software emulation by default: /dev/kvm
# exists here but a guest under it hangs at boot) with an initramfs whose /init runs as
# root with every capability, raises the limits there (nofile 1,000,000, ports
# 10000-64999, somaxconn 65535) and then sources the caller's workload
# ($R/etc/workload.sh, a busybox sh script). The VM has no network device; everything
# runs on its own loopback (127.0.0.1 .. 127.0.0.K). The first run installs
# qemu-system-x86, busybox-static and cpio (apt) and downloads the kernel .deb (~70 MB).
#
# The caller sets W (work directory) and VM_TAG (prefix of the VM's own progress lines),
# then calls vm_prepare, vm_rootfs, writes $R/etc/workload.sh (and anything else it needs
# under $R), then vm_pack and vm_boot. The workload prints "RESULT <json>" lines; they
# end up in $W/console.log.
# Knobs (environment): VM_MEM (6G), VM_SMP (2), ACCEL (tcg), THP (the host's setting),
# TIMEOUT (whole VM run, 3600 s), NO_BUILD=1.

VM_MEM=${VM_MEM:-6G}
VM_SMP=${VM_SMP:-2}
ACCEL=${ACCEL:-tcg}
TIMEOUT=${TIMEOUT:-3600}
# Transparent huge pages in the VM: the host's own setting by default, so that the
# numbers compare (Debian's kernel defaults to "always", which rounds the server's
# heap growth up to 2 MiB pages and inflates B/conn).
THP=${THP:-$(sed -n 's/.*\[\(.*\)\].*/\1/p' /sys/kernel/mm/transparent_hugepage/enabled 2>/dev/null)}
THP=${THP:-madvise}
VM_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
K="$VM_ROOT/target/vm-kernel"

vm_log() { printf '%s: %s\n' "$(basename "$0" .sh)" "$*" >&2; }

# Host tools (apt), the kernel from its .deb (not installed; kept in target/vm-kernel
# for every VM script) and the release binaries.
vm_prepare() {
    mkdir -p "$W"
    local need=()
    command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
    dpkg -s busybox-static >/dev/null 2>&1 || need+=(busybox-static)
    command -v cpio >/dev/null || need+=(cpio)
    if [ ${#need[@]} -gt 0 ]; then
        vm_log "installing ${need[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >"$W/apt.log" 2>&1 \
            || { cat "$W/apt.log" >&2; exit 1; }
    fi

    mkdir -p "$K"
    if [ ! -s "$K/vmlinuz" ]; then
        # linux-image-amd64 is a metapackage: download the versioned image it depends on.
        local pkg
        pkg=$(apt-cache depends linux-image-amd64 | sed -n 's/^ *Depends: \(linux-image-[0-9].*\)$/\1/p' | head -n1)
        [ -n "$pkg" ] || { vm_log "cannot resolve the kernel package behind linux-image-amd64"; exit 1; }
        vm_log "downloading $pkg"
        rm -rf "$K/deb" && mkdir -p "$K/deb"
        (cd "$K/deb" && apt-get download -q -o APT::Sandbox::User=root "$pkg" >/dev/null)
        dpkg-deb -x "$K/deb"/"$pkg"_*.deb "$K/deb/x"
        basename "$K/deb/x/boot/vmlinuz-"* | sed 's/^vmlinuz-//' >"$K/kernel-release"
        cp "$K/deb/x/boot/vmlinuz-"* "$K/vmlinuz.tmp" && mv "$K/vmlinuz.tmp" "$K/vmlinuz"
        rm -rf "$K/deb"
    fi

    # A no-op when target/release is up to date.
    if [ "${NO_BUILD:-0}" != 1 ]; then
        (cd "$VM_ROOT" && cargo build --release --quiet -p mioket -p mioket-load)
    fi
    local b
    for b in mioket mioket-load; do
        [ -x "$VM_ROOT/target/release/$b" ] || { vm_log "missing target/release/$b"; exit 1; }
    done
}

# The root file system in $R: busybox, both binaries (in /bin), their shared libraries
# (and the loader at its path), and /init, which raises the limits and sources
# /etc/bench.conf (the caller's settings: append to it) and /etc/workload.sh.
vm_rootfs() {
    R="$W/rootfs"
    rm -rf "$R"
    mkdir -p "$R"/{bin,sbin,proc,sys,dev,tmp,etc,root}
    cp /bin/busybox "$R/bin/busybox"
    cp "$VM_ROOT/target/release/mioket" "$VM_ROOT/target/release/mioket-load" "$R/bin/"
    local lib
    for lib in $(for b in mioket mioket-load; do ldd "$VM_ROOT/target/release/$b"; done \
            | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' | sort -u); do
        mkdir -p "$R$(dirname "$lib")"
        cp -L "$lib" "$R$lib"
    done
    cat >"$R/etc/bench.conf" <<EOF
VM_TAG=$VM_TAG
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
say() { echo "$VM_TAG $*"; }
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
. /etc/workload.sh
INIT
    chmod +x "$R/init"
}

vm_pack() {
    (cd "$R" && find . -print0 | sort -z | cpio --null -o -H newc --quiet) | gzip -1 >"$W/initramfs.gz"
    vm_log "initramfs $(du -h "$W/initramfs.gz" | cut -f1), kernel $(cat "$K/kernel-release" 2>/dev/null)"
}

# Boots; the serial console goes to the terminal and to $W/console.log. Sets VM_SECS
# (wall time) and VM_RC (qemu's exit status); the RESULT lines go to $W/results.jsonl.
vm_boot() {
    vm_log "booting qemu ($ACCEL, $VM_SMP cpus, $VM_MEM, THP $THP)"
    local start
    start=$(date +%s)
    set +e
    timeout "$TIMEOUT" qemu-system-x86_64 -accel "$ACCEL" -m "$VM_MEM" -smp "$VM_SMP" \
        -kernel "$K/vmlinuz" -initrd "$W/initramfs.gz" \
        -append "console=ttyS0 panic=-1 quiet" \
        -nographic -no-reboot -nic none </dev/null 2>&1 \
        | sed -u 's/\r//g; s/\x1b\[[0-9;?]*[a-zA-Z]//g; s/\x1bc//g' | tee "$W/console.log"
    VM_RC=${PIPESTATUS[0]}
    set -e
    VM_SECS=$(( $(date +%s) - start ))
    vm_log "qemu exited $VM_RC after $VM_SECS s"
    grep '^RESULT ' "$W/console.log" | sed 's/^RESULT //' >"$W/results.jsonl" || true
}

# A number field of a JSON line: vm_field NAME LINE.
vm_field() { sed -n "s/.*\"$1\":\([^,}]*\).*/\1/p" <<<"$2"; }
