//! The factory's decisions, without I/O: given the state, an input and
//! `now`, each method changes the state and returns the [`Batch`] of
//! records and domain events to commit. The async shell
//! (`crate::factory`) owns the drivers, the store and the clock; it
//! commits what this returns, flushes, and only then acknowledges.
//!
//! Every change of a machine's state goes through [`Core::refresh`], the
//! one place the machine state log is written from.

use std::collections::BTreeMap;
use std::sync::Arc;

use microfactory_machines::driver::{JobOutcome, Progress, StreamStats};
use thiserror::Error;

use crate::config::Machine;
use crate::core::events::DomainEvent;
use crate::core::forecast::{self, Lane, NextJob, Ready};
use crate::core::machine::{self, Facts, LinkState, MachineState, StateReason};
use crate::core::model::{
    Attempt, AttemptOutcome, Failure, FileRecord, Hold, Job, JobProgress, JobState, Kind,
    MachineRecord, PauseReason,
};
use crate::core::routing::{self, Requirements};
use crate::store::Batch;

/// Most copies one submission may ask for.
pub const MAX_COPIES: u32 = 1000;

/// Priorities are bounded so that ordering by them can never overflow.
pub const MAX_PRIORITY: i32 = 1_000_000;

/// Longest job name, in characters (like file names).
pub const MAX_NAME_CHARS: usize = 120;

/// Why an input was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum CoreError {
    /// No such job, file or machine.
    #[error("{0}")]
    NotFound(String),
    /// Well-formed but wrong values.
    #[error("{0}")]
    Invalid(String),
    /// Not allowed in the current state.
    #[error("{0}")]
    Conflict(String),
}

type Result<T, E = CoreError> = std::result::Result<T, E>;

/// A job submission.
#[derive(Debug, Clone, Default)]
pub struct Submission {
    /// The file.
    pub file_id: String,
    /// Copies (each becomes a job); default 1.
    pub copies: Option<u32>,
    /// Higher first; default 0.
    pub priority: Option<i32>,
    /// A named machine.
    pub machine_id: Option<String>,
    /// A kind of machine.
    pub kind: Option<Kind>,
    /// Required tags.
    pub tags: Vec<String>,
    /// Display name.
    pub name: Option<String>,
    /// GRBL canned-cycle expansion.
    pub expand_canned_cycles: bool,
    /// Ignore the file's material and nozzle when routing.
    pub any_material: bool,
}

/// Looks a file record up (the shell's store cache).
pub type Files<'a> = &'a dyn Fn(&str) -> Option<Arc<FileRecord>>;

/// Why a machine did not take the job it was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotStarted {
    /// Not now (the machine was busy, went offline or halted): the job
    /// goes back to the queue for the next free machine.
    Retry(String),
    /// Never, as it stands (its file's content is missing from the
    /// store): retrying would fail the same way on every pass, so the job
    /// fails and waits on the attention list for the operator.
    Impossible(String),
}

/// The core's view of one machine.
#[derive(Debug, Clone)]
pub struct MachineCore {
    /// Configuration and profile.
    pub machine: Machine,
    /// Operator state that survives restarts.
    pub record: MachineRecord,
    /// The job it holds.
    pub job: Option<u64>,
    /// What its link reports.
    pub link: LinkState,
    /// The driver still has a job of its own (finishing a cancel); for a
    /// read-only machine, its own host runs a job we did not send.
    pub link_busy: bool,
    /// A read-only machine's host paused its job.
    pub link_paused: bool,
    /// The state in force, its reason, the job involved, and since when.
    pub state: (MachineState, StateReason, Option<u64>, u64),
}

impl MachineCore {
    /// The machine's id.
    pub fn id(&self) -> &str {
        &self.machine.config.id
    }

    fn free(&self) -> bool {
        !self.record.disabled
            && self.record.hold.is_none()
            && self.job.is_none()
            && self.link == LinkState::Online
            && !self.link_busy
            && !self.machine.config.read_only
    }
}

/// Jobs and machines, and the rules that change them.
#[derive(Debug)]
pub struct Core {
    /// Live jobs and the most recently ended ones; the store has all.
    jobs: BTreeMap<u64, Job>,
    /// Machines, in configuration order (the shell's slots match).
    machines: Vec<MachineCore>,
    /// The last job id handed out.
    job_ids: u64,
    /// The last queue-order key handed out.
    queue_seq: u64,
    /// Ended jobs kept in memory besides the live ones.
    keep_ended: usize,
    /// Ended jobs only the store holds.
    archived: usize,
    /// The attempt each running job is on.
    attempts: BTreeMap<u64, Attempt>,
}

/// What [`Core::open`] needs of a machine.
#[derive(Debug)]
pub struct MachineSeed {
    /// Configuration.
    pub machine: Machine,
    /// Stored operator state.
    pub record: MachineRecord,
    /// The last state the log recorded, from before this start.
    pub last: Option<(MachineState, StateReason, Option<u64>, u64)>,
}

