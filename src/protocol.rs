//! `Conn`: one connection's state machine, without I/O, its methods named by role
//! (as quinn-proto's): `handle_*` take input (bytes, end of stream, time, written
//! bytes), `poll_*` give output (bytes to write, the next deadline, a fault), and
//! commands (`accept`, `send`, `close`, ...) carry out the application's decisions.
//!
//! Handshaking -> (Upgrading) -> Open -> Closing -> Draining -> Closed
//!
//! - Handshaking: collecting the HTTP request head.
//! - Upgrading: a valid upgrade waits for the server to `accept` or `refuse` it.
//! - Judging: a plain HTTP request's head waits for the server: `respond`, or
//!   `read_body` (then Body, and Answering once the body is whole). No body byte is
//!   read before the head has passed routing and the token.
//! - Answering: a plain HTTP request waits for the server's `respond`.
//! - Open: frames flow.
//! - Closing: we sent a close frame and wait for the peer's.
//! - Draining: our last bytes are queued (a close reply, an HTTP answer); once they are
//!   written the loop shuts our write side. After a finished close handshake that is
//!   the end; otherwise (an HTTP answer, a failed connection) we discard input until
//!   end of stream, so that unread bytes do not turn our answer into a reset.
//! - Closed: drop the socket.

use std::io::IoSlice;
use std::time::{Duration, Instant};

use crate::config::Limits;
use crate::deflate;
use crate::error::{HandshakeError, PeerError};
use crate::frame::{parse_header, CloseCode, Header, Opcode, MAX_CONTROL_PAYLOAD, MAX_HEADER_LEN};
pub use crate::handshake::UpgradeRequest;
use crate::handshake::{self, BodyLength, Method, Request, MAX_HEAD};
use crate::http;
use crate::mask::apply_mask;
use crate::outqueue::{Chunk, OutQueue, OverLimit};
use crate::utf8::Utf8Validator;

/// How long we wait for a client to close after an HTTP answer.
pub const HTTP_LINGER: Duration = Duration::from_secs(2);

/// Bytes a connection may inflate per turn of the loop (`start_turn`): the loop's
/// fairness budget counts what compressed messages cost, not only their wire bytes (a
/// 1 KiB frame can inflate to 1 MiB). Past it, the rest of the input is held for the
/// next turn. A message is never cut: one larger than this still inflates whole.
pub const INFLATE_BUDGET: usize = 256 * 1024;
/// A message buffer larger than this is given back once its message is handled (a 64
/// KiB message, grown by doubling, keeps its buffer; an inflated 1 MiB one does not).
const KEEP_BUFFER: usize = 128 * 1024;

/// What a `handle_input` call produced for the application to act on.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A valid WebSocket upgrade: the server calls `accept` or `refuse`.
    UpgradeRequest(UpgradeRequest),
    /// A plain HTTP request: first its head alone (the body empty), which the server
    /// answers with `respond` or asks the body of with `read_body`; then, if asked,
    /// again with its whole body.
    HttpRequest(Box<HttpRequest>),
    /// A complete text or binary message.
    Message { opcode: Opcode, payload: &'a [u8] },
}

/// Why a connection is ending, for the log and the metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    Peer(PeerError),
    Handshake(HandshakeError),
    HandshakeTimeout,
    PongTimeout,
    CloseTimeout,
    SlowConsumer,
}

/// A connection's phase as metrics count it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Before the upgrade (or a plain HTTP request before its answer).
    Handshaking,
    Open,
    /// Closing, draining, or closed.
    Closing,
}

/// Who started the closing handshake, and with which code (1005: an empty close).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FirstClose {
    pub code: CloseCode,
    pub by_peer: bool,
}

/// A plain HTTP request, no longer borrowing its head.
#[derive(Debug, PartialEq, Eq)]
pub struct HttpRequest {
    pub method: Method,
    /// The path and query.
    pub target: String,
    pub authorization: Option<Vec<u8>>,
    pub content_type: Option<Vec<u8>>,
    pub body_length: BodyLength,
    /// The body, once the server asked for it with `read_body` (else empty).
    pub body: Vec<u8>,
    /// `Expect: 100-continue`: `read_body` answers 100 first.
    pub expect_continue: bool,
}

/// What a request asked for, no longer borrowing the head.
enum Asked {
    Upgrade { accept: [u8; 28], request: UpgradeRequest },
    Http(Box<HttpRequest>),
}

impl From<Request<'_>> for Asked {
    fn from(request: Request<'_>) -> Asked {
        match request {
            Request::Upgrade(upgrade) => Asked::Upgrade { accept: upgrade.accept, request: upgrade.request },
            Request::Http(http) => Asked::Http(Box::new(HttpRequest {
                method: http.method,
                target: http.target.to_string(),
                authorization: http.authorization.map(<[u8]>::to_vec),
                content_type: http.content_type.map(<[u8]>::to_vec),
                body_length: http.body,
                body: Vec::new(),
                expect_continue: http.expect_continue,
            })),
        }
    }
}

