//! What one label costs to render: the 4×6 in shipping label as PDF (font
//! subsetting and serialisation included) and as ZPL, the unit label both
//! ways, and a one-page packing slip. Goals (issue 12): PDF shipping label
//! under 5 ms, ZPL under 0.1 ms.
//!
//! `cargo bench -p microfactoryd --bench labels`

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use microfactoryd::commerce::address::{Address, validate};
use microfactoryd::commerce::labels::{
    LabelDate, PackingSlip, Paper, ShippingLabel, SlipLine, UnitLabel, packing_slip_pdf,
    shipping_label_pdf, shipping_label_zpl, unit_label_pdf, unit_label_zpl,
};

fn address(
    name: &str,
    street: &str,
    city: &str,
    region: Option<&str>,
    zip: &str,
    country: &str,
) -> Address {
    validate(&Address {
        name: name.into(),
        street1: street.into(),
        street2: None,
        city: city.into(),
        region: region.map(str::to_owned),
        postal_code: zip.into(),
        country: country.into(),
        phone: None,
        email: None,
    })
    .expect("valid address")
}

fn bench(c: &mut Criterion) {
    let from = address(
        "Open Microfactory",
        "400 Industrial Way",
        "Oakland",
        Some("CA"),
        "94607",
        "US",
    );
    let to = address(
        "Ada Lovelace",
        "12 Market Street",
        "San Francisco",
        Some("CA"),
        "94105",
        "US",
    );
    let label = ShippingLabel {
        shipment_number: "MF-2026-000123".into(),
        order_reference: "#1001".into(),
        service: "standard".into(),
        weight_grams: Some(450),
        from: from.clone(),
        to: to.clone(),
    };
    let unit = UnitLabel {
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
    };
    let slip = PackingSlip {
        shop_name: "Open Microfactory".into(),
        shop_address: from,
        order_number: "#1001".into(),
        order_date: LabelDate {
            year: 2026,
            month: 11,
            day: 30,
        },
        ship_to: to,
        lines: (0..3)
            .map(|i| SlipLine {
                sku: format!("coupling-{i}"),
                title: format!("Shaft coupling {i}"),
                quantity: 2,
                serials: vec![format!("CPL-{i}-1"), format!("CPL-{i}-2")],
            })
            .collect(),
        paper: Paper::Letter,
    };
    // The font is parsed once per process; leave that out of the figures.
    black_box(shipping_label_pdf(&label).expect("pdf"));

    let mut g = c.benchmark_group("labels");
    g.measurement_time(Duration::from_secs(5));
    g.bench_function("shipping_label_pdf", |b| {
        b.iter(|| shipping_label_pdf(black_box(&label)).expect("pdf"))
    });
    g.bench_function("shipping_label_zpl", |b| {
        b.iter(|| shipping_label_zpl(black_box(&label)).expect("zpl"))
    });
    g.bench_function("unit_label_pdf", |b| {
        b.iter(|| unit_label_pdf(black_box(&unit)).expect("pdf"))
    });
    g.bench_function("unit_label_zpl", |b| {
        b.iter(|| unit_label_zpl(black_box(&unit)).expect("zpl"))
    });
    g.bench_function("packing_slip_pdf", |b| {
        b.iter(|| packing_slip_pdf(black_box(&slip)).expect("pdf"))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
