//! Production metering: products, production orders, serialised units
//! with QC, ISO 22400 metrics and APC verdicts.
//!
//! It never patches the factory: it reads the durable domain log by
//! cursor ([`reader`]) and queues jobs through [`Factory::submit`] like any
//! client. The rules are pure ([`model`], [`production`], [`oee`],
//! [`apc`]); this module is their shell: it reads the store and the clock,
//! and commits every change as one `store::Batch` under its own lock
//! (batches without domain events, so the log's order stays the factory's
//! order of decisions), then flushes before answering.

pub mod aggregate;
pub mod apc;
pub mod compact;
pub mod cost;
pub mod exposition;
pub mod hourly;
pub mod losses;
pub mod model;
pub mod oee;
pub mod production;
pub mod reader;
pub mod report;
pub mod report_pdf;
pub mod summary;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use serde::Serialize;
use thiserror::Error;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};
use utoipa::ToSchema;

use crate::clock::now_ms;
use crate::config::{ApcCriteria, CostsConfig, Machine};
use crate::core::events::DomainEvent;
use crate::core::model::Job;
use crate::factory::{Factory, FactoryError, Submission};
use crate::store::{Batch, Store, StoreError};
use apc::Evaluation;
use hourly::UnitKey;
use model::{
    Invalid, Order, OrderInput, OrderJob, OrderState, Product, ProductInput, QcError, QcInput,
    QcState, Unit,
};
use oee::{Figures, Quantities, TimeElements, Window};
use production::Progress;
use summary::Summary;

/// Why a metering request was refused; each maps to one HTTP status.
#[derive(Debug, Error)]
pub enum MeteringError {
    /// No such product, order, unit or machine.
    #[error("{0}")]
    NotFound(String),
    /// The request's values are wrong.
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// The thing's state does not allow it.
    #[error("{0}")]
    Conflict(String),
    /// Queuing jobs failed.
    #[error(transparent)]
    Factory(#[from] FactoryError),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<QcError> for MeteringError {
    fn from(e: QcError) -> Self {
        match e {
            QcError::Invalid(i) => Self::Invalid(i),
            QcError::Conflict(m) => Self::Conflict(m),
        }
    }
}

type Result<T, E = MeteringError> = std::result::Result<T, E>;

/// A production order with its progress.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct OrderView {
    /// The order.
    #[serde(flatten)]
    pub order: Order,
    /// How far it is.
    pub progress: Progress,
}

/// What `POST /production-orders` created.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct OrderCreated {
    /// The order with its progress.
    #[serde(flatten)]
    pub view: OrderView,
    /// The jobs it queued.
    pub queued: Vec<Job>,
}

/// `GET /units` filters.
#[derive(Debug, Clone, Default)]
pub struct UnitFilter {
    /// Of this product.
    pub sku: Option<String>,
    /// In this QC state.
    pub state: Option<QcState>,
    /// Made at or after (ms).
    pub from_ms: Option<u64>,
    /// Made before (ms).
    pub to_ms: Option<u64>,
}

/// What metrics are computed over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// One machine: all its time.
    Machine,
    /// One product: the time machines spent on its jobs.
    Sku,
}

/// `GET /metrics`: the figures with every input.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Metrics {
    /// Machine or SKU.
    pub scope: Scope,
    /// The machine id or SKU (none: every machine, or every product).
    pub id: Option<String>,
    /// The window (its end capped at now).
    pub window: Window,
    /// The machines whose state logs were read.
    pub machines: Vec<String>,
    /// Time elements, from the machine state log only.
    pub time: TimeElements,
    /// Quantities, from the units made in the window.
    pub quantities: Quantities,
    /// The indicators.
    pub figures: Figures,
}

/// `GET /metrics/losses`: the loss Paretos of a scope and window.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LossReport {
    /// Machine or SKU.
    pub scope: Scope,
    /// The machine id or SKU (none: every machine, or every product).
    pub id: Option<String>,
    /// The window (its end capped at now).
    pub window: Window,
    /// The machines whose state logs were read.
    pub machines: Vec<String>,
    /// Downtime and scrap by reason.
    #[serde(flatten)]
    pub losses: losses::Losses,
}

