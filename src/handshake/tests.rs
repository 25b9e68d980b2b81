//! The upgrade request, checked and answered: RFC 6455 4.2 rule by rule.

use super::answer::GUID;
use super::*;
use sha1::{Digest, Sha1};

const RFC_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

fn upgrade_with(extra: &str) -> String {
    format!("GET /chat HTTP/1.1\r\nHost: server.example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {RFC_KEY}\r\n{extra}\r\n")
}

fn with_version(v: &str) -> String {
    upgrade_with(&format!("Sec-WebSocket-Version: {v}\r\n"))
}

// RFC 6455 1.3
#[test]
fn computes_the_rfc_accept_key() {
    assert_eq!(&accept_key(RFC_KEY.as_bytes()), b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
}

proptest::proptest! {
    #[test]
    fn the_accept_key_is_the_base64_of_the_digest(key in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40)) {
        use base64::Engine;
        let digest: [u8; 20] = Sha1::new().chain_update(&key).chain_update(GUID).finalize().into();
        let expected = base64::engine::general_purpose::STANDARD.encode(digest);
        proptest::prop_assert_eq!(&accept_key(&key)[..], expected.as_bytes());
    }

    #[test]
    fn a_key_is_taken_exactly_when_strict_base64_decodes_it_to_16_bytes(
        bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 16),
        edits in proptest::collection::vec((0usize..26, proptest::sample::select(b"AQgwBz09+/=-_ \x00\xff".to_vec())), 0..3),
        cut in 0usize..4,
    ) {
        use base64::Engine;
        let engine = base64::engine::general_purpose::STANDARD;
        let mut key = engine.encode(&bytes).into_bytes();
        for (at, b) in edits {
            if at < key.len() { key[at] = b } else { key.push(b) }
        }
        key.truncate(key.len() - cut.min(key.len()));
        let mut decoded = [0u8; 16];
        proptest::prop_assert_eq!(is_key(&key), engine.decode_slice(&key, &mut decoded) == Ok(16), "{:?}", key);
    }
}

#[test]
fn every_last_character_of_a_key_is_checked_as_strict_base64_does() {
    use base64::Engine;
    for last in 0..=255u8 {
        let mut key = *b"AAAAAAAAAAAAAAAAAAAAAA==";
        key[21] = last;
        let mut decoded = [0u8; 16];
        let strict = base64::engine::general_purpose::STANDARD.decode_slice(key, &mut decoded) == Ok(16);
        assert_eq!(is_key(&key), strict, "{last}");
    }
}

#[test]
fn a_valid_upgrade_is_accepted_and_answered_with_the_rfc_101() {
    let req = with_version("13");
    let Ok(Request::Upgrade(Upgrade { accept, .. })) = parse_request(req.as_bytes(), &[]) else { panic!() };
    let mut out = [0u8; 256];
    let n = write_switching_protocols(&accept, None, None, &mut out);
    assert_eq!(n, SWITCHING_PROTOCOLS_LEN);
    assert_eq!(
        std::str::from_utf8(&out[..n]).unwrap(),
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
    );
    let n = write_switching_protocols(&accept, Some("chat.v1"), None, &mut out);
    assert_eq!(
        std::str::from_utf8(&out[..n]).unwrap(),
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Protocol: chat.v1\r\n\r\n"
    );
}

#[test]
fn an_upgrade_keeps_its_path_query_and_offered_protocols_and_extensions() {
    let req = upgrade_with(
        "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: chat.v1, chat\r\n\
         Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n",
    );
    let Ok(Request::Upgrade(Upgrade { request: upgrade, .. })) = parse_request(req.as_bytes(), &[]) else { panic!() };
    assert_eq!((upgrade.path(), upgrade.query()), ("/chat", ""));
    assert!(upgrade.offers("chat.v1"));
    assert_eq!(upgrade.subprotocols().collect::<Vec<_>>(), [&b"chat.v1"[..], b"chat"]);
    assert!(upgrade.deflate.is_some_and(|d| d.compress_to_peer()));
    let plain = with_version("13");
    let Ok(Request::Upgrade(Upgrade { request: upgrade, .. })) = parse_request(plain.as_bytes(), &[]) else { panic!() };
    assert_eq!((upgrade.offers("chat.v1"), upgrade.deflate), (false, None));
    assert_eq!(upgrade.subprotocols().count(), 0);
    // Every extensions line counts; a declined offer leaves the next.
    let two = upgrade_with(
        "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Extensions: permessage-deflate; bogus\r\n\
         Sec-WebSocket-Extensions: x-other, permessage-deflate; server_max_window_bits=9\r\n",
    );
    let Ok(Request::Upgrade(Upgrade { request: upgrade, .. })) = parse_request(two.as_bytes(), &[]) else { panic!() };
    assert!(upgrade.deflate.is_some_and(|d| !d.compress_to_peer()));
    // Any line, any place in the list; tokens compare exactly.
    for (lines, offered) in [
        ("Sec-WebSocket-Protocol: chat\r\nSec-WebSocket-Protocol: x, chat.v1\r\n", true),
        ("Sec-WebSocket-Protocol: Chat.V1, chat.v10\r\n", false),
    ] {
        let req = upgrade_with(&format!("Sec-WebSocket-Version: 13\r\n{lines}"));
        let Ok(Request::Upgrade(Upgrade { request, .. })) = parse_request(req.as_bytes(), &[]) else { panic!() };
        assert_eq!(request.offers("chat.v1"), offered, "{lines}");
    }
}

