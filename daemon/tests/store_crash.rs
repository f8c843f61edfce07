//! `kill -9` of a process that commits as fast as it can, at seeded
//! moments: after reopening, every acknowledged commit is there, and every
//! commit that is there is there whole (its job, its counter, its events
//! and its machine state), with a log that has no gap. This is what the
//! store's journal promises instead of a sled transaction.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use microfactoryd::core::events::DomainEvent;
use microfactoryd::core::machine::{MachineState, StateReason};
use microfactoryd::core::model::{Job, JobProgress, JobState};
use microfactoryd::store::{Batch, Store};

/// The child's data directory; set only in the child.
const CHILD_DIR: &str = "MICROFACTORYD_STORE_CRASH_CHILD";

fn job(id: u64) -> Job {
    Job {
        id,
        name: format!("job {id}"),
        file_id: "f".repeat(64),
        batch_id: id,
        copy: 1,
        copies: 1,
        priority: 0,
        seq: id,
        machine_id: None,
        kind: None,
        tags: Vec::new(),
        expand_canned_cycles: false,
        any_material: false,
        start_line: 1,
        state: JobState::Queued,
        assigned_machine: None,
        created_ms: 1,
        started_ms: None,
        ended_ms: None,
        progress: JobProgress::default(),
        failure: None,
        history: Vec::new(),
        attempt: 0,
        pause: None,
        awaiting_ack: false,
    }
}

/// Commit `id`: a job, the counter, its event and a machine state.
fn batch(id: u64) -> Batch {
    Batch {
        jobs: vec![job(id)],
        job_id_counter: Some(id),
        events: vec![
            DomainEvent::JobQueued {
                job_id: id,
                file_id: "f".repeat(64),
                start_line: 1,
                priority: 0,
                note: None,
            },
            DomainEvent::MachineState {
                machine_id: "m".into(),
                state: if id.is_multiple_of(2) {
                    MachineState::Idle
                } else {
                    MachineState::Producing
                },
                reason: StateReason::None,
                job_id: Some(id),
            },
        ],
        ..Batch::default()
    }
}

/// Not a test of its own: the process the parent kills. One thread
/// commits as fast as it can; another flushes in a loop and then prints
/// how far is durable, so flushes (which write sled's buffer out) land in
/// the middle of commits as often as between them.
#[test]
#[ignore = "run by commits_survive_kill_9_whole_or_not_at_all"]
fn child_commits_until_killed() {
    let Some(dir) = std::env::var_os(CHILD_DIR) else {
        return;
    };
    let s = Store::open(Path::new(&dir)).expect("open");
    let committed = Arc::new(AtomicU64::new(s.job_id_counter().expect("counter")));
    let flusher = {
        let (s, committed) = (s.clone(), committed.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("runtime");
            loop {
                let upto = committed.load(Ordering::SeqCst);
                rt.block_on(s.flush()).expect("flush");
                println!("durable {upto}");
            }
        })
    };
    let mut id = committed.load(Ordering::SeqCst);
    loop {
        id += 1;
        s.commit(&batch(id), id).expect("commit");
        committed.store(id, Ordering::SeqCst);
        if flusher.is_finished() {
            return;
        }
    }
}

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Runs the child until it has said `target` is durable, then kills it
/// mid-commit; returns the last id it said was durable.
fn run_and_kill(dir: &Path, target: u64) -> u64 {
    let mut child = Command::new(std::env::current_exe().expect("exe"))
        .args([
            "child_commits_until_killed",
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .env(CHILD_DIR, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child");
    let out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut durable = 0;
    for line in out.lines() {
        let line = line.expect("read");
        if let Some(n) = line.strip_prefix("durable ") {
            durable = n.parse().expect("number");
            if durable >= target {
                break;
            }
        }
    }
    // SIGKILL: the child is mid-commit or mid-flush, as it nearly always is.
    child.kill().expect("kill");
    child.wait().expect("wait");
    durable
}

/// Every commit present is whole, the log has no gap, and nothing said
/// to be durable is missing; returns how many commits are there.
fn check(dir: &Path, acknowledged: u64, round: u64) -> u64 {
    let s = Store::open(dir).expect("reopen");
    let counter = s.job_id_counter().expect("counter");
    assert!(
        counter >= acknowledged,
        "round {round}: {acknowledged} acknowledged, {counter} there"
    );
    let log = s.log_after(0, usize::MAX).expect("log");
    let seqs: Vec<u64> = log.iter().map(|r| r.seq).collect();
    let expected: Vec<u64> = (1..=counter * 2).collect();
    assert_eq!(seqs, expected, "round {round}: a gap or a partial commit");
    for id in 1..=counter {
        assert!(
            s.job(id).expect("job").is_some(),
            "round {round}: job {id} lost"
        );
        assert!(
            matches!(&log[(id as usize - 1) * 2].event,
                DomainEvent::JobQueued { job_id, .. } if *job_id == id),
            "round {round}: job {id}'s event is not where its commit put it"
        );
    }
    assert!(
        s.job(counter + 1).expect("job").is_none(),
        "round {round}: a job without its counter"
    );
    let states = s.machine_states("m", 0, u64::MAX).expect("states");
    assert_eq!(
        states.len() as u64,
        counter,
        "round {round}: machine states"
    );
    counter
}

#[test]
fn commits_survive_kill_9_whole_or_not_at_all() {
    let dir: PathBuf = std::env::temp_dir().join(format!("mfd-store-crash-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut seed = 0x5EED_u64;
    let mut there = 0;
    for round in 0..16 {
        let target = there + 30 + splitmix(&mut seed) % 300;
        let acknowledged = run_and_kill(&dir, target);
        there = check(&dir, acknowledged, round);
    }
    let _ = std::fs::remove_dir_all(&dir);
}
