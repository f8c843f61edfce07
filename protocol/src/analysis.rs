//! Streaming analysis of a G-code program: what it makes, how big, how
//! long, with how much filament, and for which kind of machine.
//!
//! The analyser is fed bytes in chunks of any size and never holds more
//! than one line, so a file of any size costs the same memory. Every line
//! goes through [`crate::framing`] and [`crate::block`]; a line that is not
//! G-code stops the analysis with its number and the reason, rather than
//! being skipped.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::block::{Code, CodeLetter, LineKind, MotionWords, parse_block};
use crate::fastpath::parse_move;
use crate::framing::{DEFAULT_MAX_LINE, LineSplitter, MAX_RAW_LINE, SplitItem, clean_line};
use crate::kinematics::{MachineLimits, MoveKind, Planner};
use crate::slicer::{SlicerInfo, SlicerScanner};

/// How to analyse.
#[derive(Debug, Clone, Default)]
pub struct AnalyzerConfig {
    /// Machine limits for the estimate; `None` uses defaults (and any
    /// `M201`/`M203`/`M204`/`M205` in the program).
    pub limits: Option<MachineLimits>,
    /// Longest raw line accepted, comments included; 0 means
    /// [`MAX_RAW_LINE`]. Commands are not limited here: an overlong one is
    /// a pre-flight finding of the dialect that refuses it, with its line
    /// number, not a reason to refuse the whole file.
    pub max_line: usize,
}

/// Why a program could not be analysed.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum AnalysisError {
    /// A line is not G-code.
    #[error("line {line}: {reason}")]
    BadLine { line: u64, reason: String },
    /// Nothing in the file.
    #[error("the file is empty")]
    Empty,
    /// No commands at all, only comments or blank lines.
    #[error("the file has no G-code commands ({lines} lines of comments or blanks)")]
    NoCommands { lines: u64 },
}

/// An axis-aligned box, mm.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Bounds {
    /// Lowest X, Y, Z.
    pub min: [f64; 3],
    /// Highest X, Y, Z.
    pub max: [f64; 3],
}

impl Bounds {
    fn include(b: &mut Option<Bounds>, p: [f64; 3]) {
        match b {
            None => *b = Some(Bounds { min: p, max: p }),
            Some(b) => {
                for (i, v) in p.into_iter().enumerate() {
                    b.min[i] = b.min[i].min(v);
                    b.max[i] = b.max[i].max(v);
                }
            }
        }
    }

    /// Width, depth and height.
    pub fn size(&self) -> [f64; 3] {
        std::array::from_fn(|i| self.max[i] - self.min[i])
    }
}

/// The result of an analysis. Lengths in mm, times in seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Analysis {
    /// Physical lines.
    pub lines: u64,
    /// Lines with a command.
    pub commands: u64,
    /// Estimated duration from the motion planner.
    pub estimated_seconds: f64,
    /// Filament pushed through the nozzle.
    pub filament_mm: f64,
    /// Layers (slicer markers, or Z levels of extruding moves).
    pub layers: u64,
    /// Box of extruding or cutting moves.
    pub bounds_mm: Option<Bounds>,
    /// Box of all moves.
    pub travel_bounds_mm: Option<Bounds>,
    /// The slicer's own estimate, if the file carries one.
    pub slicer_estimated_seconds: Option<f64>,
    /// Slicer or CAM metadata.
    pub slicer: Option<SlicerInfo>,
    /// The program extrudes: it is for a printer.
    pub uses_extrusion: bool,
    /// The program turns a spindle on: it is for a mill.
    pub uses_spindle: bool,
    /// The program works in inches (`G20`).
    pub inch_units: bool,
    /// Tool changes (`M6`, or `T` changes when there is no `M6`).
    pub tool_changes: u64,
    /// Time spent in dwells (`G4`).
    pub dwell_seconds: f64,
    /// Time the spindle is on (from the estimate).
    pub spindle_on_seconds: f64,
    /// Highest feed rate requested, mm/min.
    pub max_feed_mm_min: f64,
    /// Distinct codes used, sorted (`G1`, `M104`, ...).
    pub codes: Vec<String>,
    /// Where each Z level of extruding moves begins: its source line and
    /// its Z, mm. A print's layer and height follow from the last line
    /// the printer acknowledged (records from before it was kept have
    /// none).
    #[serde(default)]
    pub layer_starts: Vec<LayerStart>,
}

/// The first line of a layer and its height.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LayerStart {
    /// Source line (1-based) of the layer's first extruding move.
    pub line: u64,
    /// Its Z, mm.
    pub z: f64,
}

