//! The snapshot a binary upgrade hands to the new process, beside the sockets.
//!
//! # Format
//! ```text
//! "MIOKETSN"          8 bytes, the magic
//! FORMAT_VERSION      u32, little endian
//! length              u64, little endian: the body's bytes
//! checksum            u64, little endian: `checksum(body)`
//! body                app::AppState in postcard (serde, varints, no field names)
//! ```
//! The body is positional: any change to a type it holds (`AppState` and what it
//! holds: `ConnState`, `RoomsState`, `LimiterState`, `Grant`) is a format change. The
//! counters (`Metrics`) are the exception: they travel as JSON by field name, so a
//! counter added or removed is not one (an array whose length changes is). The rule for one: bump `FORMAT_VERSION`, keep reading the previous version
//! (its types beside the new ones, converted on reading), and keep a snapshot written
//! by the build before the change under tests/snapshots/ with a test that this build
//! reads it (tests/snapshot.rs). An unknown version is refused: the old process keeps
//! serving.
//!
//! # Reading hostile bytes
//! `decode` never panics and never allocates from a declared size: byte strings are
//! taken whole from the input after their length is checked against what is left,
//! sequences grow as their elements decode (`crate::frozen`), and the body's length
//! must be the bytes present. `restore` then checks what indexing relies on (rooms
//! and grants named by index, frame states, UTF-8 carries) and refuses what no
//! process could have written.
//!
//! # Why postcard
//! serde is already here (the v1 protocol's JSON); postcard is a small, well-kept,
//! stable and documented wire format (varints: an idle plain connection is about 30
//! bytes), with a borrowed-bytes decoder that checks every length against the input.
//! A hand-written writer would be as compact but would need a reader kept in step by
//! hand for every field.

use std::fmt;
use std::os::fd::{OwnedFd, RawFd};
use std::time::Instant;

use crate::app::{App, AppState, ClientIo};
use crate::auth::Auth;
use crate::config::Config;

/// The first bytes of every snapshot.
pub const MAGIC: [u8; 8] = *b"MIOKETSN";

/// The format this build writes (and the only one it reads so far).
pub const FORMAT_VERSION: u32 = 1;

const HEADER_LEN: usize = 8 + 4 + 8 + 8;

/// What `App::freeze` captured: the snapshot, and the sockets that go with it, in the
/// order of its clients. The fds stay the old process's (it serves on with them if
/// the handover fails); the new one gets its own copies (`SCM_RIGHTS`).
pub struct Frozen {
    pub bytes: Vec<u8>,
    pub fds: Vec<RawFd>,
}

/// Why a snapshot was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum SnapshotError {
    /// It does not start with `MAGIC` (or is shorter than a header).
    NotASnapshot,
    /// Written by a build whose format this one does not read.
    UnknownVersion(u32),
    /// Its length or checksum does not match its body, or the body does not decode.
    Corrupt(String),
    /// It decodes, but describes what no process could hold (or not with these sockets).
    Invalid(&'static str),
    /// The new process's own configuration could not be loaded (a key file).
    Config(String),
}

impl fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SnapshotError::NotASnapshot => f.write_str("not a mioket snapshot"),
            SnapshotError::UnknownVersion(v) => {
                write!(f, "snapshot format {v}, this build reads format {FORMAT_VERSION}")
            }
            SnapshotError::Corrupt(why) => write!(f, "corrupt snapshot: {why}"),
            SnapshotError::Invalid(why) => write!(f, "invalid snapshot: {why}"),
            SnapshotError::Config(why) => write!(f, "cannot restore: {why}"),
        }
    }
}

impl std::error::Error for SnapshotError {}

/// The snapshot of `state`.
pub fn encode(state: &AppState) -> Vec<u8> {
    // Serializing plain data into a vector cannot fail.
    let body = postcard::to_allocvec(state).unwrap_or_default();
    seal(&body)
}