/// One (SKU, machine class) verdict.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ApcResult {
    /// The product.
    pub sku: String,
    /// The machine class.
    pub class: String,
    /// The class's machines.
    pub machines: Vec<String>,
    /// The window evaluated.
    pub window: Window,
    /// Time elements of the SKU's jobs on those machines.
    pub time: TimeElements,
    /// Quantities of the SKU made on them.
    pub quantities: Quantities,
    /// The indicators.
    pub figures: Figures,
    /// Full-cost accounts (with a `[costs]` table).
    pub cost: Option<cost::CostFigures>,
    /// Verdict and criteria.
    #[serde(flatten)]
    pub evaluation: Evaluation,
}

/// The metering service: shared by the HTTP handlers and its log reader.
pub struct Metering {
    factory: Arc<Factory>,
    store: Store,
    /// Machine id → class, in configuration order.
    classes: Vec<(String, String)>,
    apc: BTreeMap<String, BTreeMap<String, ApcCriteria>>,
    costs: Option<CostsConfig>,
    /// Held by every metering write (and across an order's job
    /// submission), so that read-modify-write of orders and units and the
    /// reader's commits never interleave.
    lock: tokio::sync::Mutex<()>,
    /// The running totals as last committed (`None`: not read yet).
    summary: std::sync::Mutex<Option<Summary>>,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

impl std::fmt::Debug for Metering {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metering")
            .field("machines", &self.classes.len())
            .finish_non_exhaustive()
    }
}

impl Metering {
    /// Metering over `factory`'s store for the configured machines and
    /// APC criteria. Call [`Metering::start`] to follow the log.
    pub fn new(
        factory: Arc<Factory>,
        machines: &[Machine],
        apc: BTreeMap<String, BTreeMap<String, ApcCriteria>>,
        costs: Option<CostsConfig>,
    ) -> Arc<Self> {
        Arc::new(Self {
            store: factory.store().clone(),
            factory,
            classes: machines
                .iter()
                .map(|m| (m.config.id.clone(), m.class().to_string()))
                .collect(),
            apc,
            costs,
            lock: tokio::sync::Mutex::new(()),
            summary: std::sync::Mutex::new(None),
            cancel: CancellationToken::new(),
            tasks: TaskTracker::new(),
        })
    }

    /// Starts the log reader.
    pub fn start(self: &Arc<Self>) {
        let m = Arc::clone(self);
        self.tasks.spawn(async move { m.read_log().await });
    }

    /// Stops the log reader (it resumes from its cursor at the next start).
    pub async fn shutdown(&self) {
        self.cancel.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }

    /// The running totals as last committed; read from the store once,
    /// or for a store written before they were kept, counted from what the
    /// log reader has handled.
    pub fn summary(&self) -> Result<Summary> {
        let mut cached = self
            .summary
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(s) = cached.as_ref() {
            return Ok(s.clone());
        }
        let s = match self.store.metering_summary()? {
            Some(s) => s,
            None => self.count_summary()?,
        };
        *cached = Some(s.clone());
        Ok(s)
    }

    /// Replaces the cached totals after they were committed.
    fn set_summary(&self, s: Summary) {
        *self
            .summary
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(s);
    }

    /// The totals of a store written before they were kept: every unit,
    /// and the attempts of the log records the reader has handled.
    fn count_summary(&self) -> Result<Summary> {
        let cursor = self.store.cursor(reader::CURSOR)?;
        let mut s = Summary {
            through_seq: cursor,
            ..Summary::default()
        };
        for u in self.store.units()? {
            s.unit_made(&u);
        }
        let mut after = 0;
        while after < cursor {
            let records = self.store.log_after(after, 1024)?;
            let Some(last) = records.last().map(|r| r.seq) else {
                break;
            };
            for r in records.iter().take_while(|r| r.seq <= cursor) {
                if let DomainEvent::AttemptEnded {
                    job_id, attempt, ..
                } = &r.event
                    && let Some(a) = self
                        .store
                        .attempts(*job_id)?
                        .into_iter()
                        .find(|a| a.n == *attempt)
                {
                    s.attempt_ended(&a);
                }
            }
            after = last;
        }
        Ok(s)
    }

    async fn commit(&self, batch: &Batch) -> Result<()> {
        self.store.commit(batch, now_ms())?;
        self.store.flush().await?;
        Ok(())
    }

    // ------------------------------------------------------------ products

    /// Every product.
    pub fn products(&self) -> Result<Vec<Product>> {
        Ok(self.store.products()?)
    }

    /// One product.
    pub fn product(&self, sku: &str) -> Result<Product> {
        self.store
            .product(sku)?
            .ok_or_else(|| MeteringError::NotFound(format!("no product with sku '{sku}'")))
    }

