//! The bytes of metering's aggregate records, pure: no field names and
//! no text numbers, because a year's query decodes thousands of them.
//!
//! Numbers are LEB128 varints (most counts fit in one or two bytes),
//! strings a varint length and UTF-8, enums one byte. A record's key says
//! which machine or SKU it belongs to, so that name is not repeated in
//! its rows. Every struct is taken apart field by field with an
//! exhaustive pattern: a field added to `TimeElements`, `Quantities` or
//! `StateChange` does not compile here until it is encoded. The store
//! puts its version byte in front ([`crate::store::codec`]); a record
//! that does not decode whole is refused (`None`), never half-read.

use std::collections::BTreeMap;

use crate::core::machine::{MachineState, StateChange, StateReason};
use crate::metering::hourly::{TimeAgg, UnitAgg, UnitKey, UnitRow};
use crate::metering::oee::{Quantities, TimeElements};

fn put(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// Reads what [`put`] and [`put_str`] wrote; `None` past the end or on
/// a malformed value.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u64(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = self.0.split_first()?;
            self.0 = rest;
            v |= u64::from(b & 0x7f).checked_shl(shift)?;
            if b < 0x80 {
                return Some(v);
            }
        }
        None
    }

    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn str(&mut self) -> Option<String> {
        let n = usize::try_from(self.u64()?).ok()?;
        if n > self.0.len() {
            return None;
        }
        let (s, rest) = self.0.split_at(n);
        self.0 = rest;
        String::from_utf8(s.to_vec()).ok()
    }

    /// A count of items that each take at least one byte: never more
    /// than the bytes left, so a corrupt count cannot reserve memory.
    fn len(&mut self) -> Option<usize> {
        let n = usize::try_from(self.u64()?).ok()?;
        (n <= self.0.len()).then_some(n)
    }

    fn done(&self) -> bool {
        self.0.is_empty()
    }
}

fn put_time(out: &mut Vec<u8>, t: &TimeElements) {
    let TimeElements {
        pbt_ms,
        apt_ms,
        setup_ms,
        delay_ms,
        down_ms,
        idle_ms,
        planned_down_ms,
        failures,
        repair_ms,
    } = *t;
    for v in [
        pbt_ms,
        apt_ms,
        setup_ms,
        delay_ms,
        down_ms,
        idle_ms,
        planned_down_ms,
        failures,
        repair_ms,
    ] {
        put(out, v);
    }
}

fn time(b: &mut Bytes<'_>) -> Option<TimeElements> {
    Some(TimeElements {
        pbt_ms: b.u64()?,
        apt_ms: b.u64()?,
        setup_ms: b.u64()?,
        delay_ms: b.u64()?,
        down_ms: b.u64()?,
        idle_ms: b.u64()?,
        planned_down_ms: b.u64()?,
        failures: b.u64()?,
        repair_ms: b.u64()?,
    })
}

const STATES: [MachineState; 7] = [
    MachineState::Offline,
    MachineState::Idle,
    MachineState::Producing,
    MachineState::Paused,
    MachineState::AwaitingOperator,
    MachineState::PlannedDown,
    MachineState::UnplannedDown,
];

fn state_byte(s: MachineState) -> u8 {
    match s {
        MachineState::Offline => 0,
        MachineState::Idle => 1,
        MachineState::Producing => 2,
        MachineState::Paused => 3,
        MachineState::AwaitingOperator => 4,
        MachineState::PlannedDown => 5,
        MachineState::UnplannedDown => 6,
    }
}

const REASONS: [StateReason; 13] = [
    StateReason::None,
    StateReason::Disconnected,
    StateReason::Connecting,
    StateReason::Fault,
    StateReason::Disabled,
    StateReason::BedClear,
    StateReason::Interrupted,
    StateReason::Cancelled,
    StateReason::Failed,
    StateReason::Halted,
    StateReason::OperatorPause,
    StateReason::ToolChange,
    StateReason::ProgramPause,
];

