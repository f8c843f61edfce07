#!/bin/bash
# Durable submissions/s of several daemon builds, alternated round by round
# so that all see the same machine (BENCHMARKS.md, "Durable job submissions").
#
#   bench/submit_ab.sh BEFORE_TARGET_DIR AFTER_TARGET_DIR [ROUNDS]
#   bench/submit_ab.sh ROUNDS NAME=TARGET_DIR NAME=TARGET_DIR ...
#
# CLIENT=wrk measures with wrk instead of Python threads (a lighter client:
# the daemon's own CPU decides the rate). Each target dir holds a release
# build (`cargo build --release -p microfactoryd -p microfactory-machines`).
# Prints one line per round and level: which, round, clients,
# submissions/s, p50 ms, p99 ms, daemon CPU %.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${2:-}" == *=* ]]; then
  rounds=$1
  shift
  builds=("$@")
else
  rounds=${3:-3}
  builds=("before=$1" "after=$2")
fi
for r in $(seq 1 "$rounds"); do
  for b in "${builds[@]}"; do
    which=${b%%=*} t=${b#*=}
    CARGO_TARGET_DIR=$t python3 bench/daemon_bench.py submit --concurrency 1,8 --duration 10 \
      --client "${CLIENT:-python}" 2>/dev/null |
      python3 -c '
import json, sys
t = sys.stdin.read(); d = json.loads(t[t.index("{"):])
for x in d["results"]:
    print(sys.argv[1], sys.argv[2], x["concurrency"], x["per_s"], x["p50_ms"], x["p99_ms"],
          x["daemon_cpu_pct_of_core"], flush=True)
' "$which" "$r"
  done
done
