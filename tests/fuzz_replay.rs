//! Replays the fuzz seed corpora and the saved crash inputs through the very checks
//! the fuzz targets run (tests/support/src/fuzz_checks.rs), so a plain `cargo test`
//! on stable catches regressions without nightly or libFuzzer.

use std::fs;
use std::path::Path;

use test_support::fuzz_checks as checks;

/// Runs `check` on every file of fuzz/corpus/TARGET and fuzz/regressions/TARGET,
/// and names every file that fails.
fn replay(target: &str, check: fn(&[u8])) {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut seeds = 0;
    let mut failures = Vec::new();
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = fs::read_dir(fuzz.join(dir).join(target)) else { continue };
        let mut paths: Vec<_> =
            entries.map(|e| e.expect("readable directory").path()).filter(|p| p.is_file()).collect();
        paths.sort();
        for path in paths {
            let data = fs::read(&path).expect("readable input");
            seeds += usize::from(dir == "corpus");
            if let Err(panic) = std::panic::catch_unwind(|| check(&data)) {
                let why = panic.downcast_ref::<String>().map(String::as_str).or(panic.downcast_ref::<&str>().copied());
                failures.push(format!("{}: {}", path.display(), why.unwrap_or("?")));
            }
        }
    }
    // A moved or emptied corpus would otherwise pass silently.
    assert!(seeds > 0, "no seeds in fuzz/corpus/{target}");
    assert!(failures.is_empty(), "{} input(s) fail:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn frame_header_corpus_replays() {
    replay("frame_header", checks::check_frame_header);
}

#[test]
fn handshake_corpus_replays() {
    replay("handshake", checks::check_handshake);
}

#[test]
fn conn_corpus_replays() {
    replay("conn", checks::run_conn);
}

#[test]
fn rooms_corpus_replays() {
    replay("rooms", test_support::fuzz_rooms::run_rooms);
}

#[test]
fn snapshot_corpus_replays() {
    replay("snapshot", test_support::fuzz_snapshot::check_snapshot);
}

#[test]
fn inflate_corpus_replays() {
    replay("inflate", checks::check_inflate);
}
