//! permessage-deflate (RFC 7692) on the client side, for `--deflate`: the offer, the
//! check of the 101's answer, inflating what arrives with RSV1 and compressing what we
//! send. DEFLATE itself is flate2's (zlib-rs, as the server); the framing is ours.
//!
//! Inflating: a server that answers `server_no_context_takeover` compresses each
//! message on its own, so one inflater serves every connection, reset per message.
//! Otherwise (Node `ws` and Python `websockets` by default) the server keeps its
//! window from one message to the next, and each connection keeps its own inflater.
//!
//! Compressing: we offer `client_no_context_takeover` and compress every message on
//! its own whatever the answer says (always allowed: a message that uses no earlier
//! window inflates the same with or without one), with the window the server allows.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// What `--deflate` offers, as Chromium does (`client_max_window_bits` without a
/// value: any window the server chooses), plus `client_no_context_takeover`.
pub const OFFER: &str = "permessage-deflate; client_no_context_takeover; client_max_window_bits";
/// The RSV1 bit of a frame's first byte: "this message is compressed".
pub const RSV1: u8 = 0x40;
/// The 4 bytes a sender strips from the end of a sync flush (RFC 7692 7.2.1).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];
/// A message that inflates beyond this is an error (a load generator's safety net).
pub const MAX_INFLATED: usize = 64 << 20;

/// What the server agreed to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Agreement {
    pub server_no_context_takeover: bool,
    pub client_no_context_takeover: bool,
    pub server_max_window_bits: Option<u8>,
    /// The window our messages may use (15 when the server names none).
    pub client_max_window_bits: Option<u8>,
}

/// The agreement in the `Sec-WebSocket-Extensions` lines of a 101 head: `Ok(None)` when
/// the server declined, an error for an answer that breaks RFC 7692 (an extension or a
/// parameter we did not offer, a repeated or bad parameter).
pub fn parse_answer(head: &[u8]) -> Result<Option<Agreement>, String> {
    let mut agreement = None;
    for line in head.split(|&b| b == b'\n').skip(1) {
        let Some(colon) = line.iter().position(|&b| b == b':') else { continue };
        if !line[..colon].trim_ascii().eq_ignore_ascii_case(b"sec-websocket-extensions") {
            continue;
        }
        let value = String::from_utf8_lossy(line[colon + 1..].trim_ascii()).into_owned();
        for ext in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let mut params = ext.split(';').map(str::trim);
            let name = params.next().unwrap_or("");
            if !name.eq_ignore_ascii_case("permessage-deflate") {
                return Err(format!("the server answered an extension we did not offer: {ext:?}"));
            }
            if agreement.is_some() {
                return Err("permessage-deflate answered twice".into());
            }
            let mut a = Agreement::default();
            let mut seen = [false; 4];
            for p in params {
                let (k, v) = match p.split_once('=') {
                    Some((k, v)) => (k.trim(), Some(v.trim().trim_matches('"'))),
                    None => (p, None),
                };
                let bits = |v: Option<&str>| -> Result<u8, String> {
                    v.and_then(|v| v.parse::<u8>().ok())
                        .filter(|b| (8..=15).contains(b))
                        .ok_or_else(|| format!("bad window bits in {p:?}"))
                };
                let i = match k {
                    "server_no_context_takeover" if v.is_none() => {
                        a.server_no_context_takeover = true;
                        0
                    }
                    "client_no_context_takeover" if v.is_none() => {
                        a.client_no_context_takeover = true;
                        1
                    }
                    "server_max_window_bits" => {
                        a.server_max_window_bits = Some(bits(v)?);
                        2
                    }
                    "client_max_window_bits" => {
                        a.client_max_window_bits = Some(bits(v)?);
                        3
                    }
                    _ => return Err(format!("bad parameter {p:?} in the answer {ext:?}")),
                };
                if std::mem::replace(&mut seen[i], true) {
                    return Err(format!("{k} twice in the answer {ext:?}"));
                }
            }
            agreement = Some(a);
        }
    }
    Ok(agreement)
}

/// A connection's inflating side: with context takeover its own inflater, kept from
/// message to message; without, the shared one (reset per message).
pub fn own_inflater(a: &Agreement) -> Option<Box<Decompress>> {
    (!a.server_no_context_takeover).then(|| Box::new(Decompress::new(false)))
}

