//! The commit journal: how a batch of writes across tables is made atomic
//! without a sled transaction.
//!
//! A commit writes, in this order: an undo record under `journal/undo`
//! (the commit number, the counters before it, and for each key the batch
//! writes, the value it held or that it held none), then the batch's
//! writes to their tables, then the commit number with the counters after
//! it under `journal/committed`. sled recovers a prefix of its writes, so
//! after a crash the marker being there means all of the batch is; an undo
//! record ahead of the marker means the commit was cut short, and
//! [`recover`] puts back what its keys held before (whole values, so doing
//! it twice is harmless), which leaves none of it. The commit was never
//! acknowledged: callers acknowledge only after a flush, which the marker
//! precedes.
//!
//! A commit that only adds jobs and log records (a submission) writes no
//! undo record: the marker before it holds the last job id and log
//! sequence, so what a crash left of it lies past those counters, and
//! [`recover`] trims it. The counters cover every job a commit writes, and
//! a job is never stored outside a commit before one created it, so
//! nothing else lies there. This saves a sled write per submission (a
//! tenth of its CPU under 8 clients; BENCHMARKS.md, session 9).
//!
//! Undo rather than redo: a redo journal holds a second copy of every
//! value the batch writes, and a durable submission waits for its flush,
//! which writes all of it (5.9 KB per submission with a redo journal,
//! 4.1 KB with this one; BENCHMARKS.md, session 8). A submission only adds
//! keys, so its undo record is the keys alone. Stores whose last commit a
//! daemon of schema 2 or older cut short hold a redo journal under
//! `journal/journal` (schema 1: both in `meta`, without counters), which
//! [`recover`] still finishes.
//!
//! A write outside commits to a key a commit also writes is never made
//! while that commit is under way: a job's progress is stored under the
//! factory's lock, which its commits hold too, and a reader's cursor only
//! by the reader whose commits move it. So a rollback never puts back a
//! key over a later write of it.
//!
//! The counters (log sequence, job, order, unit, sales order and shipment
//! ids) ride in the marker rather than in a meta key each: a submission
//! moves two of them, and two fewer sled writes per commit is a tenth of a
//! durable submission's instructions (BENCHMARKS.md).

use super::{StoreError, Trees, read_u64};

/// Key of a redo journal, written by daemons of schema 2 and older.
const JOURNAL: &str = "journal";
/// Key of the last commit's undo record.
const UNDO: &str = "undo";
/// Meta key of the last commit applied in full, with the counters after it.
const COMMITTED: &str = "committed";

/// The store's counters after a commit: the last log sequence number and
/// the last id of each kind handed out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Heads {
    pub log_seq: u64,
    pub job_id: u64,
    pub order_id: u64,
    pub unit_serial: u64,
    pub sales_order_id: u64,
    pub shipment_id: u64,
}

/// Bytes of encoded [`Heads`].
const HEADS_LEN: usize = 48;

impl Heads {
    fn encode(&self, buf: &mut Vec<u8>) {
        for n in [
            self.log_seq,
            self.job_id,
            self.order_id,
            self.unit_serial,
            self.sales_order_id,
            self.shipment_id,
        ] {
            buf.extend_from_slice(&n.to_be_bytes());
        }
    }

    /// The counters of a marker or undo record, after its commit number.
    pub(super) fn of_marker(marker: &[u8]) -> Option<Self> {
        Self::decode(marker.get(8..)?)
    }

    fn decode(b: &[u8]) -> Option<Self> {
        let mut n = b
            .get(..HEADS_LEN)?
            .chunks_exact(8)
            .map(|c| read_u64(Some(c)));
        Some(Self {
            log_seq: n.next()?,
            job_id: n.next()?,
            order_id: n.next()?,
            unit_serial: n.next()?,
            sales_order_id: n.next()?,
            shipment_id: n.next()?,
        })
    }
}

/// The marker of commit `n`.
fn marker(n: u64, heads: &Heads) -> Vec<u8> {
    let mut buf = Vec::with_capacity(8 + HEADS_LEN);
    buf.extend_from_slice(&n.to_be_bytes());
    heads.encode(&mut buf);
    buf
}

/// Writes the marker of commit `n` by itself: a schema-1 store's counters
/// moving into it when the store first opens under this daemon.
pub(super) fn mark(t: &Trees, n: u64, heads: &Heads) -> Result<(), StoreError> {
    t.journal.insert(COMMITTED, marker(n, heads))?;
    Ok(())
}

/// One write of a commit.
#[derive(Debug)]
pub(super) struct Op<'a> {
    pub tree: &'a sled::Tree,
    pub key: Vec<u8>,
    /// `None` removes the key.
    pub value: Option<Vec<u8>>,
    /// Whether the key can hold a value yet.
    pub fresh: Fresh,
}

