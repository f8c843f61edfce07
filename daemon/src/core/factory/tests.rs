use std::collections::HashMap;

use proptest::prelude::*;

use super::*;
use crate::core::machine::derive;

const PRINT: &str = "G28\nG1 Z0.2 F3000\nG1 X10 Y10 E1 F1500\nG1 X20 Y10 E2\nG1 X20 Y20 E3\n";

fn printer(id: &str, bed_clear: bool) -> Machine {
    Machine::for_tests(id, "prusa-mk3s", bed_clear)
}

fn file() -> Arc<FileRecord> {
    static FILE: std::sync::OnceLock<Arc<FileRecord>> = std::sync::OnceLock::new();
    Arc::clone(FILE.get_or_init(analysed))
}

fn analysed() -> Arc<FileRecord> {
    let mut f = crate::core::testkit::file_record(PRINT);
    f.id = "f1".into();
    Arc::new(f)
}

fn core(machines: &[(&str, bool)]) -> Core {
    let seeds = machines
        .iter()
        .map(|(id, clear)| MachineSeed {
            machine: printer(id, *clear),
            record: MachineRecord::default(),
            last: None,
        })
        .collect();
    let (mut c, _) = Core::open(seeds, vec![], vec![], 0, 100, 0);
    for i in 0..machines.len() {
        c.link(i, LinkState::Online, false, 1);
    }
    c
}

fn submit(c: &mut Core, f: &FileRecord, copies: u32, now: u64) -> Vec<u64> {
    let s = Submission {
        file_id: f.id.clone(),
        copies: Some(copies),
        ..Submission::default()
    };
    c.submit(&s, Some(f), now)
        .expect("submit")
        .jobs
        .iter()
        .map(|j| j.id)
        .collect()
}