impl Core {
    /// Rebuilds the core from stored records and recovers from a crash:
    /// a job that was active is interrupted at its last acknowledged line
    /// (its attempt ends so), and its machine waits for the operator, who
    /// clears the bed or restarts the job from a line.
    pub fn open(
        machines: Vec<MachineSeed>,
        jobs: Vec<Job>,
        open_attempts: Vec<Attempt>,
        job_ids: u64,
        keep_ended: usize,
        now: u64,
    ) -> (Self, Batch) {
        let mut b = Batch::default();
        let queue_seq = jobs.iter().map(|j| j.seq).max().unwrap_or(0).max(job_ids);
        let mut core = Self {
            jobs: BTreeMap::new(),
            machines: machines
                .into_iter()
                .map(|s| MachineCore {
                    machine: s.machine,
                    record: s.record,
                    job: None,
                    link: LinkState::Offline,
                    link_busy: false,
                    link_paused: false,
                    // Forces a first state change unless the log already
                    // ended offline.
                    state: s
                        .last
                        .unwrap_or((MachineState::Idle, StateReason::None, None, now)),
                })
                .collect(),
            job_ids: job_ids.max(jobs.iter().map(|j| j.id).max().unwrap_or(0)),
            queue_seq,
            keep_ended,
            archived: 0,
            attempts: open_attempts.into_iter().map(|a| (a.job_id, a)).collect(),
        };
        for mut job in jobs {
            if job.state.is_active() {
                let line = job.progress.last_acked_line;
                let reason = "the daemon stopped while the job was running".to_string();
                job.failure = Some(Failure {
                    reason: reason.clone(),
                    line: Some(line),
                });
                job.transition(
                    JobState::Interrupted,
                    Some(format!("recovered at start; last acknowledged line {line}")),
                    now,
                );
                job.awaiting_ack = true;
                let machine_id = job.assigned_machine.clone().unwrap_or_default();
                core.end_attempt(
                    &mut job,
                    &machine_id,
                    AttemptOutcome::Interrupted,
                    None,
                    now,
                    &mut b,
                );
                b.events.push(job_state_event(&job));
                if let Some(m) = core.machines.iter_mut().find(|m| m.id() == machine_id) {
                    m.record.hold = Some(Hold {
                        reason: StateReason::Interrupted,
                        job_id: Some(job.id),
                    });
                    b.machines.push((machine_id, m.record.clone()));
                }
                b.jobs.push(job.clone());
            }
            core.jobs.insert(job.id, job);
        }
        core.trim_ended();
        core.refresh(now, &mut b);
        (core, b)
    }

    // ------------------------------------------------------------- views

    /// The machines.
    pub fn machines(&self) -> &[MachineCore] {
        &self.machines
    }

