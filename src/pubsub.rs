//! Topics (rooms): explicit membership by client id and a numbered history of shared frames.
//!
//! A topic never sees a connection or a socket. It knows client ids (whatever the caller
//! uses to find a client again) and frames already shared as `Rc<[u8]>`; the caller fans
//! a published frame out to `members()`, a reference-count bump each.
//!
//! Membership is dense: the ids sit side by side in one `Vec`, so the fan-out loop reads
//! 8 bytes per recipient and never skips a hole. A leave fills its hole with the last
//! member, and a small table of slots keeps every key valid across that move. Keys carry
//! a generation, so a key that was already used to leave (or that belongs to a slot now
//! reused by someone else) is recognised as stale and ignored.
//!
//! Every published message gets the next number of its topic (1, 2, 3, ...; never reused).
//! The history keeps the newest messages that fit its bounds, always a run without holes
//! that ends at the last message, so a replay "after N" is either everything since N or
//! says plainly that it is not.

use std::collections::{vec_deque, VecDeque};
use std::rc::Rc;

/// Who a member is: the caller's own handle for a client (today a slab key of the runtime).
pub type ClientId = usize;

/// A message's number within its topic: 1, 2, 3, ...; 0 means "before the first".
pub type Seq = u64;

/// Where a member sits in a topic, for an O(1) leave. Every client stores one per topic
/// it is in, so it is small: a slot index and that slot's generation, 8 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MemberKey {
    slot: u32,
    /// The slot's generation when this membership began; always odd (see `Slot`).
    generation: u32,
}

/// Which encoding of a topic's messages a member gets. Each audience is a dense list of
/// its own, so a publish fans out one shared frame per audience, to a slice of ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Audience {
    /// The message as it was sent (a plain WebSocket client).
    Plain = 0,
    /// The message in an envelope (the application's protocol wraps it: `mioket.v1`).
    Enveloped = 1,
}

/// What the history counts of a message against its byte bound.
pub trait Weight {
    fn weight(&self) -> usize;
}

impl Weight for Rc<[u8]> {
    fn weight(&self) -> usize {
        self.len()
    }
}

impl MemberKey {
    /// A key no membership has (its generation is even): leaving with it does nothing.
    pub const NONE: MemberKey = MemberKey { slot: u32::MAX, generation: 0 };
}

/// One topic: who is in it and what was said in it. `M` is a published message as the
/// history keeps it (a shared frame, or several encodings of one).
#[derive(Debug)]
pub struct Topic<M = Rc<[u8]>> {
    members: [Members; 2],
    history: History<M>,
}

impl<M: Weight + Clone> Topic<M> {
    /// An empty topic whose history keeps at most `max_messages` messages and `max_bytes`
    /// bytes. It allocates nothing until the first join or publish.
    pub fn new(max_messages: usize, max_bytes: usize) -> Topic<M> {
        Topic { members: [Members::new(), Members::new()], history: History::new(max_messages, max_bytes) }
    }

    /// Adds a member to an audience, O(1) amortized. The caller keeps the key (and the
    /// audience) to leave with, and joins a client at most once: joining the same id
    /// twice makes two memberships.
    ///
    /// # Panics
    /// With 2^32 - 1 members at once (tens of GiB of ids alone).
    pub fn join(&mut self, id: ClientId, audience: Audience) -> MemberKey {
        self.members[audience as usize].insert(id)
    }

    /// Removes the membership `key` stands for, O(1). A stale key (its membership already
    /// left, even if the slot now holds someone else) or one for a slot this topic never
    /// had is ignored. Keys do not name their topic: leave with the key this topic gave.
    pub fn leave(&mut self, key: MemberKey, audience: Audience) {
        self.members[audience as usize].remove(key);
    }

