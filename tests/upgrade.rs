//! Binary upgrades (SIGUSR2, `mioket upgrade --pid`) over real processes: the real
//! binary upgraded to itself, and stand-in binaries (small scripts) that fail in each
//! way a new binary can: the old process keeps every connection.

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use tungstenite::Message;

const BIN: &str = env!("CARGO_BIN_EXE_mioket");

/// A folder of its own per test, removed at the end.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let dir = std::env::temp_dir().join(format!("mioket-upgrade-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Dir(dir)
    }

    /// An executable shell script named `name` with `body`.
    fn script(&self, name: &str, body: &str) -> String {
        let path = self.0.join(name);
        fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        path.to_str().unwrap().to_string()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The process that took over: killed at the end of the test (it is no child of ours).
struct Successor(u32);

impl Drop for Successor {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-9", &self.0.to_string()]).status();
    }
}

/// `mioket upgrade --pid` on the server: its exit status and output.
fn upgrade(server: &Server) -> Output {
    Command::new(BIN)
        .args(["upgrade", "--pid", &server.child.id().to_string(), "--timeout", "30s"])
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// A successful upgrade's new pid, from `mioket upgrade`'s line.
fn upgraded(server: &Server) -> Successor {
    let output = upgrade(server);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout} {}", String::from_utf8_lossy(&output.stderr));
    let pid = stdout.trim().rsplit(' ').next().and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("{stdout}"));
    assert_ne!(pid, server.child.id());
    Successor(pid)
}

