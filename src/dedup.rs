//! Publishes that a retry cannot duplicate, on one node (the local bus; with Redis
//! the record is the room's, in the publish script: backplane/link/scripts.rs).
//!
//! A publish with an id (a v1 `publish`'s `id`, an API publish's `Idempotency-Key`:
//! one namespace per room) is remembered for `--dedup-window` with the seq it got; a
//! repeat within the window gets that seq back and is not published again.
//!
//! Bounded against hostile clients: ids are at most `v1::MAX_ID` bytes, and a record
//! is a keyed 64-bit hash of the room's generation and the id (SipHash with this
//! process's random key: nobody can aim a collision) with its seq and time, no copy
//! of the id. At most `PER_ROOM` records per room and `PER_NODE` on the node: beyond
//! them the oldest go first (a retry of an id forgotten so early is published again).
//! A binary upgrade moves the key and the records (`DedupState`, app/freeze.rs).

use std::collections::{HashMap, VecDeque};
// SipHash-2-4 with keys of our own: unlike `RandomState`'s, they can move with a
// binary upgrade (the records' keys are hashes under them).
#[allow(deprecated)]
use std::hash::SipHasher;
use std::hash::{BuildHasherDefault, Hasher};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::frozen;
use crate::pubsub::Seq;
use crate::rooms::RoomId;

/// Records one room keeps at most (its oldest go first).
pub const PER_ROOM: usize = 10_000;
/// Records the node keeps at most, all rooms together (about 100 bytes each).
pub const PER_NODE: usize = 100_000;

/// An id's key in its room: a keyed hash, already random, used as is by the table.
pub type Key = u64;

pub struct Dedup {
    /// Zero: off.
    window: Duration,
    /// The hash's key: random per process, or the old process's after an upgrade.
    hash_key: (u64, u64),
    records: HashMap<Key, Record, BuildHasherDefault<Prehashed>>,
    /// Every record, oldest first (the window is the same for all: also in expiry order).
    order: VecDeque<(Key, Instant, RoomId)>,
    /// Each room's records, oldest first (a subset of `order`).
    rooms: HashMap<RoomId, RoomRecords, BuildHasherDefault<Prehashed>>,
}

struct Record {
    seq: Seq,
    /// When it was made: also what tells it from a later record of the same key in the queues.
    at: Instant,
}

struct RoomRecords {
    generation: u32,
    order: VecDeque<(Key, Instant)>,
}

impl Dedup {
    pub fn new(window: Duration) -> Dedup {
        Dedup {
            window,
            hash_key: (random(), random()),
            records: HashMap::default(),
            order: VecDeque::new(),
            rooms: HashMap::default(),
        }
    }

    pub fn is_on(&self) -> bool {
        !self.window.is_zero()
    }

    /// The key of `id` in the room of this generation (a room made again in the same
    /// slot has another generation: an earlier room's ids are not its own).
    pub fn key(&self, generation: u32, id: &str) -> Key {
        // Two writes (a tuple makes three): SipHash is most of a lookup's cost.
        #[allow(deprecated)]
        let mut hasher = SipHasher::new_with_keys(self.hash_key.0, self.hash_key.1);
        hasher.write(id.as_bytes());
        hasher.write_u32(generation);
        hasher.finish()
    }

    /// The seq of a publish with this key within the window, if there was one.
    pub fn find(&self, key: Key, now: Instant) -> Option<Seq> {
        let record = self.records.get(&key)?;
        (now.saturating_duration_since(record.at) < self.window).then_some(record.seq)
    }

    /// Remembers a publish's seq (the oldest records go when over a bound).
    pub fn remember(&mut self, room: RoomId, generation: u32, key: Key, seq: Seq, now: Instant) {
        self.expire(now);
        self.records.insert(key, Record { seq, at: now });
        self.order.push_back((key, now, room));
        let records = self.rooms.entry(room).or_insert_with(|| RoomRecords { generation, order: VecDeque::new() });
        if records.generation != generation {
            // The room was made again: the earlier room's records wait in `order` only.
            records.generation = generation;
            records.order.clear();
        }
        records.order.push_back((key, now));
        if records.order.len() > PER_ROOM {
            if let Some((key, at)) = records.order.pop_front() {
                forget(&mut self.records, key, at);
            }
        }
        if self.order.len() > PER_NODE {
            self.pop_oldest();
        }
    }

