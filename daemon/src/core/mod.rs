//! The factory's pure core: records, domain events and the decisions that
//! change them. No tokio, sled, axum or clock in here: callers pass `now`.

pub mod attention;
pub mod console;
pub mod events;
pub mod factory;
pub mod forecast;
pub mod machine;
pub mod model;
pub mod routing;

/// Shared by the core's tests: real analyses of small programs.
#[cfg(test)]
pub(crate) mod testkit {
    use std::io::Write as _;

    use crate::core::model::{FileRecord, Job, JobProgress, JobState};

    /// A queued job `id` of file `f`, any machine, priority 0.
    pub fn job(id: u64) -> Job {
        Job {
            id,
            name: format!("job {id}"),
            file_id: "f".into(),
            batch_id: id,
            copy: 1,
            copies: 1,
            priority: 0,
            seq: id,
            machine_id: None,
            kind: None,
            tags: vec![],
            expand_canned_cycles: false,
            any_material: false,
            start_line: 1,
            state: JobState::Queued,
            assigned_machine: None,
            created_ms: 0,
            started_ms: None,
            ended_ms: None,
            progress: JobProgress::default(),
            failure: None,
            history: vec![],
            attempt: 0,
            pause: None,
            awaiting_ack: false,
        }
    }

    /// `text` analysed and pre-flighted as an upload would be (id `f`,
    /// name `part.gcode`).
    pub fn file_record(text: &str) -> FileRecord {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("mfd-core-{}-{n}.gcode", std::process::id()));
        std::fs::File::create(&path)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .expect("write");
        let mut f = std::fs::File::open(&path).expect("open");
        let (analysis, preflight_marlin, preflight_grbl) =
            crate::factory::files::analyze(&mut f).expect("analyze");
        let _ = std::fs::remove_file(&path);
        FileRecord {
            id: "f".into(),
            name: "part.gcode".into(),
            size: text.len() as u64,
            uploaded_ms: 0,
            analysis,
            preflight_marlin,
            preflight_grbl,
        }
    }
}
