//! The factory's shell: it owns the machine links, the store and the clock,
//! and asks the pure core (`crate::core::factory`) for every decision.
//!
//! Each change follows one path ([`Factory::decide`] then
//! [`Factory::durable`]): under the lock the core decides and the store
//! commits the records and domain events of that decision in one
//! transaction; outside it the store flushes (grouped with concurrent
//! callers); only then are live events published and the caller answered.
//! Commits happen only under the lock, which is what makes the log's
//! order the order of decisions.
//!
//! Tasks: per machine one that turns link events into core inputs and one
//! that follows the link's status; one scheduler; one temperature sampler.
//! All are tracked and stopped by [`Factory::shutdown`].

pub mod files;
pub mod link;
pub mod resume;
pub mod temps;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use microfactory_machines::driver::{
    Connection, DriverConfig, DriverError, DriverEvent, DriverHandle, Firmware, JobOutcome,
    JobSpec, MachineStatus, Progress, Recovery, SerialLine,
};
use thiserror::Error;
use tokio::sync::{Notify, broadcast, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info, info_span, warn};

use crate::clock::now_ms;
use crate::config::Machine;
use crate::core::attention::{self, AttentionItem, QcWaiting};
use crate::core::events::LogRecord;
use crate::core::factory::{Core, CoreError, MachineSeed, NotStarted};
use crate::core::forecast::NextJob;
use crate::core::machine::{LinkState, StateChange};
use crate::core::model::{Attempt, Event, FileRecord, Job, JobState, MachineView, PauseReason};
use crate::core::routing::{self, Requirements};
use crate::store::{Batch, Store, StoreError};
use files::{IngestError, Upload};
use link::{Command, MachineLink};
use temps::{SAMPLE_EVERY, TempHistory, TemperatureHistory};

pub use crate::core::factory::Submission;

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

/// How often progress is written to the store (without a flush: a lost
/// write leaves an older, smaller line, which is still a safe restart
/// point).
const PERSIST_PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// Least interval between machine status events while a job runs.
const MACHINE_EVENT_EVERY: Duration = Duration::from_secs(1);

/// How long shutdown waits for the last events to be recorded.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

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

impl From<CoreError> for FactoryError {
    fn from(e: CoreError) -> Self {
        match e {
            CoreError::NotFound(m) => Self::NotFound(m),
            CoreError::Invalid(m) => Self::Invalid(m),
            CoreError::Conflict(m) => Self::Conflict(m),
        }
    }
}

type Result<T, E = FactoryError> = std::result::Result<T, E>;

struct Slot {
    machine: Machine,
    link: Arc<dyn MachineLink>,
    status: watch::Receiver<MachineStatus>,
    /// Its own lock: sampled every second, read by dashboards, never
    /// worth waiting on the core's lock for.
    temps: Mutex<TempHistory>,
    /// Cancelled once the link has stopped: its event task then records
    /// what is left in its channel and ends.
    drained: CancellationToken,
    /// Held while a job is being started, from the assignment's checks to
    /// the start's outcome in the core: a cancel that comes in between
    /// waits for it, since until then the driver has no job to cancel.
    starting: tokio::sync::Mutex<()>,
}

struct Inner {
    core: Core,
    last_persist: HashMap<u64, Instant>,
}

/// What a decision leaves to publish once it is durable.
#[derive(Debug, Default)]
struct Live {
    events: Vec<Event>,
    wake: bool,
}

/// The running factory. Shared by the API handlers through an `Arc`.
pub struct Factory {
    store: Store,
    slots: Vec<Slot>,
    inner: Mutex<Inner>,
    wake: Notify,
    events: broadcast::Sender<Event>,
    closing: watch::Sender<bool>,
    cancel: CancellationToken,
    tasks: TaskTracker,
    max_upload: u64,
}

impl std::fmt::Debug for Factory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Factory")
            .field("machines", &self.slots.len())
            .finish_non_exhaustive()
    }
}

fn link_state(c: Connection) -> LinkState {
    match c {
        Connection::Offline => LinkState::Offline,
        Connection::Connecting => LinkState::Connecting,
        Connection::Online => LinkState::Online,
        Connection::Faulted => LinkState::Faulted,
    }
}

impl Factory {
    /// Opens the factory over serial drivers, one per machine.
    pub async fn open(
        store: Store,
        machines: Vec<Machine>,
        drivers: Vec<DriverConfig>,
        max_upload: u64,
        keep_ended: usize,
    ) -> Result<Arc<Self>> {
        let links: Vec<Arc<dyn MachineLink>> = drivers
            .into_iter()
            .map(|cfg| Arc::new(DriverHandle::spawn(cfg)) as Arc<dyn MachineLink>)
            .collect();
        Self::with_links(
            store,
            machines.into_iter().zip(links).collect(),
            max_upload,
            keep_ended,
        )
        .await
    }