    fn expire(&mut self, now: Instant) {
        while self.order.front().is_some_and(|&(_, at, _)| now.saturating_duration_since(at) >= self.window) {
            self.pop_oldest();
        }
    }

    /// The node's oldest record goes (it is its room's oldest too, if its room still has it).
    fn pop_oldest(&mut self) {
        let Some((key, at, room)) = self.order.pop_front() else { return };
        forget(&mut self.records, key, at);
        if let Some(records) = self.rooms.get_mut(&room) {
            if records.order.front() == Some(&(key, at)) {
                records.order.pop_front();
            }
            if records.order.is_empty() {
                self.rooms.remove(&room);
            }
        }
    }
}

/// The records as plain data, for a binary upgrade (src/upgrade/): the hash's key
/// (a record's key is a hash under it) and each record within the window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DedupState {
    pub hash_key: (u64, u64),
    /// Oldest first.
    #[serde(deserialize_with = "frozen::seq")]
    pub records: Vec<RecordState>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecordState {
    /// Its room (an index in the snapshot's rooms) and that room's generation.
    pub room: u32,
    pub generation: u32,
    pub key: Key,
    pub seq: Seq,
    /// How long ago it was made.
    pub age: Duration,
}

impl Dedup {
    /// The records within the window of the rooms that move: `room` gives a room's
    /// index in the snapshot and its generation (the records of a room since made
    /// again, or gone, stay behind).
    pub fn freeze(&self, now: Instant, room: impl Fn(RoomId) -> Option<(u32, u32)>) -> DedupState {
        let mut records = Vec::new();
        for (&id, kept) in &self.rooms {
            let Some((index, generation)) = room(id).filter(|&(_, g)| g == kept.generation) else { continue };
            for &(key, at) in &kept.order {
                // Not one remembered again since, nor past the window.
                let live =
                    self.records.get(&key).filter(|r| r.at == at && now.saturating_duration_since(at) < self.window);
                if let Some(r) = live {
                    records.push((
                        at,
                        RecordState { room: index, generation, key, seq: r.seq, age: frozen::ago(at, now) },
                    ));
                }
            }
        }
        records.sort_by_key(|&(at, _)| at);
        DedupState { hash_key: self.hash_key, records: records.into_iter().map(|(_, r)| r).collect() }
    }

    /// Takes the old process's key and records (with this process's window and
    /// bounds): `room` gives a snapshot room index's id here and its generation;
    /// records of another room or generation are dropped.
    pub fn thaw(&mut self, state: &DedupState, now: Instant, room: impl Fn(u32) -> Option<(RoomId, u32)>) {
        *self = Dedup::new(self.window);
        self.hash_key = state.hash_key;
        if !self.is_on() {
            return;
        }
        for r in &state.records {
            if let Some((id, _)) = room(r.room).filter(|&(_, g)| g == r.generation) {
                self.remember(id, r.generation, r.key, r.seq, frozen::since(r.age, now));
            }
        }
        // Those past the window (this process's may be shorter) go now.
        self.expire(now);
    }
}

/// 64 random bits (from the OS; failing that, std's own per-process random keys).
fn random() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    getrandom::u64().unwrap_or_else(|_| RandomState::new().build_hasher().finish())
}

/// A record goes, unless the key was remembered again since.
fn forget(records: &mut HashMap<Key, Record, BuildHasherDefault<Prehashed>>, key: Key, at: Instant) {
    if records.get(&key).is_some_and(|r| r.at == at) {
        records.remove(&key);
    }
}

