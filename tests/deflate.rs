//! permessage-deflate (RFC 7692) over real sockets: the handshake, compressed messages
//! both ways, decompression bombs. The client side is raw bytes and flate2's own
//! streaming encoder and decoder (not the server's code); Python `websockets`, Node `ws`
//! and Chromium are the other ends in the benchmarks and browser tests.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;

use common::*;

const OFFER: &str = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n";

/// A raw client on `path` past the 101, having offered `extensions`; returns the head too.
fn upgraded(server: &Server, path: &str, extensions: &str) -> (TcpStream, String) {
    let mut s = raw(server);
    let request =
        UPGRADE.replacen("GET / ", &format!("GET {path} "), 1).replace("\r\n\r\n", &format!("\r\n{extensions}\r\n"));
    s.write_all(request.as_bytes()).unwrap();
    let head = read_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    (s, head)
}

/// DEFLATE the way browsers send it: sync flush, the 4-byte tail stripped.
fn deflated(data: &[u8]) -> Vec<u8> {
    deflated_at(data, flate2::Compression::fast())
}

fn deflated_at(data: &[u8], level: flate2::Compression) -> Vec<u8> {
    let mut encoder = flate2::write::DeflateEncoder::new(Vec::new(), level);
    encoder.write_all(data).unwrap();
    encoder.flush().unwrap();
    let mut out = encoder.get_ref().clone();
    assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
    out.truncate(out.len() - 4);
    out
}

fn inflated(payload: &[u8]) -> Vec<u8> {
    let mut body = payload.to_vec();
    body.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut out = Vec::new();
    let _ = flate2::read::DeflateDecoder::new(&body[..]).read_to_end(&mut out);
    out
}

/// The next `count` server frames.
fn frames(s: &mut TcpStream, count: usize) -> Vec<(u8, Vec<u8>)> {
    let mut bytes = Vec::new();
    read_frames_until(s, &mut bytes, |f| f.len() >= count);
    server_frames(&bytes)
}

#[test]
fn an_offer_is_answered_and_compressed_messages_go_both_ways() {
    let server = Server::start(&["--mode", "echo", "--ping-interval", "0"]);
    let (mut s, head) = upgraded(&server, "/", OFFER);
    assert!(
        head.contains(
            "\r\nSec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover\r\n"
        ),
        "{head}"
    );
    let document = r#"{"id":1,"name":"a document","tags":["x","y","z"],"body":"some text that repeats"}"#.repeat(40);
    // RSV1 on a text frame: compressed by the client.
    s.write_all(&masked(0xC1, &deflated(document.as_bytes()))).unwrap();
    let got = frames(&mut s, 1);
    assert_eq!(got[0].0, 0xC1, "FIN, RSV1, text: the echo comes back compressed");
    assert_eq!(inflated(&got[0].1), document.as_bytes());
    // A short message, sent plain and compressed, comes back plain.
    s.write_all(&masked(0x81, b"short")).unwrap();
    s.write_all(&masked(0xC1, &deflated(b"short too"))).unwrap();
    let got = frames(&mut s, 2);
    assert_eq!(got, vec![(0x81, b"short".to_vec()), (0x81, b"short too".to_vec())]);
    // A compressed message in fragments (RSV1 on the first), a ping between them.
    let body = deflated(&[b'q'; 5000]);
    let (a, b) = body.split_at(body.len() / 3);
    s.write_all(&[masked(0x42, a), masked(0x89, b"p"), masked(0x80, b)].concat()).unwrap();
    let got = frames(&mut s, 2);
    assert_eq!(got[0], (0x8A, b"p".to_vec()));
    assert_eq!((got[1].0, inflated(&got[1].1)), (0xC2, vec![b'q'; 5000]));
}

#[test]
fn a_decompression_bomb_is_closed_with_1009_before_it_is_inflated_past_the_limit() {
    let server = Server::start(&["--mode", "echo", "--ping-interval", "0", "--max-message", "1048576"]);
    let pid = server.child.id();
    let before = rss_bytes(pid);
    // 64 MiB of zeros in about 64 KiB: a 1,000x frame, small on the wire.
    let bomb = deflated_at(&vec![0u8; 64 << 20], flate2::Compression::best());
    assert!(bomb.len() < 70 << 10, "{}", bomb.len());
    let (mut s, _) = upgraded(&server, "/", OFFER);
    s.write_all(&masked(0xC2, &bomb)).unwrap();
    let answer = read_to_end(&mut s);
    assert_eq!(close_code_of(&answer), Some(1009));
    // CVE-2018-1000518 (Python websockets before 5.0 checked only the compressed size):
    // the inflated size is what counts, so the same bomb in fragments is closed too.
    let (mut s, _) = upgraded(&server, "/", OFFER);
    let mut fragments = Vec::new();
    for (i, piece) in bomb.chunks(4096).enumerate() {
        let first = if i == 0 { 0x42 } else { 0x00 };
        fragments.extend(masked(first, piece));
    }
    fragments.extend(masked(0x80, b""));
    s.write_all(&fragments).unwrap();
    assert_eq!(close_code_of(&read_to_end(&mut s)), Some(1009));
    let after = rss_bytes(pid);
    assert!(after < before + (8 << 20), "RSS grew from {before} to {after}");
    // The server goes on.
    let (mut s, _) = upgraded(&server, "/", OFFER);
    s.write_all(&masked(0x81, b"still here")).unwrap();
    assert_eq!(frames(&mut s, 1), vec![(0x81, b"still here".to_vec())]);
}

#[test]
fn without_the_extension_rsv1_is_a_protocol_error_and_bad_offers_are_declined() {
    let server = Server::start(&["--ping-interval", "0"]);
    for offer in [
        "",
        "Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=7\r\n",
        "Sec-WebSocket-Extensions: permessage-deflate; unknown_param\r\n",
        "Sec-WebSocket-Extensions: x-webkit-deflate-frame\r\n",
    ] {
        let (mut s, head) = upgraded(&server, "/", offer);
        assert!(!head.contains("Sec-WebSocket-Extensions"), "{offer}: {head}");
        s.write_all(&masked(0xC1, &deflated(b"compressed anyway"))).unwrap();
        let answer = read_to_end(&mut s);
        assert_eq!(close_code_of(&answer), Some(1002), "{offer}");
    }
    let off = Server::start(&["--deflate", "off"]);
    let (_, head) = upgraded(&off, "/", OFFER);
    assert!(!head.contains("Sec-WebSocket-Extensions"), "{head}");
}

#[test]
fn a_room_gets_one_compressed_frame_and_plain_members_the_plain_one() {
    let server = Server::start(&["--welcome", "", "--history", "0", "--ping-interval", "0"]);
    let (mut deflating, _) = upgraded(&server, "/r", OFFER);
    let (mut plain, _) = upgraded(&server, "/r", "");
    let line = "a chat line long enough to be worth compressing, ".repeat(10);
    plain.write_all(&masked(0x81, line.as_bytes())).unwrap();
    let got = frames(&mut deflating, 1);
    assert_eq!((got[0].0, inflated(&got[0].1)), (0xC1, line.clone().into_bytes()));
    assert_eq!(frames(&mut plain, 1), vec![(0x81, line.into_bytes())]);
    let (_, metrics) = http(server.addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    for line in ["mioket_compressed_frames_total 1", "mioket_deflate_connections_total 1"] {
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }
}
