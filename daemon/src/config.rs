//! The daemon's TOML configuration and its validation.
//!
//! Validation collects every problem instead of stopping at the first, so
//! `check-config` can tell an operator everything to fix in one go.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use microfactory_machines::driver::FlowMode;
use microfactory_machines::profile::{MachineKind, Profile};
use serde::Deserialize;
use thiserror::Error;

/// Default upload limit: large enough for a long print, small enough that a
/// stray upload cannot fill the disk in one request.
pub const DEFAULT_MAX_UPLOAD: u64 = 256 * 1024 * 1024;

/// Ended jobs kept in memory by default: the dashboard shows 200, and a
/// thousand cost a few MiB.
pub const DEFAULT_KEEP_ENDED_JOBS: usize = 1000;

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address the HTTP API listens on.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Where sled and the G-code files live; relative paths are taken
    /// from the configuration file's folder.
    pub data_dir: PathBuf,
    /// Largest accepted upload in bytes.
    #[serde(default = "default_max_upload")]
    pub max_upload_bytes: u64,
    /// How many of the most recently ended jobs stay in memory; older ones
    /// are read from disk when asked for (all are kept on disk).
    #[serde(default = "default_keep_ended_jobs")]
    pub keep_ended_jobs: usize,
    /// HTTP server limits and session settings (`[http]`).
    #[serde(default)]
    pub http: HttpConfig,
    /// The machines, as `[[machine]]` tables.
    #[serde(default, rename = "machine")]
    pub machines: Vec<MachineConfig>,
    /// Admissible Performance Criteria: `[apc."<sku>".<machine class>]`.
    #[serde(default)]
    pub apc: BTreeMap<String, BTreeMap<String, ApcCriteria>>,
    /// The MQTT broker and the machines that report through it (`[mqtt]`).
    pub mqtt: Option<MqttConfig>,
    /// Rates for full-cost accounting (`[costs]`); without it no cost is
    /// computed and cost criteria stay unmeasured.
    pub costs: Option<CostsConfig>,
    /// Finished goods and storefront orders (`[commerce]`).
    #[serde(default)]
    pub commerce: CommerceConfig,
    /// Webhook receivers, as `[[webhooks]]` tables.
    #[serde(default)]
    pub webhooks: Vec<WebhookConfig>,
    /// The webhook retry schedule (`[webhook_retry]`).
    #[serde(default)]
    pub webhook_retry: WebhookRetry,
    /// Shopify shops whose fulfillment-service callbacks this daemon
    /// answers, as `[[shopify]]` tables.
    #[serde(default)]
    pub shopify: Vec<ShopifyShop>,
    /// The shop's name and address (`[shop]`), printed on shipping labels
    /// and packing slips; without it those answer 409.
    pub shop: Option<ShopConfig>,
}

/// `[shop]` and `[shop.address]`: who sends the parcels. The address is
/// the labels' from address, checked by `commerce::address::validate` and
/// kept in its normalised form, so a label prints what check-config saw.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShopConfig {
    /// The shop's name, atop packing slips.
    pub name: String,
    /// The return address.
    pub address: crate::commerce::address::Address,
}

/// `[costs]`: what production costs, each rate with its unit in its name,
/// amounts in one `currency`. Read by `metering::cost`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CostsConfig {
    /// The currency of every amount, e.g. `USD` (only shown, never
    /// converted).
    pub currency: String,
    /// Operator labour, currency per hour.
    pub labour_rate_per_hour: f64,
    /// Electricity, currency per kWh.
    #[serde(default)]
    pub energy_price_per_kwh: f64,
    /// Operator minutes one inspection takes (QC is manual work; units
    /// the daemon judged itself take none).
    #[serde(default)]
    pub qc_minutes_per_unit: f64,
    /// Materials by name, as products name them (`[costs.material.PLA]`).
    #[serde(default)]
    pub material: BTreeMap<String, MaterialCost>,
    /// Machine classes (`[costs.class.fdm_printer]`).
    #[serde(default)]
    pub class: BTreeMap<String, MachineCost>,
}

/// One material's price and what turns filament length into mass.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaterialCost {
    /// Currency per kilogram.
    pub price_per_kg: f64,
    /// g/cm³ (PLA 1.24, PETG 1.27, ABS 1.04).
    #[serde(default = "default_density")]
    pub density_g_per_cm3: f64,
    /// Filament diameter, mm.
    #[serde(default = "default_filament_diameter")]
    pub filament_diameter_mm: f64,
}

fn default_density() -> f64 {
    1.24
}

fn default_filament_diameter() -> f64 {
    1.75
}

/// What one machine of a class costs to own and run.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineCost {
    /// Purchase price of one machine, currency.
    pub purchase_price: f64,
    /// Hours of production it is expected to last.
    pub service_life_hours: f64,
    /// Mean power draw while it works, watts.
    #[serde(default)]
    pub power_draw_w: f64,
    /// Tool wear per job (mills: end mills, drills), currency.
    #[serde(default)]
    pub tooling_wear_per_job: f64,
}

/// `[commerce]`: how storefront orders meet finished goods.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommerceConfig {
    /// SKUs made to order: a sales order short of one of them opens a
    /// production order for the shortfall.
    #[serde(default)]
    pub make_to_order: Vec<String>,
}

/// `[[webhooks]]`: a receiver of signed event deliveries.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Part of every delivery id; defaults to `config-` and the first 8
    /// hex digits of the URL's sha256, so it stays put across restarts.
    pub id: Option<String>,
    /// `http://` URL (https needs a TLS proxy: docs/webhooks.md).
    pub url: String,
    /// HMAC key for `X-Microfactory-Signature`, 16 characters or more.
    pub secret: String,
    /// Topics, or `["*"]` for all.
    pub topics: Vec<String>,
}

impl WebhookConfig {
    /// The id, given or derived from the URL.
    pub fn id(&self) -> String {
        self.id.clone().unwrap_or_else(|| {
            let hash = crate::factory::files::sha256_hex(self.url.as_bytes());
            format!("config-{}", &hash[..8])
        })
    }
}

/// `[webhook_retry]`: how deliveries are retried.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookRetry {
    /// The first retry's wait, ms.
    pub base_ms: u64,
    /// No wait is longer, ms.
    pub cap_ms: u64,
    /// Consecutive failures that disable a receiver.
    pub disable_after: u32,
    /// One attempt's time limit, ms.
    pub timeout_ms: u64,
}

impl Default for WebhookRetry {
    fn default() -> Self {
        let p = crate::commerce::webhooks::schedule::RetryPolicy::default();
        Self {
            base_ms: millis(p.backoff.base),
            cap_ms: millis(p.backoff.cap),
            disable_after: p.disable_after,
            timeout_ms: millis(p.timeout),
        }
    }
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl From<&WebhookRetry> for crate::commerce::webhooks::schedule::RetryPolicy {
    fn from(r: &WebhookRetry) -> Self {
        use std::time::Duration;
        Self {
            backoff: crate::mqtt::backoff::Backoff {
                base: Duration::from_millis(r.base_ms),
                cap: Duration::from_millis(r.cap_ms),
            },
            disable_after: r.disable_after,
            timeout: Duration::from_millis(r.timeout_ms),
        }
    }
}

/// `[[shopify]]`: a shop whose fulfillment service calls back here.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShopifyShop {
    /// Its myshopify domain, e.g. `example.myshopify.com`.
    pub shop: String,
    /// The app's client secret, which signs `X-Shopify-Hmac-Sha256`.
    pub secret: String,
}

