//! Cluster-wide presence: each node's part of a room's presence, the other nodes'
//! parts of the rooms held here, and the node registry that says which nodes live.
//!
//! - A node tells its part of a room (its member count and its users, `Part`) when
//!   it changed, at most once a second per room (the application's presence tick):
//!   the presence script keeps it in the room's hash `mioket:{ROOM}:presence` under
//!   the node's name and tells every node on the room's live channel. A node with no
//!   member left (or a room freed here) takes its part back (an empty part).
//! - Every node keeps, per room it holds, the other nodes' parts (at most
//!   `MAX_NODES_PER_ROOM`); a room's fetch reads the hash, so the first welcome of a
//!   room here counts the other nodes already. `online` = own members + others'.
//! - Liveness: every `HEARTBEAT_EVERY` a node writes Redis's time into the registry
//!   (`mioket:DB:nodes`) and gets the live nodes back; the script removes the nodes
//!   silent for `DEAD_AFTER`. Parts of nodes not listed are dropped (their fields in
//!   the rooms' hashes go when a fetch meets them, or with the hash's TTL). A node
//!   killed stops counting within `DEAD_AFTER` + `HEARTBEAT_EVERY` (then at most a
//!   second to the members' presence update); one that stops gracefully takes its
//!   parts back and leaves the registry at once (`leave_cluster`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{Effect, Mirror, RoomSync, SyncState};
use crate::backplane::{Command, Registry as NodeRegistry};
use crate::rooms::RoomId;

/// How often a node writes its heartbeat into the registry.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
/// A node silent this long is taken as dead (three heartbeats).
pub const DEAD_AFTER: Duration = Duration::from_secs(3);
/// Other nodes' parts kept per room (more nodes are not counted here).
pub const MAX_NODES_PER_ROOM: usize = 64;
/// Users in a part (more: `truncated`), as in the presence op's answer.
pub const MAX_PART_USERS: usize = 1000;
/// A part longer than this (JSON) is ignored.
pub const MAX_PART_BYTES: usize = 1 << 20;
/// Nodes the registry's answer lists at most.
pub const MAX_NODES: usize = 1000;
/// Presence hashes read at once for rooms not held here (more: answered with what
/// this node knows, nothing).
pub const MAX_READS: usize = 256;

/// One node's part of a room's presence (as JSON in Redis and on the channel).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Part {
    pub online: usize,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<PartUser>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

/// A user with a token in a node's part: its `info` and its connections there.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PartUser {
    pub user: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<serde_json::Value>,
    pub connections: usize,
}

impl Part {
    /// A part from another node (bounded before and after parsing); `None` for an
    /// empty text (no part) or anything that is not one.
    pub fn parse(json: &str) -> Option<Part> {
        if json.is_empty() || json.len() > MAX_PART_BYTES {
            return None;
        }
        let mut part: Part = serde_json::from_str(json).ok()?;
        if part.users.len() > MAX_PART_USERS {
            part.users.truncate(MAX_PART_USERS);
            part.truncated = true;
        }
        Some(part)
    }
}

/// What the registry said last: the live nodes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Registry {
    /// Redis's time of the answer, in milliseconds since 1970.
    pub time_ms: u64,
    pub nodes: Vec<NodeInfo>,
}

/// A live node: its name, its last heartbeat (Redis's time, ms since 1970), and its
/// memberships, open WebSockets and uptime then.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeInfo {
    pub node: String,
    pub last_heartbeat_ms: u64,
    pub members: u64,
    pub connections: u64,
    pub uptime_s: u64,
}

/// Who asked for the presence of a room this node does not hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Asker {
    /// `GET /api/rooms/{room}/presence`.
    Api { id: usize },
    /// The presence op, with its `id`.
    Op { id: usize, op_id: Option<Box<str>> },
}

impl Asker {
    pub fn client(&self) -> usize {
        match self {
            Asker::Api { id } | Asker::Op { id, .. } => *id,
        }
    }
}

/// Another node's part as this node holds it.
#[derive(Debug)]
pub(super) struct Heard {
    part: Part,
    /// When it came: a part newer than a registry answer's request is not dropped
    /// for missing from it (its node may have started since).
    at: Instant,
}

