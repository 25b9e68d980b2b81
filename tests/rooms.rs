//! Rooms, the mioket.v1 subprotocol and the HTTP API over real sockets, with
//! tungstenite (an independent implementation) and raw HTTP as the other end.

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use tungstenite::Message;

fn send(ws: &mut Ws, op: Value) {
    send_text(ws, &op.to_string());
}

fn post(server: &Server, room: &str, token: &str, content_type: &str, body: &str) -> (u16, String) {
    let request = format!(
        "POST /api/rooms/{room}/messages HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    http(server.addr, &request)
}

mod rooms_by_path {
    use super::*;

    #[test]
    fn each_path_is_a_room_of_its_own_with_its_own_history() {
        let server = Server::start(&["--welcome", "", "--history", "5"]);
        let mut lobby = connect_plain(&server, "/lobby");
        let mut other = connect_plain(&server, "/other");
        let mut root = connect_plain(&server, "/");
        send_text(&mut lobby, "in the lobby");
        assert_eq!(text(&mut lobby), "in the lobby");
        send_text(&mut root, "at the root");
        assert_eq!(text(&mut root), "at the root");
        assert!(quiet(&mut other, Duration::from_millis(300)), "another room hears nothing");
        // A newcomer gets its own room's history only; percent-encoding names the same room.
        let mut a_b = connect_plain(&server, "/a/b");
        send_text(&mut a_b, "a/b says hi");
        assert_eq!(text(&mut a_b), "a/b says hi");
        let mut a_b_encoded = connect_plain(&server, "/a%2Fb");
        assert_eq!(text(&mut a_b_encoded), "a/b says hi");
        let mut lobby2 = connect_plain(&server, "/lobby?whatever=1");
        assert_eq!(text(&mut lobby2), "in the lobby");
        let mut root2 = connect_plain(&server, "/");
        assert_eq!(text(&mut root2), "at the root");
    }

    #[test]
    fn a_bad_room_name_gets_400_with_a_reason_and_past_max_rooms_an_upgrade_gets_503() {
        let server = Server::start(&["--max-rooms", "2"]);
        for path in ["/a%00b", "/%zz", "/%FF", &format!("/{}", "x".repeat(129))] {
            let mut s = raw(&server);
            let request = UPGRADE.replacen("GET / ", &format!("GET {path} "), 1);
            s.write_all(request.as_bytes()).unwrap();
            let answer = String::from_utf8(read_to_end(&mut s)).unwrap();
            assert!(answer.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{path}: {answer}");
            assert!(answer.contains("invalid room name"), "{answer}");
        }
        let _a = connect_plain(&server, "/one");
        let _b = connect_plain(&server, "/two");
        let mut s = raw(&server);
        s.write_all(UPGRADE.replacen("GET / ", "GET /three ", 1).as_bytes()).unwrap();
        let answer = String::from_utf8(read_to_end(&mut s)).unwrap();
        assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
        // Existing rooms still take members.
        let mut again = connect_plain(&server, "/one");
        assert_eq!(text(&mut again), WELCOME);
    }
}

mod v1 {
    use super::*;

    #[test]
    fn a_ping_op_is_answered_with_a_pong_carrying_its_id() {
        let server = Server::start(&["--welcome", "", "--history", "0"]);
        let mut v1 = connect_v1(&server, "/lobby");
        assert_eq!(envelope(&mut v1)["type"], "welcome");
        send(&mut v1, json!({"op":"ping","id":"hb-1"}));
        assert_eq!(envelope(&mut v1), json!({"type":"pong","id":"hb-1"}));
        send(&mut v1, json!({"op":"ping"}));
        assert_eq!(envelope(&mut v1), json!({"type":"pong","id":null}));
        // A ping is no publish: the room's seq has not moved.
        let mut other = connect_v1(&server, "/lobby");
        assert_eq!(envelope(&mut other)["seq"], 0);
        let (_, metrics) = http(server.addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(metrics.contains("mioket_ops_total{op=\"ping\"} 2"), "{metrics}");
    }

    #[test]
    fn welcome_history_acks_and_interop_with_plain_clients() {
        let server = Server::start(&["--welcome", "hello there", "--history", "10"]);
        let mut plain = connect_plain(&server, "/lobby");
        assert_eq!(text(&mut plain), "hello there");
        send_text(&mut plain, "plain text");
        assert_eq!(text(&mut plain), "plain text");
        let mut v1 = connect_v1(&server, "/lobby");
        let welcome = envelope(&mut v1);
        let epoch = welcome["epoch"].as_str().unwrap().to_string();
        assert_eq!(epoch.len(), 16);
        assert_eq!(
            welcome,
            json!({"type":"welcome","room":"lobby","epoch":epoch,"seq":1,"online":2,"text":"hello there"})
        );
        assert_eq!(envelope(&mut v1), json!({"type":"message","room":"lobby","seq":1,"data":"plain text"}));
        send(&mut v1, json!({"op":"publish","data":"from v1 \"quoted\"","id":"m-1"}));
        assert_eq!(envelope(&mut v1), json!({"type":"ack","id":"m-1","room":"lobby","seq":2}));
        assert_eq!(envelope(&mut v1), json!({"type":"message","room":"lobby","seq":2,"data":"from v1 \"quoted\""}));
        assert_eq!(text(&mut plain), "from v1 \"quoted\"");
        // Binary both ways: b64 in envelopes, binary frames for plain clients.
        v1.send(Message::binary(vec![0u8, 1, 2])).unwrap();
        assert_eq!(envelope(&mut v1), json!({"type":"message","room":"lobby","seq":3,"b64":"AAEC"}));
        assert_eq!(next_message(&mut plain), Message::binary(vec![0u8, 1, 2]));
        plain.send(Message::binary(vec![255u8])).unwrap();
        assert_eq!(next_message(&mut plain), Message::binary(vec![255u8]));
        assert_eq!(envelope(&mut v1), json!({"type":"message","room":"lobby","seq":4,"b64":"/w=="}));
        send(&mut v1, json!({"op":"publish","b64":"AAEC/w==","id":"b"}));
        assert_eq!(envelope(&mut v1)["type"], "ack");
        assert_eq!(envelope(&mut v1)["b64"], "AAEC/w==");
        assert_eq!(next_message(&mut plain), Message::binary(vec![0u8, 1, 2, 255]));
    }

    #[test]
    fn joins_leaves_and_errors_keep_the_connection_open() {
        let server = Server::start(&["--welcome", "", "--max-rooms-per-connection", "2"]);
        let mut a = connect_v1(&server, "/home");
        assert_eq!(envelope(&mut a)["room"], "home");
        let mut news = connect_plain(&server, "/news");
        send(&mut a, json!({"op":"join","room":"news"}));
        let welcome = envelope(&mut a);
        assert_eq!(
            (welcome["type"].clone(), welcome["room"].clone(), welcome["online"].clone()),
            (json!("welcome"), json!("news"), json!(2))
        );
        send_text(&mut news, "breaking");
        assert_eq!(text(&mut news), "breaking");
        assert_eq!(envelope(&mut a), json!({"type":"message","room":"news","seq":1,"data":"breaking"}));
        for (op, id, reason) in [
            (json!({"op":"join","room":"third","id":"j3"}), json!("j3"), "too many rooms"),
            (json!({"op":"join","room":"news","id":"again"}), json!("again"), "already joined"),
            (json!({"op":"publish","room":"elsewhere","data":"x","id":"p"}), json!("p"), "room not joined"),
            (json!({"op":"dance"}), Value::Null, "unknown op"),
            (json!({"op":"join","room":"bad\u{1}name","id":"n"}), json!("n"), "invalid room name"),
            (json!({"op":"publish","data":"x","id":"x".repeat(65)}), Value::Null, "invalid id"),
        ] {
            send(&mut a, op.clone());
            assert_eq!(envelope(&mut a), json!({"type":"error","id":id,"reason":reason}), "{op}");
        }
        send_text(&mut a, "{not json");
        assert_eq!(envelope(&mut a), json!({"type":"error","id":null,"reason":"invalid json"}));
        send(&mut a, json!({"op":"leave","room":"news"}));
        send_text(&mut news, "after the leave");
        assert_eq!(text(&mut news), "after the leave");
        send(&mut a, json!({"op":"publish","data":"still here","id":"s"}));
        assert_eq!(envelope(&mut a)["type"], "ack");
        assert_eq!(envelope(&mut a), json!({"type":"message","room":"home","seq":1,"data":"still here"}));
    }

    #[test]
    fn presence_tells_the_online_count_at_most_once_a_second() {
        let server = Server::start(&["--welcome", ""]);
        let mut a = connect_v1(&server, "/p");
        assert_eq!(envelope(&mut a)["online"], 1);
        let started = Instant::now();
        let others: Vec<Ws> = (0..5).map(|_| connect_plain(&server, "/p")).collect();
        // The five joins come as one or two updates, the last telling 6.
        let mut updates = Vec::new();
        while updates.last() != Some(&json!(6)) {
            let v: Value = serde_json::from_str(&text(&mut a)).unwrap();
            assert_eq!(v["type"], "presence");
            assert_eq!(v["room"], "p");
            updates.push(v["online"].clone());
        }
        assert!(updates.len() <= 2, "{updates:?}");
        assert!(started.elapsed() < Duration::from_secs(3));
        drop(others);
        let v: Value = serde_json::from_str(&text(&mut a)).unwrap();
        assert_eq!(v["type"], "presence");
    }
}

mod resume {
    use super::*;

    /// Connects to `/r`, publishes `count` messages, and returns the epoch.
    fn room_with(server: &Server, count: usize) -> (Ws, String) {
        let mut a = connect_v1(server, "/r");
        let epoch = envelope(&mut a)["epoch"].as_str().unwrap().to_string();
        for i in 1..=count {
            send(&mut a, json!({"op":"publish","data":format!("m{i}")}));
            assert_eq!(envelope(&mut a)["seq"], i);
        }
        (a, epoch)
    }

    fn seqs_after_welcome(ws: &mut Ws, count: usize) -> Vec<u64> {
        (0..count).map(|_| envelope(ws)["seq"].as_u64().unwrap()).collect()
    }

    #[test]
    fn a_reconnect_gets_exactly_the_missed_messages_and_nothing_else() {
        let server = Server::start(&["--welcome", "", "--history", "10"]);
        let (mut a, epoch) = room_with(&server, 6);
        let mut b = connect_v1(&server, &format!("/r?since=3&epoch={epoch}"));
        let welcome = envelope(&mut b);
        assert_eq!((welcome["recovered"].clone(), welcome["seq"].clone()), (json!(true), json!(6)));
        assert_eq!(seqs_after_welcome(&mut b, 3), vec![4, 5, 6]);
        assert!(quiet(&mut b, Duration::from_millis(300)), "nothing else");
        // Live messages go on from there.
        send(&mut a, json!({"op":"publish","data":"live"}));
        assert_eq!(envelope(&mut b)["seq"], 7);
        // Up to date: recovered, nothing replayed.
        let mut c = connect_v1(&server, &format!("/r?since=7&epoch={epoch}"));
        assert_eq!(envelope(&mut c)["recovered"], true);
        assert!(quiet(&mut c, Duration::from_millis(300)));
        // The join op resumes the same way.
        let mut d = connect_v1(&server, "/elsewhere");
        envelope(&mut d);
        send(&mut d, json!({"op":"join","room":"r","since":5,"epoch":epoch}));
        assert_eq!(envelope(&mut d)["recovered"], true);
        assert_eq!(seqs_after_welcome(&mut d, 2), vec![6, 7]);
    }

    #[test]
    fn a_gap_or_another_epoch_says_recovered_false_and_replays_what_is_kept() {
        let server = Server::start(&["--welcome", "", "--history", "3"]);
        let (_a, epoch) = room_with(&server, 6);
        for query in [
            format!("since=1&epoch={epoch}"),
            "since=5&epoch=0000000000000000".into(),
            "since=5".into(),
            format!("since=9&epoch={epoch}"),
        ] {
            let mut b = connect_v1(&server, &format!("/r?{query}"));
            let welcome = envelope(&mut b);
            assert_eq!(welcome["recovered"], false, "{query}");
            assert_eq!(seqs_after_welcome(&mut b, 3), vec![4, 5, 6], "{query}");
        }
        let (status, body) = http(server.addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(status, 200);
        assert!(body.contains("mioket_resumes_total{outcome=\"not_recovered\"} 4"), "{body}");
    }

    #[test]
    fn an_empty_room_outlives_a_short_outage_and_is_freed_after_room_ttl() {
        let server = Server::start(&["--welcome", "", "--room-ttl", "1"]);
        let (a, epoch) = room_with(&server, 2);
        drop(a);
        // Back within the TTL: recovered.
        std::thread::sleep(Duration::from_millis(200));
        let mut b = connect_v1(&server, &format!("/r?since=1&epoch={epoch}"));
        assert_eq!(envelope(&mut b)["recovered"], true);
        assert_eq!(envelope(&mut b)["seq"], 2);
        drop(b);
        // Gone after it: a new room, a new epoch, seqs from 1.
        let gone = wait_until(Duration::from_secs(5), || {
            let (_, body) = http(server.addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
            body.lines().any(|l| l == "mioket_rooms 0").then_some(())
        });
        assert!(gone.is_some(), "the empty room was not freed");
        let mut c = connect_v1(&server, &format!("/r?since=2&epoch={epoch}"));
        let welcome = envelope(&mut c);
        assert_ne!(welcome["epoch"], json!(epoch));
        assert_eq!((welcome["recovered"].clone(), welcome["seq"].clone()), (json!(false), json!(0)));
    }

    #[test]
    fn histories_together_stay_within_history_memory_oldest_room_first() {
        // Each message is about 1 KiB as a plain frame; 8 KiB for all rooms.
        let server = Server::start(&["--welcome", "", "--history", "100", "--history-memory", "8192"]);
        let big = "x".repeat(1000);
        let mut old = connect_plain(&server, "/old");
        for _ in 0..4 {
            send_text(&mut old, &big);
            text(&mut old);
        }
        let mut new = connect_plain(&server, "/new");
        for _ in 0..6 {
            send_text(&mut new, &big);
            text(&mut new);
        }
        let (_, body) = http(server.addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        let bytes: usize = body.lines().find_map(|l| l.strip_prefix("mioket_history_bytes ")).unwrap().parse().unwrap();
        assert!(bytes <= 8192, "{bytes}");
        // 10 frames of 1,004 bytes: the least recently used room gave its 2 oldest, the
        // newest room stayed whole.
        let mut late_new = connect_plain(&server, "/new");
        for _ in 0..6 {
            assert_eq!(text(&mut late_new), big);
        }
        let mut late_old = connect_plain(&server, "/old");
        for _ in 0..2 {
            assert_eq!(text(&mut late_old), big);
        }
        assert!(quiet(&mut late_old, Duration::from_millis(300)), "old's 2 oldest went first");
    }
}

mod api {
    use super::*;

    #[test]
    fn a_backend_publishes_to_plain_and_v1_members_and_lists_rooms() {
        let server = Server::start(&["--welcome", "", "--api-token", "s3cret"]);
        let mut plain = connect_plain(&server, "/team%20chat");
        let mut v1 = connect_v1(&server, "/team%20chat");
        envelope(&mut v1);
        let (status, body) = post(&server, "team%20chat", "s3cret", "text/plain; charset=utf-8", "deploy done");
        assert_eq!(status, 200, "{body}");
        assert_eq!(serde_json::from_str::<Value>(&body).unwrap(), json!({"room":"team chat","seq":1}));
        assert_eq!(text(&mut plain), "deploy done");
        assert_eq!(envelope(&mut v1), json!({"type":"message","room":"team chat","seq":1,"data":"deploy done"}));
        let (status, body) = post(&server, "team%20chat", "s3cret", "application/octet-stream", "\u{1}\u{2}");
        assert_eq!((status, body.as_str()), (200, "{\"room\":\"team chat\",\"seq\":2}"));
        assert_eq!(next_message(&mut plain), Message::binary(vec![1u8, 2]));
        assert_eq!(envelope(&mut v1)["b64"], "AQI=");
        let (status, body) =
            http(server.addr, "GET /api/rooms HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\n\r\n");
        assert_eq!(status, 200);
        let rooms: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(rooms.as_array().unwrap().len(), 1);
        assert_eq!(
            (
                rooms[0]["room"].clone(),
                rooms[0]["online"].clone(),
                rooms[0]["seq"].clone(),
                rooms[0]["history"].clone()
            ),
            (json!("team chat"), json!(2), json!(2), json!(2))
        );
    }

    #[test]
    fn refusals_have_their_statuses_and_publish_nothing() {
        let server = Server::start(&["--welcome", "", "--api-token", "s3cret", "--max-message", "1000"]);
        let mut member = connect_plain(&server, "/x");
        assert_eq!(post(&server, "x", "wrong", "text/plain", "no").0, 401);
        assert_eq!(post(&server, "x", "", "text/plain", "no").0, 401);
        assert_eq!(post(&server, "x%00", "s3cret", "text/plain", "no").0, 400);
        assert_eq!(post(&server, "x", "s3cret", "text/plain", &"y".repeat(1001)).0, 413);
        let no_length = "POST /api/rooms/x/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\n\r\n";
        assert_eq!(http(server.addr, no_length).0, 411);
        let chunked = "POST /api/rooms/x/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nno\r\n0\r\n\r\n";
        assert_eq!(http(server.addr, chunked).0, 411);
        assert_eq!(http(server.addr, "GET /api/rooms HTTP/1.1\r\nHost: x\r\n\r\n").0, 401);
        assert_eq!(
            http(server.addr, "DELETE /api/rooms HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\n\r\n").0,
            405
        );
        assert!(quiet(&mut member, Duration::from_millis(300)), "nothing was published");
        // Without a token there is no API.
        let off = Server::start(&[]);
        assert_eq!(post(&off, "x", "", "text/plain", "no").0, 404);
        assert_eq!(http(off.addr, "GET /api/rooms HTTP/1.1\r\nHost: x\r\n\r\n").0, 404);
    }

    #[test]
    fn the_token_may_come_from_the_environment_and_a_slow_body_is_cut_at_the_handshake_timeout() {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_mioket"));
        command.args(["--host", "127.0.0.1", "--port", "0", "--handshake-timeout", "1"]);
        command.env("MIOKET_API_TOKEN", "from-env");
        let server = Server::spawn(command);
        assert_eq!(post(&server, "x", "from-env", "text/plain", "hi").0, 200);
        let mut s = raw(&server);
        s.write_all(b"POST /api/rooms/x/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer from-env\r\nContent-Length: 100\r\n\r\nonly a little").unwrap();
        let started = Instant::now();
        let answer = read_to_end(&mut s);
        assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}

/// Issue 19, finding 12: what an API request's head alone decides.
mod api_heads {
    use super::*;

    #[test]
    fn expect_100_continue_is_answered_once_the_head_passed_and_two_authorizations_get_400() {
        let server = Server::start(&["--welcome", "", "--api-token", "s3cret"]);
        let mut member = connect_plain(&server, "/x");
        let head = |token: &str| {
            format!(
                "POST /api/rooms/x/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
                 Expect: 100-continue\r\nContent-Length: 5\r\n\r\n"
            )
        };
        // The client waits for the 100 before it sends the body (curl waits 1 s for it).
        let mut s = raw(&server);
        s.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        s.write_all(head("s3cret").as_bytes()).unwrap();
        assert_eq!(read_head(&mut s), "HTTP/1.1 100 Continue\r\n\r\n");
        s.write_all(b"hello").unwrap();
        let answer = String::from_utf8(read_to_end(&mut s)).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert_eq!(next_message(&mut member), Message::text("hello"));
        // A head that does not pass gets its answer at once, and no 100.
        let mut s = raw(&server);
        s.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        s.write_all(head("wrong").as_bytes()).unwrap();
        assert!(read_head(&mut s).starts_with("HTTP/1.1 401 Unauthorized\r\n"));
        // Two Authorization lines: which one counts would be a guess.
        let two = "POST /api/rooms/x/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wrong\r\n\
                   Authorization: Bearer s3cret\r\nContent-Length: 2\r\n\r\nno";
        assert_eq!(http(server.addr, two), (400, "more than one Authorization header\n".to_string()));
        assert!(quiet(&mut member, Duration::from_millis(300)), "nothing more was published");
    }
}

/// Issue 19: rooms that look the same, envelopes past --max-message, one connection
/// filling the room table.
mod hardening {
    use super::*;

    /// The answer to an upgrade whose request target is `target`.
    fn upgrade_answer(server: &Server, target: &str) -> String {
        let mut s = raw(server);
        s.write_all(UPGRADE.replacen("GET / ", &format!("GET {target} "), 1).as_bytes()).unwrap();
        read_head(&mut s)
    }

    #[test]
    fn names_that_look_the_same_invisible_characters_dot_segments_and_non_paths_get_400_with_the_reason() {
        let server = Server::start(&["--welcome", "", "--api-token", "t"]);
        for (target, reason) in [
            ("/cafe%CC%81", "not in Unicode NFC"),
            ("/a%E2%80%AEb", "format"),
            ("/a%E2%80%8Bb", "format"),
            ("/%EF%BB%BFlobby", "format"),
            ("/a%E2%81%A6b", "format"),
            ("//lobby", "segment"),
            ("/./lobby", "segment"),
            ("/../lobby", "segment"),
            ("/a/./b", "segment"),
            ("/lobby/", "segment"),
            ("/a%2F%2Fb", "segment"),
            ("lobby", "must be a path"),
            ("*", "must be a path"),
        ] {
            let mut s = raw(&server);
            s.write_all(UPGRADE.replacen("GET / ", &format!("GET {target} "), 1).as_bytes()).unwrap();
            let answer = String::from_utf8_lossy(&read_to_end(&mut s)).into_owned();
            assert!(answer.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{target}: {answer}");
            assert!(answer.contains("invalid room name") && answer.contains(reason), "{target}: {answer}");
        }
        // The NFC spelling, the default room and dots inside a segment are rooms.
        for target in ["/caf%C3%A9", "/", "/a.b/...", "/v1.2"] {
            assert!(upgrade_answer(&server, target).starts_with("HTTP/1.1 101 "), "{target}");
        }
        // The same rule for a join and for the API.
        let mut v1 = connect_v1(&server, "/home");
        assert_eq!(envelope(&mut v1)["type"], "welcome");
        for room in ["cafe\u{301}", "a\u{202e}b", "\u{feff}x", "/lobby", "a/../b", "a/"] {
            send(&mut v1, json!({"op":"join","room":room,"id":"j"}));
            assert_eq!(envelope(&mut v1), json!({"type":"error","id":"j","reason":"invalid room name"}), "{room:?}");
        }
        for (room, status) in [("cafe%CC%81", 400), ("a%E2%80%8Db", 400), ("a/./b", 400), ("a%2F", 400), ("", 200)] {
            let (got, body) = post(&server, room, "t", "text/plain", "hi");
            assert_eq!(got, status, "{room:?}: {body}");
            if status == 400 {
                assert!(body.starts_with("invalid room name: "), "{body}");
            }
        }
    }

    /// Every frame until a text frame equal to `end`; panics on a close.
    fn until(ws: &mut Ws, end: &str) -> Vec<Message> {
        let mut got = Vec::new();
        loop {
            let message = next_message(ws);
            assert!(!matches!(message, Message::Close(_)), "closed: {message:?} after {} frames", got.len());
            let last = message.to_text().is_ok_and(|t| t.contains(end));
            got.push(message);
            if last {
                return got;
            }
        }
    }

    fn close_code(ws: &mut Ws) -> u16 {
        match next_message(ws) {
            Message::Close(Some(frame)) => frame.code.into(),
            other => {
                panic!("expected a close, got a {:?} message of {} bytes", other.to_text().map(|_| "text"), other.len())
            }
        }
    }

    #[test]
    fn a_message_whose_envelope_passes_max_message_is_refused_everywhere_and_never_kept() {
        const MAX: usize = 1 << 20;
        let server = Server::start(&["--welcome", "", "--api-token", "t", "--max-message", &MAX.to_string()]);
        let mut members = [connect_v1(&server, "/big"), connect_v1(&server, "/big")];
        let epoch = envelope(&mut members[0])["epoch"].as_str().unwrap().to_string();
        assert_eq!(envelope(&mut members[1])["type"], "welcome");
        let mut kept = connect_plain(&server, "/big");
        send_text(&mut kept, "kept");
        // Plain clients: 1 MiB of U+0001 (6 MiB escaped), 600 kB of `"` (1.2 MB): 1009.
        for payload in ["\u{1}".repeat(MAX), "\"".repeat(600_000)] {
            let mut plain = connect_plain(&server, "/big");
            assert_eq!(text(&mut plain), "kept", "the history");
            send_text(&mut plain, &payload);
            assert_eq!(close_code(&mut plain), 1009);
        }
        // A v1 binary frame of 900 kB is 1.2 MB in base64: an error, the connection stays.
        let mut v1 = connect_v1(&server, "/big");
        assert_eq!(envelope(&mut v1)["type"], "welcome");
        assert_eq!(envelope(&mut v1)["data"], "kept");
        v1.send(Message::binary(vec![7u8; 900_000])).unwrap();
        assert_eq!(envelope(&mut v1), json!({"type":"error","id":null,"reason":"message too big"}));
        send(&mut v1, json!({"op":"publish","b64":"AAEC","id":"small"}));
        assert_eq!(envelope(&mut v1)["type"], "ack", "still open");
        // The API: 413.
        let (status, body) = post(&server, "big", "t", "text/plain", &"\"".repeat(600_000));
        assert_eq!(status, 413, "{body}");
        assert!(body.contains("message too big"), "{body}");
        send_text(&mut kept, "end");
        // No member got more than the two small messages and the end, each small.
        for member in &mut members {
            let got = until(member, "\"end\"");
            let sizes: Vec<usize> = got.iter().map(|m| m.len()).collect();
            assert!(sizes.iter().all(|&n| n <= MAX + 512), "{sizes:?}");
            let data: Vec<Value> = got
                .iter()
                .map(|m| serde_json::from_str::<Value>(m.to_text().unwrap()).unwrap())
                .filter(|v| v["type"] == "message")
                .map(|v| v["seq"].clone())
                .collect();
            assert_eq!(data, vec![json!(1), json!(2), json!(3)]);
        }
        // The history holds none of it: a resume from 0 replays exactly seqs 1..3.
        let mut late = connect_v1(&server, &format!("/big?since=0&epoch={epoch}"));
        let welcome = envelope(&mut late);
        assert_eq!((welcome["seq"].clone(), welcome["recovered"].clone()), (json!(3), json!(true)));
        let replay: Vec<Value> = (0..3).map(|_| envelope(&mut late)["seq"].clone()).collect();
        assert_eq!(replay, vec![json!(1), json!(2), json!(3)]);
        assert!(quiet(&mut late, Duration::from_millis(300)));
    }

    /// One v1 connection joins and leaves `count` new rooms (publishing in each when
    /// `publish`), in batches, each batch ended by an acked publish in its home.
    fn churn(ws: &mut Ws, from: usize, count: usize, publish: bool) {
        for batch in (from..from + count).collect::<Vec<_>>().chunks(250) {
            for i in batch {
                let room = format!("churn{i}");
                send(ws, json!({"op":"join","room":room}));
                if publish {
                    send(ws, json!({"op":"publish","room":room,"data":"x"}));
                }
                send(ws, json!({"op":"leave","room":room}));
            }
            let marker = format!("batch{}", batch[0]);
            send(ws, json!({"op":"publish","data":"m","id":marker}));
            while envelope(ws)["id"] != marker {}
        }
    }

    #[test]
    fn join_and_leave_churn_from_one_connection_leaves_others_able_to_make_rooms() {
        let server = Server::start(&[
            "--welcome",
            "",
            "--api-token",
            "t",
            "--max-rooms",
            "1000",
            "--rooms-per-second",
            "1000000",
        ]);
        let mut attacker = connect_v1(&server, "/home");
        assert_eq!(envelope(&mut attacker)["type"], "welcome");
        let started = Instant::now();
        churn(&mut attacker, 0, 3000, false);
        // Rooms that never had a message are freed at once: the table is as it was.
        assert!(upgrade_answer(&server, "/fresh").starts_with("HTTP/1.1 101 "));
        assert_eq!(post(&server, "fresh-api", "t", "text/plain", "hi").0, 200);
        // Rooms with a history are kept, but a full table frees the empty room emptied longest ago.
        churn(&mut attacker, 3000, 3000, true);
        assert!(upgrade_answer(&server, "/fresh2").starts_with("HTTP/1.1 101 "));
        assert_eq!(post(&server, "fresh-api2", "t", "text/plain", "hi").0, 200);
        assert!(started.elapsed() < Duration::from_secs(60), "{:?}", started.elapsed());
    }

    #[test]
    fn one_connection_makes_at_most_rooms_per_second_new_rooms() {
        let server = Server::start(&["--welcome", "", "--rooms-per-second", "10"]);
        let mut v1 = connect_v1(&server, "/home");
        assert_eq!(envelope(&mut v1)["type"], "welcome");
        // 40 joins at once (all handled within far less than a second).
        for i in 0..40 {
            send(&mut v1, json!({"op":"join","room":format!("new{i}"),"id":i.to_string()}));
        }
        let answers: Vec<Value> = (0..40).map(|_| envelope(&mut v1)).collect();
        let refused = answers.iter().filter(|a| a["reason"] == "too many new rooms").count();
        let welcomed = answers.iter().filter(|a| a["type"] == "welcome").count();
        assert_eq!(welcomed + refused, 40, "{answers:?}");
        assert!(answers[..10].iter().all(|a| a["type"] == "welcome"), "{answers:?}");
        assert!(refused >= 20, "{refused} refused");
        // Joining an existing room is not limited.
        let _other = connect_plain(&server, "/existing");
        send(&mut v1, json!({"op":"join","room":"existing"}));
        assert_eq!(envelope(&mut v1)["type"], "welcome");
    }
}
