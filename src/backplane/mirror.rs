//! The Redis mirror: this node's copy of the rooms it has members in, and everything
//! it has in flight with Redis. Its data and its logic live here together, behind
//! private fields. The application hands it what happens (the link's `Event`s, joins,
//! publishes, client ends, time) and gets back what it must do (`Effect`s: messages to
//! deliver, joins to welcome or refuse, rooms to restart or close, answers to give),
//! and the runtime takes the `Command`s for the link (`commands`).
//!
//! A room is joined only once the mirror holds Redis's state (a fetch: epoch, seq and
//! the kept messages), and the joining client's input is held back until its welcome.
//! Live messages that come while a room is fetched are buffered and delivered after
//! it, skipping the seqs the fetch already gave; a gap in the seqs (a lost
//! subscription) is filled from the room's stream. A room whose Redis state does not
//! continue its mirror (Redis lost data) closes its members with 1013.
//!
//! The mirror follows each room's epoch and last seq itself: with Redis every message
//! of a room is numbered by Redis and reaches the room only through a `Deliver` or a
//! `Restart` of this mirror, so its numbers are the room's.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use log::warn;

use super::{Command, Control, Event, Message, Moderation, Origin, Refused, Settings, LATE};
use crate::frame::Opcode;
use crate::pubsub::Seq;
use crate::rooms::{RoomId, Rooms};
use crate::v1::Resume;

pub mod presence;
mod report;
pub use report::Snapshot;
mod shards;
mod sync;

use shards::Connections;
#[cfg(test)]
mod tests;

/// Rooms per touch command.
const TOUCH_BATCH: usize = 512;
/// How often rooms this node no longer holds are unsubscribed from (batched).
const SWEEP: Duration = Duration::from_secs(1);

/// What the application must do after the mirror took an event, in this order.
#[derive(Debug)]
pub enum Effect {
    /// A message Redis numbered, the room's next: fan it out to the members here.
    /// `publisher`: this node's client that published it (acked before its copy).
    Deliver { room: RoomId, message: Message, publisher: Option<Origin> },
    /// An API publish that Redis numbered: answer it with the seq.
    Answer { id: usize, room: Box<str>, seq: Seq },
    /// A publish whose id Redis had seen in the room within the window: answer it
    /// with that publish's seq (a client's ack comes now: no live copy will).
    Again { origin: Origin, room: Box<str>, seq: Seq },
    /// A publish went to Redis and neither its answer nor its live copy came back:
    /// tell its publisher that it was perhaps published.
    Lost(Origin),
    /// A join that waited cannot be done (its room's fetch failed): refuse it, then
    /// act on the client's held input (`release`).
    Refuse(usize),
    /// Redis's state of a room does not continue the mirror (Redis lost data): its
    /// members are closed (1013), so that they resume and learn it.
    CloseMembers(RoomId),
    /// The room starts as Redis has it: its epoch, numbering after `base`, and the
    /// kept messages in its history (not delivered: the members had them or join now).
    Restart { room: RoomId, epoch: String, base: Seq, keep: Vec<Message> },
    /// A join that waited for its room's fetch: join now, then act on the client's
    /// held input (`release`).
    Welcome { id: usize, room: RoomId, resume: Option<Resume<'static>> },
    /// Another node's moderation act: do it to the clients here.
    Moderate(Moderation),
    /// The other nodes' members of a room are `remote` now (their parts of its
    /// presence): its `online` counts them.
    Online { room: RoomId, remote: usize },
    /// The presence of a room not held here, read from Redis: answer who asked.
    PresenceRead { asker: presence::Asker, room: Box<str>, parts: Vec<presence::Part> },
}

/// What a join does with Redis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Joining {
    /// The mirror holds the room: join now.
    Now,
    /// The room is being fetched: the client's input is held until its `Welcome`.
    Waits,
    /// Redis is unreachable and the room was never mirrored here.
    Refused,
}

/// A publish that Redis numbered but whose live copy has not come back yet.
#[derive(Clone, Debug)]
struct Accepted {
    room: Box<str>,
    seq: Seq,
    /// When it is late: its room's stream is read (once), then it is refused.
    due: Instant,
    looked_up: bool,
}