/// The presence state of one room's mirror.
#[derive(Debug, Default)]
pub(super) struct RoomPresence {
    others: BTreeMap<Box<str>, Heard>,
    /// The sum of the others' counts, as last told to the application.
    remote: usize,
    /// This node's part as last told to Redis: the room's name and the JSON.
    told: Option<(Box<str>, Box<str>)>,
    /// Parts that came live while the room was fetched, applied after it.
    buffer: Vec<(String, String)>,
    /// The room's name, once fetched (to delete dead nodes' fields).
    name: Option<Box<str>>,
    /// This node's members of the room, as last told (the heartbeat's sum).
    members: usize,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Leaving {
    #[default]
    No,
    /// `Command::Leave` sent, not done yet.
    Sent,
    Done,
}

/// The node registry as this node sees it.
#[derive(Debug, Default)]
pub(super) struct Cluster {
    registry: Option<NodeRegistry>,
    live: HashSet<String>,
    /// Heartbeats in flight: when each was sent.
    heartbeats: HashMap<u64, Instant>,
    next_heartbeat: Option<Instant>,
    /// Some room holds a part of a node the registry did not list (yet).
    unlisted: bool,
    /// The command connection came back: this node's parts are told again after
    /// the next heartbeat.
    retell: bool,
    /// This node's open WebSockets and uptime, for its heartbeat.
    stats: (u64, u64),
    /// Presence hashes being read for rooms not held here: who asked, the room.
    pub(super) reads: HashMap<u64, (Asker, Box<str>)>,
    leaving: Leaving,
}

impl Cluster {
    pub(super) fn poll(&self) -> Option<Instant> {
        self.next_heartbeat.filter(|_| self.leaving == Leaving::No)
    }
}

impl Mirror {
    /// The registry's last answer: the live nodes, their last heartbeats and
    /// memberships (the console's one row per node).
    pub fn nodes(&self) -> Option<&NodeRegistry> {
        self.cluster.registry.as_ref()
    }

    /// This node's open WebSockets and uptime, told with its heartbeats.
    pub fn set_stats(&mut self, connections: u64, uptime_s: u64) {
        self.cluster.stats = (connections, uptime_s);
    }

    /// The other nodes' parts of a room's presence.
    pub fn others(&self, room: RoomId) -> impl Iterator<Item = &Part> + '_ {
        self.rooms.get(&room).into_iter().flat_map(|s| s.presence.others.values().map(|h| &h.part))
    }

    /// This node's part of a room changed (or not: it is compared with the one told).
    /// `current`: the room's generation and name, `None` when it is gone; `members`:
    /// its members here; `part`: the JSON, `None` when no member is left here.
    pub fn tell_presence(&mut self, room: RoomId, current: Option<(u32, &str)>, members: usize, part: Option<String>) {
        if self.cluster.leaving != Leaving::No {
            return;
        }
        if let Some(sync) = self.rooms.get_mut(&room) {
            if current.is_none_or(|(generation, _)| generation != sync.generation) {
                sync.presence.members = 0;
                if let Some((name, _)) = sync.presence.told.take() {
                    self.outbox.push(untell(name, &self.node));
                }
            }
        }
        let Some((generation, name)) = current else { return };
        let node = self.node.as_str().into();
        let sync = self.sync(room, generation);
        let told = sync.presence.told.as_ref().map(|(_, json)| &**json);
        if told == part.as_deref() {
            return;
        }
        sync.presence.members = members;
        let part: Option<Box<str>> = part.map(Into::into);
        sync.presence.told = part.clone().map(|json| (name.into(), json));
        self.outbox.push(Command::Presence { room: name.into(), node, part: part.unwrap_or_default() });
    }

    /// The node stops: its parts are taken back and it leaves the registry. False
    /// when Redis is unreachable (nothing to wait for).
    pub fn leave_cluster(&mut self) -> bool {
        if self.cluster.leaving != Leaving::No {
            return self.cluster.leaving == Leaving::Sent;
        }
        if !self.commands_up() {
            self.cluster.leaving = Leaving::Done;
            return false;
        }
        for sync in self.rooms.values_mut() {
            if let Some((name, _)) = sync.presence.told.take() {
                self.outbox.push(untell(name, &self.node));
            }
        }
        self.outbox.push(Command::Leave { node: self.node.as_str().into() });
        self.cluster.leaving = Leaving::Sent;
        true
    }

    /// Reads the presence of a room this node does not hold; false when Redis is
    /// unreachable or `MAX_READS` are being read (then there is nothing to add to
    /// what this node knows).
    pub fn read_presence(&mut self, asker: Asker, room: &str) -> bool {
        if !self.commands_up_for(room) || self.cluster.reads.len() >= MAX_READS {
            return false;
        }
        let req = self.request();
        self.cluster.reads.insert(req, (asker, room.into()));
        self.outbox.push(Command::ReadPresence { req, room: room.into() });
        true
    }

