//! `UpgradeRequest`: what the application may look at of a valid upgrade, copied
//! out of the head into one buffer.

use super::{trim, Lines};
use crate::deflate;

/// What a valid upgrade asks for, whole enough for the application to decide on it
/// (as python websockets' `accept(request)`): the path and query, every offered
/// subprotocol in order, the `Authorization`, `Cookie` and `Origin` lines, and the
/// permessage-deflate offer. The wire layer knows no subprotocol name: the
/// application picks one (or none) and names it in `Conn::accept`.
///
/// One buffer holds the text parts, so a request costs one allocation at most (none
/// for a short bare target); it is bounded by the head (`MAX_HEAD`, so 16-bit offsets).
#[derive(Debug, PartialEq, Eq)]
pub struct UpgradeRequest {
    /// The target (path, `?`, query) as sent; then, when there are some, the offered
    /// subprotocols (joined by `,`), Authorization, Cookie (lines joined by `; `) and
    /// Origin, each where `spans` says.
    text: Text,
    spans: [(u16, u16); 6],
    /// Which of Authorization, Cookie and Origin were sent (bits 0, 1, 2).
    present: u8,
    /// The first valid permessage-deflate offer of the `Sec-WebSocket-Extensions` lines
    /// (the application may decline it).
    pub deflate: Option<deflate::Agreement>,
}

/// A target at most this long, with nothing else to keep, is kept inline.
const INLINE_TEXT: usize = 32;

/// The request's text: a short bare target (`/`, `/rooms/lobby`: most upgrades) inline,
/// anything else in one `Vec`.
#[derive(Debug, PartialEq, Eq)]
enum Text {
    Inline { len: u8, bytes: [u8; INLINE_TEXT] },
    Heap(Vec<u8>),
}

impl Text {
    fn of(target: &[u8]) -> Text {
        match target.len() {
            len @ ..=INLINE_TEXT => {
                let mut bytes = [0; INLINE_TEXT];
                bytes[..len].copy_from_slice(target);
                Text::Inline { len: len as u8, bytes }
            }
            _ => Text::Heap(target.to_vec()),
        }
    }

    fn as_bytes(&self) -> &[u8] {
        match self {
            Text::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Text::Heap(text) => text,
        }
    }
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
        &self.text.as_bytes()[start as usize..end as usize]
    }

    fn header(&self, i: usize, bit: u8) -> Option<&[u8]> {
        (self.present & (1 << bit) != 0).then(|| self.part(i))
    }

    /// Copies what the application may look at out of the head: the target alone in
    /// the usual case, one buffer in any case.
    pub(super) fn new(
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
            text: Text::of(target.as_bytes()),
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
            text: Text::Heap(text),
            spans: [(0, path_end), (query_start, len), protocols, authorization, cookie, origin_span],
            present: u8::from(seen.authorization.is_some())
                | u8::from(seen.cookie) << 1
                | u8::from(origin.is_some()) << 2,
            deflate,
        }
    }
}
