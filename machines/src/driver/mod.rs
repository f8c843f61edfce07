//! Drivers: one task per machine that owns its serial port and runs the
//! firmware's host state machine from `microfactory-protocol` over it.
//!
//! The task is the only code that writes to the port. Everything else talks
//! to it through a [`DriverHandle`]: requests go in over a channel (with a
//! reply channel where an answer is expected), state comes out through a
//! `watch` of [`MachineStatus`] and a broadcast of [`DriverEvent`]s.

mod grbl;
pub mod job;
mod marlin;
mod session;

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use microfactory_protocol::marlin::MarlinConfig;
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;

pub use job::{JobFileError, JobLine, JobSource};

/// Which host protocol a machine speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Firmware {
    /// Marlin 2 (FDM printers).
    Marlin,
    /// GRBL 1.1 (CNC mills); grblHAL speaks the same host protocol.
    Grbl,
}

impl FromStr for Firmware {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "marlin" => Ok(Self::Marlin),
            "grbl" | "grblhal" => Ok(Self::Grbl),
            _ => Err(format!("unknown firmware '{s}' (expected marlin or grbl)")),
        }
    }
}

/// How lines are metered onto the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FlowMode {
    /// Buffered where the firmware allows it (Marlin buffer tracking, GRBL
    /// character counting); Marlin falls back to one line at a time while
    /// the link needs resends, so that no flush cuts a queued line.
    #[default]
    Auto,
    /// One line in flight at a time, as OctoPrint does.
    PingPong,
    /// Keep the firmware's receive buffer full, even on a noisy link.
    Buffered,
}

impl FromStr for FlowMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "ping-pong" => Ok(Self::PingPong),
            "buffered" => Ok(Self::Buffered),
            _ => Err(format!(
                "unknown mode '{s}' (expected auto, ping-pong or buffered)"
            )),
        }
    }
}

/// G-code the driver sends around a job, from the machine profile.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Scripts {
    /// After pausing a print (e.g. lift the nozzle).
    pub park: Vec<String>,
    /// Before resuming a paused print.
    pub unpark: Vec<String>,
    /// After a cancelled job: must leave heaters and spindle off.
    pub cancel: Vec<String>,
}

/// Everything a driver needs to reach one machine.
#[derive(Debug, Clone)]
pub struct DriverConfig {
    /// Machine id, used in tracing spans.
    pub id: String,
    /// Serial device path (prefer `/dev/serial/by-id/...`).
    pub port: PathBuf,
    /// Link rate.
    pub baud: u32,
    /// Protocol spoken.
    pub firmware: Firmware,
    /// Flow control.
    pub flow: FlowMode,
    /// Firmware receive buffer in bytes (learned from the firmware when it
    /// tells).
    pub rx_buffer: usize,
    /// Job scripts.
    pub scripts: Scripts,
    /// Marlin: whether the firmware prints `ok` after `Resend:` (older
    /// 2.0.x builds); `None` learns it.
    pub ok_after_resend: Option<bool>,
    /// First and longest wait between reconnection attempts.
    pub reconnect_min: Duration,
    /// See `reconnect_min`.
    pub reconnect_max: Duration,
    /// How long the handshake may take before the port is dropped.
    pub handshake_timeout: Duration,
    /// Marlin: silence with lines in flight before they are sent again and
    /// the firmware is probed. Retransmitting is safe (Marlin drops a copy
    /// of a line it has), so this only trades a lost line's delay against
    /// needless probes. Long commands (`G28`, `M109`, ...) are kept alive
    /// by Marlin's `busy:` lines (every 2 s); for a firmware built without
    /// them it must exceed the longest command.
    pub response_timeout: Duration,
    /// Marlin: consecutive resend requests of one line before the link is
    /// declared unusable.
    pub max_resends_per_line: u32,
}

impl DriverConfig {
    /// Defaults for `firmware` on `port`.
    pub fn new(
        id: impl Into<String>,
        port: impl Into<PathBuf>,
        baud: u32,
        firmware: Firmware,
    ) -> Self {
        let scripts = match firmware {
            Firmware::Marlin => Scripts {
                park: vec!["G91".into(), "G1 Z5 F600".into(), "G90".into()],
                unpark: vec!["G91".into(), "G1 Z-5 F600".into(), "G90".into()],
                cancel: vec![
                    "M104 S0".into(),
                    "M140 S0".into(),
                    "M107".into(),
                    "M84".into(),
                ],
            },
            Firmware::Grbl => Scripts {
                park: vec![],
                unpark: vec![],
                cancel: vec!["M5".into(), "M9".into()],
            },
        };
        Self {
            id: id.into(),
            port: port.into(),
            baud,
            firmware,
            flow: FlowMode::Auto,
            rx_buffer: 128,
            scripts,
            ok_after_resend: None,
            reconnect_min: Duration::from_millis(200),
            reconnect_max: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            response_timeout: MarlinConfig::default().response_timeout,
            max_resends_per_line: MarlinConfig::default().max_resends_per_line,
        }
    }
}

