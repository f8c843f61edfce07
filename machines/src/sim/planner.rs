//! A motion planner queue that consumes time: the head block executes for
//! its duration, then the next one starts.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug)]
struct Block<T> {
    dur: Duration,
    data: T,
}

/// Both firmwares use a 16-entry ring buffer of which 15 entries hold
/// blocks (one stays empty to tell full from empty); `capacity` is the
/// usable count.
#[derive(Debug)]
pub(crate) struct Planner<T> {
    blocks: VecDeque<Block<T>>,
    head_start: Instant,
    cap: usize,
    held_since: Option<Instant>,
}

impl<T> Planner<T> {
    pub(crate) fn new(cap: usize, now: Instant) -> Self {
        Self {
            blocks: VecDeque::with_capacity(cap),
            head_start: now,
            cap,
            held_since: None,
        }
    }

    /// Completes every block whose time is over, calling `done` for each.
    pub(crate) fn advance(&mut self, now: Instant, mut done: impl FnMut(T)) {
        if self.held_since.is_some() {
            return;
        }
        while let Some(head) = self.blocks.front() {
            let end = self.head_start + head.dur;
            if end > now {
                break;
            }
            if let Some(b) = self.blocks.pop_front() {
                done(b.data);
            }
            self.head_start = end;
        }
    }

    pub(crate) fn push(&mut self, now: Instant, dur: Duration, data: T) {
        if self.blocks.is_empty() {
            self.head_start = now;
        }
        self.blocks.push_back(Block { dur, data });
    }

    pub(crate) fn free(&self) -> usize {
        self.cap.saturating_sub(self.blocks.len())
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    /// When the head block ends, unless motion is held.
    pub(crate) fn next_event(&self) -> Option<Instant> {
        if self.held_since.is_some() {
            return None;
        }
        self.blocks.front().map(|b| self.head_start + b.dur)
    }

    /// The executing block and how far through it motion is (0..=1).
    pub(crate) fn head(&self, now: Instant) -> Option<(&T, f64)> {
        let b = self.blocks.front()?;
        let at = self.held_since.unwrap_or(now);
        let done = at.saturating_duration_since(self.head_start).as_secs_f64();
        let total = b.dur.as_secs_f64();
        let f = if total > 0.0 {
            (done / total).min(1.0)
        } else {
            1.0
        };
        Some((&b.data, f))
    }

    pub(crate) fn hold(&mut self, now: Instant) {
        if self.held_since.is_none() {
            self.held_since = Some(now);
        }
    }

    pub(crate) fn resume(&mut self, now: Instant) {
        if let Some(t) = self.held_since.take() {
            self.head_start += now.saturating_duration_since(t);
        }
    }

    pub(crate) fn is_held(&self) -> bool {
        self.held_since.is_some()
    }

    pub(crate) fn clear(&mut self) {
        self.blocks.clear();
        self.held_since = None;
    }
}

/// Time for a straight move of `dist` mm at `v` mm/s with acceleration `a`
/// mm/s², starting and ending at rest (trapezoid or triangle profile).
pub(crate) fn move_time(dist: f64, v: f64, a: f64) -> f64 {
    if dist <= 0.0 || v <= 0.0 {
        return 0.0;
    }
    let a = a.max(1e-3);
    if dist >= v * v / a {
        dist / v + v / a
    } else {
        2.0 * (dist / a).sqrt()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_move_costs_cruise_time_plus_one_ramp() {
        let t = move_time(100.0, 10.0, 1000.0);
        assert!((t - 10.01).abs() < 1e-9);
    }

    #[test]
    fn a_short_move_is_a_triangle() {
        let t = move_time(1.0, 100.0, 100.0);
        assert!((t - 0.2).abs() < 1e-9);
    }
}
