//! Metering's records: products, production orders and serialised units
//! with their quality control, and the pure rules that check and change
//! them. Stored as versioned JSON like every record (a field added later
//! needs a serde default).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::core::model::FileRecord;

/// Longest SKU: it appears in URLs, labels and the configuration's table
/// names, so it stays short and plain.
pub const SKU_MAX_CHARS: usize = 32;
/// Most units one job (one plate) may carry.
pub const UNITS_PER_JOB_MAX: u32 = 1000;
/// Largest production order, in units.
pub const ORDER_QUANTITY_MAX: u32 = 100_000;
/// Longest QC note.
pub const NOTE_MAX_CHARS: usize = 500;

/// Why a product, order or QC input was refused: one sentence a person can
/// act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

fn invalid<T>(msg: impl Into<String>) -> Result<T, Invalid> {
    Err(Invalid(msg.into()))
}

/// SKUs are stable identifiers: letters, digits, `.`, `_`, `-`, starting
/// with a letter or digit.
pub fn check_sku(sku: &str) -> Result<(), Invalid> {
    let ok = (1..=SKU_MAX_CHARS).contains(&sku.len())
        && sku.starts_with(|c: char| c.is_ascii_alphanumeric())
        && sku
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        invalid(format!(
            "sku '{sku}' must be 1 to {SKU_MAX_CHARS} characters of letters, digits, '.', '_' \
             or '-', starting with a letter or digit"
        ))
    }
}

/// A product as the operator describes it (`POST` and `PUT` bodies).
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProductInput {
    /// Stock keeping unit; required on `POST`, must match the path on `PUT`.
    #[serde(default)]
    pub sku: Option<String>,
    /// Name shown to people.
    pub name: String,
    /// Design revision, e.g. `B` or `2.1`.
    #[serde(default)]
    pub design_revision: Option<String>,
    /// The G-code file (sha256 id of an uploaded file) that makes one plate.
    pub file_id: String,
    /// Units on one plate (one job); default 1.
    #[serde(default)]
    pub units_per_job: Option<u32>,
    /// Ideal time to make one unit, seconds; default the file's analysed
    /// duration divided by the units per job.
    #[serde(default)]
    pub planned_runtime_per_unit_s: Option<f64>,
    /// Shipping weight of one unit, grams.
    #[serde(default)]
    pub weight_g: Option<f64>,
    /// Shipping dimensions of one unit (length, width, height), mm.
    #[serde(default)]
    pub dimensions_mm: Option<[f64; 3]>,
    /// Material, e.g. `PLA`.
    #[serde(default)]
    pub material: Option<String>,
    /// Selling price of one unit, in the shop's currency.
    #[serde(default)]
    pub price_per_unit: Option<f64>,
    /// Material cost of one unit, in the shop's currency.
    #[serde(default)]
    pub material_cost_per_unit: Option<f64>,
    /// Units pass QC when they are made (no inspection step).
    #[serde(default)]
    pub auto_pass: bool,
}

/// A product: what a production order makes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Product {
    /// Stock keeping unit: unique and never changed.
    pub sku: String,
    /// Name shown to people.
    pub name: String,
    /// Design revision.
    pub design_revision: Option<String>,
    /// The G-code file (sha256).
    pub file_id: String,
    /// Units on one plate.
    pub units_per_job: u32,
    /// Ideal time to make one unit, seconds (ISO 22400 PRU).
    pub planned_runtime_per_unit_s: f64,
    /// The planned runtime was taken from the file's analysis.
    pub planned_runtime_from_analysis: bool,
    /// Weight of one unit, grams.
    pub weight_g: Option<f64>,
    /// Dimensions of one unit, mm.
    pub dimensions_mm: Option<[f64; 3]>,
    /// Material.
    pub material: Option<String>,
    /// Selling price of one unit.
    pub price_per_unit: Option<f64>,
    /// Material cost of one unit.
    pub material_cost_per_unit: Option<f64>,
    /// Units pass QC when they are made.
    #[serde(default)]
    pub auto_pass: bool,
    /// Created, ms since the Unix epoch.
    pub created_ms: u64,
    /// Last changed.
    pub updated_ms: u64,
}

/// Longest planned runtime per unit, s.
pub const PLANNED_RUNTIME_MAX_S: f64 = 7.0 * 24.0 * 3600.0;

fn positive(name: &str, v: Option<f64>) -> Result<Option<f64>, Invalid> {
    match v {
        Some(x) if !(x.is_finite() && x > 0.0) => {
            invalid(format!("{name} must be a positive number, got {x}"))
        }
        v => Ok(v),
    }
}

