//! Byte scripts for `Conn`: bytes in, exact bytes and events out, in virtual time.
//! Grouped by RFC 6455 section.

use super::*;
use crate::handshake::MAX_HEAD;
use crate::outqueue::OverLimit;
use proptest::prelude::*;
use std::io::IoSlice;

const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
pub(crate) const UPGRADE: &[u8] = b"GET /chat HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

#[derive(Debug, PartialEq, Eq, Clone)]
enum Ev {
    Upgrade,
    Get(String),
    Msg(Opcode, Vec<u8>),
}

fn limits() -> Limits {
    Limits { max_message: 1000, max_fragments: 8, max_backpressure: 100, ..Limits::default() }
}

/// A masked client frame.
pub(crate) fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![(u8::from(fin) << 7) | opcode];
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
    out.extend_from_slice(&KEY);
    let start = out.len();
    out.extend_from_slice(payload);
    crate::mask::apply_mask_naive(&mut out[start..], KEY, 0);
    out
}

pub(crate) fn text(s: &str) -> Vec<u8> {
    frame(true, 1, s.as_bytes())
}

/// Feeds `bytes` in one piece, accepting any upgrade; returns the events.
fn feed(conn: &mut Conn, bytes: &[u8], now: Instant) -> Vec<Ev> {
    feed_chunks(conn, &[bytes], now)
}

fn feed_chunks(conn: &mut Conn, chunks: &[&[u8]], now: Instant) -> Vec<Ev> {
    let limits = limits();
    let mut events = Vec::new();
    for chunk in chunks {
        let mut buf = chunk.to_vec();
        let mut pos = 0;
        while pos < buf.len() {
            let (used, event) = conn.handle_input(&mut buf[pos..], now, &limits);
            pos += used;
            let event = event.map(|e| match e {
                Event::UpgradeRequest(_) => Ev::Upgrade,
                Event::HttpRequest(request) => Ev::Get(request.target),
                Event::Message { opcode, payload, .. } => Ev::Msg(opcode, payload.to_vec()),
            });
            match event {
                Some(Ev::Upgrade) => {
                    conn.accept(None, None, now, &limits);
                    events.push(Ev::Upgrade);
                }
                Some(e) => events.push(e),
                None if used == 0 => panic!("read made no progress"),
                None => {}
            }
        }
    }
    events
}

/// Takes everything queued for the peer.
fn output(conn: &mut Conn) -> Vec<u8> {
    let mut slices = [IoSlice::new(&[]); 64];
    let n = conn.poll_transmit(&mut slices);
    let bytes: Vec<u8> = slices[..n].iter().flat_map(|s| s.iter().copied()).collect();
    conn.handle_written(bytes.len());
    bytes
}

fn open_conn() -> (Conn, Instant) {
    let now = Instant::now();
    let mut conn = Conn::new(now, &limits());
    assert_eq!(feed(&mut conn, UPGRADE, now), vec![Ev::Upgrade]);
    output(&mut conn);
    (conn, now)
}

pub(crate) fn close_frame(code: u16, reason: &str) -> Vec<u8> {
    let mut out = vec![0x88, 2 + reason.len() as u8];
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(reason.as_bytes());
    out
}

fn msg(opcode: Opcode, payload: &[u8]) -> Ev {
    Ev::Msg(opcode, payload.to_vec())
}

mod section_4_handshake {
    use super::*;

    #[test]
    fn an_upgrade_is_answered_with_101_and_the_connection_opens() {
        let now = Instant::now();
        let mut conn = Conn::new(now, &limits());
        assert_eq!(feed(&mut conn, UPGRADE, now), vec![Ev::Upgrade]);
        assert!(conn.is_open());
        assert_eq!(
            output(&mut conn),
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
        );
    }

    #[test]
    fn a_head_that_arrives_byte_by_byte_is_parsed_once_complete() {
        let now = Instant::now();
        let mut conn = Conn::new(now, &limits());
        let pieces: Vec<&[u8]> = UPGRADE.chunks(1).collect();
        assert_eq!(feed_chunks(&mut conn, &pieces, now), vec![Ev::Upgrade]);
    }

    #[test]
    fn frames_sent_right_behind_the_head_are_not_lost() {
        let now = Instant::now();
        let mut conn = Conn::new(now, &limits());
        let mut bytes = UPGRADE.to_vec();
        bytes.extend(text("early"));
        assert_eq!(feed(&mut conn, &bytes, now), vec![Ev::Upgrade, msg(Opcode::Text, b"early")]);
        // Also when the head came in pieces.
        let mut conn = Conn::new(now, &limits());
        let (a, b) = bytes.split_at(20);
        assert_eq!(feed_chunks(&mut conn, &[a, b], now), vec![Ev::Upgrade, msg(Opcode::Text, b"early")]);
    }

    #[test]
    fn a_head_over_8_kib_gets_431_without_waiting_for_its_end() {
        let now = Instant::now();
        let mut conn = Conn::new(now, &limits());
        let mut head = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
        head.resize(MAX_HEAD + 100, b'a');
        assert_eq!(feed(&mut conn, &head, now), vec![]);
        assert!(String::from_utf8(output(&mut conn)).unwrap().starts_with("HTTP/1.1 431 "));
        assert_eq!(conn.poll_fault(), Some(Fault::Handshake(HandshakeError::HeadTooLarge)));
        assert!(conn.poll_write_shutdown());
        // After an HTTP answer we linger for the client's end of stream.
        conn.handle_write_shutdown();
        assert!(!conn.is_closed());
        conn.handle_eof();
        assert!(conn.is_closed());
    }