#[test]
fn an_upgrade_keeps_every_offered_protocol_and_the_lines_an_application_decides_on() {
    let req = upgrade_with(
        "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: a, , b\r\nCookie: x=1\r\n\
         Origin:  http://o.example \r\nsec-websocket-protocol: c\r\nAuthorization: Bearer t\r\ncookie: y=2\r\n",
    )
    .replace("GET /chat", "GET /chat?since=4");
    let Ok(Request::Upgrade(Upgrade { request, .. })) = parse_request(req.as_bytes(), &[]) else { panic!() };
    assert_eq!((request.path(), request.query()), ("/chat", "since=4"));
    assert_eq!(request.subprotocols().collect::<Vec<_>>(), [&b"a"[..], b"b", b"c"]);
    assert_eq!(request.authorization(), Some(&b"Bearer t"[..]));
    assert_eq!(request.cookie(), Some(&b"x=1; y=2"[..]));
    assert_eq!(request.origin(), Some(&b"http://o.example"[..]));
    let bare = with_version("13");
    let Ok(Request::Upgrade(Upgrade { request, .. })) = parse_request(bare.as_bytes(), &[]) else { panic!() };
    assert_eq!((request.authorization(), request.cookie(), request.origin()), (None, None, None));
    let empty = upgrade_with("Sec-WebSocket-Version: 13\r\nCookie:\r\n");
    let Ok(Request::Upgrade(Upgrade { request, .. })) = parse_request(empty.as_bytes(), &[]) else { panic!() };
    assert_eq!(request.cookie(), Some(&b""[..]), "an empty line is there");
}

#[test]
fn header_names_and_tokens_are_case_insensitive() {
    let req = format!("GET / HTTP/1.1\r\nhost: x\r\nupgrade: WebSocket\r\nconnection: keep-alive, Upgrade\r\nsec-websocket-key: {RFC_KEY}\r\nsec-websocket-version: 13\r\n\r\n");
    assert!(matches!(parse_request(req.as_bytes(), &[]), Ok(Request::Upgrade(_))));
}

#[test]
fn a_wrong_version_gets_426_naming_version_13() {
    assert_eq!(parse_request(with_version("8").as_bytes(), &[]), Err(HandshakeError::UnsupportedVersion));
    let resp = String::from_utf8(error_response(HandshakeError::UnsupportedVersion)).unwrap();
    assert!(resp.starts_with("HTTP/1.1 426 Upgrade Required\r\n"));
    assert!(resp.contains("\r\nSec-WebSocket-Version: 13\r\n"));
}

#[test]
fn bad_upgrades_get_400_with_a_reason() {
    let no_key =
        "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n";
    assert_eq!(parse_request(no_key.as_bytes(), &[]), Err(HandshakeError::BadKey));
    let short_key = with_version("13").replace(RFC_KEY, "c2hvcnQ=");
    assert_eq!(parse_request(short_key.as_bytes(), &[]), Err(HandshakeError::BadKey));
    let no_conn = with_version("13").replace("Connection: Upgrade\r\n", "");
    assert_eq!(parse_request(no_conn.as_bytes(), &[]), Err(HandshakeError::MissingConnectionUpgrade));
    let no_host = with_version("13").replace("Host: server.example.com\r\n", "");
    assert_eq!(parse_request(no_host.as_bytes(), &[]), Err(HandshakeError::MissingHost));
    let http10 = with_version("13").replace("HTTP/1.1", "HTTP/1.0");
    assert_eq!(parse_request(http10.as_bytes(), &[]), Err(HandshakeError::OldHttp));
    assert_eq!(parse_request(b"\x00\x01 garbage\r\n\r\n", &[]), Err(HandshakeError::Malformed));
    let resp = String::from_utf8(error_response(HandshakeError::BadKey)).unwrap();
    assert!(
        resp.starts_with("HTTP/1.1 400 Bad Request\r\n")
            && resp.ends_with("\r\n\r\nSec-WebSocket-Key must be 16 bytes in base64\n")
    );
}

