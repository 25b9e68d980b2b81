//! The `mioket.v1` subprotocol (docs/protocol.md): the JSON envelopes the server
//! sends, as ready WebSocket frames, and the ops a client sends, parsed. No I/O and
//! no rooms here: the application decides what to send to whom.
//!
//! Strings go in and out of JSON through serde_json; the envelopes' fixed parts are
//! written around them. Every envelope is built in one reused buffer and copied once
//! into its frame, so a broadcast envelope costs one allocation however many members
//! share it.

use std::borrow::Cow;
use std::rc::Rc;

use base64::Engine;
use serde::Deserialize;

use crate::frame::{encode_header, server_header, Opcode, MAX_HEADER_LEN};
use crate::outqueue::Chunk;
use crate::pubsub::Seq;

/// The token a client offers in `Sec-WebSocket-Protocol`.
pub const SUBPROTOCOL: &str = "mioket.v1";
/// The longest `id` an op may carry.
pub const MAX_ID: usize = 64;

const BASE64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
/// Decoding accepts base64 with or without its padding.
const BASE64_LENIENT: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

/// A message's payload as published: text stays text, binary stays binary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Payload<'a> {
    Text(&'a str),
    Binary(&'a [u8]),
}

impl<'a> Payload<'a> {
    /// A data message's payload (text is valid UTF-8: the Conn checked it).
    pub fn of(opcode: Opcode, bytes: &'a [u8]) -> Payload<'a> {
        match opcode {
            Opcode::Text => Payload::Text(std::str::from_utf8(bytes).unwrap_or_default()),
            _ => Payload::Binary(bytes),
        }
    }

    pub fn opcode(&self) -> Opcode {
        match self {
            Payload::Text(_) => Opcode::Text,
            Payload::Binary(_) => Opcode::Binary,
        }
    }

    pub fn bytes(&self) -> &[u8] {
        match self {
            Payload::Text(text) => text.as_bytes(),
            Payload::Binary(bytes) => bytes,
        }
    }
}

/// Why an op was refused; its text is the error envelope's `reason`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OpError {
    InvalidJson,
    UnknownOp,
    InvalidField,
    InvalidId,
    InvalidRoomName,
    NotJoined,
    AlreadyJoined,
    TooManyRooms,
    RoomLimit,
    /// The Redis backplane (`--redis`) cannot take the op now.
    BackplaneUnavailable,
    /// The message's envelope would pass `--max-message` (see `envelope_payload_len`).
    MessageTooBig,
    /// A `join` that would make more than `--rooms-per-second` new rooms in a second.
    TooManyNewRooms,
    /// The client's grant does not allow it (read for join and presence, write for publish).
    Forbidden,
    /// Over `--publish-rate` or `--publish-bytes-rate`.
    RateLimited,
    /// A `refresh` whose token is not valid, or is another user's.
    InvalidToken,
}

impl OpError {
    pub const ALL: [OpError; 15] = [
        OpError::InvalidJson,
        OpError::UnknownOp,
        OpError::InvalidField,
        OpError::InvalidId,
        OpError::InvalidRoomName,
        OpError::NotJoined,
        OpError::AlreadyJoined,
        OpError::TooManyRooms,
        OpError::RoomLimit,
        OpError::BackplaneUnavailable,
        OpError::MessageTooBig,
        OpError::TooManyNewRooms,
        OpError::Forbidden,
        OpError::RateLimited,
        OpError::InvalidToken,
    ];

    pub fn reason(self) -> &'static str {
        match self {
            OpError::InvalidJson => "invalid json",
            OpError::UnknownOp => "unknown op",
            OpError::InvalidField => "invalid field",
            OpError::InvalidId => "invalid id",
            OpError::InvalidRoomName => "invalid room name",
            OpError::NotJoined => "room not joined",
            OpError::AlreadyJoined => "already joined",
            OpError::TooManyRooms => "too many rooms",
            OpError::RoomLimit => "room limit reached",
            OpError::BackplaneUnavailable => "backplane unavailable",
            OpError::MessageTooBig => "message too big",
            OpError::TooManyNewRooms => "too many new rooms",
            OpError::Forbidden => "forbidden",
            OpError::RateLimited => "rate limited",
            OpError::InvalidToken => "invalid token",
        }
    }
}

