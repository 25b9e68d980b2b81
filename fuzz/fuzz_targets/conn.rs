#![no_main]

// The input is a little script of operations on one Conn: see run_conn in tests/support/src/fuzz_checks.rs.
libfuzzer_sys::fuzz_target!(|data: &[u8]| mioket_fuzz::run_conn(data));