/// What a commit knows of a key it writes before writing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fresh {
    /// It may hold a value: the undo record reads it.
    No,
    /// It lies past a counter this commit moves (a machine state keyed by
    /// its log sequence), so it holds nothing yet: the undo record says so
    /// without reading it. Reading cost a twelfth of a submission's CPU.
    Yes,
    /// As `Yes`, in a table that [`recover`] trims to the marker's
    /// counters (log records past `log_seq`, jobs past `job_id`): a commit
    /// of only such writes needs no undo record at all.
    Counted,
}

/// The writes of one commit, in order.
#[derive(Debug, Default)]
pub(super) struct Writes<'a> {
    pub ops: Vec<Op<'a>>,
}

impl<'a> Writes<'a> {
    /// A record, encoded in the store's layout.
    pub fn put<T: serde::Serialize>(
        &mut self,
        tree: &'a sled::Tree,
        table: &'static str,
        key: impl AsRef<[u8]>,
        v: &T,
    ) -> Result<(), StoreError> {
        let value = super::codec::encode(table, v)?;
        self.raw(tree, key, value);
        Ok(())
    }

    /// A record under a key that holds nothing yet, which the caller
    /// knows from a counter (see [`Fresh`]).
    pub fn put_new<T: serde::Serialize>(
        &mut self,
        tree: &'a sled::Tree,
        table: &'static str,
        key: impl AsRef<[u8]>,
        v: &T,
        fresh: Fresh,
    ) -> Result<(), StoreError> {
        self.put(tree, table, key, v)?;
        if let Some(op) = self.ops.last_mut() {
            op.fresh = fresh;
        }
        Ok(())
    }

    /// Bytes as they are (counters, index entries).
    pub fn raw(&mut self, tree: &'a sled::Tree, key: impl AsRef<[u8]>, value: impl Into<Vec<u8>>) {
        self.ops.push(Op {
            tree,
            key: key.as_ref().to_vec(),
            value: Some(value.into()),
            fresh: Fresh::No,
        });
    }

    /// A key to remove.
    pub fn remove(&mut self, tree: &'a sled::Tree, key: impl AsRef<[u8]>) {
        self.ops.push(Op {
            tree,
            key: key.as_ref().to_vec(),
            value: None,
            fresh: Fresh::No,
        });
    }
}

fn push(buf: &mut Vec<u8>, bytes: &[u8]) {
    buf.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    buf.extend_from_slice(bytes);
}

