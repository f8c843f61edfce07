//! Durable storage: typed tables in sled, one durable event log read by
//! cursor, and G-code content in files named by their sha256. This module
//! is the only one that touches sled, so durability can be reasoned about
//! (and tested by killing the process) in one place.
//!
//! Every record is one version byte and JSON ([`codec`]); a store written
//! by an older daemon is migrated when it opens ([`migrate`]), one written
//! by a newer daemon is refused with a message that says so.
//!
//! Changes that belong together (a job, its attempt, the machine it
//! leaves, and the events that say so) are written by [`Store::commit`] as
//! one commit across tables ([`journal`]): after a crash either all of it
//! is there or none of it. The log's sequence numbers are a counter of
//! their own in that same commit, so log order is commit order.
//!
//! sled 0.34 keeps recent writes in memory: a write is durable only after
//! [`Store::flush`]. Callers flush before they acknowledge anything.
//! Concurrent flushes are grouped here ([`GroupCommit`]): sled's own
//! `flush_async` can hang forever when several are awaited at once
//! (sled issue 1308, unfixed in 0.34.7), which stalled every request that
//! was flushing at that moment.

pub mod codec;
mod jobs;
mod journal;
mod migrate;
mod unit_index;

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use serde::Serialize;
use serde::de::DeserializeOwned;
use sled::transaction::TransactionError;
use thiserror::Error;
use tokio::sync::watch;

use crate::commerce::inventory::{FgUnit, StockSku};
use crate::commerce::orders::{IdempotencyRecord, SalesOrder, Shipment};
use crate::commerce::shopify::Notification;
use crate::commerce::webhooks::model::{Delivery, DeliveryState, Receiver};
use crate::core::events::{DomainEvent, LogRecord};
use crate::core::machine::StateChange;
use crate::core::model::{Attempt, FileRecord, Job, MachineRecord, TokenRecord};
use crate::metering::compact;
use crate::metering::hourly::{Level, TimeAgg, UnitAgg, UnitKey};
use crate::metering::model::{Order, Product, Unit};
use crate::metering::summary::Summary;
use codec::{decode, encode, u64_key};
use journal::Fresh;

/// Storage failures. None of them is the caller's fault.
#[derive(Debug, Error)]
pub enum StoreError {
    /// sled reported an error (disk full, I/O error, corruption).
    #[error("database error: {0}")]
    Db(#[from] sled::Error),
    /// A record could not be decoded.
    #[error("record {key} in {table} is unreadable: {source}")]
    Corrupt {
        table: &'static str,
        key: String,
        source: serde_json::Error,
    },
    /// A record has no layout this daemon knows.
    #[error("record {key} in {table} is empty or in no known layout")]
    Unreadable { table: &'static str, key: String },
    /// A record written by a newer daemon: never guessed at.
    #[error(
        "record {key} in {table} was written by a newer microfactoryd (record layout {version}, \
         this one reads up to {}); run that version or restore a backup",
        codec::VERSION
    )]
    Newer {
        table: &'static str,
        key: String,
        version: u8,
    },
    /// The whole store is of a newer schema.
    #[error(
        "this data directory was written by a newer microfactoryd (schema {found}, this one \
         reads up to {supported}); run that version or restore a backup"
    )]
    NewerSchema { found: u64, supported: u64 },
    /// A record could not be encoded (a bug: our records always encode).
    #[error("cannot encode a record for {table}: {source}")]
    Encode {
        table: &'static str,
        source: serde_json::Error,
    },
    /// File system error on the G-code store.
    #[error("file store: {0}")]
    Io(#[from] std::io::Error),
    /// A commit failed half way and what it had written could not be
    /// undone either: the store must be reopened, which undoes it.
    #[error(
        "a commit failed ({source}) and undoing it failed too ({undo}); restart microfactoryd, \
         which finishes undoing it"
    )]
    HalfCommitted {
        source: Box<StoreError>,
        undo: Box<StoreError>,
    },
    /// A commit after a [`StoreError::HalfCommitted`]: refused, since the
    /// undo record it would overwrite is what a restart needs.
    #[error(
        "an earlier commit failed half way and could not be undone; restart microfactoryd, \
         which finishes undoing it"
    )]
    Unsettled,
    /// A plain write of a job no commit created: it would be lost at the
    /// next open, which trims jobs past the counter (a bug, never input).
    #[error(
        "job {id} was never committed (the last job id handed out is {last}); a job is created by a commit"
    )]
    NotCommitted { id: u64, last: u64 },
    /// Another process holds the database open.
    #[error(
        "the store {} is in use by another process (another microfactoryd, or its \
         `token` command, on the same data directory); stop it first",
        path.display()
    )]
    InUse { path: PathBuf },
}

/// How long [`Store::open`] waits for the database's lock: sled lets go of
/// it from a background thread a moment after the last handle is dropped,
/// so an open right after a close (a restart in the same process, a test)
/// can find it still held.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Opens the sled database at `path`, waiting up to [`LOCK_WAIT`] for its
/// lock.
fn open_db(path: &Path) -> Result<sled::Db, StoreError> {
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match sled::Config::new().path(path).open() {
            Ok(db) => return Ok(db),
            // sled 0.34 reports a held lock only in the message.
            Err(sled::Error::Io(e)) if e.to_string().contains("could not acquire lock") => {
                if std::time::Instant::now() >= deadline {
                    return Err(StoreError::InUse {
                        path: path.to_path_buf(),
                    });
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

impl From<TransactionError<StoreError>> for StoreError {
    fn from(e: TransactionError<StoreError>) -> Self {
        match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => Self::Db(e),
        }
    }
}

/// Key of a job.
fn job_key(id: u64) -> [u8; 8] {
    id.to_be_bytes()
}

/// Key of an attempt: its job, then its number, so one job's attempts are
/// one range.
fn attempt_key(job: u64, n: u32) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..8].copy_from_slice(&job.to_be_bytes());
    k[8..].copy_from_slice(&n.to_be_bytes());
    k
}

/// Key of a unit's place: job, attempt, index on the plate. One place
/// holds at most one unit, whatever a log reader replays.
fn unit_place_key(job: u64, attempt: u32, index: u32) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..12].copy_from_slice(&attempt_key(job, attempt));
    k[12..].copy_from_slice(&index.to_be_bytes());
    k
}

/// Key of a webhook delivery: its receiver, a zero byte, the log seq, so
/// one receiver's deliveries are one range in log order.
fn delivery_key(receiver: &str, seq: u64) -> Vec<u8> {
    state_key(receiver, seq)
}

/// The start of every key of one receiver's deliveries.
fn receiver_prefix(receiver: &str) -> Vec<u8> {
    let mut k = receiver.as_bytes().to_vec();
    k.push(0);
    k
}

/// Key of a machine state change: the machine, a zero byte, the log seq.
fn state_key(machine: &str, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(machine.len() + 9);
    k.extend_from_slice(machine.as_bytes());
    k.push(0);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// Meta keys of the counters in schema 1 (since schema 2 they are in the
/// commit marker: [`journal`]), read once when such a store first opens.
/// The log's last sequence number.
const LOG_SEQ: &str = "log_seq";
/// The job id counter (schema 1).
const JOB_ID: &str = "job_id";
/// The production order id counter (schema 1).
const ORDER_ID: &str = "order_id";
/// The unit serial counter (schema 1).
const UNIT_SERIAL: &str = "unit_serial";
/// Meta key of metering's running totals.
const METERING_SUMMARY: &str = "metering_summary";
/// `metering_hours` key of a machine's time aggregate.
fn time_agg_key(machine: &str, level: Level, index: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(machine.len() + 11);
    k.push(b'm');
    k.extend_from_slice(machine.as_bytes());
    k.push(0);
    k.push(level.byte());
    k.extend_from_slice(&index.to_be_bytes());
    k
}

/// `metering_hours` key of a unit aggregate: its machine or SKU, then
/// its level and index, so one key's records of a level are one range.
fn unit_agg_key(key: &UnitKey, level: Level, index: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.name().len() + 12);
    k.push(b'u');
    k.push(key.byte());
    k.extend_from_slice(key.name().as_bytes());
    k.push(0);
    k.push(level.byte());
    k.extend_from_slice(&index.to_be_bytes());
    k
}

/// An aggregate record's compact bytes, decoded by `f`.
fn agg_decode<T>(
    key: &[u8],
    v: &[u8],
    f: impl FnOnce(&[u8]) -> Option<T>,
) -> Result<T, StoreError> {
    let table = "metering_hours";
    f(codec::body(table, key, v)?).ok_or_else(|| StoreError::Unreadable {
        table,
        key: codec::show_key(key),
    })
}

/// `metering_hours` key of a machine's first unaggregated hour.
fn seal_key(machine: &str) -> Vec<u8> {
    let mut k = vec![b's'];
    k.extend_from_slice(machine.as_bytes());
    k
}

/// The sales order id counter (schema 1).
const SALES_ORDER_ID: &str = "sales_order_id";
/// The shipment id counter (schema 1).
const SHIPMENT_ID: &str = "shipment_id";
/// Meta key of the schema version.
const SCHEMA: &str = "schema";
/// The schema this daemon writes: 1 = versioned records, domain log,
/// attempts and machine states; 2 = metering's aggregates in compact
/// bytes, units counted per machine and per SKU, with months, and the
/// counters in the commit marker (a schema-1 daemon would read stale
/// counters from the meta keys, so it must refuse such a store); 3 =
/// commits journalled for undo, not redo (a schema-2 daemon would not
/// undo a commit cut short); 4 = a commit of only new jobs and log
/// records has no undo record, and opening trims what lies past the
/// marker's counters (a schema-3 daemon would not).
pub const SCHEMA_VERSION: u64 = 4;

/// A lock whose holder panicked leaves plain data behind: keep using it.
fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn read_u64(v: Option<impl AsRef<[u8]>>) -> u64 {
    v.map_or(0, |b| u64_key(b.as_ref()))
}

/// The trees, by table.
#[derive(Debug, Clone)]
struct Trees {
    files: sled::Tree,
    jobs: sled::Tree,
    attempts: sled::Tree,
    machines: sled::Tree,
    states: sled::Tree,
    tokens: sled::Tree,
    sessions: sled::Tree,
    log: sled::Tree,
    cursors: sled::Tree,
    meta: sled::Tree,
    /// The commit journal and its marker (`journal`).
    journal: sled::Tree,
    products: sled::Tree,
    orders: sled::Tree,
    /// job id → production order id.
    order_jobs: sled::Tree,
    units: sled::Tree,
    /// (job, attempt, index) → serial.
    unit_places: sled::Tree,
    /// Units by order, by SKU and end time, and by end time
    /// ([`unit_index`]): an order's progress and a window's units read
    /// only their own units, not the whole table.
    unit_index: sled::Tree,
    /// Metering's pre-aggregated history (`metering::hourly`): per machine
    /// and hour or day its time, per hour or day the units, and per
    /// machine the first hour not yet aggregated.
    metering_hours: sled::Tree,
    /// Commerce: sales order id → order.
    sales_orders: sled::Tree,
    /// Idempotency-Key → the first answer.
    idempotency: sled::Tree,
    /// Serial → finished unit.
    fg_units: sled::Tree,
    /// Shipment id → shipment.
    shipments: sled::Tree,
    /// SKU → inventory cursor and count corrections.
    stock_skus: sled::Tree,
    /// Webhook receivers by id.
    webhooks: sled::Tree,
    /// Webhook deliveries by (receiver, seq).
    deliveries: sled::Tree,
    /// The pending deliveries' keys only: what the deliverer scans.
    pending: sled::Tree,
    /// Shopify's fulfillment-order notifications by id.
    shopify: sled::Tree,
}

