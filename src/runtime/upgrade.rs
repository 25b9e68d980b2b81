//! The loop's part of a binary upgrade (src/upgrade/, README "Upgrades").
//!
//! Old process: SIGUSR2 starts the new binary and serves on while it starts; its hello
//! (the channel readable) freezes the application and hands everything over in one
//! blocking exchange, bounded by --upgrade-timeout. Confirmed: the listeners go, what
//! could not move closes with 1012, and the loop ends once that is done. Anything
//! else: the child is killed, the application thaws, and serving goes on.
//!
//! New process: `Server::take_over` instead of `Server::bind`.

use std::io;
use std::net::TcpStream as StdTcpStream;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::process::Child;
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use mio::net::{TcpListener, TcpStream};
use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};

use super::{Io, Server, StartError, HANDOVER};
use crate::app::App;
use crate::config::Config;
use crate::transport::Transport;
use crate::upgrade::channel::Channel;
use crate::upgrade::command::{self, Outcome};
use crate::upgrade::handover::{self, Failed, Hello, Role};
use crate::upgrade::notify::notify;
use crate::upgrade::snapshot::FORMAT_VERSION;

/// An upgrade under way: the new process started, its hello awaited.
pub(super) struct Upgrade {
    child: Child,
    channel: Channel,
    /// No hello by then: the upgrade fails. Once the hello is in: publishes in
    /// flight to Redis still unanswered then are refused, and the handover goes on.
    deadline: Instant,
    /// The hello came: the loop hands over after its flush.
    hello: Option<Hello>,
}

impl Upgrade {
    /// No hello by then: the loop fails the upgrade (hello in: see `deadline`).
    pub(super) fn deadline(&self) -> Instant {
        self.deadline
    }

    /// The hello is in: no client is read any more (`Server::read_client`), and the
    /// loop hands over after its flush, once publishes in flight are answered.
    pub(super) fn ready(&self) -> bool {
        self.hello.is_some()
    }
}

impl Server {
    /// SIGUSR2: starts the new binary; the exchange waits for its hello.
    #[cold]
    #[inline(never)]
    pub(super) fn start_upgrade(&mut self, now: Instant) {
        if self.upgrade.is_some() {
            info!("SIGUSR2: an upgrade is under way already");
            return;
        }
        if self.listener.is_none() {
            return self.record_failure(Failed("the server is stopping".into()));
        }
        let binary = self.app.config().upgrade_binary.clone();
        let (child, channel) = match handover::start_new_process(binary.as_deref()) {
            Ok(started) => started,
            Err(e) => return self.record_failure(Failed(format!("cannot start the new binary: {e}"))),
        };
        info!("SIGUSR2: upgrading: started pid {}", child.id());
        let stream = channel.stream();
        let registered = stream.set_nonblocking(true).and_then(|()| {
            self.poll.registry().register(&mut SourceFd(&stream.as_raw_fd()), HANDOVER, Interest::READABLE)
        });
        let deadline = now + self.app.config().upgrade_timeout;
        self.upgrade = Some(Upgrade { child, channel, deadline, hello: None });
        if let Err(e) = registered {
            self.fail_upgrade(Failed(format!("cannot poll the channel: {e}")));
        }
    }

    /// The channel is readable (a hello, or the child gone), or its time is up.
    #[cold]
    #[inline(never)]
    pub(super) fn continue_upgrade(&mut self, now: Instant) {
        let Some(upgrade) = &mut self.upgrade else { return };
        if upgrade.deadline <= now {
            return self.fail_upgrade(Failed("no hello from the new process in time".into()));
        }
        let stream = upgrade.channel.stream();
        let _ = self.poll.registry().deregister(&mut SourceFd(&stream.as_raw_fd()));
        let timeout = Some(self.app.config().upgrade_timeout);
        let blocking = stream
            .set_nonblocking(false)
            .and_then(|()| stream.set_read_timeout(timeout))
            .and_then(|()| stream.set_write_timeout(timeout));
        if let Err(e) = blocking {
            return self.fail_upgrade(Failed(format!("channel: {e}")));
        }
        let hello = match handover::read_hello(&mut upgrade.channel) {
            Ok(hello) => hello,
            Err(why) => return self.fail_upgrade(why),
        };
        if hello.format < FORMAT_VERSION {
            let why =
                format!("the new binary reads snapshots up to format {}, ours is {}", hello.format, FORMAT_VERSION);
            return self.fail_upgrade(Failed(why));
        }
        // From now on no client is read. The loop flushes every client, then hands
        // over (`hand_over_when_answered`): what the sockets take goes before the
        // freeze; the rest travels.
        upgrade.hello = Some(hello);
        self.reads_held = true;
        upgrade.deadline = now + self.app.config().upgrade_timeout / 2;
        let unanswered = self.app.publishes_unanswered();
        if unanswered > 0 {
            info!("upgrading: {unanswered} publishes wait for Redis's answer before the handover");
        }
    }

