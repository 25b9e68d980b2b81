//! Memory held across clients: the budget of unfinished input (`--max-unfinished-memory`,
//! shed from the largest holders), and memory freed by large queues, given back to
//! the system now and then (`poll_trim`).

use std::time::{Duration, Instant};

use log::warn;

use super::{App, ClientIo};
use crate::metrics::CloseReason;

/// A queue this large, once drained or freed, counts toward giving memory back.
pub(super) const LARGE_QUEUE: usize = 256 * 1024;
/// Memory freed by large queues after which the allocator is asked to give pages
/// back, at most once per `TRIM_EVERY`: a trim walks the heap, so not on every free.
const TRIM_AFTER: usize = 1 << 20;
const TRIM_EVERY: Duration = Duration::from_secs(1);

impl<T: ClientIo> App<T> {
    /// When enough memory was freed by large queues to be worth giving back to the
    /// system (see `memory::give_back`).
    pub fn poll_trim(&self, now: Instant) -> Option<Instant> {
        (self.released >= TRIM_AFTER).then(|| self.last_trim.map_or(now, |t| t + TRIM_EVERY))
    }

    /// The runtime gave memory back at `now`.
    pub fn handle_trimmed(&mut self, now: Instant) {
        self.released = 0;
        self.last_trim = Some(now);
    }

    /// Keeps `unfinished` the sum of every client's `Conn::unfinished_memory` after
    /// something that may have changed `id`'s, which held `held` before. Over
    /// `--max-unfinished-memory` the largest holder gives its buffers back (an
    /// unfinished message is refused with 1013, a body with 503) until it is under:
    /// with many connections each holding part of a large message, memory stays
    /// within the budget instead of `--max-connections` x `--max-message`.
    #[inline]
    pub(super) fn track_unfinished(&mut self, id: usize, held: usize, now: Instant) {
        let after = self.clients.get(id).map_or(0, |c| c.conn.unfinished_memory());
        if after != held {
            self.unfinished_changed(id, held, after, now);
        }
    }

    /// `id`'s unfinished input went from `held` to `after` bytes.
    pub(super) fn unfinished_changed(&mut self, id: usize, held: usize, after: usize, now: Instant) {
        self.unfinished = (self.unfinished + after).saturating_sub(held);
        if self.unfinished > self.config.max_unfinished_memory {
            self.shed_unfinished(id, now);
        }
    }

    /// Over `--max-unfinished-memory`: the largest holders give their bytes back until
    /// the total is under it again.
    #[cold]
    fn shed_unfinished(&mut self, id: usize, now: Instant) {
        while self.unfinished > self.config.max_unfinished_memory {
            // A scan, only while over the budget: every turn frees a holder's bytes.
            let largest = self.clients.iter().map(|(i, c)| (c.conn.unfinished_memory(), i)).max();
            let Some((held, largest)) = largest.filter(|&(held, _)| held > 0) else { break };
            let client = &mut self.clients[largest];
            let open = client.conn.is_open();
            if client.conn.shed_unfinished(now, &self.config.limits) {
                self.metrics.unfinished_refused += 1;
                // Closing (or answering 503): its deadline moves sooner (the close's).
                self.retimed.push(largest);
                // A WebSocket is closed (1013); a request body gets a 503.
                if open && !client.conn.is_open() {
                    self.metrics.closed(CloseReason::Busy);
                }
                warn!("refusing {}: its unfinished input is the largest over --max-unfinished-memory", client.io);
            }
            let freed = held - client.conn.unfinished_memory();
            if freed == 0 {
                break;
            }
            self.unfinished -= freed;
            if largest != id {
                self.after_activity(largest);
            }
        }
    }
}
