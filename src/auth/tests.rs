use std::rc::Rc;
use std::time::{Duration, Instant};

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use proptest::prelude::*;
use serde_json::json;

use super::limits::{Counter, Limiter, PublishLimits, Verdict};
use super::*;
use crate::handshake::{parse_request, Request};

const SECRET: &[u8] = b"test secret of enough length";
const NOW: u64 = 1_800_000_000;
const RSA_KEY: &[u8] = include_bytes!("../../tests/keys/rsa.key");
const RSA_PEM: &[u8] = include_bytes!("../../tests/keys/rsa.pem");
const EC_KEY: &[u8] = include_bytes!("../../tests/keys/ec.key");
const EC_PEM: &[u8] = include_bytes!("../../tests/keys/ec.pem");
const ED_KEY: &[u8] = include_bytes!("../../tests/keys/ed.key");
const ED_PEM: &[u8] = include_bytes!("../../tests/keys/ed.pem");
const P384_PEM: &[u8] = include_bytes!("../../tests/keys/p384.pem");

fn claims(sub: &str) -> serde_json::Value {
    json!({"sub": sub, "exp": NOW + 3600, "rooms": {"read": ["lobby", "team/*", "inbox/{sub}"], "write": ["lobby"]}})
}

fn sign(alg: Algorithm, kid: Option<&str>, claims: &serde_json::Value) -> String {
    let key = match alg {
        Algorithm::HS256 => EncodingKey::from_secret(SECRET).unwrap(),
        Algorithm::RS256 => EncodingKey::from_rsa_pem(RSA_KEY).unwrap(),
        Algorithm::ES256 => EncodingKey::from_ec_pem(EC_KEY).unwrap(),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(ED_KEY).unwrap(),
        _ => unreachable!(),
    };
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn all_keys() -> Vec<Key> {
    vec![
        Key::secret(Some("secret".into()), SECRET).unwrap(),
        Key::public(Some("rsa".into()), RSA_PEM).unwrap(),
        Key::public(Some("ec".into()), EC_PEM).unwrap(),
        Key::public(Some("ed".into()), ED_PEM).unwrap(),
    ]
}

fn auth_with(keys: Vec<Key>) -> Auth {
    Auth::new(keys, Checks { audience: None, issuer: None }, 60, &[], &[])
}

fn check(auth: &mut Auth, token: &str) -> Result<Rc<Grant>, TokenError> {
    auth.grant(Some(token.as_bytes()), NOW)
}

#[test]
fn each_algorithm_checks_its_own_tokens() {
    let mut auth = auth_with(all_keys());
    for alg in [Algorithm::HS256, Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA] {
        let grant = check(&mut auth, &sign(alg, None, &claims("alice"))).unwrap_or_else(|e| panic!("{alg:?}: {e:?}"));
        assert_eq!(grant.sub(), Some("alice"));
        assert_eq!(grant.expires_in(NOW), Some(3600 + 60 + 1));
        assert!(auth.may_read(&grant, "lobby") && auth.may_write(&grant, "lobby"));
        assert!(auth.may_read(&grant, "team/42") && !auth.may_write(&grant, "team/42"));
        assert!(auth.may_read(&grant, "inbox/alice") && !auth.may_read(&grant, "inbox/bob"));
        assert!(!auth.may_read(&grant, "elsewhere"));
    }
}

#[test]
fn the_key_types_are_told_apart_and_p384_is_refused() {
    let algs: Vec<_> = all_keys().iter().map(Key::alg).collect();
    assert_eq!(algs, [Algorithm::HS256, Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA]);
    assert!(Key::public(None, P384_PEM).unwrap_err().contains("P-256"));
    assert!(Key::public(None, b"not a key").is_err());
    assert!(Key::public(None, RSA_KEY).is_err(), "a private key is not a public key");
    let short = Key::public(None, include_bytes!("../../tests/keys/rsa1024.pem")).err().unwrap();
    assert_eq!(short, "an RSA key of 1024 bits: at least 2048 are needed");
    assert!(Key::secret(None, b"\n").is_err(), "an empty secret");
}

#[test]
fn kid_picks_the_key_by_name_only() {
    let mut auth = auth_with(all_keys());
    assert!(check(&mut auth, &sign(Algorithm::RS256, Some("rsa"), &claims("a"))).is_ok());
    assert_eq!(check(&mut auth, &sign(Algorithm::RS256, Some("ec"), &claims("a"))).unwrap_err(), TokenError::Algorithm);
    assert_eq!(
        check(&mut auth, &sign(Algorithm::RS256, Some("nope"), &claims("a"))).unwrap_err(),
        TokenError::UnknownKey
    );
    // Rotation: two secrets, the token of either passes, the kid of the other refuses it.
    let keys =
        vec![Key::secret(Some("old".into()), b"old secret").unwrap(), Key::secret(Some("new".into()), SECRET).unwrap()];
    let mut auth = auth_with(keys);
    let token = sign(Algorithm::HS256, None, &claims("a"));
    assert!(check(&mut auth, &token).is_ok());
    assert_eq!(
        check(&mut auth, &sign(Algorithm::HS256, Some("old"), &claims("a"))).unwrap_err(),
        TokenError::Signature
    );
}

#[test]
fn the_algorithm_comes_from_the_key() {
    let mut auth = auth_with(vec![Key::public(None, RSA_PEM).unwrap()]);
    let body = b64(claims("mallory").to_string().as_bytes());
    // alg none, with and without a signature part.
    let none = b64(br#"{"alg":"none","typ":"JWT"}"#);
    assert_eq!(check(&mut auth, &format!("{none}.{body}.")).unwrap_err(), TokenError::Algorithm);
    assert_eq!(check(&mut auth, &format!("{none}.{body}.c2ln")).unwrap_err(), TokenError::Algorithm);
    let unknown = b64(br#"{"alg":"HS999"}"#);
    assert_eq!(check(&mut auth, &format!("{unknown}.{body}.c2ln")).unwrap_err(), TokenError::Algorithm);
    // HS256 made with the public key as its secret: no HMAC key, refused.
    let forged = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims("mallory"),
        &EncodingKey::from_secret(RSA_PEM).unwrap(),
    );
    assert_eq!(check(&mut auth, &forged.unwrap()).unwrap_err(), TokenError::Algorithm);
    // With a secret configured too, the forgery is a bad signature.
    let mut auth = auth_with(all_keys());
    let forged = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims("mallory"),
        &EncodingKey::from_secret(RSA_PEM).unwrap(),
    );
    assert_eq!(check(&mut auth, &forged.unwrap()).unwrap_err(), TokenError::Signature);
    // A PS256 token: RSA keys here are RS256 only.
    let ps = jsonwebtoken::encode(
        &Header::new(Algorithm::PS256),
        &claims("a"),
        &EncodingKey::from_rsa_pem(RSA_KEY).unwrap(),
    );
    assert_eq!(check(&mut auth, &ps.unwrap()).unwrap_err(), TokenError::Algorithm);
}

#[test]
fn garbage_is_malformed_and_long_tokens_are_too_large() {
    let mut auth = auth_with(all_keys());
    for garbage in ["", "x", "a.b", "a.b.c", "....", "\u{ff}.\u{ff}.\u{ff}", "eyJhbGciOiJIUzI1NiJ9.%%%.sig"] {
        assert!(check(&mut auth, garbage).is_err(), "{garbage:?}");
    }
    assert_eq!(check(&mut auth, "a.b.c").unwrap_err(), TokenError::Malformed);
    assert_eq!(auth.grant(Some(&[0xff, b'.', 0xfe, b'.', 0xfd]), NOW).unwrap_err(), TokenError::Malformed);
    let long = "a".repeat(MAX_TOKEN + 1);
    assert_eq!(check(&mut auth, &long).unwrap_err(), TokenError::TooLarge);
    let long = "a".repeat(8 * 1024);
    assert_eq!(check(&mut auth, &long).unwrap_err(), TokenError::TooLarge);
    // A signed token whose signature was changed.
    let mut token = sign(Algorithm::HS256, None, &claims("a"));
    let last = token.pop().unwrap();
    token.push(if last == 'A' { 'B' } else { 'A' });
    assert_eq!(check(&mut auth, &token).unwrap_err(), TokenError::Signature);
}

#[test]
fn claims_are_checked() {
    let mut auth = auth_with(all_keys());
    let mut bad = |claims: serde_json::Value| check(&mut auth, &sign(Algorithm::HS256, None, &claims)).map(|_| ());
    let exp = NOW + 60;
    assert_eq!(bad(json!({"exp": exp})), Err(TokenError::Claims), "no sub");
    assert_eq!(bad(json!({"sub": "", "exp": exp})), Err(TokenError::Claims), "empty sub");
    assert_eq!(bad(json!({"sub": "x".repeat(129), "exp": exp})), Err(TokenError::Claims));
    assert_eq!(bad(json!({"sub": "x".repeat(128), "exp": exp})), Ok(()));
    assert_eq!(bad(json!({"sub": "a"})), Err(TokenError::Claims), "no exp");
    assert_eq!(bad(json!({"sub": 7, "exp": exp})), Err(TokenError::Claims));
    assert_eq!(bad(json!({"sub": "a", "exp": exp, "rooms": "all"})), Err(TokenError::Claims));
    assert_eq!(bad(json!({"sub": "a", "exp": exp, "info": "x"})), Err(TokenError::Claims));
    assert_eq!(bad(json!({"sub": "a", "exp": exp, "info": {"n": "x".repeat(1024)}})), Err(TokenError::Claims));
    assert_eq!(bad(json!({"sub": "a", "exp": exp, "info": {"name": "Alice"}})), Ok(()));
    assert_eq!(bad(json!({"sub": "a", "exp": exp, "aud": "someone"})), Ok(()), "aud unchecked when not configured");
}

#[test]
fn info_is_kept_as_compact_json() {
    let mut auth = auth_with(all_keys());
    let token = sign(Algorithm::HS256, None, &json!({"sub": "a", "exp": NOW + 60, "info": {"name": "Alice"}}));
    let grant = check(&mut auth, &token).unwrap();
    assert_eq!(grant.user.as_ref().unwrap().info.as_deref(), Some(r#"{"name":"Alice"}"#));
}

#[test]
fn time_is_checked_with_the_leeway() {
    let mut auth = auth_with(all_keys());
    let mut at = |exp: u64, nbf: Option<u64>| {
        let mut c = json!({"sub": "a", "exp": exp});
        if let Some(nbf) = nbf {
            c["nbf"] = json!(nbf);
        }
        check(&mut auth, &sign(Algorithm::HS256, None, &c)).map(|_| ())
    };
    assert_eq!(at(NOW - 61, None), Err(TokenError::Expired));
    assert_eq!(at(NOW - 60, None), Ok(()));
    assert_eq!(at(NOW + 10, Some(NOW + 61)), Err(TokenError::NotYetValid));
    assert_eq!(at(NOW + 100, Some(NOW + 60)), Ok(()));
    assert_eq!(TokenError::Expired.close_code(), 4001);
    assert_eq!(TokenError::NotYetValid.reason(), "token expired");
    assert_eq!(TokenError::Signature.close_code(), 4401);
}

#[test]
fn audience_and_issuer_when_configured() {
    let checks = Checks { audience: Some("chat".into()), issuer: Some("https://issuer".into()) };
    let mut auth = Auth::new(all_keys(), checks, 60, &[], &[]);
    let mut with = |extra: serde_json::Value| {
        let mut c = json!({"sub": "a", "exp": NOW + 60});
        c.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        check(&mut auth, &sign(Algorithm::HS256, None, &c)).map(|_| ())
    };
    assert_eq!(with(json!({"aud": "chat", "iss": "https://issuer"})), Ok(()));
    assert_eq!(with(json!({"aud": ["other", "chat"], "iss": "https://issuer"})), Ok(()));
    assert_eq!(with(json!({"iss": "https://issuer"})), Err(TokenError::Audience));
    assert_eq!(with(json!({"aud": "other", "iss": "https://issuer"})), Err(TokenError::Audience));
    assert_eq!(with(json!({"aud": "chat"})), Err(TokenError::Issuer));
    assert_eq!(with(json!({"aud": "chat", "iss": "evil"})), Err(TokenError::Issuer));
}

#[test]
fn grants_are_shared_by_token_and_forgotten_with_their_last_connection() {
    let mut auth = auth_with(all_keys());
    let token = sign(Algorithm::HS256, None, &claims("a"));
    let one = check(&mut auth, &token).unwrap();
    let two = check(&mut auth, &token).unwrap();
    assert!(Rc::ptr_eq(&one, &two));
    assert_eq!(auth.cached_grants(), 1);
    // A cached grant still expires.
    assert_eq!(auth.grant(Some(token.as_bytes()), NOW + 3600 + 61).unwrap_err(), TokenError::Expired);
    auth.release(&one);
    drop(one);
    assert_eq!(auth.cached_grants(), 1);
    auth.release(&two);
    drop(two);
    assert_eq!(auth.cached_grants(), 0);
}

#[test]
fn anonymous_defaults_follow_the_keys() {
    let mut open = auth_with(vec![]);
    let anon = open.grant(None, NOW).unwrap();
    assert!(open.may_read(&anon, "any") && open.may_write(&anon, "any"));
    // No key: a token is not checked (the open server of today).
    let grant = open.grant(Some(b"garbage"), NOW).unwrap();
    assert!(grant.user.is_none());
    let mut closed = auth_with(all_keys());
    let anon = closed.grant(None, NOW).unwrap();
    assert!(!closed.may_read(&anon, "lobby") && !closed.may_write(&anon, "lobby"));
    // Anonymous patterns add to a user's.
    let checks = Checks { audience: None, issuer: None };
    let mut mixed = Auth::new(all_keys(), checks, 60, &["public/*".into()], &[]);
    let anon = mixed.grant(None, NOW).unwrap();
    assert!(mixed.may_read(&anon, "public/x") && !mixed.may_write(&anon, "public/x"));
    let user = mixed.grant(Some(sign(Algorithm::HS256, None, &claims("a")).as_bytes()), NOW).unwrap();
    assert!(mixed.may_read(&user, "public/x") && mixed.may_read(&user, "lobby"));
}

#[test]
fn patterns_match_names_prefixes_and_sub() {
    let p = Patterns::compile(["lobby", "team/42/*", "inbox/{sub}", "{sub}/*"], Some("alice"));
    for room in ["lobby", "team/42/", "team/42/x/y", "inbox/alice", "alice/notes"] {
        assert!(p.matches(room), "{room}");
    }
    for room in ["lobby2", "team/42", "team/4", "inbox/bob", "inbox/alice2", "bob/notes", "alice"] {
        assert!(!p.matches(room), "{room}");
    }
    // The substitution is literal: a sub of `*` is no wildcard.
    let p = Patterns::compile(["inbox/{sub}"], Some("*"));
    assert!(p.matches("inbox/*") && !p.matches("inbox/bob"));
    // Anonymous clients have no sub: such patterns match nothing.
    let p = Patterns::compile(["inbox/{sub}"], None);
    assert!(p.is_empty());
    assert!(Patterns::compile(["*"], None).is_all());
    assert!(Patterns::none().is_empty() && !Patterns::none().matches("x"));
    // Patterns are NFC, as room names in paths are.
    assert!(Patterns::compile(["caf\u{65}\u{301}"], None).matches("caf\u{e9}"));
}

/// The reference: a room matches a pattern (with `{sub}` replaced) if it is equal to
/// it, or, for a final `*`, if some split of the room is the stem plus any rest.
fn naive(pattern: &str, sub: &str, room: &str) -> bool {
    match pattern.strip_suffix('*') {
        None => pattern.replace("{sub}", sub) == room,
        Some(stem) => {
            let stem = stem.replace("{sub}", sub);
            (0..=room.len()).filter(|&i| room.is_char_boundary(i)).any(|i| room[..i] == stem)
        }
    }
}

proptest! {
    #[test]
    fn the_matcher_agrees_with_the_reference(
        pattern in "(a|b|/|\\*|\\{sub\\}){0,6}",
        sub in "[ab*/]{1,3}",
        room in "[ab*/]{0,8}",
    ) {
        let compiled = Patterns::compile([pattern.as_str()], Some(&sub));
        prop_assert_eq!(compiled.matches(&room), naive(&pattern, &sub, &room));
    }
}

fn request(extra: &str, target: &str) -> crate::handshake::UpgradeRequest {
    let head = format!(
        "GET {target} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    );
    match parse_request(head.as_bytes(), &[]).unwrap() {
        Request::Upgrade(upgrade) => upgrade.request,
        _ => panic!("not an upgrade"),
    }
}

#[test]
fn the_token_is_found_in_its_order_of_precedence() {
    let all = "Authorization: Bearer H\r\nSec-WebSocket-Protocol: mioket.v1, mioket.token.P\r\n";
    let token = |r: &crate::handshake::UpgradeRequest| token_of(r).map(|t| t.into_owned());
    assert_eq!(token(&request(all, "/r?token=Q")), Some(b"H".to_vec()));
    let no_header = "Sec-WebSocket-Protocol: mioket.v1\r\nSec-WebSocket-Protocol: mioket.token.P\r\n";
    assert_eq!(token(&request(no_header, "/r?token=Q")), Some(b"P".to_vec()));
    assert_eq!(token(&request("", "/r?since=3&token=Q%2E")), Some(b"Q.".to_vec()));
    assert_eq!(token(&request("authorization: bearer  L \r\n", "/r")), Some(b"L".to_vec()));
    assert_eq!(token(&request("Authorization: Basic dTpw\r\n", "/r?token=Q")), Some(b"Q".to_vec()));
    assert_eq!(token(&request("", "/r")), None);
}

#[test]
fn the_publish_buckets_start_full_and_refill() {
    let limits = PublishLimits { rate: 2.0, burst: 3.0, bytes_rate: 0.0 };
    let t0 = Instant::now();
    let mut limiter = Limiter::new(&limits, t0);
    for _ in 0..3 {
        assert_eq!(limiter.publish(&limits, 10, false, t0), Verdict::Allowed);
    }
    assert_eq!(limiter.publish(&limits, 10, false, t0), Verdict::Refused);
    let later = t0 + Duration::from_millis(500);
    assert_eq!(limiter.publish(&limits, 10, false, later), Verdict::Allowed);
    assert_eq!(limiter.publish(&limits, 10, false, later), Verdict::Refused);
    // A plain client has no error channel: closed at once.
    assert_eq!(limiter.publish(&limits, 10, true, later), Verdict::Close);
    // The tenth refusal within 10 s closes.
    let mut verdicts = (0..8).map(|_| limiter.publish(&limits, 10, false, later));
    assert!(verdicts.by_ref().take(7).all(|v| v == Verdict::Refused));
    assert_eq!(verdicts.next(), Some(Verdict::Close));
}

#[test]
fn the_byte_bucket_lets_a_large_message_through_when_full() {
    let limits = PublishLimits { rate: 0.0, burst: 1.0, bytes_rate: 100.0 };
    let t0 = Instant::now();
    let mut limiter = Limiter::new(&limits, t0);
    assert_eq!(limiter.publish(&limits, 250, false, t0), Verdict::Allowed);
    assert_eq!(limiter.publish(&limits, 1, false, t0 + Duration::from_secs(1)), Verdict::Refused);
    assert_eq!(limiter.publish(&limits, 100, false, t0 + Duration::from_secs(3)), Verdict::Allowed);
    assert!(!PublishLimits::default().is_on());
}

#[test]
fn counters_stop_at_their_maximum() {
    let mut per_ip = Counter::new(Some(2));
    assert!(per_ip.try_add("a") && per_ip.try_add("a") && !per_ip.try_add("a"));
    assert!(per_ip.try_add("b"));
    per_ip.remove(&"a");
    assert_eq!(per_ip.count(&"a"), 1);
    assert!(per_ip.try_add("a"));
    let mut off = Counter::new(None);
    assert!((0..100).all(|_| off.try_add(1)));
    assert_eq!(off.count(&1), 0);
}

#[test]
fn minted_tokens_pass_the_server_with_the_same_file() {
    let dir = std::env::temp_dir().join(format!("mioket-mint-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("secret.txt");
    std::fs::write(&file, b"file secret\n").unwrap();
    let args = crate::config::TokenArgs {
        secret_file: file.clone(),
        sub: "user-1".into(),
        read: vec!["lobby".into()],
        write: vec!["lobby".into()],
        ttl: Duration::from_secs(3600),
        info: Some(r#"{"name":"One"}"#.into()),
        aud: None,
        iss: None,
        kid: Some("secret".into()),
    };
    let token = mint::token(&args).unwrap();
    let mut auth = auth_with(vec![Key::load_secret(&file).unwrap()]);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let grant = auth.grant(Some(token.as_bytes()), now).unwrap();
    assert_eq!(grant.sub(), Some("user-1"));
    assert!(auth.may_write(&grant, "lobby") && !auth.may_write(&grant, "other"));
    std::fs::remove_dir_all(&dir).unwrap();
}
