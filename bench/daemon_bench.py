#!/usr/bin/env python3
"""Daemon benchmarks of BENCHMARKS.md ("Daemon"): standard library only.

    python3 bench/daemon_bench.py fleet  [--printers 80 --mills 20 --window 90]
    python3 bench/daemon_bench.py submit [--machines 1 --duration 20 --concurrency 1,8,32 --client python|wrk]
    python3 bench/daemon_bench.py read   [--printers 80 --mills 20 --jobs 1000 --duration 20]

Each run builds nothing: build first with
    cargo build --release -p microfactoryd -p microfactory-machines
(the binaries are taken from $CARGO_TARGET_DIR/release, default target/release).

Every process started here (simulators, daemon, wrk) is ended on exit, also
on Ctrl-C or an error; the temporary directory is removed unless --keep.
Not part of `cargo test` or CI.
"""

from __future__ import annotations

import argparse
import atexit
import http.client
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data" / "gcode"
TICK = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024

CHILDREN: list[subprocess.Popen] = []


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def cleanup() -> None:
    """Ends every child we started: SIGTERM, then SIGKILL after 5 s."""
    live = [p for p in CHILDREN if p.poll() is None]
    for p in live:
        try:
            p.terminate()
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 5
    for p in live:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    CHILDREN.clear()


def on_signal(signum, _frame):
    cleanup()
    sys.exit(128 + signum)


atexit.register(cleanup)
signal.signal(signal.SIGTERM, on_signal)
signal.signal(signal.SIGINT, on_signal)


