//! The Redis backplane (`--redis`): rooms shared by many mioket processes.
//!
//! Redis numbers and keeps every message: a publish is one Lua script call that takes
//! the room's next seq, appends the message to the room's stream (trimmed to
//! `--history` messages and `--history-memory` bytes) and publishes it on the room's channel
//! (SPUBLISH where Redis has sharded pub/sub), which the nodes that hold the room listen
//! to. Each node delivers what comes back
//! from its subscription, its own messages included, so every node delivers a room's
//! messages in Redis's order with Redis's numbers, and a client can resume on any node.
//!
//! This module holds what both halves speak: what the application asks of Redis
//! (`Command`s), what comes back (`Event`s) and the messages between. The sans-I/O
//! half is `mirror`: the bookkeeping between commands and events (requests in flight
//! and their bounds in count and bytes, when Redis is late, numbered publishes whose
//! live copy is awaited, the state of each room's mirror, the clients whose join waits
//! for Redis and their input), used by the application's bus (`app/bus.rs`). The I/O
//! half, three threads with blocking sockets that the loop talks to through channels
//! and a `mio::Waker`, is `link`, used by the runtime only.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::RedisUrl;
use crate::pubsub::Seq;

pub mod link;
pub mod mirror;

pub use mirror::presence::{Asker, NodeInfo, Part, PartUser, Registry};
pub use mirror::{Effect, Joining, Mirror, Snapshot};

/// What the backplane needs from the configuration.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Every shard (`--redis` given several times), in the order of their addresses
    /// (`RedisUrl::address`): the same on every node whatever the order given. Never
    /// empty; in a link's settings just its own shard.
    pub shards: Vec<RedisUrl>,
    /// `--redis-ca`: the CA certificates (PEM) of a `rediss://` server.
    pub ca: Option<std::path::PathBuf>,
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
    /// How long Redis remembers a publish's id (`--dedup-window`; zero: off).
    pub dedup_window: Duration,
}

impl Settings {
    /// This link's Redis: its shard in a link's settings, the first shard in the
    /// mirror's (whose control channel every node listens to).
    pub fn url(&self) -> &RedisUrl {
        &self.shards[0]
    }
}

/// A request to Redis, made by the application, carried out by the link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Number, keep and broadcast a message (the publish script).
    /// `from`: the publisher's `sub` (a client with a token), carried by the stream
    /// entry and the live message so that every node's envelopes say who sent it.
    /// `id`: the publish's id (v1 `id`, `Idempotency-Key`): the script publishes it
    /// once per room within `--dedup-window` (`Event::Published`'s `duplicate`).
    Publish {
        req: u64,
        room: Box<str>,
        binary: bool,
        payload: Vec<u8>,
        origin: Box<str>,
        from: Option<Box<str>>,
        id: Option<Box<str>>,
    },
    /// A room's epoch and seq, and the kept messages after `since` (the fetch script;
    /// it makes the room, with the epoch offered, if Redis has none). The link first
    /// subscribes to the room's channel if it does not listen to it yet, and fetches
    /// once Redis confirmed it: nothing published after the fetch is missed.
    Fetch { req: u64, room: Box<str>, since: Seq },
    /// Stop listening to these rooms' channels (this node holds them no more; a later
    /// `Fetch` listens again).
    Unsubscribe { rooms: Vec<Box<str>> },
    /// Keep these rooms alive in Redis for another TTL (they have members here).
    Touch { rooms: Vec<Box<str>> },
    /// Tell every node of a moderation act (PUBLISH on the control channel).
    Moderate(Control),
    /// This node's part of a room's presence (`Part` as JSON; empty: none), kept in
    /// the room's presence hash under `node` and told to every node holding the room
    /// (the presence script).
    Presence { room: Box<str>, node: Box<str>, part: Box<str> },
    /// This node is alive with `members` memberships, `connections` open WebSockets
    /// and `uptime_s`: the node registry's heartbeat, answered with the live nodes
    /// (`Event::Nodes`).
    Heartbeat { req: u64, node: Box<str>, members: u64, connections: u64, uptime_s: u64 },
    /// This node stops: out of the node registry (`Event::Left` when done).
    Leave { node: Box<str> },
    /// Reads a room's presence hash (for a room this node does not hold:
    /// `Event::PresenceRead`).
    ReadPresence { req: u64, room: Box<str> },
    /// Deletes a dead node's part of a room (and tells the nodes), if the node
    /// registry does not list it as alive when the script runs.
    Forget { room: Box<str>, node: Box<str> },
}

