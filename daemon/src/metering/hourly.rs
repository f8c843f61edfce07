//! Pre-aggregated history, pure: what a year of 100 machines needs so
//! that metrics and APC over any window read a few hundred records per
//! scope key, not millions, and use memory that does not grow with
//! history.
//!
//! Per machine and hour, a [`TimeAgg`]: the ISO time elements of all its
//! spans and of each SKU's jobs' spans, and the hour's state changes
//! themselves (the one in force at the hour's start, then those inside)
//! so a window edge inside the hour is computed from them exactly as the
//! raw state log would be. Units are counted per [`UnitKey`] (a machine,
//! or a SKU) and hour in a [`UnitAgg`]: quantities by the other key, so a
//! scope reads only its own records. Days sum their 24 hours and (UTC,
//! calendar) months their days, so a year is 12 month records, the days
//! and hours at its edges, and two raw edges, per key. A machine's hours
//! are *sealed* only when a later change has been logged (their spans are
//! then final); units are added and re-counted at every inspection, so
//! their records are always complete.
//!
//! A window is read as [`plan`] splits it: the partial hour at its start
//! from that hour's changes, with the raw log's rule for the state in
//! force at the start; whole hours, days and months from the aggregates;
//! and the rest (a partial hour, or the unsealed hours since a machine's
//! last change) from the raw log with its predecessor, so a failure at an
//! hour boundary is counted once. Every time element is a sum of clipped
//! spans (see `oee`), so the parts add up to exactly the raw figure: the
//! property test below checks that over random histories and windows.

use std::collections::{BTreeMap, HashMap};
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Level {
    /// Index = ms ÷ one hour.
    Hour,
    /// Index = hours ÷ 24 (UTC days).
    Day,
    /// Index = calendar months since January 1970 (UTC).
    Month,
}

impl Level {
    /// The key byte of the level.
    pub fn byte(self) -> u8 {
        match self {
            Self::Hour => b'h',
            Self::Day => b'd',
            Self::Month => b'n',
        }
    }

    /// Every level, finest first.
    pub const ALL: [Level; 3] = [Level::Hour, Level::Day, Level::Month];

    /// The index of the record of this level that holds hour `hour`.
    pub fn of_hour(self, hour: u64) -> u64 {
        match self {
            Self::Hour => hour,
            Self::Day => hour / DAY_HOURS,
            Self::Month => month_of_day(hour / DAY_HOURS),
        }
    }
}

