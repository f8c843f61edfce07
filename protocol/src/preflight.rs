//! Dialect pre-flight: every line a firmware would refuse, found before the
//! first byte is sent, with its line number and a reason an operator can
//! act on.
//!
//! GRBL keeps executing the lines already in its buffer after an `error:`,
//! so a job that hits a refused line half-way is ruined; checking first is
//! the only safe order. The rules follow each firmware's documented command
//! set (GRBL 1.1 `commands.md`, grblHAL's core G-code list, Marlin's
//! G-code index); anything not listed is treated as the firmware does.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::block::{Code, CodeLetter, LineKind, parse_block};
use crate::framing::{MAX_RAW_LINE, clean_line};

/// Findings kept in a report; the total is always counted.
pub const MAX_FINDINGS: usize = 1000;

/// A firmware dialect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dialect {
    /// Marlin 2.x.
    Marlin2,
    /// GRBL 1.1.
    Grbl11,
    /// grblHAL.
    GrblHal,
}

impl FromStr for Dialect {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "marlin" | "marlin2" => Ok(Self::Marlin2),
            "grbl" | "grbl11" => Ok(Self::Grbl11),
            "grblhal" => Ok(Self::GrblHal),
            _ => Err(format!(
                "unknown firmware '{s}' (expected marlin, grbl or grblhal)"
            )),
        }
    }
}

impl fmt::Display for Dialect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Marlin2 => "Marlin 2",
            Self::Grbl11 => "GRBL 1.1",
            Self::GrblHal => "grblHAL",
        })
    }
}

impl Dialect {
    /// Longest line the firmware takes.
    pub fn max_line(self) -> usize {
        match self {
            Self::Marlin2 => 96,
            Self::Grbl11 => 80,
            Self::GrblHal => 256,
        }
    }
}

/// What kind of problem a line has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    /// The firmware answers with an error.
    Rejected,
    /// A canned drilling cycle the firmware lacks; expandable.
    CannedCycle,
    /// A tool change the firmware lacks; becomes an operator pause.
    ToolChange,
    /// Accepted, but probably not what was meant.
    Warning,
}

/// One problem line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// One-based line number.
    pub line: u64,
    /// The line as written (shortened).
    pub text: String,
    /// Why, and what to do.
    pub reason: String,
    /// What kind of problem.
    pub kind: FindingKind,
}

/// The result of a pre-flight.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreflightReport {
    /// The first [`MAX_FINDINGS`] findings.
    pub findings: Vec<Finding>,
    /// All findings.
    pub total: u64,
    /// Findings the firmware would refuse (everything but warnings).
    pub rejected_count: u64,
    /// Every refused line is a canned cycle or a tool change, so the
    /// canned-cycle transform makes the program acceptable.
    pub expandable: bool,
}

/// A streaming checker: feed lines in order, then [`Preflight::finish`].
#[derive(Debug)]
pub struct Preflight {
    dialect: Dialect,
    report: PreflightReport,
    plain_rejections: u64,
    clean: String,
}

impl Preflight {
    /// A checker for `dialect`.
    pub fn new(dialect: Dialect) -> Self {
        Self {
            dialect,
            report: PreflightReport::default(),
            plain_rejections: 0,
            clean: String::new(),
        }
    }

    fn add(&mut self, line: u64, raw: &str, kind: FindingKind, reason: String) {
        self.report.total += 1;
        if kind != FindingKind::Warning {
            self.report.rejected_count += 1;
        }
        if kind == FindingKind::Rejected {
            self.plain_rejections += 1;
        }
        if self.report.findings.len() < MAX_FINDINGS {
            let mut text: String = raw.trim().chars().take(80).collect();
            if raw.trim().chars().count() > 80 {
                text.push('…');
            }
            self.report.findings.push(Finding {
                line,
                text,
                reason,
                kind,
            });
        }
    }

    /// Checks one raw line (comments allowed).
    pub fn check_line(&mut self, line: u64, raw: &str) {
        let raw = raw.trim_end_matches(['\r', '\n']);
        let max = self.dialect.max_line();
        let mut clean = std::mem::take(&mut self.clean);
        // Only the dialect's limit applies (below); comments have none.
        let result = clean_line(raw, MAX_RAW_LINE, &mut clean);
        match result {
            Err(e) => self.add(
                line,
                raw,
                FindingKind::Rejected,
                format!("not valid G-code text: {e}"),
            ),
            Ok(_) => self.check_clean(line, raw, &clean, max),
        }
        self.clean = clean;
    }