    /// With the hello in and reading stopped: publishes in flight to Redis are
    /// answered first (the new process's mirror does not know them), until half the
    /// upgrade's timeout; those still unanswered then are refused ("backplane
    /// unavailable", as when Redis never answers) before the freeze. Then the handover.
    #[cold]
    #[inline(never)]
    pub(super) fn hand_over_when_answered(&mut self, now: Instant) {
        let Some(upgrade) = &self.upgrade else { return };
        let unanswered = self.app.publishes_unanswered();
        if unanswered > 0 {
            if now < upgrade.deadline {
                return;
            }
            warn!("upgrading: refusing {unanswered} publishes Redis did not answer in time");
            self.app.refuse_unanswered(now);
        }
        self.hand_over_now(now);
    }

    /// After the loop's flush, with the new process's hello in: freeze, send, and
    /// finish or roll back. The clients wait meanwhile: this is the upgrade's pause.
    #[cold]
    #[inline(never)]
    pub(super) fn hand_over_now(&mut self, now: Instant) {
        let Some(hello) = self.upgrade.as_mut().and_then(|u| u.hello.take()) else { return };
        let started = Instant::now();
        let frozen = self.app.freeze(now);
        let frozen_in = started.elapsed();
        let mut listeners = Vec::new();
        if let Some(l) = &self.listener {
            listeners.push((Role::Main, l.as_raw_fd()));
        }
        if let Some(l) = &self.metrics_listener {
            listeners.push((Role::Metrics, l.as_raw_fd()));
        }
        let Some(upgrade) = &mut self.upgrade else { return };
        let result = handover::hand_over(&mut upgrade.channel, &listeners, FORMAT_VERSION, &frozen.bytes, &frozen.fds);
        match result {
            Ok(()) => self.finish_upgrade(hello.pid, &frozen.fds, frozen.bytes.len(), (started, frozen_in)),
            Err(why) => {
                self.app.thaw(Instant::now());
                // Readiness may have come and gone while frozen: read every client once.
                self.backlog.extend(self.app.client_ids());
                self.fail_upgrade(why);
            }
        }
    }

    /// Confirmed: the new process serves. Ours stop accepting; what did not move
    /// (TLS connections) closes with 1012 once its queue is written; then `run` ends.
    /// `times`: when the freeze started, and how long it took.
    fn finish_upgrade(&mut self, new_pid: u32, moved: &[RawFd], bytes: usize, times: (Instant, Duration)) {
        // Not waited for: it is the server now (and our parent's child once we exit).
        self.upgrade = None;
        // What cannot move (TLS) closes here and its close replies are read.
        self.reads_held = false;
        for mut listener in [self.listener.take(), self.metrics_listener.take()].into_iter().flatten() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        let handover_took = times.0.elapsed();
        // The moved sockets are the new process's: no more wake-ups for them here. (They
        // close, never shut down, in `close_unmoved`: the new process holds them open.)
        for fd in moved {
            let _ = self.poll.registry().deregister(&mut SourceFd(fd));
        }
        if let Err(e) = command::record(&Outcome::Done { new_pid }) {
            warn!("cannot record the upgrade's outcome: {e}");
        }
        let now = Instant::now();
        self.app.handle_upgraded(now);
        let ids: Vec<usize> = self.app.client_ids().collect();
        info!(
            "upgraded: pid {new_pid} took over {} connections and a {bytes}-byte snapshot in {handover_took:?} \
             (the freeze {:?}); closing {} that cannot move (1012)",
            moved.len(),
            times.1,
            ids.len()
        );
        for id in ids {
            self.reschedule(id);
        }
    }