/// The streaming analyser. Feed bytes with [`Analyzer::feed`], then call
/// [`Analyzer::finish`].
#[derive(Debug)]
pub struct Analyzer {
    splitter: LineSplitter,
    max_line: usize,
    state: State,
    clean: String,
    bytes: u64,
}

#[derive(Debug)]
struct State {
    lines: u64,
    commands: u64,
    planner: Planner,
    pos: [f64; 4],
    scale: f64,
    inch: bool,
    abs_xyz: bool,
    abs_e: bool,
    feed_mm_s: f64,
    motion: u32,
    spindle_on: bool,
    /// Canned cycle depth and retract level, mm (modal).
    cycle_z: f64,
    cycle_r: f64,
    cycle_p: f64,
    spindle_since: f64,
    spindle_seconds: f64,
    filament: f64,
    bounds: Option<Bounds>,
    travel: Option<Bounds>,
    marker_layers: u64,
    z_layers: u64,
    last_layer_z: f64,
    layer_starts: Vec<LayerStart>,
    uses_extrusion: bool,
    uses_spindle: bool,
    m6: u64,
    t_changes: u64,
    last_tool: Option<u32>,
    dwell: f64,
    max_feed: f64,
    codes: HashSet<Code>,
    /// `G0` and `G1` already in `codes`, so the fast path skips the hash.
    seen_g0_g1: [bool; 2],
    slicer: SlicerScanner,
}

impl Analyzer {
    /// A fresh analyser.
    pub fn new(config: AnalyzerConfig) -> Self {
        let max_line = if config.max_line == 0 {
            MAX_RAW_LINE
        } else {
            config.max_line
        };
        Self {
            splitter: LineSplitter::new(max_line),
            max_line,
            clean: String::with_capacity(max_line.min(DEFAULT_MAX_LINE)),
            bytes: 0,
            state: State {
                lines: 0,
                commands: 0,
                planner: Planner::new(config.limits.unwrap_or_default()),
                pos: [0.0; 4],
                scale: 1.0,
                inch: false,
                abs_xyz: true,
                abs_e: true,
                feed_mm_s: 25.0,
                motion: 0,
                spindle_on: false,
                cycle_z: 0.0,
                cycle_r: 0.0,
                cycle_p: 0.0,
                spindle_since: 0.0,
                spindle_seconds: 0.0,
                filament: 0.0,
                bounds: None,
                travel: None,
                marker_layers: 0,
                z_layers: 0,
                last_layer_z: f64::NEG_INFINITY,
                layer_starts: Vec::new(),
                uses_extrusion: false,
                uses_spindle: false,
                m6: 0,
                t_changes: 0,
                last_tool: None,
                dwell: 0.0,
                max_feed: 0.0,
                codes: HashSet::new(),
                seen_g0_g1: [false; 2],
                slicer: SlicerScanner::new(),
            },
        }
    }

    /// Feeds the next chunk of the file.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), AnalysisError> {
        self.bytes += chunk.len() as u64;
        let Self {
            splitter,
            state,
            clean,
            max_line,
            ..
        } = self;
        splitter.feed(chunk, |item| state.item(item, clean, *max_line))
    }

    /// Finishes the analysis.
    pub fn finish(mut self) -> Result<Analysis, AnalysisError> {
        let Self {
            splitter,
            state,
            clean,
            max_line,
            ..
        } = &mut self;
        splitter.finish(|item| state.item(item, clean, *max_line))?;
        if self.bytes == 0 {
            return Err(AnalysisError::Empty);
        }
        let s = self.state;
        if s.commands == 0 {
            return Err(AnalysisError::NoCommands { lines: s.lines });
        }
        let before_end = s.planner.seconds_so_far();
        let estimated = s.planner.finish();
        let mut spindle_seconds = s.spindle_seconds;
        if s.spindle_on {
            spindle_seconds += estimated - s.spindle_since.min(before_end);
        }
        let mut codes: Vec<String> = s.codes.iter().map(ToString::to_string).collect();
        codes.sort_by_key(|c| code_order(c));
        let slicer = s.slicer.finish();
        // Coordinates come from single-precision words; report them to the
        // micrometre so that 0.35 reads as 0.35.
        let round = |b: Option<Bounds>| {
            b.map(|b| Bounds {
                min: b.min.map(|v| (v * 1000.0).round() / 1000.0),
                max: b.max.map(|v| (v * 1000.0).round() / 1000.0),
            })
        };
        Ok(Analysis {
            lines: s.lines,
            commands: s.commands,
            estimated_seconds: estimated,
            filament_mm: s.filament,
            layers: if s.marker_layers > 0 {
                s.marker_layers
            } else {
                s.z_layers
            },
            bounds_mm: round(s.bounds),
            travel_bounds_mm: round(s.travel),
            slicer_estimated_seconds: slicer.as_ref().and_then(|i| i.estimated_seconds),
            slicer,
            uses_extrusion: s.uses_extrusion,
            uses_spindle: s.uses_spindle,
            inch_units: s.inch,
            tool_changes: if s.m6 > 0 { s.m6 } else { s.t_changes },
            dwell_seconds: s.dwell,
            spindle_on_seconds: spindle_seconds,
            max_feed_mm_min: s.max_feed,
            codes,
            layer_starts: s.layer_starts,
        })
    }
}

