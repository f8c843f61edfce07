//! The topics and payloads the daemon publishes, defined once (docs/mqtt.md
//! documents exactly these). Pure: a log record in, messages out.
//!
//! Every payload from the log carries the record's `seq`: publishing is at
//! least once (a chunk is sent again after a broker outage or a restart
//! until the broker acknowledged all of it), so consumers drop a `seq`
//! they have already seen.

use std::collections::HashMap;

use microfactory_machines::driver::MachineStatus;
use serde::{Deserialize, Serialize};

use crate::core::events::{DomainEvent, LogRecord};
use crate::core::machine::{MachineState, StateChange, StateReason};
use crate::metering::ApcResult;

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

    /// Retained: one product's finished-goods levels (SKUs are
    /// `[A-Za-z0-9._-]`, safe in a topic).
    pub fn inventory(&self, sku: &str) -> String {
        format!("{}/inventory/{sku}", self.prefix)
    }

    /// Retained: the APC verdict of one (SKU, machine class).
    pub fn apc(&self, sku: &str, class: &str) -> String {
        format!("{}/apc/{sku}/{class}", self.prefix)
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
    /// What the machine reports now (progress, temperatures, position),
    /// refreshed at most every `progress_interval_ms` with the same `seq`;
    /// absent in the message a state change sends first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live: Option<Live>,
}

/// A machine's readings, throttled into its retained state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Live {
    /// When these readings were taken, ms since the Unix epoch.
    pub updated_ms: u64,
    /// The running job as the machine names it (our job id for a serial
    /// machine, the file name for an MQTT one).
    pub job: Option<String>,
    /// Share of the job done, percent, one decimal.
    pub progress: Option<f64>,
    /// Seconds left, whole.
    pub eta_seconds: Option<f64>,
    /// Heaters, °C with one decimal.
    #[serde(default)]
    pub heaters: Vec<LiveHeater>,
    /// Work position (mills), mm.
    pub position: Option<[f64; 3]>,
}

/// One heater's reading.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LiveHeater {
    /// `T0`, `B`, …
    pub name: String,
    /// Now.
    pub actual: f64,
    /// Set point.
    pub target: f64,
}

fn tenth(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

impl Live {
    /// The readings of `s`, rounded so that noise below what a person
    /// reads (a hundredth of a degree) does not count as a change.
    /// `updated_ms` is left 0: [`Throttle::due`] stamps what it publishes.
    pub fn from_status(s: &MachineStatus) -> Self {
        Self {
            updated_ms: 0,
            job: s.job.as_ref().map(|j| j.job_id.clone()),
            progress: s.job.as_ref().map(|j| tenth(j.percent)),
            eta_seconds: s.job.as_ref().and_then(|j| j.eta_seconds).map(f64::round),
            heaters: s
                .heaters
                .iter()
                .map(|h| LiveHeater {
                    name: h.name.clone(),
                    actual: tenth(h.actual),
                    target: tenth(h.target),
                })
                .collect(),
            position: s.position.map(|p| p.map(|v| (v * 1000.0).round() / 1000.0)),
        }
    }
}

/// Which machines' readings to publish now: a machine's changed readings
/// go out at most once per `interval_ms`, and the last change is never
/// held back longer than that (pure: the caller passes `now`).
#[derive(Debug, Clone, Default)]
pub struct Throttle {
    interval_ms: u64,
    /// Per machine: what was published last (without its stamp) and when.
    sent: HashMap<String, (Live, u64)>,
}

impl Throttle {
    /// At most one update per machine per `interval_ms`.
    pub fn new(interval_ms: u64) -> Self {
        Self {
            interval_ms,
            sent: HashMap::new(),
        }
    }

    /// `Some(readings stamped now)` when `live` differs from what was
    /// published for `machine` and the interval since then has passed;
    /// the caller publishes it (the throttle counts it as sent).
    pub fn due(&mut self, machine: &str, live: &Live, now_ms: u64) -> Option<Live> {
        let mut bare = live.clone();
        bare.updated_ms = 0;
        if let Some((last, at)) = self.sent.get(machine)
            && (*last == bare || now_ms.saturating_sub(*at) < self.interval_ms)
        {
            return None;
        }
        self.sent
            .insert(machine.to_string(), (bare.clone(), now_ms));
        bare.updated_ms = now_ms;
        Some(bare)
    }

    /// Forget what was sent for `machine`: its retained state was just
    /// replaced by a state change without readings, so the next readings
    /// go out at once, whatever they are.
    pub fn replaced(&mut self, machine: &str) {
        self.sent.remove(machine);
    }
}

/// `microfactory/<site>/inventory/<sku>`, retained: a product's
/// finished-goods levels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InventoryPayload {
    /// The log record of the change; absent when the levels are sent
    /// again at a new connection (then `version` orders them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// When the change was committed (at a new connection: when sent).
    pub at_ms: u64,
    /// Product.
    pub sku: String,
    /// Units here, reserved and unavailable ones included.
    pub on_hand: i64,
    /// Reserved for orders.
    pub committed: i64,
    /// QC pending, damaged, returned awaiting inspection.
    pub unavailable: i64,
    /// What a storefront may sell.
    pub available: i64,
    /// The inventory cursor of this change: larger is newer (consumers
    /// keep the largest).
    pub version: u64,
}

