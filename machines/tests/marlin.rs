#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Client, WAIT, run_binary};
use microfactory_machines::sim::{self, FirmwareKind, SimConfig};
use microfactory_protocol::framing::encode_numbered;

fn config() -> SimConfig {
    SimConfig {
        name: "marlin-test".into(),
        time_scale: 50.0,
        ..SimConfig::new(FirmwareKind::Marlin)
    }
}

#[tokio::test]
async fn marlin_answers_the_handshake_with_its_capabilities() {
    let sim = sim::spawn(config()).await.unwrap();
    let mut c = Client::open(&sim.path());
    c.expect("start", |l| l == "start").await;
    assert_eq!(
        c.command(&encode_numbered(0, "M110 N0")).await,
        "ok N0 P15 B3"
    );
    c.send("M115").await;
    let name = c
        .expect("firmware name", |l| l.starts_with("FIRMWARE_NAME:"))
        .await;
    assert!(name.contains("Marlin 2.1.2 (microfactory-sim)") && name.contains("EXTRUDER_COUNT:1"));
    c.expect("M115 ok", |l| l.starts_with("ok")).await;
    for cap in [
        "Cap:AUTOREPORT_TEMP:1",
        "Cap:EMERGENCY_PARSER:1",
        "Cap:ADVANCED_OK:1",
    ] {
        assert!(c.transcript.iter().any(|l| l == cap), "{cap} missing");
    }
    assert_eq!(
        c.command("M105").await,
        "ok T:20.0 /0.0 B:20.0 /0.0 @:0 B@:0"
    );
    assert_eq!(sim.stats().lines_executed, 3);
    sim.shutdown().await;
}

#[tokio::test]
async fn a_numbered_line_with_a_bad_checksum_is_asked_for_again() {
    let sim = sim::spawn(config()).await.unwrap();
    let mut c = Client::open(&sim.path());
    c.command(&encode_numbered(0, "M110 N0")).await;
    let mut bad = encode_numbered(1, "G1 X10 F3000");
    bad = bad.replace("X10", "X19");
    c.send(&bad).await;
    c.expect("error", |l| l.starts_with("Error:")).await;
    assert_eq!(
        c.transcript.last().unwrap(),
        "Error:checksum mismatch, Last Line: 0"
    );
    assert_eq!(c.next_line().await.unwrap(), "Resend: 1");
    // The line sent again is accepted.
    assert!(
        c.command(&encode_numbered(1, "G1 X10 F3000"))
            .await
            .starts_with("ok N1")
    );
    let s = sim.stats();
    assert_eq!((s.checksum_errors, s.resends_requested), (1, 1));
    sim.shutdown().await;
}

#[tokio::test]
async fn a_line_with_a_skipped_number_is_asked_for_again() {
    let sim = sim::spawn(SimConfig {
        ok_after_resend: true,
        ..config()
    })
    .await
    .unwrap();
    let mut c = Client::open(&sim.path());
    c.command(&encode_numbered(0, "M110 N0")).await;
    c.send(&encode_numbered(2, "G28")).await;
    c.expect("error", |l| l.starts_with("Error:")).await;
    assert_eq!(
        c.transcript.last().unwrap(),
        "Error:Line Number is not Last Line Number+1, Last Line: 0"
    );
    assert_eq!(c.next_line().await.unwrap(), "Resend: 1");
    assert_eq!(c.next_line().await.unwrap(), "ok");
    c.send("N3 M105").await;
    c.expect("error", |l| l.starts_with("Error:")).await;
    assert_eq!(
        c.transcript.last().unwrap(),
        "Error:Line Number is not Last Line Number+1, Last Line: 0"
    );
    c.send(&encode_numbered(1, "M105")).await;
    c.send("N2 M105").await;
    c.expect("no checksum", |l| l.starts_with("Error:No Checksum"))
        .await;
    sim.shutdown().await;
}

