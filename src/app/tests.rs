//! The application in virtual time: bytes in, decisions and exact bytes out, no
//! sockets. Each client's `io` is a name; writes-through go to a closure.

use std::collections::HashMap;
use std::io::IoSlice;
use std::time::Duration;

use super::housekeeping::PRESENCE_EVERY;
use super::*;
use crate::config::{DeflateMode, Limits};
use crate::protocol::tests::{close_frame, frame, text, UPGRADE};

/// The runtime's per-client data, here only a name for the log.
struct Peer(usize);

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "peer {}", self.0)
    }
}

impl ClientIo for Peer {}

impl ClientIo for &'static str {}

fn config(mode: Mode) -> Config {
    Config { mode, welcome: Some("hi".into()), history: 2, ..Config::default() }
}

/// A client through admission, before any byte.
fn connect(app: &mut App<Peer>, listener: Listener, now: Instant) -> usize {
    let n = app.client_count();
    app.connect(Peer(n), listener, now).ok().expect("admitted")
}

/// Feeds `bytes` to client `id`; returns what was written through (straight to a
/// socket that takes everything).
fn feed(app: &mut App<Peer>, id: usize, bytes: &[u8], now: Instant) -> Vec<u8> {
    let mut input = bytes.to_vec();
    let mut through = Vec::new();
    app.handle_input(id, &mut input, now, |_, parts| {
        through.extend(parts.concat());
        parts[0].len() + parts[1].len()
    });
    through
}

/// An upgraded client, everything it was sent so far flushed and returned.
fn upgraded(app: &mut App<Peer>, now: Instant) -> (usize, Vec<u8>) {
    let id = connect(app, Listener::Main, now);
    feed(app, id, UPGRADE, now);
    let mut out = flush(app);
    (id, out.remove(&id).unwrap_or_default())
}

/// What the runtime's flush does when every socket takes everything: each dirty
/// client's bytes, and the order they were flushed in.
pub(super) fn flush_in_order<T: ClientIo>(app: &mut App<T>) -> Vec<(usize, Vec<u8>)> {
    let mut dirty = Vec::new();
    app.drain_dirty_into(&mut dirty);
    let mut written = Vec::new();
    for &id in &dirty {
        if !app.clients.contains(id) {
            continue;
        }
        let mut bytes = Vec::new();
        app.flush(id, &mut |_: &mut T, slices: &[IoSlice<'_>]| {
            slices.iter().for_each(|s| bytes.extend_from_slice(s));
            Ok(slices.iter().map(|s| s.len()).sum())
        });
        written.push((id, bytes));
    }
    written
}

pub(super) fn flush<T: ClientIo>(app: &mut App<T>) -> HashMap<usize, Vec<u8>> {
    flush_in_order(app).into_iter().collect()
}

/// An unmasked server text frame.
fn server_text(s: &str) -> Vec<u8> {
    let mut out = vec![0x81, s.len() as u8];
    out.extend_from_slice(s.as_bytes());
    out
}

/// An unmasked server binary frame of 126 to 65,535 bytes (a 16-bit length).
fn server_binary(payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0x82, 126];
    out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A pure echo server (no welcome, no history) with one upgraded client.
fn pure_echo(now: Instant) -> (App<Peer>, usize) {
    let mut app = App::new(Config { welcome: None, history: 0, ..config(Mode::Echo) });
    let (id, _) = upgraded(&mut app, now);
    (app, id)
}

fn http_answer(app: &mut App<Peer>, listener: Listener, request: &str, now: Instant) -> String {
    let id = connect(app, listener, now);
    feed(app, id, request.as_bytes(), now);
    String::from_utf8(flush(app).remove(&id).unwrap_or_default()).unwrap()
}

mod admission {
    use super::*;

    #[test]
    fn an_upgrade_gets_the_101_then_the_welcome_then_the_history_oldest_first() {
        let now = Instant::now();
        let mut app = App::new(config(Mode::Broadcast));
        let (a, _) = upgraded(&mut app, now);
        for s in ["one", "two", "three"] {
            feed(&mut app, a, &text(s), now);
        }
        flush(&mut app);
        let (_, bytes) = upgraded(&mut app, now);
        let head_end = bytes.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        assert!(bytes.starts_with(b"HTTP/1.1 101 Switching Protocols\r\n"));
        let expected = [server_text("hi"), server_text("two"), server_text("three")].concat();
        assert_eq!(&bytes[head_end..], &expected[..], "welcome, then the last 2 messages");
    }

