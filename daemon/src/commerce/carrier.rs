//! Carriers: who gives a shipment its number (and, for a real carrier,
//! postage and tracking). Only the local carrier exists: it numbers
//! shipments itself and buys no postage. A real carrier (rates, postage,
//! tracking numbers) is future work behind the same trait; its numbers
//! come from the carrier, never invented here in its format.

use super::orders::{SalesOrder, ShipmentLine};

/// What a carrier is asked for a new shipment.
#[derive(Debug, Clone)]
pub struct LabelRequest<'a> {
    /// Our shipment id (unique, never reused).
    pub shipment_id: u64,
    /// The order it ships.
    pub order: &'a SalesOrder,
    /// What is in it.
    pub lines: &'a [ShipmentLine],
}

/// What a carrier answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Labelled {
    /// The shipment number printed as the label's barcode.
    pub number: String,
    /// A tracking URL, for carriers that track.
    pub tracking_url: Option<String>,
}

/// A carrier. Pure and synchronous for the local carrier; a networked
/// carrier would be called outside the commerce lock and its answer
/// committed afterwards.
pub trait Carrier: Send + Sync + std::fmt::Debug {
    /// Its name, stored with each shipment.
    fn name(&self) -> &'static str;
    /// A number (and postage, for a real carrier) for a new shipment.
    fn label(&self, req: &LabelRequest<'_>) -> Labelled;
}

/// Numbers shipments itself: `MF-` and the shipment id, zero-padded to
/// ten digits. No postage, no tracking; the format is ours and resembles
/// no carrier's tracking number.
#[derive(Debug, Clone, Copy, Default)]
pub struct LocalCarrier;

impl Carrier for LocalCarrier {
    fn name(&self) -> &'static str {
        "local"
    }

    fn label(&self, req: &LabelRequest<'_>) -> Labelled {
        Labelled {
            number: format!("MF-{:010}", req.shipment_id),
            tracking_url: None,
        }
    }
}