/// A client's op, borrowing from its frame where JSON escapes allow.
#[derive(Debug, PartialEq, Eq)]
pub enum Op<'a> {
    Publish {
        room: Option<Cow<'a, str>>,
        payload: OwnedPayload<'a>,
        id: Option<Cow<'a, str>>,
    },
    Join {
        room: Cow<'a, str>,
        resume: Option<Resume<'a>>,
        id: Option<Cow<'a, str>>,
    },
    Leave {
        room: Option<Cow<'a, str>>,
        id: Option<Cow<'a, str>>,
    },
    /// A heartbeat: answered with `pong`, so a client can tell a live link from a dead
    /// one (WebSocket pings are invisible to browser JavaScript).
    Ping {
        id: Option<Cow<'a, str>>,
    },
    /// A new token for this connection (same `sub`), before the old one expires.
    Refresh {
        token: Cow<'a, str>,
        id: Option<Cow<'a, str>>,
    },
    /// Who is in a room (the path's room by default).
    Presence {
        room: Option<Cow<'a, str>>,
        id: Option<Cow<'a, str>>,
    },
}

/// A publish's payload: text as JSON gave it, binary decoded from base64.
#[derive(Debug, PartialEq, Eq)]
pub enum OwnedPayload<'a> {
    Text(Cow<'a, str>),
    Binary(Vec<u8>),
}

impl OwnedPayload<'_> {
    pub fn as_payload(&self) -> Payload<'_> {
        match self {
            OwnedPayload::Text(text) => Payload::Text(text),
            OwnedPayload::Binary(bytes) => Payload::Binary(bytes),
        }
    }
}

/// A resume query that cannot be read: `since` not a non-negative integer, or a value
/// that is not UTF-8 once percent-decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadQuery;

/// A resume request: the last seq seen, of which epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resume<'a> {
    pub since: Seq,
    pub epoch: Option<Cow<'a, str>>,
}

impl Resume<'_> {
    /// From the upgrade's query (`since=41&epoch=E`); `Ok(None)` when neither is there.
    /// Other parameters are ignored.
    pub fn from_query(query: &str) -> Result<Option<Resume<'static>>, BadQuery> {
        let (mut since, mut epoch) = (None, None);
        for pair in query.split('&') {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_encoding::percent_decode_str(value).decode_utf8().map_err(|_| BadQuery)?;
            match key {
                "since" => since = Some(value.parse::<Seq>().map_err(|_| BadQuery)?),
                "epoch" => epoch = Some(Cow::Owned(value.into_owned())),
                _ => {}
            }
        }
        Ok(Resume::of(since, epoch))
    }

    fn of(since: Option<Seq>, epoch: Option<Cow<'_, str>>) -> Option<Resume<'_>> {
        (since.is_some() || epoch.is_some()).then(|| Resume { since: since.unwrap_or(0), epoch })
    }
}

/// An op as JSON has it, before the checks that serde cannot make.
#[derive(Deserialize)]
struct RawOp<'a> {
    #[serde(borrow)]
    op: JsonStr<'a>,
    #[serde(borrow, default)]
    room: Option<JsonStr<'a>>,
    #[serde(borrow, default)]
    data: Option<JsonStr<'a>>,
    #[serde(borrow, default)]
    b64: Option<JsonStr<'a>>,
    #[serde(borrow, default)]
    id: Option<JsonStr<'a>>,
    #[serde(default)]
    since: Option<Seq>,
    #[serde(borrow, default)]
    epoch: Option<JsonStr<'a>>,
    #[serde(borrow, default)]
    token: Option<JsonStr<'a>>,
}

/// A JSON string, borrowed from the frame unless it has escapes. (serde borrows a
/// `Cow<str>` field only when it is not inside an `Option`: hence this newtype.)
#[derive(Deserialize)]
struct JsonStr<'a>(#[serde(borrow)] Cow<'a, str>);

