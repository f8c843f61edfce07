#!/usr/bin/env python3
"""Recovery speed on a noisy link: `microfactoryd stream` to a simulated
Marlin printer (`microfactory-sim`) at 1 Mbaud, motion 1000x real time, at
most one fault per line, for each noise level and latency; checks that the
executed log equals the source and prints one JSON object per run.

    cargo build --release -p microfactoryd -p microfactory-machines
    python3 bench/recovery_bench.py [--lines 6000] [--latency 1,16] [--seeds 1]
        [--mode auto|buffered] [--noise clean,light,heavy] [--timeout 1800]
        [--bin target/release]

Standard library only. The file is the first N `G1` moves of
tests/data/gcode/coupling_pla.gcode (a fine-segment print) behind
`G21 G90 M82`, as in machines/benches/streaming.rs.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data" / "gcode" / "coupling_pla.gcode"
REL = ROOT / "target" / "release"  # --bin overrides (a saved "before" build)
NOISE = {
    "clean": [],
    "light": ["--corrupt-rate", "0.001", "--drop-rate", "0.0001"],
    "heavy": ["--corrupt-rate", "0.01"],
}
HOST = ("M110", "M115", "M155", "M105", "M400", "M114")


def commands(text: str) -> list[str]:
    out = []
    for raw in text.splitlines():
        c = raw.split(";", 1)[0].strip()
        if c:
            out.append(" ".join(c.split()))
    return out


def compare(ran: list[str], lines: list[str]) -> dict:
    """Exactness, and when not exact how far off (commands missing from or
    added to the executed log, as multisets)."""
    from collections import Counter
    want, got = Counter(lines), Counter(ran)
    return {"exact": ran == lines,
            "missing": sum((want - got).values()),
            "extra": sum((got - want).values())}


def run(src: Path, lines: list[str], latency: float, noise: list[str], seed: int, mode: str,
        timeout: float) -> dict:
    with tempfile.TemporaryDirectory() as d:
        log = Path(d) / "executed.log"
        sim = subprocess.Popen(
            [str(REL / "microfactory-sim"), "--firmware", "marlin", "--baud", "1000000",
             "--time-scale", "1000", "--max-faults-per-line", "1", "--latency-ms", str(latency),
             "--seed", str(seed), "--log", str(log), *noise],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            assert sim.stdout is not None
            pty = sim.stdout.readline().strip()
            t0 = time.monotonic()
            try:
                out = subprocess.run(
                    [str(REL / "microfactoryd"), "stream", "--port", pty, "--baud", "1000000",
                     "--firmware", "marlin", "--mode", mode, "--json", str(src)],
                    capture_output=True, text=True, timeout=timeout)
            except subprocess.TimeoutExpired:
                ran = [c for c in log.read_text().splitlines() if not c.startswith(HOST)]
                return {"error": f"did not end within {timeout:.0f} s", **compare(ran, lines)}
            wall = time.monotonic() - t0
        finally:
            sim.terminate()
            sim.wait()
        if out.returncode != 0:
            return {"error": out.stderr.strip()[-500:], "code": out.returncode}
        summary = json.loads(out.stdout)
        ran = [c for c in log.read_text().splitlines() if not c.startswith(HOST)]
        summary.update(compare(ran, lines))
        summary["wall_seconds"] = round(wall, 2)
        return summary


def main() -> None:
    global REL
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lines", type=int, default=6000)
    ap.add_argument("--latency", default="1,16")
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--mode", default="auto")
    ap.add_argument("--noise", default=",".join(NOISE),
                    help="comma-separated of clean, light (corrupt 0.001, drop 0.0001), "
                         "heavy (corrupt 0.01); default all")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per run")
    ap.add_argument("--bin", type=Path, default=REL,
                    help="directory holding microfactoryd and microfactory-sim")
    args = ap.parse_args()
    REL = args.bin.resolve()
    if not DATA.is_file():
        sys.exit(f"bench data missing: {DATA}")
    for b in ("microfactory-sim", "microfactoryd"):
        if not (REL / b).is_file():
            sys.exit(f"missing {REL / b}: cargo build --release -p microfactoryd -p microfactory-machines")
    body = [l for l in DATA.read_text().splitlines() if l.startswith("G1 ")][: args.lines]
    text = "G21\nG90\nM82\n" + "\n".join(body) + "\n"
    lines = commands(text)
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / f"coupling-{args.lines}.gcode"
        src.write_text(text)
        clean_seconds: dict[float, float] = {}
        asked = args.noise.split(",")
        unknown = [k for k in asked if k not in NOISE]
        if unknown:
            sys.exit(f"unknown noise level(s) {unknown}; known: {list(NOISE)}")
        keys = [k for k in NOISE if k in asked]
        for latency in [float(x) for x in args.latency.split(",")]:
            for key in keys:
                for seed in range(1, args.seeds + 1):
                    r = run(src, lines, latency, NOISE[key], seed, args.mode, args.timeout)
                    r.update({"latency_ms": latency, "noise": key, "seed": seed, "mode": args.mode})
                    if key == "clean" and "seconds" in r:
                        clean_seconds[latency] = r["seconds"]
                    if key != "clean" and "seconds" in r and r.get("resends") and latency in clean_seconds:
                        r["ms_per_resend"] = round(
                            (r["seconds"] - clean_seconds[latency]) / r["resends"] * 1000, 2)
                    print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
