//! The application's own refusals of an upgrade: a valid WebSocket request it will
//! not take (the wire layer's are `error::HandshakeError`).

use std::fmt;

use crate::error::InvalidName;
use crate::handshake;
use crate::metrics::Rejection;

/// Why the application will not take a valid upgrade; each knows its HTTP status
/// and says why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// `--max-connections` WebSockets are already open, or the server is stopping.
    ServerFull,
    /// The upgrade's path does not name a valid room (docs/protocol.md), and why.
    BadRoomName(InvalidName),
    /// The upgrade's `since` is not a non-negative integer.
    BadResume,
    /// The upgrade would create a room beyond `--max-rooms`.
    RoomLimit,
}

impl Refusal {
    fn status(self) -> u16 {
        match self {
            Refusal::ServerFull | Refusal::RoomLimit => 503,
            Refusal::BadRoomName(_) | Refusal::BadResume => 400,
        }
    }

    /// The plain-text body of the answer, also used in the log.
    fn reason(self) -> &'static str {
        match self {
            Refusal::ServerFull => "too many connections, try again later",
            Refusal::BadRoomName(why) => why.reason(),
            Refusal::BadResume => "invalid since: must be a non-negative integer",
            Refusal::RoomLimit => "too many rooms, try again later",
        }
    }

    /// The whole HTTP answer (`Connection: close`).
    pub fn response(self) -> Vec<u8> {
        handshake::refusal_response(self.status(), self.reason(), "")
    }

    /// How the metrics count it.
    pub(super) fn rejection(self) -> Rejection {
        match self {
            Refusal::ServerFull | Refusal::RoomLimit => Rejection::OverMaxConnections,
            Refusal::BadRoomName(_) | Refusal::BadResume => Rejection::BadHandshake,
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.reason(), self.status())
    }
}
