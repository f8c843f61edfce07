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

mod aggregates {
    use super::*;
    use crate::config::{ApcCriteria, Machine};
    use crate::core::machine::{MachineState, StateChange, StateReason};
    use crate::metering::hourly::HOUR_MS;
    use crate::metering::model::QcState;
    use proptest::prelude::*;

    const MIN: u64 = 60_000;

    fn state(i: u8) -> (MachineState, StateReason) {
        use MachineState as S;
        use StateReason as R;
        match i % 7 {
            0 => (S::Idle, R::None),
            1 => (S::Producing, R::None),
            2 => (S::AwaitingOperator, R::BedClear),
            3 => (S::UnplannedDown, R::Fault),
            4 => (S::UnplannedDown, R::Halted),
            5 => (S::Paused, R::OperatorPause),
            _ => (S::PlannedDown, R::Disabled),
        }
    }

    /// The raw computation the aggregates must equal: every machine's
    /// state log over the window and every unit that ended in it. `spans`:
    /// all spans (`None`), every order's jobs' (`Some(None)`) or one
    /// SKU's (`Some(Some(sku))`), whose units alone then count.
    fn raw(
        m: &Metering,
        machines: &[&str],
        w: Window,
        spans: Option<Option<&str>>,
    ) -> (TimeElements, Quantities) {
        let jobs = m.sku_jobs(spans.flatten()).expect("jobs");
        let ms: Vec<String> = machines.iter().map(|s| (*s).to_string()).collect();
        let t = m
            .time_of(&ms, w, now_ms(), &|c: &StateChange| {
                spans.is_none() || c.job_id.is_some_and(|j| jobs.contains(&j))
            })
            .expect("time");
        let units = m.store.units_between(w.from_ms, w.to_ms).expect("units");
        let q = Quantities::of(&units, w, |u| match spans {
            None => ms.contains(&u.machine_id),
            Some(None) => true,
            Some(Some(s)) => u.sku == s,
        });
        (t, q)
    }

    fn product(sku: &str) -> Product {
        Product {
            sku: sku.into(),
            name: sku.into(),
            design_revision: None,
            file_id: "f".into(),
            units_per_job: 2,
            planned_runtime_per_unit_s: 30.0,
            planned_runtime_from_analysis: false,
            weight_g: None,
            dimensions_mm: None,
            material: None,
            price_per_unit: None,
            material_cost_per_unit: None,
            auto_pass: false,
            created_ms: 0,
            updated_ms: 0,
        }
    }

