//! Rooms, mioket.v1 and the HTTP API in virtual time: bytes in, envelopes out.

use super::*;
use proptest::prelude::*;
use serde_json::{json, Value};

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

fn rooms_config() -> Config {
    Config { welcome: Some("hi".into()), history: 3, ..Config::default() }
}

fn upgrade_request(target: &str, v1: bool) -> String {
    let protocol = if v1 { "Sec-WebSocket-Protocol: chat, mioket.v1\r\n" } else { "" };
    format!(
        "GET {target} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{protocol}\r\n"
    )
}

/// A client upgraded on `target`; returns its id and everything it was sent (the
/// 101 head included).
fn join_at(app: &mut App<Peer>, target: &str, v1: bool, now: Instant) -> (usize, Vec<u8>) {
    let id = connect(app, Listener::Main, now);
    feed(app, id, upgrade_request(target, v1).as_bytes(), now);
    let out = flush(app).remove(&id).unwrap_or_default();
    (id, out)
}

/// The frames after an HTTP head (if any), as JSON for text frames of JSON, else as
/// `{"text": ...}` / `{"binary": [...]}`.
pub(super) fn frames(bytes: &[u8]) -> Vec<Value> {
    let mut rest = match bytes.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(end) if bytes.starts_with(b"HTTP/") => &bytes[end + 4..],
        _ => bytes,
    };
    let mut out = Vec::new();
    while !rest.is_empty() {
        let (header, n) = crate::frame::parse_header(rest).unwrap().expect("a whole frame");
        let len = header.len as usize;
        let payload = &rest[n..n + len];
        out.push(match header.opcode {
            Opcode::Text => serde_json::from_slice(payload)
                .unwrap_or_else(|_| json!({"text": String::from_utf8(payload.to_vec()).unwrap()})),
            Opcode::Binary => json!({ "binary": payload }),
            other => json!({ "control": format!("{other:?}") }),
        });
        rest = &rest[n + len..];
    }
    out
}

fn send_op(app: &mut App<Peer>, id: usize, op: Value, now: Instant) {
    feed(app, id, &text(&op.to_string()), now);
}

/// Everything flushed to `id` since the last flush, as frames.
fn received(app: &mut App<Peer>, id: usize) -> Vec<Value> {
    frames(&flush(app).remove(&id).unwrap_or_default())
}

fn answer_of(app: &mut App<Peer>, request: &str, now: Instant) -> String {
    http_answer(app, Listener::Main, request, now)
}

/// An HTTP answer, and what the other clients were sent meanwhile.
fn answer_and_out(app: &mut App<Peer>, request: &str, now: Instant) -> (String, HashMap<usize, Vec<u8>>) {
    let id = connect(app, Listener::Main, now);
    feed(app, id, request.as_bytes(), now);
    let mut out = flush(app);
    (String::from_utf8(out.remove(&id).unwrap_or_default()).unwrap(), out)
}

#[test]
fn a_v1_client_gets_the_subprotocol_a_welcome_and_the_history_as_envelopes() {
    let now = Instant::now();
    let mut app = App::new(rooms_config());
    let (plain, _) = join_at(&mut app, "/lobby", false, now);
    for s in ["one", "two", "three", "four"] {
        feed(&mut app, plain, &text(s), now);
    }
    let (_, out) = join_at(&mut app, "/lobby", true, now);
    let head = String::from_utf8_lossy(&out[..out.windows(4).position(|w| w == b"\r\n\r\n").unwrap()]).to_string();
    assert!(head.contains("\r\nSec-WebSocket-Protocol: mioket.v1"), "{head}");
    let got = frames(&out);
    let epoch = got[0]["epoch"].as_str().unwrap().to_string();
    assert_eq!(
        got,
        vec![
            json!({"type":"welcome","room":"lobby","epoch":epoch,"seq":4,"online":2,"text":"hi"}),
            json!({"type":"message","room":"lobby","seq":2,"data":"two"}),
            json!({"type":"message","room":"lobby","seq":3,"data":"three"}),
            json!({"type":"message","room":"lobby","seq":4,"data":"four"}),
        ]
    );
    // A plain client offering other protocols only is served plain.
    let id = connect(&mut app, Listener::Main, now);
    let request = upgrade_request("/lobby", false).replace("\r\n\r\n", "\r\nSec-WebSocket-Protocol: chat\r\n\r\n");
    feed(&mut app, id, request.as_bytes(), now);
    let out = flush(&mut app).remove(&id).unwrap();
    assert!(!String::from_utf8_lossy(&out).contains("Sec-WebSocket-Protocol"));
    assert_eq!(frames(&out)[0], json!({"text": "hi"}));
}