/// The undo record of commit `n`: the commit number and the counters
/// before it, then per write the tree's name, the key, and what the key
/// holds now (or that it holds nothing), each length-prefixed.
fn undo_record(n: u64, before: &Heads, ops: &[Op<'_>]) -> Result<Vec<u8>, StoreError> {
    let mut buf = marker(n, before);
    buf.reserve(ops.len() * 32);
    for op in ops {
        push(&mut buf, &op.tree.name());
        push(&mut buf, &op.key);
        if op.fresh != Fresh::No {
            // Tests run with debug assertions: every commit they make
            // checks the caller's claim.
            debug_assert!(
                op.tree.get(&op.key)?.is_none(),
                "a key said to be fresh holds a value"
            );
            buf.push(0);
            continue;
        }
        match op.tree.get(&op.key)? {
            Some(v) => {
                buf.push(1);
                push(&mut buf, &v);
            }
            None => buf.push(0),
        }
    }
    Ok(buf)
}

/// Writes commit `n`: its undo record, its writes, its marker with the
/// counters after it. If a write fails, what was applied is undone at
/// once (the marker still names the commit before, so the next commit
/// reuses `n`); if undoing fails too, the error says so and the store must
/// be reopened, which finishes the undo.
pub(super) fn write(
    db: &sled::Db,
    t: &Trees,
    n: u64,
    before: &Heads,
    after: &Heads,
    ops: &[Op<'_>],
) -> Result<(), StoreError> {
    // A commit that only adds jobs and log records (a submission) has its
    // undo in the marker before it: [`recover`] trims what lies past its
    // counters, and a failure here removes the keys it wrote.
    let undo = if only_counted(ops) {
        None
    } else {
        let undo = undo_record(n, before, ops)?;
        t.journal.insert(UNDO, &undo[..])?;
        Some(undo)
    };
    let done = apply(ops).and_then(|()| mark(t, n, after));
    if let Err(e) = done {
        let undone = match &undo {
            Some(undo) => roll_back(db, undo, usize::MAX),
            None => ops
                .iter()
                .try_for_each(|op| op.tree.remove(&op.key[..]).map(drop))
                .map_err(StoreError::from),
        };
        return Err(match undone {
            Ok(()) => e,
            Err(undo_err) => StoreError::HalfCommitted {
                source: Box::new(e),
                undo: Box::new(undo_err),
            },
        });
    }
    Ok(())
}

/// Whether every write is [`Fresh::Counted`]: a commit that needs no undo
/// record.
pub(super) fn only_counted(ops: &[Op<'_>]) -> bool {
    ops.iter().all(|op| op.fresh == Fresh::Counted)
}

#[cfg(test)]
thread_local! {
    /// Writes [`apply`] makes before it fails (tests only).
    static FAIL_AFTER: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// The failure a test asked for before write `i`.
#[cfg(test)]
fn injected(i: usize) -> Result<(), StoreError> {
    if FAIL_AFTER.with(std::cell::Cell::get) == Some(i) {
        return Err(StoreError::Io(std::io::Error::other("injected failure")));
    }
    Ok(())
}

#[cfg(not(test))]
#[inline]
fn injected(_: usize) -> Result<(), StoreError> {
    Ok(())
}

/// Makes the next commits on this thread fail after `n` writes (tests
/// only).
#[cfg(test)]
pub(super) fn fail_after(n: Option<usize>) {
    FAIL_AFTER.with(|f| f.set(n));
}

/// The writes themselves.
pub(super) fn apply(ops: &[Op<'_>]) -> Result<(), StoreError> {
    for (i, op) in ops.iter().enumerate() {
        injected(i)?;
        match &op.value {
            Some(v) => op.tree.insert(&op.key[..], &v[..])?,
            None => op.tree.remove(&op.key[..])?,
        };
    }
    Ok(())
}

/// What a crash leaves of commit `n` when it strikes after the undo
/// record and the first `applied` writes (tests only).
#[cfg(test)]
pub(super) fn cut_short(
    t: &Trees,
    n: u64,
    before: &Heads,
    ops: &[Op<'_>],
    applied: usize,
) -> Result<(), StoreError> {
    t.journal.insert(UNDO, undo_record(n, before, ops)?)?;
    apply(&ops[..applied.min(ops.len())])
}

/// What a crash left of commit `n` when a daemon of schema 2, which
/// journalled for redo, was cut short after its journal and the first
/// `applied` writes (tests only: this daemon writes no redo journal).
#[cfg(test)]
pub(super) fn redo_cut_short(
    t: &Trees,
    n: u64,
    after: &Heads,
    ops: &[Op<'_>],
    applied: usize,
) -> Result<(), StoreError> {
    let mut buf = marker(n, after);
    for op in ops {
        push(&mut buf, &op.tree.name());
        push(&mut buf, &op.key);
        match &op.value {
            Some(v) => {
                buf.push(1);
                push(&mut buf, v);
            }
            None => buf.push(0),
        }
    }
    t.journal.insert(JOURNAL, buf)?;
    apply(&ops[..applied.min(ops.len())])
}

/// Puts back what the keys of an undo record held, the first `limit` of
/// them (all but in tests, which cut an undo short too).
fn roll_back(db: &sled::Db, undo: &[u8], limit: usize) -> Result<(), StoreError> {
    let mut at = 8 + HEADS_LEN;
    let mut done = 0;
    while at < undo.len() && done < limit {
        let tree = db.open_tree(take(undo, &mut at)?)?;
        let key = take(undo, &mut at)?;
        match undo.get(at) {
            Some(1) => {
                at += 1;
                tree.insert(key, take(undo, &mut at)?)?;
            }
            Some(0) => {
                at += 1;
                tree.remove(key)?;
            }
            _ => return Err(unreadable(UNDO)),
        }
        done += 1;
    }
    Ok(())
}

/// A crash that strikes an undo after its first `undone` writes (tests
/// only).
#[cfg(test)]
pub(super) fn undo_cut_short(db: &sled::Db, t: &Trees, undone: usize) -> Result<(), StoreError> {
    let undo = t.journal.get(UNDO)?.ok_or_else(|| unreadable(UNDO))?;
    roll_back(db, &undo, undone)
}

/// A journal entry that cannot be read: never guessed at.
fn unreadable(key: &str) -> StoreError {
    StoreError::Unreadable {
        table: "journal",
        key: key.into(),
    }
}

/// Reads `len`-prefixed bytes at `*at`.
fn take<'b>(buf: &'b [u8], at: &mut usize) -> Result<&'b [u8], StoreError> {
    let bad = || unreadable("journal or undo");
    let len_end = at.checked_add(4).ok_or_else(bad)?;
    let len = buf.get(*at..len_end).ok_or_else(bad)?;
    let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
    let end = len_end.checked_add(len).ok_or_else(bad)?;
    let bytes = buf.get(len_end..end).ok_or_else(bad)?;
    *at = end;
    Ok(bytes)
}

/// Settles a commit cut short by a crash: undoes this daemon's, finishes
/// an older daemon's. Returns the number of the last commit, which the
/// next one follows, and the counters after it (`None` for a store whose
/// counters are still in meta keys: schema 1).
pub(super) fn recover(db: &sled::Db, t: &Trees) -> Result<(u64, Option<Heads>), StoreError> {
    let (done, heads) = undo_cut_commit(db, t)?;
    // Only a marker this daemon or schema 2 wrote bounds the log and the
    // jobs exactly; a schema-1 store has none yet, and nothing to trim.
    if let Some(h) = &heads {
        let removed = trim(t, h)?;
        if removed > 0 {
            db.flush()?;
            tracing::warn!(
                commit = done + 1,
                records = removed,
                "removed what a crash left of a submission"
            );
        }
    }
    Ok((done, heads))
}

/// Finishes a redo journal, then undoes a commit whose undo record is
/// ahead of the marker.
fn undo_cut_commit(db: &sled::Db, t: &Trees) -> Result<(u64, Option<Heads>), StoreError> {
    let (done, heads) = finish_redo(db, t)?;
    let Some(undo) = t.journal.get(UNDO)? else {
        return Ok((done, heads));
    };
    let n = read_u64(undo.get(..8));
    if n <= done {
        return Ok((done, heads));
    }
    let before = Heads::of_marker(&undo).ok_or_else(|| unreadable(UNDO))?;
    roll_back(db, &undo, usize::MAX)?;
    mark(t, n, &before)?;
    db.flush()?;
    tracing::warn!(commit = n, "undid a commit cut short by a crash");
    Ok((n, Some(before)))
}

/// Removes log records and jobs past the counters of the last marker: what
/// a commit of only [`Fresh::Counted`] writes left when a crash cut it
/// short. Returns how many.
fn trim(t: &Trees, heads: &Heads) -> Result<usize, StoreError> {
    let mut removed = 0;
    for (tree, last) in [(&t.log, heads.log_seq), (&t.jobs, heads.job_id)] {
        let Some(first) = last.checked_add(1) else {
            continue;
        };
        for kv in tree.range(first.to_be_bytes()..) {
            tree.remove(kv?.0)?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Finishes a commit that a daemon of schema 2 or older journalled for
/// redo and a crash cut short.
fn finish_redo(db: &sled::Db, t: &Trees) -> Result<(u64, Option<Heads>), StoreError> {
    // Schema 1 kept both in `meta`, without counters; later daemons' first
    // commit or open writes a marker into `journal`, after which `meta`'s
    // are history. What `journal` holds always carries the counters: one
    // without them is damaged, never read as schema 1's.
    let legacy = t.journal.get(COMMITTED)?.is_none()
        && t.journal.get(JOURNAL)?.is_none()
        && t.journal.get(UNDO)?.is_none();
    let tree = if legacy { &t.meta } else { &t.journal };
    let heads_of = |entry: &[u8], key: &str| -> Result<Option<Heads>, StoreError> {
        if legacy {
            return Ok(None);
        }
        Heads::of_marker(entry)
            .map(Some)
            .ok_or_else(|| unreadable(key))
    };
    let marked = tree.get(COMMITTED)?;
    let done = read_u64(marked.as_deref());
    let done_heads = match &marked {
        Some(m) => heads_of(m, COMMITTED)?,
        None => None,
    };
    let Some(buf) = tree.get(JOURNAL)? else {
        return Ok((done, done_heads));
    };
    let n = read_u64(buf.get(..8));
    if buf.len() < 8 || n <= done {
        return Ok((done, done_heads));
    }
    let heads = heads_of(&buf, JOURNAL)?;
    let mut at = if legacy { 8 } else { 8 + HEADS_LEN };
    while at < buf.len() {
        let tree = db.open_tree(take(&buf, &mut at)?)?;
        let key = take(&buf, &mut at)?;
        match buf.get(at) {
            Some(1) => {
                at += 1;
                tree.insert(key, take(&buf, &mut at)?)?;
            }
            Some(0) => {
                at += 1;
                tree.remove(key)?;
            }
            _ => return Err(unreadable(JOURNAL)),
        }
    }
    match &heads {
        Some(h) => mark(t, n, h)?,
        None => {
            tree.insert(COMMITTED, &n.to_be_bytes())?;
        }
    }
    db.flush()?;
    tracing::warn!(commit = n, "finished a commit cut short by a crash");
    Ok((n, heads))
}