#[tokio::test]
async fn ok_waits_while_the_planner_and_all_command_slots_hold_long_moves() {
    // Each 100 mm move at 10 mm/s takes ~10 s of machine time, 1 s real.
    let sim = sim::spawn(SimConfig {
        time_scale: 10.0,
        ..config()
    })
    .await
    .unwrap();
    let mut c = Client::open(&sim.path());
    c.command(&encode_numbered(0, "M110 N0")).await;
    let mv = |n: u32| {
        encode_numbered(
            n,
            if n % 2 == 1 {
                "G1 X100 F600"
            } else {
                "G1 X0 F600"
            },
        )
    };
    for n in 1..=15 {
        let ok = c.command(&mv(n)).await;
        assert!(ok.starts_with(&format!("ok N{n} P")), "{ok}");
    }
    assert!(c.transcript.last().unwrap().contains(" P0 "));
    // The planner is full: four more lines fill the command slots.
    let sent = Instant::now();
    for n in 16..=19 {
        c.send(&mv(n)).await;
    }
    let early = tokio::time::timeout(Duration::from_millis(300), async {
        while let Some(l) = c.next_line().await {
            if l.starts_with("ok") {
                return l;
            }
        }
        String::new()
    })
    .await;
    assert!(early.is_err(), "got {early:?} while the planner was full");
    assert!(c.transcript.iter().any(|l| l == "echo:busy: processing"));
    let ok = c.expect("ok for line 16", |l| l.starts_with("ok")).await;
    let waited = sent.elapsed();
    assert!(ok.starts_with("ok N16 P0 B0"), "{ok}");
    assert!(waited >= Duration::from_millis(300), "ok after {waited:?}");
    sim.shutdown().await;
}

#[tokio::test]
async fn m109_reports_busy_while_heating_and_answers_when_hot() {
    let sim = sim::spawn(SimConfig {
        time_scale: 20.0,
        ..config()
    })
    .await
    .unwrap();
    let mut c = Client::open(&sim.path());
    c.send("M109 S200").await;
    c.expect("busy", |l| l == "echo:busy: processing").await;
    c.expect("ok", |l| l.starts_with("ok")).await;
    let temp = c.command("M105").await;
    assert!(
        temp.starts_with("ok T:19") || temp.starts_with("ok T:20"),
        "{temp}"
    );
    assert!(temp.contains("/200.0"), "{temp}");
    sim.shutdown().await;
}

#[tokio::test]
async fn m112_halts_the_printer_even_while_it_waits() {
    let sim = sim::spawn(config()).await.unwrap();
    let mut c = Client::open(&sim.path());
    c.expect("start", |l| l == "start").await;
    c.send("M190 S100").await;
    c.send("M112").await;
    c.expect("kill", |l| l == "Error:Printer halted. kill() called!")
        .await;
    c.send("M105").await;
    let silent = tokio::time::timeout(Duration::from_millis(300), c.next_line()).await;
    assert!(silent.is_err(), "halted printer answered {silent:?}");
    sim.shutdown().await;
}

#[tokio::test]
async fn the_log_holds_every_executed_command_without_framing() {
    let log = common::temp_path("marlin.log");
    let sim = sim::spawn(SimConfig {
        log: Some(log.clone()),
        ..config()
    })
    .await
    .unwrap();
    let mut c = Client::open(&sim.path());
    c.command(&encode_numbered(0, "M110 N0")).await;
    c.command(&encode_numbered(1, "G1  X1 ; comment")).await;
    c.command("M105").await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(text, "M110 N0\nG1 X1\nM105\n");
    sim.shutdown().await;
    let _ = std::fs::remove_file(log);
}

#[tokio::test]
async fn the_binary_prints_its_path_and_resets_after_the_requested_line() {
    let (mut child, path) = run_binary(&[
        "--firmware",
        "marlin",
        "--time-scale",
        "50",
        "--reset-after-line",
        "2",
    ])
    .await;
    let mut c = Client::open(&path);
    c.expect("start", |l| l == "start").await;
    c.command("M105").await;
    c.send("M105").await;
    c.expect("ok", |l| l.starts_with("ok")).await;
    c.expect("start after reset", |l| l == "start").await;
    // SIGTERM stops it cleanly.
    let pid = child.id().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
}
