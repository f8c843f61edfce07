#!/usr/bin/env python3
"""Instructions the daemon executes per durable job submission, counted by
valgrind's callgrind: exact and repeatable on a busy machine, where the
wall-clock rate of `daemon_bench.py submit` varies by half.

    cargo build --release -p microfactoryd -p microfactory-machines
    python3 bench/submit_instructions.py [--small 300 --large 1300]

Runs the daemon under callgrind twice (one simulated printer, disabled, so
jobs stay queued, as in `daemon_bench.py submit`), submits `small` and then
`large` jobs one at a time, and divides the difference of the two totals by
`large - small`: start-up and shutdown cancel out. Counts user-space
instructions of every daemon thread (HTTP, store, log readers); the kernel
(fsync, context switches) is not in it. Needs `valgrind`. Not part of CI.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import daemon_bench as db  # noqa: E402


def total_instructions(submissions: int, out: Path) -> int:
    real_popen = subprocess.Popen

    def under_callgrind(cmd, *a, **k):
        if str(cmd[0]).endswith("microfactoryd") and "token" not in cmd:
            cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                   "--dump-instr=no"] + list(cmd)
        return real_popen(cmd, *a, **k)

    db.subprocess.Popen = under_callgrind
    try:
        args = argparse.Namespace(keep=False)
        f = db.Factory(args, 1, 0)
        f.wait_online(600)
        file_id = f.api.upload(db.DATA / "coupling_pla.gcode")
        for mid, _, _ in f.machines:
            f.api.post(f"/machines/{mid}/disable")
        body = json.dumps({"file_id": file_id, "kind": "printer"}).encode()
        api = db.Api(f.base, f.token)
        for _ in range(submissions):
            status, _ = api.request("POST", "/jobs", body, "application/json")
            if status != 201:
                sys.exit(f"a submission was answered {status}")
        f.daemon.send_signal(signal.SIGTERM)
        f.daemon.wait(120)
    finally:
        db.subprocess.Popen = real_popen
        db.cleanup()
    m = re.search(r"^totals: (\d+)", out.read_text(), re.M)
    if not m:
        sys.exit(f"no totals in {out}")
    return int(m.group(1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", type=int, default=300)
    ap.add_argument("--large", type=int, default=1300)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="mfd-callgrind-") as d:
        small = total_instructions(a.small, Path(d) / "small.out")
        large = total_instructions(a.large, Path(d) / "large.out")
    per = (large - small) / (a.large - a.small)
    print(json.dumps({"bench": "submit_instructions", "small": a.small, "large": a.large,
                      "instructions_per_submission": round(per)}, indent=2))


if __name__ == "__main__":
    main()
