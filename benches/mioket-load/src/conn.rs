//! One load connection's state: its phase, its role in the workload, its parser and
//! what it has yet to send. Driven by the generator (client.rs, workloads.rs).

use std::collections::VecDeque;
use std::time::Instant;

use mio::net::TcpStream;

use crate::deflate;
use crate::parser::Parser;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Phase {
    Connecting,
    Handshaking,
    Open,
    /// We sent a close frame.
    Closing,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Role {
    Plain,
    Publisher(u32),
}

pub(crate) enum Out {
    /// A frame template of the workload, by index.
    Template(usize),
    Static(&'static [u8]),
    Bytes(Vec<u8>),
}

pub(crate) struct Client {
    pub(crate) stream: TcpStream,
    /// wss://: the TLS session over `stream`.
    pub(crate) tls: Option<Box<rustls::ClientConnection>>,
    pub(crate) phase: Phase,
    pub(crate) role: Role,
    /// The HTTP response head, while handshaking.
    pub(crate) head: Vec<u8>,
    pub(crate) parser: Parser,
    pub(crate) out: VecDeque<Out>,
    pub(crate) out_off: usize,
    pub(crate) started: Instant,
    pub(crate) sent_at: Instant,
    pub(crate) waiting: bool,
    /// Messages published (a publisher's connection; in rooms: to this room).
    pub(crate) seq: u64,
    /// Rooms: this publishing connection's messages that have not come back yet.
    pub(crate) in_flight: u32,
    pub(crate) got_close: bool,
    /// Rooms by path: the room this connection joined (0 without --rooms).
    pub(crate) room: u32,
    /// Rooms: the highest room sequence number received (to count gaps).
    pub(crate) last_seq: u64,
    /// --deflate, a broadcast publisher: compresses what it sends.
    pub(crate) deflater: Option<Box<deflate::Deflater>>,
}

/// Connections per source address before the next one is used: each 127.0.0.x has
/// about 28,000 ephemeral ports toward one server port.
pub(crate) const CONNS_PER_SOURCE: usize = 25_000;
