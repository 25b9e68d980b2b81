//! Open `Conn`s, and an `App` driven as the runtime drives it but without sockets,
//! through the library's public API, for the allocation test (tests/allocations.rs)
//! and the micro benches (benches/micro.rs).

use std::io::IoSlice;
use std::time::Instant;

use mioket::app::{App, Listener};
use mioket::config::{Config, Limits};
use mioket::frame::Opcode;
use mioket::protocol::{Conn, Event};

use crate::frames::masked_with_key;

const UPGRADE: &[u8] = b"GET /chat HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// An open `Conn`, its 101 answer drained.
pub fn open_conn(now: Instant, limits: &Limits) -> Conn {
    let mut conn = Conn::new(now, limits);
    let mut request = UPGRADE.to_vec();
    let (_, event) = conn.handle_input(&mut request, now, limits);
    assert!(matches!(event, Some(Event::UpgradeRequest(_))));
    conn.accept(None, None, now, limits);
    assert!(conn.is_open());
    drain(&mut conn);
    conn
}

/// What the event loop does after a writev that took everything; returns the bytes.
pub fn drain(conn: &mut Conn) -> usize {
    let mut total = 0;
    while conn.has_output() {
        let mut slices = [IoSlice::new(&[]); 64];
        let n = conn.poll_transmit(&mut slices);
        let bytes: usize = slices[..n].iter().map(|s| s.len()).sum();
        conn.handle_written(bytes);
        total += bytes;
    }
    total
}

/// A whole (FIN) masked client frame, by the independent encoder of [`crate::frames`].
pub fn masked_frame(opcode: Opcode, payload: &[u8], key: [u8; 4]) -> Vec<u8> {
    masked_with_key(0x80 | opcode.bits(), payload, key)
}

/// The runtime's per-client data, for an `App` without sockets.
pub struct NoSocket(pub usize);

impl std::fmt::Display for NoSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "client {}", self.0)
    }
}

impl mioket::app::ClientIo for NoSocket {}

/// An `App` with `clients` upgraded WebSockets, their greetings flushed; returns
/// their ids too.
pub fn open_app(config: Config, clients: usize, now: Instant) -> (App<NoSocket>, Vec<usize>) {
    let requests = vec![UPGRADE.to_vec(); clients];
    open_app_with(config, &requests, now)
}

/// An upgrade request for `path`, offering `mioket.v1` or not.
pub fn upgrade_request(path: &str, v1: bool) -> Vec<u8> {
    let protocol = if v1 { "Sec-WebSocket-Protocol: mioket.v1\r\n" } else { "" };
    format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{protocol}\r\n"
    )
    .into_bytes()
}

/// An `App` with a client upgraded by each request, their greetings flushed; returns
/// their ids too.
pub fn open_app_with(config: Config, requests: &[Vec<u8>], now: Instant) -> (App<NoSocket>, Vec<usize>) {
    let mut app = App::new(config);
    let ids = requests
        .iter()
        .enumerate()
        .map(|(i, request)| {
            let Ok(id) = app.connect(NoSocket(i), Listener::Main, now) else { panic!("client {i} refused") };
            let mut request = request.clone();
            app.handle_input(id, &mut request, now, |_, _| 0);
            id
        })
        .collect();
    flush_app(&mut app, &mut Vec::new());
    (app, ids)
}

/// What the runtime's flush does when every socket takes everything, with `dirty` as
/// its reused flush list; returns the bytes.
pub fn flush_app(app: &mut App<NoSocket>, dirty: &mut Vec<usize>) -> usize {
    dirty.clear();
    app.drain_dirty_into(dirty);
    let mut total = 0;
    for &id in dirty.iter() {
        total +=
            app.flush(id, &mut |_: &mut NoSocket, slices: &[IoSlice<'_>]| Ok(slices.iter().map(|s| s.len()).sum()));
    }
    total
}
