//! The wait between reconnects to the broker. rumqttc reconnects on the
//! very next `poll()` after an error, so without this a broker that is
//! down or refusing us would be hammered in a tight loop, and every
//! daemon of a site would hammer it in step after a restart: hence an
//! exponential schedule (quick after a blip, slow during an outage), a
//! cap (a broker that comes back is found within `cap`), and jitter (the
//! daemons of several sites drift apart).
//!
//! Pure: the caller passes the attempt number and a uniform random number.

use std::time::Duration;

/// An exponential schedule with a cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The first wait's ceiling.
    pub base: Duration,
    /// No wait is longer.
    pub cap: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(500),
            cap: Duration::from_secs(60),
        }
    }
}

impl Backoff {
    /// The ceiling for the `attempt`-th reconnect (0 = the first after a
    /// loss): `base × 2^attempt`, at most `cap`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The wait before the `attempt`-th reconnect, with `jitter` uniform in
    /// `0..1` (anything else is clamped): between half the ceiling and the
    /// ceiling ("equal jitter"), so a wait never collapses to nothing, which
    /// full jitter allows, yet two daemons rarely wait alike.
    pub fn delay(&self, attempt: u32, jitter: f64) -> Duration {
        let ceiling = self.ceiling(attempt);
        let j = if jitter.is_finite() {
            jitter.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let half = ceiling / 2;
        half + (ceiling - half).mul_f64(j)
    }
}

/// A uniform number in `0..1` from the operating system, for [`Backoff::delay`];
/// 0.5 if the system has none to give (the schedule stays exponential).
pub fn jitter() -> f64 {
    match getrandom::u64() {
        Ok(x) => (x >> 11) as f64 / (1u64 << 53) as f64,
        Err(_) => 0.5,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn schedule() -> impl Strategy<Value = Backoff> {
        (1u64..5_000, 1u64..600_000).prop_map(|(b, c)| Backoff {
            base: Duration::from_millis(b),
            cap: Duration::from_millis(c.max(b)),
        })
    }

    proptest! {
        #[test]
        fn a_wait_never_exceeds_the_cap_nor_falls_below_half_its_ceiling(
            b in schedule(), attempt in 0u32..200, jitter in proptest::num::f64::ANY,
        ) {
            let d = b.delay(attempt, jitter);
            prop_assert!(d <= b.cap);
            prop_assert!(d <= b.ceiling(attempt));
            prop_assert!(d >= b.ceiling(attempt) / 2);
        }

        #[test]
        fn ceilings_double_until_the_cap_and_then_stay_there(
            b in schedule(), attempt in 0u32..200,
        ) {
            let now = b.ceiling(attempt);
            let next = b.ceiling(attempt + 1);
            prop_assert!(next >= now);
            prop_assert!(next == b.cap || next == now * 2);
        }

        #[test]
        fn the_whole_jitter_range_is_used(b in schedule(), attempt in 0u32..20) {
            let c = b.ceiling(attempt);
            prop_assert_eq!(b.delay(attempt, 0.0), c / 2);
            prop_assert_eq!(b.delay(attempt, 1.0), c);
        }
    }

    #[test]
    fn the_default_schedule_reaches_its_minute_cap_after_seven_failures() {
        let b = Backoff::default();
        let ceilings: Vec<u64> = (0..9).map(|n| b.ceiling(n).as_millis() as u64).collect();
        assert_eq!(
            ceilings,
            [500, 1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000]
        );
    }

    #[test]
    fn jitter_is_within_zero_and_one() {
        for _ in 0..100 {
            let j = jitter();
            assert!((0.0..1.0).contains(&j), "{j}");
        }
    }
}
