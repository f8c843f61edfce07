//! The 2×1 in unit label: SKU, serial, lot, production date and a
//! DataMatrix with the GS1 element string ((01) GTIN, (11) production
//! date, (10) lot, (21) serial) or, when given, the URL of the unit's
//! public record.

use datamatrix::{DataMatrix, SymbolList};
use krilla::Document;
use tracing::debug_span;

use super::pdf::{self, Canvas, INCH};
use super::zpl::{Zpl, datamatrix_literal};
use super::{LabelError, UnitLabel};

const W: f32 = 2.0 * INCH;
const H: f32 = INCH;
const ZW: u32 = 406;
const ZH: u32 = 203;
/// The ASCII group separator that ends a variable-length element string.
const GS: char = '\u{1d}';

/// GS1's character set 82, the characters AI (10) and (21) may hold.
fn gs1_82(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!\"%&'()*+,-./:;<=>?_".contains(c)
}

fn check_ai(field: &'static str, value: &str) -> Result<(), LabelError> {
    let n = value.chars().count();
    if n == 0 || n > 20 {
        return Err(LabelError::invalid(
            field,
            format!("{field} must have 1 to 20 characters, not {n}"),
        ));
    }
    if let Some(c) = value.chars().find(|c| !gs1_82(*c)) {
        return Err(LabelError::invalid(
            field,
            format!(
                "{field} may hold letters, digits and !\"%&'()*+,-./:;<=>?_ only (GS1 set 82); {c:?} is not one"
            ),
        ));
    }
    Ok(())
}

/// A GTIN-8/12/13/14 as the 14 digits of AI (01), its check digit verified.
fn gtin14(gtin: &str) -> Result<String, LabelError> {
    let ok_len = matches!(gtin.len(), 8 | 12 | 13 | 14);
    if !ok_len || !gtin.bytes().all(|b| b.is_ascii_digit()) {
        return Err(LabelError::invalid(
            "gtin",
            "a GTIN has 8, 12, 13 or 14 digits",
        ));
    }
    let padded = format!("{gtin:0>14}");
    let digits: Vec<u32> = padded.bytes().map(|b| u32::from(b - b'0')).collect();
    let sum: u32 = digits[..13]
        .iter()
        .enumerate()
        .map(|(i, d)| if i % 2 == 0 { d * 3 } else { *d })
        .sum();
    if (10 - sum % 10) % 10 != digits[13] {
        return Err(LabelError::invalid(
            "gtin",
            format!("{gtin} has a wrong check digit"),
        ));
    }
    Ok(padded)
}

/// What the symbol carries: for GS1, the element strings in order (fixed
/// lengths first, a separator after the lot); `None` means a URL.
struct Content {
    /// For the PDF: the data after the leading FNC1 (which `encode_gs1`
    /// adds), GS between variable-length fields; or the URL.
    bytes: Vec<u8>,
    gs1: bool,
    /// For ZPL `^BX` with `#` as escape: `#1` is FNC1.
    zpl: String,
}

fn content(label: &UnitLabel) -> Result<Content, LabelError> {
    check_ai("serial", &label.serial)?;
    check_ai("lot", &label.lot)?;
    if label.sku.trim().is_empty() {
        return Err(LabelError::invalid("sku", "the label needs the SKU"));
    }
    if let Some(url) = &label.record_url {
        if url.is_empty()
            || url.len() > 500
            || !url.is_ascii()
            || url.chars().any(|c| c.is_ascii_control())
        {
            return Err(LabelError::invalid(
                "record_url",
                "the record URL must be printable ASCII, at most 500 characters",
            ));
        }
        return Ok(Content {
            bytes: url.as_bytes().to_vec(),
            gs1: false,
            zpl: datamatrix_literal(url),
        });
    }
    let gtin = label.gtin.as_deref().map(gtin14).transpose()?;
    let fixed = match &gtin {
        Some(g) => format!("01{g}11{}", label.produced_on.gs1()),
        None => format!("11{}", label.produced_on.gs1()),
    };
    let text = format!("{fixed}10{}{GS}21{}", label.lot, label.serial);
    // Neither lot nor serial can hold `#` (set 82), so only FNC1 needs the escape.
    let zpl = format!("#1{fixed}10{}#121{}", label.lot, label.serial);
    Ok(Content {
        bytes: text.into_bytes(),
        gs1: true,
        zpl,
    })
}

