//! The commerce shell: sales orders, finished goods and shipments in
//! memory, every change decided under one lock and committed as one
//! `store::Batch` with its domain events, then flushed before anyone is
//! answered.
//!
//! **One lock, then flush outside it.** A decision (allocate units to an
//! order, ship a parcel, read a unit passing QC) runs under `state`, a
//! plain mutex: the pure rules decide, the store commits, memory follows.
//! That lock is what makes 32 clients racing for the last unit see exactly
//! one winner. The flush happens after the lock is released so that
//! concurrent requests share one fsync (the store's group commit); a
//! request answers only after its own flush, which also covers every
//! commit that its decision saw (sled recovers a prefix of its writes).
//!
//! **Finished goods follow QC by cursor.** The reader (see
//! [`Commerce::start`]) follows the durable domain log: `UnitMade` and
//! `UnitInspected` move units into finished goods; units that become
//! available are allocated to back-ordered orders, oldest order first.
//! The cursor moves in the same commit as what it wrote.
//!
//! **Inventory reads are served from a snapshot**: the body and ETag of
//! `GET /inventory` are computed once per change, published only after
//! the change is durable.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, Weak};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};
use utoipa::ToSchema;

use super::carrier::{Carrier, LabelRequest, LocalCarrier};
use super::inventory::{DEFAULT_LOCATION, FgUnit, Levels, Stock, StockEvent, StockSku, UnitState};
use super::labels::{
    LabelDate, LabelError, PackingSlip, Paper, ShippingLabel, SlipLine, UnitLabel,
};
use super::orders::{
    Action, Conflict, IdempotencyRecord, Invalid, OrderInput, SalesOrder, SalesState, Shipment,
    ShipmentInput, ShipmentState, WhenShort, shipment_units,
};
use crate::clock::now_ms;
use crate::config::ShopConfig;
use crate::core::events::{DomainEvent, LogRecord};
use crate::core::model::{AdjustmentKind, QcState};
use crate::metering::Metering;
use crate::store::{Batch, Store, StoreError};

/// The reader's cursor name.
pub const CURSOR: &str = "commerce";
/// Most log records handled in one commit.
const CHUNK: usize = 256;
/// How long the reader lets new log records gather before it reads them.
const GATHER: Duration = Duration::from_millis(100);

/// Why a commerce request was refused; each maps to one HTTP status.
#[derive(Debug, Error)]
pub enum CommerceError {
    /// No such order, shipment, unit or product (404).
    #[error("{0}")]
    NotFound(String),
    /// The request's values are wrong (422).
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// The thing's state does not allow it (409).
    #[error(transparent)]
    Conflict(#[from] Conflict),
    /// Stock is short and the order asked to be refused then (409).
    #[error("not enough stock of {}: the order asked to be refused when short", .0.join(", "))]
    Short(Vec<String>),
    /// Storage failed (500).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A document could not be drawn: `Invalid` is the record's fault
    /// (422), the others a bug in `labels` (500).
    #[error("cannot make the document: {0}")]
    Label(#[from] LabelError),
}

type Result<T, E = CommerceError> = std::result::Result<T, E>;

/// A sales order as the API shows it: the order and its shipments.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct OrderView {
    /// The order.
    #[serde(flatten)]
    pub order: SalesOrder,
    /// Its shipments, oldest first.
    #[serde(rename = "shipment_records")]
    pub shipment_records: Vec<Shipment>,
}

/// One product's levels, as `GET /inventory` lists them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct InventoryItem {
    /// Product.
    pub sku: String,
    /// Units here, reserved and unavailable ones included.
    pub on_hand: i64,
    /// Reserved for orders.
    pub committed: i64,
    /// QC pending, damaged, returned awaiting inspection.
    pub unavailable: i64,
    /// on hand − committed − unavailable: what a storefront may sell.
    pub available: i64,
}

impl InventoryItem {
    fn new(sku: &str, l: Levels) -> Self {
        Self {
            sku: sku.to_string(),
            on_hand: l.on_hand,
            committed: l.committed,
            unavailable: l.unavailable,
            available: l.available(),
        }
    }
}

/// `GET /inventory` body.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct InventoryList {
    /// Products, by SKU.
    pub items: Vec<InventoryItem>,
    /// Pass as `?changed_since=` to get only what changed after this.
    pub cursor: u64,
}

/// The published inventory: built once per change, read by every pull.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Inventory cursor.
    pub version: u64,
    /// Items with the cursor of their last change, by SKU.
    pub items: Vec<(u64, InventoryItem)>,
    /// The full listing, serialised, shared by every reader.
    pub body: Arc<[u8]>,
    /// Strong ETag of `body`.
    pub etag: String,
}

impl Snapshot {
    fn build(version: u64, items: Vec<(u64, InventoryItem)>) -> Self {
        let list = InventoryList {
            items: items.iter().map(|(_, i)| i.clone()).collect(),
            cursor: version,
        };
        let body: Vec<u8> = serde_json::to_vec(&list).unwrap_or_default();
        let etag = format!("\"inv-{version}\"");
        Self {
            version,
            items,
            body: body.into(),
            etag,
        }
    }

    /// The items changed after `since`, as a body and its ETag.
    pub fn changed_since(&self, since: u64) -> (Vec<u8>, String) {
        let list = InventoryList {
            items: self
                .items
                .iter()
                .filter(|(v, _)| *v > since)
                .map(|(_, i)| i.clone())
                .collect(),
            cursor: self.version,
        };
        (
            serde_json::to_vec(&list).unwrap_or_default(),
            format!("\"inv-{}-since-{since}\"", self.version),
        )
    }
}

/// `POST /inventory/{sku}/adjustments` body.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdjustmentInput {
    /// `count`, `damage` or `found`.
    pub kind: AdjustmentKind,
    /// For a count: the units counted at the location.
    #[serde(default)]
    pub counted: Option<i64>,
    /// For damage and found: the units, by serial.
    #[serde(default)]
    pub serials: Vec<String>,
    /// Reason code (`[a-z0-9_]`, 1 to 32), e.g. `cycle_count`, `dropped`.
    pub reason: String,
}

