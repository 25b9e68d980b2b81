//! One bus: where an admitted publish goes to be numbered, and where every delivery
//! comes from. Which bus is known at start, so it is an enum (one predictable branch,
//! no dynamic call per message):
//!
//! - `Local`: one process. A publish is numbered by its room here and delivered at
//!   once, in the same call; a publish's id is remembered here (src/dedup.rs).
//! - `Redis`: rooms shared through Redis (`--redis`). A publish goes to Redis
//!   (`Mirror::publish`); it is delivered when Redis has numbered it and it comes
//!   back (`App::handle_backplane`, app/redis.rs), like every other node's. A
//!   publish's id is remembered by the room in Redis, in the same script.
//!
//! Both end in `App::deliver`, the one path to the fan-out. The split: the bus (and
//! the mirror behind it) decides what is delivered, in which order, with which seq,
//! and who is waiting for it; the application decides who receives it and how
//! (audiences, acks, compression, flushes, refusals). A later variant (several loops
//! in one process) plugs in here.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::deliver::encode_from;
use super::message::{Publish, Refused, Target};
use super::{App, ClientIo};
use crate::backplane::{Command, Mirror, Settings};
use crate::config::{Config, Mode};
use crate::dedup::{Dedup, Key};
use crate::frame::Opcode;
use crate::pubsub::Seq;
use crate::rooms::{RoomId, Rooms, Stored};
use crate::v1::Envelopes;

pub(super) enum Bus {
    /// One process: numbered here, delivered at once; ids remembered here.
    Local(Box<Dedup>),
    /// `--redis`: numbered by Redis, delivered when it comes back.
    Redis(Box<Mirror>),
}

/// A message numbered for a room, on its way to the fan-out: encoded for the room's
/// audiences, with its publisher here (acked and flushed first), if any.
pub(super) struct Delivery<'a> {
    pub room: RoomId,
    pub stored: Stored,
    pub publisher: Option<(usize, Option<&'a str>)>,
}

/// A live node, one row of /api/stats's `nodes`.
#[derive(Debug, Serialize)]
pub(super) struct Node {
    /// The node's name (its origins' prefix with Redis; `local` without).
    pub id: String,
    pub uptime_s: u64,
    /// Open WebSockets on that node.
    pub connections: usize,
}

/// What the bus did with a publish.
pub(super) enum Sent {
    /// Numbered here: deliver it now (to the room, encoded), then remember its id's key.
    Now(RoomId, Stored, Option<Key>),
    /// Its id was published in the room within the window, with this seq: answered
    /// with it, not published again.
    Again(RoomId, Seq),
    /// Sent to Redis: delivered (and answered) when it comes back.
    Later,
}

impl Bus {
    /// `--redis` in broadcast mode: the Redis bus; otherwise the local one.
    pub(super) fn new(config: &Config) -> Bus {
        match redis_settings(config) {
            Some(settings) => Bus::Redis(Box::new(Mirror::new(settings))),
            None => Bus::Local(Box::new(Dedup::new(config.dedup_window))),
        }
    }

    /// Takes an admitted publish (its size already checked).
    #[inline]
    pub(super) fn publish(
        &mut self,
        config: &Config,
        rooms: &mut Rooms,
        envelopes: &mut Envelopes,
        p: &Publish<'_>,
        from: Option<&str>,
        now: Instant,
    ) -> Result<Sent, Refused> {
        let mirror = match self {
            Bus::Redis(mirror) => mirror,
            Bus::Local(dedup) => {
                let room = match p.room {
                    Target::Id(room) => room,
                    Target::Named(name) => rooms.find_or_create(name, now).map_err(|_| Refused::TooManyRooms)?,
                };
                let key = match p.key {
                    Some(id) if dedup.is_on() => match find(dedup, rooms, room, id, now) {
                        Ok(seq) => return Ok(Sent::Again(room, seq)),
                        Err(key) => Some(key),
                    },
                    _ => None,
                };
                // `from`: the publisher's sub, in its v1 envelopes.
                let stored = encode_from(rooms, envelopes, room, p.payload, config.history > 0, from);
                return Ok(Sent::Now(room, stored, key));
            }
        };
        send_to_redis(rooms, mirror, p, from, now)
    }

    /// Remembers the seq of a publish numbered here (`Sent::Now` with a key).
    #[inline(never)]
    pub(super) fn remember(&mut self, rooms: &Rooms, room: RoomId, key: Key, seq: Seq, now: Instant) {
        if let (Bus::Local(dedup), Some(r)) = (self, rooms.get(room)) {
            dedup.remember(room, r.generation(), key, seq, now);
        }
    }

    /// The publish ids' records, on the local bus.
    pub(super) fn dedup(&self) -> Option<&Dedup> {
        match self {
            Bus::Local(dedup) => Some(dedup),
            Bus::Redis(_) => None,
        }
    }

