//! `GET /metrics`: one scrape's values in the Prometheus (OpenMetrics)
//! text format, encoded by `prometheus-client` so the format is the
//! crate's, not ours. Pure: [`Scrape`] is gathered by the shell
//! ([`crate::metering::Metering::scrape`]) and encoded here as a
//! collector, read once per scrape: every value comes from the store or
//! the running totals at that moment, so a restarted daemon exposes the
//! same numbers it exposed before.

use std::fmt::Write as _;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::core::machine::MachineState;
use crate::core::model::QcState;
use crate::metering::apc::Verdict;
use crate::metering::oee::Figures;
use crate::metering::summary::Summary;

/// The content type of the exposition.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// How far back the OEE gauges look, ms: the last day.
pub const OEE_WINDOW_MS: u64 = 24 * 3_600_000;

/// One machine as `/metrics` shows it.
#[derive(Debug, Clone)]
pub struct MachineRow {
    /// Its id.
    pub id: String,
    /// Its class.
    pub class: String,
    /// Its state now (`None`: never recorded).
    pub state: Option<MachineState>,
}

/// Everything one scrape exposes.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    /// Units, attempts and resends.
    pub summary: Summary,
    /// Machines, in configuration order.
    pub machines: Vec<MachineRow>,
    /// OEE figures per machine class over the last [`OEE_WINDOW_MS`].
    pub oee: Vec<(String, Figures)>,
    /// The APC verdict per (SKU, class), over all history.
    pub apc: Vec<(String, String, Verdict)>,
    /// Jobs waiting in the queue.
    pub queue_depth: u64,
    /// Durable log records each reader has not handled yet.
    pub log_lag: Vec<(String, u64)>,
    /// The MQTT broker link, with `[mqtt]`.
    pub broker: Option<BrokerLink>,
}

/// The broker link's figures, as `GET /metrics` shows them: an alert on a
/// link that is down, a reconnect rate, refused machine messages.
#[derive(Debug, Clone, Default)]
pub struct BrokerLink {
    /// The link is up.
    pub connected: bool,
    /// Connection attempts failed or connections lost.
    pub failures: u64,
    /// The last log record the broker acknowledged.
    pub published_seq: u64,
    /// Machine messages read, by result.
    pub messages: Vec<(&'static str, u64)>,
}

const STATES: [(MachineState, &str); 7] = [
    (MachineState::Offline, "offline"),
    (MachineState::Idle, "idle"),
    (MachineState::Producing, "producing"),
    (MachineState::Paused, "paused"),
    (MachineState::AwaitingOperator, "awaiting_operator"),
    (MachineState::PlannedDown, "planned_down"),
    (MachineState::UnplannedDown, "unplanned_down"),
];

const QC: [QcState; 5] = [
    QcState::Pending,
    QcState::Pass,
    QcState::Fail,
    QcState::Rework,
    QcState::Scrap,
];

const VERDICTS: [(Verdict, &str); 3] = [
    (Verdict::Pass, "pass"),
    (Verdict::Fail, "fail"),
    (Verdict::InsufficientData, "insufficient_data"),
];

type Labels = Vec<(&'static str, String)>;

/// One family: its descriptor, then each labelled sample.
fn family<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    metric_type: MetricType,
    samples: impl IntoIterator<Item = (Labels, M)>,
) -> Result<(), std::fmt::Error> {
    let mut e = encoder.encode_descriptor(name, help, None, metric_type)?;
    for (labels, m) in samples {
        m.encode(e.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let units = self.summary.units.keys().flat_map(|sku| {
            QC.iter().map(move |q| {
                (
                    vec![("sku", sku.clone()), ("qc", q.as_str().to_string())],
                    ConstGauge::new(
                        i64::try_from(self.summary.units_of(sku, *q)).unwrap_or(i64::MAX),
                    ),
                )
            })
        });
        family(
            &mut enc,
            "microfactory_units",
            "Units made, by SKU and current QC state (units of failed or cancelled attempts are scrap).",
            MetricType::Gauge,
            units,
        )?;
        let mut e = enc.encode_descriptor(
            "microfactory_attempt_duration_seconds",
            "Duration of ended job attempts, first streamed line to end, by outcome.",
            None,
            MetricType::Histogram,
        )?;
        for (outcome, d) in &self.summary.attempts {
            #[allow(clippy::cast_precision_loss)]
            let sum = d.sum_ms as f64 / 1000.0;
            e.encode_family(&vec![("outcome", outcome.clone())])?
                .encode_histogram::<Labels>(sum, d.count, &d.per_bucket(), None)?;
        }
        family(
            &mut enc,
            "microfactory_serial_resends",
            "Lines sent again after a firmware resend request, over ended attempts.",
            MetricType::Counter,
            self.summary
                .resends
                .iter()
                .map(|(m, n)| (vec![("machine", m.clone())], ConstCounter::new(*n))),
        )?;
        family(
            &mut enc,
            "microfactory_machine_state",
            "1 for the state each machine is in now, 0 for the others.",
            MetricType::Gauge,
            self.machines.iter().flat_map(|m| {
                STATES.iter().map(move |(s, name)| {
                    (
                        vec![
                            ("machine", m.id.clone()),
                            ("class", m.class.clone()),
                            ("state", (*name).to_string()),
                        ],
                        ConstGauge::new(i64::from(m.state == Some(*s))),
                    )
                })
            }),
        )?;
        family(
            &mut enc,
            "microfactory_oee",
            "ISO 22400 OEE and its components per machine class over the last 24 hours \
             (absent where a denominator is zero).",
            MetricType::Gauge,
            self.oee.iter().flat_map(|(class, f)| {
                [
                    ("availability", f.availability),
                    ("effectiveness", f.effectiveness),
                    ("quality_ratio", f.quality_ratio),
                    ("oee", f.oee),
                ]
                .into_iter()
                .filter_map(move |(component, v)| {
                    v.map(|v| {
                        (
                            vec![
                                ("class", class.clone()),
                                ("component", component.to_string()),
                            ],
                            ConstGauge::new(v),
                        )
                    })
                })
            }),
        )?;
        family(
            &mut enc,
            "microfactory_apc_verdict",
            "1 for the APC verdict of each configured (SKU, machine class), 0 for the others.",
            MetricType::Gauge,
            self.apc.iter().flat_map(|(sku, class, verdict)| {
                VERDICTS.iter().map(move |(v, name)| {
                    (
                        vec![
                            ("sku", sku.clone()),
                            ("class", class.clone()),
                            ("verdict", (*name).to_string()),
                        ],
                        ConstGauge::new(i64::from(verdict == v)),
                    )
                })
            }),
        )?;
        family(
            &mut enc,
            "microfactory_queue_depth",
            "Jobs waiting in the queue.",
            MetricType::Gauge,
            [(
                Vec::new(),
                ConstGauge::new(i64::try_from(self.queue_depth).unwrap_or(i64::MAX)),
            )],
        )?;
        family(
            &mut enc,
            "microfactory_log_lag_records",
            "Durable domain-log records a reader (metering, MQTT) has not handled yet.",
            MetricType::Gauge,
            self.log_lag.iter().map(|(reader, lag)| {
                (
                    vec![("reader", reader.clone())],
                    ConstGauge::new(i64::try_from(*lag).unwrap_or(i64::MAX)),
                )
            }),
        )?;
        if let Some(b) = &self.broker {
            let gauge = |n: u64| ConstGauge::new(i64::try_from(n).unwrap_or(i64::MAX));
            family(
                &mut enc,
                "microfactory_mqtt_connected",
                "The MQTT broker link is up.",
                MetricType::Gauge,
                [(Vec::new(), gauge(u64::from(b.connected)))],
            )?;
            family(
                &mut enc,
                "microfactory_mqtt_failures",
                "Broker connection attempts failed or connections lost.",
                MetricType::Counter,
                [(Vec::new(), ConstCounter::new(b.failures))],
            )?;
            family(
                &mut enc,
                "microfactory_mqtt_published_seq",
                "The last log record the broker acknowledged.",
                MetricType::Gauge,
                [(Vec::new(), gauge(b.published_seq))],
            )?;
            family(
                &mut enc,
                "microfactory_mqtt_messages",
                "Machine messages read, by result.",
                MetricType::Counter,
                b.messages.iter().map(|(result, n)| {
                    (
                        vec![("result", (*result).to_string())],
                        ConstCounter::new(*n),
                    )
                }),
            )?;
        }
        Ok(())
    }
}

/// The scrape in the text format.
pub fn render(scrape: Scrape) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(scrape));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)?;
    Ok(out)
}

