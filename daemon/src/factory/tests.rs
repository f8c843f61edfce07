//! The seam: the factory runs a machine it knows only as a
//! [`MachineLink`], here a scripted one that is not a serial port.

use std::sync::Arc;

use microfactory_machines::driver::{
    Connection, DriverError, DriverEvent, JobOutcome, JobSpec, MachineStatus, SerialLine,
    StreamStats,
};
use tokio::sync::{broadcast, mpsc, watch};

use super::link::{BoxFuture, Command, MachineLink};
use super::*;
use crate::core::events::DomainEvent;
use crate::core::machine::MachineState;
use crate::core::model::AttemptOutcome;

/// A machine that is online at once, takes any job, and ends it when the
/// test says so, or when it is cancelled. With a `gate`, a start is
/// answered only once the test opens it: the driver has no job until then.
#[derive(Debug)]
struct ScriptedLink {
    status: watch::Sender<MachineStatus>,
    events: broadcast::Sender<DriverEvent>,
    started: mpsc::UnboundedSender<JobSpec>,
    gate: Option<Arc<tokio::sync::Semaphore>>,
    job: std::sync::Mutex<Option<String>>,
}

impl ScriptedLink {
    fn new(started: mpsc::UnboundedSender<JobSpec>, gated: bool) -> Self {
        Self {
            status: watch::Sender::new(MachineStatus {
                connection: Connection::Online,
                ..MachineStatus::default()
            }),
            events: broadcast::channel(16).0,
            started,
            gate: gated.then(|| Arc::new(tokio::sync::Semaphore::new(0))),
            job: std::sync::Mutex::default(),
        }
    }
}