fn not_negative(name: &str, v: Option<f64>) -> Result<Option<f64>, Invalid> {
    match v {
        Some(x) if !(x.is_finite() && x >= 0.0) => {
            invalid(format!("{name} must be zero or more, got {x}"))
        }
        v => Ok(v),
    }
}

fn short_text(name: &str, v: Option<String>, max: usize) -> Result<Option<String>, Invalid> {
    match v.map(|s| s.trim().to_string()) {
        Some(s) if s.is_empty() => Ok(None),
        Some(s) if s.chars().count() > max || s.chars().any(char::is_control) => invalid(format!(
            "{name} must be at most {max} characters without control characters"
        )),
        v => Ok(v),
    }
}

impl ProductInput {
    /// The product this input describes, for `sku`, checked against the
    /// file it names (`None`: no such file). `previous` keeps the creation
    /// time of a product being replaced.
    pub fn resolve(
        self,
        sku: &str,
        file: Option<&FileRecord>,
        previous: Option<&Product>,
        now_ms: u64,
    ) -> Result<Product, Invalid> {
        check_sku(sku)?;
        if let Some(body_sku) = &self.sku
            && body_sku != sku
        {
            return invalid(format!(
                "a product's sku never changes: the body says '{body_sku}', the path '{sku}'"
            ));
        }
        let name = short_text("name", Some(self.name), 200)?
            .ok_or_else(|| Invalid("name must not be empty".into()))?;
        let Some(file) = file else {
            return invalid(format!(
                "file_id '{}' is not an uploaded file",
                self.file_id
            ));
        };
        let units_per_job = self.units_per_job.unwrap_or(1);
        if !(1..=UNITS_PER_JOB_MAX).contains(&units_per_job) {
            return invalid(format!(
                "units_per_job must be between 1 and {UNITS_PER_JOB_MAX}, got {units_per_job}"
            ));
        }
        let (planned, from_analysis) = match positive(
            "planned_runtime_per_unit_s",
            self.planned_runtime_per_unit_s,
        )? {
            Some(s) => (s, false),
            None if file.analysis.estimated_seconds > 0.0 => (
                file.analysis.estimated_seconds / f64::from(units_per_job),
                true,
            ),
            None => {
                return invalid(
                    "the file's analysis has no duration to plan with; \
                         give planned_runtime_per_unit_s",
                );
            }
        };
        // A week per unit is beyond any plate a small machine runs; the
        // bound also keeps every sum of planned time far from overflowing.
        if planned > PLANNED_RUNTIME_MAX_S {
            return invalid(format!(
                "planned runtime per unit is {planned} s; at most {PLANNED_RUNTIME_MAX_S} s (a week) is accepted"
            ));
        }
        if let Some(d) = self.dimensions_mm
            && d.iter().any(|x| !(x.is_finite() && *x > 0.0))
        {
            return invalid("dimensions_mm must be three positive numbers (length, width, height)");
        }
        Ok(Product {
            sku: sku.to_string(),
            name,
            design_revision: short_text("design_revision", self.design_revision, 32)?,
            file_id: file.id.clone(),
            units_per_job,
            planned_runtime_per_unit_s: planned,
            planned_runtime_from_analysis: from_analysis,
            weight_g: positive("weight_g", self.weight_g)?,
            dimensions_mm: self.dimensions_mm,
            material: short_text("material", self.material, 64)?,
            price_per_unit: not_negative("price_per_unit", self.price_per_unit)?,
            material_cost_per_unit: not_negative(
                "material_cost_per_unit",
                self.material_cost_per_unit,
            )?,
            auto_pass: self.auto_pass,
            created_ms: previous.map_or(now_ms, |p| p.created_ms),
            updated_ms: now_ms,
        })
    }
}

/// `POST /production-orders` body.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderInput {
    /// The product.
    pub sku: String,
    /// Good units wanted.
    pub quantity: u32,
    /// Wanted by, ms since the Unix epoch.
    #[serde(default)]
    pub due_ms: Option<u64>,
    /// Queue priority of its jobs (higher first); default 0.
    #[serde(default)]
    pub priority: Option<i32>,
}

impl OrderInput {
    /// Checks the quantity (the SKU is checked against the products).
    pub fn check(&self) -> Result<(), Invalid> {
        if !(1..=ORDER_QUANTITY_MAX).contains(&self.quantity) {
            return invalid(format!(
                "quantity must be between 1 and {ORDER_QUANTITY_MAX}, got {}",
                self.quantity
            ));
        }
        Ok(())
    }
}

