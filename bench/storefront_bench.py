#!/usr/bin/env python3
"""Storefront benchmarks of BENCHMARKS.md ("Storefront"), with Debian's wrk:

    python3 bench/storefront_bench.py [--skus 100 --units 20 --duration 20]

1. One simulated printer makes `--units` units of each of `--skus` SKUs
   (auto-pass QC), so finished goods list every SKU with stock.
2. `GET /api/v1/inventory` with a storefront token: plain, then with the
   answer's ETag as `If-None-Match` (304s).
3. `POST /api/v1/orders` with bench/orders.lua: each request a new order
   with its own external_id and Idempotency-Key, acknowledged only once
   durable; the daemon's order count is checked against wrk's.

Build first (nothing is built here):
    cargo build --release -p microfactoryd -p microfactory-machines
Reuses bench/daemon_bench.py's process handling (everything started is
ended on exit). Not part of `cargo test` or CI.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import atexit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import daemon_bench as db  # noqa: E402

HERE = Path(__file__).resolve().parent
# A small print: a few moves, so each job takes milliseconds on the sim.
PLATE = "G28\nG90\nM83\nG1 Z0.2 F3000\nG1 X10 Y10 E1 F1500\nG1 X40 Y10 E2\nG1 Z5 F3000\n"


def start(args):
    bins = db.bin_dir()
    d = Path(tempfile.mkdtemp(prefix="mfd-shop-bench-"))
    if not args.keep:
        atexit.register(shutil.rmtree, d, True)
    sim = subprocess.Popen(
        [str(bins / "microfactory-sim"), "--firmware", "marlin", "--baud", "2000000",
         "--latency-ms", "0", "--time-scale", "1000", "--name", "p1"],
        stdout=subprocess.PIPE, stderr=open(d / "sim.err", "w"), text=True)
    db.CHILDREN.append(sim)
    pty = sim.stdout.readline().strip()
    if not pty:
        sys.exit("simulator did not start")
    config = d / "config.toml"
    config.write_text("\n".join([
        'listen = "127.0.0.1:0"', 'data_dir = "data"', "",
        "[[machine]]", 'id = "p1"', 'profile = "prusa-mk3s"', f'port = "{pty}"',
        "require_bed_clear = false", ""]))
    tokens = {}
    for role in ("operator", "storefront"):
        out = subprocess.run(
            [str(bins / "microfactoryd"), "token", "create", "--config", str(config),
             "--role", role, "--name", f"bench {role}"],
            capture_output=True, text=True, check=True)
        tokens[role] = out.stdout.strip()
    daemon = subprocess.Popen(
        [str(bins / "microfactoryd"), "--config", str(config)],
        stdout=subprocess.PIPE, stderr=open(d / "daemon.log", "w"), text=True)
    db.CHILDREN.append(daemon)
    line = daemon.stdout.readline().strip()
    if not line.startswith("listening on "):
        sys.exit(f"daemon did not start ({line!r}); see {d}/daemon.log")
    base = line.removeprefix("listening on ")
    threading.Thread(target=lambda: [None for _ in daemon.stdout], daemon=True).start()
    return d, daemon, base, tokens


def stock(api: db.Api, d: Path, skus: int, units: int) -> float:
    """Makes `units` of each SKU; returns the seconds it took."""
    deadline = time.monotonic() + 120
    while api.get("/machines")[0]["status"]["connection"] != "online":
        if time.monotonic() > deadline:
            sys.exit("the printer never came online")
        time.sleep(0.5)
    plate = d / "plate.gcode"
    plate.write_text(PLATE)
    file_id = api.upload(plate)
    t0 = time.monotonic()
    for i in range(skus):
        sku = f"bench-{i:03}"
        api.post("/products", {"sku": sku, "name": f"Bench part {i}", "file_id": file_id,
                               "units_per_job": units, "auto_pass": True, "weight_g": 25.0})
        api.post("/production-orders", {"sku": sku, "quantity": units})
    deadline = time.monotonic() + 1800
    while True:
        inv = api.get("/inventory")["items"]
        ready = sum(1 for i in inv if i["available"] >= units)
        if ready == skus:
            return time.monotonic() - t0
        if time.monotonic() > deadline:
            sys.exit(f"only {ready}/{skus} SKUs stocked")
        time.sleep(1)


def wrk(url: str, token: str, args, extra: list[str], connections: int,
        tail: list[str] = ()) -> dict:
    """Runs wrk; `tail` (after the URL) is `--` and a script's arguments."""
    if not shutil.which("wrk"):
        sys.exit("wrk not found: apt-get install -y wrk")
    cmd = ["wrk", f"-t{args.threads}", f"-c{connections}", f"-d{args.duration}s", "--latency",
           "-H", f"Authorization: Bearer {token}", *extra, url, *tail]
    shown = [("'Authorization: Bearer …'" if c.startswith("Authorization") else c) for c in cmd]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    db.CHILDREN.append(p)
    out, _ = p.communicate()
    res = {"cmd": " ".join(shown).replace(url, url.split("/api/v1")[1])}
    for line in out.splitlines():
        s = line.split()
        if line.startswith("Requests/sec:"):
            res["rps"] = float(s[1])
        elif line.strip().startswith(("50%", "75%", "90%", "99%")):
            res["p" + s[0].rstrip("%")] = s[1]
        elif line.strip().startswith("Latency") and len(s) >= 4:
            res["avg"], res["max"] = s[1], s[3]
        elif "requests in" in line:
            res["requests"] = int(s[0])
        elif "Non-2xx" in line:
            res["non_2xx_3xx"] = int(s[-1])
        elif line.startswith("Transfer/sec:"):
            res["transfer_per_s"] = s[1]
        elif line.strip().startswith("Socket errors"):
            res["socket_errors"] = line.strip()
    return res


