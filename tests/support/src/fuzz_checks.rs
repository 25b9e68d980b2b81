//! What the fuzz targets assert, shared by the libFuzzer targets (through
//! fuzz/src/lib.rs) and by the stable replay test tests/fuzz_replay.rs. So: std and
//! mioket's public API only, and every input is decoded by hand from plain bytes (no
//! `arbitrary`).
//!
//! Each `check_*` / `run_*` function panics when an invariant breaks; a panic is
//! what libFuzzer reports as a crash and what the replay test reports as a failure.

use std::io::IoSlice;
use std::time::{Duration, Instant};

use mioket::config::Limits;
use mioket::error::HandshakeError;
use mioket::frame::{encode_header, parse_header, CloseCode, Header, Opcode, MAX_HEADER_LEN};
use mioket::handshake::{self, Request};
use mioket::outqueue::{shared_message, Chunk};
use mioket::protocol::{Conn, Event};

use crate::frames::masked_with_key;

// ---------------------------------------------------------------------------
// frame_header: parse_header on arbitrary bytes.

/// `parse_header` never panics; what it accepts agrees with an independent reading
/// of the RFC 6455 5.2 layout and survives `encode_header` unchanged.
pub fn check_frame_header(data: &[u8]) {
    let (h, n) = match parse_header(data) {
        // "Need more bytes" is only possible while a whole header could still be missing.
        Ok(None) => return assert!(data.len() < MAX_HEADER_LEN, "Ok(None) on {} bytes", data.len()),
        Err(_) => return,
        Ok(Some(parsed)) => parsed,
    };
    assert!(n <= data.len() && n <= MAX_HEADER_LEN, "header length {n} of {} bytes", data.len());
    // A partial header consumes nothing (httparse's Partial is the model).
    for cut in 0..n {
        assert_eq!(parse_header(&data[..cut]), Ok(None), "prefix of {cut} bytes");
    }
    // The fields, read again the slow way.
    assert_eq!(h.fin, data[0] & 0x80 != 0);
    assert_eq!(h.opcode.bits(), data[0] & 0x0F);
    assert_eq!(data[0] & 0x30, 0, "RSV2 or RSV3 accepted");
    assert_eq!(h.compressed, data[0] & 0x40 != 0);
    assert!(!(h.compressed && h.opcode.is_control()), "a compressed control frame accepted");
    let (len, len_bytes) = match data[1] & 0x7F {
        126 => (data[2..4].iter().fold(0u64, |a, &b| a << 8 | u64::from(b)), 2),
        127 => (data[2..10].iter().fold(0u64, |a, &b| a << 8 | u64::from(b)), 8),
        short => (u64::from(short), 0),
    };
    assert_eq!(h.len, len);
    assert!(len < 1 << 63, "RFC 6455 5.2: the top bit of a 64-bit length is 0");
    let mask_at = 2 + len_bytes;
    assert_eq!(
        h.mask,
        data.get(mask_at..mask_at + 4).filter(|_| data[1] & 0x80 != 0).map(|k| [k[0], k[1], k[2], k[3]])
    );
    assert_eq!(n, mask_at + if h.mask.is_some() { 4 } else { 0 });
    // RFC 6455 5.5: control frames are final and carry at most 125 bytes.
    if h.opcode.is_control() {
        assert!(h.fin && h.len <= 125, "control frame {h:?}");
    }
    // Re-encoding (shortest form) parses back to the same header.
    let mut buf = [0u8; MAX_HEADER_LEN];
    let m = encode_header(&h, &mut buf);
    assert!(m <= n, "encode used {m} bytes, the peer only {n}");
    assert_eq!(parse_header(&buf[..m]), Ok(Some((h, m))));
}

// ---------------------------------------------------------------------------
// handshake: find_head_end and parse_request on arbitrary bytes.

/// The statuses a refused handshake may carry.
const HANDSHAKE_STATUSES: [u16; 6] = [400, 403, 405, 426, 431, 503];

pub fn check_handshake(data: &[u8]) {
    // RFC 9112 2.2: a line may end with a bare \n; an empty line ends the head.
    let naive_end = (0..data.len()).find_map(|i| match &data[i..] {
        [b'\n', b'\n', ..] => Some(i + 2),
        [b'\n', b'\r', b'\n', ..] => Some(i + 3),
        _ => None,
    });
    assert_eq!(handshake::find_head_end(data, 0), naive_end);
    // Searching on from a later read must still find a terminator split across reads.
    if let Some(end) = naive_end {
        assert_eq!(handshake::find_head_end(data, end - 1), Some(end));
    }
    // Conn only parses a complete head, but the parser must not care.
    let head = &data[..naive_end.unwrap_or(data.len())];
    let any_origin = check_request(head, &[]);
    let allowed = ["http://good.example".to_string()];
    let one_origin = check_request(head, &allowed);
    // An Origin list can only refuse more: it never changes an accept key or a path.
    match (&any_origin, &one_origin) {
        (Ok(Request::Upgrade(_)), Err(HandshakeError::OriginRefused)) => {}
        (a, b) => assert_eq!(a, b, "the Origin list changed more than the Origin verdict"),
    }
}

