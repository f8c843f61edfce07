//! Streaming efficiency of the drivers over the simulated link, ping-pong
//! versus buffered (and Marlin's `auto`), at two baud rates and two USB
//! latencies, all in one run.
//!
//! `cargo bench -p microfactory-machines --bench streaming`
//!
//! Each run streams the first `LINES` moves of a short-segment real file
//! (the isolation part of the PCB file for GRBL, a fine-segment print for
//! Marlin) to a `microfactory-sim` *process* (motion 1000× faster than
//! real, so only the link limits) and prints payload bytes per second,
//! link efficiency (payload ÷ baud/10), wire bytes per second (Marlin's
//! `N…*cs` framing included), the window bound min(baud/10, W/RTT) in wire
//! bytes, and the driver's CPU time per line. The simulator runs in its own
//! process, so this process's CPU time (every thread, from
//! `/proc/self/task/*/schedstat`, nanoseconds) is the host's alone.
//!
//! `MFD_BENCH_LINES` overrides the number of lines; `MFD_BENCH_ONLY`
//! (`grbl`, `marlin`) runs one firmware, `MFD_BENCH_BAUD` one baud rate
//! and `MFD_BENCH_LATENCY` one latency (ms).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use microfactory_machines::driver::{
    Connection, DriverConfig, DriverEvent, DriverHandle, Firmware, FlowMode, JobOutcome, JobSpec,
};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const LINES: usize = 1500;

/// CPU time of every thread of this process, in seconds.
fn cpu_seconds() -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    let mut ns = 0u64;
    for t in dir.flatten() {
        let stat = std::fs::read_to_string(t.path().join("schedstat")).unwrap_or_default();
        ns += stat
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    }
    ns as f64 / 1e9
}

fn slice(name: &str, dir: &Path, lines: usize) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/data/gcode")
        .join(name);
    // A bench without its data must fail, not measure an empty file.
    let text = std::fs::read_to_string(&src)
        .unwrap_or_else(|e| panic!("bench data {}: {e}", src.display()));
    // Skip the header so the slice is the short-segment body (for the PCB
    // file, its isolation moves; the drill part's canned cycles are not
    // `G1`).
    let body: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("G1 ") || l.starts_with("G01 "))
        .take(lines)
        .collect();
    let out = dir.join(format!("bench-{name}"));
    let mut s = String::new();
    if name.ends_with(".nc") {
        s.push_str("G20\nG90\nM03\n");
    } else {
        // The print uses absolute extrusion (M82).
        s.push_str("G21\nG90\nM82\n");
    }
    for l in body {
        s.push_str(l.trim_end());
        s.push('\n');
    }
    std::fs::write(&out, s).expect("write slice");
    out
}

struct Run {
    payload_rate: f64,
    wire_rate: f64,
    cpu_us_per_line: f64,
    resends: u64,
}

