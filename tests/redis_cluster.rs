//! The backplane as a cluster runs it, with real `redis-server`s: managed Redis (AUTH
//! with a password or an ACL user, `rediss://` with a CA of the test's own,
//! `MIOKET_REDIS_URL`, a Redis that refuses us ending the process with one line that
//! never shows the password).
//!
//! scripts/test.sh installs redis-server; without it these tests say so and pass.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::redis::{free_port, RedisServer};
use common::*;
use serde_json::{json, Value};

fn node_at(url: &str, extra: &[&str]) -> Server {
    let mut args = vec!["--redis", url, "--ping-interval", "0", "--welcome", "hi"];
    args.extend_from_slice(extra);
    Server::start(&args)
}

fn next_message(ws: &mut Ws) -> Value {
    loop {
        let v = envelope(ws);
        if v["type"] == "message" {
            return v;
        }
    }
}

/// The next message with this data (history replayed on a join comes first).
fn until_message(ws: &mut Ws, data: &str) -> Value {
    loop {
        let m = next_message(ws);
        if m["data"] == data {
            return m;
        }
    }
}

/// A message published on one node reaches a member on the other, through Redis.
fn nodes_share_a_room(a: &Server, b: &Server, room: &str) {
    wait_backplane_up(&[a, b]);
    let mut on_a = connect_v1(a, &format!("/{room}"));
    let mut on_b = connect_v1(b, &format!("/{room}"));
    assert_eq!(envelope(&mut on_a)["type"], "welcome");
    assert_eq!(envelope(&mut on_b)["type"], "welcome");
    send_text(&mut on_a, &json!({"op": "publish", "data": "across", "id": "1"}).to_string());
    let m = next_message(&mut on_b);
    assert_eq!((m["data"].as_str(), m["seq"].as_u64()), (Some("across"), Some(1)), "{m}");
}

