//! A process's figures from Linux /proc, zero once it is gone; and the kernel memory
//! of a port's sockets, from `ss -tm` (RSS does not show it).
//!
//! `rss_bytes` and `cpu_time` are a twin of benches/mioket-load/src/procfs.rs (a few
//! lines kept twice on purpose: the tests must not depend on the load generator, nor
//! the load generator on test code). Change both together.

use std::time::Duration;

/// Resident bytes, from a walk of the page tables (smaps_rollup): exact on every kernel,
/// where VmRSS in /proc/PID/status lags on older ones (6.1 syncs its counters only every
/// 64 page faults).
pub fn rss_bytes(pid: u32) -> u64 {
    let kb_of = |file: &str, key: &str| -> Option<u64> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).ok()?;
        let line = text.lines().find(|l| l.starts_with(key))?;
        line.split_whitespace().nth(1)?.parse().ok()
    };
    kb_of("smaps_rollup", "Rss:").or_else(|| kb_of("status", "VmRSS:")).unwrap_or(0) * 1024
}

/// CPU time (user + system) used so far, from /proc/PID/stat.
pub fn cpu_time(pid: u32) -> Duration {
    let ticks = || -> Option<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The fields after the command name (which may hold spaces); utime and stime are
        // fields 14 and 15 of stat, in clock ticks (USER_HZ, 100 on Linux).
        let (_, rest) = stat.rsplit_once(')')?;
        let mut fields = rest.split_whitespace().skip(11);
        Some(fields.next()?.parse::<u64>().ok()? + fields.next()?.parse::<u64>().ok()?)
    };
    Duration::from_millis(ticks().unwrap_or(0) * 10)
}

/// How many of a process's file descriptors are sockets (from /proc/PID/fd).
pub fn socket_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| {
            dir.filter_map(Result::ok)
                .filter(|e| std::fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy().starts_with("socket:")))
                .count()
        })
        .unwrap_or(0)
}

/// Kernel memory of the server side of a port's connections, from `ss -Htmn` (the
/// `skmem` of each): what RSS does not show, charged to the host's `tcp_mem`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SocketMemory {
    /// Connected sockets (not listening, not in TIME-WAIT) whose local port is the port.
    pub sockets: usize,
    /// The sum of their receive and send queues: `r` (rmem_alloc) + `w` (wmem_queued).
    pub total: u64,
    /// The largest of one socket's `r` + `w`.
    pub max: u64,
    /// The largest send buffer (`tb`, the effective SO_SNDBUF: Linux doubles what is set).
    pub max_sndbuf: u64,
}

/// `None` if `ss` cannot be run.
pub fn socket_memory(port: u16) -> Option<SocketMemory> {
    let filter = format!("( sport = :{port} )");
    let out = std::process::Command::new("ss")
        .args(["-Htmn", "state", "connected", "exclude", "time-wait", &filter])
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    Some(parse_skmem(&String::from_utf8_lossy(&out.stdout)))
}

/// Sums the `skmem:(r..,rb..,t..,tb..,f..,w..,..)` fields of `ss -m` output.
fn parse_skmem(text: &str) -> SocketMemory {
    let mut memory = SocketMemory::default();
    for fields in text.split("skmem:(").skip(1).map(|rest| rest.split(')').next().unwrap_or("")) {
        let field = |name: &str| -> u64 {
            let value =
                fields.split(',').find_map(|f| f.strip_prefix(name).filter(|v| v.bytes().all(|b| b.is_ascii_digit())));
            value.and_then(|v| v.parse().ok()).unwrap_or(0)
        };
        let queued = field("r") + field("w");
        memory.sockets += 1;
        memory.total += queued;
        memory.max = memory.max.max(queued);
        memory.max_sndbuf = memory.max_sndbuf.max(field("tb"));
    }
    memory
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_memory_cpu_time_and_sockets() {
        let pid = std::process::id();
        assert!(rss_bytes(pid) > 0);
        let spin = std::time::Instant::now();
        while spin.elapsed() < Duration::from_millis(30) {}
        assert!(cpu_time(pid) > Duration::ZERO);
        let before = socket_fds(pid);
        let _listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert_eq!(socket_fds(pid), before + 1);
        assert_eq!((rss_bytes(u32::MAX), cpu_time(u32::MAX), socket_fds(u32::MAX)), (0, Duration::ZERO, 0));
    }

    #[test]
    fn skmem_fields_are_summed_per_socket() {
        let text = "ESTAB 0 0 127.0.0.1:80 127.0.0.1:5000\n\t skmem:(r10,rb131072,t0,tb2626560,f0,w1800,o0,bl0,d0)\n\
                    ESTAB 0 0 127.0.0.1:80 127.0.0.1:5001\n\t skmem:(r0,rb131072,t5,tb262144,f4096,w200,o0,bl0,d0)\n";
        let m = parse_skmem(text);
        assert_eq!(m, SocketMemory { sockets: 2, total: 2010, max: 1810, max_sndbuf: 2626560 });
        assert_eq!(parse_skmem(""), SocketMemory::default());
    }
}
