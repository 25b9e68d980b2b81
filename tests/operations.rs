//! What an operator sees: /metrics, /healthz, --metrics-listen, --version.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::CloseFrame;

fn get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).unwrap();
    let text = String::from_utf8(read_to_end(&mut s)).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    (head.to_string(), body.to_string())
}

/// Parses the Prometheus text format strictly enough to catch malformed output:
/// every sample belongs to a family declared by `# TYPE` and has a numeric value.
fn parse_prometheus(text: &str) -> HashMap<String, f64> {
    let mut families: Vec<String> = Vec::new();
    let mut samples = HashMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            let name = parts.next().unwrap().to_string();
            let kind = parts.next().unwrap();
            assert!(["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind), "{line}");
            families.push(name);
        } else if line.starts_with("# HELP ") {
            continue;
        } else {
            let (key, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("bad sample {line:?}"));
            let name = key.split('{').next().unwrap();
            assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "{line}");
            assert!(
                families.iter().any(|f| name == f || name.strip_prefix(f.as_str()).is_some_and(|s| s.starts_with('_'))),
                "{name} has no # TYPE"
            );
            if let Some(labels) = key.strip_prefix(name) {
                assert!(labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')), "{line}");
            }
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value in {line:?}"));
            assert!(samples.insert(key.to_string(), value).is_none(), "duplicate {key}");
        }
    }
    samples
}

fn scrape(addr: SocketAddr) -> HashMap<String, f64> {
    let (head, body) = get(addr, "/metrics");
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert!(head.contains("Content-Type: text/plain; version=0.0.4"), "{head}");
    parse_prometheus(&body)
}

fn delta(before: &HashMap<String, f64>, after: &HashMap<String, f64>, key: &str) -> f64 {
    after.get(key).copied().unwrap_or_else(|| panic!("{key} missing")) - before.get(key).copied().unwrap_or(0.0)
}

#[test]
fn metrics_move_exactly_as_a_scripted_session_says() {
    let server = Server::start(&["--history", "10"]);
    let before = scrape(server.addr);

    let mut ws = connect(&server);
    assert_eq!(text(&mut ws), WELCOME);
    for m in ["a", "bb", "ccc"] {
        send_text(&mut ws, m);
        assert_eq!(text(&mut ws), m);
    }
    let mut bad = raw(&server);
    bad.write_all(UPGRADE.replace("Version: 13", "Version: 8").as_bytes()).unwrap();
    assert!(String::from_utf8_lossy(&read_to_end(&mut bad)).starts_with("HTTP/1.1 426 "));
    drop(bad);
    ws.close(Some(CloseFrame { code: CloseCode::Normal, reason: "".into() })).unwrap();
    while ws.read().is_ok() {}

    let after = scrape(server.addr);
    let expect = [
        ("mioket_accepted_total", 3.0), // the client, the bad request, this scrape
        ("mioket_upgrades_total", 1.0),
        ("mioket_rejected_total{reason=\"bad_handshake\"}", 1.0),
        ("mioket_rejected_total{reason=\"origin\"}", 0.0),
        ("mioket_messages_received_total", 3.0),
        ("mioket_message_bytes_received_total", 6.0),
        ("mioket_messages_sent_total", 4.0), // the welcome and three broadcasts
        ("mioket_fanout_deliveries_total", 3.0),
        ("mioket_closes_total{code=\"1000\",by=\"client\"}", 1.0),
        ("mioket_http_requests_total", 1.0),
        ("mioket_slow_consumers_total", 0.0),
    ];
    for (key, want) in expect {
        assert_eq!(delta(&before, &after, key), want, "{key}");
    }
    assert_eq!(after["mioket_history_messages"], 3.0);
    assert_eq!(after["mioket_history_bytes"], 3.0 * 2.0 + 6.0);
    assert_eq!(after["mioket_connections{state=\"open\"}"], 0.0);
    assert_eq!(after["mioket_connections{state=\"handshaking\"}"], 1.0, "the scrape itself, being answered");
    // The refused request lingers until its end of stream is seen.
    let settled = wait_until(Duration::from_secs(5), || {
        (scrape(server.addr)["mioket_connections{state=\"closing\"}"] == 0.0).then_some(())
    });
    assert!(settled.is_some(), "refused connections go away");
    assert!(delta(&before, &after, "mioket_loop_iteration_seconds_count") > 0.0);
    assert!(after["mioket_bytes_written_total"] > before["mioket_bytes_written_total"]);
}

