#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mioket_fuzz::check_inflate(data));
