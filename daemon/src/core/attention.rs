//! What needs the operator now: the one rule from machine states, held
//! jobs and units awaiting inspection to the attention list the dashboard
//! shows (and counts in its header and tab title).
//!
//! Nothing here is stored but the one fact a person adds: that they have
//! seen a failure (`Job::awaiting_ack`). Every item is derived from state
//! the daemon already keeps, so the list can never disagree with the
//! machines. Every failed or interrupted job is on the list with its
//! reason until the operator acknowledges it: by confirming the machine
//! that holds for it ("Checked: ready for the next job"), by requeueing
//! it, or by dismissing it (a job that never reached a machine, such as
//! one whose file vanished, has no machine to confirm).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::core::machine::{MachineState, StateReason};
use crate::core::model::{Job, JobState, MachineView, PauseReason};

/// What kind of thing needs the operator, most urgent first (the list is
/// sorted by it).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum AttentionKind {
    /// The firmware halted or is in alarm: recover it.
    Faulted,
    /// A job is paused for a tool change, filament or the program.
    Paused,
    /// A job failed or was interrupted; its machine waits for a look.
    JobFailed,
    /// A machine waits for bed clearance or a look after a cancel or halt.
    AwaitingOperator,
    /// An enabled machine is not connected.
    Offline,
    /// Units made and not yet inspected (or back from rework).
    AwaitingQc,
}

/// One thing that needs the operator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AttentionItem {
    /// Stable while the same thing needs attention, so that a page can
    /// tell a new item from one it has already announced.
    pub key: String,
    /// What kind.
    pub kind: AttentionKind,
    /// The machine, when it is about one.
    pub machine_id: Option<String>,
    /// The job, when it is about one.
    pub job_id: Option<u64>,
    /// The product, for units awaiting inspection.
    pub sku: Option<String>,
    /// What needs attention, naming the machine by name and id.
    pub title: String,
    /// What to do about it.
    pub action: String,
    /// Since when (ms since the Unix epoch; 0 when unknown).
    pub since_ms: u64,
}

/// Units of one product waiting for inspection.
#[derive(Debug, Clone, PartialEq)]
pub struct QcWaiting {
    /// The product.
    pub sku: String,
    /// How many units.
    pub units: usize,
    /// When the oldest of them was made (ms).
    pub oldest_ms: u64,
}

fn who(m: &MachineView) -> String {
    if m.name == m.id {
        m.id.clone()
    } else {
        format!("{} ({})", m.name, m.id)
    }
}

fn tool(t: Option<u32>) -> String {
    t.map_or_else(|| "the next tool".into(), |t| format!("tool T{t:02}"))
}

/// A failed job's key: one per attempt, so a job that fails again after
/// a requeue is news.
fn job_key(j: &Job) -> String {
    format!("job:{}:{}", j.id, j.attempt)
}

/// ": <the failure's reason>", or nothing.
fn why(j: &Job) -> String {
    j.failure
        .as_ref()
        .map_or_else(String::new, |f| format!(": {}", f.reason))
}

/// The item of a failed job the operator has not acknowledged and no
/// listed machine already speaks for.
fn job_item(j: &Job, machines: &[MachineView]) -> AttentionItem {
    let what = if j.state == JobState::Interrupted {
        "was interrupted"
    } else {
        "failed"
    };
    let on = j
        .assigned_machine
        .as_deref()
        .map_or_else(String::new, |id| {
            machines
                .iter()
                .find(|m| m.id == id)
                .map_or_else(|| format!(" on {id}"), |m| format!(" on {}", who(m)))
        });
    AttentionItem {
        key: job_key(j),
        kind: AttentionKind::JobFailed,
        machine_id: j.assigned_machine.clone(),
        job_id: Some(j.id),
        sku: None,
        title: format!("Job #{} “{}” {what}{on}{}", j.id, j.name, why(j)),
        action: "Requeue it if it should run again (a file that is gone must be uploaded and \
                 queued anew), or dismiss this once you have seen it."
            .into(),
        since_ms: j.ended_ms.unwrap_or(0),
    }
}

