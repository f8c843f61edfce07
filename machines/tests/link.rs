#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Client, WAIT, temp_path};
use microfactory_machines::sim::{self, FirmwareKind, SimConfig};

#[tokio::test]
async fn a_bulk_transfer_at_115200_baud_moves_about_11_5_kilobytes_per_second() {
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
    let rate = bulk.len() as f64 / secs;
    println!(
        "host→firmware: {} bytes in {secs:.3} s = {rate:.0} B/s",
        bulk.len()
    );
    // 11 520 B/s is the link rate; wide bounds for a loaded machine.
    assert!((7_000.0..=13_000.0).contains(&rate), "{rate} B/s");
    assert_eq!(sim.stats().rx_overflow_bytes, 0);
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

#[tokio::test]
async fn the_same_seed_corrupts_the_same_bytes() {
    async fn run(seed: u64) -> (u64, u64) {
        let sim = sim::spawn(SimConfig {
            name: "faults".into(),
            corrupt_rate: 0.02,
            drop_rate: 0.01,
            seed,
            // A corrupted digit can turn P0.05 into P8.05: keep dwells short.
            time_scale: 1000.0,
            firmware: FirmwareKind::Grbl,
            ..SimConfig::default()
        })
        .await
        .unwrap();
        let mut c = Client::open(&sim.path());
        for i in 0..40 {
            c.send(&format!("G4 P0.0{}", i % 10)).await;
            tokio::time::timeout(Duration::from_secs(5), async {
                c.expect("reply", |l| l.starts_with("ok") || l.starts_with("error"))
                    .await
            })
            .await
            .unwrap();
        }
        let s = sim.stats();
        sim.shutdown().await;
        (s.bytes_corrupted, s.bytes_dropped)
    }
    let a = run(42).await;
    assert_eq!(a, run(42).await);
    assert!(a.0 > 0 && a.1 > 0, "{a:?}");
}
