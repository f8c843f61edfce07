//! Finished goods: serialised units on the shelf and the levels a
//! storefront reads, derived from stock events and never edited in place.
//!
//! Pure: no I/O, no clock. The shell turns log records (units passing QC)
//! and requests (orders, shipments, adjustments) into [`StockEvent`]s,
//! applies them here, and stores the units and corrections that changed.
//! At start the levels are recomputed from the stored units
//! ([`Stock::restore`]); the property tests hold that to the fold of the
//! events.
//!
//! Every unit's state contributes to its product's levels (see
//! [`UnitState::contribution`]), so on hand, committed and unavailable can
//! never go below zero. Only a count that finds fewer units than are
//! reserved for orders makes `available` negative: the units it could not
//! attribute to a free unit are a negative correction, kept until the next
//! count (the storefront must see that it oversold).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};
use thiserror::Error;
use utoipa::ToSchema;

/// The one stock location until locations are configured.
pub const DEFAULT_LOCATION: &str = "main";

/// Where a finished unit is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum UnitState {
    /// Made, waiting for its QC verdict.
    QcPending,
    /// On the shelf, free to allocate.
    Available,
    /// Reserved for a sales order.
    Allocated,
    /// Left the factory.
    Shipped,
    /// Came back; waiting for inspection.
    Returned,
    /// On the shelf but damaged.
    Damaged,
    /// Not found by a count.
    Missing,
    /// Failed QC, or rejected after a return: not stock.
    Rejected,
}

impl UnitState {
    /// What one unit in this state adds to its product's levels.
    pub fn contribution(self) -> Levels {
        let on_hand = matches!(
            self,
            Self::QcPending | Self::Available | Self::Allocated | Self::Returned | Self::Damaged
        );
        let unavailable = matches!(self, Self::QcPending | Self::Returned | Self::Damaged);
        Levels {
            on_hand: i64::from(on_hand),
            committed: i64::from(self == Self::Allocated),
            unavailable: i64::from(unavailable),
        }
    }
}

/// A finished unit as commerce tracks it (metering keeps its production
/// record; this is its life after QC).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FgUnit {
    /// Serial (metering's).
    pub serial: String,
    /// Product.
    pub sku: String,
    /// Stock location.
    pub location: String,
    /// Where it is.
    pub state: UnitState,
    /// The sales order it is reserved for, shipped or returned with.
    pub order_id: Option<u64>,
}

/// What the store keeps per SKU besides its units: the inventory cursor
/// of its last change (for `?changed_since=`) and its count corrections
/// per location.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockSku {
    /// Inventory cursor of the last change of its levels.
    pub version: u64,
    /// Location → count correction (≤ 0).
    #[serde(default)]
    pub corrections: BTreeMap<String, i64>,
}

/// A product's quantities at a location (or summed over locations).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Levels {
    /// Units physically here (including reserved and unavailable ones).
    pub on_hand: i64,
    /// Reserved for sales orders.
    pub committed: i64,
    /// QC pending, damaged, or returned awaiting inspection.
    pub unavailable: i64,
}

impl Levels {
    /// What can be promised to a new order.
    pub fn available(self) -> i64 {
        self.on_hand - self.committed - self.unavailable
    }

    fn add(&mut self, d: Levels) {
        self.on_hand += d.on_hand;
        self.committed += d.committed;
        self.unavailable += d.unavailable;
    }

    fn sub(self, d: Levels) -> Levels {
        Levels {
            on_hand: self.on_hand - d.on_hand,
            committed: self.committed - d.committed,
            unavailable: self.unavailable - d.unavailable,
        }
    }

    /// Nothing at all.
    pub fn is_zero(self) -> bool {
        self == Levels::default()
    }
}

