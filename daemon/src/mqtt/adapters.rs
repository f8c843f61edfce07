//! What machines that report over MQTT say, turned into the
//! [`MachineStatus`] a serial driver would publish, so the factory cannot
//! tell them apart. One adapter per source: our own schema (`report`) and
//! OctoPrint's MQTT plugin (`octoprint`). Pure: a payload in, the status
//! changed or a typed error out.
//!
//! Payloads are outside input. Nothing here panics on them, and a refused
//! one leaves the status as it was (the caller counts and logs it).

use microfactory_machines::driver::{Connection, Heater, MachineStatus, Progress};
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
    Ok(())
}

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
}
