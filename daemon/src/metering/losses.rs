//! Losses as a Pareto, pure: where the planned time went that did not
//! produce (downtime by state and reason, from the machine state log) and
//! why units were scrapped (by QC reason code). Each list is sorted
//! largest first with its share and cumulative share, so the few reasons
//! that cost the most stand at the top. Window and `now` are passed in.
//!
//! Downtime is every span whose time element ([`oee::element`]) is setup,
//! delay or down, clipped to the window exactly as [`oee::time_elements`]
//! clips it, so the downtime total equals ASUT + ADET + ADOT of the same
//! window and scope. Scrap counts the units made in the window whose QC
//! state is `fail` or `scrap`, by the reason of the inspection that put
//! them there (`attempt_failed` / `attempt_cancelled` for the units of a
//! failed or cancelled attempt; `unspecified` when none was given), so
//! its total equals the window's scrap quantity.

use serde::Serialize;
use utoipa::ToSchema;

use crate::core::machine::{MachineState, StateChange, StateReason};
use crate::metering::model::{QcState, Unit};
use crate::metering::oee::{self, Element, Window};

/// The scrap reason of a unit inspected without one.
pub const UNSPECIFIED: &str = "unspecified";

/// One downtime reason of the Pareto.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct DowntimeLoss {
    /// The machine state.
    pub state: MachineState,
    /// Why it was in it.
    pub reason: StateReason,
    /// The ISO 22400 element the time counts in: setup, delay or down.
    pub element: Element,
    /// Time in the window, ms.
    pub ms: u64,
    /// Spans (entries into this state and reason) that overlap the window.
    pub spans: u64,
    /// `ms` ÷ the downtime total.
    pub share: f64,
    /// The shares of this and every larger reason above it.
    pub cumulative_share: f64,
}

/// One scrap reason of the Pareto.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct ScrapLoss {
    /// The QC reason code.
    pub reason: String,
    /// Units scrapped or failed for it.
    pub units: u64,
    /// `units` ÷ the scrap total.
    pub share: f64,
    /// The shares of this and every larger reason above it.
    pub cumulative_share: f64,
}

/// Both Paretos of a window with their totals.
#[derive(Debug, Clone, Default, PartialEq, Serialize, ToSchema)]
pub struct Losses {
    /// Downtime by (state, reason), largest first.
    pub downtime: Vec<DowntimeLoss>,
    /// The sum of `downtime`, ms (ASUT + ADET + ADOT).
    pub downtime_total_ms: u64,
    /// Scrap by reason, largest first.
    pub scrap: Vec<ScrapLoss>,
    /// The sum of `scrap` (the scrap quantity).
    pub scrap_total: u64,
}

/// Downtime of the state logs being added up, before sorting.
#[derive(Debug, Clone, Default)]
pub struct DowntimeTally(Vec<(MachineState, StateReason, u64, u64)>);

impl DowntimeTally {
    /// Adds one machine's downtime over `w`: `changes` oldest first, the
    /// first the state in force at `w.from_ms` (as for
    /// [`oee::time_elements`]); the last lasts until `now_ms`; only the
    /// spans `counts` picks.
    pub fn add(
        &mut self,
        changes: &[StateChange],
        w: Window,
        now_ms: u64,
        counts: impl Fn(&StateChange) -> bool,
    ) {
        let w = Window {
            from_ms: w.from_ms,
            to_ms: w.to_ms.min(now_ms).max(w.from_ms),
        };
        for (i, c) in changes.iter().enumerate() {
            let end = changes.get(i + 1).map_or(w.to_ms, |n| n.at_ms);
            let lost = matches!(
                oee::element(c.state, c.reason),
                Element::Setup | Element::Delay | Element::Down
            );
            let d = w.overlap(c.at_ms, end);
            if !lost || d == 0 || !counts(c) {
                continue;
            }
            match self
                .0
                .iter_mut()
                .find(|(s, r, _, _)| *s == c.state && *r == c.reason)
            {
                Some(e) => {
                    e.2 += d;
                    e.3 += 1;
                }
                None => self.0.push((c.state, c.reason, d, 1)),
            }
        }
    }
}

