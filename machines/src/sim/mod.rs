//! Firmware simulators behind real pseudo-terminals.
//!
//! [`spawn`] opens a PTY pair and runs a simulated Marlin printer or GRBL
//! mill on its master end; clients open [`SimHandle::path`] (or the stable
//! [`SimConfig::link`] symlink) exactly as they would open `/dev/ttyACM0`.
//!
//! # Model
//! * **Link.** Each direction carries at most `baud / 10` bytes per second
//!   (8N1) and delays delivery by `latency_ms`, timed to the microsecond
//!   (a `timerfd`, not tokio's millisecond timer wheel). Host bytes are
//!   read as soon as they are written and start down the wire then, up to
//!   4 KiB ahead of it; beyond that the kernel's PTY buffer pushes back as
//!   the host's serial driver buffer would. Arriving bytes go
//!   into the firmware's RX ring buffer (`rx_buffer` bytes); a byte that
//!   arrives while it is full is lost, as on a UART without flow control
//!   (counted in [`SimStats::rx_overflow_bytes`]). A host that keeps its
//!   bytes in flight within the buffer never loses any.
//! * **Faults** apply to host→firmware bytes as they enter the wire:
//!   `drop_rate` loses a byte, `corrupt_rate` flips one bit of a byte. Line
//!   terminators and GRBL realtime bytes are never dropped, corrupted or
//!   produced by corruption, so faults damage a line but never merge or
//!   split lines, and never turn text into a realtime command.
//!   `max_faults_per_line` caps the faults in one line. Faults are
//!   drawn from a SplitMix64 generator seeded by `seed`: the same seed and
//!   the same byte stream give the same faults.
//! * **Time.** Motion, dwells, homing and heating run `time_scale` times
//!   faster than real; the link is never scaled.
//! * **Fault triggers** (`*_after_line N`) count lines the firmware
//!   *executed* since [`spawn`], across resets and reconnects (the counter
//!   in [`SimStats::lines_executed`], the lines in the `log`), and each
//!   fires once.
//! * **Log.** Every executed line, normalised by
//!   [`microfactory_protocol::framing::clean_line`] (for Marlin without
//!   `N` and `*checksum`), one per line, flushed as written. It includes
//!   handshake and poll commands (`M110`, `M115`, `M105`, `$I`, ...);
//!   filter them in tests. Realtime bytes, rejected lines (resend requests,
//!   GRBL `error:`) and empty lines are not logged.

mod clock;
mod grbl;
mod marlin;
mod planner;
mod rng;
mod rx;
mod session;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Deserialize;
use thiserror::Error;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub(crate) use rx::RxBuffer;

/// Which firmware to simulate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FirmwareKind {
    /// Marlin 2.1 (3D printer).
    #[default]
    Marlin,
    /// GRBL 1.1h (CNC mill).
    Grbl,
}

impl FromStr for FirmwareKind {
    type Err = SimError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "marlin" => Ok(Self::Marlin),
            "grbl" => Ok(Self::Grbl),
            _ => Err(SimError::Config(format!(
                "unknown firmware '{s}' (expected marlin or grbl)"
            ))),
        }
    }
}

