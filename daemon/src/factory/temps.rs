//! The last minutes of each printer's temperatures, sampled once a second.
//!
//! An operator who opens the dashboard wants to see how a heater has been
//! behaving (still climbing, overshooting, drooping under a fan), not a
//! chart that starts empty. The samples live in memory only: they are
//! observations, not records, and a restart may lose them.

use std::collections::VecDeque;
use std::time::Duration;

use microfactory_machines::driver::Heater;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// How often a sample is taken.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// Samples kept per machine: 20 minutes at one a second, under 50 KB for
/// a printer with two heaters.
pub const SAMPLES_KEPT: usize = 1200;

/// One machine's history: heater names once, then one row per sample.
#[derive(Debug, Default)]
pub struct TempHistory {
    names: Vec<String>,
    at_ms: VecDeque<u64>,
    /// `[actual, target]` per heater in `names` order, sample after sample
    /// (one flat ring, no allocation per sample).
    values: VecDeque<[f32; 2]>,
}

impl TempHistory {
    /// Adds a sample; a machine that reports other heaters than before
    /// (another firmware after a reconnect) starts a new history.
    pub fn record(&mut self, at_ms: u64, heaters: &[Heater]) {
        if heaters.is_empty() {
            return;
        }
        if heaters.len() != self.names.len()
            || heaters.iter().zip(&self.names).any(|(h, n)| &h.name != n)
        {
            self.names = heaters.iter().map(|h| h.name.clone()).collect();
            self.at_ms.clear();
            self.values.clear();
        }
        if self.at_ms.len() == SAMPLES_KEPT {
            self.at_ms.pop_front();
            self.values.drain(..self.names.len());
        }
        self.at_ms.push_back(at_ms);
        self.values
            .extend(heaters.iter().map(|h| [h.actual as f32, h.target as f32]));
    }

    /// The history in columns, oldest first.
    pub fn view(&self) -> TemperatureHistory {
        let n = self.names.len();
        let column = |i: usize, j: usize| {
            self.values
                .iter()
                .skip(i)
                .step_by(n)
                .map(|v| v[j])
                .collect()
        };
        TemperatureHistory {
            interval_ms: SAMPLE_EVERY.as_millis() as u64,
            at_ms: self.at_ms.iter().copied().collect(),
            heaters: self
                .names
                .iter()
                .enumerate()
                .map(|(i, name)| HeaterSeries {
                    name: name.clone(),
                    actual: column(i, 0),
                    target: column(i, 1),
                })
                .collect(),
        }
    }
}

/// `GET /machines/{id}/temperatures`: one time column and, per heater,
/// its readings and targets in °C, oldest first (the columns have equal
/// lengths).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TemperatureHistory {
    /// Time between samples, ms.
    pub interval_ms: u64,
    /// When each sample was taken, ms since the Unix epoch.
    pub at_ms: Vec<u64>,
    /// One series per heater (`T0`, `B`, ...).
    pub heaters: Vec<HeaterSeries>,
}

/// One heater's readings.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct HeaterSeries {
    /// `T0`, `B`, ...
    pub name: String,
    /// Measured, °C.
    pub actual: Vec<f32>,
    /// Target, °C (0 when off).
    pub target: Vec<f32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heater(name: &str, actual: f64, target: f64) -> Heater {
        Heater {
            name: name.into(),
            actual,
            target,
        }
    }

    #[test]
    fn samples_come_back_in_columns_oldest_first_and_only_the_newest_are_kept() {
        let mut h = TempHistory::default();
        for i in 0..SAMPLES_KEPT as u64 + 5 {
            h.record(
                1000 * i,
                &[heater("T0", i as f64, 215.0), heater("B", 60.0, 60.0)],
            );
        }
        let v = h.view();
        assert_eq!(v.at_ms.len(), SAMPLES_KEPT);
        assert_eq!(v.at_ms[0], 5000);
        assert_eq!(v.heaters.len(), 2);
        assert_eq!(v.heaters[0].name, "T0");
        assert_eq!(v.heaters[0].actual[0], 5.0);
        assert_eq!(v.heaters[0].target[SAMPLES_KEPT - 1], 215.0);
        assert_eq!(v.heaters[1].actual.len(), SAMPLES_KEPT);
        assert_eq!(v.heaters[1].actual[0], 60.0);
        assert_eq!(
            v.heaters[0].actual[SAMPLES_KEPT - 1],
            (SAMPLES_KEPT + 4) as f32
        );
    }

    #[test]
    fn other_heaters_start_a_new_history_and_no_heaters_record_nothing() {
        let mut h = TempHistory::default();
        h.record(1, &[heater("T0", 20.0, 0.0)]);
        h.record(2, &[]);
        assert_eq!(h.view().at_ms, vec![1]);
        h.record(3, &[heater("T0", 21.0, 0.0), heater("B", 20.0, 0.0)]);
        let v = h.view();
        assert_eq!(v.at_ms, vec![3]);
        assert_eq!(v.heaters.len(), 2);
    }
}