fn check_request<'a>(head: &'a [u8], origins: &[String]) -> Result<Request<'a>, HandshakeError> {
    let result = handshake::parse_request(head, origins);
    match &result {
        Ok(Request::Upgrade(upgrade)) => {
            let accept = &upgrade.accept;
            // The target split into path and query comes from the head.
            assert!(upgrade.request.path().len() + upgrade.request.query().len() < head.len());
            // base64 of a 20-byte SHA-1: 27 alphabet characters and one '='.
            assert!(accept[..27].iter().all(|&b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/'), "{accept:?}");
            assert_eq!(accept[27], b'=');
            let mut answer = [0u8; handshake::MAX_SWITCHING_PROTOCOLS_LEN];
            assert_eq!(
                handshake::write_switching_protocols(accept, None, None, &mut answer),
                handshake::SWITCHING_PROTOCOLS_LEN
            );
            let extensions = upgrade.request.deflate.map(|d| d.response());
            let longest =
                handshake::write_switching_protocols(accept, Some("mioket.v1"), extensions.as_deref(), &mut answer);
            assert!(longest <= handshake::MAX_SWITCHING_PROTOCOLS_LEN);
        }
        Ok(Request::Http(http)) => assert!(!http.target.is_empty()),
        Err(err) => {
            assert!(HANDSHAKE_STATUSES.contains(&err.status()), "{err:?}");
            check_http_response(&handshake::error_response(*err), &HANDSHAKE_STATUSES);
        }
    }
    result
}

/// One complete HTTP response with a Content-Length that matches its body, and
/// nothing after it.
pub(crate) fn check_http_response(bytes: &[u8], statuses: &[u16]) {
    let text = std::str::from_utf8(bytes).expect("HTTP answers are text");
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP answer has a head");
    let status: u16 =
        head.strip_prefix("HTTP/1.1 ").and_then(|s| s.get(..3)).and_then(|s| s.parse().ok()).expect("a status line");
    assert!(statuses.contains(&status), "status {status}");
    let length = head.lines().find_map(|l| l.strip_prefix("Content-Length: ")).expect("a Content-Length");
    assert_eq!(length.parse::<usize>().ok(), Some(body.len()), "Content-Length of {text:?}");
}

// ---------------------------------------------------------------------------
// conn: a script of operations on one Conn, in virtual time.
//
// Input layout (a missing byte reads as 0, so every input is a valid script):
//   byte 0  limits: max_message (bits 0-2), max_fragments (3-4), max_backpressure (5-7)
//   byte 1  timers: ping_interval (0-1), ping_timeout (2-3), handshake_timeout (4),
//           close_timeout (5); allowed origins (6); refuse the upgrade with 503 (7)
//   byte 2  what the peer sends first (bits 0-1): the RFC upgrade request, the same
//           with `Origin: http://good.example`, a plain GET, or nothing;
//           echo every message back like `--mode echo` (bit 2); the upgrade offers
//           permessage-deflate (bit 7: then a tenth operation sends compressed
//           messages; without it the operations are as they were, so older inputs
//           keep their meaning)
//   then operations, each chosen by one byte (see `Script::step`).

const MAX_MESSAGE: [usize; 8] = [1, 3, 16, 125, 126, 300, 1000, 70_000];
const MAX_FRAGMENTS: [u32; 4] = [1, 2, 8, 1100];
const MAX_BACKPRESSURE: [usize; 8] = [0, 1, 64, 128, 200, 1000, 4096, 1 << 20];
const PING_INTERVAL: [Option<u64>; 4] = [None, Some(1000), Some(3000), Some(10_000)];
const PING_TIMEOUT: [Option<u64>; 4] = [None, Some(500), Some(2000), Some(5000)];
/// Close codes a peer might send: valid, reserved, out of range.
const PEER_CLOSE_CODES: [u16; 16] =
    [1000, 1001, 1002, 1003, 1004, 1005, 1006, 1007, 1009, 1011, 1012, 1015, 2999, 3000, 4999, 5000];
/// Close codes our server sends of its own accord.
const OUR_CLOSE_CODES: [u16; 4] = [1000, 1001, 1008, 1011];

const RFC_UPGRADE: &[u8] = b"GET /chat HTTP/1.1\r\nHost: server.example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
const RFC_UPGRADE_WITH_ORIGIN: &[u8] = b"GET /chat HTTP/1.1\r\nHost: server.example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nOrigin: http://good.example\r\nSec-WebSocket-Version: 13\r\n\r\n";
const PLAIN_GET: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
/// What our harness "server" answers to a plain GET.
const NOT_FOUND: &[u8] = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";
/// The Sec-WebSocket-Accept for the RFC key (RFC 6455 1.3).
const RFC_101: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
const DEFLATE_OFFER: &[u8] = b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n";
const RFC_101_DEFLATE: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover\r\n\r\n";
/// Our own small outputs: a control frame (2 + 125), the 101 answer (129). An HTTP
/// refusal (under 300 bytes) is only ever queued alone.
const SMALL: usize = 129;

/// Runs the script in `data`, asserting the invariants after every step and the
/// shape of everything the connection wrote at the end.
pub fn run_conn(data: &[u8]) {
    let mut script = Script::new(data);
    while !script.input.is_empty() {
        script.step();
        script.check_step();
    }
    script.finish();
}

/// Bytes read from the front of the input; 0 once it is used up.
struct Bytes<'a>(&'a [u8]);