/// A moderation act of the API (`--api-token`), done by every node to its own clients.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Moderation {
    /// Close every connection of `user` 4410 with `reason`.
    Disconnect { user: String, reason: String },
    /// Take `user`'s connections out of `room`.
    Remove { room: String, user: String },
}

/// A moderation act on the control channel, as JSON
/// (`{"node":N,"act":{"disconnect":{"user":U,"reason":R}}}`), with the node that
/// did it first (which does not do it again when it comes back).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Control {
    pub node: String,
    pub act: Moderation,
}

/// A message as Redis numbered it: from the subscription or from a room's stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub seq: Seq,
    pub binary: bool,
    pub payload: Vec<u8>,
    /// `NODE:REQ` of the publishing node and its request (empty for none).
    pub origin: Box<str>,
    /// The publisher's `sub`, when it had a token (entries written before this
    /// field existed have none).
    pub from: Option<Box<str>>,
}

/// A room's state in Redis.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fetched {
    pub epoch: String,
    pub seq: Seq,
    /// The kept messages after the `since` asked for, oldest first.
    pub entries: Vec<Message>,
    /// The room's presence hash: each node's part (node, `Part` as JSON).
    pub presence: Vec<(String, String)>,
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
    /// A publish's answer: its room's epoch and its seq. `duplicate`: its id was
    /// published in the room within the window; the seq is that publish's, and
    /// nothing was published (no live copy comes).
    Published {
        req: u64,
        room: Box<str>,
        result: Result<(String, Seq), ()>,
        duplicate: bool,
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
    /// A moderation act from the control channel (this node's own too).
    Moderated(Control),
    /// A node's part of a room's presence changed (`part` as JSON; empty: it has none).
    Presence {
        room: String,
        node: String,
        part: String,
    },
    /// The heartbeat's answer: the live nodes.
    Nodes {
        req: u64,
        result: Result<Registry, ()>,
    },
    /// `Command::Leave` is done (or failed: then the node's entry ages out).
    Left,
    /// A room's presence hash (node, part), as `Command::ReadPresence` asked.
    PresenceRead {
        req: u64,
        result: Result<Vec<(String, String)>, ()>,
    },
    /// Redis's `maxmemory-policy` when it evicts keys (read at each connect).
    Evicting(Option<String>),
    /// A connection's state event (`Commands`, `Fetches`, `Subscribed`) of shard
    /// `shard` other than the first (whose events come as they are).
    Shard {
        shard: usize,
        event: Box<Event>,
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
    /// `--redis-outbox` messages (or `--redis-outbox-bytes`) already wait for Redis.
    OutboxFull,
}

/// Longer than this without a reply (or without its own live copy back) and Redis is
/// late: /healthz says degraded, and a publish Redis numbered is looked for in its
/// room's stream.
pub const LATE: Duration = Duration::from_secs(2);

/// The length of a room's live line as Redis sent it (`link/subscription.rs`,
/// `parse_live`): `ROOM\nEPOCH\nSEQ\nORIGIN[ HEX]\nKIND PAYLOAD`.
pub fn live_line_len(room: &str, epoch: &str, message: &Message) -> usize {
    let from = message.from.as_ref().map_or(0, |f| 1 + 2 * f.len());
    let seq = message.seq.checked_ilog10().unwrap_or(0) as usize + 1;
    room.len() + epoch.len() + seq + message.origin.len() + from + message.payload.len() + 5
}

/// The shard of a room among shards named by their addresses (`HOST:PORT/DB`):
/// rendezvous hashing, the shard whose hash of (address, room) is highest. So every
/// node agrees whatever the order of its URLs, and a shard added takes over only the
/// rooms it now wins (about 1/N of them).
pub fn shard_of(shards: &[RedisUrl], room: &str) -> usize {
    if shards.len() < 2 {
        return 0;
    }
    let score = |url: &RedisUrl| hash64(url.address().as_bytes(), room.as_bytes());
    (0..shards.len()).max_by_key(|&i| (score(&shards[i]), std::cmp::Reverse(i))).unwrap_or(0)
}

/// A fixed 64-bit hash of two strings (FNV-1a over both, a zero byte between, then
/// SplitMix64's finalizer to spread it): written out here, not std's hasher, so
/// every node and every version computes the same.
pub fn hash64(a: &[u8], b: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in a.iter().chain(&[0]).chain(b) {
        h ^= u64::from(byte);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// 16 random lowercase hex digits (a node's name, an epoch offered to Redis).
pub fn random_hex() -> String {
    // Made as a room's epoch is: hex digits only, so always UTF-8.
    String::from_utf8_lossy(&crate::rooms::new_epoch()).into_owned()
}