    #[test]
    fn a_bad_request_is_answered_and_the_rest_of_the_input_ignored() {
        let now = Instant::now();
        let mut conn = Conn::new(now, &limits());
        let bad = String::from_utf8(UPGRADE.to_vec()).unwrap().replace("Version: 13", "Version: 7");
        assert_eq!(feed(&mut conn, format!("{bad}garbage").as_bytes(), now), vec![]);
        assert!(String::from_utf8(output(&mut conn)).unwrap().starts_with("HTTP/1.1 426 "));
    }

    #[test]
    fn an_answer_still_goes_out_when_the_peer_ends_its_stream_first() {
        let now = Instant::now();
        let mut conn = Conn::new(now, &limits());
        feed(&mut conn, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", now);
        conn.respond(Chunk::Static(b"HTTP/1.1 200 OK\r\n\r\n"), now);
        conn.handle_eof();
        assert!(!conn.is_closed());
        assert_eq!(output(&mut conn), b"HTTP/1.1 200 OK\r\n\r\n");
        conn.handle_write_shutdown();
        assert!(conn.is_closed(), "no need to wait for an end of stream already seen");
    }

    #[test]
    fn a_plain_get_is_handed_to_the_server() {
        let now = Instant::now();
        let mut conn = Conn::new(now, &limits());
        assert_eq!(feed(&mut conn, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", now), vec![Ev::Get("/healthz".into())]);
        conn.respond(Chunk::Static(b"HTTP/1.1 200 OK\r\n\r\n"), now);
        assert_eq!(output(&mut conn), b"HTTP/1.1 200 OK\r\n\r\n");
        assert!(conn.poll_write_shutdown());
    }

    #[test]
    fn a_stalled_handshake_is_dropped_at_its_deadline() {
        let now = Instant::now();
        let mut conn = Conn::new(now, &limits());
        feed(&mut conn, b"GET / HTTP/1.1\r\n", now);
        let deadline = conn.poll_timeout().unwrap();
        assert_eq!(deadline, now + Duration::from_secs(10));
        conn.handle_timeout(deadline - Duration::from_millis(1), &limits());
        assert!(!conn.is_closed());
        conn.handle_timeout(deadline, &limits());
        assert!(conn.is_closed());
        assert_eq!(conn.poll_fault(), Some(Fault::HandshakeTimeout));
    }
}

mod section_5_framing {
    use super::*;

    #[test]
    fn a_masked_text_frame_is_delivered_unmasked() {
        let (mut conn, now) = open_conn();
        assert_eq!(feed(&mut conn, &text("Hello"), now), vec![msg(Opcode::Text, b"Hello")]);
        assert_eq!(output(&mut conn), b"");
    }

    #[test]
    fn binary_and_empty_messages_are_delivered() {
        let (mut conn, now) = open_conn();
        let mut bytes = frame(true, 2, &[0, 255, 7]);
        bytes.extend(frame(true, 1, b""));
        assert_eq!(feed(&mut conn, &bytes, now), vec![msg(Opcode::Binary, &[0, 255, 7]), msg(Opcode::Text, b"")]);
    }

    #[test]
    fn an_unmasked_client_frame_fails_with_1002() {
        let (mut conn, now) = open_conn();
        assert_eq!(feed(&mut conn, &[0x81, 0x02, b'h', b'i'], now), vec![]);
        assert_eq!(output(&mut conn), close_frame(1002, "client frame not masked"));
        assert_eq!(conn.poll_fault(), Some(Fault::Peer(PeerError::UnmaskedFrame)));
    }

    #[test]
    fn reserved_bits_fail_with_1002_and_nothing_more_is_processed() {
        let (mut conn, now) = open_conn();
        let mut bytes = frame(true, 1, b"x");
        bytes[0] |= 0x40;
        bytes.extend(text("after"));
        assert_eq!(feed(&mut conn, &bytes, now), vec![]);
        assert_eq!(output(&mut conn), close_frame(1002, "reserved bits set"));
    }

    #[test]
    fn fragments_are_assembled_with_control_frames_between_them() {
        let (mut conn, now) = open_conn();
        let mut bytes = frame(false, 1, b"Hel");
        bytes.extend(frame(true, 9, b"p"));
        bytes.extend(frame(false, 0, b"l"));
        bytes.extend(frame(true, 0, b"o"));
        assert_eq!(feed(&mut conn, &bytes, now), vec![msg(Opcode::Text, b"Hello")]);
        assert_eq!(output(&mut conn), [0x8A, 1, b'p']);
    }

    #[test]
    fn a_continuation_without_a_message_fails_with_1002() {
        let (mut conn, now) = open_conn();
        feed(&mut conn, &frame(true, 0, b"x"), now);
        assert_eq!(output(&mut conn), close_frame(1002, "continuation without a message"));
    }

    #[test]
    fn a_new_message_inside_a_fragmented_one_fails_with_1002() {
        let (mut conn, now) = open_conn();
        let mut bytes = frame(false, 1, b"a");
        bytes.extend(frame(true, 2, b"b"));
        feed(&mut conn, &bytes, now);
        assert_eq!(output(&mut conn), close_frame(1002, "new message inside a fragmented message"));
    }

    #[test]
    fn fragmented_or_long_control_frames_fail_with_1002() {
        let (mut conn, now) = open_conn();
        feed(&mut conn, &frame(false, 9, b"x"), now);
        assert_eq!(output(&mut conn), close_frame(1002, "fragmented control frame"));
        let (mut conn, now) = open_conn();
        feed(&mut conn, &frame(true, 9, &[0; 126]), now);
        assert_eq!(output(&mut conn), close_frame(1002, "control frame over 125 bytes"));
    }

    #[test]
    fn a_ping_is_answered_with_a_pong_of_the_same_payload() {
        let (mut conn, now) = open_conn();
        assert_eq!(feed(&mut conn, &frame(true, 9, b"are you there"), now), vec![]);
        let mut want = vec![0x8A, 13];
        want.extend_from_slice(b"are you there");
        assert_eq!(output(&mut conn), want);
    }

    #[test]
    fn an_unsolicited_pong_is_ignored() {
        let (mut conn, now) = open_conn();
        assert_eq!(feed(&mut conn, &frame(true, 10, b"x"), now), vec![]);
        assert_eq!(output(&mut conn), b"");
        assert!(conn.is_open());
    }
}

mod section_7_closing {
    use super::*;

    #[test]
    fn a_close_is_answered_with_the_same_code_then_the_connection_drains() {
        let (mut conn, now) = open_conn();
        let mut bytes = frame(true, 8, &[0x03, 0xE8, b'b', b'y', b'e']);
        bytes.extend(text("ignored after close"));
        assert_eq!(feed(&mut conn, &bytes, now), vec![]);
        assert_eq!(output(&mut conn), close_frame(1000, ""));
        assert_eq!(conn.first_close(), Some(FirstClose { code: CloseCode::NORMAL, by_peer: true }));
        assert!(conn.poll_write_shutdown());
        assert_eq!(conn.poll_fault(), None);
        // RFC 6455 7.1.1: the handshake is finished, the server ends TCP at once.
        conn.handle_write_shutdown();
        assert!(conn.is_closed());
    }

    #[test]
    fn an_empty_close_is_answered_with_an_empty_close() {
        let (mut conn, now) = open_conn();
        feed(&mut conn, &frame(true, 8, b""), now);
        assert_eq!(output(&mut conn), [0x88, 0]);
    }

    #[test]
    fn bad_close_bodies_fail_with_their_codes() {
        for (body, want) in [
            (&[0x03][..], close_frame(1002, "close body of 1 byte")),
            (&[0x03, 0xED], close_frame(1002, "invalid close code")),
            (&[0x03, 0xE8, 0xFF], close_frame(1007, "invalid UTF-8")),
        ] {
            let (mut conn, now) = open_conn();
            feed(&mut conn, &frame(true, 8, body), now);
            assert_eq!(output(&mut conn), want, "{body:?}");
        }
    }

    #[test]
    fn our_close_waits_for_the_reply_and_skips_data_meanwhile() {
        let (mut conn, now) = open_conn();
        conn.close(CloseCode::GOING_AWAY, "going away", now, &limits());
        assert_eq!(output(&mut conn), close_frame(1001, "going away"));
        assert_eq!(conn.first_close(), Some(FirstClose { code: CloseCode::GOING_AWAY, by_peer: false }));
        let mut bytes = text("late message");
        bytes.extend(frame(true, 8, &[0x03, 0xE9]));
        assert_eq!(feed(&mut conn, &bytes, now), vec![]);
        assert_eq!(output(&mut conn), b"", "no second close");
        assert!(conn.poll_write_shutdown());
    }

    #[test]
    fn a_message_finishing_after_our_close_is_not_delivered() {
        let (mut conn, now) = open_conn();
        let whole = frame(true, 1, b"half sent");
        let (head, tail) = whole.split_at(whole.len() - 3);
        assert_eq!(feed(&mut conn, head, now), vec![]);
        conn.close(CloseCode::GOING_AWAY, "", now, &limits());
        assert_eq!(feed(&mut conn, tail, now), vec![]);
    }

    #[test]
    fn a_missing_close_reply_ends_the_connection_at_close_timeout() {
        let (mut conn, now) = open_conn();
        conn.close(CloseCode::GOING_AWAY, "", now, &limits());
        let deadline = conn.poll_timeout().unwrap();
        assert_eq!(deadline, now + Duration::from_secs(10));
        conn.handle_timeout(deadline, &limits());
        assert!(conn.is_closed());
        assert_eq!(conn.poll_fault(), Some(Fault::CloseTimeout));
    }
}

mod section_8_utf8 {
    use super::*;

    #[test]
    fn invalid_utf8_fails_with_1007_before_the_message_ends() {
        let (mut conn, now) = open_conn();
        feed(&mut conn, &frame(false, 1, &[b'o', b'k', 0xC0, 0xAF]), now);
        assert_eq!(output(&mut conn), close_frame(1007, "invalid UTF-8"));
    }

    #[test]
    fn invalid_utf8_split_across_fragments_fails_with_1007() {
        let (mut conn, now) = open_conn();
        // F4 90 ... lies above U+10FFFF; each fragment alone looks fine.
        let mut bytes = frame(false, 1, &[b'a', 0xF4]);
        bytes.extend(frame(false, 0, &[0x90]));
        feed(&mut conn, &bytes, now);
        assert_eq!(output(&mut conn), close_frame(1007, "invalid UTF-8"));
    }

    #[test]
    fn a_character_split_across_fragments_is_fine() {
        let (mut conn, now) = open_conn();
        let euro = "€".as_bytes();
        let mut bytes = frame(false, 1, &euro[..1]);
        bytes.extend(frame(true, 0, &euro[1..]));
        assert_eq!(feed(&mut conn, &bytes, now), vec![msg(Opcode::Text, euro)]);
    }

    #[test]
    fn a_message_ending_inside_a_character_fails_with_1007() {
        let (mut conn, now) = open_conn();
        let mut bytes = frame(false, 1, b"a");
        bytes.extend(frame(true, 0, &[0xE2, 0x82]));
        feed(&mut conn, &bytes, now);
        assert_eq!(output(&mut conn), close_frame(1007, "invalid UTF-8"));
    }
}

mod limits {
    use super::*;

    #[test]
    fn a_huge_declared_length_fails_with_1009_at_header_time() {
        let (mut conn, now) = open_conn();
        let mut header = vec![0x82, 0xFF];
        header.extend_from_slice(&(1u64 << 62).to_be_bytes());
        header.extend_from_slice(&KEY);
        assert_eq!(feed(&mut conn, &header, now), vec![]);
        assert_eq!(output(&mut conn), close_frame(1009, "message too big"));
        assert!(conn.reader.partial.is_none(), "nothing allocated");
    }

    #[test]
    fn the_message_limit_counts_every_fragment() {
        let (mut conn, now) = open_conn();
        let mut bytes = frame(false, 2, &[0; 600]);
        bytes.extend(frame(true, 0, &[0; 401]));
        assert_eq!(feed(&mut conn, &bytes, now), vec![]);
        assert_eq!(output(&mut conn), close_frame(1009, "message too big"));
        let (mut conn, now) = open_conn();
        let mut bytes = frame(false, 2, &[0; 600]);
        bytes.extend(frame(true, 0, &[0; 400]));
        assert_eq!(feed(&mut conn, &bytes, now).len(), 1, "exactly the limit is fine");
    }

    #[test]
    fn a_flood_of_empty_fragments_fails_with_1009() {
        let (mut conn, now) = open_conn();
        let mut bytes = frame(false, 2, b"");
        for _ in 0..limits().max_fragments {
            bytes.extend(frame(false, 0, b""));
        }
        assert_eq!(feed(&mut conn, &bytes, now), vec![]);
        assert_eq!(output(&mut conn), close_frame(1009, "too many fragments"));
    }

    #[test]
    fn a_slow_consumer_is_closed_with_1008_and_its_queue_freed() {
        let (mut conn, now) = open_conn();
        let limits = limits();
        assert_eq!(conn.send(Chunk::frame(Opcode::Text, &[b'a'; 90]), now, &limits), Ok(()));
        assert_eq!(conn.send(Chunk::frame(Opcode::Text, &[b'b'; 20]), now, &limits), Err(OverLimit));
        assert_eq!(output(&mut conn), close_frame(1008, "slow consumer: too much data queued"));
        assert_eq!(conn.poll_fault(), Some(Fault::SlowConsumer));
    }

    #[test]
    fn the_101_answer_survives_a_slow_consumer_close_right_after_the_upgrade() {
        let now = Instant::now();
        let limits = Limits { max_backpressure: 10, ..limits() };
        let mut conn = Conn::new(now, &limits);
        let mut request = UPGRADE.to_vec();
        assert!(matches!(conn.handle_input(&mut request, now, &limits).1, Some(Event::UpgradeRequest(_))));
        conn.accept(None, None, now, &limits);
        assert_eq!(conn.send(Chunk::frame(Opcode::Text, &[b'a'; 8]), now, &limits), Ok(()), "the 101 does not count");
        assert_eq!(conn.send(Chunk::frame(Opcode::Text, &[b'b'; 8]), now, &limits), Err(OverLimit));
        let bytes = output(&mut conn);
        assert!(bytes.starts_with(b"HTTP/1.1 101 Switching Protocols\r\n"));
        assert!(bytes.ends_with(&close_frame(1008, "slow consumer: too much data queued")));
    }

    #[test]
    fn the_rest_of_a_frame_begun_on_the_wire_survives_a_slow_consumer_close() {
        let (mut conn, now) = open_conn();
        let limits = limits();
        assert!(conn.can_write_through());
        // The loop wrote the first 3 bytes of a 300-byte frame itself; the rest is queued.
        let frame = Chunk::frame(Opcode::Binary, &[b'r'; 296]);
        conn.finish_write_through(Chunk::rest_of([frame.bytes(), &[]], 3));
        assert!(!conn.can_write_through(), "output waits: the next frame queues behind it");
        assert_eq!(conn.send(Chunk::frame(Opcode::Text, &[b'a'; 90]), now, &limits), Ok(()), "the rest does not count");
        assert_eq!(conn.send(Chunk::frame(Opcode::Text, &[b'b'; 20]), now, &limits), Err(OverLimit));
        let mut expected = frame.bytes()[3..].to_vec();
        expected.extend(close_frame(1008, "slow consumer: too much data queued"));
        assert_eq!(output(&mut conn), expected);
    }

    #[test]
    fn write_through_waits_for_queued_output_and_an_open_connection() {
        let now = Instant::now();
        let conn = Conn::new(now, &limits());
        assert!(!conn.can_write_through(), "not open yet");
        let (mut conn, now) = open_conn();
        assert!(conn.can_write_through());
        feed(&mut conn, &frame(true, 9, b"p"), now);
        assert!(!conn.can_write_through(), "the pong waits");
        output(&mut conn);
        assert!(conn.can_write_through());
    }

    #[test]
    fn a_call_that_queues_a_pong_returns_before_the_message_behind_it() {
        // Write-through is decided before the call that yields a message: no output
        // may appear ahead of that message within the call (found by fuzzing).
        let (mut conn, now) = open_conn();
        let limits = limits();
        let mut input = [frame(true, 9, b"p"), text("after")].concat();
        assert!(conn.can_write_through());
        let (used, event) = conn.handle_input(&mut input, now, &limits);
        assert_eq!((used, event), (7, None), "returned right after the ping");
        assert!(!conn.can_write_through(), "the pong waits");
        let (_, event) = conn.handle_input(&mut input[7..], now, &limits);
        assert_eq!(event, Some(Event::Message { opcode: Opcode::Text, payload: b"after" }));
    }

    #[test]
    fn pings_are_not_answered_past_the_backpressure_limit() {
        let (mut conn, now) = open_conn();
        let mut bytes = Vec::new();
        for _ in 0..10 {
            bytes.extend(frame(true, 9, &[0; 20]));
        }
        feed(&mut conn, &bytes, now);
        assert!(conn.queued_bytes() <= limits().max_backpressure + 22);
    }
}

mod heartbeat {
    use super::*;

    #[test]
    fn pings_at_the_interval_and_a_matching_pong_keeps_the_connection() {
        let (mut conn, now) = open_conn();
        let limits = limits();
        let ping_at = conn.poll_timeout().unwrap();
        assert_eq!(ping_at, now + Duration::from_secs(10));
        conn.handle_timeout(ping_at, &limits);
        assert_eq!(output(&mut conn), [0x89, 4, 0, 0, 0, 1]);
        assert_eq!(conn.poll_timeout(), Some(ping_at + Duration::from_secs(5)));
        feed(&mut conn, &frame(true, 10, &[0, 0, 0, 1]), ping_at);
        assert_eq!(conn.poll_timeout(), Some(ping_at + Duration::from_secs(10)));
        conn.handle_timeout(ping_at + Duration::from_secs(5), &limits);
        assert!(conn.is_open());
    }

    #[test]
    fn a_missing_pong_closes_with_1011() {
        let (mut conn, now) = open_conn();
        let limits = limits();
        conn.handle_timeout(now + Duration::from_secs(10), &limits);
        output(&mut conn);
        feed(&mut conn, &frame(true, 10, &[0, 0, 0, 9]), now);
        conn.handle_timeout(now + Duration::from_secs(15), &limits);
        assert_eq!(output(&mut conn), close_frame(1011, "keepalive ping timeout"));
        assert_eq!(conn.poll_fault(), Some(Fault::PongTimeout));
        // RFC 6455 7.1.7: no wait for a close reply: once written, the connection ends.
        assert!(conn.poll_write_shutdown());
        conn.handle_write_shutdown();
        assert!(conn.is_closed());
    }

    #[test]
    fn no_pings_when_the_interval_is_off() {
        let now = Instant::now();
        let limits = Limits { ping_interval: None, ..limits() };
        let mut conn = Conn::new(now, &limits);
        let mut buf = UPGRADE.to_vec();
        conn.handle_input(&mut buf, now, &limits);
        conn.accept(None, None, now, &limits);
        assert_eq!(conn.poll_timeout(), None);
    }
}

/// A script exercising most paths: messages, fragments, control frames, a close.
fn script() -> Vec<u8> {
    let mut bytes = UPGRADE.to_vec();
    bytes.extend(text("Hello"));
    bytes.extend(frame(true, 2, &[1; 300]));
    bytes.extend(frame(false, 1, "κό".as_bytes()));
    bytes.extend(frame(true, 9, b"ping"));
    bytes.extend(frame(true, 0, "σμε".as_bytes()));
    bytes.extend(frame(true, 2, &[2; 70000 % 1000]));
    bytes.extend(frame(true, 8, &[0x03, 0xE8]));
    bytes
}

proptest! {
    #[test]
    fn any_split_of_the_input_gives_the_same_events_and_bytes(cuts in proptest::collection::vec(0usize..2000, 0..12)) {
        let bytes = script();
        let now = Instant::now();
        let mut whole = Conn::new(now, &limits());
        let want_events = feed(&mut whole, &bytes, now);
        let want_out = output(&mut whole);
        prop_assert_eq!(want_events.len(), 5);

        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % bytes.len()).collect();
        cuts.sort();
        let mut pieces = Vec::new();
        let mut last = 0;
        for c in cuts { pieces.push(&bytes[last..c]); last = c; }
        pieces.push(&bytes[last..]);
        let mut split = Conn::new(now, &limits());
        prop_assert_eq!(feed_chunks(&mut split, &pieces, now), want_events);
        prop_assert_eq!(output(&mut split), want_out);
    }
}

/// A way into a `Conn`: `Conn::handle_input`, or its general path alone.
type HandleInput = for<'a> fn(&'a mut Conn, &'a mut [u8], Instant, &Limits) -> (usize, Option<Event<'a>>);

/// Feeds `bytes` in one piece to an open connection through `handle`; returns the
/// events, the bytes out, the fault and whether it is still open.
fn feed_open_through(bytes: &[u8], limits: &Limits, handle: HandleInput) -> (Vec<Ev>, Vec<u8>, Option<Fault>, bool) {
    let (mut conn, now) = open_conn();
    let mut buf = bytes.to_vec();
    let mut pos = 0;
    let mut events = Vec::new();
    while pos < buf.len() {
        let (used, event) = handle(&mut conn, &mut buf[pos..], now, limits);
        pos += used;
        match event {
            Some(Event::Message { opcode, payload }) => events.push(msg(opcode, payload)),
            Some(_) => panic!("no request on an open connection"),
            None if used == 0 => break,
            None => {}
        }
    }
    (events, output(&mut conn), conn.poll_fault(), conn.is_open())
}

proptest! {
    /// The one-step path for a whole small message (`Conn::small_message`) gives what
    /// the general path gives, on any first two header bytes (opcodes, RSV bits, FIN,
    /// mask, lengths), payloads valid or not as text, message limits below and above
    /// the frame, and whatever follows the frame.
    #[test]
    fn the_small_message_path_agrees_with_the_general_one(
        b0 in prop_oneof![Just(0x81u8), Just(0x82u8), any::<u8>()],
        b1 in any::<u8>(),
        length_matches in any::<bool>(),
        payload in proptest::collection::vec(any::<u8>(), 0..140),
        text_like in any::<bool>(),
        max_message in 0usize..200,
        rest in proptest::collection::vec(any::<u8>(), 0..20),
    ) {
        let payload = if text_like { String::from_utf8_lossy(&payload).into_owned().into_bytes() } else { payload };
        let b1 = if length_matches && payload.len() <= 125 { (b1 & 0x80) | payload.len() as u8 } else { b1 };
        let mut bytes = vec![b0, b1];
        bytes.extend_from_slice(&KEY);
        let start = bytes.len();
        bytes.extend_from_slice(&payload);
        crate::mask::apply_mask_naive(&mut bytes[start..], KEY, 0);
        bytes.extend_from_slice(&rest);
        let limits = Limits { max_message, ..limits() };
        let general = feed_open_through(&bytes, &limits, Conn::handle_any_input);
        let public = feed_open_through(&bytes, &limits, Conn::handle_input);
        prop_assert_eq!(public, general);
    }
}

#[test]
fn byte_at_a_time_gives_the_same_events_and_bytes() {
    let bytes = script();
    let now = Instant::now();
    let mut whole = Conn::new(now, &limits());
    let want_events = feed(&mut whole, &bytes, now);
    let want_out = output(&mut whole);
    let mut single = Conn::new(now, &limits());
    let pieces: Vec<&[u8]> = bytes.chunks(1).collect();
    assert_eq!(feed_chunks(&mut single, &pieces, now), want_events);
    assert_eq!(output(&mut single), want_out);
}

/// RFC 7692: permessage-deflate on a connection that negotiated it.
mod permessage_deflate {
    use super::*;
    use std::io::Write;

