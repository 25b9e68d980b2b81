//! `GET /api/stats` (app/stats.rs): its guard, its numbers under a known load, the
//! busiest rooms by messages between two calls, and its cost with 10,000 rooms.

use super::*;

const STATS: &str = "GET /api/stats HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\n\r\n";

fn stats_app() -> App<Peer> {
    App::new(Config { welcome: None, api_token: Some("s3cret".into()), ..rooms_config() })
}

fn stats(app: &mut App<Peer>, now: Instant) -> Value {
    let answer = answer_of(app, STATS, now);
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"), "{answer}");
    serde_json::from_str(&answer[answer.find("\r\n\r\n").unwrap() + 4..]).unwrap()
}

fn rows(table: &Value) -> Vec<(String, u64, u64)> {
    let rows = table.as_array().unwrap().iter();
    rows.map(|r| {
        (r["room"].as_str().unwrap().to_string(), r["members"].as_u64().unwrap(), r["messages"].as_u64().unwrap())
    })
    .collect()
}

#[test]
fn stats_are_404_without_a_token_401_with_a_wrong_one_and_get_only() {
    let now = Instant::now();
    let mut off = App::new(rooms_config());
    assert!(answer_of(&mut off, STATS, now).starts_with("HTTP/1.1 404 "));
    let mut app = stats_app();
    let wrong = STATS.replace("s3cret", "guess");
    assert!(answer_of(&mut app, &wrong, now).starts_with("HTTP/1.1 401 "));
    let no_header = "GET /api/stats HTTP/1.1\r\nHost: x\r\n\r\n";
    assert!(answer_of(&mut app, no_header, now).starts_with("HTTP/1.1 401 "));
    let post = STATS.replace("GET", "POST");
    assert!(answer_of(&mut app, &post, now).starts_with("HTTP/1.1 405 "));
    // On the operator's port too, and in echo mode (the rest of the API is off there).
    let operator = http_answer(&mut app, Listener::Operator, STATS, now);
    assert!(operator.starts_with("HTTP/1.1 200 OK\r\n"), "{operator}");
    let mut echo = App::new(Config { mode: Mode::Echo, ..stats_app().config });
    assert!(answer_of(&mut echo, STATS, now).starts_with("HTTP/1.1 200 OK\r\n"));
}

#[test]
fn stats_count_a_known_load() {
    let now = Instant::now();
    let mut app = stats_app();
    let a: Vec<usize> = (0..3).map(|_| join_at(&mut app, "/a", false, now).0).collect();
    let _b: Vec<usize> = (0..2).map(|_| join_at(&mut app, "/b", true, now).0).collect();
    for i in 0..4 {
        feed(&mut app, a[i % 3], &text("hello"), now);
    }
    flush(&mut app);
    let first = stats(&mut app, now);
    assert_eq!(first["version"], json!(env!("CARGO_PKG_VERSION")));
    let c = &first["connections"];
    assert_eq!((c["websockets"].clone(), c["plain"].clone(), c["v1"].clone()), (json!(5), json!(3), json!(2)));
    assert_eq!((c["tls"].clone(), c["deflate"].clone()), (json!(0), json!(0)));
    assert_eq!(first["rooms"], json!(2));
    assert_eq!(first["messages_in"], json!(4));
    // Each message to the three members of /a (its sender too), and the v1 clients' welcomes.
    assert_eq!(first["deliveries_out"], json!(4 * 3 + 2));
    assert!(first["bytes_in"].as_u64().unwrap() > 0 && first["bytes_out"].as_u64().unwrap() > 0);
    assert_eq!(rows(&first["busiest_by_members"]), vec![("a".into(), 3, 0), ("b".into(), 2, 0)]);
    // No interval yet: nothing counts as recent.
    assert_eq!((first["interval_ms"].clone(), rows(&first["busiest_by_messages"])), (Value::Null, vec![]));
    assert_eq!(first["backplane"], Value::Null);
    assert_eq!(first["nodes"], json!([{"id": "local", "uptime_s": 0, "connections": 5}]));
    assert!(first["memory"]["rss_bytes"].as_u64().unwrap() > 0);
    for reason in ["slow_consumer", "rate_limited", "invalid_token", "client", "disconnected"] {
        assert_eq!(first["closes"][reason], json!(0), "{reason}");
    }
    for reason in ["bad_handshake", "origin", "invalid_token", "rate_limited", "too_many_connections"] {
        assert_eq!(first["refusals"][reason], json!(0), "{reason}");
    }

    // Two messages in /a and a new room with one: the busiest by messages since the call.
    let later = now + Duration::from_millis(1500);
    feed(&mut app, a[0], &text("one"), later);
    feed(&mut app, a[1], &text("two"), later);
    let (c, _) = join_at(&mut app, "/c", false, later);
    feed(&mut app, c, &text("three"), later);
    feed(&mut app, a[2], &frame(true, 0x8, &1000u16.to_be_bytes()), later);
    flush(&mut app);
    app.handle_eof(a[2]);
    let second = stats(&mut app, later);
    assert_eq!(second["interval_ms"], json!(1500));
    assert_eq!(rows(&second["busiest_by_messages"]), vec![("a".into(), 2, 2), ("c".into(), 1, 1)]);
    assert_eq!(second["messages_in"], json!(7));
    assert_eq!(second["closes"]["client"], json!(1));
    // Nothing since: an empty table, and the baseline goes when nobody asks.
    let third = stats(&mut app, later);
    assert_eq!(rows(&third["busiest_by_messages"]), vec![]);
    assert!(app.poll_housekeeping().is_some());
    app.handle_housekeeping(later + Duration::from_secs(60));
    assert!(app.baseline.is_none());
}

#[test]
fn stats_count_closes_where_they_are_decided() {
    let now = Instant::now();
    let mut app = stats_app();
    let (big, _) = join_at(&mut app, "/a", false, now);
    let max = app.config.limits.max_message;
    feed(&mut app, big, &frame(true, 0x1, &vec![b'x'; max + 1]), now);
    let (unmasked, _) = join_at(&mut app, "/a", false, now);
    feed(&mut app, unmasked, &[0x81, 0x01, b'x'], now);
    let (_, _) = join_at(&mut app, "/a", false, now);
    app.handle_stop_signal(now);
    flush(&mut app);
    let stats = stats(&mut app, now);
    let closes = &stats["closes"];
    let counted = ["too_big", "protocol_error", "shutdown"].map(|r| closes[r].clone());
    assert_eq!(counted, [json!(1), json!(1), json!(1)], "{stats}");
}

/// The cost the README quotes: `cargo test --release --lib stats_with_10000_rooms -- --nocapture`.
#[test]
fn stats_with_10000_rooms_cost_milliseconds() {
    let now = Instant::now();
    let mut app = App::new(Config { max_rooms: 20_000, ..stats_app().config });
    for i in 0..10_000 {
        let (id, _) = join_at(&mut app, &format!("/room-{i}"), false, now);
        feed(&mut app, id, &text("x"), now);
    }
    flush(&mut app);
    stats(&mut app, now);
    let started = std::time::Instant::now();
    let runs = 10;
    let mut bytes = 0;
    for _ in 0..runs {
        bytes = app.stats_json(now).len();
    }
    let each = started.elapsed() / runs;
    println!("/api/stats with 10,000 rooms and 10,000 connections: {each:?} to build, {bytes} bytes");
    assert!(each < Duration::from_secs(1), "{each:?}");
}
