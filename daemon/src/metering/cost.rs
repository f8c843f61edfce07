//! Full-cost accounting, pure: can this machine earn a living making this
//! product? Over a window, for one (SKU, machine class), from the same
//! time elements and units as the ISO figures, and the `[costs]` rates.
//!
//! The model, every part of it returned with its inputs:
//! - material: the material of one unit (the product's own
//!   `material_cost_per_unit`, or filament mass from the file's analysis ×
//!   the material's price per kg) × every unit produced, scrap included;
//! - machine time: a machine-hour rate (purchase price ÷ service life, plus
//!   power draw × energy price) × the hours the product's jobs held the
//!   machines (production and setup);
//! - tooling: wear per job × jobs run (mills);
//! - operator labour: operator hours × labour rate, where operator hours
//!   are the setup time (clearing beds, changing tools) and the
//!   inspections people made × minutes per inspection;
//! - scrap and rework cost nothing extra: what they used is spread over
//!   the good units, because the total is divided by good units only.
//!   `scrap_share` says how much of the total that is.
//!
//! Against the product's price: margin per good unit, **earnings per
//! operator hour** (revenue less material, machine and tooling costs, per
//! hour of operator work: the living a person makes from the machine), and
//! the machine's payback (its price over the contribution per machine
//! hour, depreciation left out since that is what payback recovers).

use serde::Serialize;
use utoipa::ToSchema;

use crate::config::{CostsConfig, MachineCost, MaterialCost};

const MS_PER_HOUR: f64 = 3_600_000.0;

/// Where the material cost of one unit came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MaterialSource {
    /// The product's `material_cost_per_unit`.
    Product,
    /// Filament length from the file's analysis, the material's density
    /// and diameter, and its price per kg.
    Filament,
    /// Neither is known: material is not counted.
    Unknown,
}

/// The material of one unit.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, ToSchema)]
pub struct MaterialPerUnit {
    /// Currency.
    pub cost: f64,
    /// Where it came from.
    pub source: MaterialSource,
    /// Filament of one unit, mm (analysed length ÷ units per plate).
    pub filament_mm: Option<f64>,
    /// Its mass, g.
    pub mass_g: Option<f64>,
    /// The material's price, currency per kg.
    pub price_per_kg: Option<f64>,
}

impl MaterialPerUnit {
    /// One unit's material: the product's own figure if it has one, else
    /// filament mass × price when the material is priced.
    pub fn of(
        product_cost: Option<f64>,
        filament_mm_per_job: f64,
        units_per_job: u32,
        material: Option<&MaterialCost>,
    ) -> Self {
        if let Some(cost) = product_cost {
            return Self {
                cost,
                source: MaterialSource::Product,
                filament_mm: None,
                mass_g: None,
                price_per_kg: None,
            };
        }
        match material {
            Some(m) if filament_mm_per_job > 0.0 && units_per_job > 0 => {
                let length = filament_mm_per_job / f64::from(units_per_job);
                let radius = m.filament_diameter_mm / 2.0;
                // mm³ → cm³ is ÷ 1000.
                let mass_g =
                    std::f64::consts::PI * radius * radius * length / 1000.0 * m.density_g_per_cm3;
                Self {
                    cost: mass_g / 1000.0 * m.price_per_kg,
                    source: MaterialSource::Filament,
                    filament_mm: Some(length),
                    mass_g: Some(mass_g),
                    price_per_kg: Some(m.price_per_kg),
                }
            }
            _ => Self {
                cost: 0.0,
                source: MaterialSource::Unknown,
                filament_mm: None,
                mass_g: None,
                price_per_kg: None,
            },
        }
    }
}

/// What was measured in the window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, ToSchema)]
pub struct CostInputs {
    /// Units produced (PQ).
    pub produced: u64,
    /// Good units (GQ).
    pub good: u64,
    /// Actual production time of the product's jobs, ms.
    pub production_ms: u64,
    /// Setup time of the product's jobs, ms (operator work).
    pub setup_ms: u64,
    /// Jobs run (attempts that made units).
    pub jobs: u64,
    /// Inspections made by people.
    pub inspections: u64,
    /// Machines of the class.
    pub machines: u64,
    /// Selling price of one unit, if the product has one.
    pub price_per_unit: Option<f64>,
}

/// The machine-hour rate and its parts, currency per hour.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, ToSchema)]
pub struct MachineHourRate {
    /// Purchase price ÷ service life hours.
    pub depreciation: f64,
    /// Power draw (kW) × energy price per kWh.
    pub energy: f64,
    /// Their sum.
    pub total: f64,
}

