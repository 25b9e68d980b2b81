//! The application's side of the Redis bus (`--redis`, app/bus.rs): it hands the
//! mirror (src/backplane/mirror.rs) what the link reports, the joins and the time,
//! and applies what the mirror says: deliveries (through `App::deliver`, as a local
//! bus's), joins welcomed or refused with their held input acted on after, rooms
//! restarted from Redis's state or closed (1013) when Redis lost their messages, API
//! publishes answered, lost publishes refused.

use std::time::Instant;

use super::bus::{Bus, Delivery};
use super::deliver::encode_from;
use super::housekeeping::presence_time;
use super::permit::presence_answer;
use super::publish::{self, Publish, Source, Target};
use super::{queue_flush, App, ClientIo};
use crate::api;
use crate::backplane::{Asker, Effect, Event, Joining, Message, Moderation, Origin, Part};
use crate::frame::CloseCode;
use crate::metrics::CloseReason;
use crate::outqueue::Chunk;
use crate::pubsub::Audience;
use crate::rooms::RoomId;
use crate::v1::{OpError, Payload, Resume};

#[cfg(test)]
mod fake_redis;

impl<T: ClientIo> App<T> {
    /// What the link reports.
    pub fn handle_backplane(&mut self, event: Event, now: Instant) {
        self.now = now;
        let Bus::Redis(mirror) = &mut self.bus else { return };
        let effects = mirror.handle(event, &self.rooms, now);
        self.apply(effects, now);
    }

    /// A binary upgrade restored the rooms: with Redis, the mirror goes on from where
    /// the old process's stood (`Mirror::adopt`).
    pub(crate) fn adopt_rooms_in_backplane(&mut self) {
        if let Bus::Redis(mirror) = &mut self.bus {
            mirror.adopt(&self.rooms);
        }
    }

    /// Does what the mirror says, in its order.
    fn apply(&mut self, effects: Vec<Effect>, now: Instant) {
        for effect in effects {
            match effect {
                Effect::Deliver { room, message, publisher } => {
                    let stored = self.encode_message(room, &message);
                    let publisher = match &publisher {
                        Some(Origin::Client { id, ack, .. }) => Some((*id, ack.as_deref())),
                        _ => None,
                    };
                    self.deliver(Delivery { room, stored, publisher }, now);
                }
                Effect::Answer { id, room, seq } => self.respond_later(id, api::published(&room, seq), now),
                Effect::Again { origin, room, seq } => self.published_before(origin, &room, seq, now),
                Effect::Lost(origin) => self.publish_lost(origin, now),
                Effect::Refuse(id) => {
                    self.refuse_join(id, now);
                    self.release(id, now);
                    self.after_activity(id);
                }
                Effect::CloseMembers(room) => self.close_members(room, now),
                Effect::Restart { room, epoch, base, keep } => {
                    self.rooms.restart(room, &epoch, base);
                    for message in keep {
                        let stored = self.encode_message(room, &message);
                        self.rooms.publish(room, &stored);
                    }
                }
                Effect::Welcome { id, room, resume } => {
                    if self.clients.contains(id) {
                        self.join(id, room, resume.as_ref(), now);
                        self.release(id, now);
                        self.after_activity(id);
                    }
                }
                Effect::Moderate(Moderation::Disconnect { user, reason }) => {
                    self.close_user(&user, &reason, now);
                }
                Effect::Moderate(Moderation::Remove { room, user }) => {
                    self.take_user_out(&room, &user, now);
                }
                Effect::PresenceRead { asker, room, parts } => self.answer_presence(asker, &room, &parts, now),
                // The room's v1 members are told at the next presence tick.
                Effect::Online { room, remote } => {
                    self.rooms.set_remote(room, remote);
                    self.presence_at.get_or_insert(presence_time(self.last_presence, now));
                }
            }
        }
    }

    /// A message from Redis in the encodings its room needs, its envelope with the
    /// `from` its publisher's node gave it.
    fn encode_message(&mut self, room: RoomId, message: &Message) -> crate::rooms::Stored {
        let keep = self.config.history > 0;
        encode_from(&self.rooms, &mut self.envelopes, room, payload_of(message), keep, message.from.as_deref())
    }

    fn respond_later(&mut self, id: usize, answer: Vec<u8>, now: Instant) {
        if let Some(client) = self.clients.get_mut(id) {
            client.conn.respond(Chunk::Owned(answer), now);
        }
        self.after_activity(id);
    }

