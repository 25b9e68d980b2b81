//! The application's side of the Redis backplane (`--redis`, src/backplane.rs).
//!
//! With a backplane a publish does not fan out at once: it goes to Redis, which numbers
//! it, and the fan-out happens when it comes back from the subscription (our own
//! messages included), so every node delivers a room's messages in Redis's order with
//! Redis's seqs. Each node's `Rooms` is a mirror of the rooms it has members in: a
//! room is joined only once the mirror holds Redis's state (a fetch: epoch, seq and the
//! kept messages), and the joining client's input is held back until its welcome. Live
//! messages that come while a room is fetched are buffered and delivered after it,
//! skipping the seqs the fetch already gave; a gap in the seqs (a lost subscription)
//! is filled from the room's stream. A room whose Redis state does not continue its
//! mirror (Redis lost data) closes its members with 1013: on their resume they are
//! told `"recovered":false`.

use std::time::{Duration, Instant};

use log::{debug, warn};

use super::publish::{self, Publish, Source, Target};
use super::{encode, queue_flush, App, ClientIo};
use crate::api;
use crate::backplane::{Command, Event, Fetched, Message, Origin, Settings, SyncState};
use crate::frame::CloseCode;
use crate::outqueue::Chunk;
use crate::pubsub::Audience;
use crate::rooms::RoomId;
use crate::v1::{OpError, Payload, Resume};

/// Rooms per touch command.
const TOUCH_BATCH: usize = 512;

pub(super) fn settings(config: &crate::config::Config) -> Option<Settings> {
    let url = config.redis.clone()?;
    Some(Settings {
        url,
        outbox: config.redis_outbox,
        outbox_bytes: config.redis_outbox_bytes,
        history: config.history,
        history_bytes: config.history_memory,
        ttl: config.room_ttl.max(Duration::from_secs(1)),
    })
}

impl<T: ClientIo> App<T> {
    /// The backplane's settings, when it is on (`--redis`, broadcast mode).
    pub fn backplane_settings(&self) -> Option<&Settings> {
        self.backplane.as_ref().map(|bp| &bp.settings)
    }

    /// Commands for Redis, for the runtime to hand to the link (and empty).
    pub fn backplane_outbox(&mut self) -> Option<&mut Vec<Command>> {
        self.backplane.as_mut().map(|bp| &mut bp.outbox)
    }

    /// What the link reports.
    pub fn handle_backplane(&mut self, event: Event, now: Instant) {
        self.now = now;
        let Some(bp) = self.backplane.as_mut() else { return };
        match event {
            Event::Commands(up) => {
                if bp.commands_up && !up {
                    bp.stats.disconnects += 1;
                }
                bp.commands_up = up;
                self.resync_all();
            }
            Event::Fetches(up) => {
                if bp.fetches_up && !up {
                    bp.stats.disconnects += 1;
                }
                bp.fetches_up = up;
                self.resync_all();
            }
            Event::Subscribed(up) => {
                if bp.subscribed && !up {
                    bp.stats.disconnects += 1;
                    // Messages may be missed from now on: rooms read their stream again
                    // once the subscription is back.
                    for sync in bp.rooms.values_mut() {
                        if sync.state == SyncState::Synced {
                            sync.state = SyncState::Unsynced;
                        }
                    }
                }
                bp.subscribed = up;
                self.resync_all();
            }
            Event::Published { req, room, result } => {
                bp.answered(req, result.as_ref().ok().map(|(_, seq)| (&*room, *seq)), now);
                match result {
                    Ok((_, seq)) => {
                        // A client's publish is acked with its delivery here; an API
                        // request is answered now.
                        if matches!(bp.pending.get(&req), Some(Origin::Api { .. })) {
                            if let Some(Origin::Api { id, room }) = bp.take_pending(req) {
                                self.respond_later(id, api::published(&room, seq), now);
                            }
                        }
                    }
                    Err(()) => {
                        if let Some(origin) = bp.take_pending(req) {
                            bp.stats.failed += 1;
                            self.publish_lost(origin, now);
                        }
                    }
                }
            }
            Event::Fetched { req, result } => self.fetched(req, result, now),
            Event::Live { room, epoch, message } => {
                bp.stats.live_messages += 1;
                self.live(&room, epoch, message, now);
            }
            Event::Evicting(policy) => {
                if let Some(policy) = &policy {
                    warn!(
                        "backplane: Redis's maxmemory-policy is {policy}: it evicts keys, so rooms may vanish \
                         (members closed 1013, resumes not recovered); set it to noeviction"
                    );
                }
                bp.evicting = policy;
            }
            Event::RoundTrip { commands, took } => {
                bp.stats.round_trips += 1;
                bp.stats.commands += commands as u64;
                bp.stats.latency_sum += took;
                bp.stats.latency_max = bp.stats.latency_max.max(took);
            }
        }
    }