    /// Creates a product; its SKU must be new.
    pub async fn create_product(&self, input: ProductInput) -> Result<Product> {
        let sku = input
            .sku
            .clone()
            .ok_or_else(|| Invalid("sku is required".into()))?;
        let _g = self.lock.lock().await;
        let file = self.store.file(&input.file_id)?;
        let product = input.resolve(&sku, file.as_deref(), None, now_ms())?;
        if self.store.product(&sku)?.is_some() {
            return Err(MeteringError::Conflict(format!(
                "a product with sku '{sku}' exists; change it with PUT /api/v1/products/{sku}"
            )));
        }
        self.commit(&Batch {
            products: vec![product.clone()],
            ..Batch::default()
        })
        .await?;
        info!(sku = %product.sku, "product created");
        Ok(product)
    }

    /// Replaces a product's description (its SKU stays). Orders keep the
    /// file, plate and planned runtime they were made with.
    pub async fn put_product(&self, sku: &str, input: ProductInput) -> Result<Product> {
        let _g = self.lock.lock().await;
        let previous = self.product(sku)?;
        let file = self.store.file(&input.file_id)?;
        let product = input.resolve(sku, file.as_deref(), Some(&previous), now_ms())?;
        self.commit(&Batch {
            products: vec![product.clone()],
            ..Batch::default()
        })
        .await?;
        Ok(product)
    }

    /// Deletes a product no order or unit refers to.
    pub async fn delete_product(&self, sku: &str) -> Result<()> {
        let _g = self.lock.lock().await;
        self.product(sku)?;
        let orders = self.store.orders()?.iter().filter(|o| o.sku == sku).count();
        let units = self.store.sku_has_units(sku)?;
        if orders > 0 || units {
            let units = if units { "its units" } else { "no unit" };
            return Err(MeteringError::Conflict(format!(
                "product '{sku}' is referred to by {orders} production order(s) and {units}; \
                 it stays for their records"
            )));
        }
        self.commit(&Batch {
            removed_products: vec![sku.to_string()],
            ..Batch::default()
        })
        .await
    }

    // -------------------------------------------------------------- orders

    /// An order with its progress, from its own units (by the index).
    fn view(&self, order: Order) -> Result<OrderView> {
        let units = self.store.units_of_order(order.id)?;
        let progress = production::progress(&order, &units);
        Ok(OrderView { order, progress })
    }

    /// Every order with its progress, oldest first.
    pub fn orders(&self) -> Result<Vec<OrderView>> {
        self.store
            .orders()?
            .into_iter()
            .map(|o| self.view(o))
            .collect()
    }

    /// One order with its progress.
    pub fn order(&self, id: u64) -> Result<OrderView> {
        let order = self
            .store
            .order(id)?
            .ok_or_else(|| MeteringError::NotFound(format!("no production order {id}")))?;
        self.view(order)
    }

    /// Creates an order and queues ⌈quantity ÷ units per job⌉ jobs.
    pub async fn create_order(&self, input: OrderInput) -> Result<OrderCreated> {
        input.check()?;
        let _g = self.lock.lock().await;
        let product = self.store.product(&input.sku)?.ok_or_else(|| {
            Invalid(format!(
                "sku '{}' is not a product; create it with POST /api/v1/products",
                input.sku
            ))
        })?;
        let id = self.store.order_id_counter()? + 1;
        let order = Order {
            id,
            sku: product.sku.clone(),
            quantity: input.quantity,
            due_ms: input.due_ms,
            priority: input.priority.unwrap_or(0),
            state: OrderState::Open,
            created_ms: now_ms(),
            file_id: product.file_id.clone(),
            units_per_job: product.units_per_job,
            planned_runtime_per_unit_s: product.planned_runtime_per_unit_s,
            auto_pass: product.auto_pass,
            jobs: Vec::new(),
            submitting: None,
        };
        self.commit(&Batch {
            orders: vec![order.clone()],
            order_id_counter: Some(id),
            ..Batch::default()
        })
        .await?;
        let queued = match self.top_up_locked(id).await {
            Ok(q) => q,
            Err(e) => {
                // Nothing could be queued (the file is gone, no machine
                // can run it): the order is stopped, not left waiting.
                let mut o = order;
                o.state = OrderState::Stopped;
                o.submitting = None;
                self.commit(&Batch {
                    orders: vec![o],
                    ..Batch::default()
                })
                .await?;
                return Err(e);
            }
        };
        info!(order = id, sku = %product.sku, jobs = queued.len(), "production order created");
        Ok(OrderCreated {
            view: self.order(id)?,
            queued,
        })
    }

