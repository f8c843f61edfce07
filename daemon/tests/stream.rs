//! `microfactoryd stream` against simulated machines on real PTYs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use microfactory_machines::sim::{self, FirmwareKind, SimConfig};

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/data/gcode")
        .join(name)
}

async fn stream(
    kind: FirmwareKind,
    firmware: &str,
    file: &Path,
    extra: &[&str],
) -> (std::process::Output, PathBuf) {
    // Tests run in parallel: each call gets its own folder and log.
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "mfd-stream-{}-{firmware}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("executed.log");
    let _ = std::fs::remove_file(&log);
    let mut cfg = SimConfig::new(kind);
    cfg.baud = 1_000_000;
    cfg.time_scale = 2000.0;
    cfg.log = Some(log.clone());
    let sim = sim::spawn(cfg).await.unwrap();
    let path = sim.path();
    let mut args = vec![
        "stream".to_string(),
        "--port".into(),
        path.to_string_lossy().into_owned(),
        "--baud".into(),
        "1000000".into(),
        "--firmware".into(),
        firmware.into(),
        "--json".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args.push(file.to_string_lossy().into_owned());
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_microfactoryd"))
        .args(&args)
        .output()
        .await
        .unwrap();
    sim.shutdown().await;
    (out, log)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_completes_a_mill_job_and_prints_a_summary() {
    let (out, log) = stream(
        FirmwareKind::Grbl,
        "grbl",
        &data("pcb_outline_inch.nc"),
        &[],
    )
    .await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for k in [
        "lines",
        "bytes",
        "resends",
        "seconds",
        "streaming_seconds",
        "link_efficiency",
        "wire_efficiency",
    ] {
        assert!(v.get(k).is_some(), "missing {k}");
    }
    assert!(v["lines"].as_u64().unwrap() > 30);
    let f = |k: &str| v[k].as_f64().unwrap();
    // The link part of the job ends at the last `ok`, before the motion;
    // no more can cross the simulated link than baud/10 bytes a second.
    assert!(
        0.0 < f("streaming_seconds") && f("streaming_seconds") <= f("seconds"),
        "{v}"
    );
    assert!(0.0 < f("link_efficiency"), "{v}");
    assert!(f("link_efficiency") <= f("wire_efficiency"), "{v}");
    assert!(f("wire_efficiency") <= 1.0, "{v}");
    // Exactly the file's commands ran, in order: the host's own `$`
    // queries aside, nothing more and nothing less. (Looking for `M5`
    // alone would pass even if the job stopped early: a stop sends it too.)
    let executed: Vec<String> = std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('$'))
        .map(str::to_string)
        .collect();
    assert_eq!(executed, commands(&data("pcb_outline_inch.nc")));
}

/// The commands of a G-code file as the simulator's log records them.
fn commands(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut clean = String::new();
    let mut out = Vec::new();
    for raw in text.lines() {
        microfactory_protocol::framing::clean_line(raw, 256, &mut clean).unwrap();
        if !clean.is_empty() {
            out.push(clean.clone());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_refuses_a_program_grbl_would_reject_before_sending_anything() {
    let (out, log) = stream(
        FirmwareKind::Grbl,
        "grbl",
        &data("pcb_drill_toolchange_inch.nc"),
        &[],
    )
    .await;
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line "), "{err}");
    assert!(err.contains("error:20"), "{err}");
    let executed = std::fs::read_to_string(log).unwrap_or_default();
    assert!(
        executed.trim().is_empty(),
        "nothing may reach the machine: {executed}"
    );
}
