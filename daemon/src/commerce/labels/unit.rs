//! The 2×1 in unit label: SKU, serial, lot, production date and a
//! DataMatrix with the GS1 element string ((01) GTIN, (11) production
//! date, (10) lot, (21) serial) or, when given, the URL of the unit's
//! public record.

use datamatrix::{DataMatrix, SymbolList};
use krilla::Document;
use tracing::debug_span;

use super::pdf::{self, Canvas, INCH};
use super::zpl::{DM_ESCAPE, Zpl};
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

/// A character RFC 3986 allows in a URI (unreserved, reserved or `%`).
fn uri_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~:/?#[]@!$&'()*+,;=%".contains(c)
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
        if url.is_empty() || url.len() > 500 || !url.chars().all(uri_char) {
            return Err(LabelError::invalid(
                "record_url",
                "the record URL must be at most 500 characters allowed in a URL (RFC 3986; percent-encode others)",
            ));
        }
        return Ok(Content {
            bytes: url.as_bytes().to_vec(),
            gs1: false,
            zpl: url.clone(),
        });
    }
    let gtin = label.gtin.as_deref().map(gtin14).transpose()?;
    let fixed = match &gtin {
        Some(g) => format!("01{g}11{}", label.produced_on.gs1()),
        None => format!("11{}", label.produced_on.gs1()),
    };
    let text = format!("{fixed}10{}{GS}21{}", label.lot, label.serial);
    // Neither lot nor serial can hold the escape (set 82), so only FNC1 uses it.
    let zpl = format!(
        "{DM_ESCAPE}1{fixed}10{}{DM_ESCAPE}121{}",
        label.lot, label.serial
    );
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

/// Data codewords in DataMatrix ASCII encodation, an upper bound of what
/// an optimising encoder needs: two digits in one codeword, other ASCII
/// one, anything else two.
fn ascii_codewords(data: &[u8]) -> usize {
    let mut n = 0;
    let mut i = 0;
    while i < data.len() {
        let pair = i + 1 < data.len() && data[i].is_ascii_digit() && data[i + 1].is_ascii_digit();
        n += if data[i] > 127 { 2 } else { 1 };
        i += if pair { 2 } else { 1 };
    }
    n
}

/// The side, in modules, of the smallest square ECC 200 symbol holding
/// `codewords` data codewords (ISO/IEC 16022 table 7).
fn square_side(codewords: usize) -> u32 {
    const SQUARES: [(u32, usize); 24] = [
        (10, 3),
        (12, 5),
        (14, 8),
        (16, 12),
        (18, 18),
        (20, 22),
        (22, 30),
        (24, 36),
        (26, 44),
        (32, 62),
        (36, 86),
        (40, 114),
        (44, 144),
        (48, 174),
        (52, 204),
        (64, 280),
        (72, 368),
        (80, 456),
        (88, 576),
        (96, 696),
        (104, 816),
        (120, 1050),
        (132, 1304),
        (144, 1558),
    ];
    SQUARES
        .iter()
        .find(|(_, cap)| *cap >= codewords)
        .map_or(144, |(side, _)| *side)
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
    // The printer encodes the symbol itself; its size from our estimate
    // sets the module so it fills about 170 dots.
    let side = square_side(ascii_codewords(&c.bytes) + usize::from(c.gs1));
    let module = (170 / (side + 4)).clamp(2, 10);
    let mut z = Zpl::start(ZW, ZH);
    z.datamatrix(16, 16, module, &c.zpl);
    z.text_fit(200, 20, 30, 18, ZW - 210, &label.sku);
    z.text_fit(200, 65, 24, 16, ZW - 210, &format!("SN {}", label.serial));
    z.text_fit(200, 105, 24, 16, ZW - 210, &format!("LOT {}", label.lot));
    z.text_fit(
        200,
        145,
        24,
        16,
        ZW - 210,
        &format!("MFD {}", label.produced_on),
    );
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
            "`10104006381333931112611301".to_owned() + "0PLA-2611`121CPL-000042"
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
    fn the_size_estimate_is_never_smaller_than_the_encoders_symbol() {
        let mut l = sample();
        for (serial, url) in [
            ("1", None),
            ("CPL-000042", None),
            ("ABCDEFGHIJ0123456789", None),
            (
                "X",
                Some("https://factory.example/units/a-rather-long-path/CPL-000042?x=1"),
            ),
        ] {
            l.serial = serial.into();
            l.record_url = url.map(str::to_owned);
            let c = content(&l).expect("content");
            let encoded = symbol(&c).expect("symbol").bitmap().width() as u32;
            let estimate = square_side(ascii_codewords(&c.bytes) + usize::from(c.gs1));
            assert!(estimate >= encoded, "{serial}: {estimate} < {encoded}");
            assert!(
                estimate <= encoded + 8,
                "{serial}: {estimate} far above {encoded}"
            );
        }
        assert_eq!(ascii_codewords(b"0123"), 2);
        assert_eq!(ascii_codewords(b"A1B2"), 4);
        assert_eq!(square_side(3), 10);
        assert_eq!(square_side(31), 24);
    }

    #[test]
    fn a_record_url_replaces_the_element_string_and_may_not_hold_the_escape() {
        let mut l = sample();
        l.record_url = Some("https://shop.example/u/CPL-000042#top".into());
        let c = content(&l).expect("content");
        assert!(!c.gs1);
        assert_eq!(c.zpl, "https://shop.example/u/CPL-000042#top");
        l.record_url = Some("https://shop.example/u/`x`".into());
        assert!(matches!(
            content(&l),
            Err(LabelError::Invalid {
                field: "record_url",
                ..
            })
        ));
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