    /// Once Redis is reachable again: rooms with members (or joins waiting) that may
    /// have missed messages read their stream; the others are fetched on their next join.
    fn resync_all(&mut self) {
        let App { backplane, rooms, .. } = self;
        let Some(bp) = backplane.as_mut().filter(|bp| bp.is_up()) else { return };
        let mut fetch = Vec::new();
        for (&id, sync) in &mut bp.rooms {
            let Some(room) = rooms.get(id).filter(|r| r.generation() == sync.generation) else { continue };
            if sync.state == SyncState::Unsynced && (room.topic.member_count() > 0 || !sync.joiners.is_empty()) {
                sync.state = SyncState::Fetching;
                let since = if sync.known { room.topic.last_seq() } else { 0 };
                fetch.push((id, sync.generation, room.name().to_string(), since));
            }
        }
        for (id, generation, name, since) in fetch {
            bp.fetch(id, generation, &name, since);
        }
        bp.next_touch.get_or_insert(self.now);
    }

    fn respond_later(&mut self, id: usize, answer: Vec<u8>, now: Instant) {
        if let Some(client) = self.clients.get_mut(id) {
            client.conn.respond(Chunk::Owned(answer), now);
        }
        self.after_activity(id);
    }

    /// Tells a publisher that its message went to Redis and neither an answer nor
    /// its live copy came back: perhaps published (`refuse_publish`, the one place).
    fn publish_lost(&mut self, origin: Origin, now: Instant) {
        let (id, source) = match &origin {
            Origin::Api { id, .. } => (*id, Source::Api(*id)),
            Origin::Client { id, ack, v1: true } => (*id, Source::V1 { id: *id, ack: ack.as_deref() }),
            Origin::Client { id, v1: false, .. } => (*id, Source::Plain(*id)),
        };
        self.refuse_publish(source, publish::Refused::Lost, now);
        self.after_activity(id);
    }

    /// With a backplane, a join waits until the room's mirror holds Redis's state:
    /// true when this one waits (or was refused because Redis is unreachable).
    pub(super) fn defer_join(&mut self, id: usize, room: RoomId, resume: Option<&Resume<'_>>, now: Instant) -> bool {
        let App { backplane, rooms, .. } = self;
        let Some(bp) = backplane.as_mut() else { return false };
        let Some(r) = rooms.get(room) else { return false };
        let generation = r.generation();
        if bp.is_synced(room, generation) {
            return false;
        }
        let (name, last) = (r.name().to_string(), r.topic.last_seq());
        let up = bp.is_up();
        let sync = bp.sync(room, generation);
        if sync.known {
            // The mirror held Redis's state and is catching up (or waits for Redis):
            // the join is served from it now; what it missed reaches every member,
            // this one included, in order, when its stream is read.
            if sync.state == SyncState::Unsynced && up {
                sync.state = SyncState::Fetching;
                bp.fetch(room, generation, &name, last);
            }
            return false;
        }
        if !up {
            self.refuse_join(id, now);
            return true;
        }
        let resume = resume.map(|r| Resume { since: r.since, epoch: r.epoch.as_ref().map(|e| e.to_string().into()) });
        bp.wait(id, room, generation, resume);
        let sync = bp.sync(room, generation);
        if sync.state != SyncState::Fetching {
            sync.state = SyncState::Fetching;
            bp.fetch(room, generation, &name, 0);
        }
        true
    }