#[test]
fn rooms_are_separate_and_plain_and_v1_members_share_one() {
    let now = Instant::now();
    let mut app = App::new(Config { welcome: None, history: 0, ..rooms_config() });
    let (plain, _) = join_at(&mut app, "/a", false, now);
    let (v1, _) = join_at(&mut app, "/a", true, now);
    let (other, _) = join_at(&mut app, "/b", true, now);
    flush(&mut app);
    feed(&mut app, plain, &text("from plain"), now);
    feed(&mut app, plain, &frame(true, 2, &[0, 1, 255]), now);
    send_op(&mut app, v1, json!({"op":"publish","data":"from v1","id":"m1"}), now);
    send_op(&mut app, v1, json!({"op":"publish","room":"a","b64":"AAEC"}), now);
    feed(&mut app, v1, &frame(true, 2, &[9]), now);
    let mut out = flush(&mut app);
    assert_eq!(
        frames(&out.remove(&plain).unwrap()),
        vec![
            json!({"text":"from plain"}),
            json!({"binary":[0, 1, 255]}),
            json!({"text":"from v1"}),
            json!({"binary":[0, 1, 2]}),
            json!({"binary":[9]}),
        ]
    );
    assert_eq!(
        frames(&out.remove(&v1).unwrap()),
        vec![
            json!({"type":"message","room":"a","seq":1,"data":"from plain"}),
            json!({"type":"message","room":"a","seq":2,"b64":"AAH/"}),
            json!({"type":"ack","id":"m1","room":"a","seq":3}),
            json!({"type":"message","room":"a","seq":3,"data":"from v1"}),
            json!({"type":"message","room":"a","seq":4,"b64":"AAEC"}),
            json!({"type":"message","room":"a","seq":5,"b64":"CQ=="}),
        ]
    );
    // Room b heard nothing but its presence-free silence.
    assert_eq!(out.remove(&other), None);
}

#[test]
fn join_leave_and_publish_to_other_rooms() {
    let now = Instant::now();
    let mut app = App::new(Config { welcome: None, ..rooms_config() });
    let (a, _) = join_at(&mut app, "/", true, now);
    let (b, _) = join_at(&mut app, "/news", false, now);
    feed(&mut app, b, &text("old news"), now);
    flush(&mut app);
    send_op(&mut app, a, json!({"op":"join","room":"news","id":"j"}), now);
    let got = received(&mut app, a);
    assert_eq!(got[0]["type"], "welcome");
    assert_eq!(
        (got[0]["room"].clone(), got[0]["seq"].clone(), got[0]["online"].clone()),
        (json!("news"), json!(1), json!(2))
    );
    assert_eq!(got[1], json!({"type":"message","room":"news","seq":1,"data":"old news"}));
    send_op(&mut app, a, json!({"op":"publish","room":"news","data":"hello news"}), now);
    // The default room is still the path's ("").
    send_op(&mut app, a, json!({"op":"publish","data":"home"}), now);
    let mut out = flush(&mut app);
    assert_eq!(frames(&out.remove(&b).unwrap()), vec![json!({"text":"hello news"})]);
    assert_eq!(
        frames(&out.remove(&a).unwrap()),
        vec![
            json!({"type":"message","room":"news","seq":2,"data":"hello news"}),
            json!({"type":"message","room":"","seq":1,"data":"home"}),
        ]
    );
    send_op(&mut app, a, json!({"op":"leave","room":"news"}), now);
    feed(&mut app, b, &text("after"), now);
    assert_eq!(received(&mut app, a), Vec::<Value>::new());
    // Leaving the path's room leaves no default room.
    send_op(&mut app, a, json!({"op":"leave"}), now);
    send_op(&mut app, a, json!({"op":"publish","data":"nowhere","id":"n"}), now);
    assert_eq!(received(&mut app, a), vec![json!({"type":"error","id":"n","reason":"room not joined"})]);
    send_op(&mut app, a, json!({"op":"join","room":""}), now);
    send_op(&mut app, a, json!({"op":"publish","data":"back home"}), now);
    let got = received(&mut app, a);
    assert_eq!(got.last().unwrap(), &json!({"type":"message","room":"","seq":2,"data":"back home"}));
    assert_eq!(app.metrics.ops, [4, 2, 2, 0]);
}

