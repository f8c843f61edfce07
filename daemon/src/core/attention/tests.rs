use std::collections::HashSet;

use microfactory_machines::driver::MachineStatus;
use proptest::prelude::*;

use super::*;
use crate::core::model::{Failure, JobState, Kind};

fn machine(id: &str, state: MachineState, reason: StateReason) -> MachineView {
    MachineView {
        id: id.into(),
        name: format!("Machine {id}"),
        kind: Kind::Printer,
        profile: "prusa-mk3s".into(),
        port: "/dev/null".into(),
        tags: vec![],
        build_volume_mm: [250.0, 210.0, 210.0],
        disabled: state == MachineState::PlannedDown,
        awaiting_clear: false,
        require_bed_clear: false,
        state: state.legacy_word().into(),
        machine_state: state,
        reason,
        reason_text: reason.words().into(),
        since_ms: 1000,
        pause: None,
        hold_reason: None,
        hold_job_id: None,
        job_id: None,
        status: MachineStatus::default(),
    }
}

fn failed_job(id: u64) -> Job {
    Job {
        name: "bracket".into(),
        state: JobState::Failed,
        assigned_machine: Some("a".into()),
        started_ms: Some(1),
        ended_ms: Some(2),
        failure: Some(Failure {
            reason: "ALARM:3 reset while in motion".into(),
            line: Some(12),
        }),
        attempt: 2,
        awaiting_ack: true,
        ..crate::core::testkit::job(id)
    }
}

#[test]
fn idle_producing_and_disabled_machines_need_nobody() {
    let ms = [
        machine("a", MachineState::Idle, StateReason::None),
        machine("b", MachineState::Producing, StateReason::None),
        machine("c", MachineState::PlannedDown, StateReason::Disabled),
        machine("d", MachineState::Offline, StateReason::Connecting),
    ];
    assert!(list(&ms, |_| None, &[], &[]).is_empty());
}

#[test]
fn a_tool_change_pause_names_the_tool_and_the_line() {
    let mut m = machine("mill", MachineState::Paused, StateReason::ToolChange);
    m.job_id = Some(7);
    m.pause = Some(PauseReason::ToolChange {
        tool: Some(1),
        line: 9,
    });
    let items = list(&[m], |_| None, &[], &[]);
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].kind, AttentionKind::Paused);
    assert_eq!(
        items[0].title,
        "Machine mill (mill) paused job #7 for a tool change at line 9: load tool T01"
    );
    assert!(items[0].action.contains("Resume"));
}

#[test]
fn a_failed_job_is_listed_while_its_machine_holds_for_it_and_gone_once_confirmed() {
    let job = failed_job(4);
    let mut m = machine("a", MachineState::AwaitingOperator, StateReason::Failed);
    m.hold_reason = Some(StateReason::Failed);
    m.hold_job_id = Some(4);
    let items = list(
        std::slice::from_ref(&m),
        |id| (id == 4).then_some(&job),
        &[&job],
        &[],
    );
    assert_eq!(
        items.len(),
        1,
        "one item, not one for the job and one for the machine"
    );
    assert_eq!(items[0].kind, AttentionKind::JobFailed);
    assert_eq!(items[0].job_id, Some(4));
    assert_eq!(items[0].key, "job:4:2");
    assert!(items[0].title.contains("ALARM:3"), "{}", items[0].title);
    // The operator confirms the machine: the hold, and the item, are gone.
    let confirmed = machine("a", MachineState::Idle, StateReason::None);
    let mut seen = job.clone();
    seen.awaiting_ack = false;
    assert!(list(&[confirmed], |id| (id == 4).then_some(&seen), &[&seen], &[]).is_empty());
}

#[test]
fn a_job_whose_file_vanished_is_listed_with_no_machine_until_it_is_acknowledged() {
    // It never reached a machine: no hold, no machine to confirm.
    let mut job = failed_job(9);
    job.assigned_machine = None;
    job.attempt = 0;
    job.failure = Some(Failure {
        reason: "its file was deleted".into(),
        line: None,
    });
    job.ended_ms = Some(70);
    let idle = machine("a", MachineState::Idle, StateReason::None);
    let items = list(
        std::slice::from_ref(&idle),
        |id| (id == 9).then_some(&job),
        &[&job],
        &[],
    );
    assert_eq!(items.len(), 1, "{items:?}");
    let i = &items[0];
    assert_eq!(
        (i.kind, i.job_id, i.machine_id.as_deref(), i.since_ms),
        (AttentionKind::JobFailed, Some(9), None, 70)
    );
    assert_eq!(i.title, "Job #9 “bracket” failed: its file was deleted");
    assert!(i.action.contains("dismiss"), "{}", i.action);
    // Acknowledged: gone.
    job.awaiting_ack = false;
    assert!(list(&[idle], |_| None, &[&job], &[]).is_empty());
}

#[test]
fn a_failed_job_on_a_disabled_machine_stays_listed_by_its_machine_s_name() {
    let job = failed_job(5);
    let mut m = machine("a", MachineState::PlannedDown, StateReason::Disabled);
    m.hold_reason = Some(StateReason::Failed);
    m.hold_job_id = Some(5);
    let items = list(&[m], |id| (id == 5).then_some(&job), &[&job], &[]);
    assert_eq!(items.len(), 1, "{items:?}");
    assert_eq!(items[0].kind, AttentionKind::JobFailed);
    assert_eq!(
        items[0].title,
        "Job #5 “bracket” failed on Machine a (a): ALARM:3 reset while in motion"
    );
}

