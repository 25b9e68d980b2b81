//! mioket: a WebSocket server written from RFC 6455 up, on one mio event loop.
//!
//! # Layers
//! Each layer imports only the layers below it; only `runtime` does I/O (sockets,
//! the clock, signals). See docs/architecture.md for the path of one message.
//!
//! - [`runtime`]: the mio event loop, the only I/O; `transport`: a client's byte
//!   stream (plain TCP, or TLS through `tls`: rustls, certificates loaded and reloaded).
//!   Embedding: `runtime::Server::bind(config)?.run()`.
//! - [`app`]: policy without I/O: admission, rooms and their welcome and history,
//!   echo or publish, write-through, HTTP routes (pages, /metrics, /healthz, the API
//!   through `api`).
//! - `v1`: the `mioket.v1` subprotocol: envelopes out, ops in (docs/protocol.md).
//! - `rooms`: named rooms with epochs, expiry and one bound on all histories, on
//!   `pubsub`: topics with membership by audience and a numbered history; both
//!   know client ids and shared frames, never a connection.
//! - [`protocol`]: `Conn`, one connection's state machine; [`outqueue`]: its
//!   outgoing queue of shared and inline frames, with memory accounting.
//! - [`handshake`] (the HTTP upgrade, RFC 6455 section 4), `http` (plain answers
//!   and the embedded pages), [`frame`], [`mask`], [`utf8`] (RFC 6455 framing,
//!   masking, incremental UTF-8), [`error`] (close codes, and the wire faults with
//!   their close codes and HTTP statuses; `frame` imports it, not the other way).
//!   The wire layer knows no subprotocol name: `app` picks one from the request.
//! - `backplane`: the Redis backplane (`--redis`): rooms shared by many processes,
//!   numbered by Redis; a sans-I/O half (`mirror`, behind the application's bus) and
//!   a link (three threads) for the runtime.
//! - [`upgrade`]: a binary upgrade with live connections: the snapshot's format and
//!   `App::freeze`/`thaw`/`restore` (each layer's state as plain data beside its code:
//!   `protocol::frozen`, `rooms/frozen.rs`, `app/freeze.rs`; `frozen`: what they share).
//! - [`config`]: `Config` and `Limits`, the command line; `metrics`: counters and
//!   the Prometheus text; `memory`: giving freed heap pages back to the system.
//!
//! # What is public
//! An embedding user needs [`runtime::Server`] and [`config::Config`]. The sans-I/O
//! layers ([`app`], [`protocol`], [`outqueue`], [`handshake`], [`frame`], [`deflate`],
//! [`mask`], [`utf8`], [`error`]) are public too: the fuzz targets, the benches and the
//! tests drive them directly, and so can anyone who brings their own I/O. What has no
//! user outside the crate is crate-private: the plain HTTP answers, the API, the
//! transport, TLS and the memory trimming (the runtime's own), and the application's
//! inside (`rooms`, `pubsub`, `v1`, `backplane`, `metrics`).
#![deny(unsafe_code)]

pub(crate) mod api;
pub mod app;
pub mod auth;
pub(crate) mod backplane;
pub mod config;
pub(crate) mod dedup;
pub mod deflate;
pub mod error;
pub mod frame;
// What every layer's frozen state (a binary upgrade's snapshot) shares.
pub mod frozen;
pub mod handshake;
pub(crate) mod http;
pub mod mask;
pub(crate) mod memory;
pub(crate) mod metrics;
pub mod outqueue;
pub mod protocol;
pub(crate) mod pubsub;
pub(crate) mod rooms;
pub mod runtime;
pub(crate) mod tls;
pub(crate) mod transport;
pub mod upgrade;
pub mod utf8;
pub(crate) mod v1;
