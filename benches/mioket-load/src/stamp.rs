//! The stamps at the start of broadcast and rooms payloads, and the run nonce in them.

/// The broadcast stamp at the start of every payload: send time (ns since start),
/// publisher id, run nonce (history from other runs is ignored), sequence number.
pub(crate) const BCAST_HEAD: usize = 24;

/// A broadcast stamp read back from the head of a payload (at least `BCAST_HEAD` bytes).
pub(crate) struct Stamp {
    pub(crate) ts: u64,
    pub(crate) id: u32,
    pub(crate) nonce: u32,
    pub(crate) seq: u64,
}

impl Stamp {
    pub(crate) fn read(head: &[u8]) -> Stamp {
        let u32_at = |i: usize| u32::from_le_bytes([head[i], head[i + 1], head[i + 2], head[i + 3]]);
        let u64_at = |i: usize| u64::from(u32_at(i)) | u64::from(u32_at(i + 4)) << 32;
        Stamp { ts: u64_at(0), id: u32_at(8), nonce: u32_at(12), seq: u64_at(16) }
    }
}

/// The rooms stamp: the broadcast stamp (its sequence number counts the messages of
/// the room), then the room number.
pub(crate) const ROOMS_HEAD: usize = 28;

/// A number that differs from run to run (tells this run's messages and rooms apart).
pub(crate) fn run_nonce() -> u32 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    (std::process::id() ^ t.subsec_nanos() ^ t.as_secs() as u32).wrapping_mul(0x9E37_79B9) | 1
}