/// `POST /returns/{serial}/inspection` body.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReturnInspection {
    /// `pass` puts the unit back on the shelf; `fail` or `scrap` rejects it.
    pub result: QcState,
    /// Reason code; required unless `pass`.
    #[serde(default)]
    pub reason: Option<String>,
}

/// One SKU of a pick list.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PickItem {
    /// Product.
    pub sku: String,
    /// Product name, when it is a product.
    pub name: Option<String>,
    /// Stock location.
    pub location: String,
    /// Units to take.
    pub quantity: usize,
    /// Which units, oldest first.
    pub serials: Vec<String>,
    /// Which order each unit is for: (order id, serials).
    pub orders: Vec<PickOrder>,
}

/// An order's share of a pick list line.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PickOrder {
    /// Sales order.
    pub order_id: u64,
    /// Its units of this SKU.
    pub serials: Vec<String>,
}

/// `GET /picklist`: the units to take from the shelf for a batch of
/// orders, by SKU.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PickList {
    /// The orders asked for.
    pub orders: Vec<u64>,
    /// What to take, by SKU.
    pub items: Vec<PickItem>,
}

/// Everything a shipping label and packing slip print for one shipment:
/// the seam where the label renderers plug in.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ShipmentLabelData {
    /// The shipment (number, carrier, service, units).
    pub shipment: Shipment,
    /// Its order's storefront reference (`channel`/`external_id`).
    pub order_reference: String,
    /// The order's date, ms since the Unix epoch.
    pub order_created_ms: u64,
    /// Ship-to address.
    #[schema(value_type = Object)]
    pub ship_to: super::address::Address,
    /// Per line: SKU, product name and units.
    pub lines: Vec<LabelLine>,
    /// Sum of the products' weights, when every product has one.
    pub weight_g: Option<f64>,
}

/// One line of a label's contents.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LabelLine {
    /// Product.
    pub sku: String,
    /// Its name, when it is a product.
    pub title: Option<String>,
    /// Units in the shipment.
    pub serials: Vec<String>,
}

/// What a request's decision wrote, gathered for one commit.
#[derive(Debug, Default)]
struct Tx {
    batch: Batch,
    /// SKUs whose levels changed.
    touched: BTreeSet<String>,
    /// Orders that need production for their shortfall.
    produce: Vec<u64>,
}

impl Tx {
    fn event(&mut self, e: DomainEvent) {
        self.batch.events.push(e);
    }

    fn dirty(&self) -> bool {
        !self.batch.is_empty() || !self.touched.is_empty()
    }
}

/// Commerce's memory: everything is also in the store.
#[derive(Debug, Default)]
struct State {
    stock: Stock,
    orders: BTreeMap<u64, SalesOrder>,
    refs: HashMap<(String, String), u64>,
    idem: HashMap<String, IdempotencyRecord>,
    shipments: BTreeMap<u64, Shipment>,
    skus: BTreeMap<String, StockSku>,
    version: u64,
    last_order: u64,
    last_shipment: u64,
}

impl State {
    fn load(store: &Store) -> Result<Self, StoreError> {
        let skus: BTreeMap<String, StockSku> = store.stock_skus()?.into_iter().collect();
        let corrections: Vec<((String, String), i64)> = skus
            .iter()
            .flat_map(|(sku, r)| {
                r.corrections
                    .iter()
                    .map(move |(loc, c)| ((sku.clone(), loc.clone()), *c))
            })
            .collect();
        let stock = Stock::restore(store.fg_units()?, corrections);
        let orders: BTreeMap<u64, SalesOrder> = store
            .sales_orders()?
            .into_iter()
            .map(|o| (o.id, o))
            .collect();
        let refs = orders
            .values()
            .map(|o| ((o.channel.clone(), o.external_id.clone()), o.id))
            .collect();
        let (last_order, last_shipment) = store.commerce_counters()?;
        Ok(Self {
            stock,
            refs,
            orders,
            idem: store.idempotency_records()?.into_iter().collect(),
            shipments: store.shipments()?.into_iter().map(|s| (s.id, s)).collect(),
            version: skus.values().map(|r| r.version).max().unwrap_or(0),
            skus,
            last_order,
            last_shipment,
        })
    }

    /// Applies a stock event and records what it changed.
    fn stock(&mut self, tx: &mut Tx, e: &StockEvent) -> Result<(), super::inventory::StockError> {
        let applied = self.stock.apply(e)?;
        for (k, _) in &applied.deltas {
            tx.touched.insert(k.0.clone());
        }
        for ((sku, loc), c) in applied.corrections {
            let r = self.skus.entry(sku.clone()).or_default();
            if c == 0 {
                r.corrections.remove(&loc);
            } else {
                r.corrections.insert(loc, c);
            }
            tx.touched.insert(sku);
        }
        for u in applied.units {
            if let Some(i) = tx.batch.fg_units.iter().position(|x| x.serial == u.serial) {
                tx.batch.fg_units[i] = u;
            } else {
                tx.batch.fg_units.push(u);
            }
        }
        Ok(())
    }

    /// Gives every touched SKU a new inventory cursor and says so in the
    /// log.
    fn finish(&mut self, tx: &mut Tx) {
        for sku in &tx.touched {
            self.version += 1;
            let r = self.skus.entry(sku.clone()).or_default();
            r.version = self.version;
            tx.batch.stock_skus.push((sku.clone(), r.clone()));
            let l = self.stock.levels(sku);
            tx.batch.events.push(DomainEvent::StockChanged {
                sku: sku.clone(),
                on_hand: l.on_hand,
                committed: l.committed,
                unavailable: l.unavailable,
                available: l.available(),
                version: self.version,
            });
        }
        let orders: BTreeSet<u64> = tx.batch.sales_orders.iter().map(|o| o.id).collect();
        tx.batch.sales_orders = orders
            .into_iter()
            .filter_map(|id| self.orders.get(&id).cloned())
            .collect();
    }

    fn snapshot_items(&self) -> Vec<(u64, InventoryItem)> {
        self.stock
            .all_levels()
            .into_iter()
            .map(|(sku, l)| {
                let v = self.skus.get(&sku).map_or(0, |r| r.version);
                (v, InventoryItem::new(&sku, l))
            })
            .collect()
    }