    /// The index of machine `id`.
    pub fn machine_index(&self, id: &str) -> Result<usize> {
        self.machines
            .iter()
            .position(|m| m.id() == id)
            .ok_or_else(|| {
                CoreError::NotFound(format!(
                    "no machine with id '{id}' (known: {})",
                    self.machines
                        .iter()
                        .map(MachineCore::id)
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })
    }

    /// A job in memory.
    pub fn job(&self, id: u64) -> Option<&Job> {
        self.jobs.get(&id)
    }

    /// Jobs in memory.
    pub fn jobs(&self) -> impl Iterator<Item = &Job> {
        self.jobs.values()
    }

    /// Whether any machine could take a job now: the scheduler need not
    /// wake otherwise (a farm at work is the usual case).
    pub fn any_free(&self) -> bool {
        self.machines.iter().any(MachineCore::free)
    }

    /// Whether ended jobs exist that only the store holds.
    pub fn has_archived(&self) -> bool {
        self.archived > 0
    }

    /// Each machine's next job and when it should start and end (see
    /// [`forecast`]): machines down get nothing, a busy one is free when
    /// its job's ETA says, a held one once the operator confirms it.
    pub fn forecast(&self, files: Files<'_>, now: u64) -> Vec<NextJob> {
        let lanes: Vec<Lane<'_>> = self
            .machines
            .iter()
            .map(|m| {
                let ready = if m.record.disabled
                    || m.machine.config.read_only
                    || m.link != LinkState::Online
                {
                    Ready::Never
                } else if let Some(j) = m.job.and_then(|j| self.jobs.get(&j)) {
                    let est = || files(&j.file_id).map(|f| f.analysis.estimated_seconds);
                    Ready::In(j.progress.eta_seconds.or_else(est).unwrap_or(0.0))
                } else if m.record.hold.is_some() {
                    Ready::AfterOperator
                } else {
                    Ready::Now
                };
                Lane {
                    machine: &m.machine,
                    ready,
                }
            })
            .collect();
        let held: Vec<(&Job, Arc<FileRecord>)> = self
            .jobs
            .values()
            .filter(|j| j.state == JobState::Queued)
            .filter_map(|j| Some((j, files(&j.file_id)?)))
            .collect();
        let queued: Vec<(&Job, &FileRecord)> = held.iter().map(|(j, f)| (*j, &**f)).collect();
        forecast::next_jobs(&lanes, &queued, now)
    }

    /// A job's attempt in progress.
    pub fn open_attempt(&self, job: u64) -> Option<&Attempt> {
        self.attempts.get(&job)
    }

    // ------------------------------------------------------------- files

    /// A new file was stored.
    pub fn file_added(&mut self, f: &FileRecord) -> Batch {
        Batch {
            files: vec![f.clone()],
            events: vec![DomainEvent::FileAdded {
                file_id: f.id.clone(),
                name: f.name.clone(),
                size: f.size,
            }],
            ..Batch::default()
        }
    }

    /// Deletes a file no queued or active job uses. Decided and committed
    /// under the same lock as submissions, so a submission racing a
    /// deletion either sees the file or is refused.
    pub fn delete_file(&mut self, file_id: &str, exists: bool) -> Result<Batch> {
        if let Some(j) = self
            .jobs
            .values()
            .find(|j| j.file_id == file_id && (j.state == JobState::Queued || j.state.is_active()))
        {
            return Err(CoreError::Conflict(format!(
                "file is used by job {} ({}); cancel it first",
                j.id,
                j.state.as_str()
            )));
        }
        if !exists {
            return Err(CoreError::NotFound(format!("no file with id '{file_id}'")));
        }
        Ok(Batch {
            removed_files: vec![file_id.to_string()],
            events: vec![DomainEvent::FileDeleted {
                file_id: file_id.to_string(),
            }],
            ..Batch::default()
        })
    }

    // -------------------------------------------------------------- jobs

    /// Queues a job per copy. Refuses a job no configured machine could
    /// ever run, naming each machine's reason. The batch's jobs are exactly
    /// the new ones, first copy first (the shell answers with them: no
    /// third copy of each).
    pub fn submit(&mut self, s: &Submission, file: Option<&FileRecord>, now: u64) -> Result<Batch> {
        let file = file.ok_or_else(|| {
            CoreError::Invalid(format!("file_id '{}' is not an uploaded file", s.file_id))
        })?;
        let copies = s.copies.unwrap_or(1);
        if copies == 0 || copies > MAX_COPIES {
            return Err(CoreError::Invalid(format!(
                "copies must be between 1 and {MAX_COPIES}, got {copies}"
            )));
        }
        let priority = check_priority(s.priority.unwrap_or(0))?;
        if let Some(m) = &s.machine_id {
            self.machine_index(m)
                .map_err(|e| CoreError::Invalid(format!("machine_id: {e}")))?;
        }
        if let Some(t) = s.tags.iter().find(|t| !crate::config::valid_tag(t)) {
            return Err(CoreError::Invalid(format!(
                "tag '{t}' must look like key:value (e.g. material:PLA)"
            )));
        }
        let name = match &s.name {
            Some(n) if !n.trim().is_empty() => check_name(n)?,
            _ => file.name.clone(),
        };
        let req = Requirements {
            machine_id: s.machine_id.as_deref(),
            kind: s.kind,
            tags: &s.tags,
            expand_canned_cycles: s.expand_canned_cycles,
            any_material: s.any_material,
        };
        let reasons: Vec<String> = self
            .machines
            .iter()
            .filter_map(|m| routing::check(&m.machine, file, &req).err())
            .collect();
        if reasons.len() == self.machines.len() {
            return Err(CoreError::Invalid(if reasons.is_empty() {
                "no machine is configured".into()
            } else {
                format!("no machine can run this job: {}", reasons.join("; "))
            }));
        }
        let mut b = Batch {
            jobs: Vec::with_capacity(copies as usize),
            events: Vec::with_capacity(copies as usize),
            ..Batch::default()
        };
        let batch_id = self.job_ids + 1;
        for copy in 1..=copies {
            self.job_ids += 1;
            self.queue_seq = self.queue_seq.max(self.job_ids);
            let id = self.job_ids;
            let mut job = Job {
                id,
                name: name.clone(),
                file_id: file.id.clone(),
                batch_id,
                copy,
                copies,
                priority,
                seq: self.queue_seq,
                machine_id: s.machine_id.clone(),
                kind: s.kind,
                tags: s.tags.clone(),
                expand_canned_cycles: s.expand_canned_cycles,
                any_material: s.any_material,
                start_line: 1,
                state: JobState::Queued,
                assigned_machine: None,
                created_ms: now,
                started_ms: None,
                ended_ms: None,
                progress: JobProgress {
                    lines_total: file.analysis.commands,
                    eta_seconds: Some(file.analysis.estimated_seconds),
                    ..JobProgress::default()
                },
                failure: None,
                history: vec![],
                attempt: 0,
                pause: None,
                awaiting_ack: false,
            };
            job.transition(JobState::Queued, Some("submitted".into()), now);
            b.events.push(DomainEvent::JobQueued {
                job_id: id,
                file_id: file.id.clone(),
                start_line: 1,
                priority,
                note: Some("submitted".into()),
            });
            self.jobs.insert(id, job.clone());
            b.jobs.push(job);
        }
        b.job_id_counter = Some(self.job_ids);
        Ok(b)
    }

    /// Puts an ended job back in the queue from `from_line` (1 = the
    /// start). `archived` is the job from the store when memory no longer
    /// holds it. The next run is a new attempt; the job's start time is
    /// that attempt's.
    pub fn requeue(
        &mut self,
        id: u64,
        archived: Option<Job>,
        from_line: Option<u64>,
        file: Option<&FileRecord>,
        now: u64,
    ) -> Result<(Job, Batch)> {
        if !self.jobs.contains_key(&id)
            && let Some(old) = archived
        {
            self.jobs.insert(id, old);
            self.archived = self.archived.saturating_sub(1);
        }
        let job = self
            .jobs
            .get(&id)
            .ok_or_else(|| CoreError::NotFound(format!("no job with id {id}")))?;
        if !job.state.is_final() {
            return Err(CoreError::Conflict(format!(
                "job {id} is {}; only an ended job can be requeued",
                job.state.as_str()
            )));
        }
        let from = from_line.unwrap_or(1);
        if from == 0 {
            return Err(CoreError::Invalid("from_line starts at 1".into()));
        }
        let file = file
            .ok_or_else(|| CoreError::Conflict(format!("the file of job {id} has been deleted")))?;
        if from > file.analysis.lines {
            return Err(CoreError::Invalid(format!(
                "from_line {from} is past the end of the file ({} lines)",
                file.analysis.lines
            )));
        }
        self.queue_seq += 1;
        let seq = self.queue_seq;
        let job = self
            .jobs
            .get_mut(&id)
            .ok_or_else(|| CoreError::NotFound(format!("no job with id {id}")))?;
        job.start_line = from;
        job.seq = seq;
        job.failure = None;
        job.awaiting_ack = false;
        job.assigned_machine = None;
        job.started_ms = None;
        job.ended_ms = None;
        job.progress = JobProgress {
            lines_total: file.analysis.commands,
            ..JobProgress::default()
        };
        let note = if from > 1 {
            format!("requeued from line {from}")
        } else {
            "requeued".into()
        };
        job.transition(JobState::Queued, Some(note.clone()), now);
        let b = Batch {
            jobs: vec![job.clone()],
            events: vec![DomainEvent::JobQueued {
                job_id: id,
                file_id: job.file_id.clone(),
                start_line: from,
                priority: job.priority,
                note: Some(note),
            }],
            ..Batch::default()
        };
        Ok((job.clone(), b))
    }

    /// Moves a queued job just before another queued job (or to the end),
    /// optionally changing its priority.
    pub fn reorder(
        &mut self,
        id: u64,
        before: Option<u64>,
        priority: Option<i32>,
    ) -> Result<(Job, Batch)> {
        let state = self
            .jobs
            .get(&id)
            .map(|j| j.state)
            .ok_or_else(|| CoreError::NotFound(format!("no job with id {id}")))?;
        if state != JobState::Queued {
            return Err(CoreError::Conflict(format!(
                "job {id} is {}; only queued jobs can be reordered",
                state.as_str()
            )));
        }
        if let Some(p) = priority {
            check_priority(p)?;
        }
        if let Some(bid) = before
            && self.jobs.get(&bid).map(|j| j.state) != Some(JobState::Queued)
        {
            return Err(CoreError::Invalid(format!(
                "before: job {bid} is not a queued job"
            )));
        }
        let mut queued: Vec<(u64, u64)> = self
            .jobs
            .values()
            .filter(|j| j.state == JobState::Queued)
            .map(|j| (j.seq, j.id))
            .collect();
        queued.sort_unstable();
        let seqs: Vec<u64> = queued.iter().map(|(s, _)| *s).collect();
        let mut order: Vec<u64> = queued
            .into_iter()
            .map(|(_, i)| i)
            .filter(|i| *i != id)
            .collect();
        let at = before
            .and_then(|bid| order.iter().position(|i| *i == bid))
            .unwrap_or(order.len());
        order.insert(at, id);
        let mut b = Batch::default();
        for (seq, jid) in seqs.into_iter().zip(order) {
            if let Some(j) = self.jobs.get_mut(&jid)
                && (j.seq != seq || jid == id)
            {
                j.seq = seq;
                if jid == id
                    && let Some(p) = priority
                {
                    j.priority = p;
                }
                b.events.push(DomainEvent::JobReordered {
                    job_id: jid,
                    seq,
                    priority: j.priority,
                });
                b.jobs.push(j.clone());
            }
        }
        let job = self
            .jobs
            .get(&id)
            .cloned()
            .ok_or_else(|| CoreError::NotFound(format!("no job with id {id}")))?;
        Ok((job, b))
    }

    /// Cancels a job that is still queued.
    pub fn cancel_queued(&mut self, id: u64, now: u64) -> Result<(Job, Batch)> {
        let job = self.job_mut(id)?;
        if job.state != JobState::Queued {
            return Err(CoreError::Conflict(format!(
                "job {id} is {}, not queued",
                job.state.as_str()
            )));
        }
        job.transition(
            JobState::Cancelled,
            Some("cancelled while queued".into()),
            now,
        );
        let job = job.clone();
        Ok((job.clone(), transition_batch(job)))
    }

    /// The operator has seen that an ended job failed: it leaves the
    /// attention list. A machine that holds for the job still waits for
    /// its own confirmation (the job is read about; the machine must be
    /// looked at). `archived` is the job from the store when memory no
    /// longer holds it. Acknowledging twice changes nothing.
    pub fn acknowledge(&mut self, id: u64, archived: Option<Job>) -> Result<(Job, Batch)> {
        if !self.jobs.contains_key(&id)
            && let Some(old) = archived
        {
            // Not put back into memory: it is ended and needs nothing.
            return if old.state.is_final() {
                Ok((old, Batch::default()))
            } else {
                Err(CoreError::Conflict(format!(
                    "job {id} is {}; only an ended job can be acknowledged",
                    old.state.as_str()
                )))
            };
        }
        let job = self.job_mut(id)?;
        if !job.state.is_final() {
            return Err(CoreError::Conflict(format!(
                "job {id} is {}; only an ended job can be acknowledged",
                job.state.as_str()
            )));
        }
        let mut b = Batch::default();
        if job.awaiting_ack {
            job.awaiting_ack = false;
            // The record only: no state changed, so no domain event; the
            // live stream still tells the pages (every stored job is).
            b.jobs.push(job.clone());
        }
        Ok((job.clone(), b))
    }

    /// The machine a running or paused job holds, for an operator action.
    pub fn active_machine(&self, id: u64, verb: &str) -> Result<usize> {
        let job = self
            .jobs
            .get(&id)
            .ok_or_else(|| CoreError::NotFound(format!("no job with id {id}")))?;
        match (&job.assigned_machine, job.state.is_active()) {
            (Some(m), true) => self.machine_index(m),
            _ => Err(CoreError::Conflict(format!(
                "job {id} is {}; only a running or paused job can be {verb}",
                job.state.as_str()
            ))),
        }
    }

    /// A job was paused (by the operator, a tool change or the program).
    pub fn paused(&mut self, id: u64, reason: PauseReason, now: u64) -> Result<(Job, Batch)> {
        let note = match &reason {
            PauseReason::Operator => "paused by the operator".to_string(),
            PauseReason::ToolChange { tool, line } => match tool {
                Some(t) => format!("paused at line {line}: tool change to T{t:02}"),
                None => format!("paused at line {line}: tool change"),
            },
            PauseReason::Program { text, line } => format!("paused at line {line}: {text}"),
        };
        let job = self.job_mut(id)?;
        if !job.state.is_active() {
            return Err(CoreError::Conflict(format!(
                "job {id} is {}; only a running job can pause",
                job.state.as_str()
            )));
        }
        job.transition(JobState::Paused, Some(note), now);
        job.pause = Some(reason);
        let job = job.clone();
        let mut b = transition_batch(job.clone());
        self.refresh(now, &mut b);
        Ok((job, b))
    }

    /// A paused job runs again (`note` says who or why).
    pub fn resumed(&mut self, id: u64, note: &str, now: u64) -> Result<(Job, Batch)> {
        let job = self.job_mut(id)?;
        if job.state != JobState::Paused {
            return Err(CoreError::Conflict(format!(
                "job {id} is {}, not paused",
                job.state.as_str()
            )));
        }
        job.transition(JobState::Running, Some(note.to_string()), now);
        let job = job.clone();
        let mut b = transition_batch(job.clone());
        self.refresh(now, &mut b);
        Ok((job, b))
    }

    /// Hands each free machine the best queued job it can run: priority,
    /// then queue order. A queued job whose file is gone fails with that
    /// reason rather than waiting for ever.
    pub fn schedule(&mut self, files: Files<'_>, now: u64) -> (Vec<(usize, Job)>, Batch) {
        let mut b = Batch::default();
        let mut started = Vec::new();
        // In a busy farm every machine is usually at work: then there is
        // nothing to hand out, and no need to sort a long queue.
        if !self.machines.iter().any(MachineCore::free) {
            return (started, b);
        }
        let mut queued: Vec<(i64, u64, u64)> = self
            .jobs
            .values()
            .filter(|j| j.state == JobState::Queued)
            .map(|j| (-i64::from(j.priority), j.seq, j.id))
            .collect();
        if queued.is_empty() {
            return (started, b);
        }
        queued.sort_unstable();
        for i in 0..self.machines.len() {
            if !self.machines[i].free() {
                continue;
            }
            let mut pick = None;
            let mut gone = Vec::new();
            for (qi, (_, _, jid)) in queued.iter().enumerate() {
                let Some(job) = self.jobs.get(jid) else {
                    continue;
                };
                let Some(file) = files(&job.file_id) else {
                    gone.push(qi);
                    continue;
                };
                if routing::check(&self.machines[i].machine, &file, &Requirements::of(job)).is_ok()
                {
                    pick = Some(qi);
                    break;
                }
            }
            for &qi in gone.iter().rev() {
                let (_, _, jid) = queued.remove(qi);
                if let Some(job) = self.jobs.get_mut(&jid) {
                    job.failure = Some(Failure {
                        reason: "its file was deleted".into(),
                        line: None,
                    });
                    job.transition(JobState::Failed, Some("its file was deleted".into()), now);
                    // No machine holds for it: only the attention list
                    // tells the operator it will never run.
                    job.awaiting_ack = true;
                    b.events.push(job_state_event(job));
                    b.jobs.push(job.clone());
                }
                if let Some(p) = pick.as_mut()
                    && *p > qi
                {
                    *p -= 1;
                }
            }
            let Some(qi) = pick else { continue };
            let (_, _, jid) = queued.remove(qi);
            let mid = self.machines[i].id().to_string();
            self.machines[i].job = Some(jid);
            let Some(job) = self.jobs.get_mut(&jid) else {
                continue;
            };
            job.assigned_machine = Some(mid.clone());
            job.attempt += 1;
            job.transition(JobState::Assigned, None, now);
            let attempt = new_attempt(job, mid, now, None);
            b.events.push(job_state_event(job));
            b.jobs.push(job.clone());
            b.attempts.push(attempt.clone());
            self.attempts.insert(jid, attempt);
            started.push((i, job.clone()));
        }
        self.refresh(now, &mut b);
        (started, b)
    }

    /// The driver took the job (`Ok`) or did not: either way the attempt
    /// ends failed, and the job goes back to the queue
    /// ([`NotStarted::Retry`]) or fails awaiting the operator
    /// ([`NotStarted::Impossible`]); the machine is free again.
    pub fn started(
        &mut self,
        i: usize,
        id: u64,
        res: std::result::Result<(), NotStarted>,
        now: u64,
    ) -> Batch {
        let mut b = Batch::default();
        let Some(mut job) = self.jobs.remove(&id) else {
            return b;
        };
        // The job may already have ended (a very short program).
        if job.state == JobState::Assigned {
            match res {
                Ok(()) => {
                    job.transition(JobState::Running, None, now);
                    if let Some(a) = self.attempts.get_mut(&id) {
                        a.started_ms = Some(now);
                        b.attempts.push(a.clone());
                    }
                }
                Err(e) => {
                    let mid = self.machines[i].id().to_string();
                    self.machines[i].job = None;
                    job.assigned_machine = None;
                    let (state, e) = match e {
                        NotStarted::Retry(e) => (JobState::Queued, e),
                        NotStarted::Impossible(e) => (JobState::Failed, e),
                    };
                    let failure = Failure {
                        reason: format!("could not start: {e}"),
                        line: None,
                    };
                    job.transition(state, Some(failure.reason.clone()), now);
                    if state == JobState::Failed {
                        job.failure = Some(failure.clone());
                        job.awaiting_ack = true;
                    }
                    if let Some(a) = self.attempts.get_mut(&id) {
                        a.failure = Some(failure);
                    }
                    self.end_attempt(&mut job, &mid, AttemptOutcome::Failed, None, now, &mut b);
                }
            }
            b.events.push(job_state_event(&job));
            b.jobs.push(job.clone());
        }
        self.jobs.insert(id, job);
        self.refresh(now, &mut b);
        b
    }

    /// Streaming progress; returns the job to store when `persist` (the
    /// shell stores progress at most once a second, without an event).
    pub fn progress(&mut self, p: &Progress) -> Option<(u64, JobProgress)> {
        let id = p.job_id.parse::<u64>().ok()?;
        let job = self.jobs.get_mut(&id)?;
        if !job.state.is_active() {
            return None;
        }
        job.progress = JobProgress {
            lines_done: p.lines_done,
            lines_total: p.lines_total,
            percent: p.percent,
            last_acked_line: p.last_acked_line,
            elapsed_seconds: p.elapsed_seconds,
            eta_seconds: p.eta_seconds,
            resends: p.resends,
        };
        Some((id, job.progress.clone()))
    }

    /// A job ended on machine `i`. Anything but a completion leaves the
    /// machine waiting for the operator (the part is half made, or the
    /// machine needs a look); a completion does when the machine needs a
    /// bed clearance after each job.
    pub fn job_ended(
        &mut self,
        i: usize,
        id: u64,
        outcome: JobOutcome,
        stats: Option<StreamStats>,
        now: u64,
    ) -> Option<(Job, Batch)> {
        if self.jobs.get(&id).is_none_or(|j| !j.state.is_active()) {
            // Already recorded (from the status after a lag).
            return None;
        }
        let mut b = Batch::default();
        let mid = self.machines[i].id().to_string();
        let mut job = self.jobs.remove(&id)?;
        let (state, note, outcome_kind, hold) = match outcome {
            JobOutcome::Completed => {
                job.progress.lines_done = job.progress.lines_total;
                job.progress.percent = 100.0;
                job.progress.eta_seconds = Some(0.0);
                let hold = self.machines[i]
                    .machine
                    .config
                    .require_bed_clear
                    .then_some(StateReason::BedClear);
                (JobState::Completed, None, AttemptOutcome::Completed, hold)
            }
            JobOutcome::Failed { reason, line } => {
                job.failure = Some(Failure {
                    reason: reason.clone(),
                    line,
                });
                (
                    JobState::Failed,
                    Some(reason),
                    AttemptOutcome::Failed,
                    Some(StateReason::Failed),
                )
            }
            JobOutcome::Interrupted {
                reason,
                last_acked_line,
            } => {
                job.progress.last_acked_line = last_acked_line;
                job.failure = Some(Failure {
                    reason: reason.clone(),
                    line: Some(last_acked_line),
                });
                (
                    JobState::Interrupted,
                    Some(reason),
                    AttemptOutcome::Interrupted,
                    Some(StateReason::Interrupted),
                )
            }
            JobOutcome::Cancelled { last_acked_line } => {
                job.progress.last_acked_line = last_acked_line;
                (
                    JobState::Cancelled,
                    Some(format!("cancelled after line {last_acked_line}")),
                    AttemptOutcome::Cancelled,
                    Some(StateReason::Cancelled),
                )
            }
        };
        job.transition(state, note, now);
        job.awaiting_ack = matches!(state, JobState::Failed | JobState::Interrupted);
        let m = &mut self.machines[i];
        if m.job == Some(id) {
            m.job = None;
        }
        if let Some(reason) = hold {
            m.record.hold = Some(Hold {
                reason,
                job_id: Some(id),
            });
            b.machines.push((mid.clone(), m.record.clone()));
        }
        if let Some(a) = self.attempts.get_mut(&id) {
            a.failure.clone_from(&job.failure);
        }
        b.events.push(job_state_event(&job));
        self.end_attempt(&mut job, &mid, outcome_kind, stats, now, &mut b);
        b.jobs.push(job.clone());
        self.jobs.insert(id, job.clone());
        self.refresh(now, &mut b);
        Some((job, b))
    }

    /// What the link reports changed.
    pub fn link(&mut self, i: usize, link: LinkState, busy: bool, now: u64) -> Batch {
        let mut b = Batch::default();
        let m = &mut self.machines[i];
        // A halt (emergency stop, alarm, kill) leaves the machine for a
        // person even once the firmware is back: whatever was on the bed
        // or in the spindle is in an unknown state.
        if link == LinkState::Faulted && m.link != LinkState::Faulted && m.record.hold.is_none() {
            m.record.hold = Some(Hold {
                reason: StateReason::Halted,
                job_id: m.job,
            });
            b.machines.push((m.id().to_string(), m.record.clone()));
        }
        m.link = link;
        m.link_busy = busy;
        self.refresh(now, &mut b);
        b
    }

    /// What a read-only machine (one that reports over MQTT) says it is
    /// doing: `activity` is `Some(paused)` while its own host runs a job.
    /// Such a job is not ours, yet the machine is producing, and the state
    /// log (hence metering) must say so.
    pub fn reported(
        &mut self,
        i: usize,
        link: LinkState,
        activity: Option<bool>,
        now: u64,
    ) -> Batch {
        self.machines[i].link_paused = activity == Some(true);
        self.link(i, link, activity.is_some(), now)
    }

    /// A read-only machine's own host started a print of one of `files`
    /// (the ids of stored files whose name matches what it reported, see
    /// [`print_name_matches`]): the first queued job of those files, by
    /// priority then age, that names no other machine and is of this
    /// machine's kind becomes the machine's job, running, with a new
    /// attempt. That is how a production order's job is made on a printer
    /// the daemon only watches: when the print ends, [`Core::job_ended`]
    /// ends its attempt as for a streamed one, and metering makes its
    /// units. No match: nothing is recorded.
    pub fn adopt(&mut self, i: usize, files: &[String], now: u64) -> Option<(Job, Batch)> {
        let m = &self.machines[i];
        if !m.machine.config.read_only || m.job.is_some() || files.is_empty() {
            return None;
        }
        let mid = m.id().to_string();
        let kind = routing::kind_of(&m.machine);
        let jid = self
            .jobs
            .values()
            .filter(|j| {
                j.state == JobState::Queued
                    && files.contains(&j.file_id)
                    && j.machine_id.as_deref().is_none_or(|w| w == mid)
                    && j.kind.is_none_or(|k| k == kind)
            })
            .min_by_key(|j| (-i64::from(j.priority), j.seq))?
            .id;
        let job = self.jobs.get_mut(&jid)?;
        let mut b = Batch::default();
        job.assigned_machine = Some(mid.clone());
        job.attempt += 1;
        job.transition(
            JobState::Running,
            Some(format!("started on {mid} by its own host")),
            now,
        );
        let attempt = new_attempt(job, mid, now, Some(now));
        b.events.push(job_state_event(job));
        b.jobs.push(job.clone());
        b.attempts.push(attempt.clone());
        let job = job.clone();
        self.attempts.insert(jid, attempt);
        self.machines[i].job = Some(jid);
        self.refresh(now, &mut b);
        Some((job, b))
    }

    /// The operator confirms the machine is ready (bed cleared, looked
    /// at), or takes it out of or back into service.
    pub fn set_machine(
        &mut self,
        i: usize,
        clear: Option<bool>,
        disabled: Option<bool>,
        now: u64,
    ) -> Batch {
        let mut b = Batch::default();
        let m = &mut self.machines[i];
        if clear == Some(true) {
            // Confirming the machine is the operator's word on the job it
            // held for, too: it leaves the attention list with the hold.
            if let Some(job) = m
                .record
                .hold
                .take()
                .and_then(|h| h.job_id)
                .and_then(|j| self.jobs.get_mut(&j))
                .filter(|j| j.awaiting_ack)
            {
                job.awaiting_ack = false;
                b.jobs.push(job.clone());
            }
        }
        let m = &mut self.machines[i];
        if let Some(d) = disabled {
            m.record.disabled = d;
        }
        b.machines.push((m.id().to_string(), m.record.clone()));
        self.refresh(now, &mut b);
        b
    }

    /// Drops the oldest ended jobs from memory beyond `keep_ended` (with
    /// some slack, so it is not a sort on every job's end). They are
    /// stored already; without this a farm's daemon would grow by every
    /// job it ever ran (a few KiB each, tens of thousands a year).
    pub fn trim_ended(&mut self) {
        // A failure the operator has not seen stays, for the attention
        // list (there are few: each one is a person's to-do).
        let trimmable = |j: &&Job| j.state.is_final() && !j.awaiting_ack;
        let ended = self.jobs.values().filter(trimmable).count();
        if ended <= self.keep_ended.saturating_add(self.keep_ended / 10) {
            return;
        }
        let mut old: Vec<(u64, u64)> = self
            .jobs
            .values()
            .filter(trimmable)
            .map(|j| (j.ended_ms.unwrap_or(0), j.id))
            .collect();
        old.sort_unstable();
        for &(_, id) in &old[..ended - self.keep_ended] {
            self.jobs.remove(&id);
        }
        self.archived += ended - self.keep_ended;
    }

    // --------------------------------------------------------- internals

    fn job_mut(&mut self, id: u64) -> Result<&mut Job> {
        self.jobs
            .get_mut(&id)
            .ok_or_else(|| CoreError::NotFound(format!("no job with id {id}")))
    }

    fn end_attempt(
        &mut self,
        job: &mut Job,
        machine_id: &str,
        outcome: AttemptOutcome,
        stats: Option<StreamStats>,
        now: u64,
        b: &mut Batch,
    ) {
        // A job from before attempts were recorded gets its first now.
        let mut a = self.attempts.remove(&job.id).unwrap_or_else(|| {
            job.attempt = job.attempt.max(1);
            new_attempt(
                job,
                machine_id.to_string(),
                job.started_ms.unwrap_or(now),
                job.started_ms,
            )
        });
        a.ended_ms = Some(now);
        a.outcome = Some(outcome);
        a.lines_done = if outcome == AttemptOutcome::Completed {
            job.progress.lines_total
        } else {
            job.progress.lines_done
        };
        a.last_acked_line = job.progress.last_acked_line;
        if a.failure.is_none() {
            a.failure.clone_from(&job.failure);
        }
        a.stats = stats;
        b.events.push(DomainEvent::AttemptEnded {
            job_id: job.id,
            attempt: a.n,
            machine_id: a.machine_id.clone(),
            outcome,
            lines_done: a.lines_done,
        });
        b.attempts.push(a);
    }

    /// Derives every machine's state from its facts and records each
    /// change: the one place the machine state log is written from.
    fn refresh(&mut self, now: u64, b: &mut Batch) {
        for m in &mut self.machines {
            let job = m.job.and_then(|id| self.jobs.get(&id));
            let facts = Facts {
                disabled: m.record.disabled,
                link: m.link,
                job: match job {
                    Some(j) => Some(match (&j.state, &j.pause) {
                        (JobState::Paused, Some(p)) => Some(pause_state_reason(p)),
                        (JobState::Paused, None) => Some(StateReason::OperatorPause),
                        _ => None,
                    }),
                    // A job its own host runs (read-only machines only).
                    None if m.machine.config.read_only && m.link_busy => {
                        Some(m.link_paused.then_some(StateReason::ProgramPause))
                    }
                    None => None,
                },
                hold: m.record.hold.as_ref().map(|h| h.reason),
            };
            let (state, reason) = machine::derive(facts);
            // The job is part of the state only where it is the cause.
            let job_id = match state {
                MachineState::Producing | MachineState::Paused => m.job,
                MachineState::AwaitingOperator => m.record.hold.as_ref().and_then(|h| h.job_id),
                _ => None,
            };
            if (state, reason, job_id) != (m.state.0, m.state.1, m.state.2) {
                m.state = (state, reason, job_id, now);
                b.events.push(DomainEvent::MachineState {
                    machine_id: m.id().to_string(),
                    state,
                    reason,
                    job_id,
                });
            }
        }
    }
}

/// The attempt a job begins on machine `machine_id` (its `attempt` already
/// counted), assigned at `assigned_ms`.
fn new_attempt(
    job: &Job,
    machine_id: String,
    assigned_ms: u64,
    started_ms: Option<u64>,
) -> Attempt {
    Attempt {
        job_id: job.id,
        n: job.attempt,
        machine_id,
        start_line: job.start_line,
        assigned_ms,
        started_ms,
        ended_ms: None,
        outcome: None,
        failure: None,
        lines_done: 0,
        last_acked_line: 0,
        stats: None,
    }
}

/// Whether the file name a machine's host reports (`reported`: a path,
/// or a name without its extension, as Bambu's `subtask_name`) is the
/// stored file `stored`: the same last path segment once a G-code or
/// 3MF extension is taken off each, ignoring case (hosts rename
/// uploads: OctoPrint lower-cases them). The content is not compared:
/// no host reports a hash.
pub fn print_name_matches(reported: &str, stored: &str) -> bool {
    fn stem(name: &str) -> String {
        let base = name
            .rsplit(['/', '\\'])
            .next()
            .unwrap_or(name)
            .to_lowercase();
        for ext in [
            ".gcode.3mf",
            ".3mf",
            ".gcode",
            ".gco",
            ".gc",
            ".g",
            ".nc",
            ".ngc",
            ".bgcode",
        ] {
            if let Some(s) = base.strip_suffix(ext) {
                return s.to_string();
            }
        }
        base
    }
    let r = stem(reported);
    !r.is_empty() && r == stem(stored)
}

fn pause_state_reason(p: &PauseReason) -> StateReason {
    match p {
        PauseReason::Operator => StateReason::OperatorPause,
        PauseReason::ToolChange { .. } => StateReason::ToolChange,
        PauseReason::Program { .. } => StateReason::ProgramPause,
    }
}

/// A job's latest transition as a batch: its record and its event.
fn transition_batch(job: Job) -> Batch {
    Batch {
        events: vec![job_state_event(&job)],
        jobs: vec![job],
        ..Batch::default()
    }
}

/// The domain event of a job's latest transition.
pub fn job_state_event(j: &Job) -> DomainEvent {
    DomainEvent::JobState {
        job_id: j.id,
        state: j.state,
        machine_id: j.assigned_machine.clone(),
        attempt: j.attempt,
        pause: j.pause.clone(),
        note: j.history.last().and_then(|t| t.note.clone()),
    }
}

fn check_priority(p: i32) -> Result<i32> {
    if (-MAX_PRIORITY..=MAX_PRIORITY).contains(&p) {
        Ok(p)
    } else {
        Err(CoreError::Invalid(format!(
            "priority must be between -{MAX_PRIORITY} and {MAX_PRIORITY}, got {p}"
        )))
    }
}

fn check_name(n: &str) -> Result<String> {
    let n = n.trim();
    let chars = n.chars().count();
    let problem = if chars > MAX_NAME_CHARS {
        Some(format!("is {chars} characters long"))
    } else {
        n.chars()
            .find(|c| c.is_control())
            .map(|c| format!("contains the control character {c:?}"))
    };
    match problem {
        Some(p) => Err(CoreError::Invalid(format!(
            "name {p}; a job name must be at most {MAX_NAME_CHARS} characters without control characters"
        ))),
        None => Ok(n.to_string()),
    }
}

#[cfg(test)]
mod tests;
