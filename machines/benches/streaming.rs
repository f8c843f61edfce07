//! Streaming efficiency of the drivers over the simulated link, ping-pong
//! versus buffered, at two baud rates and two USB latencies.
//!
//! `cargo bench -p microfactory-machines --bench streaming`
//!
//! Each run streams the first `LINES` commands of a short-segment real file
//! to a simulator (motion 1000× faster than real, so only the link limits)
//! and prints payload bytes per second, link efficiency (÷ baud/10), the
//! window bound min(baud/10, W/RTT) and the daemon-side CPU time per line.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use microfactory_machines::driver::{
    Connection, DriverConfig, DriverEvent, DriverHandle, Firmware, FlowMode, JobOutcome, JobSpec,
};
use microfactory_machines::sim::{self, FirmwareKind, SimConfig};

const LINES: usize = 1500;

fn cpu_seconds() -> f64 {
    // utime + stime of this process, from /proc (Linux).
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let tick = 100.0;
    let get = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (get(11) + get(12)) / tick
}

fn slice(name: &str, dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/data/gcode")
        .join(name);
    let text = std::fs::read_to_string(&src).expect("shared data");
    // Skip the header so the slice is the short-segment body.
    let body: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("G1") || l.starts_with("G01"))
        .take(LINES)
        .collect();
    let out = dir.join(format!("bench-{name}"));
    let mut s = String::new();
    if name.ends_with(".nc") {
        s.push_str("G20\nG90\nM03\n");
    } else {
        s.push_str("G21\nG90\nM83\n");
    }
    for l in body {
        s.push_str(l);
        s.push('\n');
    }
    std::fs::write(&out, s).expect("write slice");
    out
}

async fn run(
    firmware: Firmware,
    file: &Path,
    baud: u32,
    latency_ms: f64,
    flow: FlowMode,
) -> (f64, f64, f64, u64) {
    let mut cfg = SimConfig::new(match firmware {
        Firmware::Marlin => FirmwareKind::Marlin,
        Firmware::Grbl => FirmwareKind::Grbl,
    });
    cfg.baud = baud;
    cfg.latency_ms = latency_ms;
    cfg.time_scale = 1000.0;
    let sim = sim::spawn(cfg).await.expect("sim");
    let mut dc = DriverConfig::new("bench", sim.path(), baud, firmware);
    dc.flow = flow;
    let driver = DriverHandle::spawn(dc);
    let mut st = driver.status();
    st.wait_for(|s| s.connection == Connection::Online)
        .await
        .expect("online");
    let mut ev = driver.events();
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    driver
        .start(JobSpec {
            id: "bench".into(),
            path: file.to_path_buf(),
            start_line: 1,
            preamble: vec![],
            total_lines: None,
            estimated_seconds: None,
            expand_canned_cycles: false,
        })
        .await
        .expect("start");
    let stats = loop {
        if let Ok(DriverEvent::JobEnded { outcome, stats, .. }) = ev.recv().await {
            assert_eq!(outcome, JobOutcome::Completed);
            break stats;
        }
    };
    let wall = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    driver.shutdown().await;
    sim.shutdown().await;
    let rate = stats.payload_bytes as f64 / stats.seconds;
    (
        rate,
        rate / (f64::from(baud) / 10.0),
        cpu / stats.lines as f64 * 1e6,
        (wall * 1000.0) as u64,
    )
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    // `cargo test --all-targets` runs bench targets without `--bench`:
    // measuring is only for `cargo bench`.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("mfd-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp");
    println!(
        "| firmware | file | baud | one-way latency | mode | payload B/s | link efficiency | window bound B/s | bound used | CPU µs/line (daemon+sim) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (firmware, name, window) in [
        (Firmware::Grbl, "pcb_isolation_and_drill_inch.nc", 127.0),
        (Firmware::Marlin, "coupling_pla.gcode", 128.0),
    ] {
        let file = slice(name, &dir);
        for baud in [115_200u32, 250_000] {
            for latency in [1.0, 16.0] {
                for (mode, flow) in [
                    ("ping-pong", FlowMode::PingPong),
                    ("buffered", FlowMode::Buffered),
                ] {
                    let (rate, eff, cpu_us, _) = tokio::time::timeout(
                        Duration::from_secs(600),
                        run(firmware, &file, baud, latency, flow),
                    )
                    .await
                    .expect("run ends");
                    let rtt = 2.0 * latency / 1000.0;
                    let bound = (f64::from(baud) / 10.0).min(window / rtt);
                    println!(
                        "| {firmware:?} | {name} | {baud} | {latency} ms | {mode} | {rate:.0} | {eff:.2} | {bound:.0} | {:.2} | {cpu_us:.0} |",
                        rate / bound
                    );
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
