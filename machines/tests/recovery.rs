//! Bringing a machine back without restarting anything: the driver's view
//! follows the firmware (a GRBL alarm is a fault, `Idle` after `$X` is
//! not), the recovery actions, stale readings, and a hung console command
//! that never blocks the next action. Against the simulators over real
//! pseudo-terminals.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use microfactory_machines::driver::{
    Connection, DriverConfig, DriverError, DriverEvent, DriverHandle, Firmware, JobOutcome,
    JobSpec, MachineStatus, Recovery, SerialLine,
};
use microfactory_machines::sim::{self, FirmwareKind, SimConfig, SimHandle};

const LIMIT: Duration = Duration::from_secs(60);

struct Rig {
    _sim: SimHandle,
    driver: DriverHandle,
    dir: PathBuf,
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn rig(firmware: Firmware, time_scale: f64) -> Rig {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "mfd-recovery-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let link = dir.join("tty");
    let mut cfg = SimConfig::new(match firmware {
        Firmware::Marlin => FirmwareKind::Marlin,
        Firmware::Grbl => FirmwareKind::Grbl,
    });
    cfg.baud = 250_000;
    cfg.time_scale = time_scale;
    cfg.link = Some(link.clone());
    let baud = cfg.baud;
    let sim = sim::spawn(cfg).await.unwrap();
    let driver = DriverHandle::spawn(DriverConfig::new("m1", &link, baud, firmware));
    wait_status(&driver, "online", |s| s.connection == Connection::Online).await;
    Rig {
        _sim: sim,
        driver,
        dir,
    }
}

async fn wait_status(
    d: &DriverHandle,
    what: &str,
    pred: impl FnMut(&MachineStatus) -> bool,
) -> MachineStatus {
    let mut st = d.status();
    tokio::time::timeout(LIMIT, st.wait_for(pred))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "timed out waiting for {what}; status {:?}",
                d.status().borrow()
            )
        })
        .unwrap()
        .clone()
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

/// A long, slow program of plain moves.
fn long_moves(dir: &Path) -> PathBuf {
    let p = dir.join("long.nc");
    let mut s = String::from("G21\nG90\nM3 S1000\n");
    for i in 0..400 {
        s.push_str(&format!("G1 X{} Y{} F300\n", i % 50, (i * 7) % 50));
    }
    s.push_str("M5\n");
    std::fs::write(&p, s).unwrap();
    p
}