    /// Every current member of an audience once, in no particular order (a leave moves
    /// the last member into the leaver's place). This is the fan-out loop: a walk over a
    /// dense slice.
    pub fn members(&self, audience: Audience) -> impl ExactSizeIterator<Item = ClientId> + '_ {
        self.members[audience as usize].ids.iter().copied()
    }

    /// Members of every audience.
    pub fn member_count(&self) -> usize {
        self.members[0].ids.len() + self.members[1].ids.len()
    }

    pub fn audience_count(&self, audience: Audience) -> usize {
        self.members[audience as usize].ids.len()
    }

    /// Numbers the message (`last_seq() + 1`), keeps it in the history within its bounds,
    /// and returns its seq. Allocates nothing once the history has reached its bounds.
    pub fn publish(&mut self, message: &M) -> Seq {
        self.history.push(message)
    }

    /// The seq of the newest message, 0 before the first.
    pub fn last_seq(&self) -> Seq {
        self.history.last_seq
    }

    pub fn history(&self) -> &History<M> {
        &self.history
    }

    /// Forgets the oldest kept message (for a bound shared by many topics); returns the
    /// bytes it weighed, 0 when nothing was kept.
    pub fn drop_oldest(&mut self) -> usize {
        self.history.drop_oldest()
    }

    /// Forgets the history and goes on numbering after `last_seq` (a backplane's mirror
    /// taking the numbers another process gave).
    pub fn restart(&mut self, last_seq: Seq) {
        self.history.restart(last_seq);
    }
}

/// Dense membership: `ids[i]` is a member and `owners[i]` the slot that points at `i`.
/// A slot is occupied while its generation is odd; then `index` is the member's place in
/// `ids`. A vacant slot's `index` is the next vacant slot (a free list through `slots`).
#[derive(Debug)]
struct Members {
    ids: Vec<ClientId>,
    owners: Vec<u32>,
    slots: Vec<Slot>,
    /// The first vacant slot, or `NO_SLOT`.
    free: u32,
}

#[derive(Clone, Copy, Debug)]
struct Slot {
    generation: u32,
    index: u32,
}

const NO_SLOT: u32 = u32::MAX;

impl Members {
    fn new() -> Members {
        Members { ids: Vec::new(), owners: Vec::new(), slots: Vec::new(), free: NO_SLOT }
    }

    fn insert(&mut self, id: ClientId) -> MemberKey {
        let place = u32::try_from(self.ids.len()).ok().filter(|&p| p < NO_SLOT).expect("fewer than 2^32 - 1 members");
        // `NO_SLOT` is past every slot, so `get` finds no vacant one then.
        let slot = match self.slots.get(self.free as usize) {
            Some(vacant) => {
                let slot = self.free;
                self.free = vacant.index;
                slot
            }
            _ => {
                // Slots never outnumber members at their peak, so this fits as well.
                self.slots.push(Slot { generation: 0, index: 0 });
                (self.slots.len() - 1) as u32
            }
        };
        let entry = &mut self.slots[slot as usize];
        // Even to odd: occupied. A slot's generation wraps after 2^31 memberships in it;
        // only a key kept unused that long could then be mistaken for a live one.
        entry.generation = entry.generation.wrapping_add(1);
        entry.index = place;
        self.ids.push(id);
        self.owners.push(slot);
        MemberKey { slot, generation: entry.generation }
    }

    fn remove(&mut self, key: MemberKey) {
        let Some(entry) = self.slots.get_mut(key.slot as usize) else { return };
        // Keys are only made by `insert`, with an odd generation: equal means occupied
        // by this very membership.
        if entry.generation != key.generation {
            return;
        }
        let place = entry.index as usize;
        entry.generation = entry.generation.wrapping_add(1);
        entry.index = self.free;
        self.free = key.slot;
        self.ids.swap_remove(place);
        self.owners.swap_remove(place);
        if let Some(&moved) = self.owners.get(place) {
            self.slots[moved as usize].index = place as u32;
        }
    }
}

