//! Labels and packing slips checked with real tools: every PDF is parsed
//! and rendered by Debian's poppler-utils (`pdfinfo`, `pdffonts`,
//! `pdftotext`, `pdftoppm`), and every barcode in the rendering is decoded
//! by zxing-cpp (`decode_barcodes.py`), a decoder independent of the
//! encoders we use. ZPL is checked command by command, with hostile input.
//! `.ci/run` installs poppler-utils and zxing-cpp.

use std::path::{Path, PathBuf};
use std::process::Command;

use microfactoryd::commerce::address::{Address, validate};
use microfactoryd::commerce::labels::{
    LabelDate, PackingSlip, Paper, ShippingLabel, SlipLine, UnitLabel, packing_slip_pdf,
    shipping_label_pdf, shipping_label_zpl, unit_label_pdf, unit_label_zpl,
};

fn scratch(name: &str) -> PathBuf {
    // Cargo's scratch folder for integration tests, inside target/: the
    // last run's files stay there to look at.
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("labels-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} could not start ({e}); install poppler-utils and zxing-cpp as .ci/run does"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let p = dir.join(name);
    std::fs::write(&p, bytes).expect("write");
    p.to_string_lossy().into_owned()
}

/// `pdfinfo`'s page count and first page size in points.
fn info(pdf: &str) -> (usize, String) {
    let text = run("pdfinfo", &[pdf]);
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_owned())
            .unwrap_or_else(|| panic!("pdfinfo has no {name}: {text}"))
    };
    (
        field("Pages:").parse().expect("page count"),
        field("Page size:"),
    )
}

/// Asserts `pdffonts` lists DejaVu Sans, embedded and subsetted, and only it.
fn assert_font_embedded(pdf: &str) {
    let text = run("pdffonts", &[pdf]);
    let fonts: Vec<&str> = text.lines().skip(2).collect();
    assert!(!fonts.is_empty(), "no fonts: {text}");
    for f in fonts {
        let cols: Vec<&str> = f.split_whitespace().collect();
        assert!(cols[0].contains("DejaVuSans"), "{f}");
        let n = cols.len();
        // name type [type] encoding emb sub uni object ID
        assert_eq!(
            (cols[n - 5], cols[n - 4]),
            ("yes", "yes"),
            "embedded and subsetted: {f}"
        );
    }
}

#[derive(Debug)]
struct Decoded {
    format: String,
    text: String,
    symbology: String,
    bytes: Vec<u8>,
}

/// Renders every page at `dpi` in grey and decodes all barcodes found.
fn decode(pdf: &str, dir: &Path, dpi: u32) -> Vec<Decoded> {
    let prefix = dir.join("page").to_string_lossy().into_owned();
    run("pdftoppm", &["-gray", "-r", &dpi.to_string(), pdf, &prefix]);
    decode_pages(dir)
}

/// Renders ZPL with the `zpl` crate (its own fonts and barcode encoders,
/// a ZD621 at 203 dpi), checks the label's size in dots, and decodes it.
fn decode_zpl(zpl: &str, dir: &Path, width: u32, height: u32) -> Vec<Decoded> {
    let doc = zpl::render(zpl.as_bytes(), zpl::Options::default())
        .unwrap_or_else(|e| panic!("{e:?} rendering:\n{zpl}"));
    assert_eq!(doc.labels.len(), 1, "one label");
    let raster = zpl::output::raster::rasterize(&doc.labels[0]).expect("rasterizes");
    assert_eq!((raster.width, raster.height), (width, height));
    let mut pgm = format!("P5\n{} {}\n255\n", raster.width, raster.height).into_bytes();
    pgm.extend_from_slice(&raster.pixels);
    std::fs::write(dir.join("zpl.pgm"), pgm).expect("write pgm");
    decode_pages(dir)
}

fn decode_pages(dir: &Path) -> Vec<Decoded> {
    let mut pages: Vec<String> = std::fs::read_dir(dir)
        .expect("dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "pgm"))
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    pages.sort();
    assert!(!pages.is_empty(), "pdftoppm rendered nothing");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/decode_barcodes.py");
    let mut args = vec![script];
    args.extend(pages.iter().map(String::as_str));
    run("python3", &args)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("json line");
            let s = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
            let hex = s("bytes");
            let bytes = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
                .collect();
            Decoded {
                format: s("format"),
                text: s("text"),
                symbology: s("symbology"),
                bytes,
            }
        })
        .collect()
}