/// Shares of `amounts` sorted largest first (ties by `key`), with the
/// total; `(index into amounts, share, cumulative share)`.
fn pareto<K: Ord>(amounts: &[(K, u64)]) -> (Vec<(usize, f64, f64)>, u64) {
    let total: u64 = amounts.iter().map(|(_, a)| a).sum();
    let mut order: Vec<usize> = (0..amounts.len()).collect();
    order.sort_by(|&a, &b| {
        amounts[b]
            .1
            .cmp(&amounts[a].1)
            .then_with(|| amounts[a].0.cmp(&amounts[b].0))
    });
    let mut run = 0;
    // Counts and milliseconds stay far below 2^53: the conversion is exact.
    #[allow(clippy::cast_precision_loss)]
    let rows = order
        .into_iter()
        .map(|i| {
            run += amounts[i].1;
            let share = amounts[i].1 as f64 / total as f64;
            (i, share, run as f64 / total as f64)
        })
        .collect();
    (rows, total)
}

/// The scrap reason of a unit: its last inspection's that failed or
/// scrapped it.
fn scrap_reason(u: &Unit) -> &str {
    u.qc_history
        .iter()
        .rev()
        .find(|r| matches!(r.result, QcState::Fail | QcState::Scrap))
        .and_then(|r| r.reason.as_deref())
        .unwrap_or(UNSPECIFIED)
}

/// The Paretos of `downtime` and of the units of `units` that ended in
/// `w` and that `keep` selects.
pub fn losses<'a>(
    downtime: DowntimeTally,
    units: impl IntoIterator<Item = &'a Unit>,
    w: Window,
    keep: impl Fn(&Unit) -> bool,
) -> Losses {
    let keyed: Vec<((&'static str, &'static str), u64)> = downtime
        .0
        .iter()
        .map(|(s, r, ms, _)| ((state_code(*s), reason_code(*r)), *ms))
        .collect();
    let (rows, downtime_total_ms) = pareto(&keyed);
    let downtime_rows = rows
        .into_iter()
        .map(|(i, share, cumulative_share)| {
            let (state, reason, ms, spans) = downtime.0[i];
            DowntimeLoss {
                state,
                reason,
                element: oee::element(state, reason),
                ms,
                spans,
                share,
                cumulative_share,
            }
        })
        .collect();
    let mut by_reason: Vec<(String, u64)> = Vec::new();
    for u in units {
        if !w.contains(u.ended_ms) || !matches!(u.qc, QcState::Fail | QcState::Scrap) || !keep(u) {
            continue;
        }
        let r = scrap_reason(u);
        match by_reason.iter_mut().find(|(k, _)| k == r) {
            Some(e) => e.1 += 1,
            None => by_reason.push((r.to_string(), 1)),
        }
    }
    let (rows, scrap_total) = pareto(&by_reason);
    let scrap = rows
        .into_iter()
        .map(|(i, share, cumulative_share)| ScrapLoss {
            reason: by_reason[i].0.clone(),
            units: by_reason[i].1,
            share,
            cumulative_share,
        })
        .collect();
    Losses {
        downtime: downtime_rows,
        downtime_total_ms,
        scrap,
        scrap_total,
    }
}

/// A stable sort key for a state (its JSON name).
fn state_code(s: MachineState) -> &'static str {
    match s {
        MachineState::Offline => "offline",
        MachineState::Idle => "idle",
        MachineState::Producing => "producing",
        MachineState::Paused => "paused",
        MachineState::AwaitingOperator => "awaiting_operator",
        MachineState::PlannedDown => "planned_down",
        MachineState::UnplannedDown => "unplanned_down",
    }
}

