//! The log reader against a real store: units survive reopening the
//! store half-way, and records read twice make no second unit.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::reader::CURSOR;
use super::*;
use crate::core::events::DomainEvent;
use crate::core::model::{Attempt, AttemptOutcome};

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mfd-metering-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn order() -> Order {
    Order {
        id: 1,
        sku: "tile".into(),
        quantity: 4,
        due_ms: None,
        priority: 0,
        state: OrderState::Open,
        created_ms: 0,
        file_id: "f".into(),
        units_per_job: 2,
        planned_runtime_per_unit_s: 30.0,
        auto_pass: false,
        jobs: vec![
            OrderJob {
                job_id: 1,
                settled: false,
            },
            OrderJob {
                job_id: 2,
                settled: false,
            },
        ],
        submitting: None,
    }
}

/// The attempt of `job` that completed, and the event that says so.
fn ended(job: u64, at: u64) -> Batch {
    Batch {
        attempts: vec![Attempt {
            job_id: job,
            n: 1,
            machine_id: "mk3".into(),
            start_line: 1,
            assigned_ms: at,
            started_ms: Some(at),
            ended_ms: Some(at + 60_000),
            outcome: Some(AttemptOutcome::Completed),
            failure: None,
            lines_done: 10,
            last_acked_line: 10,
            stats: None,
        }],
        events: vec![DomainEvent::AttemptEnded {
            job_id: job,
            attempt: 1,
            machine_id: "mk3".into(),
            outcome: AttemptOutcome::Completed,
            lines_done: 10,
        }],
        ..Batch::default()
    }
}

/// Metering over `store` with no machines (nothing is queued: the order
/// has all the jobs it needs).
async fn metering(store: &Store) -> Arc<Metering> {
    let f = Factory::with_links(store.clone(), Vec::new(), 1 << 20, 10)
        .await
        .expect("factory");
    Metering::new(f, &[], BTreeMap::new(), None)
}

async fn catch_up_all(m: &Metering) {
    let tip = *m.store.log_tip().borrow();
    while m.catch_up(tip).await.expect("catch up") {}
}

#[tokio::test]
async fn units_survive_reopening_the_store_half_way_and_a_replay_duplicates_none() {
    let dir = temp_dir("reopen");
    {
        let store = Store::open(&dir).expect("open");
        store
            .commit(
                &Batch {
                    orders: vec![order()],
                    order_jobs: vec![(1, 1), (2, 1)],
                    order_id_counter: Some(1),
                    ..Batch::default()
                },
                0,
            )
            .expect("order");
        store.commit(&ended(1, 1_000), 61_000).expect("first plate");
        store.flush().await.expect("flush");
        let m = metering(&store).await;
        catch_up_all(&m).await;
        assert_eq!(store.units().expect("units").len(), 2);
    }
    // The daemon stops here; the second plate ends after the restart.
    let store = Store::open(&dir).expect("reopen");
    assert_eq!(
        store.units().expect("units").len(),
        2,
        "durable at the flush"
    );
    store
        .commit(&ended(2, 70_000), 130_000)
        .expect("second plate");
    store.flush().await.expect("flush");
    let m = metering(&store).await;
    catch_up_all(&m).await;
    let units = store.units().expect("units");
    let places: Vec<(String, u64, u32)> = units
        .iter()
        .map(|u| (u.serial.clone(), u.job_id, u.index))
        .collect();
    assert_eq!(
        places,
        vec![
            ("U000000001".into(), 1, 1),
            ("U000000002".into(), 1, 2),
            ("U000000003".into(), 2, 1),
            ("U000000004".into(), 2, 2),
        ]
    );
    // A reader that lost its cursor reads every record again (at least
    // once): no place gets a second unit and no serial is spent.
    store.set_cursor(CURSOR, 0).expect("rewind");
    catch_up_all(&m).await;
    assert_eq!(store.units().expect("units").len(), 4);
    assert_eq!(store.unit_counter().expect("counter"), 4);
    // The running totals counted each attempt and unit once, replay or
    // not, and the store holds what the cache holds.
    let summary = m.summary().expect("summary");
    assert_eq!(summary.attempts["completed"].count, 2, "{summary:?}");
    assert_eq!(summary.units_of("tile", QcState::Pending), 4);
    assert_eq!(store.metering_summary().expect("stored"), Some(summary));
    let o = store.order(1).expect("order").expect("exists");
    assert!(o.jobs.iter().all(|j| j.settled), "{o:?}");
    assert_eq!(m.order(1).expect("view").progress.awaiting_qc, 4);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_failed_unit_of_an_open_order_asks_for_another_job() {
    let dir = temp_dir("topup");
    let store = Store::open(&dir).expect("open");
    store
        .commit(
            &Batch {
                orders: vec![order()],
                order_jobs: vec![(1, 1), (2, 1)],
                order_id_counter: Some(1),
                ..Batch::default()
            },
            0,
        )
        .expect("order");
    store.commit(&ended(1, 1_000), 61_000).expect("plate 1");
    store.commit(&ended(2, 70_000), 130_000).expect("plate 2");
    store.flush().await.expect("flush");
    let m = metering(&store).await;
    catch_up_all(&m).await;
    for serial in ["U000000001", "U000000002", "U000000003"] {
        m.inspect(
            serial,
            QcInput {
                result: QcState::Pass,
                reason: None,
                note: None,
            },
            "op",
        )
        .await
        .expect("pass");
    }
    assert_eq!(m.order(1).expect("view").progress.jobs_needed, 0);
    // No machine is configured here, so the top-up cannot queue; the
    // order says it needs one more plate.
    m.inspect(
        "U000000004",
        QcInput {
            result: QcState::Fail,
            reason: Some("warping".into()),
            note: Some("corner lifted".into()),
        },
        "op",
    )
    .await
    .expect("fail");
    let p = m.order(1).expect("view").progress;
    assert_eq!((p.good, p.scrap, p.jobs_needed), (3, 1, 1));
    let again = m
        .inspect(
            "U000000004",
            QcInput {
                result: QcState::Pass,
                reason: None,
                note: None,
            },
            "op",
        )
        .await;
    assert!(
        matches!(again, Err(MeteringError::Conflict(_))),
        "{again:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