fn code_order(c: &str) -> (u8, u32, String) {
    let letter = c.as_bytes().first().copied().unwrap_or(b'Z');
    let num = c[1..]
        .split('.')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    (letter, num, c.to_string())
}

/// Analyses a whole program held in memory (tests, small uploads).
pub fn analyze_bytes(bytes: &[u8], config: AnalyzerConfig) -> Result<Analysis, AnalysisError> {
    let mut a = Analyzer::new(config);
    a.feed(bytes)?;
    a.finish()
}

impl State {
    fn item(
        &mut self,
        item: SplitItem<'_>,
        clean: &mut String,
        max_line: usize,
    ) -> Result<(), AnalysisError> {
        match item {
            SplitItem::Bad { number, error } => Err(AnalysisError::BadLine {
                line: number,
                reason: error.to_string(),
            }),
            SplitItem::Line { number, text } => {
                self.lines = number;
                self.line(number, text, clean, max_line)
            }
        }
    }

    fn line(
        &mut self,
        number: u64,
        raw: &str,
        clean: &mut String,
        max_line: usize,
    ) -> Result<(), AnalysisError> {
        if let Some(m) = parse_move(raw, max_line) {
            if let Some(c) = m.comment {
                self.comment(c);
            }
            self.commands += 1;
            let motion = usize::from(m.motion);
            if !self.seen_g0_g1[motion] {
                self.seen_g0_g1[motion] = true;
                self.codes.insert(Code::g(u32::from(m.motion)));
            }
            self.motion = u32::from(m.motion);
            self.motion_words(&m.words);
            return Ok(());
        }
        let bad = |reason: String| AnalysisError::BadLine {
            line: number,
            reason,
        };
        let comment = clean_line(raw, max_line, clean).map_err(|e| bad(e.to_string()))?;
        if let Some(c) = comment {
            self.comment(c);
        }
        if clean.is_empty() {
            return Ok(());
        }
        let block = parse_block(clean).map_err(|e| bad(e.to_string()))?;
        self.commands += 1;
        if !matches!(block.kind, LineKind::Words | LineKind::Text { .. }) {
            return Ok(());
        }
        let mut moved = false;
        for cmd in block.commands() {
            if let Some(code) = cmd.code
                && !self.codes.contains(&code)
            {
                self.codes.insert(code);
            }
            match cmd.code {
                Some(c) if c.letter == CodeLetter::G => match (c.major, c.minor) {
                    (0..=3, 0) => {
                        self.motion = c.major;
                        self.motion_words(&MotionWords::of(&cmd));
                        moved = true;
                    }
                    (81..=83, 0) => {
                        self.motion = c.major;
                        self.drill(&cmd);
                        moved = true;
                    }
                    (80, 0) => self.motion = 0,
                    (4, 0) => {
                        // Marlin: P ms, S s. GRBL/LinuxCNC (mills): P s.
                        let secs = match (cmd.arg('S'), cmd.arg('P')) {
                            (Some(s), _) => f64::from(s),
                            (None, Some(p))
                                if self.uses_extrusion || !self.uses_spindle && !self.inch =>
                            {
                                f64::from(p) / 1000.0
                            }
                            (None, Some(p)) => f64::from(p),
                            (None, None) => 0.0,
                        };
                        if secs > 0.0 {
                            self.dwell += secs;
                            self.planner.add_pause(secs);
                        }
                    }
                    (20, 0) => {
                        self.scale = 25.4;
                        self.inch = true;
                    }
                    (21, 0) => self.scale = 1.0,
                    (28, 0) => {
                        let any = ['X', 'Y', 'Z'].iter().any(|&l| cmd.has(l));
                        for (i, l) in ['X', 'Y', 'Z'].into_iter().enumerate() {
                            if !any || cmd.has(l) {
                                self.pos[i] = 0.0;
                            }
                        }
                    }
                    (90, 0) => {
                        self.abs_xyz = true;
                        self.abs_e = true;
                    }
                    (91, 0) => {
                        self.abs_xyz = false;
                        self.abs_e = false;
                    }
                    (92, 0) => {
                        for (i, l) in ['X', 'Y', 'Z', 'E'].into_iter().enumerate() {
                            if let Some(v) = cmd.arg(l) {
                                let s = if i == 3 { 1.0 } else { self.scale };
                                self.pos[i] = f64::from(v) * s;
                            }
                        }
                    }
                    _ => {}
                },
                Some(c) if c.letter == CodeLetter::M => self.m_code(c, &cmd),
                Some(c) => {
                    if self.last_tool.is_some_and(|t| t != c.major) {
                        self.t_changes += 1;
                    }
                    self.last_tool = Some(c.major);
                }
                None => {
                    if !moved {
                        if matches!(self.motion, 81..=83) {
                            self.drill(&cmd);
                        } else {
                            self.motion_words(&MotionWords::of(&cmd));
                        }
                        moved = true;
                    }
                }
            }
        }
        Ok(())
    }