/// Everything that shapes a simulated machine. `Default` is a Marlin
/// printer on a 115200 baud native-USB link with no faults.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimConfig {
    /// Name used in tracing spans.
    pub name: String,
    /// Firmware to simulate.
    pub firmware: FirmwareKind,
    /// Link rate; the link carries `baud / 10` bytes per second each way.
    pub baud: u32,
    /// One-way latency added to every byte in each direction, in ms
    /// (1 for native USB, 16 for an FTDI adapter's default latency timer).
    pub latency_ms: f64,
    /// Machine time runs this many times faster than real time.
    pub time_scale: f64,
    /// Serial receive buffer of the firmware, in bytes.
    pub rx_buffer: usize,
    /// Probability that a host→firmware byte has one bit flipped.
    pub corrupt_rate: f64,
    /// Probability that a host→firmware byte is lost.
    pub drop_rate: f64,
    /// At most this many faults (drops and flips together) in one host
    /// line; `None` draws every byte on its own. Marlin's XOR checksum
    /// cannot see two flips of the same bit in one line (nor a lost space
    /// and a flipped bit 5), so with independent faults at 1 % per byte
    /// about one line in 250 arrives damaged and passes the check: no host
    /// can deliver such a link exactly. `Some(1)` keeps every fault within
    /// what the line protocol can detect.
    pub max_faults_per_line: Option<u32>,
    /// Hang up the PTY after executing this line (then reconnect).
    pub disconnect_after_line: Option<u64>,
    /// Reboot the firmware after executing this line.
    pub reset_after_line: Option<u64>,
    /// Raise a fatal alarm after executing this line (Marlin: thermal
    /// runaway and kill; GRBL: `ALARM:1` hard limit).
    pub alarm_after_line: Option<u64>,
    /// Seed of the fault generator.
    pub seed: u64,
    /// Where to log executed lines.
    pub log: Option<PathBuf>,
    /// Marlin: reply `ok N<n> P<planner> B<slots>` and report the cap.
    pub advanced_ok: bool,
    /// Marlin: send `ok` after `Resend:` (older Marlin 2.0.x does).
    pub ok_after_resend: bool,
    /// Marlin: emit `//action:` lines (`paused`/`resumed` around `M0`).
    pub action_lines: bool,
    /// Marlin built with `NO_TIMEOUTS`: print `wait` about once a second
    /// (of machine time, at most every 20 ms real) while the command queue
    /// and the receive buffer are empty.
    pub send_wait: bool,
    /// Marlin: once this many lines have executed, read the next numbered
    /// line and drop it without any answer (once): a line lost inside the
    /// firmware, which only a `wait` or the host's timeout can reveal.
    pub silent_drop_after_line: Option<u64>,
    /// Marlin built with `GCODE_CASE_INSENSITIVE` (off by default): its
    /// parser also skips a lower-case `n<digits>`, so a line whose `N`
    /// was flipped into `n` runs its command without the number check.
    /// Default Marlin reads that `n` as an unknown command and runs
    /// nothing.
    pub case_insensitive: bool,
    /// Maintain a symlink here that points at the current PTY, like the
    /// links in `/dev/serial/by-id`.
    pub link: Option<PathBuf>,
    /// How long the machine stays away after a hang-up, in ms.
    pub reconnect_delay_ms: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            name: "sim".into(),
            firmware: FirmwareKind::Marlin,
            baud: 115_200,
            latency_ms: 1.0,
            time_scale: 1.0,
            rx_buffer: 128,
            corrupt_rate: 0.0,
            drop_rate: 0.0,
            max_faults_per_line: None,
            disconnect_after_line: None,
            reset_after_line: None,
            alarm_after_line: None,
            seed: 0,
            log: None,
            advanced_ok: true,
            ok_after_resend: false,
            action_lines: false,
            send_wait: false,
            silent_drop_after_line: None,
            case_insensitive: false,
            link: None,
            reconnect_delay_ms: 200,
        }
    }
}

impl SimConfig {
    /// A default configuration for `firmware`.
    pub fn new(firmware: FirmwareKind) -> Self {
        Self {
            firmware,
            ..Self::default()
        }
    }

    fn validate(&self) -> Result<(), SimError> {
        let bad = |m: &str| Err(SimError::Config(m.to_string()));
        if self.baud < 300 {
            return bad("baud must be at least 300");
        }
        if !(self.time_scale.is_finite() && self.time_scale > 0.0) {
            return bad("time_scale must be a positive number");
        }
        if !(self.latency_ms.is_finite() && (0.0..=10_000.0).contains(&self.latency_ms)) {
            return bad("latency_ms must be between 0 and 10000");
        }
        for (n, p) in [
            ("corrupt_rate", self.corrupt_rate),
            ("drop_rate", self.drop_rate),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return Err(SimError::Config(format!("{n} must be between 0 and 1")));
            }
        }
        if self.rx_buffer < 16 {
            return bad("rx_buffer must be at least 16 bytes");
        }
        Ok(())
    }
}

