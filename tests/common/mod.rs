//! The wire-level tests' helpers: the test support crate (tests/support), plus the one
//! thing it cannot know, where cargo built the binary under test (`CARGO_BIN_EXE_mioket`
//! exists only in this crate's integration tests).
#![allow(dead_code)]

pub use test_support::*;

/// `Server::start(&args)`: the real binary on 127.0.0.1, port 0.
pub trait StartMioket {
    fn start(args: &[&str]) -> Server;
    /// The server under `ulimit -n fd_limit`.
    fn start_with_fd_limit(fd_limit: u32, args: &[&str]) -> Server;
}

impl StartMioket for Server {
    fn start(args: &[&str]) -> Server {
        Server::start_bin(env!("CARGO_BIN_EXE_mioket"), args)
    }

    fn start_with_fd_limit(fd_limit: u32, args: &[&str]) -> Server {
        Server::start_bin_with_fd_limit(env!("CARGO_BIN_EXE_mioket"), fd_limit, args)
    }
}
