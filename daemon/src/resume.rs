//! The preamble that restarts a program part-way: the machine state the
//! skipped lines would have set up (temperatures, units, modes, Z height,
//! extruder position, fan, spindle), rebuilt by scanning them.
//!
//! It assumes what a restart after a power or link loss can assume: the
//! part is still on the bed and Z has not moved, so X/Y are homed and Z is
//! set, never homed into the part.

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
    z: Option<f32>,
    e: f32,
    feed: Option<f32>,
    spindle: Option<(u32, f32)>,
}

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
                    if let Some(z) = c.arg('Z') {
                        self.z = Some(if self.relative {
                            self.z.unwrap_or(0.0) + z
                        } else {
                            z
                        });
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
    build(machine.profile.firmware, &modal)
}

fn build(firmware: Firmware, m: &Modal) -> Vec<String> {
    let mut out = Vec::new();
    let units = if m.inches { "G20" } else { "G21" };
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
            // Axis letters need a value for some parsers; Marlin ignores it.
            out.push("G28 X0 Y0".into());
            out.push(units.into());
            out.push("G90".into());
            if let Some(z) = m.z {
                out.push(format!("G92 Z{z}"));
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
            out.push("G90".into());
            if let Some((dir, s)) = m.spindle {
                out.push(format!("M{dir} S{s}"));
                // Let the spindle reach speed before cutting.
                out.push("G4 P2".into());
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
    fn a_print_restart_heats_homes_xy_and_sets_z_and_e_without_homing_z() {
        let m = scan(
            "M140 S60\nM104 S215\nM109 S215\nG21\nG90\nM82\nG92 E0\nG1 Z0.2 F900\nG1 X10 Y10 E5.5 F1500\nM106 S128\nG1 Z0.4\nG1 X20 E7\n",
        );
        let p = build(Firmware::Marlin, &m);
        for want in [
            "M190 S60",
            "M109 S215",
            "G28 X0 Y0",
            "G92 Z0.4",
            "M82",
            "G92 E7",
            "M106 S128",
            "G1 F1500",
        ] {
            assert!(p.iter().any(|l| l == want), "missing {want}: {p:?}");
        }
        assert!(
            !p.iter().any(|l| l == "G28" || l.starts_with("G28 Z")),
            "{p:?}"
        );
    }

    #[test]
    fn a_mill_restart_restores_units_and_spindle() {
        let m = scan("G20\nG90\nM3 S10000\nG1 Z-0.01 F5\n");
        let p = build(Firmware::Grbl, &m);
        assert_eq!(p, vec!["G20", "G90", "M3 S10000", "G4 P2", "G1 F5"]);
        let m = scan("G21\nM3 S1000\nM5\n");
        assert!(
            !build(Firmware::Grbl, &m)
                .iter()
                .any(|l| l.starts_with("M3"))
        );
    }
}
