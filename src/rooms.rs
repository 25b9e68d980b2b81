//! Rooms: named topics with an epoch, created on first use, freed a while after
//! their last member left, their histories bounded together (docs/protocol.md).
//!
//! This is bookkeeping only, without I/O and without connections: the application
//! joins client ids, publishes messages it has encoded, and asks which rooms owe
//! their members a presence update and when the next room expires.

use std::borrow::Cow;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::rc::Rc;
use std::time::{Duration, Instant};

use slab::Slab;

pub use crate::error::InvalidName;
use crate::pubsub::{Audience, ClientId, MemberKey, Seq, Topic, Weight};

/// A room's index in `Rooms`; valid while the room lives (see `Room::generation`).
pub type RoomId = u32;

/// The longest room name, in bytes.
pub const MAX_NAME: usize = 128;

const NONE: RoomId = RoomId::MAX;

/// A room would be one beyond `--max-rooms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoomLimit;

/// The room a request path names: the path without its leading `/`, percent-decoded.
pub fn room_from_path(path: &str) -> Result<Cow<'_, str>, InvalidName> {
    let encoded = path.strip_prefix('/').ok_or(InvalidName::NotAPath)?;
    decode_name(encoded)
}

/// A percent-encoded room name (a path or a part of one), decoded and checked.
pub fn decode_name(encoded: &str) -> Result<Cow<'_, str>, InvalidName> {
    // percent-encoding passes a bad escape through as it is; we refuse it instead.
    let bytes = encoded.as_bytes();
    for (i, _) in bytes.iter().enumerate().filter(|(_, &b)| b == b'%') {
        let hex = |j: usize| bytes.get(j).is_some_and(u8::is_ascii_hexdigit);
        if !(hex(i + 1) && hex(i + 2)) {
            return Err(InvalidName::BadEscape);
        }
    }
    let name = percent_encoding::percent_decode_str(encoded).decode_utf8().map_err(|_| InvalidName::BadEscape)?;
    check_name(&name)?;
    Ok(name)
}

/// At most `MAX_NAME` bytes of UTF-8 in NFC, without a control or an invisible
/// character, and, unless it is `""` (the default room), made of `/`-separated
/// segments that are neither empty nor `.` or `..`. One name, one look, one path.
pub fn check_name(name: &str) -> Result<(), InvalidName> {
    if name.len() > MAX_NAME {
        return Err(InvalidName::TooLong);
    }
    if name.chars().any(char::is_control) {
        return Err(InvalidName::Control);
    }
    if name.chars().any(is_invisible) {
        return Err(InvalidName::Invisible);
    }
    if !unicode_normalization::is_nfc(name) {
        return Err(InvalidName::NotNfc);
    }
    if !name.is_empty() && name.split('/').any(|segment| matches!(segment, "" | "." | "..")) {
        return Err(InvalidName::DotOrEmptySegment);
    }
    Ok(())
}

/// Unicode's format characters (general category Cf, Unicode 16: bidirectional
/// controls, zero-width joiners and spaces, U+FEFF, tags, ...) and the line and
/// paragraph separators (Zl, Zp).
fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{AD}'
            | '\u{600}'..='\u{605}'
            | '\u{61C}'
            | '\u{6DD}'
            | '\u{70F}'
            | '\u{890}'..='\u{891}'
            | '\u{8E2}'
            | '\u{180E}'
            | '\u{200B}'..='\u{200F}'
            | '\u{2028}'..='\u{202E}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{206F}'
            | '\u{FEFF}'
            | '\u{FFF9}'..='\u{FFFB}'
            | '\u{110BD}'
            | '\u{110CD}'
            | '\u{13430}'..='\u{1343F}'
            | '\u{1BCA0}'..='\u{1BCA3}'
            | '\u{1D173}'..='\u{1D17A}'
            | '\u{E0001}'
            | '\u{E0020}'..='\u{E007F}'
    )
}