    /// Opens the factory over any machine links: recovers jobs left
    /// running by a crash (each machine that held one waits for the
    /// operator). Call [`Factory::run`] to start scheduling.
    pub async fn with_links(
        store: Store,
        machines: Vec<(Machine, Arc<dyn MachineLink>)>,
        max_upload: u64,
        keep_ended: usize,
    ) -> Result<Arc<Self>> {
        let jobs = store.jobs()?;
        let mut open_attempts: Vec<Attempt> = Vec::new();
        for j in jobs.iter().filter(|j| j.state.is_active() && j.attempt > 0) {
            if let Some(a) = store.attempts(j.id)?.into_iter().find(|a| a.n == j.attempt) {
                open_attempts.push(a);
            }
        }
        let mut seeds = Vec::with_capacity(machines.len());
        for (m, _) in &machines {
            let id = &m.config.id;
            seeds.push(MachineSeed {
                machine: m.clone(),
                record: store.machine(id)?,
                last: store
                    .last_machine_state(id)?
                    .map(|c: StateChange| (c.state, c.reason, c.job_id, c.at_ms)),
            });
        }
        let now = now_ms();
        let (core, batch) = Core::open(
            seeds,
            jobs,
            open_attempts,
            store.job_id_counter()?,
            keep_ended,
            now,
        );
        store.commit(&batch, now)?;
        store.flush().await?;
        let slots = machines
            .into_iter()
            .map(|(machine, link)| Slot {
                status: link.status(),
                machine,
                link,
                temps: Mutex::default(),
                drained: CancellationToken::new(),
                starting: tokio::sync::Mutex::new(()),
            })
            .collect();
        let (events, _) = broadcast::channel(4096);
        Ok(Arc::new(Self {
            store,
            slots,
            inner: Mutex::new(Inner {
                core,
                last_persist: HashMap::new(),
            }),
            wake: Notify::new(),
            events,
            closing: watch::Sender::new(false),
            cancel: CancellationToken::new(),
            tasks: TaskTracker::new(),
            max_upload,
        }))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data; keep serving.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The store (for tokens and the log).
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

    // ------------------------------------------------- the one write path

    /// Lets the core decide under the lock and commits its batch there;
    /// returns the result and what to publish once durable.
    fn decide<T>(&self, f: impl FnOnce(&mut Core, u64) -> Result<(T, Batch)>) -> Result<(T, Live)> {
        self.decide_keeping(f).map(|(t, _, live)| (t, live))
    }

    /// As [`Factory::decide`], and hands back the committed batch, for a
    /// caller that answers with its records.
    fn decide_keeping<T>(
        &self,
        f: impl FnOnce(&mut Core, u64) -> Result<(T, Batch)>,
    ) -> Result<(T, Batch, Live)> {
        let now = now_ms();
        let mut g = self.lock();
        let (t, batch) = f(&mut g.core, now)?;
        let live = self.commit_locked(&g, &batch, now)?;
        Ok((t, batch, live))
    }

    fn commit_locked(&self, g: &Inner, batch: &Batch, now: u64) -> Result<Live> {
        let records = self.store.commit(batch, now)?;
        Ok(self.live_of(g, batch, &records))
    }

    /// The live events a committed batch stands for.
    fn live_of(&self, g: &Inner, batch: &Batch, records: &[Arc<LogRecord>]) -> Live {
        // Nobody listening (no dashboard open): no events to build, a job
        // clone or a machine view each. One who subscribes from now on
        // reads the state after subscribing, which holds this batch.
        let listening = self.events.receiver_count() > 0;
        let mut live = Live {
            wake: !batch.jobs.is_empty(),
            ..Live::default()
        };
        if listening {
            live.events.extend(batch.jobs.iter().map(job_event));
        }
        let mut machines: Vec<&str> = batch.machines.iter().map(|(id, _)| id.as_str()).collect();
        for r in records {
            if let crate::core::events::DomainEvent::MachineState { machine_id, .. } = &r.event {
                machines.push(machine_id);
            }
        }
        let mut seen = HashSet::new();
        for id in machines {
            if seen.insert(id)
                && let Some(i) = self.slots.iter().position(|s| s.machine.config.id == id)
            {
                if listening {
                    live.events.push(Event::Machine {
                        machine: Box::new(self.view(i, g)),
                    });
                }
                live.wake = true;
            }
        }
        // Only a free machine can take a job; a change that freed one is
        // itself such a batch, so nothing is missed.
        live.wake &= g.core.any_free();
        live
    }

    /// Flushes, then publishes: nothing is shown or acknowledged before it
    /// is durable.
    async fn durable(&self, live: Live) -> Result<()> {
        self.store.flush().await?;
        for e in live.events {
            let _ = self.events.send(e);
        }
        if live.wake {
            self.wake.notify_one();
        }
        Ok(())
    }

    async fn apply<T>(&self, f: impl FnOnce(&mut Core, u64) -> Result<(T, Batch)>) -> Result<T> {
        let (t, live) = self.decide(f)?;
        self.durable(live).await?;
        Ok(t)
    }

    // ---------------------------------------------------------- lifecycle

    /// Starts the per-machine tasks, the scheduler and the sampler, all
    /// tracked so that [`Factory::shutdown`] can stop them.
    pub fn run(self: &Arc<Self>) {
        for i in 0..self.slots.len() {
            let id = self.slots[i].machine.config.id.clone();
            let f = Arc::clone(self);
            let rx = self.slots[i].link.events();
            self.tasks.spawn(
                async move { f.machine_events(i, rx).await }
                    .instrument(info_span!("machine", machine = %id)),
            );
            let f = Arc::clone(self);
            let status = self.slots[i].status.clone();
            self.tasks.spawn(
                async move { f.watch_status(i, status).await }
                    .instrument(info_span!("machine", machine = %id)),
            );
        }
        let f = Arc::clone(self);
        self.tasks.spawn(async move { f.scheduler().await });
        let f = Arc::clone(self);
        self.tasks
            .spawn(async move { f.sample_temperatures().await });
    }

    /// Stops every machine at a safe point, all at once; running jobs end
    /// interrupted with their last acknowledged line, stored (and their
    /// machines left waiting for the operator) before this returns.
    pub async fn shutdown(self: &Arc<Self>) {
        self.begin_shutdown();
        self.cancel.cancel();
        futures_util::future::join_all(self.slots.iter().map(|s| async move {
            s.link.stop().await;
            s.drained.cancel();
        }))
        .await;
        self.tasks.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, self.tasks.wait())
            .await
            .is_err()
        {
            warn!("some machine tasks did not end in time");
        }
        let _ = self.store.flush().await;
    }

