//! Pre-aggregated history, pure: what a year of 100 machines needs so
//! that metrics and APC over any window read a few hundred records, not
//! millions, and use memory that does not grow with history.
//!
//! Per machine and hour, a [`TimeAgg`]: the ISO time elements of all its
//! spans and of each SKU's jobs' spans, and the hour's state changes
//! themselves (the one in force at the hour's start, then those inside)
//! so a window edge inside the hour is computed from them exactly as the
//! raw state log would be. Per hour, a [`UnitAgg`]: quantities by machine
//! and SKU. Days sum their 24 hours. A machine's hours are *sealed* only
//! when a later change has been logged (their spans are then final);
//! units are added and re-counted at every inspection, so their hours are
//! always complete.
//!
//! A window is read as [`plan`] splits it: the partial hour at its start
//! from that hour's changes, with the raw log's rule for the state in
//! force at the start; whole hours and days from the aggregates; and the
//! rest (a partial hour, or the unsealed hours since a machine's last
//! change) from the raw log with its predecessor, so a failure at an hour
//! boundary is counted once. Every time element is a sum of clipped spans
//! (see `oee`), so the parts add up to exactly the raw figure: the property
//! test below checks that over random histories and windows.

use std::collections::BTreeMap;
use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::core::machine::StateChange;
use crate::metering::model::Unit;
use crate::metering::oee::{self, Quantities, TimeElements, Window};
use crate::metering::production::DAEMON;

/// One hour, ms.
pub const HOUR_MS: u64 = 3_600_000;
/// Hours in a day record.
pub const DAY_HOURS: u64 = 24;

/// The granularity of an aggregate record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Level {
    /// Index = ms ÷ one hour.
    Hour,
    /// Index = hours ÷ 24 (UTC days).
    Day,
}

impl Level {
    /// The key byte of the level.
    pub fn byte(self) -> u8 {
        match self {
            Self::Hour => b'h',
            Self::Day => b'd',
        }
    }
}

/// One machine's time over an hour (or a day: the sum of its hours,
/// without the changes).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TimeAgg {
    /// Every span.
    pub all: TimeElements,
    /// The spans of each SKU's orders' jobs.
    pub by_sku: BTreeMap<String, TimeElements>,
    /// Hours only: the change in force at the hour's start, then the
    /// hour's changes, oldest first.
    pub changes: Vec<StateChange>,
}

impl TimeAgg {
    /// Adds another hour's elements (not its changes).
    pub fn add(&mut self, o: &Self) {
        self.all.add(&o.all);
        for (sku, t) in &o.by_sku {
            self.by_sku.entry(sku.clone()).or_default().add(t);
        }
    }

    /// The elements of the spans `sku` picks: one SKU's, every SKU's
    /// (`Some(None)`), or all spans (`None`).
    pub fn elements(&self, sku: Option<Option<&str>>) -> TimeElements {
        match sku {
            None => self.all,
            Some(Some(s)) => self.by_sku.get(s).copied().unwrap_or_default(),
            Some(None) => {
                let mut t = TimeElements::default();
                for e in self.by_sku.values() {
                    t.add(e);
                }
                t
            }
        }
    }
}

/// The quantities of one machine and SKU in an hour or a day.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnitRow {
    /// The machine that made them.
    pub machine: String,
    /// Their product.
    pub sku: String,
    /// The counts.
    pub q: Quantities,
    /// Attempts that made them (each attempt's plate place 1).
    pub attempts: u64,
    /// Inspections by a person (not the daemon's automatic verdicts).
    pub inspections: u64,
}

/// The units that ended in an hour or a day, by machine and SKU.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UnitAgg {
    /// One row per (machine, SKU).
    pub rows: Vec<UnitRow>,
}

/// Inspections of `u` by a person.
pub fn inspections(u: &Unit) -> u64 {
    u.qc_history.iter().filter(|r| r.by != DAEMON).count() as u64
}

