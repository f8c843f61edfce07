//! What machines that report over MQTT say, turned into the
//! [`MachineStatus`] a serial driver would publish, so the factory cannot
//! tell them apart. One adapter per source: our own schema (`report`) and
//! OctoPrint's MQTT plugin (`octoprint`). Pure: a payload in, the status
//! changed or a typed error out. Moonraker (`moonraker`) and Bambu Lab
//! printers in LAN mode (`bambu`) send only the fields that changed: their
//! adapters merge them into what was said before ([`Seen`]).
//!
//! Payloads are outside input. Nothing here panics on them, and a refused
//! one leaves the status as it was (the caller counts and logs it).

use microfactory_machines::driver::{
    Connection, EndedJob, Heater, JobOutcome, MachineStatus, Progress,
};
use serde::Deserialize;
use thiserror::Error;

/// Most heaters a report may list.
pub const MAX_HEATERS: usize = 16;
/// Longest job or heater name kept.
const MAX_NAME: usize = 128;
/// Job id of a print a machine's own host runs, when it does not name it.
pub const EXTERNAL_JOB: &str = "external";

/// Why a payload was refused.
#[derive(Debug, Error, PartialEq)]
pub enum IngestError {
    /// Longer than `[mqtt] max_payload_bytes`.
    #[error("payload of {size} bytes is over the limit of {limit}")]
    Oversized {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// Not the documented shape.
    #[error("malformed payload: {0}")]
    Malformed(String),
    /// On a machine topic but for no configured machine.
    #[error("no configured machine reports on {0}")]
    UnknownMachine(String),
}

fn malformed(e: impl std::fmt::Display) -> IngestError {
    IngestError::Malformed(e.to_string())
}

// ------------------------------------------------------------- our schema

/// What a machine of our schema says it is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReportState {
    /// Powered but not usable (homing, booting).
    Offline,
    /// Ready.
    Idle,
    /// Printing or cutting.
    Running,
    /// Its job is paused.
    Paused,
    /// Halted (alarm, thermal runaway): needs a person.
    Error,
}

/// A heater in a report.
#[derive(Debug, Clone, Deserialize)]
pub struct ReportHeater {
    /// `T0`, `B`, `chamber`...
    pub name: String,
    /// °C.
    pub actual: f64,
    /// °C; 0 when off.
    #[serde(default)]
    pub target: f64,
}

/// `microfactory/<site>/machines/<id>/report` (the JSON schema is in
/// docs/mqtt.md). Unknown fields are ignored so a newer machine can say
/// more; known fields must have their type.
#[derive(Debug, Clone, Deserialize)]
pub struct Report {
    /// Required.
    pub state: ReportState,
    /// The running job's name.
    #[serde(default)]
    pub job: Option<String>,
    /// 0..=100.
    #[serde(default)]
    pub progress: Option<f64>,
    /// Seconds left.
    #[serde(default)]
    pub eta_seconds: Option<f64>,
    /// Heaters.
    #[serde(default)]
    pub heaters: Vec<ReportHeater>,
    /// Work position, mm.
    #[serde(default)]
    pub position: Option<[f64; 3]>,
    /// Error or alarm text.
    #[serde(default)]
    pub error: Option<String>,
    /// Firmware name and version.
    #[serde(default)]
    pub firmware: Option<String>,
}

fn finite(what: &str, v: f64) -> Result<f64, IngestError> {
    if v.is_finite() {
        Ok(v)
    } else {
        Err(IngestError::Malformed(format!("{what} is not a number")))
    }
}

fn name(what: &str, s: &str) -> Result<String, IngestError> {
    if s.len() > MAX_NAME || s.chars().any(char::is_control) {
        return Err(IngestError::Malformed(format!(
            "{what} is longer than {MAX_NAME} bytes or has control characters"
        )));
    }
    Ok(s.to_string())
}

/// Free text from a machine (a job name, an error, a firmware banner):
/// kept, not refused, since the long multi-line error is the one report
/// that must get through; control characters become spaces and the text
/// is cut at `MAX_NAME` bytes on a character boundary.
fn text(s: &str) -> String {
    let mut out = String::with_capacity(s.len().min(MAX_NAME));
    for c in s.chars().map(|c| if c.is_control() { ' ' } else { c }) {
        if out.len() + c.len_utf8() > MAX_NAME {
            break;
        }
        out.push(c);
    }
    out.trim().to_string()
}

/// Parses and checks a report of our schema.
pub fn parse_report(payload: &[u8]) -> Result<Report, IngestError> {
    let mut r: Report = serde_json::from_slice(payload).map_err(malformed)?;
    if let Some(p) = r.progress
        && !(0.0..=100.0).contains(&finite("progress", p)?)
    {
        return Err(IngestError::Malformed(format!(
            "progress {p} is not within 0..=100"
        )));
    }
    if let Some(e) = r.eta_seconds
        && finite("eta_seconds", e)? < 0.0
    {
        return Err(IngestError::Malformed("eta_seconds is negative".into()));
    }
    if r.heaters.len() > MAX_HEATERS {
        return Err(IngestError::Malformed(format!(
            "more than {MAX_HEATERS} heaters"
        )));
    }
    for h in &r.heaters {
        name("heater name", &h.name)?;
        finite("heater actual", h.actual)?;
        finite("heater target", h.target)?;
    }
    for v in r.position.iter().flatten() {
        finite("position", *v)?;
    }
    for s in [&mut r.job, &mut r.error, &mut r.firmware]
        .into_iter()
        .flatten()
    {
        *s = text(s);
    }
    Ok(r)
}