enum State {
    Handshaking {
        head: Vec<u8>,
        deadline: Option<Instant>,
    },
    /// A plain request's head waits for `respond` or `read_body` (like Upgrading, the
    /// server decides at once; the deadline is the one a body will have).
    Judging {
        deadline: Option<Instant>,
    },
    /// A request's body is arriving (`need` more bytes), under the handshake's deadline.
    Body {
        request: Box<HttpRequest>,
        need: usize,
        deadline: Option<Instant>,
    },
    Upgrading {
        accept: [u8; 28],
    },
    Answering,
    Open {
        heartbeat: Heartbeat,
    },
    Closing {
        deadline: Option<Instant>,
    },
    Draining {
        deadline: Option<Instant>,
        write_shut: bool,
        linger: bool,
    },
    Closed,
}

struct Heartbeat {
    next_ping: Option<Instant>,
    /// Sequence number of the last ping sent (its 4-byte payload).
    seq: u32,
    /// The oldest unanswered ping and when its pong is due.
    waiting: Option<(u32, Instant)>,
}

/// Frame parsing state. Only the bytes of an unfinished header live here; a frame
/// whose payload arrives in pieces needs a `Partial`, boxed because most connections
/// rarely need one and an idle connection gives it back.
struct Reader {
    stash: [u8; MAX_HEADER_LEN],
    stash_len: u8,
    /// permessage-deflate as negotiated (it fits in the stash's padding).
    deflate: Deflate,
    partial: Option<Box<Partial>>,
}

/// permessage-deflate on a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Deflate {
    Off,
    /// The peer may compress; we send uncompressed (it asked for a smaller window
    /// than the one we compress with).
    InflateOnly,
    /// Both ways.
    Both,
}

#[derive(Default)]
struct Partial {
    /// The frame whose payload is arriving.
    frame: Option<PayloadLeft>,
    /// The data message being assembled.
    message: Option<Assembly>,
    /// Its bytes so far, followed by those of an unfinished control frame.
    payload: Vec<u8>,
    /// A compressed message's bytes, inflated into `payload` once whole (kept with its
    /// capacity, like `payload`, while the connection is busy).
    compressed: Vec<u8>,
    utf8: Utf8Validator,
    /// `payload` was handed out as an event; clear it before reading on.
    delivered: bool,
    /// Bytes inflated in this turn of the loop (see `INFLATE_BUDGET`).
    inflated: usize,
    /// Input held back once the turn's inflate budget was spent: at most one read's
    /// worth, handed in again first next turn (`start_turn`).
    unread: Vec<u8>,
}

struct PayloadLeft {
    remaining: u64,
    key: [u8; 4],
    offset: usize,
    fin: bool,
    kind: PayloadKind,
}

#[derive(Clone, Copy)]
enum PayloadKind {
    Data,
    /// Data arriving while we close: read past it.
    Skip,
    /// A control frame's payload, collected in `payload` from `start` on.
    Control {
        opcode: Opcode,
        start: usize,
    },
}

struct Assembly {
    opcode: Opcode,
    len: usize,
    fragments: u32,
    /// RSV1 on its first frame: its bytes are DEFLATE, inflated when it is whole.
    compressed: bool,
}

enum Delivery {
    InPlace { opcode: Opcode, start: usize, end: usize },
    Assembled { opcode: Opcode },
}

pub struct Conn {
    state: State,
    reader: Reader,
    out: OutQueue,
    fault: Option<Fault>,
    first_close: Option<FirstClose>,
}

impl Conn {
    pub fn new(now: Instant, limits: &Limits) -> Conn {
        Conn {
            state: State::Handshaking { head: Vec::new(), deadline: limits.handshake_timeout.map(|t| now + t) },
            reader: Reader { stash: [0; MAX_HEADER_LEN], stash_len: 0, deflate: Deflate::Off, partial: None },
            out: OutQueue::default(),
            fault: None,
            first_close: None,
        }
    }

    // Input: bytes, end of stream and time go in through handle_*.