    fn open_deflate_conn() -> (Conn, Instant) {
        let now = Instant::now();
        let mut conn = Conn::new(now, &limits());
        let request = String::from_utf8(UPGRADE.to_vec())
            .unwrap()
            .replace("\r\n\r\n", "\r\nSec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n");
        let mut bytes = request.into_bytes();
        let (_, event) = conn.handle_input(&mut bytes, now, &limits());
        let Some(Event::UpgradeRequest(request)) = event else { panic!("{event:?}") };
        assert!(request.deflate.is_some());
        conn.accept(None, request.deflate, now, &limits());
        let head = String::from_utf8(output(&mut conn)).unwrap();
        assert!(head.contains(
            "\r\nSec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover\r\n"
        ));
        assert!(conn.takes_compressed());
        (conn, now)
    }

    /// DEFLATE as a browser sends it: sync flush, the 4-byte tail stripped.
    fn deflated(data: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(data).unwrap();
        encoder.flush().unwrap();
        let mut out = encoder.get_ref().clone();
        out.truncate(out.len() - 4);
        out
    }

    /// A masked frame with RSV1 set.
    fn compressed(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut bytes = frame(fin, opcode, payload);
        bytes[0] |= 0x40;
        bytes
    }

    #[test]
    fn a_compressed_message_is_delivered_inflated_whole_or_in_fragments_and_plain_ones_too() {
        let (mut conn, now) = open_deflate_conn();
        let hello = deflated(b"Hello, compressed world");
        let mut bytes = compressed(true, 1, &hello);
        bytes.extend(text("plain still works"));
        // Fragments: RSV1 on the first only, a ping between them.
        let big = deflated(&[b'z'; 900]);
        let (a, b) = big.split_at(big.len() / 2);
        bytes.extend(compressed(false, 2, a));
        bytes.extend(frame(true, 9, b"p"));
        bytes.extend(frame(true, 0, b));
        let want = vec![
            msg(Opcode::Text, b"Hello, compressed world"),
            msg(Opcode::Text, b"plain still works"),
            msg(Opcode::Binary, &[b'z'; 900]),
        ];
        assert_eq!(feed(&mut conn, &bytes, now), want);
        // The same bytes in any chunking give the same messages.
        let (mut conn, now) = open_deflate_conn();
        let pieces: Vec<&[u8]> = bytes.chunks(3).collect();
        assert_eq!(feed_chunks(&mut conn, &pieces, now), want);
    }

