//! What enters a room, as one value: a `Publish` (who, which room, what), and why one
//! may be refused. The vocabulary of the one way in (publish.rs) and of the bus
//! (bus.rs), below both.

use crate::backplane::{self, Origin};
use crate::rooms::RoomId;
use crate::v1::Payload;

/// Who published, which says how it is answered and how a refusal is told.
#[derive(Clone, Copy, Debug)]
pub(super) enum Source<'a> {
    /// A plain WebSocket client: a refusal closes it (1009, 1013).
    Plain(usize),
    /// A v1 client, with the id to ack, if any: a refusal is an error envelope.
    V1 { id: usize, ack: Option<&'a str> },
    /// An HTTP API request: answered with the seq, or 413/503.
    Api(usize),
}

impl<'a> Source<'a> {
    /// The publisher `fan_out` acks and flushes first (an API request is answered
    /// by its caller).
    #[inline]
    pub(super) fn publisher(self) -> Option<(usize, Option<&'a str>)> {
        match self {
            Source::Plain(id) => Some((id, None)),
            Source::V1 { id, ack } => Some((id, ack)),
            Source::Api(_) => None,
        }
    }

    /// What the backplane keeps to answer it once Redis has numbered it.
    pub(super) fn origin(self, room: &str) -> Origin {
        match self {
            Source::Plain(id) => Origin::Client { id, ack: None, v1: false },
            Source::V1 { id, ack } => Origin::Client { id, ack: ack.map(Into::into), v1: true },
            Source::Api(id) => Origin::Api { id, room: room.into() },
        }
    }
}

/// The room a publish goes to: one a client is in, or one an API request names
/// (made here if there is none yet, and only when it is numbered here).
#[derive(Clone, Copy, Debug)]
pub(super) enum Target<'a> {
    Id(RoomId),
    Named(&'a str),
}

/// A message entering a room.
pub(super) struct Publish<'a> {
    pub source: Source<'a>,
    pub room: Target<'a>,
    pub payload: Payload<'a>,
    /// Its id (a v1 publish's `id`, an API publish's `Idempotency-Key`): published
    /// once per room within `--dedup-window` (src/dedup.rs), a retry answered with
    /// the first publish's seq.
    pub key: Option<&'a str>,
}

/// Why a publish was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Refused {
    /// Its v1 envelope would pass --max-message.
    TooBig,
    /// An API publish to a room that would pass --max-rooms.
    TooManyRooms,
    /// The backplane took it not.
    Backplane(backplane::Refused),
    /// It went to Redis and neither an answer nor its live copy came back: perhaps
    /// published.
    Lost,
    /// The publisher's grant does not write this room.
    Forbidden,
    /// Over the publisher's rate; `true`: and it is closed for it (4429).
    RateLimited(bool),
}
