//! The application: what mioket does with its connections, without I/O.
//!
//! It admits or refuses (max connections, handshake slack, shutdown), puts each
//! WebSocket in its room (the path's) and greets it with the room's history, speaks
//! `mioket.v1` with the clients that asked for it (docs/protocol.md), dispatches each
//! message (echo, or a publish to a room's members), decides when an echo is written
//! straight to the socket, tells rooms' members who is online, and answers plain HTTP
//! (the pages, `/metrics`, `/healthz`, the API). The runtime feeds it bytes, time and
//! signals and carries out what it asks: flush these clients (`drain_dirty_into`),
//! wake this client at this time (`poll_timeout`), wake me then (`poll_housekeeping`),
//! stop now (`poll_stop`). It never sees a socket: each client carries the runtime's
//! own data as an opaque `T`; a flush writes through the runtime's `Transmit`
//! (`app/output.rs`, the one way out), and a write-through through a closure the
//! runtime gives. The runtime never touches a `Conn`.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

use log::info;
use slab::Slab;

use crate::auth::limits::{Counter, Limiter, PublishLimits};
use crate::auth::Auth;
use crate::config::{Config, Mode};
use crate::deflate::Compressor;
use crate::frame::{encode_header, server_header, Opcode, MAX_HEADER_LEN};
use crate::metrics::{Metrics, Rejection};
use crate::outqueue::{shared_message, Chunk};
use crate::protocol::{Conn, Event};
use crate::pubsub::History;
use crate::rooms::{RoomLimits, Rooms};
use crate::v1::{Envelopes, Payload};

use publish::{Gate, Publish, Source, Target};

// The application's rooms, one concern each (this file: `App`, the way in from the
// runtime, and the table of contents).

// The upgrade decision: accept (role, subprotocol, room) or refuse.
mod admit;
// Memory across clients: the unfinished-input budget, and giving memory back.
mod budget;
// One bus: a publish numbered here (delivered at once) or by Redis (delivered when back).
mod bus;
// A client's life: `Client`, settling and removing it, and the server's stop.
mod clients;
// One way to the members: encode once, fan out, compress once, queue flushes.
mod deliver;
// Echo mode's write-through.
mod echo;
// A binary upgrade: the application as plain data, its clients parked, made again.
mod freeze;
// Rooms' timed work: presence updates, empty rooms freed.
mod housekeeping;
// What enters a room, as one value (`Publish`), and why one may be refused.
mod message;
// The one way out: a client's queue through the runtime's `Transmit`.
mod output;
// The one way in: every publish a `Publish` through `admit`.
mod publish;
// The grants of the clients with a token, beside the clients.
mod grants;
// Tokens and permissions: the grant of an upgrade, refresh, expiry, presence with
// users, the moderation API (src/auth/ decides; this applies).
mod permit;
// The Redis bus's side (`--redis`): the mirror's effects applied.
mod redis;
// The application's refusals of a valid upgrade.
mod refusal;
// Plain HTTP: pages, `/metrics`, `/healthz`, the API.
mod routes;
// A client's rooms: memberships, joining with the greeting, leaving.
mod session;
// `GET /api/stats`: the operator console's document, built when asked.
mod stats;
// `mioket.v1` ops from a client.
mod v1ops;

pub use bus::redis_settings;
pub(crate) use clients::Client;
pub use freeze::{AppState, ClientState};
pub use output::{ClientView, ReadTurn, Transmit};
pub use refusal::Refusal;

use clients::{settle, Lifecycle};
// As publish.rs and redis.rs name them (`super::queue_flush`, ...).
use deliver::{queue_flush, TOO_BIG_FOR_ENVELOPE};
use echo::{write_through, WRITE_THROUGH_MIN};
use session::{Extra, Role, NOT_JOINED, NO_ROOM};

/// Connections still in their handshake allowed beyond max-connections.
const HANDSHAKE_SLACK: usize = 1024;

/// The listener a connection came in on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listener {
    /// The WebSocket port: upgrades, pages, the API, and /metrics and /healthz unless
    /// they have a port of their own.
    Main,
    /// `--metrics-listen`: only /metrics and /healthz.
    Operator,
}