#[test]
fn a_post_upgrade_gets_405() {
    let post = with_version("13").replace("GET", "POST");
    assert_eq!(parse_request(post.as_bytes(), &[]), Err(HandshakeError::NotGet));
}

#[test]
fn origins_are_checked_only_when_a_list_is_given() {
    let req = upgrade_with("Sec-WebSocket-Version: 13\r\nOrigin: http://evil.example\r\n");
    assert!(parse_request(req.as_bytes(), &[]).is_ok());
    let allowed = vec!["http://good.example".to_string()];
    assert_eq!(parse_request(req.as_bytes(), &allowed), Err(HandshakeError::OriginRefused));
    let good = req.replace("evil", "GOOD");
    assert!(parse_request(good.as_bytes(), &allowed).is_ok());
    assert_eq!(parse_request(with_version("13").as_bytes(), &allowed), Err(HandshakeError::OriginRefused), "no Origin");
}

#[test]
fn a_plain_get_is_not_an_upgrade() {
    let req = b"GET /index.html?x=1 HTTP/1.1\r\nHost: x\r\n\r\n";
    assert_eq!(
        parse_request(req, &[]),
        Ok(Request::Http(Http {
            method: Method::Get,
            target: "/index.html?x=1",
            authorization: None,
            content_type: None,
            idempotency_key: None,
            body: BodyLength::None,
            expect_continue: false
        }))
    );
}

#[test]
fn too_many_headers_get_431() {
    let mut req = String::from("GET / HTTP/1.1\r\n");
    for i in 0..=MAX_HEADERS {
        req.push_str(&format!("X-{i}: y\r\n"));
    }
    req.push_str("\r\n");
    assert_eq!(parse_request(req.as_bytes(), &[]), Err(HandshakeError::TooManyHeaders));
}

#[test]
fn bare_newlines_end_lines_and_the_head() {
    let req = with_version("13").replace("\r\n", "\n");
    assert_eq!(find_head_end(req.as_bytes(), 0), Some(req.len()));
    assert!(matches!(parse_request(req.as_bytes(), &[]), Ok(Request::Upgrade(_))));
    let mixed = b"GET / HTTP/1.1\r\nHost: x\n\r\nrest";
    assert_eq!(find_head_end(mixed, 0), Some(mixed.len() - 4));
    for from in 0..mixed.len() - 4 {
        assert_eq!(find_head_end(&mixed[..mixed.len() - 4], from), Some(mixed.len() - 4), "from {from}");
    }
}

#[test]
fn bytes_that_cannot_begin_a_request_are_refused_before_the_head_ends() {
    // A TLS ClientHello's first bytes.
    assert_eq!(check_start(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]), Err(HandshakeError::Malformed));
    assert_eq!(check_start(b"\x00\x01\x02"), Err(HandshakeError::Malformed));
    assert_eq!(check_start(b"GET / HTTP/9"), Err(HandshakeError::Malformed));
    for prefix in ["", "G", "GET", "GET /cha", "GET / HTTP/1.", "GET / HTTP/1.1\r\nHost: x", "\r\nGET /"] {
        assert_eq!(check_start(prefix.as_bytes()), Ok(()), "{prefix:?}");
    }
    let long = format!("GET /{} HTTP/1.1\r\n", "a".repeat(1000));
    assert_eq!(check_start(long.as_bytes()), Ok(()), "a long target is judged when the head is whole");
}

#[test]
fn the_absolute_form_is_routed_by_its_path() {
    let get = |target: &str| match parse_request(format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(), &[]) {
        Ok(Request::Http(Http { target, .. })) => target.to_string(),
        other => panic!("{other:?}"),
    };
    assert_eq!(get("http://example.com/echo?x=1"), "/echo?x=1");
    assert_eq!(get("HTTP://example.com:8765/"), "/");
    assert_eq!(get("http://example.com"), "/");
    assert_eq!(get("/plain"), "/plain");
    let upgrade = with_version("13").replace("GET /chat", "GET ws://server.example.com/chat?since=4");
    let Ok(Request::Upgrade(Upgrade { request, .. })) = parse_request(upgrade.as_bytes(), &[]) else { panic!() };
    assert_eq!((request.path(), request.query()), ("/chat", "since=4"));
}

#[test]
fn host_must_be_there_once() {
    let two = with_version("13").replace("Host: server.example.com\r\n", "Host: a\r\nHost: b\r\n");
    assert_eq!(parse_request(two.as_bytes(), &[]), Err(HandshakeError::DuplicateHost));
    assert_eq!(parse_request(b"GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n", &[]), Err(HandshakeError::DuplicateHost));
    assert_eq!(parse_request(b"GET / HTTP/1.1\r\n\r\n", &[]), Err(HandshakeError::MissingHost));
    assert_eq!(
        parse_request(b"GET / HTTP/1.0\r\n\r\n", &[]),
        Ok(Request::Http(Http {
            method: Method::Get,
            target: "/",
            authorization: None,
            content_type: None,
            idempotency_key: None,
            body: BodyLength::None,
            expect_continue: false
        }))
    );
    let resp = String::from_utf8(error_response(HandshakeError::DuplicateHost)).unwrap();
    assert!(resp.starts_with("HTTP/1.1 400 Bad Request\r\n") && resp.ends_with("more than one Host header\n"));
}