fn cow(s: Option<JsonStr<'_>>) -> Option<Cow<'_, str>> {
    s.map(|s| s.0)
}

/// Parses one text frame from a v1 client. An error carries the op's `id` when it
/// had a valid one, for the error envelope.
#[allow(clippy::result_large_err)]
pub fn parse_op(text: &str) -> Result<Op<'_>, (OpError, Option<String>)> {
    let raw: RawOp<'_> = match serde_json::from_str(text) {
        Ok(raw) => raw,
        Err(err) => return Err(classify(text, err)),
    };
    let id = match cow(raw.id) {
        Some(id) if id.len() > MAX_ID => return Err((OpError::InvalidId, None)),
        id => id,
    };
    let fail = |err: OpError| Err((err, id.as_deref().map(str::to_string)));
    let room = cow(raw.room);
    match &*raw.op.0 {
        "publish" => {
            let payload = match (cow(raw.data), cow(raw.b64)) {
                (Some(text), None) => OwnedPayload::Text(text),
                (None, Some(b64)) => match BASE64_LENIENT.decode(b64.as_bytes()) {
                    Ok(bytes) => OwnedPayload::Binary(bytes),
                    Err(_) => return fail(OpError::InvalidField),
                },
                _ => return fail(OpError::InvalidField),
            };
            Ok(Op::Publish { room, payload, id })
        }
        "join" => match room {
            Some(room) => Ok(Op::Join { room, resume: Resume::of(raw.since, cow(raw.epoch)), id }),
            None => fail(OpError::InvalidField),
        },
        "leave" => Ok(Op::Leave { room, id }),
        "ping" => Ok(Op::Ping { id }),
        "refresh" => match cow(raw.token) {
            Some(token) => Ok(Op::Refresh { token, id }),
            None => fail(OpError::InvalidField),
        },
        "presence" => Ok(Op::Presence { room, id }),
        _ => fail(OpError::UnknownOp),
    }
}

/// Why a frame did not parse as an op (the slow path: it parses again, loosely).
fn classify(text: &str, err: serde_json::Error) -> (OpError, Option<String>) {
    if err.is_syntax() || err.is_eof() {
        return (OpError::InvalidJson, None);
    }
    let Ok(serde_json::Value::Object(object)) = serde_json::from_str::<serde_json::Value>(text) else {
        return (OpError::InvalidJson, None);
    };
    let id = match object.get("id") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(id)) if id.len() <= MAX_ID => Some(id.clone()),
        Some(_) => return (OpError::InvalidId, None),
    };
    match object.get("op").and_then(|op| op.as_str()) {
        Some("publish" | "join" | "leave" | "ping" | "refresh" | "presence") => (OpError::InvalidField, id),
        _ => (OpError::UnknownOp, id),
    }
}

/// Builds envelopes as whole WebSocket text frames. One per application: its buffer
/// is reused, so an envelope costs the one allocation of its frame.
#[derive(Default)]
pub struct Envelopes {
    buf: Vec<u8>,
}

/// What a welcome says.
pub struct Welcome<'a> {
    /// The room's name as a JSON string, quotes included (see `json_string`).
    pub room: &'a str,
    pub epoch: &'a str,
    pub seq: Seq,
    pub online: usize,
    pub text: Option<&'a str>,
    pub recovered: Option<bool>,
    /// This connection may not publish in the room (its token and the anonymous
    /// patterns give no write): `"read_only":true`, absent otherwise.
    pub read_only: bool,
}

impl Envelopes {
    /// `{"type":"message","room":R,"seq":N,"data":S}` (or `"b64"`), as a shared frame.
    /// `room` is the room's name as a JSON string.
    pub fn message(&mut self, room: &str, seq: Seq, payload: Payload<'_>) -> Rc<[u8]> {
        self.message_from(room, seq, payload, None)
    }

