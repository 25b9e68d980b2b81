//! The event loop: the only code that does I/O. It moves bytes between sockets and
//! the application, moves time into it, and carries out what it asks; every decision
//! about what the bytes mean is the application's (`app`).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt;
use std::io::{self, IoSlice};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR2};
use signal_hook_mio::v1_0::Signals;

use crate::app::{App, ClientIo, Listener, ReadTurn, Stop, Transmit};
use crate::backplane::link::Links;
use crate::config::{Config, Mode};
use crate::memory;
use crate::tls;
use crate::transport::Transport;
use crate::upgrade::notify::notify;

// A binary upgrade: the loop's part.
mod upgrade;

const LISTENER: Token = Token(usize::MAX - 1);
const SIGNALS: Token = Token(usize::MAX - 2);
const METRICS_LISTENER: Token = Token(usize::MAX - 3);
/// The Redis link's waker (--redis): events from Redis are waiting.
const BACKPLANE: Token = Token(usize::MAX - 4);
/// A binary upgrade's channel to the new process (runtime/upgrade.rs).
const HANDOVER: Token = Token(usize::MAX - 5);
/// One read's worth: shared by all clients, never per connection. Large enough that
/// a 64 KiB message with its header arrives whole and is unmasked in place.
const READ_CHUNK: usize = 256 * 1024;
/// Bytes read from one client per loop iteration, so a firehose cannot starve the rest.
/// What its compressed messages inflate to counts too, in the Conn
/// (`protocol::INFLATE_BUDGET`): once that is spent, it is read again next iteration.
const READ_BUDGET: usize = READ_CHUNK;
/// Clients flushed between two looks for new input during a long flush.
const FLUSH_POLL_EVERY: usize = 32;
/// How long accepting pauses when we run out of file descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// At most one log line per this long while out of file descriptors.
const EXHAUSTION_LOG_EVERY: Duration = Duration::from_secs(10);

/// What the loop keeps per client beside the application's state: the transport, which
/// also holds the loop's deadline for the client (in `Server::millis`, 0: none; 8 bytes
/// where an `Option<Instant>` takes 16) and whether reading is paused because its
/// outgoing queue is long (resumed after a flush): 16 bytes in all.
pub(crate) struct Io {
    transport: Transport,
}

impl ClientIo for Io {
    fn peer_addr(&self) -> Option<SocketAddr> {
        self.transport.peer_addr().ok()
    }

    /// TLS may hold records the socket did not take; paused reading resumes in a flush.
    fn wants_flush(&self) -> bool {
        matches!(self.transport, Transport::Tls(_)) || self.transport.read_paused()
    }

    /// A binary upgrade moves plain sockets; TLS keeps its keys here.
    fn socket_fd(&self) -> Option<std::os::fd::RawFd> {
        self.transport.plain_fd()
    }
}

/// The log names a client by its peer address.
impl fmt::Display for Io {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.transport.peer_addr() {
            Ok(addr) => addr.fmt(f),
            Err(_) => f.write_str("?"),
        }
    }
}

pub struct Server {
    poll: Poll,
    listener: Option<TcpListener>,
    metrics_listener: Option<TcpListener>,
    signals: Signals,
    local_addr: SocketAddr,
    app: App<Io>,
    timers: BinaryHeap<Reverse<(Instant, usize)>>,
    /// Clients that may have unread input (read budget spent, or reading resumed).
    backlog: Vec<usize>,
    /// The flush list of this iteration (kept for its capacity).
    flushing: Vec<usize>,
    /// Clients whose deadline moved during others' events (kept for its capacity).
    retimed: Vec<usize>,
    scratch: Vec<u8>,
    accept_paused_until: Option<Instant>,
    last_exhaustion_log: Option<Instant>,
    /// When the server started: timer deadlines are kept as milliseconds since.
    started: Instant,
    /// With --tls-cert/--tls-key: what new connections on the main port get (SIGHUP
    /// replaces it; connections keep the one they started with).
    tls: Option<Arc<rustls::ServerConfig>>,
    /// --redis: the threads that talk to Redis (src/backplane/link.rs).
    backplane: Option<Links>,
    /// SIGUSR2: the new process started, its hello awaited (runtime/upgrade.rs).
    upgrade: Option<upgrade::Upgrade>,
    /// The new process's hello is in: no client is read until the handover ends
    /// (a plain flag: `read_client` checks it on every read).
    reads_held: bool,
}

