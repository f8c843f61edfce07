//! The packing slip, A4 or Letter: shop, order number and date, ship-to,
//! then a table of lines (SKU, title, quantity) each followed by the
//! serials packed for it. Rows are laid out first and then cut into
//! pages, so a long order continues on the next page under a repeated
//! header and every page says "page i of n".

use krilla::Document;
use tracing::debug_span;

use super::font::{LabelFont, font};
use super::pdf::{self, Canvas, MM};
use super::{LabelError, PackingSlip, Paper};
use crate::commerce::address::lines;

const MARGIN: f32 = 18.0 * MM;
const BODY: f32 = 9.5;
const LEADING: f32 = 13.0;
const SERIAL_SIZE: f32 = 8.0;
const SERIAL_LEADING: f32 = 11.0;

fn size(paper: Paper) -> (f32, f32) {
    match paper {
        Paper::A4 => (210.0 * MM, 297.0 * MM),
        Paper::Letter => (8.5 * 72.0, 11.0 * 72.0),
    }
}

/// One printed row of the table.
#[derive(Debug, Clone, PartialEq)]
enum Row {
    Line {
        sku: String,
        title: String,
        quantity: u32,
    },
    Serials(String),
}

impl Row {
    fn height(&self) -> f32 {
        match self {
            Row::Line { .. } => LEADING + 4.0,
            Row::Serials(_) => SERIAL_LEADING,
        }
    }
}

/// Column x positions: SKU, title, quantity (right-aligned at its end).
struct Columns {
    sku: f32,
    title: f32,
    qty_right: f32,
}

fn columns(width: f32) -> Columns {
    Columns {
        sku: MARGIN,
        title: MARGIN + 120.0,
        qty_right: width - MARGIN,
    }
}

fn rows(f: &LabelFont, slip: &PackingSlip, width: f32) -> Vec<Row> {
    let mut out = Vec::new();
    let serial_width = width - 2.0 * MARGIN - 120.0;
    for l in &slip.lines {
        out.push(Row::Line {
            sku: l.sku.clone(),
            title: l.title.clone(),
            quantity: l.quantity,
        });
        if !l.serials.is_empty() {
            let text = format!("Serials: {}", l.serials.join(", "));
            out.extend(
                pdf::wrap(f, &text, SERIAL_SIZE, serial_width)
                    .into_iter()
                    .map(Row::Serials),
            );
        }
    }
    out
}

/// Cuts rows into pages: the first page has less room (the header block).
/// A line's first serial row never starts a page without its line.
fn paginate(rows: Vec<Row>, first_room: f32, room: f32) -> Vec<Vec<Row>> {
    let mut pages = vec![Vec::new()];
    let mut left = first_room;
    for row in rows {
        let h = row.height();
        if h > left {
            let mut carry = Vec::new();
            if let Some(current) = pages.last_mut() {
                // A line whose serials would start the next page goes with them.
                if matches!(row, Row::Serials(_))
                    && matches!(current.last(), Some(Row::Line { .. }))
                {
                    carry.extend(current.pop());
                }
            }
            left = room - carry.iter().map(Row::height).sum::<f32>();
            pages.push(carry);
        }
        left -= h;
        if let Some(last) = pages.last_mut() {
            last.push(row);
        }
    }
    pages.retain(|p| !p.is_empty());
    if pages.is_empty() {
        pages.push(Vec::new());
    }
    pages
}