    /// A `message` envelope with `"from":SUB` when its publisher had a token.
    pub fn message_from(&mut self, room: &str, seq: Seq, payload: Payload<'_>, from: Option<&str>) -> Rc<[u8]> {
        self.start();
        self.push(b"{\"type\":\"message\",\"room\":");
        self.push(room.as_bytes());
        self.push(b",\"seq\":");
        self.number(seq);
        if let Some(from) = from {
            self.push(b",\"from\":");
            self.string(from);
        }
        match payload {
            Payload::Text(text) => {
                self.push(b",\"data\":");
                self.string(text);
            }
            Payload::Binary(bytes) => {
                self.push(b",\"b64\":\"");
                let start = self.buf.len();
                self.buf.resize(start + base64::encoded_len(bytes.len(), true).unwrap_or(0), 0);
                // The room was just made to measure.
                let _ = BASE64.encode_slice(bytes, &mut self.buf[start..]);
                self.push(b"\"");
            }
        }
        self.push(b"}");
        Rc::from(self.finish())
    }

    #[cfg(test)]
    pub fn welcome(&mut self, w: &Welcome<'_>) -> Chunk {
        self.welcome_user(w, None)
    }

    /// A welcome, with `"user":SUB,"expires_in":SECONDS` for a client with a token.
    pub fn welcome_user(&mut self, w: &Welcome<'_>, user: Option<(&str, u64)>) -> Chunk {
        self.start();
        self.push(b"{\"type\":\"welcome\",\"room\":");
        self.push(w.room.as_bytes());
        self.push(b",\"epoch\":");
        self.string(w.epoch);
        self.push(b",\"seq\":");
        self.number(w.seq);
        self.push(b",\"online\":");
        self.number(w.online as u64);
        self.push(b",\"text\":");
        match w.text {
            Some(text) => self.string(text),
            None => self.push(b"null"),
        }
        if let Some(recovered) = w.recovered {
            self.push(if recovered { b",\"recovered\":true" } else { b",\"recovered\":false" });
        }
        if w.read_only {
            self.push(b",\"read_only\":true");
        }
        if let Some((user, expires_in)) = user {
            self.push(b",\"user\":");
            self.string(user);
            self.push(b",\"expires_in\":");
            self.number(expires_in);
        }
        self.push(b"}");
        Chunk::Owned(self.finish().to_vec())
    }

    pub fn ack(&mut self, id: &str, room: &str, seq: Seq) -> Chunk {
        self.start();
        self.push(b"{\"type\":\"ack\",\"id\":");
        self.string(id);
        self.push(b",\"room\":");
        self.push(room.as_bytes());
        self.push(b",\"seq\":");
        self.number(seq);
        self.push(b"}");
        Chunk::Owned(self.finish().to_vec())
    }

    /// `{"type":"pong","id":ID}` (`id` null when the ping had none).
    pub fn pong(&mut self, id: Option<&str>) -> Chunk {
        self.start();
        self.push(b"{\"type\":\"pong\",\"id\":");
        self.id_or_null(id);
        self.push(b"}");
        Chunk::Owned(self.finish().to_vec())
    }

    /// `{"type":"presence",...}`, shared by the room's v1 members.
    pub fn presence(&mut self, room: &str, online: usize) -> Rc<[u8]> {
        self.start();
        self.push(b"{\"type\":\"presence\",\"room\":");
        self.push(room.as_bytes());
        self.push(b",\"online\":");
        self.number(online as u64);
        self.push(b"}");
        Rc::from(self.finish())
    }

    /// `{"type":"refreshed","id":ID,"expires_in":N}`.
    pub fn refreshed(&mut self, id: Option<&str>, expires_in: u64) -> Chunk {
        self.start();
        self.push(b"{\"type\":\"refreshed\",\"id\":");
        self.id_or_null(id);
        self.push(b",\"expires_in\":");
        self.number(expires_in);
        self.push(b"}");
        Chunk::Owned(self.finish().to_vec())
    }

    /// `{"type":"left","room":R,"reason":WHY}`: the server took the client out of a room.
    pub fn left(&mut self, room: &str, reason: &str) -> Chunk {
        self.start();
        self.push(b"{\"type\":\"left\",\"room\":");
        self.push(room.as_bytes());
        self.push(b",\"reason\":");
        self.string(reason);
        self.push(b"}");
        Chunk::Owned(self.finish().to_vec())
    }

    /// Any JSON text as a frame (the rare answers made with serde_json: presence).
    pub fn json(&mut self, json: &[u8]) -> Chunk {
        self.start();
        self.push(json);
        Chunk::Owned(self.finish().to_vec())
    }

