//! Faults of the peer: each variant is one rule the peer broke and knows its answer
//! (a close code for frames, an HTTP status for handshakes). Our own I/O errors are
//! `std::io::Error` and never mix with these. This module imports no other: `frame`
//! builds on it, not the other way round.

use std::fmt;

/// A close code (RFC 6455 7.4): the status a close frame carries, or one of the two
/// that are never sent but name what happened: 1005 (a close without a code) and
/// 1006 (no close frame at all).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct CloseCode(pub u16);

impl CloseCode {
    pub const NORMAL: CloseCode = CloseCode(1000);
    pub const GOING_AWAY: CloseCode = CloseCode(1001);
    pub const PROTOCOL_ERROR: CloseCode = CloseCode(1002);
    /// Never sent: the peer's close frame had no code.
    pub const NO_STATUS: CloseCode = CloseCode(1005);
    /// Never sent: the connection ended without a close frame.
    pub const ABNORMAL: CloseCode = CloseCode(1006);
    pub const INVALID_DATA: CloseCode = CloseCode(1007);
    pub const POLICY: CloseCode = CloseCode(1008);
    pub const TOO_BIG: CloseCode = CloseCode(1009);
    pub const INTERNAL: CloseCode = CloseCode(1011);
    /// RFC 6455 7.4.1 (IANA registry): try again later; mioket sends it when a message
    /// cannot be published now (the Redis backplane is unavailable).
    pub const TRY_AGAIN_LATER: CloseCode = CloseCode(1013);

    /// RFC 6455 7.4: whether a peer may put this code in a close frame. 1004-1006 and
    /// 1015 are reserved; 1012-1014 are registered with IANA; 3000-4999 belong to
    /// libraries and applications.
    pub fn may_be_sent(self) -> bool {
        matches!(self.0, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }
}

impl std::fmt::Display for CloseCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A WebSocket peer broke a rule of RFC 6455 (or one of our limits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerError {
    /// RFC 6455 5.2: RSV1-3 must be 0 unless an extension says otherwise (RSV1 is
    /// permessage-deflate's, on the first frame of a message, once negotiated).
    ReservedBits,
    /// RFC 6455 5.2: opcodes 3-7 and 0xB-0xF are reserved.
    ReservedOpcode,
    /// RFC 6455 5.5: control frames must not be fragmented.
    FragmentedControl,
    /// RFC 6455 5.5: control frames carry at most 125 bytes.
    ControlTooLong,
    /// RFC 6455 5.2: the most significant bit of a 64-bit length must be 0.
    LengthTooLarge,
    /// RFC 6455 5.1: a client must mask every frame it sends.
    UnmaskedFrame,
    /// RFC 6455 5.4: a continuation frame needs a message to continue.
    UnexpectedContinuation,
    /// RFC 6455 5.4: a new data frame cannot start inside a fragmented message.
    ExpectedContinuation,
    /// RFC 6455 5.5.1: a close body is empty or at least a 2-byte code.
    CloseBodyTooShort,
    /// RFC 6455 7.4: the close code is not one an endpoint may send.
    InvalidCloseCode,
    /// RFC 6455 8.1: text messages and close reasons are UTF-8.
    InvalidUtf8,
    /// The message is over `--max-message`, counted over all its fragments.
    MessageTooBig,
    /// The message has more fragments than the limit allows.
    TooManyFragments,
    /// RFC 7692: a compressed message that is not a DEFLATE stream.
    BadCompressedData,
}

impl PeerError {
    /// The close code that answers this fault (RFC 6455 7.4.1).
    pub fn close_code(self) -> CloseCode {
        match self {
            PeerError::InvalidUtf8 | PeerError::BadCompressedData => CloseCode::INVALID_DATA,
            PeerError::MessageTooBig | PeerError::TooManyFragments => CloseCode::TOO_BIG,
            _ => CloseCode::PROTOCOL_ERROR,
        }
    }

    /// A short reason for the close frame and the log (well under 123 bytes).
    pub fn reason(self) -> &'static str {
        match self {
            PeerError::ReservedBits => "reserved bits set",
            PeerError::ReservedOpcode => "reserved opcode",
            PeerError::FragmentedControl => "fragmented control frame",
            PeerError::ControlTooLong => "control frame over 125 bytes",
            PeerError::LengthTooLarge => "frame length over 2^63",
            PeerError::UnmaskedFrame => "client frame not masked",
            PeerError::UnexpectedContinuation => "continuation without a message",
            PeerError::ExpectedContinuation => "new message inside a fragmented message",
            PeerError::CloseBodyTooShort => "close body of 1 byte",
            PeerError::InvalidCloseCode => "invalid close code",
            PeerError::InvalidUtf8 => "invalid UTF-8",
            PeerError::MessageTooBig => "message too big",
            PeerError::TooManyFragments => "too many fragments",
            PeerError::BadCompressedData => "invalid compressed data",
        }
    }
}

impl fmt::Display for PeerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (close {})", self.reason(), self.close_code())
    }
}

