use proptest::prelude::*;

use super::*;

fn printer(id: &str) -> Machine {
    Machine::for_tests(id, "prusa-mk3s", false)
}

fn mill(id: &str) -> Machine {
    Machine::for_tests(id, "grbl-3018", false)
}

/// A real print file's analysis (a few moves), its estimate replaced by
/// `seconds` so the arithmetic below is by hand.
fn print_file(seconds: f64) -> FileRecord {
    static BASE: std::sync::OnceLock<FileRecord> = std::sync::OnceLock::new();
    let mut f = BASE
        .get_or_init(|| {
            crate::core::testkit::file_record(
                "G28\nG1 Z0.2 F3000\nG1 X10 Y10 E1 F1500\nG1 X20 Y10 E2\n",
            )
        })
        .clone();
    f.analysis.estimated_seconds = seconds;
    f
}

fn job(id: u64, priority: i32, machine: Option<&str>) -> Job {
    Job {
        priority,
        machine_id: machine.map(Into::into),
        ..crate::core::testkit::job(id)
    }
}

#[test]
fn the_machine_that_frees_first_takes_the_best_job_and_the_other_the_next() {
    let (a, b) = (printer("a"), printer("b"));
    let lanes = [
        Lane {
            machine: &a,
            ready: Ready::In(600.0),
        },
        Lane {
            machine: &b,
            ready: Ready::In(60.0),
        },
    ];
    let f = print_file(1200.0);
    let (j1, j2) = (job(1, 0, None), job(2, 5, None));
    let next = next_jobs(&lanes, &[(&j1, &f), (&j2, &f)], 10_000);
    // b frees at 70 s and takes the higher-priority job 2; a at 610 s takes 1.
    assert_eq!(
        next,
        [
            NextJob {
                machine_id: "a".into(),
                job_id: 1,
                job_name: "job 1".into(),
                start_ms: 610_000,
                end_ms: 1_810_000,
                after_operator: false,
            },
            NextJob {
                machine_id: "b".into(),
                job_id: 2,
                job_name: "job 2".into(),
                start_ms: 70_000,
                end_ms: 1_270_000,
                after_operator: false,
            },
        ]
    );
}

#[test]
fn routing_decides_and_a_machine_waiting_for_the_operator_says_so() {
    let (p, m) = (printer("p"), mill("m"));
    let lanes = [
        Lane {
            machine: &m,
            ready: Ready::Now,
        },
        Lane {
            machine: &p,
            ready: Ready::AfterOperator,
        },
    ];
    let f = print_file(100.0);
    let j = job(3, 0, None);
    // The mill is free first but cannot run a print: the printer gets it,
    // once the operator has confirmed it.
    let next = next_jobs(&lanes, &[(&j, &f)], 0);
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].machine_id, "p");
    assert!(next[0].after_operator);
}

#[test]
fn a_machine_that_is_down_gets_nothing_and_a_job_for_another_machine_waits_for_it() {
    let (a, b) = (printer("a"), printer("b"));
    let lanes = [
        Lane {
            machine: &a,
            ready: Ready::Never,
        },
        Lane {
            machine: &b,
            ready: Ready::Now,
        },
    ];
    let f = print_file(100.0);
    let j = job(1, 0, Some("a"));
    assert!(next_jobs(&lanes, &[(&j, &f)], 0).is_empty());
}

proptest! {
    #[test]
    fn each_job_is_forecast_once_never_before_now_and_never_on_a_machine_it_cannot_use(
        ready in proptest::collection::vec(prop_oneof![
            Just(Ready::Now), Just(Ready::AfterOperator), Just(Ready::Never),
            (0.0f64..1e5).prop_map(Ready::In),
        ], 1..5),
        jobs in proptest::collection::vec((-3i32..3, proptest::option::of(0usize..5), 0.0f64..1e4), 0..20),
        now in 0u64..1_000_000_000,
    ) {
        let machines: Vec<Machine> = (0..ready.len()).map(|i| printer(&format!("m{i}"))).collect();
        let lanes: Vec<Lane<'_>> = machines
            .iter()
            .zip(&ready)
            .map(|(machine, r)| Lane { machine, ready: *r })
            .collect();
        let owned: Vec<(Job, FileRecord)> = jobs
            .iter()
            .enumerate()
            .map(|(i, (p, m, s))| {
                let name = m.map(|m| format!("m{m}"));
                (job(i as u64 + 1, *p, name.as_deref()), print_file(*s))
            })
            .collect();
        let queued: Vec<(&Job, &FileRecord)> = owned.iter().map(|(j, f)| (j, f)).collect();
        let next = next_jobs(&lanes, &queued, now);
        let mut seen = std::collections::HashSet::new();
        for n in &next {
            prop_assert!(seen.insert(n.job_id), "job {} forecast twice", n.job_id);
            prop_assert!(n.start_ms >= now && n.end_ms >= n.start_ms);
            let li = machines.iter().position(|m| m.config.id == n.machine_id).unwrap_or(usize::MAX);
            prop_assert!(li < lanes.len() && lanes[li].ready != Ready::Never);
            let (j, _) = &owned[(n.job_id - 1) as usize];
            prop_assert!(j.machine_id.as_ref().is_none_or(|m| *m == n.machine_id));
            if let Ready::In(_) | Ready::Now = lanes[li].ready {
                prop_assert!(!n.after_operator);
            }
        }
        // A machine that can take work and has a job pinned to it (which
        // no other machine may take) is told its next one.
        for (li, l) in lanes.iter().enumerate() {
            let id = &machines[li].config.id;
            let pinned = owned.iter().any(|(j, _)| j.machine_id.as_ref() == Some(id));
            if l.ready != Ready::Never && pinned {
                prop_assert!(next.iter().any(|n| n.machine_id == *id), "{} has no next job", id);
            }
        }
    }
}