/// Why a simulator could not start.
#[derive(Debug, Error)]
pub enum SimError {
    /// The configuration is invalid.
    #[error("invalid simulator configuration: {0}")]
    Config(String),
    /// The pseudo-terminal could not be created.
    #[error("cannot create a pseudo-terminal: {0}")]
    Pty(#[from] tokio_serial::Error),
    /// File system work (log, symlink) failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

/// Counters a test or the daemon can watch.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub lines_executed: AtomicU64,
    pub checksum_errors: AtomicU64,
    pub line_number_errors: AtomicU64,
    pub resends_requested: AtomicU64,
    pub bytes_received: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub bytes_dropped: AtomicU64,
    pub bytes_corrupted: AtomicU64,
    pub rx_overflow_bytes: AtomicU64,
    pub boots: AtomicU64,
    pub hangups: AtomicU64,
    /// When the first and the last host byte left the wire, by the link
    /// model's own clock (ns since [`epoch`]; 0 before any byte).
    pub wire_first_ns: AtomicU64,
    pub wire_last_ns: AtomicU64,
}

impl Stats {
    pub(crate) fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Notes that a host byte finishes crossing the wire at `t`.
    pub(crate) fn wire_byte(&self, t: Instant) {
        let ns = u64::try_from(t.into_std().saturating_duration_since(epoch()).as_nanos())
            .unwrap_or(u64::MAX)
            .max(1);
        let _ = self
            .wire_first_ns
            .compare_exchange(0, ns, Ordering::Relaxed, Ordering::Relaxed);
        self.wire_last_ns.fetch_max(ns, Ordering::Relaxed);
    }
}

/// The origin of the link model's timestamps in [`Stats`].
fn epoch() -> std::time::Instant {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(std::time::Instant::now)
}

/// A snapshot of a simulator's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SimStats {
    /// Lines executed since spawn (what the log holds).
    pub lines_executed: u64,
    /// Marlin: lines rejected for a bad or missing checksum.
    pub checksum_errors: u64,
    /// Marlin: lines rejected for an out-of-sequence number.
    pub line_number_errors: u64,
    /// Marlin: `Resend:` requests sent.
    pub resends_requested: u64,
    /// Bytes read from the host (before faults).
    pub bytes_received: u64,
    /// Bytes written to the host.
    pub bytes_sent: u64,
    /// Host bytes lost by the drop fault.
    pub bytes_dropped: u64,
    /// Host bytes damaged by the corrupt fault.
    pub bytes_corrupted: u64,
    /// Host bytes lost because the RX buffer was full.
    pub rx_overflow_bytes: u64,
    /// Firmware boots (start, resets, reconnects).
    pub boots: u64,
    /// Hang-ups (PTY closed and re-created).
    pub hangups: u64,
    /// From the first host byte leaving the wire to the last, by the link
    /// model's own clock: the schedule it computed, whatever the wall
    /// clock did meanwhile. Over a burst the host wrote at once it is
    /// (bytes − 1) byte times unless the model lost pace.
    pub host_wire_span: std::time::Duration,
}

/// Requests from a [`SimHandle`] to the running simulator.
#[derive(Debug)]
pub(crate) enum Control {
    Hangup,
    Shutdown,
}

/// A running simulator. Dropping it stops the simulator.
#[derive(Debug)]
pub struct SimHandle {
    path: watch::Receiver<PathBuf>,
    link: Option<PathBuf>,
    stats: Arc<Stats>,
    control: mpsc::UnboundedSender<Control>,
    task: Option<JoinHandle<()>>,
}

impl SimHandle {
    /// The PTY path a client opens now. It changes after every hang-up;
    /// see [`SimHandle::link`] for a stable one.
    pub fn path(&self) -> PathBuf {
        self.path.borrow().clone()
    }

    /// The stable symlink, when [`SimConfig::link`] was set.
    pub fn link(&self) -> Option<&Path> {
        self.link.as_deref()
    }

    /// A receiver that sees every new PTY path.
    pub fn paths(&self) -> watch::Receiver<PathBuf> {
        self.path.clone()
    }

