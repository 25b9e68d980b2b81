//! permessage-deflate in the application: one compressed frame per message, shared by
//! every recipient that negotiated the extension; the others get the plain frame.

use super::*;
use std::io::Read;

const OFFER: &str = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n";

/// An upgrade on `/room`, offering permessage-deflate or not; returns the client and
/// its 101 head.
fn join(app: &mut App<Peer>, deflate: bool, now: Instant) -> (usize, String) {
    let id = connect(app, Listener::Main, now);
    let extra = if deflate { OFFER } else { "" };
    let request = format!(
        "GET /room HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    );
    feed(app, id, request.as_bytes(), now);
    let out = flush(app).remove(&id).unwrap();
    let end = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    (id, String::from_utf8(out[..end].to_vec()).unwrap())
}

/// One server frame: (RSV1, opcode bits, payload), inflated when RSV1 is set.
fn read_frame(bytes: &[u8]) -> (bool, u8, Vec<u8>) {
    let (header, n) = crate::frame::parse_header(bytes).unwrap().unwrap();
    let compressed = header.compressed;
    let payload = &bytes[n..n + header.len as usize];
    assert_eq!(n + payload.len(), bytes.len(), "one frame");
    if !compressed {
        return (false, header.opcode.bits(), payload.to_vec());
    }
    // Inflated by flate2's reader, the way a browser would.
    let mut body = payload.to_vec();
    body.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut out = Vec::new();
    let _ = flate2::read::DeflateDecoder::new(&body[..]).read_to_end(&mut out);
    (true, header.opcode.bits(), out)
}

#[test]
fn a_broadcast_is_compressed_once_for_every_member_that_takes_it() {
    let now = Instant::now();
    let mut app = App::new(Config { welcome: None, ..Config::default() });
    let (sender, head) = join(&mut app, true, now);
    assert!(
        head.contains(
            "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover\r\n"
        ),
        "{head}"
    );
    let deflating: Vec<usize> = (0..50).map(|_| join(&mut app, true, now).0).collect();
    let (plain, head) = join(&mut app, false, now);
    assert!(!head.contains("Sec-WebSocket-Extensions"));
    let document = r#"{"user":"ada","text":"the same words, again and again and again"}"#.repeat(30);
    feed(&mut app, sender, &text(&document), now);
    let out = flush(&mut app);
    assert_eq!(app.metrics.compressed_frames, 1, "one compression for 51 recipients");
    let first = &out[&deflating[0]];
    for id in deflating.iter().chain([&sender]) {
        assert_eq!(&out[id], first, "the very same compressed frame");
    }
    let (rsv1, opcode, payload) = read_frame(first);
    assert!(rsv1 && opcode == 1);
    assert_eq!(payload, document.as_bytes());
    assert!(first.len() < document.len() / 5);
    assert_eq!(read_frame(&out[&plain]), (false, 1, document.as_bytes().to_vec()));
    // Short messages, and messages that do not shrink, go plain to everyone.
    feed(&mut app, sender, &text("hi"), now);
    feed(&mut app, sender, &frame(true, 2, &(0..=255u8).collect::<Vec<u8>>()), now);
    let out = flush(&mut app);
    assert_eq!(app.metrics.compressed_frames, 1);
    assert!(!read_frame(&out[&deflating[0]][..4]).0);
}

#[test]
fn with_deflate_off_every_offer_is_declined() {
    let now = Instant::now();
    let mut app = App::new(Config { deflate: DeflateMode::Off, ..Config::default() });
    let (_, head) = join(&mut app, true, now);
    assert!(head.starts_with("HTTP/1.1 101 ") && !head.contains("Sec-WebSocket-Extensions"), "{head}");
}

#[test]
fn an_echo_that_shrinks_goes_back_compressed() {
    let now = Instant::now();
    let mut app = App::new(Config { mode: Mode::Echo, welcome: None, history: 0, ..Config::default() });
    let (id, _) = join(&mut app, true, now);
    let line = "an echo worth compressing ".repeat(40);
    feed(&mut app, id, &text(&line), now);
    let out = flush(&mut app).remove(&id).unwrap();
    assert_eq!(read_frame(&out), (true, 1, line.into_bytes()));
}