/// `[mqtt]`: one broker, over plain TCP (`mqtt://`) or TLS (`mqtts://`,
/// through the system's OpenSSL: docs/mqtt.md), that the factory publishes
/// to and MQTT machines report through.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// `mqtt://host:port` (port 1883 when absent), or `mqtts://host:port`
    /// for TLS (port 8883 when absent).
    pub broker: String,
    /// Site name: the `<site>` of every topic (`[a-z0-9_-]`, at most 32).
    pub site: String,
    /// Client id; `microfactoryd-<site>` when absent. Two daemons with one
    /// id take turns disconnecting each other.
    pub client_id: Option<String>,
    /// Broker credentials (in clear over `mqtt://`, encrypted over
    /// `mqtts://`).
    pub username: Option<String>,
    /// Password for `username`.
    pub password: Option<String>,
    /// `mqtts://` only: the PEM certificates of the CA(s) that signed the
    /// broker's certificate, trusted instead of the system's roots (a
    /// workshop broker has a private CA). Relative to the configuration
    /// file's folder.
    pub ca_file: Option<PathBuf>,
    /// `mqtts://` only: the client certificate (PEM) for a broker that
    /// requires one (mutual TLS), with `client_key_file`.
    pub client_cert_file: Option<PathBuf>,
    /// Its unencrypted PKCS#8 PEM key.
    pub client_key_file: Option<PathBuf>,
    /// Seconds between keep-alive pings (5..=3600).
    #[serde(default = "default_keep_alive")]
    pub keep_alive_secs: u64,
    /// Largest payload read from a machine topic; larger ones are counted
    /// and dropped.
    #[serde(default = "default_max_payload")]
    pub max_payload_bytes: usize,
    /// Least time between two progress updates of one machine's retained
    /// state, and between two APC recomputations (100..=60000 ms): a
    /// progress bar needs a few updates a minute, not every line.
    #[serde(default = "default_progress_interval")]
    pub progress_interval_ms: u64,
    /// Machines that report over MQTT, as `[[mqtt.machine]]` tables.
    #[serde(default, rename = "machine")]
    pub machines: Vec<MqttMachineConfig>,
}

/// Which payload shapes an MQTT machine speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Adapter {
    /// Our own schema on `microfactory/<site>/machines/<id>/report`.
    Report,
    /// OctoPrint's MQTT plugin under `base` (`octoPrint` by default).
    Octoprint,
    /// Moonraker (Klipper) under `base`, its `instance_name`.
    Moonraker,
    /// A Bambu Lab printer in LAN mode, by its `serial`, read-only.
    Bambu,
}

/// One machine that reports over MQTT. Read-only: it takes no jobs and
/// no commands from the daemon, it is watched.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttMachineConfig {
    /// Stable id, as for `[[machine]]`.
    pub id: String,
    /// Name shown on the dashboard; the id when absent.
    pub name: Option<String>,
    /// Built-in profile id: the machine's kind and build volume.
    pub profile: String,
    /// What it speaks.
    pub adapter: Adapter,
    /// The adapter's base topic (OctoPrint: `octoPrint` by default;
    /// Moonraker: its `instance_name`, required; our schema and Bambu
    /// need none).
    pub base: Option<String>,
    /// A Bambu printer's serial number (its topics are
    /// `device/<serial>/report`).
    pub serial: Option<String>,
    /// Capabilities, as for `[[machine]]`.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Machine class for metering and APC.
    pub class: Option<String>,
}

impl MqttConfig {
    /// One line for `check-config`: the site, the broker, and over TLS
    /// whom the daemon trusts and whether it shows a certificate.
    pub fn describe(&self) -> String {
        let mut line = format!("mqtt: site '{}' on {}", self.site, self.broker);
        if matches!(parse_broker(&self.broker), Ok(b) if b.tls) {
            let roots = self.ca_file.as_ref().map_or_else(
                || "the system's roots".to_string(),
                |f| f.display().to_string(),
            );
            line.push_str(&format!(" (TLS, trusting {roots}"));
            if let Some(cert) = &self.client_cert_file {
                line.push_str(&format!("; client certificate {}", cert.display()));
            }
            line.push(')');
        } else {
            line.push_str(" (plain TCP)");
        }
        line
    }
}

impl MqttMachineConfig {
    /// The topic base an OctoPrint adapter listens under.
    pub fn octoprint_base(&self) -> &str {
        self.base.as_deref().unwrap_or("octoPrint")
    }

    /// The topic prefix (without its final `/`) under which this machine's
    /// messages arrive, for the adapters that listen under one.
    pub fn topic_base(&self) -> Option<String> {
        match self.adapter {
            Adapter::Report => None,
            Adapter::Octoprint => Some(self.octoprint_base().to_string()),
            Adapter::Moonraker => self.base.clone(),
            Adapter::Bambu => self.serial.as_ref().map(|s| format!("device/{s}")),
        }
    }
}

fn default_keep_alive() -> u64 {
    30
}

fn default_max_payload() -> usize {
    64 * 1024
}

fn default_progress_interval() -> u64 {
    2000
}

/// The thresholds a product made on a class of machine must meet to be
/// certified (see docs/production.md). Ratios are fractions (0.8, not 80).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApcCriteria {
    /// How much evidence a verdict needs.
    #[serde(default)]
    pub window: ApcWindow,
    /// Least availability (APT / PBT).
    pub availability_min: Option<f64>,
    /// Least effectiveness (PRU × PQ / APT).
    pub effectiveness_min: Option<f64>,
    /// Least quality ratio (GQ / PQ).
    pub quality_ratio_min: Option<f64>,
    /// Least first-pass yield.
    pub first_pass_yield_min: Option<f64>,
    /// Least OEE.
    pub oee_min: Option<f64>,
    /// Least good units per planned busy hour.
    pub good_units_per_planned_hour_min: Option<f64>,
    /// Most operator minutes per good unit (setup time and inspections;
    /// measured only with `[costs]`, which says how long one inspection
    /// takes).
    pub operator_minutes_per_unit_max: Option<f64>,
    /// Least mean time between failures, hours.
    pub mtbf_hours_min: Option<f64>,
    /// Most mean time to restore, hours.
    pub mttr_hours_max: Option<f64>,
    /// Least earnings per operator hour, currency (`[costs]` needed):
    /// what the product earns over its material, machine and tooling
    /// costs, per hour of operator work.
    pub earnings_per_operator_hour_min: Option<f64>,
    /// Most full cost per good unit, currency (`[costs]` needed).
    pub cost_per_good_unit_max: Option<f64>,
}

/// The least evidence for an APC verdict.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApcWindow {
    /// Units produced.
    #[serde(default)]
    pub min_units: u64,
    /// Planned busy hours.
    #[serde(default)]
    pub min_planned_hours: f64,
}

impl ApcCriteria {
    /// Every threshold by its key, with whether it is a fraction.
    pub fn thresholds(&self) -> [(&'static str, Option<f64>, bool); 11] {
        [
            ("availability_min", self.availability_min, true),
            ("effectiveness_min", self.effectiveness_min, false),
            ("quality_ratio_min", self.quality_ratio_min, true),
            ("first_pass_yield_min", self.first_pass_yield_min, true),
            ("oee_min", self.oee_min, true),
            (
                "good_units_per_planned_hour_min",
                self.good_units_per_planned_hour_min,
                false,
            ),
            (
                "operator_minutes_per_unit_max",
                self.operator_minutes_per_unit_max,
                false,
            ),
            ("mtbf_hours_min", self.mtbf_hours_min, false),
            ("mttr_hours_max", self.mttr_hours_max, false),
            (
                "earnings_per_operator_hour_min",
                self.earnings_per_operator_hour_min,
                false,
            ),
            ("cost_per_good_unit_max", self.cost_per_good_unit_max, false),
        ]
    }
}

/// `[http]`: limits that keep one client (or anyone who can reach the
/// port) from exhausting the daemon, and browser session settings. The
/// defaults suit a workshop network; docs/security.md explains each.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Seconds a client has to send a request's headers, from connecting
    /// or from the end of its previous answer (a kept-alive connection
    /// that sends nothing is closed after this too).
    pub header_read_timeout_secs: u64,
    /// Seconds a connection may make no progress while the daemon waits
    /// on the client: a request body that stops arriving, or an answer
    /// (an event stream included) the client stops reading.
    pub idle_timeout_secs: u64,
    /// Open connections at most; more are answered 503 and closed.
    pub max_connections: usize,
    /// Concurrent `GET /events` streams per token (each dashboard tab
    /// holds one).
    pub max_event_streams_per_token: usize,
    /// Days a browser session lasts from signing in.
    pub session_lifetime_days: u64,
    /// Mark the session cookie `Secure`: set this when the daemon is
    /// reached over TLS (a reverse proxy), never over plain HTTP, where
    /// browsers would then drop the cookie.
    pub cookie_secure: bool,
    /// Failed sign-ins (wrong token or session) per client address per
    /// minute before that address gets 429 for the rest of the minute.
    pub max_failed_sign_ins_per_minute: u32,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            header_read_timeout_secs: 10,
            idle_timeout_secs: 60,
            max_connections: 256,
            max_event_streams_per_token: 8,
            session_lifetime_days: 30,
            cookie_secure: false,
            max_failed_sign_ins_per_minute: 10,
        }
    }
}

