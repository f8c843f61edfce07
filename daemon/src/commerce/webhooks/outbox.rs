//! The outbox: follows the durable domain log by cursor and stores one
//! delivery per (record, subscribed receiver), in the same commit that
//! moves the cursor past the records. After a crash either the
//! deliveries and the cursor are there or neither is, and the chunk is
//! read again, making the same delivery ids.

use std::sync::Arc;
use std::time::Duration;

use super::model::delivery_for;
use super::{Result, Webhooks};
use crate::clock::now_ms;
use crate::core::events::LogRecord;
use crate::store::Batch;

/// The outbox's cursor name.
pub const CURSOR: &str = "webhooks";

/// Most log records handled in one commit.
const CHUNK: usize = 256;

/// How long new log records may gather before they are read (a burst of
/// commits becomes one outbox commit).
const GATHER: Duration = Duration::from_millis(50);

impl Webhooks {
    /// Follows the log until shutdown.
    pub(super) async fn read_log(self: Arc<Self>) {
        let store = self.store.clone();
        store
            .follow_log("webhook outbox", GATHER, &self.cancel, |durable| {
                self.catch_up(durable)
            })
            .await;
    }

    /// Handles one chunk of durable records after the cursor; `true` when
    /// there may be more.
    pub async fn catch_up(&self, durable: u64) -> Result<bool> {
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
        let receivers = self.store.webhooks()?;
        let now = now_ms();
        let deliveries: Vec<_> = records
            .iter()
            .flat_map(|rec| {
                receivers
                    .iter()
                    .filter_map(move |r| delivery_for(r, rec, now))
            })
            .collect();
        if deliveries.is_empty() {
            // Nothing to send: moving the cursor is one plain write, made
            // durable by the next flush (re-reading makes nothing again).
            self.store.set_cursor(CURSOR, last)?;
        } else {
            let n = deliveries.len();
            self.commit(&Batch {
                deliveries,
                cursors: vec![(CURSOR, last)],
                ..Batch::default()
            })
            .await?;
            tracing::debug!(deliveries = n, up_to = last, "webhook deliveries queued");
            self.wake.notify_one();
        }
        Ok(last < durable)
    }
}