/// One thing that happened to finished goods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StockEvent {
    /// A unit entered finished goods (made; passing QC or waiting for it).
    Received {
        /// Serial.
        serial: String,
        /// Product.
        sku: String,
        /// Location.
        location: String,
        /// Still waiting for QC.
        qc_pending: bool,
    },
    /// A pending unit passed QC.
    QcPassed(String),
    /// A pending unit failed QC or was scrapped.
    QcRejected(String),
    /// An available unit was reserved for an order.
    Allocated {
        /// Serial.
        serial: String,
        /// Sales order.
        order_id: u64,
    },
    /// A reserved unit went back to the shelf.
    Released(String),
    /// A reserved unit left the factory.
    Shipped(String),
    /// A shipped unit came back.
    Returned(String),
    /// A returned unit was inspected.
    ReturnInspected {
        /// Serial.
        serial: String,
        /// Good: back on the shelf; otherwise rejected.
        good: bool,
    },
    /// An available unit was found damaged.
    Damaged(String),
    /// A missing or damaged unit was found good.
    Found(String),
    /// A physical count of a product at a location.
    Counted {
        /// Product.
        sku: String,
        /// Location.
        location: String,
        /// Units counted.
        counted: i64,
    },
}

/// Why a stock event does not apply. Nothing changed when one is returned.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum StockError {
    /// No such unit in finished goods.
    #[error("unit {0} is not in finished goods")]
    UnknownUnit(String),
    /// The unit is already in finished goods.
    #[error("unit {0} is already in finished goods")]
    Duplicate(String),
    /// The unit's state does not allow it.
    #[error("unit {serial} is {state:?}, so it cannot be {action}")]
    WrongState {
        /// Serial.
        serial: String,
        /// Its state.
        state: UnitState,
        /// What was asked.
        action: &'static str,
    },
    /// A count below zero, or above what can be explained.
    #[error("{0}")]
    BadCount(String),
}

/// What an applied event changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// Units whose record changed, as they are now.
    pub units: Vec<FgUnit>,
    /// The (product, location) corrections that changed, as they are now.
    pub corrections: Vec<((String, String), i64)>,
    /// Change of levels, per (product, location).
    pub deltas: Vec<((String, String), Levels)>,
}

/// Finished goods: every unit, the free ones in allocation order, the
/// levels per (product, location).
#[derive(Debug, Clone, Default)]
pub struct Stock {
    units: HashMap<String, FgUnit>,
    /// Available units per (product, location), by serial: serials sort in
    /// the order units were made, so the first is the oldest.
    free: HashMap<(String, String), BTreeSet<String>>,
    levels: BTreeMap<(String, String), Levels>,
    corrections: BTreeMap<(String, String), i64>,
}

fn key(sku: &str, location: &str) -> (String, String) {
    (sku.to_string(), location.to_string())
}

impl Stock {
    /// Stock as stored: its units and count corrections. Levels are
    /// recomputed from them.
    pub fn restore(
        units: impl IntoIterator<Item = FgUnit>,
        corrections: impl IntoIterator<Item = ((String, String), i64)>,
    ) -> Self {
        let mut s = Self::default();
        for u in units {
            s.place(u);
        }
        for (k, c) in corrections {
            s.levels.entry(k.clone()).or_default().on_hand += c;
            s.corrections.insert(k, c);
        }
        s
    }

    /// Puts a unit in the indexes and its contribution in the levels.
    fn place(&mut self, u: FgUnit) {
        let k = key(&u.sku, &u.location);
        self.levels
            .entry(k.clone())
            .or_default()
            .add(u.state.contribution());
        if u.state == UnitState::Available {
            self.free.entry(k).or_default().insert(u.serial.clone());
        }
        self.units.insert(u.serial.clone(), u);
    }

    /// Takes a unit out of the indexes and its contribution out of the
    /// levels.
    fn lift(&mut self, serial: &str) -> Option<FgUnit> {
        let u = self.units.remove(serial)?;
        let k = key(&u.sku, &u.location);
        if let Some(l) = self.levels.get_mut(&k) {
            *l = l.sub(u.state.contribution());
        }
        if let Some(f) = self.free.get_mut(&k) {
            f.remove(serial);
        }
        Some(u)
    }

    /// A unit.
    pub fn unit(&self, serial: &str) -> Option<&FgUnit> {
        self.units.get(serial)
    }

    /// Every unit (in no order).
    pub fn units(&self) -> impl Iterator<Item = &FgUnit> {
        self.units.values()
    }

