//! The certification report as an A4 PDF: the same content as the HTML
//! page (verdict, each criterion with threshold and measured value, the
//! two consecutive windows, the inputs, full cost, the two charts and the
//! evidence), drawn as vector text and lines in the compiled-in font
//! through `crate::pdf`, so it prints and archives without a browser.
//! Pure: a [`Report`] in, bytes out.

use crate::metering::apc::{CriterionStatus, Verdict};
use crate::metering::report::{
    Report, SeriesChart, charts, costs, half_status, inputs, num, status_word, utc, verdict_word,
};
use crate::pdf::{A4, Block, Canvas, Flow, PdfError};

const MARGIN: f32 = 42.0;
const WIDTH: f32 = A4.0 - 2.0 * MARGIN;
const BODY: f32 = 9.0;
const LEADING: f32 = 13.0;
const PASS: (u8, u8, u8) = (0x00, 0x66, 0x00);
const FAIL: (u8, u8, u8) = (0xaa, 0x00, 0x00);

/// One line of text, cut to the page width.
fn line(size: f32, x: f32, text: String) -> Block {
    Block::new(size + 6.0, move |c, y| {
        c.text_fit(MARGIN + x, y + size, size, size * 0.8, WIDTH - x, &text);
    })
}

/// Text wrapped to the page width, one block per line.
fn para(text: &str) -> Vec<Block> {
    let Ok(font) = crate::pdf::font::font() else {
        return vec![line(BODY, 0.0, text.to_string())];
    };
    crate::pdf::wrap(font, text, BODY, WIDTH)
        .into_iter()
        .map(|l| line(BODY, 0.0, l))
        .collect()
}

fn heading(text: &str) -> Block {
    let text = text.to_string();
    Block::new(26.0, move |c, y| c.text(MARGIN, y + 20.0, 12.0, &text))
}

/// A table row: cells at their x offsets, each cut to the next cell;
/// `rgb` colours the cell at `coloured` (a status).
fn row(cells: Vec<(f32, String)>, coloured: Option<(usize, (u8, u8, u8))>) -> Block {
    Block::new(LEADING, move |c, y| {
        for (i, (x, text)) in cells.iter().enumerate() {
            let next = cells.get(i + 1).map_or(WIDTH, |n| n.0);
            if let Some((_, rgb)) = coloured.filter(|(at, _)| *at == i) {
                c.colour(rgb);
            }
            c.text_fit(MARGIN + x, y + BODY, BODY, 6.0, next - x - 4.0, text);
            c.grey(0);
        }
    })
}

/// A line chart of the report's series, y from 0 to `top`, thresholds
/// dashed, with its legend.
fn chart(ch: SeriesChart) -> Block {
    const H: f32 = 150.0;
    const PLOT_TOP: f32 = 18.0;
    const PLOT_H: f32 = 100.0;
    const LEFT: f32 = 30.0;
    Block::new(H, move |c, y| {
        c.text(MARGIN, y + 12.0, BODY, ch.title);
        let (x0, y0, w) = (MARGIN + LEFT, y + PLOT_TOP, WIDTH - LEFT);
        c.grey(160);
        c.frame(x0, y0, w, PLOT_H, 0.5);
        c.grey(0);
        c.text_fit(
            MARGIN,
            y0 + 8.0,
            7.0,
            5.0,
            LEFT - 2.0,
            &format!("{}", ch.top),
        );
        c.text(MARGIN, y0 + PLOT_H, 7.0, "0");
        #[allow(clippy::cast_possible_truncation)]
        let yv = |v: f64| y0 + PLOT_H * (1.0 - (v / ch.top).clamp(0.0, 1.0) as f32);
        let mut legend_x = x0;
        for l in &ch.lines {
            let n = l.values.len();
            #[allow(clippy::cast_precision_loss)]
            let xi = |i: usize| {
                x0 + if n > 1 {
                    w * i as f32 / (n - 1) as f32
                } else {
                    w / 2.0
                }
            };
            // A gap (no figure) breaks the line.
            let mut run = Vec::new();
            for (i, v) in l.values.iter().enumerate() {
                match v {
                    Some(v) => run.push((xi(i), yv(*v))),
                    None => {
                        c.polyline(&run, 1.5, l.rgb, None);
                        run.clear();
                    }
                }
            }
            if run.len() == 1 {
                let (x, y) = run[0];
                c.colour(l.rgb);
                c.fill_rect(x - 1.5, y - 1.5, 3.0, 3.0);
                c.grey(0);
            }
            c.polyline(&run, 1.5, l.rgb, None);
            if let Some(t) = l.threshold {
                c.polyline(&[(x0, yv(t)), (x0 + w, yv(t))], 0.8, l.rgb, Some(3.0));
            }
            c.colour(l.rgb);
            c.fill_rect(legend_x, y0 + PLOT_H + 12.0, 8.0, 3.0);
            c.grey(0);
            c.text(legend_x + 11.0, y0 + PLOT_H + 16.0, 7.0, l.name);
            legend_x += 14.0 + c.width(l.name, 7.0) + 10.0;
        }
    })
}

