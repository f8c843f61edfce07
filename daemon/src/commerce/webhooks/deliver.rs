//! The deliverer: POSTs each active receiver's oldest pending delivery,
//! signed, and stores the outcome with the next attempt's time before
//! going on. The only module that knows the HTTP client.

use std::sync::Arc;
use std::time::Duration;

use tracing::{Instrument, info_span, warn};

use super::model::{AttemptRecord, Delivery, Receiver, ReceiverState, sign};
use super::schedule::{after_attempt, delivered};
use super::{Result, Webhooks};
use crate::clock::now_ms;
use crate::mqtt::backoff::jitter;
use crate::store::Batch;

/// The headers every delivery carries.
pub const SIGNATURE: &str = "X-Microfactory-Signature";
/// The delivery id (`<receiver>:<seq>`), the same on every attempt.
pub const DELIVERY: &str = "X-Microfactory-Delivery";
/// When this attempt was sent, seconds since the Unix epoch.
pub const TIMESTAMP: &str = "X-Microfactory-Timestamp";
/// The topic, so a receiver can route before parsing.
pub const TOPIC: &str = "X-Microfactory-Topic";

/// Wait after a storage error before the next round.
const AFTER_ERROR: Duration = Duration::from_secs(1);

/// Longest sleep without looking again (a clock that jumps is noticed).
const LONGEST_SLEEP: Duration = Duration::from_secs(60);

impl Webhooks {
    /// Delivers until shutdown. Each receiver's attempt runs as a task of
    /// its own, so a receiver that takes its whole timeout delays nobody
    /// else; a finished attempt wakes this loop for that receiver's next.
    pub(super) async fn deliver(self: Arc<Self>) {
        loop {
            let sleep = match self.round() {
                Ok(Some(due)) => Duration::from_millis(due.saturating_sub(now_ms())),
                Ok(None) => LONGEST_SLEEP,
                Err(e) => {
                    warn!(error = %e, "webhook delivery round failed; retrying");
                    AFTER_ERROR
                }
            };
            tokio::select! {
                () = tokio::time::sleep(sleep.min(LONGEST_SLEEP)) => {}
                () = self.wake.notified() => {}
                () = self.cancel.cancelled() => return,
            }
        }
    }

    /// Starts an attempt for every active receiver whose oldest pending
    /// delivery is due and that has none in flight; returns when to look
    /// again (`None`: nothing waits but what is in flight).
    fn round(self: &Arc<Self>) -> Result<Option<u64>> {
        let now = now_ms();
        let mut soonest: Option<u64> = None;
        for r in self.store.webhooks()? {
            if r.state != ReceiverState::Active || self.in_flight().contains(&r.id) {
                continue;
            }
            let Some(head) = self.store.pending_head(&r.id)? else {
                continue;
            };
            if head.next_attempt_ms > now {
                let at = head.next_attempt_ms;
                soonest = Some(soonest.map_or(at, |s| s.min(at)));
                continue;
            }
            self.in_flight().insert(r.id.clone());
            let w = Arc::clone(self);
            let span = info_span!("webhook", receiver = %r.id, delivery = %head.id);
            self.tasks.spawn(
                async move {
                    let id = r.id.clone();
                    if let Err(e) = w.attempt(r, head).await {
                        warn!(error = %e, "could not store a webhook attempt; it is made again");
                        tokio::time::sleep(AFTER_ERROR).await;
                    }
                    w.in_flight().remove(&id);
                    w.wake.notify_one();
                }
                .instrument(span),
            );
        }
        Ok(soonest)
    }

    fn in_flight(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<String>> {
        self.in_flight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// One attempt, then its outcome stored.
    async fn attempt(&self, r: Receiver, d: Delivery) -> Result<()> {
        let sent = tokio::select! {
            a = self.post(&r, &d) => a,
            () = self.cancel.cancelled() => return Ok(()),
        };
        let _g = self.lock.lock().await;
        // The receiver may have been removed, changed or enabled meanwhile.
        let (Some(mut receiver), Some(mut delivery)) = (
            self.store.webhook(&r.id)?,
            self.store.delivery(&r.id, d.seq)?,
        ) else {
            return Ok(());
        };
        if delivered(&sent) {
            tracing::debug!(status = ?sent.status, "delivered");
        } else {
            tracing::info!(status = ?sent.status, error = ?sent.error, "delivery failed");
        }
        after_attempt(&self.policy, &mut receiver, &mut delivery, sent, jitter());
        if receiver.state == ReceiverState::Disabled && r.state == ReceiverState::Active {
            warn!(
                failures = receiver.consecutive_failures,
                "webhook receiver disabled after repeated failures; enable it with POST /api/v1/webhooks/{}/enable",
                receiver.id
            );
        }
        self.commit(&Batch {
            webhooks: vec![receiver],
            deliveries: vec![delivery],
            ..Batch::default()
        })
        .await
    }

    /// POSTs the delivery's body, signed; the attempt as it went.
    async fn post(&self, r: &Receiver, d: &Delivery) -> AttemptRecord {
        let at_ms = now_ms();
        let sent = self
            .client
            .post(&r.url)
            .timeout(self.policy.timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(SIGNATURE, sign(r.secret.as_bytes(), d.body.as_bytes()))
            .header(DELIVERY, &d.id)
            .header(TIMESTAMP, (at_ms / 1000).to_string())
            .header(TOPIC, &d.topic)
            .body(d.body.clone())
            .send()
            .await;
        match sent {
            Ok(res) => AttemptRecord {
                at_ms,
                status: Some(res.status().as_u16()),
                error: None,
            },
            Err(e) => AttemptRecord {
                at_ms,
                status: None,
                error: Some(describe(&e)),
            },
        }
    }
}

/// A client error in words, with its causes (reqwest's own text is only
/// "error sending request").
fn describe(e: &reqwest::Error) -> String {
    let mut out = if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_connect() {
        "could not connect".to_string()
    } else {
        "request failed".to_string()
    };
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
