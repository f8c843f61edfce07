//! Bringing a store written by an older daemon up to this one's layout,
//! once, when it opens; and refusing one written by a newer daemon.
//!
//! Schema 0 (the first daemon): plain JSON records, machine records with an
//! `awaiting_clear` flag, a job-only event log in the `events` tree keyed
//! by sled's global id generator, sessions as the bare token hash (they
//! become expired sessions: no opening time was kept).
//! Schema 1: every record versioned ([`super::codec`]), machine holds with
//! a reason, the domain log in `log` with its own sequence, attempts and
//! machine states in tables of their own.
//! Schema 2: metering's aggregates (`metering_hours`) in compact bytes,
//! units counted per machine and per SKU, with a month level. They are
//! derived from the state log and the units, so schema 1's are dropped
//! and metering builds them again when it starts (as for a store that
//! never had any). And the store's counters in the commit marker instead
//! of a meta key each (`journal`): they move there when the store opens
//! (`Store::open`), since the marker is read before this runs.
//! Schema 3: commits are journalled for undo (`journal/undo`) instead of
//! redo. Nothing to rewrite: a schema-2 redo journal is finished when the
//! store opens, before this runs; the number is raised so that a schema-2
//! daemon, which knows nothing of undo records, refuses the store rather
//! than leave a commit cut short half there.
//! Schema 4: a commit that only adds jobs and log records (a submission)
//! writes no undo record; the store trims jobs and log records past the
//! marker's counters when it opens. Nothing to rewrite; the number is
//! raised so that a schema-3 daemon, which does not trim, refuses it.

use serde::Deserialize;
use sled::transaction::ConflictableTransactionError;

use super::codec::{Layout, decode_legacy, encode, layout};
use super::{LOG_SEQ, SCHEMA, SCHEMA_VERSION, StoreError, Trees, codec, read_u64};

/// Meta key of the highest record layout any daemon wrote to this store.
const LAYOUT: &str = "layout";
use crate::core::events::{DomainEvent, LogRecord};
use crate::core::machine::StateReason;
use crate::core::model::{FileRecord, Hold, Job, JobState, MachineRecord, TokenRecord};

/// A machine record of schema 0.
#[derive(Debug, Deserialize)]
struct MachineV0 {
    disabled: bool,
    awaiting_clear: bool,
}

/// An event log entry of schema 0 (only job transitions were logged).
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum EventV0 {
    Job {
        job_id: u64,
        state: JobState,
        machine_id: Option<String>,
        note: Option<String>,
    },
    #[serde(other)]
    Other,
}

/// Refuses a store of a newer schema, writing nothing: called before the
/// journal is recovered, whose rules a newer daemon may have changed.
pub(super) fn refuse_newer_schema(t: &Trees) -> Result<Option<u64>, StoreError> {
    let schema = t.meta.get(SCHEMA)?.map(|v| read_u64(Some(v)));
    match schema {
        Some(found) if found > SCHEMA_VERSION => Err(StoreError::NewerSchema {
            found,
            supported: SCHEMA_VERSION,
        }),
        _ => Ok(schema),
    }
}

/// Checks the schema and migrates an older store; refuses a newer one.
pub(super) fn run(db: &sled::Db, t: &Trees) -> Result<(), StoreError> {
    match refuse_newer_schema(t)? {
        Some(SCHEMA_VERSION) => {}
        found => {
            if found.is_none() {
                let old_events = db.open_tree("events")?;
                to_v1(t, &old_events)?;
            }
            if found.is_none_or(|v| v < 2) {
                to_v2(t)?;
            }
            t.meta.insert(SCHEMA, &SCHEMA_VERSION.to_be_bytes())?;
            db.flush()?;
        }
    }
    // Left behind if a crash came between the migration and the drop.
    if db.tree_names().iter().any(|n| n.as_ref() == b"events") {
        db.drop_tree("events")?;
    }
    refuse_newer(t)
}

/// A store holding records in a layout this daemon cannot read is refused
/// now, not misread later. Every daemon raises `meta/layout` to the highest
/// record layout it writes before it writes one (this one writes
/// [`codec::VERSION`]), so the check costs one read however long the
/// history; a record that slipped past it is still refused when read
/// ([`codec::decode`] names its table and key).
fn refuse_newer(t: &Trees) -> Result<(), StoreError> {
    let written = read_u64(t.meta.get(LAYOUT)?);
    if written > u64::from(codec::VERSION) {
        return Err(StoreError::Newer {
            table: "meta",
            key: format!("layout (records up to layout {written})"),
            version: u8::try_from(written).unwrap_or(u8::MAX),
        });
    }
    if written < u64::from(codec::VERSION) {
        t.meta
            .insert(LAYOUT, &u64::from(codec::VERSION).to_be_bytes())?;
    }
    Ok(())
}