/// Streams `file` once over a new connection and measures it; with `warm`,
/// streams it once before, unmeasured, on the same connection (auto mode
/// then starts the measured job with the link already proven clean).
async fn run(
    firmware: Firmware,
    file: &Path,
    baud: u32,
    latency_ms: f64,
    flow: FlowMode,
    warm: bool,
) -> Run {
    let mut sim = Command::new(env!("CARGO_BIN_EXE_microfactory-sim"))
        .args([
            "--firmware",
            match firmware {
                Firmware::Marlin => "marlin",
                Firmware::Grbl => "grbl",
            },
            "--baud",
            &baud.to_string(),
            "--latency-ms",
            &latency_ms.to_string(),
            "--time-scale",
            "1000",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("microfactory-sim starts");
    let stdout = sim.stdout.take().expect("sim stdout");
    let mut lines = BufReader::new(stdout).lines();
    let path = lines
        .next_line()
        .await
        .expect("sim prints")
        .expect("sim prints its PTY path");
    let mut dc = DriverConfig::new("bench", PathBuf::from(path.trim()), baud, firmware);
    dc.flow = flow;
    let driver = DriverHandle::spawn(dc);
    let mut st = driver.status();
    st.wait_for(|s| s.connection == Connection::Online)
        .await
        .expect("online");
    let spec = |id: &str| JobSpec {
        id: id.into(),
        path: file.to_path_buf(),
        start_line: 1,
        preamble: vec![],
        total_lines: None,
        estimated_seconds: None,
        expand_canned_cycles: false,
    };
    let mut ev = driver.events();
    let mut job_end = async || loop {
        if let Ok(DriverEvent::JobEnded { outcome, stats, .. }) = ev.recv().await {
            assert_eq!(outcome, JobOutcome::Completed);
            break stats;
        }
    };
    if warm {
        driver.start(spec("warm-up")).await.expect("start");
        job_end().await;
    }
    let cpu0 = cpu_seconds();
    driver.start(spec("bench")).await.expect("start");
    let stats = job_end().await;
    let cpu = cpu_seconds() - cpu0;
    driver.shutdown().await;
    let _ = sim.start_kill();
    let _ = sim.wait().await;
    Run {
        payload_rate: stats.payload_bytes as f64 / stats.streaming_seconds,
        wire_rate: stats.wire_bytes as f64 / stats.streaming_seconds,
        cpu_us_per_line: cpu / stats.lines as f64 * 1e6,
        resends: stats.resends,
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    // `cargo test --all-targets` runs bench targets without `--bench`:
    // measuring is only for `cargo bench`.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let lines = std::env::var("MFD_BENCH_LINES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(LINES);
    let only = std::env::var("MFD_BENCH_ONLY").ok();
    let dir = std::env::temp_dir().join(format!("mfd-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp");
    println!(
        "| firmware | file | baud | one-way latency | mode | payload B/s | link efficiency | wire B/s | wire / (baud/10) | window W B | window bound B/s | wire / bound | × ping-pong | resends | host CPU µs/line |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let t0 = Instant::now();
    for (firmware, name, window) in [
        (Firmware::Grbl, "pcb_isolation_and_drill_inch.nc", 127.0),
        (Firmware::Marlin, "coupling_pla.gcode", 128.0),
    ] {
        if only
            .as_deref()
            .is_some_and(|o| !format!("{firmware:?}").eq_ignore_ascii_case(o))
        {
            continue;
        }
        let file = slice(name, &dir, lines);
        let modes: &[(&str, FlowMode)] = match firmware {
            // GRBL's auto is character counting, the same as buffered.
            Firmware::Grbl => &[
                ("ping-pong", FlowMode::PingPong),
                ("buffered", FlowMode::Buffered),
            ],
            // "auto, proven": a second job on the same connection, after
            // the first proved the link clean.
            Firmware::Marlin => &[
                ("ping-pong", FlowMode::PingPong),
                ("buffered", FlowMode::Buffered),
                ("auto", FlowMode::Auto),
                ("auto, proven", FlowMode::Auto),
            ],
        };
        let want = |var: &str, v: f64| {
            std::env::var(var)
                .ok()
                .and_then(|w| w.parse::<f64>().ok())
                .is_none_or(|w| w == v)
        };
        for baud in [115_200u32, 250_000] {
            for latency in [1.0, 16.0] {
                if !want("MFD_BENCH_BAUD", f64::from(baud)) || !want("MFD_BENCH_LATENCY", latency) {
                    continue;
                }
                let mut ping_pong = None;
                for &(mode, flow) in modes {
                    let r = tokio::time::timeout(
                        Duration::from_secs(900),
                        run(
                            firmware,
                            &file,
                            baud,
                            latency,
                            flow,
                            mode.ends_with("proven"),
                        ),
                    )
                    .await
                    .expect("run ends");
                    let link = f64::from(baud) / 10.0;
                    let rtt = 2.0 * latency / 1000.0;
                    let bound = link.min(window / rtt);
                    let pp = *ping_pong.get_or_insert(r.payload_rate);
                    println!(
                        "| {firmware:?} | {name} | {baud} | {latency} ms | {mode} | {:.0} | {:.2} | {:.0} | {:.2} | {window:.0} | {bound:.0} | {:.2} | {:.1} | {} | {:.0} |",
                        r.payload_rate,
                        r.payload_rate / link,
                        r.wire_rate,
                        r.wire_rate / link,
                        r.wire_rate / bound,
                        r.payload_rate / pp,
                        r.resends,
                        r.cpu_us_per_line,
                    );
                }
            }
        }
    }
    eprintln!("bench took {:.0} s", t0.elapsed().as_secs_f64());
    let _ = std::fs::remove_dir_all(&dir);
}