impl HttpConfig {
    /// The keys of `[http]`, for naming unknown ones.
    pub const KEYS: [&str; 7] = [
        "header_read_timeout_secs",
        "idle_timeout_secs",
        "max_connections",
        "max_event_streams_per_token",
        "session_lifetime_days",
        "cookie_secure",
        "max_failed_sign_ins_per_minute",
    ];

    fn check(&self, problems: &mut Vec<String>) {
        let mut range = |key: &str, v: u64, lo: u64, hi: u64| {
            if !(lo..=hi).contains(&v) {
                problems.push(format!("http.{key} = {v} must be between {lo} and {hi}"));
            }
        };
        range(
            "header_read_timeout_secs",
            self.header_read_timeout_secs,
            1,
            300,
        );
        range("idle_timeout_secs", self.idle_timeout_secs, 1, 3600);
        range("max_connections", self.max_connections as u64, 1, 100_000);
        range(
            "max_event_streams_per_token",
            self.max_event_streams_per_token as u64,
            1,
            1000,
        );
        range("session_lifetime_days", self.session_lifetime_days, 1, 365);
        range(
            "max_failed_sign_ins_per_minute",
            u64::from(self.max_failed_sign_ins_per_minute),
            1,
            100_000,
        );
    }
}

/// One machine on one serial port.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfig {
    /// Stable id used in the API and logs (`[a-z0-9_-]`, at most 32).
    pub id: String,
    /// Name shown on the dashboard; the id when absent.
    pub name: Option<String>,
    /// Built-in profile id (see `machines/profiles/`).
    pub profile: String,
    /// Serial device; prefer `/dev/serial/by-id/...`, which survives
    /// replugging in another order.
    pub port: PathBuf,
    /// Overrides the profile's baud rate.
    pub baud: Option<u32>,
    /// Capabilities jobs can require, such as `material:PLA`.
    #[serde(default)]
    pub tags: Vec<String>,
    /// After a job the operator must confirm the bed is clear before the
    /// machine takes the next one.
    #[serde(default)]
    pub require_bed_clear: bool,
    /// Overrides the flow control mode.
    pub flow: Option<FlowMode>,
    /// Machine class for metering and APC (`[a-z0-9_-]`); default
    /// `fdm_printer` for printers, `cnc_mill` for mills.
    pub class: Option<String>,
    /// Set for `[[mqtt.machine]]` entries (never from the file): the
    /// machine is watched, not driven, so the scheduler never picks it.
    #[serde(skip)]
    pub read_only: bool,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7125))
}

fn default_max_upload() -> u64 {
    DEFAULT_MAX_UPLOAD
}

fn default_keep_ended_jobs() -> usize {
    DEFAULT_KEEP_ENDED_JOBS
}

/// A configuration that could not be used.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// TOML syntax or an unknown/missing key; the message names it.
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    /// Well-formed but wrong; every problem is listed.
    #[error("{path}: {} problem(s):\n  - {}", problems.len(), problems.join("\n  - "))]
    Invalid {
        path: PathBuf,
        problems: Vec<String>,
    },
}

/// A validated machine with its profile resolved.
#[derive(Debug, Clone)]
pub struct Machine {
    /// The configuration entry.
    pub config: MachineConfig,
    /// Its model.
    pub profile: Profile,
}

impl Machine {
    /// A machine of a built-in profile on no real port, for tests of the
    /// core and the shell.
    #[cfg(test)]
    pub fn for_tests(id: &str, profile: &str, require_bed_clear: bool) -> Self {
        Self {
            config: MachineConfig {
                id: id.into(),
                name: None,
                profile: profile.into(),
                port: "/dev/null".into(),
                baud: None,
                tags: vec![],
                require_bed_clear,
                flow: None,
                class: None,
                read_only: false,
            },
            #[allow(clippy::expect_used)]
            profile: Profile::builtin(profile).expect("a built-in profile"),
        }
    }

    /// Display name.
    pub fn name(&self) -> &str {
        self.config.name.as_deref().unwrap_or(&self.config.id)
    }

    /// Printer or mill.
    pub fn kind(&self) -> MachineKind {
        self.profile.kind
    }

    /// Its class for metering and APC.
    pub fn class(&self) -> &str {
        match (&self.config.class, self.kind()) {
            (Some(c), _) => c,
            (None, MachineKind::Printer) => "fdm_printer",
            (None, MachineKind::Mill) => "cnc_mill",
        }
    }
}

