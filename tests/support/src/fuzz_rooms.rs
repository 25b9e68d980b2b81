//! rooms: a script of clients, ops, frames, HTTP requests and time on one `App` in
//! broadcast mode, in virtual time (the fuzz target `rooms`). Hostile JSON, names,
//! queries and bodies meet the application's rooms, mioket.v1 and API code.
//!
//! Input layout (a missing byte reads as 0, so every input is a valid script):
//!   byte 0   history (bits 0-1: 1..4 messages), room TTL (bit 2: 0 or 2 s), max rooms
//!            (bits 3-4: 2..5), max rooms per connection (bits 5-6: 1..4)
//!   then steps: one byte `op` (the low 3 bits pick the kind, the rest is an argument
//!   `a`), a byte `n`, and for the kinds that carry bytes, the next `n` bytes:
//!     0 connect: a new client, v1 when `a` is odd, on path `PATHS[a / 2 % len]`,
//!       resuming with `since = n % 8` and the last epoch any client was told
//!     1 op: client `n % clients` sends `OPS[a % len]`, or the carried bytes as text
//!     2 binary: client `n % clients` sends the carried bytes as a binary message
//!     3 raw: the carried bytes go to client `a % clients` as they are (any framing)
//!     4 end: client `n % clients` ends its stream (or sends a close when `a` is odd)
//!     5 time: `n` tenths of a second pass: deadlines and housekeeping run
//!     6 http: an HTTP request (`HTTP[a % len]`, or the carried bytes when `a` is 0)
//!     7 api: POST the carried bytes to room `PATHS[a % len]` with the right token when
//!       `n` is odd
//!
//! Checked after every step: the server's frames are well formed; every v1 text frame
//! is one JSON object of a documented type; per client and room, message seqs after a
//! welcome go up by exactly one (after a `recovered:true` welcome, from its `since`);
//! an ack precedes its message with the same seq (or, for a repeated id, names one
//! already there); HTTP answers are whole responses.

use std::collections::HashMap;
use std::io::IoSlice;
use std::time::{Duration, Instant};

use mioket::app::{App, Listener};
use mioket::config::{Config, Limits};
use serde_json::Value;

use crate::conn::{masked_frame, upgrade_request, NoSocket};
use crate::fuzz_checks::{check_http_response, check_server_frames};
use mioket::frame::Opcode;

const PATHS: [&str; 6] = ["/a", "/b", "/", "/a%2Fb", "/%zz", "/c%00"];
const OPS: [&str; 11] = [
    r#"{"op":"publish","data":"x","id":"1"}"#,
    r#"{"op":"publish","room":"b","b64":"AAE=","id":"2"}"#,
    r#"{"op":"join","room":"b"}"#,
    r#"{"op":"join","room":"a","since":1}"#,
    r#"{"op":"leave","room":"a"}"#,
    r#"{"op":"leave"}"#,
    r#"{"op":"join","room":"c\u0000"}"#,
    r#"{"op":"publish","data":"\ud83d\ude00","room":"a"}"#,
    r#"{"op":"join","room":"","since":0,"epoch":"x"}"#,
    "not json",
    r#"{"op":"ping","id":"p"}"#,
];
const HTTP: [&str; 4] = [
    "GET /api/rooms HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t\r\n\r\n",
    "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
    "POST /api/rooms/a/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t\r\nTransfer-Encoding: chunked\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: x\r\n\r\n",
];
const STATUSES: [u16; 12] = [200, 400, 401, 403, 404, 405, 411, 413, 426, 431, 503, 101];
const TYPES: [&str; 7] = ["welcome", "message", "ack", "presence", "error", "pong", "x"];

/// What a v1 client has seen of a room: the last seq, once known.
#[derive(Default)]
struct Seen {
    last: Option<u64>,
    /// An ack's seq waiting for its message.
    acked: Option<u64>,
    /// The welcome's seq (the room's last when joined).
    welcome: u64,
}

struct Client {
    id: usize,
    v1: bool,
    /// The resume it asked for at its upgrade, for its first welcome.
    asked_since: Option<u64>,
    upgraded: bool,
    rooms: HashMap<String, Seen>,
    http: bool,
}

