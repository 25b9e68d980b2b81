//! The backplane's I/O: two threads with blocking sockets, so the event loop never
//! waits for Redis.
//!
//! - The command thread takes every command queued since its last write, writes them
//!   in one `write` (pipelining: under load, many messages per round trip), reads their
//!   replies in order, and hands the outcomes back.
//! - The fetch thread does the same for fetches (rooms' states, at most
//!   `--history-memory` bytes each) on a connection of its own, so that a large room's
//!   fetch never holds other rooms' publishes.
//! - The subscription thread (`link/subscription.rs`) SUBSCRIBEs to the nodes' channels
//!   (messages, moderation acts) and hands back every message it gets. It PINGs when nothing came for `PING_EVERY`, so a link that went
//!   silent (no reset: a stalled proxy, a dead host) is noticed within `REPLY_TIMEOUT`.
//!
//! All reconnect with a backoff (50 ms doubling to 2 s) and say when they are up or
//! down; a command whose connection fails, or gets no reply for `REPLY_TIMEOUT`, is
//! answered as failed, never dropped. Each batch of events ends with a `Waker::wake`,
//! so the loop picks them up at once.

use std::io::{self, BufWriter, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{info, warn};
use mio::Waker;

use super::resp::{self, Reply};
use super::{Command, Event, Fetched, Message, Settings};
use scripts::{FETCH, FORGET, HEARTBEAT, LEAVE, PRESENCE, PUBLISH, TOUCH};
use subscription::subscription_thread;

mod presence;
mod scripts;
mod subscription;

const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// A Redis that sends nothing for this long is taken as gone (a pause shorter than
/// this only delays the replies; a longer one fails the publishes waiting: refused).
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(3);
/// Messages per piece of a room's fetch (each piece is one XREVRANGE: Redis serves
/// other connections between pieces).
const FETCH_PIECE: usize = 16;
/// The subscription PINGs when it heard nothing for this long.
pub const PING_EVERY: Duration = Duration::from_secs(1);

/// The channel every node subscribes to (pub/sub ignores databases: the number keeps
/// deployments on different databases apart).
pub fn channel(settings: &Settings) -> String {
    format!("mioket:{}:messages", settings.url.db)
}

/// The channel of moderation acts (`Command::Moderate`), which every node subscribes to too.
pub fn control_channel(settings: &Settings) -> String {
    format!("mioket:{}:control", settings.url.db)
}

fn meta_key(room: &str) -> Vec<u8> {
    format!("mioket:{{{room}}}:meta").into_bytes()
}

fn stream_key(room: &str) -> Vec<u8> {
    format!("mioket:{{{room}}}:stream").into_bytes()
}

/// A publish id's record in its room (`--dedup-window`).
fn id_key(room: &str, id: &str) -> Vec<u8> {
    format!("mioket:{{{room}}}:id:{id}").into_bytes()
}

/// The loop's end of the link.
pub struct Link {
    commands: Sender<Vec<Command>>,
    fetches: Sender<Vec<Command>>,
    pub events: Receiver<Event>,
}

impl Link {
    /// Starts the three threads. `waker` wakes the loop when events are there.
    pub fn start(settings: Settings, waker: Arc<Waker>) -> io::Result<Link> {
        let (commands, command_rx) = mpsc::channel();
        let (fetches, fetch_rx) = mpsc::channel();
        let (event_tx, events) = mpsc::channel();
        let pokes = vec![commands.clone(), fetches.clone()];
        for (name, rx, fetches) in [("redis-commands", command_rx, false), ("redis-fetches", fetch_rx, true)] {
            let (s, tx, w, pokes) = (settings.clone(), event_tx.clone(), Arc::clone(&waker), pokes.clone());
            std::thread::Builder::new()
                .name(name.into())
                .spawn(move || CommandThread { settings: s, rx, events: tx, waker: w, fetches, pokes }.run())?;
        }
        std::thread::Builder::new()
            .name("redis-subscription".into())
            .spawn(move || subscription_thread(&settings, &event_tx, &waker, &pokes))?;
        Ok(Link { commands, fetches, events })
    }

    /// Hands a batch of commands to the threads: fetches to the fetch thread, the rest
    /// to the command thread.
    pub fn send(&self, batch: Vec<Command>) {
        let (fetches, commands): (Vec<Command>, Vec<Command>) =
            batch.into_iter().partition(|c| matches!(c, Command::Fetch { .. }));
        if !fetches.is_empty() {
            let _ = self.fetches.send(fetches);
        }
        if !commands.is_empty() {
            let _ = self.commands.send(commands);
        }
    }
}

fn connect(settings: &Settings) -> io::Result<TcpStream> {
    let url = &settings.url;
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
    for addr in (url.host.as_str(), url.port).to_socket_addrs()? {
        match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
            Ok(stream) => {
                stream.set_nodelay(true)?;
                stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
                return Ok(stream);
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Reads whole replies from a blocking stream, in time linear in their size: the
/// scanner goes on where it stopped, reads grow with the reply, each reply is parsed
/// (copied) once.
struct Replies {
    stream: TcpStream,
    buf: Vec<u8>,
    start: usize,
    scanner: resp::Scanner,
}

impl Replies {
    fn new(stream: TcpStream) -> Replies {
        Replies { stream, buf: Vec::new(), start: 0, scanner: resp::Scanner::default() }
    }
}

impl Replies {
    /// Every whole reply the buffer holds, reading first when it holds none.
    fn batch(&mut self, out: &mut Vec<Reply>) -> io::Result<()> {
        out.push(self.next()?);
        loop {
            let malformed = || io::Error::new(io::ErrorKind::InvalidData, "malformed reply from Redis");
            match self.scanner.scan(&self.buf[self.start..]).map_err(|_| malformed())? {
                Some(end) => match resp::parse(&self.buf[self.start..self.start + end]) {
                    Ok(Some((reply, used))) if used == end => {
                        self.start += end;
                        out.push(reply);
                    }
                    _ => return Err(malformed()),
                },
                None => return Ok(()),
            }
        }
    }

    fn next(&mut self) -> io::Result<Reply> {
        let malformed = || io::Error::new(io::ErrorKind::InvalidData, "malformed reply from Redis");
        loop {
            if let Some(end) = self.scanner.scan(&self.buf[self.start..]).map_err(|_| malformed())? {
                let whole = &self.buf[self.start..self.start + end];
                let reply = match resp::parse(whole) {
                    Ok(Some((reply, used))) if used == end => reply,
                    _ => return Err(malformed()),
                };
                self.start += end;
                if self.start == self.buf.len() {
                    self.buf.clear();
                    self.start = 0;
                }
                return Ok(reply);
            }
            // The scanner's position is relative to `start`: moving the bytes keeps it.
            if self.start > 0 {
                self.buf.drain(..self.start);
                self.start = 0;
            }
            // Reads grow with what is already there (64 KiB to 16 MiB at a time).
            let len = self.buf.len();
            self.buf.resize(len + len.clamp(64 << 10, 16 << 20), 0);
            let n = loop {
                match self.stream.read(&mut self.buf[len..]) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    other => break other,
                }
            };
            self.buf.truncate(len + n.as_ref().copied().unwrap_or(0));
            match n {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
    }
}

fn command(out: &mut Vec<u8>, args: &[&[u8]]) {
    resp::encode_command(out, args.iter().copied());
}

fn expect_ok(reply: Reply) -> io::Result<Reply> {
    match reply {
        Reply::Error(e) => Err(io::Error::other(format!("Redis: {e}"))),
        other => Ok(other),
    }
}

struct CommandThread {
    settings: Settings,
    rx: Receiver<Vec<Command>>,
    events: Sender<Event>,
    waker: Arc<Waker>,
    /// Which connection this is, in the up/down events: commands, or fetches.
    fetches: bool,
    /// The command and fetch threads, poked when a connection is lost.
    pokes: Vec<Sender<Vec<Command>>>,
}

/// One connection was lost: the others check theirs at once (an empty batch makes them
/// PING), so that a Redis restarted quickly is not taken as up on a dead connection.
fn poke(pokes: &[Sender<Vec<Command>>]) {
    for p in pokes {
        let _ = p.send(Vec::new());
    }
}

struct Shas {
    publish: Vec<u8>,
    fetch: Vec<u8>,
    touch: Vec<u8>,
    presence: Vec<u8>,
    heartbeat: Vec<u8>,
    leave: Vec<u8>,
    forget: Vec<u8>,
}

impl CommandThread {
    fn emit(&self, events: impl IntoIterator<Item = Event>) -> bool {
        for event in events {
            if self.events.send(event).is_err() {
                return false;
            }
        }
        self.waker.wake().is_ok()
    }

    fn state(&self, up: bool) -> [Event; 1] {
        [if self.fetches { Event::Fetches(up) } else { Event::Commands(up) }]
    }

    fn run(self) {
        let mut backoff = BACKOFF_MIN;
        let mut was_up = None;
        loop {
            match self.open() {
                Ok((replies, shas)) => {
                    info!("backplane: connected to {}", self.settings.url);
                    backoff = BACKOFF_MIN;
                    was_up = Some(true);
                    if !self.emit(self.state(true)) {
                        return;
                    }
                    match self.serve(replies, &shas) {
                        Ok(()) => return,
                        Err(e) => {
                            warn!("backplane: lost the Redis connection: {e}");
                            poke(&self.pokes);
                        }
                    }
                    if !self.emit(self.state(false)) {
                        return;
                    }
                }
                Err(e) => {
                    if was_up != Some(false) {
                        warn!("backplane: cannot reach {}: {e}", self.settings.url);
                        was_up = Some(false);
                        if !self.emit(self.state(false)) {
                            return;
                        }
                    }
                }
            }
            // While waiting to reconnect, commands are answered as failed at once.
            let until = Instant::now() + backoff;
            backoff = (backoff * 2).min(BACKOFF_MAX);
            loop {
                let left = until.saturating_duration_since(Instant::now());
                match self.rx.recv_timeout(left) {
                    Ok(batch) => {
                        if !self.emit(batch.iter().filter_map(failed)) {
                            return;
                        }
                    }
                    Err(RecvTimeoutError::Timeout) => break,
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
        }
    }

    fn open(&self) -> io::Result<(Replies, Shas)> {
        let stream = connect(&self.settings)?;
        let mut replies = Replies::new(stream.try_clone()?);
        let mut out = Vec::new();
        let db = self.settings.url.db.to_string();
        command(&mut out, &[b"SELECT", db.as_bytes()]);
        for script in [PUBLISH, FETCH, TOUCH, PRESENCE, HEARTBEAT, LEAVE, FORGET] {
            command(&mut out, &[b"SCRIPT", b"LOAD", script.as_bytes()]);
        }
        command(&mut out, &[b"CONFIG", b"GET", b"maxmemory-policy"]);
        (&stream).write_all(&out)?;
        expect_ok(replies.next()?)?;
        let mut sha = || -> io::Result<Vec<u8>> {
            expect_ok(replies.next()?)?.as_bytes().map(<[u8]>::to_vec).ok_or_else(|| io::Error::other("no script sha"))
        };
        let shas = Shas {
            publish: sha()?,
            fetch: sha()?,
            touch: sha()?,
            presence: sha()?,
            heartbeat: sha()?,
            leave: sha()?,
            forget: sha()?,
        };
        // A policy that evicts keys destroys rooms (volatile-* ones too: rooms have
        // TTLs). CONFIG may be refused (a hosted Redis): then nothing is known.
        let policy = replies.next()?;
        let policy =
            policy.as_array().and_then(|kv| kv.get(1)?.as_bytes()).map(|p| String::from_utf8_lossy(p).into_owned());
        if !self.fetches {
            let evicting = policy.filter(|p| p != "noeviction");
            if !self.emit([Event::Evicting(evicting)]) {
                return Err(io::Error::other("the loop is gone"));
            }
        }
        Ok((replies, shas))
    }

    /// A room's state: its epoch and seq (the fetch script), then its kept messages
    /// after `since`, newest first in pieces until `--history-memory` bytes (at least
    /// one message), given oldest first. `None`: Redis's answer was not one.
    fn fetch(
        &self,
        writer: &mut BufWriter<TcpStream>,
        replies: &mut Replies,
        shas: &Shas,
        room: &str,
        since: u64,
    ) -> io::Result<Option<Fetched>> {
        let (meta, stream, presence) = (meta_key(room), stream_key(room), presence::presence_key(room));
        let (epoch, since) = (super::random_hex(), since.to_string());
        let history = self.settings.history.to_string();
        let ttl = self.settings.ttl.as_millis().max(1000).to_string();
        let mut out = Vec::new();
        let args: [&[u8]; 10] = [
            b"EVALSHA",
            &shas.fetch,
            b"3",
            &meta,
            &stream,
            &presence,
            epoch.as_bytes(),
            since.as_bytes(),
            history.as_bytes(),
            ttl.as_bytes(),
        ];
        command(&mut out, &args);
        writer.write_all(&out)?;
        writer.flush()?;
        let head = expect_ok(replies.next()?)?;
        let Some((epoch, seq, start)) = parse_head(&head) else { return Ok(None) };
        let presence =
            flat(head.as_array().and_then(|items| items.get(3))).map_or(Vec::new(), |h| presence::parse_hash(&h));
        let (mut newest, mut bytes, mut top) = (Vec::new(), 0, seq);
        let piece = FETCH_PIECE.to_string();
        'pieces: while start > 0 && top >= start {
            out.clear();
            let (from, to) = (format!("{top}-0"), format!("{start}-0"));
            command(&mut out, &[b"XREVRANGE", &stream, from.as_bytes(), to.as_bytes(), b"COUNT", piece.as_bytes()]);
            writer.write_all(&out)?;
            writer.flush()?;
            let Some(entries) = parse_entries(&expect_ok(replies.next()?)?) else { return Ok(None) };
            let last = entries.len() < FETCH_PIECE;
            for message in entries {
                if message.seq == 0 || message.seq > top {
                    return Ok(None);
                }
                if !newest.is_empty() && bytes + message.payload.len() > self.settings.history_bytes {
                    break 'pieces;
                }
                bytes += message.payload.len();
                top = message.seq - 1;
                newest.push(message);
            }
            if last {
                break;
            }
        }
        newest.reverse();
        Ok(Some(Fetched { epoch, seq, entries: newest, presence }))
    }

    /// Pipelines until the connection fails (`Err`) or the loop is gone (`Ok`).
    fn serve(&self, mut replies: Replies, shas: &Shas) -> io::Result<()> {
        let mut writer = BufWriter::with_capacity(256 * 1024, replies.stream.try_clone()?);
        let mut out = Vec::new();
        let channel = channel(&self.settings);
        let control = control_channel(&self.settings);
        let history = self.settings.history.to_string();
        let history_bytes = self.settings.history_bytes.to_string();
        let ttl = self.settings.ttl.as_millis().max(1000).to_string();
        let window = self.settings.dedup_window.as_millis().max(1).to_string();
        loop {
            // An idle connection is checked with a PING (and at once when another was
            // lost: a poke): a dead one is noticed before the next command needs it.
            let mut batch = match self.rx.recv_timeout(PING_EVERY) {
                Ok(batch) => batch,
                Err(RecvTimeoutError::Timeout) => Vec::new(),
                Err(RecvTimeoutError::Disconnected) => return Ok(()),
            };
            loop {
                match self.rx.try_recv() {
                    Ok(more) => batch.extend(more),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return Ok(()),
                }
            }
            if batch.is_empty() {
                out.clear();
                command(&mut out, &[b"PING"]);
                writer.write_all(&out)?;
                writer.flush()?;
                expect_ok(replies.next()?)?;
                continue;
            }
            if self.fetches {
                // One room at a time, each read in pieces.
                for (i, c) in batch.iter().enumerate() {
                    let Command::Fetch { req, room, since } = c else { continue };
                    match self.fetch(&mut writer, &mut replies, shas, room, *since) {
                        Ok(fetched) => {
                            if !self.emit([Event::Fetched { req: *req, result: fetched.ok_or(()) }]) {
                                return Ok(());
                            }
                        }
                        Err(e) => {
                            self.emit(batch[i..].iter().filter_map(failed));
                            return Err(e);
                        }
                    }
                }
                continue;
            }
            let started = Instant::now();
            for c in &batch {
                out.clear();
                match c {
                    Command::Publish { room, binary, payload, origin, from, id, .. } => {
                        let epoch = super::random_hex();
                        let kind: &[u8] = if *binary { b"b" } else { b"t" };
                        let (meta, stream) = (meta_key(room), stream_key(room));
                        // A publish with an id names its record too (a third key).
                        let record = id.as_deref().map(|id| id_key(room, id));
                        let count: &[u8] = if record.is_some() { b"3" } else { b"2" };
                        let mut args: Vec<&[u8]> = vec![b"EVALSHA", &shas.publish, count, &meta, &stream];
                        args.extend(record.as_deref());
                        args.extend([
                            epoch.as_bytes(),
                            history.as_bytes(),
                            ttl.as_bytes(),
                            channel.as_bytes(),
                            origin.as_bytes(),
                            kind,
                            payload,
                            room.as_bytes(),
                            history_bytes.as_bytes(),
                            from.as_deref().unwrap_or_default().as_bytes(),
                            window.as_bytes(),
                        ]);
                        command(&mut out, &args);
                    }
                    // Fetches go to the fetch thread (`Link::send`); a stray one
                    // keeps the replies in step and is answered as failed.
                    Command::Fetch { .. } => command(&mut out, &[b"PING"]),
                    Command::Moderate(act) => {
                        let json = serde_json::to_vec(act).unwrap_or_default();
                        command(&mut out, &[b"PUBLISH", control.as_bytes(), &json]);
                    }
                    Command::Touch { rooms } => {
                        let keys: Vec<Vec<u8>> = rooms
                            .iter()
                            .flat_map(|r| [meta_key(r), stream_key(r), presence::presence_key(r)])
                            .collect();
                        let count = keys.len().to_string();
                        let mut args: Vec<&[u8]> = vec![b"EVALSHA", &shas.touch, count.as_bytes()];
                        args.extend(keys.iter().map(Vec::as_slice));
                        args.push(ttl.as_bytes());
                        command(&mut out, &args);
                    }
                    other => {
                        if let Some(args) = presence::args(other, shas, &self.settings, &channel, &ttl) {
                            command(&mut out, &args.iter().map(Vec::as_slice).collect::<Vec<_>>());
                        }
                    }
                }
                writer.write_all(&out)?;
            }
            let written = writer.flush();
            let mut events = Vec::with_capacity(batch.len() + 1);
            let mut result = written;
            let mut answered = 0;
            if result.is_ok() {
                for c in &batch {
                    match replies.next() {
                        Ok(reply) => {
                            events.extend(outcome(c, Some(reply)));
                            answered += 1;
                        }
                        Err(e) => {
                            result = Err(e);
                            break;
                        }
                    }
                }
            }
            // Whatever got no reply is answered as failed: never dropped quietly.
            events.extend(batch[answered..].iter().filter_map(failed));
            if result.is_ok() {
                events.push(Event::RoundTrip { commands: batch.len(), took: started.elapsed() });
            }
            if !self.emit(events) {
                return Ok(());
            }
            result?;
        }
    }
}

fn failed(c: &Command) -> Option<Event> {
    outcome(c, None)
}

fn outcome(c: &Command, reply: Option<Reply>) -> Option<Event> {
    match c {
        Command::Publish { req, room, .. } => {
            let result = reply.as_ref().and_then(parse_published);
            let duplicate = result.as_ref().is_some_and(|&(_, _, duplicate)| duplicate);
            let result = result.map(|(epoch, seq, _)| (epoch, seq)).ok_or(());
            Some(Event::Published { req: *req, room: room.clone(), result, duplicate })
        }
        // Fetches are read by `CommandThread::fetch`; this is their failure.
        Command::Fetch { req, .. } => Some(Event::Fetched { req: *req, result: Err(()) }),
        Command::Heartbeat { req, .. } => Some(Event::Nodes {
            req: *req,
            result: flat(reply.as_ref()).and_then(|r| presence::parse_registry(&r)).ok_or(()),
        }),
        Command::Leave { .. } => Some(Event::Left),
        Command::ReadPresence { req, .. } => Some(Event::PresenceRead {
            req: *req,
            result: flat(reply.as_ref()).map(|h| presence::parse_hash(&h)).ok_or(()),
        }),
        Command::Touch { .. } | Command::Moderate(_) | Command::Presence { .. } | Command::Forget { .. } => None,
    }
}

/// An array reply as byte strings (bulk strings, integers as their digits), for
/// link/presence.rs; `None` for anything else (an error, a nested array).
fn flat(reply: Option<&Reply>) -> Option<Vec<Vec<u8>>> {
    let item = |r: &Reply| match r {
        Reply::Integer(n) => Some(n.to_string().into_bytes()),
        other => other.as_bytes().map(<[u8]>::to_vec),
    };
    reply?.as_array()?.iter().map(item).collect()
}

/// The publish script's answer: the room's epoch, the seq, and whether it is an
/// earlier publish's (the id was published within the window: a third item, 1).
fn parse_published(reply: &Reply) -> Option<(String, u64, bool)> {
    let items = reply.as_array()?;
    let epoch = String::from_utf8(items.first()?.as_bytes()?.to_vec()).ok()?;
    let seq = u64::try_from(items.get(1)?.as_int()?).ok()?;
    Some((epoch, seq, items.get(2).and_then(Reply::as_int) == Some(1)))
}

/// The fetch script's answer: the room's epoch, seq and the first seq to read.
fn parse_head(reply: &Reply) -> Option<(String, u64, u64)> {
    let items = reply.as_array()?;
    let epoch = String::from_utf8(items.first()?.as_bytes()?.to_vec()).ok()?;
    let seq = u64::try_from(items.get(1)?.as_int()?).ok()?;
    let start = u64::try_from(items.get(2)?.as_int()?).ok()?;
    Some((epoch, seq, start))
}

/// Stream entries (an XRANGE's answer) as messages.
fn parse_entries(reply: &Reply) -> Option<Vec<Message>> {
    let mut entries = Vec::new();
    for entry in reply.as_array()? {
        let [id, fields] = entry.as_array()? else { return None };
        let id = std::str::from_utf8(id.as_bytes()?).ok()?;
        let seq = id.split_once('-')?.0.parse().ok()?;
        let fields = fields.as_array()?;
        let mut message = Message { seq, binary: false, payload: Vec::new(), origin: "".into(), from: None };
        for pair in fields.chunks(2) {
            let [name, value] = pair else { return None };
            let value = value.as_bytes()?;
            match name.as_bytes()? {
                b"k" => message.binary = value == b"b",
                b"o" => message.origin = String::from_utf8_lossy(value).into(),
                b"f" => message.from = Some(String::from_utf8_lossy(value).into()),
                b"d" => message.payload = value.to_vec(),
                _ => {}
            }
        }
        entries.push(message);
    }
    Some(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fetched_states_parse() {
        let entry = |id: &str, data: &str| {
            Reply::Array(vec![
                Reply::Bulk(id.into()),
                Reply::Array(vec![
                    Reply::Bulk(b"k".to_vec()),
                    Reply::Bulk(b"b".to_vec()),
                    Reply::Bulk(b"o".to_vec()),
                    Reply::Bulk(b"n:1".to_vec()),
                    Reply::Bulk(b"d".to_vec()),
                    Reply::Bulk(data.into()),
                ]),
            ])
        };
        let head = Reply::Array(vec![Reply::Bulk(b"e".to_vec()), Reply::Integer(3), Reply::Integer(2)]);
        assert_eq!(parse_head(&head), Some(("e".to_string(), 3, 2)));
        let entries = parse_entries(&Reply::Array(vec![entry("2-0", "x"), entry("3-0", "y")])).unwrap();
        assert_eq!(entries.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![2, 3]);
        assert!(entries[0].binary);
        // An entry written before `from` existed has none; a newer one keeps its `f`.
        assert_eq!(entries[0].from, None);
        let with_from = Reply::Array(vec![Reply::Array(vec![
            Reply::Bulk(b"4-0".to_vec()),
            Reply::Array(["k", "t", "o", "n:2", "f", "ada\n", "d", "z"].map(|b| Reply::Bulk(b.into())).to_vec()),
        ])]);
        assert_eq!(parse_entries(&with_from).unwrap()[0].from.as_deref(), Some("ada\n"));
    }
}