/// A failed upgrade: `mioket upgrade` exits 1 and says why.
fn failed_upgrade(server: &Server) -> String {
    let output = upgrade(server);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The old process serves on: its client still chats, and a new client is welcome.
fn serves_on(server: &Server, ws: &mut Ws) {
    send_text(ws, "still here");
    assert_eq!(text(ws), "still here");
    let mut fresh = connect(server);
    assert_eq!(text(&mut fresh), WELCOME);
    assert!(server_alive(server));
}

fn server_alive(server: &Server) -> bool {
    alive(server.child.id())
}

fn alive(pid: u32) -> bool {
    Command::new("kill").args(["-0", &pid.to_string()]).stderr(Stdio::null()).status().unwrap().success()
}

fn joined(server: &Server) -> Ws {
    let mut ws = connect(server);
    assert_eq!(text(&mut ws), WELCOME);
    ws
}

#[test]
fn a_new_binary_that_exits_at_once_leaves_the_old_one_serving() {
    let dir = Dir::new("exits");
    let stand_in = dir.script("exits", "exit 3");
    let mut server = Server::start(&["--upgrade-binary", &stand_in]);
    let mut ws = joined(&server);
    let why = failed_upgrade(&server);
    assert!(why.contains("exit status: 3"), "{why}");
    serves_on(&server, &mut ws);
    // And a second try, which fails the same way.
    failed_upgrade(&server);
    serves_on(&server, &mut ws);
    drop(ws);
    assert!(server.signal_and_wait("-TERM", Duration::from_secs(10)).is_some());
}

#[test]
fn a_new_binary_that_hangs_is_killed_at_the_timeout_and_the_old_one_serves_on() {
    let dir = Dir::new("hangs");
    let marker = dir.0.join("pid");
    let stand_in = dir.script("hangs", &format!("echo $$ > {}\nexec sleep 60", marker.display()));
    let server = Server::start(&["--upgrade-binary", &stand_in, "--upgrade-timeout", "1"]);
    let mut ws = joined(&server);
    let why = failed_upgrade(&server);
    assert!(why.contains("no hello from the new process in time"), "{why}");
    serves_on(&server, &mut ws);
    // The hanging process was killed.
    let pid: u32 = fs::read_to_string(&marker).unwrap().trim().parse().unwrap();
    let gone = wait_until(Duration::from_secs(5), || (!alive(pid)).then_some(()));
    assert!(gone.is_some(), "the hanging new process still runs");
}

/// A stand-in that speaks the protocol (python3) and refuses the snapshot's format,
/// as a binary that does not know it would.
#[test]
fn a_new_binary_that_refuses_the_snapshot_leaves_the_old_one_serving() {
    if Command::new("python3").arg("-c").arg("pass").status().map_or(true, |s| !s.success()) {
        eprintln!("skipped: no python3");
        return;
    }
    let dir = Dir::new("refuses");
    let python = dir.0.join("refuse.py");
    fs::write(
        &python,
        r#"import os, socket, struct
s = socket.socket(fileno=int(os.environ["MIOKET_UPGRADE_FD"]))
s.sendall(struct.pack("<BBI", 1, 0, 8) + struct.pack("<II", 1 << 30, os.getpid()))
head = s.recv(6)
kind, fds, length = struct.unpack("<BBI", head)
body = s.recv(length)
why = b"unknown snapshot format %d" % struct.unpack("<I", body[:4])
s.sendall(struct.pack("<BBI", 8, 0, len(why)) + why)
"#,
    )
    .unwrap();
    // The first start refuses; the second is the real binary, which takes over.
    let tried = dir.0.join("tried");
    let stand_in = dir.script(
        "refuses",
        &format!(
            "if [ -e {tried} ]; then exec {BIN} \"$@\"; fi\ntouch {tried}\nexec python3 {}",
            python.display(),
            tried = tried.display()
        ),
    );
    let mut server = Server::start(&["--upgrade-binary", &stand_in]);
    let mut ws = joined(&server);
    let why = failed_upgrade(&server);
    assert!(why.contains("refused: unknown snapshot format"), "{why}");
    serves_on(&server, &mut ws);
    // Thawed, it freezes again for the next try, every client included.
    let _successor = upgraded(&server);
    assert!(server.child.wait().unwrap().success());
    send_text(&mut ws, "moved after a failed try");
    assert_eq!(text(&mut ws), "moved after a failed try");
}

#[test]
fn a_missing_new_binary_is_a_failure_that_says_so() {
    let server = Server::start(&["--upgrade-binary", "/nonexistent/mioket"]);
    let mut ws = joined(&server);
    let why = failed_upgrade(&server);
    assert!(why.contains("cannot start the new binary"), "{why}");
    serves_on(&server, &mut ws);
}

/// The listener and the connection move: the old process exits, the same connection
/// goes on with the new one, in its room with its history, and again with a third.
#[test]
fn a_connection_and_its_room_go_on_across_two_upgrades() {
    let mut server = Server::start(&[]);
    let mut ws = joined(&server);
    send_text(&mut ws, "before");
    assert_eq!(text(&mut ws), "before");
    let successor = upgraded(&server);
    assert!(server.child.wait().unwrap().success(), "the old process exits");
    send_text(&mut ws, "after");
    assert_eq!(text(&mut ws), "after");
    // A newcomer gets the history both processes made.
    let mut newcomer = joined(&server);
    assert_eq!([text(&mut newcomer), text(&mut newcomer)], ["before", "after"]);
    let again = Command::new(BIN).args(["upgrade", "--pid", &successor.0.to_string()]).output().unwrap();
    assert!(again.status.success(), "{again:?}");
    let _third = Successor(String::from_utf8_lossy(&again.stdout).trim().rsplit(' ').next().unwrap().parse().unwrap());
    send_text(&mut newcomer, "third");
    assert_eq!(text(&mut ws), "third");
    assert_eq!(text(&mut newcomer), "third");
    let _ = ws.send(Message::Close(None));
}

/// A counter of `/metrics` (the unlabelled line).
fn counter(metrics: &str, name: &str) -> u64 {
    let line = metrics.lines().find(|l| l.split(' ').next() == Some(name)).unwrap_or_else(|| panic!("no {name}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

fn metrics(server: &Server) -> String {
    let (status, body) = http(server.addr, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!(status, 200);
    body
}

/// The shape of a rooms test: rooms, their members of each kind, and the messages
/// each room's publisher sends (an upgrade happens a third of the way in).
struct Scale {
    rooms: usize,
    plain: usize,
    v1: usize,
    messages: usize,
    /// Plain members with permessage-deflate (Python `websockets`), spread over the rooms.
    deflate: usize,
    /// Members that stop reading, their queue full at the upgrade (a room of big messages).
    full_queue: usize,
    /// Clients half way through a fragmented message at the upgrade.
    fragmenters: usize,
}

/// Members with permessage-deflate from an independent client (Python `websockets`,
/// in the venv scripts/test.sh makes): each checks that deflate was agreed, says
/// `ready` once all are welcome, reads its room's `messages` in order, and says `ok`.
const DEFLATE_MEMBERS: &str = r#"
import asyncio, sys
from websockets.asyncio.client import connect

WELCOME = "Welcome! You're now in the broadcast room."
addr, rooms, count, messages = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])

async def member(i, welcomed, all_in):
    room = i % rooms
    async with connect(f"ws://{addr}/r{room}", compression="deflate", ping_interval=None,
                       max_size=None, open_timeout=30) as ws:
        extensions = ws.response.headers.get("Sec-WebSocket-Extensions", "")
        assert "permessage-deflate" in extensions, extensions
        assert await ws.recv() == WELCOME
        welcomed.append(i)
        if len(welcomed) == count:
            print("ready", flush=True)
            all_in.set()
        for n in range(messages):
            got = await asyncio.wait_for(ws.recv(), 60)
            assert got == f"r{room}-{n}", (i, n, got)

async def main():
    welcomed, all_in = [], asyncio.Event()
    await asyncio.gather(*(member(i, welcomed, all_in) for i in range(count)))
    print("ok", flush=True)

asyncio.run(main())
"#;

/// The Python of the venv with `websockets` (scripts/test.sh), if there is one.
fn python_with_websockets() -> Option<PathBuf> {
    let python = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/py-client-venv/bin/python");
    let has = Command::new(&python).args(["-c", "import websockets.asyncio.client"]).status();
    has.is_ok_and(|s| s.success()).then_some(python)
}

/// The `i`th message of the room of big messages: 64 KiB, its number first.
fn big(i: usize) -> String {
    format!("{i:08}{}", "x".repeat((64 << 10) - 8))
}

/// The publisher of the room of big messages: raw frames, on a socket whose copy a
/// thread drains (it is a member too, and a client that does not read is not read).
fn big_publisher(server: &Server) -> std::net::TcpStream {
    use std::io::Read;
    let mut s = raw(server);
    s.write_all(UPGRADE.replacen("GET / ", "GET /big ", 1).as_bytes()).unwrap();
    let head = read_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    s.set_read_timeout(None).unwrap();
    let mut drain = s.try_clone().unwrap();
    thread::spawn(move || {
        let mut buf = vec![0; 1 << 16];
        while matches!(drain.read(&mut buf), Ok(n) if n > 0) {}
    });
    s
}

/// A plain member whose receive buffer is small and who reads nothing until told:
/// its queue in the server fills.
fn non_reader(server: &Server, path: &str) -> Ws {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&server.addr.into()).unwrap();
    let stream: std::net::TcpStream = socket.into();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let (mut ws, _) = tungstenite::client(format!("ws://{}{path}", server.addr), stream).expect("handshake");
    assert_eq!(text(&mut ws), WELCOME);
    ws
}

/// Members of many rooms, plain and `mioket.v1`, while one publisher per room publishes
/// without pause and the server upgrades: every member stays connected and gets every
/// message once, in order (v1: seqs 1..=N without gap or duplicate); the old process
/// exits; `/metrics` counters do not go back; history and resume work on the new one.
fn members_keep_every_message_across_an_upgrade(scale: Scale) {
    let Scale { rooms, plain, v1, messages, deflate, full_queue, fragmenters } = scale;
    let mut server = Server::start(&["--history", "100000", "--max-connections", "50000"]);
    let mut plains = Vec::new();
    let mut v1s = Vec::new();
    let mut epochs = Vec::new();
    for r in 0..rooms {
        for _ in 0..plain {
            let mut ws = connect_plain(&server, &format!("/r{r}"));
            assert_eq!(text(&mut ws), WELCOME);
            plains.push((r, ws));
        }
        for i in 0..v1 {
            let mut ws = connect_v1(&server, &format!("/r{r}"));
            let welcome = envelope(&mut ws);
            assert_eq!(welcome["seq"], 0);
            if i == 0 {
                epochs.push(welcome["epoch"].as_str().unwrap().to_string());
            }
            v1s.push((r, ws));
        }
    }
    let python = if deflate > 0 { python_with_websockets() } else { None };
    if deflate > 0 && python.is_none() {
        eprintln!("no venv with websockets (scripts/test.sh makes it): deflate members skipped");
    }
    let dir = Dir::new("deflate");
    let mut deflaters = python.map(|python| {
        let script = dir.0.join("deflate_members.py");
        fs::write(&script, DEFLATE_MEMBERS).unwrap();
        let args = [server.addr.to_string(), rooms.to_string(), deflate.to_string(), messages.to_string()];
        let mut child = Command::new(python).arg(&script).args(args).stdout(Stdio::piped()).spawn().unwrap();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        std::io::BufRead::read_line(&mut out, &mut line).unwrap();
        assert_eq!(line.trim(), "ready", "the deflate members are in");
        (child, out)
    });
    // Members whose queue is full at the upgrade: a room of big messages they do not read.
    const BIG_MESSAGES: usize = 24;
    let mut full: Vec<Ws> = (0..full_queue).map(|_| non_reader(&server, "/big")).collect();
    let big_publisher = (full_queue > 0).then(|| {
        let mut s = big_publisher(&server);
        for i in 0..BIG_MESSAGES / 2 {
            s.write_all(&masked(0x81, big(i).as_bytes())).unwrap();
        }
        s
    });
    // Clients half way through a fragmented message when the upgrade comes.
    let mut halves: Vec<std::net::TcpStream> = (0..fragmenters)
        .map(|i| {
            let mut fragmenter = raw_upgraded(&server);
            fragmenter.write_all(&masked(0x01, format!("first half {i}, ").as_bytes())).unwrap();
            fragmenter
        })
        .collect();
    let sent = Arc::new(AtomicUsize::new(0));
    let publishers: Vec<_> = (0..rooms)
        .map(|r| {
            let mut ws = connect_plain(&server, &format!("/r{r}"));
            assert_eq!(text(&mut ws), WELCOME);
            let sent = Arc::clone(&sent);
            thread::spawn(move || {
                for i in 0..messages {
                    send_text(&mut ws, &format!("r{r}-{i}"));
                    sent.fetch_add(1, Ordering::Relaxed);
                    if i % 8 == 0 {
                        thread::sleep(Duration::from_millis(1));
                    }
                }
                ws
            })
        })
        .collect();
    wait_until(Duration::from_secs(60), || (sent.load(Ordering::Relaxed) >= rooms * messages / 3).then_some(()));
    // The full queues really are full at the upgrade: each non-reader was sent half the
    // big messages (768 KiB), of which its socket's buffers take at most about 270 KiB
    // (--send-buffer's 128 KiB, doubled by the kernel, and a 4 KiB receive window).
    let full_bytes = (full_queue * (BIG_MESSAGES / 2 * (64 << 10) - (300 << 10))) as u64;
    let queued = |server: &Server| counter(&metrics(server), "mioket_output_queued_bytes");
    let held = wait_until(Duration::from_secs(10), || (queued(&server) >= full_bytes).then_some(()));
    assert!(held.is_some(), "queued before the upgrade: {} bytes, expected {full_bytes}", queued(&server));
    let before = metrics(&server);
    let _successor = upgraded(&server);
    assert!(server.child.wait().unwrap().success(), "the old process exits");
    let moved = queued(&server);
    assert!(moved >= full_bytes, "queued after the upgrade: {moved} bytes, expected {full_bytes}");
    let _publishers: Vec<Ws> = publishers.into_iter().map(|p| p.join().unwrap()).collect();
    for (i, fragmenter) in halves.iter_mut().enumerate() {
        fragmenter.write_all(&masked(0x80, b"second half")).unwrap();
        let whole = format!("first half {i}, second half");
        let mut bytes = Vec::new();
        read_frames_until(fragmenter, &mut bytes, |frames| frames.iter().any(|(_, p)| p == whole.as_bytes()));
    }
    if let Some(mut s) = big_publisher {
        for i in BIG_MESSAGES / 2..BIG_MESSAGES {
            s.write_all(&masked(0x81, big(i).as_bytes())).unwrap();
        }
    }
    for ws in &mut full {
        for i in 0..BIG_MESSAGES {
            assert_eq!(text(ws), big(i), "a member whose queue was full");
        }
    }
    if full_queue > 0 {
        let drained = wait_until(Duration::from_secs(10), || (queued(&server) < full_bytes / 4).then_some(()));
        assert!(drained.is_some(), "queued once read: {} bytes", queued(&server));
    }
    if let Some((mut child, mut out)) = deflaters.take() {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut out, &mut line).unwrap();
        assert!(child.wait().unwrap().success());
        assert_eq!(line.trim(), "ok", "every deflate member got every message in order");
    }
    for (r, ws) in &mut plains {
        for i in 0..messages {
            assert_eq!(text(ws), format!("r{r}-{i}"), "a plain member of room {r}");
        }
    }
    for (r, ws) in &mut v1s {
        for i in 0..messages {
            let message = envelope(ws);
            assert_eq!((&message["seq"], &message["data"]), (&Value::from(i + 1), &Value::from(format!("r{r}-{i}"))));
        }
    }
    let after = metrics(&server);
    for name in ["mioket_accepted_total", "mioket_upgrades_total", "mioket_messages_received_total"] {
        assert!(counter(&after, name) >= counter(&before, name), "{name} went back");
    }
    assert!(counter(&after, "mioket_messages_received_total") >= (rooms * messages) as u64);
    // Resume on the new process: the epoch moved, the history too.
    let since = messages - 5;
    let mut resumed = connect_v1(&server, &format!("/r0?since={since}&epoch={}", epochs[0]));
    let welcome = envelope(&mut resumed);
    assert_eq!((&welcome["recovered"], &welcome["seq"]), (&Value::from(true), &Value::from(messages)));
    for seq in since + 1..=messages {
        assert_eq!(envelope(&mut resumed)["seq"], seq);
    }
    let mut newcomer = connect_plain(&server, "/r1");
    assert_eq!(text(&mut newcomer), WELCOME);
    assert_eq!(text(&mut newcomer), "r1-0", "the whole history");
}

#[test]
fn members_of_rooms_keep_every_message_across_an_upgrade() {
    members_keep_every_message_across_an_upgrade(Scale {
        rooms: 10,
        plain: 4,
        v1: 4,
        messages: 300,
        deflate: 0,
        full_queue: 0,
        fragmenters: 1,
    });
}

/// The issue's scale: 2,000 members in 50 rooms (14 plain and 20 v1 each, and 300 plain
/// with permessage-deflate from Python `websockets`), besides 10 members whose queue is
/// full at the upgrade and 20 clients half way through a fragmented message.
#[test]
fn two_thousand_members_keep_every_message_across_an_upgrade() {
    members_keep_every_message_across_an_upgrade(Scale {
        rooms: 50,
        plain: 14,
        v1: 20,
        messages: 200,
        deflate: 300,
        full_queue: 10,
        fragmenters: 20,
    });
}

#[test]
fn an_echo_client_keeps_its_connection_across_an_upgrade() {
    let mut server = Server::start(&["--mode", "echo"]);
    let mut ws = connect(&server);
    send_text(&mut ws, "one");
    assert_eq!(text(&mut ws), "one");
    let _successor = upgraded(&server);
    assert!(server.child.wait().unwrap().success());
    send_text(&mut ws, "two");
    assert_eq!(text(&mut ws), "two");
}

/// systemd (Type=notify, NotifyAccess=all): READY=1 once listening, then the new
/// process announces itself as the main pid before the old one exits.
#[test]
fn systemd_hears_ready_and_the_new_main_pid() {
    use std::os::unix::net::UnixDatagram;
    let dir = Dir::new("notify");
    let path = dir.0.join("notify.sock");
    let systemd = UnixDatagram::bind(&path).unwrap();
    systemd.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut command = Command::new(BIN);
    command.args(["--host", "127.0.0.1", "--port", "0"]).env("NOTIFY_SOCKET", &path);
    let mut server = Server::spawn(command);
    let mut buf = [0u8; 256];
    let n = systemd.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"READY=1");
    let successor = upgraded(&server);
    let n = systemd.recv(&mut buf).unwrap();
    assert_eq!(String::from_utf8_lossy(&buf[..n]), format!("MAINPID={}\nREADY=1", successor.0));
    assert!(server.child.wait().unwrap().success());
}