/// The newest messages of a topic, oldest first, within two bounds: at most
/// `max_messages` frames and `max_bytes` bytes (counted as `frame.len()`). The oldest go
/// first. A frame larger than `max_bytes`, or any frame when `max_messages` is 0, is
/// numbered but not kept.
///
/// What is kept is always the newest `len()` messages, `first_seq()..=last_seq()` with
/// no hole: a message that cannot be kept empties the history, because older messages
/// on the far side of a hole could never make a complete replay.
#[derive(Debug)]
pub struct History<M = Rc<[u8]>> {
    /// Seqs are implied: the back frame is `last_seq`, each one before it one less.
    frames: VecDeque<M>,
    bytes: usize,
    last_seq: Seq,
    max_messages: usize,
    max_bytes: usize,
}

impl<M: Weight + Clone> History<M> {
    pub fn new(max_messages: usize, max_bytes: usize) -> History<M> {
        History { frames: VecDeque::new(), bytes: 0, last_seq: 0, max_messages, max_bytes }
    }

    /// Numbers the message and keeps it if it fits, dropping the oldest to make room.
    pub fn push(&mut self, frame: &M) -> Seq {
        self.last_seq += 1;
        if self.max_messages == 0 || frame.weight() > self.max_bytes {
            // The capacity stays: the next frame that fits reuses it.
            self.frames.clear();
            self.bytes = 0;
            return self.last_seq;
        }
        // Room first, then the push: the ring never grows past `max_messages`.
        while self.frames.len() >= self.max_messages || self.bytes + frame.weight() > self.max_bytes {
            match self.frames.pop_front() {
                Some(old) => self.bytes -= old.weight(),
                None => break,
            }
        }
        self.frames.push_back(frame.clone());
        self.bytes += frame.weight();
        self.last_seq
    }

    /// The seq of the newest message, 0 before the first.
    pub fn last_seq(&self) -> Seq {
        self.last_seq
    }

    /// Forgets every kept message and goes on numbering after `last_seq`.
    pub fn restart(&mut self, last_seq: Seq) {
        self.frames.clear();
        self.bytes = 0;
        self.last_seq = last_seq;
    }

    /// Forgets the oldest kept message; returns its weight (0 when nothing is kept).
    /// What stays is still the newest messages without a hole. For a bound shared by
    /// many histories: an emptied history gives its ring back.
    pub fn drop_oldest(&mut self) -> usize {
        let Some(old) = self.frames.pop_front() else { return 0 };
        let weight = old.weight();
        self.bytes -= weight;
        if self.frames.is_empty() {
            self.frames = VecDeque::new();
        }
        weight
    }

    pub fn len(&self) -> usize {
        self.frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// The kept frames' bytes, `frame.len()` summed.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The first seq still kept, if any.
    #[cfg(test)]
    pub fn first_seq(&self) -> Option<Seq> {
        (!self.frames.is_empty()).then(|| self.next_kept())
    }

    /// The oldest kept seq, or `last_seq + 1` when nothing is kept.
    fn next_kept(&self) -> Seq {
        self.last_seq + 1 - self.frames.len() as Seq
    }

    /// Oldest first, with their seqs.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (Seq, &M)> + '_ {
        Replay { complete: true, next: self.next_kept(), frames: self.frames.iter() }
    }

    /// The messages numbered after `after`, oldest first, and whether they are all of
    /// them. `complete` is true when every message after `after` is still kept: then a
    /// client that has seen up to `after` misses nothing. `after == last_seq()` gives an
    /// empty, complete replay; `after > last_seq()` (a number this topic never gave, say
    /// from another epoch) an empty one that is not complete. An incomplete replay still
    /// yields what is kept after `after`.
    pub fn replay_after(&self, after: Seq) -> Replay<'_, M> {
        let first = self.next_kept();
        if after > self.last_seq {
            return Replay { complete: false, next: self.last_seq + 1, frames: self.frames.range(0..0) };
        }
        // `after` is at most `last_seq`, so `skip` is at most `len()`.
        let skip = after.saturating_sub(first - 1) as usize;
        Replay { complete: after + 1 >= first, next: first + skip as Seq, frames: self.frames.range(skip..) }
    }
}

