//! A real `redis-server` for the backplane tests (`--redis`): started on a free
//! 127.0.0.1 port in a temporary directory, stopped (and the directory removed) when
//! dropped. It can be killed and started again on the same port and directory (with
//! persistence on, its data comes back), and paused with SIGSTOP.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
    persistent: bool,
    /// More arguments of redis-server (`start_with`).
    extra: Vec<String>,
}

/// Whether `redis-server` can be run here (scripts/test.sh installs it).
pub fn redis_available() -> bool {
    Command::new("redis-server").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok()
}

/// At the top of a backplane test: returns from the test (a skip, said on stderr) when
/// `redis-server` cannot be run here. CI (.ci/run, scripts/test.sh) installs it, so
/// there these tests never skip.
#[macro_export]
macro_rules! need_redis {
    () => {
        if !$crate::redis::redis_available() {
            eprintln!("redis-server is not installed: skipped (scripts/test.sh installs it)");
            return;
        }
    };
}

impl RedisServer {
    /// Starts Redis; `persistent`: an append-only file synced on every write, so that
    /// a kill loses nothing it acknowledged.
    pub fn start(persistent: bool) -> RedisServer {
        RedisServer::launched(persistent, &[])
    }

    /// Starts Redis (no persistence) with more arguments (`--requirepass`, `--tls-port`...).
    pub fn start_with(extra: &[&str]) -> RedisServer {
        RedisServer::launched(false, extra)
    }

    fn launched(persistent: bool, extra: &[&str]) -> RedisServer {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("mioket-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let extra = extra.iter().map(|s| s.to_string()).collect();
        let mut redis = RedisServer { child: None, port, dir, persistent, extra };
        redis.launch();
        redis
    }

    /// Where its files are (certificates for `--tls-port` may go there).
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    fn launch(&mut self) {
        let port = self.port.to_string();
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &port, "--bind", "127.0.0.1", "--save", "", "--daemonize", "no"])
            .args(["--protected-mode", "no", "--logfile", "redis.log"])
            .arg("--dir")
            .arg(&self.dir);
        if self.persistent {
            command.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            command.args(["--appendonly", "no"]);
        }
        command.args(&self.extra);
        let child = command.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("start redis-server");
        self.child = Some(child);
        let end = Instant::now() + Duration::from_secs(10);
        while self.ping().is_none() {
            assert!(Instant::now() < end, "redis-server did not answer PING");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    fn ping(&self) -> Option<()> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
        s.write_all(b"PING\r\n").ok()?;
        // An answer, whatever it is (one that wants AUTH answers -NOAUTH).
        let mut buf = [0u8; 1];
        s.read_exact(&mut buf).ok()?;
        matches!(&buf, b"+" | b"-").then_some(())
    }

    /// SIGKILL, and wait for the exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts again on the same port and directory (after `kill`).
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    /// One command on a connection of its own; the reply's first line (`+OK`, `:3`,
    /// `$5`, `*2`...), and a bulk string's body after it.
    pub fn command(&self, args: &[&[u8]]) -> String {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for arg in args {
            out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            out.extend_from_slice(arg);
            out.extend_from_slice(b"\r\n");
        }
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.write_all(&out).unwrap();
        let mut reply = Vec::new();
        let mut byte = [0u8];
        while !reply.ends_with(b"\r\n") {
            s.read_exact(&mut byte).unwrap();
            reply.push(byte[0]);
        }
        let mut line = String::from_utf8_lossy(&reply[..reply.len() - 2]).into_owned();
        if let Some(len) = line.strip_prefix('$').and_then(|n| n.parse::<usize>().ok()) {
            let mut body = vec![0u8; len + 2];
            s.read_exact(&mut body).unwrap();
            line = String::from_utf8_lossy(&body[..len]).into_owned();
        }
        line
    }

    pub fn signal(&self, signal: &str) {
        Command::new("kill").args([signal, &self.pid().to_string()]).status().unwrap();
    }
}

/// A free 127.0.0.1 port (for a `--tls-port`, say).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if self.child.is_some() {
            // A paused server must go on to die.
            self.signal("-CONT");
        }
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
