#!/usr/bin/env bash
# Lints every crate (cargo fmt --check, cargo clippy -D warnings), then runs every
# test: unit, property and wire-level tests with the fuzz-corpus replay
# (cargo test over the workspace: the server, benches/mioket-load and tests/support),
# the client libraries' tests (clients/js with node --test, clients/python with pytest in a
# venv under target/), Autobahn|Testsuite 1-10 and 12-13, and the browser tests in headless
# Chromium. Installs what it needs (Python venvs for kosoku and the Python client, npm
# packages, Debian's chromium and
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

# The Python client (clients/python/) against the binary just built, in a venv of its own.
echo "== python client"
py_venv=target/py-client-venv
if [ ! -x "$py_venv/bin/python" ]; then
    python3 -m venv "$py_venv"
fi
"$py_venv/bin/pip" install --quiet --disable-pip-version-check "./clients/python[test]"
# pytest's exit code 5 (no tests collected) fails the run like any other failure
(cd clients/python && MIOKET_BIN="$OLDPWD/target/release/mioket" \
    "$OLDPWD/$py_venv/bin/python" -m pytest -q -p no:cacheprovider)

echo "== autobahn"
bash scripts/autobahn.sh

if [ -x tests/browser/run.sh ] || [ -f tests/browser/run.sh ]; then
    echo "== browser"
    MIOKET_BIN="$PWD/target/release/mioket" bash tests/browser/run.sh
fi