    pub(super) fn dedup_mut(&mut self) -> Option<&mut Dedup> {
        match self {
            Bus::Local(dedup) => Some(dedup),
            Bus::Redis(_) => None,
        }
    }

    /// The mirror, on the Redis bus.
    #[inline]
    pub(super) fn mirror(&self) -> Option<&Mirror> {
        match self {
            Bus::Local(_) => None,
            Bus::Redis(mirror) => Some(mirror),
        }
    }

    #[inline]
    pub(super) fn mirror_mut(&mut self) -> Option<&mut Mirror> {
        match self {
            Bus::Local(_) => None,
            Bus::Redis(mirror) => Some(mirror),
        }
    }

    /// The live nodes, this one first (`this`: its uptime and connections); with
    /// Redis, then the others the node registry listed at this node's last heartbeat
    /// (their uptime and connections as of their own last heartbeat).
    pub(super) fn nodes(&self, uptime_s: u64, connections: usize) -> Vec<Node> {
        let Bus::Redis(mirror) = self else {
            return vec![Node { id: "local".to_string(), uptime_s, connections }];
        };
        let this = Node { id: mirror.node().to_string(), uptime_s, connections };
        let others = mirror.nodes().into_iter().flat_map(|r| &r.nodes).filter(|n| n.node != mirror.node());
        let others = others.map(|n| Node {
            id: n.node.clone(),
            uptime_s: n.uptime_s,
            connections: usize::try_from(n.connections).unwrap_or(usize::MAX),
        });
        std::iter::once(this).chain(others).collect()
    }

    /// A client whose join waits for Redis: its input is held, and it is not read.
    #[inline]
    pub(super) fn is_held(&self, id: usize) -> bool {
        match self {
            Bus::Local(_) => false,
            Bus::Redis(mirror) => mirror.is_held(id),
        }
    }

    /// Keeps a held client's input; false when it is not held.
    #[inline]
    pub(super) fn hold(&mut self, id: usize, opcode: Opcode, payload: &[u8]) -> bool {
        match self {
            Bus::Local(_) => false,
            Bus::Redis(mirror) => mirror.hold(id, opcode, payload),
        }
    }
}

/// The seq of `id`'s publish in the room within the window, or its key to remember.
#[inline(never)]
fn find(dedup: &Dedup, rooms: &Rooms, room: RoomId, id: &str, now: Instant) -> Result<Seq, Key> {
    let generation = rooms.get(room).map_or(0, |r| r.generation());
    let key = dedup.key(generation, id);
    dedup.find(key, now).ok_or(key)
}

#[inline(never)]
fn send_to_redis(
    rooms: &Rooms,
    mirror: &mut Mirror,
    p: &Publish<'_>,
    from: Option<&str>,
    now: Instant,
) -> Result<Sent, Refused> {
    let (name, held) = match p.room {
        Target::Id(room) => (rooms.get(room).map_or("", |r| r.name()), Some(room)),
        Target::Named(name) => (name, rooms.find(name)),
    };
    let held = held.and_then(|room| Some((room, rooms.get(room)?.generation())));
    let origin = p.source.origin(name);
    let key = p.key.filter(|_| !mirror.settings().dedup_window.is_zero());
    mirror
        .publish(name, held, p.payload.opcode(), p.payload.bytes(), origin, from, key, now)
        .map_err(Refused::Backplane)?;
    Ok(Sent::Later)
}

impl<T: ClientIo> App<T> {
    /// The one path to the fan-out, for every bus.
    #[inline]
    pub(super) fn deliver(&mut self, delivery: Delivery<'_>, now: Instant) -> Seq {
        self.fan_out(delivery.room, delivery.stored, delivery.publisher, now)
    }

    /// With Redis: the node registry's last answer (the live nodes, their last
    /// heartbeats and memberships), for an operator's view of the cluster.
    pub fn cluster_nodes(&self) -> Option<&crate::backplane::Registry> {
        self.bus.mirror()?.nodes()
    }

    /// Commands for Redis, for the runtime to hand to the link (and empty).
    pub fn backplane_outbox(&mut self) -> Option<&mut Vec<Command>> {
        self.bus.mirror_mut().map(Mirror::commands)
    }
}

/// The Redis bus's settings from the command line (`--redis` and its limits), when
/// the application has one (`--redis` in broadcast mode).
pub fn redis_settings(config: &Config) -> Option<Settings> {
    if config.mode != Mode::Broadcast {
        return None;
    }
    let mut shards = config.redis.clone();
    shards.sort_by_key(crate::config::RedisUrl::address);
    shards.dedup_by_key(|u| u.address());
    if shards.is_empty() {
        return None;
    }
    Some(Settings {
        shards,
        ca: config.redis_ca.clone(),
        outbox: config.redis_outbox,
        outbox_bytes: config.redis_outbox_bytes,
        history: config.history,
        history_bytes: config.history_memory,
        ttl: config.room_ttl.max(Duration::from_secs(1)),
        dedup_window: config.dedup_window,
    })
}
