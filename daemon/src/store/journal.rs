//! The commit journal: how a batch of writes across tables is made atomic
//! without a sled transaction.
//!
//! A commit writes, in this order: the whole batch as one value under
//! `meta/journal` (with its commit number), each write to its table, and
//! the commit number under `meta/committed`. sled recovers a prefix of its
//! writes, so after a crash the marker being there means all of the batch
//! is; a journal ahead of the marker means the commit was cut short and
//! [`recover`] applies it again (every write is a whole value, so applying
//! one twice is harmless); no journal for it means none of it survived.
//! The marker also keeps a replay from undoing plain writes made after the
//! last commit (progress, cursors), which can only survive if it did.

use super::{StoreError, Trees, read_u64};

/// Meta key of the last commit's batch.
const JOURNAL: &str = "journal";
/// Meta key of the last commit applied in full.
const COMMITTED: &str = "committed";

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
    pub fn raw(&mut self, tree: &'a sled::Tree, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        self.ops.push(Op {
            tree,
            key: key.as_ref().to_vec(),
            value: Some(value.as_ref().to_vec()),
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

/// The journal entry of commit `n`: the commit number, then per write
/// the tree's name, the key, and the value (or a removal), each length-
/// prefixed.
pub(super) fn encode(n: u64, ops: &[Op<'_>]) -> Vec<u8> {
    let size: usize = ops
        .iter()
        .map(|o| 32 + o.key.len() + o.value.as_ref().map_or(0, Vec::len))
        .sum();
    let mut buf = Vec::with_capacity(8 + size);
    buf.extend_from_slice(&n.to_be_bytes());
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

/// Journals commit `n`, applies its writes, marks it done.
pub(super) fn write(t: &Trees, n: u64, ops: &[Op<'_>]) -> Result<(), StoreError> {
    t.meta.insert(JOURNAL, encode(n, ops))?;
    apply(ops)?;
    t.meta.insert(COMMITTED, &n.to_be_bytes())?;
    Ok(())
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
    ops: &[Op<'_>],
    applied: usize,
) -> Result<(), StoreError> {
    t.meta.insert(JOURNAL, encode(n, ops))?;
    apply(&ops[..applied.min(ops.len())])
}

/// A journal that cannot be read: never guessed at.
fn unreadable() -> StoreError {
    StoreError::Unreadable {
        table: "meta",
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
/// commit, which the next one follows.
pub(super) fn recover(db: &sled::Db, t: &Trees) -> Result<u64, StoreError> {
    let done = read_u64(t.meta.get(COMMITTED)?);
    let Some(buf) = t.meta.get(JOURNAL)? else {
        return Ok(done);
    };
    let n = read_u64(buf.get(..8));
    if buf.len() < 8 || n <= done {
        return Ok(done);
    }
    let mut at = 8;
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
    t.meta.insert(COMMITTED, &n.to_be_bytes())?;
    db.flush()?;
    tracing::warn!(commit = n, "finished a commit cut short by a crash");
    Ok(n)
}