    /// The new process is killed if it still runs; we serve on as before.
    pub(super) fn fail_upgrade(&mut self, why: Failed) {
        let Some(mut upgrade) = self.upgrade.take() else { return };
        self.reads_held = false;
        let _ = self.poll.registry().deregister(&mut SourceFd(&upgrade.channel.stream().as_raw_fd()));
        // A child that closed the channel is exiting: give it a moment, for its status.
        let exited = wait_for_exit(&mut upgrade.child, Duration::from_millis(200));
        let why = match exited {
            Some(status) => Failed(format!("{why} (the new process exited: {status})")),
            _ => {
                let _ = upgrade.child.kill();
                why
            }
        };
        let _ = upgrade.child.wait();
        self.record_failure(why);
    }

    fn record_failure(&mut self, why: Failed) {
        warn!("upgrade failed, serving on with every connection: {why}");
        if let Err(e) = command::record(&Outcome::Failed(why.0)) {
            warn!("cannot record the upgrade's outcome: {e}");
        }
    }

    /// The new process: takes the listeners, the connections and the application's
    /// state from the old one (instead of `bind`), and confirms.
    ///
    /// The pause's two largest parts run side by side: a second thread registers the
    /// connections' sockets with our poll as their batches arrive (2-4 us each), while
    /// this one receives the rest and restores the application. Should anything fail,
    /// we tell the old process and exit, and what we registered dies with our poll: the
    /// old process's registrations are its own, so it serves on as if we never had.
    #[cold]
    #[inline(never)]
    pub fn take_over(config: Config, mut channel: Channel) -> Result<Server, StartError> {
        // With Redis: connected before the hello, while the old process still serves
        // (at most half the upgrade's time; a Redis that is down is not waited for).
        let until = Instant::now() + config.upgrade_timeout / 2;
        let (poll, backplane) = Server::reactor(&config)?;
        let early = backplane.as_ref().map_or(Vec::new(), |links| links.wait_up(until));
        handover::say_hello(&mut channel, FORMAT_VERSION).map_err(|e| StartError::Upgrade(e.0))?;
        let hello_at = Instant::now();
        let registry = poll.registry();
        let taken = thread::scope(|scope| {
            let (batches, arrivals) = mpsc::channel();
            let registering = scope.spawn(move || register_moved(registry, arrivals));
            // The sender goes with `receive_with`: the thread ends once all arrived.
            let taken = take_state(config, &mut channel, batches, hello_at);
            let waited = Instant::now();
            let registered = registering.join().unwrap_or_else(|_| Err(io::Error::other("panicked")));
            debug!("take over: the registration's end waited for {:?}", waited.elapsed());
            let taken = taken?;
            registered.map_err(|e| fail(&mut channel, format!("cannot poll the connections: {e}")))?;
            Ok::<_, StartError>(taken)
        })?;
        let Taken { app, tls, main, metrics, received_at, restored_in } = taken;
        let mut server = Server::assemble(app, (poll, backplane), tls, main, metrics)
            .map_err(|e| fail(&mut channel, e.to_string()))?;
        let ids: Vec<usize> = server.app.client_ids().collect();
        for (i, id) in ids.into_iter().enumerate() {
            // Registered as the snapshot's i-th connection (`register_moved`).
            if id != i {
                return Err(fail(&mut channel, format!("connection {i} restored as client {id}")));
            }
            server.reschedule(id);
            // Bytes may have arrived during the handover: read every client once.
            server.backlog.push(id);
        }
        // What the link said while it connected: once up, the restored rooms' mirrors
        // catch up from Redis (their members' publishes wait for that, `Mirror::publish`).
        let now = Instant::now();
        for event in early {
            server.app.handle_backplane(event, now);
        }
        server.pump_backplane(now);
        // Before the confirmation: once the old process exits, systemd must know us.
        notify(&format!("MAINPID={}\nREADY=1", std::process::id()));
        if let Err(e) = handover::confirm(&mut channel) {
            // The old process gave up on us and serves on: it is the main pid again.
            notify(&format!("MAINPID={}", std::os::unix::process::parent_id()));
            return Err(StartError::Upgrade(e.0));
        }
        info!(
            "took over {} connections: restored in {restored_in:?} (registered alongside), confirmed {:?} after",
            server.app.client_count(),
            received_at.elapsed() - restored_in
        );
        Ok(server)
    }
}