/// The GS1 element string in its human-readable form, e.g.
/// `(11)261130(10)L7(21)SN1`, or the URL.
pub(crate) fn human_readable(label: &UnitLabel) -> Result<String, LabelError> {
    let c = content(label)?;
    if !c.gs1 {
        return Ok(String::from_utf8_lossy(&c.bytes).into_owned());
    }
    let text = String::from_utf8_lossy(&c.bytes).replace(GS, "");
    let mut out = String::new();
    let gtin = label.gtin.as_deref().map(gtin14).transpose()?;
    if let Some(g) = gtin {
        out.push_str(&format!("(01){g}"));
    }
    out.push_str(&format!(
        "(11){}(10){}(21){}",
        label.produced_on.gs1(),
        label.lot,
        label.serial
    ));
    debug_assert_eq!(out.replace(['(', ')'], "").len(), text.len());
    Ok(out)
}

fn symbol(c: &Content) -> Result<DataMatrix, LabelError> {
    let r = if c.gs1 {
        DataMatrix::encode_gs1(&c.bytes, SymbolList::default().enforce_square())
    } else {
        DataMatrix::encode(&c.bytes, SymbolList::default().enforce_square())
    };
    r.map_err(|e| LabelError::Barcode(format!("DataMatrix: {e:?}")))
}

/// The unit label as a one-page vector PDF, 2 × 1 in.
pub fn unit_label_pdf(label: &UnitLabel) -> Result<Vec<u8>, LabelError> {
    let _span = debug_span!("unit_label_pdf", serial = %label.serial).entered();
    let c = content(label)?;
    let dm = symbol(&c)?;
    let bitmap = dm.bitmap();
    let (cols, rows) = (bitmap.width(), bitmap.height());
    let mut dark = vec![false; cols * rows];
    for (x, y) in bitmap.pixels() {
        dark[y * cols + x] = true;
    }
    let mut doc = Document::new();
    {
        let mut page = doc.start_page_with(pdf::page_settings(W, H)?);
        let mut surface = page.surface();
        let mut cv = Canvas::new(&mut surface)?;
        // The symbol fills the left square with a two-module quiet zone.
        let side = H - 8.0;
        let module = side / (cols + 4) as f32;
        cv.matrix(
            4.0 + 2.0 * module,
            4.0 + 2.0 * module,
            module,
            cols,
            rows,
            |x, y| dark[y * cols + x],
        );
        let x = H + 2.0;
        let wmax = W - x - 4.0;
        cv.text_fit(x, 14.0, 9.0, 6.0, wmax, &label.sku);
        cv.text_fit(x, 29.0, 7.0, 5.0, wmax, &format!("SN {}", label.serial));
        cv.text_fit(x, 41.0, 7.0, 5.0, wmax, &format!("LOT {}", label.lot));
        cv.text_fit(
            x,
            53.0,
            7.0,
            5.0,
            wmax,
            &format!("MFD {}", label.produced_on),
        );
        if c.gs1 {
            // The element strings for a person, on two lines at most.
            let hr = human_readable(label)?.replace('(', " (");
            let f = super::font::font()?;
            for (i, l) in pdf::wrap(f, hr.trim(), 4.0, wmax)
                .iter()
                .take(2)
                .enumerate()
            {
                cv.text(x, 61.0 + 5.0 * i as f32, 4.0, &l.replace(" (", "("));
            }
        }
    }
    pdf::finish(doc)
}