def raise_nofile(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        new = min(need, hard) if hard != resource.RLIM_INFINITY else need
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        log(f"RLIMIT_NOFILE raised {soft} -> {new}")


def bin_dir() -> Path:
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    d = target / "release"
    for b in ("microfactoryd", "microfactory-sim"):
        if not (d / b).is_file():
            sys.exit(f"{d / b} missing: cargo build --release -p microfactoryd -p microfactory-machines")
    return d


# ------------------------------------------------------------------ /proc


def cpu_ticks(pid: int) -> int:
    """utime + stime of a process, clock ticks."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def mem_kib(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM", "Threads"):
                out[k] = int(v.split()[0])
    return out


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def machine_busy() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    with open("/proc/stat") as f:
        vals = [int(x) for x in f.readline().split()[1:]]
    idle = vals[3] + vals[4]
    total = sum(vals[:8])
    return total - idle, total


def host_info() -> str:
    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal"):
                mem = int(line.split()[1]) // (1024 * 1024)
    return f"{os.cpu_count()} cores ({model}), {mem} GiB, kernel {os.uname().release}"


# -------------------------------------------------------------------- HTTP


class Api:
    def __init__(self, base: str, token: str):
        u = urllib.parse.urlparse(base)
        self.host, self.port = u.hostname, u.port
        self.token = token
        self.conn = None

    def _conn(self):
        if self.conn is None:
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=120)
        return self.conn

    def request(self, method: str, path: str, body: bytes | None = None,
                ctype: str | None = None) -> tuple[int, object]:
        headers = {"Authorization": f"Bearer {self.token}"}
        if ctype:
            headers["Content-Type"] = ctype
        for attempt in (0, 1):
            try:
                c = self._conn()
                c.request(method, "/api/v1" + path, body=body, headers=headers)
                r = c.getresponse()
                data = r.read()
                break
            except (http.client.HTTPException, ConnectionError):
                self.conn = None
                if attempt:
                    raise
        return r.status, (json.loads(data) if data else None)

    def get(self, path: str):
        st, v = self.request("GET", path)
        if st != 200:
            raise RuntimeError(f"GET {path}: {st} {v}")
        return v

    def post(self, path: str, obj: object | None = None):
        body = json.dumps(obj).encode() if obj is not None else b""
        st, v = self.request("POST", path, body, "application/json" if obj is not None else None)
        if st not in (200, 201):
            raise RuntimeError(f"POST {path}: {st} {v}")
        return v

    def upload(self, path: Path) -> str:
        boundary = uuid.uuid4().hex
        body = (
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"{path.name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
        ).encode() + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
        st, v = self.request("POST", "/files", body, f"multipart/form-data; boundary={boundary}")
        if st not in (200, 201):
            raise RuntimeError(f"upload {path.name}: {st} {v}")
        return v["id"]


# ----------------------------------------------------------------- harness


class Factory:
    """Simulators as processes, a config naming their PTYs, and the daemon."""

    def __init__(self, args, printers: int, mills: int, latency_ms: float = 1.0,
                 time_scale: float = 1.0):
        self.bins = bin_dir()
        self.dir = Path(tempfile.mkdtemp(prefix="mfd-bench-"))
        if not args.keep:
            atexit.register(shutil.rmtree, self.dir, True)
        else:
            log(f"keeping {self.dir}")
        raise_nofile(4096 + 16 * (printers + mills))
        self.sims: list[subprocess.Popen] = []
        self.machines: list[tuple[str, str, str]] = []  # id, profile, pty
        specs = [("p", "marlin", "prusa-mk3s")] * printers + [("m", "grbl", "grbl-3018")] * mills
        counts = {"p": 0, "m": 0}
        for prefix, fw, profile in specs:
            counts[prefix] += 1
            mid = f"{prefix}{counts[prefix]:03}"
            p = subprocess.Popen(
                [str(self.bins / "microfactory-sim"), "--firmware", fw, "--baud", "115200",
                 "--latency-ms", str(latency_ms), "--time-scale", str(time_scale),
                 "--name", mid],
                stdout=subprocess.PIPE, stderr=open(self.dir / f"{mid}.err", "w"), text=True)
            CHILDREN.append(p)
            self.sims.append(p)
            self.machines.append((mid, profile, ""))
        for i, p in enumerate(self.sims):
            pty = p.stdout.readline().strip()
            if not pty:
                sys.exit(f"simulator {self.machines[i][0]} did not start")
            self.machines[i] = (self.machines[i][0], self.machines[i][1], pty)
        log(f"{len(self.sims)} simulators up")
        cfg = ['listen = "127.0.0.1:0"', 'data_dir = "data"', ""]
        for mid, profile, pty in self.machines:
            cfg += ["[[machine]]", f'id = "{mid}"', f'profile = "{profile}"',
                    f'port = "{pty}"', "require_bed_clear = false", ""]
        self.config = self.dir / "config.toml"
        self.config.write_text("\n".join(cfg))
        out = subprocess.run(
            [str(self.bins / "microfactoryd"), "token", "create", "--config", str(self.config),
             "--role", "operator", "--name", "bench"],
            capture_output=True, text=True, check=True)
        self.token = out.stdout.strip()
        self.daemon = subprocess.Popen(
            [str(self.bins / "microfactoryd"), "--config", str(self.config)],
            stdout=subprocess.PIPE, stderr=open(self.dir / "daemon.log", "w"), text=True)
        CHILDREN.append(self.daemon)
        line = self.daemon.stdout.readline().strip()
        if not line.startswith("listening on "):
            sys.exit(f"daemon did not start ({line!r}); see {self.dir}/daemon.log")
        self.base = line.removeprefix("listening on ")
        # Keep draining stdout so the daemon never blocks on a full pipe.
        threading.Thread(target=lambda: [None for _ in self.daemon.stdout], daemon=True).start()
        self.api = Api(self.base, self.token)
        log(f"daemon pid {self.daemon.pid} at {self.base}")

    def wait_online(self, limit: float = 120.0) -> None:
        deadline = time.monotonic() + limit
        while True:
            ms = self.api.get("/machines")
            online = sum(1 for m in ms if m["status"]["connection"] == "online")
            if online == len(ms):
                log(f"{online} machines online")
                return
            if time.monotonic() > deadline:
                sys.exit(f"only {online}/{len(ms)} machines online after {limit} s")
            time.sleep(1)


# -------------------------------------------------------------- benchmarks


def bench_fleet(args) -> dict:
    f = Factory(args, args.printers, args.mills, args.latency_ms, args.time_scale)
    f.wait_online()
    rss_phases = {"online": mem_kib(f.daemon.pid)["VmRSS"]}
    printer_file = f.api.upload(DATA / "coupling_pla.gcode") if args.printers else None
    mill_file = f.api.upload(DATA / args.mill_file) if args.mills else None
    rss_phases["uploaded"] = mem_kib(f.daemon.pid)["VmRSS"]
    if args.printers:
        f.api.post("/jobs", {"file_id": printer_file, "copies": args.printers, "kind": "printer"})
    if args.mills:
        f.api.post("/jobs", {"file_id": mill_file, "copies": args.mills, "kind": "mill",
                             "expand_canned_cycles": True})
    want = args.printers + args.mills
    deadline = time.monotonic() + 120
    while True:
        running = len(f.api.get("/jobs?state=running"))
        if running == want:
            break
        if time.monotonic() > deadline:
            sys.exit(f"only {running}/{want} jobs running after 120 s")
        time.sleep(1)
    # Printers heat up first (M109, ~40 s of simulated heating at time
    # scale 1) and stream almost nothing meanwhile: measure past that.
    log(f"{want} jobs running; waiting until each is past line {args.past_line}")
    deadline = time.monotonic() + 300
    while True:
        slow = [j for j in f.api.get("/jobs?state=running")
                if j["progress"]["lines_done"] < args.past_line]
        if not slow:
            break
        if time.monotonic() > deadline:
            sys.exit(f"{len(slow)} jobs still before line {args.past_line} after 300 s")
        time.sleep(2)
    rss_phases["streaming"] = mem_kib(f.daemon.pid)["VmRSS"]
    log(f"warming up {args.warmup} s")
    time.sleep(args.warmup)

    def lines_done() -> int:
        return sum(j["progress"]["lines_done"] for j in f.api.get("/jobs?state=running"))

    pid = f.daemon.pid
    sim_pids = [p.pid for p in f.sims]
    l0 = lines_done()
    t0 = time.monotonic()
    d0 = cpu_ticks(pid)
    s0 = sum(cpu_ticks(p) for p in sim_pids)
    m0 = machine_busy()
    rss_max = 0
    log(f"measuring {args.window} s")
    while time.monotonic() - t0 < args.window:
        time.sleep(1)
        rss_max = max(rss_max, mem_kib(pid)["VmRSS"])
    d1 = cpu_ticks(pid)
    s1 = sum(cpu_ticks(p) for p in sim_pids)
    m1 = machine_busy()
    t1 = time.monotonic()
    l1 = lines_done()
    mem = mem_kib(pid)
    ended = [j for j in f.api.get("/jobs") if j["state"] not in ("running",)]
    wall = t1 - t0
    daemon_s = (d1 - d0) / TICK
    lines = l1 - l0
    return {
        "bench": "fleet",
        "machines": f"{args.printers} Marlin (prusa-mk3s) + {args.mills} GRBL (grbl-3018)",
        "link": f"115200 baud, {args.latency_ms} ms, time scale {args.time_scale}",
        "window_s": round(wall, 1),
        "daemon_cpu_pct_of_core": round(100 * daemon_s / wall, 1),
        "daemon_vmrss_mib_end": round(mem["VmRSS"] / 1024, 1),
        "daemon_vmrss_mib_max_in_window": round(rss_max / 1024, 1),
        "daemon_vmhwm_mib": round(mem["VmHWM"] / 1024, 1),
        "daemon_vmrss_mib_phases": {k: round(v / 1024, 1) for k, v in rss_phases.items()},
        "daemon_threads": mem["Threads"],
        "daemon_fds": fd_count(pid),
        "lines_streamed": lines,
        "lines_per_s": round(lines / wall, 1),
        "daemon_cpu_us_per_line": round(1e6 * daemon_s / lines, 1) if lines else None,
        "sims_cpu_pct_of_core_total": round(100 * (s1 - s0) / TICK / wall, 1),
        "machine_busy_pct_of_all_cores": round(100 * (m1[0] - m0[0]) / (m1[1] - m0[1]), 1),
        "jobs_not_running_at_end": [(j["id"], j["state"]) for j in ended],
        "loadavg": open("/proc/loadavg").read().split()[:3],
    }


def percentile(sorted_vals: list[float], q: float) -> float:
    if not sorted_vals:
        return float("nan")
    k = min(len(sorted_vals) - 1, max(0, round(q / 100 * len(sorted_vals) + 0.5) - 1))
    return sorted_vals[k]


def submit_with_wrk(f: "Factory", body: bytes, conc: int, args) -> dict:
    """POST /jobs from one wrk thread over `conc` connections: a client
    that costs the machine far less than Python's, so the daemon's own
    CPU decides the rate (BENCHMARKS.md, session 9)."""
    if not shutil.which("wrk"):
        sys.exit("wrk not found: apt-get install -y wrk")
    lua = f.dir / "submit.lua"
    lua.write_text('wrk.method = "POST"\nwrk.body = %s\n'
                   'wrk.headers["Content-Type"] = "application/json"\n' % json.dumps(body.decode()))
    before = len(f.api.get("/jobs?state=queued"))
    pid = f.daemon.pid
    d0 = cpu_ticks(pid)
    t0 = time.monotonic()
    p = subprocess.Popen(["wrk", "-t1", f"-c{conc}", f"-d{max(1, round(args.duration))}s", "--latency", "-s", str(lua),
                          "-H", f"Authorization: Bearer {f.token}", f"{f.base}/api/v1/jobs"],
                         stdout=subprocess.PIPE, text=True)
    CHILDREN.append(p)
    out, _ = p.communicate()
    wall = time.monotonic() - t0
    d1 = cpu_ticks(pid)
    queued = len(f.api.get("/jobs?state=queued"))
    r = {"concurrency": conc, "client": "wrk", "daemon_vmhwm_mib": round(mem_kib(pid)["VmHWM"] / 1024, 1)}
    for line in out.splitlines():
        w = line.split()
        if line.startswith("Requests/sec:"):
            r["per_s"] = float(w[1])
        elif line.strip().startswith(("50%", "99%")):
            r["p" + w[0].rstrip("%") + "_ms"] = wrk_ms(w[1])
        elif "Non-2xx" in line:
            r["errors"] = r.get("errors", 0) + int(w[-1])
        elif line.strip().startswith("Socket errors:"):
            # "connect 0, read 0, write 0, timeout 3"
            r["errors"] = r.get("errors", 0) + sum(int(x.rstrip(",")) for x in w[3::2])
    r.setdefault("errors", 0)
    r["submissions"] = queued - before
    r["daemon_cpu_pct_of_core"] = round(100 * (d1 - d0) / TICK / wall, 1)
    r["queued_after"] = queued
    return r


def wrk_ms(v: str) -> float:
    """A wrk latency ("512.00us", "1.20ms", "2.01s") in ms."""
    for unit, scale in (("us", 1e-3), ("ms", 1.0), ("s", 1e3)):
        if v.endswith(unit):
            return round(float(v[: -len(unit)]) * scale, 3)
    return float("nan")


def bench_submit(args) -> dict:
    results = []
    for conc in [int(c) for c in args.concurrency.split(",")]:
        # A fresh daemon per level, so each starts from an empty queue.
        cleanup()
        f = Factory(args, args.machines, 0)
        f.wait_online()
        file_id = f.api.upload(DATA / "coupling_pla.gcode")
        # Disabled machines keep the jobs queued: the queue grows, nothing
        # streams.
        for mid, _, _ in f.machines:
            f.api.post(f"/machines/{mid}/disable")
        body = json.dumps({"file_id": file_id, "kind": "printer"}).encode()
        if args.client == "wrk":
            r = submit_with_wrk(f, body, conc, args)
            log(json.dumps(r))
            results.append(r)
            continue
        lat: list[list[float]] = [[] for _ in range(conc)]
        errors = [0] * conc
        start = threading.Event()
        stop_at = [0.0]

        def client(i: int) -> None:
            api = Api(f.base, f.token)
            start.wait()
            while time.monotonic() < stop_at[0]:
                t = time.perf_counter()
                try:
                    st, _ = api.request("POST", "/jobs", body, "application/json")
                except (OSError, http.client.HTTPException):
                    st = -1
                dt = time.perf_counter() - t
                if st == 201:
                    lat[i].append(dt)
                else:
                    errors[i] += 1

        threads = [threading.Thread(target=client, args=(i,)) for i in range(conc)]
        for t in threads:
            t.start()
        pid = f.daemon.pid
        d0 = cpu_ticks(pid)
        t0 = time.monotonic()
        stop_at[0] = t0 + args.duration
        start.set()
        for t in threads:
            t.join()
        wall = time.monotonic() - t0
        d1 = cpu_ticks(pid)
        all_lat = sorted(x for l in lat for x in l)
        n = len(all_lat)
        queued = len(f.api.get("/jobs?state=queued"))
        r = {
            "concurrency": conc,
            "daemon_vmhwm_mib": round(mem_kib(pid)["VmHWM"] / 1024, 1),
            "submissions": n,
            "errors": sum(errors),
            "per_s": round(n / wall, 1),
            "p50_ms": round(1000 * percentile(all_lat, 50), 2),
            "p99_ms": round(1000 * percentile(all_lat, 99), 2),
            "max_ms": round(1000 * all_lat[-1], 2) if n else None,
            "daemon_cpu_pct_of_core": round(100 * (d1 - d0) / TICK / wall, 1),
            "queued_after": queued,
        }
        log(json.dumps(r))
        results.append(r)
    return {"bench": "submit", "machines": args.machines, "duration_s": args.duration,
            "data_dir_fs": subprocess.run(["df", "-T", str(f.dir)], capture_output=True,
                                          text=True).stdout.splitlines()[-1].split()[1],
            "results": results}


def run_wrk(url: str, token: str, args) -> dict:
    if not shutil.which("wrk"):
        sys.exit("wrk not found: apt-get install -y wrk")
    cmd = ["wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{args.duration}s",
           "--latency", "-H", f"Authorization: Bearer {token}", url]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    CHILDREN.append(p)
    out, _ = p.communicate()
    res = {"cmd": " ".join(cmd[:-3] + ["'Authorization: Bearer …'", url.split("/api/v1")[1]])}
    for line in out.splitlines():
        s = line.split()
        if line.startswith("Requests/sec:"):
            res["rps"] = float(s[1])
        elif line.strip().startswith(("50%", "90%", "99%")):
            res["p" + s[0].rstrip("%")] = s[1]
        elif line.strip().startswith("Latency") and len(s) >= 4:
            res["avg"] = s[1]
        elif "Non-2xx" in line:
            res["non_2xx"] = int(s[-1])
        elif line.startswith("Transfer/sec:"):
            res["transfer_per_s"] = s[1]
    return res


def bench_read(args) -> dict:
    f = Factory(args, args.printers, args.mills)
    f.wait_online()
    for mid, _, _ in f.machines:
        f.api.post(f"/machines/{mid}/disable")
    printer_file = f.api.upload(DATA / "coupling_pla.gcode")
    left = args.jobs
    while left > 0:
        n = min(left, 1000)
        f.api.post("/jobs", {"file_id": printer_file, "copies": n, "kind": "printer"})
        left -= n
    sizes = {}
    for path in ("/jobs", "/machines"):
        c = http.client.HTTPConnection(f.api.host, f.api.port)
        c.request("GET", "/api/v1" + path, headers={"Authorization": f"Bearer {f.token}"})
        sizes[path] = len(c.getresponse().read())
    out = {"bench": "read", "machines": len(f.machines), "jobs": args.jobs,
           "response_bytes": sizes, "results": {}}
    for path in ("/jobs", "/machines"):
        pid = f.daemon.pid
        d0, t0 = cpu_ticks(pid), time.monotonic()
        r = run_wrk(f"{f.base}/api/v1{path}", f.token, args)
        r["daemon_cpu_pct_of_core"] = round(100 * (cpu_ticks(pid) - d0) / TICK / (time.monotonic() - t0), 1)
        log(f"{path}: {json.dumps(r)}")
        out["results"][path] = r
    out["daemon_vmhwm_mib"] = round(mem_kib(f.daemon.pid)["VmHWM"] / 1024, 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    sub = ap.add_subparsers(dest="cmd", required=True)
    fl = sub.add_parser("fleet", help="many simulated machines streaming at once")
    fl.add_argument("--printers", type=int, default=80)
    fl.add_argument("--mills", type=int, default=20)
    fl.add_argument("--latency-ms", type=float, default=1.0)
    fl.add_argument("--time-scale", type=float, default=1.0)
    fl.add_argument("--mill-file", default="pcb_isolation_and_drill_inch.nc")
    fl.add_argument("--past-line", type=int, default=30)
    fl.add_argument("--warmup", type=float, default=10)
    fl.add_argument("--window", type=float, default=90)
    su = sub.add_parser("submit", help="durable job submissions per second")
    su.add_argument("--machines", type=int, default=1)
    su.add_argument("--duration", type=float, default=20)
    su.add_argument("--concurrency", default="1,8,32")
    su.add_argument("--client", choices=["python", "wrk"], default="python",
                    help="python: a thread per connection, latency of each; wrk: a lighter client")
    rd = sub.add_parser("read", help="GET /jobs and GET /machines with wrk")
    rd.add_argument("--printers", type=int, default=80)
    rd.add_argument("--mills", type=int, default=20)
    rd.add_argument("--jobs", type=int, default=1000)
    rd.add_argument("--duration", type=int, default=20)
    rd.add_argument("--threads", type=int, default=2)
    rd.add_argument("--connections", type=int, default=16)
    args = ap.parse_args()
    # Fail before starting anything if the G-code is missing: a run that
    # uploaded nothing would measure an idle fleet.
    needed = ["coupling_pla.gcode"] + ([args.mill_file] if args.cmd == "fleet" else [])
    missing = [str(DATA / n) for n in needed if not (DATA / n).is_file()]
    if missing:
        sys.exit("bench data missing: " + ", ".join(missing))
    started = time.strftime("%Y-%m-%d %H:%M")
    res = {"fleet": bench_fleet, "submit": bench_submit, "read": bench_read}[args.cmd](args)
    res["host"] = host_info()
    res["date"] = started
    res["command"] = "python3 bench/daemon_bench.py " + " ".join(sys.argv[1:])
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
