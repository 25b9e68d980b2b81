//! A connection before its frames: the request head is collected and parsed
//! (Handshaking), a valid upgrade waits for `accept` or `refuse` (Upgrading), a plain
//! request for `respond` or `read_body` (Judging, Body, Answering).

use std::time::Instant;

use super::{Conn, Deflate, Event, Fault, Heartbeat, HttpRequest, State, UpgradeRequest, HTTP_LINGER};
use crate::config::Limits;
use crate::deflate;
use crate::error::HandshakeError;
use crate::handshake::{self, BodyLength, Request, MAX_HEAD};
use crate::outqueue::Chunk;

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
                idempotency_key: http.idempotency_key.map(<[u8]>::to_vec),
                body_length: http.body,
                body: Vec::new(),
                expect_continue: http.expect_continue,
            })),
        }
    }
}

impl Conn {
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

    pub(super) fn read_head(&mut self, input: &[u8], now: Instant, limits: &Limits) -> (usize, Option<Event<'static>>) {
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
    pub(super) fn collect_body(&mut self, input: &[u8]) -> (usize, Option<Event<'static>>) {
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
}
