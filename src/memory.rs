//! Giving freed memory back to the operating system.
//!
//! glibc keeps freed heap pages for reuse, so after a burst (queues filled by a
//! flood, a slow consumer cut off) the process's RSS would stay at its high-water
//! mark, which operators read as a leak. `malloc_trim(0)` returns every free page,
//! from the middle of the heap too (glibc 2.8 and later).

/// Returns the allocator's free pages to the system. Costs a walk of the heap's free
/// lists: call it after large frees, not on every one.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn give_back() {
    // SAFETY: malloc_trim takes no pointers; it only releases memory glibc's
    // allocator itself holds as free.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Other allocators and systems: nothing to do here.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn give_back() {}

/// The process's resident set size in bytes (`VmRSS` of /proc/self/status), read when
/// asked (/api/stats); `None` where there is no such file.
pub fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    let kib: u64 = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    #[cfg(target_os = "linux")]
    #[test]
    fn rss_is_read_from_proc() {
        let rss = super::rss_bytes().expect("VmRSS");
        assert!(rss > 1024 * 1024, "{rss}");
    }
}
