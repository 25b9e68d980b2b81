//! Test support for mioket's integration tests and benches (a dev-only crate).
//!
//! - [`server`]: the real binary on 127.0.0.1 port 0, tungstenite clients, raw sockets.
//! - [`frames`]: masked client frames and unmasked server frames, encoded and read by
//!   hand, independently of the server's `frame.rs` and `mask.rs`: a bug there must not
//!   be mirrored here.
//! - [`procfs`]: a process's RSS, CPU time and sockets from /proc.
//! - [`redis`]: a real `redis-server` for the backplane tests, on a free port, and
//!   `need_redis!()`, which skips a test where there is none.
//! - [`proxy`]: a TCP relay that can stall (no forwarding, sockets kept open), resume
//!   and cut its connections: network faults for the backplane tests.
//! - [`conn`]: open `Conn`s through the library's public API (allocation test, benches).
//! - [`fuzz_checks`], [`fuzz_rooms`]: what the fuzz targets (fuzz/) check on each
//!   input; the stable test tests/fuzz_replay.rs replays the corpora through the same
//!   checks.
//!
//! Everything but `conn` is re-exported at the root, for `use test_support::*`.
//! The path of the binary under test is the caller's: only the root crate's integration
//! tests know it (`env!("CARGO_BIN_EXE_mioket")`).

pub mod conn;
pub mod frames;
pub mod fuzz_checks;
pub mod fuzz_rooms;
pub mod fuzz_snapshot;
pub mod procfs;
pub mod proxy;
pub mod redis;
pub mod server;

pub use frames::*;
pub use procfs::*;
pub use server::*;