/// A configuration ready to run, with warnings worth showing.
#[derive(Debug, Clone)]
pub struct Checked {
    /// The parsed file, `data_dir` made absolute.
    pub config: Config,
    /// Machines with their profiles.
    pub machines: Vec<Machine>,
    /// Things that work but are unwise.
    pub warnings: Vec<String>,
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Checked, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let (mut config, unknown) = match toml::from_str::<Config>(&text) {
            Ok(c) => (c, Vec::new()),
            Err(e) => Self::without_unknown_keys(&text).ok_or_else(|| ConfigError::Parse {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?,
        };
        let base = path.parent().unwrap_or(Path::new("."));
        if config.data_dir.is_relative() {
            config.data_dir = base.join(&config.data_dir);
        }
        if let Some(mqtt) = config.mqtt.as_mut() {
            for file in [
                &mut mqtt.ca_file,
                &mut mqtt.client_cert_file,
                &mut mqtt.client_key_file,
            ]
            .into_iter()
            .flatten()
            {
                if file.is_relative() {
                    *file = base.join(&*file);
                }
            }
        }
        let problems = match config.check() {
            Ok(checked) if unknown.is_empty() => return Ok(checked),
            Ok(_) => unknown,
            Err(problems) => unknown.into_iter().chain(problems).collect(),
        };
        Err(ConfigError::Invalid {
            path: path.to_path_buf(),
            problems,
        })
    }

    /// When a file fails only because of unknown keys, the file without
    /// them and one problem per key, so that they are reported together
    /// with everything else that is wrong. `None` for any other error.
    fn without_unknown_keys(text: &str) -> Option<(Config, Vec<String>)> {
        const TOP: [&str; 14] = [
            "listen",
            "data_dir",
            "max_upload_bytes",
            "keep_ended_jobs",
            "http",
            "machine",
            "apc",
            "mqtt",
            "costs",
            "commerce",
            "webhooks",
            "webhook_retry",
            "shopify",
            "shop",
        ];
        const WEBHOOK: [&str; 4] = ["id", "url", "secret", "topics"];
        const MACHINE: [&str; 9] = [
            "id",
            "name",
            "profile",
            "port",
            "baud",
            "tags",
            "require_bed_clear",
            "flow",
            "class",
        ];
        let mut table: toml::Table = toml::from_str(text).ok()?;
        let mut unknown = Vec::new();
        let mut strip = |t: &mut toml::Table, known: &[&str], at: &str| {
            let extra: Vec<String> = t
                .keys()
                .filter(|k| !known.contains(&k.as_str()))
                .cloned()
                .collect();
            for k in extra {
                t.remove(&k);
                unknown.push(format!(
                    "{at}unknown key '{k}' (expected one of {})",
                    known.join(", ")
                ));
            }
        };
        strip(&mut table, &TOP, "");
        if let Some(toml::Value::Table(http)) = table.get_mut("http") {
            strip(http, &HttpConfig::KEYS, "http: ");
        }
        if let Some(toml::Value::Array(machines)) = table.get_mut("machine") {
            for (i, m) in machines.iter_mut().enumerate() {
                if let toml::Value::Table(m) = m {
                    let id = m.get("id").and_then(toml::Value::as_str).unwrap_or("?");
                    let at = format!("machine #{} ({id}): ", i + 1);
                    strip(m, &MACHINE, &at);
                }
            }
        }
        if let Some(toml::Value::Array(hooks)) = table.get_mut("webhooks") {
            for (i, h) in hooks.iter_mut().enumerate() {
                if let toml::Value::Table(h) = h {
                    strip(h, &WEBHOOK, &format!("webhooks #{}: ", i + 1));
                }
            }
        }
        if unknown.is_empty() {
            return None;
        }
        let config = toml::Value::Table(table).try_into().ok()?;
        Some((config, unknown))
    }

    /// Validates an in-memory configuration (used by the demo too).
    pub fn check(self) -> Result<Checked, Vec<String>> {
        let mut problems = Vec::new();
        let mut warnings = Vec::new();
        let mut machines = Vec::new();
        let mut ids = HashSet::new();
        let mut ports = HashSet::new();
        if self.max_upload_bytes < 1024 {
            problems.push(format!(
                "max_upload_bytes = {} is too small to hold any real G-code; use at least 1024",
                self.max_upload_bytes
            ));
        }
        self.http.check(&mut problems);
        if self.machines.is_empty() {
            warnings
                .push("no [[machine]] is configured: jobs can be stored but none will run".into());
        }
        for (i, m) in self.machines.iter().enumerate() {
            let at = format!("machine #{} ({})", i + 1, m.id);
            if !valid_id(&m.id) {
                problems.push(format!(
                    "{at}: id must be 1 to 32 characters of a-z, 0-9, '-' or '_'"
                ));
            }
            if !ids.insert(m.id.as_str()) {
                problems.push(format!("{at}: id '{}' is used twice", m.id));
            }
            if m.port.as_os_str().is_empty() {
                problems.push(format!("{at}: port is empty"));
            } else if !ports.insert(m.port.as_path()) {
                problems.push(format!(
                    "{at}: port {} is already used by another machine",
                    m.port.display()
                ));
            } else if m.port.to_string_lossy().starts_with("/dev/tty") {
                warnings.push(format!(
                    "{at}: {} may name another machine after a replug; prefer /dev/serial/by-id/...",
                    m.port.display()
                ));
            }
            if let Some(b) = m.baud
                && b < 300
            {
                problems.push(format!("{at}: baud {b} is below 300"));
            }
            for t in &m.tags {
                if !valid_tag(t) {
                    problems.push(format!(
                        "{at}: tag '{t}' must look like key:value (e.g. material:PLA), without spaces"
                    ));
                }
            }
            if let Some(c) = &m.class
                && !valid_id(c)
            {
                problems.push(format!(
                    "{at}: class must be 1 to 32 characters of a-z, 0-9, '-' or '_'"
                ));
            }
            match Profile::builtin(&m.profile) {
                Ok(profile) => machines.push(Machine {
                    config: m.clone(),
                    profile,
                }),
                Err(e) => problems.push(format!("{at}: {e}")),
            }
        }
        if let Some(mqtt) = &self.mqtt {
            check_mqtt(mqtt, &mut ids, &mut machines, &mut problems, &mut warnings);
        }
        let classes: HashSet<&str> = machines.iter().map(Machine::class).collect();
        check_apc(&self.apc, &classes, &mut problems, &mut warnings);
        check_costs(
            self.costs.as_ref(),
            &self.apc,
            &classes,
            &mut problems,
            &mut warnings,
        );
        for (i, sku) in self.commerce.make_to_order.iter().enumerate() {
            if let Err(e) = crate::metering::model::check_sku(sku) {
                problems.push(format!("commerce.make_to_order[{i}]: {e}"));
            }
        }
        check_webhooks(&self, &mut problems);
        let mut config = self;
        if let Some(shop) = config.shop.as_mut() {
            check_shop(shop, &mut problems);
        }
        if problems.is_empty() {
            Ok(Checked {
                config,
                machines,
                warnings,
            })
        } else {
            Err(problems)
        }
    }
}

/// `[shop]`: a name to print and an address that passes the same checks
/// as a customer's; the address is replaced by its normalised form.
fn check_shop(shop: &mut ShopConfig, problems: &mut Vec<String>) {
    shop.name = shop.name.trim().to_owned();
    let name = &shop.name;
    if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
        problems.push("shop.name must be 1 to 100 printable characters".into());
    }
    match crate::commerce::address::validate(&shop.address) {
        Ok(a) => shop.address = a,
        Err(e) => problems.push(format!("shop.address.{}: {e}", e.field)),
    }
}

/// `[[webhooks]]`, `[webhook_retry]` and `[[shopify]]`.
fn check_webhooks(c: &Config, problems: &mut Vec<String>) {
    let mut ids = HashSet::new();
    for (i, h) in c.webhooks.iter().enumerate() {
        let id = h.id();
        let at = format!("webhooks #{} ({id})", i + 1);
        for p in crate::commerce::webhooks::model::check_receiver(&id, &h.url, &h.secret, &h.topics)
        {
            problems.push(format!("{at}: {p}"));
        }
        if !ids.insert(id.clone()) {
            problems.push(format!("{at}: id '{id}' is used twice"));
        }
    }
    let r = &c.webhook_retry;
    if r.base_ms == 0 || r.base_ms > r.cap_ms {
        problems.push(format!(
            "webhook_retry: base_ms = {} must be at least 1 and at most cap_ms = {}",
            r.base_ms, r.cap_ms
        ));
    }
    if r.disable_after == 0 {
        problems.push("webhook_retry: disable_after must be at least 1".into());
    }
    if !(100..=300_000).contains(&r.timeout_ms) {
        problems.push(format!(
            "webhook_retry: timeout_ms = {} must be between 100 and 300000",
            r.timeout_ms
        ));
    }
    let mut shops = HashSet::new();
    for (i, s) in c.shopify.iter().enumerate() {
        let at = format!("shopify #{} ({})", i + 1, s.shop);
        let domain = s.shop.to_ascii_lowercase();
        if domain.is_empty()
            || !domain
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '.')
        {
            problems.push(format!(
                "{at}: shop must be the shop's domain, e.g. example.myshopify.com"
            ));
        }
        if s.secret.is_empty() {
            problems.push(format!(
                "{at}: secret is empty; use the app's client secret from Shopify"
            ));
        }
        if !shops.insert(domain) {
            problems.push(format!("{at}: shop is listed twice"));
        }
    }
}