    /// Levels at one location.
    pub fn levels_at(&self, sku: &str, location: &str) -> Levels {
        self.levels
            .get(&key(sku, location))
            .copied()
            .unwrap_or_default()
    }

    /// Levels of a product over every location.
    pub fn levels(&self, sku: &str) -> Levels {
        let mut l = Levels::default();
        for ((s, _), v) in &self.levels {
            if s == sku {
                l.add(*v);
            }
        }
        l
    }

    /// Every product with stock records, and its levels over every
    /// location, by SKU.
    pub fn all_levels(&self) -> BTreeMap<String, Levels> {
        let mut out: BTreeMap<String, Levels> = BTreeMap::new();
        for ((s, _), v) in &self.levels {
            out.entry(s.clone()).or_default().add(*v);
        }
        out
    }

    /// The count correction of a product at a location (≤ 0).
    pub fn correction(&self, sku: &str, location: &str) -> i64 {
        self.corrections
            .get(&key(sku, location))
            .copied()
            .unwrap_or(0)
    }

    /// Up to `n` free units of a product at a location, oldest first, never
    /// more than its available level (a count may have taken some away).
    pub fn allocatable(&self, sku: &str, location: &str, n: usize) -> Vec<String> {
        let cap = usize::try_from(self.levels_at(sku, location).available().max(0)).unwrap_or(0);
        self.free
            .get(&key(sku, location))
            .map(|f| f.iter().take(n.min(cap)).cloned().collect())
            .unwrap_or_default()
    }

    /// Moves one unit from `from` states to `to`.
    fn step(
        &mut self,
        serial: &str,
        from: &[UnitState],
        to: UnitState,
        order: Option<Option<u64>>,
        action: &'static str,
        out: &mut Applied,
    ) -> Result<(), StockError> {
        let u = self
            .units
            .get(serial)
            .ok_or_else(|| StockError::UnknownUnit(serial.to_string()))?;
        if !from.contains(&u.state) {
            return Err(StockError::WrongState {
                serial: serial.to_string(),
                state: u.state,
                action,
            });
        }
        let Some(mut u) = self.lift(serial) else {
            return Err(StockError::UnknownUnit(serial.to_string()));
        };
        let k = key(&u.sku, &u.location);
        let delta = to.contribution().sub(u.state.contribution());
        u.state = to;
        if let Some(o) = order {
            u.order_id = o;
        }
        out.units.push(u.clone());
        out.deltas.push((k, delta));
        self.place(u);
        Ok(())
    }

    /// Applies one event; on an error nothing changed.
    pub fn apply(&mut self, e: &StockEvent) -> Result<Applied, StockError> {
        use UnitState as S;
        let mut out = Applied::default();
        match e {
            StockEvent::Received {
                serial,
                sku,
                location,
                qc_pending,
            } => {
                if self.units.contains_key(serial) {
                    return Err(StockError::Duplicate(serial.clone()));
                }
                let state = if *qc_pending {
                    S::QcPending
                } else {
                    S::Available
                };
                let u = FgUnit {
                    serial: serial.clone(),
                    sku: sku.clone(),
                    location: location.clone(),
                    state,
                    order_id: None,
                };
                out.deltas.push((key(sku, location), state.contribution()));
                out.units.push(u.clone());
                self.place(u);
            }
            StockEvent::QcPassed(s) => {
                self.step(s, &[S::QcPending], S::Available, None, "passed", &mut out)?;
            }
            StockEvent::QcRejected(s) => {
                self.step(s, &[S::QcPending], S::Rejected, None, "rejected", &mut out)?;
            }
            StockEvent::Allocated { serial, order_id } => {
                let u = self
                    .units
                    .get(serial)
                    .ok_or_else(|| StockError::UnknownUnit(serial.clone()))?;
                if u.state == S::Available && self.levels_at(&u.sku, &u.location).available() <= 0 {
                    return Err(StockError::WrongState {
                        serial: serial.clone(),
                        state: u.state,
                        action: "allocated (a count left nothing available)",
                    });
                }
                self.step(
                    serial,
                    &[S::Available],
                    S::Allocated,
                    Some(Some(*order_id)),
                    "allocated",
                    &mut out,
                )?;
            }
            StockEvent::Released(s) => {
                self.step(
                    s,
                    &[S::Allocated],
                    S::Available,
                    Some(None),
                    "released",
                    &mut out,
                )?;
            }
            StockEvent::Shipped(s) => {
                self.step(s, &[S::Allocated], S::Shipped, None, "shipped", &mut out)?;
            }
            StockEvent::Returned(s) => {
                self.step(s, &[S::Shipped], S::Returned, None, "returned", &mut out)?;
            }
            StockEvent::ReturnInspected { serial, good } => {
                let to = if *good { S::Available } else { S::Rejected };
                self.step(
                    serial,
                    &[S::Returned],
                    to,
                    Some(None),
                    "inspected",
                    &mut out,
                )?;
            }
            StockEvent::Damaged(s) => {
                self.step(
                    s,
                    &[S::Available],
                    S::Damaged,
                    None,
                    "marked damaged",
                    &mut out,
                )?;
            }
            StockEvent::Found(s) => {
                self.step(
                    s,
                    &[S::Missing, S::Damaged],
                    S::Available,
                    None,
                    "found",
                    &mut out,
                )?;
            }
            StockEvent::Counted {
                sku,
                location,
                counted,
            } => self.count(sku, location, *counted, &mut out)?,
        }
        Ok(out)
    }

