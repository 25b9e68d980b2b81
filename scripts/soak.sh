#!/usr/bin/env bash
# Bounded soak against one mioket (release build): for a few minutes (default 3),
# clients churn: they open and chat, send floods of big messages, vanish without a
# close, close properly, stall mid-handshake or mid-frame, break the protocol, read
# too slowly, fetch plain HTTP pages. At the end every connection must be gone
# (the server's /proc/PID/fd holds no client socket, `ss` shows none, /metrics
# counts none) and the server's RSS must be back near its start.
#
# It prints the figures (start/peak/end RSS, and beside it the kernel memory of the
# server's sockets from `ss -tm`, which RSS does not show; connections made by kind,
# messages sent and received, errors, the server's own counters) and exits non-zero if
# connections leak, RSS stays high or a client saw an unexpected answer.
#
# Usage: scripts/soak.sh [MINUTES]          (fractions allowed: 0.5)
# Environment: SOAK_CLIENTS (concurrent clients, 48), SOAK_SEED (a number, to
# replay a run), SOAK_RSS_SLACK_MIB (allowed end-start RSS, 16), CARGO_TARGET_DIR.
# The driver is the ignored test soak::soak_churn in tests/attacks.rs.
set -euo pipefail
cd "$(dirname "$0")/.."

minutes="${1:-${SOAK_MINUTES:-3}}"
case "$minutes" in
    '' | *[!0-9.]* | *.*.*)
        echo "usage: $0 [MINUTES]" >&2
        exit 2
        ;;
esac
secs=$(awk -v m="$minutes" 'BEGIN { printf "%.1f", m * 60 }')

echo "== soak: ${minutes} min (${secs} s), ${SOAK_CLIENTS:-48} clients"
SOAK_SECS="$secs" cargo test --release --test attacks -- --ignored --exact soak::soak_churn --nocapture