    fn m_code(&mut self, c: Code, cmd: &crate::block::Command<'_>) {
        match c.major {
            82 => self.abs_e = true,
            83 => self.abs_e = false,
            3 | 4 => {
                self.uses_spindle = true;
                if !self.spindle_on {
                    self.spindle_on = true;
                    self.spindle_since = self.planner.seconds_so_far();
                }
            }
            5 if self.spindle_on => {
                self.spindle_on = false;
                self.spindle_seconds += self.planner.seconds_so_far() - self.spindle_since;
            }
            6 => self.m6 += 1,
            201 | 203 | 204 | 205 => {
                let l = self.planner.limits_mut();
                let axes = ['X', 'Y', 'Z', 'E'];
                for (i, a) in axes.into_iter().enumerate() {
                    if let Some(v) = cmd.arg(a) {
                        let v = f64::from(v);
                        match c.major {
                            201 => l.max_acceleration_mm_s2[i] = v,
                            203 => l.max_feedrate_mm_s[i] = v,
                            205 => l.max_jerk_mm_s[i] = v,
                            _ => {}
                        }
                    }
                }
                if c.major == 204 {
                    if let Some(s) = cmd.arg('S') {
                        l.acceleration_print = f64::from(s);
                        l.acceleration_travel = f64::from(s);
                    }
                    if let Some(p) = cmd.arg('P') {
                        l.acceleration_print = f64::from(p);
                    }
                    if let Some(r) = cmd.arg('R') {
                        l.acceleration_retract = f64::from(r);
                    }
                    if let Some(t) = cmd.arg('T') {
                        l.acceleration_travel = f64::from(t);
                    }
                }
            }
            _ => {}
        }
    }