    /// A publish whose id Redis had seen in the room within the window: answered with
    /// that publish's seq, as the first time (`answer_again`, the one place).
    fn published_before(&mut self, origin: Origin, room: &str, seq: crate::pubsub::Seq, now: Instant) {
        let (id, source) = source_of(&origin);
        self.answer_again(source, &crate::v1::json_string(room), seq, now);
        match origin {
            Origin::Api { .. } => self.respond_later(id, api::published(room, seq), now),
            Origin::Client { .. } => self.after_activity(id),
        }
    }

    /// Tells a publisher that its message went to Redis and neither an answer nor
    /// its live copy came back: perhaps published (`refuse_publish`, the one place).
    fn publish_lost(&mut self, origin: Origin, now: Instant) {
        let (id, source) = source_of(&origin);
        self.refuse_publish(source, publish::Refused::Lost, now);
        self.after_activity(id);
    }

    /// With Redis, a join waits until the room's mirror holds Redis's state: true
    /// when this one waits (or was refused because Redis is unreachable).
    pub(super) fn defer_join(&mut self, id: usize, room: RoomId, resume: Option<&Resume<'_>>, now: Instant) -> bool {
        let Bus::Redis(mirror) = &mut self.bus else { return false };
        match mirror.join(id, room, &self.rooms, resume) {
            Joining::Now => false,
            Joining::Waits => true,
            Joining::Refused => {
                self.refuse_join(id, now);
                true
            }
        }
    }

    /// A join that cannot be done now: a client in no room is closed (1013), one in
    /// other rooms gets an error envelope.
    fn refuse_join(&mut self, id: usize, now: Instant) {
        let in_rooms = self.session(id).is_some_and(|s| s.count() > 0);
        if in_rooms {
            self.refuse_op(id, OpError::BackplaneUnavailable, None, now);
        } else if let Some(client) = self.clients.get_mut(id) {
            if client.conn.is_open() {
                self.metrics.closed(CloseReason::Backplane);
            }
            client.conn.close(CloseCode::TRY_AGAIN_LATER, "backplane unavailable", now, &self.config.limits);
            self.retimed.push(id);
        }
    }