#[test]
fn every_bad_op_gets_its_error_and_changes_nothing() {
    let now = Instant::now();
    let mut app = App::new(Config { welcome: None, max_rooms_per_connection: 2, max_rooms: 3, ..rooms_config() });
    let (a, _) = join_at(&mut app, "/a", true, now);
    join_at(&mut app, "/full1", false, now);
    flush(&mut app);
    let long_name = "x".repeat(129);
    for (op, id, reason) in [
        (json!("not an object"), None, "invalid json"),
        (json!({"op":"fly","id":"1"}), Some("1"), "unknown op"),
        (json!({"op":"publish","id":"2"}), Some("2"), "invalid field"),
        (json!({"op":"publish","data":"x","id":3}), None, "invalid id"),
        (json!({"op":"publish","room":"b","data":"x","id":"4"}), Some("4"), "room not joined"),
        (json!({"op":"publish","room":"a\u{7}","data":"x","id":"5"}), Some("5"), "invalid room name"),
        (json!({"op":"join","room":long_name,"id":"6"}), Some("6"), "invalid room name"),
        (json!({"op":"join","room":"a","id":"7"}), Some("7"), "already joined"),
        (json!({"op":"leave","room":"zzz","id":"8"}), Some("8"), "room not joined"),
    ] {
        send_op(&mut app, a, op.clone(), now);
        assert_eq!(received(&mut app, a), vec![json!({"type":"error","id":id,"reason":reason})], "{op}");
    }
    feed(&mut app, a, &text("{\"op\":"), now);
    assert_eq!(received(&mut app, a), vec![json!({"type":"error","id":null,"reason":"invalid json"})]);
    // Three rooms exist at most: a, full1, and one more, each with a member (an empty
    // room would make room).
    let (c, _) = join_at(&mut app, "/c", false, now);
    flush(&mut app);
    send_op(&mut app, a, json!({"op":"join","room":"d","id":"10"}), now);
    assert_eq!(received(&mut app, a), vec![json!({"type":"error","id":"10","reason":"room limit reached"})]);
    send_op(&mut app, a, json!({"op":"join","room":"c","id":"11"}), now);
    assert_eq!(received(&mut app, a)[0]["type"], "welcome");
    let _ = c;
    send_op(&mut app, a, json!({"op":"join","room":"full1","id":"12"}), now);
    assert_eq!(received(&mut app, a), vec![json!({"type":"error","id":"12","reason":"too many rooms"})]);
    assert!(app.clients[a].conn.is_open());
    assert_eq!(app.rooms.get(app.rooms.find("a").unwrap()).unwrap().topic.last_seq(), 0, "nothing was published");
    let metrics = app.metrics.render(&app.gauges());
    for line in [
        "mioket_op_errors_total{reason=\"invalid json\"} 2",
        "mioket_op_errors_total{reason=\"room limit reached\"} 1",
        "mioket_op_errors_total{reason=\"too many rooms\"} 1",
        "mioket_rooms 3",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }
}

#[test]
fn the_paths_room_is_the_default_again_after_a_rejoin_even_if_it_was_freed_meanwhile() {
    let now = Instant::now();
    let mut app = App::new(Config { welcome: None, ..rooms_config() });
    let (a, _) = join_at(&mut app, "/h", true, now);
    // Never had a message: freed when a leaves, made again (a new epoch) by the join.
    send_op(&mut app, a, json!({"op":"leave"}), now);
    assert_eq!(app.rooms.find("h"), None);
    send_op(&mut app, a, json!({"op":"join","room":"h"}), now);
    send_op(&mut app, a, json!({"op":"publish","data":"x","id":"p"}), now);
    let got = received(&mut app, a);
    assert_eq!(got[0]["type"], "welcome");
    assert_eq!(got[1], json!({"type":"ack","id":"p","room":"h","seq":1}));
}

#[test]
fn join_and_leave_churn_keeps_no_room_and_new_rooms_are_bounded_per_second() {
    let t0 = Instant::now();
    let mut app = App::new(Config { welcome: None, max_rooms: 10, rooms_per_second: 5, ..rooms_config() });
    let (a, _) = join_at(&mut app, "/a", true, t0);
    let churn = |app: &mut App<Peer>, from: usize, now: Instant| {
        let mut reasons = Vec::new();
        for i in from..from + 8 {
            send_op(app, a, json!({"op":"join","room":format!("r{i}")}), now);
            send_op(app, a, json!({"op":"leave","room":format!("r{i}")}), now);
            reasons.extend(received(app, a).iter().map(|f| f["reason"].as_str().unwrap_or("welcome").to_string()));
        }
        reasons
    };
    // Five new rooms in a second, then `too many new rooms`; none is kept once left.
    let mut expected = vec!["welcome"; 5];
    expected.extend(["too many new rooms", "room not joined"].repeat(3));
    assert_eq!(churn(&mut app, 0, t0), expected);
    assert_eq!(app.rooms.len(), 1, "only the path's room, which has a member");
    assert_eq!(app.rooms.expired, 5);
    // An existing room is not a new one.
    join_at(&mut app, "/b", false, t0);
    send_op(&mut app, a, json!({"op":"join","room":"b"}), t0);
    send_op(&mut app, a, json!({"op":"leave","room":"b"}), t0);
    assert_eq!(received(&mut app, a)[0]["type"], "welcome");
    // A second later, five more.
    assert_eq!(churn(&mut app, 100, t0 + Duration::from_secs(1)), expected);
    // Others still make rooms: the table never filled.
    let (_, out) = join_at(&mut app, "/fresh", false, t0 + Duration::from_secs(1));
    assert!(out.starts_with(b"HTTP/1.1 101 "));
}

