//! Sales orders and shipments: the records, the storefront's input and
//! the fulfillment rules. Pure: `now` and the operator are passed in; the
//! shell (`commerce::service`) stores what these return.
//!
//! States (see `docs/storefront.md`): received → allocated → picked →
//! packed → labelled → shipped, plus on hold (from any open state, back to
//! it on release), cancelled (unshipped units released) and returned.
//! Received and allocated follow the allocation; labelled and shipped
//! follow the shipments; picked, packed, hold, cancel and return are the
//! operator's (or storefront's) actions.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use thiserror::Error;
use utoipa::ToSchema;

use super::address::Address;
pub use crate::core::model::SalesState;
use crate::metering::model::check_sku;

/// Most lines in one order.
pub const LINES_MAX: usize = 100;
/// Most units of one line.
pub const LINE_QUANTITY_MAX: u32 = 10_000;

/// What to do when stock is short.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WhenShort {
    /// Accept the order and wait for production.
    Backorder,
    /// Refuse the whole order (409 naming the short SKUs).
    Reject,
}

/// One line of a storefront order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LineInput {
    /// Product.
    pub sku: String,
    /// Units, 1 to 10,000.
    pub quantity: u32,
}

/// `POST /api/v1/orders` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderInput {
    /// The storefront channel (`[a-z0-9_-]`, 1 to 32), e.g. `web`, `shopify`.
    pub channel: String,
    /// The storefront's order id, unique per channel (1 to 64 printable
    /// characters).
    pub external_id: String,
    /// What was ordered, one line per SKU.
    pub lines: Vec<LineInput>,
    /// Where it goes (`name`, `street1`, `street2`, `city`, `region`,
    /// `postal_code`, `country`, `phone`, `email`).
    #[schema(value_type = Object)]
    pub ship_to: Address,
    /// Shipping service (1 to 32 characters), e.g. `standard`.
    pub service: String,
    /// Back-order or refuse when stock is short.
    pub when_short: WhenShort,
}

/// The storefront's input is wrong: a 422 naming the field.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{0}")]
pub struct Invalid(pub String);

fn printable(s: &str) -> bool {
    !s.chars().any(char::is_control)
}

impl OrderInput {
    /// Checks the fields that are commerce's (the address is the address
    /// module's, checked by its own `validate`).
    pub fn check(&self) -> Result<(), Invalid> {
        let ch = &self.channel;
        if ch.is_empty()
            || ch.len() > 32
            || !ch
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        {
            return Err(Invalid(format!(
                "channel '{ch}' must be 1 to 32 characters of a-z, 0-9, '_' or '-'"
            )));
        }
        let ext = &self.external_id;
        if ext.trim().is_empty() || ext.chars().count() > 64 || !printable(ext) {
            return Err(Invalid(
                "external_id must be 1 to 64 printable characters".into(),
            ));
        }
        if self.lines.is_empty() || self.lines.len() > LINES_MAX {
            return Err(Invalid(format!(
                "lines must have 1 to {LINES_MAX} entries, got {}",
                self.lines.len()
            )));
        }
        let mut seen = BTreeSet::new();
        for (i, l) in self.lines.iter().enumerate() {
            check_sku(&l.sku).map_err(|e| Invalid(format!("lines[{i}].sku: {e}")))?;
            if !(1..=LINE_QUANTITY_MAX).contains(&l.quantity) {
                return Err(Invalid(format!(
                    "lines[{i}].quantity must be 1 to {LINE_QUANTITY_MAX}, got {}",
                    l.quantity
                )));
            }
            if !seen.insert(l.sku.as_str()) {
                return Err(Invalid(format!(
                    "lines[{i}].sku '{}' appears twice; put the quantities on one line",
                    l.sku
                )));
            }
        }
        let svc = &self.service;
        if svc.trim().is_empty() || svc.chars().count() > 32 || !printable(svc) {
            return Err(Invalid(
                "service must be 1 to 32 printable characters".into(),
            ));
        }
        Ok(())
    }
}

