//! The `unit_index` table: three orderings of the units, keys only, so an
//! order's progress, a product's window and a time window read only the
//! units they need instead of decoding the whole `units` table.
//!
//! - `o` order id (8 bytes, big-endian) serial
//! - `s` SKU, a zero byte, end time (8 bytes) serial
//! - `t` end time (8 bytes) serial
//!
//! A unit's order, SKU and end time never change once it is made (QC
//! rewrites only its quality fields), so its keys are written with it and
//! never removed; writing them again is harmless.

use super::{StoreError, Trees};
use crate::metering::model::Unit;

/// Meta key set once the index holds every unit (stores made before the
/// index get it built at their next start).
const BUILT: &str = "unit_index_built";

/// The marker's key, for tests that unbuild the index.
#[cfg(test)]
pub(super) fn marker() -> &'static str {
    BUILT
}

/// The index keys of a unit.
pub(super) fn keys(u: &Unit) -> [Vec<u8>; 3] {
    let serial = u.serial.as_bytes();
    let ended = u.ended_ms.to_be_bytes();
    let mut by_order = order_prefix(u.order_id);
    by_order.extend_from_slice(serial);
    let mut by_sku = sku_prefix(&u.sku);
    by_sku.extend_from_slice(&ended);
    by_sku.extend_from_slice(serial);
    let mut by_time = time_prefix();
    by_time.extend_from_slice(&ended);
    by_time.extend_from_slice(serial);
    [by_order, by_sku, by_time]
}

/// Keys of an order's units start with this.
pub(super) fn order_prefix(order: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(9 + 10);
    k.push(b'o');
    k.extend_from_slice(&order.to_be_bytes());
    k
}

/// Keys of a product's units start with this (SKUs hold no zero byte).
pub(super) fn sku_prefix(sku: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(sku.len() + 2 + 8 + 10);
    k.push(b's');
    k.extend_from_slice(sku.as_bytes());
    k.push(0);
    k
}

/// Keys by end time start with this.
pub(super) fn time_prefix() -> Vec<u8> {
    vec![b't']
}

/// The key range under `prefix` (followed by an end time) of units that
/// ended in `from..to`.
pub(super) fn time_range(prefix: &[u8], from: u64, to: u64) -> (Vec<u8>, Vec<u8>) {
    let at = |t: u64| {
        let mut k = prefix.to_vec();
        k.extend_from_slice(&t.to_be_bytes());
        k
    };
    (at(from), at(to.max(from)))
}

/// Builds the index of a store made before it, once. Idempotent, so a
/// crash half-way only means building it again at the next start.
pub(super) fn build(db: &sled::Db, t: &Trees) -> Result<(), StoreError> {
    if t.meta.get(BUILT)?.is_some() {
        return Ok(());
    }
    let mut n = 0u64;
    for kv in t.units.iter() {
        let (k, v) = kv?;
        let u: Unit = super::codec::decode("units", &k, &v)?;
        for key in keys(&u) {
            t.unit_index.insert(key, &[])?;
        }
        n += 1;
    }
    t.meta.insert(BUILT, &[1])?;
    db.flush()?;
    if n > 0 {
        tracing::info!(units = n, "built the unit index");
    }
    Ok(())
}