    fn check_clean(&mut self, line: u64, raw: &str, clean: &str, max: usize) {
        if clean.is_empty() {
            return;
        }
        // What the host sends: the command with its comments stripped
        // (the driver never sends a comment). GRBL drops comments too as
        // it fills its line buffer, so its 80 characters hold at least
        // this much.
        let measured = clean.len();
        if measured > max {
            self.add(
                line,
                raw,
                FindingKind::Rejected,
                match self.dialect {
                    Dialect::Marlin2 => {
                        format!(
                            "line is {measured} characters; Marlin's command buffer holds {max}"
                        )
                    }
                    _ => format!(
                        "line is {measured} characters; {} accepts {max} (error:11)",
                        self.dialect
                    ),
                },
            );
            return;
        }
        let block = match parse_block(clean) {
            Ok(b) => b,
            Err(e) => {
                self.add(
                    line,
                    raw,
                    FindingKind::Rejected,
                    format!("cannot be parsed: {e}"),
                );
                return;
            }
        };
        match self.dialect {
            Dialect::Marlin2 => self.check_marlin(line, raw, &block),
            Dialect::Grbl11 | Dialect::GrblHal => self.check_grbl(line, raw, &block),
        }
    }

    fn check_marlin(&mut self, line: u64, raw: &str, block: &crate::block::Block<'_>) {
        if let LineKind::System { .. } = block.kind {
            self.add(
                line,
                raw,
                FindingKind::Warning,
                "GRBL '$' command: Marlin will answer 'Unknown command' and go on".into(),
            );
            return;
        }
        for code in block.codes() {
            if code == Code::m(112) {
                self.add(
                    line,
                    raw,
                    FindingKind::Warning,
                    "M112 is an emergency stop: the printer halts here and must be reset".into(),
                );
            } else if !marlin_knows(code) {
                self.add(
                    line,
                    raw,
                    FindingKind::Warning,
                    format!("{code} is not a Marlin command: Marlin will answer 'Unknown command' and go on"),
                );
            }
        }
    }

    fn check_grbl(&mut self, line: u64, raw: &str, block: &crate::block::Block<'_>) {
        let hal = self.dialect == Dialect::GrblHal;
        match block.kind {
            LineKind::System { .. } | LineKind::Empty => return,
            LineKind::Text { .. } => {
                self.add(
                    line,
                    raw,
                    FindingKind::Rejected,
                    format!("{} has no text commands (error:20)", self.dialect),
                );
                return;
            }
            LineKind::Words => {}
        }
        let mut motion_codes = 0;
        let mut cycle = None;
        for code in block.codes() {
            let g = code.letter == CodeLetter::G;
            let m = code.letter == CodeLetter::M;
            if g && matches!((code.major, code.minor), (0..=3, 0) | (38, 2..=5) | (80, 0)) {
                motion_codes += 1;
            }
            if g && matches!(code.major, 73 | 81..=89) && code.minor == 0 {
                motion_codes += 1;
                cycle = Some(code);
                if !hal {
                    let expandable = matches!(code.major, 81..=83);
                    self.add(
                        line,
                        raw,
                        if expandable { FindingKind::CannedCycle } else { FindingKind::Rejected },
                        if expandable {
                            format!(
                                "canned drilling cycle {code}: GRBL 1.1 answers error:20; expand it with --expand-canned-cycles"
                            )
                        } else {
                            format!("canned cycle {code} is not supported by GRBL 1.1 (error:20)")
                        },
                    );
                }
                continue;
            }
            if m && code.major == 6 && code.minor == 0 {
                if !hal {
                    let tool = block
                        .codes()
                        .find(|c| c.letter == CodeLetter::T)
                        .map(|c| format!(" T{:02}", c.major))
                        .unwrap_or_default();
                    self.add(
                        line,
                        raw,
                        FindingKind::ToolChange,
                        format!(
                            "tool change M6{tool}: GRBL 1.1 answers error:20; it becomes an operator pause when expanded"
                        ),
                    );
                }
                continue;
            }
            let known = match code.letter {
                CodeLetter::T => true,
                CodeLetter::G => grbl_knows_g(code) || (hal && grblhal_extra_g(code)),
                CodeLetter::M => grbl_knows_m(code) || (hal && grblhal_extra_m(code)),
            };
            if !known {
                self.add(
                    line,
                    raw,
                    FindingKind::Rejected,
                    format!("{code} is not supported by {} (error:20)", self.dialect),
                );
            }
        }
        if motion_codes > 1 {
            self.add(
                line,
                raw,
                FindingKind::Rejected,
                format!(
                    "two motion commands on one line: {} answers error:21",
                    self.dialect
                ),
            );
        }
        for cmd in block.commands() {
            for w in cmd.args() {
                let ok = match w.letter {
                    'X' | 'Y' | 'Z' | 'F' | 'S' | 'P' | 'I' | 'J' | 'K' | 'L' | 'N' | 'R' | 'T' => {
                        true
                    }
                    'A' | 'B' | 'C' => hal,
                    'Q' => cycle.is_some_and(|c| matches!(c.major, 73 | 83)),
                    'E' | 'H' | 'D' => hal,
                    _ => false,
                };
                if !ok {
                    self.add(
                        line,
                        raw,
                        FindingKind::Rejected,
                        format!(
                            "word {}{} is not understood by {} (error:20)",
                            w.letter, w.value, self.dialect
                        ),
                    );
                    return;
                }
            }
        }
    }