impl Trees {
    fn open(db: &sled::Db) -> Result<Self, StoreError> {
        Ok(Self {
            files: db.open_tree("files")?,
            jobs: db.open_tree("jobs")?,
            attempts: db.open_tree("attempts")?,
            machines: db.open_tree("machines")?,
            states: db.open_tree("machine_states")?,
            tokens: db.open_tree("tokens")?,
            sessions: db.open_tree("sessions")?,
            log: db.open_tree("log")?,
            cursors: db.open_tree("cursors")?,
            meta: db.open_tree("meta")?,
            journal: db.open_tree("journal")?,
            products: db.open_tree("products")?,
            orders: db.open_tree("orders")?,
            order_jobs: db.open_tree("order_jobs")?,
            units: db.open_tree("units")?,
            unit_places: db.open_tree("unit_places")?,
            unit_index: db.open_tree("unit_index")?,
            metering_hours: db.open_tree("metering_hours")?,
            sales_orders: db.open_tree("sales_orders")?,
            idempotency: db.open_tree("idempotency")?,
            fg_units: db.open_tree("fg_units")?,
            shipments: db.open_tree("shipments")?,
            stock_skus: db.open_tree("stock_skus")?,
            webhooks: db.open_tree("webhooks")?,
            deliveries: db.open_tree("webhook_deliveries")?,
            pending: db.open_tree("webhook_pending")?,
            shopify: db.open_tree("shopify_notifications")?,
        })
    }
}

/// Records that change together, written by [`Store::commit`] as one.
#[derive(Debug, Default)]
pub struct Batch {
    /// Jobs to write.
    pub jobs: Vec<Job>,
    /// Attempts to write.
    pub attempts: Vec<Attempt>,
    /// Machines' operator state to write.
    pub machines: Vec<(String, MachineRecord)>,
    /// Files to write.
    pub files: Vec<FileRecord>,
    /// Files to forget.
    pub removed_files: Vec<String>,
    /// Events to append, in order.
    pub events: Vec<DomainEvent>,
    /// The job id counter's new value, when ids were handed out.
    pub job_id_counter: Option<u64>,
    /// Products to write.
    pub products: Vec<Product>,
    /// Products to forget, by SKU.
    pub removed_products: Vec<String>,
    /// Production orders to write.
    pub orders: Vec<Order>,
    /// Jobs that belong to a production order: (job, order).
    pub order_jobs: Vec<(u64, u64)>,
    /// The order id counter's new value.
    pub order_id_counter: Option<u64>,
    /// Units to write. A new unit whose place (job, attempt, index)
    /// already holds another serial is skipped: creation is idempotent
    /// per place even if a reader hands the same log record in twice.
    pub units: Vec<Unit>,
    /// The unit serial counter's new value.
    pub unit_counter: Option<u64>,
    /// Metering's running totals (`/metrics`), written with the units and
    /// the cursor they count.
    pub metering_summary: Option<Summary>,
    /// Metering's aggregates of a machine's time: (machine, level, index).
    pub time_aggs: Vec<(String, Level, u64, TimeAgg)>,
    /// Metering's aggregates of units: (machine or SKU, level, index).
    pub unit_aggs: Vec<(UnitKey, Level, u64, UnitAgg)>,
    /// Per machine, the first hour whose time is not aggregated yet.
    pub machine_seals: Vec<(String, u64)>,
    /// Log readers' cursors to move, in the same transaction as what they
    /// wrote for the records up to there.
    pub cursors: Vec<(&'static str, u64)>,
    /// Sales orders to write.
    pub sales_orders: Vec<SalesOrder>,
    /// Idempotency keys with the answer they gave, with their order.
    pub idempotency: Vec<(String, IdempotencyRecord)>,
    /// Finished units to write.
    pub fg_units: Vec<FgUnit>,
    /// Shipments to write.
    pub shipments: Vec<Shipment>,
    /// Per-SKU inventory records to write.
    pub stock_skus: Vec<(String, StockSku)>,
    /// The sales order id counter's new value.
    pub sales_order_counter: Option<u64>,
    /// The shipment id counter's new value.
    pub shipment_counter: Option<u64>,
    /// Webhook receivers to write.
    pub webhooks: Vec<Receiver>,
    /// Webhook receivers to forget, with their pending deliveries.
    pub removed_webhooks: Vec<String>,
    /// Webhook deliveries to write (the pending index follows their state).
    pub deliveries: Vec<Delivery>,
    /// Shopify notifications to write.
    pub shopify_notifications: Vec<Notification>,
}

impl Batch {
    /// Nothing to write.
    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
            && self.attempts.is_empty()
            && self.machines.is_empty()
            && self.files.is_empty()
            && self.removed_files.is_empty()
            && self.events.is_empty()
            && self.job_id_counter.is_none()
            && self.products.is_empty()
            && self.removed_products.is_empty()
            && self.orders.is_empty()
            && self.order_jobs.is_empty()
            && self.order_id_counter.is_none()
            && self.units.is_empty()
            && self.unit_counter.is_none()
            && self.metering_summary.is_none()
            && self.time_aggs.is_empty()
            && self.unit_aggs.is_empty()
            && self.machine_seals.is_empty()
            && self.cursors.is_empty()
            && self.sales_orders.is_empty()
            && self.idempotency.is_empty()
            && self.fg_units.is_empty()
            && self.shipments.is_empty()
            && self.stock_skus.is_empty()
            && self.sales_order_counter.is_none()
            && self.shipment_counter.is_none()
            && self.webhooks.is_empty()
            && self.removed_webhooks.is_empty()
            && self.deliveries.is_empty()
            && self.shopify_notifications.is_empty()
    }
}

/// The database and the content-addressed file folder.
#[derive(Debug, Clone)]
pub struct Store {
    db: sled::Db,
    t: Trees,
    blobs: PathBuf,
    commit: Arc<GroupCommit>,
    /// Serialises commits (log order is commit order) and holds the last
    /// commit's number and the counters after it.
    commit_lock: Arc<Mutex<Committed>>,
    /// Decoded file records (content-addressed, so never changed once
    /// written): submissions and the scheduler look them up for every job,
    /// and decoding one with its pre-flight findings costs ~0.3 ms.
    file_cache: Arc<Mutex<HashMap<String, Arc<FileRecord>>>>,
    /// The last log sequence number made durable, for readers that follow
    /// the log.
    durable_tip: Arc<watch::Sender<u64>>,
    /// The last sequence number written (durable at the next flush).
    written_tip: Arc<AtomicU64>,
    /// The newest log records as committed, in order, so that readers
    /// following the tip get them without decoding what was just encoded:
    /// three readers decoding every record cost a third of a submission's
    /// CPU (BENCHMARKS.md).
    recent: Arc<Mutex<VecDeque<Arc<LogRecord>>>>,
    /// Tokens found by hash, kept until this store changes them: every
    /// API request looks its caller up, and need not read and decode the
    /// same record from the table each time. Only tokens that exist
    /// are kept (at most the tokens an operator created; unknown ones are
    /// looked up each time), and only this process writes the table (the
    /// `token` commands cannot open a store the daemon holds).
    token_cache: Arc<Mutex<HashMap<String, TokenRecord>>>,
}

/// The last commit and the counters it left, as its marker says.
#[derive(Debug, Default)]
struct Committed {
    n: u64,
    heads: journal::Heads,
    /// A commit failed half way and could not be undone: no commit may
    /// follow it until the store is reopened.
    broken: bool,
}

/// Most log records kept decoded: a few seconds of submissions at full
/// rate, far more than a reader lags between two reads.
const RECENT_MAX: usize = 4096;

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