    /// A count: on hand becomes `counted`. Fewer units than recorded are
    /// marked missing (newest free ones first, then damaged, returned and
    /// pending ones); what cannot be attributed because the rest are
    /// reserved is a negative correction. More units than recorded are
    /// missing ones found; beyond those, the count is refused (found units
    /// are recorded by serial).
    fn count(
        &mut self,
        sku: &str,
        location: &str,
        counted: i64,
        out: &mut Applied,
    ) -> Result<(), StockError> {
        use UnitState as S;
        if counted < 0 {
            return Err(StockError::BadCount(format!(
                "a count of {counted} is below zero"
            )));
        }
        let k = key(sku, location);
        let old_corr = self.correction(sku, location);
        let unit_on_hand = self.levels_at(sku, location).on_hand - old_corr;
        let mine = |me: &Self, st: S| -> Vec<String> {
            let mut v: Vec<String> = me
                .units
                .values()
                .filter(|u| u.sku == sku && u.location == location && u.state == st)
                .map(|u| u.serial.clone())
                .collect();
            v.sort_unstable();
            v
        };
        let mut new_corr = 0;
        if counted >= unit_on_hand {
            let want = usize::try_from(counted - unit_on_hand).unwrap_or(usize::MAX);
            let missing = mine(self, S::Missing);
            if missing.len() < want {
                return Err(StockError::BadCount(format!(
                    "counted {counted} of {sku} at {location}, but only {} units are known there \
                     ({} recorded, {} missing); record a unit found by its serial, or make it \
                     pass QC",
                    unit_on_hand + missing.len() as i64,
                    unit_on_hand,
                    missing.len()
                )));
            }
            let plan: Vec<String> = missing.into_iter().rev().take(want).collect();
            for s in plan {
                self.step(&s, &[S::Missing], S::Available, None, "found", out)?;
            }
        } else {
            let mut left = usize::try_from(unit_on_hand - counted).unwrap_or(usize::MAX);
            for st in [S::Available, S::Damaged, S::Returned, S::QcPending] {
                let take: Vec<String> = mine(self, st).into_iter().rev().take(left).collect();
                left -= take.len();
                for s in take {
                    self.step(&s, &[st], S::Missing, None, "marked missing", out)?;
                }
            }
            new_corr = -(left as i64);
        }
        if new_corr != old_corr {
            self.levels.entry(k.clone()).or_default().on_hand += new_corr - old_corr;
            out.deltas.push((
                k.clone(),
                Levels {
                    on_hand: new_corr - old_corr,
                    ..Levels::default()
                },
            ));
            if new_corr == 0 {
                self.corrections.remove(&k);
            } else {
                self.corrections.insert(k.clone(), new_corr);
            }
            out.corrections.push((k, new_corr));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn received(serial: &str, pending: bool) -> StockEvent {
        StockEvent::Received {
            serial: serial.into(),
            sku: "a".into(),
            location: DEFAULT_LOCATION.into(),
            qc_pending: pending,
        }
    }

    fn levels(on_hand: i64, committed: i64, unavailable: i64) -> Levels {
        Levels {
            on_hand,
            committed,
            unavailable,
        }
    }

    #[test]
    fn a_unit_moves_from_qc_to_the_shelf_to_an_order_and_out_of_the_door() {
        let mut s = Stock::default();
        s.apply(&received("U1", true)).expect("received");
        assert_eq!(s.levels("a"), levels(1, 0, 1));
        assert_eq!(s.levels("a").available(), 0);
        s.apply(&StockEvent::QcPassed("U1".into())).expect("pass");
        assert_eq!(s.levels("a").available(), 1);
        s.apply(&StockEvent::Allocated {
            serial: "U1".into(),
            order_id: 7,
        })
        .expect("allocate");
        assert_eq!(s.levels("a"), levels(1, 1, 0));
        assert_eq!(s.unit("U1").and_then(|u| u.order_id), Some(7));
        s.apply(&StockEvent::Shipped("U1".into())).expect("ship");
        assert_eq!(s.levels("a"), levels(0, 0, 0));
        s.apply(&StockEvent::Returned("U1".into())).expect("return");
        assert_eq!(s.levels("a"), levels(1, 0, 1));
        s.apply(&StockEvent::ReturnInspected {
            serial: "U1".into(),
            good: true,
        })
        .expect("restock");
        assert_eq!(s.levels("a"), levels(1, 0, 0));
    }

    #[test]
    fn allocation_takes_the_oldest_free_units_first() {
        let mut s = Stock::default();
        for n in [3, 1, 2] {
            s.apply(&received(&format!("U{n:09}"), false)).expect("in");
        }
        assert_eq!(
            s.allocatable("a", DEFAULT_LOCATION, 2),
            vec!["U000000001".to_string(), "U000000002".to_string()]
        );
    }

    #[test]
    fn a_count_below_the_reserved_units_makes_available_negative_until_the_next_count() {
        let mut s = Stock::default();
        for n in 1..=3 {
            s.apply(&received(&format!("U{n}"), false)).expect("in");
        }
        for n in 1..=2 {
            s.apply(&StockEvent::Allocated {
                serial: format!("U{n}"),
                order_id: 1,
            })
            .expect("allocate");
        }
        let count = |c| StockEvent::Counted {
            sku: "a".into(),
            location: DEFAULT_LOCATION.into(),
            counted: c,
        };
        let a = s.apply(&count(1)).expect("count");
        // U3, the free one, is missing; one reserved unit is unexplained.
        assert_eq!(s.unit("U3").map(|u| u.state), Some(UnitState::Missing));
        assert_eq!(s.levels("a"), levels(1, 2, 0));
        assert_eq!(s.levels("a").available(), -1);
        assert_eq!(a.corrections, vec![(key("a", DEFAULT_LOCATION), -1)]);
        assert!(s.allocatable("a", DEFAULT_LOCATION, 5).is_empty());
        // Counting all three again finds U3 and clears the correction.
        s.apply(&count(3)).expect("count");
        assert_eq!(s.levels("a"), levels(3, 2, 0));
        assert_eq!(s.correction("a", DEFAULT_LOCATION), 0);
        // More than exist is refused, and changes nothing.
        let before = s.levels("a");
        assert!(matches!(s.apply(&count(9)), Err(StockError::BadCount(_))));
        assert_eq!(s.levels("a"), before);
    }

    #[test]
    fn events_that_do_not_fit_the_units_state_change_nothing() {
        let mut s = Stock::default();
        s.apply(&received("U1", true)).expect("in");
        let e = s.apply(&StockEvent::Allocated {
            serial: "U1".into(),
            order_id: 1,
        });
        assert!(matches!(e, Err(StockError::WrongState { .. })), "{e:?}");
        assert!(matches!(
            s.apply(&received("U1", false)),
            Err(StockError::Duplicate(_))
        ));
        assert!(matches!(
            s.apply(&StockEvent::Shipped("nope".into())),
            Err(StockError::UnknownUnit(_))
        ));
        assert_eq!(s.levels("a"), levels(1, 0, 1));
    }

    fn event() -> impl Strategy<Value = StockEvent> {
        let serial = (0u8..12).prop_map(|n| format!("U{n:02}"));
        let sku = prop_oneof![Just("a".to_string()), Just("b".to_string())];
        let loc = prop_oneof![Just("main".to_string()), Just("back".to_string())];
        prop_oneof![
            (serial.clone(), sku.clone(), loc.clone(), any::<bool>()).prop_map(
                |(serial, sku, location, qc_pending)| StockEvent::Received {
                    serial,
                    sku,
                    location,
                    qc_pending
                }
            ),
            serial.clone().prop_map(StockEvent::QcPassed),
            serial.clone().prop_map(StockEvent::QcRejected),
            (serial.clone(), 1u64..4)
                .prop_map(|(serial, order_id)| StockEvent::Allocated { serial, order_id }),
            serial.clone().prop_map(StockEvent::Released),
            serial.clone().prop_map(StockEvent::Shipped),
            serial.clone().prop_map(StockEvent::Returned),
            (serial.clone(), any::<bool>())
                .prop_map(|(serial, good)| StockEvent::ReturnInspected { serial, good }),
            serial.clone().prop_map(StockEvent::Damaged),
            serial.prop_map(StockEvent::Found),
            (sku, loc, -1i64..8).prop_map(|(sku, location, counted)| StockEvent::Counted {
                sku,
                location,
                counted
            }),
        ]
    }

    proptest! {
        #[test]
        fn levels_are_the_sum_of_the_events_and_the_stored_units_give_them_back(
            events in proptest::collection::vec(event(), 0..80)
        ) {
            let mut s = Stock::default();
            let mut summed: BTreeMap<(String, String), Levels> = BTreeMap::new();
            for e in &events {
                let before = s.levels.clone();
                match s.apply(e) {
                    Ok(a) => {
                        for (k, d) in a.deltas {
                            summed.entry(k).or_default().add(d);
                        }
                    }
                    Err(_) => prop_assert_eq!(&before, &s.levels, "a refused event changed levels"),
                }
                for (k, l) in &s.levels {
                    let corr = s.corrections.get(k).copied().unwrap_or(0);
                    prop_assert!(corr <= 0);
                    // Units alone never go below zero on any level...
                    prop_assert!(l.on_hand - corr >= 0 && l.committed >= 0 && l.unavailable >= 0);
                    prop_assert!(l.on_hand - corr - l.committed - l.unavailable >= 0);
                    // ...and available is negative only because a count says so.
                    if corr == 0 {
                        prop_assert!(l.available() >= 0, "{:?} {:?}", k, l);
                    }
                    // Free units are exactly the available level when no count
                    // correction hides some.
                    let free = s.free.get(k).map_or(0, BTreeSet::len) as i64;
                    prop_assert_eq!(l.available(), free + corr);
                }
                if let StockEvent::Counted { sku, location, counted } = e
                    && *counted >= 0
                    && s.levels_at(sku, location).on_hand != *counted
                {
                    // A count is refused only when it is above every known unit.
                    prop_assert!(s.levels_at(sku, location).on_hand < *counted);
                }
            }
            let nonzero = |m: &BTreeMap<(String, String), Levels>| -> BTreeMap<(String, String), Levels> {
                m.iter().filter(|(_, l)| !l.is_zero()).map(|(k, l)| (k.clone(), *l)).collect()
            };
            prop_assert_eq!(nonzero(&summed), nonzero(&s.levels));
            let restored = Stock::restore(
                s.units.values().cloned(),
                s.corrections.iter().map(|(k, c)| (k.clone(), *c)),
            );
            prop_assert_eq!(nonzero(&restored.levels), nonzero(&s.levels));
            let free = |s: &Stock| -> BTreeMap<(String, String), BTreeSet<String>> {
                s.free.iter().filter(|(_, f)| !f.is_empty()).map(|(k, f)| (k.clone(), f.clone())).collect()
            };
            prop_assert_eq!(free(&restored), free(&s));
        }
    }
}