pub fn run_rooms(data: &[u8]) {
    let byte = |i: usize| data.get(i).copied().unwrap_or(0);
    let setup = byte(0);
    let config = Config {
        welcome: Some("w".into()),
        history: 1 + usize::from(setup & 3),
        room_ttl: Duration::from_secs(u64::from(setup >> 2 & 1) * 2),
        max_rooms: 2 + usize::from(setup >> 3 & 3),
        max_rooms_per_connection: 1 + usize::from(setup >> 5 & 3),
        history_memory: 2000,
        api_token: Some("t".into()),
        limits: Limits { max_message: 4096, max_backpressure: 1 << 16, ..Limits::default() },
        ..Config::default()
    };
    let mut app: App<NoSocket> = App::new(config);
    let mut now = Instant::now();
    let mut clients: Vec<Client> = Vec::new();
    let mut epoch = String::from("0000000000000000");
    let mut i = 1;
    while i < data.len() {
        let (op, n) = (byte(i), byte(i + 1));
        i += 2;
        let carried = |i: &mut usize| {
            let bytes = data.get(*i..(*i + usize::from(n)).min(data.len())).unwrap_or_default().to_vec();
            *i += usize::from(n);
            bytes
        };
        let a = usize::from(op >> 3);
        let pick = |k: usize, clients: &[Client]| (!clients.is_empty()).then(|| k % clients.len());
        match op & 7 {
            0 => {
                let v1 = a % 2 == 1;
                let path = PATHS[a / 2 % PATHS.len()];
                let since = u64::from(n % 8);
                let target = if v1 && n >= 8 { format!("{path}?since={since}&epoch={epoch}") } else { path.into() };
                let Ok(id) = app.connect(NoSocket(clients.len()), Listener::Main, now) else { continue };
                let mut request = upgrade_request(&target, v1);
                app.handle_input(id, &mut request, now, |_, _| 0);
                let asked_since = (v1 && n >= 8).then_some(since);
                clients.push(Client { id, v1, asked_since, upgraded: false, rooms: HashMap::new(), http: false });
            }
            1 | 2 => {
                let bytes = carried(&mut i);
                let Some(c) = pick(usize::from(n), &clients) else { continue };
                let frame = if op & 7 == 2 {
                    masked_frame(Opcode::Binary, &bytes, [1, 2, 3, 4])
                } else if a % 11 < OPS.len() {
                    masked_frame(Opcode::Text, OPS[a % 11].as_bytes(), [1, 2, 3, 4])
                } else {
                    masked_frame(Opcode::Text, String::from_utf8_lossy(&bytes).as_bytes(), [1, 2, 3, 4])
                };
                let mut input = frame;
                app.handle_input(clients[c].id, &mut input, now, |_, _| 0);
            }
            3 => {
                let mut bytes = carried(&mut i);
                let Some(c) = pick(a, &clients) else { continue };
                app.handle_input(clients[c].id, &mut bytes, now, |_, _| 0);
            }
            4 => {
                let Some(c) = pick(usize::from(n), &clients) else { continue };
                if a % 2 == 1 {
                    let mut close = masked_frame(Opcode::Close, &1000u16.to_be_bytes(), [1, 2, 3, 4]);
                    app.handle_input(clients[c].id, &mut close, now, |_, _| 0);
                } else {
                    app.handle_eof(clients[c].id);
                }
            }
            5 => {
                now += Duration::from_millis(100 * u64::from(n));
                let ids: Vec<usize> = app.client_ids().collect();
                for id in ids {
                    if app.poll_timeout(id).is_some_and(|t| t <= now) {
                        app.handle_timeout(id, now);
                    }
                }
                while app.poll_housekeeping().is_some_and(|t| t <= now) {
                    app.handle_housekeeping(now);
                }
            }
            6 | 7 => {
                let bytes = carried(&mut i);
                let mut request = if op & 7 == 7 {
                    let token = if n % 2 == 1 { "t" } else { "wrong" };
                    let room = &PATHS[a % PATHS.len()][1..];
                    let mut head = format!(
                        "POST /api/rooms/{room}/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
                         Content-Length: {}\r\n\r\n",
                        bytes.len()
                    )
                    .into_bytes();
                    head.extend_from_slice(&bytes);
                    head
                } else if a == 0 {
                    bytes
                } else {
                    HTTP[a % HTTP.len()].as_bytes().to_vec()
                };
                let Ok(id) = app.connect(NoSocket(clients.len()), Listener::Main, now) else { continue };
                app.handle_input(id, &mut request, now, |_, _| 0);
                clients.push(Client {
                    id,
                    v1: false,
                    asked_since: None,
                    upgraded: false,
                    rooms: HashMap::new(),
                    http: true,
                });
            }
            _ => {}
        }
        check_output(&mut app, &mut clients, &mut epoch);
    }
}