impl<'a> Bytes<'a> {
    fn byte(&mut self) -> u8 {
        let (&b, rest) = self.0.split_first().unwrap_or((&0, &[]));
        self.0 = rest;
        b
    }

    fn take(&mut self, n: usize) -> &'a [u8] {
        let (taken, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        taken
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

struct Script<'a> {
    input: Bytes<'a>,
    limits: Limits,
    refuse_upgrade: bool,
    echo: bool,
    /// The upgrade offers permessage-deflate (and the connection accepts it).
    deflate: bool,
    conn: Conn,
    now: Instant,
    /// Peer bytes not yet handed to `handle_input`.
    pending: Vec<u8>,
    /// Everything the connection wrote, in order.
    written: Vec<u8>,
    accepted: bool,
    answered_http: bool,
    /// The "server" shut our write side: nothing may be queued after that.
    write_shut: bool,
    /// For the queue bound: the largest message we queued, and how many ticks ran
    /// (each may queue one 6-byte ping).
    largest_sent: usize,
    ticks: usize,
    /// The data frames `send` accepted, in order: the wire must carry exactly these,
    /// or a prefix of them once a slow-consumer close dropped the rest.
    sent: Vec<Vec<u8>>,
    /// The peer's bytes after the upgrade, as sent (still masked), and the messages
    /// `handle_input` delivered: these must match a naive decoding of those bytes.
    peer_stream: Vec<u8>,
    delivered: Vec<(Opcode, Vec<u8>)>,
    queued_when_closed: Option<usize>,
}

impl<'a> Script<'a> {
    fn new(data: &'a [u8]) -> Script<'a> {
        let mut input = Bytes(data);
        let (l, t, first) = (input.byte(), input.byte(), input.byte());
        let ms = |m: Option<u64>| m.map(Duration::from_millis);
        let limits = Limits {
            max_message: MAX_MESSAGE[usize::from(l & 7)],
            max_fragments: MAX_FRAGMENTS[usize::from(l >> 3 & 3)],
            max_backpressure: MAX_BACKPRESSURE[usize::from(l >> 5)],
            ping_interval: ms(PING_INTERVAL[usize::from(t & 3)]),
            ping_timeout: ms(PING_TIMEOUT[usize::from(t >> 2 & 3)]),
            handshake_timeout: ms((t & 0x10 == 0).then_some(10_000)),
            close_timeout: ms((t & 0x20 == 0).then_some(2000)),
            allowed_origins: if t & 0x40 != 0 { vec!["http://good.example".into()] } else { Vec::new() },
        };
        let mut pending = match first & 3 {
            0 => RFC_UPGRADE,
            1 => RFC_UPGRADE_WITH_ORIGIN,
            2 => PLAIN_GET,
            _ => b"",
        }
        .to_vec();
        let deflate = first & 0x80 != 0 && first & 3 < 2;
        if deflate {
            pending.truncate(pending.len() - 2);
            pending.extend_from_slice(DEFLATE_OFFER);
        }
        let start = Instant::now();
        Script {
            input,
            conn: Conn::new(start, &limits),
            limits,
            refuse_upgrade: t & 0x80 != 0,
            echo: first & 4 != 0,
            deflate,
            now: start,
            pending,
            written: Vec::new(),
            accepted: false,
            answered_http: false,
            write_shut: false,
            largest_sent: 0,
            ticks: 0,
            sent: Vec::new(),
            peer_stream: Vec::new(),
            delivered: Vec::new(),
            queued_when_closed: None,
        }
    }

    /// One operation, chosen by the next byte.
    fn step(&mut self) {
        let operations = if self.deflate { 11 } else { 10 };
        match self.input.byte() % operations {
            // Raw peer bytes, up to 255 of them.
            0 => {
                let n = usize::from(self.input.byte());
                self.pending.extend_from_slice(self.input.take(n));
            }
            1 => self.peer_frame(),
            2 => self.peer_close(),
            // Hand the peer's bytes to `handle_input`: the next n, or all of them for 0.
            3 => {
                let n = usize::from(self.input.byte());
                let n = if n == 0 { self.pending.len() } else { n.min(self.pending.len()) };
                let chunk: Vec<u8> = self.pending.drain(..n).collect();
                self.feed(chunk);
            }
            // Time passes (up to 12.75 s) and the server's timer fires.
            4 => {
                self.now += Duration::from_millis(50 * u64::from(self.input.byte()));
                self.ticks += 1;
                self.conn.handle_timeout(self.now, &self.limits);
                if let Some(deadline) = self.conn.poll_timeout() {
                    assert!(deadline > self.now, "handle_timeout left a deadline due: the timer loop would spin");
                }
            }
            5 => self.server_send(),
            // The server closes (shutdown, slow consumer elsewhere...).
            6 => {
                let code = OUR_CLOSE_CODES[usize::from(self.input.byte() & 3)];
                let n = usize::from(self.input.byte());
                let reason = String::from_utf8_lossy(self.input.take(n)).into_owned();
                self.conn.close(CloseCode(code), &reason, self.now, &self.limits);
            }
            // The socket takes some of our output: 4n bytes, or all of it for 0.
            7 => {
                let n = usize::from(self.input.byte()) * 4;
                self.drain(if n == 0 { usize::MAX } else { n });
            }
            8 => self.conn.handle_eof(),
            9 => self.peer_compressed_message(),
            // A 1 KiB header line: a few of them pass the 8 KiB head limit (431).
            _ => {
                self.pending.extend_from_slice(b"X-Pad: ");
                self.pending.resize(self.pending.len() + 1015, b'a');
                self.pending.extend_from_slice(b"\r\n");
            }
        }
    }

    /// A client frame: opcode, FIN, mask and length form chosen by one byte; the
    /// payload taken from the input and masked properly.
    fn peer_frame(&mut self) {
        const OPCODES: [u8; 8] = [0x0, 0x1, 0x2, 0x8, 0x9, 0xA, 0x0, 0x1];
        let h = self.input.byte();
        let opcode = OPCODES[usize::from(h & 7)];
        let fin = h & 0x08 == 0;
        let masked = h & 0x10 == 0;
        let n = usize::from(self.input.byte());
        let raw = self.input.take(n);
        // Text frames mostly carry valid UTF-8 so that messages get delivered.
        let payload = if h & 0x20 == 0 && opcode <= 1 {
            String::from_utf8_lossy(raw).into_owned().into_bytes()
        } else {
            raw.to_vec()
        };
        let key = [self.input.byte(), self.input.byte(), self.input.byte(), self.input.byte()];
        // A length in a longer form than needed (legal), or a lie (the frame eats
        // what follows).
        let lie = if h & 0x80 != 0 { u64::from(self.input.byte()) } else { 0 };
        let len = payload.len() as u64 + lie;
        let mut frame = vec![u8::from(fin) << 7 | opcode];
        let mask_bit = if masked { 0x80 } else { 0 };
        if h & 0x40 != 0 {
            frame.push(mask_bit | 127);
            frame.extend_from_slice(&len.to_be_bytes());
        } else {
            let mut header = [0u8; MAX_HEADER_LEN];
            let hdr = Header { fin, compressed: false, opcode: Opcode::Binary, mask: None, len };
            let used = encode_header(&hdr, &mut header);
            frame.push(mask_bit | header[1]);
            frame.extend_from_slice(&header[2..used]);
        }
        if masked {
            frame.extend_from_slice(&key);
        }
        frame.extend(payload.iter().enumerate().map(|(i, b)| if masked { b ^ key[i % 4] } else { *b }));
        self.pending.extend_from_slice(&frame);
    }

    /// A message compressed as a browser would (DEFLATE, sync flush, tail stripped),
    /// RSV1 on its first frame, in up to 4 fragments with a ping between two of them;
    /// or (one flag) raw bytes that are not DEFLATE at all, or RSV1 on a continuation.
    fn peer_compressed_message(&mut self) {
        let h = self.input.byte();
        let n = usize::from(self.input.byte());
        let raw = self.input.take(n);
        // Repeated input inflates large: 1 to 256 copies.
        let data: Vec<u8> = raw.repeat(usize::from(self.input.byte()) + 1);
        let text = h & 1 == 0;
        let data = if text { String::from_utf8_lossy(&data).into_owned().into_bytes() } else { data };
        let body = if h & 0x10 != 0 { raw.to_vec() } else { deflated(&data) };
        let pieces = usize::from(h >> 1 & 3) + 1;
        let size = body.len() / pieces + 1;
        let key = [self.input.byte(), 7, self.input.byte(), 9];
        for (i, piece) in body.chunks(size).enumerate() {
            let last = (i + 1) * size >= body.len();
            let opcode = if i > 0 {
                0x0
            } else if text {
                0x1
            } else {
                0x2
            };
            let rsv1 = if i == 0 || h & 0x20 != 0 { 0x40 } else { 0 };
            self.pending.extend(masked_with_key(u8::from(last) << 7 | rsv1 | opcode, piece, key));
            if i == 0 && h & 0x08 != 0 {
                self.pending.extend(masked_with_key(0x89, b"p", key));
            }
        }
        if body.is_empty() {
            self.pending.extend(masked_with_key(0xC0 | if text { 1 } else { 2 }, &[], key));
        }
    }

    /// A masked client close frame with a code from a list and a reason.
    fn peer_close(&mut self) {
        let c = self.input.byte();
        let mut body = PEER_CLOSE_CODES[usize::from(c & 15)].to_be_bytes().to_vec();
        let n = usize::from(self.input.byte());
        body.extend_from_slice(self.input.take(n));
        match c >> 4 {
            0 => body.clear(),
            1 => body.truncate(1),
            _ => {}
        }
        let key = [self.input.byte(), 0xA5, self.input.byte(), 0x5A];
        let mut frame = vec![0x88];
        match body.len() {
            len @ 0..=125 => frame.push(0x80 | len as u8),
            len => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(len as u16).to_be_bytes());
            }
        }
        frame.extend_from_slice(&key);
        frame.extend(body.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        self.pending.extend_from_slice(&frame);
    }