    #[test]
    fn rsv1_without_the_extension_or_on_a_continuation_fails_with_1002() {
        let (mut plain, now) = open_conn();
        assert_eq!(feed(&mut plain, &compressed(true, 1, &deflated(b"x")), now), vec![]);
        assert_eq!(output(&mut plain), close_frame(1002, "reserved bits set"));
        let (mut conn, now) = open_deflate_conn();
        let mut bytes = compressed(false, 1, &deflated(b"ab"));
        bytes.extend(compressed(true, 0, b""));
        assert_eq!(feed(&mut conn, &bytes, now), vec![]);
        assert_eq!(output(&mut conn), close_frame(1002, "reserved bits set"));
    }

    #[test]
    fn a_message_that_inflates_past_the_limit_fails_with_1009() {
        // limits(): 1,000 bytes; 100 KiB of zeros deflate to a few hundred bytes.
        let (mut conn, now) = open_deflate_conn();
        let bomb = deflated(&vec![0u8; 100 << 10]);
        assert!(bomb.len() < 1000);
        assert_eq!(feed(&mut conn, &compressed(true, 2, &bomb), now), vec![]);
        assert_eq!(output(&mut conn), close_frame(1009, "message too big"));
        // Exactly the limit inflates.
        let (mut conn, now) = open_deflate_conn();
        assert_eq!(
            feed(&mut conn, &compressed(true, 2, &deflated(&[1; 1000])), now),
            vec![msg(Opcode::Binary, &[1; 1000])]
        );
    }

