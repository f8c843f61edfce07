//! The preamble that restarts a program part-way: the machine state the
//! skipped lines would have set up (temperatures, units, modes, Z height,
//! extruder position, fan, spindle), rebuilt by scanning them.
//!
//! It assumes what a restart after a power or link loss can assume: the
//! part is still on the bed and Z has not moved. So the tool first rises
//! clear of the part (a relative move, which needs no homing), X/Y are
//! homed (printers) and Z is set, never homed into the part; then the tool
//! travels above the part to where the skipped lines left it and only
//! there comes down to their Z, so it neither drags across the top layer
//! nor cuts its way to the restart point.
//!
//! A mill's X/Y/Z here are work coordinates, which GRBL keeps across a
//! soft reset and a reconnect but not across a power cycle of a machine
//! without homing: there the operator must zero the work again before a
//! restart, as with any sender.

use std::io::Read;
use std::path::Path;

use microfactory_machines::driver::Firmware;
use microfactory_protocol::block::{CodeLetter, parse_block};
use microfactory_protocol::framing::{LineSplitter, SplitItem, clean_line};

use crate::config::Machine;

#[derive(Debug, Default, Clone, PartialEq)]
struct Modal {
    inches: bool,
    relative: bool,
    relative_e: bool,
    hotend: Option<f32>,
    bed: Option<f32>,
    fan: Option<f32>,
    x: Option<f32>,
    y: Option<f32>,
    z: Option<f32>,
    e: f32,
    feed: Option<f32>,
    /// The feed of the last move in Z alone: how this program plunges.
    plunge_feed: Option<f32>,
    spindle: Option<(u32, f32)>,
}

impl Modal {
    fn axis(&self, now: Option<f32>, word: f32) -> f32 {
        if self.relative {
            now.unwrap_or(0.0) + word
        } else {
            word
        }
    }
}

/// How far the tool rises clear of the part before travelling, mm.
const LIFT_MM: f32 = 5.0;
/// Printer travel and Z feeds for the approach, mm/min.
const TRAVEL_MM_MIN: f32 = 3000.0;
const Z_MM_MIN: f32 = 600.0;
/// A mill's plunge feed when the program never plunged on its own, mm/min.
const PLUNGE_MM_MIN: f32 = 100.0;

impl Modal {
    fn apply(&mut self, line: &str, clean: &mut String) {
        if clean_line(line, usize::MAX, clean).is_err() {
            return;
        }
        let Ok(block) = parse_block(clean) else {
            return;
        };
        for c in block.commands() {
            let Some(code) = c.code else { continue };
            match (code.letter, code.major) {
                (CodeLetter::G, 20) => self.inches = true,
                (CodeLetter::G, 21) => self.inches = false,
                (CodeLetter::G, 90) => self.relative = false,
                (CodeLetter::G, 91) => self.relative = true,
                (CodeLetter::M, 82) => self.relative_e = false,
                (CodeLetter::M, 83) => self.relative_e = true,
                (CodeLetter::M, 104 | 109) => {
                    if let Some(s) = c.arg('S') {
                        self.hotend = Some(s);
                    }
                }
                (CodeLetter::M, 140 | 190) => {
                    if let Some(s) = c.arg('S') {
                        self.bed = Some(s);
                    }
                }
                (CodeLetter::M, 106) => self.fan = Some(c.arg('S').unwrap_or(255.0)),
                (CodeLetter::M, 107) => self.fan = None,
                (CodeLetter::M, 3 | 4) => {
                    let s = c.arg('S').or(self.spindle.map(|(_, s)| s)).unwrap_or(0.0);
                    self.spindle = Some((code.major, s));
                }
                (CodeLetter::M, 5) => self.spindle = None,
                (CodeLetter::G, 92) => {
                    if let Some(e) = c.arg('E') {
                        self.e = e;
                    }
                    if let Some(z) = c.arg('Z') {
                        self.z = Some(z);
                    }
                }
                (CodeLetter::G, 0..=3) => {
                    if let Some(f) = c.arg('F') {
                        self.feed = Some(f);
                    }
                    if let Some(x) = c.arg('X') {
                        self.x = Some(self.axis(self.x, x));
                    }
                    if let Some(y) = c.arg('Y') {
                        self.y = Some(self.axis(self.y, y));
                    }
                    if let Some(z) = c.arg('Z') {
                        self.z = Some(self.axis(self.z, z));
                        if code.major == 1 && !c.has('X') && !c.has('Y') {
                            self.plunge_feed = self.feed;
                        }
                    }
                    if let Some(e) = c.arg('E') {
                        self.e = if self.relative_e { self.e + e } else { e };
                    }
                }
                _ => {}
            }
        }
    }
}