fn status_rgb(s: CriterionStatus) -> (u8, u8, u8) {
    if s == CriterionStatus::Pass {
        PASS
    } else {
        FAIL
    }
}

/// The report as PDF bytes.
pub fn pdf(r: &Report) -> Result<Vec<u8>, PdfError> {
    let res = &r.result;
    let ev = &res.evaluation;
    let name = r
        .product
        .as_ref()
        .map_or(res.sku.as_str(), |p| p.name.as_str());
    let mut b = vec![
        line(16.0, 0.0, format!("{name} ({}) on {}", res.sku, res.class)),
        line(
            10.0,
            0.0,
            "Certification report: Admissible Performance Criteria".into(),
        ),
    ];
    b.extend(para(&format!(
        "Window {} to {}; machines: {}. Generated {}.",
        utc(res.window.from_ms),
        utc(res.window.to_ms),
        res.machines.join(", "),
        utc(r.generated_ms)
    )));
    if let Some(p) = &r.product {
        b.extend(para(&format!(
            "Design revision {}; G-code {}; {} unit(s) per plate; planned runtime {:.1} s per unit.",
            p.design_revision.as_deref().unwrap_or("–"),
            p.file_id,
            p.units_per_job,
            p.planned_runtime_per_unit_s
        )));
    }
    let verdict = format!(
        "Verdict: {}{}",
        verdict_word(ev.verdict),
        if r.certified {
            " — passed in two consecutive windows"
        } else {
            ""
        }
    );
    let rgb = if ev.verdict == Verdict::Pass {
        PASS
    } else {
        FAIL
    };
    b.push(Block::new(28.0, move |c: &mut Canvas<'_, '_>, y| {
        c.colour(rgb);
        c.text_fit(MARGIN, y + 20.0, 14.0, 9.0, WIDTH, &verdict);
        c.grey(0);
    }));
    b.extend(para(&format!(
        "Evidence: {} unit(s) produced (at least {} needed), {:.2} planned hours (at least {:.2}).",
        ev.units_produced, ev.min_units, ev.planned_hours, ev.min_planned_hours
    )));

    b.push(heading("Criteria"));
    for (i, half) in r.consecutive.iter().enumerate() {
        b.extend(para(&format!(
            "Window {}: {} to {}, {}.",
            i + 1,
            utc(half.window.from_ms),
            utc(half.window.to_ms),
            verdict_word(half.evaluation.verdict)
        )));
    }
    let cols = [0.0, 170.0, 240.0, 330.0, 400.0, 460.0];
    let mut header = vec![
        (cols[0], "criterion".to_string()),
        (cols[1], "threshold".into()),
        (cols[2], "measured".into()),
        (cols[3], "status".into()),
    ];
    for i in 0..r.consecutive.len().min(2) {
        header.push((cols[4 + i], format!("window {}", i + 1)));
    }
    b.push(row(header, None));
    for c in &ev.criteria {
        let mut cells = vec![
            (cols[0], c.key.clone()),
            (cols[1], format!("{}", c.threshold)),
            (
                cols[2],
                format!(
                    "{}{}",
                    num(c.measured),
                    if c.lower_bound { " (at least)" } else { "" }
                ),
            ),
            (cols[3], status_word(c.status).to_string()),
        ];
        for (i, half) in r.consecutive.iter().take(2).enumerate() {
            cells.push((cols[4 + i], half_status(half, &c.key).to_string()));
        }
        b.push(row(cells, Some((3, status_rgb(c.status)))));
    }

    b.push(heading("Inputs"));
    for (k, v) in inputs(res) {
        b.push(row(vec![(0.0, k.to_string()), (230.0, v)], None));
    }
    if let Some(c) = &res.cost {
        b.push(heading("Full cost"));
        for (k, v) in costs(c) {
            b.push(row(vec![(0.0, k.to_string()), (230.0, v)], None));
        }
    }
    b.push(heading("Over the window"));
    for ch in charts(r) {
        b.push(chart(ch));
    }
    b.push(heading("Evidence"));
    b.extend(para(&format!(
        "{} unit(s) from {} attempt(s); {} state-log span(s) of the product's jobs.",
        r.units.len(),
        r.attempts.len(),
        r.state_spans
    )));
    let ucols = [0.0, 110.0, 190.0, 300.0, 420.0];
    b.push(row(
        ["serial", "job/attempt", "machine", "made", "QC"]
            .iter()
            .zip(ucols)
            .map(|(t, x)| (x, (*t).to_string()))
            .collect(),
        None,
    ));
    for u in &r.units {
        b.push(row(
            vec![
                (ucols[0], u.serial.clone()),
                (ucols[1], format!("{}/{}", u.job_id, u.attempt)),
                (ucols[2], u.machine_id.clone()),
                (ucols[3], utc(u.ended_ms)),
                (ucols[4], u.qc.as_str().to_string()),
            ],
            None,
        ));
    }
    Flow {
        width: A4.0,
        height: A4.1,
        margin: MARGIN,
        footer: format!(
            "{} on {} · generated {}",
            res.sku,
            res.class,
            utc(r.generated_ms)
        ),
    }
    .render(&b)
}
