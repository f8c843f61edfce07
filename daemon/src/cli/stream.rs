//! `microfactoryd stream`: streams one file to one machine and exits, for
//! bring-up, scripting and benchmarks. Exit 0 when the whole job was
//! acknowledged; otherwise non-zero with the line and the reason.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, anyhow};
use clap::Args;
use microfactory_machines::driver::{
    Connection, DriverConfig, DriverEvent, DriverHandle, Firmware, FlowMode, JobOutcome, JobSpec,
    StreamStats,
};
use microfactory_protocol::framing::{LineSplitter, MAX_RAW_LINE, SplitItem};
use microfactory_protocol::preflight::{Dialect, FindingKind, Preflight};
use serde::Serialize;
use tokio::io::AsyncReadExt;

/// Arguments of `microfactoryd stream`.
#[derive(Debug, Args)]
pub struct StreamArgs {
    /// Serial device (e.g. /dev/serial/by-id/usb-...).
    #[arg(long)]
    port: PathBuf,
    /// Link rate.
    #[arg(long, default_value_t = 115_200)]
    baud: u32,
    /// Firmware: marlin or grbl.
    #[arg(long)]
    firmware: Firmware,
    /// Flow control: auto, ping-pong or buffered.
    #[arg(long, default_value = "auto")]
    mode: FlowMode,
    /// GRBL: expand G81-G83 canned cycles and pause at tool changes.
    #[arg(long)]
    expand_canned_cycles: bool,
    /// Print a JSON summary at the end.
    #[arg(long)]
    json: bool,
    /// How long to wait for the machine to answer the handshake, seconds.
    #[arg(long, default_value_t = 15)]
    connect_timeout: u64,
    /// The G-code file.
    file: PathBuf,
}

/// The `--json` summary.
#[derive(Debug, Serialize)]
struct Summary {
    file: PathBuf,
    outcome: JobOutcome,
    lines: u64,
    bytes: u64,
    wire_bytes: u64,
    resends: u64,
    /// First byte to completion (GRBL: until the machine is idle).
    seconds: f64,
    /// First byte to the last acknowledgement: the link's share of `seconds`.
    streaming_seconds: f64,
    /// Payload bytes (command text and newline, once) per streaming second
    /// divided by the link's byte rate (baud/10).
    link_efficiency: f64,
    /// The same for every byte written (line numbers, checksums, resends):
    /// how busy the wire was, whatever part of it the framing took.
    wire_efficiency: f64,
}

/// Runs the command.
pub fn run(args: &StreamArgs) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("microfactoryd stream: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(stream(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("microfactoryd stream: {}: {e:#}", args.file.display());
            ExitCode::from(1)
        }
    }
}

fn dialect(f: Firmware) -> Dialect {
    match f {
        Firmware::Marlin => Dialect::Marlin2,
        Firmware::Grbl => Dialect::Grbl11,
    }
}

