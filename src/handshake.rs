//! The HTTP side of RFC 6455 section 4: find the end of a request head, parse it
//! once with httparse, validate the upgrade, and write the answer.

use base64::Engine;
use sha1::{Digest, Sha1};

use crate::error::HandshakeError;

/// Request heads beyond this many bytes are answered with 431.
pub const MAX_HEAD: usize = 8 * 1024;
/// Header lines beyond this many are answered with 431.
pub const MAX_HEADERS: usize = 64;

const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// What a complete, well-formed request asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    /// A valid WebSocket upgrade; the value is the `Sec-WebSocket-Accept` to answer with.
    Upgrade { accept: [u8; 28] },
    /// A plain GET without an upgrade (the browser page, /healthz, ...).
    Get { path: String },
}

/// Finds the end of the head (the byte after `\r\n\r\n`), looking only at bytes
/// from `from` on (minus 3, for a terminator split across reads).
pub fn find_head_end(buf: &[u8], from: usize) -> Option<usize> {
    let start = from.saturating_sub(3);
    buf.get(start..)?.windows(4).position(|w| w == b"\r\n\r\n").map(|i| start + i + 4)
}

/// Parses and validates a complete request head (ending with `\r\n\r\n`).
pub fn parse_request(head: &[u8], allowed_origins: &[String]) -> Result<Request, HandshakeError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Err(httparse::Error::TooManyHeaders) => return Err(HandshakeError::TooManyHeaders),
        _ => return Err(HandshakeError::Malformed),
    }
    let (Some(method), Some(path), Some(version)) = (req.method, req.path, req.version) else {
        return Err(HandshakeError::Malformed);
    };
    let header = |name: &str| req.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value);
    let count = |name: &str| req.headers.iter().filter(|h| h.name.eq_ignore_ascii_case(name)).count();

    let Some(upgrade) = header("upgrade") else {
        return if method == "GET" { Ok(Request::Get { path: path.to_string() }) } else { Err(HandshakeError::NotGet) };
    };
    // RFC 6455 4.2.1: the rules a server checks, in order.
    if method != "GET" {
        return Err(HandshakeError::NotGet);
    }
    if version < 1 {
        return Err(HandshakeError::OldHttp);
    }
    if header("host").is_none() {
        return Err(HandshakeError::MissingHost);
    }
    if !has_token(upgrade, "websocket") {
        return Err(HandshakeError::NotWebSocketUpgrade);
    }
    if !header("connection").is_some_and(|v| has_token(v, "upgrade")) {
        return Err(HandshakeError::MissingConnectionUpgrade);
    }
    if header("sec-websocket-version").map(trim) != Some(b"13".as_slice()) || count("sec-websocket-version") > 1 {
        return Err(HandshakeError::UnsupportedVersion);
    }
    let key = match header("sec-websocket-key") {
        Some(key) if count("sec-websocket-key") == 1 => trim(key),
        _ => return Err(HandshakeError::BadKey),
    };
    let decoded = base64::engine::general_purpose::STANDARD.decode(key).map_err(|_| HandshakeError::BadKey)?;
    if decoded.len() != 16 {
        return Err(HandshakeError::BadKey);
    }
    if !allowed_origins.is_empty() {
        let origin = header("origin").map(trim).unwrap_or_default();
        if !allowed_origins.iter().any(|o| o.as_bytes().eq_ignore_ascii_case(origin)) {
            return Err(HandshakeError::OriginRefused);
        }
    }
    Ok(Request::Upgrade { accept: accept_key(key) })
}

/// RFC 6455 4.2.2: base64(SHA-1(key + GUID)).
pub fn accept_key(key: &[u8]) -> [u8; 28] {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(GUID);
    let mut out = [0u8; 28];
    // A 20-byte digest is always 28 base64 characters.
    let _ = base64::engine::general_purpose::STANDARD.encode_slice(sha.finalize(), &mut out);
    out
}

/// Writes the 101 answer into `out`; returns its length (always 129).
pub fn write_switching_protocols(accept: &[u8; 28], out: &mut [u8]) -> usize {
    let parts: [&[u8]; 3] = [
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ",
        accept,
        b"\r\n\r\n",
    ];
    let mut n = 0;
    for part in parts {
        out[n..n + part.len()].copy_from_slice(part);
        n += part.len();
    }
    n
}

/// The length of the 101 answer.
pub const SWITCHING_PROTOCOLS_LEN: usize = 129;

/// A refusal: status line, a plain-text reason, and `Connection: close`.
pub fn error_response(err: HandshakeError) -> Vec<u8> {
    let extra = if err == HandshakeError::UnsupportedVersion { "Sec-WebSocket-Version: 13\r\n" } else { "" };
    let body = format!("{}\n", err.reason());
    format!(
        "HTTP/1.1 {} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n{body}",
        err.status(),
        status_text(err.status()),
        body.len()
    )
    .into_bytes()
}

pub fn status_text(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

fn trim(v: &[u8]) -> &[u8] {
    v.trim_ascii()
}

/// Whether a comma-separated header value contains `token` (case-insensitive).
fn has_token(value: &[u8], token: &str) -> bool {
    value.split(|&b| b == b',').any(|t| trim(t).eq_ignore_ascii_case(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn a_valid_upgrade_is_accepted_and_answered_with_the_rfc_101() {
        let req = with_version("13");
        let Ok(Request::Upgrade { accept }) = parse_request(req.as_bytes(), &[]) else { panic!() };
        let mut out = [0u8; 256];
        let n = write_switching_protocols(&accept, &mut out);
        assert_eq!(n, SWITCHING_PROTOCOLS_LEN);
        assert_eq!(
            std::str::from_utf8(&out[..n]).unwrap(),
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
        );
    }

    #[test]
    fn header_names_and_tokens_are_case_insensitive() {
        let req = format!("GET / HTTP/1.1\r\nhost: x\r\nupgrade: WebSocket\r\nconnection: keep-alive, Upgrade\r\nsec-websocket-key: {RFC_KEY}\r\nsec-websocket-version: 13\r\n\r\n");
        assert!(matches!(parse_request(req.as_bytes(), &[]), Ok(Request::Upgrade { .. })));
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
        let no_key = "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n";
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
        assert_eq!(
            parse_request(with_version("13").as_bytes(), &allowed),
            Err(HandshakeError::OriginRefused),
            "no Origin"
        );
    }

    #[test]
    fn a_plain_get_is_not_an_upgrade() {
        let req = b"GET /index.html?x=1 HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(parse_request(req, &[]), Ok(Request::Get { path: "/index.html?x=1".into() }));
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
    fn the_head_end_is_found_across_reads() {
        let head = b"GET / HTTP/1.1\r\nHost: x\r\n\r\nextra";
        assert_eq!(find_head_end(head, 0), Some(head.len() - 5));
        let end = head.len() - 5;
        for from in 0..end {
            assert_eq!(find_head_end(&head[..end], from), Some(end), "from {from}");
        }
        assert_eq!(find_head_end(&head[..end - 1], 0), None);
    }
}