/// Re-encodes every record of schema 0, in one transaction: a crash in
/// the middle leaves the old store as it was, and the next start migrates
/// again.
fn to_v1(t: &Trees, old_events: &sled::Tree) -> Result<(), StoreError> {
    let files = legacy::<FileRecord>(&t.files, "files")?;
    let jobs = legacy::<Job>(&t.jobs, "jobs")?;
    let tokens = legacy::<TokenRecord>(&t.tokens, "tokens")?;
    let machines: Vec<(sled::IVec, MachineRecord)> = legacy::<MachineV0>(&t.machines, "machines")?
        .into_iter()
        .map(|(k, m)| {
            let hold = m.awaiting_clear.then_some(Hold {
                reason: StateReason::BedClear,
                job_id: None,
            });
            (
                k,
                MachineRecord {
                    disabled: m.disabled,
                    hold,
                },
            )
        })
        .collect();
    let mut sessions = Vec::new();
    for kv in t.sessions.iter() {
        let (k, v) = kv?;
        if layout(&v) == Layout::Legacy {
            // No opening time was kept: the session counts as expired and
            // the browser signs in once more.
            sessions.push((
                k,
                super::SessionRecord {
                    token: String::from_utf8_lossy(&v).into_owned(),
                    created_ms: 0,
                },
            ));
        }
    }
    // The old log had no times; entries keep their order.
    let mut log = Vec::new();
    for kv in old_events.iter() {
        let (k, v) = kv?;
        if let EventV0::Job {
            job_id,
            state,
            machine_id,
            note,
        } = decode_legacy::<EventV0>("events", &k, &v)?
        {
            log.push(DomainEvent::JobState {
                job_id,
                state,
                machine_id,
                attempt: 0,
                pause: None,
                note,
            });
        }
    }
    let trees = [
        &t.files,
        &t.jobs,
        &t.tokens,
        &t.machines,
        &t.sessions,
        &t.log,
        &t.meta,
    ];
    sled::Transactional::<StoreError>::transaction(&trees[..], |tx| {
        let abort = ConflictableTransactionError::Abort;
        for (k, f) in &files {
            tx[0].insert(k, encode("files", f).map_err(abort)?)?;
        }
        for (k, j) in &jobs {
            tx[1].insert(k, super::jobs::encode(j).map_err(abort)?)?;
        }
        for (k, tok) in &tokens {
            tx[2].insert(k, encode("tokens", tok).map_err(abort)?)?;
        }
        for (k, m) in &machines {
            tx[3].insert(k, encode("machines", m).map_err(abort)?)?;
        }
        for (k, s) in &sessions {
            tx[4].insert(k, encode("sessions", s).map_err(abort)?)?;
        }
        let mut seq = read_u64(tx[6].get(LOG_SEQ)?);
        for event in &log {
            seq += 1;
            let rec = LogRecord {
                seq,
                at_ms: 0,
                event: event.clone(),
            };
            tx[5].insert(&seq.to_be_bytes(), encode("log", &rec).map_err(abort)?)?;
        }
        tx[6].insert(LOG_SEQ, &seq.to_be_bytes())?;
        Ok(())
    })?;
    Ok(())
}

/// Drops schema 1's aggregates (JSON, units per whole factory). A crash
/// before the schema is raised drops them again at the next start.
fn to_v2(t: &Trees) -> Result<(), StoreError> {
    t.metering_hours.clear()?;
    Ok(())
}

/// The records of a table still in schema 0's plain JSON.
fn legacy<T: serde::de::DeserializeOwned>(
    tree: &sled::Tree,
    table: &'static str,
) -> Result<Vec<(sled::IVec, T)>, StoreError> {
    let mut out = Vec::new();
    for kv in tree.iter() {
        let (k, v) = kv?;
        if layout(&v) == Layout::Legacy {
            out.push((k.clone(), decode_legacy(table, &k, &v)?));
        }
    }
    Ok(out)
}