    /// A join that cannot be done now: a client in no room is closed (1013), one in
    /// other rooms gets an error envelope.
    fn refuse_join(&mut self, id: usize, now: Instant) {
        let in_rooms = self.session(id).is_some_and(|s| s.count() > 0);
        if in_rooms {
            self.refuse_op(id, OpError::BackplaneUnavailable, None, now);
        } else if let Some(client) = self.clients.get_mut(id) {
            client.conn.close(CloseCode::TRY_AGAIN_LATER, "backplane unavailable", now, &self.config.limits);
        }
    }

    /// Acts on a client's held input, in order, until it is held again (another join
    /// that waits).
    fn release(&mut self, id: usize, now: Instant) {
        let Some(mut held) = self.backplane.as_mut().and_then(|bp| bp.held.remove(&id)).map(|h| h.input) else {
            return;
        };
        // A flush, even of nothing, is where the runtime resumes a paused reader.
        if let Some(client) = self.clients.get_mut(id) {
            queue_flush(&mut self.dirty, id, client);
        }
        let mut rest = held.drain(..);
        while let Some((opcode, bytes)) = rest.next() {
            if !self.clients.contains(id) {
                return;
            }
            let Some(v1) = self.session(id).map(|s| s.v1) else { return };
            if v1 {
                self.handle_v1(id, opcode, &bytes, now);
            } else if let Some(room) = self.session(id).and_then(|s| s.first_room()) {
                let p =
                    Publish { source: Source::Plain(id), room: Target::Id(room), payload: Payload::of(opcode, &bytes) };
                // Too big: closed, and nothing after it is read.
                if self.publish(p, now) == Err(publish::Refused::TooBig) {
                    return;
                }
            }
            if let Some(again) = self.backplane.as_mut().and_then(|bp| bp.held.get_mut(&id)) {
                again.input.extend(rest);
                return;
            }
        }
    }

    /// A room's state from Redis: fill the mirror's gap (or start it afresh), welcome
    /// the joins that waited, then deliver what came live meanwhile.
    fn fetched(&mut self, req: u64, result: Result<Fetched, ()>, now: Instant) {
        let Some(bp) = self.backplane.as_mut() else { return };
        let Some((room, generation)) = bp.fetches.remove(&req) else { return };
        let alive = self.rooms.get(room).is_some_and(|r| r.generation() == generation);
        let sync = bp.sync(room, generation);
        let joiners = std::mem::take(&mut sync.joiners);
        let buffer = std::mem::take(&mut sync.buffer);
        let fetched = match result {
            Ok(fetched) if alive => fetched,
            _ => {
                sync.state = SyncState::Unsynced;
                debug!("backplane: a room's fetch failed; {} joins refused", joiners.len());
                for (id, _) in joiners {
                    self.refuse_join(id, now);
                    self.release(id, now);
                    self.after_activity(id);
                }
                return;
            }
        };
        let known = sync.known;
        sync.known = true;
        let Some(r) = self.rooms.get(room) else { return };
        let last = r.topic.last_seq();
        let first = fetched.entries.first().map_or(fetched.seq + 1, |m| m.seq);
        let contiguous = fetched.entries.iter().enumerate().all(|(i, m)| m.seq == first + i as u64)
            && fetched.entries.last().is_none_or(|m| m.seq == fetched.seq);
        let continues = known && fetched.epoch == r.epoch() && fetched.seq >= last && contiguous && first <= last + 1;
        if continues {
            let missed: Vec<Message> = fetched.entries.into_iter().filter(|m| m.seq > last).collect();
            if let Some(bp) = self.backplane.as_mut() {
                bp.stats.gaps_filled += missed.len() as u64;
            }
            for message in missed {
                self.deliver(room, message, now);
            }
        } else {
            if known {
                warn!("backplane: room {:?} lost messages in Redis; its members are closed (1013)", r.name());
                if let Some(bp) = self.backplane.as_mut() {
                    bp.stats.rooms_lost += 1;
                }
                self.close_members(room, now);
            }
            let keep = if contiguous && !fetched.entries.is_empty() { fetched.entries } else { Vec::new() };
            let base = keep.first().map_or(fetched.seq, |m| m.seq - 1);
            self.rooms.restart(room, &fetched.epoch, base);
            for message in keep {
                let stored =
                    encode(&self.rooms, &mut self.envelopes, room, payload_of(&message), self.config.history > 0);
                self.rooms.publish(room, &stored);
            }
        }
        if let Some(bp) = self.backplane.as_mut() {
            bp.sync(room, generation).state = SyncState::Synced;
        }
        for (id, resume) in joiners {
            if self.clients.contains(id) {
                self.join(id, room, resume.as_ref(), now);
                self.release(id, now);
                self.after_activity(id);
            }
        }
        let name = self.rooms.get(room).map(|r| r.name().to_string()).unwrap_or_default();
        for (epoch, message) in buffer {
            self.live(&name, epoch, message, now);
        }
    }