    /// Serials of an order already in a live (labelled or shipped)
    /// shipment.
    fn in_shipments(&self, order: &SalesOrder) -> BTreeSet<String> {
        order
            .shipments
            .iter()
            .filter_map(|id| self.shipments.get(id))
            .filter(|s| s.state != ShipmentState::Voided)
            .flat_map(|s| s.serials().cloned())
            .collect()
    }

    fn order_mut(&mut self, id: u64) -> Result<&mut SalesOrder> {
        self.orders
            .get_mut(&id)
            .ok_or_else(|| CommerceError::NotFound(format!("no sales order {id}")))
    }

    /// Reserves free units for an order's short lines, oldest first; the
    /// order is written and its automatic steps taken.
    fn allocate(&mut self, tx: &mut Tx, id: u64, now: u64) {
        let Some(order) = self.orders.get(&id) else {
            return;
        };
        let mut grants: Vec<(usize, String, Vec<String>)> = Vec::new();
        for (i, l) in order.lines.iter().enumerate() {
            let short = l.short() as usize;
            if short > 0 {
                let free = self.stock.allocatable(&l.sku, DEFAULT_LOCATION, short);
                if !free.is_empty() {
                    grants.push((i, l.sku.clone(), free));
                }
            }
        }
        let mut moved = false;
        for (i, sku, serials) in grants {
            let mut got = Vec::new();
            for s in serials {
                let e = StockEvent::Allocated {
                    serial: s.clone(),
                    order_id: id,
                };
                if self.stock(tx, &e).is_ok() {
                    got.push(s);
                }
            }
            if got.is_empty() {
                continue;
            }
            moved = true;
            if let Some(o) = self.orders.get_mut(&id) {
                o.lines[i].allocated.extend(got.iter().cloned());
            }
            tx.event(DomainEvent::UnitsAllocated {
                order_id: id,
                sku,
                serials: got,
            });
        }
        if moved {
            self.settle(tx, id, now);
        }
    }

    /// Takes an order's automatic steps and writes it.
    fn settle(&mut self, tx: &mut Tx, id: u64, now: u64) {
        let Some(order) = self.orders.get(&id) else {
            return;
        };
        let inship = self.in_shipments(order);
        let Some(order) = self.orders.get_mut(&id) else {
            return;
        };
        for t in order.settle(&inship, now) {
            tx.event(DomainEvent::SalesOrderState {
                order_id: id,
                from: t.from.unwrap_or(t.to),
                state: t.to,
                by: t.by,
                note: t.note,
            });
        }
        tx.batch.sales_orders.push(order.clone());
    }

    /// Back-ordered orders waiting for these SKUs get their units, oldest
    /// order first.
    fn fill_backorders(&mut self, tx: &mut Tx, skus: &BTreeSet<String>, now: u64) {
        let waiting: Vec<u64> = self
            .orders
            .values()
            .filter(|o| {
                o.wants_units()
                    && o.lines
                        .iter()
                        .any(|l| l.short() > 0 && skus.contains(&l.sku))
            })
            .map(|o| o.id)
            .collect();
        for id in waiting {
            self.allocate(tx, id, now);
        }
    }

    fn view(&self, o: &SalesOrder) -> OrderView {
        OrderView {
            order: o.clone(),
            shipment_records: o
                .shipments
                .iter()
                .filter_map(|id| self.shipments.get(id).cloned())
                .collect(),
        }
    }
}

/// The answer to an order intake: what was created, or the first answer
/// under the same key.
#[derive(Debug, Clone)]
pub struct Intake {
    /// HTTP status of the first answer (201).
    pub status: u16,
    /// Its JSON body.
    pub body: String,
    /// It is a replay of the first answer.
    pub replay: bool,
}

/// The commerce service: shared by the HTTP handlers and its log reader.
pub struct Commerce {
    store: Store,
    metering: Arc<Metering>,
    make_to_order: BTreeSet<String>,
    carrier: Box<dyn Carrier>,
    /// `[shop]`: the labels' from address and the packing slips' header.
    shop: Option<ShopConfig>,
    state: Mutex<State>,
    view: RwLock<Arc<Snapshot>>,
    /// Itself, for background tasks that outlive a request.
    me: Weak<Self>,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

impl std::fmt::Debug for Commerce {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Commerce")
            .field("carrier", &self.carrier.name())
            .finish_non_exhaustive()
    }
}

fn check_reason(r: &str) -> Result<(), Invalid> {
    if (1..=32).contains(&r.len())
        && r.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        Ok(())
    } else {
        Err(Invalid(format!(
            "reason '{r}' must be a code of 1 to 32 characters of a-z, 0-9 or '_' (e.g. cycle_count)"
        )))
    }
}

/// An order as the shop knows it: `channel/external_id`.
fn order_reference(order: &SalesOrder) -> String {
    format!("{}/{}", order.channel, order.external_id)
}