    /// A presence hash read: the parts of the nodes the registry lists (all, before
    /// its first answer), at most `MAX_NODES_PER_ROOM`.
    pub(super) fn presence_read(
        &mut self,
        req: u64,
        result: Result<Vec<(String, String)>, ()>,
        effects: &mut Vec<Effect>,
    ) {
        let Some((asker, room)) = self.cluster.reads.remove(&req) else { return };
        let known = self.cluster.registry.is_some();
        let parts = result
            .unwrap_or_default()
            .into_iter()
            .filter(|(node, _)| *node != self.node && (!known || self.cluster.live.contains(node)))
            .filter_map(|(_, part)| Part::parse(&part))
            .take(MAX_NODES_PER_ROOM)
            .collect();
        effects.push(Effect::PresenceRead { asker, room, parts });
    }

    /// Whether a stopping node is done with Redis (left the registry, or cannot).
    pub fn has_left(&self) -> bool {
        self.cluster.leaving != Leaving::Sent
    }

    pub(super) fn left(&mut self) {
        self.cluster.leaving = Leaving::Done;
    }

    /// The command connection is up (again): heartbeat now, then tell Redis this
    /// node's parts again (a part sent while it was down was lost).
    pub(super) fn presence_up(&mut self, now: Instant) {
        self.cluster.next_heartbeat = Some(now);
        self.cluster.heartbeats.clear();
        self.cluster.retell = true;
    }

    /// The heartbeat, when it is due.
    pub(super) fn heartbeat_due(&mut self, now: Instant) {
        if self.commands_up() && self.cluster.poll().is_some_and(|t| t <= now) {
            self.heartbeat(now);
        }
    }

    fn heartbeat(&mut self, now: Instant) {
        self.cluster.next_heartbeat = Some(now + HEARTBEAT_EVERY);
        let members = self.rooms.values().map(|s| s.presence.members as u64).sum();
        let req = self.request();
        self.cluster.heartbeats.insert(req, now);
        let (connections, uptime_s) = self.cluster.stats;
        let node = self.node.as_str().into();
        self.outbox.push(Command::Heartbeat { req, node, members, connections, uptime_s });
        // After the heartbeat: a node's parts never reach Redis before its entry in
        // the registry (so no other node takes them for a dead node's).
        if std::mem::take(&mut self.cluster.retell) {
            self.retell();
        }
    }

    /// Tells Redis all of this node's parts again.
    fn retell(&mut self) {
        for sync in self.rooms.values() {
            if let Some((room, part)) = &sync.presence.told {
                let node = self.node.as_str().into();
                self.outbox.push(Command::Presence { room: room.clone(), node, part: part.clone() });
            }
        }
    }

    /// The registry's answer: the parts of nodes it does not list go (unless they
    /// came after the heartbeat was sent).
    pub(super) fn nodes_heard(&mut self, req: u64, result: Result<NodeRegistry, ()>, effects: &mut Vec<Effect>) {
        let Some(sent) = self.cluster.heartbeats.remove(&req) else { return };
        let Ok(registry) = result else { return };
        // Silent longer than the dead time (a stalled loop): the others dropped this
        // node's parts, and deleted them; its heartbeat is back in: tell them again.
        let previous = self.cluster.registry.as_ref().map(|r| r.time_ms);
        if previous.is_some_and(|t| registry.time_ms.saturating_sub(t) > DEAD_AFTER.as_millis() as u64) {
            self.retell();
        }
        let live: HashSet<String> = registry.nodes.iter().map(|n| n.node.clone()).collect();
        // Parts taken before the first answer are checked against it too.
        let lost = self.cluster.registry.is_none() || self.cluster.live.iter().any(|n| !live.contains(n));
        self.cluster.registry = Some(registry);
        self.cluster.live = live;
        if !lost && !self.cluster.unlisted {
            return;
        }
        self.cluster.unlisted = false;
        let live = &self.cluster.live;
        let mut unlisted = false;
        for (&room, sync) in &mut self.rooms {
            let presence = &mut sync.presence;
            presence.others.retain(|node, heard| {
                let listed = live.contains(&**node);
                unlisted |= !listed && heard.at > sent;
                if !listed && heard.at <= sent {
                    // Dead (a live node's heartbeat comes before its parts): its
                    // field goes too.
                    if let Some(name) = &presence.name {
                        self.outbox.push(Command::Forget { room: name.clone(), node: node.clone() });
                    }
                    return false;
                }
                true
            });
            recount(room, sync, effects);
        }
        self.cluster.unlisted = unlisted;
    }