    /// The server queues a message (welcome, history, a broadcast, an echo).
    fn server_send(&mut self) {
        const TEXT: &str = "héllo, wörld ✓ ";
        let b = self.input.byte();
        // Up to about 4 KiB: past the small backpressure limits, cheap enough to fuzz.
        let len = usize::from(self.input.byte()) * usize::from(b >> 2 & 0x0F).max(1);
        let mut text = TEXT.repeat(len / TEXT.len() + 1);
        let end = (0..=len).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
        text.truncate(end);
        let chunk = match b & 3 {
            0 => Chunk::frame(Opcode::Text, text.as_bytes()),
            1 => Chunk::frame(Opcode::Binary, &vec![0xA5; len]),
            2 => Chunk::Shared(shared_message(Opcode::Text, text.as_bytes())),
            _ => Chunk::Shared(shared_message(Opcode::Binary, &vec![0x5A; len])),
        };
        self.send(chunk);
    }

    fn send(&mut self, chunk: Chunk) {
        self.largest_sent = self.largest_sent.max(chunk.bytes().len());
        let bytes = chunk.bytes().to_vec();
        // `send` on a connection that is not open drops the chunk and says Ok.
        let open = self.conn.is_open();
        if self.conn.send(chunk, self.now, &self.limits).is_ok() && open {
            self.sent.push(bytes);
        }
    }

