#!/bin/bash
# System calls, context switches and bytes written per durable submission
# (BENCHMARKS.md, session 10): perf's syscall tracepoints and
# /proc/PID/io over 5 s in the middle of a `daemon_bench.py submit
# --client wrk` run. Needs perf with tracepoints (root, or
# perf_event_paranoid <= 1) and wrk. Not part of CI.
#
#   bench/submit_syscalls.sh TARGET_DIR [CLIENTS]
set -euo pipefail
cd "$(dirname "$0")/.."
target=$1 clients=${2:-8}
out=$(mktemp) stat=$(mktemp) io=$(mktemp)
trap 'rm -f "$out" "$stat" "$io"' EXIT
CARGO_TARGET_DIR=$target python3 bench/daemon_bench.py submit --concurrency "$clients" --duration 12 --client wrk >"$out" 2>/dev/null &
bench=$!
sleep 5
pid=$(pgrep -f "$target/release/microfactoryd --config" | head -1)
a=$(grep -E "^(wchar|syscw)" /proc/$pid/io | awk "{print \$2}" | tr "\n" " ")
perf stat -x, -e raw_syscalls:sys_enter,syscalls:sys_enter_fsync,syscalls:sys_enter_fdatasync,syscalls:sys_enter_pwrite64,syscalls:sys_enter_futex,syscalls:sys_enter_write,syscalls:sys_enter_epoll_wait,context-switches,task-clock -p $pid -o "$stat" -- sleep 5
b=$(grep -E "^(wchar|syscw)" /proc/$pid/io | awk "{print \$2}" | tr "\n" " ")
echo "io $a $b" > "$io"
wait $bench
python3 - "$out" "$stat" "$io" <<'PY'
import json, sys
t = open(sys.argv[1]).read(); d = json.loads(t[t.index("{"):]); r = d["results"][0]
n = r["per_s"] * 5
out = []
for line in open(sys.argv[2]):
    p = line.strip().split(",")
    if len(p) > 3:
        try: v = float(p[0])
        except ValueError: continue
        name = p[2].split(":")[-1].replace("sys_enter_","")
        out.append(f"{name} {v/n:.2f}" if name != "task-clock" else f"cpu_us {v/n*1000:.1f}")
io = open(sys.argv[3]).read().split()[1:]
out.append(f"bytes_written {(int(io[2])-int(io[0]))/n:.0f}")
print(f"{r['per_s']:6.0f}/s  " + "  ".join(out))
PY