    /// Issue 19, finding 5: the loop's fairness budget counts inflated bytes. Once a
    /// turn's share is inflated, the rest of the input is held (no message cut, none
    /// lost, none reordered) and handed in again at the next turn; a large inflated
    /// buffer is given back as soon as its message is handled.
    #[test]
    fn past_the_inflate_budget_input_waits_for_the_next_turn_and_big_buffers_go_back() {
        let (mut conn, now) = open_deflate_conn();
        let limits = Limits { max_message: 1 << 20, ..limits() };
        let each = INFLATE_BUDGET / 2 + 1;
        let mut bytes = Vec::new();
        for i in 0..5u8 {
            bytes.extend(compressed(true, 2, &deflated(&vec![i; each])));
        }
        bytes.extend(text("plain"));
        let (mut got, mut turns, mut input) = (Vec::new(), 0, bytes.clone());
        loop {
            turns += 1;
            let mut pos = 0;
            while pos < input.len() {
                let (used, event) = conn.handle_input(&mut input[pos..], now, &limits);
                pos += used;
                match event {
                    Some(Event::Message { opcode, payload }) => got.push((opcode, payload.len(), payload[0])),
                    Some(other) => panic!("{other:?}"),
                    None => assert!(used > 0, "no progress"),
                }
            }
            let freed = conn.end_input();
            if !conn.holds_input() {
                break;
            }
            assert!(freed > KEEP_BUFFER, "the inflated buffer goes back at once ({freed} B)");
            let mut buf = vec![0u8; bytes.len()];
            let held = conn.start_turn(&mut buf);
            assert!(held > 0 && !conn.holds_input(), "start_turn hands all of it back");
            input = buf[..held].to_vec();
        }
        let mut want: Vec<(Opcode, usize, u8)> = (0..5u8).map(|i| (Opcode::Binary, each, i)).collect();
        want.push((Opcode::Text, 5, b'p'));
        assert_eq!(got, want);
        // Two messages per turn: the second passes the budget, the rest waits.
        assert_eq!(turns, 3);
    }