impl UnitAgg {
    fn row(&mut self, machine: &str, sku: &str) -> &mut UnitRow {
        let i = match self
            .rows
            .iter()
            .position(|r| r.machine == machine && r.sku == sku)
        {
            Some(i) => i,
            None => {
                self.rows.push(UnitRow {
                    machine: machine.to_string(),
                    sku: sku.to_string(),
                    q: Quantities::default(),
                    attempts: 0,
                    inspections: 0,
                });
                self.rows.len() - 1
            }
        };
        &mut self.rows[i]
    }

    /// Counts a unit.
    pub fn add_unit(&mut self, u: &Unit) {
        let r = self.row(&u.machine_id, &u.sku);
        r.q.add_unit(u);
        r.attempts += u64::from(u.index == 1);
        r.inspections += inspections(u);
    }

    /// Takes back a unit counted before (its state before an inspection).
    pub fn remove_unit(&mut self, u: &Unit) {
        let r = self.row(&u.machine_id, &u.sku);
        r.q.remove_unit(u);
        r.attempts = r.attempts.saturating_sub(u64::from(u.index == 1));
        r.inspections = r.inspections.saturating_sub(inspections(u));
    }

    /// Adds another record's rows.
    pub fn add(&mut self, o: &Self) {
        for x in &o.rows {
            let r = self.row(&x.machine, &x.sku);
            r.q.add(&x.q);
            r.attempts += x.attempts;
            r.inspections += x.inspections;
        }
    }
}

/// What the store's `machine_states(from, to)` returns from `changes`
/// (oldest first): the change in force at `from`, then those with
/// `at_ms` in `from..=to`.
pub fn states_in(changes: &[StateChange], from: u64, to: u64) -> Vec<StateChange> {
    let start = changes.partition_point(|c| c.at_ms < from);
    let end = changes.partition_point(|c| c.at_ms <= to);
    changes[start.saturating_sub(1)..end.max(start.saturating_sub(1))].to_vec()
}

/// Cuts `changes` (oldest first, the first in force at the start of hour
/// `hours.start`, the rest up to the end of the last hour) into each
/// hour's list: the change in force at its start, then its own.
pub fn hour_lists(changes: &[StateChange], hours: Range<u64>) -> Vec<(u64, Vec<StateChange>)> {
    hours
        .map(|h| {
            let (hs, he) = (h * HOUR_MS, (h + 1) * HOUR_MS);
            let start = changes.partition_point(|c| c.at_ms < hs);
            let end = changes.partition_point(|c| c.at_ms < he);
            (h, changes[start.saturating_sub(1)..end].to_vec())
        })
        .collect()
}

/// The aggregate of hour `hour` from its list (see [`hour_lists`]);
/// `sku_of` names the SKU of a job's order.
pub fn seal_hour(
    changes: Vec<StateChange>,
    hour: u64,
    sku_of: &dyn Fn(u64) -> Option<String>,
) -> TimeAgg {
    let w = Window {
        from_ms: hour * HOUR_MS,
        to_ms: (hour + 1) * HOUR_MS,
    };
    let all = oee::time_elements(&changes, w, u64::MAX, |_| true);
    let mut skus: Vec<String> = changes
        .iter()
        .filter_map(|c| c.job_id.and_then(sku_of))
        .collect();
    skus.sort_unstable();
    skus.dedup();
    let by_sku = skus
        .into_iter()
        .map(|s| {
            let t = oee::time_elements(&changes, w, u64::MAX, |c| {
                c.job_id.and_then(sku_of).as_deref() == Some(s.as_str())
            });
            (s, t)
        })
        .collect();
    TimeAgg {
        all,
        by_sku,
        changes,
    }
}

