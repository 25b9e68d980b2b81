//! permessage-deflate (RFC 7692), the shared way: negotiation, inflating a message
//! within the message limit, and compressing a message once for every recipient.
//!
//! Every agreement says `server_no_context_takeover` and `client_no_context_takeover`:
//! each message is compressed on its own, both ways. So no connection keeps a
//! compressor or a window between messages (an idle connection costs nothing more),
//! one compressed frame can go to every recipient that negotiated the extension, and
//! one inflater serves every connection, reset per message. The price is the ratio on
//! short messages, which barely shrink alone: those go uncompressed (RSV1 clear), as
//! RFC 7692 lets a sender do for any message.
//!
//! DEFLATE itself is flate2's (zlib-rs underneath); the WebSocket framing of it is ours.

use std::cell::RefCell;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use crate::frame::{encode_header, server_header, Header, Opcode, MAX_HEADER_LEN};

/// The 4 bytes a sync flush ends with: stripped by the sender, put back by the
/// receiver (RFC 7692 7.2.1, 7.2.2).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];
/// The RSV1 bit of a frame's first byte: "this message is compressed".
pub const RSV1: u8 = 0x40;
/// The window we compress with; a peer that asks for a smaller one gets our messages
/// uncompressed.
const WINDOW_BITS: u8 = 15;

/// An accepted offer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Agreement {
    /// The `server_max_window_bits` the client asked for, echoed in the answer.
    server_max_window_bits: Option<u8>,
}

impl Agreement {
    /// Whether we may send this peer compressed messages: our window is 2^15.
    pub fn compress_to_peer(&self) -> bool {
        self.server_max_window_bits.is_none_or(|bits| bits >= WINDOW_BITS)
    }

    /// The `Sec-WebSocket-Extensions` value of the 101.
    pub fn response(&self) -> String {
        let mut answer = String::from("permessage-deflate; server_no_context_takeover; client_no_context_takeover");
        if let Some(bits) = self.server_max_window_bits {
            answer.push_str(&format!("; server_max_window_bits={bits}"));
        }
        answer
    }
}

/// Picks the first valid `permessage-deflate` offer among the
/// `Sec-WebSocket-Extensions` lines (RFC 7692 5, 7): the client lists its offers in
/// order of preference. An offer with an unknown or repeated parameter, or a bad
/// value, is declined; with none acceptable the connection goes on uncompressed.
pub fn negotiate<'a>(lines: impl IntoIterator<Item = &'a [u8]>) -> Option<Agreement> {
    lines.into_iter().flat_map(|line| line.split(|&b| b == b',')).find_map(accept_offer)
}

fn accept_offer(offer: &[u8]) -> Option<Agreement> {
    let mut parts = offer.split(|&b| b == b';').map(<[u8]>::trim_ascii);
    if !parts.next()?.eq_ignore_ascii_case(b"permessage-deflate") {
        return None;
    }
    let mut seen = [false; 4];
    let mut agreement = Agreement { server_max_window_bits: None };
    for param in parts {
        let (name, value) = match param.iter().position(|&b| b == b'=') {
            Some(i) => (param[..i].trim_ascii(), Some(unquote(param[i + 1..].trim_ascii())?)),
            None => (param, None),
        };
        let index = match name {
            b"server_no_context_takeover" if value.is_none() => 0,
            b"client_no_context_takeover" if value.is_none() => 1,
            b"server_max_window_bits" => {
                agreement.server_max_window_bits = Some(window_bits(value?)?);
                2
            }
            b"client_max_window_bits" => {
                // Without a value: the client can take any window we choose. We inflate
                // with the largest, which reads every smaller one.
                if let Some(value) = value {
                    window_bits(value)?;
                }
                3
            }
            _ => return None,
        };
        if std::mem::replace(&mut seen[index], true) {
            return None;
        }
    }
    Some(agreement)
}

/// A parameter value may be a quoted string (RFC 6455 9.1).
fn unquote(value: &[u8]) -> Option<&[u8]> {
    match value {
        [b'"', inner @ .., b'"'] => Some(inner),
        [b'"', ..] | [.., b'"'] => None,
        value => Some(value),
    }
}

/// 8 to 15, in decimal without a leading zero (RFC 7692 7.1.2).
fn window_bits(value: &[u8]) -> Option<u8> {
    match value {
        [d @ b'8'..=b'9'] => Some(d - b'0'),
        [b'1', d @ b'0'..=b'5'] => Some(10 + d - b'0'),
        _ => None,
    }
}

