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
use microfactory_protocol::eta;
use microfactory_protocol::framing::clean_line;

const LIMIT: Duration = Duration::from_secs(120);

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/data/gcode")
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

/// Commands the host sends on its own (handshake, polling, completion,
/// and the `M114` that takes the number of a line Marlin ran unnumbered).
fn is_host_command(c: &str) -> bool {
    ["M110", "M115", "M155", "M105", "M400", "M114", "$I"]
        .iter()
        .any(|p| c == *p || c.starts_with(&format!("{p} ")))
}

/// Fails with the first place where the executed log and the source part.
fn assert_same_commands(ran: &[String], src: &[String], what: &str) {
    if let Some(i) = (0..ran.len().max(src.len())).find(|&i| ran.get(i) != src.get(i)) {
        let show = |v: &[String]| v[i.saturating_sub(3)..(i + 3).min(v.len())].join(" | ");
        panic!(
            "executed log differs from {what} at command {i} ({} executed, {} in the source)\n  ran: {}\n  src: {}",
            ran.len(),
            src.len(),
            show(ran),
            show(src)
        );
    }
}

/// What the firmware executed for the job, without the host's own commands.
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
    rig_with(firmware, tweak, |dc| dc.flow = flow).await
}

async fn rig_with(
    firmware: Firmware,
    tweak: impl FnOnce(&mut SimConfig),
    driver_tweak: impl FnOnce(&mut DriverConfig),
) -> Rig {
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
    driver_tweak(&mut dc);
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
}

