//! The Redis backplane (`--redis`): rooms shared by many mioket processes.
//!
//! Redis numbers and keeps every message: a publish is one Lua script call that takes
//! the room's next seq, appends the message to the room's stream (trimmed to
//! `--history`) and PUBLISHes it to every node. Each node delivers what comes back
//! from its subscription, its own messages included, so every node delivers a room's
//! messages in Redis's order with Redis's numbers, and a client can resume on any node.
//!
//! This module is the sans-I/O half: what the application asks of Redis (`Command`s
//! left in `Backplane::outbox`), what comes back (`Event`s), and the bookkeeping in
//! between (requests in flight and their bound, the state of each room's mirror, the
//! input of clients whose join waits for Redis). The I/O half, two threads with
//! blocking sockets that the loop talks to through channels and a `mio::Waker`, is
//! `link`, used by the runtime only. The application's side is `app/backplane.rs`.

use std::collections::HashMap;
use std::fmt::Write;
use std::time::{Duration, Instant};

use crate::frame::Opcode;
use crate::pubsub::Seq;
use crate::rooms::RoomId;
use crate::v1::Resume;

pub mod link;
pub mod resp;

/// `--redis redis://HOST:PORT[/DB]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisUrl {
    pub host: String,
    pub port: u16,
    pub db: u32,
}

impl RedisUrl {
    pub fn parse(url: &str) -> Result<RedisUrl, String> {
        let rest = url.strip_prefix("redis://").ok_or("must start with redis://")?;
        let (authority, db) = match rest.split_once('/') {
            Some((a, "")) => (a, 0),
            Some((a, db)) => (a, db.parse().map_err(|_| "the database must be a number")?),
            None => (rest, 0),
        };
        if authority.contains('@') {
            return Err("credentials in the URL are not supported".into());
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
                (h, p.parse().map_err(|_| "the port must be a number")?)
            }
            _ => (authority, 6379),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err("no host".into());
        }
        Ok(RedisUrl { host: host.into(), port, db })
    }
}

impl std::fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "redis://{}:{}/{}", self.host, self.port, self.db)
    }
}

/// What the backplane needs from the configuration.
#[derive(Clone, Debug)]
pub struct Settings {
    pub url: RedisUrl,
    /// Messages at most waiting for Redis (sent, not answered) on this node.
    pub outbox: usize,
    /// Messages each room's stream keeps (`--history`).
    pub history: usize,
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
    /// The subscription is up (subscribed) or down.
    Subscribed(bool),
    Published {
        req: u64,
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
    /// `--redis-outbox` messages already wait for Redis.
    OutboxFull,
}

/// A room's mirror on this node.
#[derive(Debug, Default)]
pub struct RoomSync {
    pub generation: u32,
    pub state: SyncState,
    /// The mirror has held Redis's state once: a later fetch that does not continue
    /// it means messages were lost (members are told).
    pub known: bool,
    /// Clients whose join waits for the fetch, with what they asked to resume.
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
    pub rooms_lost: u64,
    pub disconnects: u64,
}

pub struct Backplane {
    pub settings: Settings,
    /// 16 random hex digits naming this process in origins.
    pub node: String,
    next_req: u64,
    /// Commands for the link, drained by the runtime after each loop iteration.
    pub outbox: Vec<Command>,
    /// Publishes sent and not answered yet.
    pub in_flight: usize,
    pub commands_up: bool,
    pub subscribed: bool,
    /// Publishes waiting for their outcome or their delivery here, by request.
    pub pending: HashMap<u64, Origin>,
    /// Requests in `pending` per client (so that a client's end clears its own).
    pending_by_client: HashMap<usize, u32>,
    /// Fetches in flight: the room and its generation.
    pub fetches: HashMap<u64, (RoomId, u32)>,
    pub rooms: HashMap<RoomId, RoomSync>,
    /// Input of clients whose join waits for a fetch, replayed after their welcome.
    pub held: HashMap<usize, Vec<(Opcode, Vec<u8>)>>,
    pub next_touch: Option<Instant>,
    pub stats: Stats,
}

impl Backplane {
    pub fn new(settings: Settings) -> Backplane {
        Backplane {
            settings,
            node: random_hex(),
            next_req: 1,
            outbox: Vec::new(),
            in_flight: 0,
            commands_up: false,
            subscribed: false,
            pending: HashMap::new(),
            pending_by_client: HashMap::new(),
            fetches: HashMap::new(),
            rooms: HashMap::new(),
            held: HashMap::new(),
            next_touch: None,
            stats: Stats::default(),
        }
    }

    /// Both connections up: publishes and fetches may go.
    pub fn is_up(&self) -> bool {
        self.commands_up && self.subscribed
    }