    /// Processes bytes from `input` until an event is ready or the input is used up.
    /// Returns how many bytes it used; call again with the rest. Unmasks in place.
    pub fn handle_input<'a>(
        &'a mut self,
        input: &'a mut [u8],
        now: Instant,
        limits: &Limits,
    ) -> (usize, Option<Event<'a>>) {
        match self.state {
            State::Handshaking { .. } => self.read_head(input, now, limits),
            State::Body { .. } => self.collect_body(input),
            State::Upgrading { .. } => (0, None),
            State::Judging { .. } | State::Answering => (input.len(), None),
            State::Open { .. } | State::Closing { .. } => {
                let (used, delivery) = self.read_frames(input, now, limits);
                let input: &'a [u8] = input;
                let event = delivery.map(|d| match d {
                    Delivery::InPlace { opcode, start, end } => Event::Message { opcode, payload: &input[start..end] },
                    Delivery::Assembled { opcode } => {
                        let payload = self.reader.partial.as_deref().map_or(&[][..], |p| &p.payload);
                        Event::Message { opcode, payload }
                    }
                });
                (used, event)
            }
            State::Draining { .. } | State::Closed => (input.len(), None),
        }
    }

    /// The peer ended its side of the stream. Our last words (an HTTP answer, a
    /// close reply) are still written, then the connection ends; anything else ends now.
    pub fn handle_eof(&mut self) {
        match &mut self.state {
            State::Draining { write_shut: false, linger, .. } if !self.out.is_empty() => *linger = false,
            _ => self.state = State::Closed,
        }
    }

    /// The socket took `n` bytes of what `poll_transmit` gave.
    pub fn handle_written(&mut self, n: usize) {
        self.out.advance(n);
    }

    /// A new turn of the loop for this connection: its inflate budget is whole again,
    /// and input held back last turn is copied into `buf`, to be handed to
    /// `handle_input` before anything new is read. Returns how many bytes.
    #[inline]
    pub fn start_turn(&mut self, buf: &mut [u8]) -> usize {
        let Some(p) = self.reader.partial.as_deref_mut() else { return 0 };
        p.inflated = 0;
        let n = p.unread.len().min(buf.len());
        buf[..n].copy_from_slice(&p.unread[..n]);
        p.unread.drain(..n);
        if p.unread.is_empty() {
            p.unread = Vec::new();
        }
        n
    }

    /// Input is held back (this turn's inflate budget is spent): read nothing more
    /// from this connection until its next `start_turn`.
    #[inline]
    pub fn holds_input(&self) -> bool {
        self.reader.partial.as_deref().is_some_and(|p| !p.unread.is_empty())
    }

    /// The application is done with the events of one input: a large message buffer
    /// (an inflated message, a big fragmented one) is given back now rather than kept
    /// until the connection is next idle. Returns the bytes freed.
    #[inline]
    pub fn end_input(&mut self) -> usize {
        match self.reader.partial.as_deref_mut() {
            // Holding a message handed out, or nothing (no message or frame under way).
            Some(p)
                if p.payload.capacity() > KEEP_BUFFER
                    && (p.delivered || (p.message.is_none() && p.frame.is_none())) =>
            {
                p.delivered = false;
                std::mem::take(&mut p.payload).capacity()
            }
            _ => 0,
        }
    }

    /// Acts on time: drops a stalled handshake, pings, gives up on a missing pong
    /// or close reply. Safe to call at any time.
    pub fn handle_timeout(&mut self, now: Instant, limits: &Limits) {
        let due = |deadline: Option<Instant>| deadline.is_some_and(|d| d <= now);
        match &mut self.state {
            State::Handshaking { deadline, .. } | State::Body { deadline, .. } if due(*deadline) => {
                self.fault = Some(Fault::HandshakeTimeout);
                self.state = State::Closed;
            }
            State::Open { heartbeat } => {
                if due(heartbeat.waiting.map(|w| w.1)) {
                    // RFC 6455 7.1.7: fail the connection. A peer that misses its pong
                    // will not answer a close either: end TCP once the 1011 is written.
                    self.fault = Some(Fault::PongTimeout);
                    self.fail_with(CloseCode::INTERNAL, "keepalive ping timeout", false, now, limits);
                    return;
                }
                if due(heartbeat.next_ping) {
                    heartbeat.seq = heartbeat.seq.wrapping_add(1);
                    let seq = heartbeat.seq;
                    if let Some(timeout) = limits.ping_timeout {
                        heartbeat.waiting.get_or_insert((seq, now + timeout));
                    }
                    heartbeat.next_ping = limits.ping_interval.map(|t| now + t);
                    self.send_control(Opcode::Ping, &seq.to_be_bytes());
                }
                // An idle connection keeps no buffers.
                if self
                    .reader
                    .partial
                    .as_deref()
                    .is_some_and(|p| p.message.is_none() && p.frame.is_none() && p.unread.is_empty())
                {
                    self.reader.partial = None;
                }
                self.out.shrink_if_empty();
            }
            State::Closing { deadline } | State::Draining { deadline, .. } if due(*deadline) => {
                self.fault.get_or_insert(Fault::CloseTimeout);
                self.state = State::Closed;
            }
            _ => {}
        }
    }

    // Commands: what the application decides.

    /// Accepts the pending upgrade with the subprotocol and the permessage-deflate
    /// agreement chosen (if any): queues the 101 answer and opens the connection.
    pub fn accept(
        &mut self,
        subprotocol: Option<&str>,
        deflate: Option<deflate::Agreement>,
        now: Instant,
        limits: &Limits,
    ) {
        if let State::Upgrading { accept } = self.state {
            let mut answer = [0u8; handshake::MAX_SWITCHING_PROTOCOLS_LEN];
            let extensions = deflate.map(|d| d.response());
            let n = handshake::write_switching_protocols(&accept, subprotocol, extensions.as_deref(), &mut answer);
            self.reader.deflate = match deflate {
                None => Deflate::Off,
                Some(d) if d.compress_to_peer() => Deflate::Both,
                Some(_) => Deflate::InflateOnly,
            };
            self.out.push_committed(Chunk::Owned(answer[..n].to_vec()));
            let heartbeat = Heartbeat { next_ping: limits.ping_interval.map(|t| now + t), seq: 0, waiting: None };
            self.state = State::Open { heartbeat };
        }
    }

    /// Refuses the request with an HTTP error and ends the connection.
    pub fn refuse(&mut self, err: HandshakeError, now: Instant) {
        self.fault = Some(Fault::Handshake(err));
        self.respond(Chunk::Owned(handshake::error_response(err)), now);
    }

    /// Reads the body of a request whose head `handle_input` gave (it must declare a
    /// length, at most `max_message`); the request comes back whole as another
    /// `Event::HttpRequest`. `Expect: 100-continue` is answered first.
    pub fn read_body(&mut self, request: Box<HttpRequest>, limits: &Limits) {
        let State::Judging { deadline } = self.state else { return };
        let BodyLength::Length(need) = request.body_length else { return };
        let Some(need) = usize::try_from(need).ok().filter(|&n| n > 0 && n <= limits.max_message) else { return };
        if request.expect_continue {
            self.out.push(Chunk::Static(b"HTTP/1.1 100 Continue\r\n\r\n"));
        }
        self.state = State::Body { request, need, deadline };
    }

    /// Answers a plain HTTP request with `response` and ends the connection.
    pub fn respond(&mut self, response: Chunk, now: Instant) {
        if matches!(
            self.state,
            State::Handshaking { .. }
                | State::Judging { .. }
                | State::Body { .. }
                | State::Upgrading { .. }
                | State::Answering
        ) {
            self.out.push(response);
            self.state = State::Draining { deadline: Some(now + HTTP_LINGER), write_shut: false, linger: true };
        }
    }

    /// Queues a data frame for an open connection. Over the backpressure limit the
    /// connection is a slow consumer: its queue is freed and it is closed with 1008.
    pub fn send(&mut self, chunk: Chunk, now: Instant, limits: &Limits) -> Result<(), OverLimit> {
        if !self.is_open() {
            return Ok(());
        }
        let result = self.out.push_limited(chunk, limits.max_backpressure);
        if result.is_err() {
            self.out.drop_unsent();
            self.fault = Some(Fault::SlowConsumer);
            self.close(CloseCode::POLICY, "slow consumer: too much data queued", now, limits);
        }
        result
    }

    /// Write-through, step 1: whether a frame may go straight to the socket now,
    /// ahead of the queue (open, and no byte of output waits). Ask before the
    /// `handle_input` call that yields the message: the message borrows the `Conn`,
    /// and a call that queues output (a pong) returns before yielding a message.
    pub fn can_write_through(&self) -> bool {
        self.is_open() && self.out.is_empty()
    }

    /// Write-through, step 2: the loop wrote a frame itself; what the socket did not
    /// take (`Chunk::rest_of`) is queued. Like the 101 it must go out whatever
    /// follows, or the stream would lose its framing.
    pub fn finish_write_through(&mut self, rest: Option<Chunk>) {
        if let Some(rest) = rest {
            self.out.push_committed(rest);
        }
    }

    /// Starts the closing handshake (RFC 6455 7.1.2), or ends a connection that is
    /// not open yet.
    pub fn close(&mut self, code: CloseCode, reason: &str, now: Instant, limits: &Limits) {
        match self.state {
            State::Open { .. } => {
                self.out.push(Chunk::close(code, reason));
                self.first_close.get_or_insert(FirstClose { code, by_peer: false });
                self.state = State::Closing { deadline: limits.close_timeout.map(|t| now + t) };
            }
            State::Handshaking { .. }
            | State::Judging { .. }
            | State::Body { .. }
            | State::Upgrading { .. }
            | State::Answering => self.state = State::Closed,
            State::Closing { .. } | State::Draining { .. } | State::Closed => {}
        }
    }

    /// Frees what `unfinished_memory` counts, when unfinished input over all
    /// connections is over its budget: buffers kept for a next message are given
    /// back; a message still arriving is refused (1013) and the rest of it read past;
    /// a body still arriving is refused (503). Whether it refused anything.
    pub fn shed_unfinished(&mut self, now: Instant, limits: &Limits) -> bool {
        const BUSY: &str = "server busy: too much input held unfinished";
        if let State::Body { .. } = self.state {
            self.respond(Chunk::Owned(http::response(503, http::TEXT, format!("{BUSY}\n").as_bytes())), now);
            return true;
        }
        let refused = self.is_open()
            && self.reader.partial.as_deref().is_some_and(|p| p.message.is_some() || !p.unread.is_empty());
        if refused {
            self.close(CloseCode::TRY_AGAIN_LATER, BUSY, now, limits);
        }
        let Some(p) = self.reader.partial.as_deref_mut() else { return refused };
        p.message = None;
        p.compressed = Vec::new();
        // Input held past the inflate budget is dropped with the refusal (what follows
        // it no longer parses: the connection ends at its first fault or its close).
        p.unread = Vec::new();
        match p.frame.as_mut().map(|f| &mut f.kind) {
            Some(kind @ PayloadKind::Data) => *kind = PayloadKind::Skip,
            // A control frame's few bytes may still be arriving: they are kept.
            Some(PayloadKind::Control { start, .. }) => {
                p.payload.drain(..*start);
                p.payload.shrink_to_fit();
                *start = 0;
                return refused;
            }
            _ => {}
        }
        p.payload = Vec::new();
        refused
    }

    // Output: what the connection wants, through poll_*.

    /// When `handle_timeout` next has something to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.state {
            State::Handshaking { deadline, .. }
            | State::Body { deadline, .. }
            | State::Closing { deadline }
            | State::Draining { deadline, .. } => *deadline,
            State::Open { heartbeat } => match (heartbeat.next_ping, heartbeat.waiting) {
                (Some(p), Some((_, w))) => Some(p.min(w)),
                (p, w) => p.or(w.map(|w| w.1)),
            },
            State::Upgrading { .. } | State::Judging { .. } | State::Answering | State::Closed => None,
        }
    }

    /// Fills `slices` with the bytes waiting to be written, front first; returns how
    /// many it filled. Tell `handle_written` how many bytes the socket took.
    pub fn poll_transmit<'a>(&'a self, slices: &mut [IoSlice<'a>]) -> usize {
        self.out.io_slices(slices)
    }

    pub fn has_output(&self) -> bool {
        !self.out.is_empty()
    }

    // Getters.

    pub fn queued_bytes(&self) -> usize {
        self.out.queued_bytes()
    }

    /// What the outgoing queue holds as the backpressure limit counts it (bytes plus
    /// a slot per chunk).
    pub fn queue_memory(&self) -> usize {
        self.out.memory()
    }

    pub fn is_open(&self) -> bool {
        matches!(self.state, State::Open { .. })
    }

    /// Bytes held for input that is not whole yet: an unfinished message's buffers
    /// (kept with their capacity while the connection is busy) and a request body
    /// being read. Bounded over all connections by `--max-unfinished-memory`.
    #[inline]
    pub fn unfinished_memory(&self) -> usize {
        let body = match &self.state {
            State::Body { request, .. } => request.body.capacity(),
            _ => 0,
        };
        let partial = self
            .reader
            .partial
            .as_deref()
            .map_or(0, |p| p.payload.capacity() + p.compressed.capacity() + p.unread.capacity());
        body + partial
    }

    /// Whether this peer takes compressed messages (permessage-deflate negotiated with
    /// a window we compress with).
    pub fn takes_compressed(&self) -> bool {
        self.reader.deflate == Deflate::Both
    }

    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// All our output is queued and written: time to shut our write side.
    pub fn poll_write_shutdown(&self) -> bool {
        matches!(self.state, State::Draining { write_shut: false, .. }) && self.out.is_empty()
    }

    /// The loop shut our write side: a finished close handshake ends here.
    pub fn handle_write_shutdown(&mut self) {
        match &mut self.state {
            State::Draining { linger: false, .. } => self.state = State::Closed,
            State::Draining { write_shut, .. } => *write_shut = true,
            _ => {}
        }
    }

    /// Who started the closing handshake, if anyone did.
    pub fn first_close(&self) -> Option<FirstClose> {
        self.first_close
    }

    /// Where the connection is in its life, for metrics.
    pub fn phase(&self) -> Phase {
        match self.state {
            State::Handshaking { .. }
            | State::Judging { .. }
            | State::Body { .. }
            | State::Upgrading { .. }
            | State::Answering => Phase::Handshaking,
            State::Open { .. } => Phase::Open,
            State::Closing { .. } | State::Draining { .. } | State::Closed => Phase::Closing,
        }
    }

    /// Why the connection is ending, once; `None` for a normal close.
    pub fn poll_fault(&mut self) -> Option<Fault> {
        self.fault.take()
    }

    fn read_head(&mut self, input: &[u8], now: Instant, limits: &Limits) -> (usize, Option<Event<'static>>) {
        let State::Handshaking { head, deadline } = &mut self.state else { return (0, None) };
        let deadline = *deadline;
        let before = head.len();
        // Common case: the whole head in one read, parsed where it lies.
        if before == 0 {
            if let Some(end) = handshake::find_head_end(&input[..input.len().min(MAX_HEAD)], 0) {
                let request = handshake::parse_request(&input[..end], &limits.allowed_origins).map(Asked::from);
                return self.on_request(request, end, input.len(), deadline, now);
            }
        }
        let take = input.len().min(MAX_HEAD + 1 - before);
        head.extend_from_slice(&input[..take]);
        match handshake::find_head_end(head, before) {
            Some(end) if end <= MAX_HEAD => {
                let request = handshake::parse_request(&head[..end], &limits.allowed_origins).map(Asked::from);
                self.on_request(request, end - before, input.len(), deadline, now)
            }
            Some(_) => self.refuse_all(HandshakeError::HeadTooLarge, input.len(), now),
            None if head.len() > MAX_HEAD => self.refuse_all(HandshakeError::HeadTooLarge, input.len(), now),
            None if before < handshake::START_CHECKED => match handshake::check_start(head) {
                Err(err) => self.refuse_all(err, input.len(), now),
                Ok(()) => (take, None),
            },
            None => (take, None),
        }
    }

    /// A whole head: `used` of this input's `all` bytes were the head's.
    fn on_request(
        &mut self,
        request: Result<Asked, HandshakeError>,
        used: usize,
        all: usize,
        deadline: Option<Instant>,
        now: Instant,
    ) -> (usize, Option<Event<'static>>) {
        match request {
            Ok(Asked::Upgrade { accept, request }) => {
                self.state = State::Upgrading { accept };
                (used, Some(Event::UpgradeRequest(request)))
            }
            // The head alone is judged (route, token, declared length): a body is read
            // only once the server asks for it with `read_body`.
            Ok(Asked::Http(request)) => {
                self.state = State::Judging { deadline };
                (used, Some(Event::HttpRequest(request)))
            }
            Err(err) => self.refuse_all(err, all, now),
        }
    }

    fn refuse_all(&mut self, err: HandshakeError, all: usize, now: Instant) -> (usize, Option<Event<'static>>) {
        self.refuse(err, now);
        (all, None)
    }

    /// Collects a request body; the whole request is the event.
    fn collect_body(&mut self, input: &[u8]) -> (usize, Option<Event<'static>>) {
        let State::Body { request, need, .. } = &mut self.state else { return (0, None) };
        let take = input.len().min(*need);
        request.body.extend_from_slice(&input[..take]);
        *need -= take;
        if *need > 0 {
            return (take, None);
        }
        match std::mem::replace(&mut self.state, State::Answering) {
            // The connection answers and closes: what follows the body is not read.
            State::Body { request, .. } => (input.len(), Some(Event::HttpRequest(request))),
            _ => (input.len(), None),
        }
    }

    fn read_frames(&mut self, input: &mut [u8], now: Instant, limits: &Limits) -> (usize, Option<Delivery>) {
        if let Some(p) = self.reader.partial.as_deref_mut().filter(|p| p.delivered) {
            p.payload.clear();
            p.delivered = false;
        }
        // A call that queues output (a pong) returns right after it, so that a message
        // it yields never has output queued ahead of it that `can_write_through`, asked
        // before the call, did not see.
        let quiet = self.out.is_empty();
        let mut pos = 0;
        loop {
            if !matches!(self.state, State::Open { .. } | State::Closing { .. }) {
                return (input.len(), None);
            }
            // This turn's inflating is done: the rest waits for the next turn, so that
            // one connection's compressed messages cannot hold the loop.
            if let Some(p) = self.reader.partial.as_deref_mut().filter(|p| p.inflated >= INFLATE_BUDGET) {
                p.unread.extend_from_slice(&input[pos..]);
                return (input.len(), None);
            }
            let open = matches!(self.state, State::Open { .. });
            if let Some(p) = self.reader.partial.as_deref_mut() {
                if let Some(frame) = &mut p.frame {
                    // The payload of a frame, taken as it arrives.
                    let n = usize::try_from(frame.remaining).unwrap_or(usize::MAX).min(input.len() - pos);
                    if n == 0 && frame.remaining > 0 {
                        return (pos, None);
                    }
                    let chunk = &mut input[pos..pos + n];
                    pos += n;
                    apply_mask(chunk, frame.key, frame.offset);
                    frame.offset = (frame.offset + n) & 3;
                    frame.remaining -= n as u64;
                    let last = frame.remaining == 0;
                    let fin = last && frame.fin;
                    let kind = frame.kind;
                    if last {
                        p.frame = None;
                    }
                    let result = match kind {
                        PayloadKind::Data if open => p.take_payload(chunk, fin, limits),
                        // Closing: the rest of a message is read past, never delivered.
                        PayloadKind::Data | PayloadKind::Skip => Ok(None),
                        PayloadKind::Control { opcode, start } => {
                            p.payload.extend_from_slice(chunk);
                            if last {
                                let mut body = [0u8; MAX_CONTROL_PAYLOAD];
                                let len = p.payload.len() - start;
                                body[..len].copy_from_slice(&p.payload[start..]);
                                p.payload.truncate(start);
                                self.on_control(opcode, &body[..len], now, limits).map(|()| None)
                            } else {
                                Ok(None)
                            }
                        }
                    };
                    match result {
                        Err(err) => return self.fail(err, now, limits, input.len()),
                        Ok(Some(opcode)) => return (pos, Some(Delivery::Assembled { opcode })),
                        Ok(None) if quiet && !self.out.is_empty() => return (pos, None),
                        Ok(None) => continue,
                    }
                }
            }
            let header = match self.reader.next_header(input, &mut pos) {
                Ok(Some(header)) => header,
                Ok(None) => return (pos, None),
                Err(err) => return self.fail(err, now, limits, input.len()),
            };
            // RFC 6455 5.1: a client masks every frame.
            let Some(key) = header.mask else {
                return self.fail(PeerError::UnmaskedFrame, now, limits, input.len());
            };
            let result = if header.opcode.is_control() {
                let len = header.len as usize;
                if input.len() - pos >= len {
                    let body = &mut input[pos..pos + len];
                    pos += len;
                    apply_mask(body, key, 0);
                    self.on_control(header.opcode, body, now, limits).map(|()| None)
                } else {
                    let p = self.reader.partial();
                    let kind = PayloadKind::Control { opcode: header.opcode, start: p.payload.len() };
                    p.frame = Some(PayloadLeft { remaining: header.len, key, offset: 0, fin: true, kind });
                    Ok(None)
                }
            } else if self.is_open() {
                self.reader.start_data(header, key, input, &mut pos, limits)
            } else {
                let skip = PayloadLeft { remaining: header.len, key, offset: 0, fin: false, kind: PayloadKind::Skip };
                self.reader.partial().frame = Some(skip);
                Ok(None)
            };
            match result {
                Ok(Some(delivery)) => return (pos, Some(delivery)),
                Ok(None) if quiet && !self.out.is_empty() => return (pos, None),
                Ok(None) => {}
                Err(err) => return self.fail(err, now, limits, input.len()),
            }
        }
    }

    fn on_control(&mut self, opcode: Opcode, payload: &[u8], now: Instant, limits: &Limits) -> Result<(), PeerError> {
        let State::Open { heartbeat } = &mut self.state else {
            // Closing: only the peer's close matters; our close is already sent.
            if opcode == Opcode::Close {
                self.state = State::Draining {
                    deadline: limits.close_timeout.map(|t| now + t),
                    write_shut: false,
                    linger: false,
                };
            }
            return Ok(());
        };
        match opcode {
            Opcode::Ping => {
                // RFC 6455 5.5.3 lets us answer only the latest ping; under backpressure
                // we skip the pong rather than queue without bound.
                let pong = Chunk::frame(Opcode::Pong, payload);
                if self.out.fits(&pong, limits.max_backpressure) {
                    self.out.push(pong);
                }
            }
            Opcode::Pong => {
                if let (Some((oldest, _)), Ok(bytes)) = (heartbeat.waiting, <[u8; 4]>::try_from(payload)) {
                    // A pong for the oldest unanswered ping or any later one proves liveness.
                    let answered = u32::from_be_bytes(bytes);
                    if answered.wrapping_sub(oldest) <= heartbeat.seq.wrapping_sub(oldest) {
                        heartbeat.waiting = None;
                    }
                }
            }
            Opcode::Close => {
                // RFC 6455 5.5.1: an empty body, or a 2-byte code and a UTF-8 reason.
                let (reply, code) = match payload {
                    [] => (Chunk::close_empty(), CloseCode::NO_STATUS),
                    [_] => return Err(PeerError::CloseBodyTooShort),
                    [hi, lo, reason @ ..] => {
                        let code = CloseCode(u16::from_be_bytes([*hi, *lo]));
                        if !code.may_be_sent() {
                            return Err(PeerError::InvalidCloseCode);
                        }
                        std::str::from_utf8(reason).map_err(|_| PeerError::InvalidUtf8)?;
                        (Chunk::close(code, ""), code)
                    }
                };
                self.first_close.get_or_insert(FirstClose { code, by_peer: true });
                // RFC 6455 5.5.1: answer with a close, then the server closes TCP first.
                self.out.push(reply);
                self.state = State::Draining {
                    deadline: limits.close_timeout.map(|t| now + t),
                    write_shut: false,
                    linger: false,
                };
            }
            _ => {}
        }
        Ok(())
    }

    /// RFC 6455 7.1.7: Fail the WebSocket Connection: send the close code and
    /// process nothing more from the peer.
    fn fail(&mut self, err: PeerError, now: Instant, limits: &Limits, used: usize) -> (usize, Option<Delivery>) {
        self.fault = Some(Fault::Peer(err));
        // Input after the fault is read past until end of stream, so that unread
        // bytes do not turn our close into a reset.
        self.fail_with(err.close_code(), err.reason(), true, now, limits);
        (used, None)
    }

    /// Sends a close frame (if open) and drains: our write side is shut once it is
    /// written; `linger` then waits for the peer's end of stream, otherwise ends.
    fn fail_with(&mut self, code: CloseCode, reason: &str, linger: bool, now: Instant, limits: &Limits) {
        if self.is_open() {
            self.out.push(Chunk::close(code, reason));
            self.first_close.get_or_insert(FirstClose { code, by_peer: false });
        }
        self.state = State::Draining { deadline: limits.close_timeout.map(|t| now + t), write_shut: false, linger };
    }

    fn send_control(&mut self, opcode: Opcode, payload: &[u8]) {
        self.out.push(Chunk::frame(opcode, payload));
    }
}

