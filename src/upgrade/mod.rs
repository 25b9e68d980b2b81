//! Upgrading the binary without dropping a connection (issue 24; README, "Upgrades"):
//! the old process hands its listening sockets, its connections' sockets and a
//! snapshot of the application to a new process it starts, over a Unix socket pair.
//!
//! - `snapshot`: the format (a magic, `FORMAT_VERSION`, a checksum, the state in
//!   postcard) and the application's `freeze`, `thaw` and `restore`.
//! - `channel`: the socket's messages, with file descriptors beside them (`SCM_RIGHTS`).
//! - `handover`: the exchange (hello, state, confirm or abort) and starting the new process.
//! - `notify`: telling systemd the new main pid.
//! - `command`: `mioket upgrade --pid PID`, and the outcome the old process leaves for it.

pub mod channel;
pub mod command;
pub mod handover;
pub(crate) mod notify;
pub mod snapshot;
