//! `microfactoryd`: the binary edge. Parses arguments, sets up tracing and
//! hands over to the library modules; `anyhow` is used only here.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod analyze;
mod stream;

/// Background production for a small microfactory of printers and mills.
#[derive(Debug, Parser)]
#[command(name = "microfactoryd", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Analyse a G-code file: duration, filament, bounds, layers, slicer
    /// metadata and, with --firmware, the lines that firmware would reject.
    Analyze(analyze::AnalyzeArgs),
    /// Stream one file to one machine over a serial port and exit.
    Stream(stream::StreamArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Analyze(args) => analyze::run(&args),
        Command::Stream(args) => stream::run(&args),
    }
}
