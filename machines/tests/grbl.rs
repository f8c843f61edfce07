#![allow(clippy::unwrap_used)]

mod common;

use common::{Client, WAIT, run_binary};
use microfactory_machines::sim::{self, FirmwareKind, SimConfig};

const BANNER: &str = "Grbl 1.1h ['$' for help]";

fn config() -> SimConfig {
    SimConfig {
        name: "grbl-test".into(),
        time_scale: 20.0,
        ..SimConfig::new(FirmwareKind::Grbl)
    }
}

#[tokio::test]
async fn grbl_greets_with_its_banner_and_reports_its_buffers() {
    let sim = sim::spawn(config()).await.unwrap();
    let mut c = Client::open(&sim.path());
    c.expect("banner", |l| l == BANNER).await;
    assert_eq!(c.command("$I").await, "ok");
    assert!(c.transcript.iter().any(|l| l == "[VER:1.1h.20190825:]"));
    assert!(c.transcript.iter().any(|l| l == "[OPT:V,15,128]"));
    assert_eq!(c.command("$G").await, "ok");
    assert!(
        c.transcript
            .iter()
            .any(|l| l == "[GC:G0 G54 G17 G21 G90 G94 M5 M9 T0 F0 S0]")
    );
    // One ok per line, empty lines included.
    assert_eq!(c.command("").await, "ok");
    sim.shutdown().await;
}

#[tokio::test]
async fn unsupported_commands_get_error_20() {
    let sim = sim::spawn(config()).await.unwrap();
    let mut c = Client::open(&sim.path());
    assert_eq!(c.command("G82 X1 Y1 Z-1 R1 P0.5 F100").await, "error:20");
    assert_eq!(c.command("M6 T1").await, "error:20");
    assert_eq!(c.command("M104 S200").await, "error:20");
    assert_eq!(c.command("G1 X1").await, "error:22");
    assert_eq!(c.command("G21 G90 G1 X1 F100").await, "ok");
    sim.shutdown().await;
}

#[tokio::test]
async fn a_status_query_reports_the_real_state() {
    let sim = sim::spawn(config()).await.unwrap();
    let mut c = Client::open(&sim.path());
    c.expect("banner", |l| l == BANNER).await;
    c.send_raw(b"?").await;
    let idle = c.expect("status", |l| l.starts_with('<')).await;
    assert!(
        idle.starts_with("<Idle|MPos:0.000,0.000,0.000|Bf:15,128"),
        "{idle}"
    );
    // 100 mm at 600 mm/min is 10 s of machine time, 0.5 s real.
    assert_eq!(c.command("G1 X100 F600").await, "ok");
    c.send_raw(b"?").await;
    let run = c.expect("status", |l| l.starts_with('<')).await;
    assert!(run.starts_with("<Run|") && run.contains("Bf:14,"), "{run}");
    c.send_raw(b"!").await;
    c.send_raw(b"?").await;
    let hold = c.expect("status", |l| l.starts_with('<')).await;
    assert!(hold.starts_with("<Hold:0|"), "{hold}");
    c.send_raw(b"~").await;
    loop {
        c.send_raw(b"?").await;
        let s = c.expect("status", |l| l.starts_with('<')).await;
        if s.starts_with("<Idle|MPos:100.000,0.000,0.000") {
            break;
        }
        assert!(s.starts_with("<Run|"), "{s}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await; // poll rate, as a host does
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn a_line_over_80_characters_gets_error_11() {
    let sim = sim::spawn(config()).await.unwrap();
    let mut c = Client::open(&sim.path());
    let long = format!("G1 X1 F100 ({})", "x".repeat(90));
    assert_eq!(c.command(&long).await, "error:11");
    assert_eq!(c.command("G4 P0.1").await, "ok");
    sim.shutdown().await;
}

#[tokio::test]
async fn an_alarm_after_a_line_locks_the_machine_until_unlocked() {
    let sim = sim::spawn(SimConfig {
        alarm_after_line: Some(2),
        ..config()
    })
    .await
    .unwrap();
    let mut c = Client::open(&sim.path());
    c.expect("banner", |l| l == BANNER).await;
    c.command("G0 X1").await;
    c.send("G0 X2").await;
    c.expect("ok", |l| l == "ok").await;
    c.expect("alarm", |l| l == "ALARM:1").await;
    c.send_raw(&[0x18]).await;
    c.expect("banner after reset", |l| l == BANNER).await;
    c.expect("unlock hint", |l| l == "[MSG:'$H'|'$X' to unlock]")
        .await;
    c.send_raw(b"?").await;
    let s = c.expect("status", |l| l.starts_with('<')).await;
    assert!(s.starts_with("<Alarm|"), "{s}");
    assert_eq!(c.command("G0 X3").await, "error:9");
    assert_eq!(c.command("$X").await, "ok");
    assert!(c.transcript.iter().any(|l| l == "[MSG:Caution: Unlocked]"));
    assert_eq!(c.command("G0 X3").await, "ok");
    sim.shutdown().await;
}

#[tokio::test]
async fn the_binary_speaks_grbl_on_the_path_it_prints() {
    let (mut child, path) = run_binary(&["--firmware", "grbl", "--time-scale", "20"]).await;
    let mut c = Client::open(&path);
    c.expect("banner", |l| l == BANNER).await;
    assert_eq!(c.command("$I").await, "ok");
    assert!(c.transcript.iter().any(|l| l == "[OPT:V,15,128]"));
    child.start_kill().unwrap();
    tokio::time::timeout(WAIT, child.wait())
        .await
        .unwrap()
        .unwrap();
}