/// Inflates one message: `data` is its compressed payload, to which the sync flush's
/// tail is appended here. `fresh`: start without a window (the shared inflater).
/// The inflated bytes replace `out`'s content.
pub fn inflate(d: &mut Decompress, fresh: bool, data: &mut Vec<u8>, out: &mut Vec<u8>) -> Result<(), &'static str> {
    if fresh {
        d.reset(false);
    }
    data.extend_from_slice(&TAIL);
    out.clear();
    let mut input: &[u8] = data;
    loop {
        if out.capacity() - out.len() < 1024 {
            if out.len() >= MAX_INFLATED {
                return Err("a message inflates beyond 64 MiB");
            }
            out.reserve(out.capacity().max(16 * 1024));
        }
        let before = d.total_in();
        let status = d.decompress_vec(input, out, FlushDecompress::Sync).map_err(|_| "bad deflate data")?;
        input = &input[(d.total_in() - before) as usize..];
        // Done when every byte went in and the output was not cut short by its room.
        if status == Status::StreamEnd || (input.is_empty() && out.capacity() - out.len() >= 1024) {
            return Ok(());
        }
        if status == Status::BufError && input.is_empty() {
            return Ok(());
        }
    }
}

/// Compresses what we send: each message on its own.
pub struct Deflater {
    c: Compress,
}

impl Deflater {
    pub fn new(a: &Agreement) -> Deflater {
        // zlib takes no 8-bit raw window: 9 is the least (a 2^9 window fits in 2^8's
        // promise only if we never look back that far; RFC 7692 8.1.2.2 warns of this,
        // and servers asking for 8 are rare: we then send plain).
        let bits = a.client_max_window_bits.unwrap_or(15).max(9);
        Deflater { c: Compress::new_with_window_bits(Compression::default(), false, bits) }
    }

    /// The compressed payload of `payload` (tail stripped) into `out`; false when it
    /// does not shrink (then send it plain).
    pub fn compress(&mut self, payload: &[u8], out: &mut Vec<u8>) -> bool {
        self.c.reset();
        out.clear();
        out.reserve(payload.len() + 64);
        let mut input = payload;
        loop {
            let before = self.c.total_in();
            if self.c.compress_vec(input, out, FlushCompress::Sync).is_err() {
                return false;
            }
            input = &input[(self.c.total_in() - before) as usize..];
            if input.is_empty() && out.capacity() > out.len() {
                break;
            }
            out.reserve(out.capacity());
        }
        if out.ends_with(&TAIL) {
            out.truncate(out.len() - TAIL.len());
        }
        out.len() < payload.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_parse() {
        let head = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nSec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover\r\n\r\n";
        let a = parse_answer(head).unwrap().unwrap();
        assert!(a.server_no_context_takeover && a.client_no_context_takeover);
        let head = b"HTTP/1.1 101 OK\r\nsec-websocket-extensions: permessage-deflate; server_max_window_bits=12; client_max_window_bits=12\r\n\r\n";
        let a = parse_answer(head).unwrap().unwrap();
        assert_eq!((a.server_max_window_bits, a.client_max_window_bits), (Some(12), Some(12)));
        assert!(!a.server_no_context_takeover);
        assert_eq!(parse_answer(b"HTTP/1.1 101 OK\r\nUpgrade: websocket\r\n\r\n").unwrap(), None);
        assert!(parse_answer(b"HTTP/1.1 101 OK\r\nSec-WebSocket-Extensions: x-foo\r\n\r\n").is_err());
        assert!(
            parse_answer(b"HTTP/1.1 101 OK\r\nSec-WebSocket-Extensions: permessage-deflate; bogus\r\n\r\n").is_err()
        );
    }

    #[test]
    fn compress_then_inflate_with_and_without_context() {
        let a = Agreement { client_max_window_bits: Some(12), ..Agreement::default() };
        let mut deflater = Deflater::new(&a);
        let mut shared = Decompress::new(false);
        let mut own = Decompress::new(false);
        let mut z = Vec::new();
        let mut out = Vec::new();
        for n in [30usize, 300, 70_000] {
            let msg: Vec<u8> = (0..n).map(|i| b"hello world, "[i % 13]).collect();
            assert!(deflater.compress(&msg, &mut z));
            let mut data = z.clone();
            inflate(&mut shared, true, &mut data, &mut out).unwrap();
            assert_eq!(out, msg);
            let mut data = z.clone();
            inflate(&mut own, false, &mut data, &mut out).unwrap();
            assert_eq!(out, msg);
        }
        assert!(!deflater.compress(b"ab", &mut z));
    }
}
