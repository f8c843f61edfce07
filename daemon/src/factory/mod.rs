//! The factory: jobs, machines and the scheduler that joins them.
//!
//! All job and machine bookkeeping lives behind one short-held mutex; every
//! change is written to the [`Store`] under the lock and flushed outside it
//! before the change is acknowledged, so concurrent requests share flushes.
//! One task per machine turns driver events into job transitions; one
//! scheduler task hands queued jobs to idle, capable machines.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use microfactory_machines::driver::{
    Connection, DriverConfig, DriverError, DriverEvent, DriverHandle, Firmware, JobOutcome,
    JobSpec, MachineStatus, Progress, SerialLine,
};
use thiserror::Error;
use tokio::sync::{Notify, broadcast, watch};
use tracing::{Instrument, info, info_span, warn};

pub mod files;
pub mod resume;
pub mod temps;

use crate::config::Machine;
use crate::core::model::{
    Event, Failure, FileRecord, Job, JobProgress, JobState, Kind, MachineRecord, MachineView,
    now_ms,
};
use crate::core::routing::{self, Requirements};
use crate::factory::files::{IngestError, Upload};
use crate::factory::temps::{SAMPLE_EVERY, TempHistory, TemperatureHistory};
use crate::store::{Store, StoreError};

/// Sorts jobs as `GET /jobs` lists them (active, queued by priority then
/// order, ended newest first and the later id first within a millisecond)
/// and keeps at most `ended_limit` ended ones.
fn in_list_order<J: std::borrow::Borrow<Job>>(v: &mut Vec<J>, ended_limit: Option<usize>) {
    v.sort_by_key(|j| {
        let j = j.borrow();
        if j.state.is_active() {
            (0, -i64::from(j.priority), j.seq, 0)
        } else if j.state == JobState::Queued {
            (1, -i64::from(j.priority), j.seq, 0)
        } else {
            (2, 0, u64::MAX - j.ended_ms.unwrap_or(0), u64::MAX - j.id)
        }
    });
    if let Some(limit) = ended_limit {
        let live = v
            .iter()
            .take_while(|j| !j.borrow().state.is_final())
            .count();
        v.truncate(live.saturating_add(limit));
    }
}

/// How often ended jobs beyond `keep_ended_jobs` leave memory.
const TRIM_EVERY: Duration = Duration::from_secs(10);

/// Most copies one submission may ask for.
pub const MAX_COPIES: u32 = 1000;

/// How often progress is written to the store (without a flush: a lost
/// write leaves an older, smaller line, which is still a safe restart
/// point).
const PERSIST_PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// Least interval between machine status events while a job runs.
const MACHINE_EVENT_EVERY: Duration = Duration::from_secs(1);

/// Why an operation was refused; each maps to one HTTP status.
#[derive(Debug, Error)]
pub enum FactoryError {
    /// No such file, job or machine.
    #[error("{0}")]
    NotFound(String),
    /// The request is well-formed but its values are wrong.
    #[error("{0}")]
    Invalid(String),
    /// The thing is in a state that does not allow it.
    #[error("{0}")]
    Conflict(String),
    /// The machine could not do it.
    #[error("{machine}: {source}")]
    Driver {
        machine: String,
        source: DriverError,
    },
    /// The upload was refused.
    #[error(transparent)]
    Ingest(#[from] IngestError),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

type Result<T, E = FactoryError> = std::result::Result<T, E>;

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
}

struct Slot {
    machine: Machine,
    driver: DriverHandle,
    status: watch::Receiver<MachineStatus>,
    /// Its own lock: sampled every second, read by dashboards, never
    /// worth waiting on the job lock for.
    temps: Mutex<TempHistory>,
}

#[derive(Debug, Default)]
struct MachineRt {
    record: MachineRecord,
    job: Option<u64>,
}

#[derive(Default)]
struct State {
    /// Every live job and the most recently ended ones (see
    /// [`State::trim_ended`]); the store has all.
    jobs: BTreeMap<u64, Job>,
    machines: HashMap<String, MachineRt>,
    last_persist: HashMap<u64, Instant>,
    /// Ended jobs kept in memory besides the live ones.
    keep_ended: usize,
    /// Ended jobs only the store holds.
    archived: usize,
}

impl State {
    /// Drops the oldest ended jobs from memory beyond `keep_ended` (with
    /// some slack, so it is not a sort on every job's end). They are
    /// stored already; without this a farm's daemon would grow by every
    /// job it ever ran (a few KiB each, tens of thousands a year).
    fn trim_ended(&mut self) {
        let ended = self.jobs.values().filter(|j| j.state.is_final()).count();
        if ended <= self.keep_ended.saturating_add(self.keep_ended / 10) {
            return;
        }
        let mut old: Vec<(u64, u64)> = self
            .jobs
            .values()
            .filter(|j| j.state.is_final())
            .map(|j| (j.ended_ms.unwrap_or(0), j.id))
            .collect();
        old.sort_unstable();
        for &(_, id) in &old[..ended - self.keep_ended] {
            self.jobs.remove(&id);
            self.last_persist.remove(&id);
        }
        self.archived += ended - self.keep_ended;
    }
}

/// The running factory. Shared by the API handlers through an `Arc`.
pub struct Factory {
    store: Store,
    slots: Vec<Slot>,
    state: Mutex<State>,
    wake: Notify,
    events: broadcast::Sender<Event>,
    closing: watch::Sender<bool>,
    max_upload: u64,
}

impl std::fmt::Debug for Factory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Factory")
            .field("machines", &self.slots.len())
            .finish_non_exhaustive()
    }
}

