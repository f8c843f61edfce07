//! Admissible Performance Criteria, pure: one (SKU, machine class)'s
//! measured figures against its configured thresholds. A verdict needs
//! enough evidence (the window's least units and planned hours); a
//! measured failure fails; a criterion that cannot be measured (no data,
//! or not metered yet) leaves the verdict `insufficient_data` rather than
//! passing on what was not checked.

use serde::Serialize;
use utoipa::ToSchema;

use crate::config::ApcCriteria;
use crate::metering::cost::CostFigures;
use crate::metering::oee::{Figures, Quantities, TimeElements};

/// The overall verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Enough evidence, every criterion met.
    Pass,
    /// Enough evidence, some criterion missed.
    Fail,
    /// Too few units or planned hours, or a criterion without a value.
    InsufficientData,
}

/// One criterion's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CriterionStatus {
    /// Met.
    Pass,
    /// Missed.
    Fail,
    /// No value yet (e.g. no units, no production time).
    NoData,
    /// Not measured here: a cost criterion (or operator minutes) without
    /// a `[costs]` table.
    NotMeasured,
}

/// One threshold with what was measured.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Criterion {
    /// The configuration key, e.g. `oee_min`.
    pub key: String,
    /// The threshold.
    pub threshold: f64,
    /// The measured value.
    pub measured: Option<f64>,
    /// The measured value is only a lower bound (MTBF with no failure yet:
    /// at least the production time).
    pub lower_bound: bool,
    /// Met, missed, or unknown.
    pub status: CriterionStatus,
}

/// The verdict of one (SKU, machine class) with its evidence.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Evaluation {
    /// Pass, fail or insufficient data.
    pub verdict: Verdict,
    /// Units the window needs.
    pub min_units: u64,
    /// Units produced.
    pub units_produced: u64,
    /// Planned busy hours the window needs.
    pub min_planned_hours: f64,
    /// Planned busy hours.
    pub planned_hours: f64,
    /// Every configured criterion.
    pub criteria: Vec<Criterion>,
}

fn judge(key: &str, threshold: f64, measured: Option<f64>) -> Criterion {
    let max = key.ends_with("_max");
    let status = match measured {
        None => CriterionStatus::NoData,
        Some(m) if (max && m <= threshold) || (!max && m >= threshold) => CriterionStatus::Pass,
        Some(_) => CriterionStatus::Fail,
    };
    Criterion {
        key: key.to_string(),
        threshold,
        measured,
        lower_bound: false,
        status,
    }
}

