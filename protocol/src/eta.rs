//! Time left in a job: the analysis's estimate blended with the pace the
//! machine actually keeps.
//!
//! The estimate alone ignores a machine that runs faster or slower than
//! the planner thought (after 29 s at 5 % it still said 51 min); the
//! observed pace alone jumps about at the start, where a few slow first
//! lines say little. So the answer is a weighted mean of the two
//! remainders, the observed pace gaining weight as the job advances:
//! `w = f / (f + HALF_TRUST)`, equal weights at `HALF_TRUST` done.

/// Fraction done at which the observed pace and the estimate count the
/// same.
pub const HALF_TRUST: f64 = 0.05;

/// Below this much done (and with no estimate) there is no pace to speak
/// of: no answer rather than a wild one.
const MIN_FRACTION: f64 = 0.01;

/// Seconds left, given the whole job's estimate (if the file has one),
/// the seconds it has streamed so far and the fraction done (0..=1).
/// `None` when neither the estimate nor the pace says anything yet.
pub fn remaining(estimate_s: Option<f64>, elapsed_s: f64, fraction: f64) -> Option<f64> {
    let f = if fraction.is_finite() {
        fraction.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let elapsed = if elapsed_s.is_finite() {
        elapsed_s.max(0.0)
    } else {
        0.0
    };
    let estimate = estimate_s.filter(|e| e.is_finite() && *e > 0.0);
    let by_pace = (f >= MIN_FRACTION).then(|| elapsed * (1.0 - f) / f);
    match (estimate, by_pace) {
        (Some(e), Some(p)) => {
            let by_estimate = e * (1.0 - f);
            let w = f / (f + HALF_TRUST);
            Some((w * p + (1.0 - w) * by_estimate).max(0.0))
        }
        (Some(e), None) => Some(e * (1.0 - f)),
        (None, p) => p,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_issue_s_case_no_longer_says_51_minutes() {
        // Estimated 54 min; 5 % done in 29 s: the pace says 9 min 11 s
        // left, the estimate 51 min 18 s; equal weights at 5 %.
        let left = remaining(Some(3240.0), 29.0, 0.05).expect("an answer");
        let by_pace = 29.0 * 0.95 / 0.05;
        let by_estimate = 3240.0 * 0.95;
        assert!(
            (left - (by_pace + by_estimate) / 2.0).abs() < 1e-9,
            "{left}"
        );
        assert!(left < 31.0 * 60.0, "{left}");
    }

    #[test]
    fn late_in_a_job_the_pace_dominates() {
        // Half done in 10 min, estimated 60 min in all: about 10 min left.
        let left = remaining(Some(3600.0), 600.0, 0.5).expect("an answer");
        let w = 0.5 / 0.55;
        assert!((left - (w * 600.0 + (1.0 - w) * 1800.0)).abs() < 1e-9);
        assert!(left < 12.0 * 60.0);
    }

    #[test]
    fn at_the_start_it_is_the_estimate_and_at_the_end_nothing() {
        assert_eq!(remaining(Some(100.0), 0.0, 0.0), Some(100.0));
        assert_eq!(remaining(Some(100.0), 3.0, 0.005), Some(100.0 * 0.995));
        assert_eq!(remaining(Some(100.0), 50.0, 1.0), Some(0.0));
        assert_eq!(remaining(None, 5.0, 0.0), None);
        assert_eq!(remaining(None, 10.0, 0.5), Some(10.0));
        assert_eq!(remaining(Some(f64::NAN), 10.0, 0.5), Some(10.0));
    }

    proptest! {
        #[test]
        fn the_answer_lies_between_the_estimate_and_the_pace(
            est in 1.0f64..1e6, elapsed in 0.0f64..1e6, f in 0.01f64..=1.0,
        ) {
            let left = remaining(Some(est), elapsed, f).expect("an answer");
            let a = est * (1.0 - f);
            let b = elapsed * (1.0 - f) / f;
            prop_assert!(left >= a.min(b) - 1e-6 && left <= a.max(b) + 1e-6, "{left} {a} {b}");
        }

        #[test]
        fn a_machine_keeping_the_estimated_pace_gets_the_estimate(
            est in 1.0f64..1e6, f in 0.01f64..=1.0,
        ) {
            let left = remaining(Some(est), est * f, f).expect("an answer");
            prop_assert!((left - est * (1.0 - f)).abs() <= 1e-6 * est);
        }

        #[test]
        fn any_input_gives_a_finite_non_negative_answer_or_none(
            est in proptest::option::of(any::<f64>()), elapsed in any::<f64>(), f in any::<f64>(),
        ) {
            if let Some(left) = remaining(est, elapsed, f) {
                prop_assert!(left.is_finite() && left >= 0.0, "{left}");
            }
        }
    }
}
