//! Domain events: every change of a file, a job, an attempt or a machine's
//! state is one of these, appended to the durable log in the same commit as
//! the records it changes. Readers that must not miss anything (metering,
//! the webhook outbox, MQTT) consume the log by cursor; the live broadcast
//! may drop.
//!
//! The enum is tagged by `type` and only ever grows: a variant's fields
//! keep their meaning, new fields get serde defaults. A record written by
//! a newer daemon is refused when it is read (see the store), never
//! guessed at.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::core::machine::{MachineState, StateReason};
use crate::core::model::{
    AdjustmentKind, AttemptOutcome, JobState, PauseReason, QcState, SalesState,
};

/// One thing that happened in the factory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum DomainEvent {
    /// A file was stored (first upload of this content).
    FileAdded {
        /// sha256.
        file_id: String,
        /// Name at upload.
        name: String,
        /// Bytes.
        size: u64,
    },
    /// A file was deleted.
    FileDeleted {
        /// sha256.
        file_id: String,
    },
    /// A job entered the queue (submitted or requeued).
    JobQueued {
        /// Job.
        job_id: u64,
        /// Its file.
        file_id: String,
        /// First source line to stream.
        start_line: u64,
        /// Higher runs first.
        priority: i32,
        /// Why, in words.
        note: Option<String>,
    },
    /// A queued job's place or priority changed.
    JobReordered {
        /// Job.
        job_id: u64,
        /// New queue position key.
        seq: u64,
        /// New priority.
        priority: i32,
    },
    /// A job's state changed (assigned, running, paused, resumed, ended).
    JobState {
        /// Job.
        job_id: u64,
        /// New state.
        state: JobState,
        /// Machine involved.
        machine_id: Option<String>,
        /// Attempt number, from 1, once it has one.
        attempt: u32,
        /// Why it paused, when it did.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pause: Option<PauseReason>,
        /// Why, in words.
        note: Option<String>,
    },
    /// An attempt of a job ended (the attempt record has the details).
    AttemptEnded {
        /// Job.
        job_id: u64,
        /// Attempt number.
        attempt: u32,
        /// Machine.
        machine_id: String,
        /// How it ended.
        outcome: AttemptOutcome,
        /// Commands acknowledged in this attempt.
        lines_done: u64,
    },
    /// A machine's state changed.
    MachineState {
        /// Machine.
        machine_id: String,
        /// New state.
        state: MachineState,
        /// Why.
        reason: StateReason,
        /// The job involved.
        job_id: Option<u64>,
    },
    /// A serialised unit was made by an ended attempt of a production
    /// order's job (a failed or cancelled attempt makes scrap units).
    UnitMade {
        /// Serial.
        serial: String,
        /// Product.
        sku: String,
        /// Production order.
        order_id: u64,
        /// Job.
        job_id: u64,
        /// Attempt.
        attempt: u32,
        /// Machine.
        machine_id: String,
        /// Quality state at birth (`pending`, `pass` when the product
        /// passes automatically, `scrap` for a failed attempt).
        qc: QcState,
    },
    /// A unit was inspected: finished goods follow `pass`.
    UnitInspected {
        /// Serial.
        serial: String,
        /// Product.
        sku: String,
        /// Quality state before.
        from: QcState,
        /// Quality state now.
        result: QcState,
        /// Reason code.
        reason: Option<String>,
        /// Who.
        by: String,
    },
    /// A storefront order was accepted (commerce).
    SalesOrderAccepted {
        /// Sales order.
        order_id: u64,
        /// Storefront channel.
        channel: String,
        /// The storefront's own order id.
        external_id: String,
        /// Who sent it (token name).
        by: String,
    },
    /// A storefront order changed fulfillment state.
    SalesOrderState {
        /// Sales order.
        order_id: u64,
        /// State before.
        from: SalesState,
        /// State now.
        state: SalesState,
        /// Who (token name, or `microfactoryd` for automatic steps).
        by: String,
        /// Why, in words.
        note: Option<String>,
    },
    /// Finished units were reserved for a sales order, oldest first.
    UnitsAllocated {
        /// Sales order.
        order_id: u64,
        /// Product.
        sku: String,
        /// The units.
        serials: Vec<String>,
    },
    /// Units reserved for a sales order went back to stock.
    UnitsReleased {
        /// Sales order.
        order_id: u64,
        /// Product.
        sku: String,
        /// The units.
        serials: Vec<String>,
    },
    /// A shipment was created with its number and label data.
    ShipmentCreated {
        /// Shipment.
        shipment_id: u64,
        /// Sales order.
        order_id: u64,
        /// The carrier's shipment number.
        number: String,
        /// Carrier.
        carrier: String,
        /// The units in it.
        serials: Vec<String>,
        /// Who.
        by: String,
    },
    /// A shipment left the factory.
    ShipmentShipped {
        /// Shipment.
        shipment_id: u64,
        /// Sales order.
        order_id: u64,
        /// The carrier's shipment number.
        number: String,
        /// Who.
        by: String,
    },
    /// Shipped units came back; they wait for inspection.
    UnitsReturned {
        /// Sales order.
        order_id: u64,
        /// The units.
        serials: Vec<String>,
        /// Who.
        by: String,
    },
    /// A returned unit was inspected: restocked, or rejected.
    ReturnInspected {
        /// Serial.
        serial: String,
        /// Product.
        sku: String,
        /// Back in stock.
        restocked: bool,
        /// Reason code.
        reason: Option<String>,
        /// Who.
        by: String,
    },
    /// A manual finished-goods adjustment.
    StockAdjusted {
        /// Product.
        sku: String,
        /// Location.
        location: String,
        /// Count, damage or found.
        kind: AdjustmentKind,
        /// Units it changed.
        serials: Vec<String>,
        /// Change of on hand.
        on_hand_delta: i64,
        /// Reason code.
        reason: String,
        /// Who.
        by: String,
    },
    /// A product's finished-goods levels changed (one per product per
    /// commit; `version` is the inventory cursor).
    StockChanged {
        /// Product.
        sku: String,
        /// On hand.
        on_hand: i64,
        /// Reserved for orders.
        committed: i64,
        /// QC pending, damaged, returned awaiting inspection.
        unavailable: i64,
        /// on hand − committed − unavailable.
        available: i64,
        /// Inventory cursor of this change.
        version: u64,
    },
}

/// An event as the log holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LogRecord {
    /// Position in the log: 1, 2, 3... in commit order, never reused.
    pub seq: u64,
    /// Commit time, ms since the Unix epoch.
    pub at_ms: u64,
    /// What happened.
    pub event: DomainEvent,
}