/// A stable sort key for a reason (its JSON name).
fn reason_code(r: StateReason) -> &'static str {
    match r {
        StateReason::None => "none",
        StateReason::Disconnected => "disconnected",
        StateReason::Connecting => "connecting",
        StateReason::Fault => "fault",
        StateReason::Disabled => "disabled",
        StateReason::BedClear => "bed_clear",
        StateReason::Interrupted => "interrupted",
        StateReason::Cancelled => "cancelled",
        StateReason::Failed => "failed",
        StateReason::Halted => "halted",
        StateReason::OperatorPause => "operator_pause",
        StateReason::ToolChange => "tool_change",
        StateReason::ProgramPause => "program_pause",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metering::model::QcRecord;
    use proptest::prelude::*;

    const M: u64 = 60_000;

    fn ch(at_ms: u64, state: MachineState, reason: StateReason, job: Option<u64>) -> StateChange {
        StateChange {
            at_ms,
            state,
            reason,
            job_id: job,
            seq: 0,
        }
    }

    fn unit(n: u64, ended_ms: u64, qc: QcState, reason: Option<&str>) -> Unit {
        let qc_history = if qc == QcState::Pending {
            vec![]
        } else {
            vec![QcRecord {
                at_ms: ended_ms,
                result: qc,
                reason: reason.map(str::to_string),
                note: None,
                by: "op".into(),
            }]
        };
        Unit {
            qc,
            qc_history,
            ..Unit::sample(n, ended_ms)
        }
    }

    use MachineState as S;
    use StateReason as R;

    #[test]
    fn downtime_is_clipped_to_the_window_and_sorted_largest_first_with_its_shares() {
        // Window 60 min .. 170 min. A fault from 30 min to 90 min (30 min
        // inside), producing to 100, bed clear to 110, a pause 110..130,
        // producing to 150, a second fault from 150 running past the end
        // (20 min inside); offline is after the window (200).
        let log = [
            ch(30 * M, S::UnplannedDown, R::Fault, None),
            ch(90 * M, S::Producing, R::None, Some(1)),
            ch(100 * M, S::AwaitingOperator, R::BedClear, None),
            ch(110 * M, S::Paused, R::OperatorPause, Some(1)),
            ch(130 * M, S::Producing, R::None, Some(1)),
            ch(150 * M, S::UnplannedDown, R::Fault, None),
            ch(200 * M, S::Offline, R::Disconnected, None),
        ];
        let w = Window {
            from_ms: 60 * M,
            to_ms: 170 * M,
        };
        let mut t = DowntimeTally::default();
        t.add(&log, w, u64::MAX, |_| true);
        let l = losses(t, [], w, |_| true);
        assert_eq!(l.downtime_total_ms, 80 * M);
        let rows: Vec<_> = l
            .downtime
            .iter()
            .map(|d| (d.state, d.reason, d.element, d.ms / M, d.spans))
            .collect();
        assert_eq!(
            rows,
            vec![
                (S::UnplannedDown, R::Fault, Element::Down, 50, 2),
                (S::Paused, R::OperatorPause, Element::Delay, 20, 1),
                (S::AwaitingOperator, R::BedClear, Element::Setup, 10, 1),
            ]
        );
        let shares: Vec<_> = l
            .downtime
            .iter()
            .map(|d| (d.share, d.cumulative_share))
            .collect();
        assert_eq!(shares, vec![(0.625, 0.625), (0.25, 0.875), (0.125, 1.0)]);
        assert!(l.scrap.is_empty() && l.scrap_total == 0);
    }

    #[test]
    fn the_open_last_state_counts_only_until_now() {
        let log = [ch(0, S::UnplannedDown, R::Halted, None)];
        let w = Window {
            from_ms: 0,
            to_ms: 100 * M,
        };
        let mut t = DowntimeTally::default();
        t.add(&log, w, 40 * M, |_| true);
        let l = losses(t, [], w, |_| true);
        assert_eq!(l.downtime_total_ms, 40 * M);
        assert_eq!(l.downtime[0].reason, R::Halted);
    }

    #[test]
    fn a_sku_scope_counts_only_its_jobs_spans_and_equal_amounts_sort_by_name() {
        let log = [
            ch(0, S::Paused, R::ToolChange, Some(7)),
            ch(10 * M, S::Paused, R::OperatorPause, Some(8)),
            ch(20 * M, S::Paused, R::ProgramPause, Some(7)),
            ch(30 * M, S::Idle, R::None, None),
        ];
        let w = Window {
            from_ms: 0,
            to_ms: 60 * M,
        };
        let mut t = DowntimeTally::default();
        t.add(&log, w, u64::MAX, |c| c.job_id == Some(7));
        let l = losses(t, [], w, |_| true);
        let reasons: Vec<_> = l.downtime.iter().map(|d| d.reason).collect();
        assert_eq!(reasons, vec![R::ProgramPause, R::ToolChange]);
        assert_eq!(l.downtime_total_ms, 20 * M);
    }

    #[test]
    fn scrap_counts_failed_and_scrapped_units_of_the_window_by_their_reason() {
        let mut reworked_then_failed = unit(4, 50, QcState::Fail, Some("warping"));
        reworked_then_failed.qc_history.insert(
            0,
            QcRecord {
                at_ms: 40,
                result: QcState::Rework,
                reason: Some("stringing".into()),
                note: None,
                by: "op".into(),
            },
        );
        let units = [
            unit(1, 10, QcState::Fail, Some("warping")),
            unit(2, 20, QcState::Scrap, Some("attempt_failed")),
            unit(3, 30, QcState::Scrap, Some("attempt_failed")),
            reworked_then_failed,
            unit(5, 60, QcState::Fail, None),
            unit(6, 70, QcState::Pass, None),
            unit(7, 80, QcState::Pending, None),
            unit(8, 80, QcState::Rework, Some("stringing")),
            unit(9, 500, QcState::Fail, Some("warping")), // after the window
        ];
        let w = Window {
            from_ms: 0,
            to_ms: 100,
        };
        let l = losses(DowntimeTally::default(), &units, w, |_| true);
        let rows: Vec<_> = l
            .scrap
            .iter()
            .map(|s| (s.reason.as_str(), s.units, s.share, s.cumulative_share))
            .collect();
        assert_eq!(
            rows,
            vec![
                ("attempt_failed", 2, 0.4, 0.4),
                ("warping", 2, 0.4, 0.8),
                (UNSPECIFIED, 1, 0.2, 1.0),
            ]
        );
        assert_eq!(l.scrap_total, 5);
        let none = losses(DowntimeTally::default(), &units, w, |u| u.job_id == 6);
        assert!(none.scrap.is_empty() && none.scrap_total == 0);
    }

    fn state() -> impl Strategy<Value = (MachineState, StateReason)> {
        prop_oneof![
            Just((S::Idle, R::None)),
            Just((S::Producing, R::None)),
            Just((S::Paused, R::ToolChange)),
            Just((S::Paused, R::OperatorPause)),
            Just((S::AwaitingOperator, R::BedClear)),
            Just((S::AwaitingOperator, R::Failed)),
            Just((S::UnplannedDown, R::Fault)),
            Just((S::Offline, R::Disconnected)),
            Just((S::PlannedDown, R::Disabled)),
        ]
    }

    proptest! {
        #[test]
        fn the_downtime_total_is_setup_plus_delay_plus_down_and_shares_end_at_one(
            steps in prop::collection::vec((1u64..120, state(), prop::option::of(1u64..4)), 1..40),
            from in 0u64..2_000,
            len in 0u64..4_000,
            now in 0u64..5_000,
        ) {
            let mut at = 0;
            let log: Vec<StateChange> = steps
                .iter()
                .map(|(d, (s, r), j)| {
                    at += d;
                    ch(at * M, *s, *r, *j)
                })
                .collect();
            let w = Window { from_ms: from * M, to_ms: (from + len) * M };
            let keep = |c: &StateChange| c.job_id != Some(2);
            let mut t = DowntimeTally::default();
            t.add(&log, w, now * M, keep);
            let l = losses(t, [], w, |_| true);
            let e = oee::time_elements(&log, w, now * M, keep);
            prop_assert_eq!(l.downtime_total_ms, e.setup_ms + e.delay_ms + e.down_ms);
            prop_assert_eq!(l.downtime.iter().map(|d| d.ms).sum::<u64>(), l.downtime_total_ms);
            for pair in l.downtime.windows(2) {
                prop_assert!(pair[0].ms >= pair[1].ms);
            }
            if let Some(last) = l.downtime.last() {
                prop_assert!((last.cumulative_share - 1.0).abs() < 1e-12);
            }
        }
    }
}