/// Where a production order is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OrderState {
    /// Jobs are queued as needed until the good quantity is reached.
    Open,
    /// The good quantity is reached.
    Done,
    /// The operator stopped it: no more jobs are queued for it.
    Stopped,
}

/// One job queued for an order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct OrderJob {
    /// The job.
    pub job_id: u64,
    /// Its outcome is counted: units were made (or scrapped), or it ended
    /// without using material. An interrupted job is not settled: it may
    /// restart from its line.
    pub settled: bool,
}

/// A production order: a quantity of good units of one product.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Order {
    /// Increasing id.
    pub id: u64,
    /// The product.
    pub sku: String,
    /// Good units wanted.
    pub quantity: u32,
    /// Wanted by.
    pub due_ms: Option<u64>,
    /// Priority of its jobs.
    pub priority: i32,
    /// Open, done or stopped.
    pub state: OrderState,
    /// Created.
    pub created_ms: u64,
    /// The product's file when the order was made.
    pub file_id: String,
    /// The product's units per job when the order was made.
    pub units_per_job: u32,
    /// The product's planned runtime per unit when the order was made, s.
    pub planned_runtime_per_unit_s: f64,
    /// Units pass QC when made.
    #[serde(default)]
    pub auto_pass: bool,
    /// Its jobs, in the order they were queued.
    pub jobs: Vec<OrderJob>,
    /// Jobs being queued right now: written before the submission and
    /// cleared with the jobs after it, so that a crash in between is
    /// found at the next start and the jobs adopted (by their name).
    #[serde(default)]
    pub submitting: Option<u32>,
}

impl Order {
    /// The name its jobs carry, by which they are found again after a
    /// crash between their submission and their record here.
    pub fn job_name(&self) -> String {
        format!("{} · order {}", self.sku, self.id)
    }
}

pub use crate::core::model::QcState;

/// One inspection of a unit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct QcRecord {
    /// When.
    pub at_ms: u64,
    /// The result.
    pub result: QcState,
    /// Reason code, e.g. `warping`, `attempt_failed`.
    pub reason: Option<String>,
    /// Free text.
    pub note: Option<String>,
    /// Who (token name, or `microfactoryd`).
    pub by: String,
}

/// A serialised unit: one part made on one plate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Unit {
    /// Unique, at most 20 characters (`U` and a zero-padded counter).
    pub serial: String,
    /// The product.
    pub sku: String,
    /// The production order.
    pub order_id: u64,
    /// The job.
    pub job_id: u64,
    /// The attempt of the job that made it.
    pub attempt: u32,
    /// Its place on the plate, from 1.
    pub index: u32,
    /// The machine.
    pub machine_id: String,
    /// The G-code that made it (sha256).
    pub gcode_sha256: String,
    /// Attempt start (first byte streamed), ms since the Unix epoch.
    pub started_ms: Option<u64>,
    /// Attempt end.
    pub ended_ms: u64,
    /// Planned runtime of one unit, ms (ISO 22400 PRU).
    pub planned_runtime_ms: u64,
    /// The part of the planned runtime this unit earned: all of it when
    /// its attempt completed, the share of lines streamed when it failed
    /// or was cancelled (so a print that failed early does not inflate
    /// effectiveness).
    pub credited_runtime_ms: u64,
    /// Quality state.
    pub qc: QcState,
    /// The first inspection's verdict (`None` until inspected).
    pub first_pass: Option<bool>,
    /// It was sent to rework at least once (ISO 22400 RQ).
    pub reworked: bool,
    /// Every inspection, oldest first.
    pub qc_history: Vec<QcRecord>,
}

/// `POST /units/{serial}/qc` body.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QcInput {
    /// `pass`, `fail`, `rework` or `scrap`.
    pub result: QcState,
    /// Reason code (`[a-z0-9_]`, at most 32); required unless `pass`.
    #[serde(default)]
    pub reason: Option<String>,
    /// Free text, at most 500 characters.
    #[serde(default)]
    pub note: Option<String>,
}

/// Why an inspection was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QcError {
    /// The input is wrong.
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// The unit's state does not allow it.
    #[error("{0}")]
    Conflict(String),
}

fn check_reason(r: &str) -> Result<(), Invalid> {
    if (1..=32).contains(&r.len())
        && r.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        Ok(())
    } else {
        invalid(format!(
            "reason '{r}' must be a code of 1 to 32 characters of a-z, 0-9 or '_' \
             (e.g. warping); put words in note"
        ))
    }
}

