//! How the jobs table keeps a job: its fields under short names, with
//! empty, zero and absent fields left out.
//!
//! A durable submission waits for a flush that writes its job, and sled
//! writes a leaf again in whole after every tenth change to it, so the
//! job's size is paid about twice per submission. The API's JSON of a new
//! job is about 680 bytes; this is about 280. It stays JSON with serde
//! defaults, so a field added later still reads old records, and every
//! short name also answers to the API's long one, so the records schema 3
//! and older wrote (the API's JSON) read as they are, without a
//! migration.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use super::{StoreError, codec};
use crate::core::model::{Failure, Job, JobProgress, JobState, Kind, PauseReason, Transition};

/// A job as stored. Borrows the job's strings when written.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Stored<'a> {
    #[serde(rename = "i", alias = "id")]
    id: u64,
    #[serde(rename = "n", alias = "name")]
    name: Cow<'a, str>,
    #[serde(rename = "f", alias = "file_id")]
    file_id: Cow<'a, str>,
    #[serde(rename = "b", alias = "batch_id")]
    batch_id: u64,
    #[serde(rename = "c", alias = "copy")]
    copy: u32,
    #[serde(rename = "cs", alias = "copies")]
    copies: u32,
    #[serde(
        rename = "pr",
        alias = "priority",
        default,
        skip_serializing_if = "is_zero"
    )]
    priority: i32,
    #[serde(rename = "q", alias = "seq")]
    seq: u64,
    #[serde(
        rename = "m",
        alias = "machine_id",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    machine_id: Option<Cow<'a, str>>,
    #[serde(
        rename = "k",
        alias = "kind",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    kind: Option<Kind>,
    #[serde(
        rename = "tg",
        alias = "tags",
        default,
        skip_serializing_if = "is_empty"
    )]
    tags: Cow<'a, [String]>,
    #[serde(
        rename = "x",
        alias = "expand_canned_cycles",
        default,
        skip_serializing_if = "is_zero"
    )]
    expand_canned_cycles: bool,
    #[serde(
        rename = "am",
        alias = "any_material",
        default,
        skip_serializing_if = "is_zero"
    )]
    any_material: bool,
    #[serde(rename = "sl", alias = "start_line")]
    start_line: u64,
    #[serde(rename = "s", alias = "state")]
    state: JobState,
    #[serde(
        rename = "a",
        alias = "assigned_machine",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    assigned_machine: Option<Cow<'a, str>>,
    #[serde(rename = "cr", alias = "created_ms")]
    created_ms: u64,
    #[serde(
        rename = "st",
        alias = "started_ms",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    started_ms: Option<u64>,
    #[serde(
        rename = "en",
        alias = "ended_ms",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    ended_ms: Option<u64>,
    #[serde(
        rename = "p",
        alias = "progress",
        default,
        skip_serializing_if = "is_zero"
    )]
    progress: Progress,
    #[serde(
        rename = "fl",
        alias = "failure",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    failure: Option<Cow<'a, Failure>>,
    #[serde(
        rename = "h",
        alias = "history",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    history: Vec<Step<'a>>,
    #[serde(
        rename = "at",
        alias = "attempt",
        default,
        skip_serializing_if = "is_zero"
    )]
    attempt: u32,
    #[serde(
        rename = "pa",
        alias = "pause",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pause: Option<Cow<'a, PauseReason>>,
    #[serde(
        rename = "aa",
        alias = "awaiting_ack",
        default,
        skip_serializing_if = "is_zero"
    )]
    awaiting_ack: bool,
}

/// [`JobProgress`] as stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
struct Progress {
    #[serde(
        rename = "d",
        alias = "lines_done",
        default,
        skip_serializing_if = "is_zero"
    )]
    lines_done: u64,
    #[serde(
        rename = "t",
        alias = "lines_total",
        default,
        skip_serializing_if = "is_zero"
    )]
    lines_total: u64,
    #[serde(
        rename = "p",
        alias = "percent",
        default,
        skip_serializing_if = "is_zero"
    )]
    percent: f64,
    #[serde(
        rename = "l",
        alias = "last_acked_line",
        default,
        skip_serializing_if = "is_zero"
    )]
    last_acked_line: u64,
    #[serde(
        rename = "e",
        alias = "elapsed_seconds",
        default,
        skip_serializing_if = "is_zero"
    )]
    elapsed_seconds: f64,
    #[serde(
        rename = "r",
        alias = "eta_seconds",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    eta_seconds: Option<f64>,
    #[serde(
        rename = "rs",
        alias = "resends",
        default,
        skip_serializing_if = "is_zero"
    )]
    resends: u64,
}

/// A [`Transition`] as stored.
#[derive(Debug, Serialize, Deserialize)]
struct Step<'a> {
    #[serde(rename = "t", alias = "at_ms")]
    at_ms: u64,
    #[serde(rename = "s", alias = "state")]
    state: JobState,
    #[serde(
        rename = "m",
        alias = "machine_id",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    machine_id: Option<Cow<'a, str>>,
    #[serde(
        rename = "n",
        alias = "note",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    note: Option<Cow<'a, str>>,
}

