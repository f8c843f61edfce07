//! Records the daemon keeps and the API shows: files, jobs, machine views,
//! tokens and events. They are stored as JSON in sled, so a field added
//! later must have a serde default.

use microfactory_machines::driver::MachineStatus;
use microfactory_protocol::analysis::Analysis;
use microfactory_protocol::preflight::PreflightReport;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// An uploaded G-code program, stored once per content.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FileRecord {
    /// sha256 of the content, hex: the same bytes are the same file.
    pub id: String,
    /// Name given at upload.
    pub name: String,
    /// Bytes.
    pub size: u64,
    /// Upload time.
    pub uploaded_ms: u64,
    /// Duration, filament, bounds, layers, slicer metadata.
    #[schema(value_type = Object)]
    pub analysis: Analysis,
    /// What Marlin 2 would reject.
    #[schema(value_type = Object)]
    pub preflight_marlin: PreflightReport,
    /// What GRBL 1.1 would reject, and whether expansion fixes it.
    #[schema(value_type = Object)]
    pub preflight_grbl: PreflightReport,
}

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting for a machine.
    Queued,
    /// Given to a machine, not yet streaming.
    Assigned,
    /// Streaming.
    Running,
    /// Held by the operator or at a tool change.
    Paused,
    /// Every line acknowledged.
    Completed,
    /// The firmware refused or stopped it.
    Failed,
    /// Stopped by the operator.
    Cancelled,
    /// The link or the daemon went away mid-job; can restart from a line.
    Interrupted,
}

impl JobState {
    /// The job holds a machine.
    pub fn is_active(self) -> bool {
        matches!(self, Self::Assigned | Self::Running | Self::Paused)
    }

    /// The job has ended and may be requeued.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Self::Completed | Self::Failed | Self::Cancelled | Self::Interrupted
        )
    }

    /// The name used in the API and in `?state=`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Assigned => "assigned",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Interrupted => "interrupted",
        }
    }

    /// Every state, for parsing and documentation.
    pub const ALL: [JobState; 8] = [
        Self::Queued,
        Self::Assigned,
        Self::Running,
        Self::Paused,
        Self::Completed,
        Self::Failed,
        Self::Cancelled,
        Self::Interrupted,
    ];
}

/// Printer or mill, as jobs ask for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// FDM printer.
    Printer,
    /// CNC mill.
    Mill,
}

/// Streaming progress as last reported.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JobProgress {
    /// Commands acknowledged.
    pub lines_done: u64,
    /// Commands in the job.
    pub lines_total: u64,
    /// 0..=100.
    pub percent: f64,
    /// Source line of the last acknowledged command: where a restart may
    /// begin after.
    pub last_acked_line: u64,
    /// Seconds streaming.
    pub elapsed_seconds: f64,
    /// Estimated seconds left.
    pub eta_seconds: Option<f64>,
    /// Lines sent again after resend requests.
    pub resends: u64,
}

/// Why a job did not complete.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Failure {
    /// The firmware's or the daemon's words.
    pub reason: String,
    /// Source line it happened at, when known.
    pub line: Option<u64>,
}

/// One entry of a job's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Transition {
    /// When.
    pub at_ms: u64,
    /// The new state.
    pub state: JobState,
    /// Machine involved, if any.
    pub machine_id: Option<String>,
    /// Why, in words.
    pub note: Option<String>,
}

/// A unit of work: one copy of one file on one machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Job {
    /// Increasing id.
    pub id: u64,
    /// Name shown to operators (the file name unless given).
    pub name: String,
    /// The G-code file (sha256).
    pub file_id: String,
    /// Jobs submitted together as copies share this id (the first copy's).
    pub batch_id: u64,
    /// This copy's number, from 1.
    pub copy: u32,
    /// Copies in the batch.
    pub copies: u32,
    /// Higher runs first.
    pub priority: i32,
    /// Queue order among equal priorities (lower first).
    pub seq: u64,
    /// Run only on this machine.
    pub machine_id: Option<String>,
    /// Run only on this kind of machine.
    pub kind: Option<Kind>,
    /// Run only on machines with all these tags.
    pub tags: Vec<String>,
    /// GRBL: expand canned cycles and pause at tool changes.
    pub expand_canned_cycles: bool,
    /// Run on a machine whatever `material:` and `nozzle:` tags it has,
    /// even where the file states another (the operator's override).
    #[serde(default)]
    pub any_material: bool,
    /// First source line to stream (1 = from the start).
    pub start_line: u64,
    /// Where it is.
    pub state: JobState,
    /// The machine it runs or ran on.
    pub assigned_machine: Option<String>,
    /// Submission time.
    pub created_ms: u64,
    /// First byte streamed.
    pub started_ms: Option<u64>,
    /// End time.
    pub ended_ms: Option<u64>,
    /// Streaming progress.
    pub progress: JobProgress,
    /// Why it failed or was interrupted.
    pub failure: Option<Failure>,
    /// Every state change, oldest first.
    pub history: Vec<Transition>,
    /// The current or last attempt (0: never given to a machine).
    #[serde(default)]
    pub attempt: u32,
    /// Why it is paused, while it is.
    #[serde(default)]
    pub pause: Option<PauseReason>,
    /// It failed or was interrupted and the operator has not yet said so
    /// much as "seen": it stays on the attention list until then, even
    /// when no machine holds for it (a file that vanished before it could
    /// start). Requeueing, confirming the machine that holds for it, or
    /// `POST /jobs/{id}/acknowledge` clear it.
    #[serde(default)]
    pub awaiting_ack: bool,
}