/// `microfactory/<site>/apc/<sku>/<class>`, retained: the verdict as
/// `GET /api/v1/apc` shows it for the whole history, with when it was
/// computed.
#[derive(Debug, Clone, Serialize)]
pub struct ApcPayload<'a> {
    /// When the verdict was computed, ms since the Unix epoch.
    pub at_ms: u64,
    /// The verdict with its criteria and inputs.
    #[serde(flatten)]
    pub result: &'a ApcResult,
}

/// The message of one APC verdict.
pub fn apc_message(
    topics: &Topics,
    result: &ApcResult,
    at_ms: u64,
) -> Result<Message, serde_json::Error> {
    Ok(Message {
        topic: topics.apc(&result.sku, &result.class),
        payload: serde_json::to_vec(&ApcPayload { at_ms, result })?,
        retain: true,
    })
}

/// The message of one product's levels.
pub fn inventory_message(
    topics: &Topics,
    p: &InventoryPayload,
) -> Result<Message, serde_json::Error> {
    Ok(Message {
        topic: topics.inventory(&p.sku),
        payload: serde_json::to_vec(p)?,
        retain: true,
    })
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
            live: None,
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

/// The retained state a machine-state record stands for (none for other
/// records).
pub fn machine_state(r: &LogRecord) -> Option<MachineStatePayload> {
    let DomainEvent::MachineState {
        machine_id,
        state,
        reason,
        job_id,
    } = &r.event
    else {
        return None;
    };
    Some(MachineStatePayload::from_change(
        machine_id,
        &StateChange {
            at_ms: r.at_ms,
            state: *state,
            reason: *reason,
            job_id: *job_id,
            seq: r.seq,
        },
    ))
}

/// The messages one log record stands for: a machine state is retained
/// under the machine; job and attempt events go to their event topic;
/// files are not published.
pub fn messages(topics: &Topics, r: &LogRecord) -> Result<Vec<Message>, serde_json::Error> {
    if let Some(p) = machine_state(r) {
        return Ok(vec![Message {
            topic: topics.machine_state(&p.machine_id),
            payload: serde_json::to_vec(&p)?,
            retain: true,
        }]);
    }
    let kind = match &r.event {
        DomainEvent::MachineState { .. } => return Ok(Vec::new()),
        DomainEvent::JobQueued { .. } => "job_queued",
        DomainEvent::JobState { .. } => "job_state",
        DomainEvent::AttemptEnded { .. } => "attempt_ended",
        DomainEvent::UnitMade { .. } => "unit_made",
        DomainEvent::UnitInspected { .. } => "unit_inspected",
        DomainEvent::JobReordered { .. }
        | DomainEvent::FileAdded { .. }
        | DomainEvent::FileDeleted { .. } => return Ok(Vec::new()),
        // Sales orders, stock moves and shipments are not on the broker:
        // storefronts follow them by webhook and the inventory API.
        DomainEvent::SalesOrderAccepted { .. }
        | DomainEvent::SalesOrderState { .. }
        | DomainEvent::UnitsAllocated { .. }
        | DomainEvent::UnitsReleased { .. }
        | DomainEvent::ShipmentCreated { .. }
        | DomainEvent::ShipmentShipped { .. }
        | DomainEvent::UnitsReturned { .. }
        | DomainEvent::ReturnInspected { .. }
        | DomainEvent::StockAdjusted { .. } => return Ok(Vec::new()),
        // Per-SKU levels are retained under the product.
        DomainEvent::StockChanged {
            sku,
            on_hand,
            committed,
            unavailable,
            available,
            version,
        } => {
            return Ok(vec![inventory_message(
                topics,
                &InventoryPayload {
                    seq: Some(r.seq),
                    at_ms: r.at_ms,
                    sku: sku.clone(),
                    on_hand: *on_hand,
                    committed: *committed,
                    unavailable: *unavailable,
                    available: *available,
                    version: *version,
                },
            )?]);
        }
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

    fn live(progress: f64) -> Live {
        Live {
            job: Some("7".into()),
            progress: Some(progress),
            ..Live::default()
        }
    }

    #[test]
    fn readings_go_out_at_once_then_at_most_once_per_interval_and_only_when_changed() {
        let mut t = Throttle::new(1000);
        let first = t.due("mk3", &live(1.0), 10_000).expect("first readings");
        assert_eq!(first.updated_ms, 10_000);
        assert_eq!(
            t.due("mk3", &live(2.0), 10_500),
            None,
            "within the interval"
        );
        assert_eq!(
            t.due("other", &live(2.0), 10_500).map(|l| l.updated_ms),
            Some(10_500)
        );
        assert_eq!(
            t.due("mk3", &live(2.0), 11_000).and_then(|l| l.progress),
            Some(2.0)
        );
        assert_eq!(t.due("mk3", &live(2.0), 20_000), None, "unchanged");
        t.replaced("mk3");
        assert!(
            t.due("mk3", &live(2.0), 20_001).is_some(),
            "after a state change"
        );
    }

    #[test]
    fn readings_are_rounded_so_sensor_noise_is_no_change() {
        let mut s = MachineStatus::default();
        s.heaters.push(microfactory_machines::driver::Heater {
            name: "T0".into(),
            actual: 215.04,
            target: 215.0,
        });
        let a = Live::from_status(&s);
        s.heaters[0].actual = 214.96;
        assert_eq!(a, Live::from_status(&s));
        assert_eq!(a.heaters[0].actual, 215.0);
    }

    proptest::proptest! {
        #[test]
        fn no_two_readings_of_a_machine_within_the_interval_and_the_last_one_is_not_lost(
            steps in proptest::collection::vec((0u64..700, 0u8..4), 1..60),
            interval in 1u64..2000,
        ) {
            let mut t = Throttle::new(interval);
            let mut now = 0u64;
            let mut sent: Vec<(u64, Live)> = Vec::new();
            let mut latest = live(0.0);
            for (dt, p) in steps {
                now += dt;
                latest = live(f64::from(p));
                if let Some(l) = t.due("m", &latest, now) {
                    sent.push((now, l));
                }
            }
            for w in sent.windows(2) {
                proptest::prop_assert!(w[1].0 - w[0].0 >= interval);
            }
            // Asked again once the interval has passed, the latest
            // readings are what was (or now is) published.
            let last = t
                .due("m", &latest, now + interval)
                .or_else(|| sent.last().map(|(_, l)| l.clone()))
                .expect("something was published");
            proptest::prop_assert_eq!(last.progress, latest.progress);
        }
    }

    #[test]
    fn stock_levels_are_retained_under_their_product_with_the_inventory_version() {
        let m = messages(
            &Topics::new("shop"),
            &LogRecord {
                seq: 9,
                at_ms: 5,
                event: DomainEvent::StockChanged {
                    sku: "hook-1".into(),
                    on_hand: 4,
                    committed: 1,
                    unavailable: 1,
                    available: 2,
                    version: 17,
                },
            },
        )
        .expect("encodes");
        assert_eq!(m[0].topic, "microfactory/shop/inventory/hook-1");
        assert!(m[0].retain);
        let p: InventoryPayload = serde_json::from_slice(&m[0].payload).expect("decodes");
        assert_eq!(
            (p.seq, p.available, p.version, p.on_hand),
            (Some(9), 2, 17, 4)
        );
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
