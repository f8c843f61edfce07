//! Drivers against the firmware simulators, through real pseudo-terminals
//! opened by `tokio-serial`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use microfactory_machines::driver::{
    Connection, DriverConfig, DriverEvent, DriverHandle, Firmware, FlowMode, JobOutcome, JobSpec,
    StreamStats,
};
use microfactory_machines::sim::{self, FirmwareKind, SimConfig, SimHandle};
use microfactory_protocol::framing::clean_line;

const LIMIT: Duration = Duration::from_secs(120);

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/data/gcode")
        .join(name)
}

/// The command stream of a file as a firmware should execute it.
fn source_commands(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut out = Vec::new();
    let mut clean = String::new();
    for raw in text.lines() {
        clean_line(raw, 256, &mut clean).unwrap();
        if !clean.is_empty() {
            out.push(clean.clone());
        }
    }
    out
}

/// Commands the host sends on its own (handshake, polling, completion).
fn is_host_command(c: &str) -> bool {
    ["M110", "M115", "M155", "M105", "M400", "$I"]
        .iter()
        .any(|p| c == *p || c.starts_with(&format!("{p} ")))
}

fn executed(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| !is_host_command(l))
        .map(str::to_string)
        .collect()
}

struct Rig {
    sim: SimHandle,
    driver: DriverHandle,
    log: PathBuf,
    _dir: tempfile_dir::TempDir,
}

mod tempfile_dir {
    //! A minimal temporary directory (removed on drop).
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    pub struct TempDir(PathBuf);
    impl TempDir {
        pub fn new() -> Self {
            let p = std::env::temp_dir().join(format!(
                "mfd-driver-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&p).unwrap();
            Self(p)
        }
        pub fn path(&self) -> &Path {
            &self.0
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

async fn rig(firmware: Firmware, tweak: impl FnOnce(&mut SimConfig), flow: FlowMode) -> Rig {
    let dir = tempfile_dir::TempDir::new();
    let log = dir.path().join("executed.log");
    let link = dir.path().join("tty");
    let mut cfg = SimConfig::new(match firmware {
        Firmware::Marlin => FirmwareKind::Marlin,
        Firmware::Grbl => FirmwareKind::Grbl,
    });
    cfg.baud = 1_000_000;
    cfg.time_scale = 2000.0;
    cfg.log = Some(log.clone());
    cfg.link = Some(link.clone());
    tweak(&mut cfg);
    let baud = cfg.baud;
    let sim = sim::spawn(cfg).await.unwrap();
    let mut dc = DriverConfig::new("m1", &link, baud, firmware);
    dc.flow = flow;
    let driver = DriverHandle::spawn(dc);
    let mut st = driver.status();
    tokio::time::timeout(LIMIT, st.wait_for(|s| s.connection == Connection::Online))
        .await
        .expect("connects in time")
        .unwrap();
    Rig {
        sim,
        driver,
        log,
        _dir: dir,
    }
}

fn job(path: &Path) -> JobSpec {
    JobSpec {
        id: "j1".into(),
        path: path.to_path_buf(),
        start_line: 1,
        preamble: vec![],
        total_lines: None,
        estimated_seconds: None,
        expand_canned_cycles: false,
    }
}

async fn run_to_end(rig: &Rig, spec: JobSpec) -> (JobOutcome, StreamStats) {
    let mut ev = rig.driver.events();
    rig.driver.start(spec).await.unwrap();
    tokio::time::timeout(LIMIT, async {
        loop {
            match ev.recv().await {
                Ok(DriverEvent::JobEnded { outcome, stats, .. }) => return (outcome, stats),
                Ok(_) => {}
                Err(e) => panic!("event stream: {e}"),
            }
        }
    })
    .await
    .expect("job ends in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mill_job_streams_to_grbl_and_executes_every_line() {
    let rig = rig(Firmware::Grbl, |_| {}, FlowMode::Auto).await;
    let file = data("pcb_outline_inch.nc");
    let (outcome, stats) = run_to_end(&rig, job(&file)).await;
    assert_eq!(outcome, JobOutcome::Completed);
    let src = source_commands(&file);
    assert_eq!(stats.lines, src.len() as u64);
    assert_eq!(executed(&rig.log), src);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_print_job_streams_to_marlin_and_executes_every_line() {
    let rig = rig(Firmware::Marlin, |_| {}, FlowMode::Auto).await;
    let dir = tempfile_dir::TempDir::new();
    // The first 3000 lines of a real slicer file: heating, homing, layers.
    let text = std::fs::read_to_string(data("coupling_pla.gcode")).unwrap();
    let head: String = text.lines().take(3000).map(|l| format!("{l}\n")).collect();
    let file = dir.path().join("head.gcode");
    std::fs::write(&file, head).unwrap();
    let (outcome, _) = run_to_end(&rig, job(&file)).await;
    assert_eq!(outcome, JobOutcome::Completed);
    assert_eq!(executed(&rig.log), source_commands(&file));
    let _ = rig.sim.stats();
}
