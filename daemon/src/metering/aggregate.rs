//! The shell of [`hourly`]: keeps the aggregates in the store and reads
//! windows through them.
//!
//! Units: every batch that writes new units or an inspection also
//! writes the hour and day records they change (under metering's lock,
//! so read-modify-write never interleaves). Time: after each chunk of the
//! log, the reader seals the hours of the machines whose state changed,
//! up to the hour of their last change. A store written before the
//! aggregates gets its unit records built once at start; until then, and
//! for any hour not sealed, queries read the raw records.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};

use tracing::warn;

use super::hourly::{self, DAY_HOURS, HOUR_MS, Level, TimeAgg, UnitAgg};
use super::model::Unit;
use super::oee::{self, Quantities, Window};
use super::{Metering, Result};
use crate::clock::now_ms;
use crate::core::machine::StateChange;
use crate::store::{Batch, Store};

/// The `machine_seals` entry that says the unit records are built.
const UNITS_BUILT: &str = "\u{0}units";
/// Hour records written per commit while sealing.
const SEAL_BATCH_HOURS: usize = 24 * 14;

/// Which product a job's order makes, looked up in the store once per
/// job: a SKU's spans without reading every order's job list.
pub(super) struct JobSkus<'a> {
    store: &'a Store,
    cache: RefCell<HashMap<u64, Option<String>>>,
    /// Order id → SKU: an order record holds its whole job list.
    orders: RefCell<HashMap<u64, Option<String>>>,
}

impl<'a> JobSkus<'a> {
    pub(super) fn new(store: &'a Store) -> Self {
        Self {
            store,
            cache: RefCell::new(HashMap::new()),
            orders: RefCell::new(HashMap::new()),
        }
    }

    /// The SKU of `job`'s production order (`None`: not an order's, or
    /// the store could not say, which is logged).
    pub(super) fn sku_of(&self, job: u64) -> Option<String> {
        if let Some(s) = self.cache.borrow().get(&job) {
            return s.clone();
        }
        let looked_up = self.store.order_of_job(job).and_then(|o| {
            let Some(o) = o else {
                return Ok(None);
            };
            if let Some(s) = self.orders.borrow().get(&o) {
                return Ok(s.clone());
            }
            let sku = self.store.order(o)?.map(|o| o.sku);
            self.orders.borrow_mut().insert(o, sku.clone());
            Ok(sku)
        });
        let sku = looked_up.unwrap_or_else(|e| {
            warn!(job, error = %e, "could not read a job's production order");
            None
        });
        self.cache.borrow_mut().insert(job, sku.clone());
        sku
    }
}

/// What the units of a scope and window add up to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnitTotals {
    /// The quantities.
    pub q: Quantities,
    /// Attempts that made them.
    pub attempts: u64,
    /// Inspections by a person.
    pub inspections: u64,
}

impl UnitTotals {
    /// The rows of `a` that `keep` picks (by machine and SKU), summed.
    pub fn of(a: &UnitAgg, keep: impl Fn(&str, &str) -> bool) -> Self {
        let mut out = Self::default();
        for r in a.rows.iter().filter(|r| keep(&r.machine, &r.sku)) {
            out.q.add(&r.q);
            out.attempts += r.attempts;
            out.inspections += r.inspections;
        }
        out
    }
}