/// One line of a sales order and its units.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SalesLine {
    /// Product.
    pub sku: String,
    /// Units ordered.
    pub quantity: u32,
    /// Units reserved for it and not yet shipped, oldest first.
    pub allocated: Vec<String>,
    /// Units shipped.
    pub shipped: Vec<String>,
    /// Units that came back.
    #[serde(default)]
    pub returned: Vec<String>,
    /// Production orders opened for its shortfall (make to order).
    #[serde(default)]
    pub production_orders: Vec<u64>,
}

impl SalesLine {
    /// Units still to reserve.
    pub fn short(&self) -> u32 {
        let have = self.allocated.len() + self.shipped.len() + self.returned.len();
        self.quantity
            .saturating_sub(u32::try_from(have).unwrap_or(u32::MAX))
    }
}

/// One state change, with who and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Transition {
    /// When, ms since the Unix epoch.
    pub at_ms: u64,
    /// State before (`None` when accepted).
    pub from: Option<SalesState>,
    /// State after.
    pub to: SalesState,
    /// Token name, or `microfactoryd` for automatic steps.
    pub by: String,
    /// Why, in words.
    pub note: Option<String>,
}

/// A storefront order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SalesOrder {
    /// Our id.
    pub id: u64,
    /// Storefront channel.
    pub channel: String,
    /// The storefront's id.
    pub external_id: String,
    /// Lines with their units.
    pub lines: Vec<SalesLine>,
    /// Where it goes (`name`, `street1`, `street2`, `city`, `region`,
    /// `postal_code`, `country`, `phone`, `email`).
    #[schema(value_type = Object)]
    pub ship_to: Address,
    /// Shipping service.
    pub service: String,
    /// What was asked for when stock is short.
    pub when_short: WhenShort,
    /// Where it is.
    pub state: SalesState,
    /// The state it was in when put on hold.
    pub held_from: Option<SalesState>,
    /// Its shipments, oldest first.
    pub shipments: Vec<u64>,
    /// Accepted at, ms since the Unix epoch.
    pub created_ms: u64,
    /// Every state change, oldest first.
    pub history: Vec<Transition>,
}

/// Who makes the automatic steps.
pub const SYSTEM: &str = "microfactoryd";

/// An action refused in the order's state: a 409.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{0}")]
pub struct Conflict(pub String);

/// What an operator or storefront asks of an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Units taken from the shelf.
    Pick,
    /// Units packed.
    Pack,
    /// Stop it.
    Hold,
    /// Let a held order go on.
    Release,
    /// Cancel it.
    Cancel,
    /// Shipped units came back.
    Return,
}

impl Action {
    fn name(self) -> &'static str {
        match self {
            Self::Pick => "picked",
            Self::Pack => "packed",
            Self::Hold => "put on hold",
            Self::Release => "released",
            Self::Cancel => "cancelled",
            Self::Return => "returned",
        }
    }
}

impl SalesOrder {
    /// A new order in `received`, with its acceptance in the history.
    pub fn new(id: u64, input: OrderInput, by: &str, now_ms: u64) -> Self {
        Self {
            id,
            channel: input.channel,
            external_id: input.external_id,
            lines: input
                .lines
                .into_iter()
                .map(|l| SalesLine {
                    sku: l.sku,
                    quantity: l.quantity,
                    allocated: Vec::new(),
                    shipped: Vec::new(),
                    returned: Vec::new(),
                    production_orders: Vec::new(),
                })
                .collect(),
            ship_to: input.ship_to,
            service: input.service,
            when_short: input.when_short,
            state: SalesState::Received,
            held_from: None,
            shipments: Vec::new(),
            created_ms: now_ms,
            history: vec![Transition {
                at_ms: now_ms,
                from: None,
                to: SalesState::Received,
                by: by.to_string(),
                note: None,
            }],
        }
    }

