#![no_main]

// A binary upgrade's snapshot reader on any bytes, whole and as a body behind a valid
// header, then restored and frozen again: see tests/support/src/fuzz_snapshot.rs.
libfuzzer_sys::fuzz_target!(|data: &[u8]| mioket_fuzz::check_snapshot(data));