fn reason_byte(r: StateReason) -> u8 {
    match r {
        StateReason::None => 0,
        StateReason::Disconnected => 1,
        StateReason::Connecting => 2,
        StateReason::Fault => 3,
        StateReason::Disabled => 4,
        StateReason::BedClear => 5,
        StateReason::Interrupted => 6,
        StateReason::Cancelled => 7,
        StateReason::Failed => 8,
        StateReason::Halted => 9,
        StateReason::OperatorPause => 10,
        StateReason::ToolChange => 11,
        StateReason::ProgramPause => 12,
    }
}

/// A machine's time record.
pub fn encode_time(a: &TimeAgg) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + a.by_sku.len() * 24 + a.changes.len() * 12);
    put_time(&mut out, &a.all);
    put(&mut out, a.by_sku.len() as u64);
    for (sku, t) in &a.by_sku {
        put_str(&mut out, sku);
        put_time(&mut out, t);
    }
    put(&mut out, a.changes.len() as u64);
    for c in &a.changes {
        let StateChange {
            at_ms,
            state,
            reason,
            job_id,
            seq,
        } = c;
        put(&mut out, *at_ms);
        out.push(state_byte(*state));
        out.push(reason_byte(*reason));
        put(&mut out, job_id.map_or(0, |j| j.saturating_add(1)));
        put(&mut out, *seq);
    }
    out
}

/// What [`encode_time`] wrote.
pub fn decode_time(bytes: &[u8]) -> Option<TimeAgg> {
    let mut b = Bytes(bytes);
    let all = time(&mut b)?;
    let mut by_sku = BTreeMap::new();
    for _ in 0..b.len()? {
        let sku = b.str()?;
        by_sku.insert(sku, time(&mut b)?);
    }
    let n = b.len()?;
    let mut changes = Vec::with_capacity(n);
    for _ in 0..n {
        changes.push(StateChange {
            at_ms: b.u64()?,
            state: *STATES.get(usize::from(b.byte()?))?,
            reason: *REASONS.get(usize::from(b.byte()?))?,
            job_id: b.u64()?.checked_sub(1),
            seq: b.u64()?,
        });
    }
    b.done().then_some(TimeAgg {
        all,
        by_sku,
        changes,
    })
}

/// A unit record of `key`: per row, the other key's name and the counts.
pub fn encode_units(key: &UnitKey, a: &UnitAgg) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + a.rows.len() * 24);
    let rows: Vec<&UnitRow> = a
        .rows
        .iter()
        .filter(|r| key.counts(&r.machine, &r.sku))
        .collect();
    put(&mut out, rows.len() as u64);
    for r in rows {
        put_str(
            &mut out,
            match key {
                UnitKey::Machine(_) => &r.sku,
                UnitKey::Sku(_) => &r.machine,
            },
        );
        let Quantities {
            produced,
            good,
            scrap,
            rework,
            uninspected,
            first_inspected,
            first_pass_good,
            credited_runtime_ms,
        } = r.q;
        for v in [
            produced,
            good,
            scrap,
            rework,
            uninspected,
            first_inspected,
            first_pass_good,
            credited_runtime_ms,
            r.attempts,
            r.inspections,
        ] {
            put(&mut out, v);
        }
    }
    out
}

