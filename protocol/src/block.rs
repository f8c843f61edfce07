//! One G-code line as words: our wrapper around the `gcode` crate.
//!
//! `gcode` 0.7 parses words quickly and without allocating, but it has
//! defects we must not pass on: it rejects `*checksum` suffixes, free-text
//! arguments (`M117 Hello`, `M23 file.gco`) and GRBL `$` lines, and a code
//! number such as `M2222341542` panics in debug builds and wraps in release.
//! So every line is framed and bounded by us first ([`crate::framing`]),
//! those cases are split off here, and only plain word lists reach `gcode`.
//! Nothing is ever re-emitted through `gcode`'s `Display`.

use gcode::core::{
    BlockVisitor, CommandVisitor, ControlFlow, Diagnostics, Number, ProgramVisitor, Span,
    TokenType, Value,
};
use thiserror::Error;

/// Most words one line may hold. A realistic line has fewer than a dozen;
/// the bound keeps [`Block`] allocation-free.
pub const MAX_WORDS: usize = 32;

/// Largest code number (`G`, `M`, `T`) accepted. Real dialects stay below
/// 10 000; larger numbers are typos or garbage and would overflow `gcode`.
pub const MAX_CODE: u32 = 99_999;

/// Largest magnitude accepted for an argument value. Nothing physical in a
/// desktop machine is a billion mm (or mm/min) away.
pub const MAX_VALUE: f32 = 1.0e9;

/// Why a line is not valid G-code.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum BlockError {
    /// A code number (`G`, `M`, `T`, `N`) has too many digits.
    #[error("{letter}{digits} is out of range (largest accepted is {max})")]
    CodeOutOfRange {
        letter: char,
        digits: String,
        max: u32,
    },
    /// An argument value is not finite or is implausibly large.
    #[error("value {letter}{value} is out of range")]
    ValueOutOfRange { letter: char, value: f32 },
    /// More than [`MAX_WORDS`] words on one line.
    #[error("more than {MAX_WORDS} words on one line")]
    TooManyWords,
    /// Text that is not a word address, at a one-based column.
    #[error("unexpected '{text}' at column {column}")]
    Syntax { text: String, column: usize },
    /// A parameter reference (`#1`) or expression, which no supported
    /// firmware evaluates.
    #[error("parameters and expressions ('{text}') are not supported")]
    Variable { text: String },
}

/// The letter of a command code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CodeLetter {
    /// Preparatory (motion, modes).
    G,
    /// Miscellaneous (machine functions).
    M,
    /// Tool selection.
    T,
}

/// A command code such as `G1`, `G38.2` or `M104`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Code {
    /// Which letter.
    pub letter: CodeLetter,
    /// The number before the dot.
    pub major: u32,
    /// The digit after the dot (`G38.2` → 2), 0 when absent.
    pub minor: u8,
}

impl Code {
    /// `G<major>` with no minor number.
    pub const fn g(major: u32) -> Self {
        Self {
            letter: CodeLetter::G,
            major,
            minor: 0,
        }
    }
    /// `M<major>` with no minor number.
    pub const fn m(major: u32) -> Self {
        Self {
            letter: CodeLetter::M,
            major,
            minor: 0,
        }
    }
    /// `G<major>.<minor>`.
    pub const fn g_minor(major: u32, minor: u8) -> Self {
        Self {
            letter: CodeLetter::G,
            major,
            minor,
        }
    }
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let l = match self.letter {
            CodeLetter::G => 'G',
            CodeLetter::M => 'M',
            CodeLetter::T => 'T',
        };
        if self.minor == 0 {
            write!(f, "{l}{}", self.major)
        } else {
            write!(f, "{l}{}.{}", self.major, self.minor)
        }
    }
}

/// An argument word such as `X10.5`; the letter is upper case.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Word {
    /// Upper-case ASCII letter.
    pub letter: char,
    /// The value as `gcode` parsed it (single precision).
    pub value: f32,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Item {
    Code(Code),
    Word(Word),
}