/// A kept message: the encodings made when it was published (at least one). A join
/// that needs the other one makes it from this one.
#[derive(Clone, Debug)]
pub struct Stored {
    pub plain: Option<Rc<[u8]>>,
    pub v1: Option<Rc<[u8]>>,
}

impl Weight for Stored {
    fn weight(&self) -> usize {
        self.plain.as_ref().map_or(0, |f| f.len()) + self.v1.as_ref().map_or(0, |f| f.len())
    }
}

pub struct Room {
    name: Box<str>,
    /// The name as a JSON string, quotes included, spliced into every envelope.
    json_name: Box<str>,
    /// 16 lowercase hex digits, random, made with the room.
    epoch: [u8; 16],
    pub topic: Topic<Stored>,
    /// Tells this room from an earlier one in the same slot.
    generation: u32,
    /// The history-recency list (only rooms whose history keeps something).
    lru: Link,
    /// When the last member left (or the room was made without one).
    empty_since: Option<Instant>,
    /// An entry for this room waits in `Rooms::expiring`.
    expiry_queued: bool,
    /// The member count last told in a presence, and whether one may be owed.
    presence_told: usize,
    presence_queued: bool,
    /// A v1 member's welcome told another count than the other members were told
    /// (the count may come back to theirs before the presence: it is sent anyway).
    presence_mixed: bool,
    /// With Redis: the members of the room on the other nodes (their parts of the
    /// presence), and whether this node's part may have changed since it was told.
    remote: usize,
    part_queued: bool,
}

#[derive(Clone, Copy)]
struct Link {
    prev: RoomId,
    next: RoomId,
    linked: bool,
}

impl Room {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn json_name(&self) -> &str {
        &self.json_name
    }

    pub fn epoch(&self) -> &str {
        // Made of ASCII hex digits only.
        std::str::from_utf8(&self.epoch).unwrap_or_default()
    }

    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// Members online: this node's, and (with Redis) the other nodes'.
    pub fn online(&self) -> usize {
        self.topic.member_count() + self.remote
    }
}

/// How rooms are bounded (from the configuration).
#[derive(Clone, Debug)]
pub struct RoomLimits {
    pub max_rooms: usize,
    /// A room without members is freed this long after its last member left.
    pub ttl: Duration,
    /// Messages and bytes each room's history keeps at most.
    pub history_messages: usize,
    pub history_room_bytes: usize,
    /// Bytes all histories keep together.
    pub history_memory: usize,
}

pub struct Rooms {
    limits: RoomLimits,
    by_name: HashMap<Box<str>, RoomId>,
    rooms: Slab<Room>,
    /// `Stored::weight` summed over every room's history.
    history_bytes: usize,
    /// Least recently used first: the rooms whose oldest messages go first.
    lru_head: RoomId,
    lru_tail: RoomId,
    /// Empty rooms by when they expire: (deadline, room, generation), one per room.
    expiring: BinaryHeap<Reverse<(Instant, RoomId, u32)>>,
    /// Rooms whose member count changed since their last presence.
    presence: Vec<RoomId>,
    /// With Redis (`track_parts`): rooms whose members here changed since this node
    /// last told its part of their presence.
    parts: Vec<RoomId>,
    track_parts: bool,
    generations: u32,
    pub created: u64,
    /// Rooms freed: after their TTL, at once when they never had a message, or to
    /// make room for a new one.
    pub expired: u64,
}

impl Rooms {
    pub fn new(limits: RoomLimits) -> Rooms {
        Rooms {
            limits,
            by_name: HashMap::new(),
            rooms: Slab::new(),
            history_bytes: 0,
            lru_head: NONE,
            lru_tail: NONE,
            expiring: BinaryHeap::new(),
            presence: Vec::new(),
            parts: Vec::new(),
            track_parts: false,
            generations: 0,
            created: 0,
            expired: 0,
        }
    }