/// The packing slip as a PDF of as many pages as its lines need.
pub fn packing_slip_pdf(slip: &PackingSlip) -> Result<Vec<u8>, LabelError> {
    let _span = debug_span!("packing_slip_pdf", order = %slip.order_number).entered();
    if slip.order_number.trim().is_empty() {
        return Err(LabelError::invalid(
            "order_number",
            "the packing slip needs the order number",
        ));
    }
    let f = font()?;
    let (w, h) = size(slip.paper);
    let cols = columns(w);
    let from = lines(&slip.shop_address, &slip.ship_to.country);
    let to = lines(&slip.ship_to, &slip.shop_address.country);
    let header_h = 60.0 + LEADING * from.len().max(to.len() + 1) as f32 + 30.0;
    let table_top = |first: bool| {
        if first {
            MARGIN + header_h
        } else {
            MARGIN + 30.0
        }
    };
    let bottom = h - MARGIN - 20.0;
    let first_room = bottom - table_top(true) - 24.0;
    let room = bottom - table_top(false) - 24.0;
    let pages = paginate(rows(f, slip, w), first_room, room);
    let n = pages.len();

    let mut doc = Document::new();
    for (i, page_rows) in pages.iter().enumerate() {
        let mut page = doc.start_page_with(pdf::page_settings(w, h)?);
        let mut surface = page.surface();
        let mut c = Canvas::new(&mut surface)?;
        let text_w = w - 2.0 * MARGIN;
        if i == 0 {
            c.text_fit(
                MARGIN,
                MARGIN + 16.0,
                18.0,
                10.0,
                text_w / 2.0,
                &slip.shop_name,
            );
            let mut y = MARGIN + 34.0;
            for l in &from {
                c.text_fit(MARGIN, y, BODY, 7.0, text_w / 2.0 - 10.0, l);
                y += LEADING;
            }
            let x = MARGIN + text_w / 2.0;
            c.text(x, MARGIN + 16.0, 16.0, "PACKING SLIP");
            c.text_fit(
                x,
                MARGIN + 34.0,
                BODY,
                7.0,
                text_w / 2.0,
                &format!("Order {}", slip.order_number),
            );
            c.text(
                x,
                MARGIN + 34.0 + LEADING,
                BODY,
                &format!("Date {}", slip.order_date),
            );
            let mut y = MARGIN + 34.0 + 3.0 * LEADING;
            c.text(x, y, 8.0, "SHIP TO");
            for l in &to {
                y += LEADING;
                c.text_fit(x, y, BODY, 7.0, text_w / 2.0, l);
            }
        } else {
            c.text_fit(
                MARGIN,
                MARGIN + 12.0,
                BODY,
                7.0,
                text_w,
                &format!(
                    "{} · Order {} (continued)",
                    slip.shop_name, slip.order_number
                ),
            );
        }
        let mut y = table_top(i == 0);
        c.text(cols.sku, y, 8.0, "SKU");
        c.text(cols.title, y, 8.0, "ITEM");
        c.text(cols.qty_right - c.width("QTY", 8.0), y, 8.0, "QTY");
        c.fill_rect(MARGIN, y + 4.0, text_w, 0.8);
        y += 8.0;
        for row in page_rows {
            match row {
                Row::Line {
                    sku,
                    title,
                    quantity,
                } => {
                    y += LEADING + 4.0;
                    c.text_fit(cols.sku, y, BODY, 7.0, cols.title - cols.sku - 8.0, sku);
                    let q = quantity.to_string();
                    let qw = c.width(&q, BODY);
                    c.text_fit(
                        cols.title,
                        y,
                        BODY,
                        7.0,
                        cols.qty_right - cols.title - 40.0,
                        title,
                    );
                    c.text(cols.qty_right - qw, y, BODY, &q);
                }
                Row::Serials(s) => {
                    y += SERIAL_LEADING;
                    c.text(cols.title, y, SERIAL_SIZE, s);
                }
            }
        }
        let footer = format!("Page {} of {n}", i + 1);
        c.text(w - MARGIN - c.width(&footer, 8.0), h - MARGIN, 8.0, &footer);
    }
    pdf::finish(doc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn line(i: usize) -> Row {
        Row::Line {
            sku: format!("s{i}"),
            title: "t".into(),
            quantity: 1,
        }
    }

    #[test]
    fn a_line_at_the_foot_of_a_page_moves_down_with_its_serials() {
        let rows = vec![
            line(0),
            line(1),
            Row::Serials("a".into()),
            Row::Serials("b".into()),
        ];
        let room = 2.0 * (LEADING + 4.0) + 1.0;
        let pages = paginate(rows, room, 100.0);
        assert_eq!(pages.len(), 2);
        assert_eq!(pages[0], vec![line(0)]);
        assert_eq!(pages[1][0], line(1));
        assert_eq!(pages[1].len(), 3);
    }

    proptest! {
        #[test]
        fn pages_keep_every_row_in_order_and_within_room(
            spec in prop::collection::vec(0usize..6, 1..120),
            room in 60.0f32..600.0,
        ) {
            let mut rows = Vec::new();
            for (i, serials) in spec.iter().enumerate() {
                rows.push(line(i));
                rows.extend((0..*serials).map(|k| Row::Serials(format!("{i}.{k}"))));
            }
            let pages = paginate(rows.clone(), room * 0.7, room);
            let flat: Vec<Row> = pages.iter().flatten().cloned().collect();
            prop_assert_eq!(flat, rows);
            for (i, p) in pages.iter().enumerate() {
                let limit = if i == 0 { room * 0.7 } else { room };
                let used: f32 = p.iter().map(Row::height).sum();
                prop_assert!(used <= limit + 1e-3 || p.len() == 1, "page {} uses {} of {}", i, used, limit);
                prop_assert!(!matches!(p.last(), Some(Row::Line { .. })) || i + 1 == pages.len()
                    || !matches!(pages[i + 1].first(), Some(Row::Serials(_))), "a line left without its serials");
            }
        }
    }
}