#[test]
fn mioket_upgrade_of_no_such_process_fails() {
    let output = Command::new(BIN).args(["upgrade", "--pid", "999999999"]).output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot signal pid 999999999"));
    let usage = Command::new(BIN).args(["upgrade"]).output().unwrap();
    assert_eq!(usage.status.code(), Some(2), "--pid is required");
}

/// With --redis: a member on the upgraded node gets every message another node's
/// publisher sends across the upgrade, Redis's seqs without a gap or a duplicate.
#[test]
fn with_redis_a_member_of_the_upgraded_node_misses_nothing() {
    use common::redis::RedisServer;
    need_redis!();
    let redis = RedisServer::start(false);
    let args = ["--redis", &redis.url(), "--ping-interval", "0"];
    let mut a = Server::start(&args);
    let b = Server::start(&args);
    wait_backplane_up(&[&a, &b]);
    let mut member = connect_v1(&a, "/shared");
    assert_eq!(envelope(&mut member)["type"], "welcome");
    let mut publisher = connect_v1(&b, "/shared");
    assert_eq!(envelope(&mut publisher)["type"], "welcome");
    const MESSAGES: usize = 300;
    let sent = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&sent);
    let publishing = thread::spawn(move || {
        for i in 0..MESSAGES {
            send_text(&mut publisher, &format!(r#"{{"op":"publish","data":"m{i}"}}"#));
            counter.fetch_add(1, Ordering::Relaxed);
            thread::sleep(Duration::from_millis(2));
        }
        publisher
    });
    wait_until(Duration::from_secs(30), || (sent.load(Ordering::Relaxed) >= MESSAGES / 3).then_some(()));
    let _successor = upgraded(&a);
    assert!(a.child.wait().unwrap().success());
    let _publisher = publishing.join().unwrap();
    for i in 0..MESSAGES {
        let message = envelope(&mut member);
        assert_eq!(
            (&message["seq"], &message["data"]),
            (&Value::from(i + 1), &Value::from(format!("m{i}"))),
            "{message}"
        );
    }
}

/// With --redis, the new process goes on as the same node: the other nodes count its
/// members once, not under the old name and the new one until the old one is taken
/// as dead (about 4 s).
#[test]
fn with_redis_the_upgraded_node_is_counted_once_by_the_others() {
    use common::redis::RedisServer;
    need_redis!();
    let redis = RedisServer::start(false);
    let args = ["--redis", &redis.url(), "--ping-interval", "0", "--api-token", "t"];
    let mut a = Server::start(&args);
    let b = Server::start(&args);
    wait_backplane_up(&[&a, &b]);
    let get = |s: &Server, path: &str| -> Value {
        let (status, body) =
            http(s.addr, &format!("GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t\r\n\r\n"));
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).expect("JSON")
    };
    let online = |s: &Server| get(s, "/api/rooms/p/presence")["online"].as_u64();
    let nodes = |s: &Server| get(s, "/api/stats")["nodes"].as_array().map_or(0, Vec::len);
    let mut on_a = connect_v1(&a, "/p");
    assert_eq!(envelope(&mut on_a)["type"], "welcome");
    let mut on_b = connect_v1(&b, "/p");
    assert_eq!(envelope(&mut on_b)["type"], "welcome");
    let counted = wait_until(Duration::from_secs(10), || (online(&b) == Some(2) && nodes(&b) == 2).then_some(()));
    assert!(counted.is_some(), "node b counts both members and both nodes");
    let _successor = upgraded(&a);
    assert!(a.child.wait().unwrap().success());
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        assert_eq!(online(&b), Some(2), "one member on each node, counted once");
        assert_eq!(nodes(&b), 2, "the upgraded node is the same node");
        thread::sleep(Duration::from_millis(100));
    }
    send_text(&mut on_a, r#"{"op":"publish","data":"still here"}"#);
    assert_eq!(envelope(&mut on_b)["data"], "still here");
}

