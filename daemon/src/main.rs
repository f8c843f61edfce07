//! `microfactoryd`: the binary edge. Parses arguments, sets up tracing and
//! hands over to the modules; `anyhow` is used only here and in the
//! top-level run functions.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

mod analyze;
mod api;
mod auth;
mod config;
mod demo;
mod factory;
mod files;
mod model;
mod resume;
mod routing;
mod serve;
mod store;
mod stream;
mod temps;
mod web;

/// Exit status for a bad configuration (sysexits' EX_CONFIG), so systemd
/// and scripts can tell it from a crash.
const EX_CONFIG: u8 = 78;

/// Background production for a small microfactory of printers and mills.
#[derive(Debug, Parser)]
#[command(name = "microfactoryd", version, about)]
struct Cli {
    /// Serve the machines of this configuration file.
    #[arg(long, conflicts_with = "demo")]
    config: Option<PathBuf>,
    /// Run a self-contained demo factory of simulated machines.
    #[arg(long)]
    demo: bool,
    /// Demo: address to listen on.
    #[arg(long, default_value = "127.0.0.1:7125", requires = "demo")]
    listen: SocketAddr,
    /// Demo: data directory (default: a new temporary folder for this run,
    /// removed when it ends).
    #[arg(long, requires = "demo")]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Analyse a G-code file: duration, filament, bounds, layers, slicer
    /// metadata and, with --firmware, the lines that firmware would reject.
    Analyze(analyze::AnalyzeArgs),
    /// Stream one file to one machine over a serial port and exit.
    Stream(stream::StreamArgs),
    /// Validate a configuration file; exit 78 when it is unusable.
    CheckConfig {
        /// The configuration file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Manage API tokens.
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Create a token and print it once; only its hash is stored.
    Create(TokenArgs),
}

#[derive(Debug, Args)]
struct TokenArgs {
    /// The daemon's configuration (for its data directory).
    #[arg(long)]
    config: PathBuf,
    /// operator (everything) or viewer (read-only).
    #[arg(long)]
    role: model::Role,
    /// Who the token is for.
    #[arg(long)]
    name: String,
}

fn init_tracing() {
    let filter = std::env::var("MICROFACTORYD_LOG").unwrap_or_else(|_| "info".into());
    let level = match filter.as_str() {
        "trace" => tracing::Level::TRACE,
        "debug" => tracing::Level::DEBUG,
        "warn" => tracing::Level::WARN,
        "error" => tracing::Level::ERROR,
        _ => tracing::Level::INFO,
    };
    let _ = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .try_init();
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
}

fn fail(e: anyhow::Error) -> ExitCode {
    eprintln!("microfactoryd: {e:#}");
    let config = e
        .chain()
        .any(|c| c.downcast_ref::<config::ConfigError>().is_some());
    ExitCode::from(if config { EX_CONFIG } else { 1 })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Analyze(args)) => return analyze::run(&args),
        Some(Command::Stream(args)) => return stream::run(&args),
        Some(Command::CheckConfig { config }) => return check_config(&config),
        Some(Command::Token(TokenCommand::Create(args))) => return token_create(&args),
        None => {}
    }
    init_tracing();
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => return fail(e.into()),
    };
    let res = if cli.demo {
        rt.block_on(demo::run(demo::DemoArgs {
            listen: cli.listen,
            data_dir: cli.data_dir,
        }))
    } else if let Some(path) = cli.config {
        rt.block_on(serve::run_config(path))
    } else {
        eprintln!(
            "microfactoryd: give --config PATH to run a factory, --demo to try one, or a subcommand (see --help)"
        );
        return ExitCode::from(2);
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

fn check_config(path: &std::path::Path) -> ExitCode {
    match config::Config::load(path) {
        Ok(c) => {
            println!(
                "{}: ok, {} machine(s), data in {}, listening on {}",
                path.display(),
                c.machines.len(),
                c.config.data_dir.display(),
                c.config.listen
            );
            for m in &c.machines {
                println!(
                    "  {} ({}): {} on {}",
                    m.config.id,
                    m.name(),
                    m.config.profile,
                    m.config.port.display()
                );
            }
            for w in &c.warnings {
                println!("warning: {w}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(EX_CONFIG)
        }
    }
}

fn token_create(args: &TokenArgs) -> ExitCode {
    let res = (|| -> anyhow::Result<String> {
        let c = config::Config::load(&args.config)?;
        let store = store::Store::open(&c.config.data_dir)?;
        let token = auth::create_token(&store, args.role, &args.name)?;
        runtime()?.block_on(store.flush())?;
        Ok(token)
    })();
    match res {
        Ok(t) => {
            println!("{t}");
            eprintln!(
                "token for '{}' ({:?}) created; it is shown only this once",
                args.name, args.role
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}