#[test]
fn open_connections_and_heartbeat_timeouts_are_counted() {
    let server = Server::start(&["--ping-interval", "0.2", "--ping-timeout", "0.2", "--close-timeout", "0.2"]);
    let _silent = raw_upgraded(&server);
    let mut ws = connect(&server);
    text(&mut ws);
    let m = scrape(server.addr);
    assert_eq!(m["mioket_connections{state=\"open\"}"], 2.0);
    let counted = wait_until(Duration::from_secs(5), || {
        let m = scrape(server.addr);
        (m["mioket_heartbeat_timeouts_total"] >= 1.0).then_some(m)
    });
    assert!(counted.is_some(), "the silent client timed out");
}

#[test]
fn healthz_says_ok_while_serving() {
    let server = Server::start(&[]);
    let (head, body) = get(server.addr, "/healthz");
    assert!(head.starts_with("HTTP/1.1 200 "));
    assert_eq!(body, "ok\n");
}

#[test]
fn metrics_listen_moves_metrics_and_health_off_the_public_port() {
    // Find a free port for the metrics address by binding and releasing it.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let metrics_addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut server = Server::start(&["--metrics-listen", &metrics_addr.to_string(), "--close-timeout", "2"]);
    assert!(get(server.addr, "/metrics").0.starts_with("HTTP/1.1 404 "));
    assert!(get(server.addr, "/healthz").0.starts_with("HTTP/1.1 404 "));
    assert!(get(server.addr, "/").0.starts_with("HTTP/1.1 200 "), "the page stays public");
    assert!(scrape(metrics_addr).contains_key("mioket_accepted_total"));
    assert!(get(metrics_addr, "/").0.starts_with("HTTP/1.1 404 "), "only operator paths there");
    let mut upgrade = raw_on(metrics_addr);
    upgrade.write_all(UPGRADE.as_bytes()).unwrap();
    assert!(String::from_utf8_lossy(&read_to_end(&mut upgrade)).starts_with("HTTP/1.1 404 "), "no WebSockets there");

    // While shutting down (a client holds it open), health turns 503.
    let mut ws = connect(&server);
    text(&mut ws);
    std::process::Command::new("kill").args(["-TERM", &server.child.id().to_string()]).status().unwrap();
    let unhealthy = wait_until(Duration::from_secs(2), || {
        let (head, body) = get(metrics_addr, "/healthz");
        (head.starts_with("HTTP/1.1 503 ") && body == "shutting down\n").then_some(())
    });
    assert!(unhealthy.is_some());
    let _ = ws.read();
    let _ = ws.flush();
    let _ = wait_until(Duration::from_secs(5), || server.child.try_wait().unwrap());
}

fn raw_on(addr: SocketAddr) -> std::net::TcpStream {
    let s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

#[test]
fn version_prints_the_crate_version() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mioket")).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8(out.stdout).unwrap(), format!("mioket {}\n", env!("CARGO_PKG_VERSION")));
}

