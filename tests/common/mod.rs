//! Shared helpers for the wire-level tests: start the real binary on 127.0.0.1
//! port 0, talk to it with tungstenite (an independent implementation) or raw bytes.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tungstenite::{Message, WebSocket};

pub type Ws = WebSocket<TcpStream>;

/// The real server process; killed when dropped.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Server {
    pub fn start(args: &[&str]) -> Server {
        let mut command = Command::new(env!("CARGO_BIN_EXE_mioket"));
        command.args(["--host", "127.0.0.1", "--port", "0"]).args(args);
        Server::spawn(command)
    }

    /// Runs `command` (which starts mioket) and waits for its listening line.
    fn spawn(mut command: Command) -> Server {
        let mut child =
            command.env("RUST_LOG", "warn").stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("start mioket");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(10)).expect("listening line");
        let addr = line.trim().strip_prefix("listening on ws://").unwrap_or_else(|| panic!("bad line {line:?}"));
        Server { child, addr: addr.parse().unwrap() }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/", self.addr)
    }

    /// Sends a signal with kill(1) and waits for the exit, bounded.
    pub fn signal_and_wait(&mut self, signal: &str, limit: Duration) -> Option<std::process::ExitStatus> {
        Command::new("kill").args([signal, &self.child.id().to_string()]).status().unwrap();
        wait_until(limit, || self.child.try_wait().unwrap())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `f` until it gives `Some` or `limit` passes.
pub fn wait_until<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub fn connect(server: &Server) -> Ws {
    let stream = TcpStream::connect(server.addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let (ws, response) = tungstenite::client(server.url(), stream).expect("handshake");
    assert_eq!(response.status(), 101);
    ws
}

/// Reads the next data message (pings are answered by tungstenite as it reads).
pub fn next_message(ws: &mut Ws) -> Message {
    loop {
        match ws.read().expect("read") {
            Message::Ping(_) | Message::Pong(_) => continue,
            m => return m,
        }
    }
}

pub fn text(ws: &mut Ws) -> String {
    match next_message(ws) {
        Message::Text(t) => t.to_string(),
        other => panic!("expected text, got {other:?}"),
    }
}

pub fn send_text(ws: &mut Ws, s: &str) {
    ws.send(Message::text(s)).unwrap();
}

pub const WELCOME: &str = "Welcome! You're now in the broadcast room.";

/// A raw TCP connection with read timeouts.
pub fn raw(server: &Server) -> TcpStream {
    let s = TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

pub const UPGRADE: &str = "GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// A raw connection past the 101 answer.
pub fn raw_upgraded(server: &Server) -> TcpStream {
    let mut s = raw(server);
    s.write_all(UPGRADE.as_bytes()).unwrap();
    let head = read_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    s
}

/// Reads an HTTP response head byte by byte (so nothing after it is consumed).
pub fn read_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// Reads until the server closes the connection; returns everything it sent.
pub fn read_to_end(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

/// A masked client frame (key 1 2 3 4).
pub fn masked(first_byte: u8, payload: &[u8]) -> Vec<u8> {
    let key = [1u8, 2, 3, 4];
    let mut out = vec![first_byte];
    match payload.len() {
        n @ 0..=125 => out.push(0x80 | n as u8),
        n @ 126..=0xFFFF => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&key);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    out
}

/// Parses unmasked server frames: (first byte, payload) each.
pub fn server_frames(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut frames = Vec::new();
    while bytes.len() >= 2 {
        let (len, start) = match bytes[1] & 0x7F {
            126 => (u16::from_be_bytes([bytes[2], bytes[3]]) as usize, 4),
            127 => (u64::from_be_bytes(bytes[2..10].try_into().unwrap()) as usize, 10),
            n => (n as usize, 2),
        };
        if bytes.len() < start + len {
            break;
        }
        frames.push((bytes[0], bytes[start..start + len].to_vec()));
        bytes = &bytes[start + len..];
    }
    frames
}

/// Reads from `s` onto `bytes` until the server frames in them satisfy `done`; panics,
/// naming the frames so far, on a timeout or end of stream.
pub fn read_frames_until(s: &mut TcpStream, bytes: &mut Vec<u8>, done: impl Fn(&[(u8, Vec<u8>)]) -> bool) {
    let mut buf = [0u8; 1 << 16];
    loop {
        let frames = server_frames(bytes);
        if done(&frames) {
            return;
        }
        let sizes: Vec<(u8, usize)> = frames.iter().map(|(b, p)| (*b, p.len())).collect();
        match s.read(&mut buf) {
            Ok(0) => panic!("closed after {} bytes, frames {sizes:?}", bytes.len()),
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
            Err(e) => panic!("{e} after {} bytes, frames {sizes:?}", bytes.len()),
        }
    }
}

/// The close code of the last frame, if it is a close frame.
pub fn close_code_of(bytes: &[u8]) -> Option<u16> {
    let frames = server_frames(bytes);
    let (first, payload) = frames.last()?;
    (*first == 0x88 && payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]))
}

/// Resident set size of a process in bytes (0 once it is gone).
pub fn rss_bytes(pid: u32) -> u64 {
    mioket::procfs::rss_bytes(pid).unwrap_or(0)
}

impl Server {
    /// Like `start`, but the server runs under `ulimit -n fd_limit` (through sh, which
    /// execs it: the child's pid is the server's).
    pub fn start_with_fd_limit(fd_limit: u32, args: &[&str]) -> Server {
        let script = format!("ulimit -n {fd_limit} && exec \"$0\" \"$@\"");
        let mut command = Command::new("sh");
        command.args(["-c", &script, env!("CARGO_BIN_EXE_mioket"), "--host", "127.0.0.1", "--port", "0"]).args(args);
        Server::spawn(command)
    }
}

/// CPU time (user + system) a process has used so far (zero once it is gone).
pub fn cpu_time(pid: u32) -> Duration {
    mioket::procfs::cpu_time(pid).unwrap_or_default()
}

/// How many of a process's file descriptors are sockets (from /proc/PID/fd).
pub fn socket_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| {
            dir.filter_map(Result::ok)
                .filter(|e| std::fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy().starts_with("socket:")))
                .count()
        })
        .unwrap_or(0)
}
