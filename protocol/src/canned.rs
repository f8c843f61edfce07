//! Canned drilling cycles and tool changes for firmware that lacks them.
//!
//! PCB CAM tools emit `G81`/`G82`/`G83` and `M6`, which GRBL 1.1 refuses
//! with `error:20`. [`CannedExpander`] is an explicit, streaming transform
//! that rewrites each cycle into the plain `G0`/`G1`/`G4` moves it stands
//! for, and each tool change into a pause point for the operator. Every
//! other line passes through cleaned of comments.
//!
//! Semantics (RS-274/LinuxCNC): the cycle is modal, so later lines with only
//! `X`/`Y` drill again, reusing the remembered `Z`, `R`, `P`, `Q` and `F`.
//! `G98` (the default) returns to the level the tool was at when the cycle
//! started, `G99` to `R`. `G80` or any other motion command ends the cycle.
//! Only absolute mode (`G90`) is supported; a cycle in `G91` is an error,
//! not a guess.
//!
//! After the cycle, GRBL's modal motion mode is whatever the expansion used
//! last (`G0`); source lines after `G80` carry their own motion code in
//! every CAM output we know, and a bare-axis line right after a cycle would
//! move at rapid rate; that is documented, not silently fixed.

use thiserror::Error;

use crate::block::{Code, CodeLetter, LineKind, parse_block};
use crate::framing::{DEFAULT_MAX_LINE, clean_line};

/// Why a line could not be transformed.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum ExpandError {
    /// The line is not valid G-code.
    #[error("line {line}: {reason}")]
    Invalid { line: u64, reason: String },
    /// A cycle in incremental mode.
    #[error("line {line}: canned cycles in incremental mode (G91) are not supported; use G90")]
    Incremental { line: u64 },
    /// A cycle lacks a value it needs.
    #[error("line {line}: the drilling cycle needs {what}")]
    Missing { line: u64, what: &'static str },
}

/// One item of transformed output.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// A line to send, with the source line it came from.
    Line { source_line: u64, text: String },
    /// Stop for the operator (tool change).
    Pause {
        source_line: u64,
        tool: Option<u32>,
        reason: String,
    },
}

#[derive(Debug, Clone, Copy)]
struct Cycle {
    kind: u32,
    z: f64,
    r: f64,
    p: f64,
    q: Option<f64>,
    f: Option<f64>,
    /// The level the tool was at when the cycle began (for G98).
    initial_z: f64,
}

/// The streaming transform. Feed lines in order with
/// [`CannedExpander::push_line`].
#[derive(Debug, Default)]
pub struct CannedExpander {
    inch: bool,
    incremental: bool,
    retract_to_r: bool,
    pos: [Option<f64>; 3],
    motion: Option<u32>,
    cycle: Option<Cycle>,
    last_f: Option<f64>,
    clean: String,
}

impl CannedExpander {
    /// A transform in the power-on state (mm, absolute, G98).
    pub fn new() -> Self {
        Self::default()
    }

    fn num(&self, v: f64) -> String {
        let s = if self.inch {
            format!("{v:.4}")
        } else {
            format!("{v:.3}")
        };
        let s = s.trim_end_matches('0').trim_end_matches('.').to_string();
        if s == "-0" || s.is_empty() {
            "0".into()
        } else {
            s
        }
    }

    /// Transforms one raw source line, appending to `out`.
    pub fn push_line(
        &mut self,
        line: u64,
        raw: &str,
        out: &mut Vec<Output>,
    ) -> Result<(), ExpandError> {
        let mut clean = std::mem::take(&mut self.clean);
        let r = self.push_inner(line, raw, &mut clean, out);
        self.clean = clean;
        r
    }

