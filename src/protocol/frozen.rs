//! A connection as plain data, for a binary upgrade (src/upgrade/): where it stands
//! in its life, the bytes it holds (a request head so far, a half frame header, a
//! fragmented message, input held back, output not yet written), its heartbeat, and
//! its deadlines as time left. `Conn::freeze` and `Conn::thaw` are each other's
//! inverse; `thaw` checks what indexing relies on, so a corrupt state is refused,
//! never a panic later.
//!
//! permessage-deflate moves as the one fact of which way it runs: every agreement
//! is without context takeover both ways (src/deflate.rs), so no window travels, and
//! a compressed message still arriving travels as its compressed bytes.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::input::{Assembly, Deflate, Partial, PayloadKind, PayloadLeft, Reader};
use super::{Conn, FirstClose, Heartbeat, HttpRequest, State};
use crate::config::Limits;
use crate::frame::{CloseCode, Opcode, MAX_CONTROL_PAYLOAD, MAX_HEADER_LEN};
use crate::frozen::{self, Bytes};
use crate::handshake::{BodyLength, Method};
use crate::outqueue::OutQueue;

/// A connection between two events (`Conn::freeze`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConnState {
    pub phase: PhaseState,
    /// The bytes of a frame header so far (fewer than a header).
    #[serde(with = "frozen::bytes")]
    pub header: Vec<u8>,
    /// permessage-deflate: 0 off, 1 the peer compresses, 2 both ways.
    pub deflate: u8,
    pub partial: Option<PartialState>,
    /// Output that must go out whatever follows (a 101, the rest of a frame begun on
    /// the wire), then the other chunks, each whole frames.
    #[serde(with = "frozen::bytes")]
    pub out_committed: Vec<u8>,
    #[serde(deserialize_with = "frozen::seq")]
    pub out: Vec<Bytes>,
    /// Who started the closing handshake: (code, by the peer).
    pub first_close: Option<(u16, bool)>,
}

/// `State`, with deadlines as time left. The states that wait for the application's
/// answer within the same event (Judging, Upgrading, Answering) and Closed are not
/// frozen (`Conn::freeze` says `None`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum PhaseState {
    Handshaking {
        #[serde(with = "frozen::bytes")]
        head: Vec<u8>,
        deadline: Option<Duration>,
    },
    Body {
        request: RequestState,
        need: u64,
        deadline: Option<Duration>,
    },
    Open {
        next_ping: Option<Duration>,
        ping_seq: u32,
        /// The oldest unanswered ping and the time left for its pong.
        waiting: Option<(u32, Duration)>,
    },
    Closing {
        deadline: Option<Duration>,
    },
    Draining {
        deadline: Option<Duration>,
        write_shut: bool,
        linger: bool,
    },
}

/// A plain HTTP request whose body is arriving.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RequestState {
    /// 0 GET, 1 POST, 2 DELETE.
    pub method: u8,
    pub target: String,
    pub authorization: Option<Bytes>,
    pub content_type: Option<Bytes>,
    /// An API publish's id (checked when the request is judged, as in one process).
    pub idempotency_key: Option<Bytes>,
    /// `None`: no length; `Some(None)`: unknown (chunked); else the length.
    pub body_length: Option<Option<u64>>,
    #[serde(with = "frozen::bytes")]
    pub body: Vec<u8>,
    pub expect_continue: bool,
}

