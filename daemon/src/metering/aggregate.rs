//! The shell of [`hourly`]: keeps the aggregates in the store and reads
//! windows through them.
//!
//! Units: every batch that writes new units or an inspection also
//! writes the hour, day and month records they change, of their machine
//! and of their SKU (under metering's lock, so read-modify-write never
//! interleaves). Time: after each chunk of the log, the reader seals the
//! hours of the machines whose state changed, up to the hour of their
//! last change, and with them every day and month they complete. A store
//! written before the aggregates (or before schema 2, whose migration
//! drops the old ones) gets its unit records built once at start; until
//! then, and for any hour not sealed, queries read the raw records.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};

use tracing::warn;

use super::hourly::{self, DAY_HOURS, HOUR_MS, Level, TimeAgg, UnitAgg, UnitKey, UnitSum};
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
/// Unit records written per commit while building them.
const BUILD_BATCH_RECORDS: usize = 20_000;
/// Most products whose edge units are read through the per-SKU index,
/// one range read each; past it, one read of every unit ended then is
/// cheaper.
const EDGE_SKUS_BY_INDEX: usize = 8;

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
    /// in the hour, day and month records of their machines and SKUs,
    /// into `batch`. Public for whoever writes units as the log reader
    /// does (tools, tests): metrics and APC read units only through these
    /// records.
    pub fn count_units(
        &self,
        new: &[Unit],
        changed: &[(Unit, Unit)],
        batch: &mut Batch,
    ) -> Result<()> {
        if !self.units_built()? {
            return Ok(());
        }
        // Every record touched, read once, then changed in memory.
        let mut aggs: BTreeMap<(UnitKey, Level, u64), UnitAgg> = BTreeMap::new();
        let touched = new.iter().chain(changed.iter().flat_map(|(b, a)| [b, a]));
        for place in touched.flat_map(places) {
            if let std::collections::btree_map::Entry::Vacant(v) = aggs.entry(place) {
                let (key, level, i) = v.key();
                let stored = self
                    .store
                    .unit_aggs(key, *level, *i, i + 1)?
                    .pop()
                    .map(|(_, a)| a)
                    .unwrap_or_default();
                v.insert(stored);
            }
        }
        for u in new {
            for place in places(u) {
                if let Some(a) = aggs.get_mut(&place) {
                    a.add_unit(u);
                }
            }
        }
        for (before, after) in changed {
            for place in places(before) {
                if let Some(a) = aggs.get_mut(&place) {
                    a.remove_unit(before);
                }
            }
            for place in places(after) {
                if let Some(a) = aggs.get_mut(&place) {
                    a.add_unit(after);
                }
            }
        }
        batch
            .unit_aggs
            .extend(aggs.into_iter().map(|((k, level, i), a)| (k, level, i, a)));
        Ok(())
    }

    fn units_built(&self) -> Result<bool> {
        Ok(self.store.machine_seal(UNITS_BUILT)?.is_some())
    }

    /// Builds the unit records of a store written before them (once), in
    /// commits of a bounded size; the mark that they are built goes with
    /// the last, so a crash before it builds them all again.
    pub(super) async fn build_unit_aggs(&self) -> Result<()> {
        let _g = self.lock.lock().await;
        if self.units_built()? {
            return Ok(());
        }
        let mut aggs: BTreeMap<(UnitKey, Level, u64), UnitAgg> = BTreeMap::new();
        for u in self.store.units()? {
            for place in places(&u) {
                aggs.entry(place).or_default().add_unit(&u);
            }
        }
        let mut records = aggs.into_iter().map(|((k, level, i), a)| (k, level, i, a));
        loop {
            let chunk: Vec<_> = records.by_ref().take(BUILD_BATCH_RECORDS).collect();
            let last = chunk.len() < BUILD_BATCH_RECORDS;
            let batch = Batch {
                unit_aggs: chunk,
                machine_seals: if last {
                    vec![(UNITS_BUILT.to_string(), 1)]
                } else {
                    Vec::new()
                },
                ..Batch::default()
            };
            self.commit(&batch).await?;
            if last {
                return Ok(());
            }
        }
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

    /// Seals `machine`'s hours up to the hour of its last state change,
    /// and the days and months they complete; the caller holds metering's
    /// lock.
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
        // The first day may have hours sealed before, and its month days:
        // read them once.
        let first_day = start / DAY_HOURS;
        let first_month = Level::Month.of_hour(start);
        let mut day = TimeAgg::default();
        for (_, a) in self
            .store
            .time_aggs(machine, Level::Hour, first_day * DAY_HOURS, start)?
        {
            day.add(&a);
        }
        let mut month = TimeAgg::default();
        for (_, a) in self.store.time_aggs(
            machine,
            Level::Day,
            hourly::month_start_day(first_month),
            first_day,
        )? {
            month.add(&a);
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
                let d = h / DAY_HOURS;
                month.add(&day);
                batch.time_aggs.push((
                    machine.to_string(),
                    Level::Day,
                    d,
                    std::mem::take(&mut day),
                ));
                let m = hourly::month_of_day(d);
                if hourly::month_start_day(m + 1) == d + 1 {
                    batch.time_aggs.push((
                        machine.to_string(),
                        Level::Month,
                        m,
                        std::mem::take(&mut month),
                    ));
                }
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
        // Whole records, summed as each range is read: a query holds one
        // range (at most a month's days) at a time, whatever the history.
        let mut whole = TimeAgg::default();
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
            for (level, range) in p.whole {
                for (_, a) in self.store.time_aggs(m, level, range.start, range.end)? {
                    whole.add(&a);
                }
            }
            if p.tail.to_ms > p.tail.from_ms {
                let list = match hour(p.tail.from_ms / HOUR_MS)? {
                    Some(list) => list,
                    None => self.store.machine_states(m, p.tail.from_ms, p.tail.to_ms)?,
                };
                edge(&list, p.tail);
            }
        }
        t.add(&whole);
        Ok(t)
    }

    /// The units of `w` that `keys` count (`None`: every unit), by
    /// machine and SKU, through the aggregates: whole hours, days and
    /// months from each key's records (every SKU's for `None`), the edges
    /// raw. Pass keys of one kind: a unit counted by two keys (its
    /// machine and its SKU) would appear twice.
    pub(super) fn units_through(&self, w: Window, keys: Option<&[UnitKey]>) -> Result<UnitAgg> {
        let mut out = UnitSum::default();
        let counted =
            |u: &Unit| keys.is_none_or(|k| k.iter().any(|k| k.counts(&u.machine_id, &u.sku)));
        if !self.units_built()? {
            for u in self.store.units_between(w.from_ms, w.to_ms)? {
                if counted(&u) {
                    out.add_unit(&u);
                }
            }
            return Ok(out.finish());
        }
        let every_sku;
        let keys = match keys {
            Some(k) => k,
            None => {
                every_sku = self
                    .store
                    .unit_agg_skus()?
                    .into_iter()
                    .map(UnitKey::Sku)
                    .collect::<Vec<_>>();
                &every_sku
            }
        };
        let p = hourly::plan(w.from_ms, w.to_ms, u64::MAX);
        // A few products (a SKU's figures, APC's): the edges read each
        // one's units through its own index, not every unit made then.
        let mut skus: Option<Vec<&str>> = keys
            .iter()
            .map(|k| match k {
                UnitKey::Sku(s) => Some(s.as_str()),
                UnitKey::Machine(_) => None,
            })
            .collect();
        if let Some(v) = &mut skus {
            v.sort_unstable();
            v.dedup();
        }
        let skus = skus.filter(|v| v.len() <= EDGE_SKUS_BY_INDEX);
        for e in [p.head, p.tail] {
            if e.to_ms <= e.from_ms {
                continue;
            }
            let units = match &skus {
                Some(skus) => {
                    let mut v = Vec::new();
                    for sku in skus {
                        v.extend(self.store.units_of_sku(sku, e.from_ms, e.to_ms)?);
                    }
                    v
                }
                None => self.store.units_between(e.from_ms, e.to_ms)?,
            };
            for u in units {
                if counted(&u) {
                    out.add_unit(&u);
                }
            }
        }
        for key in keys {
            for (level, range) in &p.whole {
                for (_, a) in self.store.unit_aggs(key, *level, range.start, range.end)? {
                    out.add(&a);
                }
            }
        }
        Ok(out.finish())
    }
}

/// The records that count `u`: its machine's and its SKU's, of its hour,
/// day and month.
fn places(u: &Unit) -> impl Iterator<Item = (UnitKey, Level, u64)> {
    let h = u.ended_ms / HOUR_MS;
    UnitKey::of(u).into_iter().flat_map(move |k| {
        Level::ALL
            .into_iter()
            .map(move |level| (k.clone(), level, level.of_hour(h)))
    })
}
