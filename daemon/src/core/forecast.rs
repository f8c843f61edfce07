//! What runs next on each machine, and when: the scheduler's own rule
//! (a machine that comes free takes the best queued job it can run,
//! priority then queue order, by `routing::check`) played forward on the
//! estimates. Pure: the caller passes each machine's readiness and `now`.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::config::Machine;
use crate::core::model::{FileRecord, Job};
use crate::core::routing::{self, Requirements};

/// When a machine can take its next job.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Ready {
    /// Free now.
    Now,
    /// Free once the operator confirms it (bed clearance, a look).
    AfterOperator,
    /// Busy for about this many more seconds.
    In(f64),
    /// Disabled, offline or halted: nothing is forecast for it.
    Never,
}

/// One machine as the forecast sees it.
#[derive(Debug, Clone)]
pub struct Lane<'a> {
    /// Configuration (routing reads it).
    pub machine: &'a Machine,
    /// When it can start.
    pub ready: Ready,
}

/// The next job a machine is expected to run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NextJob {
    /// The machine.
    pub machine_id: String,
    /// The queued job it would take.
    pub job_id: u64,
    /// The job's name.
    pub job_name: String,
    /// Expected start (ms since the Unix epoch).
    pub start_ms: u64,
    /// Expected end, from the file's estimate.
    pub end_ms: u64,
    /// It starts only once the operator confirms the machine (or, for a
    /// machine that needs a bed clearance after every job, the one before
    /// this one): the start is the earliest it could be.
    pub after_operator: bool,
}

/// Queued jobs the forecast looks at, at most: enough for any machine's
/// next job in a real queue, and bounded work per request.
pub const MAX_LOOKAHEAD: usize = 500;

fn secs_ms(s: f64) -> u64 {
    if s.is_finite() && s > 0.0 {
        // Saturating float-to-int conversion: an absurd estimate cannot wrap.
        (s * 1000.0) as u64
    } else {
        0
    }
}

/// The next job of every machine that will get one. `queued` holds the
/// queued jobs with their files (any order; a job whose file is gone is
/// skipped, as the scheduler fails it).
pub fn next_jobs(lanes: &[Lane<'_>], queued: &[(&Job, &FileRecord)], now_ms: u64) -> Vec<NextJob> {
    let mut order: Vec<usize> = (0..queued.len()).collect();
    order.sort_by_key(|&i| (-i64::from(queued[i].0.priority), queued[i].0.seq));
    order.truncate(MAX_LOOKAHEAD);
    // (free at ms, waits for the operator, lane index)
    let mut free: Vec<(u64, bool, usize)> = lanes
        .iter()
        .enumerate()
        .filter_map(|(i, l)| match l.ready {
            Ready::Now => Some((now_ms, false, i)),
            Ready::AfterOperator => Some((now_ms, true, i)),
            Ready::In(s) => Some((now_ms.saturating_add(secs_ms(s)), false, i)),
            Ready::Never => None,
        })
        .collect();
    let mut next: Vec<Option<NextJob>> = vec![None; lanes.len()];
    while !order.is_empty() && !free.is_empty() {
        // The machine that comes free first (configuration order on ties,
        // as the scheduler walks them) takes the best job it can run.
        let Some(k) = (0..free.len()).min_by_key(|&k| (free[k].0, free[k].2)) else {
            break;
        };
        let (at, waits, li) = free[k];
        let lane = &lanes[li];
        let pick = order.iter().position(|&qi| {
            let (job, file) = queued[qi];
            routing::check(lane.machine, file, &Requirements::of(job)).is_ok()
        });
        let Some(p) = pick else {
            // Nothing left that it can run: it drops out.
            free.swap_remove(k);
            continue;
        };
        let (job, file) = queued[order.remove(p)];
        let end = at.saturating_add(secs_ms(file.analysis.estimated_seconds));
        if next[li].is_none() {
            next[li] = Some(NextJob {
                machine_id: lane.machine.config.id.clone(),
                job_id: job.id,
                job_name: job.name.clone(),
                start_ms: at,
                end_ms: end,
                after_operator: waits,
            });
        }
        free[k] = (end, waits || lane.machine.config.require_bed_clear, li);
    }
    next.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests;