impl MachineHourRate {
    /// The rate of a class's machines (none configured: zero).
    pub fn of(m: Option<&MachineCost>, energy_price_per_kwh: f64) -> Self {
        let Some(m) = m else {
            return Self {
                depreciation: 0.0,
                energy: 0.0,
                total: 0.0,
            };
        };
        let depreciation = if m.service_life_hours > 0.0 {
            m.purchase_price / m.service_life_hours
        } else {
            0.0
        };
        let energy = m.power_draw_w / 1000.0 * energy_price_per_kwh;
        Self {
            depreciation,
            energy,
            total: depreciation + energy,
        }
    }
}

/// Costs in a window, by kind, currency.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, ToSchema)]
pub struct CostLines {
    /// Material of every unit produced.
    pub material: f64,
    /// Machine hours × machine-hour rate.
    pub machine: f64,
    /// Tool wear.
    pub tooling: f64,
    /// Operator labour.
    pub labour: f64,
    /// Their sum.
    pub total: f64,
}

impl CostLines {
    fn per(&self, n: u64) -> Option<Self> {
        #[allow(clippy::cast_precision_loss)]
        let n = (n > 0).then_some(n as f64)?;
        Some(Self {
            material: self.material / n,
            machine: self.machine / n,
            tooling: self.tooling / n,
            labour: self.labour / n,
            total: self.total / n,
        })
    }
}

/// The accounts of one (SKU, class) over a window, with every input.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct CostFigures {
    /// The currency of every amount.
    pub currency: String,
    /// What was measured.
    pub inputs: CostInputs,
    /// One unit's material.
    pub material_per_unit: MaterialPerUnit,
    /// The machine-hour rate.
    pub machine_hour_rate: MachineHourRate,
    /// Labour, currency per operator hour.
    pub labour_rate_per_hour: f64,
    /// Minutes one inspection takes.
    pub qc_minutes_per_unit: f64,
    /// Tool wear per job.
    pub tooling_wear_per_job: f64,
    /// Machine hours: production and setup of the product's jobs.
    pub machine_hours: f64,
    /// Operator hours: setup and inspections.
    pub operator_hours: f64,
    /// The window's costs.
    pub totals: CostLines,
    /// The costs per good unit (none without a good unit).
    pub per_good_unit: Option<CostLines>,
    /// Full cost per good unit (the total ÷ good units).
    pub cost_per_good_unit: Option<f64>,
    /// The part of the total borne by units that were not good (scrap,
    /// failed attempts' plates, rework not yet passed): (PQ − GQ) ÷ PQ of
    /// the material, machine and tooling costs.
    pub scrap_share: f64,
    /// Operator minutes per good unit.
    pub operator_minutes_per_unit: Option<f64>,
    /// Price less full cost, per good unit.
    pub margin_per_unit: Option<f64>,
    /// Revenue (price × good units) less material, machine and tooling,
    /// per operator hour.
    pub earnings_per_operator_hour: Option<f64>,
    /// Machine hours of this production that pay one machine back:
    /// purchase price ÷ contribution (revenue less material, energy,
    /// tooling and labour) per machine hour. None when production does
    /// not contribute.
    pub payback_machine_hours: Option<f64>,
}

