//! Shipping labels, packing slips and unit labels, generated locally as
//! vector PDF (with an embedded, subsetted DejaVu Sans) and as ZPL II for
//! 203 dpi thermal printers.
//!
//! Pure: the commerce code fills the plain structs below and gets bytes
//! back; nothing here reads the store, the clock or the file system, so a
//! reprint of the same record gives the same document. Addresses are
//! expected to have passed [`crate::commerce::address::validate`].

mod code128;
mod packing_slip;
mod shipping;
mod unit;
mod zpl;

pub use packing_slip::packing_slip_pdf;
pub use shipping::{shipping_label_pdf, shipping_label_zpl};
pub use unit::{unit_label_pdf, unit_label_zpl};
pub use zpl::escape_field as zpl_escape_field;

use crate::commerce::address::Address;

/// A calendar date as printed on documents (ISO 8601, `YYYY-MM-DD`).
/// Callers convert their timestamps with [`LabelDate::from_unix_ms`], so
/// the documents never read a clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct LabelDate {
    pub year: i32,
    pub month: u8,
    pub day: u8,
}

impl LabelDate {
    /// The UTC date of a Unix time in milliseconds (the store's times).
    pub fn from_unix_ms(ms: u64) -> Self {
        // Howard Hinnant's days-to-civil algorithm.
        let days = i64::try_from(ms / 86_400_000).unwrap_or(i64::MAX / 2) + 719_468;
        let era = days.div_euclid(146_097);
        let doe = days.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
        let year = (yoe + era * 400 + i64::from(month <= 2)) as i32;
        Self { year, month, day }
    }

    /// `YYMMDD`, the form of GS1 application identifier (11).
    pub fn gs1(&self) -> String {
        format!(
            "{:02}{:02}{:02}",
            self.year.rem_euclid(100),
            self.month,
            self.day
        )
    }
}

impl std::fmt::Display for LabelDate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }
}

/// A 4×6 in shipping label for one shipment.
#[derive(Debug, Clone, PartialEq)]
pub struct ShippingLabel {
    /// Our own shipment number (the local carrier's); encoded as Code 128.
    pub shipment_number: String,
    /// The order as the shop knows it, e.g. `#1001`.
    pub order_reference: String,
    /// The service name printed in the top box, e.g. `standard`.
    pub service: String,
    /// `None` when a product in the parcel has no weight recorded: the
    /// label says so instead of printing a figure nobody measured.
    pub weight_grams: Option<u32>,
    pub from: Address,
    pub to: Address,
}

/// Paper for packing slips.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Paper {
    /// 210 × 297 mm.
    A4,
    /// 8.5 × 11 in.
    Letter,
}

/// One line of a packing slip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlipLine {
    pub sku: String,
    pub title: String,
    pub quantity: u32,
    /// The serials of the units packed for this line.
    pub serials: Vec<String>,
}

/// A packing slip: what is in the box, for the person who opens it.
#[derive(Debug, Clone, PartialEq)]
pub struct PackingSlip {
    pub shop_name: String,
    pub shop_address: Address,
    pub order_number: String,
    pub order_date: LabelDate,
    pub ship_to: Address,
    pub lines: Vec<SlipLine>,
    pub paper: Paper,
}

/// A 2×1 in label stuck on one finished unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitLabel {
    pub sku: String,
    /// At most 20 characters of GS1's character set 82 (AI 21).
    pub serial: String,
    /// At most 20 characters of GS1's character set 82 (AI 10).
    pub lot: String,
    pub produced_on: LabelDate,
    /// A GTIN-14 (digits; shorter GTINs are padded with zeros) for AI (01).
    pub gtin: Option<String>,
    /// When set, the DataMatrix carries this URL (the unit's public record)
    /// instead of the GS1 element string, so a phone camera can open it.
    pub record_url: Option<String>,
}

/// The shared document font (`crate::pdf::font`), under its label name.
mod font {
    pub(crate) use crate::pdf::font::{DocFont as LabelFont, font};
}

/// The shared drawing helpers (`crate::pdf`), with their errors as
/// [`LabelError`].
mod pdf {
    pub(crate) use crate::pdf::{Canvas, INCH, MM, fit, page_settings, wrap};

    /// Serialises the document; krilla subsets the font here.
    pub(crate) fn finish(doc: krilla::Document) -> Result<Vec<u8>, super::LabelError> {
        Ok(crate::pdf::finish(doc)?)
    }
}

impl From<crate::pdf::PdfError> for LabelError {
    fn from(e: crate::pdf::PdfError) -> Self {
        Self::Pdf(e.0)
    }
}

/// Why a document could not be made; the commerce code answers a 422 for
/// `Invalid` and a 500 for the others (they mean a bug here).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabelError {
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error("barcode: {0}")]
    Barcode(String),
    #[error("PDF: {0}")]
    Pdf(String),
}

impl LabelError {
    fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        Self::Invalid {
            field,
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn unix_milliseconds_become_the_utc_calendar_date() {
        assert_eq!(LabelDate::from_unix_ms(0).to_string(), "1970-01-01");
        // 2026-11-30T11:32:25Z
        let d = LabelDate::from_unix_ms(1_796_038_345_000);
        assert_eq!(d.to_string(), "2026-11-30");
        assert_eq!(d.gs1(), "261130");
        // 2024-02-29T23:59:59.999Z, a leap day's last millisecond.
        assert_eq!(
            LabelDate::from_unix_ms(1_709_251_199_999).to_string(),
            "2024-02-29"
        );
        assert_eq!(
            LabelDate::from_unix_ms(1_709_251_200_000).to_string(),
            "2024-03-01"
        );
    }

    proptest! {
        #[test]
        fn consecutive_days_give_consecutive_dates(day in 0u64..200_000) {
            let a = LabelDate::from_unix_ms(day * 86_400_000);
            let b = LabelDate::from_unix_ms((day + 1) * 86_400_000 - 1);
            let c = LabelDate::from_unix_ms((day + 1) * 86_400_000);
            prop_assert_eq!(a, b);
            prop_assert!(c > a);
            prop_assert!((1..=12).contains(&c.month) && (1..=31).contains(&c.day));
            prop_assert!(c.day == a.day + 1 || (c.day == 1 && (c.month == a.month % 12 + 1)));
        }
    }
}