impl MachineLink for ScriptedLink {
    fn status(&self) -> watch::Receiver<MachineStatus> {
        self.status.subscribe()
    }
    fn events(&self) -> broadcast::Receiver<DriverEvent> {
        self.events.subscribe()
    }
    fn serial_log(&self) -> Vec<SerialLine> {
        Vec::new()
    }
    fn command(&self, c: Command) -> BoxFuture<'_, Result<Vec<String>, DriverError>> {
        Box::pin(async move {
            match c {
                Command::Start(spec) => {
                    let id = spec.id.clone();
                    let _ = self.started.send(spec);
                    if let Some(gate) = &self.gate {
                        gate.acquire().await.expect("gate").forget();
                    }
                    *self.job.lock().expect("job") = Some(id);
                    Ok(Vec::new())
                }
                Command::Cancel => {
                    let Some(job_id) = self.job.lock().expect("job").take() else {
                        return Err(DriverError::NoJob);
                    };
                    let _ = self.events.send(DriverEvent::JobEnded {
                        job_id,
                        outcome: JobOutcome::Cancelled { last_acked_line: 0 },
                        stats: StreamStats::default(),
                    });
                    Ok(Vec::new())
                }
                Command::Pause | Command::Resume => {
                    if self.job.lock().expect("job").is_none() {
                        return Err(DriverError::NoJob);
                    }
                    Ok(Vec::new())
                }
                _ => Err(DriverError::Invalid("not scripted".into())),
            }
        })
    }
    fn stop(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

fn machine(id: &str) -> Machine {
    Machine::for_tests(id, "prusa-mk3s", false)
}

#[tokio::test]
async fn a_machine_behind_any_link_runs_jobs_and_records_its_states_and_attempts() {
    let dir = std::env::temp_dir().join(format!("mfd-factory-link-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = Store::open(&dir).expect("store");
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let link = Arc::new(ScriptedLink::new(started_tx, false));
    let f = Factory::with_links(
        store.clone(),
        vec![(machine("net-1"), Arc::clone(&link) as Arc<dyn MachineLink>)],
        1 << 20,
        100,
    )
    .await
    .expect("factory");
    let mut live = f.subscribe();
    f.run();
    let mut up = f.upload().expect("upload");
    up.push(b"G28\nG1 Z0.2 F3000\nG1 X10 Y10 E1 F1500\n")
        .expect("push");
    let (file, _) = f.add_file(up, "part.gcode".into()).await.expect("add");
    let jobs = f
        .submit(Submission {
            file_id: file.id.clone(),
            ..Submission::default()
        })
        .await
        .expect("submit");
    let spec = started.recv().await.expect("the link was asked to start");
    assert_eq!(spec.id, jobs[0].id.to_string());
    let stats = StreamStats {
        lines: 3,
        ..StreamStats::default()
    };
    link.events
        .send(DriverEvent::JobEnded {
            job_id: spec.id.clone(),
            outcome: JobOutcome::Completed,
            stats,
        })
        .expect("send");
    loop {
        match live.recv().await.expect("live events") {
            Event::Job {
                job_id,
                state: JobState::Completed,
                ..
            } if job_id == jobs[0].id => break,
            _ => {}
        }
    }
    let attempts = f.attempts(jobs[0].id).expect("attempts");
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].outcome, Some(AttemptOutcome::Completed));
    assert_eq!(attempts[0].stats.map(|s| s.lines), Some(3));
    let states: Vec<MachineState> = f
        .machine_states("net-1", 0, u64::MAX)
        .expect("states")
        .iter()
        .map(|c| c.state)
        .collect();
    assert_eq!(
        states,
        vec![
            MachineState::Offline,
            MachineState::Idle,
            MachineState::Producing,
            MachineState::Idle
        ]
    );
    let log = store.log_after(0, 100).expect("log");
    assert!(log.iter().any(|r| matches!(
        r.event,
        DomainEvent::AttemptEnded {
            outcome: AttemptOutcome::Completed,
            ..
        }
    )));
    f.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A factory with one gated scripted machine and a job whose start has
/// reached the link, which has not taken it yet; and the live events
/// from before the submission.
struct GatedStart {
    dir: std::path::PathBuf,
    f: Arc<Factory>,
    link: Arc<ScriptedLink>,
    live: broadcast::Receiver<Event>,
    id: u64,
}

async fn gated_start(tag: &str) -> GatedStart {
    let dir = std::env::temp_dir().join(format!("mfd-factory-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = Store::open(&dir).expect("store");
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let link = Arc::new(ScriptedLink::new(started_tx, true));
    let f = Factory::with_links(
        store,
        vec![(machine("net-1"), Arc::clone(&link) as Arc<dyn MachineLink>)],
        1 << 20,
        100,
    )
    .await
    .expect("factory");
    let live = f.subscribe();
    f.run();
    let mut up = f.upload().expect("upload");
    up.push(b"G28\nG1 Z0.2 F3000\n").expect("push");
    let (file, _) = f.add_file(up, "part.gcode".into()).await.expect("add");
    let id = f
        .submit(Submission {
            file_id: file.id.clone(),
            ..Submission::default()
        })
        .await
        .expect("submit")[0]
        .id;
    started.recv().await.expect("the link was asked to start");
    GatedStart {
        dir,
        f,
        link,
        live,
        id,
    }
}

/// Lets a command spawned on this one-thread runtime run as far as it can,
/// then lets the start through.
async fn open_gate_after_yielding(link: &ScriptedLink) {
    for _ in 0..16 {
        tokio::task::yield_now().await;
    }
    link.gate.as_ref().expect("gated").add_permits(1);
}

#[tokio::test]
async fn a_job_cancelled_while_its_start_is_on_the_way_ends_cancelled() {
    // The start has reached the link, which has not taken the job yet.
    let GatedStart {
        dir,
        f,
        link,
        mut live,
        id,
    } = gated_start("cancel").await;
    let cancel = tokio::spawn({
        let f = Arc::clone(&f);
        async move { f.cancel_job(id).await }
    });
    // Before the fix the cancel reached the link first, was told "no
    // job", and the job ran once its start went on.
    open_gate_after_yielding(&link).await;
    cancel.await.expect("join").expect("cancel");
    let ended = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        loop {
            if let Event::Job { job_id, state, .. } = live.recv().await.expect("live events")
                && job_id == id
                && state.is_final()
            {
                return state;
            }
        }
    })
    .await
    .expect("the job ended");
    assert_eq!(ended, JobState::Cancelled);
    f.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_job_paused_and_resumed_while_its_start_is_on_the_way_is_paused_and_resumed() {
    let GatedStart {
        dir, f, link, id, ..
    } = gated_start("pause").await;
    let pause = tokio::spawn({
        let f = Arc::clone(&f);
        async move { f.pause_job(id).await }
    });
    // Before the start lock, the pause reached the link first and was
    // refused "no job".
    open_gate_after_yielding(&link).await;
    let paused = pause.await.expect("join").expect("pause");
    assert_eq!(paused.state, JobState::Paused);
    assert_eq!(paused.pause, Some(PauseReason::Operator));
    let resumed = f.resume_job(id).await.expect("resume");
    assert_eq!(resumed.state, JobState::Running);
    f.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