    /// Stops an order: no more jobs are queued for it (queued ones stay
    /// in the queue; cancel them there).
    pub async fn stop_order(&self, id: u64) -> Result<OrderView> {
        let _g = self.lock.lock().await;
        let mut order = self.order(id)?.order;
        if order.state == OrderState::Open {
            order.state = OrderState::Stopped;
            self.commit(&Batch {
                orders: vec![order],
                ..Batch::default()
            })
            .await?;
        }
        self.order(id)
    }

    /// Queues the jobs an open order needs now, or marks it done. The
    /// metering lock must be held: the jobs are recorded in the order
    /// before the reader can see them end.
    async fn top_up_locked(&self, id: u64) -> Result<Vec<Job>> {
        let Some(mut order) = self.store.order(id)? else {
            return Ok(Vec::new());
        };
        if order.state != OrderState::Open {
            return Ok(Vec::new());
        }
        let units = self.store.units_of_order(id)?;
        let p = production::progress(&order, &units);
        if p.good >= p.ordered {
            order.state = OrderState::Done;
            info!(order = id, "production order done");
            self.commit(&Batch {
                orders: vec![order],
                ..Batch::default()
            })
            .await?;
            return Ok(Vec::new());
        }
        let Ok(copies) = u32::try_from(p.jobs_needed) else {
            return Err(Invalid(format!("order {id} needs too many jobs")).into());
        };
        if copies == 0 {
            return Ok(Vec::new());
        }
        order.submitting = Some(copies);
        self.commit(&Batch {
            orders: vec![order.clone()],
            ..Batch::default()
        })
        .await?;
        let submitted = self
            .factory
            .submit(Submission {
                file_id: order.file_id.clone(),
                copies: Some(copies),
                priority: Some(order.priority),
                machine_id: None,
                kind: None,
                tags: Vec::new(),
                name: Some(order.job_name()),
                expand_canned_cycles: false,
                // A product's file names its material: route by it.
                any_material: false,
            })
            .await;
        let jobs = match submitted {
            Ok(jobs) => jobs,
            Err(e) => {
                order.submitting = None;
                self.commit(&Batch {
                    orders: vec![order],
                    ..Batch::default()
                })
                .await?;
                return Err(e.into());
            }
        };
        self.adopt(order, &jobs).await?;
        Ok(jobs)
    }

    /// Records `jobs` as the order's and ends its submission.
    async fn adopt(&self, mut order: Order, jobs: &[Job]) -> Result<()> {
        order.submitting = None;
        let known: HashSet<u64> = order.jobs.iter().map(|j| j.job_id).collect();
        let new: Vec<u64> = jobs
            .iter()
            .map(|j| j.id)
            .filter(|id| !known.contains(id))
            .collect();
        order.jobs.extend(new.iter().map(|&job_id| OrderJob {
            job_id,
            settled: false,
        }));
        let order_jobs = new.iter().map(|&j| (j, order.id)).collect();
        self.commit(&Batch {
            orders: vec![order],
            order_jobs,
            ..Batch::default()
        })
        .await
    }

    /// At start: adopts the jobs of submissions a crash cut short (found
    /// by the name every order's jobs carry), then tops every open order
    /// up (a crash may have come between a unit's QC and the top-up).
    async fn recover(&self) -> Result<()> {
        let _g = self.lock.lock().await;
        let orders = self.store.orders()?;
        if orders.iter().any(|o| o.submitting.is_some()) {
            let jobs = self.factory.jobs(&[], None, None)?;
            for o in orders.into_iter().filter(|o| o.submitting.is_some()) {
                let name = o.job_name();
                let found: Vec<Job> = jobs.iter().filter(|j| j.name == name).cloned().collect();
                warn!(
                    order = o.id,
                    jobs = found.len(),
                    "adopting the jobs of an interrupted submission"
                );
                self.adopt(o, &found).await?;
            }
        }
        for o in self.store.orders()? {
            if o.state == OrderState::Open
                && let Err(e) = self.top_up_locked(o.id).await
            {
                warn!(order = o.id, error = %e, "could not queue an order's jobs");
            }
        }
        Ok(())
    }

    // --------------------------------------------------------------- units