    pub fn find(&self, name: &str) -> Option<RoomId> {
        self.by_name.get(name).copied()
    }

    /// The room named `name`, made (empty, with a new epoch) if there is none. With
    /// `--max-rooms` rooms, the empty room that would expire first (emptied longest
    /// ago) is freed to make room; only a table of rooms with members refuses.
    pub fn find_or_create(&mut self, name: &str, now: Instant) -> Result<RoomId, RoomLimit> {
        if let Some(id) = self.find(name) {
            return Ok(id);
        }
        if self.rooms.len() >= self.limits.max_rooms {
            let oldest = self.next_expiring(None).ok_or(RoomLimit)?;
            self.free(oldest);
            self.expired += 1;
        }
        self.generations = self.generations.wrapping_add(1);
        let room = Room {
            name: name.into(),
            json_name: crate::v1::json_string(name).into(),
            epoch: new_epoch(),
            topic: Topic::new(self.limits.history_messages, self.limits.history_room_bytes),
            generation: self.generations,
            lru: Link { prev: NONE, next: NONE, linked: false },
            empty_since: None,
            expiry_queued: false,
            presence_told: 0,
            presence_queued: false,
            presence_mixed: false,
            remote: 0,
            part_queued: false,
        };
        let id = self.rooms.insert(room) as RoomId;
        self.by_name.insert(name.into(), id);
        self.created += 1;
        // Made without a member (an API publish): it expires like any empty room.
        self.became_empty(id, now);
        Ok(id)
    }

    pub fn get(&self, id: RoomId) -> Option<&Room> {
        self.rooms.get(id as usize)
    }

    pub fn len(&self) -> usize {
        self.rooms.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.rooms.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Room> + '_ {
        self.rooms.iter().map(|(_, room)| room)
    }