#[test]
fn an_upgrade_with_a_bad_room_or_since_gets_400_and_one_beyond_max_rooms_503() {
    let now = Instant::now();
    let mut app = App::new(Config { max_rooms: 1, ..rooms_config() });
    for (target, v1, status) in [
        ("/a%00b", true, "400 Bad Request"),
        ("/%zz", false, "400 Bad Request"),
        ("/lobby?since=x&epoch=e", true, "400 Bad Request"),
        ("/lobby?since=-1", true, "400 Bad Request"),
    ] {
        let (_, out) = join_at(&mut app, target, v1, now);
        let out = String::from_utf8(out).unwrap();
        assert!(out.starts_with(&format!("HTTP/1.1 {status}\r\n")), "{target}: {out}");
        assert!(out.contains("invalid"), "{out}");
    }
    // A plain client's query is not a resume.
    let (_, out) = join_at(&mut app, "/lobby?since=x", false, now);
    assert!(out.starts_with(b"HTTP/1.1 101 "));
    let (_, out) = join_at(&mut app, "/other", false, now);
    assert!(out.starts_with(b"HTTP/1.1 503 "), "{}", String::from_utf8_lossy(&out));
    assert!(String::from_utf8_lossy(&out).contains("too many rooms"));
}

#[test]
fn a_resume_gets_exactly_what_was_missed_or_says_it_cannot() {
    let now = Instant::now();
    let mut app = App::new(Config { welcome: None, ..rooms_config() });
    let (a, out) = join_at(&mut app, "/r", true, now);
    let epoch = frames(&out)[0]["epoch"].as_str().unwrap().to_string();
    for i in 1..=5 {
        send_op(&mut app, a, json!({"op":"publish","data":format!("m{i}")}), now);
    }
    flush(&mut app);
    let resume = |app: &mut App<Peer>, since: u64, epoch: &str| {
        let (_, out) = join_at(app, &format!("/r?since={since}&epoch={epoch}"), true, now);
        frames(&out).iter().map(|f| (f["recovered"].clone(), f["seq"].clone())).collect::<Vec<_>>()
    };
    // History 3 keeps 3..5: since 2, 3, 4, 5 are complete.
    assert_eq!(
        resume(&mut app, 2, &epoch),
        vec![(json!(true), json!(5)), (Value::Null, json!(3)), (Value::Null, json!(4)), (Value::Null, json!(5))]
    );
    assert_eq!(resume(&mut app, 5, &epoch), vec![(json!(true), json!(5))]);
    assert_eq!(
        resume(&mut app, 1, &epoch),
        vec![(json!(false), json!(5)), (Value::Null, json!(3)), (Value::Null, json!(4)), (Value::Null, json!(5))]
    );
    assert_eq!(resume(&mut app, 6, &epoch).len(), 4, "a seq this epoch never had");
    assert_eq!(resume(&mut app, 5, "0000000000000000")[0].0, json!(false));
    // The join op resumes the same way.
    let (b, _) = join_at(&mut app, "/elsewhere", true, now);
    send_op(&mut app, b, json!({"op":"join","room":"r","since":4,"epoch":epoch}), now);
    let got = received(&mut app, b);
    assert_eq!((got[0]["recovered"].clone(), got.len()), (json!(true), 2));
    assert_eq!(got[1]["seq"], 5);
    assert_eq!(app.metrics.resumes, [3, 3]);
}

#[test]
fn presence_is_merged_to_one_update_a_second_per_room() {
    let t0 = Instant::now();
    let mut app = App::new(Config { welcome: None, ..rooms_config() });
    let (a, _) = join_at(&mut app, "/p", true, t0);
    assert_eq!(app.poll_housekeeping().map(|t| t <= t0), Some(true));
    app.handle_housekeeping(t0);
    assert_eq!(received(&mut app, a), Vec::<Value>::new(), "its welcome told it");
    for _ in 0..5 {
        join_at(&mut app, "/p", false, t0);
    }
    let (b, _) = join_at(&mut app, "/p", true, t0);
    // One update, a second after the last.
    let at = app.poll_housekeeping().unwrap();
    assert_eq!(at, t0 + PRESENCE_EVERY);
    app.handle_housekeeping(at);
    let mut out = flush(&mut app);
    assert_eq!(frames(&out.remove(&a).unwrap()), vec![json!({"type":"presence","room":"p","online":7})]);
    assert_eq!(frames(&out.remove(&b).unwrap()), vec![json!({"type":"presence","room":"p","online":7})]);
    assert!(out.is_empty(), "plain members get no presence");
    app.handle_eof(b);
    let at = app.poll_housekeeping().unwrap();
    assert_eq!(at, t0 + 2 * PRESENCE_EVERY);
    app.handle_housekeeping(at);
    assert_eq!(received(&mut app, a), vec![json!({"type":"presence","room":"p","online":6})]);
    assert_eq!(app.metrics.presence_updates, 2);
}