#[test]
fn an_acknowledged_job_leaves_the_list_while_its_machine_still_asks_for_a_look() {
    let mut job = failed_job(4);
    job.awaiting_ack = false;
    let mut m = machine("a", MachineState::AwaitingOperator, StateReason::Failed);
    m.hold_reason = Some(StateReason::Failed);
    m.hold_job_id = Some(4);
    let items = list(&[m], |id| (id == 4).then_some(&job), &[], &[]);
    assert_eq!(items.len(), 1, "{items:?}");
    assert_eq!(items[0].kind, AttentionKind::AwaitingOperator);
    assert_eq!(items[0].machine_id.as_deref(), Some("a"));
}

#[test]
fn units_awaiting_inspection_are_one_item_per_product() {
    let qc = [
        QcWaiting {
            sku: "BRKT".into(),
            units: 3,
            oldest_ms: 5,
        },
        QcWaiting {
            sku: "NONE".into(),
            units: 0,
            oldest_ms: 0,
        },
    ];
    let items = list(&[], |_| None, &[], &qc);
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].title, "3 units of BRKT awaiting inspection");
    assert_eq!(items[0].sku.as_deref(), Some("BRKT"));
}

#[test]
fn the_most_urgent_comes_first() {
    let mut bed = machine("a", MachineState::AwaitingOperator, StateReason::BedClear);
    bed.since_ms = 1;
    let mut fault = machine("b", MachineState::UnplannedDown, StateReason::Fault);
    fault.since_ms = 50;
    fault.status.last_error = Some("Printer halted. kill() called!".into());
    let off = machine("c", MachineState::Offline, StateReason::Disconnected);
    let items = list(&[bed, off, fault], |_| None, &[], &[]);
    let kinds: Vec<_> = items.iter().map(|i| i.kind).collect();
    assert_eq!(
        kinds,
        [
            AttentionKind::Faulted,
            AttentionKind::AwaitingOperator,
            AttentionKind::Offline
        ]
    );
    assert!(
        items[0].title.ends_with("kill() called!"),
        "{}",
        items[0].title
    );
}

fn any_state() -> impl Strategy<Value = (MachineState, StateReason)> {
    prop_oneof![
        Just((MachineState::Idle, StateReason::None)),
        Just((MachineState::Producing, StateReason::None)),
        Just((MachineState::Paused, StateReason::OperatorPause)),
        Just((MachineState::Paused, StateReason::ToolChange)),
        Just((MachineState::AwaitingOperator, StateReason::BedClear)),
        Just((MachineState::AwaitingOperator, StateReason::Failed)),
        Just((MachineState::AwaitingOperator, StateReason::Cancelled)),
        Just((MachineState::PlannedDown, StateReason::Disabled)),
        Just((MachineState::UnplannedDown, StateReason::Fault)),
        Just((MachineState::Offline, StateReason::Disconnected)),
        Just((MachineState::Offline, StateReason::Connecting)),
    ]
}

proptest! {
    #[test]
    fn every_machine_waiting_for_a_person_has_exactly_one_item_and_keys_are_unique(
        states in proptest::collection::vec((any_state(), 0u64..100, any::<bool>()), 0..12),
        units in proptest::collection::vec(0usize..4, 0..4),
    ) {
        let job = failed_job(1);
        let machines: Vec<MachineView> = states
            .iter()
            .enumerate()
            .map(|(i, ((st, r), since, held))| {
                let mut m = machine(&format!("m{i}"), *st, *r);
                m.since_ms = *since;
                if *held {
                    m.hold_job_id = Some(1);
                }
                m
            })
            .collect();
        let qc: Vec<QcWaiting> = units
            .iter()
            .enumerate()
            .map(|(i, n)| QcWaiting { sku: format!("S{i}"), units: *n, oldest_ms: 0 })
            .collect();
        let items = list(&machines, |id| (id == 1).then_some(&job), &[&job], &qc);
        for m in &machines {
            let needs = !matches!(
                (m.machine_state, m.reason),
                (MachineState::Idle | MachineState::Producing | MachineState::PlannedDown, _)
                    | (MachineState::Offline, StateReason::Connecting)
            );
            let n = items.iter().filter(|i| i.machine_id.as_deref() == Some(m.id.as_str())).count();
            prop_assert_eq!(n, usize::from(needs), "{:?}", m.machine_state);
        }
        // The unacknowledged failed job is on the list, whoever speaks for it.
        prop_assert!(items.iter().any(|i| i.kind == AttentionKind::JobFailed && i.job_id == Some(1)));
        let qc_items = items.iter().filter(|i| i.kind == AttentionKind::AwaitingQc).count();
        prop_assert_eq!(qc_items, units.iter().filter(|n| **n > 0).count());
        let keys: HashSet<&str> = items.iter().map(|i| i.key.as_str()).collect();
        // Several machines may hold for the same job only in this made-up
        // input; their job keys then coincide, so count machine keys apart.
        prop_assert!(keys.len() + items.iter().filter(|i| i.kind == AttentionKind::JobFailed).count().saturating_sub(1) >= items.len());
        prop_assert!(items.windows(2).all(|w| (w[0].kind, w[0].since_ms) <= (w[1].kind, w[1].since_ms)));
    }
}