    /// No more units will be reserved, shipped or released for it.
    pub fn is_closed(&self) -> bool {
        matches!(
            self.state,
            SalesState::Shipped | SalesState::Cancelled | SalesState::Returned
        )
    }

    /// It waits for units (and is not held).
    pub fn wants_units(&self) -> bool {
        self.state == SalesState::Received && self.lines.iter().any(|l| l.short() > 0)
    }

    /// Every unit reserved and not shipped, with its SKU.
    pub fn unshipped(&self) -> impl Iterator<Item = (&str, &str)> {
        self.lines.iter().flat_map(|l| {
            l.allocated
                .iter()
                .map(move |s| (l.sku.as_str(), s.as_str()))
        })
    }

    fn fully_allocated(&self) -> bool {
        self.lines.iter().all(|l| l.short() == 0)
    }

    fn fully_shipped(&self) -> bool {
        self.lines
            .iter()
            .all(|l| l.shipped.len() + l.returned.len() >= l.quantity as usize)
    }

    /// Moves to `to`, recording who and when; a no-op if already there.
    fn go(&mut self, to: SalesState, by: &str, now_ms: u64, note: Option<String>) -> bool {
        if self.state == to {
            return false;
        }
        self.history.push(Transition {
            at_ms: now_ms,
            from: Some(self.state),
            to,
            by: by.to_string(),
            note,
        });
        self.state = to;
        true
    }

    /// The automatic steps after units were reserved or shipped: received
    /// → allocated when every unit is reserved; → labelled when every
    /// reserved unit is in a shipment; → shipped when every unit left.
    /// Returns the transitions made.
    pub fn settle(&mut self, in_shipments: &BTreeSet<String>, now_ms: u64) -> Vec<Transition> {
        let start = self.history.len();
        if self.state == SalesState::Received && self.fully_allocated() {
            self.go(SalesState::Allocated, SYSTEM, now_ms, None);
        }
        let open = matches!(
            self.state,
            SalesState::Allocated | SalesState::Picked | SalesState::Packed
        );
        if open
            && self.fully_allocated()
            && self.unshipped().all(|(_, s)| in_shipments.contains(s))
            && self.unshipped().next().is_some()
        {
            self.go(SalesState::Labelled, SYSTEM, now_ms, None);
        }
        if !self.is_closed() && self.state != SalesState::OnHold && self.fully_shipped() {
            self.go(SalesState::Shipped, SYSTEM, now_ms, None);
        }
        self.history[start..].to_vec()
    }

    /// Applies an operator's or storefront's action. The caller moves the
    /// units: on cancel, [`SalesOrder::unshipped`] before the call are the
    /// units to release; on return, the shipped ones come back.
    pub fn act(
        &mut self,
        action: Action,
        by: &str,
        now_ms: u64,
        note: Option<String>,
    ) -> Result<Transition, Conflict> {
        use SalesState as S;
        let to = match (action, self.state) {
            (Action::Pick, S::Allocated) => S::Picked,
            (Action::Pack, S::Picked) => S::Packed,
            (Action::Hold, S::Received | S::Allocated | S::Picked | S::Packed | S::Labelled) => {
                self.held_from = Some(self.state);
                S::OnHold
            }
            (Action::Release, S::OnHold) => self.held_from.take().unwrap_or(S::Received),
            (Action::Cancel, s) if !matches!(s, S::Shipped | S::Cancelled | S::Returned) => {
                self.held_from = None;
                for l in &mut self.lines {
                    l.allocated.clear();
                }
                S::Cancelled
            }
            (Action::Return, S::Shipped) => {
                for l in &mut self.lines {
                    let back = std::mem::take(&mut l.shipped);
                    l.returned.extend(back);
                }
                S::Returned
            }
            (a, s) => {
                let hint = match a {
                    Action::Pick => "an order is picked once all its units are allocated",
                    Action::Pack => "an order is packed after it is picked",
                    Action::Hold => "only open orders can be held",
                    Action::Release => "only an order on hold can be released",
                    Action::Cancel => "shipped, returned and cancelled orders cannot be cancelled",
                    Action::Return => "only a shipped order can come back",
                };
                return Err(Conflict(format!(
                    "order {} is {}, so it cannot be {}: {hint}",
                    self.id,
                    s.as_str(),
                    a.name()
                )));
            }
        };
        self.go(to, by, now_ms, note);
        Ok(self.history.last().cloned().unwrap_or_else(|| Transition {
            at_ms: now_ms,
            from: None,
            to,
            by: by.to_string(),
            note: None,
        }))
    }
}

