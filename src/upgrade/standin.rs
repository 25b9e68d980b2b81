//! A stand-in for the application's snapshot (h24-snap's `upgrade::snapshot`), until
//! it lands: nothing of the application moves, so every connection stays behind and
//! is closed with 1012 by the old process; the listeners move.

use std::os::fd::{OwnedFd, RawFd};
use std::time::Instant;

use crate::app::{App, ClientIo};
use crate::auth::Auth;
use crate::config::Config;

pub const FORMAT_VERSION: u32 = 1;

pub struct Frozen {
    pub bytes: Vec<u8>,
    pub fds: Vec<RawFd>,
}

pub fn freeze<T: ClientIo>(_app: &mut App<T>, _now: Instant) -> Frozen {
    Frozen { bytes: Vec::new(), fds: Vec::new() }
}

pub fn thaw<T: ClientIo>(_app: &mut App<T>, _now: Instant) {}

/// Whether this binary reads snapshots of `format`.
pub fn reads(format: u32) -> bool {
    format == FORMAT_VERSION
}

pub fn restore<T: ClientIo>(
    config: Config,
    auth: Auth,
    _bytes: &[u8],
    _fds: Vec<OwnedFd>,
    _now: Instant,
) -> Result<App<T>, String> {
    Ok(App::with_auth(config, auth))
}
