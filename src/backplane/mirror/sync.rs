//! Each room's continuity with Redis: its fetches (`fetch`, and `resync_all` once
//! Redis is back), the live messages (`live`: delivered in order, buffered while a
//! fetch is out, a gap or a new epoch fetched), a fetch's answer (`fetched`: the gap
//! filled or the room restarted), and publishes whose live copy is late (`look_for_late`).

use std::time::Instant;

use log::{debug, warn};

use super::{presence, Connections, Effect, Mirror, RoomSync, SyncState};
use crate::backplane::{Command, Fetched, Message, LATE};
use crate::pubsub::Seq;
use crate::rooms::{RoomId, Rooms};

impl Mirror {
    /// The mirror state of a room (a room made again in the same slot starts afresh).
    pub(super) fn sync(&mut self, room: RoomId, generation: u32) -> &mut RoomSync {
        let sync = self.rooms.entry(room).or_default();
        if sync.generation != generation {
            // Another room in the slot: the one before takes its part back.
            self.outbox.extend(presence::untold(sync, &self.node));
            let old = std::mem::replace(sync, RoomSync { generation, ..RoomSync::default() });
            self.outbox.extend(old.waiting);
            if old.listening {
                self.dropped.push(old.name);
            }
        }
        sync
    }

    /// Asks Redis for a room's state after `since`.
    pub(super) fn fetch(&mut self, room: RoomId, generation: u32, name: &str, since: Seq) {
        // The link listens to the room's channel before it fetches.
        let sync = self.sync(room, generation);
        sync.listening = true;
        if *sync.name != *name {
            sync.name = name.into();
        }
        let req = self.request();
        self.stats.fetches += 1;
        self.fetches.insert(req, (room, generation));
        self.outbox.push(Command::Fetch { req, room: name.into(), since });
    }

    /// Once Redis is reachable again: rooms with members (or joins waiting) that may
    /// have missed messages read their stream; the others are fetched on their next join.
    pub(super) fn resync_all(&mut self, rooms: &Rooms, now: Instant) {
        if !self.shards.iter().any(Connections::up) {
            return;
        }
        let up: Vec<bool> = self.shards.iter().map(Connections::up).collect();
        let shards = &self.settings.shards;
        let mut fetch = Vec::new();
        for (&id, sync) in &mut self.rooms {
            let Some(room) = rooms.get(id).filter(|r| r.generation() == sync.generation) else { continue };
            if !up.get(crate::backplane::shard_of(shards, room.name())).copied().unwrap_or(false) {
                continue;
            }
            if sync.state == SyncState::Unsynced && (room.topic.member_count() > 0 || !sync.joiners.is_empty()) {
                sync.state = SyncState::Fetching;
                let since = if sync.known { sync.last } else { 0 };
                fetch.push((id, sync.generation, room.name(), since));
            }
        }
        for (id, generation, name, since) in fetch {
            self.fetch(id, generation, name, since);
        }
        self.next_touch.get_or_insert(now);
    }

    /// A message of the room's mirror, delivered in order.
    fn deliver(&mut self, room: RoomId, message: Message, effects: &mut Vec<Effect>) {
        let publisher = self.publisher_of(&message);
        effects.push(Effect::Deliver { room, message, publisher });
    }

    /// A message from the subscription (or buffered during a fetch).
    pub(super) fn live(
        &mut self,
        room: RoomId,
        generation: u32,
        name: &str,
        epoch: String,
        message: Message,
        effects: &mut Vec<Effect>,
    ) {
        let sync = self.sync(room, generation);
        let same_epoch = epoch == sync.epoch;
        let last = sync.last;
        match sync.state {
            SyncState::Fetching => sync.buffer.push((epoch, message)),
            SyncState::Unsynced => {}
            SyncState::Synced if same_epoch && message.seq <= last => self.stats.duplicates += 1,
            SyncState::Synced if same_epoch && message.seq == last + 1 => {
                sync.last = message.seq;
                self.deliver(room, message, effects);
            }
            SyncState::Synced => {
                // A gap, or a new epoch: the stream says what happened.
                sync.state = SyncState::Fetching;
                sync.buffer.push((epoch, message));
                self.fetch(room, generation, name, last);
            }
        }
    }