    /// Every room with its id.
    pub fn entries(&self) -> impl Iterator<Item = (RoomId, &Room)> + '_ {
        self.rooms.iter().map(|(id, room)| (id as RoomId, room))
    }

    /// Kept messages and their bytes, over all rooms.
    pub fn history_totals(&self) -> (usize, usize) {
        (self.rooms.iter().map(|(_, r)| r.topic.history().len()).sum(), self.history_bytes)
    }

    pub fn join(&mut self, id: RoomId, client: ClientId, audience: Audience) -> Option<MemberKey> {
        let room = self.rooms.get_mut(id as usize)?;
        let key = room.topic.join(client, audience);
        room.empty_since = None;
        self.touch(id);
        self.presence_changed(id, audience == Audience::Enveloped);
        Some(key)
    }

    pub fn leave(&mut self, id: RoomId, key: MemberKey, audience: Audience, now: Instant) {
        let Some(room) = self.rooms.get_mut(id as usize) else { return };
        room.topic.leave(key, audience);
        if room.topic.member_count() == 0 {
            if room.topic.last_seq() == 0 {
                // Never had a message: nothing to resume, so nothing to keep (its
                // part of the presence, if told, is taken back).
                if self.track_parts {
                    self.parts.push(id);
                }
                self.free(id);
                self.expired += 1;
                return;
            }
            self.became_empty(id, now);
        }
        self.presence_changed(id, false);
    }

    /// Numbers and keeps a message; the caller fans it out. Older messages of the least
    /// recently used rooms go when all histories together pass `history_memory`.
    pub fn publish(&mut self, id: RoomId, message: &Stored) -> Seq {
        let Some(room) = self.rooms.get_mut(id as usize) else { return 0 };
        let before = room.topic.history().bytes();
        let seq = room.topic.publish(message);
        let after = room.topic.history().bytes();
        let kept = !room.topic.history().is_empty();
        self.history_bytes = self.history_bytes + after - before;
        if kept {
            self.touch(id);
        } else {
            self.unlink(id);
        }
        while self.history_bytes > self.limits.history_memory && self.lru_head != NONE {
            let oldest = self.lru_head;
            let room = &mut self.rooms[oldest as usize];
            self.history_bytes -= room.topic.drop_oldest();
            if room.topic.history().is_empty() {
                self.unlink(oldest);
            }
        }
        seq
    }

    /// With a backplane: the room as Redis has it. Takes Redis's epoch (16 hex digits;
    /// anything else keeps ours), forgets the history, and numbers on after `last_seq`;
    /// the caller publishes the kept messages that follow it.
    pub fn restart(&mut self, id: RoomId, epoch: &str, last_seq: Seq) {
        let Some(room) = self.rooms.get_mut(id as usize) else { return };
        if let Ok(epoch) = <[u8; 16]>::try_from(epoch.as_bytes()) {
            if epoch.iter().all(u8::is_ascii_hexdigit) {
                room.epoch = epoch;
            }
        }
        self.history_bytes -= room.topic.history().bytes();
        room.topic.restart(last_seq);
        self.unlink(id);
    }

    /// When the next empty room expires.
    pub fn poll_expiry(&self) -> Option<Instant> {
        self.expiring.peek().map(|Reverse((at, _, _))| *at)
    }

    /// Frees the rooms that have been empty for the TTL; returns how many.
    pub fn expire(&mut self, now: Instant) -> usize {
        let mut freed = 0;
        while let Some(id) = self.next_expiring(Some(now)) {
            self.free(id);
            freed += 1;
        }
        self.expired += freed as u64;
        freed
    }

    /// Takes the empty room that expires first off the heap, if its deadline is at
    /// most `until` (`None`: whenever it is); the caller frees it. Entries of rooms
    /// gone or joined again are dropped on the way.
    fn next_expiring(&mut self, until: Option<Instant>) -> Option<RoomId> {
        while let Some(&Reverse((at, id, generation))) = self.expiring.peek() {
            if until.is_some_and(|until| at > until) {
                return None;
            }
            self.expiring.pop();
            let Some(room) = self.rooms.get_mut(id as usize).filter(|r| r.generation == generation) else {
                continue;
            };
            room.expiry_queued = false;
            match room.empty_since {
                Some(since) if room.topic.member_count() == 0 => {
                    if since + self.limits.ttl <= until.unwrap_or(at) {
                        return Some(id);
                    }
                    // Emptied again since this entry was made: wait for its new deadline.
                    self.became_empty(id, since);
                }
                _ => {}
            }
        }
        None
    }

    /// Rooms whose member count changed since their last presence, each once, with the
    /// count to tell; their queue is emptied. Rooms without v1 members are skipped
    /// (plain clients get no presence).
    pub fn take_presence(&mut self, mut tell: impl FnMut(&mut Room)) {
        for id in std::mem::take(&mut self.presence) {
            let Some(room) = self.rooms.get_mut(id as usize) else { continue };
            room.presence_queued = false;
            let online = room.online();
            let mixed = std::mem::take(&mut room.presence_mixed);
            if (online != room.presence_told || mixed) && room.topic.audience_count(Audience::Enveloped) > 0 {
                tell(room);
            }
            room.presence_told = online;
        }
    }

    /// The member count changed (`joined_v1`: by a v1 member's join, whose welcome
    /// tells the count). Only v1 members who were not told the new count are owed a
    /// presence: with none, the count is simply noted as told.
    fn presence_changed(&mut self, id: RoomId, joined_v1: bool) {
        if let Some(room) = self.rooms.get_mut(id as usize) {
            if self.track_parts && !room.part_queued {
                room.part_queued = true;
                self.parts.push(id);
            }
            let uninformed = room.topic.audience_count(Audience::Enveloped) - usize::from(joined_v1);
            if joined_v1 && uninformed > 0 && room.online() != room.presence_told {
                room.presence_mixed = true;
            }
            if uninformed == 0 && !room.presence_queued {
                room.presence_told = room.online();
            } else if !room.presence_queued {
                room.presence_queued = true;
                self.presence.push(id);
            }
        }
    }

    /// With Redis: rooms' parts of the presence are told (`take_changed_parts`).
    pub fn track_parts(&mut self) {
        self.track_parts = true;
    }

    /// Rooms whose members here changed since their part was last taken (rooms
    /// freed since are among them: their ids no longer name them, or name another).
    pub fn take_changed_parts(&mut self) -> Vec<RoomId> {
        let ids = std::mem::take(&mut self.parts);
        for &id in &ids {
            if let Some(room) = self.rooms.get_mut(id as usize) {
                room.part_queued = false;
            }
        }
        ids
    }

    /// The other nodes' members of a room changed: a presence may be owed.
    pub fn set_remote(&mut self, id: RoomId, remote: usize) {
        let Some(room) = self.rooms.get_mut(id as usize) else { return };
        if room.remote != remote {
            room.remote = remote;
            let track = std::mem::replace(&mut self.track_parts, false);
            self.presence_changed(id, false);
            self.track_parts = track;
        }
    }

    fn became_empty(&mut self, id: RoomId, since: Instant) {
        let Some(room) = self.rooms.get_mut(id as usize) else { return };
        room.empty_since = Some(since);
        if !room.expiry_queued {
            room.expiry_queued = true;
            self.expiring.push(Reverse((since + self.limits.ttl, id, room.generation)));
        }
        // Entries of rooms freed before their deadline (never used, or to make room)
        // would pile up for a TTL: past twice the rooms, keep only the live ones.
        if self.expiring.len() > 2 * self.rooms.len() + 64 {
            let rooms = &self.rooms;
            self.expiring.retain(|Reverse((_, id, generation))| {
                rooms.get(*id as usize).is_some_and(|r| r.generation == *generation && r.expiry_queued)
            });
        }
    }

    fn free(&mut self, id: RoomId) {
        self.unlink(id);
        let room = self.rooms.remove(id as usize);
        self.history_bytes -= room.topic.history().bytes();
        self.by_name.remove(&room.name);
    }

    /// Makes `id` the most recently used, if its history keeps something.
    fn touch(&mut self, id: RoomId) {
        if self.rooms[id as usize].topic.history().is_empty() {
            return;
        }
        self.unlink(id);
        let tail = self.lru_tail;
        self.rooms[id as usize].lru = Link { prev: tail, next: NONE, linked: true };
        match tail {
            NONE => self.lru_head = id,
            tail => self.rooms[tail as usize].lru.next = id,
        }
        self.lru_tail = id;
    }

    fn unlink(&mut self, id: RoomId) {
        let Link { prev, next, linked } = self.rooms[id as usize].lru;
        if !linked {
            return;
        }
        match prev {
            NONE => self.lru_head = next,
            prev => self.rooms[prev as usize].lru.next = next,
        }
        match next {
            NONE => self.lru_tail = prev,
            next => self.rooms[next as usize].lru.prev = prev,
        }
        self.rooms[id as usize].lru = Link { prev: NONE, next: NONE, linked: false };
    }
}

/// 16 random lowercase hex digits (a room's epoch; also the backplane's node names).
pub(crate) fn new_epoch() -> [u8; 16] {
    let bits = getrandom::u64().unwrap_or_else(|_| {
        // No system randomness: the clock still makes epochs that differ across runs.
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        now.as_nanos() as u64 ^ u64::from(std::process::id()).rotate_left(40)
    });
    let mut epoch = [0u8; 16];
    for (i, digit) in epoch.iter_mut().enumerate() {
        *digit = b"0123456789abcdef"[((bits >> (60 - 4 * i)) & 0xF) as usize];
    }
    epoch
}

// A binary upgrade's rooms: their state as plain data, and rooms made again from it.
mod frozen;
pub use frozen::RoomsState;

#[cfg(test)]
mod tests;
