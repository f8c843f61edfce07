//! The pure rules of production: which units an ended attempt makes, and
//! how far an order is and how many more jobs it needs.
//!
//! How a failed or cancelled attempt counts: if it streamed at least one
//! line, material was used, so every unit on its plate is produced and
//! scrapped (QC `scrap`, reason `attempt_failed` or `attempt_cancelled`,
//! not first-pass), and each earns the share of the planned runtime that
//! its lines represent. One that streamed nothing made nothing. An
//! interrupted attempt makes no unit yet: the job may restart from its
//! line and finish the same parts (a restart from the start leaves the
//! partial parts uncounted).

use serde::Serialize;
use utoipa::ToSchema;

use crate::core::model::{Attempt, AttemptOutcome};
use crate::metering::model::{Order, OrderState, QcRecord, QcState, Unit, serial};

/// Who records what the daemon decides by itself.
pub const DAEMON: &str = "microfactoryd";

/// What an ended attempt of an order's job leaves.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptUnits {
    /// The units made (possibly none).
    pub units: Vec<Unit>,
    /// The job's outcome is counted (see [`crate::metering::model::OrderJob`]).
    pub settled: bool,
}

/// The units an ended attempt made. `first_serial` is the number of the
/// first new serial; `gcode_sha256` the job's file; `lines_total` the
/// job's command count (for the share of a failed attempt).
pub fn units_of_attempt(
    order: &Order,
    attempt: &Attempt,
    gcode_sha256: &str,
    lines_total: u64,
    first_serial: u64,
) -> AttemptUnits {
    let Some(outcome) = attempt.outcome else {
        return AttemptUnits {
            units: Vec::new(),
            settled: false,
        };
    };
    let planned_ms = seconds_to_ms(order.planned_runtime_per_unit_s);
    let (qc, credited, reason) = match outcome {
        AttemptOutcome::Interrupted => {
            return AttemptUnits {
                units: Vec::new(),
                settled: false,
            };
        }
        AttemptOutcome::Failed | AttemptOutcome::Cancelled if attempt.lines_done == 0 => {
            return AttemptUnits {
                units: Vec::new(),
                settled: true,
            };
        }
        AttemptOutcome::Completed if order.auto_pass => {
            (QcState::Pass, planned_ms, Some("auto_pass"))
        }
        AttemptOutcome::Completed => (QcState::Pending, planned_ms, None),
        AttemptOutcome::Failed => (
            QcState::Scrap,
            share(planned_ms, attempt.lines_done, lines_total),
            Some("attempt_failed"),
        ),
        AttemptOutcome::Cancelled => (
            QcState::Scrap,
            share(planned_ms, attempt.lines_done, lines_total),
            Some("attempt_cancelled"),
        ),
    };
    let ended_ms = attempt.ended_ms.unwrap_or(attempt.assigned_ms);
    let units = (0..order.units_per_job)
        .map(|i| Unit {
            serial: serial(first_serial + u64::from(i)),
            sku: order.sku.clone(),
            order_id: order.id,
            job_id: attempt.job_id,
            attempt: attempt.n,
            index: i + 1,
            machine_id: attempt.machine_id.clone(),
            gcode_sha256: gcode_sha256.to_string(),
            started_ms: attempt.started_ms,
            ended_ms,
            planned_runtime_ms: planned_ms,
            credited_runtime_ms: credited,
            qc,
            first_pass: (qc != QcState::Pending).then_some(qc == QcState::Pass),
            reworked: false,
            qc_history: reason
                .map(|r| QcRecord {
                    at_ms: ended_ms,
                    result: qc,
                    reason: Some(r.to_string()),
                    note: attempt.failure.as_ref().map(|f| f.reason.clone()),
                    by: DAEMON.to_string(),
                })
                .into_iter()
                .collect(),
        })
        .collect();
    AttemptUnits {
        units,
        settled: true,
    }
}

/// Seconds as whole milliseconds (a planned runtime is positive and far
/// below u64::MAX ms).
pub fn seconds_to_ms(s: f64) -> u64 {
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let ms = (s * 1000.0).round().max(0.0) as u64;
    ms
}

/// `whole × done / total`, at most `whole` (nothing known: nothing earned).
fn share(whole: u64, done: u64, total: u64) -> u64 {
    if total == 0 {
        return 0;
    }
    let s = u128::from(whole) * u128::from(done.min(total)) / u128::from(total);
    u64::try_from(s).unwrap_or(whole)
}

/// An order's progress, as `GET /production-orders/{id}` shows it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, ToSchema)]
pub struct Progress {
    /// Good units wanted.
    pub ordered: u64,
    /// Units made, scrapped ones included.
    pub produced: u64,
    /// Units that passed QC.
    pub good: u64,
    /// Units failed or scrapped.
    pub scrap: u64,
    /// Units waiting for QC (pending or in rework).
    pub awaiting_qc: u64,
    /// Units on jobs not yet counted (queued, running or interrupted).
    pub in_progress: u64,
    /// More jobs to queue now so that the good quantity can be reached.
    pub jobs_needed: u64,
}

