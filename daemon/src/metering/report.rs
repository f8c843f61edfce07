//! The certification report of one (SKU, machine class): the evidence a
//! certification label stands on. Pure: the shell gathers a [`Report`]
//! (`Metering::report`), this module lays it out as a printable HTML page
//! with its charts as inline SVG, so it prints without JavaScript and
//! carries no third-party code; `report_pdf` draws the same rows and
//! charts (from [`inputs`], [`costs`] and [`charts`] here) as PDF.

use std::fmt::Write as _;

use serde::Serialize;
use utoipa::ToSchema;

use crate::metering::ApcResult;
use crate::metering::apc::{CriterionStatus, Verdict};
use crate::metering::model::{Product, QcState, Unit};
use crate::metering::oee::{Figures, Window};

/// Points of the report's series.
pub const SERIES_POINTS: u64 = 12;

/// One point of the series: a slice of the window and its figures.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Point {
    /// The slice.
    pub window: Window,
    /// Its figures.
    pub figures: Figures,
    /// Units produced in it.
    pub produced: u64,
    /// Good units.
    pub good: u64,
}

/// One unit in the evidence.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct UnitEvidence {
    /// Serial.
    pub serial: String,
    /// Job and attempt that made it.
    pub job_id: u64,
    /// Attempt number.
    pub attempt: u32,
    /// Machine.
    pub machine_id: String,
    /// End of its attempt, ms.
    pub ended_ms: u64,
    /// QC state.
    pub qc: QcState,
    /// Passed its first inspection.
    pub first_pass: Option<bool>,
}

impl UnitEvidence {
    /// The evidence of a unit.
    pub fn of(u: &Unit) -> Self {
        Self {
            serial: u.serial.clone(),
            job_id: u.job_id,
            attempt: u.attempt,
            machine_id: u.machine_id.clone(),
            ended_ms: u.ended_ms,
            qc: u.qc,
            first_pass: u.first_pass,
        }
    }
}

/// The report.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Report {
    /// When it was made, ms since the Unix epoch.
    pub generated_ms: u64,
    /// The product as it is now (none if it was deleted).
    pub product: Option<Product>,
    /// The verdict over the whole window, with its inputs and costs.
    pub result: ApcResult,
    /// The window's two halves, evaluated on their own: the rule is to
    /// pass in two consecutive windows.
    pub consecutive: Vec<ApcResult>,
    /// Both halves passed: the product is certified on this class.
    pub certified: bool,
    /// The figures over slices of the window, for the charts.
    pub series: Vec<Point>,
    /// Every unit counted.
    pub units: Vec<UnitEvidence>,
    /// The attempts that made them: (job, attempt).
    pub attempts: Vec<(u64, u32)>,
    /// State-log spans of the product's jobs read for the time elements.
    pub state_spans: usize,
}

impl Report {
    /// Puts a report together.
    pub fn new(
        product: Option<Product>,
        result: ApcResult,
        consecutive: Vec<ApcResult>,
        series: Vec<Point>,
        units: Vec<UnitEvidence>,
        state_spans: usize,
        now_ms: u64,
    ) -> Self {
        let mut attempts: Vec<(u64, u32)> = units.iter().map(|u| (u.job_id, u.attempt)).collect();
        attempts.sort_unstable();
        attempts.dedup();
        let certified = consecutive.len() == 2
            && consecutive
                .iter()
                .all(|r| r.evaluation.verdict == Verdict::Pass);
        Self {
            generated_ms: now_ms,
            product,
            result,
            consecutive,
            certified,
            series,
            units,
            attempts,
            state_spans,
        }
    }
}

/// `n` equal slices of `w` (fewer if `w` is shorter than `n` ms).
pub fn buckets(w: Window, n: u64) -> Vec<Window> {
    let len = w.to_ms.saturating_sub(w.from_ms);
    let n = n.min(len).max(1);
    (0..n)
        .map(|i| Window {
            from_ms: w.from_ms + len * i / n,
            to_ms: w.from_ms + len * (i + 1) / n,
        })
        .collect()
}