    /// What the server does with a large echo when nothing is queued: part of the
    /// frame goes straight to the wire, the rest is queued and must follow it.
    fn write_through(&mut self, chunk: Chunk) {
        let frame = chunk.bytes();
        let written = (frame.len() * 37 + 11) % (frame.len() + 1);
        self.largest_sent = self.largest_sent.max(frame.len());
        self.written.extend_from_slice(&frame[..written]);
        self.conn.finish_write_through(Chunk::rest_of([frame, &[]], written));
        self.sent.push(frame.to_vec());
    }

    /// One turn of the server's loop for this connection: input held back last turn
    /// (its inflate budget spent) first, then `chunk`.
    fn feed(&mut self, chunk: Vec<u8>) {
        let mut held = if self.conn.holds_input() { vec![0u8; 256 << 10] } else { Vec::new() };
        let n = self.conn.start_turn(&mut held);
        if n > 0 {
            held.truncate(n);
            self.feed_bytes(held, false);
        }
        self.feed_bytes(chunk, true);
    }

    /// Hands `chunk` to `handle_input` until it is used up, acting on events the way the
    /// server does. `new`: the peer's bytes, not ones held back and handed in again.
    fn feed_bytes(&mut self, mut chunk: Vec<u8>, new: bool) {
        // `handle_input` unmasks in place: keep the bytes as the peer sent them.
        let original = chunk.clone();
        let mut pos = 0;
        let mut idle_events = 0;
        while pos < chunk.len() {
            let open = self.conn.is_open();
            let was_accepted = self.accepted;
            let left = chunk.len() - pos;
            // Asked before the input, as the server does: the message borrows the Conn.
            let can_write_through = self.conn.can_write_through();
            let (used, event) = self.conn.handle_input(&mut chunk[pos..], self.now, &self.limits);
            assert!(used <= left, "read used {used} of {left} bytes");
            let mut upgrade = false;
            let mut echo = None;
            let mut write_through = false;
            match event {
                None => assert!(used > 0, "read made no progress on {left} bytes"),
                Some(Event::UpgradeRequest(_)) => upgrade = true,
                Some(Event::HttpRequest(_)) => {
                    self.conn.respond(Chunk::Static(NOT_FOUND), self.now);
                    self.answered_http = true;
                }
                Some(Event::Message { opcode, payload }) => {
                    assert!(open, "a message delivered on a connection that was not open");
                    assert!(matches!(opcode, Opcode::Text | Opcode::Binary), "{opcode:?} delivered");
                    assert!(
                        payload.len() <= self.limits.max_message,
                        "{} byte message over max_message",
                        payload.len()
                    );
                    if opcode == Opcode::Text {
                        assert!(std::str::from_utf8(payload).is_ok(), "invalid UTF-8 delivered as text");
                    }
                    echo = self.echo.then(|| Chunk::frame(opcode, payload));
                    // Odd lengths take the server's write-through path for large echoes.
                    write_through = can_write_through && payload.len() % 2 == 1;
                    self.delivered.push((opcode, payload.to_vec()));
                }
            }
            if was_accepted && new {
                self.peer_stream.extend_from_slice(&original[pos..pos + used]);
            }
            if upgrade {
                if self.refuse_upgrade {
                    self.conn.respond(Chunk::Owned(mioket::app::Refusal::ServerFull.response()), self.now);
                } else {
                    let deflate = self.deflate.then(|| {
                        mioket::deflate::negotiate([&b"permessage-deflate; client_max_window_bits"[..]])
                            .expect("a valid offer")
                    });
                    self.conn.accept(None, deflate, self.now, &self.limits);
                    self.accepted = true;
                }
            }
            match echo {
                Some(chunk) if write_through => self.write_through(chunk),
                Some(chunk) => self.send(chunk),
                None => {}
            }
            // An event may use no bytes, but a second one in a row would loop forever.
            idle_events = if used == 0 { idle_events + 1 } else { 0 };
            assert!(idle_events < 2, "read keeps returning events without using bytes");
            pos += used;
        }
    }