impl Server {
    /// Binds the listening socket; `run` serves on it. With TLS, loads the certificate
    /// and key first.
    pub fn bind(config: Config) -> Result<Server, StartError> {
        let tls = load_tls(&config).map_err(StartError::Tls)?;
        let listener = listen(resolve((config.host.as_str(), config.port))?, config.reuse_port, config.send_buffer)?;
        let metrics_listener = match &config.metrics_listen {
            Some(addr) => Some(listen(resolve(addr.as_str())?, false, 0)?),
            None => None,
        };
        let auth = crate::auth::Auth::from_config(&config).map_err(StartError::Auth)?;
        let (poll, backplane) = Server::reactor(&config)?;
        let app = App::with_auth(config, auth);
        let server = Server::assemble(app, (poll, backplane), tls, listener, metrics_listener)?;
        notify("READY=1");
        Ok(server)
    }

    /// The poll, and with --redis the link's threads, connecting (before the
    /// application: the new process of an upgrade connects to Redis while the old
    /// one still serves, and registers the sockets it takes as they arrive).
    fn reactor(config: &Config) -> Result<(Poll, Option<Links>), StartError> {
        let poll = Poll::new()?;
        let backplane = match crate::app::redis_settings(config) {
            Some(settings) => {
                let waker = Arc::new(Waker::new(poll.registry(), BACKPLANE)?);
                Some(Links::start(settings, waker).map_err(|e| StartError::Redis(e.to_string()))?)
            }
            None => None,
        };
        Ok((poll, backplane))
    }

