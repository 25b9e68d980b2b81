//! Plain HTTP: the pages, `/metrics`, `/healthz` and the API (docs/protocol.md),
//! each answered now or later (`Answer`).

use std::time::Instant;

use super::publish::{Outcome, Publish, Source, Target};
use super::{App, ClientIo, Lifecycle, Listener};
use crate::api;
use crate::config::Mode;
use crate::handshake::{BodyLength, Method};
use crate::http;
use crate::metrics::Gauges;
use crate::outqueue::Chunk;
use crate::protocol::{HttpRequest, Phase};
use crate::rooms;
use crate::v1::{OpError, Payload};

/// A user id from a path: percent-decoded, 1 to 128 bytes of UTF-8.
fn decode_user(encoded: &str) -> Option<String> {
    let user = percent_encoding::percent_decode_str(encoded).decode_utf8().ok()?;
    (!user.is_empty() && user.len() <= crate::auth::MAX_SUB).then(|| user.into_owned())
}

/// A plain HTTP request's answer: now, or not yet.
pub(super) enum Answer {
    /// These bytes, and the connection ends.
    Now(Vec<u8>),
    /// The head passed: read the body, then judge the whole request again.
    ReadBody,
    /// Given later by `respond_later` (an API publish waiting for Redis to number it).
    Later,
}

impl<T: ClientIo> App<T> {
    /// A plain HTTP request: the pages, /metrics and /healthz where they are served,
    /// and the API. Judged from the head alone (route, method, token, declared length)
    /// before any body byte is read; a publish's body is read only then, and the
    /// request comes back with it.
    #[inline(never)]
    pub(super) fn answer_http(&mut self, id: usize, request: Box<HttpRequest>, now: Instant) {
        // Counted once: a request whose body was read comes back with it.
        if request.body.is_empty() {
            self.metrics.http_requests += 1;
        }
        let Some(listener) = self.clients.get(id).map(|c| c.listener) else { return };
        let operator = listener == Listener::Operator;
        let operator_here = operator || self.config.metrics_listen.is_none();
        let path = request.target.split('?').next().unwrap_or_default();
        let get = request.method == Method::Get;
        let delete = request.method == Method::Delete;
        let answer = match path {
            // DELETE is the moderation API's alone.
            _ if delete && !matches!(api::route(path), Some(api::Route::RoomUser(..))) => {
                Answer::Now(api::method_not_allowed("GET, POST"))
            }
            _ if operator && !matches!(path, "/metrics" | "/healthz" | "/api/stats") => Answer::Now(http::not_found()),
            "/metrics" | "/healthz" if operator_here && !get => Answer::Now(api::method_not_allowed("GET")),
            "/metrics" if operator_here => {
                let mut body = self.metrics.render(&self.gauges());
                self.render_backplane(&mut body);
                Answer::Now(http::response(200, "text/plain; version=0.0.4; charset=utf-8", body.as_bytes()))
            }
            "/healthz" if operator_here && self.lifecycle != Lifecycle::Serving => {
                Answer::Now(http::response(503, http::TEXT, b"shutting down\n"))
            }
            "/healthz" if operator_here => {
                Answer::Now(http::response(200, http::TEXT, format!("ok\n{}", self.backplane_health()).as_bytes()))
            }
            _ => match api::route(path) {
                Some(route) => self.answer_api(id, route, &request, now),
                None if get => Answer::Now(http::answer(path)),
                None => Answer::Now(api::method_not_allowed("GET")),
            },
        };
        let Some(client) = self.clients.get_mut(id) else { return };
        match answer {
            Answer::Now(answer) => client.conn.respond(Chunk::Owned(answer), now),
            Answer::ReadBody => client.conn.read_body(request, &self.config.limits),
            Answer::Later => {}
        }
    }

    /// The HTTP API (docs/protocol.md): off (404) without a token and, but for the
    /// stats, in echo mode.
    fn answer_api(&mut self, id: usize, route: api::Route<'_>, request: &HttpRequest, now: Instant) -> Answer {
        if route == api::Route::Stats {
            return Answer::Now(self.answer_stats(request, now));
        }
        let Some(token) = self.config.api_token.as_deref().filter(|_| self.config.mode == Mode::Broadcast) else {
            return Answer::Now(http::not_found());
        };
        if !api::authorized(request.authorization.as_deref(), token) {
            return Answer::Now(api::unauthorized());
        }
        match (route, request.method) {
            (api::Route::Rooms, Method::Get) => {
                let list: Vec<api::RoomInfo<'_>> = self
                    .rooms
                    .iter()
                    .map(|room| api::RoomInfo {
                        room: room.name(),
                        epoch: room.epoch(),
                        online: room.online(),
                        seq: room.topic.last_seq(),
                        history: room.topic.history().len(),
                    })
                    .collect();
                Answer::Now(api::rooms(&list))
            }
            (api::Route::Rooms, _) => Answer::Now(api::method_not_allowed("GET")),
            (api::Route::Messages(room), Method::Post) => self.api_publish(id, room, request, now),
            (api::Route::Messages(_), _) => Answer::Now(api::method_not_allowed("POST")),
            (api::Route::Presence(room), Method::Get) => match rooms::decode_name(room) {
                Ok(name) => {
                    let room = self.rooms.find(&name);
                    // A room not held here, with Redis: read there (`app/redis.rs` answers).
                    let asker = crate::backplane::Asker::Api { id };
                    if room.is_none() && self.bus.mirror_mut().is_some_and(|m| m.read_presence(asker, &name)) {
                        return Answer::Later;
                    }
                    let json = self.presence_json(room, &name, None);
                    Answer::Now(api::json_ok(&json))
                }
                Err(why) => Answer::Now(api::error(400, why.reason())),
            },
            (api::Route::Presence(_), _) => Answer::Now(api::method_not_allowed("GET")),
            (api::Route::RoomUser(room, user), Method::Delete) => {
                let (Ok(name), Some(user)) = (rooms::decode_name(room), decode_user(user)) else {
                    return Answer::Now(api::error(400, "invalid room or user"));
                };
                let connections = self.remove_user(&name, &user, now);
                Answer::Now(api::moderated(Some(&name), &user, connections))
            }
            (api::Route::RoomUser(..), _) => Answer::Now(api::method_not_allowed("DELETE")),
            (api::Route::Disconnect(user), Method::Post) => self.api_disconnect(user, request, now),
            (api::Route::Disconnect(_), _) => Answer::Now(api::method_not_allowed("POST")),
            (api::Route::Unknown | api::Route::Stats, _) => Answer::Now(http::not_found()),
        }
    }