    fn push_inner(
        &mut self,
        line: u64,
        raw: &str,
        clean: &mut String,
        out: &mut Vec<Output>,
    ) -> Result<(), ExpandError> {
        let invalid = |reason: String| ExpandError::Invalid { line, reason };
        clean_line(raw, DEFAULT_MAX_LINE, clean).map_err(|e| invalid(e.to_string()))?;
        if clean.is_empty() {
            return Ok(());
        }
        let block = parse_block(clean).map_err(|e| invalid(e.to_string()))?;
        if !matches!(block.kind, LineKind::Words) {
            out.push(Output::Line {
                source_line: line,
                text: clean.clone(),
            });
            return Ok(());
        }
        // Modes first: they apply to the rest of the line.
        for c in block.codes() {
            match (c.letter, c.major, c.minor) {
                (CodeLetter::G, 20, 0) => self.inch = true,
                (CodeLetter::G, 21, 0) => self.inch = false,
                (CodeLetter::G, 90, 0) => self.incremental = false,
                (CodeLetter::G, 91, 0) => self.incremental = true,
                (CodeLetter::G, 98, 0) => self.retract_to_r = false,
                (CodeLetter::G, 99, 0) => self.retract_to_r = true,
                _ => {}
            }
        }
        if let Some(f) = block.arg('F') {
            self.last_f = Some(f64::from(f));
        }
        let tool_change = block.codes().any(|c| c == Code::m(6));
        let cycle_code = block
            .codes()
            .find(|c| c.letter == CodeLetter::G && matches!(c.major, 81..=83) && c.minor == 0);
        let motion_code = block
            .codes()
            .find(|c| c.letter == CodeLetter::G && matches!(c.major, 0..=3) && c.minor == 0);
        let cancels = block.has_code(Code::g(80)) || motion_code.is_some();

        if tool_change {
            let tool = block
                .codes()
                .find(|c| c.letter == CodeLetter::T)
                .map(|c| c.major);
            out.push(Output::Pause {
                source_line: line,
                tool,
                reason: match tool {
                    Some(t) => format!("tool change to T{t:02}"),
                    None => "tool change".into(),
                },
            });
            let rest: Vec<&str> = clean.split(' ').filter(|t| !is_m6_token(t)).collect();
            if !rest.is_empty() {
                out.push(Output::Line {
                    source_line: line,
                    text: rest.join(" "),
                });
            }
            return Ok(());
        }

        if let Some(code) = cycle_code {
            if self.incremental {
                return Err(ExpandError::Incremental { line });
            }
            let prev = self.cycle;
            let get = |l: char, p: Option<f64>| block.arg(l).map(f64::from).or(p);
            let z = get('Z', prev.map(|c| c.z)).ok_or(ExpandError::Missing {
                line,
                what: "a Z depth",
            })?;
            let r = get('R', prev.map(|c| c.r)).ok_or(ExpandError::Missing {
                line,
                what: "an R retract level",
            })?;
            let p = get('P', prev.map(|c| c.p)).unwrap_or(0.0);
            let q = get('Q', prev.and_then(|c| c.q));
            if code.major == 83 && !q.is_some_and(|q| q > 0.0) {
                return Err(ExpandError::Missing {
                    line,
                    what: "a positive Q peck depth",
                });
            }
            let initial_z = match prev {
                Some(c) => c.initial_z,
                None => self.pos[2].unwrap_or(r),
            };
            self.cycle = Some(Cycle {
                kind: code.major,
                z,
                r,
                p,
                q,
                f: self.last_f,
                initial_z,
            });
            return self.drill(line, &block, out);
        }

        if cancels {
            self.cycle = None;
        }
        if self.cycle.is_some()
            && motion_code.is_none()
            && (block.arg('X').is_some() || block.arg('Y').is_some())
        {
            // Modal repetition: another hole. Z/R/P/Q/F on the line update
            // the cycle.
            if let Some(c) = self.cycle.as_mut() {
                if let Some(z) = block.arg('Z') {
                    c.z = f64::from(z);
                }
                if let Some(r) = block.arg('R') {
                    c.r = f64::from(r);
                }
                if let Some(p) = block.arg('P') {
                    c.p = f64::from(p);
                }
                if let Some(q) = block.arg('Q') {
                    c.q = Some(f64::from(q));
                }
                c.f = self.last_f;
            }
            if self.incremental {
                return Err(ExpandError::Incremental { line });
            }
            return self.drill(line, &block, out);
        }

        // Pass through, tracking position for later cycles.
        if let Some(m) = motion_code {
            self.motion = Some(m.major);
        }
        let moves =
            motion_code.is_some() || (self.motion.is_some() && block.codes().next().is_none());
        if moves {
            for (i, l) in ['X', 'Y', 'Z'].into_iter().enumerate() {
                if let Some(v) = block.arg(l) {
                    let v = f64::from(v);
                    self.pos[i] = if self.incremental {
                        self.pos[i].map(|p| p + v)
                    } else {
                        Some(v)
                    };
                }
            }
        }
        if block
            .codes()
            .any(|c| c.letter == CodeLetter::G && matches!(c.major, 28 | 30) && c.minor == 0)
        {
            self.pos = [None; 3];
        }
        out.push(Output::Line {
            source_line: line,
            text: clean.clone(),
        });
        Ok(())
    }