/// Applies a report of our schema: the whole status is replaced, so a
/// report is a full picture (retained, a late subscriber needs only the
/// last one).
pub fn apply_report(status: &mut MachineStatus, payload: &[u8]) -> Result<(), IngestError> {
    let r = parse_report(payload)?;
    let running = matches!(r.state, ReportState::Running | ReportState::Paused);
    let prev = std::mem::take(status);
    // A print that was running ends with the state that follows it.
    let how = match r.state {
        ReportState::Idle => Some(JobOutcome::Completed),
        ReportState::Error => Some(failed(
            r.error
                .as_deref()
                .unwrap_or("the machine reported an error"),
        )),
        _ => None,
    };
    *status = MachineStatus {
        connection: match r.state {
            ReportState::Offline => Connection::Offline,
            ReportState::Error => Connection::Faulted,
            _ => Connection::Online,
        },
        firmware: r.firmware,
        heaters: r
            .heaters
            .into_iter()
            .map(|h| Heater {
                name: h.name,
                actual: h.actual,
                target: h.target,
            })
            .collect(),
        position: r.position,
        job: running.then(|| Progress {
            job_id: r.job.unwrap_or_else(|| EXTERNAL_JOB.into()),
            percent: r.progress.unwrap_or(0.0),
            eta_seconds: r.eta_seconds,
            paused: r.state == ReportState::Paused,
            ..Progress::default()
        }),
        last_error: r.error,
        // Fresh: a report is the whole picture, heard just now.
        ..MachineStatus::default()
    };
    ended(&prev, status, how);
    Ok(())
}

/// Records how a print ended, for the factory to end the job it made of
/// it: `how` is what this message said of an end (`None`: nothing). A
/// print that stops without its host saying how (it went offline) leaves
/// no outcome; a running print clears the last one. Otherwise the last
/// outcome is kept, so a later message (a temperature) does not hide it.
fn ended(prev: &MachineStatus, next: &mut MachineStatus, how: Option<JobOutcome>) {
    next.last_ended = match (&prev.job, &next.job, how) {
        (_, Some(_), _) => None,
        (Some(j), None, Some(outcome)) => Some(EndedJob {
            job_id: j.job_id.clone(),
            outcome,
        }),
        (Some(_), None, None) => None,
        (None, None, _) => prev.last_ended.clone(),
    };
}

fn failed(reason: &str) -> JobOutcome {
    JobOutcome::Failed {
        reason: reason.to_string(),
        line: None,
    }
}

const CANCELLED: JobOutcome = JobOutcome::Cancelled { last_acked_line: 0 };

// -------------------------------------------------------------- OctoPrint

/// The subscriptions of an OctoPrint machine under `base`.
pub fn octoprint_filters(base: &str) -> [String; 4] {
    [
        format!("{base}/event/+"),
        format!("{base}/progress/printing"),
        format!("{base}/temperature/+"),
        format!("{base}/mqtt"),
    ]
}

#[derive(Debug, Deserialize)]
struct OctoEvent {
    #[serde(default)]
    filename: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    path: Option<String>,
}

#[derive(Debug, Deserialize)]
struct OctoProgress {
    progress: f64,
}

#[derive(Debug, Deserialize)]
struct OctoTemperature {
    actual: f64,
    #[serde(default)]
    target: Option<f64>,
}

