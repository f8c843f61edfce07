#!/usr/bin/env python3
"""Where a durable submission's CPU goes, in perf samples per 1000
submissions (BENCHMARKS.md, session 9).

    cargo build --release -p microfactoryd -p microfactory-machines
    python3 bench/submit_profile.py [--clients 8 --seconds 4] [FRAME ...]

Starts the daemon as `daemon_bench.py submit` does (one disabled simulated
printer), drives `POST /api/v1/jobs` with wrk, and records the daemon with
`perf record --call-graph dwarf` for `--seconds`. Prints the samples of
all its threads, and of those whose stack holds each FRAME (a substring of
a symbol), per 1000 submissions: comparable between builds whatever their
rate. Needs `perf` and `wrk`; run as root or with perf_event_paranoid <= 1.
Not part of CI.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import daemon_bench as db  # noqa: E402

DEFAULT_FRAMES = [
    "http::api::guard", "Factory::submit", "store::Store::commit", "journal::write",
    "Tree::insert", "Tree::get", "IoBufs::write_to_log", "sled::threadpool::perform_work",
    "_int_malloc", "tracing_core::event::Event::dispatch",
]


def stacks(perf_data: Path) -> list[list[str]]:
    """Each sample's frames (symbols), leaf first."""
    out = subprocess.run(["perf", "script", "-i", str(perf_data), "-F", "comm,ip,sym"],
                         capture_output=True, text=True, check=True).stdout
    samples: list[list[str]] = []
    for line in out.splitlines():
        if not line.strip():
            continue
        if not line[0].isspace():
            samples.append([])
        elif samples:
            parts = line.split(None, 1)
            samples[-1].append(parts[1] if len(parts) > 1 else parts[0])
    return samples


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=int, default=4)
    ap.add_argument("frames", nargs="*", default=DEFAULT_FRAMES)
    a = ap.parse_args()
    args = argparse.Namespace(keep=False)
    f = db.Factory(args, 1, 0)
    f.wait_online()
    file_id = f.api.upload(db.DATA / "coupling_pla.gcode")
    for mid, _, _ in f.machines:
        f.api.post(f"/machines/{mid}/disable")
    lua = f.dir / "submit.lua"
    body = json.dumps({"file_id": file_id, "kind": "printer"})
    lua.write_text('wrk.method = "POST"\nwrk.body = %s\n'
                   'wrk.headers["Content-Type"] = "application/json"\n' % json.dumps(body))
    # wrk runs past both ends of the recording; the submissions inside it
    # are wrk's steady rate times its length (works for any build, the
    # first daemon's included).
    w = subprocess.Popen(["wrk", "-t1", f"-c{a.clients}", f"-d{a.seconds + 4}s", "-s", str(lua),
                          "-H", f"Authorization: Bearer {f.token}", f"{f.base}/api/v1/jobs"],
                         stdout=subprocess.PIPE, text=True)
    db.CHILDREN.append(w)
    time.sleep(1.5)
    with tempfile.TemporaryDirectory(prefix="mfd-profile-") as d:
        data = Path(d) / "perf.data"
        subprocess.run(["perf", "record", "-q", "--call-graph", "dwarf,32768", "-F", "1500",
                        "-p", str(f.daemon.pid), "-o", str(data), "--", "sleep", str(a.seconds)],
                       check=True)
        out, _ = w.communicate()
        samples = stacks(data)
    db.cleanup()
    rate = next((float(line.split()[1]) for line in out.splitlines()
                 if line.startswith("Requests/sec:")), 0.0)
    if "Non-2xx" in out or rate <= 0:
        sys.exit(f"wrk did not submit cleanly:\n{out}")
    n = rate * a.seconds
    per = {"all": round(1000 * len(samples) / n, 1)}
    for frame in a.frames:
        per[frame] = round(1000 * sum(any(frame in s for s in st) for st in samples) / n, 1)
    print(json.dumps({"bench": "submit_profile", "clients": a.clients, "seconds": a.seconds,
                      "submissions_per_s": rate, "samples_per_1000_submissions": per}, indent=2))


if __name__ == "__main__":
    main()