    pub fn error(&mut self, id: Option<&str>, err: OpError) -> Chunk {
        self.start();
        self.push(b"{\"type\":\"error\",\"id\":");
        self.id_or_null(id);
        self.push(b",\"reason\":\"");
        self.push(err.reason().as_bytes());
        self.push(b"\"}");
        Chunk::Owned(self.finish().to_vec())
    }

    /// An op's `id` as a JSON string, or `null` when it had none.
    fn id_or_null(&mut self, id: Option<&str>) {
        match id {
            Some(id) => self.string(id),
            None => self.push(b"null"),
        }
    }

    /// Room for the longest header, then the JSON.
    fn start(&mut self) {
        self.buf.clear();
        self.buf.resize(MAX_HEADER_LEN, 0);
    }

    fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    fn number(&mut self, n: u64) {
        // Writing to a Vec cannot fail.
        let _ = serde_json::to_writer(&mut self.buf, &n);
    }

    fn string(&mut self, s: &str) {
        // Writing to a Vec cannot fail, and a &str always serializes.
        let _ = serde_json::to_writer(&mut self.buf, s);
    }

    /// Puts the frame header right before the JSON; returns the whole frame.
    fn finish(&mut self) -> &[u8] {
        let len = self.buf.len() - MAX_HEADER_LEN;
        let mut header = [0u8; MAX_HEADER_LEN];
        let n = encode_header(&server_header(Opcode::Text, len), &mut header);
        let start = MAX_HEADER_LEN - n;
        self.buf[start..MAX_HEADER_LEN].copy_from_slice(&header[..n]);
        &self.buf[start..]
    }
}

/// What a `message` envelope frame adds at most to its payload's JSON (the text
/// escaped, or the bytes in base64, without quotes): the frame header, the fixed
/// fields, a room name of at most `rooms::MAX_NAME` bytes as JSON (each byte escaped
/// to 2 at worst, control characters are not allowed), a 20-digit seq, the quotes.
/// 10 (header) + 25 + 258 (room) + 38 (seq, field name, quotes, `}`) = 331, rounded up.
#[cfg(test)]
pub const ENVELOPE_OVERHEAD: usize = 512;

/// The length of a payload inside a `message` envelope, without its quotes: text
/// JSON-escaped (`"` and `\` 2 bytes, a control character 2 or 6), bytes in base64.
/// Counted without encoding, so that a publish checks its envelope's size before it
/// makes one: a frame to a v1 member is at most this plus `ENVELOPE_OVERHEAD`.
pub fn envelope_payload_len(payload: Payload<'_>) -> usize {
    match payload {
        Payload::Text(text) => text
            .bytes()
            .map(|b| match b {
                b'"' | b'\\' | b'\x08' | b'\t' | b'\n' | b'\x0c' | b'\r' => 2,
                0..=0x1f => 6,
                _ => 1,
            })
            .sum(),
        Payload::Binary(bytes) => base64::encoded_len(bytes.len(), true).unwrap_or(usize::MAX),
    }
}

/// A room name as a JSON string, quotes included, to splice into envelopes.
pub fn json_string(s: &str) -> String {
    // A &str always serializes.
    serde_json::to_string(s).unwrap_or_default()
}

/// The payload of a `message` envelope frame made by `Envelopes::message`, for a
/// plain client joining a room whose history kept only the envelope.
pub fn payload_of_envelope(frame: &[u8]) -> Option<(Opcode, Vec<u8>)> {
    #[derive(Deserialize)]
    struct Message<'a> {
        #[serde(borrow, default)]
        data: Option<Cow<'a, str>>,
        #[serde(borrow, default)]
        b64: Option<Cow<'a, str>>,
    }
    let (_, json) = crate::frame::server_payload(frame)?;
    let message: Message<'_> = serde_json::from_slice(json).ok()?;
    match (message.data, message.b64) {
        (Some(text), None) => Some((Opcode::Text, text.into_owned().into_bytes())),
        (None, Some(b64)) => BASE64.decode(b64.as_bytes()).ok().map(|bytes| (Opcode::Binary, bytes)),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
