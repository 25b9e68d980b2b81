//! The real server process on 127.0.0.1 port 0, and clients for it: tungstenite (an
//! independent implementation) or raw bytes.

use std::ffi::OsStr;
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
    /// Starts the mioket binary at `bin` on 127.0.0.1, port 0, with `args`.
    pub fn start_bin(bin: impl AsRef<OsStr>, args: &[&str]) -> Server {
        let mut command = Command::new(bin);
        command.args(["--host", "127.0.0.1", "--port", "0"]).args(args);
        Server::spawn(command)
    }

    /// Like `start_bin`, but the server runs under `ulimit -n fd_limit` (through sh, which
    /// execs it: the child's pid is the server's).
    pub fn start_bin_with_fd_limit(bin: impl AsRef<OsStr>, fd_limit: u32, args: &[&str]) -> Server {
        let script = format!("ulimit -n {fd_limit} && exec \"$0\" \"$@\"");
        let mut command = Command::new("sh");
        command.arg("-c").arg(script).arg(bin).args(["--host", "127.0.0.1", "--port", "0"]).args(args);
        Server::spawn(command)
    }

    /// Runs `command` (which starts mioket) and waits for its listening line.
    pub fn spawn(mut command: Command) -> Server {
        // MIOKET_TEST_LOG=debug (or any RUST_LOG filter) shows the servers' logs.
        let (log, stderr) = match std::env::var("MIOKET_TEST_LOG") {
            Ok(filter) => (filter, Stdio::inherit()),
            Err(_) => ("warn".to_string(), Stdio::null()),
        };
        let mut child =
            command.env("RUST_LOG", log).stdout(Stdio::piped()).stderr(stderr).spawn().expect("start mioket");
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

/// A plain client (no subprotocol) on `path` (with its query).
pub fn connect_plain(server: &Server, path: &str) -> Ws {
    let stream = TcpStream::connect(server.addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let (ws, response) = tungstenite::client(format!("ws://{}{path}", server.addr), stream).expect("handshake");
    assert!(response.headers().get("Sec-WebSocket-Protocol").is_none());
    ws
}

/// A client on `path` offering `mioket.v1` (after another protocol); the server must pick it.
pub fn connect_v1(server: &Server, path: &str) -> Ws {
    use tungstenite::client::IntoClientRequest;
    let stream = TcpStream::connect(server.addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut request = format!("ws://{}{path}", server.addr).into_client_request().unwrap();
    request.headers_mut().insert("Sec-WebSocket-Protocol", "chat, mioket.v1".parse().unwrap());
    let (ws, response) = tungstenite::client(request, stream).expect("handshake");
    assert_eq!(response.headers().get("Sec-WebSocket-Protocol").unwrap(), "mioket.v1");
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

/// The next mioket.v1 envelope, passing over the presence updates the server sends
/// unasked (a presence answering an op has its `id`).
pub fn envelope(ws: &mut Ws) -> serde_json::Value {
    loop {
        let v: serde_json::Value = serde_json::from_str(&text(ws)).expect("one JSON object per text frame");
        if v["type"] != "presence" || v.get("id").is_some() {
            return v;
        }
    }
}

/// `GET /healthz`'s body.
pub fn healthz(server: &Server) -> String {
    http(server.addr, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").1
}

/// Waits (15 s at most) until every server's backplane says it is up.
pub fn wait_backplane_up(servers: &[&Server]) {
    for s in servers {
        let up = wait_until(Duration::from_secs(15), || healthz(s).contains("backplane: up").then_some(()));
        assert!(up.is_some(), "backplane up: {}", healthz(s));
    }
}

pub fn send_text(ws: &mut Ws, s: &str) {
    ws.send(Message::text(s)).unwrap();
}

pub const WELCOME: &str = "Welcome! You're now in the broadcast room.";

/// Whether nothing but presence (and pings) arrives within `wait`.
pub fn quiet(ws: &mut Ws, wait: Duration) -> bool {
    ws.get_mut().set_read_timeout(Some(wait)).unwrap();
    let result = loop {
        match ws.read() {
            Ok(Message::Text(t)) if t.contains("\"presence\"") => continue,
            Ok(Message::Ping(_) | Message::Pong(_)) => continue,
            Ok(other) => panic!("unexpected {other:?}"),
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
            {
                break true
            }
            Err(e) => panic!("{e}"),
        }
    };
    ws.get_mut().set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    result
}

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

/// A message posted to `room` through the HTTP API of a server started with
/// `--api-token t` (with an `Idempotency-Key` when `key` is given): status and body.
pub fn api_post(server: &Server, room: &str, body: &str, key: Option<&str>) -> (u16, String) {
    let key = key.map_or(String::new(), |k| format!("Idempotency-Key: {k}\r\n"));
    http(
        server.addr,
        &format!(
            "POST /api/rooms/{room}/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t\r\n{key}Content-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    )
}

/// One HTTP request on a connection of its own to `addr`; the answer's status and body
/// (the server closes after answering).
pub fn http(addr: SocketAddr, request: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    let status = answer.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = answer.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
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