    /// The loop around an application and its listeners (bound, or taken over), on
    /// `poll` (new, or holding the sockets taken over).
    fn assemble(
        app: App<Io>,
        (poll, backplane): (Poll, Option<Links>),
        tls: Option<Arc<rustls::ServerConfig>>,
        mut listener: TcpListener,
        mut metrics_listener: Option<TcpListener>,
    ) -> Result<Server, StartError> {
        let local_addr = listener.local_addr()?;
        poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
        if let Some(l) = &mut metrics_listener {
            poll.registry().register(l, METRICS_LISTENER, Interest::READABLE)?;
        }
        // SIGHUP reloads the certificate; without TLS it is ignored (its default would end
        // us, and a renewal hook may send it to every mioket). SIGUSR2 upgrades the binary.
        let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP, SIGUSR2])?;
        poll.registry().register(&mut signals, SIGNALS, Interest::READABLE)?;
        Ok(Server {
            poll,
            listener: Some(listener),
            metrics_listener,
            signals,
            local_addr,
            app,
            timers: BinaryHeap::new(),
            backlog: Vec::new(),
            flushing: Vec::new(),
            retimed: Vec::new(),
            scratch: vec![0; READ_CHUNK],
            accept_paused_until: None,
            last_exhaustion_log: None,
            started: Instant::now(),
            tls,
            backplane,
            upgrade: None,
            reads_held: false,
        })
    }

    /// Whether the main port speaks TLS (wss://, https://).
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Serves until SIGINT or SIGTERM, then closes every client with 1001 and
    /// returns once they are gone or close-timeout has passed.
    pub fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = self.poll_timeout(Instant::now());
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let now = Instant::now();
            self.dispatch(&events, now);
            for id in std::mem::take(&mut self.backlog) {
                self.read_client(id, false, now);
            }
            self.run_timers(now);
            if self.app.poll_housekeeping().is_some_and(|t| t <= now) {
                self.app.handle_housekeeping(now);
            }
            if self.accept_paused_until.is_some_and(|t| t <= now) {
                self.accept_paused_until = None;
                self.accept_all(now);
            }
            self.pump_backplane(now);
            self.flush_dirty(&mut events);
            // Publishes read during the flush's looks for input go now, not after the
            // next poll.
            self.pump_backplane(now);
            if let Some(upgrade) = &self.upgrade {
                // A binary upgrade: its hello awaited in time, or in and all flushed.
                if upgrade.ready() {
                    self.hand_over_when_answered(now);
                } else if upgrade.deadline() <= now {
                    self.continue_upgrade(now);
                }
            }
            self.reschedule_retimed();
            if self.app.poll_trim(now).is_some_and(|t| t <= now) {
                memory::give_back();
                self.app.handle_trimmed(now);
            }
            self.app.metrics.iteration(now.elapsed());
            if self.app.poll_stop(now) {
                info!("stopped ({} connections left)", self.app.client_count());
                return Ok(());
            }
        }
    }

    /// Acts on what poll reported: accepts, reads and signals now; writable clients
    /// join this iteration's flush.
    fn dispatch(&mut self, events: &Events, now: Instant) {
        for event in events.iter() {
            match event.token() {
                LISTENER => self.accept_all(now),
                METRICS_LISTENER => self.accept_metrics(now),
                SIGNALS => self.on_signals(now),
                // Also drained once per iteration; here too, since a look for input
                // during a long flush may take the waker's one event.
                BACKPLANE => self.pump_backplane(now),
                HANDOVER => self.continue_upgrade(now),
                Token(id) => {
                    let mut settled = false;
                    if event.is_readable() || event.is_read_closed() || event.is_error() {
                        settled = self.read_client(id, event.is_read_closed(), now);
                    }
                    // A client settled after its read has its flush queued already if
                    // it wants one.
                    if event.is_writable() && !settled {
                        self.app.handle_writable(id);
                    }
                }
            }
        }
    }

    /// --redis: hands what Redis said to the application, and what it asks of Redis
    /// (everything this iteration queued: one batch, one write) to the link.
    fn pump_backplane(&mut self, now: Instant) {
        let Some(link) = &mut self.backplane else { return };
        for event in link.events() {
            self.app.handle_backplane(event, now);
        }
        if let Some(outbox) = self.app.backplane_outbox().filter(|o| !o.is_empty()) {
            link.send(std::mem::take(outbox));
        }
    }

    fn poll_timeout(&self, now: Instant) -> Option<Duration> {
        if !self.backlog.is_empty() {
            return Some(Duration::ZERO);
        }
        let next_timer = self.timers.peek().map(|Reverse((t, _))| *t);
        [
            next_timer,
            self.accept_paused_until,
            self.app.stop_deadline(),
            self.app.poll_trim(now),
            self.app.poll_housekeeping(),
            self.upgrade.as_ref().map(|u| u.deadline()),
        ]
        .into_iter()
        .flatten()
        .min()
        .map(|t| t.saturating_duration_since(now))
    }

    fn accept_all(&mut self, now: Instant) {
        while self.accept_paused_until.is_none() {
            let Some(listener) = &self.listener else { return };
            match listener.accept() {
                Ok((socket, _)) => match &self.tls {
                    None => self.add_client(Transport::plain(socket), Listener::Main, now),
                    Some(config) => match Transport::tls(socket, Arc::clone(config)) {
                        Ok(transport) => self.add_client(transport, Listener::Main, now),
                        Err(e) => warn!("cannot start TLS: {e}"),
                    },
                },
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_resource_exhaustion(&e) => {
                    // EMFILE and friends: the pending connection stays in the backlog and
                    // would wake us forever; stop accepting for a moment, keep serving.
                    if self.last_exhaustion_log.is_none_or(|t| now.duration_since(t) >= EXHAUSTION_LOG_EVERY) {
                        warn!("accepting paused ({e}); raise `ulimit -n` for more connections");
                        self.last_exhaustion_log = Some(now);
                    }
                    self.accept_paused_until = Some(now + ACCEPT_BACKOFF);
                }
                // ECONNABORTED and the like concern only that one connection.
                Err(e) => debug!("accept failed: {e}"),
            }
        }
    }

    /// Accepts on --metrics-listen: few connections, no limits of their own.
    fn accept_metrics(&mut self, now: Instant) {
        loop {
            let Some(listener) = &self.metrics_listener else { return };
            match listener.accept() {
                Ok((socket, _)) => self.add_client(Transport::plain(socket), Listener::Operator, now),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    if e.kind() != io::ErrorKind::WouldBlock {
                        debug!("metrics accept failed: {e}");
                    }
                    return;
                }
            }
        }
    }

    fn add_client(&mut self, transport: Transport, listener: Listener, now: Instant) {
        let io = Io { transport };
        let id = match self.app.connect(io, listener, now) {
            Ok(id) => id,
            Err((mut io, answer)) => {
                // Best effort: a fresh socket's buffer takes this small answer whole.
                let _ = io.transport.write_now([&answer, &[]]);
                return;
            }
        };
        let Some(client) = self.app.client_io(id) else { return };
        // Both interests once, edge-triggered: no re-registration per write.
        if let Err(e) = client.io.transport.register(self.poll.registry(), Token(id)) {
            warn!("could not register {}: {e}", client.io);
            self.app.handle_eof(id);
            return;
        }
        let _ = client.io.transport.set_nodelay();
        self.reschedule(id);
        // The request often arrives with the connection.
        self.read_client(id, false, now);
    }

    /// Reads until WouldBlock, end of stream, or the budget. `peer_closed`: the event
    /// said the peer's FIN is in; then a short read does not mean "drained", since the
    /// end of stream behind the data brings no new edge. Returns whether the client
    /// was settled after its last read (`App::handle_input`, `App::handle_eof`): then
    /// it needs no flush for the event's writable half (or is gone).
    fn read_client(&mut self, id: usize, peer_closed: bool, now: Instant) -> bool {
        // A handover under way: what clients send now is read by the new process (or
        // by this one, which reads every client once if the handover fails).
        if self.reads_held {
            return false;
        }
        let mut budget = READ_BUDGET;
        let mut first = true;
        let mut settled = false;
        loop {
            let io = match self.app.read_turn(id, std::mem::replace(&mut first, false), &mut self.scratch) {
                ReadTurn::Socket(io) => io,
                ReadTurn::Held(held) => {
                    // Input held back last turn (its inflate budget spent) goes first.
                    self.app
                        .handle_input(id, &mut self.scratch[..held], now, |io, parts| io.transport.write_now(parts));
                    settled = true;
                    budget = budget.saturating_sub(held);
                    continue;
                }
                ReadTurn::Pause { io, closed } => {
                    io.transport.set_read_paused(!closed);
                    // Its flush resumes reading: a writable event must still flush it.
                    settled = false;
                    break;
                }
                ReadTurn::Later => {
                    // Its turn is over; what it sent meanwhile waits in the socket, and
                    // no new edge may come for it: read on next iteration.
                    self.backlog.push(id);
                    break;
                }
                ReadTurn::Gone => return true,
            };
            if budget == 0 {
                self.backlog.push(id);
                break;
            }
            let result = io.transport.read(&mut self.scratch);
            // TLS may stop short of what the socket holds (or hold plaintext back).
            let read_again = io.transport.read_again();
            match result {
                Ok(0) => {
                    self.app.handle_eof(id);
                    settled = true;
                    break;
                }
                Ok(n) => {
                    settled = true;
                    let holds = self
                        .app
                        .handle_input(id, &mut self.scratch[..n], now, |io, parts| io.transport.write_now(parts));
                    budget = budget.saturating_sub(n);
                    // A short read drained the socket: the next arrival is a new edge.
                    // (Input held back is not drained: the check above sees it.)
                    let drained = n < self.scratch.len() && !peer_closed && !read_again;
                    if drained && !holds {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    debug!("read error on client {id}: {e}");
                    self.app.handle_eof(id);
                    settled = true;
                    break;
                }
            }
        }
        // A deadline the input moved sooner is rescheduled with the iteration's
        // others (`reschedule_retimed`).
        settled
    }

    /// Flushes in the order clients became dirty (a broadcast's sender first). In a
    /// room, a long flush (a fan-out to thousands) looks for new input now and then:
    /// messages that arrived meanwhile join the writes still to come, so under load a
    /// recipient gets several frames per writev instead of a syscall each. (An echo
    /// joins no one else's writes, so there a look would only cost a syscall.)
    fn flush_dirty(&mut self, events: &mut Events) {
        let looks = self.app.config().mode == Mode::Broadcast;
        let mut dirty = std::mem::take(&mut self.flushing);
        dirty.clear();
        self.app.drain_dirty_into(&mut dirty);
        // Looks stop once the clients dirty at the start are flushed, so a steady
        // stream of input cannot keep a flush going (timers and backlog wait for it).
        let first_round = if looks { dirty.len() } else { 0 };
        let mut i = 0;
        while let Some(&id) = dirty.get(i) {
            self.flush(id);
            i += 1;
            if i % FLUSH_POLL_EVERY == 0 && i < first_round && self.poll.poll(events, Some(Duration::ZERO)).is_ok() {
                self.dispatch(events, Instant::now());
            }
            // Clients that input read meanwhile made dirty join this pass.
            if self.app.has_dirty() {
                self.app.drain_dirty_into(&mut dirty);
            }
        }
        self.flushing = dirty;
    }

    /// Writes as much of the client's queue as the socket takes (`App::flush`); the
    /// rest waits for the next writable event. Reading paused for its long queue
    /// resumes once the queue is short again.
    fn flush(&mut self, id: usize) {
        let mut sockets = Sockets { was_paused: false };
        self.app.flush(id, &mut sockets);
        if sockets.was_paused && self.app.wants_input(id) {
            if let Some(client) = self.app.client_io(id) {
                client.io.transport.set_read_paused(false);
            }
            self.backlog.push(id);
        }
    }

    /// A deadline as the 1-based milliseconds since start that `Transport::timer_at` keeps.
    fn millis(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.started).as_millis() as u64 + 1
    }

    /// Keeps one heap entry per client deadline. Entries whose time no longer
    /// matches the client's `timer_at` are stale and skipped when popped.
    fn reschedule(&mut self, id: usize) {
        let Some(deadline) = self.app.poll_timeout(id) else { return };
        let at = self.millis(deadline);
        let Some(client) = self.app.client_io(id) else { return };
        let timer_at = client.io.transport.timer_at();
        if timer_at == 0 || at < timer_at {
            client.io.transport.set_timer_at(at);
            self.timers.push(Reverse((deadline, id)));
        }
    }

    /// Clients whose deadline moved during others' events (a slow consumer closed by a
    /// fan-out, the API's disconnect, a token's expiry) get it on the heap.
    fn reschedule_retimed(&mut self) {
        let mut retimed = std::mem::take(&mut self.retimed);
        self.app.drain_retimed_into(&mut retimed);
        for &id in &retimed {
            self.reschedule(id);
        }
        retimed.clear();
        self.retimed = retimed;
    }

    fn run_timers(&mut self, now: Instant) {
        while let Some(&Reverse((at, id))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            let millis = self.millis(at);
            let Some(client) = self.app.client_io(id) else { continue };
            if client.io.transport.timer_at() != millis {
                continue;
            }
            client.io.transport.set_timer_at(0);
            self.app.handle_timeout(id, now);
            self.reschedule(id);
        }
    }

    fn on_signals(&mut self, now: Instant) {
        let mut signals: Vec<i32> = self.signals.pending().collect();
        if signals.contains(&SIGHUP) {
            match self.tls {
                Some(_) => self.reload_tls(),
                None => info!("SIGHUP: no TLS certificate to reload, ignored"),
            }
            signals.retain(|&s| s != SIGHUP);
        }
        if signals.contains(&SIGUSR2) {
            self.start_upgrade(now);
            signals.retain(|&s| s != SIGUSR2);
        }
        let Some(&signal) = signals.first() else { return };
        let clients = self.app.client_count();
        let stop = self.app.handle_stop_signal(now);
        match stop {
            Stop::Closing => info!("signal {signal}: closing {clients} connections (1001)"),
            Stop::Now => info!("second signal: stopping now"),
        }
        if stop == Stop::Closing {
            if let Some(mut listener) = self.listener.take() {
                let _ = self.poll.registry().deregister(&mut listener);
            }
            let ids: Vec<usize> = self.app.client_ids().collect();
            for id in ids {
                self.reschedule(id);
            }
        }
    }
}

