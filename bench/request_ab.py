#!/usr/bin/env python3
"""Requests/s of two small authenticated GETs, for comparing the HTTP layer of
two daemon builds (BENCHMARKS.md, "Session 8"):

    CARGO_TARGET_DIR=<target dir> python3 bench/request_ab.py NAME

Starts one simulated printer and the daemon of that target dir's release
build, uploads a file, then runs `wrk` for 8 s each on `GET
/api/v1/files/{id}` and `GET /api/v1/jobs?state=running` (an empty list),
with one connection and with eight. Prints NAME, path, wrk's options,
requests/s and mean latency. Needs `wrk`. Not part of CI.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import daemon_bench as db  # noqa: E402


def main() -> None:
    name = sys.argv[1] if len(sys.argv) > 1 else "build"
    f = db.Factory(argparse.Namespace(keep=False), 1, 0)
    f.wait_online()
    file_id = f.api.upload(db.DATA / "coupling_pla.gcode")
    try:
        for path in [f"/files/{file_id}", "/jobs?state=running"]:
            for threads, conns in [("-t1", "-c1"), ("-t2", "-c8")]:
                out = subprocess.run(
                    ["wrk", threads, conns, "-d8s", "-H", f"Authorization: Bearer {f.token}",
                     f"{f.base}/api/v1{path}"],
                    capture_output=True, text=True, check=True).stdout
                lines = out.splitlines()
                rps = next(l for l in lines if l.startswith("Requests/sec")).split()[1]
                lat = next(l for l in lines if "Latency" in l).split()[1]
                shown = "/files/{id}" if path.startswith("/files") else path
                print(name, shown, threads, conns, rps, lat, flush=True)
    finally:
        db.cleanup()


if __name__ == "__main__":
    main()