#[test]
fn logs_one_line_per_rejection_and_never_echo_peer_bytes_raw() {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_mioket"))
        .args(["--host", "127.0.0.1", "--port", "0"])
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    let addr: SocketAddr = line.trim().strip_prefix("listening on ws://").unwrap().parse().unwrap();
    for _ in 0..3 {
        let mut s = raw_on(addr);
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nX-Evil: \x1b[31mred\r\n\r\n").unwrap();
        read_to_end(&mut s);
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.lines().next().unwrap_or_default().contains("starting"), "{log}");
    assert_eq!(log.lines().filter(|l| l.contains("rejected")).count(), 3, "{log}");
    assert!(!log.contains('\x1b'), "peer bytes printed raw: {log:?}");
}

/// Issue 19, finding 12: `kill -HUP` (a certificate renewal hook) must not end a server
/// without TLS.
#[test]
fn sighup_without_tls_is_ignored_and_the_server_goes_on() {
    let server = Server::start(&["--mode", "echo"]);
    let mut before = connect(&server);
    let status = std::process::Command::new("kill").args(["-HUP", &server.child.id().to_string()]).status().unwrap();
    assert!(status.success());
    std::thread::sleep(Duration::from_millis(300));
    let mut server = server;
    assert!(server.child.try_wait().unwrap().is_none(), "SIGHUP ended the server");
    for ws in [&mut before, &mut connect(&server)] {
        send_text(ws, "still here");
        assert_eq!(text(ws), "still here");
    }
}

/// `GET /api/stats`, the operator console's document (README, "The operator console").
mod stats {
    use super::*;
    use serde_json::Value;

    fn stats(addr: SocketAddr, token: &str) -> (u16, Value) {
        let request = format!("GET /api/stats HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n");
        let (status, body) = http(addr, &request);
        (status, serde_json::from_str(&body).unwrap_or(Value::Null))
    }

    #[test]
    fn stats_are_404_without_an_api_token_and_401_with_a_wrong_one() {
        let off = Server::start(&[]);
        assert_eq!(stats(off.addr, "anything").0, 404);
        let on = Server::start(&["--api-token", "s3cret"]);
        assert_eq!(stats(on.addr, "wrong").0, 401);
        assert_eq!(http(on.addr, "GET /api/stats HTTP/1.1\r\nHost: x\r\n\r\n").0, 401);
        assert_eq!(stats(on.addr, "s3cret").0, 200);
    }

    /// Six plain clients in three rooms, one v1 client, five messages from each plain
    /// one: the same numbers on the main port and on --metrics-listen.
    #[test]
    fn stats_count_a_known_load_on_both_ports() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let operator: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let server =
            Server::start(&["--welcome", "", "--api-token", "s3cret", "--metrics-listen", &operator.to_string()]);
        let mut plain: Vec<Ws> = (0..6).map(|i| connect_plain(&server, &format!("/r{}", i % 3))).collect();
        let _v1 = connect_v1(&server, "/r0");
        let (status, before) = stats(server.addr, "s3cret");
        assert_eq!(status, 200, "{before}");
        for ws in &mut plain {
            for m in 0..5 {
                send_text(ws, &format!("m{m}"));
            }
        }
        // Each room's two members read its ten messages: all were counted by then.
        for ws in &mut plain {
            for _ in 0..10 {
                text(ws);
            }
        }
        for addr in [server.addr, operator] {
            let (status, s) = stats(addr, "s3cret");
            assert_eq!(status, 200, "{s}");
            let c = &s["connections"];
            let kinds = ["websockets", "plain", "v1", "tls"].map(|k| c[k].as_u64().unwrap());
            assert_eq!(kinds, [7, 6, 1, 0], "{s}");
            assert_eq!(s["rooms"], 3);
            assert_eq!(s["messages_in"], 30);
            assert!(s["deliveries_out"].as_u64().unwrap() >= 3 * 10 * 2 + 10, "{s}");
            assert!(s["bytes_in"].as_u64().unwrap() > 30 * 8 && s["bytes_out"].as_u64().unwrap() > 70 * 4, "{s}");
            let members = &s["busiest_by_members"];
            assert_eq!((members[0]["room"].clone(), members[0]["members"].clone()), ("r0".into(), 3.into()));
            assert_eq!(members.as_array().unwrap().len(), 3);
            assert!(s["memory"]["rss_bytes"].as_u64().unwrap() > 1 << 20);
            assert_eq!(s["nodes"][0]["connections"], 7);
            assert_eq!(s["backplane"], Value::Null);
            assert_eq!(s["version"], env!("CARGO_PKG_VERSION"));
            // The first call after `before` saw each room's ten messages; the second, none.
            let by_messages: Vec<u64> =
                s["busiest_by_messages"].as_array().unwrap().iter().map(|r| r["messages"].as_u64().unwrap()).collect();
            let expected = if addr == server.addr { vec![10, 10, 10] } else { vec![] };
            assert_eq!(by_messages, expected, "{s}");
        }
        send_text(&mut plain[1], "one more");
        text(&mut plain[1]);
        let (_, after) = stats(operator, "s3cret");
        let busiest = &after["busiest_by_messages"][0];
        assert_eq!((busiest["room"].clone(), busiest["messages"].clone()), ("r1".into(), 1.into()), "{after}");
        assert!(scrape(operator).contains_key("mioket_closes_by_reason_total{reason=\"slow_consumer\"}"));
    }

    /// The cost the README quotes, over the wire: 10,000 rooms (made by API publishes),
    /// then the time of a whole `GET /api/stats` (connect, build, answer), best of five.
    #[test]
    fn stats_with_10000_rooms_answer_in_milliseconds() {
        let server = Server::start(&["--welcome", "", "--api-token", "s3cret"]);
        for i in 0..10_000 {
            let request = format!(
                "POST /api/rooms/room-{i}/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\n\
                 Content-Length: 1\r\n\r\nx"
            );
            assert_eq!(http(server.addr, &request).0, 200);
        }
        let mut best = Duration::MAX;
        for _ in 0..5 {
            let started = std::time::Instant::now();
            let (status, s) = stats(server.addr, "s3cret");
            best = best.min(started.elapsed());
            assert_eq!((status, s["rooms"].as_u64()), (200, Some(10_000)));
            assert_eq!(s["busiest_by_members"].as_array().unwrap().len(), 10);
        }
        eprintln!("GET /api/stats with 10,000 rooms: {best:?} (best of 5, request to last byte)");
        assert!(best < Duration::from_secs(2), "{best:?}");
    }
}