/// The binary's exit code and stderr when it does not start (within 20 s).
fn fails_to_start(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_mioket"));
    command.args(["--host", "127.0.0.1", "--port", "0"]).args(args).env_remove("MIOKET_REDIS_URL");
    command.envs(env.iter().copied()).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
    let mut child = command.spawn().unwrap();
    let exited = wait_until(Duration::from_secs(20), || child.try_wait().unwrap());
    if exited.is_none() {
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    (out.status.code().filter(|_| exited.is_some()), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn auth_with_a_password_and_with_an_acl_user() {
    need_redis!();
    let redis = RedisServer::start_with(&["--requirepass", "pw-Zq8!x"]);
    // A password alone (percent-encoded '!'), through the environment for one node.
    let url = format!("redis://:pw-Zq8%21x@127.0.0.1:{}/0", redis.port);
    let a = node_at(&url, &[]);
    let mut command = Command::new(env!("CARGO_BIN_EXE_mioket"));
    command.args(["--host", "127.0.0.1", "--port", "0", "--ping-interval", "0", "--welcome", "hi"]);
    command.env("MIOKET_REDIS_URL", &url);
    let b = Server::spawn(command);
    nodes_share_a_room(&a, &b, "secret");

    // An ACL user with its own password (the default user off: only the user gets in).
    let acl =
        RedisServer::start_with(&["--user", "ada", "on", ">ada-pw", "~*", "&*", "+@all", "--user", "default", "off"]);
    let url = format!("redis://ada:ada-pw@127.0.0.1:{}/0", acl.port);
    let (c, d) = (node_at(&url, &[]), node_at(&url, &[]));
    nodes_share_a_room(&c, &d, "acl");
    assert!(acl.command(&[b"PING"]).starts_with("-NOAUTH"), "only the user gets in");
}

#[test]
fn a_wrong_password_ends_the_process_with_the_address_and_never_the_password() {
    need_redis!();
    let redis = RedisServer::start_with(&["--requirepass", "right-pw"]);
    let address = format!("127.0.0.1:{}", redis.port);
    let cases = [
        (format!("redis://:wrong-Pw-41@{address}/0"), "wrong-Pw-41"),
        (format!("redis://eve:eves-Pw-42@{address}/0"), "eves-Pw-42"),
    ];
    for (url, password) in &cases {
        for (args, env) in [(vec!["--redis", url.as_str()], vec![]), (vec![], vec![("MIOKET_REDIS_URL", url.as_str())])]
        {
            let (code, stderr) = fails_to_start(&args, &env);
            assert_eq!(code, Some(2), "exits non-zero: {stderr}");
            let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("mioket:")).collect();
            assert_eq!(lines.len(), 1, "one line: {stderr}");
            assert!(lines[0].contains(&address), "names the address: {stderr}");
            assert!(!stderr.contains(password), "never the password: {stderr}");
        }
    }
    // A Redis that is merely down is not refused: the node starts and says so in /healthz.
    let down = format!("redis://:x@127.0.0.1:{}/0", free_port());
    let node = node_at(&down, &[]);
    assert!(!healthz(&node).contains("backplane: up"));
}

/// A CA (self-signed) and a certificate for 127.0.0.1 it signed, as PEM files in `dir`.
fn write_ca_and_cert(dir: &Path, name: &str) -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let cert = params.signed_by(&key, &issuer).unwrap();
    let path = |file: &str| dir.join(format!("{name}-{file}")).to_str().unwrap().to_string();
    let (ca_path, cert_path, key_path) = (path("ca.pem"), path("cert.pem"), path("key.pem"));
    std::fs::write(&ca_path, ca.pem()).unwrap();
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (ca_path, cert_path, key_path)
}

#[test]
fn rediss_with_a_ca_of_the_tests_own() {
    need_redis!();
    let dir = std::env::temp_dir().join(format!("mioket-rediss-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (ca, cert, key) = write_ca_and_cert(&dir, "server");
    let tls_port = free_port().to_string();
    let redis = RedisServer::start_with(&[
        "--tls-port",
        &tls_port,
        "--tls-cert-file",
        &cert,
        "--tls-key-file",
        &key,
        "--tls-ca-cert-file",
        &ca,
        "--tls-auth-clients",
        "no",
        "--requirepass",
        "tls-pw",
    ]);
    let url = format!("rediss://:tls-pw@127.0.0.1:{tls_port}/0");
    let (a, b) = (node_at(&url, &["--redis-ca", &ca]), node_at(&url, &["--redis-ca", &ca]));
    nodes_share_a_room(&a, &b, "tls");
    // Through TLS indeed: the plain port's clients are ours (the test's) only.
    assert!(redis.command(&[b"AUTH", b"tls-pw"]) == "+OK");

    // Another CA: the handshake fails, and the process ends with one line.
    let (other_ca, _, _) = write_ca_and_cert(&dir, "other");
    let (code, stderr) = fails_to_start(&["--redis", &url, "--redis-ca", &other_ca], &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains(&format!("127.0.0.1:{tls_port}")) && !stderr.contains("tls-pw"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

fn metric(server: &Server, name: &str) -> f64 {
    let body = http(server.addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").1;
    let line = body.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_else(|| panic!("{name}: {body}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

/// Subscribers of a room's channel, by `PUBSUB SHARDNUMSUB` (Redis 7: sharded pub/sub)
/// plus `PUBSUB NUMSUB` (plain).
fn subscribers(redis: &RedisServer, room: &str) -> i64 {
    use std::io::{Read, Write};
    let channel = format!("mioket:{{{room}}}:0:live");
    let mut total = 0;
    for verb in ["SHARDNUMSUB", "NUMSUB"] {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", redis.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(format!("PUBSUB {verb} {channel}\r\n").as_bytes()).unwrap();
        let mut reply = Vec::new();
        let mut buf = [0u8; 256];
        // *2 $len channel :count
        while reply.iter().filter(|&&b| b == b'\n').count() < 4 {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "PUBSUB {verb}: {}", String::from_utf8_lossy(&reply));
            reply.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&reply).into_owned();
        let count = text.lines().filter_map(|l| l.strip_prefix(':')).next_back();
        total += count.and_then(|c| c.trim().parse::<i64>().ok()).unwrap_or_else(|| panic!("{text}"));
    }
    total
}

/// A node receives no byte of a room it has no member of: each node's Redis input
/// is its own rooms' lines (`mioket_redis_input_bytes_total`), each room's channel has
/// the nodes that hold it as subscribers, and a node that no longer holds a room
/// unsubscribes from it.
#[test]
fn a_node_receives_nothing_of_rooms_it_has_no_member_of() {
    need_redis!();
    let redis = RedisServer::start(false);
    let url = redis.url();
    let (a, b) = (node_at(&url, &[]), node_at(&url, &[]));
    wait_backplane_up(&[&a, &b]);
    let mut alpha = connect_v1(&a, "/alpha");
    let mut beta = connect_v1(&b, "/beta");
    assert_eq!(envelope(&mut alpha)["type"], "welcome");
    assert_eq!(envelope(&mut beta)["type"], "welcome");
    assert_eq!((subscribers(&redis, "alpha"), subscribers(&redis, "beta")), (1, 1), "one node each");

    let (a0, b0) = (metric(&a, "mioket_redis_input_bytes_total"), metric(&b, "mioket_redis_input_bytes_total"));
    let big = "b".repeat(1000);
    for i in 0..50 {
        send_text(&mut beta, &json!({"op": "publish", "data": big, "id": format!("{i}")}).to_string());
    }
    for _ in 0..50 {
        next_message(&mut beta);
    }
    send_text(&mut alpha, &json!({"op": "publish", "data": "a", "id": "1"}).to_string());
    assert_eq!(next_message(&mut alpha)["data"], "a");
    let (a1, b1) = (metric(&a, "mioket_redis_input_bytes_total"), metric(&b, "mioket_redis_input_bytes_total"));
    eprintln!("Redis input: node a {a0} -> {a1} bytes (alpha), node b {b0} -> {b1} bytes (beta)");
    assert!(b1 - b0 >= 50_000.0, "b got its room's lines: {b0} -> {b1}");
    assert!(a1 - a0 > 0.0 && a1 - a0 < 200.0, "a got alpha's one line and nothing of beta: {a0} -> {a1}");

    // The member leaves: its node unsubscribes (within the sweep, a second).
    drop(alpha);
    let gone = wait_until(Duration::from_secs(10), || (subscribers(&redis, "alpha") == 0).then_some(()));
    assert!(gone.is_some(), "alpha unsubscribed");
    assert_eq!(subscribers(&redis, "beta"), 1);
    // And comes back: subscribed again before its fetch, and what was published meanwhile
    // (by the API of the other node... here by a member on b) is delivered.
    let mut alpha_on_b = connect_v1(&b, "/alpha");
    assert_eq!(envelope(&mut alpha_on_b)["type"], "welcome");
    send_text(&mut alpha_on_b, &json!({"op": "publish", "data": "meanwhile", "id": "2"}).to_string());
    until_message(&mut alpha_on_b, "meanwhile");
    let mut alpha_again = connect_v1(&a, "/alpha");
    // Welcomed at once with what the node still mirrors (seq 1), then caught up from
    // the room's stream: no message missed, none twice.
    let w = envelope(&mut alpha_again);
    assert_eq!(w["type"], "welcome", "{w}");
    assert_eq!(until_message(&mut alpha_again, "meanwhile")["seq"], 2);
    send_text(&mut alpha_on_b, &json!({"op": "publish", "data": "live", "id": "3"}).to_string());
    assert_eq!(until_message(&mut alpha_again, "live")["seq"], 3);
    assert_eq!(subscribers(&redis, "alpha"), 2);
}

/// Rooms spread over three shards by the room name (two nodes given the URLs in
/// different orders agree); a shard killed refuses only its own rooms' publishes
/// while the others deliver, and its rooms work again once it is back.
#[test]
fn rooms_spread_over_three_shards_and_a_shard_down_refuses_only_its_rooms() {
    need_redis!();
    let shards: Vec<RedisServer> = (0..3).map(|_| RedisServer::start(true)).collect();
    let urls: Vec<String> = shards.iter().map(RedisServer::url).collect();
    let a = node_at(&urls[0], &["--redis", &urls[1], "--redis", &urls[2], "--api-token", "t"]);
    let joined = format!("{},{},{}", urls[2], urls[0], urls[1]);
    let mut command = Command::new(env!("CARGO_BIN_EXE_mioket"));
    command.args(["--host", "127.0.0.1", "--port", "0", "--ping-interval", "0", "--welcome", "hi", "--api-token", "t"]);
    command.env("MIOKET_REDIS_URL", &joined);
    let b = Server::spawn(command);
    wait_backplane_up(&[&a, &b]);

    // A member on a in each of 24 rooms; b publishes into each through the API.
    let rooms: Vec<String> = (0..24).map(|i| format!("room-{i}")).collect();
    let mut members: Vec<Ws> = rooms.iter().map(|r| connect_v1(&a, &format!("/{r}"))).collect();
    for ws in &mut members {
        assert_eq!(envelope(ws)["type"], "welcome");
    }
    for (room, ws) in rooms.iter().zip(&mut members) {
        let (status, body) = api_post(&b, room, "first", None);
        assert_eq!(status, 200, "{room}: {body}");
        assert_eq!(until_message(ws, "first")["seq"], 1, "{room}");
    }
    // Each room's keys are on one shard, and every shard has some.
    let shard_of = |room: &str| -> usize {
        let key = format!("mioket:{{{room}}}:meta");
        let on: Vec<usize> = (0..3).filter(|&i| shards[i].command(&[b"EXISTS", key.as_bytes()]) == ":1").collect();
        assert_eq!(on.len(), 1, "{room} on one shard: {on:?}");
        on[0]
    };
    let placed: Vec<usize> = rooms.iter().map(|r| shard_of(r)).collect();
    eprintln!("rooms per shard: {:?}", (0..3).map(|i| placed.iter().filter(|&&s| s == i).count()).collect::<Vec<_>>());
    for i in 0..3 {
        assert!(placed.contains(&i), "shard {i} holds rooms: {placed:?}");
    }

    // Shard 1 killed: its rooms' publishes are refused (503), the others delivered.
    let mut shards = shards;
    shards[1].kill();
    let degraded = wait_until(Duration::from_secs(10), || (!healthz(&b).contains("backplane: up")).then_some(()));
    assert!(degraded.is_some(), "{}", healthz(&b));
    for ((room, ws), &shard) in rooms.iter().zip(&mut members).zip(&placed) {
        let (status, body) = api_post(&b, room, "second", None);
        if shard == 1 {
            assert_eq!(status, 503, "{room} on the dead shard: {body}");
        } else {
            assert_eq!(status, 200, "{room} on a live shard: {body}");
            assert_eq!(until_message(ws, "second")["seq"], 2, "{room}");
        }
    }

    // Back (its data kept): its rooms work again, in order.
    shards[1].restart();
    wait_backplane_up(&[&a, &b]);
    for ((room, ws), &shard) in rooms.iter().zip(&mut members).zip(&placed) {
        if shard == 1 {
            let (status, body) = api_post(&b, room, "third", None);
            assert_eq!(status, 200, "{room}: {body}");
            assert_eq!(until_message(ws, "third")["seq"], 2, "{room}");
        }
    }
}