    /// Records every connected machine's heaters once a second.
    async fn sample_temperatures(self: Arc<Self>) {
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = self.cancel.cancelled() => return,
            }
            let at = now_ms();
            for s in &self.slots {
                let heaters = {
                    let st = s.status.borrow();
                    // Stale readings are the last ones heard, not a new
                    // sample: the chart shows the gap.
                    if st.connection != Connection::Online || st.stale {
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

    fn slot(&self, id: &str) -> Result<(usize, &Slot)> {
        let i = self.lock().core.machine_index(id)?;
        Ok((i, &self.slots[i]))
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
        let (rec, new) = tokio::task::spawn_blocking(move || -> Result<(FileRecord, bool)> {
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
            Ok((rec, true))
        })
        .await
        .map_err(|e| StoreError::Io(std::io::Error::other(e.to_string())))??;
        if !new {
            return Ok((rec, false));
        }
        self.apply(|core, _| {
            // Another upload of the same bytes may have won the race.
            if let Some(existing) = self.store.file(&rec.id)? {
                return Ok(((FileRecord::clone(&existing), false), Batch::default()));
            }
            let b = core.file_added(&rec);
            Ok(((rec, true), b))
        })
        .await
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

    /// Deletes a file no queued or running job uses. Decided under the
    /// same lock as submissions: a racing submission either sees the file
    /// (and the deletion is refused) or is refused itself.
    pub async fn delete_file(&self, id: &str) -> Result<()> {
        self.apply(|core, _| {
            let exists = self.store.file(id)?.is_some();
            Ok(((), core.delete_file(id, exists)?))
        })
        .await?;
        let path = self.store.blob_path(id);
        let _ = tokio::task::spawn_blocking(move || std::fs::remove_file(path)).await;
        Ok(())
    }

    // ----------------------------------------------------------------- jobs

    /// Queues a job (one per copy). Refuses a job no configured machine
    /// could ever run, naming each machine's reason.
    pub async fn submit(&self, s: Submission) -> Result<Vec<Job>> {
        let ((), batch, live) = self.decide_keeping(|core, now| {
            // Looked up under the lock: a deletion cannot slip between.
            let file = self.store.file(&s.file_id)?;
            Ok(((), core.submit(&s, file.as_deref(), now)?))
        })?;
        self.durable(live).await?;
        // The batch's jobs are exactly the new ones.
        let jobs = batch.jobs;
        for j in &jobs {
            info!(job = j.id, file = %j.file_id, "job queued");
        }
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
            let g = self.lock();
            let mut v: Vec<&Job> = g.core.jobs().filter(|j| wanted(j)).collect();
            let ended_here = v.iter().filter(|j| j.state.is_final()).count();
            if !(g.core.has_archived()
                && ended_wanted
                && ended_limit.is_none_or(|l| l > ended_here))
            {
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
        if let Some(j) = self.lock().core.job(id) {
            return Ok(j.clone());
        }
        self.store
            .job(id)?
            .ok_or_else(|| FactoryError::NotFound(format!("no job with id {id}")))
    }

    /// A job's attempts, first first.
    pub fn attempts(&self, id: u64) -> Result<Vec<Attempt>> {
        self.job(id)?;
        let mut v = self.store.attempts(id)?;
        // The running attempt as the core has it (its stored record is
        // from the moment it started).
        if let Some(open) = self.lock().core.open_attempt(id).cloned() {
            match v.iter_mut().find(|a| a.n == open.n) {
                Some(a) => *a = open,
                None => v.push(open),
            }
        }
        Ok(v)
    }

    /// The machine running job `id`, once a start on its way to it has
    /// settled: a job assigned a moment ago may not have reached its
    /// driver yet, which would answer a command "no job" (and, for a
    /// cancel, then run the job). Holding the guard keeps it settled.
    async fn settled(
        &self,
        id: u64,
        verb: &str,
    ) -> Result<(usize, tokio::sync::MutexGuard<'_, ()>)> {
        let mut i = self.lock().core.active_machine(id, verb)?;
        loop {
            let guard = self.slots[i].starting.lock().await;
            // A start that failed puts the job back in the queue, from
            // where it may go to another machine.
            let now = self.lock().core.active_machine(id, verb)?;
            if now == i {
                return Ok((i, guard));
            }
            i = now;
        }
    }

    /// Pauses a running job.
    pub async fn pause_job(&self, id: u64) -> Result<Job> {
        let (i, _settled) = self.settled(id, "paused").await?;
        let job = self.job(id)?;
        if job.state == JobState::Paused {
            return Ok(job);
        }
        self.command(i, Command::Pause).await?;
        self.apply(|core, now| Ok(core.paused(id, PauseReason::Operator, now)?))
            .await
    }

    /// Resumes a paused job.
    pub async fn resume_job(&self, id: u64) -> Result<Job> {
        let (i, _settled) = self.settled(id, "resumed").await?;
        let before = self.job(id)?;
        // Running before the link resumes: the job may pause itself again
        // (next tool change) at once, and that must win.
        let job = self
            .apply(|core, now| Ok(core.resumed(id, "resumed by the operator", now)?))
            .await?;
        if let Err(e) = self.command(i, Command::Resume).await {
            let reason = before.pause.unwrap_or(PauseReason::Operator);
            self.apply(|core, now| Ok(core.paused(id, reason, now)?))
                .await?;
            return Err(e);
        }
        Ok(job)
    }

    /// Cancels a job: a queued one at once, a running one through its
    /// link (which ends it, running the cancel script).
    pub async fn cancel_job(&self, id: u64) -> Result<Job> {
        let mut job = self.job(id)?;
        // Wait until a start on its way is settled (and keep it so), then
        // look again.
        let mut settled = None;
        if job.state.is_active() {
            // A start that failed put it back in the queue: cancelled
            // there, below.
            settled = self.settled(id, "cancelled").await.ok();
            job = self.job(id)?;
        }
        match (job.state, settled) {
            (JobState::Queued, _) => {
                self.apply(|core, now| Ok(core.cancel_queued(id, now)?))
                    .await
            }
            (s, Some((i, _guard))) if s.is_active() => {
                match self.command(i, Command::Cancel).await {
                    Ok(_) => {}
                    Err(FactoryError::Driver {
                        source: DriverError::NoJob,
                        ..
                    }) => {}
                    Err(e) => return Err(e),
                }
                self.job(id)
            }
            (s, _) if s.is_active() => Err(FactoryError::Conflict(format!(
                "job {id} became active while it was being cancelled; try again"
            ))),
            (s, _) => Err(FactoryError::Conflict(format!(
                "job {id} has already ended ({})",
                s.as_str()
            ))),
        }
    }

    /// Puts an ended job back in the queue, from `from_line` (1 = the
    /// start; a later line restarts an interrupted job there).
    pub async fn requeue(&self, id: u64, from_line: Option<u64>) -> Result<Job> {
        let job = self.job(id)?;
        let archived = self.lock().core.job(id).is_none().then(|| job.clone());
        let file = self.store.file(&job.file_id)?;
        self.apply(|core, now| Ok(core.requeue(id, archived, from_line, file.as_deref(), now)?))
            .await
    }

    /// The operator has seen that an ended job failed: it leaves the
    /// attention list.
    pub async fn acknowledge(&self, id: u64) -> Result<Job> {
        let archived = if self.lock().core.job(id).is_none() {
            Some(self.job(id)?)
        } else {
            None
        };
        self.apply(|core, _| Ok(core.acknowledge(id, archived)?))
            .await
    }

    /// Moves a queued job just before another queued job (or to the end),
    /// and optionally changes its priority.
    pub async fn reorder(
        &self,
        id: u64,
        before: Option<u64>,
        priority: Option<i32>,
    ) -> Result<Job> {
        self.apply(|core, _| Ok(core.reorder(id, before, priority)?))
            .await
    }

    // ------------------------------------------------------------- machines

    /// Every machine as the API shows it.
    pub fn machines(&self) -> Vec<MachineView> {
        let g = self.lock();
        (0..self.slots.len()).map(|i| self.view(i, &g)).collect()
    }

    /// What needs the operator now (see [`crate::core::attention`]);
    /// `qc` is what metering says awaits inspection.
    pub fn attention(&self, qc: &[QcWaiting]) -> Vec<AttentionItem> {
        let g = self.lock();
        let views: Vec<MachineView> = (0..self.slots.len()).map(|i| self.view(i, &g)).collect();
        let failed: Vec<&Job> = g.core.jobs().filter(|j| j.awaiting_ack).collect();
        attention::list(&views, |id| g.core.job(id), &failed, qc)
    }

    /// Each machine's next job and when it should start and finish.
    pub fn forecast(&self) -> Vec<NextJob> {
        let files = |id: &str| self.store.file(id).ok().flatten();
        self.lock().core.forecast(&files, now_ms())
    }

    /// One machine.
    pub fn machine(&self, id: &str) -> Result<MachineView> {
        let g = self.lock();
        let i = g.core.machine_index(id)?;
        Ok(self.view(i, &g))
    }

    /// A machine's state log between two times (ms), with the state in
    /// force at `from` first.
    pub fn machine_states(&self, id: &str, from: u64, to: u64) -> Result<Vec<StateChange>> {
        self.slot(id)?;
        Ok(self.store.machine_states(id, from, to)?)
    }

    /// The last minutes of machine `id`'s heater readings.
    pub fn temperatures(&self, id: &str) -> Result<TemperatureHistory> {
        let (_, s) = self.slot(id)?;
        Ok(s.temps.lock().unwrap_or_else(|e| e.into_inner()).view())
    }

    /// The recent traffic on a machine's serial port.
    pub fn serial_log(&self, id: &str) -> Result<Vec<SerialLine>> {
        let (_, s) = self.slot(id)?;
        Ok(s.link.serial_log())
    }

    async fn command(&self, i: usize, c: Command) -> Result<Vec<String>> {
        let s = &self.slots[i];
        s.link
            .command(c)
            .await
            .map_err(|source| FactoryError::Driver {
                machine: s.machine.config.id.clone(),
                source,
            })
    }

    /// Operator actions on a machine's running job.
    pub async fn machine_job(&self, id: &str, action: JobAction) -> Result<MachineView> {
        let job = {
            let g = self.lock();
            let i = g.core.machine_index(id)?;
            g.core.machines()[i].job
        };
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
        self.machine(id)
    }

    /// Emergency stop, whether or not a job runs.
    pub async fn estop(&self, id: &str) -> Result<MachineView> {
        let (i, _) = self.slot(id)?;
        warn!(machine = id, "emergency stop requested");
        self.command(i, Command::EmergencyStop).await?;
        self.machine(id)
    }

    /// Homes an idle machine.
    pub async fn home(&self, id: &str) -> Result<Vec<String>> {
        let (i, s) = self.slot(id)?;
        if self.lock().core.machines()[i].job.is_some() {
            return Err(FactoryError::Conflict(format!(
                "machine {id} is running a job; home it when idle"
            )));
        }
        let cmd = match s.machine.profile.firmware {
            Firmware::Marlin => "G28",
            Firmware::Grbl => "$H",
        };
        self.command(i, Command::Console(cmd.into())).await
    }

    /// Sends one console command and returns the firmware's answer. While
    /// a job runs only queries are allowed: anything that moves or changes
    /// state would land in the middle of the job's stream.
    pub async fn console(&self, id: &str, command: &str) -> Result<Vec<String>> {
        let (i, s) = self.slot(id)?;
        let command = command.trim();
        if command.is_empty() || command.len() > 200 || command.contains(['\n', '\r']) {
            return Err(FactoryError::Invalid(
                "command must be one line of 1 to 200 characters".into(),
            ));
        }
        let running = self.lock().core.machines()[i].job;
        if let Some(job) = running
            && !crate::core::console::is_query(s.machine.profile.firmware, command)
        {
            return Err(FactoryError::Conflict(format!(
                "machine {id} is running job {job}: only queries ({}) may be sent during a job; \
                 pause or cancel it first",
                crate::core::console::queries(s.machine.profile.firmware)
            )));
        }
        self.command(i, Command::Console(command.into())).await
    }

    /// A recovery action, so that no state of a machine needs a daemon
    /// restart. Refused (409) when it does not fit the firmware, while a
    /// job holds the machine (cancel it, or use the emergency stop), and
    /// `unlock` when GRBL does not report an alarm (there is nothing to
    /// unlock, and `$X` would clear a lock a person may have wanted).
    /// Returns the firmware's answer (for `unlock`) once under way; the
    /// machine's status follows as the firmware comes back.
    pub async fn recover(&self, id: &str, action: Recovery) -> Result<Vec<String>> {
        let (i, s) = self.slot(id)?;
        let firmware = s.machine.profile.firmware;
        if !action.fits(firmware) {
            let fits: Vec<&str> = [
                Recovery::Reconnect,
                Recovery::FirmwareRestart,
                Recovery::Unlock,
                Recovery::SoftReset,
            ]
            .into_iter()
            .filter(|a| a.fits(firmware))
            .map(Recovery::as_str)
            .collect();
            return Err(FactoryError::Conflict(format!(
                "{} does not apply to machine {id} ({firmware:?} firmware); it takes {}",
                action.as_str(),
                fits.join(", ")
            )));
        }
        if let Some(job) = self.lock().core.machines()[i].job {
            return Err(FactoryError::Conflict(format!(
                "machine {id} is running job {job}; cancel it first (or use the emergency stop)"
            )));
        }
        if action == Recovery::Unlock {
            let state = s.status.borrow().state.clone();
            if !state.as_deref().is_some_and(|st| st.starts_with("Alarm")) {
                return Err(FactoryError::Conflict(format!(
                    "machine {id} is not in alarm ({}); there is nothing to unlock",
                    state.as_deref().unwrap_or("no state reported")
                )));
            }
        }
        warn!(machine = id, action = action.as_str(), "recovery requested");
        self.command(i, Command::Recover(action)).await
    }

    /// Confirms the machine is ready (bed cleared, looked at), or takes it
    /// out of / back into service.
    pub async fn set_machine(
        &self,
        id: &str,
        clear: Option<bool>,
        disabled: Option<bool>,
    ) -> Result<MachineView> {
        let (i, _) = self.slot(id)?;
        self.apply(|core, now| Ok(((), core.set_machine(i, clear, disabled, now))))
            .await?;
        self.machine(id)
    }

    // ------------------------------------------------------------ internals

    async fn watch_status(self: Arc<Self>, i: usize, mut rx: watch::Receiver<MachineStatus>) {
        let mut last = (LinkState::Offline, false, false);
        let mut published: Option<Instant> = None;
        let mut behind = false;
        let read_only = self.slots[i].machine.config.read_only;
        loop {
            let (facts, print) = {
                let s = rx.borrow_and_update();
                let paused = s.job.as_ref().is_some_and(|j| j.paused);
                let print = read_only.then(|| {
                    (
                        s.job.as_ref().map(|j| j.job_id.clone()),
                        s.last_ended.as_ref().map(|e| e.outcome.clone()),
                    )
                });
                ((link_state(s.connection), s.job.is_some(), paused), print)
            };
            if facts != last {
                // A read-only machine's host started or ended a print: a
                // queued job of that file is made there.
                if let Some((name, ended)) = print {
                    let res = match (last.1, facts.1, name) {
                        (false, true, Some(name)) => self.adopt_print(i, &name).await,
                        (true, false, _) => self.end_print(i, ended).await,
                        _ => Ok(()),
                    };
                    if let Err(e) = res {
                        warn!(error = %e, "could not record a print its host ran");
                    }
                }
                last = facts;
                let res = self.decide(|core, now| {
                    Ok((
                        (),
                        if read_only {
                            core.reported(i, facts.0, facts.1.then_some(facts.2), now)
                        } else {
                            core.link(i, facts.0, facts.1, now)
                        },
                    ))
                });
                match res {
                    Ok(((), live)) => {
                        if let Err(e) = self.durable(live).await {
                            warn!(error = %e, "could not record a machine's state");
                        }
                    }
                    Err(e) => warn!(error = %e, "could not record a machine's state"),
                }
                self.wake.notify_one();
                published = Some(Instant::now());
            } else if !facts.1 || published.is_none_or(|t| t.elapsed() >= MACHINE_EVENT_EVERY) {
                // During a job the status changes with every progress
                // tick; temperatures and positions are worth one event a
                // second.
                self.publish_machine(i);
                published = Some(Instant::now());
                behind = false;
            } else {
                // Held back: the last change of a burst still goes out
                // when the second is up, or watchers keep a stale picture.
                behind = true;
            }
            let due = published.map_or_else(tokio::time::Instant::now, |t| {
                tokio::time::Instant::from_std(t + MACHINE_EVENT_EVERY)
            });
            tokio::select! {
                r = rx.changed() => if r.is_err() { return },
                () = tokio::time::sleep_until(due), if behind => {
                    self.publish_machine(i);
                    published = Some(Instant::now());
                    behind = false;
                    // Wait for the next change, not a second pass now.
                    tokio::select! {
                        r = rx.changed() => if r.is_err() { return },
                        () = self.cancel.cancelled() => return,
                    }
                }
                () = self.cancel.cancelled() => return,
            }
        }
    }

    /// Sends machine `i`'s view to live watchers.
    fn publish_machine(&self, i: usize) {
        let v = self.view(i, &self.lock());
        let _ = self.events.send(Event::Machine {
            machine: Box::new(v),
        });
    }

    async fn machine_events(self: Arc<Self>, i: usize, mut rx: broadcast::Receiver<DriverEvent>) {
        loop {
            let next = tokio::select! {
                biased;
                r = rx.recv() => r,
                () = self.slots[i].drained.cancelled() => {
                    // The link has stopped: record what it said last.
                    while let Ok(ev) = rx.try_recv() {
                        if let Err(e) = self.on_driver_event(i, ev).await {
                            warn!(error = %e, "could not record a machine event");
                        }
                    }
                    if let Err(e) = self.reconcile_ended(i).await {
                        warn!(error = %e, "could not record a job's end at shutdown");
                    }
                    return;
                }
            };
            let ev = match next {
                Ok(ev) => ev,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    // Progress can be skipped, a job's end cannot: the
                    // link's status keeps the last one.
                    warn!(missed = n, "machine events lagged");
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

    /// Records the link's last ended job if this machine's job is still
    /// marked as running (its end event was lost to lag).
    async fn reconcile_ended(&self, i: usize) -> Result<()> {
        let last = self.slots[i].status.borrow().last_ended.clone();
        let Some(ended) = last else { return Ok(()) };
        let Ok(id) = ended.job_id.parse::<u64>() else {
            return Ok(());
        };
        let open = {
            let g = self.lock();
            g.core.job(id).is_some_and(|j| j.state.is_active())
                && g.core.machines()[i].job == Some(id)
        };
        if open {
            self.on_job_ended(i, id, ended.outcome, None).await?;
        }
        Ok(())
    }

    async fn on_driver_event(&self, i: usize, ev: DriverEvent) -> Result<()> {
        match ev {
            DriverEvent::Progress(p) => {
                self.on_progress(i, &p);
                Ok(())
            }
            // The driver stops only where the program changes tools (the
            // canned-cycle transform's pause points), naming the tool.
            DriverEvent::PausedForOperator {
                job_id, line, tool, ..
            } => {
                if let Ok(id) = job_id.parse() {
                    let reason = PauseReason::ToolChange { tool, line };
                    self.apply(|core, now| Ok(core.paused(id, reason, now)?))
                        .await?;
                }
                Ok(())
            }
            DriverEvent::JobEnded {
                job_id,
                outcome,
                stats,
            } => {
                let Ok(id) = job_id.parse::<u64>() else {
                    return Ok(());
                };
                self.on_job_ended(i, id, outcome, Some(stats)).await
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

    fn on_progress(&self, i: usize, p: &Progress) {
        let progress = {
            let mut g = self.lock();
            let Some((id, progress)) = g.core.progress(p) else {
                return;
            };
            let due = g
                .last_persist
                .get(&id)
                .is_none_or(|t| t.elapsed() >= PERSIST_PROGRESS_EVERY);
            if due {
                if let Some(job) = g.core.job(id)
                    && let Err(e) = self.store.put_job(job)
                {
                    warn!(error = %e, job = id, "could not store progress");
                }
                g.last_persist.insert(id, Instant::now());
            }
            (id, progress)
        };
        let _ = self.events.send(Event::Progress {
            job_id: progress.0,
            machine_id: self.slots[i].machine.config.id.clone(),
            progress: progress.1,
        });
    }

    async fn on_job_ended(
        &self,
        i: usize,
        id: u64,
        outcome: JobOutcome,
        stats: Option<microfactory_machines::driver::StreamStats>,
    ) -> Result<()> {
        let ended = self.decide(|core, now| {
            Ok(match core.job_ended(i, id, outcome, stats, now) {
                Some((job, b)) => (Some(job), b),
                None => (None, Batch::default()),
            })
        })?;
        self.lock().last_persist.remove(&id);
        let (job, live) = ended;
        self.durable(live).await?;
        if let Some(job) = job {
            // In the job's span, so a JSON log line carries machine and job.
            let span = info_span!("job", job = id, machine = %self.slots[i].machine.config.id);
            span.in_scope(|| info!(state = job.state.as_str(), "job ended"));
        }
        Ok(())
    }

    /// A read-only machine's host started printing `name`: the stored
    /// files of that name are offered to the core, which adopts a queued
    /// job of one of them (see `Core::adopt`).
    async fn adopt_print(&self, i: usize, name: &str) -> Result<()> {
        let files: Vec<String> = self
            .store
            .files()?
            .into_iter()
            .filter(|f| crate::core::factory::print_name_matches(name, &f.name))
            .map(|f| f.id)
            .collect();
        let (job, live) = self.decide(|core, now| {
            Ok(match core.adopt(i, &files, now) {
                Some((job, b)) => (Some(job), b),
                None => (None, Batch::default()),
            })
        })?;
        self.durable(live).await?;
        let machine = &self.slots[i].machine.config.id;
        match job {
            Some(job) => info_span!("job", job = job.id, machine = %machine)
                .in_scope(|| info!(file = %name, "job started by the machine's own host")),
            None => {
                info!(%machine, file = %name, "a print matched no queued job: no units will be made of it")
            }
        }
        Ok(())
    }

    /// A read-only machine's print ended: how its host said (`None`: it
    /// did not, e.g. it went offline, and the job is interrupted).
    async fn end_print(&self, i: usize, outcome: Option<JobOutcome>) -> Result<()> {
        let outcome = outcome.unwrap_or(JobOutcome::Interrupted {
            reason: "its host stopped reporting the print".into(),
            last_acked_line: 0,
        });
        let Some(id) = self.lock().core.machines()[i].job else {
            return Ok(());
        };
        self.on_job_ended(i, id, outcome, None).await
    }

    async fn scheduler(self: Arc<Self>) {
        let mut trimmed = Instant::now();
        loop {
            // A pass over every job in memory: once in a while, not on
            // every wake (a burst of submissions wakes this thousands of
            // times a second).
            if trimmed.elapsed() >= TRIM_EVERY {
                let mut g = self.lock();
                g.core.trim_ended();
                let Inner { core, last_persist } = &mut *g;
                last_persist.retain(|id, _| core.job(*id).is_some());
                trimmed = Instant::now();
            }
            if let Err(e) = self.schedule_once().await {
                warn!(error = %e, "scheduling failed");
            }
            // Woken by submissions, job ends and connections; the timeout
            // is a safety net, not the mechanism.
            tokio::select! {
                _ = tokio::time::timeout(Duration::from_secs(2), self.wake.notified()) => {}
                () = self.cancel.cancelled() => return,
            }
        }
    }

    /// Hands each idle, capable, online machine the best queued job.
    async fn schedule_once(&self) -> Result<()> {
        let files = |id: &str| self.store.file(id).ok().flatten();
        let (started, live) = self.decide(|core, now| Ok(core.schedule(&files, now)))?;
        if started.is_empty() && live.events.is_empty() {
            return Ok(());
        }
        self.durable(live).await?;
        for (i, job) in started {
            self.start_on(i, job).await?;
        }
        Ok(())
    }

    async fn start_on(&self, i: usize, job: Job) -> Result<()> {
        let slot = &self.slots[i];
        let _starting = slot.starting.lock().await;
        let res = match self.store.file(&job.file_id)? {
            None => Err(NotStarted::Retry(format!(
                "the file {} is gone",
                job.file_id
            ))),
            // The record without its content (removed by hand, a disk
            // restored from an older backup): every start would fail alike.
            Some(file)
                if !tokio::fs::try_exists(self.store.blob_path(&file.id))
                    .await
                    .unwrap_or(true) =>
            {
                warn!(job = job.id, file = %file.id, "the file's content is missing from the store");
                Err(NotStarted::Impossible(format!(
                    "the content of {} is missing from the store; upload it again and queue a new job",
                    file.name
                )))
            }
            Some(file) => {
                let path = self.store.blob_path(&file.id);
                let preamble = if job.start_line > 1 {
                    let machine = slot.machine.clone();
                    let p = path.clone();
                    let line = job.start_line;
                    tokio::task::spawn_blocking(move || resume::preamble(&machine, &p, line))
                        .await
                        .unwrap_or_default()
                } else {
                    Vec::new()
                };
                let spec = JobSpec {
                    id: job.id.to_string(),
                    path,
                    start_line: job.start_line,
                    preamble,
                    total_lines: (job.start_line <= 1).then_some(file.analysis.commands),
                    estimated_seconds: Some(file.analysis.estimated_seconds),
                    expand_canned_cycles: job.expand_canned_cycles,
                };
                let span = info_span!("job", job = job.id, machine = %slot.machine.config.id);
                async {
                    let r = slot.link.command(Command::Start(spec)).await;
                    if r.is_ok() {
                        info!("job started");
                    }
                    r
                }
                .instrument(span)
                .await
                .map(|_| ())
                .map_err(|e| NotStarted::Retry(e.to_string()))
            }
        };
        self.apply(|core, now| Ok(((), core.started(i, job.id, res, now))))
            .await
    }

    fn view(&self, i: usize, g: &Inner) -> MachineView {
        let s = &self.slots[i];
        let m = &g.core.machines()[i];
        let c = &s.machine.config;
        let status = s.status.borrow().clone();
        let (state, reason, _, since) = m.state;
        let pause = m
            .job
            .and_then(|j| g.core.job(j))
            .and_then(|j| j.pause.clone());
        MachineView {
            id: c.id.clone(),
            name: s.machine.name().to_string(),
            kind: routing::kind_of(&s.machine),
            profile: c.profile.clone(),
            port: c.port.display().to_string(),
            tags: c.tags.clone(),
            build_volume_mm: s.machine.profile.build_volume_mm,
            disabled: m.record.disabled,
            awaiting_clear: m.record.hold.is_some(),
            require_bed_clear: c.require_bed_clear,
            state: state.legacy_word().to_string(),
            machine_state: state,
            reason,
            reason_text: reason.words().to_string(),
            since_ms: since,
            pause,
            hold_reason: m.record.hold.as_ref().map(|h| h.reason),
            hold_job_id: m.record.hold.as_ref().and_then(|h| h.job_id),
            job_id: m.job,
            status,
        }
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

fn job_event(j: &Job) -> Event {
    Event::Job {
        job_id: j.id,
        state: j.state,
        machine_id: j.assigned_machine.clone(),
        note: j.history.last().and_then(|t| t.note.clone()),
    }
}

#[cfg(test)]
mod tests;