/// What one publisher saw: how many it sent, each id's answer (its ack's seq or the
/// error's reason), and the seqs delivered to it (it is a member of the room too).
struct Seen {
    sent: usize,
    answers: std::collections::HashMap<String, Result<u64, String>>,
    delivered: Vec<u64>,
}

/// Publishes without pause (up to `WINDOW` unanswered at a time) until `stop`, then
/// reads until every publish has its answer and every acked seq was delivered.
fn publish_until(mut ws: Ws, name: String, stop: Arc<std::sync::atomic::AtomicBool>) -> Seen {
    use std::io::ErrorKind::WouldBlock;
    const WINDOW: usize = 32;
    ws.get_ref().set_nonblocking(true).unwrap();
    let mut seen = Seen { sent: 0, answers: Default::default(), delivered: Vec::new() };
    let mut stopped_at = None;
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        if stopping && stopped_at.is_none() {
            stopped_at = Some(std::time::Instant::now());
        }
        let done = seen.answers.len() == seen.sent
            && seen.answers.values().filter_map(|a| a.as_ref().ok()).all(|seq| seen.delivered.contains(seq));
        if stopping && done {
            return seen;
        }
        if let Some(t) = stopped_at {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "{name}: unanswered: {} of {}",
                seen.answers.len(),
                seen.sent
            );
        }
        let mut busy = false;
        if !stopping && seen.sent - seen.answers.len() < WINDOW {
            let frame = format!(r#"{{"op":"publish","data":"{name}-{0}","id":"{name}-{0}"}}"#, seen.sent);
            match ws.send(Message::text(frame)) {
                Ok(()) => {}
                Err(tungstenite::Error::Io(e)) if e.kind() == WouldBlock => {}
                Err(e) => panic!("{name}: send: {e}"),
            }
            seen.sent += 1;
            busy = true;
        } else {
            match ws.flush() {
                Ok(()) => {}
                Err(tungstenite::Error::Io(e)) if e.kind() == WouldBlock => {}
                Err(e) => panic!("{name}: flush: {e}"),
            }
        }
        match ws.read() {
            Ok(Message::Text(t)) => {
                busy = true;
                let v: Value = serde_json::from_str(&t).unwrap();
                match v["type"].as_str() {
                    Some("ack") => {
                        let previous =
                            seen.answers.insert(v["id"].as_str().unwrap().into(), Ok(v["seq"].as_u64().unwrap()));
                        assert!(previous.is_none(), "{name}: answered twice: {v}");
                    }
                    Some("error") => {
                        let reason = v["reason"].as_str().unwrap().to_string();
                        let previous = seen.answers.insert(v["id"].as_str().unwrap().into(), Err(reason));
                        assert!(previous.is_none(), "{name}: answered twice: {v}");
                    }
                    Some("message") => seen.delivered.push(v["seq"].as_u64().unwrap()),
                    _ => {}
                }
            }
            Ok(Message::Close(c)) => panic!("{name}: closed: {c:?}"),
            Ok(_) => busy = true,
            Err(tungstenite::Error::Io(e)) if e.kind() == WouldBlock => {}
            Err(e) => panic!("{name}: read: {e}"),
        }
        if !busy {
            thread::sleep(Duration::from_micros(200));
        }
    }
}