/// Applies one OctoPrint plugin message; `rel` is the topic after
/// `<base>/`. Events it does not know are accepted and ignored (the plugin
/// publishes dozens); a known topic with a wrong payload is refused.
pub fn apply_octoprint(
    status: &mut MachineStatus,
    rel: &str,
    payload: &[u8],
) -> Result<(), IngestError> {
    if rel == "mqtt" {
        match std::str::from_utf8(payload).map(str::trim) {
            Ok("connected") => {
                if status.connection == Connection::Offline {
                    status.connection = Connection::Online;
                }
            }
            Ok("disconnected") => {
                // The host is gone: what the printer does is unknown.
                status.connection = Connection::Offline;
                status.job = None;
            }
            _ => return Err(malformed("expected 'connected' or 'disconnected'")),
        }
        return Ok(());
    }
    if let Some(event) = rel.strip_prefix("event/") {
        let e: OctoEvent = serde_json::from_slice(payload).map_err(malformed)?;
        let prev = status.clone();
        let file = e.filename.or(e.name).or(e.path);
        let online = |s: &mut MachineStatus| {
            if s.connection == Connection::Offline {
                s.connection = Connection::Online;
            }
        };
        match event {
            "PrintStarted" => {
                online(status);
                status.last_error = None;
                status.job = Some(Progress {
                    job_id: text(file.as_deref().unwrap_or(EXTERNAL_JOB)),
                    ..Progress::default()
                });
            }
            "PrintPaused" | "PrintResumed" => {
                online(status);
                if let Some(j) = &mut status.job {
                    j.paused = event == "PrintPaused";
                }
            }
            "PrintDone" | "PrintCancelled" => {
                online(status);
                status.job = None;
            }
            "PrintFailed" => {
                online(status);
                status.job = None;
                status.last_error = Some("print failed".into());
            }
            "Connected" => status.connection = Connection::Online,
            "Disconnected" => {
                status.connection = Connection::Offline;
                status.job = None;
            }
            "Error" => status.connection = Connection::Faulted,
            _ => {}
        }
        let how = match event {
            "PrintDone" => Some(JobOutcome::Completed),
            "PrintCancelled" => Some(CANCELLED),
            "PrintFailed" => Some(failed("print failed")),
            _ => None,
        };
        ended(&prev, status, how);
        return Ok(());
    }
    if rel == "progress/printing" {
        let p: OctoProgress = serde_json::from_slice(payload).map_err(malformed)?;
        let p = finite("progress", p.progress)?;
        if !(0.0..=100.0).contains(&p) {
            return Err(malformed(format_args!(
                "progress {p} is not within 0..=100"
            )));
        }
        // Retained: it arrives at every subscription, so it updates a
        // print we know of and never starts one.
        if let Some(j) = &mut status.job {
            j.percent = p;
        }
        return Ok(());
    }
    if let Some(tool) = rel.strip_prefix("temperature/") {
        let t: OctoTemperature = serde_json::from_slice(payload).map_err(malformed)?;
        let actual = finite("actual", t.actual)?;
        let target = finite("target", t.target.unwrap_or(0.0))?;
        let tool = name("tool", tool)?;
        let count = status.heaters.len();
        match status.heaters.iter_mut().find(|h| h.name == tool) {
            Some(h) => {
                h.actual = actual;
                h.target = target;
            }
            None if count < MAX_HEATERS => status.heaters.push(Heater {
                name: tool,
                actual,
                target,
            }),
            None => return Err(malformed("too many heaters")),
        }
        return Ok(());
    }
    Err(IngestError::UnknownMachine(rel.to_string()))
}

// --------------------------------------------------- merged field sources

/// Sources that send only the fields that changed (Moonraker, Bambu):
/// what each said last, merged, so every message yields the whole status.
/// Objects of objects, as the sources nest them.
pub type Seen = serde_json::Map<String, serde_json::Value>;

/// Merges `fields` into `seen[object]`.
fn merge(seen: &mut Seen, object: &str, fields: serde_json::Map<String, serde_json::Value>) {
    let slot = seen
        .entry(object.to_string())
        .or_insert_with(|| serde_json::Value::Object(Seen::new()));
    if !slot.is_object() {
        *slot = serde_json::Value::Object(Seen::new());
    }
    if let Some(o) = slot.as_object_mut() {
        o.extend(fields);
    }
}

/// `seen[object][field]`.
fn field<'a>(seen: &'a Seen, object: &str, f: &str) -> Option<&'a serde_json::Value> {
    seen.get(object).and_then(|o| o.get(f))
}

/// A number field: absent is `None`, present but not a finite number is
/// refused (naming it).
fn number(seen: &Seen, object: &str, f: &str) -> Result<Option<f64>, IngestError> {
    match field(seen, object, f) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .filter(|n| n.is_finite())
            .map(Some)
            .ok_or_else(|| IngestError::Malformed(format!("{object}.{f} is not a number"))),
    }
}

fn string<'a>(seen: &'a Seen, object: &str, f: &str) -> Result<Option<&'a str>, IngestError> {
    match field(seen, object, f) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(v) => v
            .as_str()
            .map(Some)
            .ok_or_else(|| IngestError::Malformed(format!("{object}.{f} is not text"))),
    }
}

/// A heater from two number fields of one object, if it reported any.
fn heater(
    seen: &Seen,
    name: &str,
    object: &str,
    actual: &str,
    target: &str,
) -> Result<Option<Heater>, IngestError> {
    let Some(a) = number(seen, object, actual)? else {
        return Ok(None);
    };
    Ok(Some(Heater {
        name: name.to_string(),
        actual: a,
        target: number(seen, object, target)?.unwrap_or(0.0),
    }))
}

// --------------------------------------------------------------- Moonraker

/// The subscriptions of a Moonraker instance: the combined status (changed
/// fields only), the split per-field topics when `publish_split_status` is
/// on, and the server's retained online/offline.
pub fn moonraker_filters(instance: &str) -> [String; 3] {
    [
        format!("{instance}/klipper/status"),
        format!("{instance}/klipper/state/#"),
        format!("{instance}/moonraker/status"),
    ]
}

#[derive(Debug, Deserialize)]
struct MoonrakerStatus {
    status: Seen,
}

#[derive(Debug, Deserialize)]
struct MoonrakerField {
    value: serde_json::Value,
}

#[derive(Debug, Deserialize)]
struct MoonrakerServer {
    server: String,
}

/// Object name under which the server's own online/offline is kept.
const SERVER: &str = "_moonraker";