#[test]
fn an_empty_room_is_freed_after_its_ttl_and_comes_back_with_a_new_epoch() {
    let t0 = Instant::now();
    let ttl = Duration::from_secs(5);
    let mut app = App::new(Config { welcome: None, room_ttl: ttl, ..rooms_config() });
    let (a, out) = join_at(&mut app, "/t", true, t0);
    let epoch = frames(&out)[0]["epoch"].clone();
    send_op(&mut app, a, json!({"op":"publish","data":"x"}), t0);
    feed(&mut app, a, &frame(true, 8, &1000u16.to_be_bytes()), t0);
    flush(&mut app);
    app.handle_eof(a);
    assert_eq!(app.rooms.len(), 1, "kept for resumes");
    let at = app.poll_housekeeping().unwrap();
    app.handle_housekeeping(at);
    assert_eq!(app.rooms.len(), 1);
    let at = app.poll_housekeeping().unwrap();
    assert!(at >= t0 + ttl);
    app.handle_housekeeping(at);
    assert!(app.rooms.is_empty());
    let (_, out) = join_at(&mut app, &format!("/t?since=1&epoch={}", epoch.as_str().unwrap()), true, at);
    let welcome = &frames(&out)[0];
    assert_ne!(welcome["epoch"], epoch);
    assert_eq!((welcome["seq"].clone(), welcome["recovered"].clone()), (json!(0), json!(false)));
}

mod stats;

mod api {
    use super::*;

    fn api_app() -> App<Peer> {
        App::new(Config { welcome: None, api_token: Some("s3cret".into()), ..rooms_config() })
    }

