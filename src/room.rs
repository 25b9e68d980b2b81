//! The room's memory: a bounded ring of recent frames, shared with every queue that
//! holds them. It knows no sockets: the server fans frames out.

use std::collections::VecDeque;
use std::rc::Rc;
use std::time::Instant;

use crate::config::Limits;
use crate::outqueue::Chunk;
use crate::protocol::Conn;

/// What one fan-out did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FanOut {
    pub delivered: usize,
    /// Recipients over the backpressure limit, now closing with 1008.
    pub slow_consumers: usize,
}

/// Queues one shared frame on every open connection: a reference-count bump each,
/// never a copy. A recipient over its limit is closed; nobody waits for it.
pub fn fan_out<'a>(
    frame: &Rc<[u8]>,
    conns: impl Iterator<Item = &'a mut Conn>,
    now: Instant,
    limits: &Limits,
) -> FanOut {
    let mut result = FanOut::default();
    for conn in conns.filter(|c| c.is_open()) {
        match conn.send(Chunk::Shared(Rc::clone(frame)), now, limits) {
            Ok(()) => result.delivered += 1,
            Err(_) => result.slow_consumers += 1,
        }
    }
    result
}

pub struct History {
    frames: VecDeque<Rc<[u8]>>,
    bytes: usize,
    max_frames: usize,
    max_bytes: usize,
}

impl History {
    /// Keeps at most `max_frames` frames and `max_bytes` bytes, dropping the oldest.
    pub fn new(max_frames: usize, max_bytes: usize) -> History {
        History { frames: VecDeque::new(), bytes: 0, max_frames, max_bytes }
    }

    pub fn record(&mut self, frame: &Rc<[u8]>) {
        if self.max_frames == 0 || frame.len() > self.max_bytes {
            return;
        }
        self.frames.push_back(Rc::clone(frame));
        self.bytes += frame.len();
        while self.frames.len() > self.max_frames || self.bytes > self.max_bytes {
            if let Some(old) = self.frames.pop_front() {
                self.bytes -= old.len();
            }
        }
    }

    /// Oldest first.
    pub fn frames(&self) -> impl Iterator<Item = &Rc<[u8]>> {
        self.frames.iter()
    }

    pub fn len(&self) -> usize {
        self.frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frame(tag: u8, len: usize) -> Rc<[u8]> {
        vec![tag; len].into()
    }

    #[test]
    fn keeps_the_newest_frames_in_order() {
        let mut h = History::new(2, 1000);
        for tag in 1..=3 {
            h.record(&frame(tag, 1));
        }
        let tags: Vec<u8> = h.frames().map(|f| f[0]).collect();
        assert_eq!(tags, vec![2, 3]);
    }

    #[test]
    fn a_zero_bound_keeps_nothing_and_oversized_frames_are_not_kept() {
        let mut h = History::new(0, 1000);
        h.record(&frame(1, 1));
        assert!(h.is_empty());
        let mut h = History::new(5, 10);
        h.record(&frame(1, 11));
        assert!(h.is_empty());
    }

    proptest! {
        #[test]
        fn never_longer_nor_larger_than_its_bounds_and_always_in_order(
            lens in proptest::collection::vec(1usize..50, 0..100), max_frames in 0usize..10, max_bytes in 1usize..200,
        ) {
            let mut h = History::new(max_frames, max_bytes);
            for (i, len) in lens.iter().enumerate() {
                let mut f = vec![0u8; *len + 1];
                f[0] = i as u8;
                h.record(&f.into());
                prop_assert!(h.len() <= max_frames);
                prop_assert!(h.bytes() <= max_bytes);
                prop_assert_eq!(h.bytes(), h.frames().map(|f| f.len()).sum::<usize>());
                let order: Vec<u8> = h.frames().map(|f| f[0]).collect();
                prop_assert!(order.windows(2).all(|w| w[0].wrapping_add(1) == w[1] || w[0] < w[1]));
            }
        }
    }
}
