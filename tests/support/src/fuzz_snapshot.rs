//! The snapshot fuzz check (fuzz/fuzz_targets/snapshot.rs, replayed on stable by
//! tests/fuzz_replay.rs): a binary upgrade's snapshot reader on hostile bytes. It
//! never panics and never allocates from a declared size; whatever it accepts
//! restores, or is refused, and an application restored from it freezes again into
//! a snapshot this build reads.

use std::fmt;
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::Instant;

use mioket::app::{App, ClientIo};
use mioket::config::Config;
use mioket::upgrade::snapshot::{decode, decode_body, seal};

/// At most this many clients are restored (each on a /dev/null descriptor).
const MAX_CLIENTS: usize = 64;

struct NullIo(OwnedFd);

impl fmt::Display for NullIo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("fuzz")
    }
}

impl ClientIo for NullIo {
    fn socket_fd(&self) -> Option<RawFd> {
        Some(self.0.as_raw_fd())
    }
}

/// `data` as a whole snapshot, and as a body behind a valid header.
pub fn check_snapshot(data: &[u8]) {
    let _ = decode(data);
    let Ok(state) = decode_body(data) else { return };
    if state.clients.len() > MAX_CLIENTS {
        return;
    }
    let fds = (0..state.clients.len()).map(|_| OwnedFd::from(File::open("/dev/null").unwrap())).collect();
    let config = Config { history: 10, ..Config::default() };
    let now = Instant::now();
    let Ok(mut app) = App::restore(config, &seal(data), fds, now, NullIo) else { return };
    let again = app.freeze(now);
    assert!(decode(&again.bytes).is_ok(), "a restored application's own snapshot reads");
}