    /// A message from the subscription.
    fn live(&mut self, name: &str, epoch: String, message: Message, now: Instant) {
        let App { backplane, rooms, .. } = self;
        let Some(bp) = backplane.as_mut() else { return };
        // Rooms without a mirror here have nobody to deliver to.
        let Some(room) = rooms.find(name) else { return };
        let Some(r) = rooms.get(room) else { return };
        let (generation, last) = (r.generation(), r.topic.last_seq());
        let same_epoch = epoch == r.epoch();
        let sync = bp.sync(room, generation);
        match sync.state {
            SyncState::Fetching => sync.buffer.push((epoch, message)),
            SyncState::Unsynced => {}
            SyncState::Synced if same_epoch && message.seq <= last => bp.stats.duplicates += 1,
            SyncState::Synced if same_epoch && message.seq == last + 1 => self.deliver(room, message, now),
            SyncState::Synced => {
                // A gap, or a new epoch: the stream says what happened.
                sync.state = SyncState::Fetching;
                sync.buffer.push((epoch, message));
                bp.fetch(room, generation, name, last);
            }
        }
    }

    /// Fans a message numbered by Redis out to the room's members here; our own
    /// publisher gets its ack first.
    fn deliver(&mut self, room: RoomId, message: Message, now: Instant) {
        let origin = self.backplane.as_mut().and_then(|bp| {
            let req = bp.own_request(&message.origin)?;
            matches!(bp.pending.get(&req), Some(Origin::Client { .. })).then(|| bp.take_pending(req)).flatten()
        });
        let stored = encode(&self.rooms, &mut self.envelopes, room, payload_of(&message), self.config.history > 0);
        match origin {
            Some(Origin::Client { id, ack, .. }) => {
                self.fan_out(room, stored, Some((id, ack.as_deref())), now);
            }
            _ => {
                self.fan_out(room, stored, None, now);
            }
        }
    }

    /// Closes every member of a room with 1013, so that they resume (and learn that
    /// messages may be lost).
    fn close_members(&mut self, room: RoomId, now: Instant) {
        let Some(r) = self.rooms.get(room) else { return };
        let members: Vec<usize> =
            r.topic.members(Audience::Plain).chain(r.topic.members(Audience::Enveloped)).collect();
        for id in members {
            if let Some(client) = self.clients.get_mut(id) {
                client.conn.close(CloseCode::TRY_AGAIN_LATER, "room state lost, resume", now, &self.config.limits);
            }
            self.after_activity(id);
        }
    }