/// Applies one Moonraker message; `rel` is the topic after `<instance>/`.
/// Fields are merged into `seen` (Moonraker sends what changed), then the
/// whole status is derived from what is known.
pub fn apply_moonraker(
    status: &mut MachineStatus,
    seen: &mut Seen,
    rel: &str,
    payload: &[u8],
) -> Result<(), IngestError> {
    let mut next = seen.clone();
    if rel == "moonraker/status" {
        let s: MoonrakerServer = serde_json::from_slice(payload).map_err(malformed)?;
        let online = match s.server.as_str() {
            "online" => true,
            "offline" => false,
            other => {
                return Err(IngestError::Malformed(format!(
                    "server is '{}', expected online or offline",
                    text(other)
                )));
            }
        };
        let mut f = Seen::new();
        f.insert("online".into(), online.into());
        merge(&mut next, SERVER, f);
    } else if rel == "klipper/status" {
        let s: MoonrakerStatus = serde_json::from_slice(payload).map_err(malformed)?;
        for (object, fields) in s.status {
            let serde_json::Value::Object(fields) = fields else {
                return Err(IngestError::Malformed(format!(
                    "status.{} is not an object",
                    text(&object)
                )));
            };
            merge(&mut next, &name("object", &object)?, fields);
        }
    } else if let Some(path) = rel.strip_prefix("klipper/state/") {
        let (object, f) = path
            .split_once('/')
            .ok_or_else(|| IngestError::Malformed(format!("topic {rel} names no field")))?;
        let v: MoonrakerField = serde_json::from_slice(payload).map_err(malformed)?;
        let mut fields = Seen::new();
        fields.insert(name("field", f)?, v.value);
        merge(&mut next, &name("object", object)?, fields);
    } else {
        return Err(IngestError::UnknownMachine(rel.to_string()));
    }
    let mut derived = derive_moonraker(status, &next)?;
    let how = match string(&next, "print_stats", "state")? {
        Some("complete") => Some(JobOutcome::Completed),
        Some("cancelled") => Some(CANCELLED),
        Some("error") => Some(failed(
            derived.last_error.as_deref().unwrap_or("print failed"),
        )),
        _ => None,
    };
    ended(status, &mut derived, how);
    *status = derived;
    *seen = next;
    Ok(())
}

/// What a Moonraker's merged fields say, Klipper's objects mapped to ours:
/// `webhooks.state` is the connection, `print_stats.state` the job,
/// `virtual_sdcard.progress` its share done, `extruder`/`extruder1`/
/// `heater_bed` the heaters, `toolhead.position` the position.
fn derive_moonraker(prev: &MachineStatus, seen: &Seen) -> Result<MachineStatus, IngestError> {
    let server_online = field(seen, SERVER, "online").and_then(serde_json::Value::as_bool);
    let klippy = string(seen, "webhooks", "state")?;
    let connection = match (server_online, klippy) {
        (Some(false), _) => Connection::Offline,
        (_, Some("shutdown" | "error")) => Connection::Faulted,
        (_, Some("ready")) => Connection::Online,
        (_, Some(_)) => Connection::Offline,
        // No word from Klippy yet: a status message means it is there.
        (_, None) if seen.keys().any(|k| k != SERVER) => Connection::Online,
        (_, None) => Connection::Offline,
    };
    let mut heaters = Vec::new();
    for (ours, object) in [("T0", "extruder"), ("T1", "extruder1"), ("B", "heater_bed")] {
        if let Some(h) = heater(seen, ours, object, "temperature", "target")? {
            heaters.push(h);
        }
    }
    let position = match field(seen, "toolhead", "position") {
        None | Some(serde_json::Value::Null) => None,
        Some(v) => {
            let p: Vec<f64> = serde_json::from_value(v.clone())
                .map_err(|_| malformed("toolhead.position is not a list of numbers"))?;
            match p.as_slice() {
                [x, y, z, ..] if [x, y, z].iter().all(|n| n.is_finite()) => Some([*x, *y, *z]),
                _ => return Err(malformed("toolhead.position has fewer than 3 numbers")),
            }
        }
    };
    let state = string(seen, "print_stats", "state")?;
    let progress = match number(seen, "virtual_sdcard", "progress")? {
        Some(p) => Some(p),
        None => number(seen, "display_status", "progress")?,
    };
    if let Some(p) = progress
        && !(0.0..=1.0).contains(&p)
    {
        return Err(IngestError::Malformed(format!(
            "progress {p} is not within 0..=1"
        )));
    }
    let running = connection != Connection::Offline && matches!(state, Some("printing" | "paused"));
    let job = running.then(|| {
        let percent = progress.unwrap_or(0.0) * 100.0;
        let elapsed = number(seen, "print_stats", "print_duration").ok().flatten();
        Progress {
            job_id: text(
                string(seen, "print_stats", "filename")
                    .ok()
                    .flatten()
                    .filter(|f| !f.is_empty())
                    .unwrap_or(EXTERNAL_JOB),
            ),
            percent,
            // From the pace so far, as Klipper's own screens do.
            eta_seconds: match (elapsed, progress) {
                (Some(t), Some(p)) if p > 0.01 && t > 0.0 => Some(t * (1.0 - p) / p),
                _ => None,
            },
            paused: state == Some("paused"),
            ..Progress::default()
        }
    });
    let last_error = match (klippy, state) {
        (Some("shutdown" | "error"), _) => Some(text(
            string(seen, "webhooks", "state_message")?.unwrap_or("Klipper is shut down"),
        )),
        (_, Some("error")) => Some(text(
            string(seen, "print_stats", "message")?
                .filter(|m| !m.is_empty())
                .unwrap_or("print failed"),
        )),
        _ => None,
    };
    Ok(MachineStatus {
        connection,
        firmware: prev
            .firmware
            .clone()
            .or_else(|| Some("Klipper (Moonraker)".into())),
        heaters,
        position,
        job,
        last_error,
        ..MachineStatus::default()
    })
}