/// Commands to send before line `start_line` of `path` on `machine`.
/// An unreadable file gives no preamble; the stream itself will then fail
/// with the read error, which is the error worth showing.
pub fn preamble(machine: &Machine, path: &Path, start_line: u64) -> Vec<String> {
    let mut modal = Modal::default();
    let mut clean = String::new();
    let Ok(mut f) = std::fs::File::open(path) else {
        return Vec::new();
    };
    let mut splitter = LineSplitter::new(usize::MAX / 2);
    let mut buf = vec![0u8; 64 * 1024];
    let mut done = false;
    while !done {
        let n = match f.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let _ = splitter.feed(&buf[..n], |item| -> Result<(), ()> {
            if let SplitItem::Line { number, text } = item {
                if number >= start_line {
                    done = true;
                    return Err(());
                }
                modal.apply(text, &mut clean);
            }
            Ok(())
        });
    }
    build(
        machine.profile.firmware,
        machine.profile.build_volume_mm[2] as f32,
        &modal,
    )
}

/// `height_mm` is the machine's Z travel: the lift never asks for more
/// than is left above the part, which a software endstop would cut short
/// without a word, leaving the declared Z wrong.
fn build(firmware: Firmware, height_mm: f32, m: &Modal) -> Vec<String> {
    let mut out = Vec::new();
    let units = if m.inches { "G20" } else { "G21" };
    // Lengths below are in the program's own units.
    let per_mm = if m.inches { 1.0 / 25.4 } else { 1.0 };
    let z_mm = m.z.unwrap_or(0.0) / per_mm;
    let lift_mm = LIFT_MM.min((height_mm - z_mm).max(0.0));
    let lift = round4(lift_mm * per_mm);
    let xy = match (m.x, m.y) {
        (Some(x), Some(y)) => format!("X{} Y{}", round4(x), round4(y)),
        (Some(x), None) => format!("X{}", round4(x)),
        (None, Some(y)) => format!("Y{}", round4(y)),
        (None, None) => String::new(),
    };
    match firmware {
        Firmware::Marlin => {
            if let Some(b) = m.bed {
                out.push(format!("M140 S{b}"));
            }
            if let Some(h) = m.hotend {
                out.push(format!("M104 S{h}"));
            }
            if let Some(b) = m.bed {
                out.push(format!("M190 S{b}"));
            }
            if let Some(h) = m.hotend {
                out.push(format!("M109 S{h}"));
            }
            if lift > 0.0 {
                out.push("G91".into());
                out.push(format!("G1 Z{lift} F{}", round4(Z_MM_MIN * per_mm)));
                out.push("G90".into());
            }
            // Axis letters need a value for some parsers; Marlin ignores it.
            out.push("G28 X0 Y0".into());
            out.push(units.into());
            out.push("G90".into());
            if let Some(z) = m.z {
                out.push(format!("G92 Z{}", round4(z + lift)));
                if !xy.is_empty() {
                    out.push(format!("G1 {xy} F{}", round4(TRAVEL_MM_MIN * per_mm)));
                }
                if lift > 0.0 {
                    out.push(format!("G1 Z{} F{}", round4(z), round4(Z_MM_MIN * per_mm)));
                }
            }
            out.push(if m.relative_e { "M83" } else { "M82" }.into());
            out.push(format!("G92 E{}", if m.relative_e { 0.0 } else { m.e }));
            match m.fan {
                Some(s) => out.push(format!("M106 S{s}")),
                None => out.push("M107".into()),
            }
        }
        Firmware::Grbl => {
            out.push(units.into());
            if lift > 0.0 {
                out.push("G91".into());
                out.push(format!("G0 Z{lift}"));
            }
            out.push("G90".into());
            if !xy.is_empty() {
                out.push(format!("G0 {xy}"));
            }
            if let Some((dir, s)) = m.spindle {
                out.push(format!("M{dir} S{s}"));
                // Let the spindle reach speed before cutting.
                out.push("G4 P2".into());
            }
            if let Some(z) = m.z
                && lift > 0.0
            {
                let plunge = m.plunge_feed.or(m.feed).unwrap_or(PLUNGE_MM_MIN * per_mm);
                out.push(format!("G1 Z{} F{}", round4(z), round4(plunge)));
            }
        }
    }
    if m.relative {
        out.push("G91".into());
    }
    if let Some(f) = m.feed {
        out.push(format!("G1 F{f}"));
    }
    out
}

