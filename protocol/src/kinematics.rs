//! Time estimation with a firmware-style motion planner.
//!
//! Moves are planned as trapezoids (accelerate, cruise, decelerate) with a
//! look-ahead window: a backward pass limits each block's entry speed to
//! what can still brake for the blocks after it, a forward pass to what can
//! be reached from the blocks before it. Junction speeds follow Marlin's
//! classic jerk rule, which is also what PrusaSlicer's own estimator models,
//! so our estimate and the slicer's can be compared.
//!
//! Blocks leave the window once later blocks can no longer change them,
//! so memory stays bounded for files of any size.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// Limits of a machine's motion system. Index order is X, Y, Z, E.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MachineLimits {
    /// Fastest each axis may move, mm/s.
    pub max_feedrate_mm_s: [f64; 4],
    /// Highest acceleration each axis takes, mm/s².
    pub max_acceleration_mm_s2: [f64; 4],
    /// Acceleration of extruding (or cutting) moves, mm/s² (`M204 P`).
    pub acceleration_print: f64,
    /// Acceleration of extruder-only moves, mm/s² (`M204 R`).
    pub acceleration_retract: f64,
    /// Acceleration of travel moves, mm/s² (`M204 T`).
    pub acceleration_travel: f64,
    /// Largest instantaneous speed change per axis, mm/s (`M205`).
    pub max_jerk_mm_s: [f64; 4],
}

impl Default for MachineLimits {
    /// Limits of a typical Marlin bed-slinger (Prusa MK3-class defaults).
    fn default() -> Self {
        Self {
            max_feedrate_mm_s: [200.0, 200.0, 12.0, 120.0],
            max_acceleration_mm_s2: [1000.0, 1000.0, 200.0, 5000.0],
            acceleration_print: 1250.0,
            acceleration_retract: 1250.0,
            acceleration_travel: 1250.0,
            max_jerk_mm_s: [8.0, 8.0, 0.4, 1.5],
        }
    }
}

/// What a move does, for choosing its acceleration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MoveKind {
    /// Extruding or cutting.
    Print,
    /// Extruder only (retract, prime).
    Retract,
    /// Moving without working.
    Travel,
}

const MIN_SPEED: f64 = 0.05;
/// Blocks kept for look-ahead; Marlin's planner holds 16, more does not
/// change the result measurably.
const WINDOW: usize = 24;

#[derive(Debug, Clone, Copy)]
struct Block {
    distance: f64,
    nominal: f64,
    accel: f64,
    /// Highest entry speed the junction allows.
    max_entry: f64,
    /// Entry speed allowed by the backward pass alone.
    bwd: f64,
    entry: f64,
    /// Speed at which the block may start or end from standstill.
    safe: f64,
}

/// The planner; feed moves with [`Planner::add_move`], read the total with
/// [`Planner::finish`].
#[derive(Debug, Clone)]
pub struct Planner {
    limits: MachineLimits,
    blocks: VecDeque<Block>,
    /// Unit velocity of the previous move per axis, times its nominal speed.
    prev_speed: [f64; 4],
    prev_nominal: f64,
    prev_safe: f64,
    seconds: f64,
}

impl Planner {
    /// A planner with `limits`.
    pub fn new(limits: MachineLimits) -> Self {
        Self {
            limits,
            blocks: VecDeque::with_capacity(WINDOW + 1),
            prev_speed: [0.0; 4],
            prev_nominal: 0.0,
            prev_safe: 0.0,
            seconds: 0.0,
        }
    }

    /// The limits in use.
    pub fn limits(&self) -> &MachineLimits {
        &self.limits
    }

    /// Changes limits from here on (as `M201`/`M203`/`M204`/`M205` do).
    pub fn limits_mut(&mut self) -> &mut MachineLimits {
        &mut self.limits
    }

    /// Adds time that is not motion (dwell), after the moves so far stop.
    pub fn add_pause(&mut self, seconds: f64) {
        self.flush();
        if seconds.is_finite() && seconds > 0.0 {
            self.seconds += seconds;
        }
    }