    /// The report.
    pub fn finish(mut self) -> PreflightReport {
        self.report.expandable = self.report.rejected_count > 0 && self.plain_rejections == 0;
        self.report
    }
}

/// Checks a whole program given as lines.
pub fn check_program<'a>(
    dialect: Dialect,
    lines: impl IntoIterator<Item = &'a str>,
) -> PreflightReport {
    let mut p = Preflight::new(dialect);
    for (i, l) in lines.into_iter().enumerate() {
        p.check_line(i as u64 + 1, l);
    }
    p.finish()
}

fn grbl_knows_g(c: Code) -> bool {
    matches!(
        (c.major, c.minor),
        (0..=4, 0)
            | (10, 0)
            | (17..=21, 0)
            | (28, 0 | 1)
            | (30, 0 | 1)
            | (38, 2..=5)
            | (40, 0)
            | (43, 1)
            | (49, 0)
            | (53..=59, 0)
            | (61, 0)
            | (80, 0)
            | (90, 0)
            | (91, 0 | 1)
            | (92, 0 | 1)
            | (93, 0)
            | (94, 0)
    )
}

fn grbl_knows_m(c: Code) -> bool {
    c.minor == 0 && matches!(c.major, 0 | 1 | 2 | 30 | 3 | 4 | 5 | 7 | 8 | 9 | 56)
}

fn grblhal_extra_g(c: Code) -> bool {
    matches!(
        (c.major, c.minor),
        (5, 0 | 1)
            | (7, 0)
            | (8, 0)
            | (33, 0)
            | (43, 0 | 2)
            | (50, 0)
            | (51, 0)
            | (59, 1..=3)
            | (61, 1)
            | (64, 0)
            | (65, 0)
            | (76, 0)
            | (92, 2 | 3)
            | (95, 0)
            | (96, 0)
            | (97, 0)
            | (98, 0)
            | (99, 0)
    )
}

fn grblhal_extra_m(c: Code) -> bool {
    c.minor == 0 && matches!(c.major, 6 | 48..=53 | 61..=68 | 70..=73 | 99 | 100..=199)
}