/// What [`encode_units`] wrote for `key`.
pub fn decode_units(key: &UnitKey, bytes: &[u8]) -> Option<UnitAgg> {
    let mut b = Bytes(bytes);
    let n = b.len()?;
    let mut rows = Vec::with_capacity(n);
    for _ in 0..n {
        let other = b.str()?;
        let (machine, sku) = match key {
            UnitKey::Machine(m) => (m.clone(), other),
            UnitKey::Sku(s) => (other, s.clone()),
        };
        let q = Quantities {
            produced: b.u64()?,
            good: b.u64()?,
            scrap: b.u64()?,
            rework: b.u64()?,
            uninspected: b.u64()?,
            first_inspected: b.u64()?,
            first_pass_good: b.u64()?,
            credited_runtime_ms: b.u64()?,
        };
        rows.push(UnitRow {
            machine,
            sku,
            q,
            attempts: b.u64()?,
            inspections: b.u64()?,
        });
    }
    b.done().then_some(UnitAgg { rows })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn elements() -> impl Strategy<Value = TimeElements> {
        prop::array::uniform9(any::<u64>()).prop_map(|v| TimeElements {
            pbt_ms: v[0],
            apt_ms: v[1],
            setup_ms: v[2],
            delay_ms: v[3],
            down_ms: v[4],
            idle_ms: v[5],
            planned_down_ms: v[6],
            failures: v[7],
            repair_ms: v[8],
        })
    }

    #[test]
    fn every_state_and_reason_has_its_own_byte() {
        for (i, s) in STATES.iter().enumerate() {
            assert_eq!(usize::from(state_byte(*s)), i);
        }
        for (i, r) in REASONS.iter().enumerate() {
            assert_eq!(usize::from(reason_byte(*r)), i);
        }
    }

    #[test]
    fn a_unit_record_is_a_fraction_of_its_json_and_a_cut_one_is_refused() {
        let rows: Vec<UnitRow> = (0..10)
            .map(|i| UnitRow {
                machine: "p042".into(),
                sku: format!("sku{i:02}"),
                q: Quantities {
                    produced: 30,
                    good: 27,
                    scrap: 2,
                    rework: 0,
                    uninspected: 1,
                    first_inspected: 29,
                    first_pass_good: 27,
                    credited_runtime_ms: 30 * 55 * 60_000,
                },
                attempts: 30,
                inspections: 29,
            })
            .collect();
        let a = UnitAgg { rows };
        let key = UnitKey::Machine("p042".into());
        let bytes = encode_units(&key, &a);
        let json = serde_json::to_vec(&a).expect("json");
        assert!(
            bytes.len() * 8 < json.len(),
            "{} vs {}",
            bytes.len(),
            json.len()
        );
        assert_eq!(decode_units(&key, &bytes), Some(a));
        assert_eq!(decode_units(&key, &bytes[..bytes.len() - 1]), None);
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(decode_units(&key, &longer), None);
    }

    proptest! {
        #[test]
        fn time_records_decode_to_what_was_encoded(
            all in elements(),
            by_sku in prop::collection::btree_map("[a-z0-9é-]{0,12}", elements(), 0..5),
            changes in prop::collection::vec(
                (any::<u64>(), 0usize..7, 0usize..13, prop::option::of(any::<u64>()), any::<u64>()),
                0..6,
            ),
        ) {
            let a = TimeAgg {
                all,
                by_sku,
                changes: changes
                    .into_iter()
                    .map(|(at_ms, s, r, job_id, seq)| StateChange {
                        at_ms,
                        state: STATES[s],
                        reason: REASONS[r],
                        // u64::MAX is no job id the daemon hands out.
                        job_id: job_id.filter(|j| *j < u64::MAX),
                        seq,
                    })
                    .collect(),
            };
            let bytes = encode_time(&a);
            prop_assert_eq!(decode_time(&bytes), Some(a));
            prop_assert_eq!(decode_time(&bytes[..bytes.len() - 1]), None);
        }

        #[test]
        fn unit_records_of_either_key_decode_to_what_was_encoded(
            rows in prop::collection::vec(("[a-z0-9]{1,6}", prop::array::uniform10(any::<u64>())), 0..6),
            by_sku in any::<bool>(),
        ) {
            let key = if by_sku { UnitKey::Sku("tile".into()) } else { UnitKey::Machine("p1".into()) };
            let a = UnitAgg {
                rows: rows
                    .into_iter()
                    .map(|(other, v)| {
                        let (machine, sku) = match &key {
                            UnitKey::Machine(m) => (m.clone(), other),
                            UnitKey::Sku(s) => (other, s.clone()),
                        };
                        UnitRow {
                            machine,
                            sku,
                            q: Quantities {
                                produced: v[0],
                                good: v[1],
                                scrap: v[2],
                                rework: v[3],
                                uninspected: v[4],
                                first_inspected: v[5],
                                first_pass_good: v[6],
                                credited_runtime_ms: v[7],
                            },
                            attempts: v[8],
                            inspections: v[9],
                        }
                    })
                    .collect(),
            };
            prop_assert_eq!(decode_units(&key, &encode_units(&key, &a)), Some(a));
        }
    }
}