/// A validated address, as the commerce code passes them.
fn address(
    name: &str,
    street: [&str; 2],
    city: &str,
    region: Option<&str>,
    postal_code: &str,
    country: &str,
) -> Address {
    validate(&Address {
        name: name.into(),
        street1: street[0].into(),
        street2: (!street[1].is_empty()).then(|| street[1].to_owned()),
        city: city.into(),
        region: region.map(str::to_owned),
        postal_code: postal_code.into(),
        country: country.into(),
        phone: None,
        email: None,
    })
    .expect("valid address")
}

fn shop() -> Address {
    let street = ["400 Industrial Way", "Unit 3"];
    address(
        "Open Microfactory",
        street,
        "Oakland",
        Some("CA"),
        "94607",
        "US",
    )
}

fn customer_de() -> Address {
    let name = "Zoë Ørsted-Łukasiewicz";
    address(name, ["Müllerstraße 12", ""], "Berlin", None, "13353", "de")
}

fn label() -> ShippingLabel {
    ShippingLabel {
        shipment_number: "MF-2026-000123".into(),
        order_reference: "#1001".into(),
        service: "standard".into(),
        weight_grams: Some(450),
        from: shop(),
        to: customer_de(),
    }
}

#[test]
fn a_shipping_label_pdf_is_4_by_6_inches_with_its_font_embedded_and_its_barcode_decodes() {
    let dir = scratch("ship");
    let pdf = write(
        &dir,
        "label.pdf",
        &shipping_label_pdf(&label()).expect("pdf"),
    );
    assert_eq!(info(&pdf), (1, "288 x 432 pts".to_owned()));
    assert_font_embedded(&pdf);
    let text = run("pdftotext", &["-layout", &pdf, "-"]);
    for want in [
        "FROM",
        "OPEN MICROFACTORY",
        "400 INDUSTRIAL WAY UNIT 3",
        "OAKLAND CA 94607",
        "SHIP TO",
        "Zoë Ørsted-Łukasiewicz",
        "Müllerstraße 12",
        "13353 Berlin",
        "GERMANY",
        "STANDARD",
        "ORDER #1001",
        "450 g (0.99 lb)",
        "MF-2026-000123",
        "no postage",
    ] {
        assert!(text.contains(want), "{want:?} not in:\n{text}");
    }
    // At the printer's own resolution, as a 203 dpi thermal printer sees it.
    let codes = decode(&pdf, &dir, 203);
    assert_eq!(codes.len(), 1, "{codes:?}");
    assert_eq!(codes[0].format, "Code 128");
    assert_eq!(codes[0].text, "MF-2026-000123");
}

#[test]
fn an_all_digit_shipment_number_decodes_from_its_denser_set_c_symbol() {
    let dir = scratch("ship-digits");
    let l = ShippingLabel {
        shipment_number: "0000123456".into(),
        ..label()
    };
    let pdf = write(&dir, "label.pdf", &shipping_label_pdf(&l).expect("pdf"));
    let codes = decode(&pdf, &dir, 203);
    assert_eq!(codes.len(), 1, "{codes:?}");
    assert_eq!(
        (codes[0].format.as_str(), codes[0].text.as_str()),
        ("Code 128", "0000123456")
    );
}

fn slip(lines: usize, serials_per_line: usize, paper: Paper) -> PackingSlip {
    PackingSlip {
        shop_name: "Open Microfactory".into(),
        shop_address: shop(),
        order_number: "#1001".into(),
        order_date: LabelDate::from_unix_ms(1_796_038_345_000),
        ship_to: customer_de(),
        lines: (0..lines)
            .map(|i| SlipLine {
                sku: format!("coupling-{i:03}"),
                title: format!(
                    "Shaft coupling {i} mm, PETG, with a title long enough to be cut at the column"
                ),
                quantity: serials_per_line as u32,
                serials: (0..serials_per_line)
                    .map(|k| format!("CPL-{i:03}-{k:04}"))
                    .collect(),
            })
            .collect(),
        paper,
    }
}

