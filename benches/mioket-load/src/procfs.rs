//! Figures of a running process from Linux /proc: the server's CPU time and RSS.
//! (tests/support has a twin of these two readers: the tests must not depend on the load
//! generator, nor the load generator on test code.)

use std::time::Duration;

/// Resident bytes, from a walk of the page tables (smaps_rollup): exact on every kernel,
/// where VmRSS in /proc/PID/status lags on older ones (6.1 syncs its counters only every
/// 64 page faults, which put ~1.7 MB of start-up pages into an idle run).
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let kb_of = |file: &str, key: &str| -> Option<u64> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).ok()?;
        let line = text.lines().find(|l| l.starts_with(key))?;
        line.split_whitespace().nth(1)?.parse().ok()
    };
    let kb = kb_of("smaps_rollup", "Rss:").or_else(|| kb_of("status", "VmRSS:"))?;
    Some(kb * 1024)
}

/// CPU time (user + system) used so far, from /proc/PID/stat.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name (which may hold spaces); utime and stime are
    // fields 14 and 15 of stat, in clock ticks (USER_HZ, 100 on Linux).
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace().skip(11);
    let ticks = fields.next()?.parse::<u64>().ok()? + fields.next()?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

/// utime + stime of a process, in seconds.
pub(crate) fn cpu_seconds(pid: u32) -> Option<f64> {
    cpu_time(pid).map(|t| t.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_memory_and_cpu_time() {
        let pid = std::process::id();
        assert!(rss_bytes(pid).is_some_and(|b| b > 0));
        let spin = std::time::Instant::now();
        while spin.elapsed() < Duration::from_millis(30) {}
        assert!(cpu_time(pid).is_some_and(|t| t > Duration::ZERO));
        assert_eq!(rss_bytes(u32::MAX), None);
    }
}
