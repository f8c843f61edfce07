//! Durable storage: records in sled, G-code content in files named by their
//! sha256. This module is the only one that touches sled, so durability can
//! be reasoned about (and tested by killing the process) in one place.
//!
//! sled 0.34 keeps recent writes in memory: a write is durable only after
//! [`Store::flush`]. Callers flush before they acknowledge anything.
//! Concurrent flushes are grouped here ([`GroupCommit`]): sled's own
//! `flush_async` can hang forever when several are awaited at once
//! (sled issue 1308, unfixed in 0.34.7), which stalled every request that
//! was flushing at that moment.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use serde::Serialize;
use serde::de::DeserializeOwned;
use thiserror::Error;

use crate::core::model::{Event, FileRecord, Job, MachineRecord, TokenRecord};

/// Storage failures. None of them is the caller's fault.
#[derive(Debug, Error)]
pub enum StoreError {
    /// sled reported an error (disk full, I/O error, corruption).
    #[error("database error: {0}")]
    Db(#[from] sled::Error),
    /// A record could not be decoded: written by an incompatible version.
    #[error("record {key} in {tree} is unreadable: {source}")]
    Corrupt {
        tree: &'static str,
        key: String,
        source: serde_json::Error,
    },
    /// File system error on the G-code store.
    #[error("file store: {0}")]
    Io(#[from] std::io::Error),
}

/// The database and the content-addressed file folder.
#[derive(Debug, Clone)]
pub struct Store {
    db: sled::Db,
    files: sled::Tree,
    jobs: sled::Tree,
    machines: sled::Tree,
    tokens: sled::Tree,
    events: sled::Tree,
    meta: sled::Tree,
    sessions: sled::Tree,
    blobs: PathBuf,
    commit: Arc<GroupCommit>,
    /// Decoded file records (content-addressed, so never changed once
    /// written): submissions and the scheduler look them up for every job,
    /// and decoding one with its pre-flight findings costs ~0.3 ms.
    file_cache: Arc<Mutex<HashMap<String, Arc<FileRecord>>>>,
}

/// Most decoded file records kept; past it the cache starts over.
const FILE_CACHE_MAX: usize = 64;

/// Group commit over sled's blocking flush: one flush runs at a time, and
/// it covers every caller that asked before it started, so callers that
/// queued behind it return without flushing again.
#[derive(Debug, Default)]
struct GroupCommit {
    /// Tickets handed out: a caller's writes precede its ticket.
    asked: AtomicU64,
    /// Highest ticket covered by a completed flush; held while flushing.
    done: tokio::sync::Mutex<u64>,
}

impl GroupCommit {
    async fn flush(&self, db: &sled::Db) -> Result<(), StoreError> {
        let ticket = self.asked.fetch_add(1, Ordering::SeqCst) + 1;
        let mut done = self.done.lock().await;
        if *done >= ticket {
            return Ok(());
        }
        // Everyone who has a ticket by now wrote before this flush starts.
        let covers = self.asked.load(Ordering::SeqCst);
        let db = db.clone();
        tokio::task::spawn_blocking(move || db.flush())
            .await
            .map_err(|e| StoreError::Io(std::io::Error::other(e)))??;
        *done = covers;
        Ok(())
    }
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    // Serialising our own plain records cannot fail (no maps with non-string
    // keys, no custom serialisers); an empty value would be caught on read.
    serde_json::to_vec(v).unwrap_or_default()
}

fn decode<T: DeserializeOwned>(
    tree: &'static str,
    key: &[u8],
    bytes: &[u8],
) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Corrupt {
        tree,
        key: String::from_utf8_lossy(key).into_owned(),
        source,
    })
}