impl Job {
    /// Moves to `state` at `now_ms`, recording why. A new attempt's start
    /// sets `started_ms`; an end sets `ended_ms`.
    pub fn transition(&mut self, state: JobState, note: Option<String>, now_ms: u64) {
        self.state = state;
        match state {
            JobState::Running if self.started_ms.is_none() => self.started_ms = Some(now_ms),
            s if s.is_final() => self.ended_ms = Some(now_ms),
            _ => {}
        }
        if state != JobState::Paused {
            self.pause = None;
        }
        self.history.push(Transition {
            at_ms: now_ms,
            state,
            machine_id: self.assigned_machine.clone(),
            note,
        });
    }
}

/// Why a job is paused: metering tells an operator's pause from a tool
/// change, and the dashboard says what to do before resuming.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PauseReason {
    /// The operator paused it.
    Operator,
    /// The program asks for a tool change (GRBL `M6`).
    ToolChange {
        /// The tool to load, when the program names it.
        tool: Option<u32>,
        /// Source line of the change.
        line: u64,
    },
    /// The program or firmware paused (filament, `M0`).
    Program {
        /// The firmware's or program's words.
        text: String,
        /// Source line.
        line: u64,
    },
}

/// How one attempt of a job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    /// Every line acknowledged.
    Completed,
    /// The firmware refused or stopped it.
    Failed,
    /// Stopped by the operator.
    Cancelled,
    /// The link or the daemon went away.
    Interrupted,
}

/// One run of a job on a machine: a requeue starts a new attempt, so each
/// cycle time is one attempt's, never a span across runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Attempt {
    /// The job.
    pub job_id: u64,
    /// 1, 2, 3... per job.
    pub n: u32,
    /// Where it ran.
    pub machine_id: String,
    /// First source line streamed.
    pub start_line: u64,
    /// When the machine was given the job.
    pub assigned_ms: u64,
    /// First byte streamed.
    pub started_ms: Option<u64>,
    /// When it ended.
    pub ended_ms: Option<u64>,
    /// How it ended (none while it runs).
    pub outcome: Option<AttemptOutcome>,
    /// Why it did not complete.
    pub failure: Option<Failure>,
    /// Commands acknowledged.
    pub lines_done: u64,
    /// Source line of the last acknowledged command.
    pub last_acked_line: u64,
    /// The driver's link counters, when it reported them.
    #[schema(value_type = Option<Object>)]
    pub stats: Option<microfactory_machines::driver::StreamStats>,
}

/// Roles a token can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything.
    Operator,
    /// Read-only.
    Viewer,
    /// Reserved for the storefront integration.
    Storefront,
    /// Reserved for machines reporting over the network.
    Machine,
    /// A slicer's "send to printer": the OctoPrint-compatible upload and
    /// status routes only (`http::octoprint`), nothing under `/api/v1`.
    /// Its key sits in plain text in the slicer's settings, so it can
    /// queue work but never stop, delete or command anything.
    Slicer,
    /// A Prometheus scraper: `GET /metrics` only (and its own session).
    /// Production figures, nothing about files, jobs or tokens.
    Metrics,
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "operator" => Ok(Self::Operator),
            "viewer" => Ok(Self::Viewer),
            "storefront" => Ok(Self::Storefront),
            "machine" => Ok(Self::Machine),
            "slicer" => Ok(Self::Slicer),
            "metrics" => Ok(Self::Metrics),
            _ => Err(format!(
                "unknown role '{s}' (expected operator, viewer, slicer, metrics, storefront or \
                 machine)"
            )),
        }
    }
}

/// A stored token: only its hash is kept.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Who or what it is for.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// Creation time.
    pub created_ms: u64,
}

/// Operator-controlled machine state that survives restarts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MachineRecord {
    /// Taken out of service for maintenance.
    pub disabled: bool,
    /// Waiting for the operator (bed clearance, a look after an
    /// interrupted, cancelled or failed job), and why.
    #[serde(default)]
    pub hold: Option<Hold>,
}

/// Why a machine waits for the operator before its next job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hold {
    /// Why.
    pub reason: crate::core::machine::StateReason,
    /// The job that left it so.
    pub job_id: Option<u64>,
}