/// The tables' hasher: their keys are keyed SipHash values already, or room ids (the
/// server's own small numbers, spread by a multiplication).
#[derive(Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }

    fn write_u32(&mut self, n: u32) {
        self.0 = u64::from(n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_secs(60);

    #[test]
    fn a_repeat_within_the_window_gets_the_first_seq() {
        let t0 = Instant::now();
        let mut d = Dedup::new(WINDOW);
        let key = d.key(1, "a");
        assert_eq!(d.find(key, t0), None);
        d.remember(0, 1, key, 7, t0);
        assert_eq!(d.find(key, t0 + WINDOW / 2), Some(7));
        assert_eq!(d.find(key, t0 + WINDOW), None, "expired");
        // Another id, another room generation: other keys.
        assert_ne!(d.key(1, "b"), key);
        assert_ne!(d.key(2, "a"), key);
        // Remembered again after the window: the new record stays when the old one expires.
        d.remember(0, 1, key, 9, t0 + WINDOW);
        assert_eq!(d.find(key, t0 + WINDOW), Some(9));
        assert_eq!(d.records.len(), 1);
    }

    #[test]
    fn bounded_per_room_and_per_node_oldest_first() {
        let t0 = Instant::now();
        let mut d = Dedup::new(WINDOW);
        for i in 0..PER_ROOM as u64 + 5 {
            let key = d.key(1, &i.to_string());
            d.remember(0, 1, key, i, t0);
        }
        assert_eq!(d.records.len(), PER_ROOM);
        assert_eq!(d.find(d.key(1, "4"), t0), None, "the oldest went");
        assert_eq!(d.find(d.key(1, "5"), t0), Some(5));
        // Many rooms: the node's bound, the oldest first.
        for room in 1..=(PER_NODE / PER_ROOM) as u32 + 1 {
            for i in 0..PER_ROOM as u64 {
                let key = d.key(room + 1, &i.to_string());
                d.remember(room, room + 1, key, i, t0);
            }
        }
        assert_eq!(d.records.len(), PER_NODE);
        assert!(d.order.len() <= PER_NODE && d.rooms.values().map(|r| r.order.len()).sum::<usize>() <= PER_NODE);
        assert_eq!(d.find(d.key(1, "6"), t0), None, "the first room's went first");
        // Expired records go at the next remember.
        let key = d.key(9, "x");
        d.remember(9, 9, key, 1, t0 + WINDOW);
        assert_eq!(d.records.len(), 1);
        assert_eq!(d.rooms.len(), 1);
    }

    #[test]
    fn a_room_made_again_starts_without_records() {
        let t0 = Instant::now();
        let mut d = Dedup::new(WINDOW);
        let old = d.key(1, "a");
        d.remember(0, 1, old, 1, t0);
        let new = d.key(2, "a");
        assert_eq!(d.find(new, t0), None);
        d.remember(0, 2, new, 1, t0);
        assert_eq!(d.rooms[&0].order.len(), 1);
    }

    #[test]
    fn frozen_records_move_with_their_key_and_those_of_unknown_rooms_are_dropped() {
        let t0 = Instant::now();
        let mut d = Dedup::new(WINDOW);
        let (a, b, gone) = (d.key(1, "a"), d.key(2, "b"), d.key(3, "c"));
        d.remember(0, 1, a, 7, t0);
        d.remember(5, 2, b, 8, t0);
        d.remember(6, 3, gone, 9, t0);
        // Room 0 at index 1, room 5 at index 0 now made again (generation 4), room 6 gone.
        let index = |id| match id {
            0 => Some((1, 1)),
            5 => Some((0, 4)),
            _ => None,
        };
        let later = t0 + WINDOW / 2;
        let state = d.freeze(later, index);
        let record = RecordState { room: 1, generation: 1, key: a, seq: 7, age: WINDOW / 2 };
        assert_eq!(state.records, std::slice::from_ref(&record));
        let mut e = Dedup::new(WINDOW);
        let mut state = state;
        // A record of a room the snapshot does not have, and one of another generation.
        state.records.push(RecordState { room: 9, ..record.clone() });
        state.records.push(RecordState { generation: 2, key: b, ..record });
        let t1 = Instant::now();
        e.thaw(&state, t1, |i| (i == 1).then_some((3, 1)));
        assert_eq!(e.key(1, "a"), a, "the same hash key");
        assert_eq!(e.find(a, t1), Some(7));
        assert_eq!(e.find(b, t1), None);
        assert_eq!(e.records.len(), 1);
        assert_eq!(e.find(a, t1 + WINDOW / 2), None, "its window counts from the first publish");
    }
}