/// A replay from the history: an iterator of `(seq, frame)`, oldest first.
#[derive(Clone, Debug)]
pub struct Replay<'a, M = Rc<[u8]>> {
    /// True when the replay holds every message after the number asked for.
    pub complete: bool,
    next: Seq,
    frames: vec_deque::Iter<'a, M>,
}

impl<'a, M> Iterator for Replay<'a, M> {
    type Item = (Seq, &'a M);

    fn next(&mut self) -> Option<Self::Item> {
        let frame = self.frames.next()?;
        let seq = self.next;
        self.next += 1;
        Some((seq, frame))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.frames.size_hint()
    }
}

impl<M> ExactSizeIterator for Replay<'_, M> {}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{HashMap, HashSet};

    fn frame(tag: u8, len: usize) -> Rc<[u8]> {
        vec![tag; len].into()
    }

    fn sorted_members(topic: &Topic) -> Vec<ClientId> {
        let mut ids: Vec<ClientId> = topic.members(Audience::Plain).collect();
        ids.sort_unstable();
        ids
    }

    fn seqs(replay: Replay<'_>) -> Vec<Seq> {
        replay.map(|(seq, _)| seq).collect()
    }

    /// A topic that has published `count` one-byte frames tagged with their seq.
    fn topic_with(max_messages: usize, max_bytes: usize, count: u8) -> Topic {
        let mut topic = Topic::new(max_messages, max_bytes);
        for tag in 1..=count {
            topic.publish(&frame(tag, 1));
        }
        topic
    }

    #[test]
    fn members_lists_each_joined_client_once() {
        let mut topic = Topic::new(0, 0);
        for id in [7, 3, 9] {
            topic.join(id, Audience::Plain);
        }
        assert_eq!(sorted_members(&topic), vec![3, 7, 9]);
        assert_eq!(topic.member_count(), 3);
    }

    #[test]
    fn leave_removes_only_that_member_and_the_other_keys_stay_valid() {
        let mut topic = Topic::new(0, 0);
        let keys: Vec<MemberKey> = (0..5).map(|id| topic.join(id, Audience::Plain)).collect();
        // Leaving the first moves the last into its place: its key must follow.
        topic.leave(keys[0], Audience::Plain);
        assert_eq!(sorted_members(&topic), vec![1, 2, 3, 4]);
        topic.leave(keys[4], Audience::Plain);
        topic.leave(keys[2], Audience::Plain);
        assert_eq!(sorted_members(&topic), vec![1, 3]);
        topic.leave(keys[1], Audience::Plain);
        topic.leave(keys[3], Audience::Plain);
        assert_eq!(topic.member_count(), 0);
    }

    #[test]
    fn leaving_twice_or_with_a_stale_key_changes_nothing() {
        let mut topic = Topic::new(0, 0);
        let old = topic.join(1, Audience::Plain);
        topic.leave(old, Audience::Plain);
        topic.leave(old, Audience::Plain);
        assert_eq!(topic.member_count(), 0);
        // Client 2 now sits in the slot client 1 had; the old key must not remove it.
        let new = topic.join(2, Audience::Plain);
        assert_eq!(new.slot, old.slot);
        topic.leave(old, Audience::Plain);
        assert_eq!(sorted_members(&topic), vec![2]);
    }

    #[test]
    fn a_rejoin_gets_a_new_key_and_the_old_one_stays_stale() {
        let mut topic = Topic::new(0, 0);
        let first = topic.join(1, Audience::Plain);
        topic.leave(first, Audience::Plain);
        let second = topic.join(1, Audience::Plain);
        assert_ne!(first, second);
        topic.leave(first, Audience::Plain);
        assert_eq!(sorted_members(&topic), vec![1]);
        topic.leave(second, Audience::Plain);
        assert_eq!(topic.member_count(), 0);
    }

    #[test]
    fn a_key_for_a_slot_this_topic_never_had_is_ignored() {
        let mut big: Topic = Topic::new(0, 0);
        let keys: Vec<MemberKey> = (0..10).map(|id| big.join(id, Audience::Plain)).collect();
        let mut small = Topic::new(0, 0);
        small.join(1, Audience::Plain);
        small.leave(keys[9], Audience::Plain);
        assert_eq!(sorted_members(&small), vec![1]);
    }