/// Evaluates `c` against a window's time elements, quantities and figures.
/// `cost` is the window's full-cost accounts (none without `[costs]`:
/// the cost criteria and operator minutes are then not measured).
pub fn evaluate(
    c: &ApcCriteria,
    t: &TimeElements,
    q: &Quantities,
    f: &Figures,
    cost: Option<&CostFigures>,
) -> Evaluation {
    #[allow(clippy::cast_precision_loss)]
    let planned_hours = t.pbt_ms as f64 / 3_600_000.0;
    #[allow(clippy::cast_precision_loss)]
    let apt_hours = t.apt_ms as f64 / 3_600_000.0;
    let mut criteria = Vec::new();
    for (key, threshold, _) in c.thresholds() {
        let Some(threshold) = threshold else { continue };
        let measured = match key {
            "availability_min" => f.availability,
            "effectiveness_min" => f.effectiveness,
            "quality_ratio_min" => f.quality_ratio,
            "first_pass_yield_min" => f.first_pass_yield,
            "oee_min" => f.oee,
            "good_units_per_planned_hour_min" => f.good_units_per_planned_hour,
            "mtbf_hours_min" => f.mtbf_hours,
            // No failure: nothing to restore.
            "mttr_hours_max" => f.mttr_hours.or(Some(0.0)),
            "operator_minutes_per_unit_max" if cost.is_some() => {
                cost.and_then(|c| c.operator_minutes_per_unit)
            }
            "earnings_per_operator_hour_min" if cost.is_some() => {
                cost.and_then(|c| c.earnings_per_operator_hour)
            }
            "cost_per_good_unit_max" if cost.is_some() => cost.and_then(|c| c.cost_per_good_unit),
            _ => {
                criteria.push(Criterion {
                    key: key.to_string(),
                    threshold,
                    measured: None,
                    lower_bound: false,
                    status: CriterionStatus::NotMeasured,
                });
                continue;
            }
        };
        let mut cr = judge(key, threshold, measured);
        if key == "mtbf_hours_min" && t.failures == 0 {
            // No failure yet: MTBF is at least the production time, which
            // proves the threshold once it is long enough.
            cr.measured = Some(apt_hours);
            cr.lower_bound = true;
            cr.status = if apt_hours >= threshold {
                CriterionStatus::Pass
            } else {
                CriterionStatus::NoData
            };
        }
        criteria.push(cr);
    }
    let enough = q.produced >= c.window.min_units && planned_hours >= c.window.min_planned_hours;
    let status = |s| criteria.iter().any(|cr| cr.status == s);
    let verdict = if !enough {
        Verdict::InsufficientData
    } else if status(CriterionStatus::Fail) {
        Verdict::Fail
    } else if status(CriterionStatus::NoData) || status(CriterionStatus::NotMeasured) {
        Verdict::InsufficientData
    } else {
        Verdict::Pass
    };
    Evaluation {
        verdict,
        min_units: c.window.min_units,
        units_produced: q.produced,
        min_planned_hours: c.window.min_planned_hours,
        planned_hours,
        criteria,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ApcWindow;
    use crate::metering::oee::figures;

    const H: u64 = 3_600_000;

    fn criteria() -> ApcCriteria {
        ApcCriteria {
            window: ApcWindow {
                min_units: 4,
                min_planned_hours: 2.0,
            },
            availability_min: Some(0.5),
            oee_min: Some(0.4),
            mttr_hours_max: Some(1.0),
            mtbf_hours_min: Some(2.0),
            ..ApcCriteria::default()
        }
    }

    fn measured(apt_h: u64, good: u64, scrap: u64) -> (TimeElements, Quantities) {
        let t = TimeElements {
            pbt_ms: 4 * H,
            apt_ms: apt_h * H,
            idle_ms: (4 - apt_h) * H,
            ..TimeElements::default()
        };
        let q = Quantities {
            produced: good + scrap,
            good,
            scrap,
            credited_runtime_ms: apt_h * H,
            ..Quantities::default()
        };
        (t, q)
    }

    #[test]
    fn enough_evidence_and_every_threshold_met_passes() {
        let (t, q) = measured(3, 4, 0);
        let e = evaluate(&criteria(), &t, &q, &figures(&t, &q), None);
        assert_eq!(e.verdict, Verdict::Pass, "{e:?}");
        let mtbf = e.criteria.iter().find(|c| c.key == "mtbf_hours_min");
        assert_eq!(
            mtbf.map(|c| (c.measured, c.lower_bound)),
            Some((Some(3.0), true))
        );
    }

    #[test]
    fn a_missed_threshold_fails_and_names_the_criterion() {
        let (t, q) = measured(3, 1, 3);
        let e = evaluate(&criteria(), &t, &q, &figures(&t, &q), None);
        assert_eq!(e.verdict, Verdict::Fail);
        let failed: Vec<&str> = e
            .criteria
            .iter()
            .filter(|c| c.status == CriterionStatus::Fail)
            .map(|c| c.key.as_str())
            .collect();
        assert_eq!(failed, vec!["oee_min"]);
    }

    #[test]
    fn too_few_units_is_insufficient_data_even_when_thresholds_are_missed() {
        let (t, q) = measured(1, 0, 2);
        let e = evaluate(&criteria(), &t, &q, &figures(&t, &q), None);
        assert_eq!(e.verdict, Verdict::InsufficientData);
        assert_eq!(e.units_produced, 2);
    }

    #[test]
    fn cost_criteria_are_measured_from_the_accounts_and_unmeasured_without_them() {
        use crate::metering::cost::{CostInputs, MaterialPerUnit, account};
        let (t, q) = measured(3, 4, 0);
        let c = ApcCriteria {
            cost_per_good_unit_max: Some(2.0),
            earnings_per_operator_hour_min: Some(68.0),
            ..criteria()
        };
        let costs = crate::config::CostsConfig {
            currency: "USD".into(),
            labour_rate_per_hour: 60.0,
            energy_price_per_kwh: 0.0,
            qc_minutes_per_unit: 3.0,
            material: std::collections::BTreeMap::new(),
            class: std::collections::BTreeMap::new(),
        };
        // 4 good units at 1.00 material, 4 inspections of 3 min = 0.2 h
        // of labour (12.00): 16.00 in all, 4.00 per unit, over 2.00. At
        // 30 each, (120 − 4) / 0.2 h = 580 per operator hour.
        let cost = account(
            &costs,
            None,
            MaterialPerUnit::of(Some(1.0), 0.0, 1, None),
            CostInputs {
                produced: 4,
                good: 4,
                inspections: 4,
                price_per_unit: Some(30.0),
                ..CostInputs::default()
            },
        );
        let e = evaluate(&c, &t, &q, &figures(&t, &q), Some(&cost));
        let status = |key: &str| {
            e.criteria
                .iter()
                .find(|c| c.key == key)
                .map(|c| (c.measured, c.status))
        };
        assert_eq!(
            status("cost_per_good_unit_max"),
            Some((Some(4.0), CriterionStatus::Fail))
        );
        assert_eq!(
            status("earnings_per_operator_hour_min").map(|s| s.1),
            Some(CriterionStatus::Pass)
        );
        assert_eq!(e.verdict, Verdict::Fail);
        let without = evaluate(&c, &t, &q, &figures(&t, &q), None);
        assert_eq!(
            status_of(&without, "cost_per_good_unit_max"),
            Some(CriterionStatus::NotMeasured)
        );
        assert_eq!(without.verdict, Verdict::InsufficientData);
    }

    fn status_of(e: &Evaluation, key: &str) -> Option<CriterionStatus> {
        e.criteria.iter().find(|c| c.key == key).map(|c| c.status)
    }

    #[test]
    fn a_criterion_not_metered_yet_keeps_the_verdict_from_passing() {
        let (t, q) = measured(3, 4, 0);
        let c = ApcCriteria {
            operator_minutes_per_unit_max: Some(6.0),
            ..criteria()
        };
        let e = evaluate(&c, &t, &q, &figures(&t, &q), None);
        assert_eq!(e.verdict, Verdict::InsufficientData);
        assert!(
            e.criteria
                .iter()
                .any(|c| c.status == CriterionStatus::NotMeasured)
        );
    }
}
