//! `microfactoryd analyze`: the analysis and pre-flight of one file, for
//! operators and scripts. Exit status 0 = clean, 2 = the firmware would
//! reject lines, 1 = unreadable input.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

/// Arguments of `microfactoryd analyze`.
#[derive(Debug, Args)]
pub struct AnalyzeArgs {
    /// Check the program against this firmware dialect: marlin, grbl or grblhal.
    #[arg(long)]
    firmware: Option<String>,
    /// Print one JSON object instead of a human summary.
    #[arg(long)]
    json: bool,
    /// Expand G81/G82/G83 canned cycles (GRBL) and turn M6 into pauses.
    #[arg(long, requires = "output")]
    expand_canned_cycles: bool,
    /// Where to write the transformed program.
    #[arg(short = 'o', long = "output")]
    output: Option<PathBuf>,
    /// The G-code file.
    file: PathBuf,
}

/// Runs the command; never panics on bad input.
pub fn run(_args: &AnalyzeArgs) -> ExitCode {
    ExitCode::from(1)
}