impl Store {
    /// Opens (or creates) the store under `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)?;
        let blobs = dir.join("files");
        // Uploads cut short by a crash leave partial files nobody
        // acknowledged; start with an empty scratch folder.
        let _ = std::fs::remove_dir_all(blobs.join("tmp"));
        std::fs::create_dir_all(blobs.join("tmp"))?;
        let db = sled::Config::new().path(dir.join("db")).open()?;
        Ok(Self {
            files: db.open_tree("files")?,
            jobs: db.open_tree("jobs")?,
            machines: db.open_tree("machines")?,
            tokens: db.open_tree("tokens")?,
            events: db.open_tree("events")?,
            meta: db.open_tree("meta")?,
            sessions: db.open_tree("sessions")?,
            db,
            blobs,
            commit: Arc::default(),
            file_cache: Arc::default(),
        })
    }

    /// Makes every write so far durable. Call before acknowledging.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.commit.flush(&self.db).await
    }

    /// Where the content with this sha256 lives.
    pub fn blob_path(&self, id: &str) -> PathBuf {
        self.blobs.join(format!("{id}.gcode"))
    }

    /// Scratch folder for uploads in progress (same file system as the
    /// blobs, so the final rename is atomic).
    pub fn tmp_dir(&self) -> PathBuf {
        self.blobs.join("tmp")
    }

    /// The folder holding the blobs, to fsync after a rename.
    pub fn blob_dir(&self) -> &Path {
        &self.blobs
    }

    /// A fresh id, never reused even across crashes (sled persists its
    /// id generator ahead of use).
    pub fn next_id(&self) -> Result<u64, StoreError> {
        Ok(self.db.generate_id()? + 1)
    }

    /// The next job id: 1, 2, 3... so operators can say "job 12". Only
    /// ids of acknowledged (flushed) jobs are guaranteed never to repeat.
    pub fn next_job_id(&self) -> Result<u64, StoreError> {
        let v = self.meta.update_and_fetch("job_id", |old| {
            let n = old
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map_or(0, u64::from_be_bytes);
            Some((n + 1).to_be_bytes().to_vec())
        })?;
        Ok(v.and_then(|b| <[u8; 8]>::try_from(b.as_ref()).ok())
            .map_or(1, u64::from_be_bytes))
    }

    // ---- files ----

    /// Stores a file record.
    pub fn put_file(&self, f: &FileRecord) -> Result<(), StoreError> {
        self.file_cache().remove(&f.id);
        self.files.insert(f.id.as_bytes(), encode(f))?;
        Ok(())
    }

    fn file_cache(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<FileRecord>>> {
        self.file_cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// A file by id.
    pub fn file(&self, id: &str) -> Result<Option<Arc<FileRecord>>, StoreError> {
        if let Some(f) = self.file_cache().get(id) {
            return Ok(Some(Arc::clone(f)));
        }
        let Some(v) = self.files.get(id.as_bytes())? else {
            return Ok(None);
        };
        let f: Arc<FileRecord> = Arc::new(decode("files", id.as_bytes(), &v)?);
        let mut cache = self.file_cache();
        if cache.len() >= FILE_CACHE_MAX {
            cache.clear();
        }
        cache.insert(id.to_string(), Arc::clone(&f));
        Ok(Some(f))
    }

    /// All files.
    pub fn files(&self) -> Result<Vec<FileRecord>, StoreError> {
        self.files
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                decode("files", &k, &v)
            })
            .collect()
    }

    /// Forgets a file record (the blob is removed by the caller after the
    /// removal is flushed).
    pub fn remove_file(&self, id: &str) -> Result<bool, StoreError> {
        self.file_cache().remove(id);
        Ok(self.files.remove(id.as_bytes())?.is_some())
    }

    // ---- jobs ----

    /// Stores a job.
    pub fn put_job(&self, j: &Job) -> Result<(), StoreError> {
        self.jobs.insert(j.id.to_be_bytes(), encode(j))?;
        Ok(())
    }

    /// One job.
    pub fn job(&self, id: u64) -> Result<Option<Job>, StoreError> {
        let key = id.to_be_bytes();
        self.jobs
            .get(key)?
            .map(|v| decode("jobs", &key, &v))
            .transpose()
    }

    /// Every job, oldest first.
    pub fn jobs(&self) -> Result<Vec<Job>, StoreError> {
        self.jobs
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                decode("jobs", &k, &v)
            })
            .collect()
    }

    // ---- machines ----

    /// Stores a machine's operator state.
    pub fn put_machine(&self, id: &str, m: &MachineRecord) -> Result<(), StoreError> {
        self.machines.insert(id.as_bytes(), encode(m))?;
        Ok(())
    }

    /// A machine's operator state (default when never stored).
    pub fn machine(&self, id: &str) -> Result<MachineRecord, StoreError> {
        Ok(self
            .machines
            .get(id.as_bytes())?
            .map(|v| decode("machines", id.as_bytes(), &v))
            .transpose()?
            .unwrap_or_default())
    }

    // ---- tokens ----

    /// Stores a token under its hash.
    pub fn put_token(&self, hash: &str, t: &TokenRecord) -> Result<(), StoreError> {
        self.tokens.insert(hash.as_bytes(), encode(t))?;
        Ok(())
    }

    /// The token with this hash.
    pub fn token(&self, hash: &str) -> Result<Option<TokenRecord>, StoreError> {
        self.tokens
            .get(hash.as_bytes())?
            .map(|v| decode("tokens", hash.as_bytes(), &v))
            .transpose()
    }

    // ---- browser sessions ----

    /// Stores a session as daemons before session expiry did: the
    /// token's hash alone (now [`Store::put_session_record`]; kept to test
    /// that such sessions are refused).
    #[cfg(test)]
    pub fn put_session(&self, hash: &str, token_hash: &str) -> Result<(), StoreError> {
        self.sessions
            .insert(hash.as_bytes(), token_hash.as_bytes())?;
        Ok(())
    }

    /// Ends a session.
    pub fn remove_session(&self, hash: &str) -> Result<(), StoreError> {
        self.sessions.remove(hash.as_bytes())?;
        Ok(())
    }

    // ---- event log ----

    /// Appends to the event log; returns its sequence number.
    pub fn append_event(&self, e: &Event) -> Result<u64, StoreError> {
        let seq = self.next_id()?;
        self.events.insert(seq.to_be_bytes(), encode(e))?;
        Ok(seq)
    }

    /// Up to `limit` events after `after`, oldest first.
    pub fn events_after(&self, after: u64, limit: usize) -> Result<Vec<(u64, Event)>, StoreError> {
        self.events
            .range((after + 1).to_be_bytes()..)
            .take(limit)
            .map(|kv| {
                let (k, v) = kv?;
                let mut b = [0u8; 8];
                b.copy_from_slice(&k[..8.min(k.len())]);
                Ok((u64::from_be_bytes(b), decode("events", &k, &v)?))
            })
            .collect()
    }
}