/// Whether a value is its type's default, which decoding puts back.
fn is_zero<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

fn is_empty(v: &[String]) -> bool {
    v.is_empty()
}

fn borrowed(s: &Option<String>) -> Option<Cow<'_, str>> {
    s.as_deref().map(Cow::Borrowed)
}

fn owned(s: Option<Cow<'_, str>>) -> Option<String> {
    s.map(Cow::into_owned)
}

impl<'a> Stored<'a> {
    /// The stored form of `j`, borrowing its strings. Every field is named:
    /// a field added to [`Job`] does not compile until it is stored.
    pub(super) fn of(j: &'a Job) -> Self {
        let Job {
            id,
            name,
            file_id,
            batch_id,
            copy,
            copies,
            priority,
            seq,
            machine_id,
            kind,
            tags,
            expand_canned_cycles,
            any_material,
            start_line,
            state,
            assigned_machine,
            created_ms,
            started_ms,
            ended_ms,
            progress,
            failure,
            history,
            attempt,
            pause,
            awaiting_ack,
        } = j;
        let JobProgress {
            lines_done,
            lines_total,
            percent,
            last_acked_line,
            elapsed_seconds,
            eta_seconds,
            resends,
        } = progress;
        Self {
            id: *id,
            name: Cow::Borrowed(name),
            file_id: Cow::Borrowed(file_id),
            batch_id: *batch_id,
            copy: *copy,
            copies: *copies,
            priority: *priority,
            seq: *seq,
            machine_id: borrowed(machine_id),
            kind: *kind,
            tags: Cow::Borrowed(tags),
            expand_canned_cycles: *expand_canned_cycles,
            any_material: *any_material,
            start_line: *start_line,
            state: *state,
            assigned_machine: borrowed(assigned_machine),
            created_ms: *created_ms,
            started_ms: *started_ms,
            ended_ms: *ended_ms,
            progress: Progress {
                lines_done: *lines_done,
                lines_total: *lines_total,
                percent: *percent,
                last_acked_line: *last_acked_line,
                elapsed_seconds: *elapsed_seconds,
                eta_seconds: *eta_seconds,
                resends: *resends,
            },
            failure: failure.as_ref().map(Cow::Borrowed),
            history: history
                .iter()
                .map(
                    |Transition {
                         at_ms,
                         state,
                         machine_id,
                         note,
                     }| Step {
                        at_ms: *at_ms,
                        state: *state,
                        machine_id: borrowed(machine_id),
                        note: borrowed(note),
                    },
                )
                .collect(),
            attempt: *attempt,
            pause: pause.as_ref().map(Cow::Borrowed),
            awaiting_ack: *awaiting_ack,
        }
    }

    /// The job this record stores.
    pub(super) fn into_job(self) -> Job {
        let Progress {
            lines_done,
            lines_total,
            percent,
            last_acked_line,
            elapsed_seconds,
            eta_seconds,
            resends,
        } = self.progress;
        Job {
            id: self.id,
            name: self.name.into_owned(),
            file_id: self.file_id.into_owned(),
            batch_id: self.batch_id,
            copy: self.copy,
            copies: self.copies,
            priority: self.priority,
            seq: self.seq,
            machine_id: owned(self.machine_id),
            kind: self.kind,
            tags: self.tags.into_owned(),
            expand_canned_cycles: self.expand_canned_cycles,
            any_material: self.any_material,
            start_line: self.start_line,
            state: self.state,
            assigned_machine: owned(self.assigned_machine),
            created_ms: self.created_ms,
            started_ms: self.started_ms,
            ended_ms: self.ended_ms,
            progress: JobProgress {
                lines_done,
                lines_total,
                percent,
                last_acked_line,
                elapsed_seconds,
                eta_seconds,
                resends,
            },
            failure: self.failure.map(Cow::into_owned),
            history: self
                .history
                .into_iter()
                .map(|s| Transition {
                    at_ms: s.at_ms,
                    state: s.state,
                    machine_id: owned(s.machine_id),
                    note: owned(s.note),
                })
                .collect(),
            attempt: self.attempt,
            pause: self.pause.map(Cow::into_owned),
            awaiting_ack: self.awaiting_ack,
        }
    }
}

/// A job's record.
pub(super) fn encode(j: &Job) -> Result<Vec<u8>, StoreError> {
    codec::encode("jobs", &Stored::of(j))
}