    fn drill(
        &mut self,
        line: u64,
        block: &crate::block::Block<'_>,
        out: &mut Vec<Output>,
    ) -> Result<(), ExpandError> {
        let Some(c) = self.cycle else { return Ok(()) };
        let x = block.arg('X').map(f64::from).or(self.pos[0]);
        let y = block.arg('Y').map(f64::from).or(self.pos[1]);
        let f = c.f.ok_or(ExpandError::Missing {
            line,
            what: "a feed rate (F)",
        })?;
        let mut emit = |t: String| {
            out.push(Output::Line {
                source_line: line,
                text: t,
            })
        };
        let mut z_now = self.pos[2].unwrap_or(c.initial_z);
        if z_now < c.r {
            emit(format!("G0 Z{}", self.num(c.r)));
            z_now = c.r;
        }
        let mut xy = String::from("G0");
        if let Some(x) = x {
            xy.push_str(&format!(" X{}", self.num(x)));
        }
        if let Some(y) = y {
            xy.push_str(&format!(" Y{}", self.num(y)));
        }
        if xy.len() > 2 {
            emit(xy);
        }
        if (z_now - c.r).abs() > 1e-9 {
            emit(format!("G0 Z{}", self.num(c.r)));
        }
        match (c.kind, c.q) {
            (83, Some(q)) => {
                let clearance = if self.inch { 0.01 } else { 0.25 };
                let mut depth = c.r;
                let mut first = true;
                // Values finer than the output precision are noise from the
                // single-precision parser; don't peck for them.
                let eps = if self.inch { 0.00005 } else { 0.0005 };
                loop {
                    let mut target = (depth - q).max(c.z);
                    if target - c.z < eps {
                        target = c.z;
                    }
                    if !first {
                        emit(format!("G0 Z{}", self.num((depth + clearance).min(c.r))));
                    }
                    emit(format!("G1 Z{} F{}", self.num(target), self.num(f)));
                    if target <= c.z {
                        break;
                    }
                    emit(format!("G0 Z{}", self.num(c.r)));
                    depth = target;
                    first = false;
                }
            }
            _ => {
                emit(format!("G1 Z{} F{}", self.num(c.z), self.num(f)));
                if c.kind == 82 && c.p > 0.0 {
                    emit(format!("G4 P{}", self.num(c.p)));
                }
            }
        }
        let back = if self.retract_to_r {
            c.r
        } else {
            c.initial_z.max(c.r)
        };
        emit(format!("G0 Z{}", self.num(back)));
        self.pos = [x, y, Some(back)];
        self.motion = Some(0);
        Ok(())
    }
}

