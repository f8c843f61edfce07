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
    /// Delivers until shutdown.
    pub(super) async fn deliver(self: Arc<Self>) {
        loop {
            let sleep = match self.round().await {
                Ok(Some(due)) => Duration::from_millis(due.saturating_sub(now_ms())),
                Ok(None) => LONGEST_SLEEP,
                Err(e) => {
                    warn!(error = %e, "webhook delivery round failed; retrying");
                    AFTER_ERROR
                }
            };
            if sleep.is_zero() {
                if self.cancel.is_cancelled() {
                    return;
                }
                continue;
            }
            tokio::select! {
                () = tokio::time::sleep(sleep.min(LONGEST_SLEEP)) => {}
                () = self.wake.notified() => {}
                () = self.cancel.cancelled() => return,
            }
        }
    }

    /// Attempts every active receiver's due head delivery, side by side;
    /// returns when to look again (`None`: nothing waits).
    async fn round(&self) -> Result<Option<u64>> {
        let now = now_ms();
        let mut due = Vec::new();
        let mut soonest: Option<u64> = None;
        for r in self.store.webhooks()? {
            if r.state != ReceiverState::Active {
                continue;
            }
            let Some(head) = self.store.pending_head(&r.id)? else {
                continue;
            };
            if head.next_attempt_ms <= now {
                due.push((r, head));
            } else {
                soonest =
                    Some(soonest.map_or(head.next_attempt_ms, |s| s.min(head.next_attempt_ms)));
            }
        }
        if due.is_empty() {
            return Ok(soonest);
        }
        let attempts = due.into_iter().map(|(r, d)| {
            let span = info_span!("webhook", receiver = %r.id, delivery = %d.id);
            self.attempt(r, d).instrument(span)
        });
        for result in futures_util::future::join_all(attempts).await {
            result?;
        }
        Ok(Some(0))
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