/// Days since 1970-01-01 of the first day of month `month` (months since
/// January 1970), by the proleptic Gregorian calendar.
pub fn month_start_day(month: u64) -> u64 {
    let (y, m) = (1970 + month / 12, month % 12 + 1);
    // Years start in March here, so February's leap day is the last day.
    let y = if m <= 2 { y - 1 } else { y };
    let (era, yoe) = (y / 400, y % 400);
    let doy = (153 * ((m + 9) % 12) + 2) / 5;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The month (since January 1970) of day `day` (since 1970-01-01).
pub fn month_of_day(day: u64) -> u64 {
    let z = day + 719_468;
    let (era, doe) = (z / 146_097, z % 146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let (y, m) = if mp < 10 {
        (era * 400 + yoe, mp + 3)
    } else {
        (era * 400 + yoe + 1, mp - 9)
    };
    (y - 1970) * 12 + m - 1
}

/// Whose units a [`UnitAgg`] record counts: one machine's (by SKU) or
/// one SKU's (by machine). A scope reads the records of its own keys.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum UnitKey {
    /// The units a machine made.
    Machine(String),
    /// The units of a product.
    Sku(String),
}

impl UnitKey {
    /// The keys that count `u`.
    pub fn of(u: &Unit) -> [UnitKey; 2] {
        [
            UnitKey::Machine(u.machine_id.clone()),
            UnitKey::Sku(u.sku.clone()),
        ]
    }

    /// The key byte of the kind.
    pub fn byte(&self) -> u8 {
        match self {
            Self::Machine(_) => b'm',
            Self::Sku(_) => b'k',
        }
    }

    /// The machine id or SKU.
    pub fn name(&self) -> &str {
        match self {
            Self::Machine(n) | Self::Sku(n) => n,
        }
    }

    /// Whether this key counts a unit of `machine` and `sku`.
    pub fn counts(&self, machine: &str, sku: &str) -> bool {
        match self {
            Self::Machine(m) => m == machine,
            Self::Sku(s) => s == sku,
        }
    }
}

/// One machine's time over an hour (or a day or month: the sum of its
/// hours or days, without the changes).
#[derive(Debug, Clone, Default, PartialEq)]
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
            match self.by_sku.get_mut(sku) {
                Some(e) => e.add(t),
                None => {
                    self.by_sku.insert(sku.clone(), *t);
                }
            }
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

/// The quantities of one machine and SKU in an hour, a day or a month.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(test, derive(Serialize))]
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

/// The units that ended in an hour, a day or a month, by machine and
/// SKU: stored per [`UnitKey`] (one machine's rows, or one SKU's), or a
/// window's sum over several keys.
#[derive(Debug, Clone, Default, PartialEq)]
#[cfg_attr(test, derive(Serialize))]
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
                self.rows.push(UnitRow::new(machine, sku));
                self.rows.len() - 1
            }
        };
        &mut self.rows[i]
    }

    /// Counts a unit.
    pub fn add_unit(&mut self, u: &Unit) {
        self.row(&u.machine_id, &u.sku).count(u);
    }

    /// Takes back a unit counted before (its state before an inspection).
    pub fn remove_unit(&mut self, u: &Unit) {
        let r = self.row(&u.machine_id, &u.sku);
        r.q.remove_unit(u);
        r.attempts = r.attempts.saturating_sub(u64::from(u.index == 1));
        r.inspections = r.inspections.saturating_sub(inspections(u));
    }
}

impl UnitRow {
    fn new(machine: &str, sku: &str) -> Self {
        Self {
            machine: machine.to_string(),
            sku: sku.to_string(),
            q: Quantities::default(),
            attempts: 0,
            inspections: 0,
        }
    }

    /// Counts a unit of this row's machine and SKU.
    fn count(&mut self, u: &Unit) {
        self.q.add_unit(u);
        self.attempts += u64::from(u.index == 1);
        self.inspections += inspections(u);
    }

    fn add(&mut self, o: &UnitRow) {
        self.q.add(&o.q);
        self.attempts = self.attempts.saturating_add(o.attempts);
        self.inspections = self.inspections.saturating_add(o.inspections);
    }
}

/// Sums many unit records: a window's can hold a row per (machine, SKU)
/// of the whole factory, so rows are found through an index, not by the
/// linear search that suits one record.
#[derive(Debug, Default)]
pub struct UnitSum {
    index: HashMap<String, HashMap<String, usize>>,
    agg: UnitAgg,
}

impl UnitSum {
    fn row(&mut self, machine: &str, sku: &str) -> &mut UnitRow {
        let found = self.index.get(machine).and_then(|m| m.get(sku)).copied();
        let i = match found {
            Some(i) => i,
            None => {
                let i = self.agg.rows.len();
                self.agg.rows.push(UnitRow::new(machine, sku));
                self.index
                    .entry(machine.to_string())
                    .or_default()
                    .insert(sku.to_string(), i);
                i
            }
        };
        &mut self.agg.rows[i]
    }

    /// Adds a record's rows.
    pub fn add(&mut self, o: &UnitAgg) {
        for x in &o.rows {
            self.row(&x.machine, &x.sku).add(x);
        }
    }

    /// Counts a unit.
    pub fn add_unit(&mut self, u: &Unit) {
        self.row(&u.machine_id, &u.sku).count(u);
    }

