#!/usr/bin/env python3
"""MQTT benchmarks of BENCHMARKS.md ("MQTT"): standard library only.

    python3 bench/mqtt_bench.py ingest  [--machines 4 --messages 200000]
    python3 bench/mqtt_bench.py publish [--machines 100 --duration 60]

ingest: a real mosquitto (Debian's, /usr/sbin/mosquitto) and the release
daemon with N MQTT machines of our report schema; a raw-socket publisher
sends M reports (QoS 0, pre-encoded, as fast as the socket takes them),
and the daemon's `GET /api/v1/health` `accepted` counter is polled until
every report is counted (or it stops moving). Rate = reports the daemon
accepted per second of wall time from the first byte sent; cores = the
daemon's CPU time (utime + stime from /proc) over that time.

publish: 100 MQTT machines each reporting once a second (progress and a
temperature changing each time), `progress_interval_ms = 1000`, so the
daemon publishes each machine's retained state with readings once a
second; a subscriber counts what arrives on microfactory/bench/machines/+/state.
The daemon's CPU share over the window is the cost of ingest + publishing
(an upper bound for publishing alone); an idle window first (machines
configured, nothing reporting) gives the floor.

Build first: cargo build --release -p microfactoryd
Every process started here is ended on exit; not part of `cargo test`.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TICK = os.sysconf("SC_CLK_TCK")
CHILDREN: list[subprocess.Popen] = []


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def cleanup() -> None:
    for p in CHILDREN:
        if p.poll() is None:
            p.terminate()
    for p in CHILDREN:
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            p.kill()


atexit.register(cleanup)


def cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------ MQTT 3.1.1


def remaining(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n % 128, n // 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def utf8(s: str) -> bytes:
    b = s.encode()
    return struct.pack("!H", len(b)) + b


def connect(port: int, client_id: str) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port))
    body = utf8("MQTT") + bytes([4, 0x02]) + struct.pack("!H", 60) + utf8(client_id)
    s.sendall(bytes([0x10]) + remaining(len(body)) + body)
    ack = s.recv(4)
    assert ack[:1] == b"\x20" and ack[3] == 0, ack
    return s


def publish_packet(topic: str, payload: bytes) -> bytes:
    body = utf8(topic) + payload
    return bytes([0x30]) + remaining(len(body)) + body


def subscribe(s: socket.socket, topic: str) -> None:
    body = struct.pack("!H", 1) + utf8(topic) + bytes([0])
    s.sendall(bytes([0x82]) + remaining(len(body)) + body)


def read_packets(s: socket.socket, on_publish) -> None:
    """Reads packets until the socket closes; calls on_publish(topic) for
    each PUBLISH (QoS 0: no packet id)."""
    buf = bytearray()
    while True:
        chunk = s.recv(65536)
        if not chunk:
            return
        buf += chunk
        pos = 0
        while len(buf) - pos >= 2:
            n, mult, i, complete = 0, 1, pos + 1, False
            while i < len(buf):
                b = buf[i]
                n += (b & 0x7F) * mult
                mult *= 128
                i += 1
                if not b & 0x80:
                    complete = True
                    break
            if not complete or len(buf) < i + n:
                break
            if buf[pos] >> 4 == 3:
                tl = struct.unpack_from("!H", buf, i)[0]
                on_publish(bytes(buf[i + 2:i + 2 + tl]).decode())
            pos = i + n
        del buf[:pos]


# ------------------------------------------------------------ processes


def start_broker(tmp: Path) -> int:
    port = free_port()
    conf = tmp / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
    p = subprocess.Popen(["/usr/sbin/mosquitto", "-c", str(conf)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    CHILDREN.append(p)
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port)).close()
            return port
        except OSError:
            time.sleep(0.02)
    raise SystemExit("mosquitto did not listen")


def start_daemon(tmp: Path, port: int, machines: list[str], interval_ms: int):
    cfg = [
        'listen = "127.0.0.1:0"',
        f'data_dir = "{tmp / "data"}"',
        "[mqtt]",
        f'broker = "mqtt://127.0.0.1:{port}"',
        'site = "bench"',
        f"progress_interval_ms = {interval_ms}",
    ]
    for m in machines:
        cfg += ["[[mqtt.machine]]", f'id = "{m}"', 'profile = "prusa-mk3s"', 'adapter = "report"']
    (tmp / "config.toml").write_text("\n".join(cfg) + "\n")
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    p = subprocess.Popen([str(target / "release" / "microfactoryd"), "--config", str(tmp / "config.toml")],
                         stdout=subprocess.PIPE, stderr=open(tmp / "daemon.log", "w"), text=True)
    CHILDREN.append(p)
    line = p.stdout.readline().strip()
    base = line.removeprefix("listening on ")
    threading.Thread(target=lambda: p.stdout.read(), daemon=True).start()
    return p, base


def health(base: str) -> dict:
    with urllib.request.urlopen(f"{base}/api/v1/health") as r:
        return json.load(r)["mqtt"]


def wait_connected(base: str) -> None:
    for _ in range(500):
        if health(base)["connected"]:
            return
        time.sleep(0.02)
    raise SystemExit("the daemon did not connect to the broker")


def report(progress: float, temp: float) -> bytes:
    return json.dumps({"state": "running", "job": "plate.nc", "progress": progress,
                       "heaters": [{"name": "T0", "actual": temp, "target": 215}]},
                      separators=(",", ":")).encode()


# ------------------------------------------------------------ benchmarks


def ingest(args) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="mfd-mqtt-bench-"))
    try:
        port = start_broker(tmp)
        machines = [f"m{i:03}" for i in range(args.machines)]
        daemon, base = start_daemon(tmp, port, machines, 2000)
        wait_connected(base)
        log(f"daemon {base}, broker {port}: encoding {args.messages} reports")
        packets = b"".join(
            publish_packet(f"microfactory/bench/machines/{machines[i % len(machines)]}/report",
                           report(round((i // len(machines)) % 1000 / 10, 1), 200 + i % 17))
            for i in range(args.messages))
        before = health(base)["accepted"]
        pub = connect(port, "bench-publisher")
        t0, c0 = time.monotonic(), cpu_ticks(daemon.pid)
        pub.sendall(packets)
        sent = time.monotonic() - t0
        last, last_change = before, time.monotonic()
        while True:
            h = health(base)
            now = time.monotonic()
            if h["accepted"] != last:
                last, last_change = h["accepted"], now
            if last - before >= args.messages or now - last_change > 5:
                break
            time.sleep(0.05)
        elapsed = last_change - t0
        cpu = (cpu_ticks(daemon.pid) - c0) / TICK
        pub.close()
        got = last - before
        result = {
            "bench": "ingest", "machines": args.machines, "messages": args.messages,
            "accepted": got, "refused": h["malformed"] + h["oversized"] + h["unknown_machine"],
            "sent_s": round(sent, 3), "elapsed_s": round(elapsed, 3),
            "rate_per_s": round(got / elapsed), "daemon_cpu_s": round(cpu, 2),
            "daemon_cores": round(cpu / elapsed, 2),
        }
        return result
    finally:
        cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


def publish(args) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="mfd-mqtt-bench-"))
    try:
        port = start_broker(tmp)
        machines = [f"m{i:03}" for i in range(args.machines)]
        daemon, base = start_daemon(tmp, port, machines, 1000)
        wait_connected(base)
        # Idle floor: configured, nothing reporting.
        c0 = cpu_ticks(daemon.pid)
        time.sleep(args.idle)
        idle = (cpu_ticks(daemon.pid) - c0) / TICK / args.idle
        received = {"n": 0}
        sub = connect(port, "bench-subscriber")
        subscribe(sub, "microfactory/bench/machines/+/state")
        threading.Thread(target=read_packets, args=(sub, lambda t: received.__setitem__("n", received["n"] + 1)),
                         daemon=True).start()
        pub = connect(port, "bench-reporter")
        log(f"{args.machines} machines reporting at 1 Hz for {args.duration} s (+5 s warm-up)")
        start = time.monotonic()
        tick, window = 0, None
        while True:
            due = start + tick
            time.sleep(max(0.0, due - time.monotonic()))
            if tick == 5:
                window = (time.monotonic(), cpu_ticks(daemon.pid), received["n"])
            if tick == 5 + args.duration:
                break
            pub.sendall(b"".join(
                publish_packet(f"microfactory/bench/machines/{m}/report",
                               report(round(tick % 1000 / 10, 1), 200 + tick % 7 + i / 10))
                for i, m in enumerate(machines)))
            tick += 1
        t1, c1, n1 = time.monotonic(), cpu_ticks(daemon.pid), received["n"]
        elapsed = t1 - window[0]
        return {
            "bench": "publish", "machines": args.machines, "duration_s": round(elapsed, 1),
            "states_published_per_s": round((n1 - window[2]) / elapsed, 1),
            "daemon_core_share_pct": round(100 * (c1 - window[1]) / TICK / elapsed, 2),
            "idle_core_share_pct": round(100 * idle, 2),
            "accepted": health(base)["accepted"],
        }
    finally:
        cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sp = ap.add_subparsers(dest="cmd", required=True)
    i = sp.add_parser("ingest")
    i.add_argument("--machines", type=int, default=4)
    i.add_argument("--messages", type=int, default=200_000)
    p = sp.add_parser("publish")
    p.add_argument("--machines", type=int, default=100)
    p.add_argument("--duration", type=int, default=60)
    p.add_argument("--idle", type=int, default=20)
    args = ap.parse_args()
    result = ingest(args) if args.cmd == "ingest" else publish(args)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