impl Reader {
    fn partial(&mut self) -> &mut Partial {
        self.partial.get_or_insert_with(Box::default)
    }

    /// The next frame header, from the stash and `input[*pos..]`. `Ok(None)`: the
    /// bytes so far (fewer than a header) are stashed and more are needed.
    fn next_header(&mut self, input: &[u8], pos: &mut usize) -> Result<Option<Header>, PeerError> {
        let old = usize::from(self.stash_len);
        if old == 0 {
            return match parse_header(&input[*pos..])? {
                Some((header, n)) => {
                    *pos += n;
                    Ok(Some(header))
                }
                None => {
                    // An incomplete header is shorter than MAX_HEADER_LEN.
                    let rest = &input[*pos..];
                    self.stash[..rest.len()].copy_from_slice(rest);
                    self.stash_len = rest.len() as u8;
                    *pos = input.len();
                    Ok(None)
                }
            };
        }
        let take = (MAX_HEADER_LEN - old).min(input.len() - *pos);
        self.stash[old..old + take].copy_from_slice(&input[*pos..*pos + take]);
        match parse_header(&self.stash[..old + take])? {
            Some((header, n)) => {
                *pos += n - old;
                self.stash_len = 0;
                Ok(Some(header))
            }
            None => {
                *pos += take;
                self.stash_len = (old + take) as u8;
                Ok(None)
            }
        }
    }

