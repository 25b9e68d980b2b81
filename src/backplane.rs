//! The Redis backplane (`--redis`): rooms shared by many mioket processes.
//!
//! Redis numbers and keeps every message: a publish is one Lua script call that takes
//! the room's next seq, appends the message to the room's stream (trimmed to
//! `--history` messages and `--history-memory` bytes) and PUBLISHes it to every node. Each node delivers what comes back
//! from its subscription, its own messages included, so every node delivers a room's
//! messages in Redis's order with Redis's numbers, and a client can resume on any node.
//!
//! This module is the sans-I/O half: what the application asks of Redis (`Command`s
//! left in `Backplane::outbox`), what comes back (`Event`s), and the bookkeeping in
//! between (requests in flight and their bounds in count and bytes, when Redis is late,
//! numbered publishes whose live copy is awaited, the state of each room's mirror, the
//! clients whose join waits for Redis and their input). The I/O half, three threads with
//! blocking sockets that the loop talks to through channels and a `mio::Waker`, is
//! `link`, used by the runtime only. The application's side is `app/backplane.rs`.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::time::{Duration, Instant};

use crate::config::RedisUrl;
use crate::frame::Opcode;
use crate::pubsub::Seq;
use crate::rooms::RoomId;
use crate::v1::Resume;

pub mod link;
pub mod resp;

/// What the backplane needs from the configuration.
#[derive(Clone, Debug)]
pub struct Settings {
    pub url: RedisUrl,
    /// Messages at most waiting for Redis (sent, not answered) on this node.
    pub outbox: usize,
    /// Their payload bytes at most (`--redis-outbox-bytes`).
    pub outbox_bytes: usize,
    /// Messages each room's stream keeps (`--history`).
    pub history: usize,
    /// Payload bytes each room's stream keeps, and a fetch reads at most
    /// (`--history-memory`, the bound of the node's histories).
    pub history_bytes: usize,
    /// How long Redis keeps a room nobody touches (`--room-ttl`, at least a second).
    pub ttl: Duration,
}

/// A request to Redis, made by the application, carried out by the link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Number, keep and broadcast a message (the publish script).
    Publish { req: u64, room: Box<str>, binary: bool, payload: Vec<u8>, origin: Box<str> },
    /// A room's epoch and seq, and the kept messages after `since` (the fetch script;
    /// it makes the room, with the epoch offered, if Redis has none).
    Fetch { req: u64, room: Box<str>, since: Seq },
    /// Keep these rooms alive in Redis for another TTL (they have members here).
    Touch { rooms: Vec<Box<str>> },
}

/// A message as Redis numbered it: from the subscription or from a room's stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub seq: Seq,
    pub binary: bool,
    pub payload: Vec<u8>,
    /// `NODE:REQ` of the publishing node and its request (empty for none).
    pub origin: Box<str>,
}

/// A room's state in Redis.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fetched {
    pub epoch: String,
    pub seq: Seq,
    /// The kept messages after the `since` asked for, oldest first.
    pub entries: Vec<Message>,
}

/// What comes back from the link.
#[derive(Debug)]
pub enum Event {
    /// The command connection is up (scripts loaded) or down.
    Commands(bool),
    /// The fetch connection is up (scripts loaded) or down.
    Fetches(bool),
    /// The subscription is up (subscribed) or down.
    Subscribed(bool),
    Published {
        req: u64,
        room: Box<str>,
        result: Result<(String, Seq), ()>,
    },
    Fetched {
        req: u64,
        result: Result<Fetched, ()>,
    },
    /// A message from the subscription.
    Live {
        room: String,
        epoch: String,
        message: Message,
    },
    /// Redis's `maxmemory-policy` when it evicts keys (read at each connect).
    Evicting(Option<String>),
    /// One pipelined round trip: how many commands it carried and how long it took.
    RoundTrip {
        commands: usize,
        took: Duration,
    },
}

/// Who is waiting for a publish's outcome.
#[derive(Clone, Debug)]
pub enum Origin {
    /// A WebSocket client: acked (when `ack` is set) before its own copy, or told
    /// that the publish was refused.
    Client { id: usize, ack: Option<Box<str>>, v1: bool },
    /// An API request, answered with the seq.
    Api { id: usize, room: Box<str> },
}

impl Origin {
    fn client(&self) -> usize {
        match self {
            Origin::Client { id, .. } | Origin::Api { id, .. } => *id,
        }
    }
}