/// A header for `body`: magic, version, length, checksum.
pub fn seal(body: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(HEADER_LEN + body.len());
    bytes.extend_from_slice(&MAGIC);
    bytes.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    bytes.extend_from_slice(&(body.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&checksum(body).to_le_bytes());
    bytes.extend_from_slice(body);
    bytes
}

/// The state a snapshot holds, or why not.
pub fn decode(bytes: &[u8]) -> Result<AppState, SnapshotError> {
    let (header, body) = bytes.split_at_checked(HEADER_LEN).ok_or(SnapshotError::NotASnapshot)?;
    let word = |at: usize| u64::from_le_bytes(header[at..at + 8].try_into().unwrap_or_default());
    if header[..8] != MAGIC {
        return Err(SnapshotError::NotASnapshot);
    }
    let version = u32::from_le_bytes(header[8..12].try_into().unwrap_or_default());
    if version != FORMAT_VERSION {
        return Err(SnapshotError::UnknownVersion(version));
    }
    if word(12) != body.len() as u64 {
        return Err(SnapshotError::Corrupt(format!("{} bytes of body, {} announced", body.len(), word(12))));
    }
    if word(20) != checksum(body) {
        return Err(SnapshotError::Corrupt("checksum".into()));
    }
    decode_body(body)
}

/// The body alone (what `decode` reads after the header; the fuzz target's way in).
pub fn decode_body(body: &[u8]) -> Result<AppState, SnapshotError> {
    match postcard::take_from_bytes::<AppState>(body) {
        Ok((state, [])) => Ok(state),
        Ok((_, rest)) => Err(SnapshotError::Corrupt(format!("{} bytes after the state", rest.len()))),
        Err(e) => Err(SnapshotError::Corrupt(e.to_string())),
    }
}

/// 64-bit FNV-1a over 8-byte words (the tail zero-padded): it catches a cut or a
/// flipped bit, at several GB/s. Not a defence against forgery: the snapshot comes
/// over a socket pair between two processes of the same user.
pub fn checksum(bytes: &[u8]) -> u64 {
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325 ^ bytes.len() as u64;
    let mut words = bytes.chunks_exact(8);
    for word in &mut words {
        hash = (hash ^ u64::from_le_bytes(word.try_into().unwrap_or_default())).wrapping_mul(PRIME);
        hash ^= hash >> 29;
    }
    let mut tail = [0u8; 8];
    tail[..words.remainder().len()].copy_from_slice(words.remainder());
    hash = (hash ^ u64::from_le_bytes(tail)).wrapping_mul(PRIME);
    hash ^ (hash >> 32)
}

impl<T: ClientIo> App<T> {
    /// Stops reading from every client, and captures everything: the application's
    /// state and the sockets of the clients that move (plain TCP between two events;
    /// TLS connections stay, see `close_unmoved`). Call it right after a flush of every
    /// client (what the sockets take without waiting is then written). Every client is
    /// parked until `thaw` or `close_unmoved`: events for it are stale (nothing is read,
    /// numbered or written), housekeeping waits and `connect` refuses.
    pub fn freeze(&mut self, now: Instant) -> Frozen {
        let started = Instant::now();
        let (state, fds) = self.freeze_state(now);
        let captured = started.elapsed();
        let bytes = encode(&state);
        log::debug!("freeze: state captured in {captured:?}, encoded in {:?}", started.elapsed() - captured);
        Frozen { bytes, fds }
    }

    /// Rollback: the handover failed; the clients that were to move are served on, as
    /// before. Readiness may have been missed meanwhile: read every client once.
    pub fn thaw(&mut self, now: Instant) {
        self.thaw_parked(now);
    }

    /// The new process: the application from a snapshot and the sockets that came
    /// with it (the same order), each made the runtime's by `io`: the i-th socket's
    /// client is client i (the runtime registers the sockets under those ids as they
    /// arrive). The runtime then flushes the clients with output (`drain_dirty_into`)
    /// and reads every one once.
    pub fn restore(
        config: Config,
        bytes: &[u8],
        fds: Vec<OwnedFd>,
        now: Instant,
        io: impl FnMut(OwnedFd) -> T,
    ) -> Result<App<T>, SnapshotError> {
        let started = Instant::now();
        let state = decode(bytes)?;
        let decoded = started.elapsed();
        let auth = Auth::from_config(&config).map_err(SnapshotError::Config)?;
        let mut app = App::restore_state(config, auth, state, fds, now, io).map_err(|e| SnapshotError::Invalid(e.0))?;
        app.adopt_rooms_in_backplane();
        log::debug!("restore: decoded in {decoded:?}, restored in {:?}", started.elapsed() - decoded);
        Ok(app)
    }
}