/// A room's mirror on this node.
#[derive(Debug, Default)]
struct RoomSync {
    generation: u32,
    state: SyncState,
    /// The mirror has held Redis's state once: a later fetch that does not continue
    /// it means messages were lost (members are told).
    known: bool,
    /// The room's epoch and last seq as delivered here (while `known`).
    epoch: String,
    last: Seq,
    /// Clients whose join waits for the fetch, with what they asked to resume (a
    /// client that goes is taken out: `forget`).
    joiners: Vec<(usize, Option<Resume<'static>>)>,
    /// Live messages that came during the fetch, delivered after it.
    buffer: Vec<(String, Message)>,
    /// Publishes to the room made during the fetch, sent after it (`Mirror::publish`).
    waiting: Vec<Command>,
    /// The link listens to the room's channel (since its first fetch, until a sweep
    /// finds it without members: `Command::Unsubscribe`).
    listening: bool,
    name: Box<str>,
    /// The other nodes' parts of the room's presence, and this node's as told.
    presence: presence::RoomPresence,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum SyncState {
    /// Not following Redis: a join fetches first.
    #[default]
    Unsynced,
    Fetching,
    /// Up to date: live messages are delivered as they come.
    Synced,
}

/// Counters for /metrics.
#[derive(Debug, Default)]
struct Stats {
    published: u64,
    refused_unavailable: u64,
    refused_outbox: u64,
    failed: u64,
    round_trips: u64,
    commands: u64,
    latency_sum: Duration,
    latency_max: Duration,
    latency_last: Duration,
    live_messages: u64,
    /// Bytes of the live lines received (`mioket_redis_input_bytes_total`).
    live_bytes: u64,
    duplicates: u64,
    fetches: u64,
    gaps_filled: u64,
    late_lookups: u64,
    rooms_lost: u64,
    disconnects: u64,
}

/// A client whose join waits for its room's fetch.
#[derive(Debug, Default)]
struct Held {
    room: Option<RoomId>,
    input: Vec<(Opcode, Vec<u8>)>,
}

pub struct Mirror {
    settings: Settings,
    /// 16 random hex digits naming this process in origins.
    node: String,
    next_req: u64,
    /// Commands for the link, drained by the runtime after each loop iteration.
    outbox: Vec<Command>,
    /// Publishes sent and not answered yet: when each went and its payload bytes.
    sent: BTreeMap<u64, (Instant, usize)>,
    /// The payload bytes of `sent`.
    in_flight_bytes: usize,
    /// Clients' publishes numbered by Redis and not delivered here yet, by request.
    accepted: BTreeMap<u64, Accepted>,
    /// Each shard's connections (`Settings::shards`).
    shards: Vec<Connections>,
    /// Publishes waiting for their outcome or their delivery here, by request.
    pending: HashMap<u64, Origin>,
    /// Requests in `pending` per client (so that a client's end clears its own).
    pending_by_client: HashMap<usize, u32>,
    /// Fetches in flight: the room and its generation.
    fetches: HashMap<u64, (RoomId, u32)>,
    rooms: HashMap<RoomId, RoomSync>,
    /// Clients whose join waits for a fetch: the room, and their input, replayed
    /// after their welcome.
    held: HashMap<usize, Held>,
    next_touch: Option<Instant>,
    /// When rooms this node no longer holds are next unsubscribed from.
    next_sweep: Option<Instant>,
    /// Rooms listened to whose mirror state went (their slot reused): unsubscribed
    /// at the next sweep.
    dropped: Vec<Box<str>>,
    /// Redis's `maxmemory-policy` when it evicts keys (rooms may vanish): warned about.
    evicting: Option<String>,
    /// The node registry: heartbeats, the live nodes.
    cluster: presence::Cluster,
    stats: Stats,
}

impl Mirror {
    pub fn new(settings: Settings) -> Mirror {
        Mirror::named(settings, super::random_hex())
    }

    /// A mirror with a given node name (the fake Redis's nodes).
    pub fn named(settings: Settings, node: String) -> Mirror {
        Mirror {
            shards: vec![Connections::default(); settings.shards.len().max(1)],
            settings,
            node,
            next_req: 1,
            outbox: Vec::new(),
            sent: BTreeMap::new(),
            in_flight_bytes: 0,
            accepted: BTreeMap::new(),
            pending: HashMap::new(),
            pending_by_client: HashMap::new(),
            fetches: HashMap::new(),
            rooms: HashMap::new(),
            held: HashMap::new(),
            next_touch: None,
            next_sweep: None,
            dropped: Vec::new(),
            evicting: None,
            cluster: presence::Cluster::default(),
            stats: Stats::default(),
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Commands for Redis, for the runtime to hand to the link (and empty).
    pub fn commands(&mut self) -> &mut Vec<Command> {
        &mut self.outbox
    }

    /// Every shard's three connections up.
    pub fn is_up(&self) -> bool {
        self.shards.iter().all(Connections::up)
    }

    fn request(&mut self) -> u64 {
        self.next_req += 1;
        self.next_req
    }

    /// Sends a message to Redis, or says why not. Refused while Redis is unreachable
    /// or `--redis-outbox` messages already wait for it. `id`: published once per
    /// room within the window (the script keeps it). `held`: the room's slot and
    /// generation when this node holds it: while its mirror fetches, the message
    /// waits for the fetch (else Redis could number more messages than the stream
    /// keeps before the room's channel is listened to, and the mirror could not
    /// continue: its members would be closed).
    #[allow(clippy::too_many_arguments)]
    pub fn publish(
        &mut self,
        room: &str,
        held: Option<(RoomId, u32)>,
        opcode: Opcode,
        payload: &[u8],
        origin: Origin,
        from: Option<&str>,
        id: Option<&str>,
        now: Instant,
    ) -> Result<(), Refused> {
        if !self.is_up_for(room) {
            self.stats.refused_unavailable += 1;
            return Err(Refused::Unavailable);
        }
        // Bytes too: what waits is held in memory until Redis answers.
        let bytes = payload.len();
        let over_bytes = !self.sent.is_empty() && self.in_flight_bytes + bytes > self.settings.outbox_bytes;
        if self.sent.len() >= self.settings.outbox || over_bytes {
            self.stats.refused_outbox += 1;
            return Err(Refused::OutboxFull);
        }
        let req = self.request();
        self.sent.insert(req, (now, bytes));
        self.in_flight_bytes += bytes;
        self.stats.published += 1;
        *self.pending_by_client.entry(origin.client()).or_default() += 1;
        self.pending.insert(req, origin);
        let command = Command::Publish {
            req,
            room: room.into(),
            binary: opcode == Opcode::Binary,
            payload: payload.to_vec(),
            origin: format!("{}:{req}", self.node).into(),
            from: from.map(Into::into),
            id: id.map(Into::into),
        };
        let fetching = held.and_then(|(room, generation)| {
            self.rooms.get_mut(&room).filter(|s| s.generation == generation && s.state == SyncState::Fetching)
        });
        match fetching {
            Some(sync) => sync.waiting.push(command),
            None => self.outbox.push(command),
        }
        Ok(())
    }

    /// Tells every other node of a moderation act done here; false when Redis is
    /// unreachable (then it is done on this node only).
    pub fn moderate(&mut self, act: Moderation) -> bool {
        // Moderation goes through the first shard (every node listens to its
        // control channel on every shard).
        if !self.shards[0].commands {
            return false;
        }
        self.outbox.push(Command::Moderate(Control { node: self.node.clone(), act }));
        true
    }

    /// What the link reports; `rooms` is the application's (read only).
    pub fn handle(&mut self, event: Event, rooms: &Rooms, now: Instant) -> Vec<Effect> {
        let mut effects = Vec::new();
        match event {
            Event::Commands(_) | Event::Fetches(_) | Event::Subscribed(_) => self.connection(0, &event, rooms, now),
            Event::Shard { shard, event } => match *event {
                state @ (Event::Commands(_) | Event::Fetches(_) | Event::Subscribed(_)) => {
                    self.connection(shard, &state, rooms, now);
                }
                other => return self.handle(other, rooms, now),
            },
            Event::Published { req, room, result, duplicate } => {
                // A duplicate has no live copy to wait for.
                let numbered = result.as_ref().ok().filter(|_| !duplicate).map(|(_, seq)| (&*room, *seq));
                self.answered(req, numbered, now);
                match result {
                    Ok((_, seq)) if duplicate => {
                        if let Some(origin) = self.take_pending(req) {
                            effects.push(Effect::Again { origin, room, seq });
                        }
                    }
                    // A client's publish is acked with its delivery here; an API
                    // request is answered now.
                    Ok((_, seq)) => {
                        if matches!(self.pending.get(&req), Some(Origin::Api { .. })) {
                            if let Some(Origin::Api { id, room }) = self.take_pending(req) {
                                effects.push(Effect::Answer { id, room, seq });
                            }
                        }
                    }
                    Err(()) => {
                        if let Some(origin) = self.take_pending(req) {
                            self.stats.failed += 1;
                            effects.push(Effect::Lost(origin));
                        }
                    }
                }
            }
            Event::Fetched { req, result } => {
                self.fetched(req, result, rooms, now, &mut effects);
                self.next_sweep.get_or_insert(now + SWEEP);
            }
            Event::Live { room, epoch, message } => {
                self.stats.live_messages += 1;
                self.stats.live_bytes += super::live_line_len(&room, &epoch, &message) as u64;
                // Rooms without a mirror here have nobody to deliver to.
                if let Some((id, r)) = rooms.find(&room).and_then(|id| Some((id, rooms.get(id)?))) {
                    self.live(id, r.generation(), &room, epoch, message, &mut effects);
                }
            }
            Event::Presence { room, node, part } => {
                if let Some((id, r)) = rooms.find(&room).and_then(|id| Some((id, rooms.get(id)?))) {
                    self.presence_heard(id, r.generation(), node, part, now, &mut effects);
                }
            }
            Event::Nodes { req, result } => self.nodes_heard(req, result, &mut effects),
            Event::Left => self.left(),
            Event::PresenceRead { req, result } => self.presence_read(req, result, &mut effects),
            // This node did its own already.
            Event::Moderated(control) => {
                if control.node != self.node {
                    effects.push(Effect::Moderate(control.act));
                }
            }
            Event::Evicting(policy) => {
                if let Some(policy) = &policy {
                    warn!(
                        "backplane: Redis's maxmemory-policy is {policy}: it evicts keys, so rooms may vanish \
                         (members closed 1013, resumes not recovered); set it to noeviction"
                    );
                }
                self.evicting = policy;
            }
            Event::RoundTrip { commands, took } => {
                self.stats.round_trips += 1;
                self.stats.commands += commands as u64;
                self.stats.latency_sum += took;
                self.stats.latency_max = self.stats.latency_max.max(took);
                self.stats.latency_last = took;
            }
        }
        effects
    }

    /// A join of `room`: now when the mirror holds it (or held it once and catches
    /// up: what it missed reaches every member, this one included, in order, when
    /// its stream is read), else after the room's fetch.
    pub fn join(&mut self, id: usize, room: RoomId, rooms: &Rooms, resume: Option<&Resume<'_>>) -> Joining {
        let Some(r) = rooms.get(room) else { return Joining::Now };
        let generation = r.generation();
        let up = self.is_up_for(r.name());
        let sync = self.sync(room, generation);
        if sync.state == SyncState::Synced {
            return Joining::Now;
        }
        if sync.known {
            if sync.state == SyncState::Unsynced && up {
                sync.state = SyncState::Fetching;
                let last = sync.last;
                self.fetch(room, generation, r.name(), last);
            }
            return Joining::Now;
        }
        if !up {
            return Joining::Refused;
        }
        let resume = resume.map(|r| Resume { since: r.since, epoch: r.epoch.as_ref().map(|e| e.to_string().into()) });
        sync.joiners.push((id, resume));
        let fetch = sync.state != SyncState::Fetching;
        sync.state = SyncState::Fetching;
        self.held.entry(id).or_default().room = Some(room);
        if fetch {
            self.fetch(room, generation, r.name(), 0);
        }
        Joining::Waits
    }

    /// The request number the next command will take (a binary upgrade's snapshot).
    pub fn next_request(&self) -> u64 {
        self.next_req + 1
    }

    /// A binary upgrade: go on as the old process's node (its name: 16 hex digits), with
    /// its request numbers, so that no live copy of an old publish matches a new one.
    pub fn go_on_as(&mut self, node: String, next_req: u64) -> Result<(), ()> {
        if node.len() != 16 || !node.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(());
        }
        self.node = node;
        self.next_req = next_req.saturating_sub(1).max(self.next_req);
        Ok(())
    }

    /// A binary upgrade restored `rooms` (src/upgrade/) from an old process whose
    /// mirror had delivered each room up to its last seq: each room with members goes
    /// on from there, and reads what Redis numbered meanwhile from its stream once the
    /// link is up (`resync_all`), so its members miss nothing and get nothing twice.
    pub fn adopt(&mut self, rooms: &Rooms) {
        for (id, room) in rooms.entries().filter(|(_, r)| r.topic.member_count() > 0) {
            let sync = RoomSync {
                generation: room.generation(),
                known: true,
                epoch: room.epoch().into(),
                last: room.topic.last_seq(),
                ..RoomSync::default()
            };
            self.rooms.insert(id, sync);
        }
    }

    /// Keeps the input of a client whose join waits (acted on after its welcome);
    /// false when the client is not held. Out of line: the bus's check stays small
    /// on the paths of every message.
    #[inline(never)]
    pub fn hold(&mut self, id: usize, opcode: Opcode, payload: &[u8]) -> bool {
        match self.held.get_mut(&id) {
            Some(held) => {
                held.input.push((opcode, payload.to_vec()));
                true
            }
            None => false,
        }
    }

    #[inline(never)]
    pub fn is_held(&self, id: usize) -> bool {
        self.held.contains_key(&id)
    }

    /// A client's join is done (or refused): its held input, to act on in order.
    /// If acting on it holds the client again, the rest goes back (`hold_rest`).
    pub fn release(&mut self, id: usize) -> Option<Vec<(Opcode, Vec<u8>)>> {
        self.held.remove(&id).map(|held| held.input)
    }

    /// Puts the rest of a released input back when the client is held again (another
    /// join that waits); false when it is not.
    pub fn hold_rest(&mut self, id: usize, rest: impl Iterator<Item = (Opcode, Vec<u8>)>) -> bool {
        match self.held.get_mut(&id) {
            Some(held) => {
                held.input.extend(rest);
                true
            }
            None => false,
        }
    }

    /// A client is gone: its held input, its place among a room's joiners and its
    /// waiting publishes go (a publish already sent still reaches the room; only its
    /// answer has nobody to go to). Ids are reused: nothing may name it afterwards.
    /// Out of line, as `hold`: it sits on every client's removal.
    #[inline(never)]
    pub fn forget(&mut self, id: usize) {
        if let Some(room) = self.held.remove(&id).and_then(|held| held.room) {
            if let Some(sync) = self.rooms.get_mut(&room) {
                sync.joiners.retain(|(joiner, _)| *joiner != id);
            }
        }
        if !self.cluster.reads.is_empty() {
            self.cluster.reads.retain(|_, (asker, _)| asker.client() != id);
        }
        if self.pending_by_client.remove(&id).is_some() {
            self.pending.retain(|_, origin| origin.client() != id);
            let pending = &self.pending;
            self.accepted.retain(|req, _| pending.contains_key(req));
        }
    }

    /// When `housekeeping` next has something: a touch, or a late publish to look for.
    pub fn poll(&self) -> Option<Instant> {
        let touch = self.next_touch.filter(|_| self.shards.iter().any(Connections::up));
        let heartbeat = self.cluster.poll().filter(|_| self.commands_up());
        [touch, heartbeat, self.next_sweep, self.accepted.values().map(|a| a.due).min()].into_iter().flatten().min()
    }

    /// Looks for late publishes; keeps the rooms with members here alive in Redis,
    /// and forgets the mirror state of rooms that are gone.
    pub fn housekeeping(&mut self, rooms: &Rooms, now: Instant) -> Vec<Effect> {
        let mut effects = Vec::new();
        self.look_for_late(rooms, now, &mut effects);
        if self.next_sweep.is_some_and(|t| t <= now) {
            self.sweep(rooms, now);
        }
        self.heartbeat_due(now);
        if self.next_touch.is_none_or(|t| t > now) {
            return effects;
        }
        self.next_touch = Some(now + (self.settings.ttl / 3).max(Duration::from_millis(300)));
        let names: Vec<Box<str>> =
            rooms.iter().filter(|r| r.topic.member_count() > 0).map(|r| r.name().into()).collect();
        for chunk in names.chunks(TOUCH_BATCH) {
            self.outbox.push(Command::Touch { rooms: chunk.to_vec() });
        }
        // Rooms listened to stay until a sweep unsubscribes from them; a room no longer
        // held takes its part of the presence back.
        let (outbox, node) = (&mut self.outbox, &self.node);
        self.rooms.retain(|&id, sync| {
            let held = rooms.get(id).is_some_and(|r| r.generation() == sync.generation);
            if !held {
                outbox.extend(presence::untold(sync, node));
            }
            held || sync.listening
        });
        effects
    }

    /// Redis answered publish `req` (numbered as `seq` in `room`, or failed).
    fn answered(&mut self, req: u64, numbered: Option<(&str, Seq)>, now: Instant) {
        if let Some((_, bytes)) = self.sent.remove(&req) {
            self.in_flight_bytes -= bytes;
        }
        // A client's publish is acked with its live copy: if that does not come back
        // in time, the room's stream is read for it.
        if let (Some((room, seq)), Some(Origin::Client { .. })) = (numbered, self.pending.get(&req)) {
            self.accepted.insert(req, Accepted { room: room.into(), seq, due: now + LATE, looked_up: false });
        }
    }

    /// Replies are late: the oldest publish waits for its answer longer than `LATE`.
    fn is_late(&self, now: Instant) -> bool {
        self.sent.values().next().is_some_and(|&(sent, _)| now.saturating_duration_since(sent) > LATE)
    }

    /// Publishes waiting for their outcome or their delivery here (a binary upgrade
    /// waits for them before it freezes: the new process's mirror does not know them).
    pub fn unanswered(&self) -> usize {
        self.pending.len()
    }

    /// Gives up on every publish still waiting: each is refused, saying that it may
    /// have been published (`Effect::Lost`), as when Redis's answer never comes.
    pub fn give_up_unanswered(&mut self) -> Vec<Effect> {
        // Those that wait for their room's fetch are not sent at all.
        for sync in self.rooms.values_mut() {
            for command in sync.waiting.drain(..) {
                if let Command::Publish { req, .. } = command {
                    if let Some((_, bytes)) = self.sent.remove(&req) {
                        self.in_flight_bytes -= bytes;
                    }
                }
            }
        }
        let reqs: Vec<u64> = self.pending.keys().copied().collect();
        let lost: Vec<Effect> = reqs.into_iter().filter_map(|req| self.take_pending(req)).map(Effect::Lost).collect();
        self.stats.failed += lost.len() as u64;
        lost
    }

    /// Takes the request waiting for `req`'s outcome.
    fn take_pending(&mut self, req: u64) -> Option<Origin> {
        self.accepted.remove(&req);
        let origin = self.pending.remove(&req)?;
        let id = origin.client();
        if let Some(n) = self.pending_by_client.get_mut(&id) {
            *n -= 1;
            if *n == 0 {
                self.pending_by_client.remove(&id);
            }
        }
        Some(origin)
    }

    /// The request of this node that an origin names, if it is ours.
    fn own_request(&self, origin: &str) -> Option<u64> {
        let (node, req) = origin.split_once(':')?;
        (node == self.node).then(|| req.parse().ok()).flatten()
    }

    /// This node's client waiting for a message's delivery (API requests were
    /// answered when Redis numbered theirs).
    fn publisher_of(&mut self, message: &Message) -> Option<Origin> {
        let req = self.own_request(&message.origin)?;
        matches!(self.pending.get(&req), Some(Origin::Client { .. })).then(|| self.take_pending(req)).flatten()
    }
}
