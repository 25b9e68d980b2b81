#!/usr/bin/env bash
# Lints every crate (cargo fmt --check, cargo clippy -D warnings), then runs every
# test: unit, property and wire-level tests with the fuzz-corpus replay
# (cargo test over the workspace: the server, benches/mioket-load and tests/support),
# the JavaScript client's tests (node --test), Autobahn|Testsuite 1-10, and the browser
# tests in headless Chromium.
# Installs what it needs (a Python venv for kosoku, npm packages, Debian's chromium and
# redis-server).
set -euo pipefail
cd "$(dirname "$0")/.."

# Lint every crate: the root workspace, and fuzz/ and benches/peers/, which are
# workspaces of their own (own Cargo.lock, own target/). All on stable: only
# `cargo fuzz` needs nightly (-Zsanitizer); clippy just checks fuzz/, though
# libfuzzer-sys's build script still compiles libFuzzer's C++ (hence c++).
echo "== lint"
if ! command -v c++ >/dev/null; then
    echo "== installing g++ (apt-get)"
    sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get -o DPkg::Lock::Timeout=600 update
    DEBIAN_FRONTEND=noninteractive $sudo apt-get -o DPkg::Lock::Timeout=600 install -y g++
fi
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
for crate in fuzz benches/peers; do
    echo "-- $crate"
    cargo fmt --manifest-path "$crate/Cargo.toml" --check
    cargo clippy --manifest-path "$crate/Cargo.toml" --all-targets -- -D warnings
done

# The backplane tests (tests/redis.rs) start a real redis-server of their own.
if ! command -v redis-server >/dev/null; then
    echo "== installing redis-server (apt-get)"
    sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get -o DPkg::Lock::Timeout=600 update
    DEBIAN_FRONTEND=noninteractive $sudo apt-get -o DPkg::Lock::Timeout=600 install -y redis-server
fi

echo "== cargo test"
cargo test --release --workspace --all-targets

# The JavaScript client (clients/js) against the release binary cargo test just built:
# its only dependency is the `ws` package, for the tests (Node 20 has no global WebSocket).
echo "== clients/js"
(cd clients/js && npm ci --no-audit --no-fund && MIOKET_BIN="$PWD/../../target/release/mioket" npm test)

echo "== autobahn"
bash scripts/autobahn.sh

if [ -x tests/browser/run.sh ] || [ -f tests/browser/run.sh ]; then
    echo "== browser"
    MIOKET_BIN="$PWD/target/release/mioket" bash tests/browser/run.sh
fi
