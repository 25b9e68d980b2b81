#!/usr/bin/env bash
# Runs every test: unit, property and wire-level tests with the fuzz-corpus replay
# (cargo test over the workspace: the server, benches/mioket-load and tests/support),
# Autobahn|Testsuite 1-10, and the browser tests in headless Chromium.
# Installs what it needs (a Python venv for kosoku, npm packages, Debian's chromium).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo test"
cargo test --release --workspace --all-targets

echo "== autobahn"
bash scripts/autobahn.sh

if [ -x tests/browser/run.sh ] || [ -f tests/browser/run.sh ]; then
    echo "== browser"
    MIOKET_BIN="$PWD/target/release/mioket" bash tests/browser/run.sh
fi
