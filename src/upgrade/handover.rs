//! The handover between the old process and the new one, over a `Channel`:
//!
//! ```text
//! new -> old   Hello { format it reads, pid }
//! old -> new   Begin { format, snapshot length, connections }
//! old -> new   Listeners (descriptors; a role byte each)
//! old -> new   Snapshot ... (the bytes, in pieces of at most 1 MiB)
//! old -> new   Connections ... (descriptors, at most 250 a message, the snapshot's order)
//! old -> new   Done
//! new -> old   Confirm (serving; the old one exits)   or   Abort (why; the old one serves on)
//! ```
//!
//! Both sides here are plain functions over a channel; `start_new_process` and
//! `inherited_channel` are the process's part (the environment variable that names
//! the new process's end).

use std::ffi::OsString;
use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use log::debug;

use super::channel::{Channel, ChannelError, Kind, Message, MAX_BODY, MAX_FDS};

/// The environment variable that names the new process's end of the channel.
pub const CHANNEL_ENV: &str = "MIOKET_UPGRADE_FD";
/// Connections a snapshot may announce: more is garbage.
const MAX_CONNECTIONS: u64 = 10_000_000;
/// Snapshot bytes a peer may announce: more is garbage (memory grows only with what
/// arrives, never with what is announced).
const MAX_SNAPSHOT: u64 = 1 << 36;

/// A listening socket's role, its byte in `Listeners`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The main port.
    Main = 0,
    /// `--metrics-listen`.
    Metrics = 1,
}

/// Why a handover did not happen: said in the log, and by `mioket upgrade`.
#[derive(Debug)]
pub struct Failed(pub String);

impl fmt::Display for Failed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<ChannelError> for Failed {
    fn from(e: ChannelError) -> Failed {
        Failed(e.to_string())
    }
}

/// The new process's greeting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello {
    /// The newest snapshot format it reads.
    pub format: u32,
    pub pid: u32,
}

/// What the new process received.
#[derive(Debug)]
pub struct Received {
    pub format: u32,
    pub listeners: Vec<(Role, OwnedFd)>,
    pub snapshot: Vec<u8>,
    /// In the snapshot's order.
    pub connections: Vec<OwnedFd>,
}

// ---- the old process's side ----

/// Reads the new process's hello (the socket readable, or a blocking wait).
pub fn read_hello(chan: &mut Channel) -> Result<Hello, Failed> {
    let message = chan.recv()?;
    match message.kind {
        Kind::Hello => {
            let format = le_u32(&message.body, 0).ok_or_else(|| Failed("a short hello".into()))?;
            let pid = le_u32(&message.body, 4).ok_or_else(|| Failed("a short hello".into()))?;
            Ok(Hello { format, pid })
        }
        Kind::Abort => Err(Failed(format!("the new process gave up: {}", why(&message)))),
        other => Err(Failed(format!("expected a hello, got {other:?}"))),
    }
}

/// Sends the listeners, the snapshot and the connections, then waits for the answer.
pub fn hand_over(
    chan: &mut Channel,
    listeners: &[(Role, RawFd)],
    format: u32,
    snapshot: &[u8],
    connections: &[RawFd],
) -> Result<(), Failed> {
    let started = Instant::now();
    let sent = send_state(chan, listeners, format, snapshot, connections);
    let sent_in = started.elapsed();
    let answer = chan.recv();
    debug!("handover: state sent in {sent_in:?}, the answer {:?} after", started.elapsed() - sent_in);
    // A new process that refused stops reading and says why: its answer beats the
    // broken pipe our sending met.
    match (answer, sent) {
        (Ok(m), _) if m.kind == Kind::Confirm => Ok(()),
        (Ok(m), _) if m.kind == Kind::Abort => Err(Failed(format!("the new process refused: {}", why(&m)))),
        (Ok(m), _) => Err(Failed(format!("expected a confirmation, got {:?}", m.kind))),
        (Err(e), Err(sending)) => Err(Failed(format!("sending the state failed: {sending} ({e})"))),
        (Err(e), Ok(())) => Err(Failed(format!("no confirmation: {e}"))),
    }
}