#[test]
fn a_packing_slip_lists_every_line_and_serial_on_a4_and_letter() {
    for (paper, size) in [
        (Paper::A4, "595.276 x 841.89 pts (A4)"),
        (Paper::Letter, "612 x 792 pts (letter)"),
    ] {
        let dir = scratch(&format!("slip-{paper:?}"));
        let s = slip(3, 2, paper);
        let pdf = write(&dir, "slip.pdf", &packing_slip_pdf(&s).expect("pdf"));
        assert_eq!(info(&pdf), (1, size.to_owned()), "{paper:?}");
        assert_font_embedded(&pdf);
        let text = run("pdftotext", &["-layout", &pdf, "-"]);
        for want in [
            "Open Microfactory",
            "PACKING SLIP",
            "Order #1001",
            "Date 2026-11-30",
            "SHIP TO",
            "13353 Berlin",
            "Page 1 of 1",
        ] {
            assert!(text.contains(want), "{paper:?}: {want:?} not in:\n{text}");
        }
        for l in &s.lines {
            assert!(text.contains(&l.sku), "{}", l.sku);
            for serial in &l.serials {
                assert!(text.contains(serial.as_str()), "{serial}");
            }
        }
        assert!(text.contains("Shaft coupling 2 mm"), "{text}");
    }
}

#[test]
fn a_long_order_continues_on_more_pages_that_all_render() {
    let dir = scratch("slip-long");
    let s = slip(60, 7, Paper::Letter);
    let pdf = write(&dir, "slip.pdf", &packing_slip_pdf(&s).expect("pdf"));
    let (pages, _) = info(&pdf);
    assert!(
        pages >= 3,
        "60 lines with 7 serials each need several pages, got {pages}"
    );
    let text = run("pdftotext", &["-layout", &pdf, "-"]);
    for p in 1..=pages {
        assert!(text.contains(&format!("Page {p} of {pages}")), "page {p}");
    }
    assert!(text.contains("(continued)"));
    let mut seen = 0;
    for l in &s.lines {
        assert!(text.contains(&l.sku), "{}", l.sku);
        for serial in &l.serials {
            assert!(text.contains(serial.as_str()), "{serial} missing");
            seen += 1;
        }
    }
    assert_eq!(seen, 420);
    // Every page renders.
    run(
        "pdftoppm",
        &["-gray", "-r", "30", &pdf, &dir.join("p").to_string_lossy()],
    );
    let rendered = std::fs::read_dir(&dir).expect("dir").filter(|e| {
        e.as_ref()
            .expect("entry")
            .path()
            .extension()
            .is_some_and(|x| x == "pgm")
    });
    assert_eq!(rendered.count(), pages);
}

/// One GS1 DataMatrix carrying `unit()`'s element strings.
fn assert_gs1_unit(codes: &[Decoded]) {
    assert_eq!(codes.len(), 1, "{codes:?}");
    assert_eq!(codes[0].format, "Data Matrix");
    assert_eq!(codes[0].symbology, "]d2", "FNC1 first: a GS1 DataMatrix");
    let hri = "(01)04006381333931(11)261130(10)PETG-2611(21)CPL-000042";
    assert_eq!(codes[0].text, hri);
}

