//! The topics and payloads the daemon publishes, defined once (docs/mqtt.md
//! documents exactly these). Pure: a log record in, messages out.
//!
//! Every payload from the log carries the record's `seq`: publishing is at
//! least once (a chunk is sent again after a broker outage or a restart
//! until the broker acknowledged all of it), so consumers drop a `seq`
//! they have already seen.

use serde::{Deserialize, Serialize};

use crate::core::events::{DomainEvent, LogRecord};
use crate::core::machine::{MachineState, StateChange, StateReason};

/// Every topic of one site.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    prefix: String,
}

impl Topics {
    /// The topics of site `site` (already validated: `[a-z0-9_-]`).
    pub fn new(site: &str) -> Self {
        Self {
            prefix: format!("microfactory/{site}"),
        }
    }

    /// Retained: is the daemon connected (the last will says `false`).
    pub fn status(&self) -> String {
        format!("{}/status", self.prefix)
    }

    /// Retained: one machine's state.
    pub fn machine_state(&self, machine: &str) -> String {
        format!("{}/machines/{machine}/state", self.prefix)
    }

    /// What a machine of our own schema publishes to.
    pub fn machine_report(&self, machine: &str) -> String {
        format!("{}/machines/{machine}/report", self.prefix)
    }

    /// The subscription that catches every machine's report, configured or
    /// not, so that unknown machines are counted rather than unseen.
    pub fn report_filter(&self) -> String {
        format!("{}/machines/+/report", self.prefix)
    }

    /// The machine id of a report topic.
    pub fn report_machine<'a>(&self, topic: &'a str) -> Option<&'a str> {
        let id = topic
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix("/machines/")?
            .strip_suffix("/report")?;
        (!id.is_empty() && !id.contains('/')).then_some(id)
    }

    /// Not retained: one kind of event (`job_queued`, `job_state`,
    /// `attempt_ended`).
    pub fn event(&self, kind: &str) -> String {
        format!("{}/events/{kind}", self.prefix)
    }
}

/// `microfactory/<site>/status`, retained.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SiteStatus {
    /// `false` in the last will, which the broker publishes when the
    /// daemon's connection is lost without a goodbye.
    pub online: bool,
    /// Daemon version (absent in the will).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// When this connection began, ms since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_ms: Option<u64>,
    /// Configured machines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machines: Option<usize>,
}

/// `microfactory/<site>/machines/<id>/state`, retained: the machine state
/// log's last entry for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MachineStatePayload {
    /// The log record that set this state; larger is newer.
    pub seq: u64,
    /// When the machine entered it, ms since the Unix epoch.
    pub at_ms: u64,
    /// Machine id.
    pub machine_id: String,
    /// The state.
    pub state: MachineState,
    /// Why, as a code.
    pub reason: StateReason,
    /// Why, in words ("" when there is nothing to say).
    pub reason_text: String,
    /// The job involved, if any.
    pub job_id: Option<u64>,
}

impl MachineStatePayload {
    /// From an entry of the machine state log.
    pub fn from_change(machine_id: &str, c: &StateChange) -> Self {
        Self {
            seq: c.seq,
            at_ms: c.at_ms,
            machine_id: machine_id.to_string(),
            state: c.state,
            reason: c.reason,
            reason_text: c.reason.words().to_string(),
            job_id: c.job_id,
        }
    }
}

/// `microfactory/<site>/events/<type>`, not retained: the domain event as
/// the log holds it (its `type` and fields), with its `seq` and time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventPayload {
    /// Position in the log; consumers deduplicate by it.
    pub seq: u64,
    /// Commit time, ms since the Unix epoch.
    pub at_ms: u64,
    /// The event (`type` and its fields).
    #[serde(flatten)]
    pub event: DomainEvent,
}

/// One message to publish (always QoS 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Topic.
    pub topic: String,
    /// JSON.
    pub payload: Vec<u8>,
    /// Kept by the broker for late subscribers.
    pub retain: bool,
}

