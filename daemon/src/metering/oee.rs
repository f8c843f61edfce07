//! ISO 22400-2 key performance indicators, pure: time elements come only
//! from the machine state log, quantities only from units, and the window
//! and `now` are passed in. Every figure is returned with its inputs so a
//! person can check it by hand.
//!
//! How a machine state counts (without a shift calendar every hour is
//! planned, as the issue says):
//!
//! | state | reason | element |
//! |---|---|---|
//! | producing | | APT, actual production time |
//! | paused | tool change | ASUT, setup |
//! | awaiting_operator | bed clear | ASUT, setup (the changeover between plates) |
//! | paused, awaiting_operator | any other | ADET, delay |
//! | unplanned_down, offline | | ADOT, down time (unplanned_down: a failure) |
//! | idle | | idle: planned, no work |
//! | planned_down | | PDOT: not planned, outside PBT |
//!
//! so PBT = APT + ASUT + ADET + ADOT + idle, and every element is a sum of
//! clipped spans: the totals of a window are the sums over any split of it.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::core::machine::{MachineState, StateChange, StateReason};
use crate::metering::model::{QcState, Unit};

/// A half-open window of time, ms since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
pub struct Window {
    /// Start, included.
    pub from_ms: u64,
    /// End, excluded.
    pub to_ms: u64,
}

impl Window {
    /// The part of `[start, end)` inside the window, in ms.
    pub fn overlap(self, start: u64, end: u64) -> u64 {
        end.min(self.to_ms).saturating_sub(start.max(self.from_ms))
    }

    /// `at` lies in the window.
    pub fn contains(self, at: u64) -> bool {
        (self.from_ms..self.to_ms).contains(&at)
    }
}

/// Time elements of a window, ms (ISO 22400-2 names).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TimeElements {
    /// Planned busy time (PBT): the window less planned down time.
    pub pbt_ms: u64,
    /// Actual production time (APT): producing.
    pub apt_ms: u64,
    /// Actual setup time (ASUT): tool changes and bed clearance.
    pub setup_ms: u64,
    /// Actual delay time (ADET): pauses and waits for the operator.
    pub delay_ms: u64,
    /// Actual unplanned down time (ADOT): halted or offline.
    pub down_ms: u64,
    /// Planned and free: no work.
    pub idle_ms: u64,
    /// Planned down time (PDOT): taken out of service; not in PBT.
    pub planned_down_ms: u64,
    /// Failures: entries into `unplanned_down` inside the window.
    pub failures: u64,
    /// Time spent in `unplanned_down` inside the window (time to restore).
    pub repair_ms: u64,
}

impl TimeElements {
    /// Adds another machine's (or another window's) elements; saturating,
    /// since they may come from stored bytes.
    pub fn add(&mut self, o: &Self) {
        self.pbt_ms = self.pbt_ms.saturating_add(o.pbt_ms);
        self.apt_ms = self.apt_ms.saturating_add(o.apt_ms);
        self.setup_ms = self.setup_ms.saturating_add(o.setup_ms);
        self.delay_ms = self.delay_ms.saturating_add(o.delay_ms);
        self.down_ms = self.down_ms.saturating_add(o.down_ms);
        self.idle_ms = self.idle_ms.saturating_add(o.idle_ms);
        self.planned_down_ms = self.planned_down_ms.saturating_add(o.planned_down_ms);
        self.failures = self.failures.saturating_add(o.failures);
        self.repair_ms = self.repair_ms.saturating_add(o.repair_ms);
    }
}

/// The ISO 22400 time element a state's time falls in (the table above);
/// one place, so the metrics and the loss Pareto never disagree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Element {
    /// APT.
    Production,
    /// ASUT: tool changes and bed clearance.
    Setup,
    /// ADET: pauses and waits for the operator.
    Delay,
    /// ADOT: halted or offline.
    Down,
    /// Planned, no work.
    Idle,
    /// PDOT: outside planned busy time.
    PlannedDown,
}

/// Which element `state` with `reason` counts in.
pub fn element(state: MachineState, reason: StateReason) -> Element {
    match (state, reason) {
        (MachineState::PlannedDown, _) => Element::PlannedDown,
        (MachineState::Producing, _) => Element::Production,
        (MachineState::Paused, StateReason::ToolChange)
        | (MachineState::AwaitingOperator, StateReason::BedClear) => Element::Setup,
        (MachineState::Paused | MachineState::AwaitingOperator, _) => Element::Delay,
        (MachineState::UnplannedDown | MachineState::Offline, _) => Element::Down,
        (MachineState::Idle, _) => Element::Idle,
    }
}

