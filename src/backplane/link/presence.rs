//! The link's side of cluster-wide presence (backplane/mirror/presence.rs): the
//! presence, heartbeat, leave and forget scripts' keys and arguments, and their
//! answers. Pure: the arguments are built as byte strings and the answers read from
//! a flat list of byte strings (`flat`: bulk strings, and integers as their digits),
//! so the link writes and reads them with whatever RESP code it has.

use super::Shas;
use crate::backplane::mirror::presence::{DEAD_AFTER, MAX_NODES};
use crate::backplane::{Command, NodeInfo, Registry, Settings};

/// A room's presence hash: node -> its part (JSON).
pub(super) fn presence_key(room: &str) -> Vec<u8> {
    format!("mioket:{{{room}}}:presence").into_bytes()
}

/// The node registry (per database: deployments on different databases are apart):
/// a ZSET node -> its last heartbeat (Redis's time, ms), and a HASH node -> memberships.
fn registry_keys(settings: &Settings) -> [Vec<u8>; 2] {
    let db = settings.url().db;
    [format!("mioket:{db}:nodes").into_bytes(), format!("mioket:{db}:nodes:members").into_bytes()]
}

/// The command line (name and arguments) of a presence, heartbeat, leave, forget or
/// read-presence command; `None` for any other command. `ttl`: the rooms' TTL in ms.
/// A part goes on the room's live channel, by SPUBLISH where Redis has it.
pub(super) fn args(c: &Command, shas: &Shas, settings: &Settings, ttl: &str) -> Option<Vec<Vec<u8>>> {
    let b = |s: &str| s.as_bytes().to_vec();
    let channel = |room: &str| super::room_channel(settings, room).into_bytes();
    let publish = b(if shas.sharded { "SPUBLISH" } else { "PUBLISH" });
    let dead = DEAD_AFTER.as_millis().to_string();
    let [registry, counts] = registry_keys(settings);
    Some(match c {
        Command::Presence { room, node, part } => vec![
            b("EVALSHA"),
            shas.presence.clone(),
            b("1"),
            presence_key(room),
            b(node),
            b(part),
            channel(room),
            b(room),
            b(ttl),
            publish,
        ],
        Command::Heartbeat { node, members, connections, uptime_s, .. } => vec![
            b("EVALSHA"),
            shas.heartbeat.clone(),
            b("2"),
            registry,
            counts,
            b(node),
            format!("{members} {connections} {uptime_s}").into_bytes(),
            dead.into_bytes(),
            MAX_NODES.to_string().into_bytes(),
        ],
        Command::Leave { node } => vec![b("EVALSHA"), shas.leave.clone(), b("2"), registry, counts, b(node)],
        Command::Forget { room, node } => vec![
            b("EVALSHA"),
            shas.forget.clone(),
            b("2"),
            presence_key(room),
            registry,
            b(node),
            dead.into_bytes(),
            channel(room),
            b(room),
            publish,
        ],
        Command::ReadPresence { room, .. } => vec![b("HGETALL"), presence_key(room)],
        _ => return None,
    })
}

/// The heartbeat script's answer: Redis's time, then node, last heartbeat, and
/// `MEMBERS CONNECTIONS UPTIME_S` (what the node wrote; a node that wrote fewer has 0s).
pub(super) fn parse_registry(items: &[Vec<u8>]) -> Option<Registry> {
    let number = |b: &[u8]| std::str::from_utf8(b).ok()?.parse::<f64>().ok().map(|n| n as u64);
    let (time, rest) = items.split_first()?;
    let time_ms = number(time)?;
    let mut nodes = Vec::with_capacity(rest.len() / 3);
    for entry in rest.chunks(3) {
        let [node, last, stats] = entry else { return None };
        let node = String::from_utf8(node.clone()).ok()?;
        let mut stats = stats.split(|&b| b == b' ').map(number);
        let mut next = || stats.next().flatten().unwrap_or(0);
        let (members, connections, uptime_s) = (next(), next(), next());
        nodes.push(NodeInfo { node, last_heartbeat_ms: number(last)?, members, connections, uptime_s });
    }
    Some(Registry { time_ms, nodes })
}

/// A presence hash (HGETALL's flat answer) as (node, part) pairs (what is not UTF-8
/// is left out).
pub(super) fn parse_hash(items: &[Vec<u8>]) -> Vec<(String, String)> {
    let text = |b: &Vec<u8>| String::from_utf8(b.clone()).ok();
    items.chunks(2).filter_map(|pair| Some((text(pair.first()?)?, text(pair.get(1)?)?))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flat(items: &[&str]) -> Vec<Vec<u8>> {
        items.iter().map(|s| s.as_bytes().to_vec()).collect()
    }

    #[test]
    fn registries_and_hashes_parse() {
        let reply = flat(&["1765000000123", "aa", "1765000000100", "3 2 60", "bb", "1765000000000", "0"]);
        let registry = parse_registry(&reply).unwrap();
        assert_eq!(registry.time_ms, 1_765_000_000_123);
        let aa = NodeInfo {
            node: "aa".into(),
            last_heartbeat_ms: 1_765_000_000_100,
            members: 3,
            connections: 2,
            uptime_s: 60,
        };
        assert_eq!(registry.nodes[0], aa);
        assert_eq!((registry.nodes[1].members, registry.nodes[1].uptime_s), (0, 0));
        assert_eq!(registry.nodes.len(), 2);
        assert!(parse_registry(&flat(&["1", "aa"])).is_none());
        let hash = flat(&["aa", "{\"online\":1}", "odd"]);
        assert_eq!(parse_hash(&hash), vec![("aa".to_string(), "{\"online\":1}".to_string())]);
        assert!(parse_hash(&[]).is_empty());
    }
}