    /// A room's state from Redis: fill the mirror's gap (or start it afresh), welcome
    /// the joins that waited, then deliver what came live meanwhile.
    pub(super) fn fetched(
        &mut self,
        req: u64,
        result: Result<Fetched, ()>,
        rooms: &Rooms,
        now: Instant,
        effects: &mut Vec<Effect>,
    ) {
        let Some((room, generation)) = self.fetches.remove(&req) else { return };
        let alive = rooms.get(room).filter(|r| r.generation() == generation);
        // A subscription lost while the fetch was answered: what came meanwhile is read
        // again once it is back.
        let subscribed = alive.is_some_and(|r| self.subscribed_for(r.name()));
        let sync = self.sync(room, generation);
        let joiners = std::mem::take(&mut sync.joiners);
        let buffer = std::mem::take(&mut sync.buffer);
        // The publishes that waited go now, numbered after what the fetch read (their
        // live copies come on the channel, listened to since before the fetch).
        let waiting = std::mem::take(&mut sync.waiting);
        let (fetched, r) = match (result, alive) {
            (Ok(fetched), Some(r)) => (fetched, r),
            _ => {
                sync.state = SyncState::Unsynced;
                Mirror::presence_unfetched(sync);
                debug!("backplane: a room's fetch failed; {} joins refused", joiners.len());
                self.outbox.extend(waiting);
                effects.extend(joiners.into_iter().map(|(id, _)| Effect::Refuse(id)));
                return;
            }
        };
        let known = std::mem::replace(&mut sync.known, true);
        let last = sync.last;
        let first = fetched.entries.first().map_or(fetched.seq + 1, |m| m.seq);
        let contiguous = fetched.entries.iter().enumerate().all(|(i, m)| m.seq == first + i as u64)
            && fetched.entries.last().is_none_or(|m| m.seq == fetched.seq);
        let continues = known && fetched.epoch == sync.epoch && fetched.seq >= last && contiguous && first <= last + 1;
        sync.epoch.clone_from(&fetched.epoch);
        sync.last = fetched.seq;
        // A subscription lost while the fetch was out: what came meanwhile (messages
        // and presence) is read again once it is back (`resync_all`).
        sync.state = if subscribed { SyncState::Synced } else { SyncState::Unsynced };
        self.outbox.extend(waiting);
        if continues {
            let missed: Vec<Message> = fetched.entries.into_iter().filter(|m| m.seq > last).collect();
            self.stats.gaps_filled += missed.len() as u64;
            for message in missed {
                self.deliver(room, message, effects);
            }
        } else {
            if known {
                warn!("backplane: room {:?} lost messages in Redis; its members are closed (1013)", r.name());
                self.stats.rooms_lost += 1;
                effects.push(Effect::CloseMembers(room));
            }
            let keep = if contiguous && !fetched.entries.is_empty() { fetched.entries } else { Vec::new() };
            let base = keep.first().map_or(fetched.seq, |m| m.seq - 1);
            effects.push(Effect::Restart { room, epoch: fetched.epoch, base, keep });
        }
        // The other nodes' members first: the welcomes count them.
        self.presence_fetched(room, r.name(), fetched.presence, now, effects);
        effects.extend(joiners.into_iter().map(|(id, resume)| Effect::Welcome { id, room, resume }));
        for (epoch, message) in buffer {
            self.live(room, generation, r.name(), epoch, message, effects);
        }
    }

    /// Publishes Redis numbered whose live copy is late (a subscription that lost it
    /// without noticing): their rooms' streams are read, as for a gap; one still not
    /// delivered after that is refused, saying that it may have been published.
    pub(super) fn look_for_late(&mut self, rooms: &Rooms, now: Instant, effects: &mut Vec<Effect>) {
        let mut due = Vec::new();
        for (&req, accepted) in &mut self.accepted {
            if accepted.due <= now {
                due.push((req, accepted.clone()));
                accepted.looked_up = true;
                accepted.due = now + LATE;
            }
        }
        for (req, accepted) in due {
            if accepted.looked_up {
                self.accepted.remove(&req);
                if let Some(origin) = self.take_pending(req) {
                    self.stats.failed += 1;
                    effects.push(Effect::Lost(origin));
                }
                continue;
            }
            let Some(room) = rooms.find(&accepted.room) else { continue };
            let Some(r) = rooms.get(room) else { continue };
            let generation = r.generation();
            let up = self.is_up_for(&accepted.room);
            let sync = self.sync(room, generation);
            let last = sync.last;
            if accepted.seq > last && sync.state == SyncState::Synced && up {
                sync.state = SyncState::Fetching;
                self.stats.late_lookups += 1;
                self.fetch(room, generation, &accepted.room, last);
            }
        }
    }
}