    /// Units matching `f`, in the order they were made.
    pub fn units(&self, f: &UnitFilter) -> Result<Vec<Unit>> {
        let (from, to) = (f.from_ms.unwrap_or(0), f.to_ms.unwrap_or(u64::MAX));
        let units = match &f.sku {
            Some(sku) => self.store.units_of_sku(sku, from, to)?,
            None => self.store.units_between(from, to)?,
        };
        Ok(units
            .into_iter()
            .filter(|u| f.state.is_none_or(|s| s == u.qc))
            .collect())
    }

    /// One unit.
    pub fn unit(&self, serial: &str) -> Result<Unit> {
        self.store
            .unit(serial)?
            .ok_or_else(|| MeteringError::NotFound(format!("no unit with serial '{serial}'")))
    }

    /// Records an inspection; a unit of an open order that fails or is
    /// scrapped makes the order queue another job if it now falls short.
    pub async fn inspect(&self, serial: &str, input: QcInput, by: &str) -> Result<Unit> {
        let _g = self.lock.lock().await;
        let mut unit = self.unit(serial)?;
        let before = unit.clone();
        let from = unit.qc;
        unit.inspect(input, by, now_ms())?;
        let last = unit.qc_history.last();
        let mut summary = self.summary()?;
        summary.unit_inspected(&unit.sku, from, unit.qc);
        let mut batch = Batch::default();
        self.count_units(&[], &[(before, unit.clone())], &mut batch)?;
        self.commit(&Batch {
            unit_aggs: batch.unit_aggs,
            metering_summary: Some(summary.clone()),
            events: vec![DomainEvent::UnitInspected {
                serial: unit.serial.clone(),
                sku: unit.sku.clone(),
                from,
                result: unit.qc,
                reason: last.and_then(|q| q.reason.clone()),
                by: by.to_owned(),
            }],
            units: vec![unit.clone()],
            ..Batch::default()
        })
        .await?;
        self.set_summary(summary);
        if let Err(e) = self.top_up_locked(unit.order_id).await {
            warn!(order = unit.order_id, error = %e, "could not queue an order's jobs");
        }
        Ok(unit)
    }

    // ------------------------------------------------------------- metrics

    /// The jobs of a product's orders (of every product's without one).
    fn sku_jobs(&self, sku: Option<&str>) -> Result<HashSet<u64>> {
        Ok(self
            .store
            .orders()?
            .iter()
            .filter(|o| sku.is_none_or(|s| o.sku == s))
            .flat_map(|o| o.jobs.iter().map(|j| j.job_id))
            .collect())
    }

    /// Time elements over `machines`, counting only the spans `keep` picks.
    fn time_of(
        &self,
        machines: &[String],
        w: Window,
        now: u64,
        keep: &dyn Fn(&crate::core::machine::StateChange) -> bool,
    ) -> Result<TimeElements> {
        let mut t = TimeElements::default();
        for m in machines {
            let changes = self.store.machine_states(m, w.from_ms, w.to_ms)?;
            t.add(&oee::time_elements(&changes, w, now, keep));
        }
        Ok(t)
    }