/// One machine's item, if it needs the operator. `held` is the job its
/// hold names, when the core still has it.
fn machine_item(m: &MachineView, held: Option<&Job>) -> Option<AttentionItem> {
    let name = who(m);
    let item = |kind: AttentionKind, key: &str, title: String, action: &str| AttentionItem {
        key: format!("machine:{}:{key}", m.id),
        kind,
        machine_id: Some(m.id.clone()),
        job_id: None,
        sku: None,
        title,
        action: action.to_string(),
        since_ms: m.since_ms,
    };
    match m.machine_state {
        MachineState::Idle | MachineState::Producing | MachineState::PlannedDown => None,
        MachineState::UnplannedDown => {
            let why = m
                .status
                .last_error
                .as_deref()
                .filter(|e| !e.is_empty())
                .map_or_else(String::new, |e| format!(": {e}"));
            Some(item(
                AttentionKind::Faulted,
                "faulted",
                format!("{name} halted{why}"),
                "Check the machine, then recover it from its card (unlock, reset, restart or reconnect).",
            ))
        }
        // A machine still connecting is on its way; one that stays
        // disconnected needs hands.
        MachineState::Offline if m.reason == StateReason::Connecting => None,
        MachineState::Offline => Some(item(
            AttentionKind::Offline,
            "offline",
            format!("{name} is {}", m.reason.words()),
            "Check its cable and power; the daemon reconnects by itself, or press Reconnect.",
        )),
        MachineState::Paused => {
            let job = m.job_id.map_or_else(String::new, |j| format!(" job #{j}"));
            let (key, title, action) = match &m.pause {
                Some(PauseReason::ToolChange { tool: t, line }) => (
                    "tool_change",
                    format!(
                        "{name} paused{job} for a tool change at line {line}: load {}",
                        tool(*t)
                    ),
                    "Load the tool, zero Z on the work, then press Resume.".to_string(),
                ),
                Some(PauseReason::Program { text, line }) => (
                    "program_pause",
                    format!("{name} paused{job} at line {line}: {text}"),
                    "Do what it asks (filament, a check), then press Resume.".to_string(),
                ),
                Some(PauseReason::Operator) | None => (
                    "operator_pause",
                    format!("{name} is paused{job}"),
                    "Press Resume to go on, or cancel the job.".to_string(),
                ),
            };
            // One key per paused job: the next job's tool change is news.
            let key = m
                .job_id
                .map_or_else(|| key.to_string(), |j| format!("{key}:{j}"));
            Some(AttentionItem {
                job_id: m.job_id,
                ..item(AttentionKind::Paused, &key, title, &action)
            })
        }
        MachineState::AwaitingOperator => match (m.reason, held) {
            (StateReason::Failed | StateReason::Interrupted, Some(j)) if j.awaiting_ack => {
                let what = if m.reason == StateReason::Failed {
                    "failed"
                } else {
                    "was interrupted"
                };
                Some(AttentionItem {
                    key: job_key(j),
                    job_id: Some(j.id),
                    ..item(
                        AttentionKind::JobFailed,
                        "",
                        format!("Job #{} “{}” {what} on {name}{}", j.id, j.name, why(j)),
                        "Look at the machine, requeue the job if it should run again, then confirm \
                         the machine is ready (that also takes this off the list).",
                    )
                })
            }
            (reason, _) => {
                let action = if reason == StateReason::BedClear {
                    "Clear the bed, then press Bed cleared."
                } else {
                    "Check the machine, then press Checked: ready for the next job."
                };
                Some(AttentionItem {
                    job_id: m.hold_job_id,
                    ..item(
                        AttentionKind::AwaitingOperator,
                        "awaiting_operator",
                        format!("{name}: {}", reason.words()),
                        action,
                    )
                })
            }
        },
    }
}

/// The attention list: every machine that waits for the operator, every
/// failed or interrupted job not yet acknowledged (`unacknowledged`: the
/// jobs with `awaiting_ack`; one item each, whether or not a machine
/// holds for it), and units awaiting inspection per product; most urgent
/// first, then oldest first. `job` looks a job up by id (the core's live
/// and recent jobs).
pub fn list<'a>(
    machines: &[MachineView],
    job: impl Fn(u64) -> Option<&'a Job>,
    unacknowledged: &[&Job],
    qc: &[QcWaiting],
) -> Vec<AttentionItem> {
    let mut items: Vec<AttentionItem> = machines
        .iter()
        .filter(|m| !m.disabled)
        .filter_map(|m| machine_item(m, m.hold_job_id.and_then(&job)))
        .collect();
    // A machine holding for the job already lists it (with what to do at
    // the machine); the others get an item of their own.
    let listed: std::collections::HashSet<String> = items.iter().map(|i| i.key.clone()).collect();
    items.extend(
        unacknowledged
            .iter()
            .filter(|j| j.awaiting_ack && j.state.is_final())
            .map(|j| job_item(j, machines))
            .filter(|i| !listed.contains(&i.key)),
    );
    items.extend(qc.iter().filter(|q| q.units > 0).map(|q| AttentionItem {
        key: format!("qc:{}", q.sku),
        kind: AttentionKind::AwaitingQc,
        machine_id: None,
        job_id: None,
        sku: Some(q.sku.clone()),
        title: format!(
            "{} {} of {} awaiting inspection",
            q.units,
            if q.units == 1 { "unit" } else { "units" },
            q.sku
        ),
        action: "Inspect them and record pass, fail, rework or scrap.".into(),
        since_ms: q.oldest_ms,
    }));
    items.sort_by(|a, b| (a.kind, a.since_ms, &a.key).cmp(&(b.kind, b.since_ms, &b.key)));
    items
}

#[cfg(test)]
mod tests;
