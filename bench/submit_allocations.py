#!/usr/bin/env python3
"""Heap allocations the daemon makes per durable job submission, counted
by valgrind's DHAT (BENCHMARKS.md, session 10).

    cargo build --release -p microfactoryd -p microfactory-machines
    python3 bench/submit_allocations.py [--small 500 --large 1500]

Runs the daemon under `valgrind --tool=dhat` twice (one simulated
printer, disabled, as in `daemon_bench.py submit`), uploads one file,
submits `small` and then `large` jobs one at a time, and divides the
difference of the two runs' allocation counts by `large - small`, site by
site (a site is its stack): start-up, the upload and shutdown cancel out.
Also prints the sites that allocate most per submission, by the first
frame of ours in their stack. Needs `valgrind`. Not part of CI.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import daemon_bench as db  # noqa: E402


def run(submissions: int, out: Path) -> None:
    real_popen = subprocess.Popen

    def under_dhat(cmd, *a, **k):
        if str(cmd[0]).endswith("microfactoryd") and "token" not in cmd:
            cmd = ["valgrind", "--tool=dhat", f"--dhat-out-file={out}"] + list(cmd)
        return real_popen(cmd, *a, **k)

    db.subprocess.Popen = under_dhat
    try:
        f = db.Factory(argparse.Namespace(keep=False), 1, 0)
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


def sites(out: Path) -> collections.Counter[tuple[str, ...]]:
    """Allocations per stack."""
    d = json.loads(out.read_text())
    frames = d["ftbl"]
    counts: collections.Counter[tuple[str, ...]] = collections.Counter()
    for site in d["pps"]:
        counts[tuple(frames[i] for i in site["fs"])] += site["tbk"]
    return counts


def first_of_ours(stack: tuple[str, ...]) -> str:
    return next((re.sub(r"^.*?(microfactoryd::[\w:]+).*$", r"\1", s)
                 for s in stack if "microfactoryd::" in s), "(no frame of ours)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", type=int, default=500)
    ap.add_argument("--large", type=int, default=1500)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="mfd-dhat-") as d:
        runs = []
        for n in (a.small, a.large):
            out = Path(d) / f"dhat-{n}.json"
            run(n, out)
            runs.append(sites(out))
    small, large = runs
    per = a.large - a.small
    ours: collections.Counter[str] = collections.Counter()
    for stack in set(small) | set(large):
        ours[first_of_ours(stack)] += (large[stack] - small[stack]) / per
    total = (sum(large.values()) - sum(small.values())) / per
    print(json.dumps({"bench": "submit_allocations", "small": a.small, "large": a.large,
                      "allocations_per_submission": round(total, 1),
                      "largest": [{"per_submission": round(v, 1), "first_frame_of_ours": k}
                                  for k, v in ours.most_common(8)]}, indent=2))


if __name__ == "__main__":
    main()
