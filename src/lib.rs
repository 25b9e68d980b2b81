//! mioket: a WebSocket server written from RFC 6455 up, on one mio event loop.
//!
//! # Layout
//! The protocol is sans-I/O: everything that understands WebSocket takes bytes in and
//! gives events and bytes out; only `server` touches sockets and the clock.
//!
//! - [`config`]: `Config` and `Limits`, the command line.
//! - [`error`]: `PeerError` (close codes) and `HandshakeError` (HTTP statuses).
//! - [`frame`], [`mask`], [`utf8`]: RFC 6455 framing, masking, incremental UTF-8.
//! - [`handshake`]: the HTTP upgrade (section 4).
//! - [`protocol`]: `Conn`, one connection's state machine.
//! - [`outqueue`]: a connection's outgoing queue of shared and inline frames.
//! - [`room`]: the bounded history of shared frames.
//! - [`http`]: plain HTTP answers (the embedded browser pages, 404).
//! - [`memory`]: giving freed heap pages back to the system (the one `unsafe` call).
//! - [`metrics`]: counters and the Prometheus text for `GET /metrics`.
//! - [`server`]: the mio event loop, the only I/O.
#![deny(unsafe_code)]

pub mod config;
pub mod error;
pub mod frame;
pub mod handshake;
pub mod http;
pub mod mask;
pub mod memory;
pub mod metrics;
pub mod outqueue;
pub mod protocol;
pub mod room;
pub mod server;
pub mod utf8;
