//! When to try a delivery again, and when to give up on a receiver for
//! now. Pure: the caller passes `now` and a uniform random number.
//!
//! A receiver's deliveries form a queue: only the oldest pending one is
//! attempted, so a receiver that is down sees one request per scheduled
//! retry rather than one per queued event, and events arrive in log
//! order. After each failure the next attempt waits `base × 2^(n−1)`,
//! at most `cap`, with equal jitter (between half of that and all of it,
//! the MQTT reconnect's [`Backoff`]); after `disable_after` consecutive
//! failures the receiver is disabled and its queue waits, nothing dropped,
//! until an operator enables it again.

use std::time::Duration;

use super::model::{AttemptRecord, Delivery, DeliveryState, Receiver, ReceiverState};
use crate::mqtt::backoff::Backoff;

/// The retry schedule (`[webhook_retry]` in the configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The waits' growth and ceiling.
    pub backoff: Backoff,
    /// Consecutive failures that disable a receiver.
    pub disable_after: u32,
    /// How long one attempt may take before it counts as failed.
    pub timeout: Duration,
}

impl Default for RetryPolicy {
    /// 10 s, 20 s, 40 s … capped at 1 h; disabled after 10 failures in a
    /// row (about 2.5 hours of an unreachable receiver, in the spirit of
    /// Shopify's 8 tries in 4 hours); 10 s per attempt.
    fn default() -> Self {
        Self {
            backoff: Backoff {
                base: Duration::from_secs(10),
                cap: Duration::from_secs(3600),
            },
            disable_after: 10,
            timeout: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// When to try again after the `failures`-th consecutive failure
    /// (1 = the first), at `now_ms`.
    pub fn next_attempt_ms(&self, failures: u32, now_ms: u64, jitter: f64) -> u64 {
        let wait = self.backoff.delay(failures.saturating_sub(1), jitter);
        now_ms.saturating_add(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX))
    }
}

/// Whether an attempt counts as delivered: the receiver answered 2xx.
pub fn delivered(attempt: &AttemptRecord) -> bool {
    attempt.status.is_some_and(|s| (200..300).contains(&s))
}

/// Applies one attempt's result to the receiver and its delivery: on
/// success the delivery is done and the failures reset; on failure the
/// next attempt is scheduled and, at `disable_after` failures in a row,
/// the receiver is disabled.
pub fn after_attempt(
    policy: &RetryPolicy,
    receiver: &mut Receiver,
    delivery: &mut Delivery,
    attempt: AttemptRecord,
    jitter: f64,
) {
    let now = attempt.at_ms;
    let ok = delivered(&attempt);
    let error = attempt.error.clone().or_else(|| {
        attempt
            .status
            .map(|s| format!("the receiver answered HTTP {s}"))
    });
    delivery.record(attempt);
    if ok {
        delivery.state = DeliveryState::Delivered;
        receiver.consecutive_failures = 0;
        receiver.last_success_ms = Some(now);
        return;
    }
    receiver.consecutive_failures = receiver.consecutive_failures.saturating_add(1);
    receiver.last_error = error;
    delivery.next_attempt_ms = policy.next_attempt_ms(receiver.consecutive_failures, now, jitter);
    if receiver.consecutive_failures >= policy.disable_after.max(1) {
        receiver.state = ReceiverState::Disabled;
        receiver.disabled_ms = Some(now);
    }
}

/// An operator enables a receiver again: active, failures forgotten, its
/// oldest waiting delivery due at once.
pub fn enable(receiver: &mut Receiver, head: Option<&mut Delivery>, now_ms: u64) {
    receiver.state = ReceiverState::Active;
    receiver.consecutive_failures = 0;
    receiver.disabled_ms = None;
    if let Some(d) = head {
        d.next_attempt_ms = now_ms;
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::commerce::webhooks::model::Source;

    fn policy(base_ms: u64, cap_ms: u64, disable_after: u32) -> RetryPolicy {
        RetryPolicy {
            backoff: Backoff {
                base: Duration::from_millis(base_ms),
                cap: Duration::from_millis(cap_ms),
            },
            disable_after,
            timeout: Duration::from_secs(1),
        }
    }

    fn receiver() -> Receiver {
        Receiver {
            id: "r".into(),
            url: "http://h/".into(),
            secret: "0123456789abcdef".into(),
            topics: vec!["*".into()],
            source: Source::Api,
            created_ms: 0,
            state: ReceiverState::Active,
            consecutive_failures: 0,
            disabled_ms: None,
            last_error: None,
            last_success_ms: None,
        }
    }

    fn delivery() -> Delivery {
        Delivery {
            id: "r:1".into(),
            receiver: "r".into(),
            seq: 1,
            topic: "machine_state".into(),
            body: "{}".into(),
            created_ms: 0,
            state: DeliveryState::Pending,
            attempt_count: 0,
            attempts: vec![],
            next_attempt_ms: 0,
        }
    }

    fn failed(at_ms: u64) -> AttemptRecord {
        AttemptRecord {
            at_ms,
            status: Some(503),
            error: None,
        }
    }

    #[test]
    fn failures_wait_10_20_40_seconds_then_disable_and_a_success_resets() {
        let p = policy(10_000, 3_600_000, 3);
        let (mut r, mut d) = (receiver(), delivery());
        // Jitter 1: the ceiling itself.
        after_attempt(&p, &mut r, &mut d, failed(1_000), 1.0);
        assert_eq!(d.next_attempt_ms, 11_000);
        after_attempt(&p, &mut r, &mut d, failed(11_000), 1.0);
        assert_eq!(d.next_attempt_ms, 31_000);
        assert_eq!(r.state, ReceiverState::Active);
        assert_eq!(
            r.last_error.as_deref(),
            Some("the receiver answered HTTP 503")
        );
        // Jitter 0: half the ceiling.
        after_attempt(&p, &mut r, &mut d, failed(31_000), 0.0);
        assert_eq!(d.next_attempt_ms, 51_000);
        assert_eq!(r.state, ReceiverState::Disabled);
        assert_eq!(r.disabled_ms, Some(31_000));
        assert_eq!(d.state, DeliveryState::Pending);
        enable(&mut r, Some(&mut d), 60_000);
        assert_eq!(
            (r.state, r.consecutive_failures),
            (ReceiverState::Active, 0)
        );
        assert_eq!(d.next_attempt_ms, 60_000);
        let ok = AttemptRecord {
            at_ms: 60_001,
            status: Some(204),
            error: None,
        };
        after_attempt(&p, &mut r, &mut d, ok, 0.5);
        assert_eq!(d.state, DeliveryState::Delivered);
        assert_eq!(d.attempt_count, 4);
        assert_eq!(r.last_success_ms, Some(60_001));
    }

    #[test]
    fn no_answer_is_a_failure_with_its_reason() {
        let (mut r, mut d) = (receiver(), delivery());
        let refused = AttemptRecord {
            at_ms: 5,
            status: None,
            error: Some("connection refused".into()),
        };
        after_attempt(&policy(10, 100, 5), &mut r, &mut d, refused, 0.5);
        assert_eq!(d.state, DeliveryState::Pending);
        assert_eq!(r.last_error.as_deref(), Some("connection refused"));
        for s in [199, 300, 404, 500] {
            assert!(!delivered(&failed(0).with_status(s)), "{s}");
        }
        assert!(delivered(&failed(0).with_status(200)));
        assert!(delivered(&failed(0).with_status(299)));
    }

    impl AttemptRecord {
        fn with_status(mut self, s: u16) -> Self {
            self.status = Some(s);
            self
        }
    }

    proptest! {
        #[test]
        fn a_retry_waits_between_half_its_ceiling_and_its_ceiling_never_past_the_cap(
            base in 1u64..100_000, cap in 1u64..10_000_000, n in 1u32..200,
            now in 0u64..u64::MAX / 2, jitter in -1.0f64..2.0,
        ) {
            let p = policy(base, cap, 10);
            let at = p.next_attempt_ms(n, now, jitter);
            let ceiling = base.saturating_mul(1u64 << (n - 1).min(40)).min(cap);
            prop_assert!(at >= now + ceiling / 2, "{at} {now} {ceiling}");
            prop_assert!(at <= now + ceiling.min(cap));
        }

        #[test]
        fn waits_never_shrink_from_one_failure_to_the_next_whatever_the_jitter(
            base in 1u64..1_000, cap in 1u64..1_000_000_000, n in 1u32..20,
            j1 in 0.0f64..=1.0, j2 in 0.0f64..=1.0,
        ) {
            // Equal jitter: the next wait's floor is this wait's ceiling,
            // as long as doubling that ceiling stays under the cap.
            let p = policy(base, cap, 10);
            let w1 = p.next_attempt_ms(n, 0, j1);
            let w2 = p.next_attempt_ms(n + 1, 0, j2);
            let c1 = u64::try_from(p.backoff.ceiling(n - 1).as_millis()).unwrap_or(u64::MAX);
            prop_assume!(c1.saturating_mul(2) <= cap);
            prop_assert!(w2 >= w1, "{w1} {w2}");
        }

        #[test]
        fn a_receiver_is_disabled_exactly_at_the_configured_run_of_failures(
            disable_after in 1u32..20, successes_at in proptest::collection::vec(0u32..40, 0..4),
        ) {
            let p = policy(10, 1000, disable_after);
            let (mut r, mut d) = (receiver(), delivery());
            let mut run = 0u32;
            for i in 0..40u32 {
                if r.state == ReceiverState::Disabled {
                    break;
                }
                let ok = successes_at.contains(&i);
                let a = AttemptRecord { at_ms: u64::from(i), status: Some(if ok { 200 } else { 500 }), error: None };
                after_attempt(&p, &mut r, &mut d, a, 0.5);
                run = if ok { 0 } else { run + 1 };
                prop_assert_eq!(r.consecutive_failures, run);
                prop_assert_eq!(r.state == ReceiverState::Disabled, run >= disable_after);
            }
        }
    }
}