/// The runtime's own data for one client (its socket), as the application may ask
/// of it: how the log names it, and the peer's address for an admission policy
/// (asked only when a policy wants it: holding it on every connection would cost 32
/// bytes of the idle budget, and the socket knows it anyway).
pub trait ClientIo: fmt::Display {
    /// The address the connection came from (not `X-Forwarded-For`); `None` where
    /// there is no socket.
    fn peer_addr(&self) -> Option<SocketAddr> {
        None
    }

    /// Whether a writable socket needs a flush even with the connection's queue
    /// empty: the stream holds bytes of its own (TLS), or its reading waits to resume.
    fn wants_flush(&self) -> bool {
        false
    }

    /// The socket, if this connection can move to another process (a binary
    /// upgrade, src/upgrade/): plain TCP can; TLS cannot (its keys stay here).
    fn socket_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }
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
    /// Broadcast mode: the rooms, their members and histories.
    rooms: Rooms,
    /// Echo mode: the history replayed to new clients (no rooms).
    echo_history: History<Rc<[u8]>>,
    /// The welcome as a plain frame.
    welcome: Option<Rc<[u8]>>,
    envelopes: Envelopes,
    /// v1 clients' rooms beyond their first, by client id.
    extras: HashMap<usize, Extra>,
    /// v1 clients that made rooms by `join`: when their window began, rooms made in it.
    new_rooms: HashMap<usize, (Instant, usize)>,
    /// permessage-deflate's one compressor: a message is compressed once, whoever gets it.
    compressor: Compressor,
    /// A v1 message's bytes, copied out of its connection to be parsed while the
    /// application writes to that same connection. Reused.
    scratch: Vec<u8>,
    /// When rooms may next tell their presence (set while some room owes one).
    presence_at: Option<Instant>,
    last_presence: Option<Instant>,
    /// The time of the latest event, for the few steps that are not given one.
    now: Instant,
    lifecycle: Lifecycle,
    /// Clients with output to flush, in the order they got it (a broadcast's sender first).
    dirty: Vec<usize>,
    /// Clients whose deadline this iteration may have moved sooner, outside their
    /// timeouts: by their input or end of stream, or while another client's event was
    /// handled (closed as slow consumers, by the API, at token expiry): the runtime
    /// puts their new deadline on its timer heap (`drain_retimed_into`).
    retimed: Vec<usize>,
    /// What every client's `Conn::unfinished_memory` adds up to (see `track_unfinished`).
    unfinished: usize,
    /// What the clients' outgoing queues hold, as the backpressure limit counts it
    /// (`Conn::queue_memory`), summed: /metrics' `mioket_output_queued_bytes`. Kept
    /// by `clients::count_queued`; a gauge, so not in the snapshot: the new process
    /// counts the queues it restored.
    queued: usize,
    /// Memory freed by large queues since the last trim, and when that was.
    released: usize,
    last_trim: Option<Instant>,
    pub metrics: Metrics,
    /// Where publishes are numbered: here, or by Redis (`--redis`, app/bus.rs).
    bus: bus::Bus,
    /// Tokens and permissions (src/auth/): keys, the anonymous grant, users' grants.
    auth: Auth,
    /// Open WebSockets per address and per user (`--max-connections-per-*`).
    per_ip: Counter<std::net::IpAddr>,
    per_user: Counter<Box<str>>,
    /// `--publish-rate` and friends, and the buckets of the connections that published.
    publish_limits: PublishLimits,
    limiters: HashMap<usize, Limiter>,
    /// The grants of the clients with a token (app/grants.rs).
    grants: grants::Grants,
    /// When grants expire, soonest first, one entry per grant (`App::expire_tokens`).
    expiries: std::collections::BinaryHeap<permit::Expiry>,
    /// When the application started (the uptime in /api/stats).
    started: Instant,
    /// Rooms' seqs at the previous /api/stats, while someone asks (app/stats.rs).
    baseline: Option<stats::Baseline>,
    /// The wall clock (seconds since 1970) at an `Instant`: tokens' `exp` in the
    /// application's own time (virtual in tests).
    clock: (Instant, std::time::Duration),
    /// A binary upgrade under way: every client, out of `clients` (so every event for
    /// one is stale) until the new process confirms or `thaw` takes them back, each
    /// with whether it moves (app/freeze.rs).
    parked: Option<Vec<(usize, Client<T>, bool)>>,
}

