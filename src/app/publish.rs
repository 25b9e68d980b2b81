//! One way in: every message that enters a room (a plain client's message, a v1
//! `publish` or binary frame, an HTTP API publish, held input replayed once a join
//! has Redis's state) becomes one `Publish` and goes through `admit`, where the size
//! rule is written once (and where the permission check and the rate limit go
//! next). Admitted, it goes to the bus (app/bus.rs): numbered here and delivered at
//! once (`Sent::Now`, by `App::conclude`), or sent to Redis and delivered when it
//! comes back (`Sent::Later`). A refusal is told to its publisher in one place,
//! `App::refuse_publish`, now or (Redis) later.

use std::collections::HashMap;
use std::time::Instant;

use super::bus::{Bus, Delivery, Sent};
use super::deliver::fits_envelope_from;
use super::grants::Grants;
pub(super) use super::message::{Publish, Refused, Source, Target};
use super::{queue_flush, App, ClientIo, TOO_BIG_FOR_ENVELOPE};
use crate::api;
use crate::auth::limits::{Limiter, PublishLimits, Verdict};
use crate::auth::{Auth, Grant};
use crate::backplane;
use crate::config::Config;
use crate::frame::CloseCode;
use crate::metrics::CloseReason;
use crate::outqueue::Chunk;
use crate::pubsub::Seq;
use crate::rooms::Rooms;
use crate::v1::{Envelopes, OpError};

/// What became of an admitted publish.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Outcome {
    /// Numbered here and delivered.
    Numbered(Seq),
    /// Sent to Redis: numbered, delivered and answered later (`app/redis.rs`).
    Sent,
}

/// What the way in checks of a client's publish, beside the message: the
/// publisher's grant (by client id; none: anonymous) and its rate buckets. API
/// publishes are neither checked nor limited.
pub(super) struct Gate<'a> {
    pub auth: &'a Auth,
    pub grants: &'a Grants,
    pub limits: &'a PublishLimits,
    pub limiters: &'a mut HashMap<usize, Limiter>,
}