impl Metering {
    /// Adds `new` units and re-counts `changed` ones (`(before, after)`)
    /// in the hour and day records, into `batch`. Public for whoever
    /// writes units as the log reader does (tools, tests): metrics and
    /// APC read units only through these records.
    pub fn count_units(
        &self,
        new: &[Unit],
        changed: &[(Unit, Unit)],
        batch: &mut Batch,
    ) -> Result<()> {
        if !self.units_built()? {
            return Ok(());
        }
        let places = |u: &Unit| {
            let h = u.ended_ms / HOUR_MS;
            [(Level::Hour, h), (Level::Day, h / DAY_HOURS)]
        };
        // Every record touched, read once, then changed in memory.
        let mut aggs: BTreeMap<(u8, u64), (Level, UnitAgg)> = BTreeMap::new();
        let touched = new
            .iter()
            .chain(changed.iter().flat_map(|(b, a)| [b, a]))
            .flat_map(places);
        for (level, i) in touched {
            if let std::collections::btree_map::Entry::Vacant(v) = aggs.entry((level.byte(), i)) {
                let stored = self
                    .store
                    .unit_aggs(level, i, i + 1)?
                    .pop()
                    .map(|(_, a)| a)
                    .unwrap_or_default();
                v.insert((level, stored));
            }
        }
        for u in new {
            for (level, i) in places(u) {
                if let Some((_, a)) = aggs.get_mut(&(level.byte(), i)) {
                    a.add_unit(u);
                }
            }
        }
        for (before, after) in changed {
            for (level, i) in places(before) {
                if let Some((_, a)) = aggs.get_mut(&(level.byte(), i)) {
                    a.remove_unit(before);
                }
            }
            for (level, i) in places(after) {
                if let Some((_, a)) = aggs.get_mut(&(level.byte(), i)) {
                    a.add_unit(after);
                }
            }
        }
        batch
            .unit_aggs
            .extend(aggs.into_iter().map(|((_, i), (level, a))| (level, i, a)));
        Ok(())
    }

    fn units_built(&self) -> Result<bool> {
        Ok(self.store.machine_seal(UNITS_BUILT)?.is_some())
    }

    /// Builds the unit records of a store written before them (once).
    pub(super) async fn build_unit_aggs(&self) -> Result<()> {
        let _g = self.lock.lock().await;
        if self.units_built()? {
            return Ok(());
        }
        let mut aggs: BTreeMap<(u8, u64), (Level, UnitAgg)> = BTreeMap::new();
        for u in self.store.units_between(0, u64::MAX)? {
            let h = u.ended_ms / HOUR_MS;
            for (level, i) in [(Level::Hour, h), (Level::Day, h / DAY_HOURS)] {
                aggs.entry((level.byte(), i))
                    .or_insert_with(|| (level, UnitAgg::default()))
                    .1
                    .add_unit(&u);
            }
        }
        let batch = Batch {
            unit_aggs: aggs
                .into_iter()
                .map(|((_, i), (level, a))| (level, i, a))
                .collect(),
            machine_seals: vec![(UNITS_BUILT.to_string(), 1)],
            ..Batch::default()
        };
        self.commit(&batch).await
    }

    /// Brings the aggregates up to date with the store: the unit records
    /// once, then every machine's hours. The log reader does this when it
    /// starts; tools and benchmarks over a store written offline call it.
    pub async fn aggregate_history(&self) -> Result<()> {
        self.build_unit_aggs().await?;
        let _g = self.lock.lock().await;
        let skus = JobSkus::new(&self.store);
        for (m, _) in &self.classes {
            self.seal(m, &skus)?;
        }
        Ok(())
    }

    /// Seals `machine`'s hours up to the hour of its last state change;
    /// the caller holds metering's lock.
    pub(super) fn seal(&self, machine: &str, skus: &JobSkus<'_>) -> Result<()> {
        let Some(last) = self.store.last_machine_state(machine)? else {
            return Ok(());
        };
        let target = last.at_ms / HOUR_MS;
        let start = match self.store.machine_seal(machine)? {
            Some(s) => s,
            None => match self.store.first_machine_state(machine)? {
                Some(first) => first.at_ms / HOUR_MS,
                None => return Ok(()),
            },
        };
        if start >= target {
            return Ok(());
        }
        let changes = self
            .store
            .machine_states(machine, start * HOUR_MS, target * HOUR_MS - 1)?;
        let sku_of = |j: u64| skus.sku_of(j);
        let hours: Vec<(u64, TimeAgg)> = hourly::hour_lists(&changes, start..target)
            .into_iter()
            .map(|(h, list)| (h, hourly::seal_hour(list, h, &sku_of)))
            .collect();
        // The first day may have hours sealed before: read them once.
        let first_day = start / DAY_HOURS;
        let mut day = TimeAgg::default();
        for (_, a) in self
            .store
            .time_aggs(machine, Level::Hour, first_day * DAY_HOURS, start)?
        {
            day.add(&a);
        }
        let mut batch = Batch::default();
        let mut written = 0;
        for (h, a) in hours {
            day.add(&a);
            batch
                .time_aggs
                .push((machine.to_string(), Level::Hour, h, a));
            written += 1;
            let day_done = (h + 1) % DAY_HOURS == 0;
            if day_done {
                batch.time_aggs.push((
                    machine.to_string(),
                    Level::Day,
                    h / DAY_HOURS,
                    std::mem::take(&mut day),
                ));
            }
            if (day_done && written >= SEAL_BATCH_HOURS) || h + 1 == target {
                batch.machine_seals.push((machine.to_string(), h + 1));
                self.store.commit(&batch, now_ms())?;
                batch = Batch::default();
                written = 0;
            }
        }
        Ok(())
    }