    /// Checks a data frame header against the message in progress and the limits.
    /// A whole unfragmented message already in `input` is unmasked and delivered in place.
    fn start_data(
        &mut self,
        header: Header,
        key: [u8; 4],
        input: &mut [u8],
        pos: &mut usize,
        limits: &Limits,
    ) -> Result<Option<Delivery>, PeerError> {
        // RFC 7692 6.1: RSV1 only once negotiated, and only on a message's first frame.
        if header.compressed && (self.deflate == Deflate::Off || header.opcode == Opcode::Continuation) {
            return Err(PeerError::ReservedBits);
        }
        // A compressed message's bytes are bounded too (by a little more than the
        // limit: incompressible data grows by a few bytes per 64 KiB); what counts is
        // the inflated size, checked as it inflates.
        let compressed =
            header.compressed || self.partial.as_deref().and_then(|p| p.message.as_ref()).is_some_and(|m| m.compressed);
        let max = if compressed { limits.max_message + limits.max_message / 1024 + 64 } else { limits.max_message };
        let too_big = |so_far: usize| header.len > (max - so_far) as u64;
        let message = self.partial.as_deref_mut().and_then(|p| p.message.as_mut());
        match (message, header.opcode) {
            (None, Opcode::Continuation) => return Err(PeerError::UnexpectedContinuation),
            (Some(_), Opcode::Text | Opcode::Binary) => return Err(PeerError::ExpectedContinuation),
            (Some(message), _) => {
                message.fragments += 1;
                if message.fragments > limits.max_fragments {
                    return Err(PeerError::TooManyFragments);
                }
                if too_big(message.len) {
                    return Err(PeerError::MessageTooBig);
                }
                message.len += header.len as usize;
            }
            (None, opcode) => {
                if too_big(0) {
                    return Err(PeerError::MessageTooBig);
                }
                let len = header.len as usize;
                if header.fin && input.len() - *pos >= len {
                    let (start, end) = (*pos, *pos + len);
                    *pos = end;
                    let payload = &mut input[start..end];
                    apply_mask(payload, key, 0);
                    if header.compressed {
                        // Inflated into the connection's buffer, straight from the input.
                        let p = self.partial();
                        p.inflate_from(payload, opcode, limits)?;
                        p.delivered = true;
                        return Ok(Some(Delivery::Assembled { opcode }));
                    }
                    if opcode == Opcode::Text && std::str::from_utf8(payload).is_err() {
                        return Err(PeerError::InvalidUtf8);
                    }
                    return Ok(Some(Delivery::InPlace { opcode, start, end }));
                }
                let p = self.partial();
                p.message = Some(Assembly { opcode, len, fragments: 1, compressed: header.compressed });
                p.utf8.reset();
            }
        }
        let kind = PayloadKind::Data;
        self.partial().frame = Some(PayloadLeft { remaining: header.len, key, offset: 0, fin: header.fin, kind });
        Ok(None)
    }
}