/// Waits until the simulator's executed log satisfies `pred`. The log is
/// a file written by another task, so it is polled (there is no event).
async fn wait_for_log(log: &Path, pred: impl Fn(&str) -> bool) -> String {
    tokio::time::timeout(LIMIT, async {
        loop {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            if pred(&text) {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the simulator executed it in time")
}

fn head_of(name: &str, lines: usize, dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(data(name)).unwrap();
    let head: String = text.lines().take(lines).map(|l| format!("{l}\n")).collect();
    let file = dir.join(format!("head-{lines}-{name}"));
    std::fs::write(&file, head).unwrap();
    file
}

/// The seed of a noisy-link test: `NOISY_SEED` when set (to run many
/// seeds from a shell loop), else `default`.
fn noisy_seed(default: u64) -> u64 {
    std::env::var("NOISY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn trace_if_asked() {
    if std::env::var_os("DRIVER_TRACE").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_test_writer()
            .try_init();
    }
}

/// The link: 1 % of host bytes with a bit flipped, 0.1 % lost,
/// about a third of all lines damaged. At most one fault per line:
/// Marlin's XOR checksum misses two flips of the same bit in one line, so
/// with independent faults some damaged lines pass its check and no host
/// could deliver the file exactly (see `SimConfig::max_faults_per_line`).
fn noisy(c: &mut SimConfig, seed: u64) {
    c.corrupt_rate = 0.01;
    c.drop_rate = 0.001;
    c.max_faults_per_line = Some(1);
    c.seed = seed;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_noisy_link_loses_duplicates_and_reorders_nothing() {
    trace_if_asked();
    let seed = noisy_seed(7);
    let rig = rig_with(
        Firmware::Marlin,
        |c| noisy(c, seed),
        |dc| {
            // A line whose damaged number reads as the last one is dropped
            // by Marlin without a word; only the silence timer finds it.
            dc.response_timeout = Duration::from_millis(250);
            // With a third of all lines damaged, ten failures in a row of
            // one line come about once in 10^5 lines: the default limit,
            // meant to spot a dead link, would end ~1 % of these jobs.
            dc.max_resends_per_line = 20;
        },
    )
    .await;
    let dir = tempfile_dir::TempDir::new();
    let f = head_of("coupling_pla.gcode", 1500, dir.path());
    let (outcome, stats) = run_to_end(&rig, job(&f)).await;
    let sim_stats = rig.sim.stats();
    eprintln!("seed {seed}: marlin with faults: {stats:?}, sim {sim_stats:?}");
    assert_eq!(outcome, JobOutcome::Completed);
    assert_eq!(executed(&rig.log), source_commands(&f));
    assert_eq!(stats.lines, source_commands(&f).len() as u64);
    assert!(
        stats.resends > 0 && sim_stats.resends_requested > 0,
        "faults were injected, so lines were resent"
    );
}

/// Issue 11: buffered streaming forced on that link used to run extra
/// commands (a line behind a refused one whose `N` became `n` ran out of
/// order: the simulator took `n` for a line number as only
/// `GCODE_CASE_INSENSITIVE` builds do) and to hang at the end (an `ok` for
/// a line queued to go again was dropped, so the job never counted its
/// last lines done). Seeds 1 to 3 hung or ran extra commands with
/// 6000 lines in `bench/recovery_bench.py`; here each streams 1500.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffered_streaming_on_a_noisy_link_runs_every_line_once_in_order_and_ends() {
    trace_if_asked();
    let dir = tempfile_dir::TempDir::new();
    let f = head_of("coupling_pla.gcode", 1500, dir.path());
    let seeds = match std::env::var("NOISY_SEED") {
        Ok(_) => vec![noisy_seed(1)],
        Err(_) => vec![1, 2, 3],
    };
    for seed in seeds {
        let rig = rig_with(
            Firmware::Marlin,
            |c| noisy(c, seed),
            |dc| {
                dc.flow = FlowMode::Buffered;
                dc.response_timeout = Duration::from_millis(250);
                dc.max_resends_per_line = 20;
            },
        )
        .await;
        let (outcome, stats) = run_to_end(&rig, job(&f)).await;
        eprintln!("seed {seed}: buffered with faults: {stats:?}");
        assert_eq!(outcome, JobOutcome::Completed, "seed {seed}");
        assert_eq!(executed(&rig.log), source_commands(&f), "seed {seed}");
        assert!(stats.resends > 0, "seed {seed}: faults were injected");
    }
}

/// Issue 11: a firmware built with `NO_TIMEOUTS` loses a line without a
/// word and from then on only prints `wait`. Every received line used to
/// restart the silence timer, so the job hung forever. The timeout here is
/// far beyond the test's limit, so only the `wait` can bring the line
/// back; one line at a time, nothing else would reveal it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_lost_inside_a_firmware_that_prints_wait_is_sent_again() {
    let rig = rig_with(
        Firmware::Marlin,
        |c| {
            c.send_wait = true;
            c.silent_drop_after_line = Some(100);
        },
        |dc| {
            dc.flow = FlowMode::PingPong;
            dc.response_timeout = Duration::from_secs(3600);
        },
    )
    .await;
    let dir = tempfile_dir::TempDir::new();
    let f = head_of("coupling_pla.gcode", 400, dir.path());
    let (outcome, stats) = run_to_end(&rig, job(&f)).await;
    assert_eq!(outcome, JobOutcome::Completed);
    assert_same_commands(&executed(&rig.log), &source_commands(&f), "the file");
    assert!(stats.resends > 0, "the lost line was sent again: {stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnect_interrupts_the_job_and_the_driver_reconnects() {
    let rig = rig(
        Firmware::Marlin,
        |c| c.disconnect_after_line = Some(400),
        FlowMode::Auto,
    )
    .await;
    let dir = tempfile_dir::TempDir::new();
    let f = head_of("coupling_pla.gcode", 3000, dir.path());
    let (outcome, _) = run_to_end(&rig, job(&f)).await;
    let JobOutcome::Interrupted {
        last_acked_line, ..
    } = outcome
    else {
        panic!("expected interrupted, got {outcome:?}");
    };
    // The simulator counts executed lines from its start, handshake
    // included; the job's last acknowledged line is at or before it.
    let executed_lines = executed(&rig.log).len() as u64;
    assert!(last_acked_line > 0);
    let src = source_commands(&f);
    let acked_index = std::fs::read_to_string(&f)
        .unwrap()
        .lines()
        .take(last_acked_line as usize)
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with(';'))
        .count() as u64;
    assert!(
        acked_index <= executed_lines,
        "acked {acked_index} > executed {executed_lines}"
    );
    assert!(executed_lines <= src.len() as u64);
    let mut st = rig.driver.status();
    tokio::time::timeout(LIMIT, st.wait_for(|s| s.connection == Connection::Online))
        .await
        .expect("reconnects")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_firmware_reset_or_alarm_fails_the_job_with_the_firmware_message() {
    let dir = tempfile_dir::TempDir::new();
    let rig1 = rig(
        Firmware::Marlin,
        |c| c.reset_after_line = Some(300),
        FlowMode::Auto,
    )
    .await;
    let f = head_of("coupling_pla.gcode", 3000, dir.path());
    let (outcome, _) = run_to_end(&rig1, job(&f)).await;
    assert!(
        matches!(&outcome, JobOutcome::Failed { reason, .. } if reason.contains("restarted")),
        "{outcome:?}"
    );
    let rig2 = rig(
        Firmware::Grbl,
        |c| c.alarm_after_line = Some(30),
        FlowMode::Auto,
    )
    .await;
    let (outcome, _) = run_to_end(&rig2, job(&data("pcb_outline_inch.nc"))).await;
    assert!(
        matches!(&outcome, JobOutcome::Failed { reason, .. } if reason.contains("ALARM:1")),
        "{outcome:?}"
    );
    let rig3 = rig(
        Firmware::Marlin,
        |c| c.alarm_after_line = Some(200),
        FlowMode::Auto,
    )
    .await;
    let (outcome, _) = run_to_end(&rig3, job(&f)).await;
    assert!(
        matches!(&outcome, JobOutcome::Failed { reason, .. } if reason.contains("Thermal Runaway") || reason.contains("halted")),
        "{outcome:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_heat_up_never_trips_a_timeout_while_busy_arrives() {
    // Real-time heating (time scale 1) takes many seconds; busy: keeps the
    // link alive.
    let rig = rig(Firmware::Marlin, |c| c.time_scale = 4.0, FlowMode::Auto).await;
    let dir = tempfile_dir::TempDir::new();
    let f = dir.path().join("heat.gcode");
    std::fs::write(&f, "M104 S60\nM109 S60\nG1 X1 F600\n").unwrap();
    let (outcome, _) = run_to_end(&rig, job(&f)).await;
    assert_eq!(outcome, JobOutcome::Completed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_print_turns_the_heaters_off() {
    let rig = rig(Firmware::Marlin, |c| c.time_scale = 20.0, FlowMode::Auto).await;
    let dir = tempfile_dir::TempDir::new();
    let f = head_of("coupling_pla.gcode", 3000, dir.path());
    let mut ev = rig.driver.events();
    rig.driver.start(job(&f)).await.unwrap();
    // Wait until it is printing, then pause, resume and cancel.
    loop {
        if let Ok(DriverEvent::Progress(p)) = ev.recv().await
            && p.lines_done > 50
        {
            break;
        }
    }
    rig.driver.pause().await.unwrap();
    rig.driver.resume().await.unwrap();
    rig.driver.cancel().await.unwrap();
    let outcome = loop {
        if let Ok(DriverEvent::JobEnded { outcome, .. }) = ev.recv().await {
            break outcome;
        }
    };
    assert!(
        matches!(outcome, JobOutcome::Cancelled { .. }),
        "{outcome:?}"
    );
    // The cancel script reaches the firmware.
    let log = wait_for_log(&rig.log, |log| {
        log.contains("M104 S0") && log.contains("M140 S0")
    })
    .await;
    assert!(
        log.lines().any(|l| l == "G1 Z5 F600"),
        "the park script ran: {:?}",
        log.lines()
            .filter(|l| l.starts_with("G9") || l.contains("Z5") || l.starts_with("M1"))
            .collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emergency_stop_halts_the_machine_and_fails_the_job() {
    let rig = rig(Firmware::Marlin, |c| c.time_scale = 20.0, FlowMode::Auto).await;
    let dir = tempfile_dir::TempDir::new();
    let f = head_of("coupling_pla.gcode", 3000, dir.path());
    let mut ev = rig.driver.events();
    rig.driver.start(job(&f)).await.unwrap();
    loop {
        if let Ok(DriverEvent::Progress(p)) = ev.recv().await
            && p.lines_done > 20
        {
            break;
        }
    }
    rig.driver.emergency_stop().await.unwrap();
    let outcome = loop {
        if let Ok(DriverEvent::JobEnded { outcome, .. }) = ev.recv().await {
            break outcome;
        }
    };
    assert!(matches!(&outcome, JobOutcome::Failed { reason, .. } if reason.contains("emergency")));
    wait_for_log(&rig.log, |log| log.lines().any(|l| l == "M112")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_printer_reports_its_temperatures_without_a_job_or_a_command() {
    let printer = rig(Firmware::Marlin, |_| {}, FlowMode::Auto).await;
    let mut st = printer.driver.status();
    let status = tokio::time::timeout(LIMIT, st.wait_for(|s| !s.heaters.is_empty()))
        .await
        .expect("temperatures within the time limit")
        .expect("driver alive")
        .clone();
    assert!(status.heaters.iter().any(|h| h.name == "T"), "{status:?}");
    // They came from the firmware's own reports, asked for once.
    let log = wait_for_log(&printer.log, |log| log.lines().any(|l| l == "M155 S2")).await;
    assert!(!log.lines().any(|l| l == "M105"), "no polling: {log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_commands_return_the_firmware_answer() {
    let printer = rig(Firmware::Marlin, |_| {}, FlowMode::Auto).await;
    let lines = printer.driver.console("M105").await.unwrap();
    assert!(lines.iter().any(|l| l.contains("T:")), "{lines:?}");
    let mill = rig(Firmware::Grbl, |_| {}, FlowMode::Auto).await;
    let lines = mill.driver.console("$$").await.unwrap();
    assert!(lines.iter().any(|l| l.starts_with("$0=")), "{lines:?}");
    let err = mill
        .driver
        .console("G82 X1 Y1 Z-1 R1 F10")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("error:20"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drill_file_streams_to_grbl_with_expanded_cycles_and_tool_change_pauses() {
    let rig = rig(Firmware::Grbl, |_| {}, FlowMode::Auto).await;
    let mut spec = job(&data("pcb_drill_toolchange_inch.nc"));
    spec.expand_canned_cycles = true;
    let mut ev = rig.driver.events();
    rig.driver.start(spec).await.unwrap();
    let mut pauses = 0;
    let outcome = tokio::time::timeout(LIMIT, async {
        loop {
            match ev.recv().await {
                Ok(DriverEvent::PausedForOperator { .. }) => {
                    pauses += 1;
                    rig.driver.resume().await.unwrap();
                }
                Ok(DriverEvent::JobEnded { outcome, .. }) => return outcome,
                _ => {}
            }
        }
    })
    .await
    .expect("ends");
    assert_eq!(outcome, JobOutcome::Completed);
    let text = std::fs::read_to_string(data("pcb_drill_toolchange_inch.nc")).unwrap();
    assert_eq!(pauses, text.lines().filter(|l| l.contains("M06")).count());
    assert!(!executed(&rig.log).iter().any(|l| l.contains("G82")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_job_s_eta_is_measured_over_the_time_it_spent_producing() {
    let rig = rig(Firmware::Grbl, |_| {}, FlowMode::Auto).await;
    let file = rig._dir.path().join("two_tools.nc");
    let mut prog = String::from("G21\nG90\nM3 S1000\n");
    for i in 0..40 {
        prog.push_str(&format!("G1 X{} Y{} F600\n", i % 7, i % 5));
    }
    prog.push_str("M5\nM6 T1\nM3 S1000\n");
    for i in 0..40 {
        prog.push_str(&format!("G1 X{} Y{} F600\n", i % 5, i % 7));
    }
    prog.push_str("M5\n");
    std::fs::write(&file, prog).unwrap();
    let mut spec = job(&file);
    spec.expand_canned_cycles = true;
    spec.estimated_seconds = Some(120.0);
    let mut ev = rig.driver.events();
    rig.driver.start(spec).await.unwrap();
    let (mut before, mut after, mut paused) = (Vec::new(), Vec::new(), false);
    let outcome = tokio::time::timeout(LIMIT, async {
        loop {
            match ev.recv().await {
                Ok(DriverEvent::PausedForOperator { .. }) => {
                    paused = true;
                    rig.driver.resume().await.unwrap();
                }
                Ok(DriverEvent::Progress(p)) if paused => after.push(p),
                Ok(DriverEvent::Progress(p)) => before.push(p),
                Ok(DriverEvent::JobEnded { outcome, .. }) => return outcome,
                _ => {}
            }
        }
    })
    .await
    .expect("ends");
    assert_eq!(outcome, JobOutcome::Completed);
    assert!(!after.is_empty(), "progress after the resume");
    for p in before.iter().chain(&after) {
        // The ETA is the blend over the producing time, never the wall clock.
        let expected = eta::remaining(Some(120.0), p.producing_seconds, p.percent / 100.0);
        assert_eq!(p.eta_seconds, expected, "{p:?}");
        assert!(p.producing_seconds <= p.elapsed_seconds, "{p:?}");
    }
    for p in &before {
        assert_eq!(
            p.producing_seconds, p.elapsed_seconds,
            "not yet paused: {p:?}"
        );
    }
    // The tool change took time, none of it producing.
    let last = after.last().unwrap();
    assert!(last.producing_seconds < last.elapsed_seconds, "{last:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_machine_profile_drives_its_simulator() {
    use microfactory_machines::profile::{Profile, builtin_ids};
    for id in builtin_ids() {
        let profile = Profile::builtin(id).unwrap();
        let dir = tempfile_dir::TempDir::new();
        let log = dir.path().join("executed.log");
        let mut cfg = SimConfig::new(match profile.firmware {
            Firmware::Marlin => FirmwareKind::Marlin,
            Firmware::Grbl => FirmwareKind::Grbl,
        });
        cfg.baud = profile.baud;
        cfg.rx_buffer = profile.rx_buffer;
        cfg.time_scale = 2000.0;
        cfg.log = Some(log.clone());
        let sim = sim::spawn(cfg).await.unwrap();
        let driver = DriverHandle::spawn(profile.driver_config(id, sim.path()));
        let mut st = driver.status();
        tokio::time::timeout(LIMIT, st.wait_for(|s| s.connection == Connection::Online))
            .await
            .expect("connects")
            .unwrap();
        let file = dir.path().join("smoke.gcode");
        std::fs::write(&file, "G21\nG90\nG1 X5 Y5 F600\nG1 X0 Y0\n").unwrap();
        let rig = Rig {
            sim,
            driver,
            log,
            _dir: dir,
        };
        let (outcome, _) = run_to_end(&rig, job(&file)).await;
        assert_eq!(outcome, JobOutcome::Completed, "{id}");
        assert_eq!(executed(&rig.log), source_commands(&file), "{id}");
    }
}

/// GRBL has no line numbers or checksums: nothing can tell a damaged line
/// from a good one, so the same link that Marlin survives makes GRBL run
/// damaged lines until one of them happens not to parse. The host's part
/// is to fail the job at that line, naming it with the firmware's error;
/// lines already in GRBL's buffer still run. Faults depend only on the
/// seed and the bytes of the lines (status polls are never faulted), so
/// for this seed the outcome is fixed; the damaged lines are pinned to
/// show what GRBL ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_noisy_link_grbl_runs_damaged_lines_and_fails_at_the_first_it_refuses() {
    trace_if_asked();
    let rig = rig(Firmware::Grbl, |c| noisy(c, 7), FlowMode::Auto).await;
    let file = data("pcb_outline_inch.nc");
    let (outcome, stats) = run_to_end(&rig, job(&file)).await;
    eprintln!("grbl with faults: {outcome:?} {stats:?}");
    assert_eq!(
        outcome,
        JobOutcome::Failed {
            reason: "error:20 unsupported or invalid G-code command".into(),
            line: Some(64),
        }
    );
    let src = source_commands(&file);
    let log = executed(&rig.log);
    // Source line 64 is the 39th command; GRBL refused its damaged copy.
    let refused = 38;
    assert_eq!(src[refused], "G01 Z-0.0730 F5");
    let mut expected: Vec<String> = src[..refused].to_vec();
    expected[25] = "G01 X-0.9800 Y0.1600".into(); // X-1.9800: a wrong move
    expected[37] = "G20 X-1.0200 Y1.7600".into(); // G00: switched to inches
    assert_eq!(log[..refused], expected[..]);
    // Lines sent before the error reached the host still run, in order;
    // character counting kept them within GRBL's 128-byte buffer.
    let after = &log[refused..];
    assert_eq!(after, &src[refused + 1..refused + 1 + after.len()]);
    assert!(after.iter().map(|l| l.len() + 1).sum::<usize>() < 128);
}

/// The commands the firmware must execute for a file streamed with
/// canned-cycle expansion: the expander's lines, cleaned like the log.
fn expanded_commands(path: &Path) -> Vec<String> {
    use microfactory_protocol::canned::{CannedExpander, Output};
    let text = std::fs::read_to_string(path).unwrap();
    let mut x = CannedExpander::new();
    let mut out = Vec::new();
    let mut clean = String::new();
    let mut cmds = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        out.clear();
        x.push_line(i as u64 + 1, raw, &mut out).unwrap();
        for o in &out {
            if let Output::Line { text, .. } = o {
                clean_line(text, 256, &mut clean).unwrap();
                if !clean.is_empty() {
                    cmds.push(clean.clone());
                }
            }
        }
    }
    cmds
}

/// Streams a whole shared file over a fast link (the protocol is the same
/// at any rate; only the wall time changes) and returns the outcome.
async fn stream_whole(firmware: Firmware, file: &Path, expand: bool) -> (Rig, JobOutcome) {
    let rig = rig(
        firmware,
        |c| {
            c.baud = 4_000_000;
            c.latency_ms = 0.0;
            c.time_scale = 20_000.0;
        },
        FlowMode::Auto,
    )
    .await;
    let mut spec = job(file);
    spec.expand_canned_cycles = expand;
    let mut ev = rig.driver.events();
    rig.driver.start(spec).await.unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(600), async {
        loop {
            match ev.recv().await {
                Ok(DriverEvent::PausedForOperator { .. }) => rig.driver.resume().await.unwrap(),
                Ok(DriverEvent::JobEnded { outcome, .. }) => return outcome,
                Ok(_) => {}
                Err(e) => panic!("event stream: {e}"),
            }
        }
    })
    .await
    .expect("ends");
    // A host that keeps within the window never overflows the firmware's
    // receive buffer, however late either side runs.
    assert_eq!(
        rig.sim.stats().rx_overflow_bytes,
        0,
        "receive buffer overflowed"
    );
    (rig, outcome)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_coupling_print_executes_exactly_on_marlin() {
    let file = data("coupling_pla.gcode");
    let (rig, outcome) = stream_whole(Firmware::Marlin, &file, false).await;
    assert_eq!(outcome, JobOutcome::Completed);
    let (ran, src) = (executed(&rig.log), source_commands(&file));
    assert_same_commands(&ran, &src, "coupling_pla.gcode");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_isolation_and_drill_job_executes_exactly_on_grbl_when_expanded() {
    let file = data("pcb_isolation_and_drill_inch.nc");
    let (rig, outcome) = stream_whole(Firmware::Grbl, &file, true).await;
    assert_eq!(outcome, JobOutcome::Completed);
    let (ran, want) = (executed(&rig.log), expanded_commands(&file));
    assert!(!want.iter().any(|l| l.starts_with("G82")));
    assert_same_commands(&ran, &want, "the expanded program");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_drill_job_executes_exactly_on_grbl_when_expanded() {
    let file = data("pcb_drill_toolchange_inch.nc");
    let (rig, outcome) = stream_whole(Firmware::Grbl, &file, true).await;
    assert_eq!(outcome, JobOutcome::Completed);
    let (ran, want) = (executed(&rig.log), expanded_commands(&file));
    assert_same_commands(&ran, &want, "the expanded drill program");
}

/// A scripted firmware on the other end of a real PTY: a line that is not
/// UTF-8 never reaches the host state machine, so the serial log shows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_line_from_the_firmware_shows_in_the_serial_log() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_serial::SerialPort;
    let (mut firmware, host_end) = tokio_serial::SerialStream::pair().unwrap();
    let path = PathBuf::from(host_end.name().unwrap());
    let driver = DriverHandle::spawn(DriverConfig::new("raw", path, 115_200, Firmware::Marlin));
    // Wait for the handshake's first line, then answer with garbage.
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    tokio::time::timeout(LIMIT, async {
        while !got.contains(&b'\n') {
            let n = firmware.read(&mut buf).await.unwrap();
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("the driver writes its handshake");
    firmware.write_all(b"\xff\xfe\xfd\n").await.unwrap();
    let seen = tokio::time::timeout(LIMIT, async {
        loop {
            if let Some(l) = driver
                .serial_log()
                .into_iter()
                .find(|l| !l.sent && l.text.contains("unreadable line"))
            {
                return l;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the serial log shows the unreadable line");
    assert!(seen.text.contains("UTF-8"), "{}", seen.text);
    drop(host_end);
}
