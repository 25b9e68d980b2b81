//! The event loop: the only code that does I/O. It moves bytes between sockets and
//! each client's `Conn`, moves time into `Conn::on_tick`, and fans messages out.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{self, IoSlice, Read, Write};
use std::net::{Shutdown, SocketAddr, ToSocketAddrs};
use std::rc::Rc;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;
use slab::Slab;

use crate::config::{Config, Mode};
use crate::error::HandshakeError;
use crate::frame::{encode_header, server_header, CloseCode, Opcode, MAX_HEADER_LEN};
use crate::handshake;
use crate::http;
use crate::memory;
use crate::metrics::{Gauges, Metrics, Rejection};
use crate::outqueue::{shared_message, Chunk};
use crate::protocol::{Conn, Event, Fault};
use crate::room::{self, History};

const LISTENER: Token = Token(usize::MAX - 1);
const SIGNALS: Token = Token(usize::MAX - 2);
const METRICS_LISTENER: Token = Token(usize::MAX - 3);
/// One read's worth: shared by all clients, never per connection. Large enough that
/// a 64 KiB message with its header arrives whole and is unmasked in place.
const READ_CHUNK: usize = 256 * 1024;
/// Bytes read from one client per loop iteration, so a firehose cannot starve the rest.
const READ_BUDGET: usize = READ_CHUNK;
const MAX_IOVECS: usize = 64;
/// Clients flushed between two looks for new input during a long flush.
const FLUSH_POLL_EVERY: usize = 32;
/// An echo at least this large is written at once rather than copied into the queue:
/// its copy costs more than a syscall of its own, and large messages rarely batch.
const WRITE_THROUGH_MIN: usize = 16 * 1024;
/// How long accepting pauses when we run out of file descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// At most one log line per this long while out of file descriptors.
const EXHAUSTION_LOG_EVERY: Duration = Duration::from_secs(10);
/// Connections still in their handshake allowed beyond max-connections.
const HANDSHAKE_SLACK: usize = 1024;
/// A queue this large, once drained or freed, counts toward giving memory back.
const LARGE_QUEUE: usize = 256 * 1024;
/// Memory freed by large queues after which the allocator is asked to give pages
/// back, at most once per `TRIM_EVERY`: a trim walks the heap, so not on every free.
const TRIM_AFTER: usize = 1 << 20;
const TRIM_EVERY: Duration = Duration::from_secs(1);

struct Client {
    socket: TcpStream,
    conn: Conn,
    /// The deadline this client has in the timer heap, if any.
    timer_at: Option<Instant>,
    /// Queued in `Server::dirty` for a flush at the end of this iteration.
    dirty: bool,
    /// Reading stopped because its outgoing queue is long (resumed after a flush).
    read_paused: bool,
    /// Counted in `Server::open` (accepted as a WebSocket).
    counted_open: bool,
    /// Came in on --metrics-listen: only /metrics and /healthz are served.
    metrics_only: bool,
}

pub struct Server {
    poll: Poll,
    listener: Option<TcpListener>,
    metrics_listener: Option<TcpListener>,
    signals: Signals,
    local_addr: SocketAddr,
    config: Config,
    clients: Slab<Client>,
    /// Accepted WebSockets not yet removed.
    open: usize,
    welcome: Option<Rc<[u8]>>,
    history: History,
    timers: BinaryHeap<Reverse<(Instant, usize)>>,
    /// Clients with output to flush at the end of this iteration.
    dirty: Vec<usize>,
    /// Clients that may have unread input (read budget spent, or reading resumed).
    backlog: Vec<usize>,
    scratch: Vec<u8>,
    accept_paused_until: Option<Instant>,
    last_exhaustion_log: Option<Instant>,
    /// Set once a signal asked us to stop: when we give up waiting.
    shutdown: Option<Option<Instant>>,
    /// Memory freed by large queues since the last trim, and when that was.
    released: usize,
    last_trim: Option<Instant>,
    metrics: Metrics,
}

