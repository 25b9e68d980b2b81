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

use std::time::{Duration, Instant};

use crate::config::Limits;
use crate::error::{HandshakeError, PeerError};
use crate::frame::{CloseCode, Opcode};
pub use crate::handshake::UpgradeRequest;
use crate::handshake::{BodyLength, Method};
use crate::outqueue::{Chunk, OutQueue};

/// A connection as plain data, for a binary upgrade (src/upgrade/).
pub mod frozen;
/// The handshaking states: the request head, a plain request's body, the answers.
mod head;
/// Frames in: headers, payloads, fragments, control frames, the input buffers.
mod input;
/// Bytes out: the queue, write-through, and the frames we send of our own.
mod output;

use input::{Deflate, Delivery, Reader};

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
    /// An API publish's id (`Idempotency-Key`).
    pub idempotency_key: Option<Vec<u8>>,
    pub body_length: BodyLength,
    /// The body, once the server asked for it with `read_body` (else empty).
    pub body: Vec<u8>,
    /// `Expect: 100-continue`: `read_body` answers 100 first.
    pub expect_continue: bool,
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
            reader: Reader::new(),
            out: OutQueue::default(),
            fault: None,
            first_close: None,
        }
    }

    /// Processes bytes from `input` until an event is ready or the input is used up.
    /// Returns how many bytes it used; call again with the rest. Unmasks in place.
    #[inline]
    pub fn handle_input<'a>(
        &'a mut self,
        input: &'a mut [u8],
        now: Instant,
        limits: &Limits,
    ) -> (usize, Option<Event<'a>>) {
        // Most input is one small message (an echo, a chat line): taken in one step
        // here, inlined into the caller; everything else takes the general path.
        if let Some((used, delivery)) = self.small_message(input, now, limits) {
            let input: &'a [u8] = input;
            return (used, delivery.map(|d| self.message(input, d)));
        }
        self.handle_any_input(input, now, limits)
    }

    #[inline(never)]
    fn handle_any_input<'a>(
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
                (used, delivery.map(|d| self.message(input, d)))
            }
            State::Draining { .. } | State::Closed => (input.len(), None),
        }
    }

    /// A message as an event: where it lies in the input, or in the connection's buffer.
    fn message<'a>(&'a self, input: &'a [u8], delivery: Delivery) -> Event<'a> {
        match delivery {
            Delivery::InPlace { opcode, start, end } => Event::Message { opcode, payload: &input[start..end] },
            Delivery::Assembled { opcode } => {
                let payload = self.reader.partial.as_deref().map_or(&[][..], |p| &p.payload);
                Event::Message { opcode, payload }
            }
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
                self.reader.drop_idle_buffers();
                self.out.shrink_if_empty();
            }
            State::Closing { deadline } | State::Draining { deadline, .. } if due(*deadline) => {
                self.fault.get_or_insert(Fault::CloseTimeout);
                self.state = State::Closed;
            }
            _ => {}
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

    pub fn is_open(&self) -> bool {
        matches!(self.state, State::Open { .. })
    }

    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// Whether this peer takes compressed messages (permessage-deflate negotiated with
    /// a window we compress with).
    pub fn takes_compressed(&self) -> bool {
        self.reader.deflate == Deflate::Both
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
}

#[cfg(test)]
pub(crate) mod tests;