impl Store {
    /// Opens (or creates) the store under `dir`, migrating a store written
    /// by an older daemon and refusing one written by a newer daemon.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)?;
        let blobs = dir.join("files");
        // Uploads cut short by a crash leave partial files nobody
        // acknowledged; start with an empty scratch folder.
        let _ = std::fs::remove_dir_all(blobs.join("tmp"));
        std::fs::create_dir_all(blobs.join("tmp"))?;
        let db = open_db(&dir.join("db"))?;
        let t = Trees::open(&db)?;
        migrate::refuse_newer_schema(&t)?;
        let (commits, heads) = journal::recover(&db, &t)?;
        migrate::run(&db, &t)?;
        let heads = match heads {
            Some(heads) => heads,
            None => {
                // Schema 1 kept the counters in meta keys: move them into
                // the marker, where every commit from now on keeps them.
                let heads = journal::Heads {
                    log_seq: read_u64(t.meta.get(LOG_SEQ)?),
                    job_id: read_u64(t.meta.get(JOB_ID)?),
                    order_id: read_u64(t.meta.get(ORDER_ID)?),
                    unit_serial: read_u64(t.meta.get(UNIT_SERIAL)?),
                    sales_order_id: read_u64(t.meta.get(SALES_ORDER_ID)?),
                    shipment_id: read_u64(t.meta.get(SHIPMENT_ID)?),
                };
                journal::mark(&t, commits, &heads)?;
                db.flush()?;
                heads
            }
        };
        unit_index::build(&db, &t)?;
        let tip = heads.log_seq;
        Ok(Self {
            db,
            t,
            blobs,
            commit: Arc::default(),
            commit_lock: Arc::new(Mutex::new(Committed {
                n: commits,
                heads,
                broken: false,
            })),
            file_cache: Arc::default(),
            token_cache: Arc::default(),
            durable_tip: Arc::new(watch::Sender::new(tip)),
            written_tip: Arc::new(AtomicU64::new(tip)),
            recent: Arc::default(),
        })
    }

    /// Makes every write so far durable. Call before acknowledging.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let written = self.written_tip.load(Ordering::SeqCst);
        self.commit.flush(&self.db).await?;
        self.durable_tip.send_if_modified(|tip| {
            let moved = written > *tip;
            *tip = (*tip).max(written);
            moved
        });
        Ok(())
    }

    /// Makes durable whatever was committed by now, unless a flush already
    /// has: an answer that shows a record (an order another client placed a
    /// moment ago) must not be sent before a crash could no longer lose it.
    /// Costs nothing when every commit is already durable.
    pub async fn settle(&self) -> Result<(), StoreError> {
        let written = self.written_tip.load(Ordering::SeqCst);
        if *self.durable_tip.borrow() >= written {
            return Ok(());
        }
        self.flush().await
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

    /// The job id counter: the last id handed out (ids are handed out by
    /// the core and the counter written in the same commit as the jobs).
    pub fn job_id_counter(&self) -> Result<u64, StoreError> {
        Ok(self.heads().job_id)
    }

    /// The counters as the last commit left them.
    fn heads(&self) -> journal::Heads {
        locked(&self.commit_lock).heads
    }

    // ---- the one commit ----

    /// Writes a batch atomically across tables and appends its events to
    /// the log; returns the log records as written. Durable after the next
    /// [`Store::flush`]. Commits are serialised here, which is what makes
    /// log order the order in which the changes were decided.
    ///
    /// Atomic by a journal rather than a sled transaction: first one plain
    /// insert of what the batch's keys hold now (the undo record), then
    /// the batch into its tables, then a commit marker. sled recovers a
    /// prefix of its writes (it stops at the first gap in the log's
    /// unstable tail), so after a crash either the marker is there (and
    /// all of the batch with it), or the undo record is ahead of the
    /// marker and [`Store::open`] puts the keys back as they were. A sled
    /// transaction gave the same guarantee at twice the cost of a durable
    /// submission (it seals an I/O buffer per commit; BENCHMARKS.md).
    pub fn commit(&self, batch: &Batch, now_ms: u64) -> Result<Vec<Arc<LogRecord>>, StoreError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let mut last = locked(&self.commit_lock);
        if last.broken {
            return Err(StoreError::Unsettled);
        }
        let mut heads = last.heads;
        let (w, records) = self.plan(batch, &mut heads, now_ms)?;
        let n = last.n + 1;
        if let Err(e) = journal::write(&self.db, &self.t, n, &last.heads, &heads, &w.ops) {
            last.broken = matches!(e, StoreError::HalfCommitted { .. });
            return Err(e);
        }
        *last = Committed {
            n,
            heads,
            broken: false,
        };
        self.written_tip.store(heads.log_seq, Ordering::SeqCst);
        self.remember(&records);
        drop(last);
        let mut cache = locked(&self.file_cache);
        for id in &batch.removed_files {
            cache.remove(id);
        }
        drop(cache);
        Ok(records)
    }

    /// The writes a batch makes and the log records it appends; moves the
    /// counters. Called under the commit lock.
    fn plan(
        &self,
        batch: &Batch,
        heads: &mut journal::Heads,
        now_ms: u64,
    ) -> Result<(journal::Writes<'_>, Vec<Arc<LogRecord>>), StoreError> {
        let t = &self.t;
        let mut w = journal::Writes::default();
        for f in &batch.files {
            w.put(&t.files, "files", f.id.as_bytes(), f)?;
        }
        for id in &batch.removed_files {
            w.remove(&t.files, id.as_bytes());
        }
        // Ids this commit hands out (past the counter before it, up to
        // the one it moves the counter to) are new jobs'.
        let new_jobs = heads.job_id + 1..=batch.job_id_counter.unwrap_or(0);
        for j in &batch.jobs {
            let stored = jobs::Stored::of(j);
            if new_jobs.contains(&j.id) {
                w.put_new(&t.jobs, "jobs", job_key(j.id), &stored, Fresh::Counted)?;
            } else {
                w.put(&t.jobs, "jobs", job_key(j.id), &stored)?;
            }
        }
        for a in &batch.attempts {
            w.put(&t.attempts, "attempts", attempt_key(a.job_id, a.n), a)?;
        }
        for (id, m) in &batch.machines {
            w.put(&t.machines, "machines", id.as_bytes(), m)?;
        }
        if let Some(n) = batch.job_id_counter {
            heads.job_id = n;
        }
        // The counter covers every job written, whatever the batch says:
        // the next open trims jobs past it.
        heads.job_id = batch.jobs.iter().map(|j| j.id).fold(heads.job_id, u64::max);
        if let Some(n) = batch.order_id_counter {
            heads.order_id = n;
        }
        if let Some(n) = batch.unit_counter {
            heads.unit_serial = n;
        }
        if let Some(summary) = &batch.metering_summary {
            w.put(&t.meta, "meta", METERING_SUMMARY, summary)?;
        }
        for (m, level, i, a) in &batch.time_aggs {
            w.raw(
                &t.metering_hours,
                time_agg_key(m, *level, *i),
                codec::wrap(&compact::encode_time(a)),
            );
        }
        for (key, level, i, a) in &batch.unit_aggs {
            w.raw(
                &t.metering_hours,
                unit_agg_key(key, *level, *i),
                codec::wrap(&compact::encode_units(key, a)),
            );
        }
        for (m, hour) in &batch.machine_seals {
            w.raw(&t.metering_hours, seal_key(m), hour.to_be_bytes());
        }
        for p in &batch.products {
            w.put(&t.products, "products", p.sku.as_bytes(), p)?;
        }
        for sku in &batch.removed_products {
            w.remove(&t.products, sku.as_bytes());
        }
        for o in &batch.orders {
            w.put(&t.orders, "orders", o.id.to_be_bytes(), o)?;
        }
        for (job, order) in &batch.order_jobs {
            w.raw(&t.order_jobs, job_key(*job), order.to_be_bytes());
        }
        for u in &batch.units {
            let place = unit_place_key(u.job_id, u.attempt, u.index);
            match t.unit_places.get(place)? {
                Some(held) if held.as_ref() != u.serial.as_bytes() => continue,
                Some(_) => {}
                None => w.raw(&t.unit_places, place, u.serial.as_bytes()),
            }
            w.put(&t.units, "units", u.serial.as_bytes(), u)?;
            for key in unit_index::keys(u) {
                w.raw(&t.unit_index, key, []);
            }
        }
        for (name, seq) in &batch.cursors {
            w.raw(&t.cursors, name.as_bytes(), seq.to_be_bytes());
        }
        for o in &batch.sales_orders {
            w.put(&t.sales_orders, "sales_orders", o.id.to_be_bytes(), o)?;
        }
        for (k, r) in &batch.idempotency {
            w.put(&t.idempotency, "idempotency", k.as_bytes(), r)?;
        }
        for u in &batch.fg_units {
            w.put(&t.fg_units, "fg_units", u.serial.as_bytes(), u)?;
        }
        for sh in &batch.shipments {
            w.put(&t.shipments, "shipments", sh.id.to_be_bytes(), sh)?;
        }
        for (sku, r) in &batch.stock_skus {
            w.put(&t.stock_skus, "stock_skus", sku.as_bytes(), r)?;
        }
        if let Some(n) = batch.sales_order_counter {
            heads.sales_order_id = n;
        }
        if let Some(n) = batch.shipment_counter {
            heads.shipment_id = n;
        }
        for r in &batch.webhooks {
            w.put(&t.webhooks, "webhooks", r.id.as_bytes(), r)?;
        }
        for id in &batch.removed_webhooks {
            w.remove(&t.webhooks, id.as_bytes());
            for kv in t.pending.scan_prefix(receiver_prefix(id)) {
                w.remove(&t.pending, kv?.0);
            }
        }
        for d in &batch.deliveries {
            let key = delivery_key(&d.receiver, d.seq);
            w.put(&t.deliveries, "webhook_deliveries", &key, d)?;
            if d.state == DeliveryState::Pending {
                w.raw(&t.pending, &key, []);
            } else {
                w.remove(&t.pending, &key);
            }
        }
        for n in &batch.shopify_notifications {
            w.put(&t.shopify, "shopify_notifications", n.id.to_be_bytes(), n)?;
        }
        let mut seq = heads.log_seq;
        let mut records = Vec::with_capacity(batch.events.len());
        for event in &batch.events {
            seq += 1;
            let rec = LogRecord {
                seq,
                at_ms: now_ms,
                event: event.clone(),
            };
            w.put_new(&t.log, "log", seq.to_be_bytes(), &rec, Fresh::Counted)?;
            if let DomainEvent::MachineState {
                machine_id,
                state,
                reason,
                job_id,
            } = event
            {
                let change = StateChange {
                    at_ms: now_ms,
                    state: *state,
                    reason: *reason,
                    job_id: *job_id,
                    seq,
                };
                w.put_new(
                    &t.states,
                    "machine_states",
                    state_key(machine_id, seq),
                    &change,
                    Fresh::Yes,
                )?;
            }
            records.push(Arc::new(rec));
        }
        heads.log_seq = seq;
        Ok((w, records))
    }

    // ---- files ----

    /// A file by id.
    pub fn file(&self, id: &str) -> Result<Option<Arc<FileRecord>>, StoreError> {
        if let Some(f) = locked(&self.file_cache).get(id) {
            return Ok(Some(Arc::clone(f)));
        }
        let Some(v) = self.t.files.get(id.as_bytes())? else {
            return Ok(None);
        };
        let f: Arc<FileRecord> = Arc::new(decode("files", id.as_bytes(), &v)?);
        let mut cache = locked(&self.file_cache);
        if cache.len() >= FILE_CACHE_MAX {
            cache.clear();
        }
        cache.insert(id.to_string(), Arc::clone(&f));
        Ok(Some(f))
    }

    /// All files.
    pub fn files(&self) -> Result<Vec<FileRecord>, StoreError> {
        all(&self.t.files, "files")
    }

    // ---- jobs and attempts ----

    /// Stores a job on its own (progress, at most once a second); changes
    /// that other records or events go with use [`Store::commit`].
    pub fn put_job(&self, j: &Job) -> Result<(), StoreError> {
        let last = self.heads().job_id;
        if j.id > last {
            return Err(StoreError::NotCommitted { id: j.id, last });
        }
        self.t.jobs.insert(job_key(j.id), jobs::encode(j)?)?;
        Ok(())
    }

    /// One job.
    pub fn job(&self, id: u64) -> Result<Option<Job>, StoreError> {
        let key = job_key(id);
        self.t
            .jobs
            .get(key)?
            .map(|v| jobs::decode(&key, &v))
            .transpose()
    }

    /// Every job, oldest first.
    pub fn jobs(&self) -> Result<Vec<Job>, StoreError> {
        Ok(all::<jobs::Stored<'_>>(&self.t.jobs, "jobs")?
            .into_iter()
            .map(jobs::Stored::into_job)
            .collect())
    }

    /// A job's attempts, first first.
    pub fn attempts(&self, job: u64) -> Result<Vec<Attempt>, StoreError> {
        self.t
            .attempts
            .scan_prefix(job_key(job))
            .map(|kv| {
                let (k, v) = kv?;
                decode("attempts", &k, &v)
            })
            .collect()
    }

    // ---- machines ----

    /// A machine's operator state (default when never stored).
    pub fn machine(&self, id: &str) -> Result<MachineRecord, StoreError> {
        Ok(self
            .t
            .machines
            .get(id.as_bytes())?
            .map(|v| decode("machines", id.as_bytes(), &v))
            .transpose()?
            .unwrap_or_default())
    }

    /// A machine's state changes with `at_ms` in `from..=to`, oldest first,
    /// preceded by the change in force at `from` (so the first entry says
    /// what the machine was doing when the span began).
    pub fn machine_states(
        &self,
        machine: &str,
        from: u64,
        to: u64,
    ) -> Result<Vec<StateChange>, StoreError> {
        let mut prefix = machine.as_bytes().to_vec();
        prefix.push(0);
        // Newest first, stopping at the change in force at `from`: a
        // recent window reads only its own changes, not the machine's
        // whole history (changes are in time order, as commits are).
        let mut out: Vec<StateChange> = Vec::new();
        for kv in self.t.states.scan_prefix(&prefix).rev() {
            let (k, v) = kv?;
            let c: StateChange = decode("machine_states", &k, &v)?;
            if c.at_ms > to {
                continue;
            }
            let in_force_at_from = c.at_ms < from;
            out.push(c);
            if in_force_at_from {
                break;
            }
        }
        out.reverse();
        Ok(out)
    }

    /// The last recorded state change of a machine.
    pub fn last_machine_state(&self, machine: &str) -> Result<Option<StateChange>, StoreError> {
        let mut prefix = machine.as_bytes().to_vec();
        prefix.push(0);
        match self.t.states.scan_prefix(&prefix).next_back() {
            Some(kv) => {
                let (k, v) = kv?;
                Ok(Some(decode("machine_states", &k, &v)?))
            }
            None => Ok(None),
        }
    }

    // ---- tokens ----

    /// Stores a token under its hash.
    pub fn put_token(&self, hash: &str, t: &TokenRecord) -> Result<(), StoreError> {
        let mut cache = locked(&self.token_cache);
        self.t
            .tokens
            .insert(hash.as_bytes(), encode("tokens", t)?)?;
        cache.remove(hash);
        Ok(())
    }

    /// The token with this hash.
    pub fn token(&self, hash: &str) -> Result<Option<TokenRecord>, StoreError> {
        // Held while reading the table too, so a removal cannot slip
        // between the read and the cache.
        let mut cache = locked(&self.token_cache);
        if let Some(t) = cache.get(hash) {
            return Ok(Some(t.clone()));
        }
        let found: Option<TokenRecord> = self
            .t
            .tokens
            .get(hash.as_bytes())?
            .map(|v| decode("tokens", hash.as_bytes(), &v))
            .transpose()?;
        if let Some(t) = &found {
            cache.insert(hash.to_string(), t.clone());
        }
        Ok(found)
    }

    // ---- browser sessions ----

    /// Stores a session as daemons before session expiry did: the
    /// token's hash alone (now [`Store::put_session_record`]; kept to test
    /// that such sessions are refused).
    #[cfg(test)]
    pub fn put_session(&self, hash: &str, token_hash: &str) -> Result<(), StoreError> {
        self.t
            .sessions
            .insert(hash.as_bytes(), encode("sessions", &token_hash)?)?;
        Ok(())
    }

    /// Ends a session.
    pub fn remove_session(&self, hash: &str) -> Result<(), StoreError> {
        self.t.sessions.remove(hash.as_bytes())?;
        Ok(())
    }

    // ---- products, production orders and units (metering) ----

    /// A product by SKU.
    pub fn product(&self, sku: &str) -> Result<Option<Product>, StoreError> {
        self.t
            .products
            .get(sku.as_bytes())?
            .map(|v| decode("products", sku.as_bytes(), &v))
            .transpose()
    }

    /// Every product, by SKU.
    pub fn products(&self) -> Result<Vec<Product>, StoreError> {
        all(&self.t.products, "products")
    }

    /// A production order.
    pub fn order(&self, id: u64) -> Result<Option<Order>, StoreError> {
        let key = id.to_be_bytes();
        self.t
            .orders
            .get(key)?
            .map(|v| decode("orders", &key, &v))
            .transpose()
    }

    /// Every production order, oldest first.
    pub fn orders(&self) -> Result<Vec<Order>, StoreError> {
        all(&self.t.orders, "orders")
    }

    /// The production order a job belongs to.
    pub fn order_of_job(&self, job: u64) -> Result<Option<u64>, StoreError> {
        Ok(self.t.order_jobs.get(job_key(job))?.map(|v| u64_key(&v)))
    }

    /// The order id counter: the last id handed out.
    pub fn order_id_counter(&self) -> Result<u64, StoreError> {
        Ok(self.heads().order_id)
    }

    /// A unit by serial.
    pub fn unit(&self, serial: &str) -> Result<Option<Unit>, StoreError> {
        self.t
            .units
            .get(serial.as_bytes())?
            .map(|v| decode("units", serial.as_bytes(), &v))
            .transpose()
    }

    /// Every unit, by serial (so in the order they were made).
    pub fn units(&self) -> Result<Vec<Unit>, StoreError> {
        all(&self.t.units, "units")
    }

    /// The units of a production order, in the order they were made.
    pub fn units_of_order(&self, order: u64) -> Result<Vec<Unit>, StoreError> {
        self.indexed_units(unit_index::order_prefix(order), None)
    }

    /// The units of a product that ended in `from..to`, in end order.
    pub fn units_of_sku(&self, sku: &str, from: u64, to: u64) -> Result<Vec<Unit>, StoreError> {
        self.indexed_units(unit_index::sku_prefix(sku), Some((from, to)))
    }

    /// Whether any unit of a product exists, reading one index key.
    pub fn sku_has_units(&self, sku: &str) -> Result<bool, StoreError> {
        Ok(self
            .t
            .unit_index
            .scan_prefix(unit_index::sku_prefix(sku))
            .next()
            .transpose()?
            .is_some())
    }

    /// A machine's time aggregates of `level` with index in `from..to`.
    pub fn time_aggs(
        &self,
        machine: &str,
        level: Level,
        from: u64,
        to: u64,
    ) -> Result<Vec<(u64, TimeAgg)>, StoreError> {
        if from >= to {
            return Ok(Vec::new());
        }
        let prefix_len = time_agg_key(machine, level, 0).len() - 8;
        self.t
            .metering_hours
            .range(time_agg_key(machine, level, from)..time_agg_key(machine, level, to))
            .map(|kv| {
                let (k, v) = kv?;
                Ok((
                    u64_key(&k[prefix_len..]),
                    agg_decode(&k, &v, compact::decode_time)?,
                ))
            })
            .collect()
    }

    /// The unit aggregates of `key` and `level` with index in `from..to`.
    pub fn unit_aggs(
        &self,
        key: &UnitKey,
        level: Level,
        from: u64,
        to: u64,
    ) -> Result<Vec<(u64, UnitAgg)>, StoreError> {
        if from >= to {
            return Ok(Vec::new());
        }
        let prefix_len = unit_agg_key(key, level, 0).len() - 8;
        self.t
            .metering_hours
            .range(unit_agg_key(key, level, from)..unit_agg_key(key, level, to))
            .map(|kv| {
                let (k, v) = kv?;
                Ok((
                    u64_key(&k[prefix_len..]),
                    agg_decode(&k, &v, |b| compact::decode_units(key, b))?,
                ))
            })
            .collect()
    }

    /// The SKUs that have unit aggregates: one seek per SKU, past each
    /// one's records.
    pub fn unit_agg_skus(&self) -> Result<Vec<String>, StoreError> {
        let prefix = [b'u', UnitKey::Sku(String::new()).byte()];
        let mut from = prefix.to_vec();
        let mut out = Vec::new();
        while let Some((k, _)) = self
            .t
            .metering_hours
            .range(from.as_slice()..)
            .next()
            .transpose()?
        {
            let Some(rest) = k.strip_prefix(&prefix[..]) else {
                break;
            };
            let name = rest.split(|b| *b == 0).next().unwrap_or_default();
            out.push(String::from_utf8_lossy(name).into_owned());
            from = [&prefix[..], name, &[1]].concat();
        }
        Ok(out)
    }

    /// The first hour of a machine whose time is not aggregated (`None`:
    /// none is).
    pub fn machine_seal(&self, machine: &str) -> Result<Option<u64>, StoreError> {
        Ok(self
            .t
            .metering_hours
            .get(seal_key(machine))?
            .map(|v| u64_key(&v)))
    }

    /// The first recorded state change of a machine.
    pub fn first_machine_state(&self, machine: &str) -> Result<Option<StateChange>, StoreError> {
        let mut prefix = machine.as_bytes().to_vec();
        prefix.push(0);
        match self.t.states.scan_prefix(&prefix).next() {
            Some(kv) => {
                let (k, v) = kv?;
                Ok(Some(decode("machine_states", &k, &v)?))
            }
            None => Ok(None),
        }
    }

    /// Every unit that ended in `from..to`, in end order.
    pub fn units_between(&self, from: u64, to: u64) -> Result<Vec<Unit>, StoreError> {
        self.indexed_units(unit_index::time_prefix(), Some((from, to)))
    }

    /// The units an index range names: under `prefix`, and when `ends` is
    /// given, the end-time part of the key in `from..to`.
    fn indexed_units(
        &self,
        prefix: Vec<u8>,
        ends: Option<(u64, u64)>,
    ) -> Result<Vec<Unit>, StoreError> {
        let serials: Vec<Vec<u8>> = match ends {
            None => self
                .t
                .unit_index
                .scan_prefix(&prefix)
                .keys()
                .map(|k| Ok(k?[prefix.len()..].to_vec()))
                .collect::<Result<_, StoreError>>()?,
            Some((from, to)) => {
                let (lo, hi) = unit_index::time_range(&prefix, from, to);
                self.t
                    .unit_index
                    .range(lo..hi)
                    .keys()
                    .map(|k| Ok(k?[prefix.len() + 8..].to_vec()))
                    .collect::<Result<_, StoreError>>()?
            }
        };
        let mut out = Vec::with_capacity(serials.len());
        for serial in serials {
            if let Some(v) = self.t.units.get(&serial)? {
                out.push(decode("units", &serial, &v)?);
            }
        }
        Ok(out)
    }

    /// The serial of the unit made in this place (job, attempt, index on
    /// the plate), if one was.
    pub fn unit_at(
        &self,
        job: u64,
        attempt: u32,
        index: u32,
    ) -> Result<Option<String>, StoreError> {
        Ok(self
            .t
            .unit_places
            .get(unit_place_key(job, attempt, index))?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// Metering's running totals, if it has stored them yet.
    pub fn metering_summary(&self) -> Result<Option<Summary>, StoreError> {
        self.t
            .meta
            .get(METERING_SUMMARY)?
            .map(|v| decode("meta", METERING_SUMMARY.as_bytes(), &v))
            .transpose()
    }

    /// The unit serial counter: the last serial number handed out.
    pub fn unit_counter(&self) -> Result<u64, StoreError> {
        Ok(self.heads().unit_serial)
    }

    // ---- commerce: sales orders, finished goods, shipments ----

    /// Every sales order, oldest first.
    pub fn sales_orders(&self) -> Result<Vec<SalesOrder>, StoreError> {
        all(&self.t.sales_orders, "sales_orders")
    }

    /// Every idempotency key with its first answer.
    pub fn idempotency_records(&self) -> Result<Vec<(String, IdempotencyRecord)>, StoreError> {
        keyed(&self.t.idempotency, "idempotency")
    }

    /// Every finished unit, by serial.
    pub fn fg_units(&self) -> Result<Vec<FgUnit>, StoreError> {
        all(&self.t.fg_units, "fg_units")
    }

    /// Every shipment, oldest first.
    pub fn shipments(&self) -> Result<Vec<Shipment>, StoreError> {
        all(&self.t.shipments, "shipments")
    }

    /// Every SKU's inventory record.
    pub fn stock_skus(&self) -> Result<Vec<(String, StockSku)>, StoreError> {
        keyed(&self.t.stock_skus, "stock_skus")
    }

    /// The sales order and shipment id counters: the last ids handed out.
    pub fn commerce_counters(&self) -> Result<(u64, u64), StoreError> {
        let h = self.heads();
        Ok((h.sales_order_id, h.shipment_id))
    }

    // ---- webhooks (commerce) ----

    /// Every webhook receiver, by id.
    pub fn webhooks(&self) -> Result<Vec<Receiver>, StoreError> {
        all(&self.t.webhooks, "webhooks")
    }

    /// One webhook receiver.
    pub fn webhook(&self, id: &str) -> Result<Option<Receiver>, StoreError> {
        self.t
            .webhooks
            .get(id.as_bytes())?
            .map(|v| decode("webhooks", id.as_bytes(), &v))
            .transpose()
    }

    /// One delivery.
    pub fn delivery(&self, receiver: &str, seq: u64) -> Result<Option<Delivery>, StoreError> {
        let key = delivery_key(receiver, seq);
        self.t
            .deliveries
            .get(&key)?
            .map(|v| decode("webhook_deliveries", &key, &v))
            .transpose()
    }

    /// A receiver's latest `limit` deliveries with a seq below `before`,
    /// newest first.
    pub fn deliveries(
        &self,
        receiver: &str,
        before: u64,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        self.t
            .deliveries
            .range(delivery_key(receiver, 0)..delivery_key(receiver, before))
            .rev()
            .take(limit)
            .map(|kv| {
                let (k, v) = kv?;
                decode("webhook_deliveries", &k, &v)
            })
            .collect()
    }

    /// A receiver's oldest pending delivery: the one to attempt next.
    pub fn pending_head(&self, receiver: &str) -> Result<Option<Delivery>, StoreError> {
        let Some(kv) = self.t.pending.scan_prefix(receiver_prefix(receiver)).next() else {
            return Ok(None);
        };
        let (k, _) = kv?;
        self.t
            .deliveries
            .get(&k)?
            .map(|v| decode("webhook_deliveries", &k, &v))
            .transpose()
    }

    /// How many of a receiver's deliveries are pending.
    pub fn pending_count(&self, receiver: &str) -> Result<u64, StoreError> {
        let mut n = 0;
        for kv in self.t.pending.scan_prefix(receiver_prefix(receiver)) {
            kv?;
            n += 1;
        }
        Ok(n)
    }

    /// Shopify notifications, newest first, at most `limit`.
    pub fn shopify_notifications(&self, limit: usize) -> Result<Vec<Notification>, StoreError> {
        self.t
            .shopify
            .iter()
            .rev()
            .take(limit)
            .map(|kv| {
                let (k, v) = kv?;
                decode("shopify_notifications", &k, &v)
            })
            .collect()
    }

    /// A number never handed out before, even across crashes (sled's id
    /// generator), for records that need no dense sequence.
    pub fn fresh_id(&self) -> Result<u64, StoreError> {
        Ok(self.db.generate_id()?)
    }

    // ---- the event log ----

    /// Keeps a commit's records for the readers; called under the commit
    /// lock, so they arrive in log order.
    fn remember(&self, records: &[Arc<LogRecord>]) {
        let Some(first) = records.first() else {
            return;
        };
        let mut recent = locked(&self.recent);
        if recent.back().is_some_and(|b| b.seq + 1 != first.seq) {
            // Not contiguous (cannot happen while commits are serialised):
            // start over rather than serve a gap.
            recent.clear();
        }
        for r in records {
            if recent.len() == RECENT_MAX {
                recent.pop_front();
            }
            recent.push_back(Arc::clone(r));
        }
    }

    /// Up to `limit` log records after `after`, oldest first. Records
    /// committed since the store opened come from memory, shared with
    /// every other reader (several read each record; none changes it);
    /// older ones are decoded from the log table.
    pub fn log_after(&self, after: u64, limit: usize) -> Result<Vec<Arc<LogRecord>>, StoreError> {
        let Some(from) = after.checked_add(1) else {
            return Ok(Vec::new());
        };
        {
            let recent = locked(&self.recent);
            if let Some(front) = recent.front()
                && front.seq <= from
            {
                // Every record from `front` on was committed through
                // `remember`, so nothing after the newest one exists.
                let skip = usize::try_from(from - front.seq).unwrap_or(usize::MAX);
                return Ok(recent.iter().skip(skip).take(limit).cloned().collect());
            }
        }
        self.t
            .log
            .range(from.to_be_bytes()..)
            .take(limit)
            .map(|kv| {
                let (k, v) = kv?;
                decode("log", &k, &v).map(Arc::new)
            })
            .collect()
    }

    /// Runs a log reader until `cancel`: `catch_up(durable)` handles one
    /// chunk after the reader's cursor and says whether more may follow;
    /// between chunks the reader waits for the durable tip to move, then
    /// `gather` more so a burst of commits is read as one chunk (waking
    /// for every submission cost the daemon a quarter of its rate). A
    /// failed chunk is retried after a second. The one loop of metering,
    /// commerce and the webhook outbox.
    pub async fn follow_log<F, Fut, E>(
        &self,
        who: &str,
        gather: std::time::Duration,
        cancel: &tokio_util::sync::CancellationToken,
        mut catch_up: F,
    ) where
        F: FnMut(u64) -> Fut,
        Fut: std::future::Future<Output = Result<bool, E>>,
        E: std::fmt::Display,
    {
        let mut tip = self.log_tip();
        loop {
            let durable = *tip.borrow_and_update();
            match catch_up(durable).await {
                Ok(true) => continue,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %e, reader = who, "could not read the log; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(std::time::Duration::from_secs(1)) => continue,
                        () = cancel.cancelled() => return,
                    }
                }
            }
            tokio::select! {
                r = tip.changed() => if r.is_err() { return },
                () = cancel.cancelled() => return,
            }
            tokio::select! {
                () = tokio::time::sleep(gather) => {}
                () = cancel.cancelled() => return,
            }
        }
    }

    /// The last durable sequence number, updated after every flush: a log
    /// reader waits on it instead of polling.
    pub fn log_tip(&self) -> watch::Receiver<u64> {
        self.durable_tip.subscribe()
    }

    /// Where the reader called `name` stopped (0: at the start).
    pub fn cursor(&self, name: &str) -> Result<u64, StoreError> {
        Ok(read_u64(self.t.cursors.get(name.as_bytes())?))
    }

    /// Records that the reader called `name` has handled everything up to
    /// `seq`; durable at the next flush (a reader that crashes before
    /// then handles some records again: readers are at-least-once).
    pub fn set_cursor(&self, name: &str, seq: u64) -> Result<(), StoreError> {
        self.t.cursors.insert(name.as_bytes(), &seq.to_be_bytes())?;
        Ok(())
    }
}

