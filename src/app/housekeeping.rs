//! Rooms' timed work: telling v1 members who is online (at most once a second), and
//! freeing rooms empty for `--room-ttl`.

use std::rc::Rc;
use std::time::{Duration, Instant};

use log::debug;

use super::deliver::queue_flush;
use super::{App, ClientIo};
use crate::outqueue::Chunk;
use crate::pubsub::Audience;

/// A room tells its members who is online at most this often.
pub(super) const PRESENCE_EVERY: Duration = Duration::from_secs(1);

impl<T: ClientIo> App<T> {
    /// When rooms (or tokens) next need `handle_housekeeping`: a presence update is owed, an
    /// empty room's time is up, or the stats baseline is unasked for too long.
    pub fn poll_housekeeping(&self) -> Option<Instant> {
        let token = self.expiries.peek().map(|e| self.instant_of(e.at));
        let baseline = self.baseline.as_ref().map(|b| b.expires());
        [self.presence_at, self.rooms.poll_expiry(), self.poll_touch(), token, baseline].into_iter().flatten().min()
    }

    /// Tells rooms' v1 members who is online (one shared envelope per room whose count
    /// changed), and frees rooms that have been empty for --room-ttl.
    pub fn handle_housekeeping(&mut self, now: Instant) {
        // Frozen for a handover: presence and expiries wait (a thaw), or are the new
        // process's.
        if self.parked.is_some() {
            return;
        }
        self.now = now;
        self.touch(now);
        self.expire_tokens(now);
        // Nobody asks for /api/stats any more: its baseline goes.
        if self.baseline.as_ref().is_some_and(|b| b.expires() <= now) {
            self.baseline = None;
        }
        if self.presence_at.is_some_and(|t| t <= now) {
            self.presence_at = None;
            self.last_presence = Some(now);
            self.tell_presence();
            let App { clients, rooms, envelopes, config, dirty, metrics, .. } = self;
            rooms.take_presence(|room| {
                let frame = envelopes.presence(room.json_name(), room.online());
                metrics.presence_updates += 1;
                for member in room.topic.members(Audience::Enveloped) {
                    let Some(client) = clients.get_mut(member).filter(|c| c.conn.is_open()) else { continue };
                    if client.conn.send(Chunk::Shared(Rc::clone(&frame)), now, &config.limits).is_ok() {
                        metrics.messages_out += 1;
                    }
                    queue_flush(dirty, member, client);
                }
            });
            // A send that cut a slow consumer is settled when its flush is done.
        }
        if self.rooms.poll_expiry().is_some_and(|t| t <= now) {
            let freed = self.rooms.expire(now);
            debug!("freed {freed} empty rooms");
        }
    }
}

/// When rooms may next tell their presence: now, or a second after they last did.
pub(super) fn presence_time(last: Option<Instant>, now: Instant) -> Instant {
    last.map_or(now, |t| (t + PRESENCE_EVERY).max(now))
}