/// A flush's way to the clients' sockets: the transport's own bytes first (TLS), then
/// writevs; notes whether reading was paused, to resume it once the queue is short.
struct Sockets {
    was_paused: bool,
}

impl Transmit<Io> for Sockets {
    #[inline]
    fn start(&mut self, io: &mut Io) {
        // TLS records the socket did not take go first (a no-op for plain TCP).
        io.transport.flush_pending();
        self.was_paused = io.transport.read_paused();
    }

    #[inline]
    fn write(&mut self, io: &mut Io, slices: &[IoSlice<'_>]) -> io::Result<usize> {
        io.transport.write_vectored(slices)
    }

    #[inline]
    fn shutdown(&mut self, io: &mut Io) -> bool {
        io.transport.shutdown_write()
    }
}

impl Server {
    /// SIGHUP: loads the certificate and key again (a renewal). New connections get
    /// the new pair, open ones keep theirs; a failure keeps the old pair.
    fn reload_tls(&mut self) {
        match load_tls(self.app.config()) {
            Ok(Some(config)) => {
                self.tls = Some(config);
                info!("SIGHUP: TLS certificate and key reloaded");
            }
            Ok(None) => {}
            Err(e) => warn!("SIGHUP: TLS reload failed, keeping the old certificate: {e}"),
        }
    }
}

/// Why the server could not start.
#[derive(Debug)]
pub enum StartError {
    /// The --tls-cert/--tls-key files (which and why, on one line): a usage error.
    Tls(String),
    /// The --jwt-secret-file/--jwt-key files or MIOKET_JWT_SECRET: a usage error.
    Auth(String),
    /// A Redis that answered and refused (a wrong password, a TLS failure), or its
    /// threads: the address, never the password.
    Redis(String),
    /// Listening or polling.
    Io(io::Error),
    /// Taking over from an old process (a binary upgrade) failed; it serves on.
    Upgrade(String),
}

impl From<io::Error> for StartError {
    fn from(e: io::Error) -> StartError {
        StartError::Io(e)
    }
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Tls(why) => write!(f, "bad TLS certificate or key: {why}"),
            StartError::Auth(why) => write!(f, "bad JWT key: {why}"),
            StartError::Redis(why) => f.write_str(why),
            StartError::Io(e) => write!(f, "cannot listen: {e}"),
            StartError::Upgrade(why) => write!(f, "cannot take over from the old process: {why}"),
        }
    }
}

