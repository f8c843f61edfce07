//! Metrics and APC over a year of history for 100 machines, and what the
//! metering reader costs a job's completion.
//!
//! 1. Writes a year (`MFD_BENCH_DAYS`, default 365) of production for
//!    `MFD_BENCH_MACHINES` (default 100) printers into a real sled store
//!    through `Store::commit`, as the daemon would have: every state
//!    change as a `MachineState` event at its own time (5-minute ticks),
//!    units with QC verdicts, production orders of 10 SKUs.
//! 2. Brings metering's aggregates up to date (`aggregate_history`, what
//!    the reader does at start) and times it.
//! 3. Times `GET /metrics` (`Metering::metrics`) per scope and window and
//!    `GET /apc` (`Metering::apc`, 10 SKUs × 1 class), 5 runs each, and
//!    reports peak and current RSS (with `MFD_BENCH_KEEP=1` a second run
//!    reuses the store, so its RSS is that of a process that only opens
//!    the store and queries it: run it at two history lengths to see
//!    whether memory grows with history).
//! 4. On a fresh store, times N job completions (the attempt, its
//!    `AttemptEnded` and a state change, committed and flushed) without
//!    and with the metering reader running, which makes a unit for each.
//!
//! `MFD_BENCH_KEEP=1 cargo bench -p microfactoryd --bench metering_year`
//! (the bench profile: optimised, as the daemon ships; see BENCHMARKS.md).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use microfactoryd::config::Config;
use microfactoryd::core::events::DomainEvent;
use microfactoryd::core::machine::{MachineState, StateReason};
use microfactoryd::core::model::{Attempt, AttemptOutcome};
use microfactoryd::factory::Factory;
use microfactoryd::metering::model::{
    Order, OrderJob, OrderState, QcRecord, QcState, Unit, serial,
};
use microfactoryd::metering::oee::Window;
use microfactoryd::metering::{Metering, Scope};
use microfactoryd::store::{Batch, Store};

const MIN: u64 = 60_000;
const HOUR: u64 = 60 * MIN;
const SKUS: u64 = 10;
const RUNS: usize = 5;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `VmHWM` and `VmRSS` of this process, MiB.
fn rss() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    (kb("VmHWM:"), kb("VmRSS:"))
}

/// xorshift64: the same year every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn pct(&mut self) -> u64 {
        self.next() % 100
    }
}

fn machine_id(i: u64) -> String {
    format!("p{i:03}")
}

fn sku(i: u64) -> String {
    format!("sku{i:02}")
}

/// Order id of a job: one order per SKU and week.
fn order_of(sku_i: u64, at: u64, start: u64) -> u64 {
    let week = (at - start) / (7 * 24 * HOUR);
    1 + week * SKUS + sku_i
}

struct Year {
    changes: Vec<(u64, u64, MachineState, StateReason, Option<u64>)>,
    units: Vec<Unit>,
    orders: BTreeMap<u64, Order>,
}