async fn stream(args: &StreamArgs) -> anyhow::Result<ExitCode> {
    // Pre-flight before the first byte, reading the file in chunks.
    let mut file = tokio::fs::File::open(&args.file)
        .await
        .context("cannot open")?;
    let mut pf = Preflight::new(dialect(args.firmware));
    let mut splitter = LineSplitter::new(MAX_RAW_LINE);
    let mut each = |item: SplitItem<'_>| match item {
        SplitItem::Line { number, text } => {
            pf.check_line(number, text);
            Ok(())
        }
        SplitItem::Bad { number, error } => Err(anyhow!("line {number}: {error}")),
    };
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf).await.context("read failed")?;
        if n == 0 {
            break;
        }
        splitter.feed(&buf[..n], &mut each)?;
    }
    splitter.finish(&mut each)?;
    let report = pf.finish();
    let blocking: Vec<_> = report
        .findings
        .iter()
        .filter(|f| match f.kind {
            FindingKind::Rejected => true,
            FindingKind::CannedCycle | FindingKind::ToolChange => !args.expand_canned_cycles,
            FindingKind::Warning => false,
        })
        .collect();
    if !blocking.is_empty() {
        eprintln!(
            "microfactoryd stream: {}: refused before sending: the firmware would reject {} line(s):",
            args.file.display(),
            report.rejected_count
        );
        for f in blocking.iter().take(20) {
            eprintln!("  line {}: {} ({})", f.line, f.reason, f.text);
        }
        return Ok(ExitCode::from(2));
    }

    let mut config = DriverConfig::new("stream", &args.port, args.baud, args.firmware);
    config.flow = args.mode;
    config.reconnect_max = Duration::from_secs(1);
    let driver = DriverHandle::spawn(config);
    let mut status = driver.status();
    let online = tokio::time::timeout(
        Duration::from_secs(args.connect_timeout),
        status.wait_for(|s| s.connection == Connection::Online),
    )
    .await
    .is_ok_and(|r| r.is_ok());
    match online {
        true => {}
        false => {
            let why = status
                .borrow()
                .last_error
                .clone()
                .unwrap_or_else(|| "no answer".into());
            return Err(anyhow!("cannot connect to {}: {why}", args.port.display()));
        }
    }
    let mut events = driver.events();
    driver
        .start(JobSpec {
            id: "stream".into(),
            path: args.file.clone(),
            start_line: 1,
            preamble: vec![],
            total_lines: None,
            estimated_seconds: None,
            expand_canned_cycles: args.expand_canned_cycles,
        })
        .await
        .map_err(|e| anyhow!("the machine refused the job: {e}"))?;

    let tty = std::io::stderr().is_terminal();
    let mut last_plain = -10.0;
    let (outcome, stats) = loop {
        match events.recv().await {
            Ok(DriverEvent::Progress(p)) => {
                let eta = p.eta_seconds.map_or("--:--".into(), mmss);
                if tty {
                    let filled = (p.percent / 5.0) as usize;
                    eprint!(
                        "\r[{}{}] {:5.1}% {}/{} lines, ETA {eta} ",
                        "#".repeat(filled),
                        " ".repeat(20 - filled.min(20)),
                        p.percent,
                        p.lines_done,
                        p.lines_total
                    );
                    let _ = std::io::stderr().flush();
                } else if p.percent - last_plain >= 10.0 {
                    last_plain = p.percent;
                    eprintln!(
                        "progress {:.0}% ({}/{} lines), ETA {eta}",
                        p.percent, p.lines_done, p.lines_total
                    );
                }
            }
            Ok(DriverEvent::JobEnded { outcome, stats, .. }) => break (outcome, stats),
            Ok(DriverEvent::PausedForOperator { line, reason, .. }) => {
                eprintln!("\npaused at line {line}: {reason}; resume on the machine");
            }
            Ok(_) => {}
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
            Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                return Err(anyhow!("the driver stopped unexpectedly"));
            }
        }
    };
    if tty {
        eprintln!();
    }
    driver.shutdown().await;
    report_end(args, outcome, stats)
}

fn report_end(
    args: &StreamArgs,
    outcome: JobOutcome,
    stats: StreamStats,
) -> anyhow::Result<ExitCode> {
    let link_rate = f64::from(args.baud) / 10.0;
    let per_link_second = |bytes: u64| {
        if stats.streaming_seconds > 0.0 {
            bytes as f64 / stats.streaming_seconds / link_rate
        } else {
            0.0
        }
    };
    let efficiency = per_link_second(stats.payload_bytes);
    let code = match &outcome {
        JobOutcome::Completed => ExitCode::SUCCESS,
        JobOutcome::Failed { reason, line } => {
            eprintln!(
                "microfactoryd stream: {}: failed{}: {reason}",
                args.file.display(),
                line.map(|l| format!(" at line {l}")).unwrap_or_default()
            );
            ExitCode::from(3)
        }
        JobOutcome::Interrupted {
            reason,
            last_acked_line,
        } => {
            eprintln!(
                "microfactoryd stream: {}: interrupted after line {last_acked_line}: {reason}",
                args.file.display()
            );
            ExitCode::from(4)
        }
        JobOutcome::Cancelled { last_acked_line } => {
            eprintln!("microfactoryd stream: cancelled after line {last_acked_line}");
            ExitCode::from(5)
        }
    };
    if args.json {
        let s = Summary {
            file: args.file.clone(),
            outcome,
            lines: stats.lines,
            bytes: stats.payload_bytes,
            wire_bytes: stats.wire_bytes,
            resends: stats.resends,
            seconds: stats.seconds,
            streaming_seconds: stats.streaming_seconds,
            link_efficiency: efficiency,
            wire_efficiency: per_link_second(stats.wire_bytes),
        };
        println!("{}", serde_json::to_string(&s)?);
    } else {
        eprintln!(
            "{} lines, {} bytes in {:.1} s ({} resends), link efficiency {:.2} (wire {:.2})",
            stats.lines,
            stats.payload_bytes,
            stats.seconds,
            stats.resends,
            efficiency,
            per_link_second(stats.wire_bytes)
        );
    }
    Ok(code)
}

fn mmss(s: f64) -> String {
    let s = s.max(0.0).round() as u64;
    format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}
