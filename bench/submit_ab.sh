#!/bin/bash
# Durable submissions/s of two daemon builds, alternated round by round so
# that both see the same machine (BENCHMARKS.md, "Durable job submissions").
#
#   bench/submit_ab.sh BEFORE_TARGET_DIR AFTER_TARGET_DIR [ROUNDS]
#
# Each target dir holds a release build (`cargo build --release -p
# microfactoryd -p microfactory-machines`). Prints one line per round and
# level: which, round, clients, submissions/s, p50 ms, p99 ms, daemon CPU %.
set -euo pipefail
cd "$(dirname "$0")/.."
before=$1 after=$2 rounds=${3:-3}
for r in $(seq 1 "$rounds"); do
  for which in before after; do
    if [ "$which" = before ]; then t=$before; else t=$after; fi
    CARGO_TARGET_DIR=$t python3 bench/daemon_bench.py submit --concurrency 1,8 --duration 10 2>/dev/null |
      python3 -c '
import json, sys
t = sys.stdin.read(); d = json.loads(t[t.index("{"):])
for x in d["results"]:
    print(sys.argv[1], sys.argv[2], x["concurrency"], x["per_s"], x["p50_ms"], x["p99_ms"], x["daemon_cpu_pct_of_core"])
' "$which" "$r"
  done
done