PERF_DIR: Path | None = None


def measured(daemon_pid: int, fn, name: str = "") -> dict:
    """Runs `fn`, adding the daemon's CPU and the machine's load (and a
    perf profile of the daemon with --perf)."""
    perf = None
    if PERF_DIR is not None:
        PERF_DIR.mkdir(parents=True, exist_ok=True)
        perf = subprocess.Popen(["perf", "record", "-F", "499", "-g", "-p", str(daemon_pid),
                                 "-o", str(PERF_DIR / f"{name}.data")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        db.CHILDREN.append(perf)
    d0, t0 = db.cpu_ticks(daemon_pid), time.monotonic()
    b0 = db.machine_busy()
    load0 = os.getloadavg()[0]
    r = fn()
    b1 = db.machine_busy()
    dt = time.monotonic() - t0
    r["daemon_cpu_pct_of_core"] = round(100 * (db.cpu_ticks(daemon_pid) - d0) / db.TICK / dt, 1)
    r["machine_busy_pct"] = round(100 * (b1[0] - b0[0]) / max(1, b1[1] - b0[1]), 1)
    r["loadavg_1m_before"] = round(load0, 2)
    if perf is not None:
        perf.send_signal(2)
        perf.wait()
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--skus", type=int, default=100)
    ap.add_argument("--units", type=int, default=20, help="units made per SKU")
    ap.add_argument("--duration", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--connections", type=int, default=16, help="for the inventory reads")
    ap.add_argument("--order-clients", type=int, default=16)
    ap.add_argument("--only", choices=["inventory", "orders"], default=None)
    ap.add_argument("--perf", metavar="DIR", default=None,
                    help="perf record -g the daemon during each wrk run into DIR/<run>.data")
    args = ap.parse_args()
    started = time.strftime("%Y-%m-%d %H:%M")
    global PERF_DIR
    PERF_DIR = Path(args.perf).resolve() if args.perf else None
    d, daemon, base, tokens = start(args)
    db.log(f"daemon pid {daemon.pid} at {base}")
    api = db.Api(base, tokens["operator"])
    took = stock(api, d, args.skus, args.units)
    db.log(f"{args.skus} SKUs x {args.units} units stocked in {took:.0f} s")
    shop = db.Api(base, tokens["storefront"])
    c = http.client.HTTPConnection(shop.host, shop.port)
    c.request("GET", "/api/v1/inventory", headers={"Authorization": f"Bearer {tokens['storefront']}"})
    r = c.getresponse()
    body = r.read()
    etag = r.getheader("ETag")
    out = {"bench": "storefront", "skus": args.skus, "units_per_sku": args.units,
           "inventory_bytes": len(body), "results": {}}
    url = f"{base}/api/v1/inventory"
    if args.only in (None, "inventory"):
        out["results"]["inventory"] = measured(daemon.pid, lambda: wrk(
            url, tokens["storefront"], args, [], args.connections), "inventory")
        db.log(f"inventory: {json.dumps(out['results']['inventory'])}")
        out["results"]["inventory_if_none_match"] = measured(daemon.pid, lambda: wrk(
            url, tokens["storefront"], args, ["-H", f"If-None-Match: {etag}"], args.connections),
            "inventory_304")
        db.log(f"inventory 304: {json.dumps(out['results']['inventory_if_none_match'])}")
    if args.only in (None, "orders"):
        before = len(api.get("/orders"))
        run = f"r{int(time.time())}"
        res = measured(daemon.pid, lambda: wrk(
            f"{base}/api/v1/orders", tokens["storefront"], args,
            ["-s", str(HERE / "orders.lua")], args.order_clients, ["--", run, str(args.skus)]),
            "orders")
        after = api.get("/orders")
        res["orders_stored"] = len(after) - before
        res["orders_allocated"] = sum(1 for o in after if o["state"] == "allocated")
        out["results"]["orders"] = res
        db.log(f"orders: {json.dumps(res)}")
    out["daemon_vmhwm_mib"] = round(db.mem_kib(daemon.pid)["VmHWM"] / 1024, 1)
    out["host"] = db.host_info()
    out["date"] = started
    out["command"] = "python3 bench/storefront_bench.py " + " ".join(sys.argv[1:])
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