fn generate(machines: u64, start: u64, end: u64) -> Year {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut y = Year {
        changes: Vec::new(),
        units: Vec::new(),
        orders: BTreeMap::new(),
    };
    let mut job = 0u64;
    use MachineState as S;
    use StateReason as R;
    for m in 0..machines {
        let mut t = start + (m % 12) * 5 * MIN;
        y.changes.push((t, m, S::Idle, R::None, None));
        t += 10 * MIN;
        while t + 2 * HOUR < end {
            job += 1;
            let sku_i = rng.next() % SKUS;
            let o = order_of(sku_i, t, start);
            y.orders
                .entry(o)
                .or_insert_with(|| Order {
                    id: o,
                    sku: sku(sku_i),
                    quantity: u32::MAX,
                    due_ms: None,
                    priority: 0,
                    state: OrderState::Open,
                    created_ms: start,
                    file_id: format!("file-{sku_i}"),
                    units_per_job: 1,
                    planned_runtime_per_unit_s: 55.0 * 60.0,
                    auto_pass: false,
                    jobs: Vec::new(),
                    submitting: None,
                })
                .jobs
                .push(OrderJob {
                    job_id: job,
                    settled: true,
                });
            y.changes.push((t, m, S::Producing, R::None, Some(job)));
            let mut run = 60 * MIN;
            let roll = rng.pct();
            let failed = roll < 3;
            if failed {
                y.changes
                    .push((t + 20 * MIN, m, S::UnplannedDown, R::Fault, Some(job)));
                y.changes
                    .push((t + 50 * MIN, m, S::AwaitingOperator, R::Failed, Some(job)));
                run = 60 * MIN;
            } else if roll < 13 {
                y.changes
                    .push((t + 30 * MIN, m, S::Paused, R::OperatorPause, Some(job)));
                y.changes
                    .push((t + 40 * MIN, m, S::Producing, R::None, Some(job)));
                run = 70 * MIN;
            }
            let ended = t + run;
            if !failed {
                y.changes
                    .push((ended, m, S::AwaitingOperator, R::BedClear, Some(job)));
            }
            y.changes
                .push((ended + 15 * MIN, m, S::Idle, R::None, None));
            let verdict = rng.pct();
            let (qc, reason) = match verdict {
                _ if failed => (QcState::Scrap, Some("attempt_failed")),
                0..=89 => (QcState::Pass, None),
                90..=96 => (
                    QcState::Fail,
                    Some(if verdict.is_multiple_of(2) {
                        "warping"
                    } else {
                        "layer_shift"
                    }),
                ),
                _ => (QcState::Pending, None),
            };
            let n = y.units.len() as u64 + 1;
            y.units.push(Unit {
                serial: serial(n),
                sku: sku(sku_i),
                order_id: o,
                job_id: job,
                attempt: 1,
                index: 1,
                machine_id: machine_id(m),
                gcode_sha256: format!("sha-{sku_i}"),
                started_ms: Some(t),
                ended_ms: ended,
                planned_runtime_ms: 55 * MIN,
                credited_runtime_ms: if failed { 20 * MIN } else { 55 * MIN },
                qc,
                first_pass: (qc != QcState::Pending && !failed).then_some(qc == QcState::Pass),
                reworked: false,
                qc_history: if qc == QcState::Pending {
                    Vec::new()
                } else {
                    vec![QcRecord {
                        at_ms: ended + 20 * MIN,
                        result: qc,
                        reason: reason.map(str::to_string),
                        note: None,
                        by: if failed { "microfactoryd" } else { "op" }.into(),
                    }]
                },
            });
            t = ended + 35 * MIN;
        }
    }
    y.changes.sort_by_key(|c| c.0);
    y
}

fn write(store: &Store, y: Year) {
    let mut order_jobs = Vec::new();
    for o in y.orders.values() {
        order_jobs.extend(o.jobs.iter().map(|j| (j.job_id, o.id)));
    }
    store
        .commit(
            &Batch {
                orders: y.orders.into_values().collect(),
                ..Batch::default()
            },
            0,
        )
        .expect("orders");
    for chunk in order_jobs.chunks(5000) {
        store
            .commit(
                &Batch {
                    order_jobs: chunk.to_vec(),
                    ..Batch::default()
                },
                0,
            )
            .expect("order jobs");
    }
    let mut i = 0;
    while i < y.changes.len() {
        let at = y.changes[i].0;
        let mut events = Vec::new();
        while i < y.changes.len() && y.changes[i].0 == at {
            let (_, m, state, reason, job_id) = y.changes[i];
            events.push(DomainEvent::MachineState {
                machine_id: machine_id(m),
                state,
                reason,
                job_id,
            });
            i += 1;
        }
        store
            .commit(
                &Batch {
                    events,
                    ..Batch::default()
                },
                at,
            )
            .expect("states");
    }
    let n = y.units.len() as u64;
    for chunk in y.units.chunks(2000) {
        store
            .commit(
                &Batch {
                    units: chunk.to_vec(),
                    ..Batch::default()
                },
                0,
            )
            .expect("units");
    }
    store
        .commit(
            &Batch {
                unit_counter: Some(n),
                ..Batch::default()
            },
            0,
        )
        .expect("counter");
}

fn config(dir: &Path, machines: u64) -> PathBuf {
    let mut c = format!("data_dir = \"{}\"\n", dir.join("data").display());
    for s in 0..SKUS {
        c.push_str(&format!(
            "[apc.{}.fdm_printer]\nwindow = {{ min_units = 100 }}\nquality_ratio_min = 0.9\navailability_min = 0.5\noee_min = 0.4\n",
            sku(s)
        ));
    }
    for m in 0..machines {
        c.push_str(&format!(
            "[[machine]]\nid = \"{0}\"\nprofile = \"prusa-mk3s\"\nport = \"/dev/{0}\"\n",
            machine_id(m)
        ));
    }
    let p = dir.join("config.toml");
    std::fs::write(&p, c).expect("config");
    p
}