/// The job a record under `key` stores, in either naming.
pub(super) fn decode(key: &[u8], bytes: &[u8]) -> Result<Job, StoreError> {
    codec::decode::<Stored<'_>>("jobs", key, bytes).map(Stored::into_job)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A new job as a submission makes it: the core's test job with what
    /// a real file and submission give it.
    fn job() -> Job {
        let mut j = crate::core::testkit::job(41);
        j.name = "coupling_pla.gcode".into();
        j.file_id = "e94fd969cb455da894a0db9aa3978eb2fd2e8fe45168b99d01f5a8ebd0b2f2d1".into();
        j.kind = Some(Kind::Printer);
        j.created_ms = 1_796_079_636_064;
        j.progress.lines_total = 145_913;
        j.progress.eta_seconds = Some(3_255.892_149_112_988);
        j.transition(JobState::Queued, Some("submitted".into()), j.created_ms);
        j
    }

    #[test]
    fn a_new_job_is_stored_in_less_than_half_its_api_json() {
        let j = job();
        let stored = encode(&j).expect("encode");
        let api = serde_json::to_vec(&j).expect("json");
        assert!(
            stored.len() * 2 < api.len(),
            "{} of {}",
            stored.len(),
            api.len()
        );
        assert_eq!(decode(b"k", &stored).expect("decode"), j);
    }

    #[test]
    fn a_job_stored_as_the_api_names_it_reads_as_it_was() {
        // What schema 3 and older wrote: the version byte, the API's JSON.
        let mut j = job();
        j.state = JobState::Failed;
        j.failure = Some(Failure {
            reason: "thermal runaway".into(),
            line: Some(120),
        });
        j.pause = Some(PauseReason::ToolChange {
            tool: Some(1),
            line: 77,
        });
        j.attempt = 2;
        let old = codec::encode("jobs", &j).expect("encode");
        assert_eq!(decode(b"k", &old).expect("decode"), j);
        // Before `attempt`, `pause`, `awaiting_ack` and `any_material`
        // existed: their defaults.
        let mut v = serde_json::to_value(job()).expect("json");
        for f in ["attempt", "pause", "awaiting_ack", "any_material"] {
            v.as_object_mut().expect("object").remove(f);
        }
        let oldest = codec::wrap(&serde_json::to_vec(&v).expect("json"));
        assert_eq!(decode(b"k", &oldest).expect("decode"), job());
    }

    #[test]
    fn a_record_without_a_required_field_is_refused_naming_the_table() {
        let bytes = codec::wrap(br#"{"i":1,"n":"a"}"#);
        let err = decode(&1u64.to_be_bytes(), &bytes).expect_err("no file id");
        assert!(err.to_string().contains("jobs"), "{err}");
    }

    fn text() -> impl Strategy<Value = String> {
        "[a-z0-9 ._\"\\\\é-]{0,12}"
    }

    fn state() -> impl Strategy<Value = JobState> {
        prop::sample::select(JobState::ALL.to_vec())
    }

    prop_compose! {
        fn any_job()(
            ids in (any::<u64>(), any::<u64>(), any::<u64>()),
            counts in (any::<u32>(), any::<u32>(), any::<u32>()),
            priority in any::<i32>(),
            strings in (text(), text(), prop::option::of(text()), prop::option::of(text())),
            kind in prop::option::of(prop::sample::select(vec![Kind::Printer, Kind::Mill])),
            tags in prop::collection::vec(text(), 0..3),
            flags in (any::<bool>(), any::<bool>(), any::<bool>()),
            lines in (any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>()),
            times in (any::<u64>(), prop::option::of(any::<u64>()), prop::option::of(any::<u64>())),
            reals in (0.0..100.0f64, 0.0..1e6f64, prop::option::of(0.0..1e7f64)),
            state in state(),
            failure in prop::option::of((text(), prop::option::of(any::<u64>()))),
            history in prop::collection::vec(
                (any::<u64>(), state(), prop::option::of(text()), prop::option::of(text())), 0..4),
            pause in prop::option::of(prop_oneof![
                Just(PauseReason::Operator),
                (prop::option::of(any::<u32>()), any::<u64>())
                    .prop_map(|(tool, line)| PauseReason::ToolChange { tool, line }),
                (text(), any::<u64>()).prop_map(|(text, line)| PauseReason::Program { text, line }),
            ]),
        ) -> Job {
            Job {
                id: ids.0,
                name: strings.0,
                file_id: strings.1,
                batch_id: ids.1,
                copy: counts.0,
                copies: counts.1,
                priority,
                seq: ids.2,
                machine_id: strings.2,
                kind,
                tags,
                expand_canned_cycles: flags.0,
                any_material: flags.1,
                start_line: lines.0,
                state,
                assigned_machine: strings.3,
                created_ms: times.0,
                started_ms: times.1,
                ended_ms: times.2,
                progress: JobProgress {
                    lines_done: lines.1,
                    lines_total: lines.2,
                    percent: reals.0,
                    last_acked_line: lines.3,
                    elapsed_seconds: reals.1,
                    eta_seconds: reals.2,
                    resends: lines.4,
                },
                failure: failure.map(|(reason, line)| Failure { reason, line }),
                history: history
                    .into_iter()
                    .map(|(at_ms, state, machine_id, note)| Transition { at_ms, state, machine_id, note })
                    .collect(),
                attempt: counts.2,
                pause,
                awaiting_ack: flags.2,
            }
        }
    }

    proptest! {
        #[test]
        fn every_job_reads_back_as_it_was_stored_in_either_naming(j in any_job()) {
            let stored = encode(&j).expect("encode");
            prop_assert_eq!(&decode(b"k", &stored).expect("decode"), &j);
            let api = codec::encode("jobs", &j).expect("encode");
            prop_assert_eq!(&decode(b"k", &api).expect("decode"), &j);
            prop_assert!(stored.len() <= api.len());
        }
    }
}
