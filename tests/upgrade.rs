//! Binary upgrades (SIGUSR2, `mioket upgrade --pid`) over real processes: the real
//! binary upgraded to itself, and stand-in binaries (small scripts) that fail in each
//! way a new binary can: the old process keeps every connection.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::*;
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
    let stand_in = dir.script("refuses", &format!("exec python3 {}", python.display()));
    let server = Server::start(&["--upgrade-binary", &stand_in]);
    let mut ws = joined(&server);
    let why = failed_upgrade(&server);
    assert!(why.contains("refused: unknown snapshot format"), "{why}");
    serves_on(&server, &mut ws);
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
