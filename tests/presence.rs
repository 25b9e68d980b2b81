//! Cluster-wide presence over the Redis backplane, with a real `redis-server` and
//! several mioket processes: `online` in welcomes and presence updates, the presence
//! op's users, `GET /api/rooms` and `GET /api/rooms/{room}/presence` count every
//! node's members; a node killed (SIGKILL) stops counting within the documented bound
//! (3 s without heartbeat + a heartbeat + a presence tick); one stopped (SIGTERM)
//! stops counting at once; presence updates stay at most one per second per room.
//!
//! scripts/test.sh installs redis-server; without it these tests say so and pass.

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::redis::RedisServer;
use common::*;
use serde_json::{json, Value};

const SECRET: &str = "presence test secret";

/// The secret in a file of its own.
fn secret_file() -> String {
    let dir = std::env::temp_dir().join(format!("mioket-presence-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("hs.txt");
    std::fs::write(&file, SECRET).unwrap();
    file.to_string_lossy().into_owned()
}

/// A token for `sub` (with `info`), reading and writing every room.
fn token(sub: &str) -> String {
    let exp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 3600;
    let claims = json!({"sub": sub, "exp": exp, "info": {"name": sub}, "rooms": {"read": ["*"], "write": ["*"]}});
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()).unwrap();
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
}

/// A node on `redis`: tokens checked, anonymous clients may read, the API on.
fn node(redis: &RedisServer, secret: &str) -> Server {
    let url = redis.url();
    let args = [
        "--redis",
        &url,
        "--api-token",
        "t",
        "--ping-interval",
        "0",
        "--jwt-secret-file",
        secret,
        "--anonymous-read",
        "*",
    ];
    Server::start(&args)
}

fn nodes(redis: &RedisServer, n: usize) -> Vec<Server> {
    let secret = secret_file();
    let servers: Vec<Server> = (0..n).map(|_| node(redis, &secret)).collect();
    wait_backplane_up(&servers.iter().collect::<Vec<_>>());
    servers
}

fn api_get(server: &Server, path: &str) -> Value {
    let (status, body) =
        http(server.addr, &format!("GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t\r\n\r\n"));
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("JSON")
}

/// The mioket_* value of a metric line (no labels).
fn metric(server: &Server, name: &str) -> f64 {
    let body = http(server.addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").1;
    let line = body.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_else(|| panic!("{name}: {body}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

/// A v1 member of `room` (with a token for `sub`, or anonymous): its welcome's `online`.
fn member(server: &Server, room: &str, sub: Option<&str>) -> (Ws, u64) {
    let path = match sub {
        Some(sub) => format!("/{room}?token={}", token(sub)),
        None => format!("/{room}"),
    };
    let mut ws = connect_v1(server, &path);
    let welcome: Value = serde_json::from_str(&text(&mut ws)).unwrap();
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    (ws, welcome["online"].as_u64().unwrap())
}

/// An anonymous v1 member of `room` on the node at `addr` (from another thread).
fn member_at(addr: std::net::SocketAddr, room: &str) -> Ws {
    use tungstenite::client::IntoClientRequest;
    let stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut request = format!("ws://{addr}/{room}").into_client_request().unwrap();
    request.headers_mut().insert("Sec-WebSocket-Protocol", "mioket.v1".parse().unwrap());
    let (mut ws, _) = tungstenite::client(request, stream).expect("handshake");
    let welcome: Value = serde_json::from_str(&text(&mut ws)).unwrap();
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    ws
}

/// Reads presence updates until one says `online` (within `limit`): when it came.
fn online_becomes(ws: &mut Ws, online: u64, limit: Duration) -> Option<Instant> {
    let end = Instant::now() + limit;
    ws.get_mut().set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let mut seen = Vec::new();
    let found = loop {
        if Instant::now() > end {
            break None;
        }
        let message = match ws.read() {
            Ok(message) => message,
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
            {
                continue
            }
            Err(e) => panic!("read: {e}"),
        };
        let Ok(text) = message.to_text() else { continue };
        let Ok(v) = serde_json::from_str::<Value>(text) else { continue };
        if v["type"] == "presence" {
            seen.push(v["online"].clone());
            if v["online"] == online {
                break Some(Instant::now());
            }
        }
    };
    ws.get_mut().set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    if found.is_none() {
        eprintln!("presence updates seen: {seen:?}");
    }
    found
}

/// A presence told, then its update shown: a presence tick on each side.
const LAG: Duration = Duration::from_secs(3);

#[test]
fn presence_is_counted_across_three_nodes() {
    need_redis!();
    let redis = RedisServer::start(false);
    // Three nodes with members, a fourth without.
    let servers = nodes(&redis, 4);
    let (mut ada, online) = member(&servers[0], "lobby", Some("ada"));
    assert_eq!(online, 1);
    // Node 0 tells its part at its next presence tick; then node 1's first member's
    // welcome counts it (read with the room's fetch).
    std::thread::sleep(Duration::from_millis(1200));
    let (_bob, online) = member(&servers[1], "lobby", Some("bob"));
    assert_eq!(online, 2, "the welcome counts the other nodes' members");
    let (_ada2, _) = member(&servers[2], "lobby", Some("ada"));
    let (mut anon, _) = member(&servers[2], "lobby", None);
    assert!(online_becomes(&mut ada, 4, LAG).is_some(), "node 0's member is told of every node's");
    // The presence op lists every node's users, with their connections everywhere.
    let answer = wait_until(LAG, || Some(presence_op(&mut anon)).filter(|a| a["online"] == 4));
    let answer = answer.unwrap_or_else(|| presence_op(&mut anon));
    assert_eq!(answer["online"], 4, "{answer}");
    let users = json!([
        {"user": "ada", "info": {"name": "ada"}, "connections": 2},
        {"user": "bob", "info": {"name": "bob"}, "connections": 1},
    ]);
    assert_eq!(answer["users"], users, "{answer}");
    // A node that does not hold the room reads its presence from Redis.
    let (mut elsewhere, _) = member(&servers[3], "elsewhere", None);
    assert_eq!(presence_op(&mut elsewhere), answer);
    let presence = api_get(&servers[3], "/api/rooms/lobby/presence");
    assert_eq!((&presence["online"], &presence["users"]), (&json!(4), &users), "{presence}");
    // The API: the room on each node with the cluster's count, and its presence.
    for server in &servers[..3] {
        let rooms = api_get(server, "/api/rooms");
        let lobby = rooms.as_array().unwrap().iter().find(|r| r["room"] == "lobby").cloned();
        assert_eq!(lobby.map(|r| r["online"].clone()), Some(json!(4)), "{rooms}");
        let presence = api_get(server, "/api/rooms/lobby/presence");
        assert_eq!(presence["online"], 4, "{presence}");
        assert_eq!(presence["users"], users, "{presence}");
        assert_eq!(metric(server, "mioket_redis_nodes"), 4.0);
    }
    // The console's nodes: this one first, then the others the registry lists.
    // (Another node's connections as of its last heartbeat: within a second.)
    let connections = |stats: &Value| -> Vec<u64> {
        let nodes = stats["nodes"].as_array().expect("nodes");
        nodes.iter().map(|n| n["connections"].as_u64().unwrap()).collect()
    };
    let sorted = |mut v: Vec<u64>| {
        v.sort_unstable();
        v
    };
    let stats =
        wait_until(LAG, || Some(api_get(&servers[2], "/api/stats")).filter(|s| sorted(connections(s)) == [1, 1, 1, 2]));
    let stats = stats.unwrap_or_else(|| api_get(&servers[2], "/api/stats"));
    assert_eq!(sorted(connections(&stats)), [1, 1, 1, 2], "{stats}");
    assert_eq!(connections(&stats)[0], 2, "node 2's own two members first: {stats}");
}

/// The presence op's answer.
fn presence_op(ws: &mut Ws) -> Value {
    send_text(ws, r#"{"op":"presence","room":"lobby","id":"q"}"#);
    loop {
        let v: Value = serde_json::from_str(&text(ws)).unwrap();
        if v["type"] == "presence" && v["id"] == "q" {
            return v;
        }
    }
}

#[test]
fn a_node_killed_stops_counting_within_the_bound() {
    need_redis!();
    let redis = RedisServer::start(false);
    let mut servers = nodes(&redis, 3);
    let (mut watcher, _) = member(&servers[0], "lobby", None);
    let (_b, _) = member(&servers[1], "lobby", None);
    let (_c, _) = member(&servers[2], "lobby", None);
    let (_d, _) = member(&servers[2], "lobby", None);
    assert!(online_becomes(&mut watcher, 4, LAG).is_some());
    let killed = Instant::now();
    servers[2].child.kill().unwrap();
    servers[2].child.wait().unwrap();
    // The bound (README): 3 s without heartbeat, a heartbeat, a presence tick; and
    // some slack for a loaded machine.
    let bound = Duration::from_secs(3 + 1 + 1) + Duration::from_millis(1500);
    let gone = online_becomes(&mut watcher, 2, bound + Duration::from_secs(2)).expect("the killed node stops counting");
    let took = gone - killed;
    eprintln!("a node killed: its members no longer counted after {took:?} (bound {bound:?})");
    assert!(took <= bound, "took {took:?}");
    assert!(took >= Duration::from_secs(2), "a node is not dropped before its heartbeats are missed: {took:?}");
    // Node 1 at its own heartbeat (within a second of node 0's), so within the bound too.
    let on_1 = wait_until(Duration::from_secs(3), || {
        (api_get(&servers[1], "/api/rooms/lobby/presence")["online"] == 2).then(Instant::now)
    });
    let took = on_1.expect("node 1 stops counting it") - killed;
    assert!(took <= bound, "node 1 took {took:?}");
    let dropped =
        wait_until(Duration::from_secs(3), || (metric(&servers[0], "mioket_redis_nodes") == 2.0).then_some(()));
    assert!(dropped.is_some(), "the registry drops it");
    // Its field in the room's presence hash went too.
    let fields = redis.command(&[b"HLEN", b"mioket:{lobby}:presence"]);
    assert!(fields.contains('2'), "{fields}");
}

#[test]
fn a_node_stopped_gracefully_stops_counting_at_once() {
    need_redis!();
    let redis = RedisServer::start(false);
    let mut servers = nodes(&redis, 2);
    let (mut watcher, _) = member(&servers[0], "lobby", None);
    let (_b, _) = member(&servers[1], "lobby", None);
    let (_c, _) = member(&servers[1], "lobby", None);
    assert!(online_becomes(&mut watcher, 3, LAG).is_some());
    let stopped = Instant::now();
    // Its clients do not answer its close: it waits for them (--close-timeout), but
    // it left the cluster at the signal.
    let pid = servers[1].child.id().to_string();
    std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let gone = online_becomes(&mut watcher, 1, Duration::from_secs(3)).expect("counted no more");
    eprintln!("a node stopped: its members no longer counted after {:?}", gone - stopped);
    assert!(gone - stopped < Duration::from_millis(2500), "took {:?}", gone - stopped);
    assert_eq!(metric(&servers[0], "mioket_redis_nodes"), 1.0);
    assert!(servers[1].signal_and_wait("-TERM", Duration::from_secs(10)).is_some(), "stops");
}

#[test]
fn presence_updates_stay_at_most_one_per_second_under_join_churn() {
    need_redis!();
    let redis = RedisServer::start(false);
    let servers = nodes(&redis, 2);
    let (mut watcher, _) = member(&servers[0], "lobby", None);
    let churn = std::thread::spawn({
        let addr = servers[1].addr;
        move || {
            // Members come every 50 ms and some go: the count changes all the time.
            let end = Instant::now() + Duration::from_secs(4);
            let mut kept = Vec::new();
            for i in 0.. {
                if Instant::now() >= end {
                    break;
                }
                kept.push(member_at(addr, "lobby"));
                if i % 3 == 2 {
                    drop(kept.remove(0));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            kept
        }
    });
    let mut times = Vec::new();
    watcher.get_mut().set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let end = Instant::now() + Duration::from_secs(6);
    while Instant::now() < end {
        match watcher.read() {
            Ok(message) => {
                let v: Value = serde_json::from_str(message.to_text().unwrap_or("{}")).unwrap_or_default();
                if v["type"] == "presence" {
                    times.push(Instant::now());
                }
            }
            Err(tungstenite::Error::Io(_)) => {}
            Err(e) => panic!("read: {e}"),
        }
    }
    let kept = churn.join().unwrap();
    assert!(times.len() >= 3, "presence updates came: {}", times.len());
    for pair in times.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(gap >= Duration::from_millis(800), "at most one a second: {gap:?}");
    }
    // Once the churn is over, the count is right.
    assert_eq!(api_get(&servers[0], "/api/rooms/lobby/presence")["online"], 1 + kept.len() as u64);
}