/// A job handed to a driver.
#[derive(Debug, Clone)]
pub struct JobSpec {
    /// Job id, for events and tracing.
    pub id: String,
    /// The G-code file.
    pub path: PathBuf,
    /// First source line to send (1 = from the start).
    pub start_line: u64,
    /// Commands sent before the file when restarting part-way (the
    /// profile's resume preamble: heat, home X/Y, set positions).
    pub preamble: Vec<String>,
    /// Commands in the file (for progress); counted when absent.
    pub total_lines: Option<u64>,
    /// Estimated duration in seconds, for the ETA.
    pub estimated_seconds: Option<f64>,
    /// GRBL: expand canned cycles and pause at tool changes.
    pub expand_canned_cycles: bool,
}

/// Why a driver refused or failed a request.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum DriverError {
    /// The machine is not connected.
    #[error("machine is offline")]
    Offline,
    /// A job is already running.
    #[error("machine is busy with job {0}")]
    Busy(String),
    /// There is no job to act on.
    #[error("no job is running")]
    NoJob,
    /// The firmware answered the console command with an error.
    #[error("firmware error: {0}")]
    Firmware(String),
    /// The command is not valid for this machine.
    #[error("{0}")]
    Invalid(String),
    /// The driver task has stopped.
    #[error("driver has stopped")]
    Stopped,
    /// No answer in time.
    #[error("no answer from the machine within {0:?}")]
    Timeout(Duration),
    /// The firmware halted and reads nothing until it is recovered: a
    /// command sent now would only wait for its timeout.
    #[error("the firmware halted ({0}); recover it first (reconnect or firmware restart)")]
    Halted(String),
    /// A newer console command or recovery action took the console: this
    /// command's answer is no longer awaited (it may still run).
    #[error("superseded by a newer command; its answer is no longer awaited")]
    Superseded,
}

/// Ways to bring a machine back without restarting the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Recovery {
    /// Close the port and open it again at once: a fresh handshake, and on
    /// boards that reset when DTR rises (most Marlin and Arduino GRBL
    /// boards) a reboot of the firmware.
    Reconnect,
    /// Marlin: `M999` written straight to the port (it clears a *stopped*
    /// firmware, which otherwise reads on but runs nothing), then a
    /// reconnect (a *killed* firmware reads nothing; only the reset that
    /// reopening the port brings revives it).
    FirmwareRestart,
    /// GRBL: `$X`, which leaves the alarm state (the position may be lost).
    Unlock,
    /// GRBL: soft reset (0x18): empties its buffers, stops the spindle.
    SoftReset,
}

impl Recovery {
    /// Whether the action exists for `firmware`.
    pub fn fits(self, firmware: Firmware) -> bool {
        match self {
            Self::Reconnect => true,
            Self::FirmwareRestart => firmware == Firmware::Marlin,
            Self::Unlock | Self::SoftReset => firmware == Firmware::Grbl,
        }
    }

    /// Its name in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reconnect => "reconnect",
            Self::FirmwareRestart => "firmware_restart",
            Self::Unlock => "unlock",
            Self::SoftReset => "soft_reset",
        }
    }
}

/// Connection state as operators see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Connection {
    /// Not connected; retrying with backoff.
    #[default]
    Offline,
    /// Port open, handshake in progress.
    Connecting,
    /// Handshake done.
    Online,
    /// The firmware halted (kill, alarm); needs the operator.
    Faulted,
}

/// A heater's reading.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heater {
    /// `T0`, `B`, ...
    pub name: String,
    /// Current temperature, °C.
    pub actual: f64,
    /// Target, °C.
    pub target: f64,
}

/// Progress of the running job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Progress {
    /// Job id.
    pub job_id: String,
    /// Commands acknowledged by the firmware.
    pub lines_done: u64,
    /// Commands in the job.
    pub lines_total: u64,
    /// Source line of the last acknowledged command.
    pub last_acked_line: u64,
    /// Bytes written to the port for the job (including resends).
    pub bytes_sent: u64,
    /// 0..=100.
    pub percent: f64,
    /// Seconds since the job started streaming.
    pub elapsed_seconds: f64,
    /// Of those, the seconds spent producing (paused spans left out): the
    /// time the ETA's observed pace is measured over.
    #[serde(default)]
    pub producing_seconds: f64,
    /// Estimated seconds left: the estimate blended with the pace over
    /// `producing_seconds` (`microfactory_protocol::eta::remaining`).
    pub eta_seconds: Option<f64>,
    /// Lines sent again after a firmware resend request.
    pub resends: u64,
    /// Paused by the operator or at a tool change.
    pub paused: bool,
}

