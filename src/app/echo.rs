//! Echo mode's write-through: an echo written straight to the socket rather than
//! through the queue.

use crate::metrics::Metrics;
use crate::outqueue::Chunk;

/// An echo at least this large is written at once rather than copied into the queue:
/// its copy costs more than a syscall of its own, and large messages rarely batch.
pub(super) const WRITE_THROUGH_MIN: usize = 16 * 1024;

/// Writes a frame (header and payload) straight to a client's socket; returns what
/// the socket did not take, for `Conn::finish_write_through`. (The payload may borrow
/// the `Conn`: the caller hands the rest over once it is copied out.)
#[inline(always)]
pub(super) fn write_through<T>(
    io: &mut T,
    parts: [&[u8]; 2],
    write_now: &mut impl FnMut(&mut T, [&[u8]; 2]) -> usize,
    metrics: &mut Metrics,
) -> Option<Chunk> {
    let written = write_now(io, parts);
    metrics.bytes_written += written as u64;
    metrics.messages_out += 1;
    Chunk::rest_of(parts, written)
}