    /// Takes up to `max` bytes of output, as a partial socket write would.
    fn drain(&mut self, max: usize) {
        let mut slices = [IoSlice::new(&[]); 8];
        let filled = self.conn.poll_transmit(&mut slices);
        let before = self.written.len();
        for slice in &slices[..filled] {
            let room = max - (self.written.len() - before);
            self.written.extend_from_slice(&slice[..slice.len().min(room)]);
        }
        let taken = self.written.len() - before;
        self.conn.handle_written(taken);
        // What the server does once a draining connection's output is all written.
        if self.conn.poll_write_shutdown() {
            self.conn.handle_write_shutdown();
            self.write_shut = true;
        }
    }

    fn check_step(&mut self) {
        // Backpressure holds: at most the limit or one message, plus our own small
        // frames (an HTTP answer, a pong, a close) and one ping per tick.
        let queued = self.conn.queued_bytes();
        let bound = self.limits.max_backpressure + self.largest_sent + 3 * SMALL + 6 * self.ticks;
        assert!(queued <= bound, "{queued} bytes queued, bound {bound}");
        assert!(!self.write_shut || queued == 0, "{queued} bytes queued after our write side was shut");
        // A closed connection writes nothing more.
        if self.conn.is_closed() {
            let was = *self.queued_when_closed.get_or_insert(queued);
            assert!(queued <= was, "output queued after Closed");
        }
    }