fn send_state(
    chan: &mut Channel,
    listeners: &[(Role, RawFd)],
    format: u32,
    snapshot: &[u8],
    connections: &[RawFd],
) -> Result<(), Failed> {
    let mut begin = Vec::with_capacity(16);
    begin.extend_from_slice(&format.to_le_bytes());
    begin.extend_from_slice(&(snapshot.len() as u64).to_le_bytes());
    begin.extend_from_slice(&(connections.len() as u32).to_le_bytes());
    chan.send(Kind::Begin, &begin, &[])?;
    let roles: Vec<u8> = listeners.iter().map(|(role, _)| *role as u8).collect();
    let fds: Vec<RawFd> = listeners.iter().map(|(_, fd)| *fd).collect();
    chan.send(Kind::Listeners, &roles, &fds)?;
    for piece in snapshot.chunks(MAX_BODY) {
        chan.send(Kind::Snapshot, piece, &[])?;
    }
    for batch in connections.chunks(MAX_FDS) {
        chan.send(Kind::Connections, &[], batch)?;
    }
    chan.send(Kind::Done, &[], &[])?;
    Ok(())
}

// ---- the new process's side ----

pub fn say_hello(chan: &mut Channel, format: u32) -> Result<(), Failed> {
    let mut body = format.to_le_bytes().to_vec();
    body.extend_from_slice(&std::process::id().to_le_bytes());
    chan.send(Kind::Hello, &body, &[])?;
    Ok(())
}

/// Receives everything the old process sends; `reads(format)` says whether this
/// binary reads that snapshot format. A refusal is told to the old process.
/// `arrived(first, fds)` is told of each batch of connections as it comes (`first`:
/// the index of its first connection in the snapshot's order), so the new process
/// can register them while the rest is on its way. The descriptors stay in what is
/// received.
pub fn receive_with(
    chan: &mut Channel,
    reads: impl Fn(u32) -> bool,
    arrived: impl FnMut(usize, &[OwnedFd]),
) -> Result<Received, Failed> {
    let result = receive_inner(chan, reads, arrived);
    if let Err(why) = &result {
        abort(chan, &why.0);
    }
    result
}

fn receive_inner(
    chan: &mut Channel,
    reads: impl Fn(u32) -> bool,
    mut arrived: impl FnMut(usize, &[OwnedFd]),
) -> Result<Received, Failed> {
    let begin = expect(chan, Kind::Begin)?;
    let (Some(format), Some(length), Some(count)) =
        (le_u32(&begin.body, 0), le_u64(&begin.body, 4), le_u32(&begin.body, 12))
    else {
        return Err(Failed("a short Begin".into()));
    };
    if !reads(format) {
        return Err(Failed(format!("unknown snapshot format {format}")));
    }
    if length > MAX_SNAPSHOT || u64::from(count) > MAX_CONNECTIONS {
        return Err(Failed(format!("a snapshot of {length} bytes and {count} connections")));
    }
    let listeners = expect(chan, Kind::Listeners)?;
    if listeners.body.len() != listeners.fds.len() {
        return Err(Failed("listeners without their roles".into()));
    }
    let mut taken = Vec::new();
    for (role, fd) in listeners.body.iter().zip(listeners.fds) {
        let role = match role {
            0 => Role::Main,
            1 => Role::Metrics,
            _ => return Err(Failed(format!("unknown listener role {role}"))),
        };
        taken.push((role, fd));
    }
    // Reserved as announced only up to a bound; beyond it memory follows what arrives.
    let mut snapshot = Vec::with_capacity(length.min(64 << 20) as usize);
    let mut connections = Vec::with_capacity((count as usize).min(1 << 16));
    loop {
        let message = chan.recv()?;
        match message.kind {
            Kind::Snapshot if connections.is_empty() => {
                if snapshot.len() as u64 + message.body.len() as u64 > length {
                    return Err(Failed("more snapshot than announced".into()));
                }
                snapshot.extend_from_slice(&message.body);
            }
            Kind::Connections => {
                if connections.len() + message.fds.len() > count as usize {
                    return Err(Failed("more connections than announced".into()));
                }
                arrived(connections.len(), &message.fds);
                connections.extend(message.fds);
            }
            Kind::Done => break,
            Kind::Abort => return Err(Failed(format!("the old process gave up: {}", why(&message)))),
            other => return Err(Failed(format!("unexpected {other:?}"))),
        }
    }
    if snapshot.len() as u64 != length || connections.len() != count as usize {
        return Err(Failed(format!(
            "announced {length} bytes and {count} connections, got {} and {}",
            snapshot.len(),
            connections.len()
        )));
    }
    Ok(Received { format, listeners: taken, snapshot, connections })
}