    /// A part from the room's live channel.
    pub(super) fn presence_heard(
        &mut self,
        room: RoomId,
        generation: u32,
        node: String,
        part: String,
        now: Instant,
        effects: &mut Vec<Effect>,
    ) {
        if node == self.node {
            return;
        }
        let sync = self.sync(room, generation);
        match sync.state {
            SyncState::Fetching => sync.presence.buffer.push((node, part)),
            // Not followed: the next fetch reads the hash.
            SyncState::Unsynced => {}
            SyncState::Synced => self.set_part(room, node, &part, now, effects),
        }
    }

    /// A fetch's presence hash replaces the others' parts, then the parts that came
    /// during the fetch. A part of a node the registry does not list is kept until
    /// the next registry answer says whether it lives.
    pub(super) fn presence_fetched(
        &mut self,
        room: RoomId,
        name: &str,
        hash: Vec<(String, String)>,
        now: Instant,
        effects: &mut Vec<Effect>,
    ) {
        let Some(sync) = self.rooms.get_mut(&room) else { return };
        sync.presence.others.clear();
        sync.presence.name = Some(name.into());
        let buffer = std::mem::take(&mut sync.presence.buffer);
        for (node, part) in hash {
            if node != self.node {
                self.set_part(room, node, &part, now, effects);
            }
        }
        for (node, part) in buffer {
            self.set_part(room, node, &part, now, effects);
        }
        if let Some(sync) = self.rooms.get_mut(&room) {
            recount(room, sync, effects);
        }
    }

    /// A fetch failed: parts buffered for it go (the next fetch reads the hash).
    pub(super) fn presence_unfetched(sync: &mut RoomSync) {
        sync.presence.buffer.clear();
    }

    /// Another node's part of a room (empty or malformed: none).
    fn set_part(&mut self, room: RoomId, node: String, part: &str, now: Instant, effects: &mut Vec<Effect>) {
        let listed = self.cluster.registry.is_none() || self.cluster.live.contains(&node);
        let Some(sync) = self.rooms.get_mut(&room) else { return };
        let others = &mut sync.presence.others;
        match Part::parse(part) {
            Some(part) if others.len() < MAX_NODES_PER_ROOM || others.contains_key(node.as_str()) => {
                others.insert(node.into(), Heard { part, at: now });
                self.cluster.unlisted |= !listed;
            }
            Some(_) => {}
            None => {
                others.remove(node.as_str());
            }
        }
        recount(room, sync, effects);
    }
}

/// Tells the application when the sum of the other nodes' counts changed.
fn recount(room: RoomId, sync: &mut RoomSync, effects: &mut Vec<Effect>) {
    let remote = sync.presence.others.values().fold(0usize, |sum, h| sum.saturating_add(h.part.online));
    if remote != sync.presence.remote {
        sync.presence.remote = remote;
        effects.push(Effect::Online { room, remote });
    }
}

/// A room's mirror goes (its room is gone here): this node's part, if told, is
/// taken back.
pub(super) fn untold(sync: &mut RoomSync, node: &str) -> Option<Command> {
    sync.presence.told.take().map(|(name, _)| untell(name, node))
}

