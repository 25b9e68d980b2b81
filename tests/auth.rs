//! Tokens and permissions over real sockets (issue 21, docs/protocol.md "Tokens and
//! permissions"): tokens made here (HS256, RS256, ES256, EdDSA, with the keys of
//! tests/keys), every refusal of the table, identity on messages, refresh, expiry,
//! presence, limits and the moderation API.

mod common;

use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tungstenite::client::IntoClientRequest;
use tungstenite::Message;

const SECRET: &str = "wire test secret";
const API: &str = "api-secret";

fn keys_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/keys")
}

/// The secret in a file of its own (with the trailing newline the server drops).
fn secret_file() -> String {
    let dir = std::env::temp_dir().join(format!("mioket-auth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("hs.txt");
    std::fs::write(&file, format!("{SECRET}\n")).unwrap();
    file.to_string_lossy().into_owned()
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// Claims for `sub` valid an hour, reading `read` and writing `write`.
fn claims(sub: &str, read: &[&str], write: &[&str]) -> Value {
    json!({"sub": sub, "exp": now() + 3600, "rooms": {"read": read, "write": write}})
}

fn sign(alg: Algorithm, kid: Option<&str>, claims: &Value) -> String {
    let read = |name: &str| std::fs::read(keys_dir().join(name)).unwrap();
    let key = match alg {
        Algorithm::HS256 => EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&read("rsa.key")).unwrap(),
        Algorithm::ES256 => EncodingKey::from_ec_pem(&read("ec.key")).unwrap(),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&read("ed.key")).unwrap(),
        _ => unreachable!(),
    };
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

fn hs(sub: &str, read: &[&str], write: &[&str]) -> String {
    sign(Algorithm::HS256, None, &claims(sub, read, write))
}

/// A server checking HS256 tokens, with the API on, and `args`.
fn server(args: &[&str]) -> Server {
    let secret = secret_file();
    let mut all = vec!["--jwt-secret-file", &secret, "--api-token", API, "--welcome", "hi"];
    all.extend_from_slice(args);
    Server::start(&all)
}

/// How a token travels.
#[derive(Clone, Copy)]
enum Via {
    Header,
    Protocol,
    Query,
}

/// An upgrade to `path`, v1 or plain, with `token` sent `via`: the socket after a 101,
/// or the refusal's status and head.
fn upgrade(server: &Server, path: &str, v1: bool, token: Option<&str>, via: Via) -> Result<Ws, (u16, String)> {
    let stream = TcpStream::connect(server.addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let target = match (token, via) {
        (Some(t), Via::Query) => {
            format!("ws://{}{path}{}token={t}", server.addr, if path.contains('?') { '&' } else { '?' })
        }
        _ => format!("ws://{}{path}", server.addr),
    };
    let mut request = target.into_client_request().unwrap();
    let mut protocols = Vec::new();
    if v1 {
        protocols.push("mioket.v1".to_string());
    }
    match (token, via) {
        (Some(t), Via::Header) => {
            request.headers_mut().insert("Authorization", format!("Bearer {t}").parse().unwrap());
        }
        (Some(t), Via::Protocol) => protocols.push(format!("mioket.token.{t}")),
        _ => {}
    }
    if !protocols.is_empty() {
        request.headers_mut().insert("Sec-WebSocket-Protocol", protocols.join(", ").parse().unwrap());
    }
    match tungstenite::client(request, stream) {
        Ok((ws, response)) => {
            let chosen = response.headers().get("Sec-WebSocket-Protocol").map(|v| v.to_str().unwrap().to_string());
            assert_eq!(chosen.as_deref(), v1.then_some("mioket.v1"), "the 101 names mioket.v1 only");
            Ok(ws)
        }
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(response))) => {
            let mut head = String::new();
            for (name, value) in response.headers() {
                head.push_str(&format!("{}: {}\r\n", name, value.to_str().unwrap_or("")));
            }
            Err((response.status().as_u16(), head.to_lowercase()))
        }
        Err(e) => panic!("handshake: {e}"),
    }
}

fn v1(server: &Server, path: &str, token: Option<&str>) -> Ws {
    upgrade(server, path, true, token, Via::Header).unwrap_or_else(|e| panic!("refused: {e:?}"))
}

fn plain(server: &Server, path: &str, token: Option<&str>) -> Ws {
    upgrade(server, path, false, token, Via::Header).unwrap_or_else(|e| panic!("refused: {e:?}"))
}

fn send(ws: &mut Ws, op: Value) {
    send_text(ws, &op.to_string());
}

/// Reads until the server's close frame: its code and reason.
fn closed(ws: &mut Ws) -> (u16, String) {
    loop {
        match ws.read() {
            Ok(Message::Close(Some(frame))) => return (u16::from(frame.code), frame.reason.to_string()),
            Ok(Message::Close(None)) => return (1005, String::new()),
            Ok(_) => continue,
            Err(e) => panic!("no close frame: {e}"),
        }
    }
}

fn api(server: &Server, method: &str, path: &str, body: &str) -> (u16, String) {
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    http(server.addr, &request)
}

fn metrics(server: &Server) -> String {
    http(server.addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").1
}

mod refusals {
    use super::*;

    #[test]
    fn a_bad_token_is_401_for_plain_clients_and_4401_for_v1_clients() {
        let server = server(&["--anonymous-read", "*"]);
        let forged = "not-a-jwt";
        let (status, head) = upgrade(&server, "/lobby", false, Some(forged), Via::Header).err().unwrap();
        assert_eq!(status, 401);
        assert!(head.contains("www-authenticate: bearer") && head.contains("error=\"invalid_token\""), "{head}");
        let mut ws = upgrade(&server, "/lobby", true, Some(forged), Via::Header).unwrap();
        assert_eq!(closed(&mut ws), (4401, "malformed token".into()));
        let mut bad_sig = hs("a", &["*"], &["*"]);
        bad_sig.truncate(bad_sig.len() - 4);
        bad_sig.push_str("AAAA");
        let mut ws = upgrade(&server, "/lobby", true, Some(&bad_sig), Via::Protocol).unwrap();
        assert_eq!(closed(&mut ws), (4401, "bad signature".into()));
        assert!(metrics(&server).contains("mioket_auth_refusals_total{reason=\"invalid_token\"} 3"));
    }

    #[test]
    fn an_expired_token_or_one_not_valid_yet_is_401_or_4001() {
        let server = server(&["--jwt-leeway", "0"]);
        let old = sign(Algorithm::HS256, None, &json!({"sub": "a", "exp": now() - 5}));
        let (status, head) = upgrade(&server, "/lobby", false, Some(&old), Via::Header).err().unwrap();
        assert_eq!(status, 401);
        assert!(head.contains("error=\"invalid_token\""), "{head}");
        let mut ws = upgrade(&server, "/lobby", true, Some(&old), Via::Header).unwrap();
        assert_eq!(closed(&mut ws), (4001, "token expired".into()));
        let early = sign(Algorithm::HS256, None, &json!({"sub": "a", "exp": now() + 600, "nbf": now() + 300}));
        let mut ws = upgrade(&server, "/lobby", true, Some(&early), Via::Query).unwrap();
        assert_eq!(closed(&mut ws), (4001, "token expired".into()));
        assert!(metrics(&server).contains("mioket_auth_refusals_total{reason=\"expired\"} 3"));
    }

    #[test]
    fn no_token_for_a_room_that_is_not_anonymous_is_401_or_4401() {
        let server = server(&["--anonymous-read", "public/*"]);
        let (status, head) = upgrade(&server, "/lobby", false, None, Via::Header).err().unwrap();
        assert_eq!(status, 401);
        assert!(head.contains("www-authenticate: bearer") && !head.contains("invalid_token"), "{head}");
        let mut ws = upgrade(&server, "/lobby", true, None, Via::Header).unwrap();
        assert_eq!(closed(&mut ws), (4401, "token required".into()));
        // An anonymous room is open to all.
        let mut ws = v1(&server, "/public/news", None);
        assert_eq!(envelope(&mut ws)["type"], "welcome");
    }

    #[test]
    fn a_room_the_token_may_not_read_is_403_or_4403() {
        let server = server(&[]);
        let token = hs("a", &["lobby"], &[]);
        let (status, _) = upgrade(&server, "/secret", false, Some(&token), Via::Header).err().unwrap();
        assert_eq!(status, 403);
        let mut ws = upgrade(&server, "/secret", true, Some(&token), Via::Header).unwrap();
        assert_eq!(closed(&mut ws), (4403, "forbidden".into()));
        assert!(metrics(&server).contains("mioket_auth_refusals_total{reason=\"forbidden\"} 2"));
    }

    #[test]
    fn join_or_resume_of_a_room_not_readable_is_an_error_and_the_connection_stays() {
        let server = server(&[]);
        let token = hs("a", &["lobby"], &["lobby"]);
        let mut ws = v1(&server, "/lobby", Some(&token));
        assert_eq!(envelope(&mut ws)["type"], "welcome");
        send(&mut ws, json!({"op": "join", "room": "secret", "id": "j1"}));
        assert_eq!(envelope(&mut ws), json!({"type": "error", "id": "j1", "reason": "forbidden"}));
        send(&mut ws, json!({"op": "join", "room": "secret", "since": 3, "epoch": "0011223344556677", "id": "j2"}));
        assert_eq!(envelope(&mut ws), json!({"type": "error", "id": "j2", "reason": "forbidden"}));
        send(&mut ws, json!({"op": "ping", "id": "p"}));
        assert_eq!(envelope(&mut ws), json!({"type": "pong", "id": "p"}));
    }

    #[test]
    fn publishing_where_not_writable_publishes_nothing() {
        let server = server(&["--anonymous-read", "lobby"]);
        let reader = hs("r", &["lobby"], &[]);
        let mut watcher = v1(&server, "/lobby", None);
        // The welcome says where this connection may not publish.
        assert_eq!(envelope(&mut watcher)["read_only"], true);
        let mut ws = v1(&server, "/lobby", Some(&reader));
        assert_eq!(envelope(&mut ws)["read_only"], true);
        let mut writer = v1(&server, "/lobby", Some(&hs("w", &["lobby"], &["lobby"])));
        let welcome = envelope(&mut writer);
        assert_eq!((welcome["type"].as_str(), welcome.get("read_only")), (Some("welcome"), None));
        send(&mut ws, json!({"op": "publish", "data": "no", "id": "m1"}));
        assert_eq!(envelope(&mut ws), json!({"type": "error", "id": "m1", "reason": "forbidden"}));
        let mut p = plain(&server, "/lobby", Some(&reader));
        assert_eq!(text(&mut p), "hi");
        send_text(&mut p, "no");
        assert_eq!(closed(&mut p), (1008, "read-only room".into()));
        assert!(quiet(&mut watcher, Duration::from_millis(300)), "nothing was published");
        assert!(quiet(&mut writer, Duration::from_millis(10)), "nothing was published");
    }

    #[test]
    fn alg_none_the_hmac_confusion_garbage_and_large_tokens_are_refused() {
        let rsa = keys_dir().join("rsa.pem");
        let server = Server::start(&["--jwt-key", rsa.to_str().unwrap(), "--welcome", ""]);
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let body = b64(&claims("m", &["*"], &["*"]).to_string());
        let none = format!("{}.{body}.", b64(r#"{"alg":"none","typ":"JWT"}"#));
        let mut ws = upgrade(&server, "/x", true, Some(&none), Via::Header).unwrap();
        assert_eq!(closed(&mut ws), (4401, "algorithm not allowed".into()));
        // HS256 signed with the server's public key as the secret.
        let pem = std::fs::read(&rsa).unwrap();
        let forged = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims("m", &["*"], &["*"]),
            &EncodingKey::from_secret(&pem).unwrap(),
        )
        .unwrap();
        let mut ws = upgrade(&server, "/x", true, Some(&forged), Via::Header).unwrap();
        assert_eq!(closed(&mut ws), (4401, "algorithm not allowed".into()));
        for garbage in ["x", "a.b.c", "....", "%ff%fe"] {
            let mut ws = upgrade(&server, "/x", true, Some(garbage), Via::Query).unwrap();
            assert_eq!(closed(&mut ws).0, 4401, "{garbage}");
        }
        let long = "a".repeat(5000);
        let mut ws = upgrade(&server, "/x", true, Some(&long), Via::Header).unwrap();
        assert_eq!(closed(&mut ws), (4401, "token too large".into()));
        // 8 KiB: beyond the request head's limit, refused before any token work.
        let huge = "a".repeat(8 * 1024);
        let (status, _) = upgrade(&server, "/x", false, Some(&huge), Via::Header).err().unwrap();
        assert_eq!(status, 431);
        // The server still serves.
        let ok = sign(Algorithm::RS256, Some("rsa"), &claims("m", &["x"], &[]));
        let mut ws = v1(&server, "/x", Some(&ok));
        assert_eq!(envelope(&mut ws)["user"], "m");
    }
}

mod tokens {
    use super::*;

    #[test]
    fn every_algorithm_and_the_kid_rule() {
        let key = |n: &str| keys_dir().join(n).to_string_lossy().into_owned();
        let (rsa, ec, ed, secret) = (key("rsa.pem"), key("ec.pem"), key("ed.pem"), secret_file());
        let server = Server::start(&[
            "--jwt-secret-file",
            &secret,
            "--jwt-key",
            &rsa,
            "--jwt-key",
            &ec,
            "--jwt-key",
            &ed,
            "--welcome",
            "",
        ]);
        for (alg, kid) in [
            (Algorithm::HS256, None),
            (Algorithm::HS256, Some("hs")),
            (Algorithm::RS256, Some("rsa")),
            (Algorithm::ES256, None),
            (Algorithm::EdDSA, Some("ed")),
        ] {
            let token = sign(alg, kid, &claims("u", &["room"], &["room"]));
            let mut ws = v1(&server, "/room", Some(&token));
            let welcome = envelope(&mut ws);
            assert_eq!(welcome["user"], "u", "{alg:?}");
            let expires_in = welcome["expires_in"].as_u64().unwrap();
            assert!((3590..=3662).contains(&expires_in), "{expires_in}");
        }
        // A kid that names another key, or none, is refused.
        let token = sign(Algorithm::RS256, Some("ec"), &claims("u", &["room"], &[]));
        let mut ws = upgrade(&server, "/room", true, Some(&token), Via::Header).unwrap();
        assert_eq!(closed(&mut ws), (4401, "algorithm not allowed".into()));
        let token = sign(Algorithm::RS256, Some("nobody"), &claims("u", &["room"], &[]));
        let mut ws = upgrade(&server, "/room", true, Some(&token), Via::Header).unwrap();
        assert_eq!(closed(&mut ws), (4401, "unknown key".into()));
    }

    #[test]
    fn the_token_travels_by_header_subprotocol_or_query_in_that_order() {
        let server = server(&[]);
        let good = hs("by-proto", &["room"], &[]);
        let mut ws = upgrade(&server, "/room", true, Some(&good), Via::Protocol).unwrap();
        assert_eq!(envelope(&mut ws)["user"], "by-proto");
        let mut ws = upgrade(&server, "/room", true, Some(&hs("by-query", &["room"], &[])), Via::Query).unwrap();
        assert_eq!(envelope(&mut ws)["user"], "by-query");
        // The header wins over the subprotocol entry.
        let stream = TcpStream::connect(server.addr).unwrap();
        let mut request = format!("ws://{}/room", server.addr).into_client_request().unwrap();
        let header = hs("by-header", &["room"], &[]);
        request.headers_mut().insert("Authorization", format!("Bearer {header}").parse().unwrap());
        let protocols = format!("mioket.v1, mioket.token.{good}");
        request.headers_mut().insert("Sec-WebSocket-Protocol", protocols.parse().unwrap());
        let (mut ws, response) = tungstenite::client(request, stream).unwrap();
        assert_eq!(response.headers()["Sec-WebSocket-Protocol"], "mioket.v1");
        assert_eq!(envelope(&mut ws)["user"], "by-header");
    }

    #[test]
    fn without_a_key_the_server_is_open_as_before_and_tokens_are_ignored() {
        let server = Server::start(&["--welcome", ""]);
        let mut ws = upgrade(&server, "/any", true, Some("not even a token"), Via::Header).unwrap();
        let welcome = envelope(&mut ws);
        assert_eq!(welcome["type"], "welcome");
        assert!(welcome.get("user").is_none() && welcome.get("expires_in").is_none());
        send(&mut ws, json!({"op": "publish", "data": "open"}));
        assert!(envelope(&mut ws).get("from").is_none());
    }

    #[test]
    fn a_short_rsa_key_ends_the_start_with_a_reason() {
        let key = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys/rsa1024.pem");
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_mioket"))
            .args(["--host", "127.0.0.1", "--port", "0", "--jwt-key", key])
            .output()
            .unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("rsa1024.pem: an RSA key of 1024 bits: at least 2048 are needed"), "{stderr}");
    }

    #[test]
    fn mioket_token_makes_a_token_the_server_takes() {
        let secret = secret_file();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_mioket"))
            .args(["token", "--secret-file", &secret, "--sub", "user-1", "--read", "lobby", "--write", "lobby"])
            .args(["--ttl", "1h"])
            .output()
            .unwrap();
        assert!(out.status.success());
        let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
        let server = server(&[]);
        let mut ws = v1(&server, "/lobby", Some(&token));
        assert_eq!(envelope(&mut ws)["user"], "user-1");
    }
}

mod identity {
    use super::*;

    #[test]
    fn messages_of_a_user_carry_from_in_envelopes_history_and_resume() {
        let server = server(&["--anonymous-read", "lobby", "--anonymous-write", "lobby"]);
        let alice = hs("alice", &["lobby"], &["lobby"]);
        let mut a = v1(&server, "/lobby", Some(&alice));
        let epoch = envelope(&mut a)["epoch"].as_str().unwrap().to_string();
        let mut p = plain(&server, "/lobby", None);
        assert_eq!(text(&mut p), "hi");
        // A forged from is not taken: the field is the server's.
        send(&mut a, json!({"op": "publish", "data": "hello", "from": "mallory", "id": "m"}));
        assert_eq!(envelope(&mut a)["type"], "ack");
        let message = envelope(&mut a);
        assert_eq!((message["data"].as_str(), message["from"].as_str()), (Some("hello"), Some("alice")));
        assert_eq!(text(&mut p), "hello", "plain members get the payload verbatim");
        // Anonymous messages have no from.
        send_text(&mut p, "anon");
        assert!(envelope(&mut a).get("from").is_none());
        // History and resume keep the sender.
        let mut late = v1(&server, "/lobby", None);
        assert_eq!(envelope(&mut late)["type"], "welcome");
        assert_eq!(envelope(&mut late)["from"], "alice");
        let mut resumed = v1(&server, &format!("/lobby?since=0&epoch={epoch}"), None);
        assert_eq!(envelope(&mut resumed)["recovered"], true);
        assert_eq!(envelope(&mut resumed)["from"], "alice");
        // API publishes have none.
        let (status, _) = api(&server, "POST", "/api/rooms/lobby/messages", "from the backend");
        assert_eq!(status, 200);
        let m = envelope(&mut a);
        assert_eq!(m["data"], "from the backend");
        assert!(m.get("from").is_none());
    }
}

mod lifetime {
    use super::*;

    #[test]
    fn refresh_keeps_the_user_and_takes_the_new_permissions_at_once() {
        let server = server(&[]);
        let mut ws = v1(&server, "/lobby", Some(&hs("a", &["lobby", "news"], &["lobby"])));
        assert_eq!(envelope(&mut ws)["type"], "welcome");
        send(&mut ws, json!({"op": "join", "room": "news"}));
        assert_eq!(envelope(&mut ws)["room"], "news");
        // Another user's token: refused, the old grant stands.
        send(&mut ws, json!({"op": "refresh", "token": hs("b", &["*"], &["*"]), "id": "r1"}));
        assert_eq!(envelope(&mut ws), json!({"type": "error", "id": "r1", "reason": "invalid token"}));
        send(&mut ws, json!({"op": "refresh", "token": "garbage", "id": "r2"}));
        assert_eq!(envelope(&mut ws), json!({"type": "error", "id": "r2", "reason": "invalid token"}));
        // Fewer rooms: the client leaves those it may no longer read.
        send(&mut ws, json!({"op": "refresh", "token": hs("a", &["lobby"], &[]), "id": "r3"}));
        let mut got = [envelope(&mut ws), envelope(&mut ws)];
        got.sort_by_key(|v| v["type"].as_str().unwrap().to_string());
        assert_eq!(got[0], json!({"type": "left", "room": "news", "reason": "forbidden"}));
        assert_eq!(got[1]["type"], "refreshed");
        assert_eq!(got[1]["id"], "r3");
        assert!(got[1]["expires_in"].as_u64().unwrap() > 3500);
        send(&mut ws, json!({"op": "publish", "data": "x", "id": "m"}));
        assert_eq!(envelope(&mut ws)["reason"], "forbidden", "write was taken away");
        assert!(metrics(&server).contains("mioket_auth_refreshes_total 1"));
    }

    #[test]
    fn an_expiring_token_closes_its_connections_4001_within_a_second() {
        let server = server(&["--jwt-leeway", "0"]);
        let soon = sign(Algorithm::HS256, None, &json!({"sub": "a", "exp": now() + 2, "rooms": {"read": ["r"]}}));
        let mut v = v1(&server, "/r", Some(&soon));
        let mut p = plain(&server, "/r", Some(&soon));
        assert_eq!(envelope(&mut v)["type"], "welcome");
        let start = Instant::now();
        assert_eq!(closed(&mut v), (4001, "token expired".into()));
        assert_eq!(closed(&mut p), (4001, "token expired".into()));
        assert!(start.elapsed() < Duration::from_secs(5), "{:?}", start.elapsed());
    }
}

mod presence {
    use super::*;

    #[test]
    fn presence_lists_users_with_their_info_and_connections() {
        let server = server(&["--anonymous-read", "room"]);
        let alice = sign(
            Algorithm::HS256,
            None,
            &json!({"sub": "alice", "exp": now() + 600, "rooms": {"read": ["room"]}, "info": {"name": "Alice"}}),
        );
        let mut a1 = v1(&server, "/room", Some(&alice));
        let _a2 = v1(&server, "/room", Some(&alice));
        let _b = v1(&server, "/room", Some(&hs("bob", &["room"], &[])));
        let _anon = plain(&server, "/room", None);
        assert_eq!(envelope(&mut a1)["type"], "welcome");
        send(&mut a1, json!({"op": "presence", "room": "room", "id": "p"}));
        let mut answer = envelope(&mut a1);
        assert_eq!(
            (answer["type"].as_str(), answer["id"].as_str(), answer["online"].as_u64()),
            (Some("presence"), Some("p"), Some(4))
        );
        let mut users = answer["users"].as_array_mut().unwrap().clone();
        users.sort_by_key(|u| u["user"].as_str().unwrap().to_string());
        assert_eq!(users[0], json!({"user": "alice", "info": {"name": "Alice"}, "connections": 2}));
        assert_eq!(users[1], json!({"user": "bob", "connections": 1}));
        let (status, body) = api(&server, "GET", "/api/rooms/room/presence", "");
        assert_eq!(status, 200);
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!((body["room"].as_str(), body["online"].as_u64()), (Some("room"), Some(4)));
        assert_eq!(body["users"].as_array().unwrap().len(), 2);
        // Presence of a room not readable is forbidden.
        send(&mut a1, json!({"op": "presence", "room": "elsewhere", "id": "q"}));
        assert_eq!(envelope(&mut a1)["reason"], "forbidden");
    }
}

mod limits {
    use super::*;

    #[test]
    fn connections_per_address_get_429_with_retry_after() {
        let server = server(&["--anonymous-read", "*", "--max-connections-per-ip", "2"]);
        let _a = plain(&server, "/r", None);
        let _b = plain(&server, "/r", None);
        let (status, head) = upgrade(&server, "/r", true, Some("garbage"), Via::Header).err().unwrap();
        assert_eq!(status, 429);
        assert!(head.contains("retry-after:"), "{head}");
        drop(_a);
        wait_until(Duration::from_secs(5), || upgrade(&server, "/r", false, None, Via::Header).ok())
            .expect("a slot again");
    }

    #[test]
    fn connections_per_user_get_429_or_4429() {
        let server = server(&["--max-connections-per-user", "1"]);
        let token = hs("a", &["r"], &[]);
        let _one = v1(&server, "/r", Some(&token));
        let (status, _) = upgrade(&server, "/r", false, Some(&token), Via::Header).err().unwrap();
        assert_eq!(status, 429);
        let mut ws = upgrade(&server, "/r", true, Some(&token), Via::Header).unwrap();
        assert_eq!(closed(&mut ws), (4429, "too many connections".into()));
        let _other = v1(&server, "/r", Some(&hs("b", &["r"], &[])));
        assert!(metrics(&server).contains("mioket_auth_refusals_total{reason=\"too_many_connections\"} 2"));
    }

    #[test]
    fn the_publish_rate_refuses_then_closes() {
        let server =
            server(&["--anonymous-read", "*", "--anonymous-write", "*", "--publish-rate", "1", "--publish-burst", "2"]);
        let mut ws = v1(&server, "/r", None);
        assert_eq!(envelope(&mut ws)["type"], "welcome");
        for i in 0..2 {
            send(&mut ws, json!({"op": "publish", "data": "x", "id": format!("ok{i}")}));
            assert_eq!(envelope(&mut ws)["type"], "ack");
            assert_eq!(envelope(&mut ws)["type"], "message");
        }
        for i in 0..9 {
            send(&mut ws, json!({"op": "publish", "data": "x", "id": format!("no{i}")}));
            assert_eq!(envelope(&mut ws)["reason"], "rate limited");
        }
        send(&mut ws, json!({"op": "publish", "data": "x"}));
        assert_eq!(closed(&mut ws), (4429, "rate limited".into()));
        // A plain client has no error channel: closed at the first refusal.
        let mut p = plain(&server, "/r", None);
        assert_eq!(text(&mut p), "hi");
        for _ in 0..3 {
            let _ = p.send(Message::text("x"));
        }
        loop {
            match p.read() {
                Ok(Message::Close(Some(f))) => {
                    break assert_eq!((u16::from(f.code), f.reason.as_str()), (4429, "rate limited"))
                }
                Ok(_) => continue,
                Err(e) => panic!("{e}"),
            }
        }
        assert!(metrics(&server).contains("mioket_auth_refusals_total{reason=\"rate_limited\"}"));
    }
}

mod moderation {
    use super::*;

    #[test]
    fn disconnect_closes_every_connection_of_the_user_4410() {
        let server = server(&[]);
        let token = hs("troll", &["r"], &[]);
        let mut a = v1(&server, "/r", Some(&token));
        let mut b = plain(&server, "/r", Some(&token));
        let mut other = v1(&server, "/r", Some(&hs("nice", &["r"], &[])));
        assert_eq!(envelope(&mut other)["type"], "welcome");
        let (status, body) = api(&server, "POST", "/api/users/troll/disconnect", "spamming");
        assert_eq!(status, 200);
        assert_eq!(serde_json::from_str::<Value>(&body).unwrap(), json!({"user": "troll", "connections": 2}));
        assert_eq!(closed(&mut a), (4410, "spamming".into()));
        assert_eq!(closed(&mut b), (4410, "spamming".into()));
        send(&mut other, json!({"op": "ping", "id": "still"}));
        assert_eq!(envelope(&mut other)["id"], "still");
        assert!(metrics(&server).contains("mioket_api_disconnects_total 1"));
        let (_, body) = api(&server, "POST", "/api/users/nobody/disconnect", "");
        assert_eq!(serde_json::from_str::<Value>(&body).unwrap(), json!({"user": "nobody", "connections": 0}));
    }

    #[test]
    fn removal_from_a_room_leaves_v1_members_and_closes_plain_ones_4403() {
        let server = server(&[]);
        let token = hs("u", &["r", "s"], &[]);
        let mut v = v1(&server, "/s", Some(&token));
        assert_eq!(envelope(&mut v)["type"], "welcome");
        send(&mut v, json!({"op": "join", "room": "r"}));
        assert_eq!(envelope(&mut v)["room"], "r");
        let mut p = plain(&server, "/r", Some(&token));
        let (status, body) = api(&server, "DELETE", "/api/rooms/r/users/u", "");
        assert_eq!(status, 200);
        assert_eq!(serde_json::from_str::<Value>(&body).unwrap(), json!({"room": "r", "user": "u", "connections": 2}));
        assert_eq!(envelope(&mut v), json!({"type": "left", "room": "r", "reason": "removed"}));
        assert_eq!(closed(&mut p), (4403, "removed".into()));
        send(&mut v, json!({"op": "ping", "id": "s"}));
        assert_eq!(envelope(&mut v)["id"], "s", "still in its other room");
    }

    #[test]
    fn the_moderation_api_needs_the_api_token() {
        let server = server(&[]);
        let (status, _) =
            http(server.addr, "POST /api/users/u/disconnect HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(status, 401);
    }
}

/// With `--redis`: identities and moderation across nodes over one real redis-server.
mod redis_nodes {
    use super::*;
    use common::redis::RedisServer;

    /// A node of `redis` checking HS256 tokens, anonymous clients reading and writing
    /// everywhere.
    fn node(redis: &RedisServer) -> Server {
        let url = redis.url();
        let s = server(&["--redis", &url, "--anonymous-read", "*", "--anonymous-write", "*", "--ping-interval", "0"]);
        wait_backplane_up(&[&s]);
        s
    }

    /// The welcome (whatever else came first is a test failure), then the messages.
    fn welcome(ws: &mut Ws) -> Value {
        let w = envelope(ws);
        assert_eq!(w["type"], "welcome", "{w}");
        w
    }

    fn message(ws: &mut Ws) -> Value {
        loop {
            let v = envelope(ws);
            if v["type"] == "message" {
                return v;
            }
        }
    }

    #[test]
    fn messages_carry_from_on_every_node_live_in_history_and_in_resume() {
        need_redis!();
        let redis = RedisServer::start(false);
        let (a, b) = (node(&redis), node(&redis));
        // A sub with a newline and a non-ASCII character: it travels in hex.
        let sub = "al\nice ☃";
        let mut alice = v1(&a, "/chat", Some(&hs(sub, &["chat"], &["chat"])));
        let w = welcome(&mut alice);
        assert_eq!(w["user"], sub, "a welcome after a join that waited for Redis names the user: {w}");
        assert!(w["expires_in"].as_u64().unwrap() > 3500, "{w}");
        let epoch = w["epoch"].as_str().unwrap().to_string();
        let mut bob = v1(&b, "/chat", Some(&hs("bob", &["chat"], &[])));
        assert_eq!(welcome(&mut bob)["user"], "bob");
        let mut anon = v1(&b, "/chat", None);
        assert!(welcome(&mut anon).get("user").is_none());
        // A client cannot forge `from`: the token's sub, or nothing.
        send(&mut alice, json!({"op": "publish", "data": "one", "from": "mallory", "id": "1"}));
        send(&mut anon, json!({"op": "publish", "data": "two", "from": "mallory", "id": "2"}));
        let (status, _) = api(&a, "POST", "/api/rooms/chat/messages", "three");
        assert_eq!(status, 200);
        for ws in [&mut alice, &mut bob, &mut anon] {
            three_with_their_senders(ws, sub, "live");
        }
        // History on a node that mirrored the room live, and on a new node (read from
        // the room's stream), and a resume there.
        let c = node(&redis);
        for (server, path) in
            [(&b, "/chat".to_string()), (&c, "/chat".into()), (&c, format!("/chat?since=0&epoch={epoch}"))]
        {
            let mut late = v1(server, &path, None);
            welcome(&mut late);
            three_with_their_senders(&mut late, sub, &path);
        }
        // A plain member still gets the payloads verbatim.
        let mut plain_member = plain(&c, "/chat", None);
        assert_eq!(text(&mut plain_member), "hi");
        let mut got: Vec<String> = (0..3).map(|_| text(&mut plain_member)).collect();
        got.sort();
        assert_eq!(got, ["one", "three", "two"]);
    }

    #[test]
    fn moderation_acts_on_every_node() {
        need_redis!();
        let redis = RedisServer::start(false);
        let (a, b) = (node(&redis), node(&redis));
        let troll = hs("troll", &["r", "s"], &[]);
        let mut on_a = v1(&a, "/r", Some(&troll));
        let mut plain_on_b = plain(&b, "/r", Some(&troll));
        let mut v1_on_b = v1(&b, "/s", Some(&troll));
        assert_eq!(welcome(&mut on_a)["user"], "troll");
        assert_eq!(text(&mut plain_on_b), "hi");
        assert_eq!(welcome(&mut v1_on_b)["room"], "s");
        send(&mut v1_on_b, json!({"op": "join", "room": "r"}));
        assert_eq!(welcome(&mut v1_on_b)["room"], "r");
        let mut nice = v1(&b, "/r", Some(&hs("nice", &["r"], &[])));
        welcome(&mut nice);
        // Removal from "r" on A reaches B: the plain member is closed, the v1 one leaves.
        let (status, body) = api(&a, "DELETE", "/api/rooms/r/users/troll", "");
        assert_eq!(status, 200);
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body, json!({"room": "r", "user": "troll", "connections": 1}), "this node's count");
        assert_eq!(envelope(&mut on_a), json!({"type": "left", "room": "r", "reason": "removed"}));
        assert_eq!(closed(&mut plain_on_b), (4403, "removed".into()));
        assert_eq!(envelope(&mut v1_on_b), json!({"type": "left", "room": "r", "reason": "removed"}));
        // One disconnect on A closes the user's connections on both nodes.
        let mut again_on_b = v1(&b, "/r", Some(&troll));
        welcome(&mut again_on_b);
        let (status, body) = api(&a, "POST", "/api/users/troll/disconnect", "bye");
        assert_eq!(status, 200);
        assert_eq!(serde_json::from_str::<Value>(&body).unwrap(), json!({"user": "troll", "connections": 1}));
        for ws in [&mut on_a, &mut v1_on_b, &mut again_on_b] {
            assert_eq!(closed(ws), (4410, "bye".into()));
        }
        send(&mut nice, json!({"op": "ping", "id": "still"}));
        assert_eq!(envelope(&mut nice)["id"], "still", "other users stay");
        assert!(metrics(&a).contains("mioket_api_disconnects_total 1"));
        assert!(metrics(&b).contains("mioket_api_disconnects_total 0"), "counted where the call was made");
    }

    /// Messages 1 to 3, in order: "one" from `sub`, "two" and "three" from nobody.
    fn three_with_their_senders(ws: &mut Ws, sub: &str, what: &str) {
        for seq in 1..=3 {
            let m = message(ws);
            assert_eq!(m["seq"], seq, "{what}: {m}");
            let from = if m["data"] == "one" { json!(sub) } else { Value::Null };
            assert_eq!(m["from"], from, "{what}: {m}");
        }
    }
}
