//! The backplane's I/O: three threads with blocking connections (the `redis` crate's
//! sync API: TCP or TLS, AUTH and SELECT), so the event loop never waits for Redis.
//!
//! - The command thread takes every command queued since its last write, writes them
//!   in one `write` (pipelining: under load, many messages per round trip), reads their
//!   replies in order, and hands the outcomes back.
//! - The fetch thread does the same for fetches (rooms' states, at most
//!   `--history-memory` bytes each) on a connection of its own, so that a large room's
//!   fetch never holds other rooms' publishes.
//! - The subscription thread (`link/subscription.rs`) SUBSCRIBEs to the nodes' channels
//!   (messages, moderation acts) and hands back every message it gets. It checks the
//!   link when nothing came for `PING_EVERY`, so a link that went silent (no reset: a
//!   stalled proxy, a dead host) is noticed within `REPLY_TIMEOUT`.
//!
//! All reconnect with a backoff (50 ms doubling to 2 s) and say when they are up or
//! down; a command whose connection fails, or gets no reply for `REPLY_TIMEOUT`, is
//! answered as failed, never dropped. Each batch of events ends with a wake (`Wake`),
//! so the loop picks them up at once.

use std::collections::HashSet;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{info, warn};
use mio::Waker;
use redis::Value;

use super::{Command, Event, Fetched, Message, Settings};
use connect::{connect, merely_down};
use scripts::{FETCH, FORGET, HEARTBEAT, LEAVE, PRESENCE, PUBLISH, TOUCH};
use subscription::{subscription_thread, Change};

mod connect;
mod presence;
mod scripts;
mod shards;
mod subscription;

pub use shards::Links;

const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// A Redis that sends nothing for this long is taken as gone (a pause shorter than
/// this only delays the replies; a longer one fails the publishes waiting: refused).
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(3);
/// Messages per piece of a room's fetch (each piece is one XREVRANGE: Redis serves
/// other connections between pieces).
const FETCH_PIECE: usize = 16;
/// The subscription checks the link when it heard nothing for this long.
pub const PING_EVERY: Duration = Duration::from_secs(1);

/// A room's channel: its live lines, to the nodes that hold it. The room's hash tag
/// puts it on the room's slot (sharded pub/sub); pub/sub ignores databases, so the
/// number keeps deployments on different databases apart.
pub fn room_channel(settings: &Settings, room: &str) -> String {
    format!("mioket:{{{room}}}:{}:live", settings.url().db)
}

/// The channel of moderation acts (`Command::Moderate`), which every node subscribes to too.
pub fn control_channel(settings: &Settings) -> String {
    format!("mioket:{}:control", settings.url().db)
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
    /// Changes of the subscription's channel set.
    changes: Sender<Change>,
    /// The rooms whose channels the subscription listens to (asked for).
    listening: HashSet<Box<str>>,
    settings: Settings,
    events: Receiver<Event>,
    wake: Wake,
}

/// Wakes the loop when events wait for it, once until it takes them (`Link::events`):
/// the subscription hands messages on one by one, and a wake is a system call.
#[derive(Clone)]
struct Wake {
    waker: Arc<Waker>,
    /// A wake is under way and the loop has not taken the events yet.
    pending: Arc<AtomicBool>,
}

impl Wake {
    /// After sending events: false when the loop is gone.
    fn wake(&self) -> bool {
        // Seen set: the loop clears it later, then takes what was sent before.
        self.pending.swap(true, Ordering::SeqCst) || self.waker.wake().is_ok()
    }
}

