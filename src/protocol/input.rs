//! Frames in: headers parsed in place (a partial one stashed), every limit checked
//! before the payload is touched, payloads unmasked in place, fragments assembled,
//! text checked as it arrives, compressed messages inflated within a per-turn
//! budget, control frames answered. A whole message in one read is delivered where
//! it lies; only unfinished input needs the boxed `Partial`.

use std::time::Instant;

use super::{Conn, Fault, FirstClose, State, INFLATE_BUDGET, KEEP_BUFFER};
use crate::config::Limits;
use crate::deflate;
use crate::error::PeerError;
use crate::frame::{parse_header, CloseCode, Header, Opcode, MAX_CONTROL_PAYLOAD, MAX_HEADER_LEN};
use crate::http;
use crate::mask::apply_mask;
use crate::outqueue::Chunk;
use crate::utf8::Utf8Validator;

/// Frame parsing state. Only the bytes of an unfinished header live here; a frame
/// whose payload arrives in pieces needs a `Partial`, boxed because most connections
/// rarely need one and an idle connection gives it back.
pub(super) struct Reader {
    pub(super) stash: [u8; MAX_HEADER_LEN],
    pub(super) stash_len: u8,
    /// permessage-deflate as negotiated (it fits in the stash's padding).
    pub(super) deflate: Deflate,
    pub(super) partial: Option<Box<Partial>>,
}

/// permessage-deflate on a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Deflate {
    Off,
    /// The peer may compress; we send uncompressed (it asked for a smaller window
    /// than the one we compress with).
    InflateOnly,
    /// Both ways.
    Both,
}

#[derive(Default)]
pub(super) struct Partial {
    /// The frame whose payload is arriving.
    pub(super) frame: Option<PayloadLeft>,
    /// The data message being assembled.
    pub(super) message: Option<Assembly>,
    /// Its bytes so far, followed by those of an unfinished control frame.
    pub(super) payload: Vec<u8>,
    /// A compressed message's bytes, inflated into `payload` once whole (kept with its
    /// capacity, like `payload`, while the connection is busy).
    pub(super) compressed: Vec<u8>,
    pub(super) utf8: Utf8Validator,
    /// `payload` was handed out as an event; clear it before reading on.
    pub(super) delivered: bool,
    /// Bytes inflated in this turn of the loop (see `INFLATE_BUDGET`).
    pub(super) inflated: usize,
    /// Input held back once the turn's inflate budget was spent: at most one read's
    /// worth, handed in again first next turn (`start_turn`).
    pub(super) unread: Vec<u8>,
}

pub(super) struct PayloadLeft {
    pub(super) remaining: u64,
    pub(super) key: [u8; 4],
    pub(super) offset: usize,
    pub(super) fin: bool,
    pub(super) kind: PayloadKind,
}

#[derive(Clone, Copy)]
pub(super) enum PayloadKind {
    Data,
    /// Data arriving while we close: read past it.
    Skip,
    /// A control frame's payload, collected in `payload` from `start` on.
    Control {
        opcode: Opcode,
        start: usize,
    },
}

pub(super) struct Assembly {
    pub(super) opcode: Opcode,
    pub(super) len: usize,
    pub(super) fragments: u32,
    /// RSV1 on its first frame: its bytes are DEFLATE, inflated when it is whole.
    pub(super) compressed: bool,
}

pub(super) enum Delivery {
    InPlace { opcode: Opcode, start: usize, end: usize },
    Assembled { opcode: Opcode },
}

impl Conn {
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

    /// The common case in one step: an open connection with nothing under way (no
    /// partial header, no message or buffer), and a whole unfragmented, uncompressed
    /// text or binary frame of at most 125 bytes at the front of `input`. Returns the
    /// bytes used and the message (opcode, where its payload lies, unmasked), or the
    /// failure of invalid text; `None` (nothing touched) leaves all to `read_frames`.
    #[inline]
    pub(super) fn small_message(
        &mut self,
        input: &mut [u8],
        now: Instant,
        limits: &Limits,
    ) -> Option<(usize, Option<Delivery>)> {
        if !matches!(self.state, State::Open { .. }) || self.reader.stash_len != 0 || self.reader.partial.is_some() {
            return None;
        }
        let [b0, b1, k0, k1, k2, k3, ..] = *input else { return None };
        // FIN, no RSV bit: a whole message, not compressed.
        let opcode = match b0 {
            0x81 => Opcode::Text,
            0x82 => Opcode::Binary,
            _ => return None,
        };
        // Masked (RFC 6455 5.1), with a 7-bit length (126 and 127 announce longer ones).
        let len = usize::from(b1 & 0x7F);
        if b1 & 0x80 == 0 || len > 125 || len > limits.max_message {
            return None;
        }
        let end = 6 + len;
        let payload = input.get_mut(6..end)?;
        apply_mask(payload, [k0, k1, k2, k3], 0);
        if opcode == Opcode::Text && std::str::from_utf8(payload).is_err() {
            return Some(self.fail(PeerError::InvalidUtf8, now, limits, input.len()));
        }
        Some((end, Some(Delivery::InPlace { opcode, start: 6, end })))
    }

    pub(super) fn read_frames(&mut self, input: &mut [u8], now: Instant, limits: &Limits) -> (usize, Option<Delivery>) {
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
}

impl Reader {
    pub(super) fn new() -> Reader {
        Reader { stash: [0; MAX_HEADER_LEN], stash_len: 0, deflate: Deflate::Off, partial: None }
    }

    /// Gives the buffers back when nothing is under way (an idle connection).
    pub(super) fn drop_idle_buffers(&mut self) {
        if self.partial.as_deref().is_some_and(|p| p.message.is_none() && p.frame.is_none() && p.unread.is_empty()) {
            self.partial = None;
        }
    }

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