/// `[mqtt]`: the broker URL, the site and the MQTT machines, which join
/// `machines` as read-only entries whose `port` names their topic.
fn check_mqtt<'a>(
    mqtt: &'a MqttConfig,
    ids: &mut HashSet<&'a str>,
    machines: &mut Vec<Machine>,
    problems: &mut Vec<String>,
    warnings: &mut Vec<String>,
) {
    let tls = match parse_broker(&mqtt.broker) {
        Ok(b) => b.tls,
        Err(e) => {
            problems.push(format!("mqtt.broker: {e}"));
            mqtt.broker.starts_with("mqtts://")
        }
    };
    check_mqtt_tls(mqtt, tls, problems);
    if !valid_id(&mqtt.site) {
        problems.push("mqtt.site must be 1 to 32 characters of a-z, 0-9, '-' or '_'".into());
    }
    if let Some(c) = &mqtt.client_id
        && (c.is_empty() || c.len() > 64 || !c.chars().all(|c| c.is_ascii_graphic()))
    {
        problems.push("mqtt.client_id must be 1 to 64 printable characters".into());
    }
    if mqtt.password.is_some() && mqtt.username.is_none() {
        problems.push("mqtt.password is set without mqtt.username".into());
    }
    if mqtt.username.is_some() && !tls {
        warnings.push(
            "mqtt: credentials travel in clear over plain TCP; keep the broker on a trusted network"
                .into(),
        );
    }
    if !(5..=3600).contains(&mqtt.keep_alive_secs) {
        problems.push(format!(
            "mqtt.keep_alive_secs = {} must be between 5 and 3600",
            mqtt.keep_alive_secs
        ));
    }
    if !(256..=1024 * 1024).contains(&mqtt.max_payload_bytes) {
        problems.push(format!(
            "mqtt.max_payload_bytes = {} must be between 256 and 1048576",
            mqtt.max_payload_bytes
        ));
    }
    if !(100..=60_000).contains(&mqtt.progress_interval_ms) {
        problems.push(format!(
            "mqtt.progress_interval_ms = {} must be between 100 and 60000",
            mqtt.progress_interval_ms
        ));
    }
    let mut topics = HashSet::new();
    for (i, m) in mqtt.machines.iter().enumerate() {
        let at = format!("mqtt machine #{} ({})", i + 1, m.id);
        if !valid_id(&m.id) {
            problems.push(format!(
                "{at}: id must be 1 to 32 characters of a-z, 0-9, '-' or '_'"
            ));
        }
        if !ids.insert(m.id.as_str()) {
            problems.push(format!("{at}: id '{}' is used twice", m.id));
        }
        if m.serial.is_some() && m.adapter != Adapter::Bambu {
            problems.push(format!("{at}: serial is for the bambu adapter"));
        }
        let source = match m.adapter {
            Adapter::Report => {
                if m.base.is_some() {
                    problems.push(format!(
                        "{at}: base is for the octoprint and moonraker adapters; the report adapter listens on microfactory/<site>/machines/<id>/report"
                    ));
                }
                format!("mqtt:microfactory/{}/machines/{}/report", mqtt.site, m.id)
            }
            Adapter::Octoprint | Adapter::Moonraker => {
                let base = m.topic_base().unwrap_or_default();
                if base.is_empty() && m.adapter == Adapter::Moonraker {
                    problems.push(format!(
                        "{at}: the moonraker adapter needs base = its instance_name (moonraker.conf [mqtt] instance_name, the host name by default)"
                    ));
                } else if base.is_empty()
                    || base.len() > 128
                    || base.contains(['+', '#', '\0'])
                    || base.starts_with('/')
                    || base.ends_with('/')
                {
                    problems.push(format!(
                        "{at}: base '{base}' must be a plain topic without wildcards or outer slashes"
                    ));
                }
                format!("mqtt:{base}")
            }
            Adapter::Bambu => {
                if m.base.is_some() {
                    problems.push(format!(
                        "{at}: a bambu printer is found by its serial, not a base"
                    ));
                }
                match &m.serial {
                    Some(serial)
                        if !serial.is_empty()
                            && serial.len() <= 32
                            && serial
                                .chars()
                                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') => {}
                    _ => problems.push(format!(
                        "{at}: the bambu adapter needs serial = the printer's serial number (letters, digits, '-' or '_')"
                    )),
                }
                format!("mqtt:{}", m.topic_base().unwrap_or_default())
            }
        };
        if source != "mqtt:" && !topics.insert(source.clone()) {
            problems.push(format!("{at}: {source} is already used by another machine"));
        }
        for t in &m.tags {
            if !valid_tag(t) {
                problems.push(format!(
                    "{at}: tag '{t}' must look like key:value (e.g. material:PLA), without spaces"
                ));
            }
        }
        if let Some(c) = &m.class
            && !valid_id(c)
        {
            problems.push(format!(
                "{at}: class must be 1 to 32 characters of a-z, 0-9, '-' or '_'"
            ));
        }
        match Profile::builtin(&m.profile) {
            Ok(profile) => machines.push(Machine {
                config: MachineConfig {
                    id: m.id.clone(),
                    name: m.name.clone(),
                    profile: m.profile.clone(),
                    port: PathBuf::from(source),
                    baud: None,
                    tags: m.tags.clone(),
                    require_bed_clear: false,
                    flow: None,
                    class: m.class.clone(),
                    read_only: true,
                },
                profile,
            }),
            Err(e) => problems.push(format!("{at}: {e}")),
        }
    }
    // Messages go to the machine whose base prefixes their topic: one base
    // inside another would hand the inner machine's messages to the outer.
    let bases: Vec<(&str, String)> = mqtt
        .machines
        .iter()
        .filter_map(|m| Some((m.id.as_str(), m.topic_base()?)))
        .collect();
    for (id, outer) in &bases {
        for (inner_id, inner) in &bases {
            if inner.starts_with(&format!("{outer}/")) {
                problems.push(format!(
                    "mqtt machine {inner_id}: base '{inner}' lies inside machine {id}'s base '{outer}'; give them separate bases"
                ));
            }
        }
    }
}

/// `[mqtt]`'s TLS files: only with `mqtts://`, and readable, parsed and
/// fitting together (the same code that sets up the connection).
fn check_mqtt_tls(mqtt: &MqttConfig, tls: bool, problems: &mut Vec<String>) {
    let files = [
        ("ca_file", &mqtt.ca_file),
        ("client_cert_file", &mqtt.client_cert_file),
        ("client_key_file", &mqtt.client_key_file),
    ];
    let mut any = false;
    for (key, file) in files {
        if let Some(f) = file {
            any = true;
            if !tls {
                problems.push(format!(
                    "mqtt.{key} = '{}' is for TLS, but mqtt.broker '{}' is plain TCP: use mqtts://",
                    f.display(),
                    mqtt.broker
                ));
            }
        }
    }
    if (tls || any)
        && let Err(e) = crate::mqtt::tls::connector(mqtt)
    {
        problems.push(e.to_string());
    }
}

/// A broker URL, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    /// Host name or address (an IPv6 address without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// `mqtts://`: TLS.
    pub tls: bool,
}

/// `mqtt://host[:port]` (port 1883 when absent) or `mqtts://host[:port]`
/// (TLS, port 8883 when absent).
pub fn parse_broker(url: &str) -> Result<BrokerUrl, String> {
    let (rest, tls, default_port) = if let Some(r) = url.strip_prefix("mqtt://") {
        (r, false, 1883)
    } else if let Some(r) = url.strip_prefix("mqtts://") {
        (r, true, 8883)
    } else {
        return Err(format!(
            "'{url}' must start with mqtt:// (plain TCP) or mqtts:// (TLS)"
        ));
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let bad = || format!("'{url}': expected mqtt://host:port or mqtts://host:port");
    let (host, port) = match rest.strip_prefix('[') {
        // [v6 address]:port
        Some(v6) => {
            let (h, tail) = v6.split_once(']').ok_or_else(bad)?;
            (h, tail.strip_prefix(':'))
        }
        None => match rest.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        },
    };
    let port = match port {
        None => default_port,
        Some(p) => match p.parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => {
                return Err(format!(
                    "'{url}': port '{p}' is not a number from 1 to 65535"
                ));
            }
        },
    };
    if host.is_empty() || host.contains(['/', '@', '?', '#', ' ', ':']) && !rest.starts_with('[') {
        return Err(bad());
    }
    Ok(BrokerUrl {
        host: host.to_string(),
        port,
        tls,
    })
}

