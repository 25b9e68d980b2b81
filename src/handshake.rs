//! The HTTP side of RFC 6455 section 4: find the end of a request head, parse it
//! once with httparse, validate the upgrade, and write the answer.

use sha1::{Digest, Sha1};

use crate::deflate;
use crate::error::HandshakeError;

/// Request heads beyond this many bytes are answered with 431.
pub const MAX_HEAD: usize = 8 * 1024;
/// Header lines beyond this many are answered with 431.
pub const MAX_HEADERS: usize = 64;

const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

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

/// What a valid upgrade asks for, whole enough for the application to decide on it
/// (as python websockets' `accept(request)`): the path and query, every offered
/// subprotocol in order, the `Authorization`, `Cookie` and `Origin` lines, and the
/// permessage-deflate offer. The wire layer knows no subprotocol name: the
/// application picks one (or none) and names it in `Conn::accept`.
///
/// One buffer holds the text parts, so a request costs one allocation as a bare
/// path did; it is bounded by the head (`MAX_HEAD`, so 16-bit offsets).
#[derive(Debug, PartialEq, Eq)]
pub struct UpgradeRequest {
    /// The target (path, `?`, query) as sent; then, when there are some, the offered
    /// subprotocols (joined by `,`), Authorization, Cookie (lines joined by `; `) and
    /// Origin, each where `spans` says.
    text: Vec<u8>,
    spans: [(u16, u16); 6],
    /// Which of Authorization, Cookie and Origin were sent (bits 0, 1, 2).
    present: u8,
    /// The first valid permessage-deflate offer of the `Sec-WebSocket-Extensions` lines
    /// (the application may decline it).
    pub deflate: Option<deflate::Agreement>,
}

const PATH: usize = 0;
const QUERY: usize = 1;
const PROTOCOLS: usize = 2;
const AUTHORIZATION: usize = 3;
const COOKIE: usize = 4;
const ORIGIN: usize = 5;

impl UpgradeRequest {
    /// The request target's path (from the absolute form too).
    pub fn path(&self) -> &str {
        std::str::from_utf8(self.part(PATH)).unwrap_or_default()
    }

    /// The query, without `?` (empty if none).
    pub fn query(&self) -> &str {
        std::str::from_utf8(self.part(QUERY)).unwrap_or_default()
    }

    /// Every subprotocol the `Sec-WebSocket-Protocol` lines offer, in order (RFC
    /// 6455 4.2.2: any line may offer some; tokens are trimmed, empty ones skipped).
    pub fn subprotocols(&self) -> impl Iterator<Item = &[u8]> {
        self.part(PROTOCOLS).split(|&b| b == b',').filter(|t| !t.is_empty())
    }

    /// Whether `protocol` is offered (tokens compare exactly).
    pub fn offers(&self, protocol: &str) -> bool {
        self.subprotocols().any(|t| t == protocol.as_bytes())
    }

    /// The `Authorization` line, as sent (there is at most one).
    pub fn authorization(&self) -> Option<&[u8]> {
        self.header(AUTHORIZATION, 0)
    }

    /// The `Cookie` lines, joined by `; ` when there are several.
    pub fn cookie(&self) -> Option<&[u8]> {
        self.header(COOKIE, 1)
    }

    /// The first `Origin` line, trimmed.
    pub fn origin(&self) -> Option<&[u8]> {
        self.header(ORIGIN, 2)
    }

    fn part(&self, i: usize) -> &[u8] {
        let (start, end) = self.spans[i];
        &self.text[start as usize..end as usize]
    }

    fn header(&self, i: usize, bit: u8) -> Option<&[u8]> {
        (self.present & (1 << bit) != 0).then(|| self.part(i))
    }

