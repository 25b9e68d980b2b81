//! The application: what mioket does with its connections, without I/O.
//!
//! It admits or refuses (max connections, handshake slack, shutdown), greets and
//! replays history, dispatches each message (echo, or broadcast through the pub/sub
//! room), decides when an echo is written straight to the socket, and routes plain
//! HTTP (the pages, `/metrics`, `/healthz`). The runtime feeds it bytes, time and
//! signals and carries out what it asks: flush these clients (`take_dirty`), wake
//! this client at this time (`poll_timeout`), stop now (`poll_stop`). It never sees
//! a socket: each client carries the runtime's own data as an opaque `T`, and the one
//! write it may ask for (write-through) goes through a closure the runtime gives.

use std::fmt;
use std::rc::Rc;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use slab::Slab;

use crate::config::{Config, Mode};
use crate::error::HandshakeError;
use crate::frame::{encode_header, server_header, CloseCode, Opcode, MAX_HEADER_LEN};
use crate::handshake;
use crate::http;
use crate::metrics::{Gauges, Metrics, Rejection};
use crate::outqueue::{shared_message, Chunk};
use crate::protocol::{Conn, Event, Fault, Phase};
use crate::pubsub::{MemberKey, Topic};

/// Connections still in their handshake allowed beyond max-connections.
pub const HANDSHAKE_SLACK: usize = 1024;
/// An echo at least this large is written at once rather than copied into the queue:
/// its copy costs more than a syscall of its own, and large messages rarely batch.
const WRITE_THROUGH_MIN: usize = 16 * 1024;
/// A queue this large, once drained or freed, counts toward giving memory back.
const LARGE_QUEUE: usize = 256 * 1024;
/// Memory freed by large queues after which the allocator is asked to give pages
/// back, at most once per `TRIM_EVERY`: a trim walks the heap, so not on every free.
const TRIM_AFTER: usize = 1 << 20;
const TRIM_EVERY: Duration = Duration::from_secs(1);

/// The listener a connection came in on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listener {
    /// The WebSocket port: upgrades, pages, and /metrics and /healthz unless they
    /// have a port of their own.
    Main,
    /// `--metrics-listen`: only /metrics and /healthz.
    Operator,
}

/// What a connection turned out to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// Before its request is answered (or a plain HTTP request).
    Pending,
    /// An accepted WebSocket, counted in `App::open`; in broadcast mode a member of
    /// the room.
    WebSocket { member: Option<MemberKey> },
}

/// One connection as the application sees it.
pub struct Client<T> {
    pub conn: Conn,
    /// The runtime's own data for this client (its socket, its timer).
    pub io: T,
    role: Role,
    listener: Listener,
    /// Queued in `App::dirty` for a flush.
    flush_queued: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lifecycle {
    Serving,
    /// A signal asked us to stop: clients are closing (1001); give up at `until`.
    Stopping {
        until: Option<Instant>,
    },
}

/// What a stop signal did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// The first: stop accepting; every client is closing with 1001.
    Closing,
    /// A second signal: stop now.
    Now,
}

pub struct App<T> {
    config: Config,
    clients: Slab<Client<T>>,
    /// Accepted WebSockets not yet removed.
    open: usize,
    /// Today's single room: its members (broadcast mode) and its history.
    room: Topic,
    welcome: Option<Rc<[u8]>>,
    lifecycle: Lifecycle,
    /// Clients with output to flush, in the order they got it (a broadcast's sender first).
    dirty: Vec<usize>,
    /// Memory freed by large queues since the last trim, and when that was.
    released: usize,
    last_trim: Option<Instant>,
    pub metrics: Metrics,
}