async fn job_end(ev: &mut tokio::sync::broadcast::Receiver<DriverEvent>) -> JobOutcome {
    tokio::time::timeout(LIMIT, async {
        loop {
            if let Ok(DriverEvent::JobEnded { outcome, .. }) = ev.recv().await {
                return outcome;
            }
        }
    })
    .await
    .expect("the job ends")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grbl_alarm_faults_the_connection_and_unlock_brings_it_back_online() {
    let rig = rig(Firmware::Grbl, 1.0).await;
    let mut ev = rig.driver.events();
    rig.driver.start(job(&long_moves(&rig.dir))).await.unwrap();
    wait_status(&rig.driver, "the mill to move", |s| {
        s.state.as_deref() == Some("Run")
    })
    .await;
    // A reset while moving: GRBL raises ALARM:3 and stays locked.
    rig.driver.emergency_stop().await.unwrap();
    let outcome = job_end(&mut ev).await;
    assert!(matches!(outcome, JobOutcome::Failed { .. }), "{outcome:?}");
    let st = wait_status(&rig.driver, "the alarm", |s| {
        s.connection == Connection::Faulted && s.state.as_deref() == Some("Alarm")
    })
    .await;
    assert!(st.last_error.is_some(), "{st:?}");
    // A locked mill refuses jobs (error:9) — the driver says it is faulted
    // until the firmware says otherwise; polls keep confirming the alarm.
    tokio::time::timeout(Duration::from_secs(3), async {
        let mut st = rig.driver.status();
        st.wait_for(|s| s.connection != Connection::Faulted)
            .await
            .ok();
    })
    .await
    .expect_err("an alarm stays a fault while GRBL reports Alarm");

    // Unlock answers like a console command, and the next status report
    // (`Idle`) clears the fault.
    let lines = rig.driver.recover(Recovery::Unlock).await.unwrap();
    assert!(
        lines.iter().any(|l| l.contains("Unlocked")),
        "the firmware's answer: {lines:?}"
    );
    let st = wait_status(&rig.driver, "online after $X", |s| {
        s.connection == Connection::Online
    })
    .await;
    assert_eq!(st.state.as_deref(), Some("Idle"));
    assert_eq!(st.last_error, None);

    // And the mill takes a job again.
    let f = rig.dir.join("short.nc");
    std::fs::write(&f, "G21\nG1 X1 F600\n").unwrap();
    let mut ev = rig.driver.events();
    rig.driver.start(job(&f)).await.unwrap();
    assert_eq!(job_end(&mut ev).await, JobOutcome::Completed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_actions_that_do_not_fit_the_firmware_or_a_running_job_are_refused() {
    let printer = rig(Firmware::Marlin, 200.0).await;
    for a in [Recovery::Unlock, Recovery::SoftReset] {
        assert!(
            matches!(printer.driver.recover(a).await, Err(DriverError::Invalid(m)) if m.contains(a.as_str())),
            "{a:?} on Marlin"
        );
    }
    let mill = rig(Firmware::Grbl, 1.0).await;
    assert!(matches!(
        mill.driver.recover(Recovery::FirmwareRestart).await,
        Err(DriverError::Invalid(_))
    ));
    mill.driver
        .start(job(&long_moves(&mill.dir)))
        .await
        .unwrap();
    assert_eq!(
        mill.driver.recover(Recovery::Reconnect).await,
        Err(DriverError::Busy("j1".into()))
    );
    // A soft reset on an idle mill: GRBL reboots and the driver is back.
    // The reset that ends a cancel leaves GRBL idle or, when it lands
    // while the spindle still moves, in alarm (ALARM:3): unlock that first.
    mill.driver.cancel().await.unwrap();
    wait_status(&mill.driver, "the cancel to end and GRBL to report", |s| {
        s.job.is_none() && matches!(s.state.as_deref(), Some("Idle" | "Alarm"))
    })
    .await;
    if mill.driver.status().borrow().state.as_deref() == Some("Alarm") {
        mill.driver.recover(Recovery::Unlock).await.unwrap();
        wait_status(&mill.driver, "idle after $X", |s| {
            s.connection == Connection::Online && s.state.as_deref() == Some("Idle")
        })
        .await;
    }
    mill.driver.recover(Recovery::SoftReset).await.unwrap();
    wait_status(&mill.driver, "online after the reset", |s| {
        s.connection == Connection::Online && s.state.is_some()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_halted_printer_goes_stale_refuses_commands_at_once_and_reconnect_reopens_the_port() {
    let rig = rig(Firmware::Marlin, 200.0).await;
    wait_status(&rig.driver, "temperatures", |s| {
        !s.heaters.is_empty() && !s.stale
    })
    .await;
    rig.driver.emergency_stop().await.unwrap();
    wait_status(&rig.driver, "the halt", |s| {
        s.connection == Connection::Faulted
    })
    .await;
    // The halted firmware reads nothing: a command is refused at once
    // instead of waiting 30 s for an answer that cannot come.
    let t = Instant::now();
    let r = rig.driver.console("M105").await;
    assert!(matches!(r, Err(DriverError::Halted(_))), "{r:?}");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    // Its last readings are marked stale once reports stop.
    let st = wait_status(&rig.driver, "stale readings", |s| s.stale).await;
    assert!(!st.heaters.is_empty(), "the last readings are kept: {st:?}");

    // Reconnect drops the session at once and opens the port again. (The
    // simulator models no DTR reset, so the killed firmware stays silent
    // and the handshake cannot finish: it shows as offline, not faulted.)
    rig.driver.recover(Recovery::Reconnect).await.unwrap();
    wait_status(&rig.driver, "the port reopened", |s| {
        s.connection != Connection::Faulted
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_console_command_is_superseded_by_the_next_and_reconnect_handshakes_again() {
    // Real time: a 20 s dwell holds the firmware's answer.
    let rig = rig(Firmware::Marlin, 1.0).await;
    let slow = {
        let d = &rig.driver;
        async move { d.console("G4 S20").await }
    };
    let next = async {
        // The dwell is on the wire before the next command asks.
        wait_for_serial(&rig.driver, "G4 S20").await;
        let t = Instant::now();
        let r = rig.driver.recover(Recovery::Reconnect).await;
        (r, t.elapsed())
    };
    let (slow, (next, took)) = tokio::join!(slow, next);
    assert_eq!(slow, Err(DriverError::Superseded));
    assert_eq!(next, Ok(vec![]));
    assert!(took < Duration::from_secs(2), "{took:?}");
    // A fresh handshake on the reopened port. (The status may still say
    // online from before the reconnect: wait for the second handshake's
    // M115 itself, then for the session it opens.)
    wait_for_sent(&rig.driver, "the second handshake", |log| {
        log.iter()
            .filter(|l| l.sent && l.text.contains("M115"))
            .count()
            >= 2
    })
    .await;
    wait_status(&rig.driver, "back online", |s| {
        s.connection == Connection::Online
    })
    .await;
}

async fn wait_for_serial(d: &DriverHandle, text: &str) {
    wait_for_sent(d, text, |log| {
        log.iter().any(|l| l.sent && l.text.contains(text))
    })
    .await;
}

/// Waits until the driver's serial log satisfies `done`.
async fn wait_for_sent(d: &DriverHandle, what: &str, done: impl Fn(&[SerialLine]) -> bool) {
    tokio::time::timeout(LIMIT, async {
        loop {
            if done(&d.serial_log()) {
                return;
            }
            // Polling the driver's log: it has no event for a line sent.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what}: {:?}", d.serial_log()));
}