    #[test]
    fn churn_reuses_slots_so_membership_memory_stays_at_its_peak() {
        let mut topic = Topic::new(0, 0);
        let mut keys: Vec<MemberKey> = (0..100).map(|id| topic.join(id, Audience::Plain)).collect();
        let capacities =
            |t: &Topic| (t.members[0].ids.capacity(), t.members[0].owners.capacity(), t.members[0].slots.len());
        let peak = capacities(&topic);
        for round in 0..1000 {
            let i = (round * 37) % keys.len();
            topic.leave(keys[i], Audience::Plain);
            keys[i] = topic.join(1000 + round, Audience::Plain);
        }
        assert_eq!(capacities(&topic), peak);
        assert_eq!(topic.member_count(), 100);
    }

    #[test]
    fn an_empty_topic_is_small_and_allocates_nothing() {
        let topic: Topic = Topic::new(100, 1 << 20);
        assert!(std::mem::size_of::<Topic>() <= 240, "{} bytes", std::mem::size_of::<Topic>());
        assert_eq!(std::mem::size_of::<MemberKey>(), 8);
        assert_eq!(
            topic.members[0].ids.capacity() + topic.members[0].owners.capacity() + topic.members[0].slots.capacity(),
            0
        );
        assert_eq!(topic.history.frames.capacity(), 0);
    }

    #[test]
    fn publish_numbers_messages_1_2_3_and_never_reuses_a_number() {
        let mut topic = Topic::new(2, 1000);
        assert_eq!(topic.last_seq(), 0);
        let seqs: Vec<Seq> = (1..=5).map(|tag| topic.publish(&frame(tag, 1))).collect();
        assert_eq!(seqs, vec![1, 2, 3, 4, 5]);
        assert_eq!(topic.last_seq(), 5);
        let kept: Vec<(Seq, u8)> = topic.history().iter().map(|(seq, f)| (seq, f[0])).collect();
        assert_eq!(kept, vec![(4, 4), (5, 5)]);
    }

    #[test]
    fn publish_allocates_nothing_once_the_history_is_full() {
        let mut topic = topic_with(100, 1 << 20, 100);
        let capacity = topic.history.frames.capacity();
        for tag in 0..=255 {
            topic.publish(&frame(tag, 1));
            assert_eq!(topic.history.frames.capacity(), capacity);
        }
        // The byte bound too: larger frames evict more, the ring never grows.
        for len in [1000, 1 << 19, 1 << 20, 3] {
            topic.publish(&frame(0, len));
            assert_eq!(topic.history.frames.capacity(), capacity);
        }
    }

    #[test]
    fn keeps_the_newest_frames_in_order() {
        let topic = topic_with(2, 1000, 3);
        let tags: Vec<u8> = topic.history().iter().map(|(_, f)| f[0]).collect();
        assert_eq!(tags, vec![2, 3]);
        assert_eq!(topic.history().first_seq(), Some(2));
    }

    #[test]
    fn keeps_the_newest_frames_within_the_byte_bound() {
        let mut topic = Topic::new(100, 10);
        for (tag, len) in [(1, 4), (2, 4), (3, 4), (4, 2)] {
            topic.publish(&frame(tag, len));
        }
        let kept: Vec<(Seq, u8)> = topic.history().iter().map(|(seq, f)| (seq, f[0])).collect();
        assert_eq!(kept, vec![(2, 2), (3, 3), (4, 4)]);
        assert_eq!(topic.history().bytes(), 10);
        // A frame of exactly the bound is kept, alone.
        topic.publish(&frame(5, 10));
        assert_eq!(topic.history().len(), 1);
        assert_eq!(topic.history().first_seq(), Some(5));
    }