/// An HTTP request the wire layer will not take (RFC 6455 4, RFC 9112, our head
/// limits); each knows its status and says why. The application's own refusals
/// (a full server, a bad room name, ...) are `app::Refusal`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandshakeError {
    /// The request head is over the size cap.
    HeadTooLarge,
    /// More header lines than we parse.
    TooManyHeaders,
    /// Not parseable as an HTTP/1.x request.
    Malformed,
    /// RFC 6455 4.1: the handshake is a GET.
    NotGet,
    /// RFC 6455 4.1: HTTP/1.1 or later.
    OldHttp,
    /// RFC 9112 3.2: an HTTP/1.1 request needs a Host header.
    MissingHost,
    /// RFC 9112 3.2: more than one Host header.
    DuplicateHost,
    /// More than one `Authorization` line: which token counts would be a guess.
    DuplicateAuthorization,
    /// A GET upgrade with `Content-Length` > 0 or `Transfer-Encoding`: its body
    /// would be read as frames.
    UpgradeWithBody,
    /// `Upgrade` is present but does not name websocket.
    NotWebSocketUpgrade,
    /// `Connection` must contain the `upgrade` token.
    MissingConnectionUpgrade,
    /// RFC 6455 4.2.2: we speak version 13 only (answered with 426).
    UnsupportedVersion,
    /// `Sec-WebSocket-Key` must be the base64 of 16 bytes.
    BadKey,
    /// `Origin` is not on the `--allowed-origin` list.
    OriginRefused,
    /// A plain request with a method other than GET or POST.
    MethodNotAllowed,
}

impl HandshakeError {
    pub fn status(self) -> u16 {
        match self {
            HandshakeError::HeadTooLarge | HandshakeError::TooManyHeaders => 431,
            HandshakeError::NotGet | HandshakeError::MethodNotAllowed => 405,
            HandshakeError::UnsupportedVersion => 426,
            HandshakeError::OriginRefused => 403,
            _ => 400,
        }
    }

    /// The plain-text body of the answer, also used in the log.
    pub fn reason(self) -> &'static str {
        match self {
            HandshakeError::HeadTooLarge => "request head too large",
            HandshakeError::TooManyHeaders => "too many header lines",
            HandshakeError::Malformed => "malformed HTTP request",
            HandshakeError::NotGet => "a WebSocket upgrade must be a GET",
            HandshakeError::OldHttp => "a WebSocket upgrade needs HTTP/1.1",
            HandshakeError::MissingHost => "missing Host header",
            HandshakeError::DuplicateHost => "more than one Host header",
            HandshakeError::DuplicateAuthorization => "more than one Authorization header",
            HandshakeError::UpgradeWithBody => "a WebSocket upgrade must not have a body",
            HandshakeError::NotWebSocketUpgrade => "Upgrade header must be websocket",
            HandshakeError::MissingConnectionUpgrade => "Connection header must contain upgrade",
            HandshakeError::UnsupportedVersion => "only Sec-WebSocket-Version 13 is supported",
            HandshakeError::BadKey => "Sec-WebSocket-Key must be 16 bytes in base64",
            HandshakeError::OriginRefused => "origin not allowed",
            HandshakeError::MethodNotAllowed => "method not allowed",
        }
    }
}

/// Why a room name is refused (docs/protocol.md, "Rooms by path"; checked in
/// `rooms::check_name`): the 400's reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InvalidName {
    /// A request target without a leading `/` (`GET lobby`, `GET *`) is not a path.
    NotAPath,
    /// A `%` not followed by two hex digits, or bytes that are not UTF-8 once decoded.
    BadEscape,
    TooLong,
    /// A control character (C0, DEL, C1).
    Control,
    /// A format character (bidirectional controls, zero-width characters, U+FEFF, ...)
    /// or a line or paragraph separator: invisible, so two names would look the same.
    Invisible,
    /// Not in Unicode NFC: `café` has one spelling, not two.
    NotNfc,
    /// An empty, `.` or `..` segment (`//lobby`, `/./lobby`, `/lobby/`), which a proxy
    /// that normalises paths would route elsewhere.
    DotOrEmptySegment,
}

impl InvalidName {
    pub fn reason(self) -> &'static str {
        match self {
            InvalidName::NotAPath => "invalid room name: the request target must be a path starting with /",
            InvalidName::BadEscape => "invalid room name: a bad percent escape, or not UTF-8",
            InvalidName::TooLong => "invalid room name: longer than 128 bytes",
            InvalidName::Control => "invalid room name: a control character",
            InvalidName::Invisible => "invalid room name: a format (bidirectional, zero-width) or separator character",
            InvalidName::NotNfc => "invalid room name: not in Unicode NFC",
            InvalidName::DotOrEmptySegment => "invalid room name: an empty, . or .. segment",
        }
    }
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.reason(), self.status())
    }
}