    /// Acts on a client's held input, in order, until it is held again (another join
    /// that waits).
    fn release(&mut self, id: usize, now: Instant) {
        let Some(mut held) = self.bus.mirror_mut().and_then(|m| m.release(id)) else { return };
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
                let p = Publish {
                    source: Source::Plain(id),
                    room: Target::Id(room),
                    payload: Payload::of(opcode, &bytes),
                    key: None,
                };
                // Too big: closed, and nothing after it is read.
                if self.publish(p, now) == Err(publish::Refused::TooBig) {
                    return;
                }
            }
            if self.bus.mirror_mut().is_some_and(|m| m.hold_rest(id, &mut rest)) {
                return;
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
                if client.conn.is_open() {
                    self.metrics.closed(CloseReason::Backplane);
                }
                client.conn.close(CloseCode::TRY_AGAIN_LATER, "room state lost, resume", now, &self.config.limits);
                self.retimed.push(id);
            }
            self.after_activity(id);
        }
    }

    /// With Redis, a moderation act done here goes to every other node too (each does
    /// it to its own clients); with Redis unreachable it stays this node's.
    pub(super) fn moderate_everywhere(&mut self, act: Moderation) {
        let Bus::Redis(mirror) = &mut self.bus else { return };
        if !mirror.moderate(act) {
            log::warn!("backplane: Redis is unreachable: a moderation act was done on this node only");
        }
    }

    /// When the mirror next wants `touch` (or has a late publish to look for).
    pub(super) fn poll_touch(&self) -> Option<Instant> {
        self.bus.mirror()?.poll()
    }

    /// The mirror's housekeeping: late publishes looked for, rooms kept alive in Redis.
    pub(super) fn touch(&mut self, now: Instant) {
        let Bus::Redis(mirror) = &mut self.bus else { return };
        mirror.set_stats(self.open as u64, now.saturating_duration_since(self.started).as_secs());
        let effects = mirror.housekeeping(&self.rooms, now);
        self.apply(effects, now);
    }

    /// The presence tick (at most once a second): this node's part of each room whose
    /// members here changed goes to Redis, if it changed.
    pub(super) fn tell_presence(&mut self) {
        if self.bus.mirror().is_none() {
            return;
        }
        for id in self.rooms.take_changed_parts() {
            let room = self.rooms.get(id);
            let part = room.filter(|r| r.topic.member_count() > 0).map(|r| self.presence_part(r));
            let current = room.map(|r| (r.generation(), r.name()));
            let members = room.map_or(0, |r| r.topic.member_count());
            if let Bus::Redis(mirror) = &mut self.bus {
                mirror.tell_presence(id, current, members, part);
            }
        }
    }

    /// The presence of a room not held here, read from Redis: the asker's answer.
    fn answer_presence(&mut self, asker: Asker, room: &str, parts: &[Part], now: Instant) {
        match asker {
            Asker::Api { id } => {
                let json = presence_answer(None, parts.iter(), room, None);
                self.respond_later(id, api::json_ok(&json), now);
            }
            Asker::Op { id, op_id } => {
                let json = presence_answer(None, parts.iter(), room, Some(op_id.as_deref()));
                let chunk = self.envelopes.json(&json);
                if let Some(client) = self.clients.get_mut(id) {
                    if client.conn.send(chunk, now, &self.config.limits).is_ok() {
                        self.metrics.messages_out += 1;
                    }
                }
                self.after_activity(id);
            }
        }
    }

    /// A stop signal: this node's parts of the rooms' presence are taken back and it
    /// leaves the node registry, before its clients are closed.
    pub(super) fn leave_cluster(&mut self) {
        if let Bus::Redis(mirror) = &mut self.bus {
            mirror.leave_cluster();
        }
    }

    /// Whether the node is done with the cluster (a stop waits for it).
    pub(super) fn has_left_cluster(&self) -> bool {
        self.bus.mirror().is_none_or(|m| m.has_left())
    }

    /// Publishes sent to Redis and not answered yet (acked or refused).
    pub(crate) fn publishes_unanswered(&self) -> usize {
        self.bus.mirror().map_or(0, |m| m.unanswered())
    }

    /// Refuses every publish not answered yet, as perhaps published ("backplane
    /// unavailable"): a binary upgrade that waited long enough for them.
    pub(crate) fn refuse_unanswered(&mut self, now: Instant) {
        self.now = now;
        let Bus::Redis(mirror) = &mut self.bus else { return };
        let effects = mirror.give_up_unanswered();
        self.apply(effects, now);
    }

    /// The /healthz line and the /metrics lines of the backplane.
    pub(super) fn backplane_health(&self) -> String {
        self.bus.mirror().map_or(String::new(), |m| m.health(self.now))
    }

    pub(super) fn render_backplane(&self, out: &mut String) {
        if let Some(mirror) = self.bus.mirror() {
            mirror.render(out, self.now);
        }
    }

    /// A client is gone.
    pub(super) fn forget_in_backplane(&mut self, id: usize) {
        if let Some(mirror) = self.bus.mirror_mut() {
            mirror.forget(id);
        }
    }
}

/// Who waited for a publish, as the way in names it.
fn source_of(origin: &Origin) -> (usize, Source<'_>) {
    match origin {
        Origin::Api { id, .. } => (*id, Source::Api(*id)),
        Origin::Client { id, ack, v1: true } => (*id, Source::V1 { id: *id, ack: ack.as_deref() }),
        Origin::Client { id, v1: false, .. } => (*id, Source::Plain(*id)),
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
    use crate::backplane::{Command, Fetched, LATE};
    use crate::config::{Config, Mode};
    use crate::protocol::tests::{text, UPGRADE};

    const EPOCH: &str = "00000000000000e0";

    fn app() -> App<&'static str> {
        let url = crate::config::RedisUrl::parse("redis://127.0.0.1").unwrap();
        let config =
            Config { mode: Mode::Broadcast, welcome: None, history: 10, redis: vec![url], ..Config::default() };
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
        let fetched = Fetched { epoch: EPOCH.into(), seq: 0, entries: Vec::new(), presence: Vec::new() };
        app.handle_backplane(Event::Fetched { req, result: Ok(fetched) }, now);
        written(app, id);
        id
    }

    /// Sends "hello"; Redis numbers it 1 and its live copy never comes.
    fn publish_lost_live(app: &mut App<&'static str>, id: usize, now: Instant) -> (u64, Box<str>) {
        app.handle_input(id, &mut text("hello"), now, |_, _| 0);
        let [Command::Publish { req, ref room, ref origin, .. }] = commands(app)[..] else { panic!("a publish") };
        let room = room.clone();
        let result = Ok((EPOCH.into(), 1));
        app.handle_backplane(Event::Published { req, room: room.clone(), result, duplicate: false }, now);
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
        let message = Message { seq: 1, binary: false, payload: b"hello".to_vec(), origin, from: None };
        let fetched = Fetched { epoch: EPOCH.into(), seq: 1, entries: vec![message], presence: Vec::new() };
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
