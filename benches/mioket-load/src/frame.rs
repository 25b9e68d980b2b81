//! Client frames: the HTTP upgrade request and masked frames.

use crate::deflate;

/// The HTTP upgrade request for `path`, offering permessage-deflate if `deflate`.
pub(crate) fn upgrade_request(path: &str, host: &str, deflate: bool) -> Vec<u8> {
    let ext = if deflate { format!("Sec-WebSocket-Extensions: {}\r\n", deflate::OFFER) } else { String::new() };
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{ext}\r\n"
    )
    .into_bytes()
}

pub(crate) const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
pub(crate) const OP_TEXT: u8 = 1;
pub(crate) const OP_BINARY: u8 = 2;
pub(crate) const OP_CLOSE: u8 = 8;
pub(crate) const OP_PING: u8 = 9;
pub(crate) const OP_PONG: u8 = 10;

/// A final, masked client frame.
pub(crate) fn masked_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    masked_frame_with(0x80 | opcode, payload)
}

/// A masked client frame whose first byte is `first` (FIN, RSV1, opcode).
pub(crate) fn masked_frame_with(first: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(payload.len() + 14);
    f.push(first);
    match payload.len() {
        n @ 0..=125 => f.push(0x80 | n as u8),
        n @ 126..=0xFFFF => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&KEY);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ KEY[i & 3]));
    f
}

/// Where a frame made by `masked_frame` starts its payload.
pub(crate) fn payload_start(frame: &[u8]) -> usize {
    match frame[1] & 0x7F {
        126 => 8,
        127 => 14,
        _ => 6,
    }
}