/// `T` is the runtime's per-client data; its `Display` names the client in the log
/// (its peer address).
impl<T: fmt::Display> App<T> {
    pub fn new(config: Config) -> App<T> {
        let welcome = config.welcome.as_ref().map(|text| shared_message(Opcode::Text, text.as_bytes()));
        // History replay must fit a new client's queue beside live traffic.
        let room = Topic::new(config.history, config.limits.max_backpressure / 2);
        App {
            config,
            clients: Slab::new(),
            open: 0,
            room,
            welcome,
            lifecycle: Lifecycle::Serving,
            dirty: Vec::new(),
            released: 0,
            last_trim: None,
            metrics: Metrics::default(),
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn client_mut(&mut self, id: usize) -> Option<&mut Client<T>> {
        self.clients.get_mut(id)
    }

    /// A new TCP connection. Beyond max-connections plus the handshake slack it is
    /// refused at once: the runtime writes the answer (best effort) and drops it.
    pub fn connect(&mut self, io: T, listener: Listener, now: Instant) -> Result<usize, (T, Vec<u8>)> {
        self.metrics.accepted += 1;
        if self.clients.len() >= self.config.max_connections + HANDSHAKE_SLACK {
            self.metrics.reject(Rejection::OverMaxConnections);
            info!("rejected {io}: too many connections (503)");
            return Err((io, handshake::error_response(HandshakeError::ServerFull)));
        }
        let conn = Conn::new(now, &self.config.limits);
        Ok(self.clients.insert(Client { conn, io, role: Role::Pending, listener, flush_queued: false }))
    }

    /// Whether to read on from `id`: an echo client that does not read its answers,
    /// or a ping flood, stops being read while its queue holds over half the limit.
    pub fn wants_input(&self, id: usize) -> bool {
        self.clients
            .get(id)
            .is_some_and(|c| !c.conn.is_closed() && c.conn.queue_memory() <= self.config.limits.max_backpressure / 2)
    }

    /// Bytes read from `id`: hands them to its `Conn` and acts on what it yields.
    /// `write_now` is the runtime's non-blocking write for write-through; it returns
    /// how many bytes the socket took.
    pub fn handle_input(
        &mut self,
        id: usize,
        input: &mut [u8],
        now: Instant,
        mut write_now: impl FnMut(&mut T, [&[u8]; 2]) -> usize,
    ) {
        let total = input.len();
        self.metrics.bytes_read += total as u64;
        let mut http_path = None;
        let mut pos = 0;
        while pos < total {
            let App { clients, config, room, dirty, metrics, .. } = self;
            let limits = &config.limits;
            let Some(client) = clients.get_mut(id) else { return };
            // Asked before the input: the message it yields borrows the Conn.
            let can_write_through = client.conn.can_write_through();
            let (used, event) = client.conn.handle_input(&mut input[pos..], now, limits);
            pos += used;
            let Some(event) = event else {
                if used == 0 {
                    break;
                }
                continue;
            };
            let (opcode, payload) = match event {
                Event::UpgradeRequest => {
                    self.admit(id, now);
                    continue;
                }
                // Answered below, once the borrows of this loop are over.
                Event::HttpGet { path } => {
                    http_path = Some(path);
                    continue;
                }
                Event::Message { opcode, payload } => (opcode, payload),
            };
            metrics.messages_in += 1;
            metrics.message_bytes_in += payload.len() as u64;
            match config.mode {
                Mode::Echo if config.history == 0 && can_write_through && payload.len() >= WRITE_THROUGH_MIN => {
                    // Straight from the read buffer to the socket: no copy, no
                    // allocation. Only what the socket does not take is queued.
                    let mut header = [0u8; MAX_HEADER_LEN];
                    let n = encode_header(&server_header(opcode, payload.len()), &mut header);
                    let rest = write_through(&mut client.io, [&header[..n], payload], &mut write_now, metrics);
                    client.conn.finish_write_through(rest);
                }
                Mode::Echo => {
                    let echo = if config.history == 0 {
                        Chunk::frame(opcode, payload)
                    } else {
                        let frame = shared_message(opcode, payload);
                        room.publish(&frame);
                        Chunk::Shared(frame)
                    };
                    // A small echo, the last message of this read, with nothing waiting
                    // ahead of it (pongs included): written now, the one writev a flush
                    // would make, without a trip through the queue. Messages before it
                    // in the same read queue up and share a writev.
                    if pos == total && matches!(echo, Chunk::Inline(_)) && client.conn.can_write_through() {
                        let rest = write_through(&mut client.io, [echo.bytes(), &[]], &mut write_now, metrics);
                        client.conn.finish_write_through(rest);
                    } else if client.conn.send(echo, now, limits).is_ok() {
                        metrics.messages_out += 1;
                    }
                }
                Mode::Broadcast => {
                    let frame = shared_message(opcode, payload);
                    room.publish(&frame);
                    // Every member gets the frame; each is flushed once per loop
                    // iteration, however many frames it got. The sender first: its own
                    // copy going out early lets it send its next message while the
                    // others are still being written.
                    queue_flush(dirty, id, client);
                    for member in room.members() {
                        // Members closing (slow consumers, stop) get nothing more.
                        let Some(recipient) = clients.get_mut(member).filter(|c| c.conn.is_open()) else { continue };
                        if recipient.conn.send(Chunk::Shared(Rc::clone(&frame)), now, limits).is_ok() {
                            metrics.fanout_deliveries += 1;
                            metrics.messages_out += 1;
                        }
                        queue_flush(dirty, member, recipient);
                    }
                }
            }
        }
        if let Some(path) = http_path {
            self.answer_http(id, &path, now);
        }
        self.after_activity(id);
    }

    /// A valid upgrade: accept it (101, welcome, history) unless full or stopping.
    fn admit(&mut self, id: usize, now: Instant) {
        let limits = &self.config.limits;
        let Some(client) = self.clients.get_mut(id) else { return };
        if client.listener == Listener::Operator {
            client.conn.respond(Chunk::Owned(http::not_found()), now);
            return;
        }
        if self.open >= self.config.max_connections || self.lifecycle != Lifecycle::Serving {
            client.conn.refuse(HandshakeError::ServerFull, now);
            return;
        }
        client.conn.accept(now, limits);
        let member = (self.config.mode == Mode::Broadcast).then(|| self.room.join(id));
        client.role = Role::WebSocket { member };
        self.open += 1;
        self.metrics.upgrades += 1;
        let history = self.room.history().iter().map(|(_, frame)| frame);
        for frame in self.welcome.iter().chain(history) {
            if client.conn.send(Chunk::Shared(Rc::clone(frame)), now, limits).is_ok() {
                self.metrics.messages_out += 1;
            }
        }
    }

    /// A plain GET: the pages, or /metrics and /healthz where they are served.
    fn answer_http(&mut self, id: usize, path: &str, now: Instant) {
        self.metrics.http_requests += 1;
        let Some(listener) = self.clients.get(id).map(|c| c.listener) else { return };
        let operator = listener == Listener::Operator;
        let operator_here = operator || self.config.metrics_listen.is_none();
        let answer = match path.split('?').next().unwrap_or_default() {
            "/metrics" if operator_here => {
                let body = self.metrics.render(&self.gauges());
                http::response(200, "text/plain; version=0.0.4; charset=utf-8", body.as_bytes())
            }
            "/healthz" if operator_here && self.lifecycle != Lifecycle::Serving => {
                http::response(503, "text/plain; charset=utf-8", b"shutting down\n")
            }
            "/healthz" if operator_here => http::response(200, "text/plain; charset=utf-8", b"ok\n"),
            _ if operator => http::not_found(),
            _ => http::answer(path),
        };
        if let Some(client) = self.clients.get_mut(id) {
            client.conn.respond(Chunk::Owned(answer), now);
        }
    }

    fn gauges(&self) -> Gauges {
        let mut g = Gauges {
            handshaking: 0,
            open: 0,
            closing: 0,
            history_len: self.room.history().len(),
            history_bytes: self.room.history().bytes(),
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

    /// The peer ended its side of the stream (or the socket failed).
    pub fn handle_eof(&mut self, id: usize) {
        if let Some(client) = self.clients.get_mut(id) {
            client.conn.handle_eof();
        }
        self.after_activity(id);
    }

    /// `id`'s deadline (from `poll_timeout`) has come.
    pub fn handle_timeout(&mut self, id: usize, now: Instant) {
        if let Some(client) = self.clients.get_mut(id) {
            client.conn.handle_timeout(now, &self.config.limits);
        }
        self.after_activity(id);
    }

    /// When `id` next wants `handle_timeout`.
    pub fn poll_timeout(&self, id: usize) -> Option<Instant> {
        self.clients.get(id).and_then(|c| c.conn.poll_timeout())
    }

    /// The runtime is about to write `id`'s output: takes it off the dirty list and
    /// lends the client, whose `conn.poll_transmit` gives the bytes.
    pub fn start_flush(&mut self, id: usize) -> Option<&mut Client<T>> {
        let client = self.clients.get_mut(id)?;
        client.flush_queued = false;
        Some(client)
    }

    /// After a flush of `id` whose queue held `memory_before` bytes: counts memory
    /// given back, and settles the client (fan-out may have closed it as a slow
    /// consumer without reading it).
    pub fn finish_flush(&mut self, id: usize, memory_before: usize, bytes_written: usize) {
        self.metrics.bytes_written += bytes_written as u64;
        if memory_before >= LARGE_QUEUE {
            let after = self.clients.get(id).map_or(0, |c| c.conn.queue_memory());
            self.released += memory_before.saturating_sub(after);
        }
        self.settle(id);
    }

    /// Moves the clients to flush, in order, onto `out` (both vectors keep their
    /// capacity: no allocation per loop iteration).
    pub fn drain_dirty_into(&mut self, out: &mut Vec<usize>) {
        out.append(&mut self.dirty);
    }

    /// Whether clients wait for a flush (for a flush that looks for new input as it goes).
    pub fn has_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// `id`'s socket is writable again: its queue may move on.
    pub fn handle_writable(&mut self, id: usize) {
        if let Some(client) = self.clients.get_mut(id) {
            queue_flush(&mut self.dirty, id, client);
        }
    }

    /// A stop signal (SIGINT, SIGTERM): the first closes every client with 1001 and
    /// waits close-timeout at most; a second stops now.
    pub fn handle_stop_signal(&mut self, now: Instant) -> Stop {
        if self.lifecycle != Lifecycle::Serving {
            self.lifecycle = Lifecycle::Stopping { until: Some(now) };
            return Stop::Now;
        }
        self.lifecycle = Lifecycle::Stopping { until: self.config.limits.close_timeout.map(|t| now + t) };
        let ids: Vec<usize> = self.clients.iter().map(|(id, _)| id).collect();
        for id in ids {
            if let Some(client) = self.clients.get_mut(id) {
                client.conn.close(CloseCode::GOING_AWAY, "server shutting down", now, &self.config.limits);
            }
            self.after_activity(id);
        }
        Stop::Closing
    }

    /// When stopping: the time we give up waiting for clients.
    pub fn stop_deadline(&self) -> Option<Instant> {
        match self.lifecycle {
            Lifecycle::Stopping { until } => until,
            Lifecycle::Serving => None,
        }
    }

    /// Whether the runtime should stop: stopping, and every client gone or time up.
    pub fn poll_stop(&self, now: Instant) -> bool {
        match self.lifecycle {
            Lifecycle::Stopping { until } => self.clients.is_empty() || until.is_some_and(|t| t <= now),
            Lifecycle::Serving => false,
        }
    }

    pub fn client_count(&self) -> usize {
        self.clients.len()
    }

    pub fn client_ids(&self) -> impl Iterator<Item = usize> + '_ {
        self.clients.iter().map(|(id, _)| id)
    }

    /// When enough memory was freed by large queues to be worth giving back to the
    /// system (see `memory::give_back`).
    pub fn poll_trim(&self, now: Instant) -> Option<Instant> {
        (self.released >= TRIM_AFTER).then(|| self.last_trim.map_or(now, |t| t + TRIM_EVERY))
    }

    /// The runtime gave memory back at `now`.
    pub fn handle_trimmed(&mut self, now: Instant) {
        self.released = 0;
        self.last_trim = Some(now);
    }

    /// After anything happened to a client: settle it, and schedule a flush if it
    /// has something to write.
    fn after_activity(&mut self, id: usize) {
        self.settle(id);
        if let Some(client) = self.clients.get_mut(id) {
            if client.conn.has_output() || client.conn.poll_write_shutdown() {
                queue_flush(&mut self.dirty, id, client);
            }
        }
    }

    /// Logs and counts why a client is ending, and removes it once closed.
    fn settle(&mut self, id: usize) {
        let Some(client) = self.clients.get_mut(id) else { return };
        if let Some(fault) = client.conn.poll_fault() {
            log_fault(&client.io, fault);
            match fault {
                Fault::Handshake(err) => self.metrics.reject(Rejection::of(err)),
                Fault::HandshakeTimeout => self.metrics.reject(Rejection::HandshakeTimeout),
                Fault::PongTimeout => self.metrics.heartbeat_timeouts += 1,
                Fault::SlowConsumer => {
                    self.metrics.slow_consumers += 1;
                    // Its queue, about the limit, was just freed.
                    self.released += self.config.limits.max_backpressure;
                }
                Fault::Peer(_) | Fault::CloseTimeout => {}
            }
        }
        if client.conn.is_closed() {
            self.remove(id);
        }
    }

    /// Forgets a closed client; dropping its `T` closes its socket.
    fn remove(&mut self, id: usize) {
        let Some(client) = self.clients.try_remove(id) else { return };
        let memory = client.conn.queue_memory();
        if memory >= LARGE_QUEUE {
            self.released += memory;
        }
        if let Role::WebSocket { member } = client.role {
            if let Some(key) = member {
                self.room.leave(key);
            }
            self.open -= 1;
            let first = client.conn.first_close();
            self.metrics.close(first.map_or(CloseCode::ABNORMAL, |c| c.code), first.is_some_and(|c| c.by_peer));
        }
    }
}

/// Writes a frame (header and payload) straight to a client's socket; returns what
/// the socket did not take, for `Conn::finish_write_through`. (The payload may borrow
/// the `Conn`: the caller hands the rest over once it is copied out.)
fn write_through<T>(
    io: &mut T,
    parts: [&[u8]; 2],
    write_now: &mut impl FnMut(&mut T, [&[u8]; 2]) -> usize,
    metrics: &mut Metrics,
) -> Option<Chunk> {
    let written = write_now(io, parts);
    metrics.bytes_written += written as u64;
    metrics.messages_out += 1;
    Chunk::rest_of(parts, written)
}

/// Queues a client for this iteration's flush, once.
fn queue_flush<T>(dirty: &mut Vec<usize>, id: usize, client: &mut Client<T>) {
    if !client.flush_queued {
        client.flush_queued = true;
        dirty.push(id);
    }
}

fn log_fault(peer: &impl fmt::Display, fault: Fault) {
    match fault {
        Fault::Handshake(err) => info!("rejected {peer}: {err}"),
        Fault::HandshakeTimeout => info!("dropped {peer}: handshake timeout"),
        Fault::Peer(err) => info!("closed {peer}: {err}"),
        Fault::PongTimeout => info!("closing {peer}: no pong within ping-timeout (1011)"),
        Fault::CloseTimeout => debug!("dropped {peer}: close timeout"),
        Fault::SlowConsumer => warn!("closing {peer}: slow consumer (1008)"),
    }
}

#[cfg(test)]
mod tests;