/// The `[apc]` tables: SKUs and classes well-formed, every table with at
/// least one criterion, fractions within 0..=1, other thresholds positive.
fn check_apc(
    apc: &BTreeMap<String, BTreeMap<String, ApcCriteria>>,
    classes: &HashSet<&str>,
    problems: &mut Vec<String>,
    warnings: &mut Vec<String>,
) {
    for (sku, by_class) in apc {
        if let Err(e) = crate::metering::model::check_sku(sku) {
            problems.push(format!("apc.\"{sku}\": {e}"));
        }
        for (class, c) in by_class {
            let at = format!("apc.\"{sku}\".{class}");
            if !valid_id(class) {
                problems.push(format!(
                    "{at}: a machine class is 1 to 32 characters of a-z, 0-9, '-' or '_'"
                ));
            } else if !classes.contains(class.as_str()) {
                warnings.push(format!(
                    "{at}: no configured machine is of class '{class}' (classes: {})",
                    {
                        let mut v: Vec<&str> = classes.iter().copied().collect();
                        v.sort_unstable();
                        v.join(", ")
                    }
                ));
            }
            let set = c.thresholds();
            if set.iter().all(|(_, v, _)| v.is_none()) {
                problems.push(format!(
                    "{at}: no criterion is set (e.g. oee_min = 0.6, availability_min = 0.8)"
                ));
            }
            for (key, v, fraction) in set {
                match v {
                    Some(x) if fraction && !(0.0..=1.0).contains(&x) => problems.push(format!(
                        "{at}: {key} = {x} must be a fraction between 0 and 1 (0.8, not 80)"
                    )),
                    Some(x) if !(x.is_finite() && x >= 0.0) => {
                        problems.push(format!("{at}: {key} = {x} must be zero or more"));
                    }
                    _ => {}
                }
            }
            let h = c.window.min_planned_hours;
            if !(h.is_finite() && h >= 0.0) {
                problems.push(format!(
                    "{at}: window.min_planned_hours = {h} must be zero or more"
                ));
            }
        }
    }
}

/// The `[costs]` table: every rate a finite number of the right sign,
/// and warnings where accounting will lack a rate it needs.
fn check_costs(
    costs: Option<&CostsConfig>,
    apc: &BTreeMap<String, BTreeMap<String, ApcCriteria>>,
    classes: &HashSet<&str>,
    problems: &mut Vec<String>,
    warnings: &mut Vec<String>,
) {
    let Some(c) = costs else {
        for (sku, by_class) in apc {
            for (class, cr) in by_class {
                if cr.earnings_per_operator_hour_min.is_some()
                    || cr.cost_per_good_unit_max.is_some()
                {
                    warnings.push(format!(
                        "apc.\"{sku}\".{class}: cost criteria need a [costs] table; without it \
                         the verdict stays insufficient_data"
                    ));
                }
            }
        }
        return;
    };
    if c.currency.trim().is_empty() || c.currency.len() > 8 {
        problems.push("costs.currency must be a short code such as USD or EUR".into());
    }
    let mut at_least = |at: String, v: f64, positive: bool| {
        if !(v.is_finite() && (v > 0.0 || (!positive && v == 0.0))) {
            let want = if positive {
                "more than zero"
            } else {
                "zero or more"
            };
            problems.push(format!("{at} = {v} must be {want}"));
        }
    };
    at_least(
        "costs.labour_rate_per_hour".into(),
        c.labour_rate_per_hour,
        false,
    );
    at_least(
        "costs.energy_price_per_kwh".into(),
        c.energy_price_per_kwh,
        false,
    );
    at_least(
        "costs.qc_minutes_per_unit".into(),
        c.qc_minutes_per_unit,
        false,
    );
    for (name, m) in &c.material {
        let at = format!("costs.material.{name}");
        at_least(format!("{at}.price_per_kg"), m.price_per_kg, false);
        at_least(format!("{at}.density_g_per_cm3"), m.density_g_per_cm3, true);
        at_least(
            format!("{at}.filament_diameter_mm"),
            m.filament_diameter_mm,
            true,
        );
    }
    for (class, m) in &c.class {
        let at = format!("costs.class.{class}");
        at_least(format!("{at}.purchase_price"), m.purchase_price, false);
        at_least(
            format!("{at}.service_life_hours"),
            m.service_life_hours,
            true,
        );
        at_least(format!("{at}.power_draw_w"), m.power_draw_w, false);
        at_least(
            format!("{at}.tooling_wear_per_job"),
            m.tooling_wear_per_job,
            false,
        );
        if !classes.contains(class.as_str()) {
            warnings.push(format!("{at}: no configured machine is of class '{class}'"));
        }
    }
    let mut classes: Vec<&str> = classes.iter().copied().collect();
    classes.sort_unstable();
    for class in classes {
        if !c.class.contains_key(class) {
            warnings.push(format!(
                "costs: no [costs.class.{class}] table, so its machine time costs nothing in \
                 the accounts"
            ));
        }
    }
}