    /// When the backplane next wants `touch` (or has a late publish to look for).
    pub(super) fn poll_touch(&self) -> Option<Instant> {
        let bp = self.backplane.as_ref()?;
        let touch = bp.next_touch.filter(|_| bp.is_up());
        [touch, bp.poll_overdue()].into_iter().flatten().min()
    }

    /// Publishes Redis numbered whose live copy is late (a subscription that lost it
    /// without noticing): their rooms' streams are read, as for a gap; one still not
    /// delivered after that is refused, saying that it may have been published.
    fn look_for_late(&mut self, now: Instant) {
        let Some(bp) = self.backplane.as_mut() else { return };
        for (req, accepted) in bp.overdue(now) {
            let Some(bp) = self.backplane.as_mut() else { return };
            if accepted.looked_up {
                if let Some(origin) = bp.take_pending(req) {
                    bp.stats.failed += 1;
                    self.publish_lost(origin, now);
                }
                continue;
            }
            let Some(room) = self.rooms.find(&accepted.room) else { continue };
            let Some(r) = self.rooms.get(room) else { continue };
            let (generation, last) = (r.generation(), r.topic.last_seq());
            let up = bp.is_up();
            let sync = bp.sync(room, generation);
            if accepted.seq > last && sync.state == SyncState::Synced && up {
                sync.state = SyncState::Fetching;
                bp.stats.late_lookups += 1;
                bp.fetch(room, generation, &accepted.room, last);
            }
        }
    }

    /// Keeps the rooms with members here alive in Redis, and forgets the mirror state
    /// of rooms that are gone.
    pub(super) fn touch(&mut self, now: Instant) {
        if self.backplane.is_none() {
            return;
        }
        self.look_for_late(now);
        let App { backplane, rooms, .. } = self;
        let Some(bp) = backplane.as_mut() else { return };
        if bp.next_touch.is_none_or(|t| t > now) {
            return;
        }
        bp.next_touch = Some(now + (bp.settings.ttl / 3).max(Duration::from_millis(300)));
        let names: Vec<Box<str>> =
            rooms.iter().filter(|r| r.topic.member_count() > 0).map(|r| r.name().into()).collect();
        for chunk in names.chunks(TOUCH_BATCH) {
            bp.outbox.push(Command::Touch { rooms: chunk.to_vec() });
        }
        bp.rooms.retain(|&id, sync| rooms.get(id).is_some_and(|r| r.generation() == sync.generation));
    }

    /// The /healthz line and the /metrics lines of the backplane.
    pub(super) fn backplane_health(&self) -> String {
        self.backplane.as_ref().map_or(String::new(), |bp| bp.health(self.now))
    }

    pub(super) fn render_backplane(&self, out: &mut String) {
        if let Some(bp) = &self.backplane {
            bp.render(out, self.now);
        }
    }

    /// A client is gone.
    pub(super) fn forget_in_backplane(&mut self, id: usize) {
        if let Some(bp) = self.backplane.as_mut() {
            bp.forget(id);
        }
    }
}