/// A plain-text body for a failed scrape (never expected: encoding into a
/// `String` cannot fail).
pub fn failure(e: &std::fmt::Error) -> String {
    let mut s = String::new();
    let _ = write!(s, "# encoding failed: {e}");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::model::{Attempt, AttemptOutcome};

    #[test]
    fn a_scrape_is_written_in_the_text_format_with_every_family() {
        let mut summary = Summary::default();
        let attempt = Attempt {
            job_id: 1,
            n: 1,
            machine_id: "m".into(),
            start_line: 1,
            assigned_ms: 0,
            started_ms: Some(0),
            ended_ms: Some(90_000),
            outcome: Some(AttemptOutcome::Completed),
            failure: None,
            lines_done: 1,
            last_acked_line: 1,
            stats: None,
        };
        summary.attempt_ended(&attempt);
        summary.attempt_ended(&Attempt {
            ended_ms: Some(30_000),
            ..attempt
        });
        summary.unit_inspected("tile", QcState::Pending, QcState::Pass);
        let text = render(Scrape {
            summary,
            machines: vec![MachineRow {
                id: "m".into(),
                class: "fdm_printer".into(),
                state: Some(MachineState::Idle),
            }],
            queue_depth: 3,
            log_lag: vec![("metering".into(), 2)],
            ..Scrape::default()
        })
        .expect("render");
        for line in [
            "microfactory_units{sku=\"tile\",qc=\"pass\"} 1",
            "microfactory_attempt_duration_seconds_count{outcome=\"completed\"} 2",
            "microfactory_attempt_duration_seconds_sum{outcome=\"completed\"} 120.0",
            "microfactory_attempt_duration_seconds_bucket{le=\"60.0\",outcome=\"completed\"} 1",
            "microfactory_attempt_duration_seconds_bucket{le=\"300.0\",outcome=\"completed\"} 2",
            "microfactory_attempt_duration_seconds_bucket{le=\"86400.0\",outcome=\"completed\"} 2",
            "microfactory_attempt_duration_seconds_bucket{le=\"+Inf\",outcome=\"completed\"} 2",
            "microfactory_machine_state{machine=\"m\",class=\"fdm_printer\",state=\"idle\"} 1",
            "microfactory_queue_depth 3",
            "microfactory_log_lag_records{reader=\"metering\"} 2",
        ] {
            assert!(text.lines().any(|l| l == line), "no line {line} in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