/// `T` is the runtime's per-client data; its `Display` names the client in the log
/// (its peer address).
impl<T: ClientIo> App<T> {
    /// # Panics
    /// When a `--jwt-*` key file cannot be read or is no key: the runtime loads them
    /// first (`Auth::from_config`, a start error) and calls `with_auth`.
    pub fn new(config: Config) -> App<T> {
        let auth = Auth::from_config(&config).unwrap_or_else(|e| panic!("{e}"));
        App::with_auth(config, auth)
    }

    /// An application with its keys loaded.
    pub(crate) fn with_auth(config: Config, auth: Auth) -> App<T> {
        let bus = bus::Bus::new(&config);
        let welcome = config.welcome.as_ref().map(|text| shared_message(Opcode::Text, text.as_bytes()));
        // A history replay must fit a new client's queue beside live traffic.
        let history_room_bytes = (config.limits.max_backpressure / 2).min(config.history_memory);
        let mut rooms = Rooms::new(RoomLimits {
            max_rooms: config.max_rooms,
            ttl: config.room_ttl,
            history_messages: config.history,
            history_room_bytes,
            history_memory: config.history_memory,
        });
        // With Redis, each node tells its part of every room's presence.
        if bus.mirror().is_some() {
            rooms.track_parts();
        }
        App {
            echo_history: History::new(config.history, history_room_bytes),
            clients: Slab::new(),
            open: 0,
            rooms,
            welcome,
            envelopes: Envelopes::default(),
            extras: HashMap::new(),
            new_rooms: HashMap::new(),
            compressor: Compressor::default(),
            scratch: Vec::new(),
            presence_at: None,
            last_presence: None,
            now: Instant::now(),
            lifecycle: Lifecycle::Serving,
            dirty: Vec::new(),
            retimed: Vec::new(),
            unfinished: 0,
            queued: 0,
            released: 0,
            last_trim: None,
            metrics: Metrics::default(),
            bus,
            auth,
            per_ip: Counter::new(config.max_connections_per_ip),
            per_user: Counter::new(config.max_connections_per_user),
            publish_limits: PublishLimits::from_config(&config),
            limiters: HashMap::new(),
            grants: grants::Grants::default(),
            expiries: std::collections::BinaryHeap::new(),
            clock: (Instant::now(), permit::unix_time()),
            started: Instant::now(),
            baseline: None,
            parked: None,
            config,
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// A new TCP connection. Beyond max-connections plus the handshake slack it is
    /// refused at once: the runtime writes the answer (best effort) and drops it.
    pub fn connect(&mut self, io: T, listener: Listener, now: Instant) -> Result<usize, (T, Vec<u8>)> {
        self.metrics.accepted += 1;
        // While frozen for a handover (the runtime does not accept then) a new client
        // could take a parked one's id.
        if self.clients.len() >= self.config.max_connections + HANDSHAKE_SLACK || self.parked.is_some() {
            self.metrics.reject(Rejection::OverMaxConnections);
            info!("rejected {io}: too many connections (503)");
            return Err((io, Refusal::ServerFull.response()));
        }
        let conn = Conn::new(now, &self.config.limits);
        let client = Client {
            conn,
            io,
            first: NOT_JOINED,
            role: Role::Pending,
            first_is_home: false,
            listener,
            flush_queued: false,
        };
        Ok(self.clients.insert(client))
    }

    /// Whether to read on from `id`: an echo client that does not read its answers,
    /// or a ping flood, stops being read while its queue holds over half the limit.
    #[inline]
    pub fn wants_input(&self, id: usize) -> bool {
        self.clients
            .get(id)
            .is_some_and(|c| !c.conn.is_closed() && c.conn.queue_memory() <= self.config.limits.max_backpressure / 2)
            // --redis: a client whose join waits for Redis is not read meanwhile.
            && !self.bus.is_held(id)
    }

    /// A new turn of the loop for `id` (`Conn::start_turn`): the input it held back
    /// last turn is copied into `buf`, for `handle_input` first. Returns how many bytes.
    #[inline]
    pub fn start_turn(&mut self, id: usize, buf: &mut [u8]) -> usize {
        let Some(client) = self.clients.get_mut(id) else { return 0 };
        if !client.conn.holds_input() {
            // Only the inflate budget to renew: nothing held, nothing counted.
            return client.conn.start_turn(buf);
        }
        let held = client.conn.unfinished_memory();
        let n = client.conn.start_turn(buf);
        // Held input counts in the unfinished budget until it is handed back.
        self.unfinished -= held.saturating_sub(client.conn.unfinished_memory()).min(self.unfinished);
        n
    }

    /// The top of each read in `id`'s turn of the loop: what `wants_input`,
    /// `start_turn` and `client_io` tell, in one lookup (it runs before every read).
    /// `first`: the turn's first read, when the input held back last turn is copied
    /// into `buf`.
    #[inline]
    pub fn read_turn<'a>(&'a mut self, id: usize, first: bool, buf: &mut [u8]) -> ReadTurn<'a, T> {
        let Some(client) = self.clients.get_mut(id) else { return ReadTurn::Gone };
        // Backpressure on reading: a client whose queue is long stops being read
        // until it drains (and a closed one is not read at all). --redis: a client
        // whose join waits for Redis is not read meanwhile.
        let closed = client.conn.is_closed();
        if closed || client.conn.queue_memory() > self.config.limits.max_backpressure / 2 || self.bus.is_held(id) {
            return ReadTurn::Pause { io: &mut client.io, closed };
        }
        if first {
            if !client.conn.holds_input() {
                // Only the inflate budget to renew: nothing held, nothing counted.
                client.conn.start_turn(buf);
            } else {
                let held = client.conn.unfinished_memory();
                let n = client.conn.start_turn(buf);
                // Held input counts in the unfinished budget until it is handed back.
                self.unfinished -= held.saturating_sub(client.conn.unfinished_memory()).min(self.unfinished);
                if n > 0 {
                    return ReadTurn::Held(n);
                }
            }
        }
        if client.conn.holds_input() {
            return ReadTurn::Later;
        }
        ReadTurn::Socket(&mut client.io)
    }