    /// The time of `machines` over `w` through the aggregates: of every
    /// span, and of each SKU's jobs' spans. Equal to the raw computation.
    pub(super) fn time_through(
        &self,
        machines: &[String],
        w: Window,
        now: u64,
        skus: &JobSkus<'_>,
    ) -> Result<TimeAgg> {
        let to = w.to_ms.min(now).max(w.from_ms);
        let mut t = TimeAgg::default();
        // An edge: every span, and each SKU's (raw, from `list`).
        let mut edge = |list: &[StateChange], e: Window| {
            t.all.add(&oee::time_elements(list, e, now, |_| true));
            let mut of: Vec<String> = list
                .iter()
                .filter_map(|c| c.job_id.and_then(|j| skus.sku_of(j)))
                .collect();
            of.sort_unstable();
            of.dedup();
            for s in of {
                let te = oee::time_elements(list, e, now, |c| {
                    c.job_id.and_then(|j| skus.sku_of(j)).as_deref() == Some(s.as_str())
                });
                t.by_sku.entry(s).or_default().add(&te);
            }
        };
        let mut whole = Vec::new();
        for m in machines {
            let sealed = self.store.machine_seal(m)?.unwrap_or(0);
            let p = hourly::plan(w.from_ms, to, sealed);
            // A sealed hour without a record lies before the machine's
            // first change: nothing happened in it.
            let hour = |h: u64| -> Result<Option<Vec<StateChange>>> {
                if h >= sealed {
                    return Ok(None);
                }
                Ok(Some(
                    self.store
                        .time_aggs(m, Level::Hour, h, h + 1)?
                        .pop()
                        .map(|(_, a)| a.changes)
                        .unwrap_or_default(),
                ))
            };
            let head = match hour(p.head.from_ms / HOUR_MS)? {
                Some(list) => hourly::states_in(&list, p.head.from_ms, p.head.to_ms),
                None => self.store.machine_states(m, p.head.from_ms, p.head.to_ms)?,
            };
            edge(&head, p.head);
            for range in [p.lead_hours.clone(), p.trail_hours.clone()] {
                whole.extend(
                    self.store
                        .time_aggs(m, Level::Hour, range.start, range.end)?,
                );
            }
            whole.extend(
                self.store
                    .time_aggs(m, Level::Day, p.days.start, p.days.end)?,
            );
            if p.tail.to_ms > p.tail.from_ms {
                let list = match hour(p.tail.from_ms / HOUR_MS)? {
                    Some(list) => list,
                    None => self.store.machine_states(m, p.tail.from_ms, p.tail.to_ms)?,
                };
                edge(&list, p.tail);
            }
        }
        for (_, a) in &whole {
            t.add(a);
        }
        Ok(t)
    }

    /// The units of `w` by machine and SKU through the aggregates: whole
    /// hours and days from the records, the edges raw.
    pub(super) fn units_through(&self, w: Window) -> Result<UnitAgg> {
        let mut out = UnitAgg::default();
        if !self.units_built()? {
            for u in self.store.units_between(w.from_ms, w.to_ms)? {
                out.add_unit(&u);
            }
            return Ok(out);
        }
        let p = hourly::plan(w.from_ms, w.to_ms, u64::MAX);
        for e in [p.head, p.tail] {
            if e.to_ms > e.from_ms {
                for u in self.store.units_between(e.from_ms, e.to_ms)? {
                    out.add_unit(&u);
                }
            }
        }
        for range in [p.lead_hours.clone(), p.trail_hours.clone()] {
            for (_, a) in self.store.unit_aggs(Level::Hour, range.start, range.end)? {
                out.add(&a);
            }
        }
        for (_, a) in self.store.unit_aggs(Level::Day, p.days.start, p.days.end)? {
            out.add(&a);
        }
        Ok(out)
    }
}