/// An `Idempotency-Key` and the answer it gave, stored with the order in
/// the same commit: a retry with the same body gets this answer again, a
/// different body under the same key is a conflict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdempotencyRecord {
    /// sha256 of the request body, hex.
    pub body_sha256: String,
    /// The order it created.
    pub order_id: u64,
    /// The answer's status.
    pub status: u16,
    /// The answer's body.
    pub response: String,
}

/// A shipment's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ShipmentState {
    /// Has its number and label data; not yet handed to the carrier.
    Labelled,
    /// Left the factory.
    Shipped,
    /// Its order was cancelled before it left.
    Voided,
}

/// The units of one SKU in a shipment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ShipmentLine {
    /// Product.
    pub sku: String,
    /// The units.
    pub serials: Vec<String>,
}

/// A parcel: some or all of an order's reserved units.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Shipment {
    /// Our id.
    pub id: u64,
    /// Its order.
    pub order_id: u64,
    /// The carrier's shipment number (the label's barcode).
    pub number: String,
    /// The carrier's name.
    pub carrier: String,
    /// Shipping service.
    pub service: String,
    /// Where it is.
    pub state: ShipmentState,
    /// What is in it.
    pub lines: Vec<ShipmentLine>,
    /// Created at, ms since the Unix epoch.
    pub created_ms: u64,
    /// Shipped at.
    pub shipped_ms: Option<u64>,
    /// Who created it.
    pub created_by: String,
    /// Who shipped it.
    pub shipped_by: Option<String>,
}

impl Shipment {
    /// Every unit in it.
    pub fn serials(&self) -> impl Iterator<Item = &String> {
        self.lines.iter().flat_map(|l| l.serials.iter())
    }
}

/// `POST /orders/{id}/shipments` body: which units to ship (all reserved
/// units not yet in a shipment when absent).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ShipmentInput {
    /// A subset of the order's lines: SKU and how many of its reserved
    /// units.
    #[serde(default)]
    pub lines: Option<Vec<LineInput>>,
}