    /// What `scope` and `id` read: the machines, the jobs whose spans
    /// count and the units that count.
    fn resolve(&self, scope: Scope, id: Option<&str>) -> Result<Resolved<'_>> {
        let all_machines: Vec<String> = self.classes.iter().map(|(m, _)| m.clone()).collect();
        Ok(match (scope, id) {
            (Scope::Machine, Some(id)) if all_machines.iter().any(|m| m == id) => Resolved {
                machines: vec![id.to_string()],
                jobs: None,
                sku: None,
            },
            (Scope::Machine, Some(id)) => {
                return Err(MeteringError::NotFound(format!("no machine '{id}'")));
            }
            (Scope::Machine, None) => Resolved {
                machines: all_machines,
                jobs: None,
                sku: None,
            },
            (Scope::Sku, sku) => {
                if let Some(sku) = sku {
                    self.product(sku)?;
                }
                Resolved {
                    machines: all_machines,
                    jobs: Some(aggregate::JobSkus::new(&self.store)),
                    sku: sku.map(str::to_string),
                }
            }
        })
    }

    /// ISO 22400 figures of a machine or a SKU over `w`; without an id,
    /// of every machine (the whole factory) or every product.
    pub fn metrics(&self, scope: Scope, id: Option<&str>, w: Window) -> Result<Metrics> {
        let now = now_ms();
        let r = self.resolve(scope, id)?;
        let spans = r.jobs.is_some().then_some(r.sku.as_deref());
        let skus = aggregate::JobSkus::new(&self.store);
        let time = self
            .time_through(&r.machines, w, now, &skus)?
            .elements(spans);
        let units = self.units_through(w, r.unit_keys().as_deref())?;
        let quantities = aggregate::UnitTotals::of(&units, |m, s| r.keeps_row(m, s)).q;
        Ok(Metrics {
            scope,
            id: id.map(str::to_string),
            window: Window {
                from_ms: w.from_ms,
                to_ms: w.to_ms.min(now).max(w.from_ms),
            },
            machines: r.machines,
            figures: oee::figures(&time, &quantities),
            time,
            quantities,
        })
    }

    /// Downtime by state and reason and scrap by QC reason of a machine
    /// or a SKU over `w` (without an id: every machine or every product),
    /// each as a Pareto.
    pub fn losses(&self, scope: Scope, id: Option<&str>, w: Window) -> Result<LossReport> {
        let now = now_ms();
        let units = self.store.units_between(w.from_ms, w.to_ms)?;
        let r = self.resolve(scope, id)?;
        let mut tally = losses::DowntimeTally::default();
        for m in &r.machines {
            let changes = self.store.machine_states(m, w.from_ms, w.to_ms)?;
            tally.add(&changes, w, now, |c| r.counts(c));
        }
        Ok(LossReport {
            scope,
            id: id.map(str::to_string),
            window: Window {
                from_ms: w.from_ms,
                to_ms: w.to_ms.min(now).max(w.from_ms),
            },
            losses: losses::losses(tally, &units, w, |u| r.keeps(u)),
            machines: r.machines,
        })
    }

    /// One `/metrics` scrape: the running totals, each machine's state,
    /// OEE per class over the last day, the APC verdicts over all history,
    /// and how far each of `readers` (log cursor names) lags the log.
    pub fn scrape(&self, queue_depth: u64, readers: &[&str]) -> Result<exposition::Scrape> {
        let now = now_ms();
        let mut machines = Vec::with_capacity(self.classes.len());
        for (id, class) in &self.classes {
            machines.push(exposition::MachineRow {
                id: id.clone(),
                class: class.clone(),
                state: self.store.last_machine_state(id)?.map(|c| c.state),
            });
        }
        let w = Window {
            from_ms: now.saturating_sub(exposition::OEE_WINDOW_MS),
            to_ms: now,
        };
        let units = self.store.units_between(w.from_ms, w.to_ms)?;
        let mut classes: Vec<&str> = self.classes.iter().map(|(_, c)| c.as_str()).collect();
        classes.sort_unstable();
        classes.dedup();
        let mut oee = Vec::new();
        for class in classes {
            let of_class: Vec<String> = self
                .classes
                .iter()
                .filter(|(_, c)| c == class)
                .map(|(m, _)| m.clone())
                .collect();
            let time = self.time_of(&of_class, w, now, &|_| true)?;
            let q = Quantities::of(&units, w, |u| of_class.contains(&u.machine_id));
            oee.push((class.to_string(), oee::figures(&time, &q)));
        }
        let apc = self
            .apc(Window {
                from_ms: 0,
                to_ms: u64::MAX,
            })?
            .into_iter()
            .map(|r| (r.sku, r.class, r.evaluation.verdict))
            .collect();
        let tip = *self.store.log_tip().borrow();
        let mut log_lag = Vec::new();
        for r in readers {
            log_lag.push(((*r).to_string(), tip.saturating_sub(self.store.cursor(r)?)));
        }
        Ok(exposition::Scrape {
            summary: self.summary()?,
            machines,
            oee,
            apc,
            queue_depth,
            log_lag,
            broker: None,
        })
    }

    /// The full-cost accounts of a product's units on `machines` of
    /// `class` with these time elements (none without `[costs]`).
    fn cost_of(
        &self,
        product: Option<&Product>,
        class: &str,
        machines: usize,
        units: &aggregate::UnitTotals,
        time: &TimeElements,
    ) -> Result<Option<cost::CostFigures>> {
        let Some(costs) = &self.costs else {
            return Ok(None);
        };
        let material = match product {
            Some(p) => {
                let filament = self
                    .store
                    .file(&p.file_id)?
                    .map_or(0.0, |f| f.analysis.filament_mm);
                let priced = p.material.as_deref().and_then(|name| {
                    costs
                        .material
                        .iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case(name))
                        .map(|(_, m)| m)
                });
                cost::MaterialPerUnit::of(
                    p.material_cost_per_unit,
                    filament,
                    p.units_per_job,
                    priced,
                )
            }
            None => cost::MaterialPerUnit::of(None, 0.0, 1, None),
        };
        let inputs = cost::CostInputs {
            produced: units.q.produced,
            good: units.q.good,
            production_ms: time.apt_ms,
            setup_ms: time.setup_ms,
            jobs: units.attempts,
            inspections: units.inspections,
            machines: machines as u64,
            price_per_unit: product.and_then(|p| p.price_per_unit),
        };
        Ok(Some(cost::account(
            costs,
            costs.class.get(class),
            material,
            inputs,
        )))
    }

    /// Every configured (SKU, machine class)'s APC verdict over `w`: each
    /// class's machines and the window's units read once, through the
    /// aggregates.
    pub fn apc(&self, w: Window) -> Result<Vec<ApcResult>> {
        let now = now_ms();
        let skus = aggregate::JobSkus::new(&self.store);
        let keys: Vec<UnitKey> = self.apc.keys().cloned().map(UnitKey::Sku).collect();
        let units = self.units_through(w, Some(&keys))?;
        let mut times: BTreeMap<&str, hourly::TimeAgg> = BTreeMap::new();
        let mut out = Vec::new();
        for (sku, by_class) in &self.apc {
            let product = self.store.product(sku)?;
            for (class, criteria) in by_class {
                let time = match times.entry(class.as_str()) {
                    std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                    std::collections::btree_map::Entry::Vacant(v) => {
                        v.insert(self.time_through(&self.machines_of(class), w, now, &skus)?)
                    }
                };
                out.push(self.apc_one(
                    SkuData {
                        sku,
                        product: product.as_ref(),
                    },
                    class,
                    criteria,
                    Measured {
                        time: time.elements(Some(Some(sku))),
                        units: &units,
                    },
                    w,
                    now,
                )?);
            }
        }
        Ok(out)
    }

    /// The machines of a class, in configuration order.
    fn machines_of(&self, class: &str) -> Vec<String> {
        self.classes
            .iter()
            .filter(|(_, c)| c == class)
            .map(|(m, _)| m.clone())
            .collect()
    }

    /// One (SKU, class)'s verdict over `w`, reading its own time and units.
    fn apc_in(
        &self,
        d: SkuData<'_>,
        class: &str,
        criteria: &ApcCriteria,
        w: Window,
        now: u64,
        skus: &aggregate::JobSkus<'_>,
    ) -> Result<ApcResult> {
        let time = self
            .time_through(&self.machines_of(class), w, now, skus)?
            .elements(Some(Some(d.sku)));
        let units = self.units_through(w, Some(&[UnitKey::Sku(d.sku.to_string())]))?;
        self.apc_one(
            d,
            class,
            criteria,
            Measured {
                time,
                units: &units,
            },
            w,
            now,
        )
    }

    /// One (SKU, class)'s verdict over `w` from its class's time and the
    /// window's units.
    fn apc_one(
        &self,
        d: SkuData<'_>,
        class: &str,
        criteria: &ApcCriteria,
        m: Measured<'_>,
        w: Window,
        now: u64,
    ) -> Result<ApcResult> {
        let machines = self.machines_of(class);
        let of_class: HashSet<&str> = machines.iter().map(String::as_str).collect();
        let time = m.time;
        let units =
            aggregate::UnitTotals::of(m.units, |mach, s| s == d.sku && of_class.contains(mach));
        let quantities = units.q;
        let figures = oee::figures(&time, &quantities);
        let cost = self.cost_of(d.product, class, machines.len(), &units, &time)?;
        Ok(ApcResult {
            sku: d.sku.to_string(),
            class: class.to_string(),
            machines,
            window: Window {
                from_ms: w.from_ms,
                to_ms: w.to_ms.min(now).max(w.from_ms),
            },
            evaluation: apc::evaluate(criteria, &time, &quantities, &figures, cost.as_ref()),
            cost,
            time,
            quantities,
            figures,
        })
    }

    /// The certification report of one configured (SKU, class) over `w`
    /// (from the product's creation when `w` starts at 0): the verdict
    /// with its inputs, the two halves of the window as the consecutive
    /// windows the rule asks for, a series for the charts, and the
    /// evidence.
    pub fn report(&self, sku: &str, class: &str, w: Window) -> Result<report::Report> {
        let criteria = self
            .apc
            .get(sku)
            .and_then(|m| m.get(class))
            .ok_or_else(|| {
                MeteringError::NotFound(format!(
                    "no APC criteria for sku '{sku}' on class '{class}'; add \
                     [apc.\"{sku}\".{class}] to the configuration"
                ))
            })?;
        let now = now_ms();
        let product = self.store.product(sku)?;
        let from = if w.from_ms == 0 {
            product.as_ref().map_or(0, |p| p.created_ms)
        } else {
            w.from_ms
        };
        let w = Window {
            from_ms: from,
            to_ms: w.to_ms.min(now).max(from),
        };
        let jobs = self.sku_jobs(Some(sku))?;
        let skus = aggregate::JobSkus::new(&self.store);
        let units = self.store.units_of_sku(sku, w.from_ms, w.to_ms)?;
        let data = || SkuData {
            sku,
            product: product.as_ref(),
        };
        let whole = self.apc_in(data(), class, criteria, w, now, &skus)?;
        let mid = w.from_ms + (w.to_ms - w.from_ms) / 2;
        let halves = [
            Window {
                from_ms: w.from_ms,
                to_ms: mid,
            },
            Window {
                from_ms: mid,
                to_ms: w.to_ms,
            },
        ];
        let mut consecutive = Vec::with_capacity(2);
        for h in halves {
            consecutive.push(self.apc_in(data(), class, criteria, h, now, &skus)?);
        }
        let mut series = Vec::new();
        for b in report::buckets(w, report::SERIES_POINTS) {
            let r = self.apc_in(data(), class, criteria, b, now, &skus)?;
            series.push(report::Point {
                window: b,
                figures: r.figures,
                produced: r.quantities.produced,
                good: r.quantities.good,
            });
        }
        let of_class: HashSet<String> = whole.machines.iter().cloned().collect();
        let evidence = units
            .iter()
            .filter(|u| of_class.contains(&u.machine_id) && w.contains(u.ended_ms))
            .map(report::UnitEvidence::of)
            .collect();
        let mut spans = 0;
        for m in &whole.machines {
            spans += self
                .store
                .machine_states(m, w.from_ms, w.to_ms)?
                .iter()
                .filter(|c| c.job_id.is_some_and(|j| jobs.contains(&j)))
                .count();
        }
        Ok(report::Report::new(
            product,
            whole,
            consecutive,
            series,
            evidence,
            spans,
            now,
        ))
    }
}

