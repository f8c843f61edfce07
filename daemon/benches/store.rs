//! What one durable submission costs the store: a job record and its log
//! event, written three ways, each with and without the flush that makes
//! it durable.
//!
//! - `two_inserts`: the first daemon's way: the job and the event as two
//!   separate inserts (the event keyed by sled's id generator), not atomic;
//!   flushed on the blocking pool, as `Store::flush` does.
//! - `transaction`: session 4's `Store::commit`: one sled transaction
//!   across the job, log and meta trees, the log's own sequence in it.
//! - `journal`: `Store::commit` today: an undo record (what the batch's
//!   keys held) by one plain insert, then its plain inserts and a commit
//!   marker.
//! - `one_tree_batch`: the alternative the foundation issue names: every
//!   record in one tree under prefixed keys, written by one atomic batch.
//!
//! `cargo bench -p microfactoryd --bench store`

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use microfactoryd::core::events::DomainEvent;
use microfactoryd::core::model::{Job, JobProgress, JobState, Transition};
use microfactoryd::store::{Batch, Store};

fn job(id: u64) -> Job {
    Job {
        id,
        name: "bracket_petg.gcode".into(),
        file_id: "30c05400d6b4e1f951e84740438f7b7b83b64aad9b2036da79d84c7b15ebad93".into(),
        batch_id: id,
        copy: 1,
        copies: 1,
        priority: 0,
        seq: id,
        machine_id: None,
        kind: None,
        tags: vec!["material:PETG".into()],
        expand_canned_cycles: false,
        any_material: false,
        start_line: 1,
        state: JobState::Queued,
        assigned_machine: None,
        created_ms: 1_796_000_000_000,
        started_ms: None,
        ended_ms: None,
        progress: JobProgress {
            lines_total: 198_000,
            eta_seconds: Some(3256.0),
            ..JobProgress::default()
        },
        failure: None,
        history: vec![Transition {
            at_ms: 1_796_000_000_000,
            state: JobState::Queued,
            machine_id: None,
            note: Some("submitted".into()),
        }],
        attempt: 0,
        pause: None,
        awaiting_ack: false,
    }
}

fn event(id: u64) -> DomainEvent {
    DomainEvent::JobQueued {
        job_id: id,
        file_id: "30c05400d6b4e1f951e84740438f7b7b83b64aad9b2036da79d84c7b15ebad93".into(),
        start_line: 1,
        priority: 0,
        note: Some("submitted".into()),
    }
}

fn dir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("mfd-bench-store-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn store(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let mut g = c.benchmark_group("submission");
    g.sample_size(20).measurement_time(Duration::from_secs(8));
    for flush in [false, true] {
        let tail = if flush { "+flush" } else { "" };

        let d = dir(&format!("two{flush}"));
        let db = sled::open(&d).expect("sled");
        let jobs = db.open_tree("jobs").expect("tree");
        let events = db.open_tree("events").expect("tree");
        let mut id = 0u64;
        g.bench_function(format!("two_inserts{tail}"), |b| {
            b.iter(|| {
                id += 1;
                let j = serde_json::to_vec(&job(id)).expect("json");
                jobs.insert(id.to_be_bytes(), j).expect("insert");
                let seq = db.generate_id().expect("id");
                let e = serde_json::to_vec(&event(id)).expect("json");
                events.insert(seq.to_be_bytes(), e).expect("insert");
                if flush {
                    let db = db.clone();
                    rt.block_on(async { tokio::task::spawn_blocking(move || db.flush()).await })
                        .expect("join")
                        .expect("flush");
                }
            })
        });
        drop((jobs, events, db));
        let _ = std::fs::remove_dir_all(&d);

        let d = dir(&format!("tx{flush}"));
        let s = Store::open(&d).expect("store");
        let mut id = 0u64;
        g.bench_function(format!("journal{tail}"), |b| {
            b.iter_batched(
                || {
                    id += 1;
                    Batch {
                        jobs: vec![job(id)],
                        events: vec![event(id)],
                        job_id_counter: Some(id),
                        ..Batch::default()
                    }
                },
                |batch| {
                    black_box(s.commit(&batch, 1).expect("commit"));
                    if flush {
                        rt.block_on(s.flush()).expect("flush");
                    }
                },
                BatchSize::SmallInput,
            )
        });
        drop(s);
        let _ = std::fs::remove_dir_all(&d);

        let d = dir(&format!("sledtx{flush}"));
        let db = sled::open(&d).expect("sled");
        let trees = [
            db.open_tree("jobs").expect("tree"),
            db.open_tree("log").expect("tree"),
            db.open_tree("meta").expect("tree"),
        ];
        let mut id = 0u64;
        g.bench_function(format!("transaction{tail}"), |b| {
            b.iter(|| {
                id += 1;
                let j = serde_json::to_vec(&job(id)).expect("json");
                let e = serde_json::to_vec(&event(id)).expect("json");
                sled::Transactional::<()>::transaction(&trees[..], |tx| {
                    tx[0].insert(&id.to_be_bytes(), j.clone())?;
                    let seq = tx[2].get(b"log_seq")?.map_or(0, |v| {
                        u64::from_be_bytes(v[..8].try_into().unwrap_or([0; 8]))
                    }) + 1;
                    tx[1].insert(&seq.to_be_bytes(), e.clone())?;
                    tx[2].insert(b"log_seq", &seq.to_be_bytes())?;
                    Ok(())
                })
                .expect("transaction");
                if flush {
                    db.flush().expect("flush");
                }
            })
        });
        drop((trees, db));
        let _ = std::fs::remove_dir_all(&d);

        let d = dir(&format!("batch{flush}"));
        let db = sled::open(&d).expect("sled");
        let all = db.open_tree("all").expect("tree");
        let mut id = 0u64;
        g.bench_function(format!("one_tree_batch{tail}"), |b| {
            b.iter(|| {
                id += 1;
                let mut batch = sled::Batch::default();
                let mut jk = b"j/".to_vec();
                jk.extend_from_slice(&id.to_be_bytes());
                batch.insert(jk, serde_json::to_vec(&job(id)).expect("json"));
                let mut lk = b"l/".to_vec();
                lk.extend_from_slice(&id.to_be_bytes());
                batch.insert(lk, serde_json::to_vec(&event(id)).expect("json"));
                batch.insert(&b"m/log_seq"[..], &id.to_be_bytes()[..]);
                all.apply_batch(batch).expect("batch");
                if flush {
                    db.flush().expect("flush");
                }
            })
        });
        drop((all, db));
        let _ = std::fs::remove_dir_all(&d);
    }
    g.finish();
}

criterion_group!(benches, store);
criterion_main!(benches);