impl Factory {
    /// Opens the factory: recovers jobs left running by a crash, starts a
    /// driver per machine. Call [`Factory::run`] to start scheduling.
    pub async fn open(
        store: Store,
        machines: Vec<Machine>,
        drivers: Vec<DriverConfig>,
        max_upload: u64,
        keep_ended: usize,
    ) -> Result<Arc<Self>> {
        let mut state = State {
            keep_ended,
            ..State::default()
        };
        for mut job in store.jobs()? {
            if job.state.is_active() {
                let line = job.progress.last_acked_line;
                job.failure = Some(Failure {
                    reason: "the daemon stopped while the job was running".into(),
                    line: Some(line),
                });
                job.transition(
                    JobState::Interrupted,
                    Some(format!("recovered at start; last acknowledged line {line}")),
                );
                store.put_job(&job)?;
                store.append_event(&job_event(&job))?;
            }
            state.jobs.insert(job.id, job);
        }
        state.trim_ended();
        for m in &machines {
            state.machines.insert(
                m.config.id.clone(),
                MachineRt {
                    record: store.machine(&m.config.id)?,
                    job: None,
                },
            );
        }
        store.flush().await?;
        let slots = machines
            .into_iter()
            .zip(drivers)
            .map(|(machine, cfg)| {
                let driver = DriverHandle::spawn(cfg);
                let status = driver.status();
                Slot {
                    machine,
                    driver,
                    status,
                    temps: Mutex::default(),
                }
            })
            .collect();
        let (events, _) = broadcast::channel(4096);
        Ok(Arc::new(Self {
            store,
            slots,
            state: Mutex::new(state),
            wake: Notify::new(),
            events,
            closing: watch::Sender::new(false),
            max_upload,
        }))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data; keep serving.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The store (for tokens).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Live events for `GET /events`.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Becomes `true` when the daemon starts shutting down, so that
    /// endless responses (event streams) can end and let the server stop.
    pub fn closing(&self) -> watch::Receiver<bool> {
        self.closing.subscribe()
    }

    /// Marks the start of shutdown.
    pub fn begin_shutdown(&self) {
        self.closing.send_replace(true);
    }

    /// Starts the per-machine event tasks and the scheduler; returns their
    /// handles so shutdown can wait for the last events to be stored.
    pub fn run(self: &Arc<Self>) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks = Vec::new();
        for i in 0..self.slots.len() {
            let f = Arc::clone(self);
            let id = self.slots[i].machine.config.id.clone();
            let rx = self.slots[i].driver.events();
            tasks.push(tokio::spawn(
                async move { f.machine_events(i, rx).await }
                    .instrument(info_span!("machine", machine = %id)),
            ));
            let f = Arc::clone(self);
            let status = self.slots[i].status.clone();
            tasks.push(tokio::spawn(async move { f.watch_status(i, status).await }));
        }
        let f = Arc::clone(self);
        tokio::spawn(async move { f.scheduler().await });
        let f = Arc::clone(self);
        tokio::spawn(async move { f.sample_temperatures().await });
        tasks
    }