fn unit() -> UnitLabel {
    UnitLabel {
        sku: "coupling-12mm".into(),
        serial: "CPL-000042".into(),
        lot: "PETG-2611".into(),
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
fn a_unit_label_carries_gs1_element_strings_that_an_independent_decoder_reads() {
    let dir = scratch("unit");
    let pdf = write(&dir, "unit.pdf", &unit_label_pdf(&unit()).expect("pdf"));
    assert_eq!(info(&pdf), (1, "144 x 72 pts".to_owned()));
    assert_font_embedded(&pdf);
    let text = run("pdftotext", &["-layout", &pdf, "-"]);
    for want in [
        "coupling-12mm",
        "SN CPL-000042",
        "LOT PETG-2611",
        "MFD 2026-11-30",
    ] {
        assert!(text.contains(want), "{want:?} not in:\n{text}");
    }
    let codes = decode(&pdf, &dir, 300);
    assert_gs1_unit(&codes);
    assert_eq!(
        codes[0].bytes,
        b"01040063813339311126113010PETG-2611\x1d21CPL-000042"
    );
}

#[test]
fn a_unit_label_with_a_record_url_carries_the_url() {
    let dir = scratch("unit-url");
    let u = UnitLabel {
        record_url: Some("https://factory.example/units/CPL-000042".into()),
        ..unit()
    };
    let pdf = write(&dir, "unit.pdf", &unit_label_pdf(&u).expect("pdf"));
    let codes = decode(&pdf, &dir, 300);
    assert_eq!(codes.len(), 1, "{codes:?}");
    assert_eq!(codes[0].format, "Data Matrix");
    assert_eq!(codes[0].text, "https://factory.example/units/CPL-000042");
    assert_eq!(codes[0].symbology, "]d1", "plain DataMatrix, not GS1");
}

/// The data of every `^FD … ^FS` field, with the commands around them.
fn fields(zpl: &str) -> Vec<String> {
    zpl.split("^FD")
        .skip(1)
        .map(|rest| {
            let (data, _) = rest.split_once("^FS").expect("every ^FD ends with ^FS");
            assert!(!data.contains('\n'), "a field spans lines: {data:?}");
            data.to_owned()
        })
        .collect()
}

/// Undoes `^FH_` escapes as the printer does.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'_' && i + 3 <= b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).expect("hex digits");
            out.push(u8::from_str_radix(hex, 16).expect("hex"));
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).expect("utf-8")
}

/// Every command in the format is one we mean to send.
fn assert_commands(zpl: &str, allowed: &[&str]) {
    assert!(
        zpl.starts_with("^XA") && zpl.trim_end().ends_with("^XZ"),
        "{zpl}"
    );
    assert!(
        !zpl.contains('~'),
        "no tilde commands, none smuggled in: {zpl}"
    );
    for part in zpl.split('^').skip(1) {
        let cmd: String = part.chars().take(2).collect();
        assert!(
            allowed.contains(&cmd.as_str()),
            "unexpected ^{cmd} in {part:?}"
        );
    }
}

#[test]
fn a_shipping_label_in_zpl_has_every_command_and_field() {
    let zpl = shipping_label_zpl(&label()).expect("zpl");
    for cmd in [
        "^XA", "^CI28", "^PW812", "^LL1218", "^BCN,", "^BY", "^FH_", "^XZ",
    ] {
        assert!(zpl.contains(cmd), "{cmd} missing:\n{zpl}");
    }
    assert_commands(
        &zpl,
        &[
            "XA", "CI", "PW", "LL", "LH", "FO", "A0", "FH", "FD", "FS", "GB", "FB", "BY", "BC",
            "XZ",
        ],
    );
    let data: Vec<String> = fields(&zpl).iter().map(|f| unescape(f)).collect();
    for want in [
        "FROM",
        "OPEN MICROFACTORY",
        "400 INDUSTRIAL WAY UNIT 3",
        "SHIP TO",
        "Zoë Ørsted-Łukasiewicz",
        "Müllerstraße 12",
        "13353 Berlin",
        "GERMANY",
        "STANDARD",
        "ORDER #1001",
        ">:MF-2026-000123",
        "MF-2026-000123",
    ] {
        assert!(
            data.iter().any(|d| d == want),
            "{want:?} not a field in {data:?}"
        );
    }
    assert!(data.iter().any(|d| d.contains("450 g (0.99 lb)")));
}