impl Link {
    /// Starts the three threads. `waker` wakes the loop when events are there.
    pub fn start(settings: Settings, waker: Arc<Waker>) -> io::Result<Link> {
        // A Redis that answers but refuses (a wrong password, a TLS failure) will not
        // change its mind: the process ends, naming the address (never the password).
        if let Err(e) = connect(&settings, false) {
            if !merely_down(&e, settings.url().tls) {
                return Err(io::Error::other(format!("Redis at {} refused the connection: {e}", settings.url())));
            }
        }
        let wake = Wake { waker, pending: Arc::new(AtomicBool::new(false)) };
        let (commands, command_rx) = mpsc::channel();
        let (fetches, fetch_rx) = mpsc::channel();
        let (event_tx, events) = mpsc::channel();
        let (changes, change_rx) = mpsc::channel();
        let pokes = vec![commands.clone(), fetches.clone()];
        for (name, rx, fetches) in [("redis-commands", command_rx, false), ("redis-fetches", fetch_rx, true)] {
            let (s, tx, w, pokes) = (settings.clone(), event_tx.clone(), wake.clone(), pokes.clone());
            std::thread::Builder::new()
                .name(name.into())
                .spawn(move || CommandThread { settings: s, rx, events: tx, wake: w, fetches, pokes }.run())?;
        }
        let (w, s, to_fetch) = (wake.clone(), settings.clone(), fetches.clone());
        std::thread::Builder::new()
            .name("redis-subscription".into())
            .spawn(move || subscription_thread(&s, &change_rx, &to_fetch, &event_tx, &w, &pokes))?;
        Ok(Link { commands, fetches, changes, listening: HashSet::new(), settings, events, wake })
    }

    /// The events that wait (taken: the next one wakes the loop again).
    pub fn events(&self) -> std::sync::mpsc::TryIter<'_, Event> {
        self.wake.pending.store(false, Ordering::SeqCst);
        self.events.try_iter()
    }

    /// Hands a batch of commands to the threads: fetches to the fetch thread (through
    /// the subscription when a room's channel must be listened to first), unsubscribes
    /// to the subscription, the rest to the command thread.
    pub fn send(&mut self, batch: Vec<Command>) {
        let (mut fetches, mut commands, mut fresh) = (Vec::new(), Vec::new(), Vec::new());
        for c in batch {
            match c {
                Command::Fetch { ref room, .. } => {
                    if self.listening.insert(room.clone()) {
                        fresh.push(room_channel(&self.settings, room));
                    }
                    fetches.push(c);
                }
                Command::Unsubscribe { rooms } => {
                    let gone: Vec<String> = rooms
                        .iter()
                        .filter(|r| self.listening.remove(*r))
                        .map(|r| room_channel(&self.settings, r))
                        .collect();
                    if !gone.is_empty() {
                        let _ = self.changes.send(Change::Unsubscribe(gone));
                    }
                }
                other => commands.push(other),
            }
        }
        if !fresh.is_empty() {
            let _ = self.changes.send(Change::Subscribe { channels: fresh, then: fetches });
        } else if !fetches.is_empty() {
            let _ = self.fetches.send(fetches);
        }
        if !commands.is_empty() {
            let _ = self.commands.send(commands);
        }
    }
}

/// A reply that is Redis's error, as an error.
fn expect_ok(reply: Value) -> redis::RedisResult<Value> {
    match reply {
        Value::ServerError(e) => Err(e.into()),
        other => Ok(other),
    }
}

/// A `COMMAND INFO NAME` answer that knows the command.
fn has_command(reply: &Value) -> bool {
    array(reply).and_then(<[Value]>::first).is_some_and(|c| !matches!(c, Value::Nil | Value::ServerError(_)))
}