fn is_m6_token(t: &str) -> bool {
    let u = t.to_ascii_uppercase();
    u.strip_prefix('M')
        .is_some_and(|n| n.trim_start_matches('0') == "6")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preflight::{Dialect, check_program};
    use proptest::prelude::*;

    fn expand(lines: &[&str]) -> Vec<Output> {
        let mut e = CannedExpander::new();
        let mut out = Vec::new();
        for (i, l) in lines.iter().enumerate() {
            e.push_line(i as u64 + 1, l, &mut out).expect("expands");
        }
        out
    }

    fn texts(out: &[Output]) -> Vec<String> {
        out.iter()
            .filter_map(|o| match o {
                Output::Line { text, .. } => Some(text.clone()),
                Output::Pause { .. } => None,
            })
            .collect()
    }

    #[test]
    fn g81_becomes_rapid_feed_and_retract_moves() {
        let out = expand(&[
            "G21 G90",
            "G0 Z5",
            "G81 X10 Y20 Z-1.5 R1 F100",
            "X30",
            "G80",
        ]);
        assert_eq!(
            texts(&out),
            [
                "G21 G90",
                "G0 Z5",
                "G0 X10 Y20",
                "G0 Z1",
                "G1 Z-1.5 F100",
                "G0 Z5",
                "G0 X30 Y20",
                "G0 Z1",
                "G1 Z-1.5 F100",
                "G0 Z5",
                "G80"
            ]
        );
    }

    #[test]
    fn g82_dwells_and_g99_returns_to_r() {
        let out = expand(&["G20", "G0 Z0.25", "G99 G82 X1 Y1 Z-0.071 R0.05 P0.25 F20"]);
        assert_eq!(
            texts(&out),
            [
                "G20",
                "G0 Z0.25",
                "G0 X1 Y1",
                "G0 Z0.05",
                "G1 Z-0.071 F20",
                "G4 P0.25",
                "G0 Z0.05"
            ]
        );
    }

    #[test]
    fn g83_pecks_down_to_depth_and_never_below() {
        let out = expand(&["G21", "G0 Z10", "G83 X0 Y0 Z-2.5 R1 Q1 F50"]);
        assert_eq!(
            texts(&out),
            [
                "G21",
                "G0 Z10",
                "G0 X0 Y0",
                "G0 Z1",
                "G1 Z0 F50",
                "G0 Z1",
                "G0 Z0.25",
                "G1 Z-1 F50",
                "G0 Z1",
                "G0 Z-0.75",
                "G1 Z-2 F50",
                "G0 Z1",
                "G0 Z-1.75",
                "G1 Z-2.5 F50",
                "G0 Z10"
            ]
        );
    }

    #[test]
    fn tool_changes_become_pauses_and_keep_the_tool_word() {
        let out = expand(&["M06 T01", "T02 M6"]);
        assert_eq!(
            out,
            vec![
                Output::Pause {
                    source_line: 1,
                    tool: Some(1),
                    reason: "tool change to T01".into()
                },
                Output::Line {
                    source_line: 1,
                    text: "T01".into()
                },
                Output::Pause {
                    source_line: 2,
                    tool: Some(2),
                    reason: "tool change to T02".into()
                },
                Output::Line {
                    source_line: 2,
                    text: "T02".into()
                },
            ]
        );
    }

    #[test]
    fn incremental_cycles_are_refused_with_the_line() {
        let mut e = CannedExpander::new();
        let mut out = Vec::new();
        e.push_line(1, "G91", &mut out).expect("ok");
        assert_eq!(
            e.push_line(2, "G81 X1 Y1 Z-1 R1 F10", &mut out),
            Err(ExpandError::Incremental { line: 2 })
        );
    }

    #[test]
    fn the_real_cam_files_expand_into_programs_grbl_accepts() {
        for name in [
            "pcb_isolation_and_drill_inch.nc",
            "pcb_drill_toolchange_inch.nc",
        ] {
            let text = crate::testdata::read(name);
            let mut e = CannedExpander::new();
            let mut out = Vec::new();
            for (i, l) in text.lines().enumerate() {
                e.push_line(i as u64 + 1, l, &mut out).expect("expands");
            }
            let lines = texts(&out);
            let r = check_program(Dialect::Grbl11, lines.iter().map(String::as_str));
            assert_eq!(
                r.rejected_count,
                0,
                "{name}: {:?}",
                &r.findings[..r.findings.len().min(3)]
            );
            let pauses = out
                .iter()
                .filter(|o| matches!(o, Output::Pause { .. }))
                .count();
            let m6 = text.lines().filter(|l| l.contains("M06")).count();
            assert_eq!(pauses, m6, "{name}");
        }
    }

    /// Walks G0/G1/G4 lines and records where the tool went.
    struct Walk {
        z: f64,
        bottoms: Vec<(f64, f64)>,
        min_z: f64,
        dwell: f64,
    }

    fn walk(lines: &[String], start_z: f64, depth: f64) -> Walk {
        let (mut x, mut y, mut z) = (0.0, 0.0, start_z);
        let mut w = Walk {
            z,
            bottoms: vec![],
            min_z: f64::MAX,
            dwell: 0.0,
        };
        for l in lines {
            let b = parse_block(l).expect("own output parses");
            if b.has_code(Code::g(4)) {
                w.dwell += f64::from(b.arg('P').unwrap_or(0.0));
                continue;
            }
            if let Some(v) = b.arg('X') {
                x = f64::from(v);
            }
            if let Some(v) = b.arg('Y') {
                y = f64::from(v);
            }
            if let Some(v) = b.arg('Z') {
                z = f64::from(v);
                w.min_z = w.min_z.min(z);
                if (z - depth).abs() < 1e-3 {
                    w.bottoms.push((x, y));
                }
            }
        }
        w.z = z;
        w
    }

    proptest! {
        #[test]
        fn expanded_cycles_visit_every_hole_at_full_depth(
            holes in proptest::collection::vec((-50i32..50, -50i32..50), 1..8),
            kind in prop_oneof![Just(81u32), Just(82), Just(83)],
            depth in 1u32..30,
            r in 1u32..10,
            peck in 1u32..20,
            dwell in 0u32..5,
            g99 in any::<bool>(),
        ) {
            let z = -(depth as f64) / 10.0;
            let r = r as f64 / 2.0;
            let q = peck as f64 / 10.0;
            let p = dwell as f64 / 4.0;
            let mut src = vec!["G21 G90".to_string(), "G0 Z8".to_string()];
            src.push(format!(
                "{} G{kind} X{} Y{} Z{z} R{r} P{p} Q{q} F100",
                if g99 { "G99" } else { "G98" }, holes[0].0, holes[0].1
            ));
            for h in &holes[1..] {
                src.push(format!("X{} Y{}", h.0, h.1));
            }
            src.push("G80".into());
            let refs: Vec<&str> = src.iter().map(String::as_str).collect();
            let lines = texts(&expand(&refs));
            let w = walk(&lines, 8.0, z);
            let expected: Vec<(f64, f64)> = holes.iter().map(|h| (h.0 as f64, h.1 as f64)).collect();
            prop_assert_eq!(w.bottoms, expected);
            prop_assert!(w.min_z >= z - 1e-6);
            let end_z = if g99 { r } else { 8.0 };
            prop_assert!((w.z - end_z).abs() < 1e-6);
            let want_dwell = if kind == 82 { p * holes.len() as f64 } else { 0.0 };
            prop_assert!((w.dwell - want_dwell).abs() < 1e-6);
        }

        #[test]
        fn arbitrary_lines_never_panic(lines in proptest::collection::vec("\\PC{0,60}", 0..20)) {
            let mut e = CannedExpander::new();
            let mut out = Vec::new();
            for (i, l) in lines.iter().enumerate() {
                let _ = e.push_line(i as u64 + 1, l, &mut out);
            }
        }
    }
}