/// Picks the units of a new shipment: per requested line, the oldest
/// reserved units of that SKU not yet in a shipment.
pub fn shipment_units(
    order: &SalesOrder,
    in_shipments: &BTreeSet<String>,
    input: &ShipmentInput,
) -> Result<Vec<ShipmentLine>, Conflict> {
    use SalesState as S;
    if !matches!(
        order.state,
        S::Received | S::Allocated | S::Picked | S::Packed | S::Labelled
    ) {
        return Err(Conflict(format!(
            "order {} is {}, so it cannot get a shipment",
            order.id,
            order.state.as_str()
        )));
    }
    let free = |l: &SalesLine| -> Vec<String> {
        l.allocated
            .iter()
            .filter(|s| !in_shipments.contains(*s))
            .cloned()
            .collect()
    };
    let mut out = Vec::new();
    match &input.lines {
        None => {
            for l in &order.lines {
                let f = free(l);
                if !f.is_empty() {
                    out.push(ShipmentLine {
                        sku: l.sku.clone(),
                        serials: f,
                    });
                }
            }
        }
        Some(want) => {
            let mut seen = BTreeSet::new();
            for (i, w) in want.iter().enumerate() {
                if !seen.insert(w.sku.as_str()) {
                    return Err(Conflict(format!(
                        "lines[{i}].sku '{}' appears twice",
                        w.sku
                    )));
                }
                let Some(l) = order.lines.iter().find(|l| l.sku == w.sku) else {
                    return Err(Conflict(format!(
                        "lines[{i}]: order {} has no line for sku '{}'",
                        order.id, w.sku
                    )));
                };
                let f = free(l);
                if w.quantity == 0 || f.len() < w.quantity as usize {
                    return Err(Conflict(format!(
                        "lines[{i}]: order {} has {} unit(s) of '{}' allocated and not yet in a \
                         shipment; asked for {}",
                        order.id,
                        f.len(),
                        w.sku,
                        w.quantity
                    )));
                }
                out.push(ShipmentLine {
                    sku: l.sku.clone(),
                    serials: f.into_iter().take(w.quantity as usize).collect(),
                });
            }
        }
    }
    if out.is_empty() {
        return Err(Conflict(format!(
            "order {} has no allocated units that are not already in a shipment",
            order.id
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commerce::tests::address;
    use proptest::prelude::*;

    fn input(lines: &[(&str, u32)]) -> OrderInput {
        OrderInput {
            channel: "web".into(),
            external_id: "1001".into(),
            lines: lines
                .iter()
                .map(|(s, q)| LineInput {
                    sku: (*s).into(),
                    quantity: *q,
                })
                .collect(),
            ship_to: address(),
            service: "standard".into(),
            when_short: WhenShort::Backorder,
        }
    }

    #[test]
    fn an_order_input_names_the_field_that_is_wrong() {
        assert!(input(&[("a", 1)]).check().is_ok());
        let e = input(&[("a", 0)]).check().expect_err("zero");
        assert!(e.0.contains("lines[0].quantity"), "{e}");
        let e = input(&[("a", 1), ("a", 2)]).check().expect_err("twice");
        assert!(e.0.contains("lines[1].sku"), "{e}");
        let mut i = input(&[("a", 1)]);
        i.channel = "Web Shop".into();
        assert!(i.check().expect_err("channel").0.contains("channel"));
        let e = input(&[]).check().expect_err("no lines");
        assert!(e.0.contains("lines"), "{e}");
    }

    #[test]
    fn an_order_walks_from_received_to_shipped_and_each_step_is_recorded() {
        let mut o = SalesOrder::new(1, input(&[("a", 2)]), "shop", 10);
        assert!(o.wants_units());
        o.lines[0].allocated = vec!["U1".into(), "U2".into()];
        let t = o.settle(&BTreeSet::new(), 11);
        assert_eq!(t.len(), 1);
        assert_eq!(
            (t[0].from, t[0].to),
            (Some(SalesState::Received), SalesState::Allocated)
        );
        o.act(Action::Pick, "op", 12, None).expect("pick");
        assert!(o.act(Action::Pick, "op", 12, None).is_err(), "twice");
        o.act(Action::Pack, "op", 13, None).expect("pack");
        // One shipment with one unit: still packed (a partial shipment).
        let mut inship: BTreeSet<String> = ["U1".to_string()].into();
        assert!(o.settle(&inship, 14).is_empty());
        inship.insert("U2".into());
        o.settle(&inship, 15);
        assert_eq!(o.state, SalesState::Labelled);
        // Shipping moves the units; the order follows.
        o.lines[0].shipped = std::mem::take(&mut o.lines[0].allocated);
        o.settle(&inship, 16);
        assert_eq!(o.state, SalesState::Shipped);
        let states: Vec<SalesState> = o.history.iter().map(|t| t.to).collect();
        assert_eq!(
            states,
            vec![
                SalesState::Received,
                SalesState::Allocated,
                SalesState::Picked,
                SalesState::Packed,
                SalesState::Labelled,
                SalesState::Shipped
            ]
        );
        assert_eq!(o.history[2].by, "op");
        o.act(Action::Return, "op", 17, None).expect("return");
        assert_eq!(o.lines[0].returned.len(), 2);
        assert!(o.act(Action::Cancel, "op", 18, None).is_err());
    }

    #[test]
    fn a_held_order_goes_back_to_where_it_was_and_a_cancel_clears_its_reservations() {
        let mut o = SalesOrder::new(1, input(&[("a", 1)]), "shop", 1);
        o.lines[0].allocated = vec!["U1".into()];
        o.settle(&BTreeSet::new(), 2);
        o.act(Action::Pick, "op", 3, None).expect("pick");
        o.act(Action::Hold, "op", 4, Some("address check".into()))
            .expect("hold");
        assert!(o.act(Action::Pack, "op", 5, None).is_err(), "held");
        o.act(Action::Release, "op", 6, None).expect("release");
        assert_eq!(o.state, SalesState::Picked);
        o.act(Action::Cancel, "shop", 7, None).expect("cancel");
        assert!(o.lines[0].allocated.is_empty());
        assert_eq!(o.state, SalesState::Cancelled);
    }

    #[test]
    fn a_shipment_takes_the_requested_subset_of_units_not_yet_shipped() {
        let mut o = SalesOrder::new(1, input(&[("a", 3), ("b", 1)]), "shop", 1);
        o.lines[0].allocated = vec!["U1".into(), "U2".into()];
        let sub = ShipmentInput {
            lines: Some(vec![LineInput {
                sku: "a".into(),
                quantity: 1,
            }]),
        };
        let lines = shipment_units(&o, &BTreeSet::new(), &sub).expect("subset");
        assert_eq!(lines[0].serials, vec!["U1".to_string()]);
        let taken: BTreeSet<String> = ["U1".to_string()].into();
        let rest = shipment_units(&o, &taken, &ShipmentInput::default()).expect("rest");
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].serials, vec!["U2".to_string()]);
        let too_many = ShipmentInput {
            lines: Some(vec![LineInput {
                sku: "b".into(),
                quantity: 1,
            }]),
        };
        assert!(shipment_units(&o, &taken, &too_many).is_err());
    }

    fn action() -> impl Strategy<Value = Action> {
        prop_oneof![
            Just(Action::Pick),
            Just(Action::Pack),
            Just(Action::Hold),
            Just(Action::Release),
            Just(Action::Cancel),
            Just(Action::Return),
        ]
    }

    proptest! {
        #[test]
        fn whatever_is_asked_an_order_never_leaves_a_closed_state_and_its_history_is_its_path(
            actions in proptest::collection::vec((action(), any::<bool>()), 0..30)
        ) {
            let mut o = SalesOrder::new(1, input(&[("a", 2)]), "shop", 0);
            let mut next = 0;
            for (n, (a, alloc)) in actions.into_iter().enumerate() {
                let now = n as u64 + 1;
                if alloc && o.state == SalesState::Received && o.lines[0].short() > 0 {
                    next += 1;
                    o.lines[0].allocated.push(format!("U{next}"));
                    o.settle(&BTreeSet::new(), now);
                }
                let was_closed = matches!(o.state, SalesState::Cancelled | SalesState::Returned);
                let before = o.state;
                let r = o.act(a, "op", now, None);
                if was_closed {
                    prop_assert!(r.is_err());
                }
                if r.is_err() {
                    prop_assert_eq!(o.state, before);
                }
                // Never more reserved than ordered; cancelled keeps none.
                prop_assert!(o.lines[0].allocated.len() <= 2);
                if o.state == SalesState::Cancelled {
                    prop_assert!(o.lines[0].allocated.is_empty());
                }
            }
            for w in o.history.windows(2) {
                prop_assert_eq!(w[1].from, Some(w[0].to));
                prop_assert!(w[1].at_ms >= w[0].at_ms);
            }
            prop_assert_eq!(o.history.last().map(|t| t.to), Some(o.state));
        }
    }
}