/// What the new process took over, before its loop is assembled around it.
struct Taken {
    app: App<Io>,
    tls: Option<Arc<rustls::ServerConfig>>,
    main: TcpListener,
    metrics: Option<TcpListener>,
    /// The last byte received, and the restore's time from then.
    received_at: Instant,
    restored_in: Duration,
}

/// Receives the listeners, the snapshot and the connections (each batch's sockets
/// sent on to `register_moved`), and restores the application.
#[cold]
#[inline(never)]
fn take_state(
    config: Config,
    channel: &mut Channel,
    batches: mpsc::Sender<(usize, Vec<RawFd>)>,
    hello_at: Instant,
) -> Result<Taken, StartError> {
    let arrived = move |first: usize, fds: &[OwnedFd]| {
        // A send fails only once the thread stopped at an error, which it returns.
        let _ = batches.send((first, fds.iter().map(AsRawFd::as_raw_fd).collect()));
    };
    let received = handover::receive_with(channel, |format| format == FORMAT_VERSION, arrived)
        .map_err(|e| StartError::Upgrade(e.0))?;
    // From the last byte received: the new process's share of the pause.
    let received_at = Instant::now();
    debug!("take over: received in {:?} after the hello", received_at - hello_at);
    let (mut main, mut metrics) = (None, None);
    for (role, fd) in received.listeners {
        let listener = TcpListener::from_std(std::net::TcpListener::from(fd));
        match role {
            Role::Main => main = Some(listener),
            Role::Metrics => metrics = Some(listener),
        }
    }
    let Some(main) = main else { return Err(fail(channel, "no main listener".into())) };
    let tls = super::load_tls(&config).map_err(|e| fail(channel, e))?;
    let metrics = match (metrics, &config.metrics_listen) {
        (Some(l), _) => Some(l),
        (None, Some(addr)) => Some(
            super::resolve(addr.as_str())
                .and_then(|a| super::listen(a, false, 0))
                .map_err(|e| fail(channel, format!("--metrics-listen: {e}")))?,
        ),
        (None, None) => None,
    };
    let app = App::restore(config, &received.snapshot, received.connections, Instant::now(), io_from)
        .map_err(|e| fail(channel, format!("cannot restore the snapshot: {e}")))?;
    let restored_in = received_at.elapsed();
    // Done with (not trimmed here: a malloc_trim would lengthen the pause).
    drop(received.snapshot);
    Ok(Taken { app, tls, main, metrics, received_at, restored_in })
}

/// The second thread of `Server::take_over`: registers each batch of connections
/// with the new process's poll as it arrives, the i-th connection of the snapshot
/// under `Token(i)` (`App::restore` makes it client i). The descriptors stay the
/// main thread's; if it fails and drops them before they are registered here, the
/// process exits anyway.
#[cold]
#[inline(never)]
fn register_moved(registry: &Registry, batches: mpsc::Receiver<(usize, Vec<RawFd>)>) -> io::Result<()> {
    let started = Instant::now();
    let mut count = 0;
    for (first, fds) in batches {
        for (i, &fd) in fds.iter().enumerate() {
            Transport::register_plain_fd(registry, fd, Token(first + i))?;
        }
        count += fds.len();
    }
    debug!("take over: registered {count} connections by {:?} after the hello", started.elapsed());
    Ok(())
}

/// Tells the old process why we give up; the error to exit with.
fn fail(channel: &mut Channel, why: String) -> StartError {
    handover::abort(channel, &why);
    StartError::Upgrade(why)
}

fn wait_for_exit(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let until = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < until => std::thread::sleep(Duration::from_millis(5)),
            _ => return None,
        }
    }
}

/// A connection's socket as it arrives from the old process.
fn io_from(fd: OwnedFd) -> Io {
    Io { transport: Transport::plain(TcpStream::from_std(StdTcpStream::from(fd))) }
}
