//! The HTTP API for backends (docs/protocol.md, "HTTP API for backends"): which
//! route a path names, the bearer token check, and the JSON answers. The
//! application acts on the routes; this module only reads and writes HTTP.

use serde::Serialize;
use sha1::{Digest, Sha1};

use crate::http;
use crate::pubsub::Seq;

/// An `/api/` path.
#[derive(Debug, PartialEq, Eq)]
pub enum Route<'a> {
    /// `/api/rooms`
    Rooms,
    /// `/api/rooms/{room}/messages`, with the room still percent-encoded.
    Messages(&'a str),
    /// `/api/rooms/{room}/presence`.
    Presence(&'a str),
    /// `/api/rooms/{room}/users/{user}` (both percent-encoded).
    RoomUser(&'a str, &'a str),
    /// `/api/users/{user}/disconnect`.
    Disconnect(&'a str),
    /// `/api/stats`: the operator console's document.
    Stats,
    /// Anything else under `/api/`.
    Unknown,
}

/// The API route of a path (the query already removed), or `None` outside `/api/`.
pub fn route(path: &str) -> Option<Route<'_>> {
    let rest = path.strip_prefix("/api")?;
    if !rest.is_empty() && !rest.starts_with('/') {
        return None;
    }
    if rest == "/stats" {
        return Some(Route::Stats);
    }
    if rest == "/rooms" || rest == "/rooms/" {
        return Some(Route::Rooms);
    }
    if let Some(user) = rest.strip_prefix("/users/").and_then(|r| r.strip_suffix("/disconnect")) {
        return Some(if user.contains('/') { Route::Unknown } else { Route::Disconnect(user) });
    }
    // The room may hold `/` itself: everything between the prefix and the suffix.
    let Some(room) = rest.strip_prefix("/rooms/") else { return Some(Route::Unknown) };
    if let Some(room) = room.strip_suffix("/messages") {
        return Some(Route::Messages(room));
    }
    if let Some(room) = room.strip_suffix("/presence") {
        return Some(Route::Presence(room));
    }
    match room.rsplit_once("/users/") {
        Some((room, user)) if !user.is_empty() && !user.contains('/') => Some(Route::RoomUser(room, user)),
        _ => Some(Route::Unknown),
    }
}

/// Whether `Authorization` is `Bearer <token>`. The comparison takes the same time
/// whatever the value: both sides are hashed, and the digests compared in full.
pub fn authorized(header: Option<&[u8]>, token: &str) -> bool {
    let Some(value) = header else { return false };
    let value = value.trim_ascii();
    let (scheme, credentials) = value.split_at(value.iter().position(|&b| b == b' ').unwrap_or(value.len()));
    let given = Sha1::digest(credentials.trim_ascii());
    let expected = Sha1::digest(token.as_bytes());
    let differ = given.iter().zip(expected.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b));
    scheme.eq_ignore_ascii_case(b"bearer") && differ == 0
}

/// Whether a body of this `Content-Type` is published as binary.
pub fn is_binary(content_type: Option<&[u8]>) -> bool {
    content_type.is_some_and(|t| {
        let essence = t.split(|&b| b == b';').next().unwrap_or_default().trim_ascii();
        essence.eq_ignore_ascii_case(b"application/octet-stream")
    })
}

/// An `Idempotency-Key` as a publish's id: 1 to `v1::MAX_ID` bytes of UTF-8 (a v1
/// publish's `id` in the same room is the same id), without the spaces around it.
pub fn idempotency_key(value: &[u8]) -> Option<&str> {
    let key = std::str::from_utf8(value.trim_ascii()).ok()?;
    (!key.is_empty() && key.len() <= crate::v1::MAX_ID).then_some(key)
}

/// A row of `GET /api/rooms`.
#[derive(Serialize)]
pub struct RoomInfo<'a> {
    pub room: &'a str,
    pub epoch: &'a str,
    pub online: usize,
    pub seq: Seq,
    pub history: usize,
}

pub fn rooms(list: &[RoomInfo<'_>]) -> Vec<u8> {
    json(200, &serde_json::to_vec(list).unwrap_or_default())
}

pub fn published(room: &str, seq: Seq) -> Vec<u8> {
    #[derive(Serialize)]
    struct Published<'a> {
        room: &'a str,
        seq: Seq,
    }
    json(200, &serde_json::to_vec(&Published { room, seq }).unwrap_or_default())
}