#[test]
fn hostile_text_cannot_end_a_zpl_field_or_start_a_command() {
    let mut l = label();
    l.to.name = "^XZ^XA^FDpwned~JA_5E".into();
    l.to.street1 = "~DGR:EVIL.GRF,1,1,FF".into();
    l.order_reference = "#1>2^FS".into();
    l.shipment_number = "MF->1^2~3_4".into();
    let zpl = shipping_label_zpl(&l).expect("zpl");
    assert_commands(
        &zpl,
        &[
            "XA", "CI", "PW", "LL", "LH", "FO", "A0", "FH", "FD", "FS", "GB", "FB", "BY", "BC",
            "XZ",
        ],
    );
    assert_eq!(zpl.matches("^XA").count(), 1);
    assert_eq!(zpl.matches("^XZ").count(), 1);
    let data: Vec<String> = fields(&zpl).iter().map(|f| unescape(f)).collect();
    for f in fields(&zpl) {
        assert!(
            !f.contains('^') && !f.contains('~'),
            "raw prefix in field {f:?}"
        );
    }
    assert!(data.iter().any(|d| d == "^XZ^XA^FDpwned~JA_5E"), "{data:?}");
    assert!(data.iter().any(|d| d == "~DGR:EVIL.GRF,1,1,FF"), "{data:?}");
    assert!(data.iter().any(|d| d == "ORDER #1>2^FS"), "{data:?}");
    // In ^BC data `>` starts an invocation code; `>0` is the literal `>`
    // (`><` would be `^`, as the renderer test below found).
    assert!(data.iter().any(|d| d == ">:MF->01^2~3_4"), "{data:?}");
}

#[test]
fn a_unit_label_in_zpl_has_its_size_its_datamatrix_and_its_fields() {
    let zpl = unit_label_zpl(&unit()).expect("zpl");
    for cmd in [
        "^XA",
        "^CI28",
        "^PW406",
        "^LL203",
        "^BXN,",
        ",200,,,,`",
        "^XZ",
    ] {
        assert!(zpl.contains(cmd), "{cmd} missing:\n{zpl}");
    }
    assert_commands(
        &zpl,
        &[
            "XA", "CI", "PW", "LL", "LH", "FO", "A0", "FH", "FD", "FS", "BX", "XZ",
        ],
    );
    let data: Vec<String> = fields(&zpl).iter().map(|f| unescape(f)).collect();
    for want in [
        "`101040063813339311126113010PETG-2611`121CPL-000042",
        "coupling-12mm",
        "SN CPL-000042",
        "LOT PETG-2611",
        "MFD 2026-11-30",
    ] {
        assert!(
            data.iter().any(|d| d == want),
            "{want:?} not a field in {data:?}"
        );
    }
}

#[test]
fn zpl_labels_render_with_an_independent_renderer_and_their_barcodes_decode() {
    // The renderer's font 0 has no glyphs beyond ASCII (a printer's has
    // more), so this label goes to an ASCII address; UTF-8 field data is
    // checked in the ZPL text above.
    let street = ["12 Market Street", "Suite 400"];
    let ascii = ShippingLabel {
        to: address(
            "Ada Lovelace",
            street,
            "San Francisco",
            Some("CA"),
            "94105",
            "US",
        ),
        ..label()
    };
    let dir = scratch("zpl-ship");
    let codes = decode_zpl(&shipping_label_zpl(&ascii).expect("zpl"), &dir, 812, 1218);
    assert_eq!(codes.len(), 1, "{codes:?}");
    assert_eq!(
        (codes[0].format.as_str(), codes[0].text.as_str()),
        ("Code 128", "MF-2026-000123")
    );

    // Hostile characters in the number survive escaping into the symbol.
    let dir = scratch("zpl-hostile");
    let l = ShippingLabel {
        shipment_number: "MF->1^2~3_4".into(),
        ..ascii
    };
    let codes = decode_zpl(&shipping_label_zpl(&l).expect("zpl"), &dir, 812, 1218);
    assert_eq!(codes.len(), 1, "{codes:?}");
    assert_eq!(codes[0].text, "MF->1^2~3_4");

    let dir = scratch("zpl-unit");
    let codes = decode_zpl(&unit_label_zpl(&unit()).expect("zpl"), &dir, 406, 203);
    assert_gs1_unit(&codes);

    let dir = scratch("zpl-unit-url");
    let u = UnitLabel {
        record_url: Some("https://factory.example/u/CPL-000042#top".into()),
        ..unit()
    };
    let codes = decode_zpl(&unit_label_zpl(&u).expect("zpl"), &dir, 406, 203);
    assert_eq!(codes.len(), 1, "{codes:?}");
    assert_eq!(codes[0].text, "https://factory.example/u/CPL-000042#top");
}