/// A frame or message under way.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PartialState {
    pub frame: Option<FrameState>,
    pub message: Option<MessageState>,
    /// The message's bytes so far, then those of an unfinished control frame.
    #[serde(with = "frozen::bytes")]
    pub payload: Vec<u8>,
    /// A compressed message's bytes so far.
    #[serde(with = "frozen::bytes")]
    pub compressed: Vec<u8>,
    /// An unfinished UTF-8 character at the end of a text message's bytes so far.
    #[serde(with = "frozen::bytes")]
    pub utf8_carry: Vec<u8>,
    /// Input held back past the turn's inflate budget, handed in first next turn.
    #[serde(with = "frozen::bytes")]
    pub unread: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FrameState {
    pub remaining: u64,
    pub key: [u8; 4],
    pub offset: u8,
    pub fin: bool,
    /// `None`: data; `Some(None)`: data read past; `Some(Some((opcode, start)))`: a
    /// control frame collected in `payload` from `start` on.
    pub control: Option<Option<(u8, u32)>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MessageState {
    pub opcode: u8,
    pub len: u64,
    pub fragments: u32,
    pub compressed: bool,
}

/// Why a frozen connection cannot be thawed: a value it could never have held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Invalid(pub &'static str);

impl Conn {
    /// This connection as plain data, or `None` when it is not worth moving (closed)
    /// or waits for the application within an event (never between events without
    /// `--redis`).
    pub fn freeze(&self, now: Instant) -> Option<ConnState> {
        let left = |d: Option<Instant>| frozen::left(d, now);
        let phase = match &self.state {
            State::Handshaking { head, deadline } => {
                PhaseState::Handshaking { head: head.clone(), deadline: left(*deadline) }
            }
            State::Body { request, need, deadline } => {
                PhaseState::Body { request: freeze_request(request), need: *need as u64, deadline: left(*deadline) }
            }
            State::Open { heartbeat } => PhaseState::Open {
                next_ping: left(heartbeat.next_ping),
                ping_seq: heartbeat.seq,
                waiting: heartbeat.waiting.map(|(seq, at)| (seq, at.saturating_duration_since(now))),
            },
            State::Closing { deadline } => PhaseState::Closing { deadline: left(*deadline) },
            State::Draining { deadline, write_shut, linger } => {
                PhaseState::Draining { deadline: left(*deadline), write_shut: *write_shut, linger: *linger }
            }
            State::Judging { .. } | State::Upgrading { .. } | State::Answering | State::Closed => return None,
        };
        let (out_committed, out) = self.out.unsent();
        Some(ConnState {
            phase,
            header: self.reader.stash[..usize::from(self.reader.stash_len)].to_vec(),
            deflate: match self.reader.deflate {
                Deflate::Off => 0,
                Deflate::InflateOnly => 1,
                Deflate::Both => 2,
            },
            partial: self.reader.partial.as_deref().map(freeze_partial),
            out_committed,
            out: out.into_iter().map(Bytes).collect(),
            first_close: self.first_close.map(|c| (c.code.0, c.by_peer)),
        })
    }

    /// The connection `freeze` made `state` of, its deadlines counted from `now`.
    pub fn thaw(state: ConnState, now: Instant, limits: &Limits) -> Result<Conn, Invalid> {
        let at = |d: Option<Duration>| frozen::deadline(d, now);
        let state_now = match state.phase {
            PhaseState::Handshaking { head, deadline } => State::Handshaking { head, deadline: at(deadline) },
            PhaseState::Body { request, need, deadline } => State::Body {
                request: Box::new(thaw_request(request)?),
                need: usize::try_from(need).map_err(|_| Invalid("body length"))?,
                deadline: at(deadline),
            },
            PhaseState::Open { next_ping, ping_seq, waiting } => State::Open {
                heartbeat: Heartbeat {
                    next_ping: at(next_ping),
                    seq: ping_seq,
                    waiting: waiting.map(|(seq, left)| (seq, frozen::deadline(Some(left), now).unwrap_or(now))),
                },
            },
            PhaseState::Closing { deadline } => State::Closing { deadline: at(deadline) },
            PhaseState::Draining { deadline, write_shut, linger } => {
                State::Draining { deadline: at(deadline), write_shut, linger }
            }
        };
        if state.header.len() >= MAX_HEADER_LEN {
            return Err(Invalid("frame header"));
        }
        let mut reader = Reader::new();
        reader.stash[..state.header.len()].copy_from_slice(&state.header);
        reader.stash_len = state.header.len() as u8;
        reader.deflate = match state.deflate {
            0 => Deflate::Off,
            1 => Deflate::InflateOnly,
            2 => Deflate::Both,
            _ => return Err(Invalid("deflate")),
        };
        reader.partial = state.partial.map(|p| thaw_partial(p, limits)).transpose()?.map(Box::new);
        let first_close = state.first_close.map(|(code, by_peer)| FirstClose { code: CloseCode(code), by_peer });
        Ok(Conn {
            state: state_now,
            reader,
            out: OutQueue::restore(state.out_committed, state.out.into_iter().map(|b| b.0).collect()),
            fault: None,
            first_close,
        })
    }
}

fn freeze_request(r: &HttpRequest) -> RequestState {
    RequestState {
        method: match r.method {
            Method::Get => 0,
            Method::Post => 1,
            Method::Delete => 2,
        },
        target: r.target.clone(),
        authorization: r.authorization.clone().map(Bytes),
        content_type: r.content_type.clone().map(Bytes),
        idempotency_key: r.idempotency_key.clone().map(Bytes),
        body_length: match r.body_length {
            BodyLength::None => None,
            BodyLength::Unknown => Some(None),
            BodyLength::Length(n) => Some(Some(n)),
        },
        body: r.body.clone(),
        expect_continue: r.expect_continue,
    }
}

fn thaw_request(r: RequestState) -> Result<HttpRequest, Invalid> {
    Ok(HttpRequest {
        method: match r.method {
            0 => Method::Get,
            1 => Method::Post,
            2 => Method::Delete,
            _ => return Err(Invalid("method")),
        },
        target: r.target,
        authorization: r.authorization.map(|b| b.0),
        content_type: r.content_type.map(|b| b.0),
        idempotency_key: r.idempotency_key.map(|b| b.0),
        body_length: match r.body_length {
            None => BodyLength::None,
            Some(None) => BodyLength::Unknown,
            Some(Some(n)) => BodyLength::Length(n),
        },
        body: r.body,
        expect_continue: r.expect_continue,
    })
}

fn freeze_partial(p: &Partial) -> PartialState {
    PartialState {
        frame: p.frame.as_ref().map(|f| FrameState {
            remaining: f.remaining,
            key: f.key,
            offset: f.offset as u8,
            fin: f.fin,
            control: match f.kind {
                PayloadKind::Data => None,
                PayloadKind::Skip => Some(None),
                PayloadKind::Control { opcode, start } => Some(Some((opcode.bits(), start as u32))),
            },
        }),
        message: p.message.as_ref().map(|m| MessageState {
            opcode: m.opcode.bits(),
            len: m.len as u64,
            fragments: m.fragments,
            compressed: m.compressed,
        }),
        // A message handed out is done with: its bytes are cleared before the next read.
        payload: if p.delivered { Vec::new() } else { p.payload.clone() },
        compressed: p.compressed.clone(),
        utf8_carry: p.utf8.pending().to_vec(),
        unread: p.unread.clone(),
    }
}

fn thaw_partial(p: PartialState, limits: &Limits) -> Result<Partial, Invalid> {
    let opcode = |bits: u8| Opcode::from_bits(bits).ok_or(Invalid("opcode"));
    let mut partial = Partial { payload: p.payload, compressed: p.compressed, unread: p.unread, ..Partial::default() };
    if let Some(m) = p.message {
        // The size checks subtract the bytes so far from the limit.
        let max = limits.max_message + limits.max_message / 1024 + 64;
        let len = usize::try_from(m.len).ok().filter(|&len| len <= max).ok_or(Invalid("message length"))?;
        let opcode = opcode(m.opcode).ok().filter(|o| matches!(o, Opcode::Text | Opcode::Binary));
        let opcode = opcode.ok_or(Invalid("message opcode"))?;
        partial.message = Some(Assembly { opcode, len, fragments: m.fragments, compressed: m.compressed });
    }
    if let Some(f) = p.frame {
        let kind = match f.control {
            None => PayloadKind::Data,
            Some(None) => PayloadKind::Skip,
            Some(Some((bits, start))) => {
                let start = start as usize;
                let opcode = opcode(bits).ok().filter(|o| o.is_control()).ok_or(Invalid("control opcode"))?;
                // The control frame's body is copied into a 125-byte array once whole.
                let whole = (partial.payload.len().checked_sub(start).ok_or(Invalid("control start"))? as u64)
                    .saturating_add(f.remaining);
                if whole > MAX_CONTROL_PAYLOAD as u64 {
                    return Err(Invalid("control length"));
                }
                PayloadKind::Control { opcode, start }
            }
        };
        let offset = usize::from(f.offset & 3);
        partial.frame = Some(PayloadLeft { remaining: f.remaining, key: f.key, offset, fin: f.fin, kind });
    }
    if partial.utf8.feed(&p.utf8_carry).is_err() || partial.utf8.pending() != p.utf8_carry.as_slice() {
        return Err(Invalid("utf-8 carry"));
    }
    Ok(partial)
}
