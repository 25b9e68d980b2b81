//! Rooms as plain data, for a binary upgrade (src/upgrade/): each room's name, epoch,
//! numbering, kept history and how long it has been empty, and the presence its
//! members were last told. Members are not here: the application joins its clients
//! again (`Rooms::join`), then `thaw_presence` puts back what they were told, so that
//! nobody hears a presence for a count that did not change.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{check_name, RoomId, Rooms, Stored};
use crate::frozen::{self, Bytes};
use crate::pubsub::Seq;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RoomsState {
    #[serde(deserialize_with = "frozen::seq")]
    pub rooms: Vec<RoomState>,
    /// The rooms that owe a presence (indexes in `rooms`), in the order they will tell it.
    #[serde(deserialize_with = "frozen::seq")]
    pub presence: Vec<u32>,
    pub created: u64,
    pub expired: u64,
    /// The last generation handed out (a room made later gets the next one).
    pub generations: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RoomState {
    pub name: String,
    /// Kept: the publish ids' records (src/dedup.rs) are hashes of it.
    pub generation: u32,
    pub epoch: [u8; 16],
    pub last_seq: Seq,
    /// The kept messages, oldest first, ending at `last_seq`.
    #[serde(deserialize_with = "frozen::seq")]
    pub history: Vec<StoredState>,
    /// How long ago its last member left (`None`: it has members).
    pub empty_for: Option<Duration>,
    pub presence_told: u64,
}

/// A kept message's encodings (at least one).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredState {
    pub plain: Option<Bytes>,
    pub v1: Option<Bytes>,
}

/// A room the state describes that no room could be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InvalidRoom(pub &'static str);

impl Rooms {
    /// Every room as plain data, and the room ids in that order.
    pub fn freeze(&self, now: Instant) -> (RoomsState, Vec<RoomId>) {
        let mut ids = Vec::with_capacity(self.rooms.len());
        let mut rooms = Vec::with_capacity(self.rooms.len());
        for (id, room) in self.rooms.iter() {
            ids.push(id as RoomId);
            let bytes = |frame: &Option<std::rc::Rc<[u8]>>| frame.as_ref().map(|f| Bytes(f.to_vec()));
            rooms.push(RoomState {
                name: room.name.to_string(),
                generation: room.generation,
                epoch: room.epoch,
                last_seq: room.topic.last_seq(),
                history: room
                    .topic
                    .history()
                    .iter()
                    .map(|(_, s)| StoredState { plain: bytes(&s.plain), v1: bytes(&s.v1) })
                    .collect(),
                empty_for: room.empty_since.filter(|_| room.topic.member_count() == 0).map(|t| frozen::ago(t, now)),
                // A member told another count by its welcome (`presence_mixed`): no
                // count was told to all, so the presence goes whatever the count.
                presence_told: if room.presence_mixed { u64::MAX } else { room.presence_told as u64 },
            });
        }
        let presence = self.presence.iter().filter_map(|id| ids.iter().position(|i| i == id)).map(|i| i as u32);
        let presence = presence.collect();
        let generations = self.generations;
        (RoomsState { rooms, presence, created: self.created, expired: self.expired, generations }, ids)
    }

    /// Makes these rooms (new, with no room yet) the ones `state` describes, without
    /// members; returns their ids in its order.
    pub fn thaw(&mut self, state: &RoomsState, now: Instant) -> Result<Vec<RoomId>, InvalidRoom> {
        let rooms = self;
        let mut ids = Vec::with_capacity(state.rooms.len().min(rooms.limits.max_rooms));
        for room in &state.rooms {
            // None is freed to make room: every id handed out stays valid.
            if rooms.rooms.len() >= rooms.limits.max_rooms {
                return Err(InvalidRoom("more rooms than --max-rooms"));
            }
            check_name(&room.name).map_err(|_| InvalidRoom("name"))?;
            if rooms.find(&room.name).is_some() {
                return Err(InvalidRoom("the same name twice"));
            }
            if !room.epoch.iter().all(|d| matches!(d, b'0'..=b'9' | b'a'..=b'f')) {
                return Err(InvalidRoom("epoch"));
            }
            let first = room.last_seq.checked_sub(room.history.len() as Seq).ok_or(InvalidRoom("history"))?;
            // Made with the generation it had.
            rooms.generations = room.generation.wrapping_sub(1);
            let id = rooms.find_or_create(&room.name, now).map_err(|_| InvalidRoom("too many rooms"))?;
            // Epoch and numbering as they were; the history published again on top.
            rooms.restart(id, std::str::from_utf8(&room.epoch).unwrap_or_default(), first);
            for kept in &room.history {
                let frame = |b: &Option<Bytes>| b.as_ref().map(|b| b.0.as_slice().into());
                let stored = Stored { plain: frame(&kept.plain), v1: frame(&kept.v1) };
                if stored.plain.is_none() && stored.v1.is_none() {
                    return Err(InvalidRoom("a kept message without an encoding"));
                }
                rooms.publish(id, &stored);
            }
            if let Some(ago) = room.empty_for {
                // Its expiry counts from when it was emptied in the old process.
                let since = frozen::since(ago, now);
                if let Some(r) = rooms.rooms.get_mut(id as usize) {
                    r.expiry_queued = false;
                }
                rooms.became_empty(id, since);
            }
            ids.push(id);
        }
        rooms.created = state.created;
        rooms.expired = state.expired;
        rooms.generations = state.generations;
        Ok(ids)
    }

    /// Once the members are back: each room's presence as it was told, owed again
    /// where it was owed or where the count is not the one told (members that did
    /// not move). Whether any room owes one.
    pub fn thaw_presence(&mut self, state: &RoomsState, ids: &[RoomId]) -> bool {
        for id in std::mem::take(&mut self.presence) {
            if let Some(room) = self.rooms.get_mut(id as usize) {
                room.presence_queued = false;
            }
        }
        for (saved, &id) in state.rooms.iter().zip(ids) {
            if let Some(room) = self.rooms.get_mut(id as usize) {
                room.presence_told = usize::try_from(saved.presence_told).unwrap_or(usize::MAX);
                // The members' joins again told nobody anything.
                room.presence_mixed = false;
            }
        }
        // Owed as they were, in their order; then where the count is not the one told.
        let owed = state.presence.iter().filter_map(|&i| ids.get(i as usize).copied());
        let changed: Vec<RoomId> = ids
            .iter()
            .copied()
            .filter(|&id| self.rooms.get(id as usize).is_some_and(|r| r.topic.member_count() != r.presence_told))
            .collect();
        for id in owed.chain(changed) {
            if let Some(room) = self.rooms.get_mut(id as usize).filter(|r| !r.presence_queued) {
                room.presence_queued = true;
                self.presence.push(id);
            }
        }
        !self.presence.is_empty()
    }
}
