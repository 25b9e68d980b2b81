//! Shared command line of the peer servers: `--mode echo|broadcast --port N`.
//! Every server binds 127.0.0.1 only and prints `listening on ws://127.0.0.1:PORT`.

use std::io::Write;
use std::net::SocketAddr;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Mode {
    Echo,
    Broadcast,
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
            ("--port", Some(p)) => port = p.parse().expect("--port N"),
            _ => {
                eprintln!("usage: {} [--mode echo|broadcast] [--port N]", std::env::args().next().unwrap_or_default());
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