/// Takes a node's part of a room back.
fn untell(room: Box<str>, node: &str) -> Command {
    Command::Presence { room, node: node.into(), part: "".into() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backplane::{Event, Fetched, Settings};
    use crate::config::RedisUrl;
    use crate::pubsub::Audience;
    use crate::rooms::{RoomLimits, Rooms};

    /// Room 0 ("r") with one member here, its mirror fetched with node `a`'s part.
    fn fetched(now: Instant) -> (Mirror, Rooms, Vec<Effect>) {
        let settings = Settings {
            shards: vec![RedisUrl::parse("redis://127.0.0.1").unwrap()],
            ca: None,
            outbox: 10,
            outbox_bytes: 1000,
            history: 10,
            history_bytes: 1000,
            ttl: Duration::from_secs(60),
            dedup_window: Duration::from_secs(60),
        };
        let mut bp = Mirror::named(settings, "me".into());
        let limits = RoomLimits {
            max_rooms: 10,
            ttl: Duration::from_secs(60),
            history_messages: 10,
            history_room_bytes: 1000,
            history_memory: 1000,
        };
        let mut rooms = Rooms::new(limits);
        let room = rooms.find_or_create("r", now).unwrap();
        for up in [Event::Commands(true), Event::Fetches(true), Event::Subscribed(true)] {
            bp.handle(up, &rooms, now);
        }
        assert_eq!(bp.join(1, room, &rooms, None), super::super::Joining::Waits);
        rooms.join(room, 1, Audience::Enveloped);
        let req = bp.outbox.iter().find_map(|c| match c {
            Command::Fetch { req, .. } => Some(*req),
            _ => None,
        });
        bp.outbox.clear();
        let presence = vec![("a".into(), r#"{"online":2}"#.into()), ("me".into(), r#"{"online":9}"#.into())];
        let result = Ok(Fetched { epoch: "e".into(), seq: 0, entries: Vec::new(), presence });
        let effects = bp.handle(Event::Fetched { req: req.unwrap(), result }, &rooms, now);
        (bp, rooms, effects)
    }

    fn remote(effects: &[Effect]) -> Vec<usize> {
        effects
            .iter()
            .filter_map(|e| if let Effect::Online { remote, .. } = e { Some(*remote) } else { None })
            .collect()
    }

    fn heartbeat(bp: &mut Mirror, rooms: &Rooms, now: Instant) -> u64 {
        bp.housekeeping(rooms, now);
        let req = bp.outbox.iter().find_map(|c| if let Command::Heartbeat { req, .. } = c { Some(*req) } else { None });
        bp.outbox.clear();
        req.expect("a heartbeat")
    }

    fn listing(nodes: &[&str]) -> Result<NodeRegistry, ()> {
        let nodes = nodes.iter().map(|n| NodeInfo { node: n.to_string(), ..NodeInfo::default() }).collect();
        Ok(NodeRegistry { time_ms: 1, nodes })
    }

    /// The welcome counts the fetched parts (its own node's field is not counted);
    /// a node the registry does not list is dropped (and its field forgotten), unless
    /// its part came after the heartbeat went: it may have started since (its own
    /// heartbeat reached Redis before its part), so the next answer decides.
    #[test]
    fn parts_of_nodes_the_registry_does_not_list_go_but_not_too_early() {
        let t0 = Instant::now();
        let (mut bp, rooms, effects) = fetched(t0);
        assert_eq!(remote(&effects), [2], "{effects:?}");
        assert!(matches!(effects.last(), Some(Effect::Welcome { id: 1, .. })), "before the welcome");
        let req = heartbeat(&mut bp, &rooms, t0);
        let ms = Duration::from_millis(10);
        let part = r#"{"online":1}"#.to_string();
        let event = Event::Presence { room: "r".into(), node: "b".into(), part };
        assert_eq!(remote(&bp.handle(event, &rooms, t0 + ms)), [3]);
        let effects = bp.handle(Event::Nodes { req, result: listing(&["me"]) }, &rooms, t0 + ms * 2);
        assert_eq!(remote(&effects), [1], "a goes, b (heard after the heartbeat went) stays");
        assert_eq!(bp.outbox, [Command::Forget { room: "r".into(), node: "a".into() }]);
        assert_eq!(bp.nodes().map(|r| r.nodes.len()), Some(1));
        bp.outbox.clear();
        let req = heartbeat(&mut bp, &rooms, t0 + HEARTBEAT_EVERY);
        let effects = bp.handle(Event::Nodes { req, result: listing(&["me"]) }, &rooms, t0 + HEARTBEAT_EVERY);
        assert_eq!(remote(&effects), [0], "b is not listed by an answer to a later heartbeat: dead");
        // A part that says nothing is none.
        let event = Event::Presence { room: "r".into(), node: "c".into(), part: "{".into() };
        assert!(remote(&bp.handle(event, &rooms, t0 + HEARTBEAT_EVERY)).is_empty());
    }

    #[test]
    fn parts_parse_bounded() {
        assert_eq!(Part::parse(""), None);
        assert_eq!(Part::parse("nope"), None);
        let part = Part::parse(r#"{"online":2,"users":[{"user":"ada","info":{"n":1},"connections":2}]}"#).unwrap();
        assert_eq!(part.online, 2);
        assert_eq!(part.users[0].connections, 2);
        let many: Vec<String> =
            (0..MAX_PART_USERS + 5).map(|i| format!(r#"{{"user":"u{i}","connections":1}}"#)).collect();
        let json = format!(r#"{{"online":2000,"users":[{}]}}"#, many.join(","));
        let part = Part::parse(&json).unwrap();
        assert_eq!(part.users.len(), MAX_PART_USERS);
        assert!(part.truncated);
        assert_eq!(Part::parse(&"x".repeat(MAX_PART_BYTES + 1)), None);
        let json = serde_json::to_string(&Part { online: 1, users: Vec::new(), truncated: false }).unwrap();
        assert_eq!(json, r#"{"online":1}"#);
    }
}
