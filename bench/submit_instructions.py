#!/usr/bin/env python3
"""Instructions the daemon executes per durable job submission, counted by
valgrind's callgrind: exact and repeatable on a busy machine, where the
wall-clock rate of `daemon_bench.py submit` varies by half.

    cargo build --release -p microfactoryd -p microfactory-machines
    python3 bench/submit_instructions.py [--small 300 --large 1300] [--clients 8]

Runs the daemon under callgrind twice (one simulated printer, disabled, so
jobs stay queued, as in `daemon_bench.py submit`), submits `small` and then
`large` jobs (one at a time, or from `--clients` threads at once), and
divides the difference of the two totals by `large - small`: start-up and
shutdown cancel out. Counts user-space
instructions of the daemon's threads (HTTP, store, log readers); the kernel
(fsync, context switches) is not in it. Needs `valgrind`. Not part of CI.

Counted per thread (`--separate-threads=yes`): sled's I/O pool threads are
reported apart (`sled_pool`), since under valgrind they spend a varying,
time-dependent number of instructions waiting for work, which the
difference of two runs does not cancel (255k and 399k for one binary in
session 7); `instructions_per_submission` is every other thread's.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import daemon_bench as db  # noqa: E402


def total_instructions(submissions: int, out: Path, clients: int = 1) -> dict[str, int]:
    real_popen = subprocess.Popen

    def under_callgrind(cmd, *a, **k):
        if str(cmd[0]).endswith("microfactoryd") and "token" not in cmd:
            cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                   "--separate-threads=yes", "--dump-instr=no"] + list(cmd)
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
        failed: list[int] = []

        def client(n: int) -> None:
            api = db.Api(f.base, f.token)
            for _ in range(n):
                status, _ = api.request("POST", "/jobs", body, "application/json")
                if status != 201:
                    failed.append(status)
                    return

        share = [submissions // clients + (i < submissions % clients) for i in range(clients)]
        threads = [threading.Thread(target=client, args=(n,)) for n in share]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if failed:
            sys.exit(f"a submission was answered {failed[0]}")
        f.daemon.send_signal(signal.SIGTERM)
        f.daemon.wait(120)
    finally:
        db.subprocess.Popen = real_popen
        db.cleanup()
    totals = {"sled_pool": 0, "daemon": 0}
    files = sorted(out.parent.glob(out.name + "-*"))
    if not files:
        sys.exit(f"no callgrind output next to {out}")
    for f in files:
        text = f.read_text(errors="replace")
        m = re.search(r"^totals: (\d+)", text, re.M)
        if not m:
            sys.exit(f"no totals in {f}")
        kind = "sled_pool" if "sled::threadpool::perform_work" in text else "daemon"
        totals[kind] += int(m.group(1))
    return totals


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", type=int, default=300)
    ap.add_argument("--large", type=int, default=1300)
    ap.add_argument("--clients", type=int, default=1,
                    help="submit from this many threads at once (group commit, lock contention)")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="mfd-callgrind-") as d:
        small = total_instructions(a.small, Path(d) / "small.out", a.clients)
        large = total_instructions(a.large, Path(d) / "large.out", a.clients)
    def per(kind: str) -> int:
        return round((large[kind] - small[kind]) / (a.large - a.small))

    print(json.dumps({"bench": "submit_instructions", "small": a.small, "large": a.large,
                      "clients": a.clients,
                      "instructions_per_submission": per("daemon"),
                      "sled_pool_per_submission": per("sled_pool")}, indent=2))


if __name__ == "__main__":
    main()