/// Text made safe for HTML.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

pub(super) fn num(v: Option<f64>) -> String {
    v.map_or_else(|| "–".to_string(), |x| format!("{x:.3}"))
}

pub(super) fn verdict_word(v: Verdict) -> &'static str {
    match v {
        Verdict::Pass => "pass",
        Verdict::Fail => "fail",
        Verdict::InsufficientData => "insufficient data",
    }
}

pub(super) fn status_word(s: CriterionStatus) -> &'static str {
    match s {
        CriterionStatus::Pass => "pass",
        CriterionStatus::Fail => "fail",
        CriterionStatus::NoData => "no data",
        CriterionStatus::NotMeasured => "not measured",
    }
}

/// A UTC date and time, `YYYY-MM-DD HH:MM` (civil from days, Howard
/// Hinnant's algorithm; no time zone crate for one line of a report).
pub(super) fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let (h, m) = ((secs % 86_400) / 3600, (secs % 3600) / 60);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(mo <= 2);
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{m:02} UTC")
}

/// A chart line: name, colour, values, threshold.
type Line<'a> = (&'a str, String, Vec<Option<f64>>, Option<f64>);

/// One line of a report chart, for the HTML and the PDF alike.
pub(super) struct SeriesLine {
    pub(super) name: &'static str,
    pub(super) rgb: (u8, u8, u8),
    pub(super) values: Vec<Option<f64>>,
    pub(super) threshold: Option<f64>,
}

/// A report chart: y from 0 to `top`.
pub(super) struct SeriesChart {
    pub(super) title: &'static str,
    pub(super) lines: Vec<SeriesLine>,
    pub(super) top: f64,
}

/// The report's two charts: the OEE components, and good units per
/// planned hour, each against its thresholds.
pub(super) fn charts(r: &Report) -> [SeriesChart; 2] {
    let threshold = |key: &str| {
        r.result
            .evaluation
            .criteria
            .iter()
            .find(|c| c.key == key)
            .map(|c| c.threshold)
    };
    let series =
        |get: fn(&Figures) -> Option<f64>| r.series.iter().map(|p| get(&p.figures)).collect();
    let line = |name, rgb, get: fn(&Figures) -> Option<f64>, key: &str| SeriesLine {
        name,
        rgb,
        values: series(get),
        threshold: threshold(key),
    };
    let per_hour = line(
        "good units / planned h",
        (0x94, 0x67, 0xbd),
        |f| f.good_units_per_planned_hour,
        "good_units_per_planned_hour_min",
    );
    let top = per_hour
        .values
        .iter()
        .flatten()
        .copied()
        .chain(per_hour.threshold)
        .fold(1.0_f64, f64::max)
        .ceil();
    [
        SeriesChart {
            title: "Availability, effectiveness, quality ratio and OEE (dashed: thresholds)",
            lines: vec![
                line(
                    "availability",
                    (0x1f, 0x77, 0xb4),
                    |f| f.availability,
                    "availability_min",
                ),
                line(
                    "effectiveness",
                    (0xff, 0x7f, 0x0e),
                    |f| f.effectiveness,
                    "effectiveness_min",
                ),
                line(
                    "quality ratio",
                    (0x2c, 0xa0, 0x2c),
                    |f| f.quality_ratio,
                    "quality_ratio_min",
                ),
                line("OEE", (0xd6, 0x27, 0x28), |f| f.oee, "oee_min"),
            ],
            top: 1.0,
        },
        SeriesChart {
            title: "Good units per planned hour (dashed: threshold)",
            lines: vec![per_hour],
            top,
        },
    ]
}

