//! The mirror's view of the shards (each with its three connections) and of the
//! rooms' channels it listens to: which connections are up, and the sweep that
//! unsubscribes from rooms this node no longer holds.

use std::time::Instant;

use super::{Mirror, SyncState, SWEEP};
use crate::backplane::{Command, Event};
use crate::rooms::Rooms;

/// A shard's three connections: up or not.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Connections {
    pub(super) commands: bool,
    pub(super) fetches: bool,
    pub(super) subscribed: bool,
}

impl Connections {
    pub(super) fn up(&self) -> bool {
        self.commands && self.fetches && self.subscribed
    }
}

impl Mirror {
    /// The three connections of a room's shard up: its publishes and fetches may go.
    pub(super) fn is_up_for(&self, room: &str) -> bool {
        self.shards.get(crate::backplane::shard_of(&self.settings.shards, room)).is_some_and(Connections::up)
    }

    /// The first shard's command connection up: the node registry's heartbeats go.
    pub(super) fn commands_up(&self) -> bool {
        self.shards.first().is_some_and(|c| c.commands)
    }

    /// The subscription of a room's shard up.
    pub(super) fn subscribed_for(&self, room: &str) -> bool {
        self.shards.get(crate::backplane::shard_of(&self.settings.shards, room)).is_some_and(|c| c.subscribed)
    }

    /// The command connection of a room's shard up.
    pub(super) fn commands_up_for(&self, room: &str) -> bool {
        self.shards.get(crate::backplane::shard_of(&self.settings.shards, room)).is_some_and(|c| c.commands)
    }

    /// A connection of a shard is up or down.
    pub(super) fn connection(&mut self, shard: usize, event: &Event, rooms: &Rooms, now: Instant) {
        let Some(state) = self.shards.get_mut(shard) else { return };
        let (flag, up) = match *event {
            Event::Commands(up) => (&mut state.commands, up),
            Event::Fetches(up) => (&mut state.fetches, up),
            Event::Subscribed(up) => (&mut state.subscribed, up),
            _ => return,
        };
        let lost = *flag && !up;
        *flag = up;
        if lost {
            self.stats.disconnects += 1;
        }
        if up && matches!(event, Event::Commands(_)) {
            self.presence_up(now);
        }
        if lost && matches!(event, Event::Subscribed(_)) {
            // Messages of the shard's rooms may be missed from now on: they read their
            // stream again once the subscription is back.
            let shards = &self.settings.shards;
            for sync in self.rooms.values_mut() {
                if sync.state == SyncState::Synced && crate::backplane::shard_of(shards, &sync.name) == shard {
                    sync.state = SyncState::Unsynced;
                }
            }
        }
        self.resync_all(rooms, now);
    }

    /// Stops listening to the rooms this node holds no more (no members, no join
    /// waiting, or gone), in one command; they are fetched again (since their last
    /// seq) when a member comes back.
    pub(super) fn sweep(&mut self, rooms: &Rooms, now: Instant) {
        let mut names = std::mem::take(&mut self.dropped);
        self.rooms.retain(|&id, sync| {
            let alive = rooms.get(id).filter(|r| r.generation() == sync.generation);
            let held = alive.is_some_and(|r| r.topic.member_count() > 0) || !sync.joiners.is_empty();
            if !sync.listening || held || sync.state == SyncState::Fetching {
                return true;
            }
            sync.listening = false;
            sync.state = SyncState::Unsynced;
            sync.buffer.clear();
            names.push(std::mem::take(&mut sync.name));
            alive.is_some()
        });
        if !names.is_empty() {
            self.outbox.push(Command::Unsubscribe { rooms: names });
        }
        self.next_sweep = self.rooms.values().any(|s| s.listening).then_some(now + SWEEP);
    }
}
