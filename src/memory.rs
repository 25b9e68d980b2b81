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