    /// Days of history: enough for two whole calendar months, whatever
    /// the day the test runs.
    const DAYS: u64 = 80;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(12))]
        #[test]
        fn metrics_through_the_aggregates_equal_the_raw_records_in_a_real_store(
            steps in prop::collection::vec((0u64..45, any::<u8>(), 0u64..4, any::<bool>(), 0usize..3), 60..150),
            units in prop::collection::vec((0u64..DAYS * 1440, any::<bool>(), 0u8..4, any::<bool>()), 0..40),
            windows in prop::collection::vec((0u64..DAYS * 1440, 0u64..DAYS * 1440), 6),
        ) {
            let rt = tokio::runtime::Runtime::new().expect("runtime");
            rt.block_on(async {
                let dir = temp_dir(&format!("agg-{}", steps.len() * 1000 + units.len()));
                let store = Store::open(&dir).expect("open");
                // History starts DAYS days ago, on an hour boundary, and
                // stays in the past, like the windows: the figures do not
                // depend on when they are asked. Jobs 1 and 2 are tile's,
                // 3 is cube's.
                let base = (now_ms() / HOUR_MS - DAYS * 24) * HOUR_MS;
                let end = base + (DAYS - 1) * 24 * HOUR_MS;
                let mut cube = order();
                cube.id = 2;
                cube.sku = "cube".into();
                cube.jobs = vec![OrderJob { job_id: 3, settled: true }];
                store.commit(&Batch {
                    products: vec![product("tile"), product("cube")],
                    orders: vec![order(), cube],
                    order_jobs: vec![(1, 1), (2, 1), (3, 2)],
                    ..Batch::default()
                }, 0).expect("order");
                let made: Vec<Unit> = units.iter().enumerate().map(|(i, (end, on_a, _, is_cube))| Unit {
                    sku: if *is_cube { "cube" } else { "tile" }.into(),
                    order_id: if *is_cube { 2 } else { 1 },
                    machine_id: if *on_a { "a" } else { "b" }.into(),
                    index: 1 + (i % 2) as u32,
                    attempt: 1 + (i / 2) as u32,
                    ..Unit::sample(i as u64 + 1, base + end * MIN)
                }).collect();
                store.commit(&Batch { units: made.clone(), ..Batch::default() }, base).expect("units");
                let f = Factory::with_links(store.clone(), Vec::new(), 1 << 20, 10).await.expect("factory");
                let machines = [Machine::for_tests("a", "prusa-mk3s", false), Machine::for_tests("b", "prusa-mk3s", false)];
                let mut apc = BTreeMap::new();
                for sku in ["tile", "cube"] {
                    apc.insert(sku.to_string(), BTreeMap::from([("fdm_printer".to_string(), ApcCriteria::default())]));
                }
                let m = Metering::new(f, &machines, apc, None);
                let mut at = base;
                for (i, (d, s, job, on_a, scale)) in steps.iter().enumerate() {
                    // Half way, aggregate what there is: the rest is sealed
                    // later from the hours, days and months stored now.
                    if i == steps.len() / 2 {
                        m.aggregate_history().await.expect("aggregate half");
                    }
                    // Minutes, half-hours or hours: months go by, and
                    // some steps land on hour boundaries or repeat a time.
                    at = (at + d * MIN * [1, 30, 60][*scale]).min(end);
                    if d % 5 == 0 {
                        at = at.div_ceil(HOUR_MS) * HOUR_MS;
                    }
                    let (state, reason) = state(*s);
                    store.commit(&Batch {
                        events: vec![DomainEvent::MachineState {
                            machine_id: if *on_a { "a" } else { "b" }.into(),
                            state,
                            reason,
                            job_id: (*job > 0).then_some(*job),
                        }],
                        ..Batch::default()
                    }, at).expect("state");
                }
                m.aggregate_history().await.expect("aggregate");
                // Inspections after the build re-count their records.
                for (u, (_, _, verdict, _)) in made.iter().zip(&units) {
                    let (result, reason) = match verdict {
                        0 => continue,
                        1 => (QcState::Pass, None),
                        2 => (QcState::Fail, Some("warping".to_string())),
                        _ => (QcState::Scrap, Some("layer_shift".to_string())),
                    };
                    m.inspect(&u.serial, QcInput { result, reason, note: None }, "op").await.expect("inspect");
                }
                // All history from 1970 on, up to the hour that holds now
                // (the open span would grow with now).
                let whole = (0, base + DAYS * 24 * HOUR_MS);
                let spans = windows.iter().map(|(a, b)| (base + a.min(b) * MIN, base + a.max(b) * MIN));
                // Windows around some units, so that units fall in the
                // partial hours at a window's edges, read unit by unit.
                let around = units.iter().take(4).map(|(end, ..)| {
                    let at = base + end * MIN;
                    (at.saturating_sub(25 * MIN).max(base), at + 25 * MIN)
                });
                for (from_ms, to_ms) in spans.chain(around).chain([whole]) {
                    let w = Window { from_ms, to_ms };
                    for id in [Some("a"), Some("b"), None] {
                        let got = m.metrics(Scope::Machine, id, w).expect("metrics");
                        let ms: Vec<&str> = id.map_or(vec!["a", "b"], |i| vec![i]);
                        let (t, q) = raw(&m, &ms, w, None);
                        prop_assert_eq!((got.time, got.quantities), (t, q), "{:?} {:?}", id, w);
                    }
                    for sku in [Some("tile"), Some("cube"), None] {
                        let got = m.metrics(Scope::Sku, sku, w).expect("metrics");
                        let (t, q) = raw(&m, &["a", "b"], w, Some(sku));
                        prop_assert_eq!((got.time, got.quantities), (t, q), "sku {:?} {:?}", sku, w);
                    }
                    for r in m.apc(w).expect("apc") {
                        let (t, q) = raw(&m, &["a", "b"], w, Some(Some(&r.sku)));
                        prop_assert_eq!((r.time, r.quantities), (t, q), "apc {} {:?}", r.sku, w);
                    }
                }
                m.shutdown().await;
                drop(m);
                let _ = std::fs::remove_dir_all(&dir);
                Ok(())
            })?;
        }
    }
}
