//! The backplane's I/O: two threads with blocking sockets, so the event loop never
//! waits for Redis.
//!
//! - The command thread takes every command queued since its last write, writes them
//!   in one `write` (pipelining: under load, many messages per round trip), reads their
//!   replies in order, and hands the outcomes back.
//! - The subscription thread SUBSCRIBEs to the nodes' channel and hands back every
//!   message it gets.
//!
//! Both reconnect with a backoff (50 ms doubling to 2 s) and say when they are up or
//! down; a command whose connection fails is answered as failed, never dropped. Each
//! batch of events ends with a `Waker::wake`, so the loop picks them up at once.

use std::io::{self, BufWriter, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{info, warn};
use mio::Waker;

use super::resp::{self, Reply};
use super::{Command, Event, Fetched, Message, Settings};

const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// A Redis that answers nothing for this long is taken as gone (a pause shorter than
/// this, such as a SIGSTOP of a few seconds, only delays the replies).
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// Numbers a message, keeps it in the room's stream and tells every node, atomically.
/// KEYS: meta hash, stream. ARGV: epoch offered, history, ttl ms, channel, origin,
/// kind (t/b), payload, room. The stream's ids are `seq-0`, so XRANGE reads by seq.
const PUBLISH: &str = r"
if redis.call('HSETNX', KEYS[1], 'epoch', ARGV[1]) == 1 then redis.call('DEL', KEYS[2]) end
local epoch = redis.call('HGET', KEYS[1], 'epoch')
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
if tonumber(ARGV[2]) > 0 then
  redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[2], seq .. '-0', 'k', ARGV[6], 'o', ARGV[5], 'd', ARGV[7])
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PUBLISH', ARGV[4], ARGV[8] .. '\n' .. epoch .. '\n' .. seq .. '\n' .. ARGV[5] .. '\n' .. ARGV[6] .. ARGV[7])
return {epoch, seq}
";

/// A room's epoch (made with the one offered if the room is new) and seq, and its
/// kept messages after `since`. KEYS: meta hash, stream. ARGV: epoch offered, since,
/// history, ttl ms.
const FETCH: &str = r"
if redis.call('HSETNX', KEYS[1], 'epoch', ARGV[1]) == 1 then redis.call('DEL', KEYS[2]) end
local epoch = redis.call('HGET', KEYS[1], 'epoch')
local seq = tonumber(redis.call('HGET', KEYS[1], 'seq') or '0')
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
local start = math.max(tonumber(ARGV[2]) + 1, seq - tonumber(ARGV[3]) + 1)
local entries = {}
if tonumber(ARGV[3]) > 0 and start <= seq then
  entries = redis.call('XRANGE', KEYS[2], start .. '-0', '+')
end
return {epoch, seq, entries}
";

/// Keeps rooms alive for another TTL. KEYS: the rooms' keys. ARGV: ttl ms.
const TOUCH: &str = r"
for _, key in ipairs(KEYS) do redis.call('PEXPIRE', key, ARGV[1]) end
return #KEYS
";

/// The channel every node subscribes to (pub/sub ignores databases: the number keeps
/// deployments on different databases apart).
pub fn channel(settings: &Settings) -> String {
    format!("mioket:{}:messages", settings.url.db)
}

fn meta_key(room: &str) -> Vec<u8> {
    format!("mioket:{{{room}}}:meta").into_bytes()
}

fn stream_key(room: &str) -> Vec<u8> {
    format!("mioket:{{{room}}}:stream").into_bytes()
}

/// The loop's end of the link.
pub struct Link {
    commands: Sender<Vec<Command>>,
    pub events: Receiver<Event>,
}