    /// The counters so far.
    pub fn stats(&self) -> SimStats {
        let s = &self.stats;
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        SimStats {
            lines_executed: g(&s.lines_executed),
            checksum_errors: g(&s.checksum_errors),
            line_number_errors: g(&s.line_number_errors),
            resends_requested: g(&s.resends_requested),
            bytes_received: g(&s.bytes_received),
            bytes_sent: g(&s.bytes_sent),
            bytes_dropped: g(&s.bytes_dropped),
            bytes_corrupted: g(&s.bytes_corrupted),
            rx_overflow_bytes: g(&s.rx_overflow_bytes),
            boots: g(&s.boots),
            hangups: g(&s.hangups),
            host_wire_span: std::time::Duration::from_nanos(
                g(&s.wire_last_ns).saturating_sub(g(&s.wire_first_ns)),
            ),
        }
    }

    /// Hangs up now, as if the cable were pulled; the machine comes back
    /// on a new PTY after [`SimConfig::reconnect_delay_ms`] and reboots.
    pub fn disconnect(&self) {
        let _ = self.control.send(Control::Hangup);
    }

    /// Stops the simulator, closes the PTY and removes the symlink.
    pub async fn shutdown(mut self) {
        let _ = self.control.send(Control::Shutdown);
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            if let Some(l) = &self.link {
                let _ = std::fs::remove_file(l);
            }
        }
    }
}

/// Starts a simulator on a new PTY. Must be called inside a tokio runtime.
/// The PTY exists when this returns.
pub async fn spawn(config: SimConfig) -> Result<SimHandle, SimError> {
    config.validate()?;
    let stats = Arc::new(Stats::default());
    let pty = session::Pty::open(config.link.as_deref())?;
    let (path_tx, path_rx) = watch::channel(pty.path.clone());
    let (control_tx, control_rx) = mpsc::unbounded_channel();
    let log = match &config.log {
        Some(p) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|source| SimError::Io {
                    what: format!("cannot open log {}", p.display()),
                    source,
                })?,
        ),
        None => None,
    };
    let link = config.link.clone();
    let task = tokio::spawn(session::run(
        config,
        pty,
        stats.clone(),
        path_tx,
        control_rx,
        log,
    ));
    Ok(SimHandle {
        path: path_rx,
        link,
        stats,
        control: control_tx,
        task: Some(task),
    })
}

/// What a firmware model sees of the world during one step.
pub(crate) struct Io<'a> {
    pub now: Instant,
    pub out: &'a mut Vec<u8>,
    /// Lines executed during this call, normalised for the log.
    pub executed: &'a mut Vec<String>,
    pub stats: &'a Stats,
}

impl Io<'_> {
    pub(crate) fn line(&mut self, s: &str) {
        self.out.extend_from_slice(s.as_bytes());
        self.out.push(b'\n');
    }
    pub(crate) fn line_crlf(&mut self, s: &str) {
        self.out.extend_from_slice(s.as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }
}

/// A simulated firmware: a state machine fed bytes and time.
pub(crate) trait Firmware: Send {
    /// Power-on or reset: forget volatile state and print the banner.
    fn boot(&mut self, io: &mut Io<'_>);
    /// Bytes that faults must never touch or produce.
    fn protected(&self, b: u8) -> bool;
    /// A byte arrives at the UART. Returns true if the firmware took it
    /// outside the RX buffer (GRBL realtime commands).
    fn on_arrival(&mut self, b: u8, rx: &mut RxBuffer, io: &mut Io<'_>) -> bool;
    /// Does one piece of work (executes at most one line); false when
    /// there is nothing to do until more bytes or time arrive.
    fn step(&mut self, rx: &mut RxBuffer, io: &mut Io<'_>) -> bool;
    /// When the model next needs a [`Firmware::step`] without new bytes.
    fn next_wake(&self, now: Instant) -> Option<Instant>;
    /// The injected fatal alarm.
    fn fault_alarm(&mut self, rx: &mut RxBuffer, io: &mut Io<'_>);
}

pub(crate) fn make_firmware(config: &SimConfig, now: Instant) -> Box<dyn Firmware> {
    match config.firmware {
        FirmwareKind::Marlin => Box::new(marlin::Marlin::new(config, now)),
        FirmwareKind::Grbl => Box::new(grbl::Grbl::new(config, now)),
    }
}

/// Real duration of `machine_secs` of machine time.
pub(crate) fn scaled(machine_secs: f64, scale: f64) -> std::time::Duration {
    std::time::Duration::from_secs_f64((machine_secs / scale).clamp(0.0, 1.0e6))
}