    #[test]
    fn past_max_connections_an_upgrade_gets_503_and_past_the_slack_a_connection_is_refused_at_once() {
        let now = Instant::now();
        let mut app = App::new(Config { max_connections: 1, ..config(Mode::Echo) });
        upgraded(&mut app, now);
        let (_, refused) = upgraded(&mut app, now);
        assert!(refused.starts_with(b"HTTP/1.1 503 "), "{}", String::from_utf8_lossy(&refused));
        assert!(refused.ends_with(b"too many connections, try again later\n"));
        // Handshaking connections wait beyond the limit only up to the slack (the
        // refused one counts until it is gone).
        let room = 1 + HANDSHAKE_SLACK - app.client_count();
        for i in 0..room {
            assert!(app.connect(Peer(i), Listener::Main, now).is_ok(), "connection {i} within the slack");
        }
        let Err((_, answer)) = app.connect(Peer(0), Listener::Main, now) else { panic!("admitted past the slack") };
        assert!(answer.starts_with(b"HTTP/1.1 503 "));
        assert_eq!(app.metrics.rejected(Rejection::OverMaxConnections), 2);
    }

    #[test]
    fn a_stalled_handshake_is_dropped_at_its_deadline() {
        let now = Instant::now();
        let mut app = App::new(config(Mode::Echo));
        let id = connect(&mut app, Listener::Main, now);
        feed(&mut app, id, b"GET / HTT", now);
        let deadline = app.poll_timeout(id).expect("a handshake deadline");
        assert_eq!(deadline, now + Duration::from_secs(10));
        app.handle_timeout(id, deadline - Duration::from_millis(1));
        assert_eq!(app.client_count(), 1, "not yet");
        app.handle_timeout(id, deadline);
        assert_eq!(app.client_count(), 0);
        assert_eq!(app.metrics.rejected(Rejection::HandshakeTimeout), 1);
    }
}

mod dispatch {
    use super::*;

    #[test]
    fn a_broadcast_reaches_every_member_once_and_its_sender_is_flushed_first() {
        let now = Instant::now();
        let mut app = App::new(Config { welcome: None, ..config(Mode::Broadcast) });
        let ids: Vec<usize> = (0..4).map(|_| upgraded(&mut app, now).0).collect();
        feed(&mut app, ids[2], &text("hello"), now);
        let written = flush_in_order(&mut app);
        assert_eq!(written[0].0, ids[2], "the sender first");
        let mut recipients: Vec<usize> = written.iter().map(|(id, _)| *id).collect();
        recipients.sort_unstable();
        assert_eq!(recipients, ids);
        assert!(written.iter().all(|(_, bytes)| *bytes == server_text("hello")));
        assert_eq!(app.metrics.fanout_deliveries, 4);
    }

    #[test]
    fn a_client_that_left_gets_nothing_more_and_its_close_is_counted() {
        let now = Instant::now();
        let mut app = App::new(Config { welcome: None, ..config(Mode::Broadcast) });
        let (a, _) = upgraded(&mut app, now);
        let (b, _) = upgraded(&mut app, now);
        feed(&mut app, b, &frame(true, 8, &1000u16.to_be_bytes()), now);
        flush(&mut app);
        app.handle_eof(b);
        assert_eq!(app.client_count(), 1);
        feed(&mut app, a, &text("alone"), now);
        let out = flush(&mut app);
        assert_eq!(out.keys().copied().collect::<Vec<_>>(), vec![a]);
        assert_eq!(app.metrics.fanout_deliveries, 1);
        assert!(app.metrics.render(&app.gauges()).contains("mioket_closes_total{code=\"1000\",by=\"client\"} 1"));
    }

    #[test]
    fn echo_mode_answers_only_the_sender_and_keeps_no_room() {
        let now = Instant::now();
        let (mut app, a) = pure_echo(now);
        let (_b, _) = upgraded(&mut app, now);
        // Two messages in one read: they queue up and leave in one flush.
        let through = feed(&mut app, a, &[text("back to me"), text("again")].concat(), now);
        assert_eq!(through, b"");
        let out = flush(&mut app);
        assert_eq!(out.len(), 1);
        assert_eq!(out[&a], [server_text("back to me"), server_text("again")].concat());
        assert!(app.rooms.is_empty());
    }