/// The ack of a v1 publish (what else comes first, its own message, is passed over).
fn ack(ws: &mut Ws) -> Value {
    loop {
        let v = envelope(ws);
        if v["type"] == "ack" {
            return v;
        }
    }
}

/// With --redis, publishes in flight to Redis when the handover starts are answered
/// by the old process before it freezes, and the new process is connected to Redis
/// before it takes over: with Redis healthy, every publish is acked (none refused,
/// none silent), and every member's seqs are gap-free and duplicate-free across the
/// upgrade.
#[test]
fn with_redis_every_publish_in_flight_across_an_upgrade_is_acked_or_refused() {
    use common::redis::RedisServer;
    use std::sync::atomic::AtomicBool;
    need_redis!();
    let redis = RedisServer::start(false);
    let mut server = Server::start(&["--redis", &redis.url(), "--ping-interval", "0"]);
    wait_backplane_up(&[&server]);
    let stop = Arc::new(AtomicBool::new(false));
    let publishers: Vec<_> = (0..4)
        .map(|i| {
            let mut ws = connect_v1(&server, "/inflight");
            assert_eq!(envelope(&mut ws)["type"], "welcome");
            let stop = Arc::clone(&stop);
            thread::spawn(move || publish_until(ws, format!("p{i}"), stop))
        })
        .collect();
    thread::sleep(Duration::from_millis(500));
    let _successor = upgraded(&server);
    assert!(server.child.wait().unwrap().success());
    thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let (mut acked, mut refused) = (0, 0);
    for publisher in publishers {
        let seen = publisher.join().unwrap();
        for answer in seen.answers.values() {
            match answer {
                Ok(_) => acked += 1,
                Err(reason) => {
                    assert!(reason.starts_with("backplane unavailable"), "{reason}");
                    refused += 1;
                }
            }
        }
        let first = seen.delivered[0];
        let expected: Vec<u64> = (first..first + seen.delivered.len() as u64).collect();
        assert_eq!(seen.delivered, expected, "gap-free and duplicate-free");
    }
    eprintln!("across the upgrade: {acked} acked, {refused} refused");
    assert!(acked > 0);
    assert_eq!(refused, 0, "Redis was up: nothing to refuse");
}

