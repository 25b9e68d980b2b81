//! The HTTP side of RFC 6455 section 4: find the end of a request head, parse it
//! once with httparse and validate the upgrade (here); what the application sees of
//! it (`request.rs`); the answers, 101 and refusals (`answer.rs`).

use crate::error::HandshakeError;

mod answer;
mod request;

use answer::BASE64;
pub use answer::{
    accept_key, error_response, refusal_response, status_text, write_switching_protocols, MAX_SWITCHING_PROTOCOLS_LEN,
    SWITCHING_PROTOCOLS_LEN,
};
pub use request::UpgradeRequest;

/// Request heads beyond this many bytes are answered with 431.
pub const MAX_HEAD: usize = 8 * 1024;

/// Header lines beyond this many are answered with 431.
pub const MAX_HEADERS: usize = 64;

/// What a complete, well-formed request asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Request<'a> {
    Upgrade(Upgrade),
    /// A plain HTTP request (the browser page, /healthz, the API, ...).
    Http(Http<'a>),
}

/// The methods we answer without an upgrade; any other is refused with 405.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    /// Only the moderation API takes it (`DELETE /api/rooms/{room}/users/{user}`).
    Delete,
}

/// A plain HTTP request, borrowed from its head.
#[derive(Debug, PartialEq, Eq)]
pub struct Http<'a> {
    pub method: Method,
    /// The request target's path and query (from the absolute form too).
    pub target: &'a str,
    /// The first `Authorization` and `Content-Type` lines, as sent.
    pub authorization: Option<&'a [u8]>,
    pub content_type: Option<&'a [u8]>,
    /// The first `Idempotency-Key` line (an API publish's id, docs/protocol.md).
    pub idempotency_key: Option<&'a [u8]>,
    pub body: BodyLength,
    /// `Expect: 100-continue`: the client waits for a 100 before it sends the body.
    pub expect_continue: bool,
}

/// What the head says of a body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyLength {
    /// Neither `Content-Length` nor `Transfer-Encoding`.
    None,
    Length(u64),
    /// `Transfer-Encoding` (chunked or other): we take bodies with a length only.
    Unknown,
}

/// A valid WebSocket upgrade: the accept key, and the request as the application sees it.
#[derive(Debug, PartialEq, Eq)]
pub struct Upgrade {
    /// The `Sec-WebSocket-Accept` value to answer with.
    pub accept: [u8; 28],
    pub request: UpgradeRequest,
}

/// Finds the end of the head (the byte after the empty line that ends it), looking
/// only at bytes from `from` on (minus 2, for a terminator split across reads).
/// RFC 9112 2.2 lets a recipient take a bare `\n` as a line end, so `\n\n` and
/// `\n\r\n` end a head as well as `\r\n\r\n`.
pub fn find_head_end(buf: &[u8], from: usize) -> Option<usize> {
    let start = from.saturating_sub(2);
    let tail = buf.get(start..)?;
    memchr::memchr_iter(b'\n', tail).find_map(|i| match tail.get(i + 1..) {
        Some([b'\n', ..]) => Some(start + i + 2),
        Some([b'\r', b'\n', ..]) => Some(start + i + 3),
        _ => None,
    })
}

/// How much of an unfinished head `check_start` looks at: enough for any request
/// line that matters, and a head sent a byte at a time costs linear time.
pub const START_CHECKED: usize = 256;

/// Whether the bytes of an unfinished head can still begin an HTTP/1.1 request.
/// A TLS ClientHello (0x16 ...) or binary garbage is refused at once instead of
/// holding its slot until the handshake timeout.
pub fn check_start(head: &[u8]) -> Result<(), HandshakeError> {
    let mut headers = [httparse::EMPTY_HEADER; 16];
    match httparse::Request::new(&mut headers).parse(&head[..head.len().min(START_CHECKED)]) {
        // More header lines than this small array: judged when the head is whole.
        Ok(_) | Err(httparse::Error::TooManyHeaders) => Ok(()),
        Err(_) => Err(HandshakeError::Malformed),
    }
}