/// One command on a line with the argument words that follow it.
#[derive(Debug, Clone, Copy)]
pub struct Command<'b> {
    /// The code, or `None` for words before any code on the line (GRBL and
    /// LinuxCNC treat such `X10 Y5` lines as a repeat of the modal motion).
    pub code: Option<Code>,
    items: &'b [Item],
}

impl<'b> Command<'b> {
    /// The arguments, in order.
    pub fn args(&self) -> impl Iterator<Item = Word> + 'b {
        self.items.iter().filter_map(|i| match i {
            Item::Word(w) => Some(*w),
            Item::Code(_) => None,
        })
    }

    /// The value of argument `letter` (upper case), if present.
    pub fn arg(&self, letter: char) -> Option<f32> {
        self.args().find(|w| w.letter == letter).map(|w| w.value)
    }

    /// Whether argument `letter` is present.
    pub fn has(&self, letter: char) -> bool {
        self.arg(letter).is_some()
    }
}

/// The words a motion command reads, each the first of its letter on the
/// command, as [`Command::arg`] finds them. Shared by the general path and
/// [`crate::fastpath`] so that both feed the analysis the same values.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct MotionWords {
    /// Axis targets (or offsets in relative mode), in program units.
    pub x: Option<f32>,
    pub y: Option<f32>,
    pub z: Option<f32>,
    /// Extruder position (or offset).
    pub e: Option<f32>,
    /// Feed rate, program units per minute.
    pub f: Option<f32>,
    /// Arc centre offsets (`G2`/`G3`).
    pub i: Option<f32>,
    pub j: Option<f32>,
}

impl MotionWords {
    /// The motion words of `cmd`, in one pass over its arguments.
    pub fn of(cmd: &Command<'_>) -> Self {
        let mut m = Self::default();
        for w in cmd.args() {
            let slot = match w.letter {
                'X' => &mut m.x,
                'Y' => &mut m.y,
                'Z' => &mut m.z,
                'E' => &mut m.e,
                'F' => &mut m.f,
                'I' => &mut m.i,
                'J' => &mut m.j,
                _ => continue,
            };
            if slot.is_none() {
                *slot = Some(w.value);
            }
        }
        m
    }
}

/// What kind of line this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineKind<'a> {
    /// Nothing but whitespace or comments.
    Empty,
    /// Ordinary word addresses.
    Words,
    /// A command whose argument is free text (`M117 Hello`): the words
    /// hold the code, `text` the rest of the line.
    Text { text: &'a str },
    /// A GRBL system command such as `$H`, `$X` or `$110=500`.
    System { text: &'a str },
}

/// One parsed line: codes and arguments in order, without allocation.
#[derive(Debug, Clone)]
pub struct Block<'a> {
    /// What kind of line this is.
    pub kind: LineKind<'a>,
    /// `N` line number, when present.
    pub line_number: Option<u32>,
    items: [Item; MAX_WORDS],
    len: usize,
}

impl Block<'_> {
    /// The commands on the line, each with its arguments.
    pub fn commands(&self) -> impl Iterator<Item = Command<'_>> {
        let items = &self.items[..self.len];
        let mut pos = 0;
        std::iter::from_fn(move || {
            if pos >= items.len() {
                return None;
            }
            let (code, start) = match items[pos] {
                Item::Code(c) => (Some(c), pos + 1),
                Item::Word(_) => (None, pos),
            };
            let end = items[start..]
                .iter()
                .position(|i| matches!(i, Item::Code(_)))
                .map_or(items.len(), |p| start + p);
            pos = end;
            Some(Command {
                code,
                items: &items[start..end],
            })
        })
    }

    /// All codes on the line.
    pub fn codes(&self) -> impl Iterator<Item = Code> + '_ {
        self.items[..self.len].iter().filter_map(|i| match i {
            Item::Code(c) => Some(*c),
            Item::Word(_) => None,
        })
    }

    /// Whether `code` appears on the line.
    pub fn has_code(&self, code: Code) -> bool {
        self.codes().any(|c| c == code)
    }

    /// The first value of argument `letter` anywhere on the line.
    pub fn arg(&self, letter: char) -> Option<f32> {
        self.items[..self.len].iter().find_map(|i| match i {
            Item::Word(w) if w.letter == letter => Some(w.value),
            _ => None,
        })
    }

    /// Whether the line has no codes and no words.
    pub fn is_empty(&self) -> bool {
        self.len == 0 && matches!(self.kind, LineKind::Empty)
    }
}

