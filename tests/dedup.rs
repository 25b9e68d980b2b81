//! Publishes that a retry cannot duplicate (`--dedup-window`), over real sockets: a
//! v1 publish's `id` and an API publish's `Idempotency-Key` are published once per room
//! within the window, a repeat answered with the first publish's seq; on one node,
//! and across nodes over a real redis-server (skipped when it is not installed).

mod common;

use std::time::{Duration, Instant};

use common::redis::RedisServer;
use common::*;
use serde_json::{json, Value};

fn node(extra: &[&str]) -> Server {
    let mut args = vec!["--api-token", "t", "--ping-interval", "0", "--welcome", "hi"];
    args.extend_from_slice(extra);
    Server::start(&args)
}

fn redis_node(redis: &RedisServer, extra: &[&str]) -> Server {
    let url = redis.url();
    let mut args = vec!["--redis", &url];
    args.extend_from_slice(extra);
    node(&args)
}

fn joined(server: &Server, room: &str) -> Ws {
    let mut ws = connect_v1(server, &format!("/{room}"));
    let w = envelope(&mut ws);
    assert_eq!(w["type"], "welcome", "{w}");
    ws
}

fn publish(ws: &mut Ws, data: &str, id: &str) {
    send_text(ws, &json!({"op": "publish", "data": data, "id": id}).to_string());
}

/// Reads until the ack of `id` (or an error for it); returns it, and the messages
/// (seq, data) seen on the way.
fn ack(ws: &mut Ws, id: &str) -> (Value, Vec<(u64, String)>) {
    let mut messages = Vec::new();
    loop {
        let v = envelope(ws);
        match v["type"].as_str() {
            Some("message") => messages.push(message(&v)),
            Some("ack" | "error") if v["id"] == id => return (v, messages),
            _ => {}
        }
    }
}

fn message(v: &Value) -> (u64, String) {
    (v["seq"].as_u64().unwrap(), v["data"].as_str().unwrap_or_default().to_string())
}

/// The next `count` messages (seq, data), then nothing more for a while.
fn exactly(ws: &mut Ws, count: usize) -> Vec<(u64, String)> {
    let mut messages = Vec::new();
    while messages.len() < count {
        let v = envelope(ws);
        if v["type"] == "message" {
            messages.push(message(&v));
        }
    }
    assert!(quiet(ws, Duration::from_millis(500)), "more than {count} messages after {messages:?}");
    messages
}