impl Link {
    /// Starts both threads. `waker` wakes the loop when events are there.
    pub fn start(settings: Settings, waker: Arc<Waker>) -> io::Result<Link> {
        let (commands, command_rx) = mpsc::channel();
        let (event_tx, events) = mpsc::channel();
        let (s, tx, w) = (settings.clone(), event_tx.clone(), Arc::clone(&waker));
        std::thread::Builder::new()
            .name("redis-commands".into())
            .spawn(move || CommandThread { settings: s, rx: command_rx, events: tx, waker: w }.run())?;
        std::thread::Builder::new()
            .name("redis-subscription".into())
            .spawn(move || subscription_thread(&settings, &event_tx, &waker))?;
        Ok(Link { commands, events })
    }

    /// Hands a batch of commands to the command thread.
    pub fn send(&self, batch: Vec<Command>) {
        let _ = self.commands.send(batch);
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

/// Reads whole replies from a blocking stream.
struct Replies {
    stream: TcpStream,
    buf: Vec<u8>,
    start: usize,
}

impl Replies {
    /// Every whole reply the buffer holds, reading first when it holds none.
    fn batch(&mut self, out: &mut Vec<Reply>) -> io::Result<()> {
        out.push(self.next()?);
        loop {
            match resp::parse(&self.buf[self.start..]) {
                Ok(Some((reply, used))) => {
                    self.start += used;
                    out.push(reply);
                }
                Ok(None) => return Ok(()),
                Err(_) => return Err(io::Error::new(io::ErrorKind::InvalidData, "malformed reply from Redis")),
            }
        }
    }

    fn next(&mut self) -> io::Result<Reply> {
        loop {
            match resp::parse(&self.buf[self.start..]) {
                Ok(Some((reply, used))) => {
                    self.start += used;
                    if self.start == self.buf.len() {
                        self.buf.clear();
                        self.start = 0;
                    }
                    return Ok(reply);
                }
                Ok(None) => {}
                Err(_) => return Err(io::Error::new(io::ErrorKind::InvalidData, "malformed reply from Redis")),
            }
            if self.start > 0 {
                self.buf.drain(..self.start);
                self.start = 0;
            }
            let len = self.buf.len();
            self.buf.resize(len + 64 * 1024, 0);
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
}

struct Shas {
    publish: Vec<u8>,
    fetch: Vec<u8>,
    touch: Vec<u8>,
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

    fn run(self) {
        let mut backoff = BACKOFF_MIN;
        let mut was_up = None;
        loop {
            match self.open() {
                Ok((replies, shas)) => {
                    info!("backplane: connected to {}", self.settings.url);
                    backoff = BACKOFF_MIN;
                    was_up = Some(true);
                    if !self.emit([Event::Commands(true)]) {
                        return;
                    }
                    match self.serve(replies, &shas) {
                        Ok(()) => return,
                        Err(e) => warn!("backplane: lost the Redis connection: {e}"),
                    }
                    if !self.emit([Event::Commands(false)]) {
                        return;
                    }
                }
                Err(e) => {
                    if was_up != Some(false) {
                        warn!("backplane: cannot reach {}: {e}", self.settings.url);
                        was_up = Some(false);
                        if !self.emit([Event::Commands(false)]) {
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
        let mut replies = Replies { stream: stream.try_clone()?, buf: Vec::new(), start: 0 };
        let mut out = Vec::new();
        let db = self.settings.url.db.to_string();
        command(&mut out, &[b"SELECT", db.as_bytes()]);
        for script in [PUBLISH, FETCH, TOUCH] {
            command(&mut out, &[b"SCRIPT", b"LOAD", script.as_bytes()]);
        }
        (&stream).write_all(&out)?;
        expect_ok(replies.next()?)?;
        let mut sha = || -> io::Result<Vec<u8>> {
            expect_ok(replies.next()?)?.as_bytes().map(<[u8]>::to_vec).ok_or_else(|| io::Error::other("no script sha"))
        };
        let shas = Shas { publish: sha()?, fetch: sha()?, touch: sha()? };
        Ok((replies, shas))
    }

    /// Pipelines until the connection fails (`Err`) or the loop is gone (`Ok`).
    fn serve(&self, mut replies: Replies, shas: &Shas) -> io::Result<()> {
        let mut writer = BufWriter::with_capacity(256 * 1024, replies.stream.try_clone()?);
        let mut out = Vec::new();
        let channel = channel(&self.settings);
        let history = self.settings.history.to_string();
        let ttl = self.settings.ttl.as_millis().max(1000).to_string();
        loop {
            let Ok(mut batch) = self.rx.recv() else { return Ok(()) };
            loop {
                match self.rx.try_recv() {
                    Ok(more) => batch.extend(more),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return Ok(()),
                }
            }
            let started = Instant::now();
            for c in &batch {
                out.clear();
                match c {
                    Command::Publish { room, binary, payload, origin, .. } => {
                        let epoch = super::random_hex();
                        let kind: &[u8] = if *binary { b"b" } else { b"t" };
                        command(
                            &mut out,
                            &[
                                b"EVALSHA",
                                &shas.publish,
                                b"2",
                                &meta_key(room),
                                &stream_key(room),
                                epoch.as_bytes(),
                                history.as_bytes(),
                                ttl.as_bytes(),
                                channel.as_bytes(),
                                origin.as_bytes(),
                                kind,
                                payload,
                                room.as_bytes(),
                            ],
                        );
                    }
                    Command::Fetch { room, since, .. } => {
                        let epoch = super::random_hex();
                        let since = since.to_string();
                        command(
                            &mut out,
                            &[
                                b"EVALSHA",
                                &shas.fetch,
                                b"2",
                                &meta_key(room),
                                &stream_key(room),
                                epoch.as_bytes(),
                                since.as_bytes(),
                                history.as_bytes(),
                                ttl.as_bytes(),
                            ],
                        );
                    }
                    Command::Touch { rooms } => {
                        let keys: Vec<Vec<u8>> = rooms.iter().flat_map(|r| [meta_key(r), stream_key(r)]).collect();
                        let count = keys.len().to_string();
                        let mut args: Vec<&[u8]> = vec![b"EVALSHA", &shas.touch, count.as_bytes()];
                        args.extend(keys.iter().map(Vec::as_slice));
                        args.push(ttl.as_bytes());
                        command(&mut out, &args);
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
        Command::Publish { req, .. } => {
            let result = reply.and_then(|r| {
                let items = r.as_array()?;
                let epoch = String::from_utf8(items.first()?.as_bytes()?.to_vec()).ok()?;
                let seq = u64::try_from(items.get(1)?.as_int()?).ok()?;
                Some((epoch, seq))
            });
            Some(Event::Published { req: *req, result: result.ok_or(()) })
        }
        Command::Fetch { req, .. } => {
            let result = reply.and_then(|r| parse_fetched(&r));
            Some(Event::Fetched { req: *req, result: result.ok_or(()) })
        }
        Command::Touch { .. } => None,
    }
}

fn parse_fetched(reply: &Reply) -> Option<Fetched> {
    let items = reply.as_array()?;
    let epoch = String::from_utf8(items.first()?.as_bytes()?.to_vec()).ok()?;
    let seq = u64::try_from(items.get(1)?.as_int()?).ok()?;
    let mut entries = Vec::new();
    for entry in items.get(2)?.as_array()? {
        let [id, fields] = entry.as_array()? else { return None };
        let id = std::str::from_utf8(id.as_bytes()?).ok()?;
        let seq = id.split_once('-')?.0.parse().ok()?;
        let fields = fields.as_array()?;
        let mut message = Message { seq, binary: false, payload: Vec::new(), origin: "".into() };
        for pair in fields.chunks(2) {
            let [name, value] = pair else { return None };
            let value = value.as_bytes()?;
            match name.as_bytes()? {
                b"k" => message.binary = value == b"b",
                b"o" => message.origin = String::from_utf8_lossy(value).into(),
                b"d" => message.payload = value.to_vec(),
                _ => {}
            }
        }
        entries.push(message);
    }
    Some(Fetched { epoch, seq, entries })
}

/// A message of the channel: `ROOM\nEPOCH\nSEQ\nORIGIN\nKIND PAYLOAD` (a room name
/// holds no control character, so no newline).
pub fn parse_live(bytes: &[u8]) -> Option<(String, String, Message)> {
    let mut parts = bytes.splitn(5, |&b| b == b'\n');
    let room = String::from_utf8(parts.next()?.to_vec()).ok()?;
    let epoch = String::from_utf8(parts.next()?.to_vec()).ok()?;
    let seq = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
    let origin = String::from_utf8(parts.next()?.to_vec()).ok()?.into();
    let rest = parts.next()?;
    let (&kind, payload) = rest.split_first()?;
    Some((room, epoch, Message { seq, binary: kind == b'b', payload: payload.to_vec(), origin }))
}

fn subscription_thread(settings: &Settings, events: &Sender<Event>, waker: &Waker) {
    let channel = channel(settings);
    let mut backoff = BACKOFF_MIN;
    let mut was_up = None;
    loop {
        let result = (|| -> io::Result<()> {
            let stream = connect(settings)?;
            // Quiet rooms send nothing for long: no timeout on this connection's reads.
            stream.set_read_timeout(None)?;
            let mut replies = Replies { stream: stream.try_clone()?, buf: Vec::new(), start: 0 };
            let mut out = Vec::new();
            command(&mut out, &[b"SUBSCRIBE", channel.as_bytes()]);
            (&stream).write_all(&out)?;
            expect_ok(replies.next()?)?;
            backoff = BACKOFF_MIN;
            was_up = Some(true);
            if events.send(Event::Subscribed(true)).is_err() || waker.wake().is_err() {
                return Ok(());
            }
            let mut batch = Vec::new();
            loop {
                batch.clear();
                replies.batch(&mut batch)?;
                for reply in &batch {
                    let Some([kind, _, payload]) = reply.as_array() else { continue };
                    if kind.as_bytes() != Some(b"message") {
                        continue;
                    }
                    let Some((room, epoch, message)) = payload.as_bytes().and_then(parse_live) else {
                        warn!("backplane: a message on {channel} that is not ours");
                        continue;
                    };
                    if events.send(Event::Live { room, epoch, message }).is_err() {
                        return Ok(());
                    }
                }
                // One wake per read's worth of messages.
                if waker.wake().is_err() {
                    return Ok(());
                }
            }
        })();
        match result {
            Ok(()) => return,
            Err(e) => {
                if was_up != Some(false) {
                    warn!("backplane: subscription lost: {e}");
                    was_up = Some(false);
                    if events.send(Event::Subscribed(false)).is_err() || waker.wake().is_err() {
                        return;
                    }
                }
            }
        }
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_messages_parse() {
        let (room, epoch, m) = parse_live(b"lobby\n0123456789abcdef\n42\nnode:7\nthi\nthere").unwrap();
        assert_eq!((room.as_str(), epoch.as_str()), ("lobby", "0123456789abcdef"));
        assert_eq!(m, Message { seq: 42, binary: false, payload: b"hi\nthere".to_vec(), origin: "node:7".into() });
        assert!(parse_live(b"lobby\ne\nx\no\nt").is_none());
    }

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
        let reply = Reply::Array(vec![
            Reply::Bulk(b"e".to_vec()),
            Reply::Integer(3),
            Reply::Array(vec![entry("2-0", "x"), entry("3-0", "y")]),
        ]);
        let f = parse_fetched(&reply).unwrap();
        assert_eq!((f.epoch.as_str(), f.seq), ("e", 3));
        assert_eq!(f.entries.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![2, 3]);
        assert!(f.entries[0].binary);
    }
}