/// Time elements of one machine over `w`, from its state log: `changes`
/// oldest first, the first one being the state in force at `w.from_ms`
/// (as `Store::machine_states` returns them). The last state lasts until
/// `now_ms` (or the window's end if earlier): the future is not counted.
/// `counts` says which spans belong to the scope (all of them for a
/// machine; a SKU's jobs' for a SKU); time before the first change is
/// unknown and not counted.
pub fn time_elements(
    changes: &[StateChange],
    w: Window,
    now_ms: u64,
    counts: impl Fn(&StateChange) -> bool,
) -> TimeElements {
    let w = Window {
        from_ms: w.from_ms,
        to_ms: w.to_ms.min(now_ms).max(w.from_ms),
    };
    let mut t = TimeElements::default();
    for (i, c) in changes.iter().enumerate() {
        let end = changes.get(i + 1).map_or(w.to_ms, |n| n.at_ms);
        if !counts(c) {
            continue;
        }
        let d = w.overlap(c.at_ms, end);
        match element(c.state, c.reason) {
            Element::PlannedDown => t.planned_down_ms += d,
            Element::Production => t.apt_ms += d,
            Element::Setup => t.setup_ms += d,
            Element::Delay => t.delay_ms += d,
            Element::Down => t.down_ms += d,
            Element::Idle => t.idle_ms += d,
        }
        if c.state == MachineState::UnplannedDown {
            t.repair_ms += d;
            let entered = i == 0 || changes[i - 1].state != MachineState::UnplannedDown;
            if entered && w.contains(c.at_ms) {
                t.failures += 1;
            }
        }
        if c.state != MachineState::PlannedDown {
            t.pbt_ms += d;
        }
    }
    t
}

/// Quantities of a window, from units made (ended) in it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Quantities {
    /// Produced quantity (PQ): every unit made, scrapped ones included.
    pub produced: u64,
    /// Good quantity (GQ): passed QC.
    pub good: u64,
    /// Scrap quantity (SQ): failed QC or scrapped (units of failed and
    /// cancelled attempts included).
    pub scrap: u64,
    /// Rework quantity (RQ): sent to rework at least once.
    pub rework: u64,
    /// Not yet inspected (pending or in rework): neither good nor scrap.
    pub uninspected: u64,
    /// Units whose first inspection is done.
    pub first_inspected: u64,
    /// Units that passed their first inspection.
    pub first_pass_good: u64,
    /// Planned runtime earned by the units (PRU × PQ, a failed attempt's
    /// units earning the share of lines streamed), ms.
    pub credited_runtime_ms: u64,
}

impl Quantities {
    /// Counts one unit.
    pub fn add_unit(&mut self, u: &Unit) {
        self.produced += 1;
        self.credited_runtime_ms += u.credited_runtime_ms;
        match u.qc {
            QcState::Pass => self.good += 1,
            QcState::Fail | QcState::Scrap => self.scrap += 1,
            QcState::Pending | QcState::Rework => self.uninspected += 1,
        }
        if u.reworked {
            self.rework += 1;
        }
        if let Some(first) = u.first_pass {
            self.first_inspected += 1;
            if first {
                self.first_pass_good += 1;
            }
        }
    }

    /// Takes back what [`Quantities::add_unit`] counted for `u` (before an
    /// inspection changes it); `u` must have been added.
    pub fn remove_unit(&mut self, u: &Unit) {
        let mut one = Self::default();
        one.add_unit(u);
        self.sub(&one);
    }

    /// Adds another window's (or machine's) quantities.
    pub fn add(&mut self, o: &Self) {
        self.produced = self.produced.saturating_add(o.produced);
        self.good = self.good.saturating_add(o.good);
        self.scrap = self.scrap.saturating_add(o.scrap);
        self.rework = self.rework.saturating_add(o.rework);
        self.uninspected = self.uninspected.saturating_add(o.uninspected);
        self.first_inspected = self.first_inspected.saturating_add(o.first_inspected);
        self.first_pass_good = self.first_pass_good.saturating_add(o.first_pass_good);
        self.credited_runtime_ms = self
            .credited_runtime_ms
            .saturating_add(o.credited_runtime_ms);
    }