    /// The sum, one row per (machine, SKU).
    pub fn finish(self) -> UnitAgg {
        self.agg
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
    /// Whole sealed records, in time order: hours up to the first whole
    /// day, days up to the first whole month, months, then days and hours
    /// again (empty ranges left out).
    pub whole: Vec<(Level, Range<u64>)>,
    /// The rest, raw with its predecessor (may be empty): inside one
    /// sealed hour, or from the first unsealed hour on.
    pub tail: Window,
}

/// Splits `[from, to)` (to ≥ from) given that hours before `sealed` (an
/// hour index) are aggregated, with the coarsest records that fit.
pub fn plan(from: u64, to: u64, sealed: u64) -> Plan {
    let to = to.max(from);
    let first_whole = (from / HOUR_MS + 1).saturating_mul(HOUR_MS);
    if first_whole >= to {
        return Plan {
            head: Window {
                from_ms: from,
                to_ms: to,
            },
            whole: Vec::new(),
            tail: Window {
                from_ms: to,
                to_ms: to,
            },
        };
    }
    let h0 = first_whole / HOUR_MS;
    let h1 = (to / HOUR_MS).min(sealed).max(h0);
    let (d0, d1) = (h0.div_ceil(DAY_HOURS), h1 / DAY_HOURS);
    let mut whole = Vec::with_capacity(5);
    if d0 < d1 {
        whole.push((Level::Hour, h0..d0 * DAY_HOURS));
        // The months that lie wholly in d0..d1: from the first that
        // starts on or after d0 to the one d1 falls in.
        let m = month_of_day(d0);
        let m0 = if month_start_day(m) < d0 { m + 1 } else { m };
        let m1 = month_of_day(d1);
        if m0 < m1 {
            whole.push((Level::Day, d0..month_start_day(m0)));
            whole.push((Level::Month, m0..m1));
            whole.push((Level::Day, month_start_day(m1)..d1));
        } else {
            whole.push((Level::Day, d0..d1));
        }
        whole.push((Level::Hour, d1 * DAY_HOURS..h1));
    } else {
        whole.push((Level::Hour, h0..h1));
    }
    whole.retain(|(_, r)| !r.is_empty());
    Plan {
        head: Window {
            from_ms: from,
            to_ms: first_whole,
        },
        whole,
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
        // Days sum their hours, months their days, as the shell seals them.
        let day = |d: u64| {
            let mut a = TimeAgg::default();
            for h in d * DAY_HOURS..(d + 1) * DAY_HOURS {
                a.add(&hour(h));
            }
            a
        };
        for (level, range) in &p.whole {
            for i in range.clone() {
                let a = match level {
                    Level::Hour => hour(i),
                    Level::Day => day(i),
                    Level::Month => {
                        let mut a = TimeAgg::default();
                        for d in month_start_day(i)..month_start_day(i + 1) {
                            a.add(&day(d));
                        }
                        a
                    }
                };
                t.add(&a.elements(sku));
            }
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

    /// Days since 1970-01-01 of a date, counted the slow way.
    fn days_to(y: u64, m: u64, d: u64) -> u64 {
        let leap =
            |y: u64| y.is_multiple_of(4) && (!y.is_multiple_of(100) || y.is_multiple_of(400));
        let len = |y: u64, m: u64| match m {
            2 if leap(y) => 29,
            2 => 28,
            4 | 6 | 9 | 11 => 30,
            _ => 31,
        };
        let years: u64 = (1970..y).map(|y| if leap(y) { 366 } else { 365 }).sum();
        years + (1..m).map(|m| len(y, m)).sum::<u64>() + d - 1
    }

    #[test]
    fn months_are_calendar_months_leap_days_included() {
        assert_eq!(month_start_day(0), 0);
        // 2024-03-01 is day 19 783: February 2024 had 29 days.
        assert_eq!(month_start_day(54 * 12 + 2), 19_783);
        assert_eq!(
            month_start_day(54 * 12 + 2) - month_start_day(54 * 12 + 1),
            29
        );
        assert_eq!(
            month_start_day(56 * 12 + 2) - month_start_day(56 * 12 + 1),
            28
        );
        for y in [1970, 1999, 2000, 2024, 2026, 2100] {
            for m in 1..=12 {
                let month = (y - 1970) * 12 + m - 1;
                assert_eq!(month_start_day(month), days_to(y, m, 1), "{y}-{m}");
                assert_eq!(month_of_day(days_to(y, m, 1)), month, "{y}-{m}");
                assert_eq!(
                    month_of_day(month_start_day(month + 1) - 1),
                    month,
                    "{y}-{m}"
                );
            }
        }
    }

    #[test]
    fn a_window_is_cut_into_its_head_whole_hours_days_months_and_tail() {
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
        assert_eq!(
            p.whole,
            vec![
                (Level::Hour, 1..24),
                (Level::Day, 1..3),
                (Level::Hour, 72..74)
            ]
        );
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
        assert_eq!(p.whole, vec![(Level::Hour, 6..7)]);
        assert_eq!(p.tail.from_ms, p.tail.to_ms);
        // Only hours before 40 sealed: the rest is one raw tail.
        let p = plan(h / 2, 100 * h, 40);
        assert_eq!(p.whole, vec![(Level::Hour, 1..40)]);
        assert_eq!(
            p.tail,
            Window {
                from_ms: 40 * h,
                to_ms: 100 * h
            }
        );
        // 2026-01-15 10:30 to 2026-04-03 05:15: the rest of the 15th by
        // hours, January by days, February and March whole, April by days
        // and hours.
        let (jan15, feb1, apr1, apr3) = (
            days_to(2026, 1, 15),
            days_to(2026, 2, 1),
            days_to(2026, 4, 1),
            days_to(2026, 4, 3),
        );
        let p = plan(
            jan15 * 24 * h + 10 * h + h / 2,
            apr3 * 24 * h + 5 * h + h / 4,
            u64::MAX,
        );
        let feb = (2026 - 1970) * 12 + 1;
        assert_eq!(
            p.whole,
            vec![
                (Level::Hour, jan15 * 24 + 11..(jan15 + 1) * 24),
                (Level::Day, jan15 + 1..feb1),
                (Level::Month, feb..feb + 2),
                (Level::Day, apr1..apr3),
                (Level::Hour, apr3 * 24..apr3 * 24 + 5),
            ]
        );
        assert_eq!(p.tail.to_ms - p.tail.from_ms, h / 4);
        // A window that starts on a month's first day takes that month.
        let p = plan(feb1 * 24 * h, apr1 * 24 * h, u64::MAX);
        assert_eq!(
            p.whole,
            vec![
                (Level::Hour, feb1 * 24 + 1..(feb1 + 1) * 24),
                (Level::Day, feb1 + 1..days_to(2026, 3, 1)),
                (Level::Month, feb + 1..feb + 2),
            ]
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn figures_through_the_aggregates_equal_the_raw_state_log_exactly(
            steps in prop::collection::vec(
                (0u64..400, state(), prop::option::of(1u64..5), 0usize..3),
                1..120,
            ),
            from in 0u64..150_000,
            len in 0u64..150_000,
            sealed_at in 0u64..4_000,
            scope in 0usize..4,
        ) {
            // Steps of minutes, some of them long (up to 5 days, so months
            // go by) and some zero (changes in the same ms and at hour
            // boundaries happen); the log starts on 1970-01-01, so month
            // edges are February's too. Jobs 1 and 2 are SKU a's, 3 is
            // b's, 4 belongs to no order.
            let mut at = 0;
            let log: Vec<StateChange> = steps
                .iter()
                .enumerate()
                .map(|(i, (d, (s, r), j, scale))| {
                    at += d * M * [1, 5, 18][*scale];
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