// ------------------------------------------------------------------ Bambu

#[derive(Debug, Deserialize)]
struct BambuReport {
    #[serde(default)]
    print: Option<Seen>,
}

/// Applies one Bambu `report`: the fields of its `print` object are merged
/// (some models send only what changed), other objects are ignored.
/// Read-only: the printer runs its own jobs.
pub fn apply_bambu(
    status: &mut MachineStatus,
    seen: &mut Seen,
    payload: &[u8],
) -> Result<(), IngestError> {
    let r: BambuReport = serde_json::from_slice(payload).map_err(malformed)?;
    let Some(print) = r.print else {
        return Ok(());
    };
    let mut next = seen.clone();
    merge(&mut next, "print", print);
    let mut derived = derive_bambu(&next)?;
    let how = match string(&next, "print", "gcode_state")? {
        Some("FINISH") => Some(JobOutcome::Completed),
        Some("FAILED") => Some(failed(
            derived.last_error.as_deref().unwrap_or("print failed"),
        )),
        _ => None,
    };
    ended(status, &mut derived, how);
    *status = derived;
    *seen = next;
    Ok(())
}

/// What a Bambu printer's merged `print` fields say.
fn derive_bambu(seen: &Seen) -> Result<MachineStatus, IngestError> {
    let state = string(seen, "print", "gcode_state")?;
    let percent = number(seen, "print", "mc_percent")?;
    if let Some(p) = percent
        && !(0.0..=100.0).contains(&p)
    {
        return Err(IngestError::Malformed(format!(
            "mc_percent {p} is not within 0..=100"
        )));
    }
    let minutes_left = number(seen, "print", "mc_remaining_time")?;
    let mut heaters = Vec::new();
    for (ours, actual, target) in [
        ("T0", "nozzle_temper", "nozzle_target_temper"),
        ("B", "bed_temper", "bed_target_temper"),
        ("chamber", "chamber_temper", "chamber_target_temper"),
    ] {
        if let Some(h) = heater(seen, ours, "print", actual, target)? {
            heaters.push(h);
        }
    }
    let running = matches!(state, Some("RUNNING" | "PREPARE" | "SLICING" | "PAUSE"));
    let name = match string(seen, "print", "subtask_name")? {
        Some(n) if !n.is_empty() => Some(n),
        _ => string(seen, "print", "gcode_file")?.filter(|n| !n.is_empty()),
    };
    let job = running.then(|| Progress {
        job_id: text(name.unwrap_or(EXTERNAL_JOB)),
        percent: percent.unwrap_or(0.0),
        eta_seconds: minutes_left.filter(|m| *m >= 0.0).map(|m| m * 60.0),
        paused: state == Some("PAUSE"),
        ..Progress::default()
    });
    let error_code = number(seen, "print", "print_error")?.unwrap_or(0.0);
    let last_error = match state {
        Some("FAILED") if error_code != 0.0 => {
            Some(format!("print failed (error {error_code:.0})"))
        }
        Some("FAILED") => Some("print failed".into()),
        _ => None,
    };
    Ok(MachineStatus {
        connection: Connection::Online,
        firmware: Some("Bambu Lab".into()),
        heaters,
        job,
        last_error,
        ..MachineStatus::default()
    })
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_long_multi_line_error_is_kept_cut_and_a_newer_heater_field_is_ignored() {
        let err = format!("Shutdown due to thermal runaway\\n{}", "x".repeat(500));
        let payload = format!(
            r#"{{"state":"error","error":"{err}","heaters":[{{"name":"T0","actual":250,"sensor":"pt1000"}}]}}"#
        );
        let r = parse_report(payload.as_bytes()).expect("a report that says it failed");
        let e = r.error.expect("error kept");
        assert!(e.starts_with("Shutdown due to thermal runaway x"), "{e}");
        assert!(e.len() <= MAX_NAME);
        assert_eq!(r.heaters.len(), 1);
    }

    use super::*;

    #[test]
    fn a_full_report_becomes_the_status_a_serial_driver_would_publish() {
        let mut s = MachineStatus::default();
        apply_report(
            &mut s,
            br#"{"state":"running","job":"bracket.gcode","progress":37.5,
                "heaters":[{"name":"T0","actual":215.2,"target":215}],
                "position":[1,2,3],"firmware":"esp-mill 1.2","extra":"ignored"}"#,
        )
        .expect("valid");
        assert_eq!(s.connection, Connection::Online);
        let j = s.job.as_ref().expect("a job");
        assert_eq!(
            (j.job_id.as_str(), j.percent, j.paused),
            ("bracket.gcode", 37.5, false)
        );
        assert_eq!(s.heaters[0].target, 215.0);
        assert_eq!(s.position, Some([1.0, 2.0, 3.0]));
        apply_report(&mut s, br#"{"state":"error","error":"alarm 2"}"#).expect("valid");
        assert_eq!(s.connection, Connection::Faulted);
        assert!(s.job.is_none() && s.heaters.is_empty());
        assert_eq!(s.last_error.as_deref(), Some("alarm 2"));
    }

    #[test]
    fn a_malformed_report_is_refused_and_changes_nothing() {
        let mut s = MachineStatus::default();
        apply_report(&mut s, br#"{"state":"paused"}"#).expect("valid");
        let before = s.clone();
        for bad in [
            &b"not json"[..],
            br#"{}"#,
            br#"{"state":"dancing"}"#,
            br#"{"state":"running","progress":101}"#,
            br#"{"state":"running","progress":"half"}"#,
            br#"{"state":"idle","heaters":[{"name":"T0"}]}"#,
            br#"{"state":"idle","eta_seconds":-1}"#,
            br#"[1,2,3]"#,
            b"\xff\xfe",
        ] {
            assert!(
                matches!(apply_report(&mut s, bad), Err(IngestError::Malformed(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
            assert_eq!(s, before);
        }
        let many: Vec<String> = (0..=MAX_HEATERS)
            .map(|i| format!(r#"{{"name":"h{i}","actual":1}}"#))
            .collect();
        let flood = format!(r#"{{"state":"idle","heaters":[{}]}}"#, many.join(","));
        assert!(apply_report(&mut s, flood.as_bytes()).is_err());
    }

    #[test]
    fn octoprint_events_progress_and_temperatures_follow_a_print_to_its_end() {
        let mut s = MachineStatus::default();
        apply_octoprint(&mut s, "mqtt", b"connected").expect("will");
        assert_eq!(s.connection, Connection::Online);
        // A retained progress before any print starts nothing.
        apply_octoprint(&mut s, "progress/printing", br#"{"progress": 80}"#).expect("ok");
        assert!(s.job.is_none());
        apply_octoprint(
            &mut s,
            "event/PrintStarted",
            br#"{"_timestamp": 1517190629, "_event": "PrintStarted", "origin": "local",
                 "file": "/home/pi/.octoprint/uploads/case.gco", "filename": "case.gco"}"#,
        )
        .expect("started");
        apply_octoprint(
            &mut s,
            "progress/printing",
            br#"{"_timestamp": 1517190629, "progress": 23, "location": "local", "path": "test.gco"}"#,
        )
        .expect("progress");
        apply_octoprint(
            &mut s,
            "temperature/tool0",
            br#"{"_timestamp": 1517190629, "actual": 65.3, "target": 210.0}"#,
        )
        .expect("temperature");
        let j = s.job.as_ref().expect("printing");
        assert_eq!((j.job_id.as_str(), j.percent), ("case.gco", 23.0));
        assert_eq!(s.heaters[0].name, "tool0");
        apply_octoprint(&mut s, "event/PrintPaused", br#"{"filename":"case.gco"}"#).expect("ok");
        assert!(s.job.as_ref().is_some_and(|j| j.paused));
        apply_octoprint(&mut s, "event/ZChange", br#"{"new": 0.4}"#).expect("ignored");
        apply_octoprint(&mut s, "event/PrintDone", br#"{"filename":"case.gco"}"#).expect("done");
        assert!(s.job.is_none());
        apply_octoprint(&mut s, "mqtt", b"disconnected").expect("will");
        assert_eq!(s.connection, Connection::Offline);
    }

    #[test]
    fn octoprint_payloads_of_the_wrong_shape_are_refused() {
        let mut s = MachineStatus::default();
        for (rel, bad) in [
            ("mqtt", &b"maybe"[..]),
            ("event/PrintStarted", b"{"),
            ("progress/printing", br#"{"progress": -3}"#),
            ("temperature/tool0", br#"{"actual": "hot"}"#),
        ] {
            assert!(apply_octoprint(&mut s, rel, bad).is_err(), "{rel}");
        }
        assert_eq!(s, MachineStatus::default());
    }

    // ------------------------------------------------------ Moonraker

    fn moon(s: &mut MachineStatus, seen: &mut Seen, rel: &str, p: &str) -> Result<(), IngestError> {
        apply_moonraker(s, seen, rel, p.as_bytes())
    }

    #[test]
    fn moonraker_fields_that_changed_merge_into_the_whole_picture() {
        let (mut s, mut seen) = (MachineStatus::default(), Seen::new());
        moon(
            &mut s,
            &mut seen,
            "moonraker/status",
            r#"{"server": "online"}"#,
        )
        .expect("online");
        moon(
            &mut s,
            &mut seen,
            "klipper/status",
            r#"{"eventtime": 1.5, "status": {"webhooks": {"state": "ready", "state_message": "Printer is ready"},
                "print_stats": {"state": "printing", "filename": "hook.gcode", "print_duration": 600.0},
                "virtual_sdcard": {"progress": 0.25},
                "extruder": {"temperature": 214.8, "target": 215.0},
                "heater_bed": {"temperature": 60.1, "target": 60.0},
                "toolhead": {"position": [10.0, 20.0, 0.3, 100.0]}}}"#,
        )
        .expect("full status");
        assert_eq!(s.connection, Connection::Online);
        let j = s.job.as_ref().expect("printing");
        assert_eq!(
            (j.job_id.as_str(), j.percent, j.paused),
            ("hook.gcode", 25.0, false)
        );
        assert_eq!(
            j.eta_seconds,
            Some(1800.0),
            "600 s for a quarter: 1800 s to go"
        );
        assert_eq!(s.position, Some([10.0, 20.0, 0.3]));
        // Only what changed: the bed and the file are still known.
        moon(
            &mut s,
            &mut seen,
            "klipper/status",
            r#"{"eventtime": 2.0, "status": {"extruder": {"temperature": 215.1}, "virtual_sdcard": {"progress": 0.5}}}"#,
        )
        .expect("changed fields");
        let j = s.job.as_ref().expect("still printing");
        assert_eq!((j.job_id.as_str(), j.percent), ("hook.gcode", 50.0));
        let names: Vec<(&str, f64, f64)> = s
            .heaters
            .iter()
            .map(|h| (h.name.as_str(), h.actual, h.target))
            .collect();
        assert_eq!(names, vec![("T0", 215.1, 215.0), ("B", 60.1, 60.0)]);
        moon(
            &mut s,
            &mut seen,
            "klipper/status",
            r#"{"status": {"print_stats": {"state": "paused"}}}"#,
        )
        .expect("paused");
        assert!(s.job.as_ref().is_some_and(|j| j.paused));
        moon(
            &mut s,
            &mut seen,
            "klipper/status",
            r#"{"status": {"print_stats": {"state": "complete"}}}"#,
        )
        .expect("complete");
        assert!(s.job.is_none());
        moon(
            &mut s,
            &mut seen,
            "moonraker/status",
            r#"{"server": "offline"}"#,
        )
        .expect("offline");
        assert_eq!(s.connection, Connection::Offline);
    }

    #[test]
    fn moonraker_split_topics_and_a_klipper_shutdown() {
        let (mut s, mut seen) = (MachineStatus::default(), Seen::new());
        for (rel, p) in [
            (
                "klipper/state/webhooks/state",
                r#"{"eventtime": 1.0, "value": "ready"}"#,
            ),
            (
                "klipper/state/print_stats/state",
                r#"{"eventtime": 1.0, "value": "printing"}"#,
            ),
            (
                "klipper/state/virtual_sdcard/progress",
                r#"{"eventtime": 1.0, "value": 0.1}"#,
            ),
        ] {
            moon(&mut s, &mut seen, rel, p).expect(rel);
        }
        assert_eq!(s.job.as_ref().map(|j| j.percent), Some(10.0));
        moon(
            &mut s,
            &mut seen,
            "klipper/status",
            r#"{"status": {"webhooks": {"state": "shutdown", "state_message": "MCU 'mcu' shutdown: Timer too close"}}}"#,
        )
        .expect("shutdown");
        assert_eq!(s.connection, Connection::Faulted);
        assert_eq!(
            s.last_error.as_deref(),
            Some("MCU 'mcu' shutdown: Timer too close")
        );
    }

    #[test]
    fn a_wrong_moonraker_field_is_refused_and_changes_nothing() {
        let (mut s, mut seen) = (MachineStatus::default(), Seen::new());
        moon(
            &mut s,
            &mut seen,
            "klipper/status",
            r#"{"status": {"webhooks": {"state": "ready"}, "extruder": {"temperature": 20.0, "target": 0}}}"#,
        )
        .expect("valid");
        let (before, seen_before) = (s.clone(), seen.clone());
        for (rel, p) in [
            (
                "klipper/status",
                r#"{"status": {"extruder": {"temperature": "hot"}}}"#,
            ),
            (
                "klipper/status",
                r#"{"status": {"virtual_sdcard": {"progress": 7}}}"#,
            ),
            ("klipper/status", r#"{"status": {"extruder": 5}}"#),
            ("klipper/status", "not json"),
            ("klipper/state/extruder", r#"{"value": 1}"#),
            ("moonraker/status", r#"{"server": "maybe"}"#),
        ] {
            assert!(moon(&mut s, &mut seen, rel, p).is_err(), "{rel} {p}");
            assert_eq!(s, before, "{p}");
            assert_eq!(seen, seen_before, "{p}");
        }
    }

    // ----------------------------------------------------------- Bambu

    #[test]
    fn bambu_reports_merge_and_map_gcode_state_to_the_job() {
        let (mut s, mut seen) = (MachineStatus::default(), Seen::new());
        apply_bambu(
            &mut s,
            &mut seen,
            br#"{"print": {"command": "push_status", "gcode_state": "RUNNING", "mc_percent": 12,
                "mc_remaining_time": 45, "subtask_name": "bracket_x4", "nozzle_temper": 219.5,
                "nozzle_target_temper": 220, "bed_temper": 55, "bed_target_temper": 55,
                "print_error": 0}}"#,
        )
        .expect("full report");
        let j = s.job.as_ref().expect("running");
        assert_eq!(
            (j.job_id.as_str(), j.percent, j.eta_seconds),
            ("bracket_x4", 12.0, Some(2700.0))
        );
        // P1 and A1 send only what changed.
        apply_bambu(
            &mut s,
            &mut seen,
            br#"{"print": {"mc_percent": 13, "nozzle_temper": 220.1}}"#,
        )
        .expect("changed fields");
        let j = s.job.as_ref().expect("still running");
        assert_eq!((j.job_id.as_str(), j.percent), ("bracket_x4", 13.0));
        assert_eq!(
            s.heaters.iter().map(|h| h.actual).collect::<Vec<_>>(),
            vec![220.1, 55.0]
        );
        apply_bambu(&mut s, &mut seen, br#"{"print": {"gcode_state": "PAUSE"}}"#).expect("pause");
        assert!(s.job.as_ref().is_some_and(|j| j.paused));
        apply_bambu(
            &mut s,
            &mut seen,
            br#"{"print": {"gcode_state": "FAILED", "print_error": 50348044}}"#,
        )
        .expect("failed");
        assert!(s.job.is_none());
        assert_eq!(
            s.last_error.as_deref(),
            Some("print failed (error 50348044)")
        );
        // Other objects (info, system) say nothing about the print.
        let before = s.clone();
        apply_bambu(
            &mut s,
            &mut seen,
            br#"{"info": {"command": "get_version"}}"#,
        )
        .expect("ignored");
        assert_eq!(s, before);
        assert!(apply_bambu(&mut s, &mut seen, br#"{"print": {"mc_percent": 140}}"#).is_err());
        assert_eq!(s, before);
    }

    fn outcome(s: &MachineStatus) -> Option<(&str, &JobOutcome)> {
        s.last_ended
            .as_ref()
            .map(|e| (e.job_id.as_str(), &e.outcome))
    }

    #[test]
    fn each_source_says_how_a_print_ended_and_a_later_message_keeps_it() {
        // OctoPrint: done, cancelled, failed; a temperature keeps it.
        for (event, want) in [
            ("PrintDone", JobOutcome::Completed),
            ("PrintCancelled", CANCELLED),
            ("PrintFailed", failed("print failed")),
        ] {
            let mut s = MachineStatus::default();
            apply_octoprint(&mut s, "event/PrintStarted", br#"{"name":"hook.gcode"}"#)
                .expect("start");
            assert_eq!(s.last_ended, None);
            apply_octoprint(
                &mut s,
                &format!("event/{event}"),
                br#"{"name":"hook.gcode"}"#,
            )
            .expect("end");
            apply_octoprint(&mut s, "temperature/tool0", br#"{"actual":40,"target":0}"#)
                .expect("temp");
            assert_eq!(outcome(&s), Some(("hook.gcode", &want)), "{event}");
        }
        // The host going away says nothing of how.
        let mut s = MachineStatus::default();
        apply_octoprint(&mut s, "event/PrintStarted", br#"{"name":"hook.gcode"}"#).expect("start");
        apply_octoprint(&mut s, "mqtt", b"disconnected").expect("will");
        assert_eq!(s.last_ended, None);
        // Our schema: running then idle is done, then error is failed.
        let mut s = MachineStatus::default();
        apply_report(&mut s, br#"{"state":"running","job":"plate.nc"}"#).expect("run");
        apply_report(&mut s, br#"{"state":"idle"}"#).expect("idle");
        assert_eq!(outcome(&s), Some(("plate.nc", &JobOutcome::Completed)));
        apply_report(&mut s, br#"{"state":"running","job":"plate.nc"}"#).expect("run");
        apply_report(&mut s, br#"{"state":"error","error":"alarm 1"}"#).expect("error");
        assert_eq!(outcome(&s), Some(("plate.nc", &failed("alarm 1"))));
        // Moonraker: complete after printing.
        let (mut s, mut seen) = (MachineStatus::default(), Seen::new());
        apply_moonraker(&mut s, &mut seen, "klipper/status",
            br#"{"status":{"webhooks":{"state":"ready"},"print_stats":{"state":"printing","filename":"hook.gcode"}}}"#)
            .expect("printing");
        apply_moonraker(
            &mut s,
            &mut seen,
            "klipper/status",
            br#"{"status":{"print_stats":{"state":"complete"}}}"#,
        )
        .expect("complete");
        assert_eq!(outcome(&s), Some(("hook.gcode", &JobOutcome::Completed)));
        // Bambu: FINISH after RUNNING.
        let (mut s, mut seen) = (MachineStatus::default(), Seen::new());
        apply_bambu(
            &mut s,
            &mut seen,
            br#"{"print":{"gcode_state":"RUNNING","subtask_name":"hook"}}"#,
        )
        .expect("running");
        apply_bambu(&mut s, &mut seen, br#"{"print":{"gcode_state":"FINISH"}}"#).expect("finish");
        assert_eq!(outcome(&s), Some(("hook", &JobOutcome::Completed)));
        apply_bambu(&mut s, &mut seen, br#"{"print":{"gcode_state":"RUNNING"}}"#).expect("again");
        assert_eq!(s.last_ended, None, "a new print clears it");
    }
}
