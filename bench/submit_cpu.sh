#!/bin/bash
# The daemon's user and system CPU and context switches per durable
# submission, read from /proc over 5 s in the middle of a
# `daemon_bench.py submit` run (BENCHMARKS.md, "Session 7").
#
#   bench/submit_cpu.sh TARGET_DIR [CLIENTS]
set -euo pipefail
cd "$(dirname "$0")/.."
target=$1 clients=${2:-8}
out=$(mktemp)
CARGO_TARGET_DIR=$target python3 bench/daemon_bench.py submit --concurrency "$clients" --duration 12 >"$out" 2>/dev/null &
bench=$!
sleep 5
pid=$(pgrep -f "$target/release/microfactoryd --config" | head -1)
[ -n "$pid" ] || { echo "no daemon found" >&2; exit 1; }
snap() {
  awk '{print $14, $15}' "/proc/$pid/stat"
  cat /proc/"$pid"/task/*/status | awk '/voluntary_ctxt_switches/ {s += $2} END {print s}'
}
a=$(snap); sleep 5; b=$(snap)
wait $bench
python3 - "$out" $a $b <<'PY'
import json, os, sys
t = open(sys.argv[1]).read(); d = json.loads(t[t.index("{"):]); r = d["results"][0]
a = list(map(int, sys.argv[2:5])); b = list(map(int, sys.argv[5:8]))
n = r["per_s"] * 5
hz = os.sysconf("SC_CLK_TCK")
print(f"{r['per_s']}/s  user {(b[0]-a[0])/hz/n*1e6:.1f} us/submission  "
      f"system {(b[1]-a[1])/hz/n*1e6:.1f} us/submission  {(b[2]-a[2])/n:.1f} context switches/submission")
PY
rm -f "$out"