    /// The peer's last bytes, then all our output, which must be well formed.
    fn finish(mut self) {
        let rest = std::mem::take(&mut self.pending);
        self.feed(rest);
        // Turns until nothing is held back.
        while self.conn.holds_input() {
            self.feed(Vec::new());
        }
        self.check_step();
        loop {
            let before = self.written.len();
            self.drain(usize::MAX);
            if self.written.len() == before {
                break;
            }
        }
        assert_eq!(self.conn.queued_bytes(), 0, "the queue says bytes are left after draining it");
        let written = &self.written[..];
        if self.accepted {
            // Our 101 first (and the RFC key's accept value), then frames only.
            let answer = if self.deflate { RFC_101_DEFLATE } else { RFC_101 };
            let Some(frames) = written.strip_prefix(answer) else {
                panic!(
                    "an accepted upgrade must be answered with 101 first: {:02x?}",
                    &written[..written.len().min(160)]
                );
            };
            let expected = naive_messages(&self.peer_stream, self.deflate);
            if !expected.starts_with(&self.delivered) {
                let at = expected.iter().zip(&self.delivered).position(|(a, b)| a != b);
                let show = |m: Option<&(Opcode, Vec<u8>)>| m.map(|(o, p)| (*o, p.len(), p[..p.len().min(24)].to_vec()));
                panic!(
                    "delivered messages differ from a naive decoding of the peer's bytes: {} delivered, {} expected; \
                     first difference at {at:?}: delivered {:?}, expected {:?}",
                    self.delivered.len(),
                    expected.len(),
                    show(at.and_then(|i| self.delivered.get(i)).or(self.delivered.get(expected.len()))),
                    show(at.and_then(|i| expected.get(i))),
                );
            }
            let (close, data) = check_server_frames(frames);
            assert!(self.sent.starts_with(&data), "data frames on the wire are not the ones sent, in order");
            // The metrics' "who closed first" agrees with the wire.
            let first = self.conn.first_close();
            assert_eq!(close, first.map(|c| c.code.0), "close frame sent vs first_close()");
            // An echo repeats any code a peer may send; our own are 1000-1011.
            if let Some(first) = first.filter(|c| !c.by_peer) {
                assert!((1000..=1011).contains(&first.code.0), "we closed with {}", first.code);
            }
        } else if !written.is_empty() {
            let statuses: &[u16] = if self.answered_http { &[404] } else { &HANDSHAKE_STATUSES };
            check_http_response(written, statuses);
        }
    }
}

/// DEFLATE the way a browser sends it: sync flush, the 4-byte tail stripped.
fn deflated(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
    let _ = encoder.write_all(data);
    let _ = encoder.flush();
    let mut out = encoder.get_ref().clone();
    if out.ends_with(&[0, 0, 0xff, 0xff]) {
        out.truncate(out.len() - 4);
    }
    out
}

/// Our frames after the 101: unmasked, final, valid opcodes, UTF-8 text, close
/// frames with a valid code and a UTF-8 reason, and nothing after a close.
/// Returns the close frame's code (1005 for an empty one), if there is one, and
/// the data frames.
pub(crate) fn check_server_frames(mut bytes: &[u8]) -> (Option<u16>, Vec<Vec<u8>>) {
    let mut data = Vec::new();
    while !bytes.is_empty() {
        let (h, n) = match parse_header(bytes) {
            Ok(Some(parsed)) => parsed,
            other => panic!("not a frame header: {other:?} at {:02x?}", &bytes[..bytes.len().min(16)]),
        };
        assert!(h.mask.is_none() && h.fin && h.opcode != Opcode::Continuation, "server frame {h:?}");
        let payload = usize::try_from(h.len).ok().and_then(|len| bytes.get(n..n + len)).expect("a whole payload");
        if matches!(h.opcode, Opcode::Text | Opcode::Binary) {
            data.push(bytes[..n + payload.len()].to_vec());
        }
        bytes = &bytes[n + payload.len()..];
        match h.opcode {
            Opcode::Text => assert!(std::str::from_utf8(payload).is_ok(), "our text frame is not UTF-8"),
            Opcode::Close => {
                assert!(bytes.is_empty(), "{} bytes after our close frame", bytes.len());
                let [hi, lo, reason @ ..] = payload else {
                    assert!(payload.is_empty(), "a 1-byte close body");
                    return (Some(1005), data);
                };
                let code = u16::from_be_bytes([*hi, *lo]);
                assert!(CloseCode(code).may_be_sent(), "close code {code}");
                assert!(std::str::from_utf8(reason).is_ok(), "close reason is not UTF-8");
                return (Some(code), data);
            }
            _ => {}
        }
    }
    (None, data)
}

/// A lenient, slow reading of a client's frames: unmasked byte by byte, data frames
/// joined until FIN, control frames skipped, stopping at a close or at anything it
/// cannot read. With permessage-deflate, a message whose first frame has RSV1 is
/// inflated by flate2's streaming decoder (a path the server does not use); without
/// it, RSV1 ends the reading. Wherever `Conn` delivers messages, they must be these,
/// in order.
fn naive_messages(mut bytes: &[u8], deflate: bool) -> Vec<(Opcode, Vec<u8>)> {
    let be = |b: Option<&[u8]>| b.map(|b| b.iter().fold(0u64, |a, &x| a << 8 | u64::from(x)));
    let mut messages = Vec::new();
    let mut message: Option<(Opcode, Vec<u8>)> = None;
    let mut compressed = false;
    while let (Some(&b0), Some(&b1)) = (bytes.first(), bytes.get(1)) {
        let (len, mut at) = match b1 & 0x7F {
            126 => (be(bytes.get(2..4)), 4),
            127 => (be(bytes.get(2..10)), 10),
            short => (Some(u64::from(short)), 2),
        };
        let mut key = [0u8; 4];
        if b1 & 0x80 != 0 {
            let Some(k) = bytes.get(at..at + 4) else { break };
            key.copy_from_slice(k);
            at += 4;
        }
        let end = len.and_then(|len| usize::try_from(len).ok()).and_then(|len| at.checked_add(len));
        let Some(payload) = end.and_then(|end| bytes.get(at..end)) else { break };
        let payload = payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]);
        bytes = &bytes[at + payload.len()..];
        match b0 & 0x0F {
            0x8 => break,
            0x9 | 0xA => {}
            opcode => {
                if b0 & 0x40 != 0 {
                    if !deflate || message.is_some() {
                        break;
                    }
                    compressed = true;
                }
                let started = if opcode == 1 { Opcode::Text } else { Opcode::Binary };
                message.get_or_insert_with(|| (started, Vec::new())).1.extend(payload);
                if b0 & 0x80 != 0 {
                    let Some((opcode, mut body)) = message.take() else { break };
                    if std::mem::take(&mut compressed) {
                        body.extend_from_slice(&[0, 0, 0xff, 0xff]);
                        let mut inflated = Vec::new();
                        let mut decoder = flate2::read::DeflateDecoder::new(&body[..]);
                        // A sync-flushed message ends without a final block: "unexpected
                        // end" is its normal end; anything else is a corrupt stream.
                        match std::io::Read::read_to_end(&mut decoder, &mut inflated) {
                            Err(e) if e.kind() != std::io::ErrorKind::UnexpectedEof => break,
                            _ => {}
                        }
                        body = inflated;
                    }
                    messages.push((opcode, body));
                }
            }
        }
    }
    messages
}