/// How far `order` is, from its units.
pub fn progress<'a>(order: &Order, units: impl IntoIterator<Item = &'a Unit>) -> Progress {
    let mut p = Progress {
        ordered: u64::from(order.quantity),
        ..Progress::default()
    };
    for u in units {
        p.produced += 1;
        match u.qc {
            QcState::Pass => p.good += 1,
            QcState::Fail | QcState::Scrap => p.scrap += 1,
            QcState::Pending | QcState::Rework => p.awaiting_qc += 1,
        }
    }
    let per_job = u64::from(order.units_per_job.max(1));
    let open_jobs = order.jobs.iter().filter(|j| !j.settled).count() as u64
        + u64::from(order.submitting.unwrap_or(0));
    p.in_progress = open_jobs * per_job;
    if order.state == OrderState::Open {
        let short = p
            .ordered
            .saturating_sub(p.good + p.awaiting_qc + p.in_progress);
        p.jobs_needed = short.div_ceil(per_job);
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::model::Failure;
    use crate::metering::model::OrderJob;

    fn order(quantity: u32, per_job: u32) -> Order {
        Order {
            id: 7,
            sku: "tile".into(),
            quantity,
            due_ms: None,
            priority: 0,
            state: OrderState::Open,
            created_ms: 0,
            file_id: "f".into(),
            units_per_job: per_job,
            planned_runtime_per_unit_s: 60.0,
            auto_pass: false,
            jobs: vec![],
            submitting: None,
        }
    }

    fn attempt(outcome: AttemptOutcome, lines_done: u64) -> Attempt {
        Attempt {
            job_id: 3,
            n: 2,
            machine_id: "mk3".into(),
            start_line: 1,
            assigned_ms: 1_000,
            started_ms: Some(2_000),
            ended_ms: Some(62_000),
            outcome: Some(outcome),
            failure: (outcome != AttemptOutcome::Completed).then(|| Failure {
                reason: "thermal runaway".into(),
                line: None,
            }),
            lines_done,
            last_acked_line: lines_done,
            stats: None,
        }
    }

    #[test]
    fn a_completed_plate_makes_one_pending_unit_per_place_with_consecutive_serials() {
        let a = units_of_attempt(
            &order(4, 2),
            &attempt(AttemptOutcome::Completed, 100),
            "abc",
            100,
            5,
        );
        assert!(a.settled);
        let places: Vec<(String, u32, u32)> = a
            .units
            .iter()
            .map(|u| (u.serial.clone(), u.attempt, u.index))
            .collect();
        assert_eq!(
            places,
            vec![("U000000005".into(), 2, 1), ("U000000006".into(), 2, 2)]
        );
        assert!(a.units.iter().all(|u| u.qc == QcState::Pending
            && u.first_pass.is_none()
            && u.credited_runtime_ms == 60_000
            && u.started_ms == Some(2_000)
            && u.ended_ms == 62_000));
    }

    #[test]
    fn a_failed_plate_scraps_its_units_with_the_share_of_runtime_it_streamed() {
        let a = units_of_attempt(
            &order(4, 2),
            &attempt(AttemptOutcome::Failed, 25),
            "abc",
            100,
            1,
        );
        assert!(a.settled);
        assert_eq!(a.units.len(), 2);
        for u in &a.units {
            assert_eq!(u.qc, QcState::Scrap);
            assert_eq!(u.first_pass, Some(false));
            assert_eq!(u.credited_runtime_ms, 15_000);
            assert_eq!(u.qc_history[0].reason.as_deref(), Some("attempt_failed"));
            assert_eq!(u.qc_history[0].note.as_deref(), Some("thermal runaway"));
        }
    }

    #[test]
    fn a_cancel_before_any_line_makes_nothing_and_an_interruption_waits_for_the_restart() {
        let none = units_of_attempt(
            &order(4, 2),
            &attempt(AttemptOutcome::Cancelled, 0),
            "abc",
            100,
            1,
        );
        assert!(none.units.is_empty() && none.settled);
        let later = units_of_attempt(
            &order(4, 2),
            &attempt(AttemptOutcome::Interrupted, 50),
            "abc",
            100,
            1,
        );
        assert!(later.units.is_empty() && !later.settled);
    }

    #[test]
    fn an_order_needs_the_ceiling_of_its_quantity_over_the_plate_and_more_after_a_failure() {
        let mut o = order(5, 2);
        assert_eq!(progress(&o, []).jobs_needed, 3);
        o.jobs = (1..=3)
            .map(|job_id| OrderJob {
                job_id,
                settled: false,
            })
            .collect();
        let p = progress(&o, []);
        assert_eq!((p.in_progress, p.jobs_needed), (6, 0));
        // Two plates done: three pass, one fails; the third still runs.
        o.jobs[0].settled = true;
        o.jobs[1].settled = true;
        let mut units: Vec<Unit> =
            units_of_attempt(&o, &attempt(AttemptOutcome::Completed, 1), "f", 1, 1).units;
        units.extend(units_of_attempt(&o, &attempt(AttemptOutcome::Completed, 1), "f", 1, 3).units);
        for (u, qc) in
            units
                .iter_mut()
                .zip([QcState::Pass, QcState::Pass, QcState::Pass, QcState::Fail])
        {
            u.qc = qc;
        }
        let p = progress(&o, &units);
        assert_eq!(
            (p.produced, p.good, p.scrap, p.in_progress, p.jobs_needed),
            (4, 3, 1, 2, 0),
            "3 good + 2 running covers 5"
        );
        units[0].qc = QcState::Scrap;
        assert_eq!(
            progress(&o, &units).jobs_needed,
            1,
            "2 good + 2 running < 5"
        );
        o.state = OrderState::Stopped;
        assert_eq!(
            progress(&o, &units).jobs_needed,
            0,
            "a stopped order asks for nothing"
        );
    }
}