/// sha256 of a request body, hex: what an idempotency key remembers.
pub fn body_digest(body: &[u8]) -> String {
    Sha256::digest(body)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Commerce {
    /// Commerce over the store's records, with the local carrier. Call
    /// [`Commerce::start`] to follow the log.
    pub fn new(
        store: Store,
        metering: Arc<Metering>,
        make_to_order: &[String],
        shop: Option<ShopConfig>,
    ) -> Result<Arc<Self>, StoreError> {
        let state = State::load(&store)?;
        let snap = Snapshot::build(state.version, state.snapshot_items());
        Ok(Arc::new_cyclic(|me| Self {
            me: me.clone(),
            store,
            metering,
            make_to_order: make_to_order.iter().cloned().collect(),
            carrier: Box::new(LocalCarrier),
            shop,
            state: Mutex::new(state),
            view: RwLock::new(Arc::new(snap)),
            cancel: CancellationToken::new(),
            tasks: TaskTracker::new(),
        }))
    }

    /// Starts the log reader, and asks for production that a crash cut
    /// short.
    pub fn start(self: &Arc<Self>) {
        let c = Arc::clone(self);
        self.tasks.spawn(async move { c.read_log().await });
        let pending: Vec<u64> = self
            .lock()
            .orders
            .values()
            .filter(|o| {
                o.wants_units()
                    && o.lines.iter().any(|l| {
                        l.short() > 0
                            && l.production_orders.is_empty()
                            && self.make_to_order.contains(&l.sku)
                    })
            })
            .map(|o| o.id)
            .collect();
        self.produce(pending);
    }

    /// Stops the reader and production requests.
    pub async fn shutdown(&self) {
        self.cancel.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs a decision under the lock, commits what it wrote, then (outside
    /// the lock) flushes and publishes the inventory. A decision that fails
    /// after changing memory has memory reloaded from the store.
    async fn decide<T>(&self, f: impl FnOnce(&mut State, &mut Tx, u64) -> Result<T>) -> Result<T> {
        let now = now_ms();
        let (out, snap, produce) = {
            let mut st = self.lock();
            let mut tx = Tx::default();
            let out = match f(&mut st, &mut tx, now) {
                Ok(v) => v,
                Err(e) => {
                    if tx.dirty() {
                        self.reload(&mut st);
                    }
                    return Err(e);
                }
            };
            st.finish(&mut tx);
            if let Err(e) = self.store.commit(&tx.batch, now) {
                self.reload(&mut st);
                return Err(e.into());
            }
            let snap = (!tx.touched.is_empty()).then(|| (st.version, st.snapshot_items()));
            (out, snap, tx.produce)
        };
        self.store.flush().await?;
        if let Some((version, items)) = snap {
            self.publish(version, items);
        }
        self.produce(produce);
        Ok(out)
    }

    fn reload(&self, st: &mut State) {
        match State::load(&self.store) {
            Ok(s) => *st = s,
            Err(e) => warn!(error = %e, "commerce could not reload its records"),
        }
    }

    /// Publishes a snapshot unless a newer one is out already.
    fn publish(&self, version: u64, items: Vec<(u64, InventoryItem)>) {
        if self.snapshot().version >= version {
            return;
        }
        let snap = Arc::new(Snapshot::build(version, items));
        let mut w = self.view.write().unwrap_or_else(PoisonError::into_inner);
        if w.version < version {
            *w = snap;
        }
    }

    /// The published inventory.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        Arc::clone(&self.view.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// One product's levels (404 when it has no stock and is no product).
    pub fn inventory_item(&self, sku: &str) -> Result<InventoryItem> {
        if let Some((_, i)) = self.snapshot().items.iter().find(|(_, i)| i.sku == sku) {
            return Ok(i.clone());
        }
        match self.metering.product(sku) {
            Ok(_) => Ok(InventoryItem::new(sku, Levels::default())),
            Err(_) => Err(CommerceError::NotFound(format!(
                "no product or stock with sku '{sku}'"
            ))),
        }
    }

    // ---------------------------------------------------------------- orders

    /// Takes a storefront order: remembered per idempotency key (same body:
    /// the first answer; other body: 409) and unique per (channel,
    /// external id); units are reserved at once, oldest first; when short,
    /// refused (409 naming the SKUs) or back-ordered as the order asks.
    pub async fn create_order(
        &self,
        input: OrderInput,
        key: Option<String>,
        digest: String,
        by: &str,
    ) -> Result<Intake> {
        input.check()?;
        // The one gate for addresses: a label printed from a bad one comes
        // back. Stored as normalised (US: Publication 28 style).
        let mut input = input;
        input.ship_to = crate::commerce::address::validate(&input.ship_to)
            .map_err(|e| Invalid(format!("ship_to.{}: {}", e.field, e.message)))?;
        let mto = self.make_to_order.clone();
        let by = by.to_string();
        self.decide(move |st, tx, now| {
            if let Some(k) = &key
                && let Some(r) = st.idem.get(k)
            {
                if r.body_sha256 == digest {
                    return Ok(Intake {
                        status: r.status,
                        body: r.response.clone(),
                        replay: true,
                    });
                }
                return Err(Conflict(format!(
                    "Idempotency-Key '{k}' was used for another request (order {}); use a new key \
                     for a new order",
                    r.order_id
                ))
                .into());
            }
            let r = (input.channel.clone(), input.external_id.clone());
            if let Some(id) = st.refs.get(&r) {
                return Err(Conflict(format!(
                    "channel '{}' already has order '{}' (sales order {id})",
                    r.0, r.1
                ))
                .into());
            }
            if input.when_short == WhenShort::Reject {
                let short: Vec<String> = input
                    .lines
                    .iter()
                    .filter(|l| {
                        st.stock
                            .allocatable(&l.sku, DEFAULT_LOCATION, l.quantity as usize)
                            .len()
                            < l.quantity as usize
                    })
                    .map(|l| l.sku.clone())
                    .collect();
                if !short.is_empty() {
                    return Err(CommerceError::Short(short));
                }
            }
            let id = st.last_order + 1;
            st.last_order = id;
            tx.batch.sales_order_counter = Some(id);
            let order = SalesOrder::new(id, input, &by, now);
            tx.event(DomainEvent::SalesOrderAccepted {
                order_id: id,
                channel: order.channel.clone(),
                external_id: order.external_id.clone(),
                by: by.clone(),
            });
            st.refs.insert(r, id);
            st.orders.insert(id, order);
            tx.batch.sales_orders.push(st.orders[&id].clone());
            st.allocate(tx, id, now);
            let o = &st.orders[&id];
            if o.lines
                .iter()
                .any(|l| l.short() > 0 && mto.contains(&l.sku))
            {
                tx.produce.push(id);
            }
            let body = serde_json::to_string(&st.view(o)).unwrap_or_default();
            if let Some(k) = key {
                let rec = IdempotencyRecord {
                    body_sha256: digest,
                    order_id: id,
                    status: 201,
                    response: body.clone(),
                };
                st.idem.insert(k.clone(), rec.clone());
                tx.batch.idempotency.push((k, rec));
            }
            info!(order = id, state = o.state.as_str(), "sales order accepted");
            Ok(Intake {
                status: 201,
                body,
                replay: false,
            })
        })
        .await
    }

    /// One order with its shipments.
    pub fn order(&self, id: u64) -> Result<OrderView> {
        let st = self.lock();
        let o = st
            .orders
            .get(&id)
            .ok_or_else(|| CommerceError::NotFound(format!("no sales order {id}")))?;
        Ok(st.view(o))
    }

    /// Orders, oldest first, optionally in one state.
    pub fn orders(&self, state: Option<SalesState>) -> Vec<OrderView> {
        let st = self.lock();
        st.orders
            .values()
            .filter(|o| state.is_none_or(|s| o.state == s))
            .map(|o| st.view(o))
            .collect()
    }

    /// An operator's or storefront's action on an order. Cancelling
    /// releases its unshipped units (to back-ordered orders first) and
    /// voids its unshipped shipments; a return brings its shipped units
    /// back as unavailable until inspected.
    pub async fn act(
        &self,
        id: u64,
        action: Action,
        by: &str,
        note: Option<String>,
    ) -> Result<OrderView> {
        let by = by.to_string();
        self.decide(move |st, tx, now| {
            let order = st.order_mut(id)?;
            let before = order.clone();
            let t = order.act(action, &by, now, note)?;
            tx.event(DomainEvent::SalesOrderState {
                order_id: id,
                from: t.from.unwrap_or(t.to),
                state: t.to,
                by: by.clone(),
                note: t.note,
            });
            match action {
                Action::Cancel => {
                    let mut released: BTreeMap<String, Vec<String>> = BTreeMap::new();
                    for (sku, s) in before.unshipped() {
                        st.stock(tx, &StockEvent::Released(s.to_string()))
                            .map_err(|e| Conflict(e.to_string()))?;
                        released
                            .entry(sku.to_string())
                            .or_default()
                            .push(s.to_string());
                    }
                    for sid in &before.shipments {
                        if let Some(sh) = st.shipments.get_mut(sid)
                            && sh.state == ShipmentState::Labelled
                        {
                            sh.state = ShipmentState::Voided;
                            tx.batch.shipments.push(sh.clone());
                        }
                    }
                    let skus: BTreeSet<String> = released.keys().cloned().collect();
                    for (sku, serials) in released {
                        tx.event(DomainEvent::UnitsReleased {
                            order_id: id,
                            sku,
                            serials,
                        });
                    }
                    tx.batch.sales_orders.push(st.orders[&id].clone());
                    st.fill_backorders(tx, &skus, now);
                }
                Action::Return => {
                    let serials: Vec<String> = before
                        .lines
                        .iter()
                        .flat_map(|l| l.shipped.clone())
                        .collect();
                    for s in &serials {
                        st.stock(tx, &StockEvent::Returned(s.clone()))
                            .map_err(|e| Conflict(e.to_string()))?;
                    }
                    tx.event(DomainEvent::UnitsReturned {
                        order_id: id,
                        serials,
                        by: by.clone(),
                    });
                    tx.batch.sales_orders.push(st.orders[&id].clone());
                }
                Action::Release => {
                    tx.batch.sales_orders.push(st.orders[&id].clone());
                    // Units that arrived while it was held.
                    st.allocate(tx, id, now);
                    st.settle(tx, id, now);
                }
                _ => tx.batch.sales_orders.push(st.orders[&id].clone()),
            }
            info!(order = id, action = ?action, by = %by, "sales order changed");
            Ok(st.view(&st.orders[&id]))
        })
        .await
    }

    // ------------------------------------------------------------- shipments

    /// Creates a labelled shipment of some or all of an order's reserved
    /// units, numbered by the carrier.
    pub async fn create_shipment(
        &self,
        id: u64,
        input: ShipmentInput,
        by: &str,
    ) -> Result<Shipment> {
        let by = by.to_string();
        self.decide(move |st, tx, now| {
            let order = st
                .orders
                .get(&id)
                .ok_or_else(|| CommerceError::NotFound(format!("no sales order {id}")))?;
            let inship = st.in_shipments(order);
            let lines = shipment_units(order, &inship, &input)?;
            let sid = st.last_shipment + 1;
            let label = self.carrier.label(&LabelRequest {
                shipment_id: sid,
                order,
                lines: &lines,
            });
            let sh = Shipment {
                id: sid,
                order_id: id,
                number: label.number,
                carrier: self.carrier.name().to_string(),
                service: order.service.clone(),
                state: ShipmentState::Labelled,
                lines,
                created_ms: now,
                shipped_ms: None,
                created_by: by.clone(),
                shipped_by: None,
            };
            st.last_shipment = sid;
            tx.batch.shipment_counter = Some(sid);
            tx.event(DomainEvent::ShipmentCreated {
                shipment_id: sid,
                order_id: id,
                number: sh.number.clone(),
                carrier: sh.carrier.clone(),
                serials: sh.serials().cloned().collect(),
                by: by.clone(),
            });
            st.shipments.insert(sid, sh.clone());
            tx.batch.shipments.push(sh.clone());
            st.order_mut(id)?.shipments.push(sid);
            st.settle(tx, id, now);
            info!(order = id, shipment = sid, number = %sh.number, "shipment labelled");
            Ok(sh)
        })
        .await
    }

    /// One shipment.
    pub fn shipment(&self, id: u64) -> Result<Shipment> {
        self.lock()
            .shipments
            .get(&id)
            .cloned()
            .ok_or_else(|| CommerceError::NotFound(format!("no shipment {id}")))
    }

    /// Marks a labelled shipment shipped: its units leave finished goods.
    pub async fn ship(&self, sid: u64, by: &str) -> Result<Shipment> {
        let by = by.to_string();
        self.decide(move |st, tx, now| {
            let sh = st
                .shipments
                .get(&sid)
                .ok_or_else(|| CommerceError::NotFound(format!("no shipment {sid}")))?
                .clone();
            if sh.state != ShipmentState::Labelled {
                return Err(Conflict(format!(
                    "shipment {sid} is {:?}; only a labelled shipment can be shipped",
                    sh.state
                ))
                .into());
            }
            let state = st
                .orders
                .get(&sh.order_id)
                .map(|o| o.state)
                .unwrap_or(SalesState::Cancelled);
            if state == SalesState::OnHold {
                return Err(Conflict(format!(
                    "order {} is on hold; release it before shipping",
                    sh.order_id
                ))
                .into());
            }
            for s in sh.serials() {
                st.stock(tx, &StockEvent::Shipped(s.clone()))
                    .map_err(|e| Conflict(e.to_string()))?;
            }
            let order = st.order_mut(sh.order_id)?;
            for l in &sh.lines {
                if let Some(ol) = order.lines.iter_mut().find(|x| x.sku == l.sku) {
                    ol.allocated.retain(|s| !l.serials.contains(s));
                    ol.shipped.extend(l.serials.iter().cloned());
                }
            }
            let mut done = sh;
            done.state = ShipmentState::Shipped;
            done.shipped_ms = Some(now);
            done.shipped_by = Some(by.clone());
            tx.event(DomainEvent::ShipmentShipped {
                shipment_id: sid,
                order_id: done.order_id,
                number: done.number.clone(),
                by: by.clone(),
            });
            st.shipments.insert(sid, done.clone());
            tx.batch.shipments.push(done.clone());
            st.settle(tx, done.order_id, now);
            info!(order = done.order_id, shipment = sid, "shipment shipped");
            Ok(done)
        })
        .await
    }

    /// What a shipping label and packing slip print for this shipment.
    pub fn label_data(&self, sid: u64) -> Result<ShipmentLabelData> {
        let (sh, order) = {
            let st = self.lock();
            let sh = st
                .shipments
                .get(&sid)
                .cloned()
                .ok_or_else(|| CommerceError::NotFound(format!("no shipment {sid}")))?;
            let order = st.orders.get(&sh.order_id).cloned().ok_or_else(|| {
                CommerceError::NotFound(format!("no sales order {}", sh.order_id))
            })?;
            (sh, order)
        };
        let mut weight = Some(0.0);
        let mut lines = Vec::new();
        for l in &sh.lines {
            let product = self.store.product(&l.sku)?;
            weight = match (weight, product.as_ref().and_then(|p| p.weight_g)) {
                (Some(w), Some(g)) => Some(w + g * l.serials.len() as f64),
                _ => None,
            };
            lines.push(LabelLine {
                sku: l.sku.clone(),
                title: product.map(|p| p.name),
                serials: l.serials.clone(),
            });
        }
        Ok(ShipmentLabelData {
            order_reference: order_reference(&order),
            order_created_ms: order.created_ms,
            ship_to: order.ship_to,
            lines,
            weight_g: weight,
            shipment: sh,
        })
    }

    /// The configured shop, or the 409 that says how to configure it.
    fn shop(&self, what: &str) -> Result<&ShopConfig> {
        self.shop.as_ref().ok_or_else(|| {
            CommerceError::Conflict(Conflict(format!(
                "{what} needs the shop's name and address: add a [shop] section with \
                 [shop.address] to the configuration and restart"
            )))
        })
    }

    /// The 4×6 in shipping label of a shipment, ready for the renderers.
    /// A voided shipment has none (409); a shipped one can be reprinted.
    pub fn shipping_label(&self, sid: u64) -> Result<ShippingLabel> {
        let d = self.label_data(sid)?;
        if d.shipment.state == ShipmentState::Voided {
            return Err(CommerceError::Conflict(Conflict(format!(
                "shipment {sid} ({}) was voided when its order was cancelled; it has no label",
                d.shipment.number
            ))));
        }
        let shop = self.shop("a shipping label")?;
        Ok(ShippingLabel {
            shipment_number: d.shipment.number,
            order_reference: d.order_reference,
            service: d.shipment.service,
            // A product without a weight makes the parcel's unknown; the
            // label then says so rather than print a made-up figure.
            weight_grams: d
                .weight_g
                .map(|g| g.round().clamp(0.0, f64::from(u32::MAX)) as u32),
            from: shop.address.clone(),
            to: d.ship_to,
        })
    }

    /// The packing slip of an order: every unit reserved for it or shipped
    /// with it, by line. An order without units yet has none (409).
    pub fn packing_slip(&self, id: u64, paper: Paper) -> Result<PackingSlip> {
        let order = self
            .lock()
            .orders
            .get(&id)
            .cloned()
            .ok_or_else(|| CommerceError::NotFound(format!("no sales order {id}")))?;
        if order.state == SalesState::Cancelled {
            return Err(CommerceError::Conflict(Conflict(format!(
                "sales order {id} was cancelled; there is nothing to pack"
            ))));
        }
        let shop = self.shop("a packing slip")?;
        let mut lines = Vec::new();
        for l in &order.lines {
            let serials: Vec<String> = l.shipped.iter().chain(&l.allocated).cloned().collect();
            let Some(quantity) = u32::try_from(serials.len()).ok().filter(|q| *q > 0) else {
                continue;
            };
            let title = self
                .store
                .product(&l.sku)?
                .map_or_else(|| l.sku.clone(), |p| p.name);
            lines.push(SlipLine {
                sku: l.sku.clone(),
                title,
                quantity,
                serials,
            });
        }
        if lines.is_empty() {
            return Err(CommerceError::Conflict(Conflict(format!(
                "sales order {id} has no units reserved yet; its packing slip lists the units \
                 in the box"
            ))));
        }
        Ok(PackingSlip {
            shop_name: shop.name.clone(),
            shop_address: shop.address.clone(),
            order_number: order_reference(&order),
            order_date: LabelDate::from_unix_ms(order.created_ms),
            ship_to: order.ship_to,
            lines,
            paper,
        })
    }

    /// The 2×1 in label of any unit metering made: SKU, serial, the
    /// production order as its lot, and the day it came off the machine.
    pub fn unit_label(&self, serial: &str) -> Result<UnitLabel> {
        let unit = self.metering.unit(serial).map_err(|e| match e {
            crate::metering::MeteringError::Store(s) => CommerceError::Store(s),
            _ => CommerceError::NotFound(format!("no unit with serial '{serial}'")),
        })?;
        Ok(UnitLabel {
            sku: unit.sku,
            serial: unit.serial,
            lot: format!("PO{}", unit.order_id),
            produced_on: LabelDate::from_unix_ms(unit.ended_ms),
            gtin: None,
            record_url: None,
        })
    }

    /// The units to take from the shelf for these orders, by SKU.
    pub fn picklist(&self, ids: &[u64]) -> Result<PickList> {
        let st = self.lock();
        let mut items: BTreeMap<String, PickItem> = BTreeMap::new();
        for id in ids {
            let o = st
                .orders
                .get(id)
                .ok_or_else(|| CommerceError::NotFound(format!("no sales order {id}")))?;
            let inship = st.in_shipments(o);
            for l in &o.lines {
                let take: Vec<String> = l
                    .allocated
                    .iter()
                    .filter(|s| !inship.contains(*s))
                    .cloned()
                    .collect();
                if take.is_empty() {
                    continue;
                }
                let item = items.entry(l.sku.clone()).or_insert_with(|| PickItem {
                    sku: l.sku.clone(),
                    name: None,
                    location: DEFAULT_LOCATION.to_string(),
                    quantity: 0,
                    serials: Vec::new(),
                    orders: Vec::new(),
                });
                item.quantity += take.len();
                item.serials.extend(take.iter().cloned());
                item.orders.push(PickOrder {
                    order_id: *id,
                    serials: take,
                });
            }
        }
        drop(st);
        let mut items: Vec<PickItem> = items.into_values().collect();
        for i in &mut items {
            i.serials.sort_unstable();
            i.name = self.metering.product(&i.sku).ok().map(|p| p.name);
        }
        Ok(PickList {
            orders: ids.to_vec(),
            items,
        })
    }

    // ------------------------------------------------------------ inventory

    /// A manual adjustment: a count (on hand becomes the counted
    /// quantity), damaged units, or units found. One event with the reason
    /// and operator; the levels follow.
    pub async fn adjust(
        &self,
        sku: &str,
        input: AdjustmentInput,
        by: &str,
    ) -> Result<InventoryItem> {
        check_reason(&input.reason)?;
        let (by, sku) = (by.to_string(), sku.to_string());
        self.decide(move |st, tx, now| {
            let before = st.stock.levels_at(&sku, DEFAULT_LOCATION);
            let mut changed = Vec::new();
            match input.kind {
                AdjustmentKind::Count => {
                    let counted = input.counted.ok_or_else(|| {
                        Invalid("a count needs `counted`: the units found at the location".into())
                    })?;
                    if !input.serials.is_empty() {
                        return Err(Invalid("a count takes `counted`, not serials".into()).into());
                    }
                    st.stock(
                        tx,
                        &StockEvent::Counted {
                            sku: sku.clone(),
                            location: DEFAULT_LOCATION.to_string(),
                            counted,
                        },
                    )
                    .map_err(|e| Invalid(e.to_string()))?;
                    changed = tx.batch.fg_units.iter().map(|u| u.serial.clone()).collect();
                }
                kind => {
                    if input.serials.is_empty() || input.counted.is_some() {
                        return Err(Invalid(format!(
                            "a {} adjustment takes `serials`, the units concerned",
                            if kind == AdjustmentKind::Damage {
                                "damage"
                            } else {
                                "found"
                            }
                        ))
                        .into());
                    }
                    for s in &input.serials {
                        match st.stock.unit(s) {
                            Some(u) if u.sku == sku => {}
                            _ => {
                                return Err(CommerceError::NotFound(format!(
                                    "unit {s} is not a finished unit of '{sku}'"
                                )));
                            }
                        }
                    }
                    for s in &input.serials {
                        let e = if kind == AdjustmentKind::Damage {
                            StockEvent::Damaged(s.clone())
                        } else {
                            StockEvent::Found(s.clone())
                        };
                        st.stock(tx, &e).map_err(|e| Conflict(e.to_string()))?;
                        changed.push(s.clone());
                    }
                }
            }
            let after = st.stock.levels_at(&sku, DEFAULT_LOCATION);
            tx.event(DomainEvent::StockAdjusted {
                sku: sku.clone(),
                location: DEFAULT_LOCATION.to_string(),
                kind: input.kind,
                serials: changed,
                on_hand_delta: after.on_hand - before.on_hand,
                reason: input.reason.clone(),
                by: by.clone(),
            });
            // Found units may fill back-orders.
            st.fill_backorders(tx, &BTreeSet::from([sku.clone()]), now);
            info!(sku = %sku, kind = ?input.kind, by = %by, "stock adjusted");
            Ok(InventoryItem::new(&sku, st.stock.levels(&sku)))
        })
        .await
    }

    /// Inspects a returned unit: back on the shelf (and to back-orders),
    /// or rejected.
    pub async fn inspect_return(
        &self,
        serial: &str,
        input: ReturnInspection,
        by: &str,
    ) -> Result<FgUnit> {
        let good = match input.result {
            QcState::Pass => true,
            QcState::Fail | QcState::Scrap => false,
            other => {
                return Err(Invalid(format!(
                    "result must be pass, fail or scrap, not {}",
                    other.as_str()
                ))
                .into());
            }
        };
        match &input.reason {
            Some(r) => check_reason(r)?,
            None if !good => {
                return Err(Invalid("a rejected return needs a reason code".into()).into());
            }
            None => {}
        }
        let (by, serial) = (by.to_string(), serial.to_string());
        self.decide(move |st, tx, now| {
            let unit = st.stock.unit(&serial).cloned().ok_or_else(|| {
                CommerceError::NotFound(format!("unit {serial} is not in finished goods"))
            })?;
            if unit.state != UnitState::Returned {
                return Err(Conflict(format!(
                    "unit {serial} is {:?}, not returned; only returned units are inspected here",
                    unit.state
                ))
                .into());
            }
            st.stock(
                tx,
                &StockEvent::ReturnInspected {
                    serial: serial.clone(),
                    good,
                },
            )
            .map_err(|e| Conflict(e.to_string()))?;
            tx.event(DomainEvent::ReturnInspected {
                serial: serial.clone(),
                sku: unit.sku.clone(),
                restocked: good,
                reason: input.reason.clone(),
                by: by.clone(),
            });
            if good {
                st.fill_backorders(tx, &BTreeSet::from([unit.sku.clone()]), now);
            }
            st.stock
                .unit(&serial)
                .cloned()
                .ok_or_else(|| CommerceError::NotFound(format!("unit {serial} is gone")))
        })
        .await
    }

    // ------------------------------------------------------ make to order

    /// Opens production orders for the shortfall of these sales orders'
    /// make-to-order lines, in the background; each production order's id
    /// is written to its line, so a restart asks only for lines without
    /// one.
    fn produce(&self, ids: Vec<u64>) {
        if ids.is_empty() {
            return;
        }
        let wanted: Vec<(u64, String, u32)> = {
            let st = self.lock();
            ids.iter()
                .filter_map(|id| st.orders.get(id))
                .flat_map(|o| {
                    o.lines
                        .iter()
                        .filter(|l| {
                            l.short() > 0
                                && l.production_orders.is_empty()
                                && self.make_to_order.contains(&l.sku)
                        })
                        .map(move |l| (o.id, l.sku.clone(), l.short()))
                })
                .collect()
        };
        for (order_id, sku, quantity) in wanted {
            let metering = Arc::clone(&self.metering);
            let me = self.me.clone();
            self.tasks.spawn(async move {
                let input = crate::metering::model::OrderInput {
                    sku: sku.clone(),
                    quantity,
                    due_ms: None,
                    priority: None,
                };
                match metering.create_order(input).await {
                    Ok(created) => {
                        let pid = created.view.order.id;
                        info!(order = order_id, production_order = pid, sku = %sku, "made to order");
                        if let Some(me) = me.upgrade() {
                            let r = me
                                .decide(move |st, tx, _| {
                                    let o = st.order_mut(order_id)?;
                                    if let Some(l) = o.lines.iter_mut().find(|l| l.sku == sku) {
                                        l.production_orders.push(pid);
                                    }
                                    tx.batch.sales_orders.push(o.clone());
                                    Ok(())
                                })
                                .await;
                            if let Err(e) = r {
                                warn!(order = order_id, error = %e, "could not record a production order");
                            }
                        }
                    }
                    Err(e) => {
                        warn!(order = order_id, sku = %sku, error = %e, "could not open a production order");
                    }
                }
            });
        }
    }

    // ------------------------------------------------------------- reader

    async fn read_log(self: Arc<Self>) {
        let store = self.store.clone();
        store
            .follow_log("commerce", GATHER, &self.cancel, |durable| {
                self.catch_up(durable)
            })
            .await;
    }

    /// Handles one chunk of durable records after the cursor; `true` when
    /// there may be more.
    pub(crate) async fn catch_up(&self, durable: u64) -> Result<bool> {
        let cursor = self.store.cursor(CURSOR)?;
        if cursor >= durable {
            return Ok(false);
        }
        let records: Vec<Arc<LogRecord>> = self
            .store
            .log_after(cursor, CHUNK)?
            .into_iter()
            .take_while(|r| r.seq <= durable)
            .collect();
        let Some(last) = records.last().map(|r| r.seq) else {
            return Ok(false);
        };
        let relevant = records.iter().any(|r| {
            matches!(
                r.event,
                DomainEvent::UnitMade { .. } | DomainEvent::UnitInspected { .. }
            )
        });
        if !relevant {
            // Nothing for finished goods: a plain cursor write, durable with
            // the next flush (reading these again changes nothing).
            self.store.set_cursor(CURSOR, last)?;
            return Ok(last < durable);
        }
        self.decide(move |st, tx, now| {
            tx.batch.cursors.push((CURSOR, last));
            for r in &records {
                let e = match &r.event {
                    DomainEvent::UnitMade {
                        serial, sku, qc, ..
                    } => match qc {
                        QcState::Pass | QcState::Pending | QcState::Rework => {
                            StockEvent::Received {
                                serial: serial.clone(),
                                sku: sku.clone(),
                                location: DEFAULT_LOCATION.to_string(),
                                qc_pending: *qc != QcState::Pass,
                            }
                        }
                        QcState::Fail | QcState::Scrap => continue,
                    },
                    DomainEvent::UnitInspected {
                        serial,
                        sku,
                        result,
                        ..
                    } => match (st.stock.unit(serial).is_some(), result) {
                        (false, QcState::Pass) => StockEvent::Received {
                            serial: serial.clone(),
                            sku: sku.clone(),
                            location: DEFAULT_LOCATION.to_string(),
                            qc_pending: false,
                        },
                        (true, QcState::Pass) => StockEvent::QcPassed(serial.clone()),
                        (true, QcState::Fail | QcState::Scrap) => {
                            StockEvent::QcRejected(serial.clone())
                        }
                        _ => continue,
                    },
                    _ => continue,
                };
                // A record read twice (replayed after a crash) changes nothing.
                let _ = st.stock(tx, &e);
            }
            let skus = tx.touched.clone();
            st.fill_backorders(tx, &skus, now);
            Ok(())
        })
        .await?;
        Ok(last < durable)
    }
}

/// Shopify's fulfillment-service callbacks answered from finished goods
/// and shipments. Stock is `available` (on hand less what orders reserved
/// and what awaits QC): Shopify reads the number as what it may sell, and
/// counting reserved units there would sell them twice.
impl crate::commerce::shopify::FulfillmentSource for Commerce {
    fn stock(
        &self,
        _shop: &str,
        sku: Option<&str>,
    ) -> std::result::Result<BTreeMap<String, u64>, String> {
        Ok(self
            .snapshot()
            .items
            .iter()
            .map(|(_, i)| i)
            .filter(|i| sku.is_none_or(|s| s == i.sku))
            .map(|i| (i.sku.clone(), u64::try_from(i.available).unwrap_or(0)))
            .collect())
    }

    /// `#1001.1` is the first shipment of the order whose external id is
    /// `1001` (on any channel); only shipped shipments have a number to
    /// track.
    fn tracking_numbers(
        &self,
        _shop: &str,
        order_names: &[String],
    ) -> std::result::Result<BTreeMap<String, String>, String> {
        let orders = self.orders(None);
        let mut out = BTreeMap::new();
        for name in order_names {
            let bare = name.trim_start_matches('#');
            let (ext, nth) = match bare.rsplit_once('.') {
                Some((e, n)) => (e, n.parse::<usize>().ok()),
                None => (bare, Some(1)),
            };
            let Some(nth) = nth.filter(|n| *n >= 1) else {
                continue;
            };
            let Some(view) = orders.iter().find(|o| o.order.external_id == ext) else {
                continue;
            };
            if let Some(s) = view
                .shipment_records
                .get(nth - 1)
                .filter(|s| s.state == crate::commerce::orders::ShipmentState::Shipped)
            {
                out.insert(name.clone(), s.number.clone());
            }
        }
        Ok(out)
    }
}