/// Parses and validates a complete request head (ending with `\r\n\r\n`).
pub fn parse_request<'a>(head: &'a [u8], allowed_origins: &[String]) -> Result<Request<'a>, HandshakeError> {
    // `Conn` never passes more; the request's offsets are 16-bit.
    if head.len() > MAX_HEAD {
        return Err(HandshakeError::HeadTooLarge);
    }
    // Uninitialized: httparse writes the lines it finds (zeroing 64 of them first
    // cost ~200 instructions per handshake).
    let mut headers = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    match req.parse_with_uninit_headers(head, &mut headers) {
        Ok(httparse::Status::Complete(_)) => {}
        Err(httparse::Error::TooManyHeaders) => return Err(HandshakeError::TooManyHeaders),
        _ => return Err(HandshakeError::Malformed),
    }
    let (Some(method), Some(path), Some(version)) = (req.method, req.path, req.version) else {
        return Err(HandshakeError::Malformed);
    };
    let seen = Seen::scan(req.headers);
    // RFC 9112 6.3: differing Content-Length lines make the message invalid.
    if seen.conflicting_lengths {
        return Err(HandshakeError::Malformed);
    }
    // RFC 9112 3.2: an HTTP/1.1 request has exactly one Host line.
    match seen.hosts {
        0 if version >= 1 => return Err(HandshakeError::MissingHost),
        0 | 1 => {}
        _ => return Err(HandshakeError::DuplicateHost),
    }
    if seen.authorizations > 1 {
        return Err(HandshakeError::DuplicateAuthorization);
    }
    let target = origin_form(path);
    if !seen.upgrade {
        let method = match method {
            "GET" => Method::Get,
            "POST" => Method::Post,
            "DELETE" => Method::Delete,
            _ => return Err(HandshakeError::MethodNotAllowed),
        };
        let body = match (seen.content_length, seen.chunked) {
            (_, true) => BodyLength::Unknown,
            (Some(length), false) => BodyLength::Length(parse_length(length)?),
            (None, false) => BodyLength::None,
        };
        let (authorization, content_type, expect_continue) =
            (seen.authorization, seen.content_type, seen.expect_continue);
        let idempotency_key = seen.idempotency_key;
        return Ok(Request::Http(Http {
            method,
            target,
            authorization,
            content_type,
            idempotency_key,
            body,
            expect_continue,
        }));
    };
    // RFC 6455 4.2.1: the rules a server checks, in order.
    if method != "GET" {
        return Err(HandshakeError::NotGet);
    }
    if version < 1 {
        return Err(HandshakeError::OldHttp);
    }
    if !seen.upgrade_websocket {
        return Err(HandshakeError::NotWebSocketUpgrade);
    }
    if !seen.connection_upgrade {
        return Err(HandshakeError::MissingConnectionUpgrade);
    }
    // Bytes after the head are frames; a body there would be read as frames.
    if seen.chunked || seen.content_length.is_some_and(|l| trim(l) != b"0") {
        return Err(HandshakeError::UpgradeWithBody);
    }
    if seen.version.map(trim) != Some(b"13".as_slice()) || seen.versions > 1 {
        return Err(HandshakeError::UnsupportedVersion);
    }
    let key = match seen.key {
        Some(key) if seen.keys == 1 => trim(key),
        _ => return Err(HandshakeError::BadKey),
    };
    if !is_key(key) {
        return Err(HandshakeError::BadKey);
    }
    if !allowed_origins.is_empty() {
        let origin = seen.origin.map(trim).unwrap_or_default();
        if !allowed_origins.iter().any(|o| o.as_bytes().eq_ignore_ascii_case(origin)) {
            return Err(HandshakeError::OriginRefused);
        }
    }
    // The lines an application decides on, when there are some: the Seen itself stays
    // in registers.
    let lines = (seen.more_lines || seen.authorization.is_some() || seen.origin.is_some()).then_some(Lines {
        authorization: seen.authorization,
        cookie: seen.cookie,
        origin: seen.origin,
    });
    let request = UpgradeRequest::new(target, req.headers, seen.extensions, lines);
    Ok(Request::Upgrade(Upgrade { accept: accept_key(key), request }))
}

/// The single lines an upgrade keeps for the application.
struct Lines<'a> {
    authorization: Option<&'a [u8]>,
    cookie: bool,
    origin: Option<&'a [u8]>,
}

/// The header lines a handshake looks at, found in one pass over the head: each
/// name is compared only with the names of its length.
#[derive(Default)]
struct Seen<'a> {
    hosts: usize,
    upgrade: bool,
    /// Some `Upgrade` line names websocket (every line counts).
    upgrade_websocket: bool,
    /// Some `Connection` line has the upgrade token.
    connection_upgrade: bool,
    /// The first `Content-Length`; a second one that differs makes the head malformed.
    content_length: Option<&'a [u8]>,
    conflicting_lengths: bool,
    /// `Transfer-Encoding` is present.
    chunked: bool,
    authorization: Option<&'a [u8]>,
    authorizations: usize,
    content_type: Option<&'a [u8]>,
    idempotency_key: Option<&'a [u8]>,
    expect_continue: bool,
    version: Option<&'a [u8]>,
    versions: usize,
    key: Option<&'a [u8]>,
    keys: usize,
    origin: Option<&'a [u8]>,
    /// Some `Cookie` line is there.
    cookie: bool,
    /// Some `Sec-WebSocket-Protocol` or `Cookie` line is there (read again when so).
    more_lines: bool,
    /// Some `Sec-WebSocket-Extensions` line is there (read again when it is).
    extensions: bool,
}

