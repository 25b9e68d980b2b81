//! Tokens and permissions in virtual time: expiry on the housekeeping timer, the
//! grants and counts a closing client gives back.

use super::*;
use crate::config::Secret;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::json;

const SECRET: &str = "app test secret";

fn keyed() -> Config {
    Config {
        welcome: Some("hi".into()),
        jwt_secret: Some(Secret(SECRET.into())),
        jwt_leeway: Duration::ZERO,
        max_connections_per_user: Some(5),
        ..Config::default()
    }
}

fn token(sub: &str, exp: u64) -> String {
    let claims = json!({"sub": sub, "exp": exp, "rooms": {"read": ["r"], "write": ["r"]}});
    jsonwebtoken::encode(&Header::default(), &claims, &EncodingKey::from_secret(SECRET.as_bytes()).unwrap()).unwrap()
}

fn upgrade(app: &mut App<Peer>, token: &str, now: Instant) -> (usize, Vec<u8>) {
    let id = connect(app, Listener::Main, now);
    let request = format!(
        "GET /r HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Authorization: Bearer {token}\r\n\r\n"
    );
    feed(app, id, request.as_bytes(), now);
    let out = flush(app).remove(&id).unwrap_or_default();
    (id, out)
}

#[test]
fn a_token_expires_on_the_housekeeping_timer_and_its_client_is_closed_4001() {
    let now = Instant::now();
    let mut app: App<Peer> = App::new(keyed());
    let exp = app.unix_now(now) + 10;
    let (id, out) = upgrade(&mut app, &token("u", exp), now);
    assert!(out.starts_with(b"HTTP/1.1 101 "), "{}", String::from_utf8_lossy(&out));
    // The presence owed by the join first.
    app.handle_housekeeping(now);
    flush(&mut app);
    let at = app.poll_housekeeping().expect("the expiry is a deadline");
    assert!(at > now + Duration::from_secs(9) && at <= now + Duration::from_secs(12), "{:?}", at - now);
    app.handle_housekeeping(now + Duration::from_secs(5));
    assert!(!flush(&mut app).contains_key(&id), "not yet");
    app.handle_housekeeping(at);
    let out = flush(&mut app).remove(&id).unwrap_or_default();
    assert_eq!(out, close_frame(4001, "token expired"));
}

#[test]
fn a_closing_client_gives_back_its_grant_and_its_count() {
    let now = Instant::now();
    let mut app: App<Peer> = App::new(keyed());
    let t = token("u", app.unix_now(now) + 60);
    let (a, _) = upgrade(&mut app, &t, now);
    let (b, _) = upgrade(&mut app, &t, now);
    assert!(Rc::ptr_eq(app.grants.get(a).unwrap(), app.grants.get(b).unwrap()), "one grant for one token");
    assert_eq!(app.grants.distinct(), 1);
    assert_eq!(app.per_user.count("u"), 2);
    for id in [a, b] {
        feed(&mut app, id, &close_frame_masked(), now);
        flush(&mut app);
        app.handle_eof(id);
    }
    assert!(app.grants.is_empty());
    assert_eq!(app.per_user.count("u"), 0);
    assert_eq!(app.auth.cached_grants(), 0);
}

/// A client's close frame (masked, code 1000).
fn close_frame_masked() -> Vec<u8> {
    vec![0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe8]
}