impl Unit {
    /// Applies an inspection. Pending and rework units may be inspected;
    /// pass, fail and scrap are final. The first inspection sets
    /// `first_pass`.
    pub fn inspect(&mut self, input: QcInput, by: &str, now_ms: u64) -> Result<(), QcError> {
        if input.result == QcState::Pending {
            return Err(Invalid("result must be pass, fail, rework or scrap".into()).into());
        }
        let reason = short_text("reason", input.reason, 32)?;
        match &reason {
            Some(r) => check_reason(r)?,
            None if input.result != QcState::Pass => {
                return Err(Invalid(format!(
                    "a {} needs a reason code (e.g. warping, layer_shift)",
                    input.result.as_str()
                ))
                .into());
            }
            None => {}
        }
        let note = short_text("note", input.note, NOTE_MAX_CHARS)?;
        if self.qc.is_final() {
            return Err(QcError::Conflict(format!(
                "unit {} is already {}; its inspection is final",
                self.serial,
                self.qc.as_str()
            )));
        }
        if self.first_pass.is_none() {
            self.first_pass = Some(input.result == QcState::Pass);
        }
        if input.result == QcState::Rework {
            self.reworked = true;
        }
        self.qc = input.result;
        self.qc_history.push(QcRecord {
            at_ms: now_ms,
            result: input.result,
            reason,
            note,
            by: by.to_string(),
        });
        Ok(())
    }
}

/// The serial of the `n`th unit ever made: `U` and at least nine digits,
/// so it sorts and reads well and never exceeds 20 characters (u64 has at
/// most 20 digits; the counter stays far below 10^19).
pub fn serial(n: u64) -> String {
    format!("U{n:09}")
}

#[cfg(test)]
impl Unit {
    /// A pending unit of plate place 1 of job `n` (serial `n`) on machine
    /// `m`, made at `ended_ms` with 1 ms of planned runtime: the fixture
    /// the metering tests vary.
    pub(crate) fn sample(n: u64, ended_ms: u64) -> Self {
        Self {
            serial: serial(n),
            sku: "s".into(),
            order_id: 1,
            job_id: n,
            attempt: 1,
            index: 1,
            machine_id: "m".into(),
            gcode_sha256: "f".into(),
            started_ms: None,
            ended_ms,
            planned_runtime_ms: 1,
            credited_runtime_ms: 1,
            qc: QcState::Pending,
            first_pass: None,
            reworked: false,
            qc_history: vec![],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit() -> Unit {
        Unit {
            started_ms: Some(0),
            ..Unit::sample(1, 1)
        }
    }

    fn qc(result: QcState, reason: Option<&str>) -> QcInput {
        QcInput {
            result,
            reason: reason.map(str::to_string),
            note: None,
        }
    }

    #[test]
    fn skus_are_short_plain_and_start_with_a_letter_or_digit() {
        assert!(check_sku("coupling-12mm").is_ok());
        assert!(check_sku("A.1_b").is_ok());
        for bad in ["", "-x", "a b", "ä", &"x".repeat(33)] {
            assert!(check_sku(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_unit_reworked_then_passed_is_good_but_not_first_pass_and_then_final() {
        let mut u = unit();
        u.inspect(qc(QcState::Rework, Some("stringing")), "op", 5)
            .expect("rework");
        assert_eq!(u.first_pass, Some(false));
        assert!(u.reworked);
        u.inspect(qc(QcState::Pass, None), "op", 6).expect("pass");
        assert_eq!(u.qc, QcState::Pass);
        assert_eq!(u.first_pass, Some(false), "the first verdict is kept");
        assert_eq!(u.qc_history.len(), 2);
        let again = u.inspect(qc(QcState::Fail, Some("crack")), "op", 7);
        assert!(matches!(again, Err(QcError::Conflict(_))), "{again:?}");
    }

    #[test]
    fn a_failure_needs_a_reason_code_and_pending_is_no_verdict() {
        let mut u = unit();
        assert!(matches!(
            u.inspect(qc(QcState::Fail, None), "op", 1),
            Err(QcError::Invalid(_))
        ));
        assert!(matches!(
            u.inspect(qc(QcState::Fail, Some("Bad Words")), "op", 1),
            Err(QcError::Invalid(_))
        ));
        assert!(matches!(
            u.inspect(qc(QcState::Pending, None), "op", 1),
            Err(QcError::Invalid(_))
        ));
        assert_eq!(u.qc, QcState::Pending, "refused inspections change nothing");
        assert!(u.first_pass.is_none());
    }

    #[test]
    fn serials_fit_in_twenty_characters_and_sort_by_number() {
        assert_eq!(serial(42), "U000000042");
        // GS1 AI 21 allows 20 characters.
        assert!(serial(10u64.pow(19) - 1).len() <= 20);
        assert!(serial(9) < serial(10));
    }
}
