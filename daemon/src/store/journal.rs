//! The commit journal: how a batch of writes across tables is made atomic
//! without a sled transaction.
//!
//! A commit writes, in this order: the whole batch as one value under
//! `journal/journal` (with its commit number and the store's counters after
//! it), each write to its table, and the commit number with the counters
//! under `journal/committed`. sled recovers a prefix of its writes, so after a
//! crash the marker being there means all of the batch is; a journal ahead
//! of the marker means the commit was cut short and [`recover`] applies it
//! again (every write is a whole value, so applying one twice is
//! harmless); no journal for it means none of it survived. The marker also
//! keeps a replay from undoing plain writes made after the last commit
//! (progress, cursors), which can only survive if it did.
//!
//! The counters (log sequence, job, order, unit, sales order and shipment
//! ids) ride in the marker rather than in a meta key each: a submission
//! moves two of them, and two fewer sled writes per commit is a tenth of a
//! durable submission's instructions (BENCHMARKS.md). Stores written
//! before that (schema 1) kept them in meta keys and an 8-byte marker;
//! [`recover`] reads both forms.
//!
//! The journal and its marker have a tree of their own (schema 1 kept them
//! in `meta`): sled rewrites a node whole now and then as writes to it pile
//! up, and two writes per commit into `meta` rewrote everything else kept
//! there with them.

use super::{StoreError, Trees, read_u64};

/// Meta key of the last commit's batch.
const JOURNAL: &str = "journal";
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

    /// Bytes as they are (counters, index entries).
    pub fn raw(&mut self, tree: &'a sled::Tree, key: impl AsRef<[u8]>, value: impl Into<Vec<u8>>) {
        self.ops.push(Op {
            tree,
            key: key.as_ref().to_vec(),
            value: Some(value.into()),
        });
    }

    /// A key to remove.
    pub fn remove(&mut self, tree: &'a sled::Tree, key: impl AsRef<[u8]>) {
        self.ops.push(Op {
            tree,
            key: key.as_ref().to_vec(),
            value: None,
        });
    }
}

fn push(buf: &mut Vec<u8>, bytes: &[u8]) {
    buf.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    buf.extend_from_slice(bytes);
}

/// The journal entry of commit `n`: the commit number and the counters
/// after it, then per write the tree's name, the key, and the
/// value (or a removal), each length-prefixed.
pub(super) fn encode(n: u64, heads: &Heads, ops: &[Op<'_>]) -> Vec<u8> {
    let size: usize = ops
        .iter()
        .map(|o| 32 + o.key.len() + o.value.as_ref().map_or(0, Vec::len))
        .sum();
    let mut buf = marker(n, heads);
    buf.reserve(size);
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
    buf
}

/// Journals commit `n`, applies its writes, marks it done with the
/// counters after it.
pub(super) fn write(t: &Trees, n: u64, heads: &Heads, ops: &[Op<'_>]) -> Result<(), StoreError> {
    t.journal.insert(JOURNAL, encode(n, heads, ops))?;
    apply(ops)?;
    mark(t, n, heads)
}

/// The writes themselves.
pub(super) fn apply(ops: &[Op<'_>]) -> Result<(), StoreError> {
    for op in ops {
        match &op.value {
            Some(v) => op.tree.insert(&op.key[..], &v[..])?,
            None => op.tree.remove(&op.key[..])?,
        };
    }
    Ok(())
}

/// What a crash leaves of commit `n` when it strikes after the journal
/// and the first `applied` writes (tests only).
#[cfg(test)]
pub(super) fn cut_short(
    t: &Trees,
    n: u64,
    heads: &Heads,
    ops: &[Op<'_>],
    applied: usize,
) -> Result<(), StoreError> {
    t.journal.insert(JOURNAL, encode(n, heads, ops))?;
    apply(&ops[..applied.min(ops.len())])
}

/// A journal that cannot be read: never guessed at.
fn unreadable() -> StoreError {
    StoreError::Unreadable {
        table: "journal",
        key: JOURNAL.into(),
    }
}

/// Reads `len`-prefixed bytes at `*at`.
fn take<'b>(buf: &'b [u8], at: &mut usize) -> Result<&'b [u8], StoreError> {
    let len_end = at.checked_add(4).ok_or_else(unreadable)?;
    let len = buf.get(*at..len_end).ok_or_else(unreadable)?;
    let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
    let end = len_end.checked_add(len).ok_or_else(unreadable)?;
    let bytes = buf.get(len_end..end).ok_or_else(unreadable)?;
    *at = end;
    Ok(bytes)
}

/// Finishes a commit cut short by a crash; returns the number of the last
/// commit, which the next one follows, and the counters after it (`None`
/// for a store whose counters are still in meta keys: schema 1).
pub(super) fn recover(db: &sled::Db, t: &Trees) -> Result<(u64, Option<Heads>), StoreError> {
    // Schema 1 kept both in `meta`, without counters; this daemon's first
    // commit or open writes a marker into `journal`, after which `meta`'s
    // are history. What `journal` holds always carries the counters: one
    // without them is damaged, never read as schema 1's.
    let legacy = t.journal.get(COMMITTED)?.is_none() && t.journal.get(JOURNAL)?.is_none();
    let tree = if legacy { &t.meta } else { &t.journal };
    let heads_of = |entry: &[u8]| -> Result<Option<Heads>, StoreError> {
        if legacy {
            return Ok(None);
        }
        entry
            .get(8..)
            .and_then(Heads::decode)
            .map(Some)
            .ok_or_else(unreadable)
    };
    let marked = tree.get(COMMITTED)?;
    let done = read_u64(marked.as_deref());
    let done_heads = match &marked {
        Some(m) => heads_of(m)?,
        None => None,
    };
    let Some(buf) = tree.get(JOURNAL)? else {
        return Ok((done, done_heads));
    };
    let n = read_u64(buf.get(..8));
    if buf.len() < 8 || n <= done {
        return Ok((done, done_heads));
    }
    let heads = heads_of(&buf)?;
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
            _ => return Err(unreadable()),
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