    #[test]
    fn bad_deflate_data_fails_with_1007_and_so_does_inflated_text_that_is_not_utf8() {
        let (mut conn, now) = open_deflate_conn();
        assert_eq!(feed(&mut conn, &compressed(true, 2, &[0xff, 0xff, 0xff]), now), vec![]);
        assert_eq!(output(&mut conn), close_frame(1007, "invalid compressed data"));
        let (mut conn, now) = open_deflate_conn();
        assert_eq!(feed(&mut conn, &compressed(true, 1, &deflated(&[0xc3, 0x28])), now), vec![]);
        assert_eq!(output(&mut conn), close_frame(1007, "invalid UTF-8"));
    }
}

/// Issue 19, finding 10: a plain request's body is read only once the server asks,
/// and what a connection holds unfinished can be given back.
mod unfinished_input {
    use super::*;

    const POST: &[u8] = b"POST /api/rooms/x/messages HTTP/1.1\r\nHost: x\r\nContent-Length: 600\r\n\r\n";

    /// The request a `handle_input` call gives, and how many bytes it used.
    fn head_event(conn: &mut Conn, input: &mut [u8], now: Instant) -> (usize, Box<HttpRequest>) {
        match conn.handle_input(input, now, &limits()) {
            (used, Some(Event::HttpRequest(request))) => (used, request),
            (used, other) => panic!("{used} {other:?}"),
        }
    }