/// M-codes whose argument is free text in Marlin (messages, file names).
const TEXT_COMMANDS: &[u32] = &[23, 28, 30, 32, 33, 117, 118, 928];
/// M-codes that take either words or an optional message (`M0 Clean bed`).
const MAYBE_TEXT_COMMANDS: &[u32] = &[0, 1];

/// Parses one clean line (the output of [`crate::framing::clean_line`]: no
/// comments, single spaces). A `N<n>` prefix and `*<checksum>` suffix are
/// accepted; the checksum is not verified here.
pub fn parse_block(line: &str) -> Result<Block<'_>, BlockError> {
    let mut block = Block {
        kind: LineKind::Empty,
        line_number: None,
        items: [Item::Word(Word {
            letter: ' ',
            value: 0.0,
        }); MAX_WORDS],
        len: 0,
    };
    let mut body = line.trim();
    if let Some((before, _cs)) = body.split_once('*') {
        body = before.trim_end();
    }
    if body.is_empty() {
        return Ok(block);
    }
    if body.starts_with('$') {
        block.kind = LineKind::System { text: body };
        return Ok(block);
    }
    // Split off a line number ourselves so the text-command check below sees
    // the code first.
    if let Some(rest) = body.strip_prefix(['N', 'n']) {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0 {
            let n = parse_bounded(&rest[..digits], 'N', u32::MAX)?;
            block.line_number = Some(n);
            body = rest[digits..].trim_start();
        }
    }
    let (words, text) = split_text_argument(body);
    check_code_ranges(words)?;
    let mut v = Visitor {
        block: &mut block,
        error: None,
    };
    gcode::core::parse(words, &mut v);
    if let Some(e) = v.error {
        return Err(e);
    }
    if let Some(text) = text {
        block.kind = LineKind::Text { text };
    } else if block.len > 0 {
        block.kind = LineKind::Words;
    }
    Ok(block)
}

/// Returns the part of `body` that is word addresses, and the free text
/// argument of a text command, if any.
fn split_text_argument(body: &str) -> (&str, Option<&str>) {
    let b = body.as_bytes();
    if b.len() < 2 || !matches!(b[0], b'M' | b'm') {
        return (body, None);
    }
    let digits = b[1..].iter().take_while(|c| c.is_ascii_digit()).count();
    if digits == 0 || digits > 4 {
        return (body, None);
    }
    let code_end = 1 + digits;
    let Ok(n) = body[1..code_end].parse::<u32>() else {
        return (body, None);
    };
    let rest = &body[code_end..];
    // `M117Hello` (no space) is valid Marlin too.
    let text = rest.strip_prefix(' ').unwrap_or(rest);
    if TEXT_COMMANDS.contains(&n) {
        // GRBL's M30 is "program end" with no argument; Marlin's takes a file.
        if text.is_empty() {
            return (&body[..code_end], None);
        }
        return (&body[..code_end], Some(text));
    }
    if MAYBE_TEXT_COMMANDS.contains(&n) && !text.is_empty() && !looks_like_words(text) {
        return (&body[..code_end], Some(text));
    }
    (body, None)
}

/// Whether `s` is a sequence of `<letter><number>` words.
fn looks_like_words(s: &str) -> bool {
    s.split(' ').all(|w| {
        let mut c = w.chars();
        matches!(c.next(), Some(l) if l.is_ascii_alphabetic())
            && !c.as_str().is_empty()
            && c.as_str().parse::<f64>().is_ok()
    })
}