fn machine_states(b: &Batch) -> Vec<(String, MachineState, StateReason)> {
    b.events
        .iter()
        .filter_map(|e| match e {
            DomainEvent::MachineState {
                machine_id,
                state,
                reason,
                ..
            } => Some((machine_id.clone(), *state, *reason)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_submitted_job_runs_on_a_free_machine_as_its_first_attempt() {
    let f = file();
    let mut c = core(&[("p1", false)]);
    let ids = submit(&mut c, &f, 1, 10);
    let files = |_: &str| Some(Arc::clone(&f));
    let (started, b) = c.schedule(&files, 20);
    assert_eq!(started.len(), 1);
    assert_eq!(started[0].1.id, ids[0]);
    assert_eq!(b.attempts.len(), 1);
    assert_eq!((b.attempts[0].n, b.attempts[0].assigned_ms), (1, 20));
    let b = c.started(0, ids[0], Ok(()), 30);
    assert_eq!(
        machine_states(&b),
        vec![],
        "assignment already made it producing"
    );
    assert_eq!(c.machines()[0].state.0, MachineState::Producing);
    assert_eq!(c.job(ids[0]).map(|j| j.started_ms), Some(Some(30)));
}

#[test]
fn a_read_only_machine_takes_no_job_and_produces_while_its_own_host_runs_one() {
    let f = file();
    let mut watched = printer("octo", false);
    watched.config.read_only = true;
    let seeds = vec![MachineSeed {
        machine: watched,
        record: MachineRecord::default(),
        last: None,
    }];
    let (mut c, _) = Core::open(seeds, vec![], vec![], 0, 100, 0);
    let b = c.reported(0, LinkState::Online, None, 1);
    assert_eq!(
        machine_states(&b),
        vec![("octo".into(), MachineState::Idle, StateReason::None)]
    );
    let s = Submission {
        file_id: f.id.clone(),
        ..Submission::default()
    };
    if c.submit(&s, Some(&f), 2).is_ok() {
        let files = |_: &str| Some(Arc::clone(&f));
        let (started, _) = c.schedule(&files, 3);
        assert!(started.is_empty(), "a read-only machine was given a job");
    }
    let b = c.reported(0, LinkState::Online, Some(false), 4);
    assert_eq!(
        machine_states(&b),
        vec![("octo".into(), MachineState::Producing, StateReason::None)]
    );
    let b = c.reported(0, LinkState::Online, Some(true), 5);
    assert_eq!(
        machine_states(&b),
        vec![(
            "octo".into(),
            MachineState::Paused,
            StateReason::ProgramPause
        )]
    );
    let b = c.reported(0, LinkState::Online, None, 6);
    assert_eq!(
        machine_states(&b),
        vec![("octo".into(), MachineState::Idle, StateReason::None)]
    );
    assert!(
        routing::check(
            &c.machines()[0].machine,
            &f,
            &routing::Requirements::default()
        )
        .is_err_and(|e| e.contains("read-only"))
    );
}

#[test]
fn a_cancelled_job_leaves_its_machine_waiting_for_the_operator_before_the_next_job() {
    let f = file();
    let files = |_: &str| Some(Arc::clone(&f));
    let mut c = core(&[("m1", false)]);
    let ids = submit(&mut c, &f, 2, 10);
    c.schedule(&files, 11);
    c.started(0, ids[0], Ok(()), 12);
    let (job, b) = c
        .job_ended(
            0,
            ids[0],
            JobOutcome::Cancelled { last_acked_line: 3 },
            None,
            13,
        )
        .expect("ended");
    assert_eq!(job.state, JobState::Cancelled);
    assert_eq!(
        machine_states(&b),
        vec![(
            "m1".to_string(),
            MachineState::AwaitingOperator,
            StateReason::Cancelled
        )]
    );
    let attempt = b.attempts.last().expect("attempt");
    assert_eq!(attempt.outcome, Some(AttemptOutcome::Cancelled));
    assert_eq!(attempt.last_acked_line, 3);
    // The second copy waits, even though the machine is online and free.
    assert!(c.schedule(&files, 14).0.is_empty());
    c.set_machine(0, Some(true), None, 15);
    let (started, _) = c.schedule(&files, 16);
    assert_eq!(
        started.iter().map(|s| s.1.id).collect::<Vec<_>>(),
        vec![ids[1]]
    );
}

#[test]
fn a_completed_job_holds_the_machine_only_when_it_needs_a_bed_clearance() {
    let f = file();
    let files = |_: &str| Some(Arc::clone(&f));
    let mut c = core(&[("a", true), ("b", false)]);
    let ids = submit(&mut c, &f, 2, 10);
    let (started, _) = c.schedule(&files, 11);
    assert_eq!(started.len(), 2);
    for (i, job) in &started {
        c.started(*i, job.id, Ok(()), 12);
        c.job_ended(*i, job.id, JobOutcome::Completed, None, 13);
    }
    let states: Vec<_> = c
        .machines()
        .iter()
        .map(|m| (m.state.0, m.state.1))
        .collect();
    assert_eq!(
        states,
        vec![
            (MachineState::AwaitingOperator, StateReason::BedClear),
            (MachineState::Idle, StateReason::None)
        ]
    );
    assert!(
        ids.iter()
            .all(|id| c.job(*id).map(|j| j.state) == Some(JobState::Completed))
    );
}

/// A printer `p` whose one job (submitted at 10, run at 12) failed at 13.
fn one_failed_job(f: &Arc<FileRecord>) -> (Core, u64) {
    let files = |_: &str| Some(Arc::clone(f));
    let mut c = core(&[("p", false)]);
    let id = submit(&mut c, f, 1, 10)[0];
    c.schedule(&files, 11);
    c.started(0, id, Ok(()), 12);
    let fail = JobOutcome::Failed {
        reason: "thermal runaway".into(),
        line: Some(2),
    };
    c.job_ended(0, id, fail, None, 13);
    (c, id)
}

#[test]
fn a_requeued_job_starts_a_new_attempt_and_its_start_time_is_the_new_one() {
    let f = file();
    let files = |_: &str| Some(Arc::clone(&f));
    let (mut c, id) = one_failed_job(&f);
    c.set_machine(0, Some(true), None, 14);
    let (job, _) = c.requeue(id, None, Some(2), Some(&f), 15).expect("requeue");
    assert_eq!(
        (job.state, job.started_ms, job.start_line),
        (JobState::Queued, None, 2)
    );
    let (_, b) = c.schedule(&files, 16);
    assert_eq!(b.attempts[0].n, 2);
    assert_eq!(b.attempts[0].start_line, 2);
    c.started(0, id, Ok(()), 17);
    assert_eq!(c.job(id).map(|j| j.started_ms), Some(Some(17)));
}

#[test]
fn recovery_interrupts_active_jobs_and_holds_their_machines() {
    let f = file();
    let files = |_: &str| Some(Arc::clone(&f));
    let mut c = core(&[("p", true)]);
    let id = submit(&mut c, &f, 1, 10)[0];
    let (_, b) = c.schedule(&files, 11);
    let attempt = b.attempts[0].clone();
    c.started(0, id, Ok(()), 12);
    let mut job = c.job(id).cloned().expect("job");
    job.progress.last_acked_line = 4;
    let seeds = vec![MachineSeed {
        machine: printer("p", true),
        record: MachineRecord::default(),
        last: Some((MachineState::Producing, StateReason::None, Some(id), 12)),
    }];
    let (c2, b) = Core::open(seeds, vec![job], vec![attempt], 1, 100, 50);
    let j = c2.job(id).expect("job");
    assert_eq!(j.state, JobState::Interrupted);
    assert_eq!(j.failure.as_ref().and_then(|f| f.line), Some(4));
    let a = b.attempts.first().expect("attempt ended");
    assert_eq!(
        (a.n, a.outcome, a.ended_ms),
        (1, Some(AttemptOutcome::Interrupted), Some(50))
    );
    assert_eq!(
        c2.machines()[0].record.hold.as_ref().map(|h| h.reason),
        Some(StateReason::Interrupted)
    );
    // Offline until the link says otherwise, and it stays held after.
    assert_eq!(
        machine_states(&b),
        vec![("p".into(), MachineState::Offline, StateReason::Disconnected)]
    );
}

#[test]
fn a_machine_that_halted_waits_for_the_operator_once_it_is_back() {
    let f = file();
    let files = |_: &str| Some(Arc::clone(&f));
    let mut c = core(&[("m", false)]);
    c.link(0, LinkState::Faulted, false, 5);
    assert_eq!(c.machines()[0].state.0, MachineState::UnplannedDown);
    c.link(0, LinkState::Online, false, 6);
    assert_eq!(
        (c.machines()[0].state.0, c.machines()[0].state.1),
        (MachineState::AwaitingOperator, StateReason::Halted)
    );
    submit(&mut c, &f, 1, 7);
    assert!(
        c.schedule(&files, 8).0.is_empty(),
        "no job starts on a halted machine"
    );
    c.set_machine(0, Some(true), None, 9);
    assert_eq!(c.schedule(&files, 10).0.len(), 1);
}

#[test]
fn a_queued_job_whose_file_is_gone_fails_with_that_reason() {
    let f = file();
    let mut c = core(&[("p", false)]);
    let id = submit(&mut c, &f, 1, 10)[0];
    let none = |_: &str| None;
    let (started, b) = c.schedule(&none, 11);
    assert!(started.is_empty());
    let j = c.job(id).expect("job");
    assert_eq!(j.state, JobState::Failed);
    assert_eq!(
        j.failure.as_ref().map(|f| f.reason.as_str()),
        Some("its file was deleted")
    );
    assert_eq!(b.jobs.len(), 1);
}

#[test]
fn a_file_in_use_cannot_be_deleted() {
    let f = file();
    let mut c = core(&[("p", false)]);
    submit(&mut c, &f, 1, 10);
    assert!(matches!(
        c.delete_file("f1", true),
        Err(CoreError::Conflict(_))
    ));
    assert!(matches!(
        c.delete_file("f2", false),
        Err(CoreError::NotFound(_))
    ));
    assert_eq!(
        c.delete_file("f2", true).expect("delete").removed_files,
        vec!["f2"]
    );
}

#[test]
fn priorities_and_names_are_bounded() {
    let f = file();
    let mut c = core(&[("p", false)]);
    for p in [i32::MIN, -MAX_PRIORITY - 1, MAX_PRIORITY + 1, i32::MAX] {
        let s = Submission {
            file_id: "f1".into(),
            priority: Some(p),
            ..Submission::default()
        };
        assert!(
            matches!(c.submit(&s, Some(&f), 1), Err(CoreError::Invalid(_))),
            "{p}"
        );
    }
    for name in ["a\nb".to_string(), "x".repeat(MAX_NAME_CHARS + 1)] {
        let s = Submission {
            file_id: "f1".into(),
            name: Some(name),
            ..Submission::default()
        };
        assert!(matches!(
            c.submit(&s, Some(&f), 1),
            Err(CoreError::Invalid(_))
        ));
    }
}

/// One input the shell could feed the core.
#[derive(Debug, Clone)]
enum Input {
    Submit(u32),
    Schedule,
    Start(usize, bool),
    End(usize, u8),
    Pause(usize),
    Resume(usize),
    Link(usize, u8, bool),
    Clear(usize),
    Disable(usize, bool),
    Requeue(u64),
    CancelQueued(u64),
}

fn input() -> impl Strategy<Value = Input> {
    prop_oneof![
        (1u32..3).prop_map(Input::Submit),
        Just(Input::Schedule),
        Just(Input::Schedule),
        (0usize..3, any::<bool>()).prop_map(|(m, ok)| Input::Start(m, ok)),
        (0usize..3, 0u8..4).prop_map(|(m, o)| Input::End(m, o)),
        (0usize..3).prop_map(Input::Pause),
        (0usize..3).prop_map(Input::Resume),
        (0usize..3, 0u8..4, any::<bool>()).prop_map(|(m, l, b)| Input::Link(m, l, b)),
        (0usize..3).prop_map(Input::Clear),
        (0usize..3, any::<bool>()).prop_map(|(m, d)| Input::Disable(m, d)),
        (1u64..8).prop_map(Input::Requeue),
        (1u64..8).prop_map(Input::CancelQueued),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Whatever the inputs: each machine's recorded states follow the one
    /// rule and never repeat; a job is active exactly while one machine
    /// holds it; attempts of a job are numbered 1, 2, 3... and each ends
    /// once; a held machine is never given a job.
    #[test]
    fn the_core_keeps_its_invariants_under_any_inputs(inputs in proptest::collection::vec(input(), 1..60)) {
        let f = file();
        let files = |_: &str| Some(Arc::clone(&f));
        let mut c = core(&[("a", true), ("b", false), ("c", false)]);
        let mut now = 100;
        let mut last_state: HashMap<String, (MachineState, StateReason, Option<u64>)> = HashMap::new();
        let mut attempts_ended: HashMap<(u64, u32), u32> = HashMap::new();
        let mut attempts_seen: HashMap<u64, u32> = HashMap::new();
        for inp in inputs {
            now += 7;
            let held_before: Vec<bool> = c.machines().iter().map(|m| !m.free()).collect();
            let b = match inp {
                Input::Submit(n) => {
                    let s = Submission { file_id: "f1".into(), copies: Some(n), ..Submission::default() };
                    c.submit(&s, Some(&f), now).unwrap_or_default()
                }
                Input::Schedule => {
                    let (started, b) = c.schedule(&files, now);
                    for (i, _) in &started {
                        prop_assert!(!held_before[*i], "a busy or held machine got a job");
                    }
                    b
                }
                Input::Start(i, ok) => match c.machines()[i].job {
                    Some(id) => c.started(i, id, if ok { Ok(()) } else { Err(NotStarted::Retry("busy".into())) }, now),
                    None => Batch::default(),
                },
                Input::End(i, o) => match c.machines()[i].job {
                    Some(id) => {
                        let outcome = match o {
                            0 => JobOutcome::Completed,
                            1 => JobOutcome::Cancelled { last_acked_line: 1 },
                            2 => JobOutcome::Failed { reason: "x".into(), line: None },
                            _ => JobOutcome::Interrupted { reason: "x".into(), last_acked_line: 2 },
                        };
                        c.job_ended(i, id, outcome, None, now).map(|x| x.1).unwrap_or_default()
                    }
                    None => Batch::default(),
                },
                Input::Pause(i) => match c.machines()[i].job {
                    Some(id) => c.paused(id, PauseReason::Operator, now).map(|x| x.1).unwrap_or_default(),
                    None => Batch::default(),
                },
                Input::Resume(i) => match c.machines()[i].job {
                    Some(id) => c.resumed(id, "r", now).map(|x| x.1).unwrap_or_default(),
                    None => Batch::default(),
                },
                Input::Link(i, l, busy) => {
                    let link = [LinkState::Offline, LinkState::Connecting, LinkState::Online, LinkState::Faulted][l as usize];
                    c.link(i, link, busy, now)
                }
                Input::Clear(i) => c.set_machine(i, Some(true), None, now),
                Input::Disable(i, d) => c.set_machine(i, None, Some(d), now),
                Input::Requeue(id) => c.requeue(id, None, None, Some(&f), now).map(|x| x.1).unwrap_or_default(),
                Input::CancelQueued(id) => c.cancel_queued(id, now).map(|x| x.1).unwrap_or_default(),
            };
            for e in &b.events {
                if let DomainEvent::MachineState { machine_id, state, reason, job_id } = e {
                    let prev = last_state.insert(machine_id.clone(), (*state, *reason, *job_id));
                    prop_assert_ne!(prev, Some((*state, *reason, *job_id)), "a state recorded twice in a row");
                }
                if let DomainEvent::AttemptEnded { job_id, attempt, .. } = e {
                    *attempts_ended.entry((*job_id, *attempt)).or_default() += 1;
                }
            }
            for a in &b.attempts {
                let seen = attempts_seen.entry(a.job_id).or_default();
                prop_assert!(a.n == *seen || a.n == *seen + 1, "attempt {} after {}", a.n, seen);
                *seen = a.n;
            }
            // Every machine's state is the rule applied to its facts.
            for m in c.machines() {
                let job = m.job.and_then(|id| c.job(id));
                let facts = Facts {
                    disabled: m.record.disabled,
                    link: m.link,
                    job: job.map(|j| (j.state == JobState::Paused).then_some(StateReason::OperatorPause)),
                    hold: m.record.hold.as_ref().map(|h| h.reason),
                };
                prop_assert_eq!((m.state.0, m.state.1), derive(facts));
            }
            // A job is active exactly while a machine holds it.
            for j in c.jobs() {
                let holders = c.machines().iter().filter(|m| m.job == Some(j.id)).count();
                prop_assert_eq!(holders, usize::from(j.state.is_active()), "job {} {:?}", j.id, j.state);
            }
        }
        prop_assert!(attempts_ended.values().all(|n| *n == 1), "an attempt ended twice");
    }
}

#[test]
fn a_queued_job_whose_file_was_deleted_fails_and_waits_for_the_operator_to_acknowledge_it() {
    let f = file();
    let mut c = core(&[("p", false)]);
    c.set_machine(0, None, Some(true), 5);
    let id = submit(&mut c, &f, 1, 10)[0];
    c.set_machine(0, None, Some(false), 11);
    let gone = |_: &str| None;
    let (started, b) = c.schedule(&gone, 12);
    assert!(started.is_empty());
    let job = c.job(id).expect("job");
    assert_eq!(
        (job.state, job.awaiting_ack, job.assigned_machine.as_deref()),
        (JobState::Failed, true, None)
    );
    assert_eq!(
        b.jobs.last().map(|j| j.awaiting_ack),
        Some(true),
        "stored so"
    );
    // Requeueing it is refused (no file); dismissing it is the way out.
    assert!(matches!(
        c.requeue(id, None, None, None, 13),
        Err(CoreError::Conflict(_))
    ));
    let (job, b) = c.acknowledge(id, None).expect("acknowledge");
    assert!(!job.awaiting_ack);
    assert_eq!(b.jobs.len(), 1);
    assert!(b.events.is_empty(), "no state changed: {:?}", b.events);
    // Twice is the same, with nothing to write.
    let (job, b) = c.acknowledge(id, None).expect("again");
    assert!(!job.awaiting_ack && b.jobs.is_empty());
}

#[test]
fn a_job_whose_file_content_is_missing_fails_instead_of_returning_to_the_queue() {
    let f = file();
    let files = |_: &str| Some(Arc::clone(&f));
    let mut c = core(&[("p", false)]);
    let id = submit(&mut c, &f, 1, 10)[0];
    c.schedule(&files, 11);
    let b = c.started(
        0,
        id,
        Err(NotStarted::Impossible("the content is missing".into())),
        12,
    );
    let job = c.job(id).expect("job");
    assert_eq!((job.state, job.awaiting_ack), (JobState::Failed, true));
    assert!(
        job.failure
            .as_ref()
            .is_some_and(|f| f.reason.contains("content is missing")),
        "{job:?}"
    );
    assert_eq!(
        b.attempts.last().and_then(|a| a.outcome),
        Some(AttemptOutcome::Failed)
    );
    // The machine is free and nothing is retried.
    assert_eq!(c.machines()[0].state.0, MachineState::Idle);
    assert!(c.schedule(&files, 13).0.is_empty());
    // A machine that was merely busy gives the job back to the queue.
    let id2 = submit(&mut c, &f, 1, 14)[0];
    c.schedule(&files, 15);
    c.started(0, id2, Err(NotStarted::Retry("busy".into())), 16);
    let job2 = c.job(id2).expect("job");
    assert_eq!((job2.state, job2.awaiting_ack), (JobState::Queued, false));
}

#[test]
fn confirming_the_machine_acknowledges_the_failed_job_it_held_for() {
    let f = file();
    let files = |_: &str| Some(Arc::clone(&f));
    let (mut c, id) = one_failed_job(&f);
    assert_eq!(c.job(id).map(|j| j.awaiting_ack), Some(true));
    let b = c.set_machine(0, Some(true), None, 14);
    assert_eq!(c.job(id).map(|j| j.awaiting_ack), Some(false));
    assert_eq!(b.jobs.iter().map(|j| j.id).collect::<Vec<_>>(), vec![id]);
    // A completed job never awaits an acknowledgement, and a queued one
    // cannot be acknowledged.
    let id2 = submit(&mut c, &f, 1, 15)[0];
    assert!(matches!(
        c.acknowledge(id2, None),
        Err(CoreError::Conflict(_))
    ));
    c.schedule(&files, 16);
    c.started(0, id2, Ok(()), 17);
    c.job_ended(0, id2, JobOutcome::Completed, None, 18);
    assert_eq!(c.job(id2).map(|j| j.awaiting_ack), Some(false));
}

#[test]
fn unacknowledged_failures_stay_in_memory_when_old_jobs_are_trimmed() {
    let f = file();
    let seeds = vec![MachineSeed {
        machine: printer("p", false),
        record: MachineRecord::default(),
        last: None,
    }];
    let (mut c, _) = Core::open(seeds, vec![], vec![], 0, 2, 0);
    c.link(0, LinkState::Online, false, 1);
    c.set_machine(0, None, Some(true), 2);
    let ids = submit(&mut c, &f, 6, 10);
    // The first fails for want of its file; the others are cancelled.
    for (n, id) in ids.iter().enumerate().skip(1) {
        c.cancel_queued(*id, 20 + n as u64).expect("cancel");
    }
    c.set_machine(0, None, Some(false), 30);
    c.schedule(&|_: &str| None, 31);
    c.trim_ended();
    assert_eq!(c.job(ids[0]).map(|j| j.awaiting_ack), Some(true));
    assert_eq!(
        c.jobs().filter(|j| j.state == JobState::Cancelled).count(),
        2,
        "the other ended jobs are trimmed to keep_ended"
    );
}

#[test]
fn a_print_its_own_host_starts_adopts_the_queued_job_of_that_file_and_ends_its_attempt() {
    let f = file();
    let mut watched = printer("octo", false);
    watched.config.read_only = true;
    let seeds = vec![
        MachineSeed {
            machine: printer("mk3", false),
            record: MachineRecord::default(),
            last: None,
        },
        MachineSeed {
            machine: watched,
            record: MachineRecord::default(),
            last: None,
        },
    ];
    let (mut c, _) = Core::open(seeds, vec![], vec![], 0, 100, 0);
    let s = Submission {
        file_id: f.id.clone(),
        copies: Some(2),
        ..Submission::default()
    };
    let jobs = c.submit(&s, Some(&f), 1).expect("queued for mk3").jobs;
    c.reported(1, LinkState::Online, None, 2);
    // Another file's print adopts nothing.
    assert!(c.adopt(1, &["other".into()], 3).is_none());
    assert!(c.adopt(1, &[], 3).is_none());
    let (job, b) = c.adopt(1, std::slice::from_ref(&f.id), 4).expect("adopted");
    assert_eq!(job.id, jobs[0].id, "the oldest of equal priority");
    assert_eq!(job.state, JobState::Running);
    assert_eq!(job.assigned_machine.as_deref(), Some("octo"));
    assert_eq!((b.attempts[0].n, b.attempts[0].started_ms), (1, Some(4)));
    assert_eq!(
        machine_states(&b),
        vec![("octo".into(), MachineState::Producing, StateReason::None)]
    );
    // A second print while it holds one adopts nothing more.
    assert!(c.adopt(1, std::slice::from_ref(&f.id), 5).is_none());
    let (ended, b) = c
        .job_ended(1, job.id, JobOutcome::Completed, None, 6)
        .expect("ended");
    assert_eq!(ended.state, JobState::Completed);
    assert!(b.events.iter().any(|e| matches!(
        e,
        DomainEvent::AttemptEnded { machine_id, outcome: AttemptOutcome::Completed, .. }
            if machine_id == "octo"
    )));
    // A serial machine never adopts.
    assert!(c.adopt(0, std::slice::from_ref(&f.id), 7).is_none());
}

#[test]
fn a_reported_file_name_matches_the_stored_one_whatever_its_folder_extension_or_case() {
    for (reported, stored) in [
        ("hook.gcode", "hook.gcode"),
        ("/local/jobs/Hook.GCODE", "hook.gcode"),
        ("hook", "hook.gcode.3mf"),
        ("plate-3.nc", "plate-3.ngc"),
    ] {
        assert!(
            print_name_matches(reported, stored),
            "{reported} ~ {stored}"
        );
    }
    for (reported, stored) in [
        ("hook2.gcode", "hook.gcode"),
        ("", ".gcode"),
        ("a/hook", "hook.x"),
    ] {
        assert!(
            !print_name_matches(reported, stored),
            "{reported} !~ {stored}"
        );
    }
}

proptest! {
    #[test]
    fn a_name_matches_itself_under_any_folder_and_known_extension(
        stem in "[a-zA-Z0-9_-]{1,20}",
        folder in "(/[a-z]{1,8}){0,3}",
        ext in prop::sample::select(vec!["", ".gcode", ".gco", ".3mf", ".gcode.3mf", ".nc"]),
        other in "[a-zA-Z0-9_-]{1,20}",
    ) {
        let stored = format!("{stem}.gcode");
        let reported = format!("{folder}/{stem}{ext}");
        prop_assert!(print_name_matches(&reported, &stored));
        prop_assert_eq!(
            print_name_matches(&format!("{other}{ext}"), &stored),
            other.to_lowercase() == stem.to_lowercase()
        );
    }
}