/// One timed query.
type Query<'a> = Box<dyn Fn() + 'a>;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The first (cold: sled has not cached the window's pages yet), min,
/// median and max of `RUNS` runs, ms.
fn time(f: impl Fn()) -> (f64, f64, f64, f64) {
    let mut t: Vec<f64> = (0..RUNS)
        .map(|_| {
            let s = Instant::now();
            f();
            ms(s.elapsed())
        })
        .collect();
    let first = t[0];
    t.sort_by(f64::total_cmp);
    (first, t[0], t[RUNS / 2], t[RUNS - 1])
}

async fn completions(dir: &Path, n: u64, reader: bool) -> (f64, f64, f64, f64) {
    let _ = std::fs::remove_dir_all(dir);
    let store = Store::open(dir).expect("open");
    let order = Order {
        id: 1,
        sku: sku(0),
        quantity: u32::try_from(n).unwrap_or(u32::MAX),
        due_ms: None,
        priority: 0,
        state: OrderState::Open,
        created_ms: 0,
        file_id: "f".into(),
        units_per_job: 1,
        planned_runtime_per_unit_s: 60.0,
        auto_pass: false,
        jobs: (1..=n)
            .map(|j| OrderJob {
                job_id: j,
                settled: false,
            })
            .collect(),
        submitting: None,
    };
    store
        .commit(
            &Batch {
                orders: vec![order],
                order_jobs: (1..=n).map(|j| (j, 1)).collect(),
                order_id_counter: Some(1),
                ..Batch::default()
            },
            0,
        )
        .expect("order");
    store.flush().await.expect("flush");
    let f = Factory::with_links(store.clone(), Vec::new(), 1 << 20, 10)
        .await
        .expect("factory");
    let m = Metering::new(f, &[], BTreeMap::new(), None);
    if reader {
        m.start();
    }
    let mut lat = Vec::new();
    let wall = Instant::now();
    for j in 1..=n {
        let at = now_ms();
        let batch = Batch {
            attempts: vec![Attempt {
                job_id: j,
                n: 1,
                machine_id: "p000".into(),
                start_line: 1,
                assigned_ms: at,
                started_ms: Some(at),
                ended_ms: Some(at),
                outcome: Some(AttemptOutcome::Completed),
                failure: None,
                lines_done: 100,
                last_acked_line: 100,
                stats: None,
            }],
            events: vec![
                DomainEvent::AttemptEnded {
                    job_id: j,
                    attempt: 1,
                    machine_id: "p000".into(),
                    outcome: AttemptOutcome::Completed,
                    lines_done: 100,
                },
                DomainEvent::MachineState {
                    machine_id: "p000".into(),
                    state: MachineState::AwaitingOperator,
                    reason: StateReason::BedClear,
                    job_id: Some(j),
                },
            ],
            ..Batch::default()
        };
        let s = Instant::now();
        store.commit(&batch, at).expect("commit");
        store.flush().await.expect("flush");
        lat.push(ms(s.elapsed()));
    }
    let wall = ms(wall.elapsed());
    if reader {
        // The reader made a unit for every completion.
        let deadline = Instant::now() + Duration::from_secs(60);
        while (store.units().expect("units").len() as u64) < n && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            store.units().expect("units").len() as u64,
            n,
            "a unit per completion"
        );
        m.shutdown().await;
    }
    lat.sort_by(f64::total_cmp);
    let mean = lat.iter().sum::<f64>() / lat.len() as f64;
    let pct = |p: f64| lat[((lat.len() as f64 - 1.0) * p) as usize];
    (mean, pct(0.5), pct(0.99), wall)
}