/// The inputs of a verdict as (what, value) rows.
pub(super) fn inputs(res: &ApcResult) -> Vec<(&'static str, String)> {
    let (t, q, f) = (&res.time, &res.quantities, &res.figures);
    vec![
        (
            "planned busy time (PBT)",
            format!("{:.3} h", hours(t.pbt_ms)),
        ),
        (
            "actual production time (APT)",
            format!("{:.3} h", hours(t.apt_ms)),
        ),
        ("setup (ASUT)", format!("{:.3} h", hours(t.setup_ms))),
        ("delay (ADET)", format!("{:.3} h", hours(t.delay_ms))),
        (
            "down (ADOT), failures",
            format!("{:.3} h, {}", hours(t.down_ms), t.failures),
        ),
        (
            "produced, good, scrap, rework, uninspected",
            format!(
                "{}, {}, {}, {}, {}",
                q.produced, q.good, q.scrap, q.rework, q.uninspected
            ),
        ),
        (
            "availability, effectiveness, quality, OEE",
            format!(
                "{}, {}, {}, {}",
                num(f.availability),
                num(f.effectiveness),
                num(f.quality_ratio),
                num(f.oee)
            ),
        ),
        (
            "first-pass yield, good units per planned hour",
            format!(
                "{}, {}",
                num(f.first_pass_yield),
                num(f.good_units_per_planned_hour)
            ),
        ),
        (
            "MTBF, MTTR",
            format!("{} h, {} h", num(f.mtbf_hours), num(f.mttr_hours)),
        ),
    ]
}

/// The full-cost accounts as (what, value) rows.
pub(super) fn costs(c: &crate::metering::cost::CostFigures) -> Vec<(&'static str, String)> {
    let cur = &c.currency;
    vec![
        (
            "material per unit",
            format!(
                "{:.4} {cur} ({:?})",
                c.material_per_unit.cost, c.material_per_unit.source
            ),
        ),
        (
            "machine-hour rate",
            format!(
                "{:.4} {cur}/h (depreciation {:.4}, energy {:.4})",
                c.machine_hour_rate.total,
                c.machine_hour_rate.depreciation,
                c.machine_hour_rate.energy
            ),
        ),
        (
            "machine hours, operator hours",
            format!("{:.3}, {:.3}", c.machine_hours, c.operator_hours),
        ),
        (
            "material, machine, tooling, labour",
            format!(
                "{:.2}, {:.2}, {:.2}, {:.2} {cur}",
                c.totals.material, c.totals.machine, c.totals.tooling, c.totals.labour
            ),
        ),
        (
            "total; borne by units not good",
            format!("{:.2}; {:.2} {cur}", c.totals.total, c.scrap_share),
        ),
        (
            "cost per good unit",
            format!("{} {cur}", num(c.cost_per_good_unit)),
        ),
        (
            "margin per unit",
            format!("{} {cur}", num(c.margin_per_unit)),
        ),
        (
            "earnings per operator hour",
            format!("{} {cur}", num(c.earnings_per_operator_hour)),
        ),
        ("payback (machine hours)", num(c.payback_machine_hours)),
    ]
}

/// How criterion `key` did in one of the consecutive windows.
pub(super) fn half_status(half: &ApcResult, key: &str) -> &'static str {
    half.evaluation
        .criteria
        .iter()
        .find(|x| x.key == key)
        .map_or("–", |x| status_word(x.status))
}

/// Appends (what, value) rows as an HTML table.
fn table_rows(h: &mut String, rows: &[(&str, String)]) {
    h.push_str("<table>");
    for (k, v) in rows {
        let _ = write!(h, "<tr><td>{}</td><td>{}</td></tr>", esc(k), esc(v));
    }
    h.push_str("</table>");
}