    /// Plans a move of `delta` mm (X, Y, Z, E) at `feed` mm/s.
    pub fn add_move(&mut self, delta: [f64; 4], feed: f64, kind: MoveKind) {
        let xyz = (delta[0] * delta[0] + delta[1] * delta[1] + delta[2] * delta[2]).sqrt();
        let distance = if xyz > 1e-6 { xyz } else { delta[3].abs() };
        if distance < 1e-6 || !distance.is_finite() {
            return;
        }
        let l = &self.limits;
        let mut unit = [0.0; 4];
        let mut nominal = feed.max(MIN_SPEED);
        let mut accel = match kind {
            MoveKind::Print => l.acceleration_print,
            MoveKind::Retract => l.acceleration_retract,
            MoveKind::Travel => l.acceleration_travel,
        };
        for i in 0..4 {
            unit[i] = delta[i] / distance;
            let u = unit[i].abs();
            if u > 1e-9 {
                if l.max_feedrate_mm_s[i] > 0.0 {
                    nominal = nominal.min(l.max_feedrate_mm_s[i] / u);
                }
                if l.max_acceleration_mm_s2[i] > 0.0 {
                    accel = accel.min(l.max_acceleration_mm_s2[i] / u);
                }
            }
        }
        let accel = accel.max(1.0);
        let speed: [f64; 4] = std::array::from_fn(|i| unit[i] * nominal);
        // Speed this move may start or stop at without a junction partner.
        let mut safe = nominal;
        for (v, jerk) in speed.iter().zip(l.max_jerk_mm_s) {
            let s = v.abs();
            if s > jerk && s > 0.0 {
                safe = safe.min(nominal * jerk / s);
            }
        }
        let max_entry = if self.blocks.is_empty() && self.prev_nominal <= 0.0 {
            safe
        } else {
            self.junction(&speed, nominal, safe)
        };
        self.prev_speed = speed;
        self.prev_nominal = nominal;
        self.prev_safe = safe;
        self.blocks.push_back(Block {
            distance,
            nominal,
            accel,
            max_entry,
            bwd: f64::NAN,
            entry: max_entry,
            safe,
        });
        self.replan();
        while self.blocks.len() > WINDOW {
            self.retire_front();
        }
    }

    /// Marlin's classic-jerk junction speed between the previous move and
    /// one with per-axis `speed`.
    fn junction(&self, speed: &[f64; 4], nominal: f64, safe: f64) -> f64 {
        let (vmax, prev_scale, cur_scale) = if nominal < self.prev_nominal {
            (nominal, nominal / self.prev_nominal, 1.0)
        } else {
            (self.prev_nominal, 1.0, self.prev_nominal / nominal)
        };
        let mut factor = 1.0_f64;
        for (i, &cur) in speed.iter().enumerate() {
            let v_exit = self.prev_speed[i] * prev_scale * factor;
            let v_entry = cur * cur_scale * factor;
            let jerk = if v_exit > v_entry {
                if v_entry > 0.0 || v_exit < 0.0 {
                    v_exit - v_entry
                } else {
                    v_exit.max(-v_entry)
                }
            } else if v_entry < 0.0 || v_exit > 0.0 {
                v_entry - v_exit
            } else {
                (-v_exit).max(v_entry)
            };
            let max = self.limits.max_jerk_mm_s[i];
            if jerk > max && jerk > 0.0 {
                factor *= max / jerk;
            }
        }
        let mut v = vmax * factor;
        let threshold = vmax * factor * 0.99;
        if self.prev_safe > threshold && safe > threshold {
            v = safe;
        }
        v.max(MIN_SPEED)
    }

    /// Backward then forward pass over the window. Each pass stops where
    /// nothing changes any more, so a new block costs O(1) amortised.
    fn replan(&mut self) {
        let n = self.blocks.len();
        if n == 0 {
            return;
        }
        // Backward: the last block must be able to stop (end at its safe
        // speed); every block must be able to slow to the next entry.
        let mut next_entry = self.blocks[n - 1].safe.min(self.blocks[n - 1].nominal);
        let mut first_changed = n - 1;
        for i in (0..n).rev() {
            let b = &mut self.blocks[i];
            let bwd = min_sqrt(
                b.max_entry.min(b.nominal),
                next_entry * next_entry + 2.0 * b.accel * b.distance,
            );
            if bwd == b.bwd && i + 1 < n {
                break;
            }
            b.bwd = bwd;
            first_changed = i;
            next_entry = bwd;
        }
        // Forward: no block can enter faster than the previous one can
        // accelerate to. Blocks before the first change keep their entry.
        let start = first_changed.max(1);
        if first_changed == 0 {
            self.blocks[0].entry = self.blocks[0].bwd;
        }
        for i in start..n {
            let prev = self.blocks[i - 1];
            let b = &mut self.blocks[i];
            b.entry = min_sqrt(
                b.bwd,
                prev.entry * prev.entry + 2.0 * prev.accel * prev.distance,
            );
        }
    }

    fn retire_front(&mut self) {
        let Some(b) = self.blocks.pop_front() else {
            return;
        };
        let exit = self
            .blocks
            .front()
            .map_or(b.safe.min(b.nominal), |n| n.entry);
        self.seconds += trapezoid_time(b.distance, b.entry, exit, b.nominal, b.accel);
    }

    fn flush(&mut self) {
        self.replan();
        while !self.blocks.is_empty() {
            self.retire_front();
        }
        // A pause stops the machine: the next move starts from rest.
        self.prev_nominal = 0.0;
        self.prev_speed = [0.0; 4];
        self.prev_safe = 0.0;
    }

    /// Seconds of everything added, the last move braking to a stop.
    pub fn finish(mut self) -> f64 {
        self.flush();
        self.seconds
    }

    /// Seconds so far (blocks still in the window not counted).
    pub fn seconds_so_far(&self) -> f64 {
        self.seconds
    }
}