    fn post(room: &str, token: &str, content_type: &str, body: &[u8]) -> String {
        let mut request = format!(
            "POST /api/rooms/{room}/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        request.push_str(std::str::from_utf8(body).unwrap_or("\u{fffd}"));
        request
    }

    fn status(answer: &str) -> u16 {
        answer[9..12].parse().unwrap()
    }

    fn body(answer: &str) -> &str {
        &answer[answer.find("\r\n\r\n").unwrap() + 4..]
    }

    #[test]
    fn a_post_publishes_to_every_member_and_answers_the_seq() {
        let now = Instant::now();
        let mut app = api_app();
        let (plain, _) = join_at(&mut app, "/a/b", false, now);
        let (v1, _) = join_at(&mut app, "/a%2Fb", true, now);
        flush(&mut app);
        let (answer, mut out) =
            answer_and_out(&mut app, &post("a/b", "s3cret", "text/plain", b"from the backend"), now);
        assert_eq!(status(&answer), 200, "{answer}");
        assert!(answer.contains("Content-Type: application/json"));
        assert_eq!(serde_json::from_str::<Value>(body(&answer)).unwrap(), json!({"room":"a/b","seq":1}));
        assert_eq!(frames(&out.remove(&plain).unwrap()), vec![json!({"text":"from the backend"})]);
        assert_eq!(
            frames(&out.remove(&v1).unwrap()),
            vec![json!({"type":"message","room":"a/b","seq":1,"data":"from the backend"})]
        );
        let binary = post("a%2Fb", "s3cret", "application/octet-stream", b"\x01\x02");
        let (answer, mut out) = answer_and_out(&mut app, &binary, now);
        assert_eq!(serde_json::from_str::<Value>(body(&answer)).unwrap(), json!({"room":"a/b","seq":2}));
        assert_eq!(frames(&out.remove(&plain).unwrap()), vec![json!({"binary":[1, 2]})]);
        assert_eq!(
            frames(&out.remove(&v1).unwrap()),
            vec![json!({"type":"message","room":"a/b","seq":2,"b64":"AQI="})]
        );
        // A room nobody joined yet is made, and keeps the message for its first member.
        let answer = answer_of(&mut app, &post("", "s3cret", "text/plain", b"to the default room"), now);
        assert_eq!(serde_json::from_str::<Value>(body(&answer)).unwrap(), json!({"room":"","seq":1}));
        let (_, out) = join_at(&mut app, "/", false, now);
        assert_eq!(frames(&out), vec![json!({"text":"to the default room"})]);
        let list =
            answer_of(&mut app, "GET /api/rooms HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\n\r\n", now);
        let list: Value = serde_json::from_str(body(&list)).unwrap();
        let mut rows: Vec<(Value, Value, Value, Value)> = list
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r["room"].clone(), r["online"].clone(), r["seq"].clone(), r["history"].clone()))
            .collect();
        rows.sort_by_key(|r| r.0.to_string());
        assert_eq!(rows, vec![(json!(""), json!(1), json!(1), json!(1)), (json!("a/b"), json!(2), json!(2), json!(2))]);
        assert_eq!(app.metrics.api_publishes, 3);
    }

    /// The size rule is one (`app/publish.rs`), each source refused its way: a
    /// binary message within --max-message whose base64 envelope is not.
    #[test]
    fn the_size_rule_refuses_every_source_its_way() {
        let now = Instant::now();
        let limits = crate::config::Limits { max_message: 1000, ..crate::config::Limits::default() };
        let mut app = App::new(Config { limits, ..api_app().config });
        let message = vec![7u8; 900];
        let (plain, _) = join_at(&mut app, "/r", false, now);
        let (v1, _) = join_at(&mut app, "/r", true, now);
        flush(&mut app);
        feed(&mut app, v1, &crate::protocol::tests::frame(true, 2, &message), now);
        assert_eq!(received(&mut app, v1), vec![json!({"type":"error","id":null,"reason":"message too big"})]);
        let answer = answer_of(&mut app, &post("r", "s3cret", "application/octet-stream", &message), now);
        assert_eq!(status(&answer), 413, "{answer}");
        feed(&mut app, plain, &crate::protocol::tests::frame(true, 2, &message), now);
        let closed = flush(&mut app).remove(&plain).unwrap();
        assert_eq!((closed[0], &closed[2..4]), (0x88, &1009u16.to_be_bytes()[..]), "a close with 1009");
        assert_eq!(app.rooms.get(app.rooms.find("r").unwrap()).unwrap().topic.last_seq(), 0, "nothing was published");
        assert_eq!(app.metrics.api_publishes, 0);
    }

    #[test]
    fn every_refusal_has_its_status() {
        let now = Instant::now();
        let mut app = api_app();
        let long = "a".repeat(1 << 20 | 1);
        let head = |extra: &str| {
            format!("POST /api/rooms/x/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\n{extra}\r\n")
        };
        for (request, expected) in [
            (post("x", "wrong", "text/plain", b"hi"), 401),
            (post("x", "s3cre", "text/plain", b"hi"), 401),
            (head(""), 411),
            (head("Transfer-Encoding: chunked\r\n"), 411),
            (head(&format!("Content-Length: {}\r\n", long.len())), 413),
            (post("%zz", "s3cret", "text/plain", b"hi"), 400),
            (post("a%01", "s3cret", "text/plain", b"hi"), 400),
            ("GET /api/rooms/x/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\n\r\n".into(), 405),
            (
                "POST /api/rooms HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\nContent-Length: 0\r\n\r\n"
                    .into(),
                405,
            ),
            ("GET /api/nothing HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\n\r\n".into(), 404),
            ("POST /index.html HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".into(), 405),
            ("DELETE /api/rooms HTTP/1.1\r\nHost: x\r\n\r\n".into(), 405),
        ] {
            let answer = answer_of(&mut app, &request, now);
            assert_eq!(status(&answer), expected, "{request:.120}\n{answer}");
        }
        let mut bad_utf8 = post("x", "s3cret", "text/plain", b"ab").into_bytes();
        *bad_utf8.last_mut().unwrap() = 0xFF;
        let id = connect(&mut app, Listener::Main, now);
        feed(&mut app, id, &bad_utf8, now);
        let answer = String::from_utf8(flush(&mut app).remove(&id).unwrap()).unwrap();
        assert_eq!(status(&answer), 400, "{answer}");
        assert!(app.rooms.find("x").is_none_or(|r| app.rooms.get(r).unwrap().topic.last_seq() == 0));
        // Without a token the API does not exist.
        let mut off = App::new(rooms_config());
        assert_eq!(status(&answer_of(&mut off, &post("x", "", "text/plain", b"hi"), now)), 404);
    }

    #[test]
    fn a_body_in_pieces_is_read_whole_and_a_slow_one_is_dropped_at_the_handshake_deadline() {
        let now = Instant::now();
        let mut app = api_app();
        let request = post("x", "s3cret", "text/plain", b"0123456789");
        let id = connect(&mut app, Listener::Main, now);
        for byte in request.as_bytes() {
            feed(&mut app, id, &[*byte], now);
        }
        let answer = String::from_utf8(flush(&mut app).remove(&id).unwrap()).unwrap();
        assert_eq!(body(&answer), "{\"room\":\"x\",\"seq\":1}");
        let slow = connect(&mut app, Listener::Main, now);
        feed(&mut app, slow, &request.as_bytes()[..request.len() - 3], now);
        let deadline = app.poll_timeout(slow).unwrap();
        assert_eq!(deadline, now + Duration::from_secs(10));
        app.handle_timeout(slow, deadline);
        assert!(app.client_io(slow).is_none());
        assert_eq!(app.metrics.rejected(Rejection::HandshakeTimeout), 1);
    }
}