impl std::error::Error for StartError {}

fn load_tls(config: &Config) -> Result<Option<Arc<rustls::ServerConfig>>, String> {
    match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => tls::load(cert, key).map(Some),
        (None, None) => Ok(None),
        _ => Err("--tls-cert and --tls-key go together".into()),
    }
}

/// Connections the kernel holds for us while the loop is busy. mio's own bind uses
/// 128, which drops SYNs in a burst; the kernel caps this at net.core.somaxconn.
const LISTEN_BACKLOG: i32 = 4096;

/// `send_buffer`: SO_SNDBUF, which accepted connections inherit from the listener (one
/// setsockopt in all, none per accept); 0 leaves the kernel's autotuning.
fn listen(addr: SocketAddr, reuse_port: bool, send_buffer: usize) -> io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    // --reuse-port: the kernel spreads new connections over every process on the port.
    socket.set_reuse_port(reuse_port)?;
    // --send-buffer: a client that does not read pins at most this (doubled) in the
    // kernel, a history replay included; the rest waits in its queue, which is bounded
    // and shares the replay's chunks.
    if send_buffer > 0 {
        socket.set_send_buffer_size(send_buffer)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(TcpListener::from_std(socket.into()))
}

fn resolve(addr: impl ToSocketAddrs) -> io::Result<SocketAddr> {
    addr.to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "address resolves to nothing"))
}

fn is_resource_exhaustion(e: &io::Error) -> bool {
    // EMFILE, ENFILE, ENOBUFS, ENOMEM
    matches!(e.raw_os_error(), Some(24 | 23 | 105 | 12))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every connection holds one: most of an idle connection's RSS (246 B before
    /// rooms, 256 B the budget with permessage-deflate negotiated). The Conn 176 B,
    /// the client's room and flags 16 B, and the runtime's Io (16 B in a release
    /// build; mio's debug builds add 8 to a socket).
    #[test]
    fn a_client_stays_within_its_share_of_the_idle_budget() {
        assert!(std::mem::size_of::<crate::app::Client<Io>>() <= 192 + std::mem::size_of::<Io>());
    }
}