// ---------------------------------------------------------------------------
// inflate: permessage-deflate's inflating and compressing on arbitrary bytes.
//
// Input layout: byte 0 picks the message limit (`INFLATE_LIMITS`); the rest is a
// compressed message as a peer would send it (the 4-byte tail stripped), and also,
// as plain data, a message for our compressor.

const INFLATE_LIMITS: [usize; 4] = [0, 100, 4096, 1 << 20];

/// `inflate` never panics and never holds more than the limit plus one byte; what it
/// accepts is what flate2's streaming decoder reads from the same bytes; and whatever
/// our compressor makes inflates back to its input.
pub fn check_inflate(data: &[u8]) {
    let Some((&selector, body)) = data.split_first() else { return };
    let limit = INFLATE_LIMITS[usize::from(selector & 3)];
    let mut out = Vec::new();
    let result = mioket::deflate::inflate(body, &mut out, limit);
    assert!(out.capacity() <= (limit + 1).max(1024), "{} bytes held for a limit of {limit}", out.capacity());
    let mut framed = body.to_vec();
    framed.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut reference = Vec::new();
    let decoder = flate2::read::DeflateDecoder::new(&framed[..]);
    let read = std::io::Read::read_to_end(&mut std::io::Read::take(decoder, limit as u64 + 1), &mut reference);
    match result {
        Ok(()) => {
            assert!(out.len() <= limit);
            // A sync-flushed message ends without a final block: flate2's reader calls
            // that an unexpected end, and that is all it may call it.
            let corrupt = read.as_ref().is_err_and(|e| e.kind() != std::io::ErrorKind::UnexpectedEof);
            assert!(!corrupt, "we inflated what flate2 calls corrupt");
            assert_eq!(out, reference, "inflated bytes differ from flate2's reading");
        }
        // What comes first in a stream that is both too big and corrupt further on
        // depends on how much each decoder takes at a time.
        Err(mioket::deflate::InflateError::TooBig) => assert!(
            reference.len() > limit || read.is_err(),
            "TooBig, but flate2 reads only {} bytes, without an error",
            reference.len()
        ),
        Err(mioket::deflate::InflateError::Corrupt) => {}
    }
    let mut compressor = mioket::deflate::Compressor::default();
    if let Some(frame) = compressor.frame(Opcode::Binary, body) {
        assert_eq!(frame[0], 0xC2, "FIN, RSV1, binary");
        let (header, n) = parse_header(frame).expect("a frame").expect("a whole header");
        assert!(header.compressed);
        assert!((header.len as usize) < body.len(), "a compressed frame only when it shrinks");
        let mut back = Vec::new();
        mioket::deflate::inflate(&frame[n..], &mut back, body.len()).expect("our frames inflate");
        assert_eq!(back, body);
    }
}