/// Machine ids appear in URLs and MQTT topics, so keep them plain.
pub fn valid_id(id: &str) -> bool {
    (1..=32).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// Tags are `key:value` so that jobs can require exact capabilities.
pub fn valid_tag(t: &str) -> bool {
    let mut parts = t.splitn(2, ':');
    let (Some(k), Some(v)) = (parts.next(), parts.next()) else {
        return false;
    };
    !k.is_empty() && !v.is_empty() && t.len() <= 64 && t.chars().all(|c| c.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Checked, Vec<String>> {
        let c: Config = toml::from_str(text).map_err(|e| vec![e.to_string()])?;
        c.check()
    }

    #[test]
    fn a_good_file_loads_with_profiles_and_warns_about_unstable_ports() {
        let c = parse(
            r#"
data_dir = "data"
[[machine]]
id = "mk3-a"
profile = "prusa-mk3s"
port = "/dev/ttyACM0"
tags = ["material:PLA", "nozzle:0.4"]
require_bed_clear = true
"#,
        )
        .expect("valid");
        assert_eq!(c.machines.len(), 1);
        assert_eq!(c.machines[0].kind(), MachineKind::Printer);
        assert!(c.warnings[0].contains("by-id"), "{:?}", c.warnings);
    }

    #[test]
    fn every_wrong_cost_rate_is_named_and_missing_rates_are_warned_about() {
        let e = parse(
            r#"
data_dir = "data"
[[machine]]
id = "mill-1"
profile = "grbl-3018"
port = "/dev/serial/by-id/mill"
[costs]
currency = ""
labour_rate_per_hour = -5.0
[costs.material.PLA]
price_per_kg = 25.0
density_g_per_cm3 = 0.0
[costs.class.fdm_printer]
purchase_price = 800.0
service_life_hours = 0.0
"#,
        )
        .expect_err("invalid");
        for want in [
            "costs.currency",
            "costs.labour_rate_per_hour = -5 must be zero or more",
            "costs.material.PLA.density_g_per_cm3 = 0 must be more than zero",
            "costs.class.fdm_printer.service_life_hours = 0 must be more than zero",
        ] {
            assert!(e.iter().any(|p| p.contains(want)), "{want}: {e:?}");
        }
        let c = parse(
            r#"
data_dir = "data"
[[machine]]
id = "mill-1"
profile = "grbl-3018"
port = "/dev/serial/by-id/mill"
[apc.pcb.cnc_mill]
cost_per_good_unit_max = 3.0
"#,
        )
        .expect("valid");
        assert!(
            c.warnings
                .iter()
                .any(|w| w.contains("cost criteria need a [costs] table")),
            "{:?}",
            c.warnings
        );
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let e = parse(
            r#"
data_dir = "d"
max_upload_bytes = 10
[[machine]]
id = "A B"
profile = "nope"
port = "/dev/serial/by-id/x"
tags = ["PLA"]
[[machine]]
id = "m"
profile = "grbl-3018"
port = "/dev/serial/by-id/x"
"#,
        )
        .expect_err("invalid");
        let all = e.join("\n");
        for needle in [
            "max_upload_bytes",
            "id must be",
            "unknown machine profile 'nope'",
            "key:value",
            "already used",
        ] {
            assert!(all.contains(needle), "missing {needle}: {all}");
        }
    }

    #[test]
    fn unknown_keys_are_set_aside_and_every_known_key_is_kept() {
        let (c, unknown) = Config::without_unknown_keys(
            r#"
listen = "127.0.0.1:1"
data_dir = "d"
max_upload_bytes = 2048
colour = "red"
[[machine]]
id = "m"
name = "M"
profile = "grbl-3018"
port = "/dev/serial/by-id/m"
baud = 115200
tags = ["tool:vbit"]
require_bed_clear = true
flow = "ping-pong"
speed = 3
"#,
        )
        .expect("only unknown keys are wrong");
        assert_eq!(unknown.len(), 2, "{unknown:?}");
        assert!(unknown[0].contains("'colour'"), "{unknown:?}");
        assert!(unknown[1].starts_with("machine #1 (m): unknown key 'speed'"));
        assert_eq!(c.max_upload_bytes, 2048);
        assert_eq!(c.machines[0].flow, Some(FlowMode::PingPong));
        assert!(c.machines[0].require_bed_clear);
        assert!(Config::without_unknown_keys("data_dir = 5\n").is_none());
    }

    #[test]
    fn http_limits_default_sanely_and_out_of_range_ones_are_each_named() {
        let c = parse("data_dir = \"d\"\n").expect("defaults");
        assert_eq!(c.config.http.session_lifetime_days, 30);
        assert!(!c.config.http.cookie_secure);
        let e = parse(
            "data_dir = \"d\"\n[http]\nheader_read_timeout_secs = 0\nmax_connections = 0\n\
             max_event_streams_per_token = 0\nsession_lifetime_days = 0\n\
             max_failed_sign_ins_per_minute = 0\nidle_timeout_secs = 0\n",
        )
        .expect_err("all zero");
        assert_eq!(e.len(), 6, "{e:?}");
        assert!(e[0].contains("http.header_read_timeout_secs = 0"), "{e:?}");
        let (_, unknown) =
            Config::without_unknown_keys("data_dir = \"d\"\n[http]\nmax_conns = 3\n")
                .expect("only an unknown key");
        assert!(
            unknown[0].starts_with("http: unknown key 'max_conns'"),
            "{unknown:?}"
        );
    }

    #[test]
    fn apc_thresholds_are_checked_with_everything_else_and_classes_come_from_machines() {
        let c = parse(
            r#"
data_dir = "d"
[apc."coupling-12mm".fdm_printer]
window = { min_units = 20, min_planned_hours = 40 }
availability_min = 0.80
oee_min = 0.60
mtbf_hours_min = 100
[apc."coupling-12mm".laser]
oee_min = 0.5
[[machine]]
id = "p"
profile = "prusa-mk3s"
port = "/dev/serial/by-id/p"
"#,
        )
        .expect("valid");
        assert_eq!(c.machines[0].class(), "fdm_printer");
        let fdm = &c.config.apc["coupling-12mm"]["fdm_printer"];
        assert_eq!((fdm.window.min_units, fdm.oee_min), (20, Some(0.6)));
        assert!(
            c.warnings.iter().any(|w| w.contains("class 'laser'")),
            "{:?}",
            c.warnings
        );
        let e = parse(
            r#"
data_dir = "d"
[apc."bad sku".fdm_printer]
oee_min = 60
[apc.ok.fdm_printer]
window = { min_units = 1 }
[apc.ok."Big Class"]
mttr_hours_max = -1
"#,
        )
        .expect_err("invalid");
        let all = e.join("\n");
        for needle in [
            "apc.\"bad sku\": sku",
            "oee_min = 60 must be a fraction",
            "apc.\"ok\".fdm_printer: no criterion is set",
            "a machine class is 1 to 32",
            "mttr_hours_max = -1 must be zero or more",
        ] {
            assert!(all.contains(needle), "missing {needle}: {all}");
        }
        let typo = toml::from_str::<Config>("data_dir = \"d\"\n[apc.x.y]\noee = 0.5\n");
        assert!(
            typo.is_err(),
            "an unknown criterion is an error, never ignored"
        );
    }

    #[test]
    fn the_shop_address_is_validated_like_a_customers_and_kept_normalised() {
        let c = parse(
            r#"
data_dir = "d"
[shop]
name = " Ada's Shop "
[shop.address]
name = "Ada's Workshop"
street1 = "200 Industrial Way"
city = "Oakland"
region = "CA"
postal_code = "94607"
country = "us"
"#,
        )
        .expect("valid");
        let shop = c.config.shop.expect("shop");
        assert_eq!(shop.name, "Ada's Shop");
        assert_eq!(shop.address.country, "US");
        assert_eq!(shop.address.street1, "200 INDUSTRIAL WAY", "USPS style");
        let e = parse(
            r#"
data_dir = "d"
[shop]
name = ""
[shop.address]
name = "Ada's Workshop"
street1 = "200 Industrial Way"
city = "Oakland"
region = "CA"
postal_code = "9460"
country = "US"
"#,
        )
        .expect_err("invalid");
        assert!(e.iter().any(|p| p.contains("shop.name must be")), "{e:#?}");
        assert!(
            e.iter()
                .any(|p| p.starts_with("shop.address.postal_code: ")),
            "{e:#?}"
        );
        assert_eq!(e.len(), 2, "{e:#?}");
        let e = parse("data_dir = \"d\"\n[shop]\nname = \"x\"\n").expect_err("no address");
        assert!(e.iter().any(|p| p.contains("address")), "{e:#?}");
    }

    #[test]
    fn webhook_receivers_shops_and_the_retry_schedule_are_checked_with_everything_else() {
        let c = parse(
            r#"
data_dir = "d"
[[webhooks]]
url = "http://10.0.0.5:8080/hooks"
secret = "0123456789abcdef"
topics = ["unit_made", "machine_state"]
[[webhooks]]
id = "erp"
url = "http://erp.lan/in"
secret = "0123456789abcdef"
topics = ["*"]
[webhook_retry]
base_ms = 500
[[shopify]]
shop = "example.myshopify.com"
secret = "shpss_x"
"#,
        )
        .expect("valid");
        let ids: Vec<String> = c.config.webhooks.iter().map(WebhookConfig::id).collect();
        assert!(
            ids[0].starts_with("config-") && ids[0].len() == 15,
            "{ids:?}"
        );
        assert_eq!(ids[1], "erp");
        assert_eq!(c.config.webhook_retry.base_ms, 500);
        assert_eq!(c.config.webhook_retry.disable_after, 10, "the rest default");
        let e = parse(
            r#"
data_dir = "d"
[[webhooks]]
id = "erp"
url = "https://erp.example.com/in"
secret = "short"
topics = ["order_teleported"]
[[webhooks]]
id = "erp"
url = "http://erp.lan/in"
secret = "0123456789abcdef"
topics = ["*"]
[webhook_retry]
base_ms = 0
timeout_ms = 5
[[shopify]]
shop = "bad shop"
secret = ""
"#,
        )
        .expect_err("invalid");
        for needle in [
            "webhooks #1 (erp): url 'https://erp.example.com/in' uses https",
            "webhooks #1 (erp): secret must be at least 16",
            "webhooks #1 (erp): topic 'order_teleported' is unknown",
            "webhooks #2 (erp): id 'erp' is used twice",
            "webhook_retry: base_ms = 0",
            "webhook_retry: timeout_ms = 5",
            "shopify #1 (bad shop): shop must be",
            "shopify #1 (bad shop): secret is empty",
        ] {
            assert!(e.iter().any(|p| p.contains(needle)), "{needle}: {e:#?}");
        }
        assert_eq!(e.len(), 8, "{e:#?}");
        let dir = std::env::temp_dir().join(format!("mfd-config-hooks-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("c.toml");
        std::fs::write(
            &path,
            "data_dir = \"d\"\n[[webhooks]]\nurl = \"http://h/\"\nsecret = \"0123456789abcdef\"\ntopics = [\"*\"]\nevents = 1\n",
        )
        .expect("write");
        let e = Config::load(&path).expect_err("unknown key");
        assert!(
            e.to_string().contains("webhooks #1: unknown key 'events'"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = parse("data_dir = \"d\"\nlisten_addr = \"x\"\n").expect_err("unknown key");
        assert!(e[0].contains("listen_addr"), "{e:?}");
    }

    #[test]
    fn an_mqtt_broker_and_its_machines_are_checked_with_everything_else() {
        let c = parse(
            r#"
data_dir = "d"
[mqtt]
broker = "mqtt://broker.lan:1884"
site = "shop"
[[mqtt.machine]]
id = "esp-mill"
profile = "grbl-3018"
adapter = "report"
[[mqtt.machine]]
id = "octo"
profile = "prusa-mk3s"
adapter = "octoprint"
"#,
        )
        .expect("valid");
        assert_eq!(c.machines.len(), 2);
        assert!(c.machines.iter().all(|m| m.config.read_only));
        assert_eq!(
            c.machines[0].config.port,
            PathBuf::from("mqtt:microfactory/shop/machines/esp-mill/report")
        );
        assert_eq!(c.machines[1].config.port, PathBuf::from("mqtt:octoPrint"));
        let mqtt = c.config.mqtt.as_ref().expect("mqtt");
        assert_eq!(mqtt.keep_alive_secs, 30);
        assert_eq!(
            mqtt.describe(),
            "mqtt: site 'shop' on mqtt://broker.lan:1884 (plain TCP)"
        );
        let e = parse(
            r#"
data_dir = "d"
[[machine]]
id = "m"
profile = "grbl-3018"
port = "/dev/serial/by-id/m"
[mqtt]
broker = "ssl://broker:8883"
site = "Big Shop"
password = "x"
keep_alive_secs = 1
[[mqtt.machine]]
id = "m"
profile = "prusa-mk3s"
adapter = "octoprint"
base = "octo/#"
[[mqtt.machine]]
id = "n"
profile = "nope"
adapter = "report"
base = "x"
"#,
        )
        .expect_err("invalid");
        let all = e.join("\n");
        for needle in [
            "'ssl://broker:8883' must start with mqtt:// (plain TCP) or mqtts:// (TLS)",
            "mqtt.site must be",
            "password is set without mqtt.username",
            "keep_alive_secs = 1",
            "id 'm' is used twice",
            "without wildcards",
            "base is for the octoprint and moonraker adapters",
            "unknown machine profile 'nope'",
        ] {
            assert!(all.contains(needle), "missing {needle}: {all}");
        }
    }

    #[test]
    fn moonraker_needs_its_instance_name_and_bambu_its_serial() {
        let c = parse(
            r#"
data_dir = "d"
[mqtt]
broker = "mqtt://broker.lan"
site = "shop"
[[mqtt.machine]]
id = "voron"
profile = "prusa-mk3s"
adapter = "moonraker"
base = "voron-1"
[[mqtt.machine]]
id = "p1s"
profile = "prusa-mk3s"
adapter = "bambu"
serial = "01S00A123456789"
"#,
        )
        .expect("valid");
        let ports: Vec<&Path> = c.machines.iter().map(|m| m.config.port.as_path()).collect();
        assert_eq!(
            ports,
            vec![
                Path::new("mqtt:voron-1"),
                Path::new("mqtt:device/01S00A123456789")
            ]
        );
        let e = parse(
            r#"
data_dir = "d"
[mqtt]
broker = "mqtt://broker.lan"
site = "shop"
[[mqtt.machine]]
id = "voron"
profile = "prusa-mk3s"
adapter = "moonraker"
[[mqtt.machine]]
id = "p1s"
profile = "prusa-mk3s"
adapter = "bambu"
serial = "01S/#"
[[mqtt.machine]]
id = "x1"
profile = "prusa-mk3s"
adapter = "bambu"
base = "device/x"
[[mqtt.machine]]
id = "octo"
profile = "prusa-mk3s"
adapter = "octoprint"
serial = "123"
"#,
        )
        .expect_err("invalid");
        let all = e.join("\n");
        for needle in [
            "(voron): the moonraker adapter needs base = its instance_name",
            "(p1s): the bambu adapter needs serial",
            "(x1): a bambu printer is found by its serial, not a base",
            "(x1): the bambu adapter needs serial",
            "(octo): serial is for the bambu adapter",
        ] {
            assert!(all.contains(needle), "missing {needle}: {all}");
        }
        assert!(
            !all.contains("already used"),
            "an unknown topic is not a clash: {all}"
        );
    }

    #[test]
    fn an_octoprint_base_inside_another_is_refused() {
        let e = parse(
            r#"
data_dir = "d"
[mqtt]
broker = "mqtt://b"
site = "shop"
[[mqtt.machine]]
id = "a"
profile = "prusa-mk3s"
adapter = "octoprint"
[[mqtt.machine]]
id = "b"
profile = "prusa-mk3s"
adapter = "octoprint"
base = "octoPrint/shelf2"
"#,
        )
        .expect_err("nested bases");
        assert!(
            e.iter()
                .any(|p| p.contains("'octoPrint/shelf2' lies inside machine a's base")),
            "{e:?}"
        );
    }

    #[test]
    fn tls_files_belong_to_an_mqtts_broker_and_are_read_when_checked() {
        let e = parse(
            r#"
data_dir = "d"
[mqtt]
broker = "mqtt://b"
site = "s"
username = "u"
ca_file = "/nonexistent/mfd/ca.pem"
"#,
        )
        .expect_err("TLS files on plain TCP");
        let all = e.join("\n");
        for needle in [
            "mqtt.ca_file = '/nonexistent/mfd/ca.pem' is for TLS, but mqtt.broker 'mqtt://b' is plain TCP: use mqtts://",
            "mqtt.ca_file '/nonexistent/mfd/ca.pem': cannot read it",
        ] {
            assert!(all.contains(needle), "missing {needle}: {all}");
        }
        let e = parse(
            r#"
data_dir = "d"
[mqtt]
broker = "mqtts://b"
site = "s"
client_key_file = "/nonexistent/mfd/client.key"
"#,
        )
        .expect_err("half an identity");
        assert!(e.iter().any(|p| p.contains("go together")), "{e:?}");
        // With the system's roots, and credentials that TLS protects.
        let c = parse(
            "data_dir = \"d\"\n[mqtt]\nbroker = \"mqtts://b\"\nsite = \"s\"\nusername = \"u\"\n",
        )
        .expect("mqtts with the system's roots");
        assert_eq!(
            c.config.mqtt.as_ref().map(MqttConfig::describe).as_deref(),
            Some("mqtt: site 's' on mqtts://b (TLS, trusting the system's roots)")
        );
        assert!(
            !c.warnings.iter().any(|w| w.contains("in clear")),
            "{:?}",
            c.warnings
        );
        // The same credentials over plain TCP are warned about.
        let plain = parse(
            "data_dir = \"d\"\n[mqtt]\nbroker = \"mqtt://b\"\nsite = \"s\"\nusername = \"u\"\n",
        )
        .expect("plain mqtt with credentials");
        assert!(
            plain.warnings.iter().any(|w| w.contains("in clear")),
            "{:?}",
            plain.warnings
        );
    }

    #[test]
    fn relative_tls_files_are_found_beside_the_configuration() {
        let dir = std::env::temp_dir().join(format!("mfd-config-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("c.toml");
        std::fs::write(
            &path,
            "data_dir = \"d\"\n[mqtt]\nbroker = \"mqtts://b\"\nsite = \"s\"\nca_file = \"certs/ca.pem\"\n",
        )
        .expect("write");
        let e = Config::load(&path).expect_err("no such file");
        let want = format!(
            "mqtt.ca_file '{}': cannot read it",
            dir.join("certs/ca.pem").display()
        );
        assert!(e.to_string().contains(&want), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn broker_urls_name_a_host_and_a_port() {
        let url = |host: &str, port, tls| {
            Ok(BrokerUrl {
                host: host.into(),
                port,
                tls,
            })
        };
        assert_eq!(parse_broker("mqtt://h"), url("h", 1883, false));
        assert_eq!(
            parse_broker("mqtt://10.0.0.2:1884/"),
            url("10.0.0.2", 1884, false)
        );
        assert_eq!(parse_broker("mqtt://[::1]:1885"), url("::1", 1885, false));
        assert_eq!(parse_broker("mqtts://h"), url("h", 8883, true));
        assert_eq!(
            parse_broker("mqtts://broker.lan:8884"),
            url("broker.lan", 8884, true)
        );
        for bad in [
            "tcp://h",
            "mqtt://",
            "mqtts://",
            "mqtts://h:0",
            "mqtt://h:0",
            "mqtt://h:x",
            "mqtt://u@h",
            "mqtt://h:1:2",
        ] {
            assert!(parse_broker(bad).is_err(), "{bad}");
        }
    }
}