/// Why a compressed message could not be inflated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InflateError {
    /// It inflates past the message limit (a decompression bomb, or just too big).
    TooBig,
    /// Not a DEFLATE stream.
    Corrupt,
}

thread_local! {
    /// One inflater for every connection of the loop: with no context takeover a
    /// message inflates on its own, and a whole message inflates in one call.
    static INFLATER: RefCell<Decompress> = RefCell::new(Decompress::new(false));
}

/// Inflates a whole compressed message into `out` (cleared first), never holding
/// more than `limit` bytes of output plus one: output beyond `limit` is `TooBig`, found
/// as inflation proceeds, before anything beyond it is allocated.
pub fn inflate(compressed: &[u8], out: &mut Vec<u8>, limit: usize) -> Result<(), InflateError> {
    INFLATER.with(|inflater| {
        let mut inflater = inflater.borrow_mut();
        inflater.reset(false);
        out.clear();
        for mut input in [compressed, &TAIL] {
            loop {
                if out.len() == out.capacity() {
                    // Grow toward the limit, one byte past it to see an excess.
                    let target = (out.capacity() * 2).max(1024).min(limit.saturating_add(1));
                    if target <= out.len() {
                        return Err(InflateError::TooBig);
                    }
                    out.reserve_exact(target - out.len());
                }
                let (before_in, before_out) = (inflater.total_in(), inflater.total_out());
                let status =
                    inflater.decompress_vec(input, out, FlushDecompress::Sync).map_err(|_| InflateError::Corrupt)?;
                let consumed = (inflater.total_in() - before_in) as usize;
                let produced = inflater.total_out() - before_out;
                input = &input[consumed..];
                if out.len() > limit {
                    return Err(InflateError::TooBig);
                }
                // A final block ends the message; the tail after it is not needed.
                if status == Status::StreamEnd {
                    return Ok(());
                }
                let room_left = out.len() < out.capacity();
                if (input.is_empty() && room_left) || (consumed == 0 && produced == 0 && room_left) {
                    break;
                }
            }
        }
        Ok(())
    })
}

/// Compresses messages into whole server frames with RSV1 set, each on its own (no
/// context takeover). One per application: its state and buffer are reused.
pub struct Compressor {
    deflate: Compress,
    buf: Vec<u8>,
}

impl Default for Compressor {
    fn default() -> Self {
        // Level 6 (zlib's default). Measured (benches/micro.rs, deflate): 8.6 us for a
        // 256 B message and 22 us for 4 KiB, most of a small one being the reset
        // (clearing the hash table), about three times level 1's; but level 1 leaves
        // 1 KiB JSON documents at 40 % of their size where level 6 makes 31 % (4 KiB:
        // 32 % against 22 %). In shared mode a message is compressed once for all its
        // recipients, so the bytes saved on every delivery are worth the CPU spent once.
        Compressor { deflate: Compress::new(Compression::new(6), false), buf: Vec::new() }
    }
}

impl Compressor {
    /// The message as one compressed frame, or `None` when compressing does not make
    /// it smaller. The frame borrows the compressor's buffer until the next call.
    pub fn frame(&mut self, opcode: Opcode, payload: &[u8]) -> Option<&[u8]> {
        self.deflate.reset();
        self.buf.clear();
        // Room for the header first; what compression must beat is the payload itself.
        self.buf.resize(MAX_HEADER_LEN, 0);
        self.buf.reserve(payload.len() / 2 + 64);
        let mut input = payload;
        loop {
            if self.buf.len() == self.buf.capacity() {
                self.buf.reserve(self.buf.capacity());
            }
            let before = self.deflate.total_in();
            let status = self.deflate.compress_vec(input, &mut self.buf, FlushCompress::Sync).ok()?;
            input = &input[(self.deflate.total_in() - before) as usize..];
            // Done when everything went in and the flush fit (room was left over).
            if (input.is_empty() && self.buf.len() < self.buf.capacity()) || status == Status::StreamEnd {
                break;
            }
        }
        if self.buf.ends_with(&TAIL) {
            self.buf.truncate(self.buf.len() - TAIL.len());
        }
        let len = self.buf.len() - MAX_HEADER_LEN;
        if len >= payload.len() {
            return None;
        }
        let mut header = [0u8; MAX_HEADER_LEN];
        let n = encode_header(&Header { compressed: true, ..server_header(opcode, len) }, &mut header);
        let start = MAX_HEADER_LEN - n;
        self.buf[start..MAX_HEADER_LEN].copy_from_slice(&header[..n]);
        Some(&self.buf[start..])
    }
}

#[cfg(test)]
mod tests;