/// What the API shows of a machine.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MachineView {
    /// Id from the configuration.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Printer or mill.
    pub kind: Kind,
    /// Profile id.
    pub profile: String,
    /// Serial port.
    pub port: String,
    /// Tags jobs can require.
    pub tags: Vec<String>,
    /// Build volume, mm.
    pub build_volume_mm: [f64; 3],
    /// Out of service.
    pub disabled: bool,
    /// Waiting for "bed cleared".
    pub awaiting_clear: bool,
    /// Needs a bed clearance after each job.
    pub require_bed_clear: bool,
    /// One word for the dashboard: offline, idle, running, paused,
    /// awaiting_clear, error, disabled.
    pub state: String,
    /// The state as the machine state log records it.
    pub machine_state: crate::core::machine::MachineState,
    /// Why, as a code.
    pub reason: crate::core::machine::StateReason,
    /// Why, in words ("" when there is nothing to say).
    pub reason_text: String,
    /// Since when (ms since the Unix epoch).
    pub since_ms: u64,
    /// Why the running job is paused, if it is.
    pub pause: Option<PauseReason>,
    /// Why it will wait for the operator before its next job (shown even
    /// while it is offline or halted), if it will.
    pub hold_reason: Option<crate::core::machine::StateReason>,
    /// The job that left it waiting for the operator, if one did.
    #[serde(default)]
    pub hold_job_id: Option<u64>,
    /// The job it is running.
    pub job_id: Option<u64>,
    /// Connection, firmware, capabilities, temperatures, GRBL state and
    /// position, job progress.
    #[schema(value_type = Object)]
    pub status: MachineStatus,
}

/// An entry of the append-only event log and of `GET /events`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// A job changed state.
    Job {
        /// Job id.
        job_id: u64,
        /// New state.
        state: JobState,
        /// Machine.
        machine_id: Option<String>,
        /// Why.
        note: Option<String>,
    },
    /// Throttled progress (not stored in the log).
    Progress {
        /// Job id.
        job_id: u64,
        /// Machine.
        machine_id: String,
        /// Progress.
        progress: JobProgress,
    },
    /// A machine's status or operator state changed.
    Machine {
        /// The machine as the API shows it.
        #[schema(value_type = Object)]
        machine: Box<MachineView>,
    },
}

/// A unit's quality state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum QcState {
    /// Made, not yet inspected.
    Pending,
    /// Good.
    Pass,
    /// Failed inspection: not good, not to be reworked.
    Fail,
    /// To be reworked, then inspected again.
    Rework,
    /// Thrown away (also a unit of a failed or cancelled attempt).
    Scrap,
}

impl QcState {
    /// The name used in the API and `?state=`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Pass => "pass",
            Self::Fail => "fail",
            Self::Rework => "rework",
            Self::Scrap => "scrap",
        }
    }

    /// Parses `?state=`.
    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Pending,
            Self::Pass,
            Self::Fail,
            Self::Rework,
            Self::Scrap,
        ]
        .into_iter()
        .find(|q| q.as_str() == s)
    }

    /// No further inspection changes it.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Pass | Self::Fail | Self::Scrap)
    }
}

/// Where a storefront (sales) order is in fulfillment. In the log's
/// vocabulary (so in `core`) because every transition is a domain event
/// that webhooks and the dashboard follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SalesState {
    /// Accepted; waiting for units (back-ordered) or not yet allocated.
    Received,
    /// Every line has its unit serials reserved.
    Allocated,
    /// The units were taken from the shelf.
    Picked,
    /// Packed in a parcel.
    Packed,
    /// Every unit is in a shipment with a label.
    Labelled,
    /// Every unit left the factory.
    Shipped,
    /// Stopped by the operator; released to the state it was in.
    OnHold,
    /// Cancelled: its unshipped units went back to stock.
    Cancelled,
    /// Shipped units came back; they wait for inspection.
    Returned,
}

impl SalesState {
    /// Every state, in fulfillment order.
    pub const ALL: [Self; 9] = [
        Self::Received,
        Self::Allocated,
        Self::Picked,
        Self::Packed,
        Self::Labelled,
        Self::Shipped,
        Self::OnHold,
        Self::Cancelled,
        Self::Returned,
    ];

    /// The name used in the API and `?state=`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Received => "received",
            Self::Allocated => "allocated",
            Self::Picked => "picked",
            Self::Packed => "packed",
            Self::Labelled => "labelled",
            Self::Shipped => "shipped",
            Self::OnHold => "on_hold",
            Self::Cancelled => "cancelled",
            Self::Returned => "returned",
        }
    }

    /// Parses `?state=`.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|q| q.as_str() == s)
    }
}

/// A manual finished-goods adjustment's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AdjustmentKind {
    /// A physical count: on hand becomes the counted quantity.
    Count,
    /// Units found damaged: still on hand, no longer available.
    Damage,
    /// Units believed missing or damaged were found good.
    Found,
}