/// The machine as last seen; published through a `watch`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct MachineStatus {
    /// Connection state.
    pub connection: Connection,
    /// Firmware name and version, after the handshake.
    pub firmware: Option<String>,
    /// Capabilities the firmware reported (`Cap:` lines, GRBL options).
    pub capabilities: Vec<String>,
    /// Printer heaters.
    pub heaters: Vec<Heater>,
    /// GRBL state (`Idle`, `Run`, `Hold:0`, `Alarm`, ...).
    pub state: Option<String>,
    /// Work position, mm.
    pub position: Option<[f64; 3]>,
    /// The running job.
    pub job: Option<Progress>,
    /// Last error or alarm text.
    pub last_error: Option<String>,
    /// No heater or status report for a while (`STALE_AFTER` in the
    /// session): the readings above are the last ones heard, not live.
    #[serde(default)]
    pub stale: bool,
    /// The last job that ended: a subscriber that lagged behind the event
    /// broadcast can still learn how its job ended.
    #[serde(default)]
    pub last_ended: Option<EndedJob>,
}

/// A job's id with how it ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndedJob {
    /// Job id.
    pub job_id: String,
    /// How it ended.
    pub outcome: JobOutcome,
}

/// How a job ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum JobOutcome {
    /// Every line acknowledged and the machine finished moving.
    Completed,
    /// The firmware refused or stopped the job.
    Failed { reason: String, line: Option<u64> },
    /// The link went away; `last_acked_line` is safe to restart after.
    Interrupted {
        reason: String,
        last_acked_line: u64,
    },
    /// The operator cancelled it.
    Cancelled { last_acked_line: u64 },
}

/// Things worth telling the rest of the daemon about.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum DriverEvent {
    /// Handshake complete.
    Connected { firmware: String },
    /// The port closed or went silent.
    Disconnected { reason: String },
    /// Throttled progress of the running job.
    Progress(Progress),
    /// The job paused itself for the operator (tool change, `M0`).
    PausedForOperator {
        job_id: String,
        line: u64,
        reason: String,
        /// The tool to load, when the program names it.
        tool: Option<u32>,
    },
    /// A job ended.
    JobEnded {
        job_id: String,
        outcome: JobOutcome,
        stats: StreamStats,
    },
    /// A firmware message worth showing (warnings, `[MSG:]`).
    Message { text: String },
}

/// Link counters for one job, for `stream --json` and benchmarks.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct StreamStats {
    /// Job commands acknowledged.
    pub lines: u64,
    /// Payload bytes of job commands as sent once (without resends).
    pub payload_bytes: u64,
    /// All bytes written for the job, including numbering and resends.
    pub wire_bytes: u64,
    /// Lines re-sent after resend requests.
    pub resends: u64,
    /// Seconds from the first byte to completion (for GRBL, until the
    /// machine is idle again).
    pub seconds: f64,
    /// Seconds from the first byte to the last command's acknowledgement:
    /// the time the link was in use, which link efficiency is measured
    /// over (the motion still planned at that point is the machine's time,
    /// not the link's).
    pub streaming_seconds: f64,
}

/// How many lines of traffic [`SerialLog`] keeps.
pub const SERIAL_LOG_LINES: usize = 200;

/// One line that crossed the serial port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialLine {
    /// Wall-clock time, ms since the Unix epoch.
    pub at_ms: u64,
    /// Written by the host (`true`) or read from the firmware.
    pub sent: bool,
    /// The line, without its line ending.
    pub text: String,
}

/// The recent traffic on a machine's port, newest last: what an operator
/// reads next to the console to see what the firmware is saying.
#[derive(Debug, Clone, Default)]
pub struct SerialLog(std::sync::Arc<std::sync::Mutex<std::collections::VecDeque<SerialLine>>>);

impl SerialLog {
    pub(crate) fn push(&self, sent: bool, text: &str) {
        let at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut q = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if q.len() >= SERIAL_LOG_LINES {
            q.pop_front();
        }
        q.push_back(SerialLine {
            at_ms,
            sent,
            text: text.trim_end().to_string(),
        });
    }

    /// A copy of the lines kept, oldest first.
    pub fn snapshot(&self) -> Vec<SerialLine> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}