impl<'a> Gate<'a> {
    /// Write permission, then the rate (a refused publish takes nothing from the
    /// buckets). Returns the `from` of the message: the publisher's `sub`.
    #[inline]
    fn check(&mut self, rooms: &Rooms, p: &Publish<'_>, now: Instant) -> Result<Option<&'a str>, Refused> {
        // The open server (no key, anonymous writes everywhere, no rate): nothing to look up.
        if self.auth.is_open() && !self.limits.is_on() {
            return Ok(None);
        }
        self.check_grant(rooms, p, now)
    }

    #[inline(never)]
    fn check_grant(&mut self, rooms: &Rooms, p: &Publish<'_>, now: Instant) -> Result<Option<&'a str>, Refused> {
        let (id, plain) = match p.source {
            Source::Api(_) => return Ok(None),
            Source::Plain(id) => (id, true),
            Source::V1 { id, .. } => (id, false),
        };
        let grants: &'a Grants = self.grants;
        let user = grants.get(id).map(|g| &**g);
        let auth: &'a Auth = self.auth;
        let grant = user.unwrap_or(auth.anonymous());
        // A grant that writes everywhere needs no room name.
        if !auth.may_write_all(grant) {
            let name = match p.room {
                Target::Id(room) => rooms.get(room).map_or("", |r| r.name()),
                Target::Named(name) => name,
            };
            if !auth.may_write(grant, name) {
                return Err(Refused::Forbidden);
            }
        }
        if self.limits.is_on() {
            let limiter = self.limiters.entry(id).or_insert_with(|| Limiter::new(self.limits, now));
            match limiter.publish(self.limits, p.payload.bytes().len(), plain, now) {
                Verdict::Allowed => {}
                Verdict::Refused => return Err(Refused::RateLimited(false)),
                Verdict::Close => return Err(Refused::RateLimited(true)),
            }
        }
        Ok(user.and_then(Grant::sub))
    }
}

/// The one entry point's rules: the size rule, then the bus. Over the fields it
/// needs rather than the `App`: a plain client's payload still borrows its connection.
#[inline]
pub(super) fn admit(
    config: &Config,
    rooms: &mut Rooms,
    envelopes: &mut Envelopes,
    bus: &mut Bus,
    gate: &mut Gate<'_>,
    p: &Publish<'_>,
    now: Instant,
) -> Result<Sent, Refused> {
    let from = gate.check(rooms, p, now)?;
    if !fits_envelope_from(config, p.payload, from) {
        return Err(Refused::TooBig);
    }
    bus.publish(config, rooms, envelopes, p, from, now)
}

impl<T: ClientIo> App<T> {
    /// The one way in: `admit`, then `conclude`.
    pub(super) fn publish(&mut self, p: Publish<'_>, now: Instant) -> Result<Outcome, Refused> {
        let App { config, rooms, envelopes, bus, auth, publish_limits, limiters, grants, .. } = self;
        let mut gate = Gate { auth, grants, limits: publish_limits, limiters };
        let admitted = admit(config, rooms, envelopes, bus, &mut gate, &p, now);
        self.conclude(p.source, admitted, now)
    }

    /// After `admit`: a local publish delivered, a refusal told. Out of line: once per
    /// publish (not per delivery), and inlined it grew `handle_input` past the point
    /// where LLVM still inlined the echo path's helpers (+60 instructions per echo).
    #[inline(never)]
    pub(super) fn conclude(
        &mut self,
        source: Source<'_>,
        admitted: Result<Sent, Refused>,
        now: Instant,
    ) -> Result<Outcome, Refused> {
        let outcome = match admitted {
            Ok(Sent::Now(room, stored, key)) => {
                let seq = self.deliver(Delivery { room, stored, publisher: source.publisher() }, now);
                if let Some(key) = key {
                    self.bus.remember(&self.rooms, room, key, seq, now);
                }
                Outcome::Numbered(seq)
            }
            Ok(Sent::Again(room, seq)) => {
                let json_room: Box<str> = self.rooms.get(room).map_or("\"\"".into(), |r| r.json_name().into());
                self.answer_again(source, &json_room, seq, now);
                Outcome::Numbered(seq)
            }
            Ok(Sent::Later) => Outcome::Sent,
            Err(why) => {
                self.refuse_publish(source, why, now);
                return Err(why);
            }
        };
        if let Source::Api(_) = source {
            self.metrics.api_publishes += 1;
        }
        Ok(outcome)
    }

    /// A publish whose id was published in its room within `--dedup-window`: not
    /// published again, its publisher acked with the first publish's seq (an API
    /// request is answered by its caller, with the same body as the first time).
    pub(super) fn answer_again(&mut self, source: Source<'_>, json_room: &str, seq: Seq, now: Instant) {
        self.metrics.publish_duplicates += 1;
        let Source::V1 { id, ack: Some(ack) } = source else { return };
        let App { clients, envelopes, config, dirty, .. } = self;
        if let Some(client) = clients.get_mut(id) {
            let _ = client.conn.send(envelopes.ack(ack, json_room, seq), now, &config.limits);
            queue_flush(dirty, id, client);
        }
    }

    /// Tells a publisher that its message was refused, each source its way: a plain
    /// client is closed, a v1 client gets an error envelope, an API request 413/503.
    #[inline(never)]
    pub(super) fn refuse_publish(&mut self, source: Source<'_>, why: Refused, now: Instant) {
        let reason = match why {
            Refused::TooBig => TOO_BIG_FOR_ENVELOPE,
            Refused::TooManyRooms => "too many rooms",
            Refused::Backplane(backplane::Refused::OutboxFull) if matches!(source, Source::Api(_)) => {
                "backplane unavailable: too many messages waiting for Redis"
            }
            Refused::Backplane(_) => "backplane unavailable",
            Refused::Lost => "backplane unavailable (the message may have been published)",
            Refused::Forbidden => "read-only room",
            Refused::RateLimited(_) => "rate limited",
        };
        match why {
            Refused::Forbidden => self.metrics.auth_refusal("forbidden"),
            Refused::RateLimited(_) => self.metrics.auth_refusal("rate_limited"),
            _ => {}
        }
        match source {
            Source::Plain(id) => {
                let code = match why {
                    Refused::TooBig => CloseCode::TOO_BIG,
                    Refused::Forbidden => CloseCode::POLICY,
                    Refused::RateLimited(_) => CloseCode(4429),
                    _ => CloseCode::TRY_AGAIN_LATER,
                };
                if let Some(client) = self.clients.get_mut(id) {
                    if client.conn.is_open() {
                        self.metrics.closed(close_reason(why));
                    }
                    client.conn.close(code, reason, now, &self.config.limits);
                    self.retimed.push(id);
                }
            }
            Source::V1 { id, .. } if why == Refused::RateLimited(true) => {
                if let Some(client) = self.clients.get_mut(id) {
                    if client.conn.is_open() {
                        self.metrics.closed(CloseReason::RateLimited);
                    }
                    client.conn.close(CloseCode(4429), reason, now, &self.config.limits);
                    self.retimed.push(id);
                }
            }
            Source::V1 { id, ack } => {
                let err = match why {
                    Refused::TooBig => OpError::MessageTooBig,
                    Refused::Forbidden => OpError::Forbidden,
                    Refused::RateLimited(_) => OpError::RateLimited,
                    _ => OpError::BackplaneUnavailable,
                };
                self.refuse_op(id, err, ack, now);
            }
            Source::Api(id) => {
                let status = if why == Refused::TooBig { 413 } else { 503 };
                if let Some(client) = self.clients.get_mut(id) {
                    client.conn.respond(Chunk::Owned(api::error(status, reason)), now);
                }
            }
        }
        // A client's refusal by the backplane is acted on at once (as a late one).
        if matches!(why, Refused::Backplane(_)) && !matches!(source, Source::Api(_)) {
            self.after_activity(source_id(source));
        }
    }
}

fn source_id(source: Source<'_>) -> usize {
    match source {
        Source::Plain(id) | Source::V1 { id, .. } | Source::Api(id) => id,
    }
}

/// Why a plain client is closed for a refused publish.
fn close_reason(why: Refused) -> CloseReason {
    match why {
        Refused::TooBig => CloseReason::TooBig,
        Refused::Forbidden => CloseReason::Forbidden,
        Refused::RateLimited(_) => CloseReason::RateLimited,
        Refused::TooManyRooms | Refused::Backplane(_) | Refused::Lost => CloseReason::Backplane,
    }
}