fn metric(server: &Server, name: &str) -> f64 {
    let body = http(server.addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").1;
    let line = body.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_else(|| panic!("{name}: {body}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

#[test]
fn the_same_id_twice_is_delivered_once_and_both_are_acked_with_its_seq() {
    let s = node(&[]);
    let mut reader = joined(&s, "r");
    let mut writer = joined(&s, "r");
    publish(&mut writer, "m1", "x");
    let (first, _) = ack(&mut writer, "x");
    publish(&mut writer, "m1", "x");
    let (again, _) = ack(&mut writer, "x");
    assert_eq!(first, json!({"type": "ack", "id": "x", "room": "r", "seq": 1}));
    assert_eq!(again, first);
    publish(&mut writer, "m2", "y");
    assert_eq!(ack(&mut writer, "y").0["seq"], 2, "the next id is published");
    assert_eq!(exactly(&mut reader, 2), vec![(1, "m1".into()), (2, "m2".into())]);
    assert_eq!(metric(&s, "mioket_publish_duplicates_total"), 1.0);
    // 0 turns it off: the same id is published again.
    let off = node(&["--dedup-window", "0"]);
    let mut reader = joined(&off, "r");
    let mut writer = joined(&off, "r");
    for _ in 0..2 {
        publish(&mut writer, "m1", "x");
    }
    assert_eq!(exactly(&mut reader, 2), vec![(1, "m1".into()), (2, "m1".into())]);
}

#[test]
fn two_connections_with_one_id_in_one_room_publish_once_and_ids_are_per_room() {
    let s = node(&[]);
    let mut reader = joined(&s, "r");
    let (mut a, mut b) = (joined(&s, "r"), joined(&s, "r"));
    publish(&mut a, "from a", "same");
    assert_eq!(ack(&mut a, "same").0["seq"], 1);
    publish(&mut b, "from b", "same");
    assert_eq!(ack(&mut b, "same").0["seq"], 1, "b gets a's seq: its message is not published");
    assert_eq!(exactly(&mut reader, 1), vec![(1, "from a".into())]);
    // Another room's id space is its own.
    let mut other = joined(&s, "other");
    publish(&mut other, "elsewhere", "same");
    assert_eq!(ack(&mut other, "same").0, json!({"type": "ack", "id": "same", "room": "other", "seq": 1}));
}

#[test]
fn an_idempotency_key_twice_answers_the_same_body_and_publishes_once() {
    let s = node(&[]);
    let mut reader = joined(&s, "r");
    let first = api_post(&s, "r", "hello", Some("order-7"));
    assert_eq!(first, (200, r#"{"room":"r","seq":1}"#.to_string()));
    assert_eq!(api_post(&s, "r", "hello", Some(" order-7 ")), first);
    assert_eq!(exactly(&mut reader, 1), vec![(1, "hello".into())]);
    // Without a key, or with one too long (as a v1 id: 64 bytes at most).
    assert_eq!(api_post(&s, "r", "no key", None).0, 200);
    let long = "k".repeat(65);
    let (status, body) = api_post(&s, "r", "long", Some(&long));
    assert_eq!((status, body.as_str()), (400, "invalid Idempotency-Key\n"));
    assert_eq!(exactly(&mut reader, 1), vec![(2, "no key".into())]);
}

#[test]
fn a_v1_id_and_an_equal_idempotency_key_are_one_id() {
    let s = node(&[]);
    let mut reader = joined(&s, "r");
    let mut writer = joined(&s, "r");
    publish(&mut writer, "by v1", "k1");
    assert_eq!(ack(&mut writer, "k1").0["seq"], 1);
    assert_eq!(api_post(&s, "r", "by api", Some("k1")), (200, r#"{"room":"r","seq":1}"#.to_string()));
    // And the other way round.
    assert_eq!(api_post(&s, "r", "by api", Some("k2")).0, 200);
    publish(&mut writer, "by v1", "k2");
    assert_eq!(ack(&mut writer, "k2").0["seq"], 2);
    assert_eq!(exactly(&mut reader, 2), vec![(1, "by v1".into()), (2, "by api".into())]);
}

#[test]
fn after_the_window_the_same_id_is_published_again() {
    let s = node(&["--dedup-window", "0.3"]);
    let mut reader = joined(&s, "r");
    let mut writer = joined(&s, "r");
    publish(&mut writer, "m", "x");
    assert_eq!(ack(&mut writer, "x").0["seq"], 1);
    std::thread::sleep(Duration::from_millis(500));
    publish(&mut writer, "m", "x");
    assert_eq!(ack(&mut writer, "x").0["seq"], 2);
    assert_eq!(exactly(&mut reader, 2), vec![(1, "m".into()), (2, "m".into())]);
}

#[test]
fn a_connection_cut_before_its_ack_then_retried_on_a_new_connection_is_published_once() {
    let s = node(&[]);
    let mut reader = joined(&s, "r");
    let mut writer = joined(&s, "r");
    publish(&mut writer, "once", "cut-1");
    drop(writer);
    let mut again = joined(&s, "r");
    publish(&mut again, "once", "cut-1");
    let (v, _) = ack(&mut again, "cut-1");
    assert_eq!(v["seq"], 1, "{v}");
    assert_eq!(exactly(&mut reader, 1), vec![(1, "once".into())]);
}

/// Publish on node A, retry on node B (a new connection, A's cut before its ack, and
/// an API retry): one delivery on both nodes, every answer with the first seq.
#[test]
fn across_two_nodes_a_retry_on_the_other_node_is_published_once() {
    need_redis!();
    let redis = RedisServer::start(false);
    let (a, b) = (redis_node(&redis, &[]), redis_node(&redis, &[]));
    wait_backplane_up(&[&a, &b]);
    let mut reader_a = joined(&a, "x");
    let mut reader_b = joined(&b, "x");
    let mut on_a = joined(&a, "x");
    publish(&mut on_a, "one", "id-1");
    assert_eq!(ack(&mut on_a, "id-1").0["seq"], 1);
    let mut on_b = joined(&b, "x");
    publish(&mut on_b, "one", "id-1");
    let (v, _) = ack(&mut on_b, "id-1");
    assert_eq!(v, json!({"type": "ack", "id": "id-1", "room": "x", "seq": 1}));
    // Cut before its ack, retried on the other node.
    let mut cut = joined(&a, "x");
    publish(&mut cut, "two", "id-2");
    drop(cut);
    publish(&mut on_b, "two", "id-2");
    assert_eq!(ack(&mut on_b, "id-2").0["seq"], 2);
    // An API publish retried on the other node, with the same answer.
    let first = api_post(&a, "x", "three", Some("id-3"));
    assert_eq!(first, (200, r#"{"room":"x","seq":3}"#.to_string()));
    assert_eq!(api_post(&b, "x", "three", Some("id-3")), first);
    let expected: Vec<(u64, String)> = vec![(1, "one".into()), (2, "two".into()), (3, "three".into())];
    assert_eq!(exactly(&mut reader_a, 3), expected);
    assert_eq!(exactly(&mut reader_b, 3), expected);
    // id-1 and id-3 are repeats on b; the cut publish of id-2 was a repeat on a (then it
    // is counted only if its connection was still there for the answer), or on b, or it
    // never got in (b's was the only one).
    let duplicates = metric(&a, "mioket_publish_duplicates_total") + metric(&b, "mioket_publish_duplicates_total");
    assert!((2.0..=3.0).contains(&duplicates), "{duplicates}");
    assert!(metric(&b, "mioket_publish_duplicates_total") >= 2.0);
    // Redis keeps the record under the room's hash tag, with the window as its TTL.
    let ttl: u64 = redis.command(&[b"PTTL", b"mioket:{x}:id:id-1"]).trim_start_matches(':').parse().unwrap_or(0);
    assert!(ttl > 100_000 && ttl <= 120_000, "the record expires after --dedup-window: {ttl} ms");
}

/// Redis stops between a publish and its reply, and is restarted (with its data): the
/// publish is refused ("may have been published"), and its retry is delivered exactly
/// once, whether Redis ran the first one or not.
#[test]
fn a_redis_restart_between_publish_and_reply_then_a_retry_is_delivered_once() {
    need_redis!();
    let mut redis = RedisServer::start(true);
    let (a, b) = (redis_node(&redis, &[]), redis_node(&redis, &[]));
    wait_backplane_up(&[&a, &b]);
    let mut reader = joined(&b, "rr");
    let mut writer = joined(&a, "rr");
    writer.get_ref().set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    publish(&mut writer, "before", "b0");
    assert_eq!(ack(&mut writer, "b0").0["seq"], 1);

    redis.signal("-STOP");
    publish(&mut writer, "retried", "r1");
    let started = Instant::now();
    let (v, _) = ack(&mut writer, "r1");
    assert_eq!((v["type"].as_str(), v["reason"].as_str()), (Some("error"), Some("backplane unavailable")), "{v}");
    assert!(started.elapsed() >= Duration::from_secs(2), "refused when the reply is overdue");
    redis.signal("-CONT");
    // Redis runs what waited in its socket (perhaps the publish), then dies.
    std::thread::sleep(Duration::from_millis(300));
    redis.kill();
    redis.restart();
    wait_backplane_up(&[&a, &b]);

    publish(&mut writer, "retried", "r1");
    let (v, _) = ack(&mut writer, "r1");
    assert_eq!(v["type"], "ack", "{v}");
    assert_eq!(v["seq"], 2, "{v}");
    publish(&mut writer, "after", "a1");
    assert_eq!(ack(&mut writer, "a1").0["seq"], 3);
    let got = exactly(&mut reader, 3);
    assert_eq!(got, vec![(1, "before".into()), (2, "retried".into()), (3, "after".into())]);
}