/// With --redis, a publish Redis does not answer (Redis paused) is refused by the old
/// process after half of --upgrade-timeout, before the freeze: never silent.
#[test]
fn with_redis_a_publish_redis_does_not_answer_is_refused_before_the_handover() {
    use common::redis::RedisServer;
    need_redis!();
    let redis = RedisServer::start(false);
    let mut server = Server::start(&["--redis", &redis.url(), "--ping-interval", "0", "--upgrade-timeout", "2"]);
    wait_backplane_up(&[&server]);
    let mut ws = connect_v1(&server, "/stalled");
    assert_eq!(envelope(&mut ws)["type"], "welcome");
    redis.signal("-STOP");
    send_text(&mut ws, r#"{"op":"publish","data":"x","id":"x"}"#);
    thread::sleep(Duration::from_millis(100));
    let started = std::time::Instant::now();
    let _successor = upgraded(&server);
    assert!(started.elapsed() >= Duration::from_millis(900), "the old process waited for the answer");
    assert!(server.child.wait().unwrap().success());
    let answer = envelope(&mut ws);
    assert_eq!((&answer["type"], &answer["id"]), (&Value::from("error"), &Value::from("x")), "{answer}");
    let reason = answer["reason"].as_str().unwrap();
    assert!(reason.starts_with("backplane unavailable"), "{reason}");
    redis.signal("-CONT");
}

/// A publish retried across an upgrade, with the same id, is answered with the first
/// publish's seq by the new process and not published again: one delivery.
#[test]
fn a_publish_retried_across_an_upgrade_is_delivered_once() {
    let mut server = Server::start(&[]);
    let mut member = connect_plain(&server, "/r");
    assert_eq!(text(&mut member), WELCOME);
    let mut publisher = connect_v1(&server, "/r");
    assert_eq!(envelope(&mut publisher)["seq"], 0);
    let publish = r#"{"op":"publish","id":"p1","data":"once"}"#;
    send_text(&mut publisher, publish);
    assert_eq!(ack(&mut publisher)["seq"], 1);
    assert_eq!(text(&mut member), "once");
    let _successor = upgraded(&server);
    assert!(server.child.wait().unwrap().success(), "the old process exits");
    // The same connection, and a new one, retry on the new process.
    send_text(&mut publisher, publish);
    let again = ack(&mut publisher);
    assert_eq!((again["id"].as_str(), again["seq"].as_u64()), (Some("p1"), Some(1)), "{again}");
    let mut retrier = connect_v1(&server, "/r");
    envelope(&mut retrier);
    send_text(&mut retrier, publish);
    assert_eq!(ack(&mut retrier)["seq"], 1);
    // What the member gets next is the next publish, not the retry.
    send_text(&mut publisher, r#"{"op":"publish","data":"next"}"#);
    assert_eq!(text(&mut member), "next");
}
