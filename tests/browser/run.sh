#!/usr/bin/env bash
# Browser tests: clients/index.html and clients/echo.html in headless Chromium
# (Debian's package, driven by playwright-core) against the real mioket binary.
# Installs what it needs, builds the server unless MIOKET_BIN names one, and runs
# `node --test`. Exits non-zero on any failure.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"

if [ ! -x /usr/bin/chromium ]; then
    echo "== installing chromium (apt-get)"
    sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    # Another apt-get may hold the lock for a while: wait for it rather than fail.
    $sudo apt-get -o DPkg::Lock::Timeout=600 update
    DEBIAN_FRONTEND=noninteractive $sudo apt-get -o DPkg::Lock::Timeout=600 install -y chromium
fi

echo "== npm ci (tests/browser)"
(cd "$here" && npm ci --no-audit --no-fund)

if [ -z "${MIOKET_BIN:-}" ]; then
    echo "== cargo build --release"
    (cd "$root" && cargo build --release)
    export MIOKET_BIN="$root/target/release/mioket"
fi

echo "== node --test (server: $MIOKET_BIN)"
cd "$here"
node --test
