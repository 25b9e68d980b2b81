#!/usr/bin/env python3
"""Per-message profile from two callgrind runs that differ only in message count:
callgrind_diff.py BIG.out SMALL.out MESSAGES [TOP] prints (BIG - SMALL) / MESSAGES per
function (exclusive instructions), so start-up and connection set-up cancel out.
Add --inclusive to compare inclusive costs (callgrind_annotate --inclusive=yes)."""

import re
import subprocess
import sys

args = [a for a in sys.argv[1:] if not a.startswith("--")]
inclusive = "--inclusive" in sys.argv
big, small, n = args[0], args[1], float(args[2])
top = int(args[3]) if len(args) > 3 else 30


def profile(path):
    cmd = ["callgrind_annotate", "--auto=no", "--threshold=100", f"--inclusive={'yes' if inclusive else 'no'}", path]
    text = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    costs = {}
    for line in text.splitlines():
        m = re.match(r"\s*([\d,]+)\s+(?:\([^)]*\)\s+)?(.+?:.+?)(?:\s+\[.*\])?$", line)
        if m and "PROGRAM TOTALS" not in line:
            name = m.group(2)
            # Drop the source file: group by function.
            func = name.split(":", 1)[1] if ":" in name else name
            costs[func] = costs.get(func, 0) + int(m.group(1).replace(",", ""))
    return costs


a, b = profile(big), profile(small)
diff = {k: (a.get(k, 0) - b.get(k, 0)) / n for k in set(a) | set(b)}
total = sum(diff.values())
print(f"{total:10.1f}  total per unit")
for k, v in sorted(diff.items(), key=lambda kv: -kv[1])[:top]:
    print(f"{v:10.1f}  {k[:150]}")