/// One line chart as inline SVG: `lines` of (name, colour, values), a
/// dashed threshold per line where one is configured, y from 0 to `top`.
fn chart(title: &str, lines: &[Line<'_>], top: f64) -> String {
    const W: f64 = 640.0;
    const H: f64 = 200.0;
    const PAD: f64 = 32.0;
    let n = lines.iter().map(|l| l.2.len()).max().unwrap_or(0);
    let x = |i: usize| {
        #[allow(clippy::cast_precision_loss)]
        let f = if n > 1 {
            i as f64 / (n - 1) as f64
        } else {
            0.5
        };
        PAD + f * (W - 2.0 * PAD)
    };
    let y = |v: f64| H - PAD - (v / top).clamp(0.0, 1.0) * (H - 2.0 * PAD);
    let mut svg = String::new();
    let _ = write!(
        svg,
        "<figure><figcaption>{}</figcaption><svg xmlns=\"http://www.w3.org/2000/svg\" \
         viewBox=\"0 0 {W} {H}\" width=\"{W}\" height=\"{H}\" role=\"img\" aria-label=\"{}\">\
         <rect x=\"{PAD}\" y=\"{PAD}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#999\"/>\
         <text x=\"4\" y=\"{}\" font-size=\"10\">{top}</text><text x=\"4\" y=\"{}\" font-size=\"10\">0</text>",
        esc(title),
        esc(title),
        W - 2.0 * PAD,
        H - 2.0 * PAD,
        PAD + 4.0,
        H - PAD
    );
    for (i, (name, colour, values, threshold)) in lines.iter().enumerate() {
        let points: Vec<String> = values
            .iter()
            .enumerate()
            .filter_map(|(j, v)| v.map(|v| format!("{:.1},{:.1}", x(j), y(v))))
            .collect();
        if !points.is_empty() {
            let _ = write!(
                svg,
                "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" points=\"{}\"/>",
                points.join(" ")
            );
        }
        if let Some(t) = threshold {
            let _ = write!(
                svg,
                "<line x1=\"{PAD}\" x2=\"{}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"{colour}\" \
                 stroke-dasharray=\"6 4\"/>",
                W - PAD,
                y(*t),
                y(*t)
            );
        }
        #[allow(clippy::cast_precision_loss)]
        let ly = 12.0 + 12.0 * i as f64;
        let _ = write!(
            svg,
            "<text x=\"{}\" y=\"{ly}\" font-size=\"11\" fill=\"{colour}\">{}</text>",
            W - 150.0,
            esc(name)
        );
    }
    svg.push_str("</svg></figure>");
    svg
}

/// The report as a printable HTML page.
pub fn html(r: &Report) -> String {
    let res = &r.result;
    let ev = &res.evaluation;
    let mut h = String::new();
    let name = r
        .product
        .as_ref()
        .map_or(res.sku.as_str(), |p| p.name.as_str());
    let _ = write!(
        h,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>Certification report: {} on {}</title><style>\
         body{{font:14px/1.4 system-ui,sans-serif;max-width:52em;margin:2em auto;color:#111}}\
         table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #bbb;padding:2px 8px;text-align:left}}\
         .pass{{color:#060}}.fail{{color:#a00}}figure{{margin:1em 0}}\
         @media print{{body{{margin:0}}}}</style></head><body>",
        esc(&res.sku),
        esc(&res.class)
    );
    let _ = write!(
        h,
        "<h1>{} ({}) on {}</h1><p>Window {} to {}; machines: {}. Generated {}.</p>",
        esc(name),
        esc(&res.sku),
        esc(&res.class),
        utc(res.window.from_ms),
        utc(res.window.to_ms),
        esc(&res.machines.join(", ")),
        utc(r.generated_ms)
    );
    if let Some(p) = &r.product {
        let _ = write!(
            h,
            "<p>Design revision {}; G-code {}; {} unit(s) per plate; planned runtime {:.1} s per unit.</p>",
            esc(p.design_revision.as_deref().unwrap_or("–")),
            esc(&p.file_id),
            p.units_per_job,
            p.planned_runtime_per_unit_s
        );
    }
    let verdict = verdict_word(ev.verdict);
    let class = if ev.verdict == Verdict::Pass {
        "pass"
    } else {
        "fail"
    };
    let _ = write!(
        h,
        "<h2>Verdict: <span class=\"{class}\">{verdict}</span>{}</h2>\
         <p>Evidence: {} unit(s) produced (at least {} needed), {:.2} planned hours (at least {:.2}).</p>",
        if r.certified {
            " — passed in two consecutive windows"
        } else {
            ""
        },
        ev.units_produced,
        ev.min_units,
        ev.planned_hours,
        ev.min_planned_hours
    );
    h.push_str("<table><tr><th>criterion</th><th>threshold</th><th>measured</th><th>status</th>");
    for half in &r.consecutive {
        let _ = write!(
            h,
            "<th>{} to {}</th>",
            utc(half.window.from_ms),
            utc(half.window.to_ms)
        );
    }
    h.push_str("</tr>");
    for c in &ev.criteria {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}{}</td><td class=\"{}\">{}</td>",
            esc(&c.key),
            c.threshold,
            num(c.measured),
            if c.lower_bound { " (at least)" } else { "" },
            if c.status == CriterionStatus::Pass {
                "pass"
            } else {
                "fail"
            },
            status_word(c.status)
        );
        for half in &r.consecutive {
            let _ = write!(h, "<td>{}</td>", half_status(half, &c.key));
        }
        h.push_str("</tr>");
    }
    let _ = write!(h, "<tr><th colspan=\"4\">verdict</th>");
    for half in &r.consecutive {
        let _ = write!(h, "<th>{}</th>", verdict_word(half.evaluation.verdict));
    }
    h.push_str("</tr></table>");

    h.push_str("<h2>Inputs</h2>");
    table_rows(&mut h, &inputs(res));
    if let Some(c) = &res.cost {
        h.push_str("<h2>Full cost</h2>");
        table_rows(&mut h, &costs(c));
    }
    h.push_str("<h2>Over the window</h2>");
    for c in charts(r) {
        let lines: Vec<Line<'_>> = c
            .lines
            .iter()
            .map(|l| {
                let (r, g, b) = l.rgb;
                let colour = format!("#{r:02x}{g:02x}{b:02x}");
                (l.name, colour, l.values.clone(), l.threshold)
            })
            .collect();
        h.push_str(&chart(c.title, &lines, c.top));
    }
    let _ = write!(
        h,
        "<h2>Evidence</h2><p>{} unit(s) from {} attempt(s); {} state-log span(s) of the product's jobs.</p>\
         <table><tr><th>serial</th><th>job/attempt</th><th>machine</th><th>made</th><th>QC</th></tr>",
        r.units.len(),
        r.attempts.len(),
        r.state_spans
    );
    for u in &r.units {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}/{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&u.serial),
            u.job_id,
            u.attempt,
            esc(&u.machine_id),
            utc(u.ended_ms),
            u.qc.as_str()
        );
    }
    h.push_str("</table></body></html>");
    h
}

pub(super) fn hours(ms: u64) -> f64 {
    #[allow(clippy::cast_precision_loss)]
    let h = ms as f64 / 3_600_000.0;
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn dates_are_written_in_utc() {
        assert_eq!(utc(0), "1970-01-01 00:00 UTC");
        // 2026-11-30 11:46:14 UTC.
        assert_eq!(utc(1_796_039_174_000), "2026-11-30 11:46 UTC");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00 UTC");
    }

    #[test]
    fn text_in_the_page_cannot_open_a_tag() {
        assert_eq!(
            esc("<b>\"x\" & 'y'"),
            "&lt;b&gt;&quot;x&quot; &amp; &#39;y&#39;"
        );
    }

    proptest! {
        #[test]
        fn buckets_cover_the_window_without_gaps_or_overlaps(
            from in 0u64..1_000_000, len in 0u64..1_000_000, n in 1u64..50
        ) {
            let w = Window { from_ms: from, to_ms: from + len };
            let b = buckets(w, n);
            prop_assert!(!b.is_empty());
            prop_assert_eq!(b[0].from_ms, w.from_ms);
            prop_assert_eq!(b[b.len() - 1].to_ms, w.to_ms);
            prop_assert!(b.windows(2).all(|p| p[0].to_ms == p[1].from_ms));
        }
    }
}