    fn motion_words(&mut self, w: &MotionWords) {
        if let Some(f) = w.f {
            let f = f64::from(f) * self.scale;
            if f > 0.0 {
                self.feed_mm_s = f / 60.0;
                self.max_feed = self.max_feed.max(f);
            }
        }
        let mut target = self.pos;
        let mut any = false;
        for (i, v) in [w.x, w.y, w.z].into_iter().enumerate() {
            if let Some(v) = v {
                let v = f64::from(v) * self.scale;
                target[i] = if self.abs_xyz { v } else { self.pos[i] + v };
                any = true;
            }
        }
        if let Some(e) = w.e {
            let e = f64::from(e);
            target[3] = if self.abs_e { e } else { self.pos[3] + e };
            any = true;
        }
        if !any {
            return;
        }
        let mut delta: [f64; 4] = std::array::from_fn(|i| target[i] - self.pos[i]);
        let xyz_moves = delta[..3].iter().any(|d| d.abs() > 1e-9);
        let extruding = delta[3] > 1e-9 && xyz_moves;
        if delta[3] > 1e-9 {
            self.uses_extrusion = true;
            self.filament += delta[3];
        } else if delta[3] < -1e-9 {
            self.filament += delta[3];
        }
        if matches!(self.motion, 2 | 3) && xyz_moves {
            // Arc: use its length (centre I/J relative to the start).
            let (i, j) = (
                w.i.map_or(0.0, |v| f64::from(v) * self.scale),
                w.j.map_or(0.0, |v| f64::from(v) * self.scale),
            );
            let r = (i * i + j * j).sqrt();
            if r > 1e-9 {
                let a0 = (-j).atan2(-i);
                let (cx, cy) = (self.pos[0] + i, self.pos[1] + j);
                let a1 = (target[1] - cy).atan2(target[0] - cx);
                let mut sweep = a1 - a0;
                if self.motion == 2 && sweep >= 0.0 {
                    sweep -= std::f64::consts::TAU;
                } else if self.motion == 3 && sweep <= 0.0 {
                    sweep += std::f64::consts::TAU;
                }
                let len = (sweep.abs() * r).hypot(delta[2]);
                let chord =
                    (delta[0] * delta[0] + delta[1] * delta[1] + delta[2] * delta[2]).sqrt();
                if chord > 1e-9 {
                    let k = len / chord;
                    for d in delta.iter_mut().take(3) {
                        *d *= k;
                    }
                }
            }
        }
        let cutting = self.spindle_on && self.motion != 0;
        let kind = if extruding || cutting {
            MoveKind::Print
        } else if !xyz_moves {
            MoveKind::Retract
        } else {
            MoveKind::Travel
        };
        let feed = if self.motion == 0 && !self.uses_extrusion {
            // Mills: G0 runs at the machine's maximum rate.
            f64::MAX
        } else {
            self.feed_mm_s
        };
        self.planner.add_move(delta, feed, kind);
        let p3 = [target[0], target[1], target[2]];
        if xyz_moves || self.travel.is_none() {
            Bounds::include(&mut self.travel, p3);
        }
        if extruding || (cutting && xyz_moves) {
            Bounds::include(&mut self.bounds, [self.pos[0], self.pos[1], self.pos[2]]);
            Bounds::include(&mut self.bounds, p3);
        }
        if extruding && target[2] > self.last_layer_z + 1e-6 {
            self.z_layers += 1;
            self.last_layer_z = target[2];
            self.layer_starts.push(LayerStart {
                line: self.lines,
                z: (target[2] * 1000.0).round() / 1000.0,
            });
        }
        self.pos = target;
    }

    /// A canned drilling cycle hole (`G81`–`G83`, or a modal repeat):
    /// rapid to X/Y and to R, feed to Z, dwell, rapid back to R.
    fn drill(&mut self, cmd: &crate::block::Command<'_>) {
        if let Some(z) = cmd.arg('Z') {
            self.cycle_z = f64::from(z) * self.scale;
        }
        if let Some(r) = cmd.arg('R') {
            self.cycle_r = f64::from(r) * self.scale;
        }
        if let Some(p) = cmd.arg('P') {
            self.cycle_p = f64::from(p);
        }
        if let Some(f) = cmd.arg('F') {
            let f = f64::from(f) * self.scale;
            if f > 0.0 {
                self.feed_mm_s = f / 60.0;
                self.max_feed = self.max_feed.max(f);
            }
        }
        let x = cmd
            .arg('X')
            .map_or(self.pos[0], |v| f64::from(v) * self.scale);
        let y = cmd
            .arg('Y')
            .map_or(self.pos[1], |v| f64::from(v) * self.scale);
        let (z, r) = (self.cycle_z, self.cycle_r);
        let start_z = self.pos[2].max(r);
        self.planner.add_move(
            [x - self.pos[0], y - self.pos[1], start_z - self.pos[2], 0.0],
            f64::MAX,
            MoveKind::Travel,
        );
        self.planner
            .add_move([0.0, 0.0, r - start_z, 0.0], f64::MAX, MoveKind::Travel);
        self.planner
            .add_move([0.0, 0.0, z - r, 0.0], self.feed_mm_s, MoveKind::Print);
        if self.motion == 82 && self.cycle_p > 0.0 {
            self.dwell += self.cycle_p;
            self.planner.add_pause(self.cycle_p);
        }
        self.planner
            .add_move([0.0, 0.0, start_z - z, 0.0], f64::MAX, MoveKind::Travel);
        Bounds::include(&mut self.travel, [x, y, start_z]);
        Bounds::include(&mut self.travel, [x, y, z]);
        Bounds::include(&mut self.bounds, [x, y, r.min(start_z)]);
        Bounds::include(&mut self.bounds, [x, y, z]);
        self.pos = [x, y, start_z, self.pos[3]];
    }

    fn comment(&mut self, c: &str) {
        if c == "LAYER_CHANGE" || c.starts_with("LAYER:") {
            self.marker_layers += 1;
        }
        self.slicer.comment(c);
    }
}

#[cfg(test)]
mod tests;