/// A JSON answer made by the caller (presence).
pub fn json_ok(body: &[u8]) -> Vec<u8> {
    json(200, body)
}

/// `{"user":U,"connections":K}`, or with `"room"` first.
pub fn moderated(room: Option<&str>, user: &str, connections: usize) -> Vec<u8> {
    #[derive(Serialize)]
    struct Moderated<'a> {
        #[serde(skip_serializing_if = "Option::is_none")]
        room: Option<&'a str>,
        user: &'a str,
        connections: usize,
    }
    json(200, &serde_json::to_vec(&Moderated { room, user, connections }).unwrap_or_default())
}

pub fn unauthorized() -> Vec<u8> {
    http::response_with(401, "WWW-Authenticate: Bearer\r\n", http::TEXT, b"missing or wrong bearer token\n")
}

pub fn method_not_allowed(allow: &str) -> Vec<u8> {
    http::response_with(405, &format!("Allow: {allow}\r\n"), http::TEXT, b"method not allowed\n")
}

/// An error answer with its reason as the body.
pub fn error(status: u16, reason: &str) -> Vec<u8> {
    http::response(status, http::TEXT, format!("{reason}\n").as_bytes())
}

fn json(status: u16, body: &[u8]) -> Vec<u8> {
    http::response(status, "application/json", body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(route("/api/rooms"), Some(Route::Rooms));
        assert_eq!(route("/api/rooms/lobby/messages"), Some(Route::Messages("lobby")));
        assert_eq!(route("/api/rooms/a/b/messages"), Some(Route::Messages("a/b")));
        assert_eq!(route("/api/rooms/a%2Fb/messages"), Some(Route::Messages("a%2Fb")));
        assert_eq!(route("/api/rooms//messages"), Some(Route::Messages("")));
        assert_eq!(route("/api/other"), Some(Route::Unknown));
        assert_eq!(route("/api/stats"), Some(Route::Stats));
        assert_eq!(route("/api/rooms/a/b/presence"), Some(Route::Presence("a/b")));
        assert_eq!(route("/api/rooms/a/b/users/u%201"), Some(Route::RoomUser("a/b", "u%201")));
        assert_eq!(route("/api/rooms/a/users/"), Some(Route::Unknown));
        assert_eq!(route("/api/users/u/disconnect"), Some(Route::Disconnect("u")));
        assert_eq!(route("/api/users/a/b/disconnect"), Some(Route::Unknown));
        assert_eq!(route("/api"), Some(Route::Unknown));
        assert_eq!(route("/apix"), None);
        assert_eq!(route("/"), None);
    }

    #[test]
    fn the_token_must_match_whole_after_the_bearer_scheme() {
        assert!(authorized(Some(b"Bearer s3cret"), "s3cret"));
        assert!(authorized(Some(b"bearer  s3cret "), "s3cret"));
        for wrong in [&b"Bearer s3cre"[..], b"Bearer s3crett", b"Basic s3cret", b"s3cret", b"Bearer", b""] {
            assert!(!authorized(Some(wrong), "s3cret"), "{:?}", String::from_utf8_lossy(wrong));
        }
        assert!(!authorized(None, "s3cret"));
    }

    #[test]
    fn an_idempotency_key_is_a_short_utf8_id() {
        assert_eq!(idempotency_key(b" order-7 "), Some("order-7"));
        assert_eq!(idempotency_key("é".as_bytes()), Some("é"));
        assert_eq!(idempotency_key(&[b'k'; 64]).map(str::len), Some(64));
        for bad in [&b""[..], b"  ", &[b'k'; 65], b"\xff"] {
            assert_eq!(idempotency_key(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn octet_stream_is_binary_and_anything_else_text() {
        assert!(is_binary(Some(b"application/octet-stream")));
        assert!(is_binary(Some(b"Application/Octet-Stream; x=y")));
        assert!(!is_binary(Some(b"text/plain; charset=utf-8")));
        assert!(!is_binary(None));
    }
}
