//! A binary upgrade with live connections (issue 24): the old process hands its
//! sockets and a snapshot of the application to the new one.
//!
//! - `snapshot`: the format (a magic, `FORMAT_VERSION`, a checksum, the state in
//!   postcard) and the application's `freeze`, `thaw` and `restore`.

pub mod snapshot;