// ---- tokens and sessions: listing, revoking, expiry (for the HTTP layer) ----

/// A browser session as stored: the token it stands for and when it was
/// opened, so that it can expire on the server whatever the cookie says.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct SessionRecord {
    /// sha256 of the token.
    pub token: String,
    /// When it was opened, ms since the Unix epoch.
    pub created_ms: u64,
}

impl Store {
    /// Stores a session with its opening time.
    pub fn put_session_record(&self, hash: &str, rec: &SessionRecord) -> Result<(), StoreError> {
        self.sessions.insert(hash.as_bytes(), encode(rec))?;
        Ok(())
    }

    /// A session; one stored by an older daemon (the token hash alone, no
    /// time) comes back with `created_ms` 0, so it counts as expired.
    pub fn session_record(&self, hash: &str) -> Result<Option<SessionRecord>, StoreError> {
        Ok(self.sessions.get(hash.as_bytes())?.map(|v| {
            serde_json::from_slice(&v).unwrap_or_else(|_| SessionRecord {
                token: String::from_utf8_lossy(&v).into_owned(),
                created_ms: 0,
            })
        }))
    }

    /// Every token as (hash, record), in hash order.
    pub fn tokens(&self) -> Result<Vec<(String, TokenRecord)>, StoreError> {
        self.tokens
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                Ok((
                    String::from_utf8_lossy(&k).into_owned(),
                    decode("tokens", &k, &v)?,
                ))
            })
            .collect()
    }

    /// Forgets a token; whether it existed.
    pub fn remove_token(&self, hash: &str) -> Result<bool, StoreError> {
        Ok(self.tokens.remove(hash.as_bytes())?.is_some())
    }

    /// Ends every session opened with the token of this hash; how many.
    pub fn remove_sessions_of(&self, token_hash: &str) -> Result<usize, StoreError> {
        let mut ended = 0;
        for kv in self.sessions.iter() {
            let (k, _) = kv?;
            let key = String::from_utf8_lossy(&k).into_owned();
            if self
                .session_record(&key)?
                .is_some_and(|s| s.token == token_hash)
            {
                self.sessions.remove(&k)?;
                ended += 1;
            }
        }
        Ok(ended)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::model::{JobProgress, JobState, Role};

    fn job(id: u64) -> Job {
        Job {
            id,
            name: "a".into(),
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
            start_line: 1,
            state: JobState::Queued,
            assigned_machine: None,
            created_ms: 0,
            started_ms: None,
            ended_ms: None,
            progress: JobProgress::default(),
            failure: None,
            history: vec![],
        }
    }

    #[tokio::test]
    async fn records_survive_reopening_and_ids_never_repeat() {
        let dir = std::env::temp_dir().join(format!("mfd-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let first;
        {
            let s = Store::open(&dir).expect("open");
            first = s.next_id().expect("id");
            s.put_job(&job(first)).expect("put");
            s.put_token(
                "h",
                &TokenRecord {
                    name: "n".into(),
                    role: Role::Viewer,
                    created_ms: 1,
                },
            )
            .expect("token");
            s.flush().await.expect("flush");
            // An upload a crash cut short.
            std::fs::write(s.tmp_dir().join("1.part"), b"G1 X").expect("partial");
        }
        let s = Store::open(&dir).expect("reopen");
        let left = std::fs::read_dir(s.tmp_dir()).expect("tmp").count();
        assert_eq!(left, 0, "partial uploads are removed at start");
        let jobs = s.jobs().expect("jobs");
        assert_eq!(jobs.len(), 1);
        assert_eq!(jobs[0].id, first);
        assert!(s.next_id().expect("id") > first);
        assert_eq!(s.token("h").expect("t").map(|t| t.role), Some(Role::Viewer));
        assert!(s.token("x").expect("t").is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn concurrent_flushes_all_complete_and_every_write_survives() {
        let dir = std::env::temp_dir().join(format!("mfd-store-gc-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        // On its own thread and runtime: a hung flush may block the runtime's
        // workers, so only an outside clock can report it.
        let (tx, rx) = std::sync::mpsc::channel();
        let d = dir.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(4)
                .enable_all()
                .build()
                .expect("runtime");
            let ids: Vec<u64> = rt.block_on(async {
                let s = Store::open(&d).expect("open");
                let tasks: Vec<_> = (0..64)
                    .map(|_| {
                        let s = s.clone();
                        tokio::spawn(async move {
                            let mut ids = Vec::new();
                            for _ in 0..20 {
                                let id = s.next_id().expect("id");
                                s.put_job(&job(id)).expect("put");
                                s.flush().await.expect("flush");
                                ids.push(id);
                            }
                            ids
                        })
                    })
                    .collect();
                futures_util::future::join_all(tasks)
                    .await
                    .into_iter()
                    .flat_map(|r| r.expect("task"))
                    .collect()
            });
            let _ = tx.send(ids);
        });
        let mut want = rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("concurrent flushes never completed");
        let s = Store::open(&dir).expect("reopen");
        let mut stored: Vec<u64> = s.jobs().expect("jobs").iter().map(|j| j.id).collect();
        stored.sort_unstable();
        want.sort_unstable();
        assert_eq!(stored, want);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