/// The messages one log record stands for: a machine state is retained
/// under the machine; job and attempt events go to their event topic;
/// files are not published.
pub fn messages(topics: &Topics, r: &LogRecord) -> Result<Vec<Message>, serde_json::Error> {
    let kind = match &r.event {
        DomainEvent::MachineState {
            machine_id,
            state,
            reason,
            job_id,
        } => {
            let p = MachineStatePayload::from_change(
                machine_id,
                &StateChange {
                    at_ms: r.at_ms,
                    state: *state,
                    reason: *reason,
                    job_id: *job_id,
                    seq: r.seq,
                },
            );
            return Ok(vec![Message {
                topic: topics.machine_state(machine_id),
                payload: serde_json::to_vec(&p)?,
                retain: true,
            }]);
        }
        DomainEvent::JobQueued { .. } => "job_queued",
        DomainEvent::JobState { .. } => "job_state",
        DomainEvent::AttemptEnded { .. } => "attempt_ended",
        DomainEvent::UnitMade { .. } => "unit_made",
        DomainEvent::UnitInspected { .. } => "unit_inspected",
        DomainEvent::JobReordered { .. }
        | DomainEvent::FileAdded { .. }
        | DomainEvent::FileDeleted { .. } => return Ok(Vec::new()),
        // Commerce (sales orders, stock, shipments) is not on the broker:
        // storefronts follow it by webhook and the inventory API.
        DomainEvent::SalesOrderAccepted { .. }
        | DomainEvent::SalesOrderState { .. }
        | DomainEvent::UnitsAllocated { .. }
        | DomainEvent::UnitsReleased { .. }
        | DomainEvent::ShipmentCreated { .. }
        | DomainEvent::ShipmentShipped { .. }
        | DomainEvent::UnitsReturned { .. }
        | DomainEvent::ReturnInspected { .. }
        | DomainEvent::StockAdjusted { .. }
        | DomainEvent::StockChanged { .. } => return Ok(Vec::new()),
    };
    let p = EventPayload {
        seq: r.seq,
        at_ms: r.at_ms,
        event: r.event.clone(),
    };
    Ok(vec![Message {
        topic: topics.event(kind),
        payload: serde_json::to_vec(&p)?,
        retain: false,
    }])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::model::{AttemptOutcome, JobState};

    #[test]
    fn a_machine_state_is_retained_under_its_machine_with_its_seq() {
        let t = Topics::new("shop");
        let m = messages(
            &t,
            &LogRecord {
                seq: 42,
                at_ms: 1000,
                event: DomainEvent::MachineState {
                    machine_id: "mk3".into(),
                    state: MachineState::Producing,
                    reason: StateReason::None,
                    job_id: Some(7),
                },
            },
        )
        .expect("encodes");
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].topic, "microfactory/shop/machines/mk3/state");
        assert!(m[0].retain);
        let p: MachineStatePayload = serde_json::from_slice(&m[0].payload).expect("decodes");
        assert_eq!(
            (p.seq, p.state, p.job_id),
            (42, MachineState::Producing, Some(7))
        );
    }

    #[test]
    fn job_transitions_and_attempts_are_events_that_are_not_retained() {
        let t = Topics::new("shop");
        let state = LogRecord {
            seq: 5,
            at_ms: 9,
            event: DomainEvent::JobState {
                job_id: 3,
                state: JobState::Running,
                machine_id: Some("mk3".into()),
                attempt: 1,
                pause: None,
                note: None,
            },
        };
        let m = messages(&t, &state).expect("encodes");
        assert_eq!(m[0].topic, "microfactory/shop/events/job_state");
        assert!(!m[0].retain);
        let v: serde_json::Value = serde_json::from_slice(&m[0].payload).expect("json");
        assert_eq!(v["seq"], 5);
        assert_eq!(v["type"], "job_state");
        assert_eq!(v["state"], "running");
        let ended = LogRecord {
            seq: 6,
            at_ms: 9,
            event: DomainEvent::AttemptEnded {
                job_id: 3,
                attempt: 1,
                machine_id: "mk3".into(),
                outcome: AttemptOutcome::Completed,
                lines_done: 10,
            },
        };
        let m = messages(&t, &ended).expect("encodes");
        assert_eq!(m[0].topic, "microfactory/shop/events/attempt_ended");
        let back: EventPayload = serde_json::from_slice(&m[0].payload).expect("round trip");
        assert_eq!(back.event, ended.event);
    }

    #[test]
    fn files_are_not_published() {
        let r = LogRecord {
            seq: 1,
            at_ms: 1,
            event: DomainEvent::FileDeleted {
                file_id: "x".into(),
            },
        };
        assert!(messages(&Topics::new("s"), &r).expect("ok").is_empty());
    }

    #[test]
    fn a_report_topic_names_its_machine_and_nothing_else_does() {
        let t = Topics::new("shop");
        assert_eq!(
            t.report_machine("microfactory/shop/machines/esp-mill/report"),
            Some("esp-mill")
        );
        for other in [
            "microfactory/shop/machines//report",
            "microfactory/shop/machines/a/b/report",
            "microfactory/other/machines/a/report",
            "microfactory/shop/machines/a/state",
        ] {
            assert_eq!(t.report_machine(other), None, "{other}");
        }
    }
}