    #[test]
    fn a_small_echo_alone_in_its_read_is_written_at_once_and_one_behind_a_pong_waits_its_turn() {
        let now = Instant::now();
        let (mut app, a) = pure_echo(now);
        assert_eq!(feed(&mut app, a, &text("quick"), now), server_text("quick"));
        assert!(flush(&mut app).is_empty(), "nothing was queued");
        // A ping before it in the same read: its pong is queued, and the echo goes after.
        let through = feed(&mut app, a, &[frame(true, 9, b"p"), text("after")].concat(), now);
        assert_eq!(through, b"");
        assert_eq!(flush(&mut app)[&a], [vec![0x8A, 1, b'p'], server_text("after")].concat());
    }

    #[test]
    fn a_large_echo_is_written_through_and_only_the_rest_is_queued() {
        let now = Instant::now();
        let (mut app, a) = pure_echo(now);
        let payload = vec![7u8; WRITE_THROUGH_MIN];
        let mut input = frame(true, 2, &payload);
        let mut on_the_wire = Vec::new();
        app.handle_input(a, &mut input, now, |peer, parts| {
            assert_eq!(peer.0, 0);
            // The socket takes 1,000 bytes of it.
            let all = parts.concat();
            on_the_wire.extend_from_slice(&all[..1000]);
            1000
        });
        on_the_wire.extend(flush(&mut app).remove(&a).unwrap());
        assert_eq!(on_the_wire, server_binary(&payload));
    }

    #[test]
    fn an_echo_of_any_size_alone_in_its_read_is_written_through_and_the_rest_queued() {
        let now = Instant::now();
        let (mut app, a) = pure_echo(now);
        // Too large to sit inline in a chunk, far below WRITE_THROUGH_MIN.
        let payload = vec![5u8; 1000];
        assert_eq!(feed(&mut app, a, &frame(true, 2, &payload), now), server_binary(&payload));
        assert!(flush(&mut app).is_empty(), "nothing was queued");
        let mut input = frame(true, 2, &payload);
        let mut on_the_wire = Vec::new();
        app.handle_input(a, &mut input, now, |_, parts| {
            // The socket takes the header and 10 bytes.
            on_the_wire.extend_from_slice(&parts.concat()[..14]);
            14
        });
        on_the_wire.extend(flush(&mut app).remove(&a).unwrap());
        assert_eq!(on_the_wire, server_binary(&payload));
    }

    #[test]
    fn a_large_echo_behind_a_pong_in_the_same_read_is_queued_after_it() {
        let now = Instant::now();
        let (mut app, a) = pure_echo(now);
        let payload = vec![3u8; WRITE_THROUGH_MIN];
        let input = [frame(true, 9, b"p"), frame(true, 2, &payload)].concat();
        assert_eq!(feed(&mut app, a, &input, now), b"", "nothing ahead of the pong");
        assert_eq!(flush(&mut app)[&a], [vec![0x8A, 1, b'p'], server_binary(&payload)].concat());
    }

    #[test]
    fn a_small_echo_or_one_behind_queued_output_is_queued_not_written_through() {
        let now = Instant::now();
        let (mut app, a) = pure_echo(now);
        // A small echo before it in the same read waits in the queue: the large one
        // queues behind it.
        let input = [text("small"), frame(true, 2, &vec![1u8; WRITE_THROUGH_MIN])].concat();
        assert_eq!(feed(&mut app, a, &input, now), b"");
        assert_eq!(flush(&mut app)[&a].len(), 7 + 4 + WRITE_THROUGH_MIN);
    }
}

mod http_routes {
    use super::*;