fn marlin_knows(c: Code) -> bool {
    match c.letter {
        CodeLetter::T => true,
        CodeLetter::G => matches!(
            c.major,
            0..=6 | 10..=12 | 17..=21 | 26..=35 | 38 | 42 | 53..=61 | 76 | 80 | 90..=92 | 425
        ),
        CodeLetter::M => matches!(
            c.major,
            0..=12
                | 16..=34
                | 42..=43
                | 48
                | 73
                | 75..=92
                | 100
                | 102
                | 104..=125
                | 126..=129
                | 140..=155
                | 163..=166
                | 190..=194
                | 200..=209
                | 211
                | 217..=221
                | 226
                | 240
                | 250..=261
                | 280..=290
                | 300..=306
                | 350..=351
                | 355
                | 360..=364
                | 380..=381
                | 400..=413
                | 420..=425
                | 428
                | 430
                | 486
                | 500..=504
                | 510..=512
                | 524
                | 540
                | 569
                | 575
                | 593
                | 600..=605
                | 665..=672
                | 701..=702
                | 710
                | 808
                | 851..=852
                | 871
                | 876
                | 900
                | 906..=919
                | 928
                | 951
                | 993..=999
                | 7219
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::testdata::read as data;

    #[test]
    fn grbl_refuses_canned_cycles_and_tool_changes_with_line_numbers() {
        let r = check_program(
            Dialect::Grbl11,
            [
                "G20",
                "G0 Z0.1",
                "G82 X1 Y1 Z-0.1 R0.05 P0.25 F20",
                "M6 T2",
                "G0 X0",
            ],
        );
        assert_eq!(r.rejected_count, 2);
        assert_eq!(r.findings[0].line, 3);
        assert_eq!(r.findings[0].kind, FindingKind::CannedCycle);
        assert_eq!(r.findings[1].line, 4);
        assert_eq!(r.findings[1].kind, FindingKind::ToolChange);
        assert!(r.expandable);
    }

    #[test]
    fn grbl_refuses_printer_codes_text_and_unknown_words() {
        let r = check_program(
            Dialect::Grbl11,
            ["M104 S200", "M117 Hello", "G1 X1 E5", "G0 G1 X1"],
        );
        assert_eq!(r.rejected_count, 4);
        assert!(!r.expandable);
        assert!(r.findings.iter().all(|f| f.kind == FindingKind::Rejected));
        assert!(r.findings[3].reason.contains("error:21"));
    }

    #[test]
    fn grbl_counts_what_is_sent_against_its_80_character_buffer() {
        let long = format!("G1 X1 Y1.{}", "0".repeat(80));
        let r = check_program(Dialect::Grbl11, [long.as_str()]);
        assert_eq!(r.rejected_count, 1);
        assert!(r.findings[0].reason.contains("error:11"));
        let r = check_program(Dialect::GrblHal, [long.as_str()]);
        assert_eq!(r.rejected_count, 0);
        // A comment is never sent.
        let commented = format!("G1 X1 ({})", "x".repeat(90));
        let r = check_program(Dialect::Grbl11, [commented.as_str()]);
        assert_eq!(r.total, 0, "{:?}", r.findings);
    }

    /// Issue 11: slicer comments of any length are fine; a real overlong
    /// command is one finding with its line number, in every dialect.
    #[test]
    fn long_comments_pass_and_a_300_byte_command_is_one_finding_with_its_line() {
        let short = format!("G1 X1 ; {}", "c".repeat(300));
        let huge = format!("; thumbnail {}", "A".repeat(100_000));
        let command = format!("M117 {}", "a".repeat(295));
        for dialect in [Dialect::Marlin2, Dialect::Grbl11, Dialect::GrblHal] {
            let r = check_program(
                dialect,
                [short.as_str(), huge.as_str(), "G1 X2", command.as_str()],
            );
            let long: Vec<_> = r
                .findings
                .iter()
                .filter(|f| f.reason.contains("300 characters"))
                .collect();
            assert_eq!(long.len(), 1, "{dialect}: {:?}", r.findings);
            assert_eq!(long[0].line, 4);
            assert!(r.findings.iter().all(|f| f.line == 4), "{:?}", r.findings);
        }
    }

    #[test]
    fn grblhal_accepts_canned_cycles_and_tool_changes() {
        let r = check_program(Dialect::GrblHal, ["G83 X1 Y1 Z-1 R1 Q0.5 F100", "M6 T3"]);
        assert_eq!(r.total, 0, "{:?}", r.findings);
    }

    #[test]
    fn marlin_only_warns_about_unknown_commands() {
        let r = check_program(
            Dialect::Marlin2,
            ["G28", "M104 S200", "$H", "G81 X1", "M112"],
        );
        assert_eq!(r.rejected_count, 0);
        assert_eq!(r.total, 3);
        assert!(r.findings.iter().all(|f| f.kind == FindingKind::Warning));
    }

    #[test]
    fn marlin_refuses_lines_longer_than_its_command_buffer() {
        let long = format!("M117 {}", "a".repeat(100));
        let r = check_program(Dialect::Marlin2, [long.as_str()]);
        assert_eq!(r.rejected_count, 1);
    }

    #[test]
    fn garbage_is_rejected_not_skipped() {
        let r = check_program(Dialect::Grbl11, ["G1 X1 @@", "\u{0}\u{1}"]);
        assert_eq!(r.rejected_count, 2);
    }

    #[test]
    fn the_real_cam_files_are_flagged_where_grep_finds_them() {
        let text = data("pcb_isolation_and_drill_inch.nc");
        let r = check_program(Dialect::Grbl11, text.lines());
        let first = text
            .lines()
            .position(|l| l.starts_with("G82"))
            .expect("has G82") as u64
            + 1;
        assert_eq!(r.findings[0].line, first);
        assert_eq!(first, 61273);
        assert!(r.expandable);
        let text = data("pcb_drill_toolchange_inch.nc");
        let r = check_program(Dialect::Grbl11, text.lines());
        let m6: Vec<u64> = text
            .lines()
            .enumerate()
            .filter(|(_, l)| l.contains("M06"))
            .map(|(i, _)| i as u64 + 1)
            .collect();
        let found: Vec<u64> = r
            .findings
            .iter()
            .filter(|f| f.kind == FindingKind::ToolChange)
            .map(|f| f.line)
            .collect();
        assert!(!m6.is_empty());
        assert_eq!(found, m6);
        assert!(r.expandable);
        let r = check_program(Dialect::Grbl11, data("pcb_outline_inch.nc").lines());
        assert_eq!(r.total, 0, "{:?}", r.findings);
    }

    #[test]
    fn dialects_parse_from_their_names() {
        assert_eq!("grbl".parse::<Dialect>(), Ok(Dialect::Grbl11));
        assert_eq!("Marlin".parse::<Dialect>(), Ok(Dialect::Marlin2));
        assert!("smoothie".parse::<Dialect>().is_err());
    }
}