pub fn confirm(chan: &mut Channel) -> Result<(), Failed> {
    chan.send(Kind::Confirm, &[], &[])?;
    Ok(())
}

/// Best effort: the peer may be gone already.
pub fn abort(chan: &mut Channel, why: &str) {
    let why = &why.as_bytes()[..why.len().min(1024)];
    let _ = chan.send(Kind::Abort, why, &[]);
}

fn expect(chan: &mut Channel, kind: Kind) -> Result<Message, Failed> {
    let message = chan.recv()?;
    match message.kind {
        k if k == kind => Ok(message),
        Kind::Abort => Err(Failed(format!("the other process gave up: {}", why(&message)))),
        other => Err(Failed(format!("expected {kind:?}, got {other:?}"))),
    }
}

fn why(message: &Message) -> String {
    String::from_utf8_lossy(&message.body[..message.body.len().min(1024)]).into_owned()
}

fn le_u32(body: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(body.get(at..at + 4)?.try_into().ok()?))
}

fn le_u64(body: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(body.get(at..at + 8)?.try_into().ok()?))
}

// ---- the processes ----

/// Starts the new binary (`binary`, or the one we run from) with our arguments; its end
/// of the channel is inherited, named by `MIOKET_UPGRADE_FD`. Our end comes back with
/// the child.
pub fn start_new_process(binary: Option<&Path>) -> io::Result<(Child, Channel)> {
    let path = match binary {
        Some(path) => path.to_path_buf(),
        None => current_exe()?,
    };
    let (ours, theirs) = UnixStream::pair()?;
    // std makes sockets close-on-exec: this one end must survive the exec.
    set_inheritable(&theirs)?;
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let child = Command::new(&path).args(args).env(CHANNEL_ENV, theirs.as_raw_fd().to_string()).spawn();
    // Ours stays ours; the child's end closes here in this process.
    drop(theirs);
    Ok((child?, Channel::new(ours)))
}

/// The binary at our path now. Linux names a replaced binary "PATH (deleted)": the
/// deploy put a new file there, which is the one we want.
fn current_exe() -> io::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let text = exe.to_string_lossy();
    match text.strip_suffix(" (deleted)") {
        Some(path) => Ok(PathBuf::from(path)),
        None => Ok(exe),
    }
}

#[allow(unsafe_code)]
fn set_inheritable(stream: &UnixStream) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we own, with integer arguments only.
    let rc = unsafe { libc::fcntl(stream.as_raw_fd(), libc::F_SETFD, 0) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The new process: the channel the old one gave us, if we are one. The variable is
/// removed, so that our own upgrade later does not find a stale one.
pub fn inherited_channel(timeout: Duration) -> Result<Option<Channel>, Failed> {
    let Some(value) = std::env::var_os(CHANNEL_ENV) else { return Ok(None) };
    std::env::remove_var(CHANNEL_ENV);
    let fd: RawFd = value
        .to_str()
        .and_then(|v| v.parse().ok())
        .filter(|&fd| fd > 2)
        .ok_or_else(|| Failed(format!("{CHANNEL_ENV} is not a descriptor")))?;
    if !is_unix_socket(fd) {
        return Err(Failed(format!("{CHANNEL_ENV}={fd} is not a socket")));
    }
    // SAFETY (in `adopt`): the old process made this descriptor for us and named it;
    // nothing else in this process owns it.
    let stream = adopt(fd);
    set_cloexec(&stream);
    stream.set_read_timeout(Some(timeout)).map_err(|e| Failed(e.to_string()))?;
    stream.set_write_timeout(Some(timeout)).map_err(|e| Failed(e.to_string()))?;
    Ok(Some(Channel::new(stream)))
}

#[allow(unsafe_code)]
fn adopt(fd: RawFd) -> UnixStream {
    // SAFETY: see `inherited_channel`.
    UnixStream::from(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[allow(unsafe_code)]
fn is_unix_socket(fd: RawFd) -> bool {
    // SAFETY: fstat writes into a zeroed stat we own; a bad descriptor is an error.
    unsafe {
        let mut stat: libc::stat = std::mem::zeroed();
        libc::fstat(fd, &mut stat) == 0 && stat.st_mode & libc::S_IFMT == libc::S_IFSOCK
    }
}

#[allow(unsafe_code)]
fn set_cloexec(stream: &UnixStream) {
    // SAFETY: fcntl on a descriptor we own, with integer arguments only.
    unsafe {
        libc::fcntl(stream.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC);
    }
}

#[cfg(test)]
mod tests;