    #[test]
    fn pages_metrics_and_health_on_the_main_port() {
        let now = Instant::now();
        let mut app = App::new(config(Mode::Broadcast));
        let page = http_answer(&mut app, Listener::Main, "GET /echo HTTP/1.1\r\nHost: x\r\n\r\n", now);
        assert!(page.starts_with("HTTP/1.1 200 OK\r\nContent-Type: text/html"));
        let metrics = http_answer(&mut app, Listener::Main, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", now);
        assert!(metrics.contains("mioket_http_requests_total 2"), "{metrics}");
        let health = http_answer(&mut app, Listener::Main, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", now);
        assert!(health.starts_with("HTTP/1.1 200 OK\r\n") && health.ends_with("ok\n"));
    }

    #[test]
    fn with_an_operator_port_metrics_live_only_there_and_it_serves_nothing_else() {
        let now = Instant::now();
        let mut app = App::new(Config { metrics_listen: Some("127.0.0.1:0".into()), ..config(Mode::Broadcast) });
        let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
        let main = http_answer(&mut app, Listener::Main, &get("/metrics"), now);
        assert!(main.starts_with("HTTP/1.1 404 "), "{main}");
        let operator = http_answer(&mut app, Listener::Operator, &get("/metrics"), now);
        assert!(operator.starts_with("HTTP/1.1 200 "));
        let page = http_answer(&mut app, Listener::Operator, &get("/"), now);
        assert!(page.starts_with("HTTP/1.1 404 "));
        let upgrade = http_answer(&mut app, Listener::Operator, std::str::from_utf8(UPGRADE).unwrap(), now);
        assert!(upgrade.starts_with("HTTP/1.1 404 "), "no WebSockets on the operator port");
    }
}

mod stopping {
    use super::*;

    #[test]
    fn a_stop_signal_closes_everyone_with_1001_refuses_upgrades_and_health_says_503() {
        let now = Instant::now();
        let mut app = App::new(Config { welcome: None, ..config(Mode::Broadcast) });
        let (a, _) = upgraded(&mut app, now);
        assert_eq!(app.handle_stop_signal(now), Stop::Closing);
        assert_eq!(flush(&mut app)[&a], close_frame(1001, "server shutting down"));
        assert_eq!(app.stop_deadline(), Some(now + Duration::from_secs(10)));
        let (_, refused) = upgraded(&mut app, now);
        assert!(refused.starts_with(b"HTTP/1.1 503 "));
        let health = http_answer(&mut app, Listener::Main, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", now);
        assert!(health.starts_with("HTTP/1.1 503 ") && health.ends_with("shutting down\n"));
        assert!(!app.poll_stop(now), "clients are still closing");
        assert!(app.poll_stop(now + Duration::from_secs(10)), "close-timeout passed");
    }

    #[test]
    fn the_stop_comes_once_every_client_is_gone_or_at_a_second_signal() {
        let now = Instant::now();
        let mut app = App::new(Config { welcome: None, ..config(Mode::Broadcast) });
        let (a, _) = upgraded(&mut app, now);
        app.handle_stop_signal(now);
        flush(&mut app);
        feed(&mut app, a, &frame(true, 8, &1001u16.to_be_bytes()), now);
        flush(&mut app);
        assert!(app.poll_stop(now), "the last client finished its close handshake");

        let mut app = App::new(config(Mode::Broadcast));
        upgraded(&mut app, now);
        app.handle_stop_signal(now);
        assert_eq!(app.handle_stop_signal(now), Stop::Now);
        assert!(app.poll_stop(now));
    }
}

mod memory_back {
    use super::*;

    #[test]
    fn a_slow_consumer_cut_off_asks_for_a_trim_at_most_once_a_second() {
        let now = Instant::now();
        let limits = Limits { max_backpressure: 1 << 20, ..Limits::default() };
        let mut app = App::new(Config { welcome: None, history: 0, limits, ..config(Mode::Broadcast) });
        let (sender, _) = upgraded(&mut app, now);
        let (_slow, _) = upgraded(&mut app, now);
        let message = text(&"x".repeat(1000));
        // Only the sender reads; the other falls behind until it is cut off.
        while app.metrics.slow_consumers == 0 {
            feed(&mut app, sender, &message, now);
            let mut dirty = Vec::new();
            app.drain_dirty_into(&mut dirty);
            for &id in &dirty {
                app.flush(id, &mut |_: &mut Peer, slices: &[IoSlice<'_>]| match id == sender {
                    true => Ok(slices.iter().map(|s| s.len()).sum()),
                    false => Err(std::io::ErrorKind::WouldBlock.into()),
                });
            }
        }
        assert_eq!(app.poll_trim(now), Some(now), "due at once");
        app.handle_trimmed(now);
        assert_eq!(app.poll_trim(now), None);
    }
}

mod auth;
mod deflate;
mod queued;
mod rooms;
mod upgrade;

/// Issue 19, finding 10: HTTP judged from the head; unfinished input within one budget.
mod unfinished_input {
    use super::*;

    fn api(max_unfinished_memory: usize) -> App<Peer> {
        let limits = Limits { max_message: 100_000, ..Limits::default() };
        App::new(Config { api_token: Some("s3cret".into()), max_unfinished_memory, limits, ..config(Mode::Broadcast) })
    }

    fn publish_head(token: &str, length: usize) -> String {
        format!("POST /api/rooms/x/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Length: {length}\r\n\r\n")
    }

    /// Whether the app's sum is what the connections hold.
    fn sum_holds(app: &App<Peer>) -> bool {
        app.unfinished == app.clients.iter().map(|(_, c)| c.conn.unfinished_memory()).sum::<usize>()
    }

    #[test]
    fn a_refused_head_is_answered_before_its_body_and_only_a_passed_one_reads_it() {
        let now = Instant::now();
        let mut app = api(1 << 20);
        let wrong = connect(&mut app, Listener::Main, now);
        feed(&mut app, wrong, publish_head("nope", 50_000).as_bytes(), now);
        let answer = String::from_utf8(flush(&mut app).remove(&wrong).unwrap()).unwrap();
        assert!(answer.starts_with("HTTP/1.1 401 "), "{answer}");
        feed(&mut app, wrong, &[b'a'; 50_000], now);
        assert_eq!(app.clients[wrong].conn.unfinished_memory(), 0, "a refused body is read past");
        let right = connect(&mut app, Listener::Main, now);
        feed(&mut app, right, publish_head("s3cret", 5).as_bytes(), now);
        assert!(flush(&mut app).remove(&right).is_none(), "waits for its body");
        feed(&mut app, right, b"hello", now);
        let answer = String::from_utf8(flush(&mut app).remove(&right).unwrap()).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200 ") && answer.ends_with(r#"{"room":"x","seq":1}"#), "{answer}");
        assert_eq!(app.metrics.http_requests, 2, "a request read in two steps is one request");
        assert!(sum_holds(&app));
    }

    #[test]
    fn over_the_budget_the_largest_holder_is_refused_and_the_others_go_on() {
        let now = Instant::now();
        let mut app = api(100_000);
        let (small, _) = upgraded(&mut app, now);
        let (large, _) = upgraded(&mut app, now);
        let body = connect(&mut app, Listener::Main, now);
        feed(&mut app, body, publish_head("s3cret", 90_000).as_bytes(), now);
        feed(&mut app, body, &[b'b'; 20_000], now);
        let small_frame = frame(true, 2, &[1; 30_000]);
        let large_frame = frame(true, 2, &[2; 90_000]);
        feed(&mut app, small, &small_frame[..25_000], now);
        feed(&mut app, large, &large_frame[..40_000], now);
        assert!(app.unfinished <= 100_000 && sum_holds(&app));
        assert!(app.clients[large].conn.is_open() && app.metrics.unfinished_refused == 0);
        // The large message grows past the budget: it goes, the others stay.
        let mut retimed = Vec::new();
        app.drain_retimed_into(&mut retimed);
        feed(&mut app, large, &large_frame[40_000..70_000], now);
        assert!(app.unfinished <= 100_000 && sum_holds(&app));
        assert_eq!(app.metrics.unfinished_refused, 1);
        // Closing: its deadline (the close's) is set again.
        retimed.clear();
        app.drain_retimed_into(&mut retimed);
        assert!(retimed.contains(&large), "{retimed:?}");
        let out = flush(&mut app);
        assert!(out[&large].ends_with(&close_frame(1013, "server busy: too much input held unfinished")));
        assert!(app.clients[small].conn.is_open());
        // Then the body grows largest: refused with 503.
        feed(&mut app, body, &[b'b'; 60_000], now);
        assert!(app.unfinished <= 100_000 && sum_holds(&app));
        let out = String::from_utf8(flush(&mut app).remove(&body).unwrap()).unwrap();
        assert!(
            out.starts_with("HTTP/1.1 503 ") && out.ends_with("server busy: too much input held unfinished\n"),
            "{out}"
        );
        // The small message completes; closing everyone leaves nothing counted.
        feed(&mut app, small, &small_frame[25_000..], now);
        app.handle_stop_signal(now);
        for id in [small, large, body] {
            app.handle_eof(id);
        }
        assert!(sum_holds(&app));
    }
}
