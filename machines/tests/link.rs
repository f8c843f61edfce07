#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Client, WAIT, temp_path};
use microfactory_machines::sim::{self, FirmwareKind, SimConfig};

/// The link carries baud/10 bytes a second: 11 520 B/s at 115200, within
/// 2 %. Measured by the simulator's own clock (when its link model says
/// the first and the last byte left the wire, `SimStats::host_wire_span`),
/// because the wall clock of a shared, loaded machine can only make a
/// transfer look slower; the wall clock still bounds it from above (no
/// byte arrives before its time).
#[tokio::test]
async fn a_bulk_transfer_at_115200_baud_moves_11_520_bytes_per_second() {
    // A large RX buffer and commands that execute at once, so the link is
    // the only limit.
    let sim = sim::spawn(SimConfig {
        name: "throughput".into(),
        rx_buffer: 64 * 1024,
        advanced_ok: false,
        ..SimConfig::new(FirmwareKind::Marlin)
    })
    .await
    .unwrap();
    let mut c = Client::open(&sim.path());
    c.expect("start", |l| l == "start").await;
    let line = format!("M117 {}", "x".repeat(74)); // 80 bytes with newline
    let lines = 250;
    let mut bulk = String::new();
    for _ in 0..lines {
        bulk.push_str(&line);
        bulk.push('\n');
    }
    let start = Instant::now();
    let (mut oks, writer) = (0, c.send_raw(bulk.as_bytes()));
    writer.await;
    while oks < lines {
        c.expect("ok", |l| l == "ok").await;
        oks += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    let wall = bulk.len() as f64 / secs;
    let stats = sim.stats();
    let span = stats.host_wire_span.as_secs_f64();
    let rate = (stats.bytes_received - 1) as f64 / span;
    println!(
        "host→firmware: {} bytes, {span:.4} s by the link's clock = {rate:.0} B/s, \
         {secs:.3} s by the wall clock = {wall:.0} B/s",
        bulk.len()
    );
    assert_eq!(stats.bytes_received, bulk.len() as u64);
    assert!((rate / 11_520.0 - 1.0).abs() <= 0.02, "{rate} B/s");
    // Faster than the link would be a bug; slower is the machine's load.
    assert!(wall <= 11_520.0 * 1.02, "{wall} B/s by the wall clock");
    assert_eq!(stats.rx_overflow_bytes, 0);
    sim.shutdown().await;
}

#[tokio::test]
async fn a_disconnect_after_a_line_ends_the_client_read_and_the_link_reconnects() {
    let link = temp_path("reconnect-link");
    let sim = sim::spawn(SimConfig {
        name: "reconnect".into(),
        disconnect_after_line: Some(2),
        link: Some(link.clone()),
        reconnect_delay_ms: 100,
        ..SimConfig::new(FirmwareKind::Marlin)
    })
    .await
    .unwrap();
    let first = sim.path();
    assert_eq!(std::fs::read_link(&link).unwrap(), first);
    let mut paths = sim.paths();
    let mut c = Client::open(&link);
    c.command("M105").await;
    c.send("M105").await;
    let end = tokio::time::timeout(WAIT, async {
        while let Some(l) = c.next_line().await {
            let _ = l;
        }
    })
    .await;
    assert!(end.is_ok(), "read did not end; saw {:?}", c.transcript);
    drop(c);
    tokio::time::timeout(WAIT, paths.changed())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(std::fs::read_link(&link).unwrap(), sim.path());
    let mut c = Client::open(&link);
    c.expect("start after reconnect", |l| l == "start").await;
    assert!(c.command("M105").await.starts_with("ok T:"));
    let s = sim.stats();
    assert_eq!((s.hangups, s.boots), (1, 2));
    sim.shutdown().await;
    assert!(!link.exists(), "symlink left behind");
}

/// Faults are drawn from the seed alone: the same seed damages the same
/// bytes. Compared byte for byte through Marlin's `M118`, which echoes the
/// text it received (and a damaged command its `Unknown command` text), so
/// every flipped or lost byte shows in what the firmware says.
#[tokio::test]
async fn the_same_seed_corrupts_the_same_bytes() {
    async fn run(seed: u64) -> (Vec<String>, u64, u64) {
        let sim = sim::spawn(SimConfig {
            name: "faults".into(),
            corrupt_rate: 0.02,
            drop_rate: 0.01,
            // One fault a line: `M118` cannot become `M112` (two flips).
            max_faults_per_line: Some(1),
            seed,
            ..SimConfig::new(FirmwareKind::Marlin)
        })
        .await
        .unwrap();
        let mut c = Client::open(&sim.path());
        c.expect("start", |l| l == "start").await;
        let before = c.transcript.len();
        for i in 0..40 {
            c.send(&format!("M118 line {i:02} abcdefghijklmnopqrstuvwxyz"))
                .await;
            tokio::time::timeout(Duration::from_secs(5), async {
                c.expect("ok", |l| l.starts_with("ok")).await
            })
            .await
            .unwrap();
        }
        let said = c.transcript[before..].to_vec();
        let s = sim.stats();
        sim.shutdown().await;
        (said, s.bytes_corrupted, s.bytes_dropped)
    }
    let (a, corrupted, dropped) = run(42).await;
    assert!(corrupted > 0 && dropped > 0, "{corrupted} {dropped}");
    let clean: Vec<String> = (0..40)
        .map(|i| format!("line {i:02} abcdefghijklmnopqrstuvwxyz"))
        .collect();
    assert!(
        clean.iter().any(|l| !a.contains(l)),
        "some echoed text shows the damage: {a:?}"
    );
    assert_eq!(a, run(42).await.0, "same seed, same bytes");
    assert_ne!(a, run(43).await.0, "another seed, other bytes");
}