    #[test]
    fn a_request_is_handed_on_at_its_head_and_a_body_not_asked_for_is_never_kept() {
        let now = Instant::now();
        let mut conn = Conn::new(now, &limits());
        let mut input = [POST, &[b'a'; 300][..]].concat();
        let (used, request) = head_event(&mut conn, &mut input, now);
        assert_eq!((used, request.body.len(), request.body_length), (POST.len(), 0, BodyLength::Length(600)));
        conn.respond(Chunk::Static(b"HTTP/1.1 401 Unauthorized\r\n\r\n"), now);
        // The body that follows is read past, and nothing of it is kept.
        assert_eq!(conn.handle_input(&mut input[used..], now, &limits()), (300, None));
        assert_eq!(conn.handle_input(&mut [b'b'; 300], now, &limits()), (300, None));
        assert_eq!(conn.unfinished_memory(), 0);
        assert_eq!(output(&mut conn), b"HTTP/1.1 401 Unauthorized\r\n\r\n");
    }

    #[test]
    fn a_body_asked_for_comes_back_whole_after_a_100_continue_if_expected() {
        let now = Instant::now();
        for expect in [false, true] {
            let mut conn = Conn::new(now, &limits());
            let head = if expect {
                String::from_utf8(POST.to_vec()).unwrap().replace("\r\n\r\n", "\r\nExpect: 100-continue\r\n\r\n")
            } else {
                String::from_utf8(POST.to_vec()).unwrap()
            };
            let mut input = head.into_bytes();
            let (_, request) = head_event(&mut conn, &mut input, now);
            assert_eq!(request.expect_continue, expect);
            conn.read_body(request, &limits());
            let continued: &[u8] = if expect { b"HTTP/1.1 100 Continue\r\n\r\n" } else { b"" };
            assert_eq!(output(&mut conn), continued);
            assert_eq!(conn.handle_input(&mut [b'a'; 250], now, &limits()), (250, None));
            assert!(conn.unfinished_memory() >= 250, "a body being read counts");
            let mut rest = [b'b'; 400];
            let (used, request) = head_event(&mut conn, &mut rest, now);
            assert_eq!((used, request.body.len()), (400, 600), "the bytes after the body are not read");
            assert_eq!(conn.unfinished_memory(), 0);
        }
    }