    fn request(&mut self) -> u64 {
        self.next_req += 1;
        self.next_req
    }

    /// Sends a message to Redis, or says why not. Refused while Redis is unreachable
    /// or `--redis-outbox` messages already wait for it.
    pub fn publish(&mut self, room: &str, opcode: Opcode, payload: &[u8], origin: Origin) -> Result<(), Refused> {
        if !self.is_up() {
            self.stats.refused_unavailable += 1;
            return Err(Refused::Unavailable);
        }
        if self.in_flight >= self.settings.outbox {
            self.stats.refused_outbox += 1;
            return Err(Refused::OutboxFull);
        }
        let req = self.request();
        self.in_flight += 1;
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

    /// Takes the request waiting for `req`'s outcome.
    pub fn take_pending(&mut self, req: u64) -> Option<Origin> {
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

    /// Keeps the input of a client whose join waits (acted on after its welcome);
    /// false when the client is not held.
    pub fn hold(&mut self, id: usize, opcode: Opcode, payload: &[u8]) -> bool {
        match self.held.get_mut(&id) {
            Some(held) => {
                held.push((opcode, payload.to_vec()));
                true
            }
            None => false,
        }
    }

    pub fn is_held(&self, id: usize) -> bool {
        self.held.contains_key(&id)
    }

    /// A client is gone: its held input and waiting publishes go (a publish already
    /// sent still reaches the room; only its answer has nobody to go to).
    pub fn forget(&mut self, id: usize) {
        self.held.remove(&id);
        if self.pending_by_client.remove(&id).is_some() {
            self.pending.retain(|_, origin| origin.client() != id);
        }
    }

    /// The /healthz line.
    pub fn health(&self) -> &'static str {
        match (self.commands_up, self.subscribed) {
            (true, true) => "backplane: up\n",
            (false, false) => "backplane: down\n",
            _ => "backplane: degraded\n",
        }
    }

    /// The backplane's part of /metrics.
    pub fn render(&self, out: &mut String) {
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
            "1 while Redis is reachable and subscribed.",
            &one(f64::from(u8::from(self.is_up()))),
        );
        family(
            "mioket_backplane_connected",
            "gauge",
            "Redis connections up, by kind.",
            &[
                ("{conn=\"commands\"}".into(), f64::from(u8::from(self.commands_up))),
                ("{conn=\"subscription\"}".into(), f64::from(u8::from(self.subscribed))),
            ],
        );
        family(
            "mioket_backplane_in_flight",
            "gauge",
            "Publishes waiting for Redis (bounded by --redis-outbox).",
            &one(self.in_flight as f64),
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

    #[test]
    fn redis_urls_parse() {
        let u = RedisUrl::parse("redis://127.0.0.1:6380/2").unwrap();
        assert_eq!(u, RedisUrl { host: "127.0.0.1".into(), port: 6380, db: 2 });
        assert_eq!(RedisUrl::parse("redis://h").unwrap(), RedisUrl { host: "h".into(), port: 6379, db: 0 });
        assert_eq!(RedisUrl::parse("redis://[::1]:7000/").unwrap().host, "::1");
        for bad in ["http://h", "redis://", "redis://h:x", "redis://h/x", "redis://u:p@h"] {
            assert!(RedisUrl::parse(bad).is_err(), "{bad}");
        }
    }

    fn settings(outbox: usize) -> Settings {
        Settings {
            url: RedisUrl::parse("redis://127.0.0.1").unwrap(),
            outbox,
            history: 10,
            ttl: Duration::from_secs(60),
        }
    }

    #[test]
    fn publishes_are_refused_while_down_and_beyond_the_outbox() {
        let mut bp = Backplane::new(settings(2));
        let origin = || Origin::Client { id: 1, ack: None, v1: false };
        assert_eq!(bp.publish("r", Opcode::Text, b"a", origin()), Err(Refused::Unavailable));
        bp.commands_up = true;
        bp.subscribed = true;
        assert_eq!(bp.publish("r", Opcode::Text, b"a", origin()), Ok(()));
        assert_eq!(bp.publish("r", Opcode::Text, b"b", origin()), Ok(()));
        assert_eq!(bp.publish("r", Opcode::Text, b"c", origin()), Err(Refused::OutboxFull));
        assert_eq!(bp.outbox.len(), 2);
        let Command::Publish { origin, req, .. } = &bp.outbox[0] else { panic!() };
        assert_eq!(bp.own_request(origin), Some(*req));
        assert_eq!(bp.own_request("0000000000000000:1"), None);
        bp.forget(1);
        assert!(bp.pending.is_empty());
    }
}
