//! `microfactoryd`: the binary edge. Parses arguments, sets up tracing and
//! hands over to the modules; `anyhow` is used only here and in the
//! top-level run functions.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

use microfactoryd::cli::{analyze, demo, serve, stream};
use microfactoryd::core::model;
use microfactoryd::{auth, config, http, store};

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
    /// Demo: publish the demo factory to this broker (mqtt://HOST:PORT, or
    /// mqtts://HOST:PORT for TLS with the system's roots) and
    /// add one read-only machine per MQTT adapter (see docs/mqtt.md).
    #[arg(long, requires = "demo", value_name = "URL")]
    mqtt: Option<String>,
    /// Log lines as plain text (journald-friendly: no colours, and no
    /// timestamps under systemd, which adds its own) or as one JSON object
    /// per line with the spans' fields (machine, job). Default: the
    /// `MICROFACTORYD_LOG_FORMAT` environment variable, else plain.
    #[arg(long, value_enum, value_name = "FORMAT")]
    log_format: Option<LogFormat>,
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
    /// List tokens: name, role, creation time and the start of the hash
    /// (never the token). Run it while the daemon is stopped.
    List {
        /// The daemon's configuration (for its data directory).
        #[arg(long)]
        config: PathBuf,
    },
    /// Revoke a token by its name or the start of its hash (6+ hex
    /// digits, from `token list`); its browser sessions end with it. Run
    /// it while the daemon is stopped.
    Revoke {
        /// The daemon's configuration (for its data directory).
        #[arg(long)]
        config: PathBuf,
        /// The token's name, or the start of its hash.
        which: String,
    },
}

#[derive(Debug, Args)]
struct TokenArgs {
    /// The daemon's configuration (for its data directory).
    #[arg(long)]
    config: PathBuf,
    /// operator (everything), viewer (read-only), slicer (OctoPrint
    /// upload and status only: the key a slicer keeps in its settings),
    /// metrics (`GET /metrics` only, for a Prometheus scraper),
    /// storefront or machine (see docs/security.md for what each may call).
    #[arg(long)]
    role: model::Role,
    /// Who the token is for.
    #[arg(long)]
    name: String,
}

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Plain,
    /// One JSON object per line.
    Json,
}

fn init_tracing(format: Option<LogFormat>) {
    let filter = std::env::var("MICROFACTORYD_LOG").unwrap_or_else(|_| "info".into());
    let level = match filter.as_str() {
        "trace" => tracing::Level::TRACE,
        "debug" => tracing::Level::DEBUG,
        "warn" => tracing::Level::WARN,
        "error" => tracing::Level::ERROR,
        _ => tracing::Level::INFO,
    };
    let format = format.or_else(
        || match std::env::var("MICROFACTORYD_LOG_FORMAT").as_deref() {
            Ok("json") => Some(LogFormat::Json),
            _ => None,
        },
    );
    let builder = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_ansi(false);
    let _ = match format {
        Some(LogFormat::Json) => builder
            .json()
            .with_current_span(false)
            .with_span_list(true)
            .try_init(),
        // systemd sets JOURNAL_STREAM for a unit whose stderr goes to the
        // journal, which stamps every line itself.
        _ if std::env::var_os("JOURNAL_STREAM").is_some() => builder.without_time().try_init(),
        _ => builder.try_init(),
    };
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
        Some(Command::Token(TokenCommand::List { config })) => return token_list(&config),
        Some(Command::Token(TokenCommand::Revoke { config, which })) => {
            return token_revoke(&config, &which);
        }
        None => {}
    }
    init_tracing(cli.log_format);
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => return fail(e.into()),
    };
    let res = if cli.demo {
        rt.block_on(demo::run(demo::DemoArgs {
            listen: cli.listen,
            data_dir: cli.data_dir,
            mqtt: cli.mqtt,
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
                    "  {} ({}): {} ({}) on {}",
                    m.config.id,
                    m.name(),
                    m.config.profile,
                    m.class(),
                    m.config.port.display()
                );
            }
            if let Some(mqtt) = &c.config.mqtt {
                println!("  {}", mqtt.describe());
            }
            for (sku, by_class) in &c.config.apc {
                for (class, criteria) in by_class {
                    let n = criteria
                        .thresholds()
                        .iter()
                        .filter(|(_, v, _)| v.is_some())
                        .count();
                    println!("  apc {sku} on {class}: {n} criteria");
                }
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

fn token_list(config: &std::path::Path) -> ExitCode {
    let res = (|| -> anyhow::Result<Vec<auth::TokenInfo>> {
        let c = config::Config::load(config)?;
        let store = store::Store::open(&c.config.data_dir)?;
        Ok(auth::list_tokens(&store)?)
    })();
    match res {
        Ok(tokens) => {
            println!("{:<14} {:<10} {:<15} NAME", "HASH", "ROLE", "CREATED (ms)");
            for t in tokens {
                println!(
                    "{:<14} {:<10} {:<15} {}",
                    &t.hash[..12.min(t.hash.len())],
                    http::policy::role_name(t.record.role),
                    t.record.created_ms,
                    t.record.name
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

fn token_revoke(config: &std::path::Path, which: &str) -> ExitCode {
    let res = (|| -> anyhow::Result<(auth::TokenInfo, usize)> {
        let c = config::Config::load(config)?;
        let store = store::Store::open(&c.config.data_dir)?;
        let revoked = auth::revoke(&store, which)?;
        runtime()?.block_on(store.flush())?;
        Ok(revoked)
    })();
    match res {
        Ok((t, sessions)) => {
            eprintln!(
                "revoked '{}' ({}, {}); {sessions} browser session(s) ended",
                t.record.name,
                http::policy::role_name(t.record.role),
                &t.hash[..12.min(t.hash.len())]
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}
