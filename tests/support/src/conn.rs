//! Open `Conn`s and masked client frames through the library's public API, for the
//! allocation test (tests/allocations.rs) and the micro benches (benches/micro.rs).

use std::io::IoSlice;
use std::time::Instant;

use mioket::config::Limits;
use mioket::frame::Opcode;
use mioket::protocol::{Conn, Event};

use crate::frames::masked_with_key;

const UPGRADE: &[u8] = b"GET /chat HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// An open `Conn`, its 101 answer drained.
pub fn open_conn(now: Instant, limits: &Limits) -> Conn {
    let mut conn = Conn::new(now, limits);
    let mut request = UPGRADE.to_vec();
    let (_, event) = conn.read(&mut request, now, limits);
    assert_eq!(event, Some(Event::UpgradeRequest));
    conn.accept(now, limits);
    assert!(conn.is_open());
    drain(&mut conn);
    conn
}

/// What the event loop does after a writev that took everything; returns the bytes.
pub fn drain(conn: &mut Conn) -> usize {
    let out = conn.out();
    let mut total = 0;
    while !out.is_empty() {
        let mut slices = [IoSlice::new(&[]); 64];
        let n = out.io_slices(&mut slices);
        let bytes: usize = slices[..n].iter().map(|s| s.len()).sum();
        out.advance(bytes);
        total += bytes;
    }
    total
}

/// A whole (FIN) masked client frame, by the independent encoder of [`crate::frames`].
pub fn masked_frame(opcode: Opcode, payload: &[u8], key: [u8; 4]) -> Vec<u8> {
    masked_with_key(0x80 | opcode.bits(), payload, key)
}