/// The unit label as ZPL II, 406 × 203 dots.
pub fn unit_label_zpl(label: &UnitLabel) -> Result<String, LabelError> {
    let _span = debug_span!("unit_label_zpl", serial = %label.serial).entered();
    let c = content(label)?;
    let cols = symbol(&c)?.bitmap().width() as u32;
    // The printer encodes the symbol itself; our encoder's size sets the
    // module so it fills about 170 dots.
    let module = (170 / (cols + 4)).clamp(2, 10);
    let mut z = Zpl::start(ZW, ZH);
    z.datamatrix(16, 16, module, &c.zpl);
    z.text(200, 20, 30, 14, &label.sku);
    z.text(200, 65, 24, 18, &format!("SN {}", label.serial));
    z.text(200, 105, 24, 18, &format!("LOT {}", label.lot));
    z.text(200, 145, 24, 18, &format!("MFD {}", label.produced_on));
    Ok(z.finish())
}

#[cfg(test)]
mod tests {
    use super::super::LabelDate;
    use super::*;

    pub(crate) fn sample() -> UnitLabel {
        UnitLabel {
            sku: "coupling-12mm".into(),
            serial: "CPL-000042".into(),
            lot: "PLA-2611".into(),
            produced_on: LabelDate {
                year: 2026,
                month: 11,
                day: 30,
            },
            gtin: Some("4006381333931".into()),
            record_url: None,
        }
    }

    #[test]
    fn the_symbol_carries_gs1_element_strings_in_order() {
        let c = content(&sample()).expect("content");
        assert_eq!(
            c.bytes,
            b"0104006381333931112611301"
                .iter()
                .copied()
                .chain(*b"0PLA-2611\x1d21CPL-000042")
                .collect::<Vec<_>>()
        );
        assert_eq!(
            c.zpl,
            "#10104006381333931112611301".to_owned() + "0PLA-2611#121CPL-000042"
        );
        assert_eq!(
            human_readable(&sample()).expect("hr"),
            "(01)04006381333931(11)261130(10)PLA-2611(21)CPL-000042"
        );
        let decoded = symbol(&c).expect("symbol");
        let bits = decoded.bitmap();
        let mut pixels = vec![false; bits.width() * bits.height()];
        for (x, y) in bits.pixels() {
            pixels[y * bits.width() + x] = true;
        }
        let back = DataMatrix::decode(&pixels, bits.width()).expect("decodes");
        assert_eq!(
            back, c.bytes,
            "the encoder's own decoder reads it back (FNC1 dropped)"
        );
    }

    #[test]
    fn a_record_url_replaces_the_element_string_and_escapes_its_hash() {
        let mut l = sample();
        l.record_url = Some("https://shop.example/u/CPL-000042#top".into());
        let c = content(&l).expect("content");
        assert!(!c.gs1);
        assert_eq!(c.zpl, "https://shop.example/u/CPL-000042#d035top");
    }

    #[test]
    fn serials_lots_and_gtins_outside_gs1_rules_are_refused_by_field() {
        let cases: Vec<(UnitLabel, &str)> = vec![
            (
                UnitLabel {
                    serial: "S#1".into(),
                    ..sample()
                },
                "serial",
            ),
            (
                UnitLabel {
                    serial: "x".repeat(21),
                    ..sample()
                },
                "serial",
            ),
            (
                UnitLabel {
                    lot: "".into(),
                    ..sample()
                },
                "lot",
            ),
            (
                UnitLabel {
                    lot: "lot 1".into(),
                    ..sample()
                },
                "lot",
            ),
            (
                UnitLabel {
                    gtin: Some("4006381333932".into()),
                    ..sample()
                },
                "gtin",
            ),
            (
                UnitLabel {
                    gtin: Some("40063813339".into()),
                    ..sample()
                },
                "gtin",
            ),
            (
                UnitLabel {
                    sku: " ".into(),
                    ..sample()
                },
                "sku",
            ),
        ];
        for (l, want) in cases {
            match unit_label_zpl(&l) {
                Err(LabelError::Invalid { field, .. }) => assert_eq!(field, want, "{l:?}"),
                other => panic!("{l:?}: {other:?}"),
            }
        }
    }
}