    fn sub(&mut self, o: &Self) {
        self.produced = self.produced.saturating_sub(o.produced);
        self.good = self.good.saturating_sub(o.good);
        self.scrap = self.scrap.saturating_sub(o.scrap);
        self.rework = self.rework.saturating_sub(o.rework);
        self.uninspected = self.uninspected.saturating_sub(o.uninspected);
        self.first_inspected = self.first_inspected.saturating_sub(o.first_inspected);
        self.first_pass_good = self.first_pass_good.saturating_sub(o.first_pass_good);
        self.credited_runtime_ms = self
            .credited_runtime_ms
            .saturating_sub(o.credited_runtime_ms);
    }

    /// Counts the units of `units` that `keep` selects and that ended in
    /// `w`.
    pub fn of<'a>(
        units: impl IntoIterator<Item = &'a Unit>,
        w: Window,
        keep: impl Fn(&Unit) -> bool,
    ) -> Self {
        let mut q = Self::default();
        for u in units {
            if w.contains(u.ended_ms) && keep(u) {
                q.add_unit(u);
            }
        }
        q
    }
}

/// The indicators; `None` where the denominator is zero (nothing to say).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, ToSchema)]
pub struct Figures {
    /// APT / PBT.
    pub availability: Option<f64>,
    /// PRU × PQ / APT ("performance").
    pub effectiveness: Option<f64>,
    /// Effectiveness above 1: the planned runtime per unit is too long
    /// (faster than planned is not possible), so fix the product's
    /// `planned_runtime_per_unit_s`.
    pub effectiveness_over_one: bool,
    /// GQ / PQ.
    pub quality_ratio: Option<f64>,
    /// Availability × effectiveness × quality ratio.
    pub oee: Option<f64>,
    /// GQ / PBT in hours.
    pub good_units_per_planned_hour: Option<f64>,
    /// Passed at first inspection / first inspected.
    pub first_pass_yield: Option<f64>,
    /// Mean time between failures: APT / failures, hours. With no
    /// failure it is unknown (at least the APT).
    pub mtbf_hours: Option<f64>,
    /// Mean time to restore: repair time / failures, hours.
    pub mttr_hours: Option<f64>,
}

const MS_PER_HOUR: f64 = 3_600_000.0;

fn ratio(num: u64, den: u64) -> Option<f64> {
    // Counts and milliseconds stay far below 2^53: the conversion is exact.
    #[allow(clippy::cast_precision_loss)]
    (den > 0).then(|| num as f64 / den as f64)
}

fn hours(ms: u64) -> f64 {
    #[allow(clippy::cast_precision_loss)]
    let h = ms as f64 / MS_PER_HOUR;
    h
}