impl Partial {
    /// Adds unmasked payload to the message; returns its opcode when `fin` completes it.
    fn take_payload(&mut self, chunk: &[u8], fin: bool, limits: &Limits) -> Result<Option<Opcode>, PeerError> {
        let Some(message) = &self.message else { return Ok(None) };
        let opcode = message.opcode;
        if message.compressed {
            self.compressed.extend_from_slice(chunk);
            if !fin {
                return Ok(None);
            }
            let compressed = std::mem::take(&mut self.compressed);
            let result = self.inflate_from(&compressed, opcode, limits);
            if compressed.capacity() <= KEEP_BUFFER {
                self.compressed = compressed;
                self.compressed.clear();
            }
            result?;
        } else {
            if opcode == Opcode::Text {
                // RFC 6455 8.1: fail as soon as the text cannot be valid UTF-8.
                self.utf8.feed(chunk).map_err(|_| PeerError::InvalidUtf8)?;
                if fin {
                    self.utf8.finish().map_err(|_| PeerError::InvalidUtf8)?;
                }
            }
            self.payload.extend_from_slice(chunk);
            if !fin {
                return Ok(None);
            }
        }
        self.message = None;
        self.delivered = true;
        Ok(Some(opcode))
    }

    /// A whole compressed message, inflated into `payload` within the message limit
    /// (RFC 7692 7.2.2), then checked as text if it is text.
    fn inflate_from(&mut self, compressed: &[u8], opcode: Opcode, limits: &Limits) -> Result<(), PeerError> {
        deflate::inflate(compressed, &mut self.payload, limits.max_message).map_err(|err| match err {
            deflate::InflateError::TooBig => PeerError::MessageTooBig,
            deflate::InflateError::Corrupt => PeerError::BadCompressedData,
        })?;
        self.inflated += self.payload.len();
        if opcode == Opcode::Text && std::str::from_utf8(&self.payload).is_err() {
            return Err(PeerError::InvalidUtf8);
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests;