    #[test]
    fn shedding_refuses_an_unfinished_message_with_1013_and_reads_past_its_rest() {
        let (mut conn, now) = open_conn();
        let whole = frame(true, 2, &[7; 900]);
        assert_eq!(feed(&mut conn, &whole[..500], now), vec![]);
        assert!(conn.unfinished_memory() >= 400);
        assert!(conn.shed_unfinished(now, &limits()));
        assert_eq!(conn.unfinished_memory(), 0);
        assert_eq!(output(&mut conn), close_frame(1013, "server busy: too much input held unfinished"));
        assert_eq!(feed(&mut conn, &whole[500..], now), vec![], "the rest is read past, never delivered");
        assert_eq!(conn.unfinished_memory(), 0);
    }

    #[test]
    fn shedding_keeps_a_control_frame_arriving_and_only_gives_back_the_buffers_of_a_finished_message() {
        let (mut conn, now) = open_conn();
        // A finished message leaves its buffer behind: given back, nothing refused.
        let one = frame(true, 2, &[1; 300]);
        feed(&mut conn, &one[..100], now);
        assert_eq!(feed(&mut conn, &one[100..], now), vec![msg(Opcode::Binary, &[1; 300])]);
        assert!(conn.unfinished_memory() > 0);
        assert!(!conn.shed_unfinished(now, &limits()));
        assert_eq!((conn.unfinished_memory(), conn.is_open()), (0, true));
        // A fragment, then half a close frame: the close's bytes survive the shedding.
        feed(&mut conn, &frame(false, 1, &[b'a'; 200]), now);
        let close = frame(true, 8, &[0x03, 0xe8, b'b', b'y', b'e']);
        feed(&mut conn, &close[..8], now);
        assert!(conn.shed_unfinished(now, &limits()));
        assert_eq!(output(&mut conn), close_frame(1013, "server busy: too much input held unfinished"));
        feed(&mut conn, &close[8..], now);
        assert!(conn.poll_write_shutdown(), "the peer's close reply ends the closing handshake");
    }
}