/// A scope resolved: what its time and quantities are counted from.
struct Resolved<'a> {
    /// The machines whose state logs are read.
    machines: Vec<String>,
    /// A SKU scope: only the spans of jobs of the SKU's orders (of any
    /// product's without a SKU) count; `None`: every span.
    jobs: Option<aggregate::JobSkus<'a>>,
    /// Only this product's units count; `None`: every unit of `machines`.
    sku: Option<String>,
}

impl Resolved<'_> {
    /// Whose unit records the scope reads: its machines', its SKU's, or
    /// (every product) all of them.
    fn unit_keys(&self) -> Option<Vec<UnitKey>> {
        match (&self.jobs, &self.sku) {
            (None, _) => Some(
                self.machines
                    .iter()
                    .cloned()
                    .map(UnitKey::Machine)
                    .collect(),
            ),
            (Some(_), Some(s)) => Some(vec![UnitKey::Sku(s.clone())]),
            (Some(_), None) => None,
        }
    }

    fn counts(&self, c: &crate::core::machine::StateChange) -> bool {
        let Some(jobs) = &self.jobs else {
            return true;
        };
        let Some(of) = c.job_id.and_then(|j| jobs.sku_of(j)) else {
            return false;
        };
        self.sku.as_ref().is_none_or(|s| *s == of)
    }

    fn keeps(&self, u: &Unit) -> bool {
        self.keeps_row(&u.machine_id, &u.sku)
    }

    fn keeps_row(&self, machine: &str, sku: &str) -> bool {
        match (&self.jobs, &self.sku) {
            (None, _) => self.machines.iter().any(|m| m == machine),
            (Some(_), Some(s)) => sku == s,
            (Some(_), None) => true,
        }
    }
}

/// What every (SKU, class) evaluation of one SKU shares.
#[derive(Clone, Copy)]
struct SkuData<'a> {
    sku: &'a str,
    product: Option<&'a Product>,
}

/// A window's time (of the SKU on the class) and units (all of them).
struct Measured<'a> {
    time: TimeElements,
    units: &'a hourly::UnitAgg,
}
