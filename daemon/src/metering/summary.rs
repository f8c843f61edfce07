//! Running totals that `/metrics` exposes without reading history: units
//! by SKU and QC state, attempt durations by outcome, serial resends by
//! machine. Pure: the log reader and inspections feed it, and it is stored
//! in the same commit as the records and the cursor it follows, so after a
//! crash or a restart it is exactly what it was (a replay of log records
//! it already holds changes nothing, by `through_seq`). Its size depends
//! on the number of SKUs, outcomes and machines, never on history.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::core::model::{Attempt, AttemptOutcome, QcState};
use crate::metering::model::Unit;

/// Upper bounds of the attempt duration buckets, seconds: a minute to a
/// day, what a print or mill job on a small machine lasts.
pub const DURATION_BUCKETS_S: [u64; 9] = [60, 300, 900, 1800, 3600, 7200, 14_400, 28_800, 86_400];

/// Attempt durations of one outcome.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Durations {
    /// Attempts per bucket of [`DURATION_BUCKETS_S`] (not cumulative),
    /// and one more for longer ones.
    pub buckets: Vec<u64>,
    /// Attempts.
    pub count: u64,
    /// Their total duration, ms (whole: the sum stays exact).
    pub sum_ms: u64,
}

impl Durations {
    /// Counts one attempt of `ms`.
    pub fn observe(&mut self, ms: u64) {
        self.buckets.resize(DURATION_BUCKETS_S.len() + 1, 0);
        let i = DURATION_BUCKETS_S
            .iter()
            .position(|&b| ms <= b * 1000)
            .unwrap_or(DURATION_BUCKETS_S.len());
        self.buckets[i] += 1;
        self.count += 1;
        self.sum_ms += ms;
    }

    /// The buckets as prometheus-client's encoder takes them: (upper
    /// bound in seconds, attempts in that bucket alone), `+Inf` last; the
    /// encoder writes them cumulative.
    pub fn per_bucket(&self) -> Vec<(f64, u64)> {
        let mut out = Vec::with_capacity(DURATION_BUCKETS_S.len() + 1);
        for (i, bound) in DURATION_BUCKETS_S.iter().enumerate() {
            #[allow(clippy::cast_precision_loss)]
            out.push((*bound as f64, self.buckets.get(i).copied().unwrap_or(0)));
        }
        let longer = self
            .buckets
            .get(DURATION_BUCKETS_S.len())
            .copied()
            .unwrap_or(0);
        out.push((f64::INFINITY, longer));
        out
    }
}

/// The running totals.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// The last log record counted.
    pub through_seq: u64,
    /// Units by SKU, then by QC state (its API name).
    pub units: BTreeMap<String, BTreeMap<String, u64>>,
    /// Ended attempts by outcome (`completed`, `failed`, ...).
    pub attempts: BTreeMap<String, Durations>,
    /// Lines sent again after a firmware's resend request, by machine,
    /// over ended attempts.
    pub resends: BTreeMap<String, u64>,
}

fn outcome_name(o: AttemptOutcome) -> &'static str {
    match o {
        AttemptOutcome::Completed => "completed",
        AttemptOutcome::Failed => "failed",
        AttemptOutcome::Cancelled => "cancelled",
        AttemptOutcome::Interrupted => "interrupted",
    }
}

impl Summary {
    /// Counts a new unit.
    pub fn unit_made(&mut self, u: &Unit) {
        *self
            .units
            .entry(u.sku.clone())
            .or_default()
            .entry(u.qc.as_str().to_string())
            .or_default() += 1;
    }

    /// Moves a unit from one QC state to another.
    pub fn unit_inspected(&mut self, sku: &str, from: QcState, to: QcState) {
        let by_state = self.units.entry(sku.to_string()).or_default();
        if let Some(n) = by_state.get_mut(from.as_str()) {
            *n = n.saturating_sub(1);
        }
        *by_state.entry(to.as_str().to_string()).or_default() += 1;
    }

    /// Counts an ended attempt (one without an outcome is not ended).
    pub fn attempt_ended(&mut self, a: &Attempt) {
        let Some(outcome) = a.outcome else { return };
        let start = a.started_ms.unwrap_or(a.assigned_ms);
        let ms = a.ended_ms.unwrap_or(start).saturating_sub(start);
        self.attempts
            .entry(outcome_name(outcome).to_string())
            .or_default()
            .observe(ms);
        if let Some(s) = &a.stats {
            *self.resends.entry(a.machine_id.clone()).or_default() += s.resends;
        }
    }

    /// Units of `sku` in `state`.
    pub fn units_of(&self, sku: &str, state: QcState) -> u64 {
        self.units
            .get(sku)
            .and_then(|m| m.get(state.as_str()))
            .copied()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn attempt(outcome: AttemptOutcome, ms: u64) -> Attempt {
        Attempt {
            job_id: 1,
            n: 1,
            machine_id: "m".into(),
            start_line: 1,
            assigned_ms: 0,
            started_ms: Some(1000),
            ended_ms: Some(1000 + ms),
            outcome: Some(outcome),
            failure: None,
            lines_done: 1,
            last_acked_line: 1,
            stats: None,
        }
    }

    #[test]
    fn an_attempt_lands_in_the_first_bucket_that_holds_it_and_the_buckets_add_up() {
        let mut s = Summary::default();
        s.attempt_ended(&attempt(AttemptOutcome::Completed, 60_000));
        s.attempt_ended(&attempt(AttemptOutcome::Completed, 60_001));
        s.attempt_ended(&attempt(AttemptOutcome::Completed, 100_000_000));
        s.attempt_ended(&attempt(AttemptOutcome::Failed, 5));
        let done = &s.attempts["completed"];
        assert_eq!((done.count, done.sum_ms), (3, 100_120_001));
        let c = done.per_bucket();
        assert_eq!(c[0], (60.0, 1), "60 s is inside the 60 s bucket");
        assert_eq!(c[1], (300.0, 1));
        assert_eq!(c[8], (86_400.0, 0));
        assert_eq!(c[9], (f64::INFINITY, 1), "a day and more: only in +Inf");
        assert_eq!(s.attempts["failed"].count, 1);
    }

    #[test]
    fn an_inspection_moves_a_unit_between_states() {
        let mut s = Summary::default();
        s.unit_inspected("a", QcState::Pending, QcState::Pass);
        assert_eq!(s.units_of("a", QcState::Pass), 1);
        assert_eq!(s.units_of("a", QcState::Pending), 0, "never below zero");
    }

    proptest! {
        #[test]
        fn the_buckets_add_up_to_the_count_and_the_sum_is_exact(
            durations in proptest::collection::vec(0u64..200_000_000, 0..50)
        ) {
            let mut d = Durations::default();
            for ms in &durations {
                d.observe(*ms);
            }
            let c = d.per_bucket();
            prop_assert_eq!(c.iter().map(|x| x.1).sum::<u64>(), durations.len() as u64);
            prop_assert!(c.windows(2).all(|w| w[0].0 < w[1].0));
            prop_assert_eq!(d.sum_ms, durations.iter().sum::<u64>());
        }
    }
}