/// Rejects code numbers `gcode` would overflow on, before it sees them.
fn check_code_ranges(words: &str) -> Result<(), BlockError> {
    let b = words.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i].to_ascii_uppercase();
        if matches!(c, b'G' | b'M' | b'T' | b'N') {
            let start = i + 1;
            let mut end = start;
            while end < b.len() && b[end].is_ascii_whitespace() {
                end += 1;
            }
            let num_start = end;
            while end < b.len() && b[end].is_ascii_digit() {
                end += 1;
            }
            let digits = &words[num_start..end];
            if !digits.is_empty() {
                let max = if c == b'N' { u32::MAX } else { MAX_CODE };
                parse_bounded(digits, c as char, max)?;
                // `gcode` silently drops a code whose minor number has more
                // than one digit (`G38.25`); refuse it instead.
                if c != b'N' && end < b.len() && b[end] == b'.' {
                    let minor = b[end + 1..]
                        .iter()
                        .take_while(|d| d.is_ascii_digit())
                        .count();
                    if minor > 1 {
                        return Err(BlockError::Syntax {
                            text: words[i..end + 1 + minor].chars().take(24).collect(),
                            column: i + 1,
                        });
                    }
                    end += 1 + minor;
                }
            }
            i = end.max(start);
        } else {
            i += 1;
        }
    }
    Ok(())
}

fn parse_bounded(digits: &str, letter: char, max: u32) -> Result<u32, BlockError> {
    let out = || BlockError::CodeOutOfRange {
        letter,
        digits: digits.chars().take(24).collect(),
        max,
    };
    let n = digits.parse::<u64>().map_err(|_| out())?;
    if n > u64::from(max) {
        return Err(out());
    }
    u32::try_from(n).map_err(|_| out())
}

struct Visitor<'b, 'a> {
    block: &'b mut Block<'a>,
    error: Option<BlockError>,
}

impl Visitor<'_, '_> {
    fn push(&mut self, item: Item) {
        if self.error.is_some() {
            return;
        }
        if self.block.len >= MAX_WORDS {
            self.error = Some(BlockError::TooManyWords);
            return;
        }
        self.block.items[self.block.len] = item;
        self.block.len += 1;
    }

    fn code(&mut self, letter: CodeLetter, n: Number) {
        let minor = n.minor().map_or(0, |m| m.get() as u8);
        self.push(Item::Code(Code {
            letter,
            major: n.major(),
            minor,
        }));
    }

    fn word(&mut self, letter: char, value: Value<'_>) {
        match value {
            Value::Literal(v) => {
                let letter = letter.to_ascii_uppercase();
                if !v.is_finite() || v.abs() > MAX_VALUE {
                    self.fail(BlockError::ValueOutOfRange { letter, value: v });
                } else {
                    self.push(Item::Word(Word { letter, value: v }));
                }
            }
            Value::Variable(s) => self.fail(BlockError::Variable {
                text: s.chars().take(24).collect(),
            }),
        }
    }

    fn fail(&mut self, e: BlockError) {
        if self.error.is_none() {
            self.error = Some(e);
        }
    }
}

impl Diagnostics for Visitor<'_, '_> {
    fn emit_unknown_content(&mut self, text: &str, span: Span) {
        self.fail(BlockError::Syntax {
            text: text.chars().take(24).collect(),
            column: span.start + 1,
        });
    }
    fn emit_unexpected(&mut self, actual: &str, _expected: &[TokenType], span: Span) {
        self.fail(BlockError::Syntax {
            text: actual.chars().take(24).collect(),
            column: span.start + 1,
        });
    }
    fn emit_parse_int_error(&mut self, value: &str, _error: std::num::ParseIntError, span: Span) {
        self.fail(BlockError::Syntax {
            text: value.chars().take(24).collect(),
            column: span.start + 1,
        });
    }
}

impl ProgramVisitor for Visitor<'_, '_> {
    fn start_block(&mut self) -> ControlFlow<impl BlockVisitor + '_> {
        ControlFlow::Continue(LineVisitor(self))
    }
}

struct LineVisitor<'v, 'b, 'a>(&'v mut Visitor<'b, 'a>);

impl Diagnostics for LineVisitor<'_, '_, '_> {
    fn emit_unknown_content(&mut self, text: &str, span: Span) {
        self.0.emit_unknown_content(text, span);
    }
    fn emit_unexpected(&mut self, actual: &str, expected: &[TokenType], span: Span) {
        self.0.emit_unexpected(actual, expected, span);
    }
    fn emit_parse_int_error(&mut self, value: &str, error: std::num::ParseIntError, span: Span) {
        self.0.emit_parse_int_error(value, error, span);
    }
}

