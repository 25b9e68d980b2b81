//! mioket-load: a WebSocket load generator on one mio loop. Its WebSocket client is its
//! own (std, mio and socket2; nothing from mioket), so that the server is never tested
//! against its own protocol code.
//!
//! Workloads (each bounded by --duration, each printing one JSON line and a summary):
//!   echo       C connections each send an S-byte binary message and wait for its echo
//!   broadcast  N subscribers and P publishers; a publisher sends its next message when
//!              its previous one came back to it; delivery latency from a timestamp
//!              embedded in the payload
//!   rooms      R rooms of M members, each member connected with its room's path
//!              (`/room-<i>`); P publishers publish into their rooms in turn, each
//!              through its own member of the room; delivery latency as in broadcast,
//!              and any message that reaches a member of another room is a misroute
//!   connect    open, upgrade, close (the full closing handshake), K in flight
//!   idle       hold N upgraded connections; the server's RSS per connection
//!   empty-rooms  the server's RSS per empty room: N open-upgrade-close cycles each to
//!              a room of its own, after N to one room to warm the allocator up
//!
//! Client frames are masked once, when the workload starts; per message only the
//! timestamp bytes of a broadcast are re-masked. Payload bytes are never copied or
//! unmasked on receipt: only the first few bytes of each message are looked at.
//! Unexpected text frames (a welcome, history replay) are skipped and pings answered.
//! Only loopback (127.0.0.0/8) targets are accepted. A `wss://` URL runs every workload
//! over TLS (rustls, see `tls.rs`).
//!
//! Modules: `args` (the command line), `generator` (the run's state, stages and loop),
//! `client` (a connection: setup, read and write loop), `workloads` (what each workload
//! sends and does with what comes back), `empty_rooms`, `report` (the JSON line and the
//! summary), `frame` (client frames), `parser` (server frames, inflating), `stamp` (the
//! payload stamps), `histogram` (latencies); `corpus`, `deflate`, `procfs` and `tls`.

use args::{parse_args, Workload, USAGE};
use empty_rooms::empty_rooms;
use generator::Gen;

mod args;
mod client;
mod conn;
mod corpus;
mod deflate;
mod empty_rooms;
mod frame;
mod generator;
mod histogram;
mod parser;
mod procfs;
mod report;
mod stamp;
mod tls;
mod workloads;

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) if e.is_empty() => {
            print!("{USAGE}");
            return;
        }
        Err(e) => {
            eprintln!("mioket-load: {e}\n\n{USAGE}");
            std::process::exit(2);
        }
    };
    if args.workload == Workload::EmptyRooms {
        if let Err(e) = empty_rooms(args) {
            eprintln!("mioket-load: {e}");
            std::process::exit(1);
        }
        return;
    }
    let mut gen = match Gen::new(args) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("mioket-load: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = gen.run() {
        eprintln!("mioket-load: {e}");
        std::process::exit(1);
    }
    gen.report();
    std::thread::sleep(gen.a.hold);
}