/// The model-based property test of issue 12: random joins, leaves, publishes,
/// disconnects and resumes by v1 clients over a few rooms; every member's sequence
/// per room must be duplicate-free, gap-free and increasing from its join point, and
/// `recovered` true exactly when the model says so.
mod model {
    use super::*;
    use std::collections::BTreeMap;

    const ROOMS: [&str; 2] = ["r0", "r1"];
    const CLIENTS: usize = 3;
    const HISTORY: usize = 3;

    #[derive(Clone, Debug)]
    enum Step {
        /// Client `c` connects by path to room `r` (resuming if it saw that room).
        Connect(usize, usize),
        Join(usize, usize),
        Leave(usize, usize),
        Publish(usize, usize),
        Disconnect(usize),
        /// Time passes: presence, and empty rooms freed (TTL 0).
        Tick,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            3 => (0..CLIENTS, 0..ROOMS.len()).prop_map(|(c, r)| Step::Connect(c, r)),
            2 => (0..CLIENTS, 0..ROOMS.len()).prop_map(|(c, r)| Step::Join(c, r)),
            2 => (0..CLIENTS, 0..ROOMS.len()).prop_map(|(c, r)| Step::Leave(c, r)),
            5 => (0..CLIENTS, 0..ROOMS.len()).prop_map(|(c, r)| Step::Publish(c, r)),
            2 => (0..CLIENTS).prop_map(Step::Disconnect),
            1 => Just(Step::Tick),
        ]
    }

    /// What a client remembers of a room: the epoch and the last seq it saw.
    #[derive(Clone, Debug, PartialEq)]
    struct Seen {
        epoch: String,
        last: u64,
    }

    /// The model of a room: its epoch as the server told it, its last seq, and
    /// whether it still exists (with TTL 0 an empty room goes at the next tick).
    #[derive(Default)]
    struct ModelRoom {
        epoch: Option<String>,
        last: u64,
        members: usize,
    }

    /// A room that never had a message is freed when its last member leaves.
    fn forget_if_unused(room: &mut ModelRoom) {
        if room.members == 0 && room.last == 0 {
            *room = ModelRoom::default();
        }
    }

    struct Client {
        id: Option<usize>,
        /// Rooms it is in now.
        joined: Vec<usize>,
        seen: BTreeMap<usize, Seen>,
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]
        #[test]
        fn every_member_gets_every_message_once_in_order_and_recovered_is_exact(
            steps in proptest::collection::vec(step(), 1..120),
        ) {
            let mut now = Instant::now();
            let config = Config { welcome: None, history: HISTORY, room_ttl: Duration::ZERO, ..rooms_config() };
            let mut app = App::new(config);
            let mut rooms: Vec<ModelRoom> = ROOMS.iter().map(|_| ModelRoom::default()).collect();
            let mut clients: Vec<Client> =
                (0..CLIENTS).map(|_| Client { id: None, joined: Vec::new(), seen: BTreeMap::new() }).collect();
            let mut published = 0u64;
            for step in steps {
                // The op, and for a join the resume the client asks for.
                let (c, frames_to_send, join): (usize, Vec<u8>, Option<usize>) = match step {
                    Step::Tick => {
                        now += Duration::from_secs(2);
                        while app.poll_housekeeping().is_some_and(|t| t <= now) {
                            app.handle_housekeeping(now);
                        }
                        for room in rooms.iter_mut().filter(|r| r.members == 0) {
                            *room = ModelRoom::default();
                        }
                        (0, Vec::new(), None)
                    }
                    Step::Connect(c, r) => {
                        if clients[c].id.is_some() {
                            continue;
                        }
                        let target = match clients[c].seen.get(&r) {
                            Some(seen) => format!("/{}?since={}&epoch={}", ROOMS[r], seen.last, seen.epoch),
                            None => format!("/{}", ROOMS[r]),
                        };
                        let id = connect(&mut app, Listener::Main, now);
                        clients[c].id = Some(id);
                        (c, upgrade_request(&target, true).into_bytes(), Some(r))
                    }
                    Step::Join(c, r) => {
                        if clients[c].id.is_none() || clients[c].joined.contains(&r) {
                            continue;
                        }
                        let op = match clients[c].seen.get(&r) {
                            Some(seen) => json!({"op":"join","room":ROOMS[r],"since":seen.last,"epoch":seen.epoch}),
                            None => json!({"op":"join","room":ROOMS[r]}),
                        };
                        (c, text(&op.to_string()), Some(r))
                    }
                    Step::Leave(c, r) => {
                        if clients[c].id.is_none() || !clients[c].joined.contains(&r) {
                            continue;
                        }
                        clients[c].joined.retain(|&j| j != r);
                        rooms[r].members -= 1;
                        forget_if_unused(&mut rooms[r]);
                        (c, text(&json!({"op":"leave","room":ROOMS[r]}).to_string()), None)
                    }
                    Step::Publish(c, r) => {
                        if clients[c].id.is_none() || !clients[c].joined.contains(&r) {
                            continue;
                        }
                        rooms[r].last += 1;
                        // Unique ids (a repeated one is a retry: not published again).
                        published += 1;
                        let id = format!("p{published}");
                        let op = json!({"op":"publish","room":ROOMS[r],"data":"m","id":id});
                        (c, text(&op.to_string()), None)
                    }
                    Step::Disconnect(c) => {
                        let Some(id) = clients[c].id.take() else { continue };
                        for r in clients[c].joined.drain(..) {
                            rooms[r].members -= 1;
                            forget_if_unused(&mut rooms[r]);
                        }
                        app.handle_eof(id);
                        (c, Vec::new(), None)
                    }
                };
                // What the model says a join must answer.
                let expect_recovered = join.map(|r| {
                    clients[c].seen.get(&r).map(|seen| {
                        let room = &rooms[r];
                        room.epoch.as_deref() == Some(&seen.epoch)
                            && seen.last <= room.last
                            && room.last - seen.last <= HISTORY as u64
                    })
                });
                if let Some(r) = join {
                    clients[c].joined.push(r);
                    rooms[r].members += 1;
                }
                if let (Some(id), false) = (clients[c].id, frames_to_send.is_empty()) {
                    feed(&mut app, id, &frames_to_send, now);
                }
                // Everyone's output, checked against what each has seen.
                for (id, bytes) in flush(&mut app) {
                    let Some(c) = clients.iter().position(|cl| cl.id == Some(id)) else { continue };
                    for f in frames(&bytes) {
                        let r = ROOMS.iter().position(|name| f["room"] == *name);
                        match f["type"].as_str() {
                            Some("welcome") => {
                                let r = r.unwrap();
                                prop_assert_eq!(Some(r), join);
                                let epoch = f["epoch"].as_str().unwrap().to_string();
                                let seq = f["seq"].as_u64().unwrap();
                                let room = &mut rooms[r];
                                if room.epoch.is_none() {
                                    // A new room: its epoch is new, its seqs start over.
                                    prop_assert_eq!(seq, 0);
                                    room.epoch = Some(epoch.clone());
                                    room.last = 0;
                                }
                                prop_assert_eq!(room.epoch.as_deref(), Some(epoch.as_str()));
                                prop_assert_eq!(seq, room.last);
                                let recovered = f.get("recovered").and_then(Value::as_bool);
                                prop_assert_eq!(recovered, expect_recovered.flatten());
                                let seen = clients[c].seen.entry(r).or_insert(Seen { epoch: epoch.clone(), last: 0 });
                                if recovered != Some(true) {
                                    // No resume, or a gap: the replay starts over.
                                    *seen = Seen { epoch, last: room.last.saturating_sub(HISTORY as u64) };
                                }
                            }
                            Some("message") => {
                                let r = r.unwrap();
                                prop_assert!(clients[c].joined.contains(&r));
                                let seq = f["seq"].as_u64().unwrap();
                                let seen = clients[c].seen.get_mut(&r).unwrap();
                                prop_assert_eq!(seq, seen.last + 1, "gap or duplicate in {}", ROOMS[r]);
                                seen.last = seq;
                            }
                            Some("ack") => {
                                // Before the publisher's own copy: the seq its copy will have.
                                let r = r.unwrap();
                                prop_assert_eq!(f["seq"].as_u64(), Some(clients[c].seen[&r].last + 1));
                            }
                            Some("presence") => {}
                            other => prop_assert!(false, "unexpected {:?}: {}", other, f),
                        }
                    }
                }
                // Every member is up to date with every room it is in.
                for client in clients.iter().filter(|cl| cl.id.is_some()) {
                    for &r in &client.joined {
                        prop_assert_eq!(client.seen[&r].last, rooms[r].last);
                    }
                }
            }
        }
    }
}