impl BlockVisitor for LineVisitor<'_, '_, '_> {
    fn line_number(&mut self, n: u32, _span: Span) {
        self.0.block.line_number = Some(n);
    }
    fn word_address(&mut self, letter: char, value: Value<'_>, _span: Span) {
        self.0.word(letter, value);
    }
    fn start_general_code(&mut self, number: Number) -> ControlFlow<impl CommandVisitor + '_> {
        self.0.code(CodeLetter::G, number);
        ControlFlow::Continue(ArgVisitor(&mut *self.0))
    }
    fn start_miscellaneous_code(
        &mut self,
        number: Number,
    ) -> ControlFlow<impl CommandVisitor + '_> {
        self.0.code(CodeLetter::M, number);
        ControlFlow::Continue(ArgVisitor(&mut *self.0))
    }
    fn start_tool_change_code(&mut self, number: Number) -> ControlFlow<impl CommandVisitor + '_> {
        self.0.code(CodeLetter::T, number);
        ControlFlow::Continue(ArgVisitor(&mut *self.0))
    }
}

struct ArgVisitor<'v, 'b, 'a>(&'v mut Visitor<'b, 'a>);

impl Diagnostics for ArgVisitor<'_, '_, '_> {
    fn emit_unknown_content(&mut self, text: &str, span: Span) {
        self.0.emit_unknown_content(text, span);
    }
    fn emit_unexpected(&mut self, actual: &str, expected: &[TokenType], span: Span) {
        self.0.emit_unexpected(actual, expected, span);
    }
    fn emit_parse_int_error(&mut self, value: &str, error: std::num::ParseIntError, span: Span) {
        self.0.emit_parse_int_error(value, error, span);
    }
}

