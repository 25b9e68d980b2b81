//! Shared command line of the peer servers: `--mode echo|broadcast|rooms --port N`.
//! Every server binds 127.0.0.1 only and prints `listening on ws://127.0.0.1:PORT`.
//! `rooms` is `broadcast` with one room per request path (see [`Rooms`]).

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

pub mod tt;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Mode {
    Echo,
    /// Every message to every client: one broadcast channel.
    Broadcast,
    /// Every message to every client of the same request path: a channel per path.
    Rooms,
}

pub struct Args {
    pub mode: Mode,
    pub addr: SocketAddr,
}

pub fn args() -> Args {
    let mut mode = Mode::Echo;
    let mut port = 0u16;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match (flag.as_str(), it.next().as_deref()) {
            ("--mode", Some("echo")) => mode = Mode::Echo,
            ("--mode", Some("broadcast")) => mode = Mode::Broadcast,
            ("--mode", Some("rooms")) => mode = Mode::Rooms,
            ("--port", Some(p)) => port = p.parse().expect("--port N"),
            _ => {
                eprintln!(
                    "usage: {} [--mode echo|broadcast|rooms] [--port N]",
                    std::env::args().next().unwrap_or_default()
                );
                std::process::exit(2);
            }
        }
    }
    Args { mode, addr: SocketAddr::from(([127, 0, 0, 1], port)) }
}

pub fn announce(addr: SocketAddr) {
    println!("listening on ws://{addr}");
    let _ = std::io::stdout().flush();
}

/// Messages a room's channel holds for its slowest member (tokio broadcast: a member
/// further behind loses the oldest, `RecvError::Lagged`). The single channel of
/// `--mode broadcast` holds 4096; a room holds what axum's chat example uses (100,
/// rounded up). The slots are allocated and written up front, 60-80 B each: measured,
/// a room costs fastwebsockets 7.8 KB and tokio-tungstenite 10 KB of RSS.
pub const ROOM_CAPACITY: usize = 128;

/// The rooms of `--mode rooms`, by raw request path (not percent-decoded: the load
/// generator's paths need no decoding): a tokio broadcast channel per room, made by its
/// first member and dropped with its last, as in tokio's and axum's chat examples.
pub struct Rooms<T> {
    map: Mutex<HashMap<String, (broadcast::Sender<T>, usize)>>,
}

impl<T: Clone> Rooms<T> {
    pub fn new() -> Arc<Self> {
        Arc::new(Rooms { map: Mutex::new(HashMap::new()) })
    }

    /// Joins the room of `path`, making it if needed; the room is left when the
    /// returned member is dropped.
    pub fn join(self: &Arc<Self>, path: &str) -> Member<T> {
        let mut map = self.map.lock().unwrap();
        let (tx, members) = map.entry(path.to_owned()).or_insert_with(|| (broadcast::channel(ROOM_CAPACITY).0, 0));
        *members += 1;
        Member { tx: tx.clone(), rooms: Arc::clone(self), path: path.to_owned() }
    }
}

/// A client's membership of a room: `tx` publishes to the room, `tx.subscribe()`
/// receives its messages.
pub struct Member<T> {
    pub tx: broadcast::Sender<T>,
    rooms: Arc<Rooms<T>>,
    path: String,
}

impl<T> Drop for Member<T> {
    fn drop(&mut self) {
        let mut map = self.rooms.map.lock().unwrap();
        if let Some((_, members)) = map.get_mut(&self.path) {
            *members -= 1;
            if *members == 0 {
                map.remove(&self.path);
            }
        }
    }
}