/// Requests to a driver task.
#[derive(Debug)]
pub(crate) enum Request {
    Start(JobSpec, oneshot::Sender<Result<(), DriverError>>),
    Pause(oneshot::Sender<Result<(), DriverError>>),
    Resume(oneshot::Sender<Result<(), DriverError>>),
    Cancel(oneshot::Sender<Result<(), DriverError>>),
    EmergencyStop(oneshot::Sender<Result<(), DriverError>>),
    Console(String, oneshot::Sender<Result<Vec<String>, DriverError>>),
    Recover(Recovery, oneshot::Sender<Result<Vec<String>, DriverError>>),
    Shutdown,
}

/// The handle the rest of the daemon holds for one machine.
#[derive(Debug)]
pub struct DriverHandle {
    requests: mpsc::Sender<Request>,
    status: watch::Receiver<MachineStatus>,
    events: broadcast::Sender<DriverEvent>,
    serial: SerialLog,
    task: Option<JoinHandle<()>>,
}

impl DriverHandle {
    /// Starts the driver task; it connects (and reconnects) on its own.
    pub fn spawn(config: DriverConfig) -> Self {
        let (req_tx, req_rx) = mpsc::channel(32);
        let (status_tx, status_rx) = watch::channel(MachineStatus::default());
        // Allocated up front (~140 B a slot): 1024 slots cost ~140 KiB per
        // machine, most of an idle fleet's memory. Progress comes a few
        // times a second, and a subscriber that lags still learns a job's
        // end from the status (`last_ended`), so 256 is plenty.
        let (events_tx, _) = broadcast::channel(256);
        let serial = SerialLog::default();
        let task = tokio::spawn(session::run(
            config,
            req_rx,
            status_tx,
            events_tx.clone(),
            serial.clone(),
        ));
        Self {
            requests: req_tx,
            status: status_rx,
            events: events_tx,
            serial,
            task: Some(task),
        }
    }

    /// The latest status, and a way to wait for changes.
    pub fn status(&self) -> watch::Receiver<MachineStatus> {
        self.status.clone()
    }

    /// The recent traffic on the port.
    pub fn serial_log(&self) -> Vec<SerialLine> {
        self.serial.snapshot()
    }

    /// A new subscription to events (missed events are reported as lag).
    pub fn events(&self) -> broadcast::Receiver<DriverEvent> {
        self.events.subscribe()
    }

    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, DriverError>>) -> Request,
    ) -> Result<T, DriverError> {
        let (tx, rx) = oneshot::channel();
        self.requests
            .send(make(tx))
            .await
            .map_err(|_| DriverError::Stopped)?;
        rx.await.map_err(|_| DriverError::Stopped)?
    }

    /// Starts streaming a job; returns once the driver accepted it.
    pub async fn start(&self, job: JobSpec) -> Result<(), DriverError> {
        self.call(|tx| Request::Start(job, tx)).await
    }

    /// Pauses the running job (GRBL feed hold; Marlin stops feeding and parks).
    pub async fn pause(&self) -> Result<(), DriverError> {
        self.call(Request::Pause).await
    }

    /// Resumes a paused job.
    pub async fn resume(&self) -> Result<(), DriverError> {
        self.call(Request::Resume).await
    }

    /// Cancels the running job and runs the cancel script.
    pub async fn cancel(&self) -> Result<(), DriverError> {
        self.call(Request::Cancel).await
    }

    /// Emergency stop: `M112` or GRBL soft reset, ahead of anything queued.
    pub async fn emergency_stop(&self) -> Result<(), DriverError> {
        self.call(Request::EmergencyStop).await
    }

    /// Sends one console command and returns the firmware's answer lines.
    pub async fn console(&self, command: &str) -> Result<Vec<String>, DriverError> {
        self.call(|tx| Request::Console(command.to_string(), tx))
            .await
    }

    /// A recovery action (see [`Recovery`]); refused while a job runs and
    /// where it does not fit the firmware. `Unlock` answers with the
    /// firmware's lines; the others answer once the action is under way
    /// (watch the status for the machine coming back).
    pub async fn recover(&self, action: Recovery) -> Result<Vec<String>, DriverError> {
        self.call(|tx| Request::Recover(action, tx)).await
    }

    /// Stops the task at a safe point (a running job ends as interrupted,
    /// reported as an event) and waits until it has stopped; for owners
    /// that share the handle and cannot give it up.
    pub async fn stop(&self) {
        let _ = self.requests.send(Request::Shutdown).await;
        self.requests.closed().await;
    }

    /// Stops the task at a safe point and waits for it.
    pub async fn shutdown(mut self) {
        let _ = self.requests.send(Request::Shutdown).await;
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for DriverHandle {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}