#[test]
fn every_upgrade_and_connection_line_counts() {
    let second = upgrade_with("Sec-WebSocket-Version: 13\r\n")
        .replace("Upgrade: websocket", "Upgrade: h2c\r\nUpgrade: websocket");
    assert!(matches!(parse_request(second.as_bytes(), &[]), Ok(Request::Upgrade(_))));
    let conn = upgrade_with("Sec-WebSocket-Version: 13\r\n")
        .replace("Connection: Upgrade", "Connection: keep-alive\r\nConnection: Upgrade");
    assert!(matches!(parse_request(conn.as_bytes(), &[]), Ok(Request::Upgrade(_))));
    let neither =
        upgrade_with("Sec-WebSocket-Version: 13\r\n").replace("Upgrade: websocket", "Upgrade: h2c\r\nUpgrade: foo");
    assert_eq!(parse_request(neither.as_bytes(), &[]), Err(HandshakeError::NotWebSocketUpgrade));
}

#[test]
fn an_upgrade_with_a_body_is_refused() {
    for extra in ["Content-Length: 5\r\n", "Transfer-Encoding: chunked\r\n", "Content-Length: x\r\n"] {
        let req = upgrade_with(&format!("Sec-WebSocket-Version: 13\r\n{extra}"));
        assert_eq!(parse_request(req.as_bytes(), &[]), Err(HandshakeError::UpgradeWithBody), "{extra:?}");
    }
    let empty_body = upgrade_with("Sec-WebSocket-Version: 13\r\nContent-Length: 0\r\n");
    assert!(matches!(parse_request(empty_body.as_bytes(), &[]), Ok(Request::Upgrade(_))));
}

#[test]
fn the_head_end_is_found_across_reads() {
    let head = b"GET / HTTP/1.1\r\nHost: x\r\n\r\nextra";
    assert_eq!(find_head_end(head, 0), Some(head.len() - 5));
    let end = head.len() - 5;
    for from in 0..end {
        assert_eq!(find_head_end(&head[..end], from), Some(end), "from {from}");
    }
    assert_eq!(find_head_end(&head[..end - 1], 0), None);
}

#[test]
fn two_authorization_lines_get_400_and_expect_100_continue_is_seen() {
    let two = b"POST /api/rooms HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer a\r\nauthorization: Bearer b\r\n\r\n";
    assert_eq!(parse_request(two, &[]), Err(HandshakeError::DuplicateAuthorization));
    let resp = String::from_utf8(error_response(HandshakeError::DuplicateAuthorization)).unwrap();
    assert!(resp.starts_with("HTTP/1.1 400 Bad Request\r\n") && resp.ends_with("more than one Authorization header\n"));
    let expect = b"POST /x HTTP/1.1\r\nHost: x\r\nExpect: 100-Continue\r\nContent-Length: 3\r\n\r\n";
    assert!(matches!(parse_request(expect, &[]), Ok(Request::Http(Http { expect_continue: true, .. }))));
    let other = b"POST /x HTTP/1.1\r\nHost: x\r\nExpect: something\r\nContent-Length: 3\r\n\r\n";
    assert!(matches!(parse_request(other, &[]), Ok(Request::Http(Http { expect_continue: false, .. }))));
}

#[test]
fn header_names_compare_as_eq_ignore_ascii_case_does_for_every_token_byte() {
    const NAMES: [&str; 14] = [
        "host",
        "origin",
        "cookie",
        "expect",
        "upgrade",
        "connection",
        "content-type",
        "authorization",
        "content-length",
        "transfer-encoding",
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-protocol",
        "sec-websocket-extensions",
    ];
    // RFC 9110 5.6.2: the characters httparse lets into a header name.
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    for lower in NAMES {
        assert!(is_name(lower.to_ascii_uppercase().as_bytes(), lower.as_bytes()));
        assert!(!is_name(&lower.as_bytes()[1..], lower.as_bytes()), "lengths differ");
        for at in 0..lower.len() {
            for b in (0..=255u8).filter(|&b| token(b)) {
                let mut name = lower.as_bytes().to_vec();
                name[at] = b;
                let expected = name.eq_ignore_ascii_case(lower.as_bytes());
                assert_eq!(is_name(&name, lower.as_bytes()), expected, "{lower} with {b} at {at}");
            }
        }
    }
}