/// The indicators of a window's time elements and quantities.
pub fn figures(t: &TimeElements, q: &Quantities) -> Figures {
    let availability = ratio(t.apt_ms, t.pbt_ms);
    let effectiveness = ratio(q.credited_runtime_ms, t.apt_ms);
    let quality_ratio = ratio(q.good, q.produced);
    let oee = match (availability, effectiveness, quality_ratio) {
        (Some(a), Some(e), Some(qr)) => Some(a * e * qr),
        _ => None,
    };
    let failures = (t.failures > 0).then_some(t.failures);
    #[allow(clippy::cast_precision_loss)]
    Figures {
        availability,
        effectiveness,
        effectiveness_over_one: effectiveness.is_some_and(|e| e > 1.0),
        quality_ratio,
        oee,
        good_units_per_planned_hour: (t.pbt_ms > 0).then(|| q.good as f64 / hours(t.pbt_ms)),
        first_pass_yield: ratio(q.first_pass_good, q.first_inspected),
        mtbf_hours: failures.map(|f| hours(t.apt_ms) / f as f64),
        mttr_hours: failures.map(|f| hours(t.repair_ms) / f as f64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const H: u64 = 3_600_000;

    fn ch(at_ms: u64, state: MachineState, reason: StateReason) -> StateChange {
        StateChange {
            at_ms,
            state,
            reason,
            job_id: None,
            seq: 0,
        }
    }

    fn all(_: &StateChange) -> bool {
        true
    }

    fn unit(ended_ms: u64, qc: QcState, first_pass: Option<bool>, credited: u64) -> Unit {
        Unit {
            planned_runtime_ms: credited,
            credited_runtime_ms: credited,
            qc,
            first_pass,
            ..Unit::sample(1, ended_ms)
        }
    }

    #[test]
    fn an_idle_day_has_no_availability_and_no_production_figures() {
        let w = Window {
            from_ms: 0,
            to_ms: 24 * H,
        };
        let t = time_elements(
            &[ch(0, MachineState::Idle, StateReason::None)],
            w,
            u64::MAX,
            all,
        );
        assert_eq!((t.pbt_ms, t.idle_ms, t.apt_ms), (24 * H, 24 * H, 0));
        let f = figures(&t, &Quantities::default());
        assert_eq!(f.availability, Some(0.0));
        assert_eq!(f.effectiveness, None, "no production time: nothing to rate");
        assert_eq!(f.quality_ratio, None);
        assert_eq!(f.oee, None);
        assert_eq!(f.good_units_per_planned_hour, Some(0.0));
        assert_eq!((f.mtbf_hours, f.mttr_hours), (None, None));
    }

    #[test]
    fn a_day_of_all_scrap_has_full_effectiveness_and_zero_oee() {
        // 8 h producing, 2 h bed clearance, 14 h idle; 8 units of 1 h, all scrap.
        let w = Window {
            from_ms: 0,
            to_ms: 24 * H,
        };
        let changes = [
            ch(0, MachineState::Producing, StateReason::None),
            ch(8 * H, MachineState::AwaitingOperator, StateReason::BedClear),
            ch(10 * H, MachineState::Idle, StateReason::None),
        ];
        let t = time_elements(&changes, w, u64::MAX, all);
        assert_eq!((t.apt_ms, t.setup_ms, t.idle_ms), (8 * H, 2 * H, 14 * H));
        let units: Vec<Unit> = (0..8)
            .map(|i| unit(i * H + 1, QcState::Scrap, Some(false), H))
            .collect();
        let q = Quantities::of(&units, w, |_| true);
        assert_eq!((q.produced, q.good, q.scrap), (8, 0, 8));
        let f = figures(&t, &q);
        assert_eq!(f.availability, Some(8.0 / 24.0));
        assert_eq!(f.effectiveness, Some(1.0));
        assert_eq!(f.quality_ratio, Some(0.0));
        assert_eq!(f.oee, Some(0.0));
        assert_eq!(f.first_pass_yield, Some(0.0));
    }

    #[test]
    fn downtime_spanning_both_window_edges_counts_only_inside_and_once_as_a_failure() {
        // Halted from 09:00 to 11:00 and again from 15:00 to 18:00; the
        // window is 10:00-16:00; 10:00-11:00 down, 11:00-15:00 producing,
        // 15:00-16:00 down. The first halt began before the window: its
        // failure belongs to the earlier window, its repair time is split.
        let changes = [
            ch(9 * H, MachineState::UnplannedDown, StateReason::Fault),
            ch(11 * H, MachineState::Producing, StateReason::None),
            ch(15 * H, MachineState::UnplannedDown, StateReason::Fault),
            ch(18 * H, MachineState::Idle, StateReason::None),
        ];
        let w = Window {
            from_ms: 10 * H,
            to_ms: 16 * H,
        };
        let t = time_elements(&changes, w, u64::MAX, all);
        assert_eq!(t.pbt_ms, 6 * H);
        assert_eq!(t.apt_ms, 4 * H);
        assert_eq!(t.down_ms, 2 * H);
        assert_eq!(t.failures, 1);
        assert_eq!(t.repair_ms, 2 * H);
        let f = figures(&t, &Quantities::default());
        assert_eq!(f.availability, Some(4.0 / 6.0));
        assert_eq!(f.mtbf_hours, Some(4.0));
        assert_eq!(f.mttr_hours, Some(2.0));
    }

    #[test]
    fn planned_downtime_is_outside_planned_busy_time_and_the_future_is_not_counted() {
        let changes = [
            ch(0, MachineState::PlannedDown, StateReason::Disabled),
            ch(2 * H, MachineState::Producing, StateReason::None),
        ];
        let w = Window {
            from_ms: 0,
            to_ms: 10 * H,
        };
        let t = time_elements(&changes, w, 4 * H, all);
        assert_eq!(t.planned_down_ms, 2 * H);
        assert_eq!(t.pbt_ms, 2 * H, "now is 04:00: six hours have not happened");
        assert_eq!(figures(&t, &Quantities::default()).availability, Some(1.0));
    }

    #[test]
    fn a_planned_runtime_that_is_too_long_is_flagged() {
        let t = TimeElements {
            pbt_ms: H,
            apt_ms: H,
            ..TimeElements::default()
        };
        let q = Quantities {
            produced: 2,
            good: 2,
            credited_runtime_ms: 2 * H,
            ..Quantities::default()
        };
        let f = figures(&t, &q);
        assert_eq!(f.effectiveness, Some(2.0));
        assert!(f.effectiveness_over_one);
    }

    fn state() -> impl Strategy<Value = (MachineState, StateReason)> {
        prop_oneof![
            Just((MachineState::Idle, StateReason::None)),
            Just((MachineState::Producing, StateReason::None)),
            Just((MachineState::Paused, StateReason::ToolChange)),
            Just((MachineState::Paused, StateReason::OperatorPause)),
            Just((MachineState::AwaitingOperator, StateReason::BedClear)),
            Just((MachineState::AwaitingOperator, StateReason::Failed)),
            Just((MachineState::UnplannedDown, StateReason::Fault)),
            Just((MachineState::Offline, StateReason::Disconnected)),
            Just((MachineState::PlannedDown, StateReason::Disabled)),
        ]
    }

    /// A state log: increasing times from `start`, each with a state.
    fn log() -> impl Strategy<Value = Vec<StateChange>> {
        proptest::collection::vec((1u64..5_000, state()), 1..30).prop_map(|v| {
            let mut at = 0;
            v.into_iter()
                .map(|(gap, (s, r))| {
                    at += gap;
                    ch(at, s, r)
                })
                .collect()
        })
    }

    /// What `Store::machine_states` would return for the window: the
    /// change in force at `from`, then those inside.
    fn as_stored(changes: &[StateChange], w: Window) -> Vec<StateChange> {
        let before = changes.iter().rev().find(|c| c.at_ms < w.from_ms).cloned();
        before
            .into_iter()
            .chain(
                changes
                    .iter()
                    .filter(|c| c.at_ms >= w.from_ms && c.at_ms <= w.to_ms)
                    .cloned(),
            )
            .collect()
    }

    proptest! {
        #[test]
        fn the_totals_of_a_window_equal_the_sums_over_any_split_of_it(
            changes in log(), from in 0u64..80_000, len in 0u64..80_000,
            cut in 0u64..=1000, now in 0u64..200_000,
        ) {
            let w = Window { from_ms: from, to_ms: from + len };
            let mid = from + len * cut / 1000;
            let left = Window { from_ms: from, to_ms: mid };
            let right = Window { from_ms: mid, to_ms: from + len };
            let whole = time_elements(&as_stored(&changes, w), w, now, all);
            let mut parts = time_elements(&as_stored(&changes, left), left, now, all);
            parts.add(&time_elements(&as_stored(&changes, right), right, now, all));
            prop_assert_eq!(whole, parts);
            prop_assert_eq!(
                whole.pbt_ms,
                whole.apt_ms + whole.setup_ms + whole.delay_ms + whole.down_ms + whole.idle_ms
            );
        }

        #[test]
        fn ratios_stay_in_zero_to_one_and_oee_is_their_product(
            changes in log(), len in 1u64..100_000,
            qcs in proptest::collection::vec((0u8..5, any::<bool>(), 0u64..20_000), 0..40),
        ) {
            let w = Window { from_ms: 0, to_ms: len };
            let t = time_elements(&as_stored(&changes, w), w, u64::MAX, all);
            let units: Vec<Unit> = qcs.iter().enumerate().map(|(i, (q, fp, cr))| {
                let qc = [QcState::Pending, QcState::Pass, QcState::Fail,
                    QcState::Rework, QcState::Scrap][usize::from(*q)];
                let first = (qc != QcState::Pending).then_some(*fp || qc == QcState::Pass);
                unit(i as u64 % len, qc, first, *cr)
            }).collect();
            let q = Quantities::of(&units, w, |_| true);
            let f = figures(&t, &q);
            for r in [f.availability, f.quality_ratio, f.first_pass_yield].into_iter().flatten() {
                prop_assert!((0.0..=1.0).contains(&r), "{r}");
            }
            if let Some(e) = f.effectiveness {
                prop_assert!(e >= 0.0);
                prop_assert_eq!(e > 1.0, f.effectiveness_over_one);
            }
            match (f.availability, f.effectiveness, f.quality_ratio, f.oee) {
                (Some(a), Some(e), Some(qr), Some(oee)) => prop_assert_eq!(oee, a * e * qr),
                (_, _, _, oee) => prop_assert!(oee.is_none()),
            }
            prop_assert_eq!(q.produced, q.good + q.scrap + q.uninspected);
        }
    }
}