    /// Records every connected machine's heaters once a second.
    async fn sample_temperatures(self: Arc<Self>) {
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut closing = self.closing.subscribe();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = closing.wait_for(|c| *c) => return,
            }
            let at = now_ms();
            for s in &self.slots {
                let heaters = {
                    let st = s.status.borrow();
                    if st.connection != Connection::Online {
                        continue;
                    }
                    st.heaters.clone()
                };
                s.temps
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .record(at, &heaters);
            }
        }
    }

    /// Stops every driver at a safe point; running jobs end interrupted
    /// with their last acknowledged line, stored before this returns.
    pub async fn shutdown(self: &Arc<Self>, tasks: Vec<tokio::task::JoinHandle<()>>) {
        for s in &self.slots {
            s.driver.stop().await;
        }
        // The event tasks end once the drivers' event channels close,
        // after storing the final `JobEnded`s.
        for t in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
        let _ = self.store.flush().await;
    }

    fn slot(&self, id: &str) -> Result<(usize, &Slot)> {
        self.slots
            .iter()
            .enumerate()
            .find(|(_, s)| s.machine.config.id == id)
            .ok_or_else(|| {
                FactoryError::NotFound(format!(
                    "no machine with id '{id}' (known: {})",
                    self.slots
                        .iter()
                        .map(|s| s.machine.config.id.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })
    }

    fn publish(&self, e: Event) {
        let _ = self.events.send(e);
    }

    // ---------------------------------------------------------------- files

    /// Starts receiving an upload.
    pub fn upload(&self) -> Result<Upload> {
        Ok(Upload::new(&self.store.tmp_dir(), self.max_upload)?)
    }

    /// The configured upload limit.
    pub fn max_upload(&self) -> u64 {
        self.max_upload
    }

    /// Finishes an upload: analyses it, stores content and record durably.
    /// The same content again returns the existing record.
    pub async fn add_file(&self, upload: Upload, name: String) -> Result<(FileRecord, bool)> {
        let store = self.store.clone();
        let res = tokio::task::spawn_blocking(move || -> Result<(FileRecord, bool)> {
            let done = upload.finish()?;
            if let Some(existing) = store.file(&done.id)? {
                return Ok((FileRecord::clone(&existing), false));
            }
            let rec = FileRecord {
                id: done.id.clone(),
                name,
                size: done.size,
                uploaded_ms: now_ms(),
                analysis: done.analysis.clone(),
                preflight_marlin: done.preflight_marlin.clone(),
                preflight_grbl: done.preflight_grbl.clone(),
            };
            done.commit(&store.blob_path(&rec.id), store.blob_dir())?;
            store.put_file(&rec)?;
            Ok((rec, true))
        })
        .await
        .map_err(|e| StoreError::Io(std::io::Error::other(e.to_string())))??;
        self.store.flush().await?;
        Ok(res)
    }

    /// Every file, newest first.
    pub fn files(&self) -> Result<Vec<FileRecord>> {
        let mut f = self.store.files()?;
        f.sort_by_key(|r| std::cmp::Reverse(r.uploaded_ms));
        Ok(f)
    }

    /// One file.
    pub fn file(&self, id: &str) -> Result<FileRecord> {
        self.store
            .file(id)?
            .map(|f| FileRecord::clone(&f))
            .ok_or_else(|| FactoryError::NotFound(format!("no file with id '{id}'")))
    }

    /// Which machines can run this file as it is, and why the others cannot.
    pub fn file_fit(&self, file: &FileRecord, expand: bool) -> Vec<(String, Result<(), String>)> {
        let req = Requirements {
            expand_canned_cycles: expand,
            ..Requirements::default()
        };
        self.slots
            .iter()
            .map(|s| {
                (
                    s.machine.config.id.clone(),
                    routing::check(&s.machine, file, &req),
                )
            })
            .collect()
    }

    /// Deletes a file no queued or running job uses.
    pub async fn delete_file(&self, id: &str) -> Result<()> {
        {
            let st = self.lock();
            if let Some(j) = st
                .jobs
                .values()
                .find(|j| j.file_id == id && (j.state == JobState::Queued || j.state.is_active()))
            {
                return Err(FactoryError::Conflict(format!(
                    "file is used by job {} ({}); cancel it first",
                    j.id,
                    j.state.as_str()
                )));
            }
            if !self.store.remove_file(id)? {
                return Err(FactoryError::NotFound(format!("no file with id '{id}'")));
            }
        }
        self.store.flush().await?;
        let _ = std::fs::remove_file(self.store.blob_path(id));
        Ok(())
    }

    // ----------------------------------------------------------------- jobs

    /// Queues a job (one per copy). Refuses a job no configured machine
    /// could ever run, naming each machine's reason.
    pub async fn submit(&self, s: Submission) -> Result<Vec<Job>> {
        let file = self.store.file(&s.file_id)?.ok_or_else(|| {
            FactoryError::Invalid(format!("file_id '{}' is not an uploaded file", s.file_id))
        })?;
        let copies = s.copies.unwrap_or(1);
        if copies == 0 || copies > MAX_COPIES {
            return Err(FactoryError::Invalid(format!(
                "copies must be between 1 and {MAX_COPIES}, got {copies}"
            )));
        }
        if let Some(m) = &s.machine_id {
            self.slot(m)
                .map_err(|e| FactoryError::Invalid(format!("machine_id: {e}")))?;
        }
        if let Some(t) = s.tags.iter().find(|t| !crate::config::valid_tag(t)) {
            return Err(FactoryError::Invalid(format!(
                "tag '{t}' must look like key:value (e.g. material:PLA)"
            )));
        }
        let req = Requirements {
            machine_id: s.machine_id.as_deref(),
            kind: s.kind,
            tags: &s.tags,
            expand_canned_cycles: s.expand_canned_cycles,
        };
        let reasons: Vec<String> = self
            .slots
            .iter()
            .filter_map(|sl| routing::check(&sl.machine, &file, &req).err())
            .collect();
        if reasons.len() == self.slots.len() {
            return Err(FactoryError::Invalid(if reasons.is_empty() {
                "no machine is configured".into()
            } else {
                format!("no machine can run this job: {}", reasons.join("; "))
            }));
        }
        let name = s
            .name
            .filter(|n| !n.trim().is_empty())
            .unwrap_or_else(|| file.name.clone());
        let mut jobs = Vec::with_capacity(copies as usize);
        {
            let mut st = self.lock();
            let mut batch = 0;
            for copy in 1..=copies {
                let id = self.store.next_job_id()?;
                if copy == 1 {
                    batch = id;
                }
                let mut job = Job {
                    id,
                    name: name.clone(),
                    file_id: file.id.clone(),
                    batch_id: batch,
                    copy,
                    copies,
                    priority: s.priority.unwrap_or(0),
                    seq: id,
                    machine_id: s.machine_id.clone(),
                    kind: s.kind,
                    tags: s.tags.clone(),
                    expand_canned_cycles: s.expand_canned_cycles,
                    start_line: 1,
                    state: JobState::Queued,
                    assigned_machine: None,
                    created_ms: now_ms(),
                    started_ms: None,
                    ended_ms: None,
                    progress: JobProgress {
                        lines_total: file.analysis.commands,
                        eta_seconds: Some(file.analysis.estimated_seconds),
                        ..JobProgress::default()
                    },
                    failure: None,
                    history: vec![],
                };
                job.transition(JobState::Queued, Some("submitted".into()));
                self.store.put_job(&job)?;
                self.store.append_event(&job_event(&job))?;
                st.jobs.insert(id, job.clone());
                jobs.push(job);
            }
        }
        self.store.flush().await?;
        for j in &jobs {
            info!(job = j.id, file = %j.file_id, "job queued");
            self.publish(job_event(j));
        }
        self.wake.notify_one();
        Ok(jobs)
    }

    /// Jobs in queue order (active first, then queued by priority and
    /// order, then ended jobs newest first), optionally of some states.
    /// With `ended_limit`, only that many of the most recently ended jobs
    /// come along: a farm's history grows by hundreds of jobs a day, and a
    /// dashboard needs the live queue and the latest results, not all of it.
    /// Ended jobs beyond those kept in memory are read from the store, so
    /// asking for all of them costs a pass over the whole history.
    /// With `ended_after`, only the ended jobs that this order puts after
    /// that one: a page of history.
    pub fn jobs(
        &self,
        states: &[JobState],
        ended_limit: Option<usize>,
        ended_after: Option<u64>,
    ) -> Result<Vec<Job>> {
        let cursor = match ended_after {
            None => None,
            Some(id) => {
                let j = self.job(id)?;
                if !j.state.is_final() {
                    return Err(FactoryError::Invalid(format!(
                        "job {id} is {}; ended_after takes an ended job",
                        j.state.as_str()
                    )));
                }
                Some((j.ended_ms.unwrap_or(0), id))
            }
        };
        let wanted = |j: &Job| {
            (states.is_empty() || states.contains(&j.state))
                && cursor.is_none_or(|c| j.state.is_final() && (j.ended_ms.unwrap_or(0), j.id) < c)
        };
        let ended_wanted = JobState::ALL
            .into_iter()
            .any(|s| s.is_final() && (states.is_empty() || states.contains(&s)));
        let mut v: Vec<Job> = {
            let st = self.lock();
            let mut v: Vec<&Job> = st.jobs.values().filter(|j| wanted(j)).collect();
            let ended_here = v.iter().filter(|j| j.state.is_final()).count();
            if !(st.archived > 0 && ended_wanted && ended_limit.is_none_or(|l| l > ended_here)) {
                // Everything asked for is in memory: clone only what goes out.
                in_list_order(&mut v, ended_limit);
                return Ok(v.into_iter().cloned().collect());
            }
            v.into_iter().cloned().collect()
        };
        let here: HashSet<u64> = v.iter().map(|j| j.id).collect();
        for j in self.store.jobs()? {
            if j.state.is_final() && wanted(&j) && !here.contains(&j.id) {
                v.push(j);
            }
        }
        in_list_order(&mut v, ended_limit);
        Ok(v)
    }

    /// One job, from memory or, for one that ended long ago, the store.
    pub fn job(&self, id: u64) -> Result<Job> {
        if let Some(j) = self.lock().jobs.get(&id) {
            return Ok(j.clone());
        }
        self.store
            .job(id)?
            .ok_or_else(|| FactoryError::NotFound(format!("no job with id {id}")))
    }

    fn job_machine(&self, id: u64, verb: &str) -> Result<(Job, &Slot)> {
        let job = self.job(id)?;
        let m = match (&job.assigned_machine, job.state.is_active()) {
            (Some(m), true) => m.clone(),
            _ => {
                return Err(FactoryError::Conflict(format!(
                    "job {id} is {}; only a running or paused job can be {verb}",
                    job.state.as_str()
                )));
            }
        };
        let (_, slot) = self.slot(&m)?;
        Ok((job, slot))
    }

    /// Pauses a running job.
    pub async fn pause_job(&self, id: u64) -> Result<Job> {
        let (job, slot) = self.job_machine(id, "paused")?;
        if job.state == JobState::Paused {
            return Ok(job);
        }
        driver(slot, slot.driver.pause().await)?;
        self.set_state(id, JobState::Paused, Some("paused by the operator".into()))
            .await
    }

    /// Resumes a paused job.
    pub async fn resume_job(&self, id: u64) -> Result<Job> {
        let (job, slot) = self.job_machine(id, "resumed")?;
        if job.state != JobState::Paused {
            return Err(FactoryError::Conflict(format!(
                "job {id} is {}, not paused",
                job.state.as_str()
            )));
        }
        // Running before the driver resumes: the job may pause itself again
        // (next tool change) at once, and that must win.
        let job = self
            .set_state(
                id,
                JobState::Running,
                Some("resumed by the operator".into()),
            )
            .await?;
        if let Err(e) = slot.driver.resume().await {
            self.set_state(id, JobState::Paused, Some(format!("resume failed: {e}")))
                .await?;
            return driver(slot, Err(e));
        }
        Ok(job)
    }

    /// Cancels a job: a queued one at once, a running one through its
    /// driver (which ends it, running the cancel script).
    pub async fn cancel_job(&self, id: u64) -> Result<Job> {
        let job = self.job(id)?;
        match job.state {
            JobState::Queued => {
                self.set_state(
                    id,
                    JobState::Cancelled,
                    Some("cancelled while queued".into()),
                )
                .await
            }
            s if s.is_active() => {
                let (_, slot) = self.job_machine(id, "cancelled")?;
                match slot.driver.cancel().await {
                    Ok(()) | Err(DriverError::NoJob) => {}
                    Err(e) => {
                        return Err(FactoryError::Driver {
                            machine: slot.machine.config.id.clone(),
                            source: e,
                        });
                    }
                }
                self.job(id)
            }
            s => Err(FactoryError::Conflict(format!(
                "job {id} has already ended ({})",
                s.as_str()
            ))),
        }
    }

    /// Puts an ended job back in the queue, from `from_line` (1 = the
    /// start; a later line restarts an interrupted job there).
    pub async fn requeue(&self, id: u64, from_line: Option<u64>) -> Result<Job> {
        let job = {
            let mut st = self.lock();
            let seq = self.store.next_id()?;
            if !st.jobs.contains_key(&id)
                && let Some(old) = self.store.job(id)?
            {
                // Ended long ago: back into memory, live again below.
                st.jobs.insert(id, old);
                st.archived = st.archived.saturating_sub(1);
            }
            let job = st
                .jobs
                .get_mut(&id)
                .ok_or_else(|| FactoryError::NotFound(format!("no job with id {id}")))?;
            if !job.state.is_final() {
                return Err(FactoryError::Conflict(format!(
                    "job {id} is {}; only an ended job can be requeued",
                    job.state.as_str()
                )));
            }
            let from = from_line.unwrap_or(1);
            if from == 0 {
                return Err(FactoryError::Invalid("from_line starts at 1".into()));
            }
            let file = self.store.file(&job.file_id)?.ok_or_else(|| {
                FactoryError::Conflict(format!("the file of job {id} has been deleted"))
            })?;
            if from > file.analysis.lines {
                return Err(FactoryError::Invalid(format!(
                    "from_line {from} is past the end of the file ({} lines)",
                    file.analysis.lines
                )));
            }
            job.start_line = from;
            job.seq = seq;
            job.failure = None;
            job.assigned_machine = None;
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
            job.transition(JobState::Queued, Some(note));
            self.store.put_job(job)?;
            self.store.append_event(&job_event(job))?;
            job.clone()
        };
        self.store.flush().await?;
        self.publish(job_event(&job));
        self.wake.notify_one();
        Ok(job)
    }

    /// Moves a queued job just before another queued job (or to the end),
    /// and optionally changes its priority.
    pub async fn reorder(
        &self,
        id: u64,
        before: Option<u64>,
        priority: Option<i32>,
    ) -> Result<Job> {
        let job = {
            let mut st = self.lock();
            let state = st
                .jobs
                .get(&id)
                .map(|j| j.state)
                .ok_or_else(|| FactoryError::NotFound(format!("no job with id {id}")))?;
            if state != JobState::Queued {
                return Err(FactoryError::Conflict(format!(
                    "job {id} is {}; only queued jobs can be reordered",
                    state.as_str()
                )));
            }
            if let Some(b) = before
                && st.jobs.get(&b).map(|j| j.state) != Some(JobState::Queued)
            {
                return Err(FactoryError::Invalid(format!(
                    "before: job {b} is not a queued job"
                )));
            }
            let mut queued: Vec<(u64, u64)> = st
                .jobs
                .values()
                .filter(|j| j.state == JobState::Queued)
                .map(|j| (j.seq, j.id))
                .collect();
            queued.sort();
            let seqs: Vec<u64> = queued.iter().map(|(s, _)| *s).collect();
            let mut order: Vec<u64> = queued
                .into_iter()
                .map(|(_, i)| i)
                .filter(|i| *i != id)
                .collect();
            let at = before
                .and_then(|b| order.iter().position(|i| *i == b))
                .unwrap_or(order.len());
            order.insert(at, id);
            for (seq, jid) in seqs.into_iter().zip(order) {
                if let Some(j) = st.jobs.get_mut(&jid)
                    && (j.seq != seq || jid == id)
                {
                    j.seq = seq;
                    if jid == id
                        && let Some(p) = priority
                    {
                        j.priority = p;
                    }
                    self.store.put_job(j)?;
                }
            }
            st.jobs
                .get(&id)
                .cloned()
                .ok_or_else(|| FactoryError::NotFound(format!("no job with id {id}")))?
        };
        self.store.flush().await?;
        self.publish(job_event(&job));
        self.wake.notify_one();
        Ok(job)
    }

    async fn set_state(&self, id: u64, state: JobState, note: Option<String>) -> Result<Job> {
        let job = {
            let mut st = self.lock();
            let job = st
                .jobs
                .get_mut(&id)
                .ok_or_else(|| FactoryError::NotFound(format!("no job with id {id}")))?;
            job.transition(state, note);
            self.store.put_job(job)?;
            self.store.append_event(&job_event(job))?;
            job.clone()
        };
        self.store.flush().await?;
        self.publish(job_event(&job));
        Ok(job)
    }

    // ------------------------------------------------------------- machines

    /// Every machine as the API shows it.
    pub fn machines(&self) -> Vec<MachineView> {
        let st = self.lock();
        self.slots.iter().map(|s| view(s, &st)).collect()
    }

    /// One machine.
    pub fn machine(&self, id: &str) -> Result<MachineView> {
        let (_, s) = self.slot(id)?;
        Ok(view(s, &self.lock()))
    }

    /// The last minutes of machine `id`'s heater readings.
    pub fn temperatures(&self, id: &str) -> Result<TemperatureHistory> {
        let (_, s) = self.slot(id)?;
        Ok(s.temps.lock().unwrap_or_else(|e| e.into_inner()).view())
    }

    /// The recent traffic on a machine's serial port.
    pub fn serial_log(&self, id: &str) -> Result<Vec<SerialLine>> {
        let (_, s) = self.slot(id)?;
        Ok(s.driver.serial_log())
    }

    /// Operator actions on a machine's running job.
    pub async fn machine_job(&self, id: &str, action: JobAction) -> Result<MachineView> {
        let (_, s) = self.slot(id)?;
        let job = self.lock().machines.get(id).and_then(|m| m.job);
        let Some(job) = job else {
            return Err(FactoryError::Conflict(format!(
                "machine {id} is not running a job"
            )));
        };
        match action {
            JobAction::Pause => self.pause_job(job).await?,
            JobAction::Resume => self.resume_job(job).await?,
            JobAction::Cancel => self.cancel_job(job).await?,
        };
        Ok(view(s, &self.lock()))
    }

    /// Emergency stop, whether or not a job runs.
    pub async fn estop(&self, id: &str) -> Result<MachineView> {
        let (_, s) = self.slot(id)?;
        warn!(machine = id, "emergency stop requested");
        driver(s, s.driver.emergency_stop().await)?;
        Ok(view(s, &self.lock()))
    }

    /// Homes an idle machine.
    pub async fn home(&self, id: &str) -> Result<Vec<String>> {
        let (_, s) = self.slot(id)?;
        if self.lock().machines.get(id).and_then(|m| m.job).is_some() {
            return Err(FactoryError::Conflict(format!(
                "machine {id} is running a job; home it when idle"
            )));
        }
        let cmd = match s.machine.profile.firmware {
            Firmware::Marlin => "G28",
            Firmware::Grbl => "$H",
        };
        driver(s, s.driver.console(cmd).await)
    }

    /// Sends one console command and returns the firmware's answer.
    pub async fn console(&self, id: &str, command: &str) -> Result<Vec<String>> {
        let (_, s) = self.slot(id)?;
        let command = command.trim();
        if command.is_empty() || command.len() > 200 || command.contains(['\n', '\r']) {
            return Err(FactoryError::Invalid(
                "command must be one line of 1 to 200 characters".into(),
            ));
        }
        driver(s, s.driver.console(command).await)
    }

    /// Confirms the bed is clear, or takes a machine out of / back into
    /// service.
    pub async fn set_machine(
        &self,
        id: &str,
        clear: Option<bool>,
        disabled: Option<bool>,
    ) -> Result<MachineView> {
        let (_, s) = self.slot(id)?;
        let v = {
            let mut st = self.lock();
            let rt = st.machines.entry(id.to_string()).or_default();
            if clear == Some(true) {
                rt.record.awaiting_clear = false;
            }
            if let Some(d) = disabled {
                rt.record.disabled = d;
            }
            self.store.put_machine(id, &rt.record)?;
            view(s, &st)
        };
        self.store.flush().await?;
        self.publish(Event::Machine {
            machine: Box::new(v.clone()),
        });
        self.wake.notify_one();
        Ok(v)
    }

    // ------------------------------------------------------------ internals

    async fn watch_status(self: Arc<Self>, i: usize, mut rx: watch::Receiver<MachineStatus>) {
        let mut last = rx.borrow().connection;
        let mut published = Instant::now();
        while rx.changed().await.is_ok() {
            let (conn, has_job) = {
                let s = rx.borrow_and_update();
                (s.connection, s.job.is_some())
            };
            // During a job the status changes with every progress tick;
            // temperatures and positions are worth one event a second.
            let due = !has_job || published.elapsed() >= MACHINE_EVENT_EVERY;
            if conn != last || due {
                let v = view(&self.slots[i], &self.lock());
                self.publish(Event::Machine {
                    machine: Box::new(v),
                });
                published = Instant::now();
            }
            if conn != last && conn == Connection::Online {
                self.wake.notify_one();
            }
            last = conn;
        }
    }

    async fn machine_events(self: Arc<Self>, i: usize, mut rx: broadcast::Receiver<DriverEvent>) {
        loop {
            let ev = match rx.recv().await {
                Ok(ev) => ev,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    // Progress can be skipped, a job's end cannot: the
                    // driver's status keeps the last one.
                    warn!(missed = n, "driver events lagged");
                    if let Err(e) = self.reconcile_ended(i).await {
                        warn!(error = %e, "could not record a job's end after lagging");
                    }
                    continue;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            };
            if let Err(e) = self.on_driver_event(i, ev).await {
                warn!(error = %e, "could not record a machine event");
            }
        }
    }

    /// Records the driver's last ended job if this machine's job is still
    /// marked as running (its `JobEnded` event was lost to lag).
    async fn reconcile_ended(&self, i: usize) -> Result<()> {
        let last = self.slots[i].status.borrow().last_ended.clone();
        let Some(ended) = last else { return Ok(()) };
        let Ok(id) = ended.job_id.parse::<u64>() else {
            return Ok(());
        };
        let open = {
            let st = self.lock();
            st.jobs.get(&id).is_some_and(|j| j.state.is_active())
                && st
                    .machines
                    .get(&self.slots[i].machine.config.id)
                    .and_then(|m| m.job)
                    == Some(id)
        };
        if open {
            self.on_job_ended(i, id, ended.outcome).await?;
        }
        Ok(())
    }

    async fn on_driver_event(&self, i: usize, ev: DriverEvent) -> Result<()> {
        let mid = self.slots[i].machine.config.id.as_str();
        match ev {
            DriverEvent::Progress(p) => self.on_progress(mid, &p),
            DriverEvent::PausedForOperator {
                job_id,
                line,
                reason,
            } => {
                if let Ok(id) = job_id.parse() {
                    self.set_state(
                        id,
                        JobState::Paused,
                        Some(format!("paused at line {line}: {reason}")),
                    )
                    .await?;
                }
                Ok(())
            }
            DriverEvent::JobEnded {
                job_id, outcome, ..
            } => {
                let Ok(id) = job_id.parse::<u64>() else {
                    return Ok(());
                };
                self.on_job_ended(i, id, outcome).await
            }
            DriverEvent::Connected { firmware } => {
                info!(%firmware, "machine connected");
                Ok(())
            }
            DriverEvent::Disconnected { reason } => {
                warn!(%reason, "machine disconnected");
                Ok(())
            }
            DriverEvent::Message { .. } => Ok(()),
        }
    }

    fn on_progress(&self, mid: &str, p: &Progress) -> Result<()> {
        let Ok(id) = p.job_id.parse::<u64>() else {
            return Ok(());
        };
        let progress = {
            let mut st = self.lock();
            let persist = st
                .last_persist
                .get(&id)
                .is_none_or(|t| t.elapsed() >= PERSIST_PROGRESS_EVERY);
            let Some(job) = st.jobs.get_mut(&id) else {
                return Ok(());
            };
            job.progress = JobProgress {
                lines_done: p.lines_done,
                lines_total: p.lines_total,
                percent: p.percent,
                last_acked_line: p.last_acked_line,
                elapsed_seconds: p.elapsed_seconds,
                eta_seconds: p.eta_seconds,
                resends: p.resends,
            };
            let progress = job.progress.clone();
            if persist {
                self.store.put_job(job)?;
                st.last_persist.insert(id, Instant::now());
            }
            progress
        };
        self.publish(Event::Progress {
            job_id: id,
            machine_id: mid.to_string(),
            progress,
        });
        Ok(())
    }

    async fn on_job_ended(&self, i: usize, id: u64, outcome: JobOutcome) -> Result<()> {
        let slot = &self.slots[i];
        let mid = slot.machine.config.id.clone();
        let (job, machine) = {
            let mut st = self.lock();
            if st.jobs.get(&id).is_some_and(|j| !j.state.is_active()) {
                // Already recorded (from the status after a lag).
                return Ok(());
            }
            st.last_persist.remove(&id);
            let rt = st.machines.entry(mid.clone()).or_default();
            if rt.job == Some(id) {
                rt.job = None;
            }
            if slot.machine.config.require_bed_clear
                && !matches!(outcome, JobOutcome::Interrupted { .. })
            {
                rt.record.awaiting_clear = true;
            }
            let record = rt.record.clone();
            self.store.put_machine(&mid, &record)?;
            let Some(job) = st.jobs.get_mut(&id) else {
                return Ok(());
            };
            let (state, note) = match outcome {
                JobOutcome::Completed => {
                    job.progress.lines_done = job.progress.lines_total;
                    job.progress.percent = 100.0;
                    job.progress.eta_seconds = Some(0.0);
                    (JobState::Completed, None)
                }
                JobOutcome::Failed { reason, line } => {
                    job.failure = Some(Failure {
                        reason: reason.clone(),
                        line,
                    });
                    (JobState::Failed, Some(reason))
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
                    (JobState::Interrupted, Some(reason))
                }
                JobOutcome::Cancelled { last_acked_line } => {
                    job.progress.last_acked_line = last_acked_line;
                    (
                        JobState::Cancelled,
                        Some(format!("cancelled after line {last_acked_line}")),
                    )
                }
            };
            job.transition(state, note);
            self.store.put_job(job)?;
            self.store.append_event(&job_event(job))?;
            let job = job.clone();
            (job, view(slot, &st))
        };
        self.store.flush().await?;
        info!(job = id, state = job.state.as_str(), "job ended");
        self.publish(job_event(&job));
        self.publish(Event::Machine {
            machine: Box::new(machine),
        });
        self.wake.notify_one();
        Ok(())
    }

    async fn scheduler(self: Arc<Self>) {
        let mut trimmed = Instant::now();
        loop {
            // A pass over every job in memory: once in a while, not on
            // every wake (a burst of submissions wakes this thousands of
            // times a second).
            if trimmed.elapsed() >= TRIM_EVERY {
                self.lock().trim_ended();
                trimmed = Instant::now();
            }
            if let Err(e) = self.schedule_once().await {
                warn!(error = %e, "scheduling failed");
            }
            // Woken by submissions, job ends and connections; the timeout
            // is a safety net, not the mechanism.
            let _ = tokio::time::timeout(Duration::from_secs(2), self.wake.notified()).await;
        }
    }

    /// Hands each idle, capable, online machine the best queued job.
    async fn schedule_once(&self) -> Result<()> {
        let mut started = Vec::new();
        {
            let mut st = self.lock();
            let free = |slot: &Slot, st: &State| {
                let mid = &slot.machine.config.id;
                let status = slot.status.borrow();
                st.machines.get(mid).is_some_and(|m| {
                    !m.record.disabled && !m.record.awaiting_clear && m.job.is_none()
                }) && status.connection == Connection::Online
                    && status.job.is_none()
            };
            // In a busy farm every machine is usually at work: then there
            // is nothing to hand out, and no need to sort a long queue.
            if !self.slots.iter().any(|s| free(s, &st)) {
                return Ok(());
            }
            let mut queued: Vec<(i32, u64, u64)> = st
                .jobs
                .values()
                .filter(|j| j.state == JobState::Queued)
                .map(|j| (-j.priority, j.seq, j.id))
                .collect();
            if queued.is_empty() {
                return Ok(());
            }
            queued.sort();
            for (i, slot) in self.slots.iter().enumerate() {
                let mid = &slot.machine.config.id;
                if !free(slot, &st) {
                    continue;
                }
                let mut pick = None;
                for (qi, (_, _, jid)) in queued.iter().enumerate() {
                    let Some(job) = st.jobs.get(jid) else {
                        continue;
                    };
                    let Some(file) = self.store.file(&job.file_id)? else {
                        continue;
                    };
                    let req = Requirements {
                        machine_id: job.machine_id.as_deref(),
                        kind: job.kind,
                        tags: &job.tags,
                        expand_canned_cycles: job.expand_canned_cycles,
                    };
                    if routing::check(&slot.machine, &file, &req).is_ok() {
                        pick = Some((qi, file));
                        break;
                    }
                }
                let Some((qi, file)) = pick else { continue };
                let (_, _, jid) = queued.remove(qi);
                if let Some(rt) = st.machines.get_mut(mid) {
                    rt.job = Some(jid);
                }
                if let Some(job) = st.jobs.get_mut(&jid) {
                    job.assigned_machine = Some(mid.clone());
                    job.transition(JobState::Assigned, None);
                    self.store.put_job(job)?;
                    self.store.append_event(&job_event(job))?;
                    started.push((i, job.clone(), file));
                }
            }
        }
        if started.is_empty() {
            return Ok(());
        }
        self.store.flush().await?;
        for (i, job, file) in started {
            self.publish(job_event(&job));
            self.start_on(i, job, file).await?;
        }
        Ok(())
    }

    async fn start_on(&self, i: usize, job: Job, file: Arc<FileRecord>) -> Result<()> {
        let slot = &self.slots[i];
        let spec = JobSpec {
            id: job.id.to_string(),
            path: self.store.blob_path(&file.id),
            start_line: job.start_line,
            preamble: if job.start_line > 1 {
                crate::factory::resume::preamble(
                    &slot.machine,
                    &self.store.blob_path(&file.id),
                    job.start_line,
                )
            } else {
                Vec::new()
            },
            total_lines: (job.start_line <= 1).then_some(file.analysis.commands),
            estimated_seconds: Some(file.analysis.estimated_seconds),
            expand_canned_cycles: job.expand_canned_cycles,
        };
        let span = info_span!("job", job = job.id, machine = %slot.machine.config.id);
        let res = slot.driver.start(spec).instrument(span).await;
        let (state, note) = match &res {
            Ok(()) => (JobState::Running, None),
            Err(e) => (JobState::Queued, Some(format!("could not start: {e}"))),
        };
        {
            let mut st = self.lock();
            if res.is_err()
                && let Some(rt) = st.machines.get_mut(&slot.machine.config.id)
            {
                rt.job = None;
            }
            if let Some(j) = st.jobs.get_mut(&job.id) {
                // The job may already have ended (a very short program).
                if j.state == JobState::Assigned {
                    if res.is_err() {
                        j.assigned_machine = None;
                    }
                    j.transition(state, note);
                    self.store.put_job(j)?;
                    self.store.append_event(&job_event(j))?;
                    self.publish(job_event(j));
                }
            }
        }
        self.store.flush().await?;
        Ok(())
    }
}

/// Actions on a machine's current job.
#[derive(Debug, Clone, Copy)]
pub enum JobAction {
    /// Pause it.
    Pause,
    /// Resume it.
    Resume,
    /// Cancel it.
    Cancel,
}

fn driver<T>(slot: &Slot, r: std::result::Result<T, DriverError>) -> Result<T> {
    r.map_err(|source| FactoryError::Driver {
        machine: slot.machine.config.id.clone(),
        source,
    })
}

fn job_event(j: &Job) -> Event {
    Event::Job {
        job_id: j.id,
        state: j.state,
        machine_id: j.assigned_machine.clone(),
        note: j.history.last().and_then(|t| t.note.clone()),
    }
}

fn view(s: &Slot, st: &State) -> MachineView {
    let c = &s.machine.config;
    let rt = st.machines.get(&c.id);
    let record = rt.map(|r| r.record.clone()).unwrap_or_default();
    let job_id = rt.and_then(|r| r.job);
    let status = s.status.borrow().clone();
    let paused = job_id
        .and_then(|j| st.jobs.get(&j))
        .is_some_and(|j| j.state == JobState::Paused);
    let state = if record.disabled {
        "disabled"
    } else if status.connection == Connection::Faulted {
        "error"
    } else if status.connection != Connection::Online {
        "offline"
    } else if paused {
        "paused"
    } else if job_id.is_some() {
        "running"
    } else if record.awaiting_clear {
        "awaiting_clear"
    } else {
        "idle"
    };
    MachineView {
        id: c.id.clone(),
        name: s.machine.name().to_string(),
        kind: routing::kind_of(&s.machine),
        profile: c.profile.clone(),
        port: c.port.display().to_string(),
        tags: c.tags.clone(),
        build_volume_mm: s.machine.profile.build_volume_mm,
        disabled: record.disabled,
        awaiting_clear: record.awaiting_clear,
        require_bed_clear: c.require_bed_clear,
        state: state.to_string(),
        job_id,
        status,
    }
}