impl CommandVisitor for ArgVisitor<'_, '_, '_> {
    fn argument(&mut self, letter: char, value: Value<'_>, _span: Span) {
        self.0.word(letter, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn codes(line: &str) -> Vec<String> {
        parse_block(line)
            .expect("parses")
            .codes()
            .map(|c| c.to_string())
            .collect()
    }

    #[test]
    fn parses_a_move_with_its_arguments() {
        let b = parse_block("G1 X10.5 Y-2 E.35 F1800").expect("parses");
        let cmds: Vec<_> = b.commands().collect();
        assert_eq!(cmds.len(), 1);
        assert_eq!(cmds[0].code, Some(Code::g(1)));
        assert_eq!(cmds[0].arg('X'), Some(10.5));
        assert_eq!(cmds[0].arg('Y'), Some(-2.0));
        assert_eq!(cmds[0].arg('E'), Some(0.35));
        assert_eq!(cmds[0].arg('F'), Some(1800.0));
    }

    #[test]
    fn accepts_a_checksum_suffix_and_line_number() {
        let b = parse_block("N12 G1 X1*97").expect("parses");
        assert_eq!(b.line_number, Some(12));
        assert_eq!(codes("N12 G1 X1*97"), ["G1"]);
    }

    #[test]
    fn keeps_text_arguments_of_message_commands() {
        let b = parse_block("M117 Hello world 42").expect("parses");
        assert_eq!(
            b.kind,
            LineKind::Text {
                text: "Hello world 42"
            }
        );
        assert_eq!(codes("M117 Hello world 42"), ["M117"]);
        let b = parse_block("M23 file.gco").expect("parses");
        assert_eq!(b.kind, LineKind::Text { text: "file.gco" });
    }

    #[test]
    fn m0_with_words_is_words_and_with_a_message_is_text() {
        assert_eq!(
            parse_block("M0 P500").expect("parses").kind,
            LineKind::Words
        );
        assert_eq!(
            parse_block("M0 Remove the part").expect("parses").kind,
            LineKind::Text {
                text: "Remove the part"
            }
        );
    }

    #[test]
    fn grbl_m30_without_argument_is_program_end() {
        let b = parse_block("M30").expect("parses");
        assert_eq!(b.kind, LineKind::Words);
        assert!(b.has_code(Code::m(30)));
    }

    #[test]
    fn grbl_system_lines_are_kept_whole() {
        assert_eq!(
            parse_block("$H").expect("parses").kind,
            LineKind::System { text: "$H" }
        );
        assert_eq!(
            parse_block("$110=500").expect("parses").kind,
            LineKind::System { text: "$110=500" }
        );
    }

    #[test]
    fn huge_code_numbers_are_an_error_not_a_panic() {
        assert!(matches!(
            parse_block("M2222341542"),
            Err(BlockError::CodeOutOfRange { letter: 'M', .. })
        ));
        assert!(matches!(
            parse_block("G1 X1 T99999999999"),
            Err(BlockError::CodeOutOfRange { letter: 'T', .. })
        ));
    }

    #[test]
    fn values_beyond_any_machine_are_out_of_range() {
        assert!(matches!(
            parse_block("G1 X99999999999999"),
            Err(BlockError::ValueOutOfRange { letter: 'X', .. })
        ));
    }

    #[test]
    fn garbage_is_a_syntax_error_with_a_column() {
        assert!(matches!(
            parse_block("G1 X1 @@"),
            Err(BlockError::Syntax { .. })
        ));
    }

    #[test]
    fn several_commands_on_one_line_keep_their_own_arguments() {
        let b = parse_block("G0 Z0.25 M3 S1000 G4 P1").expect("parses");
        let cmds: Vec<_> = b.commands().collect();
        assert_eq!(cmds.len(), 3);
        assert_eq!(cmds[0].arg('Z'), Some(0.25));
        assert_eq!(cmds[1].arg('S'), Some(1000.0));
        assert!(!cmds[1].has('Z'));
        assert_eq!(cmds[2].arg('P'), Some(1.0));
    }

    #[test]
    fn words_before_a_code_repeat_the_modal_motion() {
        let b = parse_block("X1.5 Y2").expect("parses");
        let cmds: Vec<_> = b.commands().collect();
        assert_eq!(cmds.len(), 1);
        assert_eq!(cmds[0].code, None);
        assert_eq!(cmds[0].arg('Y'), Some(2.0));
    }

    #[test]
    fn a_two_digit_minor_number_is_refused_not_dropped() {
        assert!(matches!(
            parse_block("G38.25 Z-1"),
            Err(BlockError::Syntax { .. })
        ));
    }

    #[test]
    fn minor_numbers_are_kept() {
        assert_eq!(codes("G38.2 Z-5 F10"), ["G38.2"]);
    }

    #[test]
    fn lowercase_words_are_accepted() {
        let b = parse_block("g1 x2").expect("parses");
        assert_eq!(b.arg('X'), Some(2.0));
    }

    #[test]
    fn every_shared_file_parses_without_errors() {
        let mut files = 0;
        for (p, text) in crate::testdata::all() {
            files += 1;
            let mut clean = String::new();
            for (i, raw) in text.lines().enumerate() {
                crate::framing::clean_line(raw, 256, &mut clean).expect("frames");
                if let Err(e) = parse_block(&clean) {
                    panic!("{}:{}: {e}: {raw}", p.display(), i + 1);
                }
            }
        }
        assert_eq!(files, 5);
    }

    proptest! {
        #[test]
        fn no_input_makes_it_panic(s in "\\PC{0,120}") {
            let _ = parse_block(&s);
        }

        #[test]
        fn arbitrary_ascii_words_never_panic(s in "([GMTNXYZEFSPIJKR$*#@]{1,2}-?[0-9.]{0,12} ?){0,12}") {
            let _ = parse_block(&s);
        }

        #[test]
        fn generated_moves_parse_back_to_their_values(x in -1000i32..1000, y in -1000i32..1000, f in 1u32..20000) {
            let line = format!("G1 X{}.{:02} Y{} F{f}", x / 100, (x % 100).abs(), y);
            let b = parse_block(&line).expect("parses");
            let c = b.commands().next().expect("one command");
            prop_assert_eq!(c.code, Some(Code::g(1)));
            prop_assert_eq!(c.arg('Y'), Some(y as f32));
            prop_assert_eq!(c.arg('F'), Some(f as f32));
        }
    }
}