    #[test]
    fn a_zero_bound_keeps_nothing_but_still_numbers_messages() {
        let mut topic = Topic::new(0, 1000);
        assert_eq!(topic.publish(&frame(1, 1)), 1);
        assert_eq!(topic.publish(&frame(2, 1)), 2);
        assert!(topic.history().is_empty());
        assert_eq!(topic.history().first_seq(), None);
        assert_eq!(topic.history().bytes(), 0);
        let mut topic = Topic::new(5, 0);
        assert_eq!(topic.publish(&frame(1, 1)), 1);
        assert!(topic.history().is_empty());
        // Empty frames fit even a zero byte bound.
        assert_eq!(topic.publish(&frame(2, 0)), 2);
        assert_eq!(topic.history().first_seq(), Some(2));
    }

    #[test]
    fn an_oversized_frame_is_numbered_not_kept_and_leaves_no_hole() {
        let mut topic = Topic::new(5, 10);
        topic.publish(&frame(1, 1));
        assert_eq!(topic.publish(&frame(2, 11)), 2);
        assert!(topic.history().is_empty());
        assert_eq!(topic.history().bytes(), 0);
        topic.publish(&frame(3, 1));
        assert_eq!(seqs(topic.history().replay_after(0)), vec![3]);
        assert!(!topic.history().replay_after(1).complete);
        assert!(topic.history().replay_after(2).complete);
    }

    #[test]
    fn replay_after_zero_is_complete_while_nothing_was_dropped() {
        let topic = topic_with(5, 1000, 5);
        let replay = topic.history().replay_after(0);
        assert!(replay.complete);
        assert_eq!(replay.len(), 5);
        let got: Vec<(Seq, u8)> = replay.map(|(seq, f)| (seq, f[0])).collect();
        assert_eq!(got, vec![(1, 1), (2, 2), (3, 3), (4, 4), (5, 5)]);
        let topic = topic_with(5, 1000, 6);
        let replay = topic.history().replay_after(0);
        assert!(!replay.complete);
        assert_eq!(seqs(replay), vec![2, 3, 4, 5, 6]);
    }

    #[test]
    fn replay_after_every_boundary_of_a_history_that_dropped_its_oldest() {
        // Seqs 1..=10 published, 6..=10 kept.
        let topic = topic_with(5, 1000, 10);
        let history = topic.history();
        let cases: [(Seq, bool, &[Seq]); 7] = [
            (0, false, &[6, 7, 8, 9, 10]),
            (4, false, &[6, 7, 8, 9, 10]),
            (5, true, &[6, 7, 8, 9, 10]),
            (6, true, &[7, 8, 9, 10]),
            (8, true, &[9, 10]),
            (10, true, &[]),
            (11, false, &[]),
        ];
        for (after, complete, expected) in cases {
            let replay = history.replay_after(after);
            assert_eq!(replay.complete, complete, "after {after}");
            assert_eq!(seqs(replay), expected, "after {after}");
        }
    }

    #[test]
    fn replay_of_a_new_topic_is_complete_only_from_zero() {
        let topic: Topic = Topic::new(5, 1000);
        let replay = topic.history().replay_after(0);
        assert!(replay.complete);
        assert_eq!(replay.count(), 0);
        assert!(!topic.history().replay_after(1).complete);
    }

    #[test]
    fn replay_of_a_history_that_keeps_nothing() {
        let topic = topic_with(0, 1000, 3);
        for (after, complete) in [(0, false), (2, false), (3, true), (4, false)] {
            let replay = topic.history().replay_after(after);
            assert_eq!(replay.complete, complete, "after {after}");
            assert_eq!(replay.count(), 0);
        }
    }