/// Why a publish was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// Redis is unreachable (or the subscription is down).
    Unavailable,
    /// `--redis-outbox` messages (or `--redis-outbox-bytes`) already wait for Redis.
    OutboxFull,
}

/// Longer than this without a reply (or without its own live copy back) and Redis is
/// late: /healthz says degraded, and a publish Redis numbered is looked for in its
/// room's stream.
pub const LATE: Duration = Duration::from_secs(2);

/// A publish that Redis numbered but whose live copy has not come back yet.
#[derive(Clone, Debug)]
pub struct Accepted {
    pub room: Box<str>,
    pub seq: Seq,
    /// When it is late: its room's stream is read (once), then it is refused.
    pub due: Instant,
    pub looked_up: bool,
}

/// A room's mirror on this node.
#[derive(Debug, Default)]
pub struct RoomSync {
    pub generation: u32,
    pub state: SyncState,
    /// The mirror has held Redis's state once: a later fetch that does not continue
    /// it means messages were lost (members are told).
    pub known: bool,
    /// Clients whose join waits for the fetch, with what they asked to resume (a
    /// client that goes is taken out: `Backplane::forget`).
    pub joiners: Vec<(usize, Option<Resume<'static>>)>,
    /// Live messages that came during the fetch, delivered after it.
    pub buffer: Vec<(String, Message)>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SyncState {
    /// Not following Redis: a join fetches first.
    #[default]
    Unsynced,
    Fetching,
    /// Up to date: live messages are delivered as they come.
    Synced,
}

/// Counters for /metrics.
#[derive(Debug, Default)]
pub struct Stats {
    pub published: u64,
    pub refused_unavailable: u64,
    pub refused_outbox: u64,
    pub failed: u64,
    pub round_trips: u64,
    pub commands: u64,
    pub latency_sum: Duration,
    pub latency_max: Duration,
    pub live_messages: u64,
    pub duplicates: u64,
    pub fetches: u64,
    pub gaps_filled: u64,
    pub late_lookups: u64,
    pub rooms_lost: u64,
    pub disconnects: u64,
}

/// A client whose join waits for its room's fetch.
#[derive(Debug, Default)]
pub struct Held {
    pub room: Option<RoomId>,
    pub input: Vec<(Opcode, Vec<u8>)>,
}

pub struct Backplane {
    pub settings: Settings,
    /// 16 random hex digits naming this process in origins.
    pub node: String,
    next_req: u64,
    /// Commands for the link, drained by the runtime after each loop iteration.
    pub outbox: Vec<Command>,
    /// Publishes sent and not answered yet: when each went and its payload bytes.
    sent: BTreeMap<u64, (Instant, usize)>,
    /// The payload bytes of `sent`.
    pub in_flight_bytes: usize,
    /// Clients' publishes numbered by Redis and not delivered here yet, by request.
    pub accepted: BTreeMap<u64, Accepted>,
    pub commands_up: bool,
    pub fetches_up: bool,
    pub subscribed: bool,
    /// Publishes waiting for their outcome or their delivery here, by request.
    pub pending: HashMap<u64, Origin>,
    /// Requests in `pending` per client (so that a client's end clears its own).
    pending_by_client: HashMap<usize, u32>,
    /// Fetches in flight: the room and its generation.
    pub fetches: HashMap<u64, (RoomId, u32)>,
    pub rooms: HashMap<RoomId, RoomSync>,
    /// Clients whose join waits for a fetch: the room, and their input, replayed
    /// after their welcome.
    pub held: HashMap<usize, Held>,
    pub next_touch: Option<Instant>,
    /// Redis's `maxmemory-policy` when it evicts keys (rooms may vanish): warned about.
    pub evicting: Option<String>,
    pub stats: Stats,
}

impl Backplane {
    pub fn new(settings: Settings) -> Backplane {
        Backplane {
            settings,
            node: random_hex(),
            next_req: 1,
            outbox: Vec::new(),
            sent: BTreeMap::new(),
            in_flight_bytes: 0,
            accepted: BTreeMap::new(),
            commands_up: false,
            fetches_up: false,
            subscribed: false,
            pending: HashMap::new(),
            pending_by_client: HashMap::new(),
            fetches: HashMap::new(),
            rooms: HashMap::new(),
            held: HashMap::new(),
            next_touch: None,
            evicting: None,
            stats: Stats::default(),
        }
    }

    /// All three connections up: publishes and fetches may go.
    pub fn is_up(&self) -> bool {
        self.commands_up && self.fetches_up && self.subscribed
    }

    fn request(&mut self) -> u64 {
        self.next_req += 1;
        self.next_req
    }

    /// Sends a message to Redis, or says why not. Refused while Redis is unreachable
    /// or `--redis-outbox` messages already wait for it.
    pub fn publish(
        &mut self,
        room: &str,
        opcode: Opcode,
        payload: &[u8],
        origin: Origin,
        now: Instant,
    ) -> Result<(), Refused> {
        if !self.is_up() {
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
        self.outbox.push(Command::Publish {
            req,
            room: room.into(),
            binary: opcode == Opcode::Binary,
            payload: payload.to_vec(),
            origin: format!("{}:{req}", self.node).into(),
        });
        Ok(())
    }

    /// Publishes sent and not answered yet.
    pub fn in_flight(&self) -> usize {
        self.sent.len()
    }

    /// Redis answered publish `req` (numbered as `seq` in `room`, or failed).
    pub fn answered(&mut self, req: u64, numbered: Option<(&str, Seq)>, now: Instant) {
        if let Some((_, bytes)) = self.sent.remove(&req) {
            self.in_flight_bytes -= bytes;
        }
        // A client's publish is acked with its live copy: if that does not come back
        // in time, the room's stream is read for it.
        if let (Some((room, seq)), Some(Origin::Client { .. })) = (numbered, self.pending.get(&req)) {
            self.accepted.insert(req, Accepted { room: room.into(), seq, due: now + LATE, looked_up: false });
        }
    }

    /// Numbered publishes whose live copy is late, for their rooms' streams to be read
    /// (`looked_up: false`), or given up on after that (`true`: refused, since Redis
    /// has them but this node cannot deliver them).
    pub fn overdue(&mut self, now: Instant) -> Vec<(u64, Accepted)> {
        let mut due = Vec::new();
        for (&req, accepted) in &mut self.accepted {
            if accepted.due <= now {
                due.push((req, accepted.clone()));
                accepted.looked_up = true;
                accepted.due = now + LATE;
            }
        }
        for (req, accepted) in &due {
            if accepted.looked_up {
                self.accepted.remove(req);
            }
        }
        due
    }

    /// When `overdue` next has something.
    pub fn poll_overdue(&self) -> Option<Instant> {
        self.accepted.values().map(|a| a.due).min()
    }

    /// Replies are late: the oldest publish waits for its answer longer than `LATE`.
    pub fn is_late(&self, now: Instant) -> bool {
        self.sent.values().next().is_some_and(|&(sent, _)| now.saturating_duration_since(sent) > LATE)
    }

    /// Takes the request waiting for `req`'s outcome.
    pub fn take_pending(&mut self, req: u64) -> Option<Origin> {
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
    pub fn own_request(&self, origin: &str) -> Option<u64> {
        let (node, req) = origin.split_once(':')?;
        (node == self.node).then(|| req.parse().ok()).flatten()
    }

    /// Asks Redis for a room's state after `since`.
    pub fn fetch(&mut self, room: RoomId, generation: u32, name: &str, since: Seq) {
        let req = self.request();
        self.stats.fetches += 1;
        self.fetches.insert(req, (room, generation));
        self.outbox.push(Command::Fetch { req, room: name.into(), since });
    }

    /// The mirror state of a room (a room made again in the same slot starts afresh).
    pub fn sync(&mut self, room: RoomId, generation: u32) -> &mut RoomSync {
        let sync = self.rooms.entry(room).or_default();
        if sync.generation != generation {
            *sync = RoomSync { generation, ..RoomSync::default() };
        }
        sync
    }

    pub fn is_synced(&self, room: RoomId, generation: u32) -> bool {
        self.rooms.get(&room).is_some_and(|s| s.generation == generation && s.state == SyncState::Synced)
    }

    /// Client `id`'s join of a room waits for the room's fetch (its input is held
    /// meanwhile).
    pub fn wait(&mut self, id: usize, room: RoomId, generation: u32, resume: Option<Resume<'static>>) {
        self.sync(room, generation).joiners.push((id, resume));
        self.held.entry(id).or_default().room = Some(room);
    }

    /// Keeps the input of a client whose join waits (acted on after its welcome);
    /// false when the client is not held.
    pub fn hold(&mut self, id: usize, opcode: Opcode, payload: &[u8]) -> bool {
        match self.held.get_mut(&id) {
            Some(held) => {
                held.input.push((opcode, payload.to_vec()));
                true
            }
            None => false,
        }
    }

    pub fn is_held(&self, id: usize) -> bool {
        self.held.contains_key(&id)
    }

    /// A client is gone: its held input, its place among a room's joiners and its
    /// waiting publishes go (a publish already sent still reaches the room; only its
    /// answer has nobody to go to). Ids are reused: nothing may name it afterwards.
    pub fn forget(&mut self, id: usize) {
        if let Some(room) = self.held.remove(&id).and_then(|held| held.room) {
            if let Some(sync) = self.rooms.get_mut(&room) {
                sync.joiners.retain(|(joiner, _)| *joiner != id);
            }
        }
        if self.pending_by_client.remove(&id).is_some() {
            self.pending.retain(|_, origin| origin.client() != id);
            let pending = &self.pending;
            self.accepted.retain(|req, _| pending.contains_key(req));
        }
    }

    /// The /healthz lines: degraded while a connection is down or replies are late.
    pub fn health(&self, now: Instant) -> String {
        let state = match (self.commands_up, self.fetches_up, self.subscribed) {
            (true, true, true) if self.is_late(now) => "backplane: degraded (Redis replies late)\n",
            (true, true, true) => "backplane: up\n",
            (false, false, false) => "backplane: down\n",
            _ => "backplane: degraded\n",
        };
        match &self.evicting {
            Some(policy) => format!("{state}redis: maxmemory-policy {policy} evicts keys (rooms may be lost)\n"),
            None => state.to_string(),
        }
    }

    /// The backplane's part of /metrics.
    pub fn render(&self, out: &mut String, now: Instant) {
        let s = &self.stats;
        let mut family = |name: &str, kind: &str, help: &str, lines: &[(String, f64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, v) in lines {
                let _ = writeln!(out, "{name}{labels} {v}");
            }
        };
        let one = |v: f64| vec![(String::new(), v)];
        family(
            "mioket_backplane_up",
            "gauge",
            "1 while Redis is reachable, subscribed and answering in time.",
            &one(f64::from(u8::from(self.is_up() && !self.is_late(now)))),
        );
        family(
            "mioket_backplane_connected",
            "gauge",
            "Redis connections up, by kind.",
            &[
                ("{conn=\"commands\"}".into(), f64::from(u8::from(self.commands_up))),
                ("{conn=\"fetches\"}".into(), f64::from(u8::from(self.fetches_up))),
                ("{conn=\"subscription\"}".into(), f64::from(u8::from(self.subscribed))),
            ],
        );
        family(
            "mioket_backplane_in_flight",
            "gauge",
            "Publishes waiting for Redis (bounded by --redis-outbox).",
            &one(self.in_flight() as f64),
        );
        family(
            "mioket_backplane_in_flight_bytes",
            "gauge",
            "Payload bytes waiting for Redis (bounded by --redis-outbox-bytes).",
            &one(self.in_flight_bytes as f64),
        );
        family("mioket_backplane_publishes_total", "counter", "Messages sent to Redis.", &one(s.published as f64));
        family(
            "mioket_backplane_refusals_total",
            "counter",
            "Publishes refused, by reason.",
            &[
                ("{reason=\"unavailable\"}".into(), s.refused_unavailable as f64),
                ("{reason=\"outbox_full\"}".into(), s.refused_outbox as f64),
                ("{reason=\"failed\"}".into(), s.failed as f64),
            ],
        );
        family(
            "mioket_backplane_round_trips_total",
            "counter",
            "Pipelined round trips to Redis.",
            &one(s.round_trips as f64),
        );
        family(
            "mioket_backplane_commands_total",
            "counter",
            "Commands sent to Redis (one script call per message).",
            &one(s.commands as f64),
        );
        family(
            "mioket_backplane_round_trip_seconds",
            "summary",
            "Time of the pipelined round trips to Redis.",
            &[("_sum".into(), s.latency_sum.as_secs_f64()), ("_count".into(), s.round_trips as f64)],
        );
        family(
            "mioket_backplane_round_trip_max_seconds",
            "gauge",
            "Slowest round trip to Redis since start.",
            &one(s.latency_max.as_secs_f64()),
        );
        family(
            "mioket_backplane_live_messages_total",
            "counter",
            "Messages received from the subscription.",
            &one(s.live_messages as f64),
        );
        family(
            "mioket_backplane_fetches_total",
            "counter",
            "Room states read from Redis (joins, gaps).",
            &one(s.fetches as f64),
        );
        family(
            "mioket_backplane_gaps_filled_total",
            "counter",
            "Messages delivered from a room's stream after a gap in the subscription.",
            &one(s.gaps_filled as f64),
        );
        family(
            "mioket_backplane_late_lookups_total",
            "counter",
            "Rooms' streams read for a publish whose live copy was late.",
            &one(s.late_lookups as f64),
        );
        family(
            "mioket_backplane_rooms_lost_total",
            "counter",
            "Rooms whose Redis state did not continue the mirror (members closed with 1013).",
            &one(s.rooms_lost as f64),
        );
        family("mioket_backplane_disconnects_total", "counter", "Redis connections lost.", &one(s.disconnects as f64));
    }
}

/// 16 random lowercase hex digits (a node's name, an epoch offered to Redis).
pub fn random_hex() -> String {
    // Made as a room's epoch is: hex digits only, so always UTF-8.
    String::from_utf8_lossy(&crate::rooms::new_epoch()).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(outbox: usize) -> Settings {
        Settings {
            url: RedisUrl::parse("redis://127.0.0.1").unwrap(),
            outbox,
            outbox_bytes: 1000,
            history: 10,
            history_bytes: 1 << 20,
            ttl: Duration::from_secs(60),
        }
    }

    fn up(outbox: usize) -> Backplane {
        let mut bp = Backplane::new(settings(outbox));
        bp.commands_up = true;
        bp.fetches_up = true;
        bp.subscribed = true;
        bp
    }

    #[test]
    fn publishes_are_refused_while_down_and_beyond_the_outbox() {
        let now = Instant::now();
        let mut bp = Backplane::new(settings(2));
        let origin = || Origin::Client { id: 1, ack: None, v1: false };
        assert_eq!(bp.publish("r", Opcode::Text, b"a", origin(), now), Err(Refused::Unavailable));
        bp.commands_up = true;
        bp.fetches_up = true;
        bp.subscribed = true;
        assert_eq!(bp.publish("r", Opcode::Text, b"a", origin(), now), Ok(()));
        assert_eq!(bp.publish("r", Opcode::Text, b"b", origin(), now), Ok(()));
        assert_eq!(bp.publish("r", Opcode::Text, b"c", origin(), now), Err(Refused::OutboxFull));
        assert_eq!(bp.outbox.len(), 2);
        let Command::Publish { origin, req, .. } = &bp.outbox[0] else { panic!() };
        assert_eq!(bp.own_request(origin), Some(*req));
        assert_eq!(bp.own_request("0000000000000000:1"), None);
        bp.forget(1);
        assert!(bp.pending.is_empty());
    }

    #[test]
    fn the_outbox_is_bounded_in_bytes() {
        let now = Instant::now();
        let mut bp = up(100);
        let origin = || Origin::Client { id: 1, ack: None, v1: true };
        let big = vec![b'x'; 600];
        // One message alone always goes (it is within --max-message); a second that
        // would pass --redis-outbox-bytes waits for the first's answer.
        assert_eq!(bp.publish("r", Opcode::Text, &big, origin(), now), Ok(()));
        assert_eq!(bp.publish("r", Opcode::Text, &big, origin(), now), Err(Refused::OutboxFull));
        assert_eq!(bp.publish("r", Opcode::Text, &big[..400], origin(), now), Ok(()));
        assert_eq!(bp.in_flight_bytes, 1000);
        let Command::Publish { req, .. } = bp.outbox[0] else { panic!() };
        bp.answered(req, None, now);
        assert_eq!(bp.in_flight_bytes, 400);
        assert_eq!(bp.publish("r", Opcode::Text, &big, origin(), now), Ok(()));
    }

    #[test]
    fn late_replies_degrade_health_and_late_live_copies_are_looked_for() {
        let t0 = Instant::now();
        let mut bp = up(100);
        assert_eq!(bp.health(t0), "backplane: up\n");
        bp.publish("r", Opcode::Text, b"a", Origin::Client { id: 1, ack: None, v1: true }, t0).unwrap();
        assert_eq!(bp.health(t0 + LATE / 2), "backplane: up\n");
        assert!(bp.health(t0 + LATE * 2).starts_with("backplane: degraded"));
        // Numbered by Redis: not late any more, but its live copy is awaited.
        let Command::Publish { req, .. } = bp.outbox[0] else { panic!() };
        let t1 = t0 + LATE;
        bp.answered(req, Some(("r", 7)), t1);
        assert_eq!(bp.health(t1 + LATE * 2), "backplane: up\n");
        assert!(bp.overdue(t1).is_empty());
        assert_eq!(bp.poll_overdue(), Some(t1 + LATE));
        let due = bp.overdue(t1 + LATE);
        assert_eq!(due.len(), 1);
        assert_eq!((&*due[0].1.room, due[0].1.seq, due[0].1.looked_up), ("r", 7, false));
        // Still not delivered after its room's stream was read: given up (refused).
        let due = bp.overdue(t1 + LATE * 2);
        assert!(due[0].1.looked_up);
        assert!(bp.accepted.is_empty());
        // Delivered in time: nothing to look for.
        bp.publish("r", Opcode::Text, b"b", Origin::Client { id: 1, ack: None, v1: true }, t1).unwrap();
        let Command::Publish { req, .. } = bp.outbox[1] else { panic!() };
        bp.answered(req, Some(("r", 8)), t1);
        assert!(bp.take_pending(req).is_some());
        assert_eq!(bp.poll_overdue(), None);
    }

    #[test]
    fn an_evicting_redis_shows_in_health() {
        let mut bp = up(1);
        bp.evicting = Some("allkeys-lru".into());
        assert!(bp.health(Instant::now()).contains("maxmemory-policy allkeys-lru evicts keys"));
    }

    /// Finding: a client cut while its join waited for a fetch left its id among the
    /// room's joiners; the slab gave the id to the next client, which was then joined
    /// to the first one's room when the fetch came back.
    #[test]
    fn a_gone_client_is_no_joiner_of_the_room_it_waited_for() {
        let mut bp = up(1);
        bp.wait(3, 0, 0, None);
        bp.forget(3);
        // Id 3 reused by a client that waits for another room.
        let other: RoomId = 1;
        bp.wait(3, other, 0, None);
        assert!(bp.sync(0, 0).joiners.is_empty());
        assert_eq!(bp.sync(other, 0).joiners.len(), 1);
    }

    proptest::proptest! {
        /// The waiting list against a model: after any sequence of waits, client ends
        /// (ids reused, as the slab does) and fetches done, every room's joiners are
        /// exactly the live clients that wait for it, each once.
        #[test]
        fn joiners_are_exactly_the_live_clients_waiting(ops in proptest::collection::vec((0u8..3, 0usize..6, 0usize..3), 0..60)) {
            use std::collections::BTreeSet;
            let mut bp = up(1);
            // Model: the room each live waiting client waits for.
            let mut waiting: HashMap<usize, usize> = HashMap::new();
            for (op, id, room) in ops {
                match op {
                    // A client (new, or its id reused) waits for a room.
                    0 if !waiting.contains_key(&id) => {
                        bp.wait(id, room as RoomId, 0, None);
                        waiting.insert(id, room);
                    }
                    // A client ends.
                    1 => {
                        bp.forget(id);
                        waiting.remove(&id);
                    }
                    // A room's fetch is done: its joiners are welcomed (and released).
                    2 => {
                        let joiners = std::mem::take(&mut bp.sync(room as RoomId, 0).joiners);
                        for (joiner, _) in joiners {
                            proptest::prop_assert_eq!(waiting.remove(&joiner), Some(room), "joiner {} of room {}", joiner, room);
                            bp.held.remove(&joiner);
                        }
                    }
                    _ => {}
                }
                for room in 0..3 {
                    let joiners: Vec<usize> = bp.sync(room as RoomId, 0).joiners.iter().map(|j| j.0).collect();
                    let set: BTreeSet<usize> = joiners.iter().copied().collect();
                    let model: BTreeSet<usize> = waiting.iter().filter(|(_, &r)| r == room).map(|(&id, _)| id).collect();
                    proptest::prop_assert_eq!(joiners.len(), set.len());
                    proptest::prop_assert_eq!(set, model);
                }
            }
        }
    }
}
