//! The answers to a request head: the 101 with its accept value, and refusals.

use sha1::{Digest, Sha1};

use crate::error::HandshakeError;

pub(super) const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The base64 alphabet (RFC 4648 4).
pub(super) const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// RFC 6455 4.2.2: base64(SHA-1(key + GUID)).
pub fn accept_key(key: &[u8]) -> [u8; 28] {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(GUID);
    let digest: [u8; 20] = sha.finalize().into();
    // 20 bytes are six groups of three and a last two (padded with one `=`): 28
    // characters, written straight (the base64 crate's general encoder took ~300).
    let mut out = [b'='; 28];
    let mut chunks = digest.chunks_exact(3);
    for (group, dst) in (&mut chunks).zip(out.chunks_exact_mut(4)) {
        let n = u32::from(group[0]) << 16 | u32::from(group[1]) << 8 | u32::from(group[2]);
        for (i, c) in dst.iter_mut().enumerate() {
            *c = BASE64[(n >> (18 - 6 * i) & 63) as usize];
        }
    }
    if let [a, b] = *chunks.remainder() {
        let n = u32::from(a) << 16 | u32::from(b) << 8;
        for (i, c) in out[24..27].iter_mut().enumerate() {
            *c = BASE64[(n >> (18 - 6 * i) & 63) as usize];
        }
    }
    out
}

/// Writes the 101 answer into `out` (at least `MAX_SWITCHING_PROTOCOLS_LEN` bytes),
/// naming the chosen subprotocol and extensions if any; returns its length (129
/// without either).
pub fn write_switching_protocols(
    accept: &[u8; 28],
    subprotocol: Option<&str>,
    extensions: Option<&str>,
    out: &mut [u8],
) -> usize {
    let (protocol_line, protocol): (&[u8], &[u8]) = match subprotocol {
        Some(p) => (b"\r\nSec-WebSocket-Protocol: ", p.as_bytes()),
        None => (b"", b""),
    };
    let (extensions_line, extensions): (&[u8], &[u8]) = match extensions {
        Some(e) => (b"\r\nSec-WebSocket-Extensions: ", e.as_bytes()),
        None => (b"", b""),
    };
    let parts: [&[u8]; 7] = [
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ",
        accept,
        protocol_line,
        protocol,
        extensions_line,
        extensions,
        b"\r\n\r\n",
    ];
    let mut n = 0;
    for part in parts {
        out[n..n + part.len()].copy_from_slice(part);
        n += part.len();
    }
    n
}

/// The length of the 101 answer without a subprotocol.
pub const SWITCHING_PROTOCOLS_LEN: usize = 129;

/// Room for the 101 answer with a subprotocol of up to 64 bytes and extensions of up
/// to 128.
pub const MAX_SWITCHING_PROTOCOLS_LEN: usize = SWITCHING_PROTOCOLS_LEN + 26 + 64 + 28 + 128;

/// A refusal: status line, a plain-text reason, and `Connection: close`.
pub fn error_response(err: HandshakeError) -> Vec<u8> {
    let extra = if err == HandshakeError::UnsupportedVersion { "Sec-WebSocket-Version: 13\r\n" } else { "" };
    refusal_response(err.status(), err.reason(), extra)
}

/// An HTTP error answer with `reason` as its plain-text body, `extra` header lines
/// (each ending in CRLF) and `Connection: close`: the wire layer's refusals and the
/// application's.
pub fn refusal_response(status: u16, reason: &str, extra: &str) -> Vec<u8> {
    let body = format!("{reason}\n");
    format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n{body}",
        status_text(status),
        body.len()
    )
    .into_bytes()
}

pub fn status_text(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        411 => "Length Required",
        413 => "Content Too Large",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    }
}