    /// `GET /api/stats` (app/stats.rs), with the API's token, in either mode.
    fn answer_stats(&mut self, request: &HttpRequest, now: Instant) -> Vec<u8> {
        let Some(token) = self.config.api_token.as_deref() else { return http::not_found() };
        if !api::authorized(request.authorization.as_deref(), token) {
            return api::unauthorized();
        }
        if request.method != Method::Get {
            return api::method_not_allowed("GET");
        }
        api::json_ok(&self.stats_json(now))
    }

    fn api_publish(&mut self, id: usize, encoded_room: &str, request: &HttpRequest, now: Instant) -> Answer {
        let length = match request.body_length {
            BodyLength::None | BodyLength::Unknown => return Answer::Now(api::error(411, "Content-Length required")),
            BodyLength::Length(n) if n > self.config.limits.max_message as u64 => {
                return Answer::Now(api::error(413, "body over --max-message"))
            }
            BodyLength::Length(n) => n,
        };
        let name = match rooms::decode_name(encoded_room) {
            Ok(name) => name,
            Err(why) => return Answer::Now(api::error(400, why.reason())),
        };
        let key = match request.idempotency_key.as_deref().map(api::idempotency_key) {
            None => None,
            Some(Some(key)) => Some(key),
            Some(None) => return Answer::Now(api::error(400, "invalid Idempotency-Key")),
        };
        // The head passed: the body is read next (`answer_http`), then this again.
        if (request.body.len() as u64) < length {
            return Answer::ReadBody;
        }
        let payload = if api::is_binary(request.content_type.as_deref()) {
            Payload::Binary(&request.body)
        } else {
            match std::str::from_utf8(&request.body) {
                Ok(text) => Payload::Text(text),
                Err(_) => return Answer::Now(api::error(400, "a text body must be UTF-8")),
            }
        };
        match self.publish(Publish { source: Source::Api(id), room: Target::Named(&name), payload, key }, now) {
            Ok(Outcome::Numbered(seq)) => Answer::Now(api::published(&name, seq)),
            // Answered when Redis has numbered it (`app/redis.rs`).
            Ok(Outcome::Sent) => Answer::Later,
            // Answered already (`refuse_publish`).
            Err(_) => Answer::Later,
        }
    }

    /// `POST /api/users/{user}/disconnect`, its body (optional) the close reason.
    fn api_disconnect(&mut self, user: &str, request: &HttpRequest, now: Instant) -> Answer {
        let Some(user) = decode_user(user) else { return Answer::Now(api::error(400, "invalid user")) };
        let length = match request.body_length {
            BodyLength::None => 0,
            // A close reason is at most 123 bytes.
            BodyLength::Length(n) if n <= 123 => n,
            _ => return Answer::Now(api::error(413, "the reason is at most 123 bytes")),
        };
        if (request.body.len() as u64) < length {
            return Answer::ReadBody;
        }
        let Ok(reason) = std::str::from_utf8(&request.body) else {
            return Answer::Now(api::error(400, "the reason must be UTF-8"));
        };
        let reason = if reason.trim().is_empty() { "disconnected" } else { reason.trim() };
        let connections = self.disconnect_user(&user, reason, now);
        Answer::Now(api::moderated(None, &user, connections))
    }

    pub(super) fn gauges(&self) -> Gauges {
        let (history_len, history_bytes) = match self.config.mode {
            Mode::Broadcast => self.rooms.history_totals(),
            Mode::Echo => (self.echo_history.len(), self.echo_history.bytes()),
        };
        let mut g = Gauges {
            handshaking: 0,
            open: 0,
            closing: 0,
            history_len,
            history_bytes,
            rooms: self.rooms.len(),
            rooms_created: self.rooms.created,
            rooms_expired: self.rooms.expired,
            output_queued_bytes: self.queued,
            op_error_reasons: OpError::ALL.map(OpError::reason),
        };
        for (_, client) in &self.clients {
            match client.conn.phase() {
                Phase::Handshaking => g.handshaking += 1,
                Phase::Open => g.open += 1,
                Phase::Closing => g.closing += 1,
            }
        }
        g
    }
}
