#!/usr/bin/env bash
# Autobahn|Testsuite cases 1-10 against `mioket --mode echo`, through the kosoku
# runner (PyPI). Fails when any case is not OK, NON-STRICT or INFORMATIONAL, or
# when a close is UNCLEAN or has a WRONG CODE. Report: target/autobahn/index.html.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=target/autobahn-venv
if [ ! -x "$venv/bin/kosoku" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet kosoku
fi
cargo build --release --quiet
report=target/autobahn
rm -rf "$report"

log=$(mktemp)
./target/release/mioket --mode echo --max-message 67108864 --ping-interval 0 --port 0 >"$log" 2>/dev/null &
server=$!
trap 'kill $server 2>/dev/null || true; rm -f "$log"' EXIT
for _ in $(seq 100); do grep -q listening "$log" && break; sleep 0.1; done
addr=$(sed -n 's|^listening on ws://||p' "$log")
[ -n "$addr" ] || { echo "autobahn: server did not start"; exit 1; }

cases=()
for c in 1 2 3 4 5 6 7 9 10; do cases+=(-i "$c.*"); done
timeout 900 "$venv/bin/kosoku" -p 4 -o "$report" "${cases[@]}" "$addr"

python3 - "$report/index.json" <<'PY'
import collections, json, sys
results = json.load(open(sys.argv[1]))
counts, bad = collections.Counter(), []
for agent, cases in results.items():
    for case, r in cases.items():
        counts[r["behavior"]] += 1
        if r["behavior"] not in ("OK", "NON-STRICT", "INFORMATIONAL") or r["behaviorClose"] not in ("OK", "INFORMATIONAL"):
            bad.append(f'{case}: {r["behavior"]} / close {r["behaviorClose"]}')
total = sum(counts.values())
print("autobahn 1-10:", ", ".join(f"{n} {b}" for b, n in counts.most_common()), f"({total} cases)")
for line in bad:
    print("  FAILED", line)
print(f"autobahn: {total - len(bad)} passed, {len(bad)} failed")
sys.exit(1 if bad or total == 0 else 0)
PY
