//! The fuzz targets' checks. They live in `checks.rs`, a plain module of std and
//! mioket's public API, so that `tests/fuzz_replay.rs` in the main crate can include
//! the very same file and replay the corpora on stable.

#[path = "../checks.rs"]
mod checks;

pub use checks::{check_frame_header, check_handshake, run_conn};