fn main() {
    // `cargo test --all-targets` (CI) runs this too, without `--bench`: a
    // smoke run of a few days proves it still works; the year is for
    // `cargo bench`.
    let full = std::env::args().any(|a| a == "--bench");
    let days = env("MFD_BENCH_DAYS", if full { 365 } else { 3 });
    let machines = env("MFD_BENCH_MACHINES", if full { 100 } else { 4 });
    let completions_n = env("MFD_BENCH_COMPLETIONS", if full { 500 } else { 20 });
    // MFD_BENCH_KEEP=1 keeps the store for the next run, which then
    // skips generating (so its RSS is the queries' own).
    let keep = env("MFD_BENCH_KEEP", 0) == 1;
    let root =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("metering-year-{days}d-{machines}m"));
    let reuse = keep && root.join("store").exists();
    if !reuse {
        let _ = std::fs::remove_dir_all(&root);
    }
    std::fs::create_dir_all(&root).expect("dir");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let end = now_ms() / (5 * MIN) * (5 * MIN) - HOUR;
        let start = end - days * 24 * HOUR;
        let store = Store::open(&root.join("store")).expect("open");
        let (hwm, rss_now) = rss();
        println!("RSS after opening the store: peak {hwm:.0} MiB, now {rss_now:.0} MiB");
        if reuse {
            println!("reusing the store of an earlier run ({days} days, {machines} machines)");
        } else {
            let s = Instant::now();
            let year = generate(machines, start, end);
            let (changes, units) = (year.changes.len(), year.units.len());
            write(&store, year);
            store.flush().await.expect("flush");
            println!(
                "generated {days} days, {machines} machines: {changes} state changes, {units} units in {:.1} s",
                s.elapsed().as_secs_f64()
            );
        }
        let checked = Config::load(&config(&root, machines)).expect("config");
        let f = Factory::with_links(store.clone(), Vec::new(), 1 << 20, 10)
            .await
            .expect("factory");
        let m = Metering::new(f, &checked.machines, checked.config.apc.clone(), None);
        let (hwm, rss_now) = rss();
        println!("RSS before aggregating: peak {hwm:.0} MiB, now {rss_now:.0} MiB");
        let s = Instant::now();
        m.aggregate_history().await.expect("aggregate");
        println!("aggregate_history: {:.1} s", s.elapsed().as_secs_f64());
        let (hwm, rss_now) = rss();
        println!("RSS after aggregating: peak {hwm:.0} MiB, now {rss_now:.0} MiB");

        let now = now_ms();
        let windows = [
            ("last day", Window { from_ms: now - 24 * HOUR, to_ms: now }),
            ("last 7 days", Window { from_ms: now - 7 * 24 * HOUR, to_ms: now }),
            ("last 30 days", Window { from_ms: now - 30 * 24 * HOUR, to_ms: now }),
            (
                "90 days mid-year, unaligned",
                Window {
                    from_ms: start + 100 * 24 * HOUR + 17 * MIN + 333,
                    to_ms: start + 190 * 24 * HOUR + 41 * MIN + 7,
                },
            ),
            ("whole history", Window { from_ms: 0, to_ms: u64::MAX }),
        ];
        println!("| query | window | first ms | min ms | median ms | max ms |");
        println!("|---|---|---|---|---|---|");
        let one = machine_id(machines / 2);
        for (name, w) in windows {
            let rows: [(&str, Query<'_>); 5] = [
                ("metrics machine (one)", Box::new(|| {
                    m.metrics(Scope::Machine, Some(&one), w).expect("metrics");
                })),
                ("metrics machine (all)", Box::new(|| {
                    m.metrics(Scope::Machine, None, w).expect("metrics");
                })),
                ("metrics sku (every product)", Box::new(|| {
                    m.metrics(Scope::Sku, None, w).expect("metrics");
                })),
                ("apc (10 SKUs × fdm_printer)", Box::new(|| {
                    let r = m.apc(w).expect("apc");
                    assert_eq!(r.len(), SKUS as usize);
                })),
                ("losses machine (all), not aggregated", Box::new(|| {
                    m.losses(Scope::Machine, None, w).expect("losses");
                })),
            ];
            for (q, f) in rows {
                if q.starts_with("losses") && name != "last day" {
                    continue;
                }
                let (first, lo, med, hi) = time(f);
                println!("| {q} | {name} | {first:.1} | {lo:.1} | {med:.1} | {hi:.1} |");
            }
        }
        let (hwm, rss_now) = rss();
        println!("RSS after the queries: peak {hwm:.0} MiB, now {rss_now:.0} MiB");
        drop(m);
        drop(store);

        for reader in [false, true, false, true] {
            let (mean, p50, p99, wall) =
                completions(&root.join("completions"), completions_n, reader).await;
            println!(
                "job completion commit+flush, {completions_n} jobs, metering reader {}: mean {mean:.2} ms, p50 {p50:.2} ms, p99 {p99:.2} ms, wall {wall:.0} ms",
                if reader { "running" } else { "off" }
            );
        }
    });
    if !keep {
        let _ = std::fs::remove_dir_all(&root);
    }
}