/// How a window is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The part before the first whole hour, raw with the store's rule
    /// for the state in force at `from` (may be empty).
    pub head: Window,
    /// Whole sealed hours before the first whole day.
    pub lead_hours: Range<u64>,
    /// Whole sealed days.
    pub days: Range<u64>,
    /// Whole sealed hours after the last whole day.
    pub trail_hours: Range<u64>,
    /// The rest, raw with its predecessor (may be empty): inside one
    /// sealed hour, or from the first unsealed hour on.
    pub tail: Window,
}

/// Splits `[from, to)` (to ≥ from) given that hours before `sealed` (an
/// hour index) are aggregated.
pub fn plan(from: u64, to: u64, sealed: u64) -> Plan {
    let to = to.max(from);
    let first_whole = (from / HOUR_MS + 1).saturating_mul(HOUR_MS);
    let empty = |at: u64| Window {
        from_ms: at,
        to_ms: at,
    };
    if first_whole >= to {
        return Plan {
            head: Window {
                from_ms: from,
                to_ms: to,
            },
            lead_hours: 0..0,
            days: 0..0,
            trail_hours: 0..0,
            tail: empty(to),
        };
    }
    let (h0, h1) = (
        first_whole / HOUR_MS,
        (to / HOUR_MS).min(sealed).max(first_whole / HOUR_MS),
    );
    let d0 = h0.div_ceil(DAY_HOURS);
    let d1 = h1 / DAY_HOURS;
    let (lead, days, trail) = if d0 < d1 {
        (h0..d0 * DAY_HOURS, d0..d1, d1 * DAY_HOURS..h1)
    } else {
        (h0..h1, 0..0, 0..0)
    };
    Plan {
        head: Window {
            from_ms: from,
            to_ms: first_whole,
        },
        lead_hours: lead,
        days,
        trail_hours: trail,
        tail: Window {
            from_ms: h1 * HOUR_MS,
            to_ms: to,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::machine::{MachineState, StateReason};
    use proptest::prelude::*;

    const M: u64 = 60_000;

    fn state() -> impl Strategy<Value = (MachineState, StateReason)> {
        use MachineState as S;
        use StateReason as R;
        prop_oneof![
            Just((S::Idle, R::None)),
            Just((S::Producing, R::None)),
            Just((S::Paused, R::ToolChange)),
            Just((S::AwaitingOperator, R::BedClear)),
            Just((S::UnplannedDown, R::Fault)),
            Just((S::UnplannedDown, R::Halted)),
            Just((S::Offline, R::Disconnected)),
            Just((S::PlannedDown, R::Disabled)),
        ]
    }

    /// Time elements over `w` the way `Metering` reads them through the
    /// aggregates (`sealed`: the first hour not aggregated), with `raw`
    /// standing in for the store.
    fn through_plan(
        log: &[StateChange],
        w: Window,
        now: u64,
        sealed: u64,
        sku: Option<Option<&str>>,
        sku_of: &dyn Fn(u64) -> Option<String>,
    ) -> TimeElements {
        let keep = |c: &StateChange| match sku {
            None => true,
            Some(None) => c.job_id.and_then(sku_of).is_some(),
            Some(Some(s)) => c.job_id.and_then(sku_of).as_deref() == Some(s),
        };
        let to = w.to_ms.min(now).max(w.from_ms);
        let p = plan(w.from_ms, to, sealed);
        let hour = |h: u64| {
            let list = hour_lists(log, h..h + 1).remove(0).1;
            seal_hour(list, h, sku_of)
        };
        let mut t = TimeElements::default();
        // Head: from the hour's list when sealed, else raw.
        let head_hour = p.head.from_ms / HOUR_MS;
        let head_list = if head_hour < sealed {
            states_in(&hour(head_hour).changes, p.head.from_ms, p.head.to_ms)
        } else {
            states_in(log, p.head.from_ms, p.head.to_ms)
        };
        t.add(&oee::time_elements(&head_list, p.head, now, keep));
        for h in p.lead_hours.clone().chain(p.trail_hours.clone()) {
            t.add(&hour(h).elements(sku));
        }
        for d in p.days.clone() {
            let mut day = TimeAgg::default();
            for h in d * DAY_HOURS..(d + 1) * DAY_HOURS {
                day.add(&hour(h));
            }
            t.add(&day.elements(sku));
        }
        if p.tail.to_ms > p.tail.from_ms {
            let tail_hour = p.tail.from_ms / HOUR_MS;
            let list = if tail_hour < sealed {
                hour(tail_hour).changes
            } else {
                states_in(log, p.tail.from_ms, p.tail.to_ms)
            };
            t.add(&oee::time_elements(&list, p.tail, now, keep));
        }
        t
    }

    #[test]
    fn a_window_is_cut_into_its_head_whole_hours_whole_days_and_tail() {
        let h = HOUR_MS;
        // 00:30 on day 0 to 02:15 on day 3, everything sealed.
        let p = plan(h / 2, 3 * 24 * h + 2 * h + h / 4, u64::MAX);
        assert_eq!(
            p.head,
            Window {
                from_ms: h / 2,
                to_ms: h
            }
        );
        assert_eq!((p.lead_hours, p.days, p.trail_hours), (1..24, 1..3, 72..74));
        assert_eq!(
            p.tail,
            Window {
                from_ms: 74 * h,
                to_ms: 74 * h + h / 4
            }
        );
        // An aligned start still reads its first hour raw.
        let p = plan(5 * h, 7 * h, u64::MAX);
        assert_eq!(
            p.head,
            Window {
                from_ms: 5 * h,
                to_ms: 6 * h
            }
        );
        assert_eq!(p.lead_hours, 6..7);
        assert_eq!(p.tail.from_ms, p.tail.to_ms);
        // Only hours before 40 sealed: the rest is one raw tail.
        let p = plan(h / 2, 100 * h, 40);
        assert_eq!((p.lead_hours, p.days, p.trail_hours), (1..40, 0..0, 0..0));
        assert_eq!(
            p.tail,
            Window {
                from_ms: 40 * h,
                to_ms: 100 * h
            }
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn figures_through_the_aggregates_equal_the_raw_state_log_exactly(
            steps in prop::collection::vec((0u64..400, state(), prop::option::of(1u64..5)), 1..120),
            from in 0u64..3_000,
            len in 0u64..6_000,
            sealed_at in 0u64..120,
            scope in 0usize..4,
        ) {
            // Steps in minutes, some zero (changes in the same ms and at
            // hour boundaries happen); jobs 1 and 2 are SKU a's, 3 is b's,
            // 4 belongs to no order.
            let mut at = 0;
            let log: Vec<StateChange> = steps
                .iter()
                .enumerate()
                .map(|(i, (d, (s, r), j))| {
                    at += d * M;
                    if d % 7 == 0 { at = at.div_ceil(HOUR_MS) * HOUR_MS; }
                    StateChange { at_ms: at, state: *s, reason: *r, job_id: *j, seq: i as u64 + 1 }
                })
                .collect();
            let last_hour = log.last().map_or(0, |c| c.at_ms / HOUR_MS);
            let sealed = sealed_at.min(last_hour);
            let now = at + 30 * M;
            let sku_of = |j: u64| match j { 1 | 2 => Some("a".to_string()), 3 => Some("b".to_string()), _ => None };
            let sku = [None, Some(None), Some(Some("a")), Some(Some("b"))][scope];
            let w = Window { from_ms: from * M, to_ms: (from + len) * M };
            let raw_keep = |c: &StateChange| match sku {
                None => true,
                Some(None) => c.job_id.and_then(sku_of).is_some(),
                Some(Some(s)) => c.job_id.and_then(sku_of).as_deref() == Some(s),
            };
            let raw = oee::time_elements(&states_in(&log, w.from_ms, w.to_ms), w, now, raw_keep);
            let agg = through_plan(&log, w, now, sealed, sku, &sku_of);
            prop_assert_eq!(agg, raw);
        }
    }
}
