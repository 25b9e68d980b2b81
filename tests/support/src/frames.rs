//! WebSocket frames the slow, obvious way (RFC 6455 5.2): deliberately not the server's
//! `frame.rs` or `mask.rs`, so the tests check the server against a second reading of the RFC.

use std::io::Read;
use std::net::TcpStream;

/// A masked client frame (key 1 2 3 4): `first_byte` is FIN, RSV and opcode.
pub fn masked(first_byte: u8, payload: &[u8]) -> Vec<u8> {
    masked_with_key(first_byte, payload, [1, 2, 3, 4])
}

/// A masked client frame with the given key: header, key, payload XORed byte by byte.
pub fn masked_with_key(first_byte: u8, payload: &[u8], key: [u8; 4]) -> Vec<u8> {
    let mut out = Vec::with_capacity(14 + payload.len());
    out.push(first_byte);
    match payload.len() {
        n @ 0..=125 => out.push(0x80 | n as u8),
        n @ 126..=0xFFFF => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&key);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    out
}

/// Parses unmasked server frames: (first byte, payload) each; an incomplete last frame
/// is left out.
pub fn server_frames(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut frames = Vec::new();
    while bytes.len() >= 2 {
        let (len, start) = match bytes[1] & 0x7F {
            126 if bytes.len() >= 4 => (u16::from_be_bytes([bytes[2], bytes[3]]) as usize, 4),
            127 if bytes.len() >= 10 => (u64::from_be_bytes(bytes[2..10].try_into().unwrap()) as usize, 10),
            126 | 127 => break,
            n => (n as usize, 2),
        };
        if bytes.len() < start + len {
            break;
        }
        frames.push((bytes[0], bytes[start..start + len].to_vec()));
        bytes = &bytes[start + len..];
    }
    frames
}

/// Reads from `s` onto `bytes` until the server frames in them satisfy `done`; panics,
/// naming the frames so far, on a timeout or end of stream.
pub fn read_frames_until(s: &mut TcpStream, bytes: &mut Vec<u8>, done: impl Fn(&[(u8, Vec<u8>)]) -> bool) {
    let mut buf = [0u8; 1 << 16];
    loop {
        let frames = server_frames(bytes);
        if done(&frames) {
            return;
        }
        let sizes: Vec<(u8, usize)> = frames.iter().map(|(b, p)| (*b, p.len())).collect();
        match s.read(&mut buf) {
            Ok(0) => panic!("closed after {} bytes, frames {sizes:?}", bytes.len()),
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
            Err(e) => panic!("{e} after {} bytes, frames {sizes:?}", bytes.len()),
        }
    }
}

/// The close code of the last frame, if it is a close frame.
pub fn close_code_of(bytes: &[u8]) -> Option<u16> {
    let frames = server_frames(bytes);
    let (first, payload) = frames.last()?;
    (*first == 0x88 && payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rfc_examples_encode_byte_for_byte() {
        // RFC 6455 5.7: a single-frame masked text message "Hello".
        let hello = [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58];
        assert_eq!(masked_with_key(0x81, b"Hello", [0x37, 0xfa, 0x21, 0x3d]), hello);
        // 256 bytes take the 16-bit length, 64 KiB the 64-bit one.
        assert_eq!(masked(0x82, &[0; 256])[..4], [0x82, 0x80 | 126, 1, 0]);
        assert_eq!(masked(0x82, &[0; 65536])[..10], [0x82, 0x80 | 127, 0, 0, 0, 0, 0, 1, 0, 0]);
    }

    #[test]
    fn server_frames_stop_at_an_incomplete_frame() {
        // RFC 6455 5.7: unmasked "Hello", then a close 1000 cut in its payload.
        let mut bytes = vec![0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f, 0x88, 0x02, 0x03, 0xe8];
        assert_eq!(server_frames(&bytes), [(0x81, b"Hello".to_vec()), (0x88, vec![0x03, 0xe8])]);
        assert_eq!(close_code_of(&bytes), Some(1000));
        bytes.pop();
        assert_eq!(server_frames(&bytes), [(0x81, b"Hello".to_vec())]);
        assert_eq!(close_code_of(&bytes), None);
        assert_eq!(server_frames(&[0x82, 127, 0, 0]), []);
    }
}
