//! Open `Conn`s and masked client frames through the public API, for the allocation test and the benches
//! (included by both with `#[path]`).

use std::io::IoSlice;
use std::time::Instant;

use mioket::config::Limits;
use mioket::frame::{encode_header, Header, Opcode, MAX_HEADER_LEN};
use mioket::mask::apply_mask;
use mioket::protocol::{Conn, Event};

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

/// A masked client frame: header, key, masked payload.
pub fn masked_frame(opcode: Opcode, payload: &[u8], key: [u8; 4]) -> Vec<u8> {
    let mut header = [0u8; MAX_HEADER_LEN];
    let n = encode_header(&Header { fin: true, opcode, mask: Some(key), len: payload.len() as u64 }, &mut header);
    let mut frame = header[..n].to_vec();
    let start = frame.len();
    frame.extend_from_slice(payload);
    apply_mask(&mut frame[start..], key, 0);
    frame
}