impl<'a> Seen<'a> {
    fn scan(headers: &[httparse::Header<'a>]) -> Seen<'a> {
        let mut seen = Seen::default();
        for h in headers {
            let is = |name: &str| is_name(h.name.as_bytes(), name.as_bytes());
            match h.name.len() {
                4 if is("host") => seen.hosts += 1,
                6 if is("origin") => _ = seen.origin.get_or_insert(h.value),
                6 if is("cookie") => {
                    seen.cookie = true;
                    seen.more_lines = true;
                }
                6 if is("expect") => seen.expect_continue |= has_token(h.value, "100-continue"),
                7 if is("upgrade") => {
                    seen.upgrade = true;
                    seen.upgrade_websocket |= has_token(h.value, "websocket");
                }
                10 if is("connection") => seen.connection_upgrade |= has_token(h.value, "upgrade"),
                12 if is("content-type") => _ = seen.content_type.get_or_insert(h.value),
                13 if is("authorization") => {
                    seen.authorization.get_or_insert(h.value);
                    seen.authorizations += 1;
                }
                15 if is("idempotency-key") => _ = seen.idempotency_key.get_or_insert(h.value),
                14 if is("content-length") => {
                    let first = *seen.content_length.get_or_insert(h.value);
                    seen.conflicting_lengths |= trim(first) != trim(h.value);
                }
                17 if is("transfer-encoding") => seen.chunked = true,
                17 if is("sec-websocket-key") => {
                    seen.key.get_or_insert(h.value);
                    seen.keys += 1;
                }
                21 if is("sec-websocket-version") => {
                    seen.version.get_or_insert(h.value);
                    seen.versions += 1;
                }
                // RFC 6455 4.2.2: any line may offer subprotocols.
                22 if is("sec-websocket-protocol") => seen.more_lines = true,
                24 if is("sec-websocket-extensions") => seen.extensions = true,
                _ => {}
            }
        }
        seen
    }
}

/// Whether a header name is `lower` (lowercase letters and `-`) in any case, eight
/// bytes at a time. httparse lets only token characters into a name, and of those
/// `c | 0x20` is a lowercase letter only for that letter in either case, and `-`
/// only for `-`: so OR-ing 0x20 compares exactly (at a third of the instructions
/// `eq_ignore_ascii_case` spends byte by byte).
fn is_name(name: &[u8], lower: &[u8]) -> bool {
    const CASE: u64 = 0x2020_2020_2020_2020;
    if name.len() != lower.len() {
        return false;
    }
    let (mut a, mut b) = (name.chunks_exact(8), lower.chunks_exact(8));
    let word = |c: &[u8]| u64::from_ne_bytes(c.try_into().unwrap_or_default());
    (&mut a).zip(&mut b).all(|(x, y)| word(x) | CASE == word(y))
        && a.remainder().iter().zip(b.remainder()).all(|(c, l)| c | 0x20 == *l)
}

/// RFC 9112 3.2.2: a server must accept the absolute form of a request target
/// (`http://host/path?q`) and route by its path and query.
fn origin_form(target: &str) -> &str {
    let after_scheme = ["http://", "https://", "ws://", "wss://"].iter().find_map(|scheme| {
        let head = target.get(..scheme.len())?;
        head.eq_ignore_ascii_case(scheme).then(|| &target[scheme.len()..])
    });
    match after_scheme {
        Some(rest) => match rest.find(['/', '?']) {
            Some(i) if rest[i..].starts_with('/') => &rest[i..],
            // `http://host?q` has the empty path, which is `/`; the query is dropped
            // with it rather than allocating a new target.
            _ => "/",
        },
        None => target,
    }
}

/// RFC 6455 4.2.1: whether a `Sec-WebSocket-Key` is the base64 of 16 bytes, as the
/// base64 crate's strict decoding takes it (padded, no stray bits): 21 characters
/// of the alphabet, one whose low 4 bits are zero (`A`, `Q`, `g`, `w`), then `==`.
/// A general decoder spent ~400 instructions per handshake on what is only a check.
fn is_key(key: &[u8]) -> bool {
    /// Which bytes are characters of the alphabet: one load per byte.
    const IS_BASE64: [bool; 256] = {
        let mut table = [false; 256];
        let mut i = 0;
        while i < BASE64.len() {
            table[BASE64[i] as usize] = true;
            i += 1;
        }
        table
    };
    match key {
        [body @ .., last, b'=', b'='] if body.len() == 21 => {
            matches!(last, b'A' | b'Q' | b'g' | b'w') && body.iter().all(|&b| IS_BASE64[usize::from(b)])
        }
        _ => false,
    }
}

fn trim(v: &[u8]) -> &[u8] {
    v.trim_ascii()
}

/// A `Content-Length` value: digits only (RFC 9110 8.6).
fn parse_length(value: &[u8]) -> Result<u64, HandshakeError> {
    let digits = trim(value);
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(HandshakeError::Malformed);
    }
    Ok(digits.iter().fold(0, |n, d| n * 10 + u64::from(d - b'0')))
}

/// Whether a comma-separated header value contains `token` (case-insensitive).
fn has_token(value: &[u8], token: &str) -> bool {
    value.split(|&b| b == b',').any(|t| trim(t).eq_ignore_ascii_case(token.as_bytes()))
}

#[cfg(test)]
mod tests;
