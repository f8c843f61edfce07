//! A fast path for the one line shape that makes up almost every file:
//! `G0`/`G1` with plain decimal `X Y Z E F` words and an optional
//! `;comment`, such as `G1 X98.382 Y107.723 E3.91256`.
//!
//! Going through [`crate::framing::clean_line`] and [`crate::block`] costs a
//! copy, a generic lexer and a visitor per line; profiling put more than
//! half of the analysis time there. This parser reads the raw line once and
//! either returns exactly what the general path would, or declines: any
//! byte, word or number form it does not fully recognise sends the line to
//! the general path, which also owns every error message. It therefore
//! never accepts a line the general path refuses.

use crate::block::{MAX_VALUE, MotionWords};

/// A `G0`/`G1` line recognised by [`parse_move`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FastMove<'a> {
    /// 0 or 1.
    pub motion: u8,
    /// The words on the line.
    pub words: MotionWords,
    /// The text after `;`, trimmed, as [`crate::framing::clean_line`]
    /// returns it.
    pub comment: Option<&'a str>,
}

/// Exact powers of ten in `f32` (5^10 < 2^24, so all are representable).
const POW10: [f32; 11] = [1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10];

/// Largest mantissa converted exactly by `m as f32`.
const EXACT_MANTISSA: u64 = 1 << 24;

/// Parses a raw line (no newline) whose command part (before `;`) is at
/// most `max` bytes if it is a plain `G0`/`G1` move; `None` means "use the
/// general path". The comment is not limited, as in
/// [`crate::framing::clean_line`]; the command part bounds the cleaned
/// command from above, so what this takes the general path takes too.
///
/// Accepted: `G0`, `G00`, `G1`, `G01` (either case), then words separated
/// by spaces or tabs, each one of `X Y Z E F` (either case) at most once,
/// immediately followed by an optional sign and a decimal number with at
/// least one digit (`5`, `-5.`, `.5`, `+0.25`), and optionally `;` and a
/// comment. Everything else declines: `N` numbers, `*` checksums, `(`
/// comments, other letters, code numbers, spaces inside a word, control
/// bytes.
pub fn parse_move(raw: &str, max: usize) -> Option<FastMove<'_>> {
    let b = raw.as_bytes();
    let mut i = 0;
    while i < b.len() && is_blank(b[i]) {
        i += 1;
    }
    if i + 1 >= b.len() || b[i] | 0x20 != b'g' {
        return None;
    }
    i += 1;
    let motion = match &b[i..] {
        [b'0', b'0' | b'1', ..] => {
            i += 2;
            b[i - 1] - b'0'
        }
        [d @ (b'0' | b'1'), ..] => {
            i += 1;
            d - b'0'
        }
        _ => return None,
    };
    let mut words = MotionWords::default();
    loop {
        // A word or the end must follow a separator, never touch the code
        // or the previous number.
        let start = i;
        while i < b.len() && is_blank(b[i]) {
            i += 1;
        }
        if i == b.len() {
            if i > max {
                return None;
            }
            return Some(FastMove {
                motion,
                words,
                comment: None,
            });
        }
        if b[i] == b';' {
            if i > max {
                return None;
            }
            return Some(FastMove {
                motion,
                words,
                comment: Some(raw[i + 1..].trim()),
            });
        }
        if i == start {
            return None;
        }
        let slot = match b[i] | 0x20 {
            b'x' => &mut words.x,
            b'y' => &mut words.y,
            b'z' => &mut words.z,
            b'e' => &mut words.e,
            b'f' => &mut words.f,
            _ => return None,
        };
        if slot.is_some() {
            return None;
        }
        let (v, end) = number(raw, i + 1)?;
        *slot = Some(v);
        i = end;
    }
}

fn is_blank(c: u8) -> bool {
    c == b' ' || c == b'\t'
}

/// Reads `[+-]?digits[.digits]` (at least one digit) at `i`; returns the
/// value as `gcode` computes it (the unsigned number parsed as `f32`, then
/// negated) and where the number ends. Declines values the general path
/// refuses as out of range.
fn number(raw: &str, mut i: usize) -> Option<(f32, usize)> {
    let b = raw.as_bytes();
    let negative = match b.get(i) {
        Some(b'-') => {
            i += 1;
            true
        }
        Some(b'+') => {
            i += 1;
            false
        }
        _ => false,
    };
    let start = i;
    let mut mantissa: u64 = 0;
    let mut digits = 0usize;
    let mut fraction = 0usize;
    let mut seen_dot = false;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_digit() {
            // Saturates far above EXACT_MANTISSA, which sends long numbers
            // to the standard parser below.
            mantissa = (mantissa * 10 + u64::from(c - b'0')).min(u64::MAX / 100);
            digits += 1;
            fraction += usize::from(seen_dot);
        } else if c == b'.' && !seen_dot {
            seen_dot = true;
        } else {
            break;
        }
        i += 1;
    }
    if digits == 0 {
        return None;
    }
    let value = if mantissa <= EXACT_MANTISSA && fraction < POW10.len() {
        // Both operands are exact, so the one rounding of the division
        // gives the correctly rounded value, as `str::parse` does.
        mantissa as f32 / POW10[fraction]
    } else {
        let v: f32 = raw[start..i].parse().ok()?;
        if !v.is_finite() || v > MAX_VALUE {
            return None;
        }
        v
    };
    Some((if negative { -value } else { value }, i))
}

#[cfg(test)]
mod tests;
