//! `microfactory-sim`: a simulated Marlin printer or GRBL mill on a PTY.
//!
//! Prints the PTY path as the first line of stdout (and each new path after
//! a simulated reconnect), then runs until SIGINT or SIGTERM.

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use microfactory_machines::sim::{self, FirmwareKind, SimConfig};

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Firmware simulator (Marlin, GRBL) on a pseudo-terminal"
)]
struct Args {
    /// marlin or grbl
    #[arg(long)]
    firmware: FirmwareKind,
    #[arg(long, default_value_t = 115_200)]
    baud: u32,
    /// One-way link latency in ms.
    #[arg(long, default_value_t = 1.0)]
    latency_ms: f64,
    /// Machine time runs this many times faster than real time.
    #[arg(long, default_value_t = 1.0)]
    time_scale: f64,
    /// Firmware serial receive buffer, bytes.
    #[arg(long, default_value_t = 128)]
    rx_buffer: usize,
    #[arg(long, default_value_t = 0.0)]
    corrupt_rate: f64,
    #[arg(long, default_value_t = 0.0)]
    drop_rate: f64,
    /// At most this many faults in one line (unlimited when absent).
    #[arg(long)]
    max_faults_per_line: Option<u32>,
    #[arg(long)]
    disconnect_after_line: Option<u64>,
    #[arg(long)]
    reset_after_line: Option<u64>,
    #[arg(long)]
    alarm_after_line: Option<u64>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Log every executed line to this file.
    #[arg(long)]
    log: Option<PathBuf>,
    /// Maintain a symlink here that always points at the current PTY.
    #[arg(long)]
    link: Option<PathBuf>,
    #[arg(long)]
    no_advanced_ok: bool,
    #[arg(long)]
    ok_after_resend: bool,
    #[arg(long)]
    action_lines: bool,
    /// Marlin: print `wait` about once a second while idle (`NO_TIMEOUTS`).
    #[arg(long)]
    send_wait: bool,
    /// Marlin: once this many lines have executed, drop the next numbered
    /// line received without any answer (once).
    #[arg(long)]
    silent_drop_after_line: Option<u64>,
    /// Marlin built with `GCODE_CASE_INSENSITIVE`: a line whose `N` became
    /// `n` runs unchecked (default Marlin runs nothing).
    #[arg(long)]
    case_insensitive: bool,
    /// Name for log spans.
    #[arg(long, default_value = "sim")]
    name: String,
    /// Log debug detail to stderr.
    #[arg(long, short)]
    verbose: bool,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(if args.verbose {
            tracing::Level::DEBUG
        } else {
            tracing::Level::INFO
        })
        .init();
    let config = SimConfig {
        name: args.name,
        firmware: args.firmware,
        baud: args.baud,
        latency_ms: args.latency_ms,
        time_scale: args.time_scale,
        rx_buffer: args.rx_buffer,
        corrupt_rate: args.corrupt_rate,
        drop_rate: args.drop_rate,
        max_faults_per_line: args.max_faults_per_line,
        disconnect_after_line: args.disconnect_after_line,
        reset_after_line: args.reset_after_line,
        alarm_after_line: args.alarm_after_line,
        seed: args.seed,
        log: args.log,
        advanced_ok: !args.no_advanced_ok,
        ok_after_resend: args.ok_after_resend,
        action_lines: args.action_lines,
        send_wait: args.send_wait,
        silent_drop_after_line: args.silent_drop_after_line,
        case_insensitive: args.case_insensitive,
        link: args.link,
        ..SimConfig::default()
    };
    let handle = sim::spawn(config).await.context("cannot start simulator")?;
    let mut paths = handle.paths();
    let print = |p: &std::path::Path| -> anyhow::Result<()> {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", p.display())?;
        out.flush()?;
        Ok(())
    };
    print(&paths.borrow_and_update())?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            changed = paths.changed() => {
                if changed.is_err() {
                    break;
                }
                print(&paths.borrow_and_update())?;
            }
        }
    }
    handle.shutdown().await;
    Ok(())
}
