//! The 4×6 in shipping label: from, to, service, weight, order reference
//! and the shipment number as Code 128 with its text. The local carrier
//! has no postage, so the label says so instead of imitating an indicium.

use krilla::Document;
use tracing::debug_span;

use super::pdf::{self, Canvas, INCH};
use super::zpl::Zpl;
use super::{LabelError, ShippingLabel, code128};
use crate::commerce::address::lines;

/// Page size in points: 4 × 6 in.
const W: f32 = 4.0 * INCH;
const H: f32 = 6.0 * INCH;
/// ZPL size in dots at 203 dpi.
const ZW: u32 = 812;
const ZH: u32 = 1218;
/// Quiet zone each side of the barcode, in modules.
const QUIET: usize = 10;

const NO_POSTAGE: &str = "Local carrier: no postage; not a carrier tracking number.";

/// `450 g (0.99 lb)`, `1.25 kg (2.76 lb)`.
pub(crate) fn weight(grams: u32) -> String {
    let lb = f64::from(grams) / 453.592_37;
    if grams < 1000 {
        format!("{grams} g ({lb:.2} lb)")
    } else {
        format!("{:.2} kg ({lb:.2} lb)", f64::from(grams) / 1000.0)
    }
}

/// The weight as printed, or that it is unknown.
fn weight_of(label: &ShippingLabel) -> String {
    label
        .weight_grams
        .map_or_else(|| "weight not recorded".to_owned(), weight)
}

fn check(label: &ShippingLabel) -> Result<Vec<u8>, LabelError> {
    if label.order_reference.trim().is_empty() {
        return Err(LabelError::invalid(
            "order_reference",
            "the label needs the order reference",
        ));
    }
    if label.service.trim().is_empty() {
        return Err(LabelError::invalid(
            "service",
            "the label needs the service name",
        ));
    }
    code128::modules(&label.shipment_number)
}

/// The label as a one-page vector PDF.
pub fn shipping_label_pdf(label: &ShippingLabel) -> Result<Vec<u8>, LabelError> {
    let _span = debug_span!("shipping_label_pdf", shipment = %label.shipment_number).entered();
    let modules = check(label)?;
    let mut doc = Document::new();
    {
        let mut page = doc.start_page_with(pdf::page_settings(W, H)?);
        let mut surface = page.surface();
        let mut c = Canvas::new(&mut surface)?;
        let m = 12.0;

        // From, top left; service and weight boxed, top right.
        c.text(m, m + 7.0, 7.0, "FROM");
        let mut y = m + 17.0;
        for l in lines(&label.from, &label.to.country) {
            c.text_fit(m, y, 8.0, 6.0, 170.0, &l);
            y += 9.5;
        }
        let (bx, bw) = (W - m - 88.0, 88.0);
        c.frame(bx, m, bw, 56.0, 2.0);
        let service = label.service.to_uppercase();
        let (s, size) = pdf::fit(super::font::font()?, &service, 16.0, 7.0, bw - 10.0);
        c.text_centred(bx + bw / 2.0, m + 24.0, size, &s);
        let wt = weight_of(label);
        let (wt, wsize) = pdf::fit(super::font::font()?, &wt, 8.0, 6.0, bw - 8.0);
        c.text_centred(bx + bw / 2.0, m + 44.0, wsize, &wt);
        let mut y = y.max(m + 64.0) + 4.0;
        c.fill_rect(m, y, W - 2.0 * m, 1.5);

        // Ship to, large.
        y += 14.0;
        c.text(m, y, 9.0, "SHIP TO");
        y += 20.0;
        for l in lines(&label.to, &label.from.country) {
            c.text_fit(m + 14.0, y, 15.0, 9.0, W - 2.0 * m - 14.0, &l);
            y += 18.5;
        }
        let y_rule = y.max(250.0);
        c.fill_rect(m, y_rule, W - 2.0 * m, 1.5);

        // The shipment number: bars at most 2 pt a module, one inch high.
        let total = (modules.len() + 2 * QUIET) as f32;
        let module = ((W - 2.0 * m) / total).min(2.0);
        let bar_w = modules.len() as f32 * module;
        let bar_y = y_rule + 12.0;
        c.bars((W - bar_w) / 2.0, bar_y, module, 60.0, &modules);
        c.text_centred(W / 2.0, bar_y + 76.0, 12.0, &label.shipment_number);
        let y = bar_y + 88.0;
        c.fill_rect(m, y, W - 2.0 * m, 1.5);

        // Order reference and weight again for the packer.
        c.text_fit(
            m,
            y + 22.0,
            14.0,
            8.0,
            W - 2.0 * m,
            &format!("ORDER {}", label.order_reference),
        );
        c.text_fit(
            m,
            y + 40.0,
            10.0,
            7.0,
            W - 2.0 * m,
            &format!("WEIGHT {}", weight_of(label)),
        );
        c.text_fit(m, H - m, 6.5, 5.0, W - 2.0 * m, NO_POSTAGE);
    }
    pdf::finish(doc)
}