    /// Bytes read from `id`: hands them to its `Conn` and acts on what it yields.
    /// `write_now` is the runtime's non-blocking write for write-through; it returns
    /// how many bytes the socket took. Returns whether `id` now holds input back (its
    /// inflate budget spent: its turn is over), told here to spare the runtime a lookup.
    pub fn handle_input(
        &mut self,
        id: usize,
        input: &mut [u8],
        now: Instant,
        mut write_now: impl FnMut(&mut T, [&[u8]; 2]) -> usize,
    ) -> bool {
        let total = input.len();
        self.now = now;
        self.metrics.bytes_read += total as u64;
        let (held, was_open) =
            self.clients.get(id).map_or((0, false), |c| (c.conn.unfinished_memory(), c.conn.is_open()));
        let mut pos = 0;
        while pos < total {
            let App { clients, config, echo_history, rooms, envelopes, compressor, scratch, metrics, .. } = self;
            let limits = &config.limits;
            let Some(client) = clients.get_mut(id) else { break };
            // Asked before the input: the message it yields borrows the Conn.
            let can_write_through = client.conn.can_write_through();
            let takes_compressed = client.conn.takes_compressed();
            let (used, event) = client.conn.handle_input(&mut input[pos..], now, limits);
            pos += used;
            let Some(event) = event else {
                if used == 0 {
                    break;
                }
                continue;
            };
            let (opcode, payload) = match event {
                Event::UpgradeRequest(request) => {
                    self.admit(id, &request, now);
                    continue;
                }
                Event::HttpRequest(request) => {
                    self.answer_http(id, request, now);
                    continue;
                }
                Event::Message { opcode, payload } => (opcode, payload),
            };
            metrics.messages_in += 1;
            metrics.message_bytes_in += payload.len() as u64;
            let role = client.role;
            if role == Role::Pending {
                continue;
            }
            // --redis: a client whose join waits for Redis has its input held until its welcome.
            if self.bus.hold(id, opcode, payload) {
                continue;
            }
            // permessage-deflate: an echo that shrinks goes back compressed.
            let compressed =
                (config.mode == Mode::Echo && takes_compressed && payload.len() >= config.deflate_min_size)
                    .then(|| compressor.frame(opcode, payload))
                    .flatten();
            if let Some(frame) = compressed {
                metrics.compressed_frames += 1;
                if config.history > 0 {
                    echo_history.push(&shared_message(opcode, payload));
                }
                if client.conn.send(Chunk::Owned(frame.to_vec()), now, limits).is_ok() {
                    metrics.messages_out += 1;
                }
                continue;
            }
            match config.mode {
                // The last message of this read, or a large one, with nothing waiting
                // ahead of it (pongs included): written now, the one writev a flush
                // would make. Messages before it in the same read queue up and share a
                // writev.
                Mode::Echo
                    if config.history == 0
                        && can_write_through
                        && (pos == total || payload.len() >= WRITE_THROUGH_MIN) =>
                {
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
                        echo_history.push(&frame);
                        Chunk::Shared(frame)
                    };
                    if client.conn.send(echo, now, limits).is_ok() {
                        metrics.messages_out += 1;
                    }
                }
                Mode::Broadcast if role == Role::V1 => {
                    // Copied out: the op is parsed and acted on while this client's
                    // Conn (which the payload borrows) gets answers.
                    scratch.clear();
                    scratch.extend_from_slice(payload);
                    let message = std::mem::take(scratch);
                    self.handle_v1(id, opcode, &message, now);
                    self.scratch = message;
                }
                Mode::Broadcast => {
                    // A plain client is always in its one room.
                    let room = client.first.room;
                    if room == NO_ROOM {
                        continue;
                    }
                    // The one way in, in two halves: the payload borrows this
                    // client's Conn until `admit` is done with it.
                    let source = Source::Plain(id);
                    let p =
                        Publish { source, room: Target::Id(room), payload: Payload::of(opcode, payload), key: None };
                    let (auth, grants, limits) = (&self.auth, &self.grants, &self.publish_limits);
                    let mut gate = Gate { auth, grants, limits, limiters: &mut self.limiters };
                    let admitted = publish::admit(config, rooms, envelopes, &mut self.bus, &mut gate, &p, now);
                    let _ = self.conclude(source, admitted, now);
                }
            }
        }
        let App { clients, metrics, released, config, dirty, retimed, .. } = self;
        let Some(client) = clients.get_mut(id) else { return false };
        // A large message buffer (an inflated message) goes back now, not when idle.
        *released += client.conn.end_input();
        // An open connection's input moves its deadline only later (a pong), which its
        // timer tolerates: it fires, finds nothing due and is set again. Anything else
        // (an upgrade, a close) may move it sooner.
        if !(was_open && client.conn.is_open()) {
            retimed.push(id);
        }
        let after = client.conn.unfinished_memory();
        if after != held {
            // Over the budget, held input may be shed.
            self.unfinished_changed(id, held, after, now);
            self.after_activity(id);
            return self.clients.get(id).is_some_and(|c| c.conn.holds_input());
        }
        let holds = client.conn.holds_input();
        // As `after_activity`, without looking the client up again: this runs after every read.
        if settle(metrics, released, config, dirty, id, client) {
            self.remove(id);
        }
        holds
    }

    /// The peer ended its side of the stream (or the socket failed).
    pub fn handle_eof(&mut self, id: usize) {
        let held = self.clients.get(id).map_or(0, |c| c.conn.unfinished_memory());
        if let Some(client) = self.clients.get_mut(id) {
            client.conn.handle_eof();
            self.retimed.push(id);
        }
        self.track_unfinished(id, held, self.now);
        self.after_activity(id);
    }

    /// `id`'s deadline (from `poll_timeout`) has come.
    pub fn handle_timeout(&mut self, id: usize, now: Instant) {
        self.now = now;
        let held = self.clients.get(id).map_or(0, |c| c.conn.unfinished_memory());
        if let Some(client) = self.clients.get_mut(id) {
            client.conn.handle_timeout(now, &self.config.limits);
        }
        self.track_unfinished(id, held, now);
        self.after_activity(id);
    }

    /// When `id` next wants `handle_timeout`.
    #[inline]
    pub fn poll_timeout(&self, id: usize) -> Option<Instant> {
        let conn = self.clients.get(id)?.conn.poll_timeout();
        // Tokens' expiries are the housekeeping's (`App::expiries`): nothing here.
        conn
    }

    pub fn client_count(&self) -> usize {
        self.clients.len()
    }

    pub fn client_ids(&self) -> impl Iterator<Item = usize> + '_ {
        self.clients.iter().map(|(id, _)| id)
    }
}

#[cfg(test)]
mod tests;