/// Flushes every client and checks what it was sent.
fn check_output(app: &mut App<NoSocket>, clients: &mut [Client], epoch: &mut String) {
    let mut dirty = Vec::new();
    app.drain_dirty_into(&mut dirty);
    for id in dirty {
        if app.client_io(id).is_none() {
            continue;
        }
        let mut bytes = Vec::new();
        app.flush(id, &mut |_: &mut NoSocket, slices: &[IoSlice<'_>]| {
            slices.iter().for_each(|s| bytes.extend_from_slice(s));
            Ok(slices.iter().map(|s| s.len()).sum())
        });
        // Slab ids are reused: the newest client with this id is the one.
        let Some(c) = clients.iter_mut().rev().find(|c| c.id == id) else { continue };
        check_client(c, &bytes, epoch);
    }
}

fn check_client(c: &mut Client, mut bytes: &[u8], epoch: &mut String) {
    if !c.upgraded {
        if bytes.starts_with(b"HTTP/1.1 101 ") {
            let end = bytes.windows(4).position(|w| w == b"\r\n\r\n").expect("a whole 101 head") + 4;
            let head = std::str::from_utf8(&bytes[..end]).expect("a text head");
            assert_eq!(head.contains("\r\nSec-WebSocket-Protocol: mioket.v1\r\n"), c.v1, "{head}");
            c.upgraded = true;
            bytes = &bytes[end..];
        } else if !bytes.is_empty() {
            if bytes.starts_with(b"HTTP/") {
                check_http_response(bytes, &STATUSES);
            }
            return;
        }
    }
    if c.http || bytes.is_empty() {
        return;
    }
    let (_, frames) = check_server_frames(bytes);
    if !c.v1 {
        return;
    }
    for frame in frames {
        let (opcode, payload) = mioket::frame::server_payload(&frame).expect("a whole frame");
        assert_eq!(opcode, Opcode::Text, "a v1 client gets text frames only");
        let v: Value = serde_json::from_slice(payload).expect("one JSON object per frame");
        let kind = v["type"].as_str().expect("a type");
        assert!(TYPES.contains(&kind), "type {kind}");
        let room = v["room"].as_str().map(str::to_string);
        match kind {
            "welcome" => {
                let room = room.expect("a welcome names its room");
                *epoch = v["epoch"].as_str().expect("an epoch").to_string();
                let recovered = v.get("recovered").and_then(Value::as_bool);
                let seen = c.rooms.entry(room).or_default();
                *seen = Seen { welcome: v["seq"].as_u64().unwrap_or(0), ..Seen::default() };
                if recovered == Some(true) {
                    seen.last = c.asked_since;
                }
                c.asked_since = None;
            }
            "message" => {
                let seq = v["seq"].as_u64().expect("a seq");
                let seen = c.rooms.get_mut(&room.expect("a room")).expect("a message of a room it joined");
                if let Some(last) = seen.last {
                    assert_eq!(seq, last + 1, "a gap or a duplicate");
                }
                if let Some(acked) = seen.acked.take() {
                    assert_eq!(seq, acked, "an ack names the seq of the copy that follows it");
                }
                seen.last = Some(seq);
            }
            "ack" => {
                let seen = c.rooms.get_mut(&room.expect("a room")).expect("an ack for a room it is in");
                let seq = v["seq"].as_u64().expect("a seq");
                // A repeated id (published in the room within --dedup-window) is acked with
                // the seq of a message already there, and no copy follows.
                if seq > seen.last.unwrap_or(0).max(seen.welcome) {
                    seen.acked = Some(seq);
                }
            }
            "error" => assert!(v["reason"].is_string()),
            "pong" => assert!(v["id"].is_string() || v["id"].is_null()),
            _ => {}
        }
    }
}
