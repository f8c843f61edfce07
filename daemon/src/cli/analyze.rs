//! `microfactoryd analyze`: the analysis and pre-flight of one file, for
//! operators and scripts. Exit status 0 = clean, 2 = the firmware would
//! reject lines, 1 = unreadable input.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, anyhow};
use clap::Args;
use microfactory_protocol::analysis::{Analysis, Analyzer, AnalyzerConfig};
use microfactory_protocol::canned::{CannedExpander, Output};
use microfactory_protocol::framing::{LineSplitter, MAX_RAW_LINE, SplitItem};
use microfactory_protocol::preflight::{Dialect, Finding, Preflight, PreflightReport};
use serde::Serialize;

/// Arguments of `microfactoryd analyze`.
#[derive(Debug, Args)]
pub struct AnalyzeArgs {
    /// Check the program against this firmware dialect: marlin, grbl or grblhal.
    #[arg(long)]
    firmware: Option<Dialect>,
    /// Print one JSON object instead of a human summary.
    #[arg(long)]
    json: bool,
    /// Expand G81/G82/G83 canned cycles into plain moves and turn M6 tool
    /// changes into pauses, writing the result to --output.
    #[arg(long, requires = "output")]
    expand_canned_cycles: bool,
    /// Where to write the transformed program.
    #[arg(short = 'o', long = "output", requires = "expand_canned_cycles")]
    output: Option<PathBuf>,
    /// The G-code file.
    file: PathBuf,
}

/// What `--json` prints: the analysis plus the pre-flight findings.
#[derive(Debug, Serialize)]
struct Report<'a> {
    file: &'a Path,
    #[serde(flatten)]
    analysis: &'a Analysis,
    firmware: Option<Dialect>,
    preflight: &'a [Finding],
    preflight_total: u64,
}

/// Runs the command; never panics on bad input.
pub fn run(args: &AnalyzeArgs) -> ExitCode {
    match analyze(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("microfactoryd analyze: {}: {e:#}", args.file.display());
            ExitCode::from(1)
        }
    }
}

fn analyze(args: &AnalyzeArgs) -> anyhow::Result<ExitCode> {
    let mut file = File::open(&args.file).context("cannot open")?;
    // PrusaSlicer writes the machine limits it estimated with at the end of
    // the file; read them first so our estimate uses the same machine.
    let limits = crate::factory::files::slicer_limits(&mut file).context("cannot read")?;
    let mut analyzer = Analyzer::new(AnalyzerConfig {
        limits,
        max_line: 0,
    });
    let mut preflight = args.firmware.map(Preflight::new);
    let mut splitter = LineSplitter::new(MAX_RAW_LINE);
    let mut expand = if args.expand_canned_cycles {
        let out = args
            .output
            .as_deref()
            .ok_or_else(|| anyhow!("--expand-canned-cycles needs -o FILE"))?;
        let tmp = out.with_extension("partial");
        let w = BufWriter::new(
            File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?,
        );
        Some((CannedExpander::new(), w, tmp, Vec::new()))
    } else {
        None
    };

    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("read failed"),
        };
        let chunk = &buf[..n];
        analyzer.feed(chunk)?;
        if preflight.is_some() || expand.is_some() {
            splitter.feed(chunk, |item| per_line(item, &mut preflight, &mut expand))?;
        }
    }
    splitter.finish(|item| per_line(item, &mut preflight, &mut expand))?;
    let analysis = analyzer.finish()?;

    if let (Some((_, mut w, tmp, _)), Some(out)) = (expand, args.output.as_deref()) {
        w.flush().context("write failed")?;
        w.into_inner()
            .map_err(|e| e.into_error())
            .and_then(|f| f.sync_all())
            .context("write failed")?;
        std::fs::rename(&tmp, out).with_context(|| format!("cannot write {}", out.display()))?;
    }

    let report = preflight.map(Preflight::finish);
    print_report(args, &analysis, report.as_ref())?;
    let rejected = report.as_ref().is_some_and(|r| r.rejected_count > 0);
    Ok(if rejected && !args.expand_canned_cycles {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

type Expansion = (CannedExpander, BufWriter<File>, PathBuf, Vec<Output>);

fn per_line(
    item: SplitItem<'_>,
    preflight: &mut Option<Preflight>,
    expand: &mut Option<Expansion>,
) -> anyhow::Result<()> {
    let (number, text) = match item {
        SplitItem::Line { number, text } => (number, text),
        SplitItem::Bad { number, error } => return Err(anyhow!("line {number}: {error}")),
    };
    if let Some((expander, w, _, out)) = expand.as_mut() {
        out.clear();
        expander
            .push_line(number, text, out)
            .map_err(|e| anyhow!("line {number}: {e}"))?;
        for o in out.iter() {
            match o {
                Output::Line { text, .. } => writeln!(w, "{text}")?,
                Output::Pause { tool, reason, .. } => {
                    match tool {
                        Some(t) => writeln!(w, "(tool change: load T{t} - {reason})")?,
                        None => writeln!(w, "(pause: {reason})")?,
                    }
                    writeln!(w, "M0")?;
                }
            }
            if let (Some(p), Output::Line { text, .. }) = (preflight.as_mut(), o) {
                p.check_line(number, text);
            }
        }
        return Ok(());
    }
    if let Some(p) = preflight.as_mut() {
        p.check_line(number, text);
    }
    Ok(())
}

fn print_report(
    args: &AnalyzeArgs,
    a: &Analysis,
    pf: Option<&PreflightReport>,
) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if args.json {
        let report = Report {
            file: &args.file,
            analysis: a,
            firmware: args.firmware,
            preflight: pf.map_or(&[], |r| r.findings.as_slice()),
            preflight_total: pf.map_or(0, |r| r.total),
        };
        serde_json::to_writer_pretty(&mut out, &report)?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(out, "{}", args.file.display())?;
    writeln!(out, "  lines            {}", a.lines)?;
    writeln!(out, "  estimated time   {}", hms(a.estimated_seconds))?;
    if let Some(s) = a.slicer_estimated_seconds {
        writeln!(out, "  slicer estimate  {}", hms(s))?;
    }
    if a.filament_mm > 0.0 {
        writeln!(out, "  filament         {:.1} mm", a.filament_mm)?;
    }
    writeln!(out, "  layers           {}", a.layers)?;
    if let Some(b) = &a.bounds_mm {
        writeln!(
            out,
            "  bounds (mm)      x {:.2}..{:.2}  y {:.2}..{:.2}  z {:.2}..{:.2}",
            b.min[0], b.max[0], b.min[1], b.max[1], b.min[2], b.max[2]
        )?;
    }
    if let Some(r) = pf {
        if r.findings.is_empty() {
            writeln!(out, "  pre-flight       clean")?;
        } else {
            writeln!(out, "  pre-flight       {} finding(s):", r.total)?;
            for f in &r.findings {
                writeln!(out, "    line {}: {} ({})", f.line, f.reason, f.text)?;
            }
        }
    }
    Ok(())
}

fn hms(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    format!("{}h {:02}m {:02}s", s / 3600, s / 60 % 60, s % 60)
}
