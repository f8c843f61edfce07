//! Streams a G-code file to a serial port with the driver, logging every
//! line written and read (with microsecond timestamps) to stderr: the
//! host's side of a recovery timeline, to set beside `microfactory-sim -v`
//! (which logs every executed line). Used to find where the time of a
//! resend goes (`bench/recovery_bench.py --trace`).
//!
//! `trace_stream <port> <baud> <auto|buffered|ping-pong> <file>`; prints
//! the job's stream statistics as JSON on stdout.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use microfactory_machines::driver::{
    Connection, DriverConfig, DriverEvent, DriverHandle, Firmware, FlowMode, JobOutcome, JobSpec,
};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(tracing::Level::TRACE)
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [port, baud, mode, file] = args.as_slice() else {
        return Err(anyhow!("usage: trace_stream <port> <baud> <mode> <file>"));
    };
    let mut config = DriverConfig::new(
        "trace",
        PathBuf::from(port).as_path(),
        baud.parse().context("baud")?,
        Firmware::Marlin,
    );
    config.flow = match mode.as_str() {
        "auto" => FlowMode::Auto,
        "buffered" => FlowMode::Buffered,
        "ping-pong" => FlowMode::PingPong,
        m => return Err(anyhow!("unknown mode {m}")),
    };
    let driver = DriverHandle::spawn(config);
    let mut status = driver.status();
    tokio::time::timeout(
        Duration::from_secs(15),
        status.wait_for(|s| s.connection == Connection::Online),
    )
    .await
    .context("no connection")??;
    let mut events = driver.events();
    driver
        .start(JobSpec {
            id: "trace".into(),
            path: PathBuf::from(file),
            start_line: 1,
            preamble: vec![],
            total_lines: None,
            estimated_seconds: None,
            expand_canned_cycles: false,
        })
        .await
        .map_err(|e| anyhow!("job refused: {e}"))?;
    loop {
        match events.recv().await {
            Ok(DriverEvent::JobEnded { outcome, stats, .. }) => {
                println!(
                    "{{\"completed\": {}, \"seconds\": {}, \"resends\": {}}}",
                    matches!(outcome, JobOutcome::Completed),
                    stats.seconds,
                    stats.resends
                );
                break;
            }
            Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
            Err(_) => return Err(anyhow!("driver stopped")),
        }
    }
    driver.shutdown().await;
    Ok(())
}