fn bytes(value: &Value) -> Option<&[u8]> {
    match value {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

fn int(value: &Value) -> Option<i64> {
    match value {
        Value::Int(n) => Some(*n),
        _ => None,
    }
}

fn array(value: &Value) -> Option<&[Value]> {
    match value {
        Value::Array(items) | Value::Set(items) => Some(items),
        _ => None,
    }
}

struct CommandThread {
    settings: Settings,
    rx: Receiver<Vec<Command>>,
    events: Sender<Event>,
    wake: Wake,
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
    /// Redis has sharded pub/sub (7.0 and later): rooms' lines go by SPUBLISH.
    sharded: bool,
}

impl CommandThread {
    fn emit(&self, events: impl IntoIterator<Item = Event>) -> bool {
        for event in events {
            if self.events.send(event).is_err() {
                return false;
            }
        }
        self.wake.wake()
    }

    fn state(&self, up: bool) -> [Event; 1] {
        [if self.fetches { Event::Fetches(up) } else { Event::Commands(up) }]
    }

    fn run(self) {
        let mut backoff = BACKOFF_MIN;
        let mut was_up = None;
        loop {
            match self.open() {
                Ok((mut con, shas)) => {
                    info!("backplane: connected to {}", self.settings.url());
                    backoff = BACKOFF_MIN;
                    was_up = Some(true);
                    if !self.emit(self.state(true)) {
                        return;
                    }
                    match self.serve(&mut con, &shas) {
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
                        warn!("backplane: cannot reach {}: {e}", self.settings.url());
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

    fn open(&self) -> redis::RedisResult<(redis::Connection, Shas)> {
        let mut con = connect(&self.settings, false)?;
        let mut out = Vec::new();
        for script in [PUBLISH, FETCH, TOUCH, PRESENCE, HEARTBEAT, LEAVE, FORGET] {
            redis::cmd("SCRIPT").arg("LOAD").arg(script).write_packed_command(&mut out);
        }
        redis::cmd("CONFIG").arg("GET").arg("maxmemory-policy").write_packed_command(&mut out);
        redis::cmd("COMMAND").arg("INFO").arg("SPUBLISH").write_packed_command(&mut out);
        con.send_packed_command(&out)?;
        let mut sha = || -> redis::RedisResult<Vec<u8>> {
            let reply = expect_ok(con.recv_response()?)?;
            bytes(&reply).map(<[u8]>::to_vec).ok_or_else(|| io::Error::other("no script sha").into())
        };
        let (publish, fetch, touch) = (sha()?, sha()?, sha()?);
        let (presence, heartbeat, leave, forget) = (sha()?, sha()?, sha()?, sha()?);
        // A policy that evicts keys destroys rooms (volatile-* ones too: rooms have
        // TTLs). CONFIG may be refused (a hosted Redis): then nothing is known.
        let policy = con.recv_response()?;
        let policy = match &policy {
            Value::Array(kv) => kv.get(1).and_then(bytes),
            Value::Map(kv) => kv.first().and_then(|(_, v)| bytes(v)),
            _ => None,
        }
        .map(|p| String::from_utf8_lossy(p).into_owned());
        let sharded = has_command(&con.recv_response()?);
        let shas = Shas { publish, fetch, touch, presence, heartbeat, leave, forget, sharded };
        if !self.fetches {
            let evicting = policy.filter(|p| p != "noeviction");
            if !self.emit([Event::Evicting(evicting)]) {
                return Err(io::Error::other("the loop is gone").into());
            }
        }
        Ok((con, shas))
    }

    /// A room's state: its epoch and seq (the fetch script), then its kept messages
    /// after `since`, newest first in pieces until `--history-memory` bytes (at least
    /// one message), given oldest first. `None`: Redis's answer was not one.
    fn fetch(
        &self,
        con: &mut redis::Connection,
        shas: &Shas,
        room: &str,
        since: u64,
    ) -> redis::RedisResult<Option<Fetched>> {
        let (meta, stream, presence) = (meta_key(room), stream_key(room), presence::presence_key(room));
        let ttl = self.settings.ttl.as_millis().max(1000) as u64;
        let mut script = redis::cmd("EVALSHA");
        script.arg(&shas.fetch).arg(3).arg(&meta).arg(&stream).arg(&presence);
        script.arg(super::random_hex()).arg(since).arg(self.settings.history).arg(ttl);
        con.send_packed_command(&script.get_packed_command())?;
        let head = expect_ok(con.recv_response()?)?;
        let Some((epoch, seq, start)) = parse_head(&head) else { return Ok(None) };
        let presence =
            flat(array(&head).and_then(|items| items.get(3))).map_or(Vec::new(), |h| presence::parse_hash(&h));
        let (mut newest, mut bytes, mut top) = (Vec::new(), 0, seq);
        'pieces: while start > 0 && top >= start {
            let mut range = redis::cmd("XREVRANGE");
            range.arg(&stream).arg(format!("{top}-0")).arg(format!("{start}-0")).arg("COUNT").arg(FETCH_PIECE);
            con.send_packed_command(&range.get_packed_command())?;
            let Some(entries) = parse_entries(&expect_ok(con.recv_response()?)?) else { return Ok(None) };
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
    fn serve(&self, con: &mut redis::Connection, shas: &Shas) -> redis::RedisResult<()> {
        let mut out = Vec::new();
        let ping = redis::cmd("PING").get_packed_command();
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
                con.send_packed_command(&ping)?;
                expect_ok(con.recv_response()?)?;
                continue;
            }
            if self.fetches {
                // One room at a time, each read in pieces.
                for (i, c) in batch.iter().enumerate() {
                    let Command::Fetch { req, room, since } = c else { continue };
                    match self.fetch(con, shas, room, *since) {
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
            out.clear();
            for c in &batch {
                self.pack(&mut out, c, shas);
            }
            let mut result = con.send_packed_command(&out);
            let mut events = Vec::with_capacity(batch.len() + 1);
            let mut answered = 0;
            if result.is_ok() {
                for c in &batch {
                    match con.recv_response() {
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

    /// Appends a command's Redis command to `out`.
    fn pack(&self, out: &mut Vec<u8>, c: &Command, shas: &Shas) {
        let settings = &self.settings;
        let ttl = settings.ttl.as_millis().max(1000) as u64;
        match c {
            Command::Publish { room, binary, payload, origin, from, id, .. } => {
                let kind = if *binary { "b" } else { "t" };
                let mut script = redis::cmd("EVALSHA");
                // A publish with an id names its record too (a third key).
                let keys = if id.is_some() { 3 } else { 2 };
                script.arg(&shas.publish).arg(keys).arg(meta_key(room)).arg(stream_key(room));
                if let Some(id) = id {
                    script.arg(id_key(room, id));
                }
                let channel = room_channel(settings, room);
                script.arg(super::random_hex()).arg(settings.history).arg(ttl).arg(channel);
                script.arg(origin.as_bytes()).arg(kind).arg(payload.as_slice()).arg(room.as_bytes());
                script.arg(settings.history_bytes).arg(from.as_deref().unwrap_or_default());
                let window = settings.dedup_window.as_millis().max(1) as u64;
                script.arg(window).arg(if shas.sharded { "SPUBLISH" } else { "PUBLISH" });
                script.write_packed_command(out);
            }
            // Fetches go to the fetch thread and unsubscribes to the subscription
            // (`Link::send`); a stray one keeps the replies in step.
            Command::Fetch { .. } | Command::Unsubscribe { .. } => redis::cmd("PING").write_packed_command(out),
            Command::Moderate(act) => {
                let json = serde_json::to_vec(act).unwrap_or_default();
                redis::cmd("PUBLISH").arg(control_channel(settings)).arg(json).write_packed_command(out);
            }
            Command::Touch { rooms } => {
                let mut script = redis::cmd("EVALSHA");
                script.arg(&shas.touch).arg(rooms.len() * 3);
                for room in rooms {
                    script.arg(meta_key(room)).arg(stream_key(room)).arg(presence::presence_key(room));
                }
                script.arg(ttl).write_packed_command(out);
            }
            other => {
                if let Some(args) = presence::args(other, shas, settings, &ttl.to_string()) {
                    let mut c = redis::cmd(std::str::from_utf8(&args[0]).unwrap_or("PING"));
                    for arg in &args[1..] {
                        c.arg(arg.as_slice());
                    }
                    c.write_packed_command(out);
                }
            }
        }
    }
}

fn failed(c: &Command) -> Option<Event> {
    outcome(c, None)
}

fn outcome(c: &Command, reply: Option<Value>) -> Option<Event> {
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
        Command::Touch { .. }
        | Command::Moderate(_)
        | Command::Unsubscribe { .. }
        | Command::Presence { .. }
        | Command::Forget { .. } => None,
    }
}

/// The publish script's answer: the room's epoch, the seq, and whether it is an
/// earlier publish's (the id was published within the window: a third item, 1).
fn parse_published(reply: &Value) -> Option<(String, u64, bool)> {
    let items = array(reply)?;
    let epoch = String::from_utf8(bytes(items.first()?)?.to_vec()).ok()?;
    let seq = u64::try_from(int(items.get(1)?)?).ok()?;
    Some((epoch, seq, items.get(2).and_then(int) == Some(1)))
}

/// An array reply as byte strings (bulk strings, integers as their digits), for
/// link/presence.rs; `None` for anything else (an error, a nested array).
fn flat(reply: Option<&Value>) -> Option<Vec<Vec<u8>>> {
    let item = |r: &Value| match r {
        Value::Int(n) => Some(n.to_string().into_bytes()),
        other => bytes(other).map(<[u8]>::to_vec),
    };
    array(reply?)?.iter().map(item).collect()
}

/// The fetch script's answer: the room's epoch, seq and the first seq to read.
fn parse_head(reply: &Value) -> Option<(String, u64, u64)> {
    let items = array(reply)?;
    let epoch = String::from_utf8(bytes(items.first()?)?.to_vec()).ok()?;
    let seq = u64::try_from(int(items.get(1)?)?).ok()?;
    let start = u64::try_from(int(items.get(2)?)?).ok()?;
    Some((epoch, seq, start))
}

/// Stream entries (an XRANGE's answer) as messages.
fn parse_entries(reply: &Value) -> Option<Vec<Message>> {
    let mut entries = Vec::new();
    for entry in array(reply)? {
        let [id, fields] = array(entry)? else { return None };
        let id = std::str::from_utf8(bytes(id)?).ok()?;
        let seq = id.split_once('-')?.0.parse().ok()?;
        let fields = array(fields)?;
        let mut message = Message { seq, binary: false, payload: Vec::new(), origin: "".into(), from: None };
        for pair in fields.chunks(2) {
            let [name, value] = pair else { return None };
            let value = bytes(value)?;
            match bytes(name)? {
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
            Value::Array(vec![
                Value::BulkString(id.into()),
                Value::Array(vec![
                    Value::BulkString(b"k".to_vec()),
                    Value::BulkString(b"b".to_vec()),
                    Value::BulkString(b"o".to_vec()),
                    Value::BulkString(b"n:1".to_vec()),
                    Value::BulkString(b"d".to_vec()),
                    Value::BulkString(data.into()),
                ]),
            ])
        };
        let head = Value::Array(vec![Value::BulkString(b"e".to_vec()), Value::Int(3), Value::Int(2)]);
        assert_eq!(parse_head(&head), Some(("e".to_string(), 3, 2)));
        let entries = parse_entries(&Value::Array(vec![entry("2-0", "x"), entry("3-0", "y")])).unwrap();
        assert_eq!(entries.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![2, 3]);
        assert!(entries[0].binary);
        // An entry written before `from` existed has none; a newer one keeps its `f`.
        assert_eq!(entries[0].from, None);
        let with_from = Value::Array(vec![Value::Array(vec![
            Value::BulkString(b"4-0".to_vec()),
            Value::Array(
                ["k", "t", "o", "n:2", "f", "ada\n", "d", "z"]
                    .map(|b| Value::BulkString(b.as_bytes().to_vec()))
                    .to_vec(),
            ),
        ])]);
        assert_eq!(parse_entries(&with_from).unwrap()[0].from.as_deref(), Some("ada\n"));
    }
}