/// The label as ZPL II for a 203 dpi printer (812 × 1218 dots).
pub fn shipping_label_zpl(label: &ShippingLabel) -> Result<String, LabelError> {
    let _span = debug_span!("shipping_label_zpl", shipment = %label.shipment_number).entered();
    let modules = check(label)?;
    let m = 30;
    let mut z = Zpl::start(ZW, ZH);
    z.text(m, m, 22, 40, "FROM");
    let mut y = m + 30;
    for l in lines(&label.from, &label.to.country) {
        z.text_fit(m, y, 24, 18, 520, &l);
        y += 28;
    }
    z.rect(560, m, 222, 150, 4);
    z.text_centred(560, m + 35, 222, 44, 9, &label.service.to_uppercase());
    z.text_centred(560, m + 100, 222, 22, 18, &weight_of(label));
    let y = y.max(m + 160) + 10;
    z.rect(m, y, ZW - 2 * m, 4, 4);
    let mut y2 = y + 20;
    z.text(m, y2, 26, 20, "SHIP TO");
    y2 += 40;
    for l in lines(&label.to, &label.from.country) {
        z.text_fit(m + 30, y2, 44, 28, ZW - 2 * m - 30, &l);
        y2 += 50;
    }
    let y_rule = y2.max(640);
    z.rect(m, y_rule, ZW - 2 * m, 4, 4);
    // The widest whole-dot module that fits with quiet zones (2 to 4 dots).
    let needed = (modules.len() + 2 * QUIET) as u32;
    let module = ((ZW - 2 * m) / needed).clamp(1, 4);
    let x = ZW.saturating_sub(modules.len() as u32 * module) / 2;
    z.code128(x, y_rule + 30, module, 180, &label.shipment_number);
    z.text_centred(0, y_rule + 225, ZW, 40, 40, &label.shipment_number);
    let y3 = y_rule + 285;
    z.rect(m, y3, ZW - 2 * m, 4, 4);
    let order = format!("ORDER {}", label.order_reference);
    z.text_fit(m, y3 + 25, 44, 28, ZW - 2 * m, &order);
    let wt = format!("WEIGHT {}", weight_of(label));
    z.text_fit(m, y3 + 80, 30, 24, ZW - 2 * m, &wt);
    z.text_fit(m, ZH - 50, 20, 16, ZW - 2 * m, NO_POSTAGE);
    Ok(z.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_read_in_grams_or_kilograms_with_pounds() {
        assert_eq!(weight(450), "450 g (0.99 lb)");
        assert_eq!(weight(1250), "1.25 kg (2.76 lb)");
        assert_eq!(weight(0), "0 g (0.00 lb)");
    }

    #[test]
    fn an_unknown_weight_is_said_not_printed_as_a_number() {
        let a = crate::commerce::tests::address();
        let mut label = ShippingLabel {
            shipment_number: "MF-0000000001".into(),
            order_reference: "web/1".into(),
            service: "standard".into(),
            weight_grams: None,
            from: a.clone(),
            to: a,
        };
        assert_eq!(weight_of(&label), "weight not recorded");
        let zpl = shipping_label_zpl(&label).expect("zpl");
        assert!(zpl.contains("weight not recorded"), "{zpl}");
        assert!(!zpl.contains(" g ("), "{zpl}");
        label.weight_grams = Some(450);
        assert!(shipping_label_zpl(&label).expect("zpl").contains("450 g"));
    }
}