/// Four decimals, without trailing zeros: what G-code programs write, and
/// never `f32` noise such as `0.19685039`.
fn round4(v: f32) -> f32 {
    (v * 10_000.0).round() / 10_000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(text: &str) -> Modal {
        let mut m = Modal::default();
        let mut clean = String::new();
        for l in text.lines() {
            m.apply(l, &mut clean);
        }
        m
    }

    #[test]
    fn a_print_restart_heats_lifts_homes_xy_then_comes_down_where_it_stopped() {
        let m = scan(
            "M140 S60\nM104 S215\nM109 S215\nG21\nG90\nM82\nG92 E0\nG1 Z0.2 F900\nG1 X10 Y10 E5.5 F1500\nM106 S128\nG1 Z0.4\nG1 X20 E7\n",
        );
        assert_eq!(
            build(Firmware::Marlin, 210.0, &m),
            vec![
                "M140 S60",
                "M104 S215",
                "M190 S60",
                "M109 S215",
                "G91",
                "G1 Z5 F600",
                "G90",
                "G28 X0 Y0",
                "G21",
                "G90",
                "G92 Z5.4",
                "G1 X20 Y10 F3000",
                "G1 Z0.4 F600",
                "M82",
                "G92 E7",
                "M106 S128",
                "G1 F1500",
            ]
        );
    }

    #[test]
    fn near_the_top_of_the_machine_the_lift_is_only_what_is_left() {
        let m = scan("G21\nG90\nG1 Z208 F600\nG1 X5 Y5\n");
        let p = build(Firmware::Marlin, 210.0, &m);
        assert!(p.iter().any(|l| l == "G1 Z2 F600"), "{p:?}");
        assert!(p.iter().any(|l| l == "G92 Z210"), "{p:?}");
        let m = scan("G21\nG90\nG1 Z210\n");
        let p = build(Firmware::Marlin, 210.0, &m);
        assert!(!p.iter().any(|l| l == "G91"), "no room, no lift: {p:?}");
        assert!(p.iter().any(|l| l == "G92 Z210"), "{p:?}");
    }

    #[test]
    fn relative_moves_are_added_up_to_the_restart_position() {
        let m = scan("G21\nG90\nG1 X10 Y10 Z1\nG91\nG1 X2.5 Y-1 Z0.5\nG1 X1\n");
        assert_eq!((m.x, m.y, m.z), (Some(13.5), Some(9.0), Some(1.5)));
    }

    #[test]
    fn a_mill_restart_rises_travels_starts_the_spindle_and_plunges_at_its_own_feed() {
        let m = scan("G20\nG90\nM3 S10000\nG0 X0.5 Y0.25\nG1 Z-0.01 F5\nG1 X1 F20\n");
        assert_eq!(
            build(Firmware::Grbl, 45.0, &m),
            vec![
                "G20",
                "G91",
                "G0 Z0.1969",
                "G90",
                "G0 X1 Y0.25",
                "M3 S10000",
                "G4 P2",
                "G1 Z-0.01 F5",
                "G1 F20",
            ]
        );
        let m = scan("G21\nM3 S1000\nM5\n");
        assert!(
            !build(Firmware::Grbl, 45.0, &m)
                .iter()
                .any(|l| l.starts_with("M3"))
        );
    }
}