fn payload_of(message: &Message) -> Payload<'_> {
    match std::str::from_utf8(&message.payload) {
        Ok(text) if !message.binary => Payload::Text(text),
        _ => Payload::Binary(&message.payload),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backplane::LATE;
    use crate::config::{Config, Mode};
    use crate::protocol::tests::{text, UPGRADE};

    const EPOCH: &str = "00000000000000e0";

    fn app() -> App<&'static str> {
        let url = crate::config::RedisUrl::parse("redis://127.0.0.1").unwrap();
        let config =
            Config { mode: Mode::Broadcast, welcome: None, history: 10, redis: Some(url), ..Config::default() };
        let mut app = App::new(config);
        let now = Instant::now();
        for event in [Event::Commands(true), Event::Fetches(true), Event::Subscribed(true)] {
            app.handle_backplane(event, now);
        }
        app
    }

    /// Everything queued for client `id` (every socket takes everything).
    fn written(app: &mut App<&'static str>, id: usize) -> Vec<u8> {
        crate::app::tests::flush(app).remove(&id).unwrap_or_default()
    }

    fn commands(app: &mut App<&'static str>) -> Vec<Command> {
        std::mem::take(app.backplane_outbox().unwrap())
    }

    /// A plain client in room "chat", its join's fetch answered (an empty room).
    fn member(app: &mut App<&'static str>, now: Instant) -> usize {
        let id = app.connect("peer", crate::app::Listener::Main, now).ok().unwrap();
        app.handle_input(id, &mut UPGRADE.to_vec(), now, |_, _| 0);
        let [Command::Fetch { req, .. }] = commands(app)[..] else { panic!("a fetch") };
        let fetched = Fetched { epoch: EPOCH.into(), seq: 0, entries: Vec::new() };
        app.handle_backplane(Event::Fetched { req, result: Ok(fetched) }, now);
        written(app, id);
        id
    }

    /// Sends "hello"; Redis numbers it 1 and its live copy never comes.
    fn publish_lost_live(app: &mut App<&'static str>, id: usize, now: Instant) -> (u64, Box<str>) {
        app.handle_input(id, &mut text("hello"), now, |_, _| 0);
        let [Command::Publish { req, ref room, ref origin, .. }] = commands(app)[..] else { panic!("a publish") };
        let room = room.clone();
        app.handle_backplane(Event::Published { req, room: room.clone(), result: Ok((EPOCH.into(), 1)) }, now);
        assert!(written(app, id).is_empty(), "delivered (and acked) with its live copy only");
        (req, origin.clone())
    }

    /// Finding 1: a publish Redis numbered whose live copy is lost (a subscription dead
    /// without knowing) is looked for in its room's stream and delivered.
    #[test]
    fn a_numbered_publish_whose_live_copy_is_late_is_read_from_the_stream() {
        let t0 = Instant::now();
        let mut app = app();
        let id = member(&mut app, t0);
        let (_, origin) = publish_lost_live(&mut app, id, t0);
        app.handle_housekeeping(t0 + LATE / 2);
        assert!(commands(&mut app).iter().all(|c| !matches!(c, Command::Fetch { .. })));
        assert_eq!(app.poll_housekeeping(), Some(t0 + LATE));
        app.handle_housekeeping(t0 + LATE);
        let fetch = commands(&mut app).into_iter().find(|c| matches!(c, Command::Fetch { .. }));
        let Some(Command::Fetch { req, since: 0, .. }) = fetch else { panic!("the room's stream read: {fetch:?}") };
        let message = Message { seq: 1, binary: false, payload: b"hello".to_vec(), origin };
        let fetched = Fetched { epoch: EPOCH.into(), seq: 1, entries: vec![message] };
        app.handle_backplane(Event::Fetched { req, result: Ok(fetched) }, t0 + LATE);
        assert_eq!(written(&mut app, id), b"\x81\x05hello");
        // Delivered: nothing more to look for, nothing refused later.
        app.handle_housekeeping(t0 + LATE * 3);
        assert!(written(&mut app, id).is_empty());
    }

    /// And one that cannot be found either is refused, saying it may have been published.
    #[test]
    fn a_numbered_publish_never_delivered_is_refused_as_perhaps_published() {
        let t0 = Instant::now();
        let mut app = app();
        let id = member(&mut app, t0);
        publish_lost_live(&mut app, id, t0);
        app.handle_housekeeping(t0 + LATE);
        let fetch = commands(&mut app).into_iter().find(|c| matches!(c, Command::Fetch { .. }));
        let Some(Command::Fetch { req, .. }) = fetch else { panic!("a fetch") };
        app.handle_backplane(Event::Fetched { req, result: Err(()) }, t0 + LATE);
        app.handle_housekeeping(t0 + LATE * 2);
        let out = written(&mut app, id);
        assert_eq!(&out[..4], b"\x88\x3d\x03\xf5", "close 1013: {out:?}");
        assert!(out.ends_with(b"(the message may have been published)"), "{out:?}");
    }
}