/// `cap.min(x.sqrt())`, bit for bit, without the square root when `cap` is
/// certainly the smaller. Most look-ahead steps are capped by the junction
/// or cruise speed, not by acceleration, and the square root is the slow
/// part. The margin covers the rounding of `cap * cap`: when the test
/// passes, `cap² < x` exactly, so the rounded root cannot fall below `cap`.
fn min_sqrt(cap: f64, x: f64) -> f64 {
    if cap > 1e-100 && cap * cap * (1.0 + 1e-12) <= x {
        cap
    } else {
        cap.min(x.sqrt())
    }
}

/// Time to cover `d` mm starting at `v0`, ending at `v1`, cruising at most
/// at `v`, with acceleration `a`.
pub fn trapezoid_time(d: f64, v0: f64, v1: f64, v: f64, a: f64) -> f64 {
    let v0 = v0.min(v);
    let v1 = v1.min(v);
    let accel_d = (v * v - v0 * v0) / (2.0 * a);
    let decel_d = (v * v - v1 * v1) / (2.0 * a);
    if accel_d + decel_d <= d {
        (v - v0) / a + (v - v1) / a + (d - accel_d - decel_d) / v
    } else {
        // Triangle: never reaches cruise speed.
        let peak = ((2.0 * a * d + v0 * v0 + v1 * v1) / 2.0)
            .sqrt()
            .max(v0.max(v1));
        (peak - v0) / a + (peak - v1) / a
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> MachineLimits {
        MachineLimits {
            max_feedrate_mm_s: [500.0, 500.0, 12.0, 120.0],
            max_acceleration_mm_s2: [10_000.0, 10_000.0, 500.0, 10_000.0],
            acceleration_print: 1000.0,
            acceleration_retract: 1000.0,
            acceleration_travel: 1000.0,
            max_jerk_mm_s: [10.0, 10.0, 0.4, 2.5],
        }
    }

    #[test]
    fn a_long_move_takes_the_trapezoid_time() {
        let mut p = Planner::new(limits());
        p.add_move([100.0, 0.0, 0.0, 0.0], 50.0, MoveKind::Travel);
        // Starts and ends at the jerk speed 10 mm/s: accelerate 10→50 over
        // 1.2 mm in 0.04 s, twice, and cruise 97.6 mm at 50 mm/s.
        let want = 0.04 + 0.04 + 97.6 / 50.0;
        assert!((p.finish() - want).abs() < 1e-9);
    }

    #[test]
    fn a_short_move_is_a_triangle() {
        let t = trapezoid_time(1.0, 0.0, 0.0, 100.0, 1000.0);
        // Peak sqrt(a*d) = 31.6 mm/s, time 2*sqrt(d/a).
        assert!((t - 2.0 * (1.0_f64 / 1000.0).sqrt()).abs() < 1e-9);
    }

    #[test]
    fn a_right_angle_corner_is_slowed_by_jerk_but_a_straight_one_is_not() {
        let mut corner = Planner::new(limits());
        corner.add_move([50.0, 0.0, 0.0, 0.0], 100.0, MoveKind::Travel);
        corner.add_move([0.0, 50.0, 0.0, 0.0], 100.0, MoveKind::Travel);
        let mut straight = Planner::new(limits());
        straight.add_move([50.0, 0.0, 0.0, 0.0], 100.0, MoveKind::Travel);
        straight.add_move([50.0, 0.0, 0.0, 0.0], 100.0, MoveKind::Travel);
        let (c, s) = (corner.finish(), straight.finish());
        assert!(c > s + 0.05, "corner {c} vs straight {s}");
        // At the corner the X speed drops to 0 and Y rises from 0: each
        // axis may change by 10 mm/s, so the junction is 10 mm/s.
        let one = trapezoid_time(50.0, 10.0, 10.0, 100.0, 1000.0);
        assert!((c - 2.0 * one).abs() < 1e-9);
    }

    #[test]
    fn feed_is_limited_by_the_slowest_axis() {
        let mut p = Planner::new(limits());
        p.add_move([0.0, 0.0, 120.0, 0.0], 100.0, MoveKind::Travel);
        // Z is limited to 12 mm/s: about 10 s.
        let t = p.finish();
        assert!((t - 10.0).abs() < 0.1, "{t}");
    }

    proptest::proptest! {
        #[test]
        fn min_sqrt_is_bit_for_bit_the_plain_expression(
            cap in 0.0f64..1e6, ulps in -4i64..=4, x in 0.0f64..1e12
        ) {
            // Next to cap², where skipping the root could go wrong, and anywhere.
            let near = f64::from_bits((cap * cap).to_bits().saturating_add_signed(ulps));
            for x in [near, x] {
                proptest::prop_assert_eq!(
                    min_sqrt(cap, x).to_bits(),
                    cap.min(x.sqrt()).to_bits(),
                    "cap {} x {}", cap, x
                );
            }
        }
    }

    #[test]
    fn a_dwell_adds_its_time() {
        let mut p = Planner::new(limits());
        p.add_pause(2.5);
        assert_eq!(p.finish(), 2.5);
    }
}