/// The accounts of `inputs`, given the rates of `costs`, the class's
/// machine costs and one unit's material.
pub fn account(
    costs: &CostsConfig,
    class: Option<&MachineCost>,
    material: MaterialPerUnit,
    inputs: CostInputs,
) -> CostFigures {
    let rate = MachineHourRate::of(class, costs.energy_price_per_kwh);
    #[allow(clippy::cast_precision_loss)]
    let (produced, good, jobs, inspections) = (
        inputs.produced as f64,
        inputs.good as f64,
        inputs.jobs as f64,
        inputs.inspections as f64,
    );
    #[allow(clippy::cast_precision_loss)]
    let machine_hours = (inputs.production_ms + inputs.setup_ms) as f64 / MS_PER_HOUR;
    #[allow(clippy::cast_precision_loss)]
    let operator_hours =
        inputs.setup_ms as f64 / MS_PER_HOUR + inspections * costs.qc_minutes_per_unit / 60.0;
    let tooling_wear_per_job = class.map_or(0.0, |c| c.tooling_wear_per_job);
    let mut totals = CostLines {
        material: material.cost * produced,
        machine: machine_hours * rate.total,
        tooling: tooling_wear_per_job * jobs,
        labour: operator_hours * costs.labour_rate_per_hour,
        total: 0.0,
    };
    totals.total = totals.material + totals.machine + totals.tooling + totals.labour;
    let per_good_unit = totals.per(inputs.good);
    let non_labour = totals.material + totals.machine + totals.tooling;
    let scrap_share = if inputs.produced > 0 {
        non_labour * (produced - good) / produced
    } else {
        0.0
    };
    let revenue = inputs.price_per_unit.map(|p| p * good);
    let earnings_per_operator_hour = match revenue {
        Some(r) if operator_hours > 0.0 => Some((r - non_labour) / operator_hours),
        _ => None,
    };
    let contribution = revenue.map(|r| {
        r - (totals.material + machine_hours * rate.energy + totals.tooling + totals.labour)
    });
    let payback_machine_hours = match (contribution, class) {
        (Some(c), Some(m)) if c > 0.0 && machine_hours > 0.0 => {
            Some(m.purchase_price / (c / machine_hours))
        }
        _ => None,
    };
    let cost_per_good_unit = per_good_unit.map(|p| p.total);
    CostFigures {
        currency: costs.currency.clone(),
        inputs,
        material_per_unit: material,
        machine_hour_rate: rate,
        labour_rate_per_hour: costs.labour_rate_per_hour,
        qc_minutes_per_unit: costs.qc_minutes_per_unit,
        tooling_wear_per_job,
        machine_hours,
        operator_hours,
        totals,
        per_good_unit,
        cost_per_good_unit,
        scrap_share,
        operator_minutes_per_unit: (inputs.good > 0).then(|| operator_hours * 60.0 / good),
        margin_per_unit: match (inputs.price_per_unit, cost_per_good_unit) {
            (Some(p), Some(c)) => Some(p - c),
            _ => None,
        },
        earnings_per_operator_hour,
        payback_machine_hours,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    const H: u64 = 3_600_000;

    fn costs() -> CostsConfig {
        CostsConfig {
            currency: "USD".into(),
            labour_rate_per_hour: 60.0,
            energy_price_per_kwh: 0.25,
            qc_minutes_per_unit: 1.5,
            material: BTreeMap::new(),
            class: BTreeMap::new(),
        }
    }

    fn printer() -> MachineCost {
        MachineCost {
            purchase_price: 1000.0,
            service_life_hours: 5000.0,
            power_draw_w: 200.0,
            tooling_wear_per_job: 0.0,
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9 * (1.0 + a.abs().max(b.abs()))
    }

    #[test]
    fn filament_length_becomes_mass_and_money() {
        // 1.75 mm PLA at 1.24 g/cm³: π × 0.875² mm² × 10 000 mm = 24 052.8
        // mm³ = 24.0528 cm³ = 29.8255 g per plate; two units per plate,
        // 14.9128 g each; at 25 per kg, 0.372819 each.
        let pla = MaterialCost {
            price_per_kg: 25.0,
            density_g_per_cm3: 1.24,
            filament_diameter_mm: 1.75,
        };
        let m = MaterialPerUnit::of(None, 10_000.0, 2, Some(&pla));
        assert_eq!(m.source, MaterialSource::Filament);
        assert_eq!(m.filament_mm, Some(5_000.0));
        assert!((m.mass_g.unwrap_or(0.0) - 14.912_8).abs() < 1e-4, "{m:?}");
        assert!((m.cost - 0.372_82).abs() < 1e-5, "{m:?}");
        // The product's own figure wins; no price and no figure: unknown.
        let own = MaterialPerUnit::of(Some(0.9), 10_000.0, 2, Some(&pla));
        assert_eq!((own.cost, own.source), (0.9, MaterialSource::Product));
        let none = MaterialPerUnit::of(None, 10_000.0, 2, None);
        assert_eq!((none.cost, none.source), (0.0, MaterialSource::Unknown));
    }

    #[test]
    fn a_hand_worked_window_of_ten_good_units_and_two_scrapped() {
        // 12 units produced at 0.50 material each = 6.00.
        // Machine: 1000 / 5000 h = 0.20/h depreciation + 0.2 kW × 0.25 =
        // 0.05/h energy = 0.25/h; 6 h production + 0.5 h setup = 6.5 h →
        // 1.625. Operator: 0.5 h setup + 10 inspections × 1.5 min = 0.75
        // h → 45.00 at 60/h. Total 52.625; per good unit 5.2625.
        let inputs = CostInputs {
            produced: 12,
            good: 10,
            production_ms: 6 * H,
            setup_ms: H / 2,
            jobs: 6,
            inspections: 10,
            machines: 1,
            price_per_unit: Some(12.0),
        };
        let material = MaterialPerUnit::of(Some(0.5), 0.0, 2, None);
        let f = account(&costs(), Some(&printer()), material, inputs);
        assert!(close(f.machine_hour_rate.total, 0.25));
        assert!(close(f.machine_hours, 6.5));
        assert!(close(f.operator_hours, 0.75));
        assert!(close(f.totals.material, 6.0));
        assert!(close(f.totals.machine, 1.625));
        assert!(close(f.totals.labour, 45.0));
        assert!(close(f.totals.total, 52.625));
        assert!(close(f.cost_per_good_unit.unwrap_or(0.0), 5.2625));
        assert!(close(f.margin_per_unit.unwrap_or(0.0), 12.0 - 5.2625));
        // Scrap: 2 of 12 units' share of material and machine: 7.625 / 6.
        assert!(close(f.scrap_share, 7.625 * 2.0 / 12.0));
        assert!(close(f.operator_minutes_per_unit.unwrap_or(0.0), 4.5));
        // Revenue 120 less 7.625 non-labour = 112.375 over 0.75 h.
        assert!(close(
            f.earnings_per_operator_hour.unwrap_or(0.0),
            112.375 / 0.75
        ));
        // Contribution: 120 − (6 + 6.5 h × 0.05 + 0 + 45) = 68.675 over
        // 6.5 h = 10.5654/h; 1000 / that = 94.65 machine hours.
        assert!(close(
            f.payback_machine_hours.unwrap_or(0.0),
            1000.0 / (68.675 / 6.5)
        ));
    }

    #[test]
    fn all_scrap_has_no_cost_per_good_unit_and_no_margin() {
        let inputs = CostInputs {
            produced: 4,
            good: 0,
            production_ms: H,
            jobs: 2,
            machines: 1,
            price_per_unit: Some(10.0),
            ..CostInputs::default()
        };
        let f = account(
            &costs(),
            Some(&printer()),
            MaterialPerUnit::of(Some(1.0), 0.0, 1, None),
            inputs,
        );
        assert_eq!(f.cost_per_good_unit, None);
        assert_eq!(f.margin_per_unit, None);
        assert_eq!(f.operator_minutes_per_unit, None);
        assert_eq!(f.payback_machine_hours, None, "nothing earned");
        assert!(close(f.scrap_share, f.totals.material + f.totals.machine));
    }

    #[test]
    fn a_mill_pays_tool_wear_per_job() {
        let mill = MachineCost {
            tooling_wear_per_job: 2.5,
            ..printer()
        };
        let inputs = CostInputs {
            produced: 3,
            good: 3,
            jobs: 3,
            ..CostInputs::default()
        };
        let f = account(
            &costs(),
            Some(&mill),
            MaterialPerUnit::of(None, 0.0, 1, None),
            inputs,
        );
        assert!(close(f.totals.tooling, 7.5));
        assert!(close(f.cost_per_good_unit.unwrap_or(0.0), 2.5));
    }

    proptest! {
        #[test]
        fn the_lines_add_up_and_the_cost_per_good_unit_is_the_total_over_good_units(
            good in 0u64..500, bad in 0u64..100, prod_min in 0u64..100_000,
            setup_min in 0u64..10_000, inspections in 0u64..600,
            material in 0.0f64..50.0, price in proptest::option::of(0.0f64..500.0),
        ) {
            let inputs = CostInputs {
                produced: good + bad,
                good,
                production_ms: prod_min * 60_000,
                setup_ms: setup_min * 60_000,
                jobs: good + bad,
                inspections,
                machines: 1,
                price_per_unit: price,
            };
            let f = account(&costs(), Some(&printer()),
                MaterialPerUnit::of(Some(material), 0.0, 1, None), inputs);
            let t = f.totals;
            prop_assert!(close(t.total, t.material + t.machine + t.tooling + t.labour));
            prop_assert!(t.total >= 0.0 && f.scrap_share >= 0.0);
            prop_assert!(f.scrap_share <= t.total + 1e-9);
            match f.cost_per_good_unit {
                #[allow(clippy::cast_precision_loss)]
                Some(c) => prop_assert!(close(c * good as f64, t.total)),
                None => prop_assert_eq!(good, 0),
            }
            if let (Some(p), Some(m)) = (price, f.margin_per_unit) {
                prop_assert!(close(m + f.cost_per_good_unit.unwrap_or(0.0), p));
            }
        }
    }
}