    /// Copies what the application may look at out of the head: the target alone in
    /// the usual case, one buffer in any case.
    fn new(
        target: &str,
        headers: &[httparse::Header<'_>],
        extensions: bool,
        lines: Option<Lines<'_>>,
    ) -> UpgradeRequest {
        let len = target.len() as u16;
        // Targets are short: a plain scan beats memchr's dispatch.
        let (path_end, query_start) = match target.bytes().position(|b| b == b'?') {
            Some(i) => (i as u16, i as u16 + 1),
            None => (len, len),
        };
        let deflate = extensions
            .then(|| {
                let lines = headers.iter().filter(|h| h.name.eq_ignore_ascii_case("sec-websocket-extensions"));
                deflate::negotiate(lines.map(|h| h.value))
            })
            .flatten();
        if let Some(lines) = lines {
            return UpgradeRequest::with_lines(target, (path_end, query_start), headers, lines, deflate);
        }
        UpgradeRequest {
            text: target.as_bytes().to_vec(),
            spans: [(0, path_end), (query_start, len), (len, len), (len, len), (len, len), (len, len)],
            present: 0,
            deflate,
        }
    }

    /// The target and the lines an application may decide on.
    #[cold]
    #[inline(never)]
    fn with_lines(
        target: &str,
        (path_end, query_start): (u16, u16),
        headers: &[httparse::Header<'_>],
        seen: Lines<'_>,
        deflate: Option<deflate::Agreement>,
    ) -> UpgradeRequest {
        let is_protocol = |h: &&httparse::Header<'_>| h.name.eq_ignore_ascii_case("sec-websocket-protocol");
        let is_cookie = |h: &&httparse::Header<'_>| h.name.eq_ignore_ascii_case("cookie");
        let origin = seen.origin.map(trim);
        let cap = target.len()
            + headers.iter().filter(is_protocol).map(|h| h.value.len() + 1).sum::<usize>()
            + seen.authorization.map_or(0, <[u8]>::len)
            + headers.iter().filter(is_cookie).map(|h| h.value.len() + 2).sum::<usize>()
            + origin.map_or(0, <[u8]>::len);
        let mut text = Vec::with_capacity(cap);
        text.extend_from_slice(target.as_bytes());
        let span = |text: &mut Vec<u8>, fill: &mut dyn FnMut(&mut Vec<u8>)| {
            let start = text.len() as u16;
            fill(text);
            (start, text.len() as u16)
        };
        let protocols = span(&mut text, &mut |text| {
            for h in headers.iter().filter(is_protocol) {
                for token in h.value.split(|&b| b == b',').map(trim).filter(|t| !t.is_empty()) {
                    if text.len() > target.len() {
                        text.push(b',');
                    }
                    text.extend_from_slice(token);
                }
            }
        });
        let authorization = span(&mut text, &mut |text| text.extend_from_slice(seen.authorization.unwrap_or_default()));
        let cookie = span(&mut text, &mut |text| {
            for (i, h) in headers.iter().filter(is_cookie).enumerate() {
                if i > 0 {
                    text.extend_from_slice(b"; ");
                }
                text.extend_from_slice(h.value);
            }
        });
        let origin_span = span(&mut text, &mut |text| text.extend_from_slice(origin.unwrap_or_default()));
        let len = target.len() as u16;
        UpgradeRequest {
            text,
            spans: [(0, path_end), (query_start, len), protocols, authorization, cookie, origin_span],
            present: u8::from(seen.authorization.is_some())
                | u8::from(seen.cookie) << 1
                | u8::from(origin.is_some()) << 2,
            deflate,
        }
    }
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
            _ => return Err(HandshakeError::MethodNotAllowed),
        };
        let body = match (seen.content_length, seen.chunked) {
            (_, true) => BodyLength::Unknown,
            (Some(length), false) => BodyLength::Length(parse_length(length)?),
            (None, false) => BodyLength::None,
        };
        let (authorization, content_type, expect_continue) =
            (seen.authorization, seen.content_type, seen.expect_continue);
        return Ok(Request::Http(Http { method, target, authorization, content_type, body, expect_continue }));
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
            let is = |name: &str| h.name.eq_ignore_ascii_case(name);
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

/// The base64 alphabet (RFC 4648 4).
const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// RFC 6455 4.2.1: whether a `Sec-WebSocket-Key` is the base64 of 16 bytes, as the
/// base64 crate's strict decoding takes it (padded, no stray bits): 21 characters
/// of the alphabet, one whose low 4 bits are zero (`A`, `Q`, `g`, `w`), then `==`.
/// A general decoder spent ~400 instructions per handshake on what is only a check.
fn is_key(key: &[u8]) -> bool {
    let is_base64 = |b: &u8| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/';
    match key {
        [body @ .., last, b'=', b'='] if body.len() == 21 => {
            matches!(last, b'A' | b'Q' | b'g' | b'w') && body.iter().all(is_base64)
        }
        _ => false,
    }
}

/// RFC 6455 4.2.2: base64(SHA-1(key + GUID)).
pub fn accept_key(key: &[u8]) -> [u8; 28] {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(GUID);
    let digest: [u8; 20] = sha.finalize().into();
    // 20 bytes are six groups of three and a last two (padded with one `=`): 28
    // characters, written straight (the base64 crate's general encoder took ~300).
    let mut out = [b'='; 28];
    let mut chunks = digest.chunks_exact(3);
    for (group, dst) in (&mut chunks).zip(out.chunks_exact_mut(4)) {
        let n = u32::from(group[0]) << 16 | u32::from(group[1]) << 8 | u32::from(group[2]);
        for (i, c) in dst.iter_mut().enumerate() {
            *c = BASE64[(n >> (18 - 6 * i) & 63) as usize];
        }
    }
    if let [a, b] = *chunks.remainder() {
        let n = u32::from(a) << 16 | u32::from(b) << 8;
        for (i, c) in out[24..27].iter_mut().enumerate() {
            *c = BASE64[(n >> (18 - 6 * i) & 63) as usize];
        }
    }
    out
}

/// Writes the 101 answer into `out` (at least `MAX_SWITCHING_PROTOCOLS_LEN` bytes),
/// naming the chosen subprotocol and extensions if any; returns its length (129
/// without either).
pub fn write_switching_protocols(
    accept: &[u8; 28],
    subprotocol: Option<&str>,
    extensions: Option<&str>,
    out: &mut [u8],
) -> usize {
    let (protocol_line, protocol): (&[u8], &[u8]) = match subprotocol {
        Some(p) => (b"\r\nSec-WebSocket-Protocol: ", p.as_bytes()),
        None => (b"", b""),
    };
    let (extensions_line, extensions): (&[u8], &[u8]) = match extensions {
        Some(e) => (b"\r\nSec-WebSocket-Extensions: ", e.as_bytes()),
        None => (b"", b""),
    };
    let parts: [&[u8]; 7] = [
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ",
        accept,
        protocol_line,
        protocol,
        extensions_line,
        extensions,
        b"\r\n\r\n",
    ];
    let mut n = 0;
    for part in parts {
        out[n..n + part.len()].copy_from_slice(part);
        n += part.len();
    }
    n
}

/// The length of the 101 answer without a subprotocol.
pub const SWITCHING_PROTOCOLS_LEN: usize = 129;
/// Room for the 101 answer with a subprotocol of up to 64 bytes and extensions of up
/// to 128.
pub const MAX_SWITCHING_PROTOCOLS_LEN: usize = SWITCHING_PROTOCOLS_LEN + 26 + 64 + 28 + 128;

/// A refusal: status line, a plain-text reason, and `Connection: close`.
pub fn error_response(err: HandshakeError) -> Vec<u8> {
    let extra = if err == HandshakeError::UnsupportedVersion { "Sec-WebSocket-Version: 13\r\n" } else { "" };
    refusal_response(err.status(), err.reason(), extra)
}

/// An HTTP error answer with `reason` as its plain-text body, `extra` header lines
/// (each ending in CRLF) and `Connection: close`: the wire layer's refusals and the
/// application's.
pub fn refusal_response(status: u16, reason: &str, extra: &str) -> Vec<u8> {
    let body = format!("{reason}\n");
    format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n{body}",
        status_text(status),
        body.len()
    )
    .into_bytes()
}

pub fn status_text(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        411 => "Length Required",
        413 => "Content Too Large",
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
/// A `Content-Length` value: digits only (RFC 9110 8.6).
fn parse_length(value: &[u8]) -> Result<u64, HandshakeError> {
    let digits = trim(value);
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(HandshakeError::Malformed);
    }
    Ok(digits.iter().fold(0, |n, d| n * 10 + u64::from(d - b'0')))
}

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
        let n = write_switching_protocols(&accept, Some("mioket.v1"), None, &mut out);
        assert_eq!(
            std::str::from_utf8(&out[..n]).unwrap(),
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Protocol: mioket.v1\r\n\r\n"
        );
    }

    #[test]
    fn an_upgrade_keeps_its_path_query_and_offered_protocols_and_extensions() {
        let req = upgrade_with(
            "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mioket.v1, chat\r\n\
             Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n",
        );
        let Ok(Request::Upgrade(Upgrade { request: upgrade, .. })) = parse_request(req.as_bytes(), &[]) else {
            panic!()
        };
        assert_eq!((upgrade.path(), upgrade.query()), ("/chat", ""));
        assert!(upgrade.offers("mioket.v1"));
        assert_eq!(upgrade.subprotocols().collect::<Vec<_>>(), [&b"mioket.v1"[..], b"chat"]);
        assert!(upgrade.deflate.is_some_and(|d| d.compress_to_peer()));
        let plain = with_version("13");
        let Ok(Request::Upgrade(Upgrade { request: upgrade, .. })) = parse_request(plain.as_bytes(), &[]) else {
            panic!()
        };
        assert_eq!((upgrade.offers("mioket.v1"), upgrade.deflate), (false, None));
        assert_eq!(upgrade.subprotocols().count(), 0);
        // Every extensions line counts; a declined offer leaves the next.
        let two = upgrade_with(
            "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Extensions: permessage-deflate; bogus\r\n\
             Sec-WebSocket-Extensions: x-other, permessage-deflate; server_max_window_bits=9\r\n",
        );
        let Ok(Request::Upgrade(Upgrade { request: upgrade, .. })) = parse_request(two.as_bytes(), &[]) else {
            panic!()
        };
        assert!(upgrade.deflate.is_some_and(|d| !d.compress_to_peer()));
        // Any line, any place in the list; tokens compare exactly.
        for (lines, offered) in [
            ("Sec-WebSocket-Protocol: chat\r\nSec-WebSocket-Protocol: x, mioket.v1\r\n", true),
            ("Sec-WebSocket-Protocol: Mioket.V1, mioket.v10\r\n", false),
        ] {
            let req = upgrade_with(&format!("Sec-WebSocket-Version: 13\r\n{lines}"));
            let Ok(Request::Upgrade(Upgrade { request, .. })) = parse_request(req.as_bytes(), &[]) else { panic!() };
            assert_eq!(request.offers("mioket.v1"), offered, "{lines}");
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
        assert_eq!(
            parse_request(req, &[]),
            Ok(Request::Http(Http {
                method: Method::Get,
                target: "/index.html?x=1",
                authorization: None,
                content_type: None,
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
        let get =
            |target: &str| match parse_request(format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(), &[]) {
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
        assert_eq!(
            parse_request(b"GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n", &[]),
            Err(HandshakeError::DuplicateHost)
        );
        assert_eq!(parse_request(b"GET / HTTP/1.1\r\n\r\n", &[]), Err(HandshakeError::MissingHost));
        assert_eq!(
            parse_request(b"GET / HTTP/1.0\r\n\r\n", &[]),
            Ok(Request::Http(Http {
                method: Method::Get,
                target: "/",
                authorization: None,
                content_type: None,
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
        assert!(
            resp.starts_with("HTTP/1.1 400 Bad Request\r\n") && resp.ends_with("more than one Authorization header\n")
        );
        let expect = b"POST /x HTTP/1.1\r\nHost: x\r\nExpect: 100-Continue\r\nContent-Length: 3\r\n\r\n";
        assert!(matches!(parse_request(expect, &[]), Ok(Request::Http(Http { expect_continue: true, .. }))));
        let other = b"POST /x HTTP/1.1\r\nHost: x\r\nExpect: something\r\nContent-Length: 3\r\n\r\n";
        assert!(matches!(parse_request(other, &[]), Ok(Request::Http(Http { expect_continue: false, .. }))));
    }
}