fn all<T: DeserializeOwned>(tree: &sled::Tree, table: &'static str) -> Result<Vec<T>, StoreError> {
    tree.iter()
        .map(|kv| {
            let (k, v) = kv?;
            decode(table, &k, &v)
        })
        .collect()
}

/// Every record of a table keyed by a string, with its key.
fn keyed<T: DeserializeOwned>(
    tree: &sled::Tree,
    table: &'static str,
) -> Result<Vec<(String, T)>, StoreError> {
    tree.iter()
        .map(|kv| {
            let (k, v) = kv?;
            Ok((
                String::from_utf8_lossy(&k).into_owned(),
                decode(table, &k, &v)?,
            ))
        })
        .collect()
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
        self.t
            .sessions
            .insert(hash.as_bytes(), encode("sessions", rec)?)?;
        Ok(())
    }

    /// A session; one stored by an older daemon (the token hash alone, no
    /// time) comes back with `created_ms` 0, so it counts as expired.
    pub fn session_record(&self, hash: &str) -> Result<Option<SessionRecord>, StoreError> {
        let Some(v) = self.t.sessions.get(hash.as_bytes())? else {
            return Ok(None);
        };
        match decode::<SessionRecord>("sessions", hash.as_bytes(), &v) {
            Ok(s) => Ok(Some(s)),
            // The bare token hash of an older daemon: no time, so expired.
            Err(_) => Ok(Some(SessionRecord {
                token: decode::<String>("sessions", hash.as_bytes(), &v)?,
                created_ms: 0,
            })),
        }
    }

    /// Every token as (hash, record), in hash order.
    pub fn tokens(&self) -> Result<Vec<(String, TokenRecord)>, StoreError> {
        self.t
            .tokens
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
        let mut cache = locked(&self.token_cache);
        let existed = self.t.tokens.remove(hash.as_bytes())?.is_some();
        cache.remove(hash);
        Ok(existed)
    }

    /// Ends every session opened with the token of this hash; how many.
    pub fn remove_sessions_of(&self, token_hash: &str) -> Result<usize, StoreError> {
        let mut ended = 0;
        for kv in self.t.sessions.iter() {
            let (k, _) = kv?;
            let key = String::from_utf8_lossy(&k).into_owned();
            if self
                .session_record(&key)?
                .is_some_and(|s| s.token == token_hash)
            {
                self.t.sessions.remove(&k)?;
                ended += 1;
            }
        }
        Ok(ended)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::machine::{MachineState, StateReason};
    use crate::core::model::{JobState, Role};

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("mfd-store-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).expect("mkdir");
        for e in std::fs::read_dir(from).expect("read_dir") {
            let e = e.expect("entry");
            let dest = to.join(e.file_name());
            if e.file_type().expect("type").is_dir() {
                copy_dir(&e.path(), &dest);
            } else {
                std::fs::copy(e.path(), dest).expect("copy");
            }
        }
    }

    #[test]
    fn a_store_written_by_the_first_daemon_is_migrated_not_misread() {
        let dir = temp_dir("v0");
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/store-v0");
        copy_dir(&fixture, &dir);
        {
            // A machine left waiting for bed clearance, as the first daemon
            // wrote it (the fixture's machines had none).
            let db = open_db(&dir.join("db")).expect("raw open");
            let t = db.open_tree("machines").expect("tree");
            t.insert("p9", &br#"{"disabled":true,"awaiting_clear":true}"#[..])
                .expect("insert");
            db.flush().expect("flush");
        }
        let s = Store::open(&dir).expect("open a v0 store");
        let jobs = s.jobs().expect("jobs");
        let states: Vec<(u64, JobState)> = jobs.iter().map(|j| (j.id, j.state)).collect();
        assert_eq!(
            states,
            vec![
                (1, JobState::Completed),
                (2, JobState::Running),
                (3, JobState::Running)
            ]
        );
        assert_eq!(s.files().expect("files").len(), 2);
        assert_eq!(s.job_id_counter().expect("counter"), 3);
        assert_eq!(
            s.token(&crate::factory::files::sha256_hex(b"secret"))
                .expect("token")
                .map(|t| t.role),
            Some(Role::Operator)
        );
        // The mill's bed clearance is kept as a hold with its reason.
        let p9 = s.machine("p9").expect("machine");
        assert!(p9.disabled);
        assert_eq!(p9.hold.map(|h| h.reason), Some(StateReason::BedClear));
        // The old job log is the start of the new log, in order.
        let log = s.log_after(0, 100).expect("log");
        assert!(!log.is_empty());
        assert!(log.windows(2).all(|w| w[1].seq == w[0].seq + 1));
        assert_eq!(log[0].seq, 1);
        match &log[0].event {
            DomainEvent::JobState { job_id, state, .. } => {
                assert_eq!((*job_id, *state), (1, JobState::Queued));
            }
            other => panic!("first entry {other:?}"),
        }
        assert_eq!(
            read_u64(s.t.meta.get(SCHEMA).expect("meta")),
            SCHEMA_VERSION
        );
        drop(s);
        // Opening again finds nothing left to migrate and the same log.
        let again = Store::open(&dir).expect("reopen");
        assert_eq!(again.log_after(0, 100).expect("log").len(), log.len());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_marker_without_its_counters_is_refused_not_read_as_schema_1s() {
        let dir = temp_dir("bad-marker");
        drop(Store::open(&dir).expect("open"));
        {
            let db = open_db(&dir.join("db")).expect("raw open");
            let j = db.open_tree("journal").expect("journal");
            j.insert("committed", &1u64.to_be_bytes()).expect("insert");
            db.flush().expect("flush");
        }
        let err = Store::open(&dir).expect_err("a damaged marker");
        assert!(
            matches!(
                err,
                StoreError::Unreadable {
                    table: "journal",
                    ..
                }
            ),
            "{err:?}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_store_another_process_holds_is_refused_by_name() {
        let dir = temp_dir("in-use");
        let held = Store::open(&dir).expect("open");
        let err = Store::open(&dir).expect_err("a second open");
        assert!(matches!(err, StoreError::InUse { .. }), "{err:?}");
        assert!(
            err.to_string().contains("in use by another process"),
            "{err}"
        );
        drop(held);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn settling_makes_every_commit_so_far_durable_and_is_free_when_they_are() {
        let dir = temp_dir("settle");
        let s = Store::open(&dir).expect("open");
        let tip = s.log_tip();
        let event = |id: &str| Batch {
            events: vec![DomainEvent::FileDeleted { file_id: id.into() }],
            ..Batch::default()
        };
        let written = s.commit(&event("a"), 1).expect("commit")[0].seq;
        assert!(*tip.borrow() < written, "committed, not yet flushed");
        s.settle().await.expect("settle");
        assert_eq!(*tip.borrow(), written);
        // Nothing new: no flush (the group commit's tickets do not move).
        let asked = s.commit.asked.load(Ordering::SeqCst);
        s.settle().await.expect("settle");
        assert_eq!(s.commit.asked.load(Ordering::SeqCst), asked);
        drop(s);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// After opening an older store with `heads`: the next commit follows
    /// on, what it moves survives a reopen, and the store is of this
    /// daemon's schema.
    async fn next_commit_follows(s: Store, dir: &Path, heads: journal::Heads) {
        let next = heads.job_id + 1;
        let records = s
            .commit(
                &Batch {
                    jobs: vec![job(next)],
                    job_id_counter: Some(next),
                    events: vec![DomainEvent::FileDeleted {
                        file_id: "x".into(),
                    }],
                    ..Batch::default()
                },
                1,
            )
            .expect("commit");
        assert_eq!(records[0].seq, heads.log_seq + 1);
        s.flush().await.expect("flush");
        drop(s);
        let again = Store::open(dir).expect("reopen");
        assert_eq!(again.job_id_counter().expect("jobs"), next);
        assert_eq!(again.heads().log_seq, heads.log_seq + 1);
        assert_eq!(again.unit_counter().expect("units"), heads.unit_serial);
        drop(again);
        let db = open_db(&dir.join("db")).expect("raw open");
        let meta = db.open_tree("meta").expect("meta");
        assert_eq!(read_u64(meta.get(SCHEMA).expect("get")), SCHEMA_VERSION);
    }

    #[tokio::test]
    async fn a_store_written_with_counters_in_meta_keys_keeps_every_counter() {
        let dir = temp_dir("v1-counters");
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/store-v1");
        copy_dir(&fixture, &dir);
        // What the schema-1 daemon left, read raw.
        let (legacy, last_logged, max_job) = {
            let db = open_db(&dir.join("db")).expect("raw open");
            let meta = db.open_tree("meta").expect("meta");
            let get = |k: &str| read_u64(meta.get(k).expect("get"));
            assert_eq!(get(SCHEMA), 1, "the fixture is a schema-1 store");
            let legacy = journal::Heads {
                log_seq: get(LOG_SEQ),
                job_id: get(JOB_ID),
                order_id: get(ORDER_ID),
                unit_serial: get(UNIT_SERIAL),
                sales_order_id: get(SALES_ORDER_ID),
                shipment_id: get(SHIPMENT_ID),
            };
            let last = |tree: &str| {
                db.open_tree(tree)
                    .expect("tree")
                    .last()
                    .expect("last")
                    .map_or(0, |(k, _)| u64_key(&k))
            };
            (legacy, last("log"), last("jobs"))
        };
        for (what, n) in [
            ("log", legacy.log_seq),
            ("jobs", legacy.job_id),
            ("production orders", legacy.order_id),
            ("units", legacy.unit_serial),
            ("sales orders", legacy.sales_order_id),
        ] {
            assert!(n > 0, "the fixture has no {what}");
        }
        assert_eq!(legacy.log_seq, last_logged);
        assert_eq!(legacy.job_id, max_job);
        let s = Store::open(&dir).expect("open a schema-1 store");
        assert_eq!(s.heads(), legacy);
        assert_eq!(s.job_id_counter().expect("jobs"), legacy.job_id);
        assert_eq!(s.order_id_counter().expect("orders"), legacy.order_id);
        assert_eq!(s.unit_counter().expect("units"), legacy.unit_serial);
        assert_eq!(
            s.commerce_counters().expect("commerce"),
            (legacy.sales_order_id, legacy.shipment_id)
        );
        // The next commit follows on, and what it moves survives a reopen.
        next_commit_follows(s, &dir, legacy).await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_store_written_by_schema_2_keeps_every_counter_and_record() {
        let dir = temp_dir("v2");
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/store-v2");
        copy_dir(&fixture, &dir);
        // What the schema-2 daemon left, read raw: its marker (commit
        // number, then the counters) and its tables.
        let (heads, jobs, units, last_logged) = {
            let db = open_db(&dir.join("db")).expect("raw open");
            let meta = db.open_tree("meta").expect("meta");
            assert_eq!(
                read_u64(meta.get(SCHEMA).expect("get")),
                2,
                "a schema-2 store"
            );
            let marker = db
                .open_tree("journal")
                .expect("journal")
                .get("committed")
                .expect("get")
                .expect("a marker");
            let heads = journal::Heads::of_marker(&marker).expect("a marker with counters");
            let count = |tree: &str| db.open_tree(tree).expect("tree").len();
            let last_logged = db
                .open_tree("log")
                .expect("log")
                .last()
                .expect("last")
                .map_or(0, |(k, _)| u64_key(&k));
            (heads, count("jobs"), count("units"), last_logged)
        };
        for (what, n) in [
            ("log", heads.log_seq),
            ("jobs", heads.job_id),
            ("units", heads.unit_serial),
            ("sales orders", heads.sales_order_id),
        ] {
            assert!(n > 0, "the fixture has no {what}");
        }
        assert_eq!(heads.log_seq, last_logged);
        let s = Store::open(&dir).expect("open a schema-2 store");
        assert_eq!(s.heads(), heads);
        assert_eq!(s.jobs().expect("jobs").len(), jobs);
        assert_eq!(s.units().expect("units").len(), units);
        let log = s.log_after(0, usize::MAX).expect("log");
        assert_eq!(log.len() as u64, heads.log_seq, "every log record reads");
        next_commit_follows(s, &dir, heads).await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_schema_1_commit_cut_short_by_a_crash_is_finished_when_this_daemon_opens_it() {
        let dir = temp_dir("v1-cut");
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/store-v1");
        copy_dir(&fixture, &dir);
        // A schema-1 journal ahead of its marker, both in `meta`: a job
        // and the job id counter, the way a schema-1 daemon wrote a commit
        // (commit number, then tree, key and value, each length-prefixed).
        let next = {
            let db = open_db(&dir.join("db")).expect("raw open");
            let meta = db.open_tree("meta").expect("meta");
            let done = read_u64(meta.get("committed").expect("get"));
            let next = read_u64(meta.get(JOB_ID).expect("get")) + 1;
            let value = codec::encode("jobs", &job(next)).expect("encode");
            let mut buf = (done + 1).to_be_bytes().to_vec();
            for (tree, key, value) in [
                (&b"jobs"[..], job_key(next).to_vec(), value),
                (
                    &b"meta"[..],
                    JOB_ID.as_bytes().to_vec(),
                    next.to_be_bytes().to_vec(),
                ),
            ] {
                for part in [tree, &key[..]] {
                    buf.extend_from_slice(&(part.len() as u32).to_be_bytes());
                    buf.extend_from_slice(part);
                }
                buf.push(1);
                buf.extend_from_slice(&(value.len() as u32).to_be_bytes());
                buf.extend_from_slice(&value);
            }
            meta.insert("journal", buf).expect("journal");
            db.flush().expect("flush");
            next
        };
        let s = Store::open(&dir).expect("open");
        assert_eq!(s.job(next).expect("job").map(|j| j.id), Some(next));
        assert_eq!(s.job_id_counter().expect("counter"), next);
        drop(s);
        // And the counters it moved into the new marker hold on reopening.
        let again = Store::open(&dir).expect("reopen");
        assert_eq!(again.job_id_counter().expect("counter"), next);
        drop(again);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_schema_1_store_drops_its_json_aggregates_and_keeps_everything_else() {
        let dir = temp_dir("v1");
        {
            let s = Store::open(&dir).expect("open");
            s.commit(
                &Batch {
                    jobs: vec![job(1)],
                    events: vec![DomainEvent::MachineState {
                        machine_id: "a".into(),
                        state: MachineState::Idle,
                        reason: StateReason::None,
                        job_id: None,
                    }],
                    ..Batch::default()
                },
                1000,
            )
            .expect("commit");
            // What schema 1 wrote: a whole-factory unit record per hour
            // and day, and a machine's hour, in versioned JSON, its seal
            // and the mark that units were counted.
            let h = &s.t.metering_hours;
            let mut unit_day = vec![b'u', b'd'];
            unit_day.extend_from_slice(&20_000u64.to_be_bytes());
            h.insert(
                unit_day,
                [&[1u8][..], br#"{"rows":[{"machine":"a","sku":"tile","q":{"produced":1,"good":1,"scrap":0,"rework":0,"uninspected":0,"first_inspected":1,"first_pass_good":1,"credited_runtime_ms":60000},"attempts":1,"inspections":1}]}"#].concat(),
            )
            .expect("insert");
            h.insert(
                time_agg_key("a", Level::Hour, 0),
                [&[1u8][..], br#"{"all":{"pbt_ms":3600000,"apt_ms":0,"setup_ms":0,"delay_ms":0,"down_ms":0,"idle_ms":3600000,"planned_down_ms":0,"failures":0,"repair_ms":0},"by_sku":{},"changes":[]}"#].concat(),
            )
            .expect("insert");
            h.insert(seal_key("a"), &1u64.to_be_bytes())
                .expect("insert");
            h.insert(seal_key("\u{0}units"), &1u64.to_be_bytes())
                .expect("insert");
            s.t.meta.insert(SCHEMA, &1u64.to_be_bytes()).expect("meta");
            s.flush().await.expect("flush");
        }
        let s = Store::open(&dir).expect("open a schema 1 store");
        assert_eq!(
            read_u64(s.t.meta.get(SCHEMA).expect("meta")),
            SCHEMA_VERSION
        );
        // Derived records gone (metering builds them again), and no
        // seal left that would claim hours are aggregated.
        assert_eq!(s.t.metering_hours.len(), 0);
        assert_eq!(s.machine_seal("a").expect("seal"), None);
        assert!(
            s.time_aggs("a", Level::Hour, 0, 10)
                .expect("aggs")
                .is_empty()
        );
        // Everything else as it was.
        assert_eq!(s.job(1).expect("job").map(|j| j.id), Some(1));
        assert_eq!(s.machine_states("a", 0, 5000).expect("states").len(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn aggregate_records_round_trip_by_key_and_a_json_one_is_refused() {
        let dir = temp_dir("aggs");
        let s = Store::open(&dir).expect("open");
        let row = |machine: &str, sku: &str, n: u64| crate::metering::hourly::UnitRow {
            machine: machine.into(),
            sku: sku.into(),
            q: crate::metering::oee::Quantities {
                produced: n,
                ..Default::default()
            },
            attempts: n,
            inspections: 0,
        };
        let tile = UnitKey::Sku("tile".into());
        let tiles = UnitKey::Sku("tiles".into());
        let a = UnitKey::Machine("a".into());
        let agg = |rows| UnitAgg { rows };
        s.commit(
            &Batch {
                unit_aggs: vec![
                    (
                        tile.clone(),
                        Level::Day,
                        3,
                        agg(vec![row("a", "tile", 2), row("b", "tile", 1)]),
                    ),
                    (tile.clone(), Level::Day, 4, agg(vec![row("a", "tile", 5)])),
                    (
                        tiles.clone(),
                        Level::Day,
                        3,
                        agg(vec![row("a", "tiles", 7)]),
                    ),
                    (
                        a.clone(),
                        Level::Day,
                        3,
                        agg(vec![row("a", "tile", 2), row("a", "tiles", 7)]),
                    ),
                    (a.clone(), Level::Month, 3, agg(vec![row("a", "tile", 9)])),
                ],
                ..Batch::default()
            },
            0,
        )
        .expect("commit");
        // A key's range holds its own records only, not a longer name's.
        let got = s.unit_aggs(&tile, Level::Day, 0, 10).expect("aggs");
        assert_eq!(
            got,
            vec![
                (3, agg(vec![row("a", "tile", 2), row("b", "tile", 1)])),
                (4, agg(vec![row("a", "tile", 5)]))
            ]
        );
        assert_eq!(s.unit_aggs(&a, Level::Day, 3, 4).expect("aggs").len(), 1);
        assert_eq!(s.unit_aggs(&a, Level::Month, 0, 3).expect("aggs"), vec![]);
        assert_eq!(s.unit_agg_skus().expect("skus"), vec!["tile", "tiles"]);
        // A record in schema 1's JSON is refused by name, not misread.
        s.t.metering_hours
            .insert(
                unit_agg_key(&tile, Level::Day, 5),
                [&[codec::VERSION][..], br#"{"rows":[]}"#].concat(),
            )
            .expect("insert");
        let err = s
            .unit_aggs(&tile, Level::Day, 5, 6)
            .expect_err("json record");
        assert!(err.to_string().contains("metering_hours"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_store_of_a_newer_schema_or_with_a_newer_record_is_refused_with_a_clear_message() {
        let dir = temp_dir("newer");
        {
            let s = Store::open(&dir).expect("open");
            s.t.meta
                .insert(SCHEMA, &(SCHEMA_VERSION + 1).to_be_bytes())
                .expect("meta");
            s.flush().await.expect("flush");
        }
        let err = Store::open(&dir).expect_err("newer schema");
        assert!(err.to_string().contains("newer microfactoryd"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
        {
            let s = Store::open(&dir).expect("open");
            s.commit(
                &Batch {
                    jobs: vec![job(5)],
                    job_id_counter: Some(5),
                    ..Batch::default()
                },
                1,
            )
            .expect("commit");
            let mut bytes = encode("jobs", &job(5)).expect("encode");
            bytes[0] = codec::VERSION + 1;
            s.t.jobs.insert(job_key(5), bytes).expect("insert");
            s.flush().await.expect("flush");
        }
        // A record past the layout marker is refused when read.
        let s = Store::open(&dir).expect("open");
        let msg = s.job(5).expect_err("newer record").to_string();
        assert!(
            msg.contains("jobs") && msg.contains("newer microfactoryd"),
            "{msg}"
        );
        // A newer daemon raises the marker first: refused at open.
        s.t.meta
            .insert("layout", &u64::from(codec::VERSION + 1).to_be_bytes())
            .expect("meta");
        s.flush().await.expect("flush");
        drop(s);
        let msg = Store::open(&dir).expect_err("newer layout").to_string();
        assert!(msg.contains("newer microfactoryd"), "{msg}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_commit_writes_records_and_events_together_with_a_sequence_of_their_own() {
        let dir = temp_dir("commit");
        let s = Store::open(&dir).expect("open");
        let mut tip = s.log_tip();
        // sled's id generator moving must not move the log.
        let _ = s.db.generate_id().expect("id");
        let batch = Batch {
            jobs: vec![job(1)],
            job_id_counter: Some(1),
            events: vec![
                DomainEvent::JobQueued {
                    job_id: 1,
                    file_id: "f".into(),
                    start_line: 1,
                    priority: 0,
                    note: None,
                },
                DomainEvent::MachineState {
                    machine_id: "m".into(),
                    state: MachineState::Idle,
                    reason: StateReason::None,
                    job_id: None,
                },
            ],
            ..Batch::default()
        };
        let recs = s.commit(&batch, 1000).expect("commit");
        assert_eq!(recs.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(*tip.borrow_and_update(), 0, "not durable before the flush");
        s.flush().await.expect("flush");
        assert_eq!(*tip.borrow_and_update(), 2);
        assert_eq!(s.job_id_counter().expect("counter"), 1);
        let states = s.machine_states("m", 0, u64::MAX).expect("states");
        assert_eq!(states.len(), 1);
        assert_eq!((states[0].seq, states[0].at_ms), (2, 1000));
        // A reader's cursor survives reopening.
        s.set_cursor("metering", 1).expect("cursor");
        s.flush().await.expect("flush");
        drop(s);
        let s = Store::open(&dir).expect("reopen");
        let from = s.cursor("metering").expect("cursor");
        let rest = s.log_after(from, 10).expect("log");
        assert_eq!(rest.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![2]);
        assert!(s.log_after(u64::MAX, 10).expect("log").is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn the_log_read_from_memory_equals_the_log_read_from_disk() {
        let dir = temp_dir("recent");
        let s = Store::open(&dir).expect("open");
        // Two records per commit, past what memory keeps, so reads start
        // before, at and after its oldest record.
        let commits = RECENT_MAX / 2 + 300;
        for i in 0..commits as u64 {
            let queued = |job_id| DomainEvent::JobQueued {
                job_id,
                file_id: format!("f{i}"),
                start_line: 1,
                priority: 0,
                note: None,
            };
            let batch = Batch {
                events: vec![queued(2 * i + 1), queued(2 * i + 2)],
                ..Batch::default()
            };
            s.commit(&batch, 1000 + i).expect("commit");
        }
        let newest = 2 * commits as u64;
        let oldest_kept = newest - RECENT_MAX as u64 + 1;
        let afters = [
            0,
            1,
            oldest_kept - 2,
            oldest_kept - 1,
            oldest_kept,
            newest - 3,
            newest - 1,
            newest,
            newest + 5,
            u64::MAX,
        ];
        let from_memory: Vec<Vec<Arc<LogRecord>>> = afters
            .iter()
            .map(|&a| s.log_after(a, 64).expect("log"))
            .collect();
        s.flush().await.expect("flush");
        drop(s);
        let s = Store::open(&dir).expect("reopen");
        for (a, got) in afters.iter().zip(&from_memory) {
            let on_disk = s.log_after(*a, 64).expect("log");
            assert_eq!(got, &on_disk, "after {a}");
        }
        assert_eq!(from_memory[4].len(), 64);
        assert_eq!(from_memory[4][0].seq, oldest_kept + 1);
        assert_eq!(
            from_memory[6].iter().map(|r| r.seq).collect::<Vec<_>>(),
            vec![newest]
        );
        assert!(from_memory[7].is_empty() && from_memory[9].is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The batch of `a_commit_cut_short_…`: a job, its counter, two
    /// events (one a machine state) and a cursor.
    fn second_batch() -> Batch {
        Batch {
            jobs: vec![job(2)],
            job_id_counter: Some(2),
            events: vec![
                DomainEvent::JobQueued {
                    job_id: 2,
                    file_id: "f".into(),
                    start_line: 1,
                    priority: 0,
                    note: None,
                },
                DomainEvent::MachineState {
                    machine_id: "m".into(),
                    state: MachineState::Producing,
                    reason: StateReason::None,
                    job_id: Some(2),
                },
            ],
            cursors: vec![("metering", 1)],
            ..Batch::default()
        }
    }

    /// A store whose first commit is complete (job 1, seq 1) and was
    /// followed by a plain write (job 1's progress), and whose second
    /// commit ([`second_batch`]) a crash cut short after its undo record
    /// and `applied` of its writes; the number of writes that commit makes.
    fn cut_store(dir: &Path, applied: usize, redo: bool) -> usize {
        let s = Store::open(dir).expect("open");
        let first = Batch {
            jobs: vec![job(1)],
            job_id_counter: Some(1),
            events: vec![DomainEvent::FileDeleted {
                file_id: "x".into(),
            }],
            ..Batch::default()
        };
        s.commit(&first, 1000).expect("commit");
        let mut progressed = job(1);
        progressed.progress.lines_done = 77;
        s.put_job(&progressed).expect("put");
        let before = s.heads();
        let mut after = before;
        let (w, _) = s.plan(&second_batch(), &mut after, 2000).expect("plan");
        if redo {
            journal::redo_cut_short(&s.t, 2, &after, &w.ops, applied).expect("cut");
        } else {
            journal::cut_short(&s.t, 2, &before, &w.ops, applied).expect("cut");
        }
        let writes = w.ops.len();
        drop(w);
        s.db.flush().expect("flush");
        writes
    }

    /// What the store shows of [`cut_store`]'s commits after it reopens,
    /// and that the next commit follows the last one it kept.
    fn assert_kept(s: &Store, second: bool, what: &str) {
        let seqs: Vec<u64> = s
            .log_after(0, 10)
            .expect("log")
            .iter()
            .map(|r| r.seq)
            .collect();
        let (log, counter) = if second {
            (vec![1, 2, 3], 2)
        } else {
            (vec![1], 1)
        };
        assert_eq!(seqs, log, "{what}");
        assert_eq!(s.job_id_counter().expect("counter"), counter, "{what}");
        assert_eq!(s.job(2).expect("job").is_some(), second, "{what}");
        let states = s.machine_states("m", 0, u64::MAX).expect("states").len();
        assert_eq!(states, usize::from(second), "{what}");
        assert_eq!(
            s.cursor("metering").expect("cursor"),
            u64::from(second),
            "{what}"
        );
        assert_eq!(
            s.job(1).expect("job").map(|j| j.progress.lines_done),
            Some(77),
            "{what}: the write after the first commit was lost"
        );
        let next = s
            .commit(
                &Batch {
                    events: vec![DomainEvent::FileDeleted {
                        file_id: "y".into(),
                    }],
                    ..Batch::default()
                },
                3000,
            )
            .expect("commit");
        assert_eq!(next[0].seq, log.len() as u64 + 1, "{what}");
    }

    /// Reopens a store [`cut_store`] left, checks it with [`assert_kept`]
    /// and removes it.
    fn reopen_and_check(dir: &Path, second: bool, what: &str) {
        let s = Store::open(dir).expect("reopen");
        assert_kept(&s, second, what);
        drop(s);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_commit_cut_short_by_a_crash_is_undone_when_the_store_opens() {
        // Every point a crash can cut a commit at: after its undo record
        // and 0, 1, … of its writes (sled recovers a prefix of its writes).
        let dir = temp_dir("cut-count");
        let writes = cut_store(&dir, 0, false);
        let _ = std::fs::remove_dir_all(&dir);
        assert!(writes >= 5, "the batch touches several tables: {writes}");
        for applied in 0..=writes {
            let dir = temp_dir(&format!("cut-{applied}"));
            cut_store(&dir, applied, false);
            reopen_and_check(&dir, false, &format!("after {applied} of {writes} writes"));
        }
    }

    #[test]
    fn an_undo_cut_short_by_a_second_crash_is_finished_on_the_next_open() {
        let dir = temp_dir("undo-count");
        let writes = cut_store(&dir, usize::MAX, false);
        let _ = std::fs::remove_dir_all(&dir);
        for undone in 0..writes {
            let dir = temp_dir(&format!("undo-{undone}"));
            cut_store(&dir, usize::MAX, false);
            {
                let db = open_db(&dir.join("db")).expect("raw open");
                let t = Trees::open(&db).expect("trees");
                journal::undo_cut_short(&db, &t, undone).expect("undo");
                db.flush().expect("flush");
            }
            reopen_and_check(&dir, false, &format!("after {undone} of {writes} undone"));
        }
    }

    #[test]
    fn a_redo_journal_an_older_daemon_left_is_finished_when_the_store_opens() {
        // Schema 2 journalled the batch itself and applied it again on
        // opening; a store it left that way is finished, not undone.
        let dir = temp_dir("redo-count");
        let writes = cut_store(&dir, 0, true);
        let _ = std::fs::remove_dir_all(&dir);
        for applied in 0..=writes {
            let dir = temp_dir(&format!("redo-{applied}"));
            cut_store(&dir, applied, true);
            let s = Store::open(&dir).expect("reopen");
            assert_kept(
                &s,
                true,
                &format!("redo after {applied} of {writes} writes"),
            );
            drop(s);
            let _ = std::fs::remove_dir_all(&dir);
        }
    }

    /// A submission of job `id`: the job, its counter and its event, the
    /// kind of commit that writes no undo record.
    fn submission(id: u64) -> Batch {
        Batch {
            jobs: vec![job(id)],
            job_id_counter: Some(id),
            events: vec![DomainEvent::JobQueued {
                job_id: id,
                file_id: "f".into(),
                start_line: 1,
                priority: 0,
                note: None,
            }],
            ..Batch::default()
        }
    }

    #[test]
    fn a_submission_cut_short_by_a_crash_is_trimmed_when_the_store_opens() {
        for applied in 0..=2 {
            let dir = temp_dir(&format!("trim-{applied}"));
            {
                let s = Store::open(&dir).expect("open");
                // A commit with an undo record first: the record stays
                // under `journal/undo`, older than the marker, and must not
                // be applied again.
                let mut first = submission(1);
                first.cursors = vec![("metering", 1)];
                s.commit(&first, 1000).expect("commit");
                let mut after = s.heads();
                let (w, _) = s.plan(&submission(2), &mut after, 2000).expect("plan");
                assert!(journal::only_counted(&w.ops), "no undo record");
                assert_eq!(w.ops.len(), 2);
                // What a crash leaves: a prefix of its writes, no marker.
                journal::apply(&w.ops[..applied]).expect("apply");
                drop(w);
                s.db.flush().expect("flush");
            }
            let s = Store::open(&dir).expect("reopen");
            let what = format!("after {applied} of 2 writes");
            assert!(s.job(2).expect("job").is_none(), "{what}");
            assert!(s.job(1).expect("job").is_some(), "{what}");
            assert_eq!(s.job_id_counter().expect("counter"), 1, "{what}");
            let seqs: Vec<u64> = s
                .log_after(0, 10)
                .expect("log")
                .iter()
                .map(|r| r.seq)
                .collect();
            assert_eq!(seqs, vec![1], "{what}");
            assert_eq!(s.cursor("metering").expect("cursor"), 1, "{what}");
            // The next submission takes the trimmed one's id and sequence.
            let next = s.commit(&submission(2), 3000).expect("commit");
            assert_eq!(next[0].seq, 2, "{what}");
            drop(s);
            let s = Store::open(&dir).expect("reopen");
            assert!(s.job(2).expect("job").is_some(), "{what}: kept once marked");
            drop(s);
            let _ = std::fs::remove_dir_all(&dir);
        }
    }

    #[test]
    fn a_submission_that_fails_half_way_is_undone_at_once() {
        let dir = temp_dir("fail-submission");
        let s = Store::open(&dir).expect("open");
        s.commit(&submission(1), 1000).expect("commit");
        journal::fail_after(Some(1));
        let err = s
            .commit(&submission(2), 2000)
            .expect_err("injected failure");
        journal::fail_after(None);
        assert!(err.to_string().contains("injected"), "{err}");
        assert!(s.job(2).expect("job").is_none());
        assert_eq!(s.log_after(0, 10).expect("log").len(), 1);
        let next = s.commit(&submission(2), 3000).expect("commit");
        assert_eq!(next[0].seq, 2);
        drop(s);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_commit_that_fails_half_way_is_undone_at_once_and_the_next_one_follows() {
        let dir = temp_dir("fail-half");
        let s = Store::open(&dir).expect("open");
        s.commit(
            &Batch {
                jobs: vec![job(1)],
                job_id_counter: Some(1),
                events: vec![DomainEvent::FileDeleted {
                    file_id: "x".into(),
                }],
                ..Batch::default()
            },
            1000,
        )
        .expect("commit");
        journal::fail_after(Some(2));
        let err = s
            .commit(&second_batch(), 2000)
            .expect_err("injected failure");
        journal::fail_after(None);
        assert!(err.to_string().contains("injected"), "{err}");
        // Nothing of it is left, in memory or on disk.
        assert_eq!(s.heads().job_id, 1);
        assert!(s.job(2).expect("job").is_none());
        assert_eq!(s.log_after(0, 10).expect("log").len(), 1);
        // The next commit takes its number and sequence, and a reopen does
        // not undo it.
        let next = s.commit(&second_batch(), 3000).expect("commit");
        assert_eq!(next[0].seq, 2);
        drop(s);
        let s = Store::open(&dir).expect("reopen");
        assert!(s.job(2).expect("job").is_some());
        assert_eq!(s.log_after(0, 10).expect("log").len(), 3);
        assert_eq!(s.job_id_counter().expect("counter"), 2);
        drop(s);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_commit_the_crash_left_complete_is_neither_undone_nor_applied_again() {
        let dir = temp_dir("complete");
        {
            let s = Store::open(&dir).expect("open");
            s.commit(&second_batch(), 2000).expect("commit");
            let mut progressed = job(2);
            progressed.progress.lines_done = 5;
            s.put_job(&progressed).expect("put");
            s.flush().await.expect("flush");
        }
        let s = Store::open(&dir).expect("reopen");
        assert_eq!(
            s.job(2).expect("job").map(|j| j.progress.lines_done),
            Some(5)
        );
        assert_eq!(s.log_after(0, 10).expect("log").len(), 2);
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn unit(serial: u64, order_id: u64, sku: &str, ended_ms: u64) -> Unit {
        Unit {
            serial: crate::metering::model::serial(serial),
            sku: sku.into(),
            order_id,
            job_id: serial,
            attempt: 1,
            index: 1,
            machine_id: "m".into(),
            gcode_sha256: "f".into(),
            started_ms: None,
            ended_ms,
            planned_runtime_ms: 1,
            credited_runtime_ms: 1,
            qc: crate::metering::model::QcState::Pending,
            first_pass: None,
            reworked: false,
            qc_history: vec![],
        }
    }

    fn serials(units: &[Unit]) -> Vec<&str> {
        units.iter().map(|u| u.serial.as_str()).collect()
    }

    #[tokio::test]
    async fn units_are_read_by_order_by_sku_window_and_by_time_window_through_the_index() {
        let dir = temp_dir("unit-index");
        let s = Store::open(&dir).expect("open");
        let units = vec![
            unit(1, 1, "a", 100),
            unit(2, 2, "b", 150),
            unit(3, 1, "a", 200),
            unit(4, 1, "ab", 250),
        ];
        s.commit(
            &Batch {
                units: units.clone(),
                ..Batch::default()
            },
            0,
        )
        .expect("commit");
        // An inspection rewrites the unit; the index stays as it was.
        let mut inspected = units[0].clone();
        inspected.qc = crate::metering::model::QcState::Pass;
        s.commit(
            &Batch {
                units: vec![inspected],
                ..Batch::default()
            },
            0,
        )
        .expect("commit");
        s.flush().await.expect("flush");
        let of_order = s.units_of_order(1).expect("order");
        assert_eq!(
            serials(&of_order),
            ["U000000001", "U000000003", "U000000004"]
        );
        assert_eq!(of_order[0].qc, crate::metering::model::QcState::Pass);
        assert_eq!(
            serials(&s.units_of_order(3).expect("none")),
            Vec::<&str>::new()
        );
        // "a" is not a prefix match for "ab".
        let a = s.units_of_sku("a", 0, u64::MAX).expect("sku");
        assert_eq!(serials(&a), ["U000000001", "U000000003"]);
        let a = s.units_of_sku("a", 101, 201).expect("sku window");
        assert_eq!(serials(&a), ["U000000003"]);
        let t = s.units_between(150, 250).expect("window");
        assert_eq!(serials(&t), ["U000000002", "U000000003"]);
        assert_eq!(s.units_between(300, 200).expect("empty").len(), 0);
        assert!(s.sku_has_units("ab").expect("has"));
        assert!(!s.sku_has_units("c").expect("has"));
        drop(s);
        // A store made before the index: its index is built at start.
        {
            let db = open_db(&dir.join("db")).expect("raw open");
            db.open_tree("unit_index")
                .expect("tree")
                .clear()
                .expect("clear");
            db.open_tree("meta")
                .expect("tree")
                .remove(unit_index::marker())
                .expect("remove");
            db.flush().expect("flush");
        }
        let s = Store::open(&dir).expect("reopen");
        let rebuilt = s.units_of_order(1).expect("order");
        assert_eq!(
            serials(&rebuilt),
            ["U000000001", "U000000003", "U000000004"]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_window_of_machine_states_starts_with_the_state_in_force_and_ends_at_its_end() {
        let dir = temp_dir("states-window");
        let s = Store::open(&dir).expect("open");
        let state = |state| Batch {
            events: vec![DomainEvent::MachineState {
                machine_id: "m".into(),
                state,
                reason: StateReason::None,
                job_id: None,
            }],
            ..Batch::default()
        };
        for (at, st) in [
            (100, MachineState::Idle),
            (200, MachineState::Producing),
            (300, MachineState::Idle),
            (400, MachineState::Producing),
        ] {
            s.commit(&state(st), at).expect("commit");
        }
        let at = |from, to| -> Vec<u64> {
            s.machine_states("m", from, to)
                .expect("states")
                .iter()
                .map(|c| c.at_ms)
                .collect()
        };
        assert_eq!(at(250, 350), vec![200, 300], "in force at 250, then 300");
        assert_eq!(
            at(300, 300),
            vec![200, 300],
            "as before: the one before `from` too"
        );
        assert_eq!(at(0, 150), vec![100], "nothing before the first");
        assert_eq!(at(500, 600), vec![400], "the last one is still in force");
        assert_eq!(at(0, u64::MAX), vec![100, 200, 300, 400]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    use crate::core::testkit::job;

    #[tokio::test]
    async fn records_survive_reopening_and_ids_never_repeat() {
        let dir = std::env::temp_dir().join(format!("mfd-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let first;
        {
            let s = Store::open(&dir).expect("open");
            first = 7;
            s.commit(
                &Batch {
                    jobs: vec![job(first)],
                    job_id_counter: Some(first),
                    ..Batch::default()
                },
                1,
            )
            .expect("commit");
            // A job no commit created is refused, not kept until the next
            // open trims it.
            let err = s.put_job(&job(first + 1)).expect_err("uncommitted");
            assert!(err.to_string().contains("never committed"), "{err}");
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
                let next = Arc::new(AtomicU64::new(0));
                let tasks: Vec<_> = (0..64)
                    .map(|_| {
                        let s = s.clone();
                        let next = Arc::clone(&next);
                        tokio::spawn(async move {
                            let mut ids = Vec::new();
                            for _ in 0..20 {
                                let id = next.fetch_add(1, Ordering::SeqCst) + 1;
                                let batch = Batch {
                                    jobs: vec![job(id)],
                                    events: vec![DomainEvent::FileDeleted {
                                        file_id: id.to_string(),
                                    }],
                                    ..Batch::default()
                                };
                                s.commit(&batch, 1).expect("commit");
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
        // Concurrent commits still give the log one gapless sequence.
        let log = s.log_after(0, 10_000).expect("log");
        let seqs: Vec<u64> = log.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, (1..=want.len() as u64).collect::<Vec<_>>());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