    #[derive(Clone, Debug)]
    enum Op {
        Join(ClientId),
        Leave(ClientId),
        /// Leaves with some key used before (index modulo how many there are).
        LeaveStale(usize),
        Publish(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0usize..6).prop_map(Op::Join),
            (0usize..6).prop_map(Op::Leave),
            any::<usize>().prop_map(Op::LeaveStale),
            (0usize..40).prop_map(Op::Publish),
        ]
    }

    proptest! {
        #[test]
        fn history_never_exceeds_its_bounds_and_numbers_without_gaps(
            lens in proptest::collection::vec(0usize..50, 0..100), max_messages in 0usize..10, max_bytes in 0usize..200,
        ) {
            let mut topic = Topic::new(max_messages, max_bytes);
            for (i, len) in lens.iter().enumerate() {
                let seq = topic.publish(&frame(i as u8, *len));
                prop_assert_eq!(seq, i as Seq + 1);
                let history = topic.history();
                prop_assert!(history.len() <= max_messages);
                prop_assert!(history.bytes() <= max_bytes);
                prop_assert_eq!(history.bytes(), history.iter().map(|(_, f)| f.len()).sum::<usize>());
                let kept: Vec<Seq> = history.iter().map(|(seq, _)| seq).collect();
                prop_assert!(kept.windows(2).all(|w| w[1] == w[0] + 1));
                // The newest is kept whenever it fits alone, and then it ends the history.
                let fits = max_messages > 0 && *len <= max_bytes;
                prop_assert_eq!(kept.last() == Some(&seq), fits);
                prop_assert_eq!(history.first_seq(), kept.first().copied());
            }
        }

        #[test]
        fn a_topic_behaves_like_a_set_of_members_and_a_list_of_every_message(
            ops in proptest::collection::vec(op(), 0..200), max_messages in 0usize..8, max_bytes in 0usize..120,
        ) {
            let mut topic = Topic::new(max_messages, max_bytes);
            let mut keys: HashMap<ClientId, MemberKey> = HashMap::new();
            let mut used_keys: Vec<MemberKey> = Vec::new();
            let mut model_members: HashSet<ClientId> = HashSet::new();
            let mut model_published: Vec<Rc<[u8]>> = Vec::new();
            for op in ops {
                match op {
                    Op::Join(id) => {
                        if model_members.insert(id) {
                            keys.insert(id, topic.join(id, Audience::Plain));
                        }
                    }
                    Op::Leave(id) => {
                        if let Some(key) = keys.remove(&id) {
                            topic.leave(key, Audience::Plain);
                            used_keys.push(key);
                            model_members.remove(&id);
                        }
                    }
                    Op::LeaveStale(i) => {
                        if !used_keys.is_empty() {
                            topic.leave(used_keys[i % used_keys.len()], Audience::Plain);
                        }
                    }
                    Op::Publish(len) => {
                        let f = frame(model_published.len() as u8, len);
                        prop_assert_eq!(topic.publish(&f), model_published.len() as Seq + 1);
                        model_published.push(f);
                    }
                }
                let mut expected: Vec<ClientId> = model_members.iter().copied().collect();
                expected.sort_unstable();
                prop_assert_eq!(sorted_members(&topic), expected);
                prop_assert_eq!(topic.member_count(), model_members.len());
            }

            // The model's history: the longest run of newest messages within both bounds.
            let last = model_published.len() as Seq;
            let mut kept_from = last + 1;
            let mut bytes = 0;
            for (i, f) in model_published.iter().enumerate().rev() {
                if (last + 1 - kept_from) as usize == max_messages || bytes + f.len() > max_bytes {
                    break;
                }
                bytes += f.len();
                kept_from = i as Seq + 1;
            }
            prop_assert_eq!(topic.last_seq(), last);
            for after in 0..=last + 1 {
                let replay = topic.history().replay_after(after);
                let complete = after <= last && (after + 1..=last).all(|seq| seq >= kept_from);
                prop_assert_eq!(replay.complete, complete, "after {}", after);
                let got: Vec<(Seq, &Rc<[u8]>)> = replay.collect();
                let expected: Vec<Seq> = (after + 1..=last).filter(|&seq| seq >= kept_from).collect();
                prop_assert_eq!(got.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(), expected);
                for (seq, f) in got {
                    prop_assert!(Rc::ptr_eq(f, &model_published[seq as usize - 1]));
                }
            }
        }
    }
}