impl Server {
    /// Binds the listening socket; `run` serves on it.
    pub fn bind(config: Config) -> io::Result<Server> {
        let mut listener = listen(resolve((config.host.as_str(), config.port))?)?;
        let local_addr = listener.local_addr()?;
        let poll = Poll::new()?;
        poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
        let metrics_listener = match &config.metrics_listen {
            Some(addr) => {
                let mut l = listen(resolve(addr.as_str())?)?;
                poll.registry().register(&mut l, METRICS_LISTENER, Interest::READABLE)?;
                Some(l)
            }
            None => None,
        };
        let mut signals = Signals::new([SIGINT, SIGTERM])?;
        poll.registry().register(&mut signals, SIGNALS, Interest::READABLE)?;
        let welcome = config.welcome.as_ref().map(|text| shared_message(Opcode::Text, text.as_bytes()));
        // History replay must fit a new client's queue beside live traffic.
        let history = History::new(config.history, config.limits.max_backpressure / 2);
        Ok(Server {
            poll,
            listener: Some(listener),
            metrics_listener,
            signals,
            local_addr,
            config,
            clients: Slab::new(),
            open: 0,
            welcome,
            history,
            timers: BinaryHeap::new(),
            dirty: Vec::new(),
            backlog: Vec::new(),
            scratch: vec![0; READ_CHUNK],
            accept_paused_until: None,
            last_exhaustion_log: None,
            shutdown: None,
            released: 0,
            last_trim: None,
            metrics: Metrics::default(),
        })
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
            for key in std::mem::take(&mut self.backlog) {
                self.read_client(key, false, now);
            }
            self.run_timers(now);
            if self.accept_paused_until.is_some_and(|t| t <= now) {
                self.accept_paused_until = None;
                self.accept_all(now);
            }
            self.flush_dirty(&mut events);
            self.give_memory_back(now);
            self.metrics.iteration(now.elapsed());
            if let Some(deadline) = self.shutdown {
                if self.clients.is_empty() || deadline.is_some_and(|d| d <= now) {
                    info!("stopped ({} connections left)", self.clients.len());
                    return Ok(());
                }
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
                Token(key) => {
                    if event.is_readable() || event.is_read_closed() || event.is_error() {
                        self.read_client(key, event.is_read_closed(), now);
                    }
                    if event.is_writable() {
                        self.mark_dirty(key);
                    }
                }
            }
        }
    }

    fn poll_timeout(&self, now: Instant) -> Option<Duration> {
        if !self.backlog.is_empty() {
            return Some(Duration::ZERO);
        }
        let next_timer = self.timers.peek().map(|Reverse((t, _))| *t);
        let shutdown = self.shutdown.flatten();
        [next_timer, self.accept_paused_until, shutdown, self.trim_due()]
            .into_iter()
            .flatten()
            .min()
            .map(|t| t.saturating_duration_since(now))
    }

    fn accept_all(&mut self, now: Instant) {
        while self.accept_paused_until.is_none() {
            let Some(listener) = &self.listener else { return };
            match listener.accept() {
                Ok((socket, peer)) => self.add_client(socket, peer, false, now),
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
                Ok((socket, peer)) => self.add_client(socket, peer, true, now),
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

    fn add_client(&mut self, mut socket: TcpStream, peer: SocketAddr, metrics_only: bool, now: Instant) {
        self.metrics.accepted += 1;
        if self.clients.len() >= self.config.max_connections + HANDSHAKE_SLACK {
            // Best effort: a fresh socket's buffer takes this small answer whole.
            let _ = socket.write(&handshake::error_response(HandshakeError::ServerFull));
            self.metrics.reject(Rejection::OverMaxConnections);
            info!("rejected {peer}: too many connections (503)");
            return;
        }
        let _ = socket.set_nodelay(true);
        let entry = self.clients.vacant_entry();
        let key = entry.key();
        // Both interests once, edge-triggered: no re-registration per write.
        if let Err(e) = self.poll.registry().register(&mut socket, Token(key), Interest::READABLE | Interest::WRITABLE)
        {
            warn!("could not register {peer}: {e}");
            return;
        }
        let conn = Conn::new(now, &self.config.limits);
        entry.insert(Client {
            socket,
            conn,
            timer_at: None,
            dirty: false,
            read_paused: false,
            counted_open: false,
            metrics_only,
        });
        self.reschedule(key);
        // The request often arrives with the connection.
        self.read_client(key, false, now);
    }

    /// Reads until WouldBlock, end of stream, or the budget. `peer_closed`: the event
    /// said the peer's FIN is in; then a short read does not mean "drained", since the
    /// end of stream behind the data brings no new edge.
    fn read_client(&mut self, key: usize, peer_closed: bool, now: Instant) {
        let mut budget = READ_BUDGET;
        loop {
            let Some(client) = self.clients.get_mut(key) else { return };
            if client.conn.is_closed() {
                break;
            }
            // Backpressure on reading: an echo client that does not read its answers,
            // or a ping flood, stops being read until its queue drains.
            if client.conn.queue_memory() > self.config.limits.max_backpressure / 2 {
                client.read_paused = true;
                break;
            }
            match client.socket.read(&mut self.scratch) {
                Ok(0) => {
                    client.conn.end_of_stream();
                    break;
                }
                Ok(n) => {
                    self.metrics.bytes_read += n as u64;
                    self.process_input(key, n, now);
                    budget = budget.saturating_sub(n);
                    if budget == 0 {
                        self.backlog.push(key);
                        break;
                    }
                    // A short read drained the socket: the next arrival is a new edge.
                    if n < self.scratch.len() && !peer_closed {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    debug!("read error on client {key}: {e}");
                    client.conn.end_of_stream();
                    break;
                }
            }
        }
        self.after_activity(key);
    }

    /// Hands `scratch[..n]` to the client's `Conn` and acts on what it yields.
    fn process_input(&mut self, key: usize, n: usize, now: Instant) {
        let Server { clients, scratch, config, history, dirty, open, welcome, shutdown, metrics, .. } = self;
        let limits = &config.limits;
        let mut http_path = None;
        let mut pos = 0;
        while pos < n {
            let Some(client) = clients.get_mut(key) else { return };
            let (used, event) = client.conn.read(&mut scratch[pos..n], now, limits);
            pos += used;
            match event {
                None if used == 0 => return,
                None => {}
                Some(Event::UpgradeRequest) => {
                    // A valid upgrade: accept it (101, welcome, history) unless full.
                    if client.metrics_only {
                        client.conn.respond(Chunk::Owned(http::not_found()), now);
                        continue;
                    }
                    if *open >= config.max_connections || shutdown.is_some() {
                        client.conn.refuse(HandshakeError::ServerFull, now);
                        continue;
                    }
                    client.conn.accept(now, limits);
                    client.counted_open = true;
                    *open += 1;
                    metrics.upgrades += 1;
                    for frame in welcome.iter().chain(history.frames()) {
                        if client.conn.send(Chunk::Shared(Rc::clone(frame)), now, limits).is_ok() {
                            metrics.messages_out += 1;
                        }
                    }
                }
                // Answered below, once the borrows of this loop are over.
                Some(Event::HttpGet { path }) => http_path = Some(path),
                Some(Event::Message { opcode, payload, nothing_queued }) => {
                    metrics.messages_in += 1;
                    metrics.message_bytes_in += payload.len() as u64;
                    match config.mode {
                        Mode::Echo if config.history == 0 && nothing_queued && payload.len() >= WRITE_THROUGH_MIN => {
                            // Straight from the read buffer to the socket: no copy, no
                            // allocation. Only what the socket does not take is queued.
                            let mut header = [0u8; MAX_HEADER_LEN];
                            let n = encode_header(&server_header(opcode, payload.len()), &mut header);
                            let parts = [&header[..n], payload];
                            let written = write_now(&mut client.socket, parts);
                            metrics.bytes_written += written as u64;
                            if let Some(rest) = Chunk::rest_of(parts, written) {
                                client.conn.send_rest_of_frame(rest);
                            }
                            metrics.messages_out += 1;
                        }
                        Mode::Echo if config.history == 0 => {
                            let echo = Chunk::frame(opcode, payload);
                            if client.conn.send(echo, now, limits).is_ok() {
                                metrics.messages_out += 1;
                            }
                        }
                        Mode::Echo => {
                            let frame = shared_message(opcode, payload);
                            history.record(&frame);
                            if client.conn.send(Chunk::Shared(frame), now, limits).is_ok() {
                                metrics.messages_out += 1;
                            }
                        }
                        Mode::Broadcast => {
                            let frame = shared_message(opcode, payload);
                            history.record(&frame);
                            // Every open client gets the frame; each is flushed once at the
                            // end of this loop iteration, however many frames it got. The
                            // sender first: its own copy going out early lets it send its
                            // next message while the others are still being written.
                            if let Some(sender) = clients.get_mut(key).filter(|c| c.conn.is_open()) {
                                queue_flush(dirty, key, sender);
                            }
                            let recipients = clients.iter_mut().map(|(k, c)| {
                                if c.conn.is_open() {
                                    queue_flush(dirty, k, c);
                                }
                                &mut c.conn
                            });
                            let result = room::fan_out(&frame, recipients, now, limits);
                            metrics.fanout_deliveries += result.delivered as u64;
                            metrics.messages_out += result.delivered as u64;
                        }
                    }
                }
            }
        }
        if let Some(path) = http_path {
            self.answer_http(key, &path, now);
        }
    }

    /// A plain GET: the pages, or /metrics and /healthz where they are served.
    fn answer_http(&mut self, key: usize, path: &str, now: Instant) {
        self.metrics.http_requests += 1;
        let Some(metrics_only) = self.clients.get(key).map(|c| c.metrics_only) else { return };
        let operator_here = metrics_only || self.metrics_listener.is_none();
        let answer = match path.split('?').next().unwrap_or_default() {
            "/metrics" if operator_here => {
                let body = self.metrics.render(&self.gauges());
                http::response(200, "text/plain; version=0.0.4; charset=utf-8", body.as_bytes())
            }
            "/healthz" if operator_here && self.shutdown.is_some() => {
                http::response(503, "text/plain; charset=utf-8", b"shutting down\n")
            }
            "/healthz" if operator_here => http::response(200, "text/plain; charset=utf-8", b"ok\n"),
            _ if metrics_only => http::not_found(),
            _ => http::answer(path),
        };
        if let Some(client) = self.clients.get_mut(key) {
            client.conn.respond(Chunk::Owned(answer), now);
        }
    }

    fn gauges(&self) -> Gauges {
        let mut g = Gauges {
            handshaking: 0,
            open: 0,
            closing: 0,
            history_len: self.history.len(),
            history_bytes: self.history.bytes(),
        };
        for (_, client) in &self.clients {
            match client.conn.state_name() {
                "handshaking" => g.handshaking += 1,
                "open" => g.open += 1,
                _ => g.closing += 1,
            }
        }
        g
    }

    /// After anything happened to a client: settle it, and schedule a flush if it
    /// has something to write.
    fn after_activity(&mut self, key: usize) {
        self.settle(key);
        let Some(client) = self.clients.get(key) else { return };
        if client.conn.queued_bytes() > 0 || client.conn.wants_write_shutdown() {
            self.mark_dirty(key);
        }
    }

    /// Logs and counts why a client is ending, removes it when closed, otherwise
    /// schedules its next timer.
    fn settle(&mut self, key: usize) {
        let Some(client) = self.clients.get_mut(key) else { return };
        if let Some(fault) = client.conn.take_fault() {
            log_fault(&client.socket, fault);
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
            self.remove(key);
            return;
        }
        self.reschedule(key);
    }

    fn remove(&mut self, key: usize) {
        if let Some(client) = self.clients.try_remove(key) {
            let memory = client.conn.queue_memory();
            if memory >= LARGE_QUEUE {
                self.released += memory;
            }
            if client.counted_open {
                self.open -= 1;
                let first = client.conn.first_close();
                self.metrics.close(first.map_or(CloseCode::ABNORMAL, |c| c.code), first.is_some_and(|c| c.by_peer));
            }
            // Dropping the socket closes it, which also removes it from epoll.
        }
    }

    fn mark_dirty(&mut self, key: usize) {
        if let Some(client) = self.clients.get_mut(key) {
            queue_flush(&mut self.dirty, key, client);
        }
    }

    /// Flushes in the order clients became dirty (a broadcast's sender first). In a
    /// room, a long flush (a fan-out to thousands) looks for new input now and then:
    /// messages that arrived meanwhile join the writes still to come, so under load a
    /// recipient gets several frames per writev instead of a syscall each. (An echo
    /// joins no one else's writes, so there a look would only cost a syscall.)
    fn flush_dirty(&mut self, events: &mut Events) {
        // Looks stop once the clients dirty at the start are flushed, so a steady
        // stream of input cannot keep a flush going (timers and backlog wait for it).
        let first_round = if self.config.mode == Mode::Broadcast { self.dirty.len() } else { 0 };
        let mut i = 0;
        while let Some(&key) = self.dirty.get(i) {
            self.flush(key);
            i += 1;
            if i % FLUSH_POLL_EVERY == 0 && i < first_round && self.poll.poll(events, Some(Duration::ZERO)).is_ok() {
                self.dispatch(events, Instant::now());
            }
        }
        self.dirty.clear();
    }

    /// Writes as much of the client's queue as the socket takes, in one writev per
    /// up to 64 chunks; the rest waits for the next writable event.
    fn flush(&mut self, key: usize) {
        let Some(client) = self.clients.get_mut(key) else { return };
        client.dirty = false;
        let before = client.conn.queue_memory();
        while !client.conn.out().is_empty() {
            let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
            let count = client.conn.out().io_slices(&mut slices);
            match client.socket.write_vectored(&slices[..count]) {
                Ok(0) => {
                    client.conn.end_of_stream();
                    break;
                }
                Ok(written) => {
                    self.metrics.bytes_written += written as u64;
                    client.conn.out().advance(written);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    debug!("write error on client {key}: {e}");
                    client.conn.end_of_stream();
                    break;
                }
            }
        }
        if client.conn.wants_write_shutdown() {
            let _ = client.socket.shutdown(Shutdown::Write);
            client.conn.write_shut_down();
        }
        let after = client.conn.queue_memory();
        if before >= LARGE_QUEUE {
            self.released += before.saturating_sub(after);
        }
        if client.read_paused && after <= self.config.limits.max_backpressure / 2 {
            client.read_paused = false;
            self.backlog.push(key);
        }
        // Fan-out may have closed this client (slow consumer) without reading it.
        self.settle(key);
    }

    /// When enough memory was freed to be worth giving back to the system.
    fn trim_due(&self) -> Option<Instant> {
        (self.released >= TRIM_AFTER).then(|| self.last_trim.map_or_else(Instant::now, |t| t + TRIM_EVERY))
    }

    /// The allocator keeps freed pages for reuse; after a burst (a flood that filled
    /// queues, a slow consumer cut off) RSS would stay at its high-water mark.
    fn give_memory_back(&mut self, now: Instant) {
        if self.trim_due().is_some_and(|t| t <= now) {
            memory::give_back();
            self.released = 0;
            self.last_trim = Some(now);
        }
    }

    /// Keeps one heap entry per client deadline. Entries whose time no longer
    /// matches the client's `timer_at` are stale and skipped when popped.
    fn reschedule(&mut self, key: usize) {
        let Some(client) = self.clients.get_mut(key) else { return };
        if let Some(deadline) = client.conn.next_deadline() {
            if client.timer_at.is_none_or(|t| deadline < t) {
                client.timer_at = Some(deadline);
                self.timers.push(Reverse((deadline, key)));
            }
        }
    }

    fn run_timers(&mut self, now: Instant) {
        while let Some(&Reverse((at, key))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            let Some(client) = self.clients.get_mut(key) else { continue };
            if client.timer_at != Some(at) {
                continue;
            }
            client.timer_at = None;
            client.conn.on_tick(now, &self.config.limits);
            self.after_activity(key);
        }
    }

    fn on_signals(&mut self, now: Instant) {
        let signals: Vec<i32> = self.signals.pending().collect();
        if signals.is_empty() {
            return;
        }
        if self.shutdown.is_some() {
            info!("second signal: stopping now");
            self.shutdown = Some(Some(now));
            return;
        }
        info!("signal {}: closing {} connections (1001)", signals[0], self.clients.len());
        self.shutdown = Some(self.config.limits.close_timeout.map(|t| now + t));
        if let Some(mut listener) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        let keys: Vec<usize> = self.clients.iter().map(|(k, _)| k).collect();
        for key in keys {
            if let Some(client) = self.clients.get_mut(key) {
                client.conn.close(CloseCode::GOING_AWAY, "server shutting down", now, &self.config.limits);
            }
            self.after_activity(key);
        }
    }
}

/// Connections the kernel holds for us while the loop is busy. mio's own bind uses
/// 128, which drops SYNs in a burst; the kernel caps this at net.core.somaxconn.
const LISTEN_BACKLOG: i32 = 4096;

fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
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

/// Queues a client for this iteration's flush, once.
fn queue_flush(dirty: &mut Vec<usize>, key: usize, client: &mut Client) {
    if !client.dirty {
        client.dirty = true;
        dirty.push(key);
    }
}

/// One non-blocking writev; returns how many bytes the socket took (0 on any error:
/// the next flush meets the error again).
fn write_now(socket: &mut TcpStream, parts: [&[u8]; 2]) -> usize {
    let slices = [IoSlice::new(parts[0]), IoSlice::new(parts[1])];
    loop {
        match socket.write_vectored(&slices) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            result => return result.unwrap_or(0),
        }
    }
}

fn is_resource_exhaustion(e: &io::Error) -> bool {
    // EMFILE, ENFILE, ENOBUFS, ENOMEM
    matches!(e.raw_os_error(), Some(24 | 23 | 105 | 12))
}

fn log_fault(socket: &TcpStream, fault: Fault) {
    let peer = socket.peer_addr().map_or_else(|_| "?".to_string(), |a| a.to_string());
    match fault {
        Fault::Handshake(err) => info!("rejected {peer}: {err}"),
        Fault::HandshakeTimeout => info!("dropped {peer}: handshake timeout"),
        Fault::Peer(err) => info!("closed {peer}: {err}"),
        Fault::PongTimeout => info!("closing {peer}: no pong within ping-timeout (1011)"),
        Fault::CloseTimeout => debug!("dropped {peer}: close timeout"),
        Fault::SlowConsumer => warn!("closing {peer}: slow consumer (1008)"),
    }
}
