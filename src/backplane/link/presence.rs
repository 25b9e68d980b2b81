//! The link's side of cluster-wide presence (backplane/mirror/presence.rs): the
//! presence, heartbeat and leave scripts' keys and arguments, and their answers.

use super::resp::Reply;
use super::{command, Shas};
use crate::backplane::mirror::presence::{DEAD_AFTER, MAX_NODES};
use crate::backplane::{Command, NodeInfo, Registry, Settings};

/// A room's presence hash: node -> its part (JSON).
pub(super) fn presence_key(room: &str) -> Vec<u8> {
    format!("mioket:{{{room}}}:presence").into_bytes()
}

/// The node registry (per database: deployments on different databases are apart):
/// a ZSET node -> its last heartbeat (Redis's time, ms), and a HASH node -> memberships.
fn registry_keys(settings: &Settings) -> [String; 2] {
    let db = settings.url.db;
    [format!("mioket:{db}:nodes"), format!("mioket:{db}:nodes:members")]
}

/// Writes a presence, heartbeat or leave command; false for any other command.
pub(super) fn encode(
    c: &Command,
    shas: &Shas,
    settings: &Settings,
    channel: &str,
    ttl: &str,
    out: &mut Vec<u8>,
) -> bool {
    match c {
        Command::Presence { room, node, part } => {
            let key = presence_key(room);
            let args: [&[u8]; 9] = [
                b"EVALSHA",
                &shas.presence,
                b"1",
                &key,
                node.as_bytes(),
                part.as_bytes(),
                channel.as_bytes(),
                room.as_bytes(),
                ttl.as_bytes(),
            ];
            command(out, &args);
        }
        Command::Heartbeat { node, members, .. } => {
            let [registry, counts] = registry_keys(settings);
            let (members, dead, max) = (members.to_string(), DEAD_AFTER.as_millis().to_string(), MAX_NODES.to_string());
            let args: [&[u8]; 9] = [
                b"EVALSHA",
                &shas.heartbeat,
                b"2",
                registry.as_bytes(),
                counts.as_bytes(),
                node.as_bytes(),
                members.as_bytes(),
                dead.as_bytes(),
                max.as_bytes(),
            ];
            command(out, &args);
        }
        Command::Forget { room, node } => {
            let [registry, _] = registry_keys(settings);
            let (key, dead) = (presence_key(room), DEAD_AFTER.as_millis().to_string());
            let args: [&[u8]; 9] = [
                b"EVALSHA",
                &shas.forget,
                b"2",
                &key,
                registry.as_bytes(),
                node.as_bytes(),
                dead.as_bytes(),
                channel.as_bytes(),
                room.as_bytes(),
            ];
            command(out, &args);
        }
        Command::ReadPresence { room, .. } => command(out, &[b"HGETALL", &presence_key(room)]),
        Command::Leave { node } => {
            let [registry, counts] = registry_keys(settings);
            let args: [&[u8]; 6] =
                [b"EVALSHA", &shas.leave, b"2", registry.as_bytes(), counts.as_bytes(), node.as_bytes()];
            command(out, &args);
        }
        _ => return false,
    }
    true
}

/// The heartbeat script's answer: Redis's time, then node, last heartbeat, members.
pub(super) fn parse_registry(reply: &Reply) -> Option<Registry> {
    let items = reply.as_array()?;
    let (time, rest) = items.split_first()?;
    let time_ms = u64::try_from(time.as_int()?).ok()?;
    let number = |r: &Reply| std::str::from_utf8(r.as_bytes()?).ok()?.parse::<f64>().ok().map(|n| n as u64);
    let mut nodes = Vec::with_capacity(rest.len() / 3);
    for entry in rest.chunks(3) {
        let [node, last, members] = entry else { return None };
        let node = String::from_utf8(node.as_bytes()?.to_vec()).ok()?;
        nodes.push(NodeInfo { node, last_heartbeat_ms: number(last)?, members: number(members)? });
    }
    Some(Registry { time_ms, nodes })
}

/// A presence hash (HGETALL's flat answer) as (node, part) pairs; nothing when
/// absent or malformed.
pub(super) fn parse_hash(reply: Option<&Reply>) -> Vec<(String, String)> {
    let Some(items) = reply.and_then(Reply::as_array) else { return Vec::new() };
    let text = |r: &Reply| String::from_utf8(r.as_bytes()?.to_vec()).ok();
    items.chunks(2).filter_map(|pair| Some((text(pair.first()?)?, text(pair.get(1)?)?))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registries_and_hashes_parse() {
        let bulk = |s: &str| Reply::Bulk(s.as_bytes().to_vec());
        let reply = Reply::Array(vec![
            Reply::Integer(1_765_000_000_123),
            bulk("aa"),
            bulk("1765000000100"),
            bulk("3"),
            bulk("bb"),
            bulk("1765000000000"),
            bulk("0"),
        ]);
        let registry = parse_registry(&reply).unwrap();
        assert_eq!(registry.time_ms, 1_765_000_000_123);
        assert_eq!(registry.nodes[0], NodeInfo { node: "aa".into(), last_heartbeat_ms: 1_765_000_000_100, members: 3 });
        assert_eq!(registry.nodes.len(), 2);
        assert!(parse_registry(&Reply::Array(vec![Reply::Integer(1), bulk("aa")])).is_none());
        let hash = Reply::Array(vec![bulk("aa"), bulk("{\"online\":1}"), bulk("odd")]);
        assert_eq!(parse_hash(Some(&hash)), vec![("aa".to_string(), "{\"online\":1}".to_string())]);
        assert!(parse_hash(None).is_empty());
    }
}
