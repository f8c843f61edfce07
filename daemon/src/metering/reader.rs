//! The metering log reader: follows the durable domain log by cursor and
//! turns each ended attempt of an order's job into units.
//!
//! At least once, without duplicates: a chunk of records is handled in
//! one commit that also moves the cursor past it, so after a crash either
//! the units and the cursor are there or neither is, and the chunk is read
//! again. The store also refuses a second unit in the same (job, attempt,
//! index) place, whatever happens.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tracing::warn;

use super::production::units_of_attempt;
use super::{Metering, Result};
use crate::clock::now_ms;
use crate::core::events::{DomainEvent, LogRecord};
use crate::core::model::Attempt;
use crate::metering::model::Order;
use crate::store::Batch;

/// The reader's cursor name.
pub const CURSOR: &str = "metering";

/// Most log records handled in one commit.
const CHUNK: usize = 256;

/// How long the reader lets new log records gather before it reads them.
const GATHER: Duration = Duration::from_millis(100);

impl Metering {
    /// Follows the log until shutdown.
    pub(super) async fn read_log(self: Arc<Self>) {
        if let Err(e) = self.recover().await {
            warn!(error = %e, "metering could not recover production orders");
        }
        if let Err(e) = self.aggregate_history().await {
            warn!(error = %e, "metering could not bring its aggregates up to date");
        }
        let store = self.store.clone();
        store
            .follow_log("metering", GATHER, &self.cancel, |durable| {
                self.catch_up(durable)
            })
            .await;
    }

    /// Handles one chunk of durable records after the cursor; `true` when
    /// there may be more.
    pub(super) async fn catch_up(&self, durable: u64) -> Result<bool> {
        let _g = self.lock.lock().await;
        let cursor = self.store.cursor(CURSOR)?;
        if cursor >= durable {
            return Ok(false);
        }
        let records: Vec<Arc<LogRecord>> = self
            .store
            .log_after(cursor, CHUNK)?
            .into_iter()
            .take_while(|r| r.seq <= durable)
            .collect();
        let Some(last) = records.last().map(|r| r.seq) else {
            return Ok(false);
        };
        let mut batch = Batch {
            cursors: vec![(CURSOR, last)],
            ..Batch::default()
        };
        let mut orders: BTreeMap<u64, Order> = BTreeMap::new();
        let mut serials = self.store.unit_counter()?;
        let before = self.summary()?;
        let mut summary = before.clone();
        for r in &records {
            if let DomainEvent::AttemptEnded {
                job_id, attempt, ..
            } = &r.event
            {
                let Some(attempt) = self
                    .store
                    .attempts(*job_id)?
                    .into_iter()
                    .find(|a| a.n == *attempt)
                else {
                    warn!(job = job_id, attempt, "an ended attempt has no record");
                    continue;
                };
                if r.seq > summary.through_seq {
                    summary.attempt_ended(&attempt);
                }
                self.attempt_ended(&attempt, &mut orders, &mut serials, &mut batch)?;
            }
        }
        for u in &batch.units {
            summary.unit_made(u);
        }
        let new_units = std::mem::take(&mut batch.units);
        self.count_units(&new_units, &[], &mut batch)?;
        batch.units = new_units;
        let touched: BTreeSet<u64> = orders.keys().copied().collect();
        batch.orders = orders.into_values().collect();
        if !batch.units.is_empty() {
            batch.unit_counter = Some(serials);
        }
        let counted = summary != before;
        if counted {
            summary.through_seq = last;
            batch.metering_summary = Some(summary.clone());
        }
        let records_made = !batch.units.is_empty() || !batch.orders.is_empty() || counted;
        if records_made {
            self.store.commit(&batch, now_ms())?;
        } else {
            // Nothing made: moving the cursor is one plain write, not a
            // transaction (every submission's event passes here).
            self.store.set_cursor(CURSOR, last)?;
        }
        // Units and orders are acknowledged to nobody but must survive
        // before an order tops up; a cursor that only moved past records
        // that made nothing need not be durable now (the next flush of
        // anyone's takes it along; a crash before means reading those
        // records again, which makes nothing again). Flushing here for
        // every log advance doubled the fsyncs of every submission.
        if records_made {
            self.store.flush().await?;
        }
        if counted {
            self.set_summary(summary);
        }
        let mut changed: Vec<&str> = records
            .iter()
            .filter_map(|r| match &r.event {
                DomainEvent::MachineState { machine_id, .. } => Some(machine_id.as_str()),
                _ => None,
            })
            .collect();
        changed.sort_unstable();
        changed.dedup();
        let skus = super::aggregate::JobSkus::new(&self.store);
        for m in changed {
            if let Err(e) = self.seal(m, &skus) {
                warn!(machine = m, error = %e, "metering could not aggregate a machine's hours");
            }
        }
        for id in touched {
            if let Err(e) = self.top_up_locked(id).await {
                warn!(order = id, error = %e, "could not queue an order's jobs");
            }
        }
        Ok(last < durable)
    }

    /// The units of one ended attempt, if its job is an order's.
    fn attempt_ended(
        &self,
        attempt: &Attempt,
        orders: &mut BTreeMap<u64, Order>,
        serials: &mut u64,
        batch: &mut Batch,
    ) -> Result<()> {
        let job_id = attempt.job_id;
        let Some(order_id) = self.store.order_of_job(job_id)? else {
            return Ok(());
        };
        let order = match orders.entry(order_id) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(v) => {
                let Some(o) = self.store.order(order_id)? else {
                    warn!(
                        order = order_id,
                        job = job_id,
                        "a job's production order is gone"
                    );
                    return Ok(());
                };
                v.insert(o)
            }
        };
        let (file, lines_total) = match self.store.job(job_id)? {
            Some(j) => (j.file_id, j.progress.lines_total),
            None => (order.file_id.clone(), 0),
        };
        let lines_total = if lines_total > 0 {
            lines_total
        } else {
            self.store.file(&file)?.map_or(0, |f| f.analysis.commands)
        };
        let made = units_of_attempt(order, attempt, &file, lines_total, *serials + 1);
        // Already made (the store would skip them too, but the serials
        // would be spent).
        let fresh = made.units.first().is_none_or(|u| {
            !self
                .store
                .unit_at(u.job_id, u.attempt, u.index)
                .is_ok_and(|held| held.is_some())
        });
        if fresh {
            *serials += made.units.len() as u64;
            batch
                .events
                .extend(made.units.iter().map(|u| DomainEvent::UnitMade {
                    serial: u.serial.clone(),
                    sku: u.sku.clone(),
                    order_id: u.order_id,
                    job_id: u.job_id,
                    attempt: u.attempt,
                    machine_id: u.machine_id.clone(),
                    qc: u.qc,
                }));
            batch.units.extend(made.units);
        }
        if made.settled
            && let Some(j) = order.jobs.iter_mut().find(|j| j.job_id == job_id)
        {
            j.settled = true;
        }
        Ok(())
    }
}
