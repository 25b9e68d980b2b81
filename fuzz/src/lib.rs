//! The fuzz targets' checks live in the dev-only test-support crate
//! (`tests/support/src/fuzz_checks.rs`, std and mioket's public API only), so that
//! `tests/fuzz_replay.rs` in the main crate replays the corpora through the very same
//! checks on stable.

pub use test_support::fuzz_checks::{check_frame_header, check_handshake, check_inflate, run_conn};
pub use test_support::fuzz_rooms::run_rooms;
pub use test_support::fuzz_snapshot::check_snapshot;
