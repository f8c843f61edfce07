//! ZPL II output for 203 dpi printers: field data always goes through
//! `^FH` hex escapes so a customer's name can never end a field or start
//! a command, and `^CI28` makes the printer read the rest as UTF-8.

use std::fmt::Write as _;

/// The `^FH` escape indicator we use.
const HEX: char = '_';

/// Escapes field data for `^FH_`: `^`, `~` and `_` itself become `_5E`,
/// `_7E` and `_5F`, and control characters their hex bytes, so the data
/// can hold no command prefix. Other characters stay as UTF-8 (`^CI28`).
pub fn escape_field(data: &str) -> String {
    let mut out = String::with_capacity(data.len() + 8);
    for c in data.chars() {
        if matches!(c, '^' | '~' | HEX) || c.is_control() {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                let _ = write!(out, "{HEX}{b:02X}");
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A ZPL format being written.
pub(crate) struct Zpl {
    out: String,
}

impl Zpl {
    /// `^XA` with the label's width and length in dots, UTF-8, home 0,0.
    pub(crate) fn start(width: u32, length: u32) -> Self {
        let mut out = String::with_capacity(2048);
        let _ = write!(out, "^XA\n^CI28\n^PW{width}\n^LL{length}\n^LH0,0\n");
        Self { out }
    }

    /// Text in the printer's scalable font 0, `h` dots high, cut to
    /// `max_chars` (with `...`) so it cannot run off the label.
    pub(crate) fn text(&mut self, x: u32, y: u32, h: u32, max_chars: usize, data: &str) {
        let data = cut(data, max_chars);
        let _ = writeln!(
            self.out,
            "^FO{x},{y}^A0N,{h},{h}^FH{HEX}^FD{}^FS",
            escape_field(&data)
        );
    }

    /// Text centred in a block `width` dots wide starting at `x`.
    pub(crate) fn text_centred(
        &mut self,
        x: u32,
        y: u32,
        width: u32,
        h: u32,
        max_chars: usize,
        data: &str,
    ) {
        let data = cut(data, max_chars);
        let _ = writeln!(
            self.out,
            "^FO{x},{y}^A0N,{h},{h}^FB{width},1,0,C,0^FH{HEX}^FD{}^FS",
            escape_field(&data)
        );
    }

    /// A box (or a rule, when one side equals the thickness).
    pub(crate) fn rect(&mut self, x: u32, y: u32, w: u32, h: u32, t: u32) {
        let _ = writeln!(self.out, "^FO{x},{y}^GB{w},{h},{t}^FS");
    }

    /// Code 128 without the printer's interpretation line (we print the
    /// text ourselves), starting in subset B. `>` is `^BC`'s invocation
    /// character, so it is doubled as `><`.
    pub(crate) fn code128(&mut self, x: u32, y: u32, module: u32, h: u32, data: &str) {
        let data = data.replace('>', "><");
        let _ = writeln!(
            self.out,
            "^FO{x},{y}^BY{module},3,{h}^BCN,{h},N,N,N^FH{HEX}^FD>:{}^FS",
            escape_field(&data)
        );
    }

    /// DataMatrix ECC 200 with `#` as its escape character; `data` is
    /// already in that form (`#1` for FNC1, `#d035` for a literal `#`).
    pub(crate) fn datamatrix(&mut self, x: u32, y: u32, module: u32, data: &str) {
        let _ = writeln!(
            self.out,
            "^FO{x},{y}^BXN,{module},200,,,,#^FH{HEX}^FD{}^FS",
            escape_field(data)
        );
    }

    /// `^XZ`, and the text.
    pub(crate) fn finish(mut self) -> String {
        self.out.push_str("^XZ\n");
        self.out
    }
}

/// At most `max` characters, the last three `...` when cut.
fn cut(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max.saturating_sub(3)).collect();
    out.push_str("...");
    out
}

/// The `^BX` escape for a literal `#` in DataMatrix data.
pub(crate) fn datamatrix_literal(data: &str) -> String {
    data.replace('#', "#d035")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Undoes `^FH_` escapes, as a printer does.
    pub(crate) fn unescape(s: &str) -> String {
        let b = s.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'_' && i + 3 <= b.len() && b[i + 1..i + 3].iter().all(u8::is_ascii_hexdigit)
            {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).expect("ascii");
                out.push(u8::from_str_radix(hex, 16).expect("hex"));
                i += 3;
                continue;
            }
            out.push(b[i]);
            i += 1;
        }
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn hostile_field_data_is_hex_escaped() {
        let e = escape_field("^XZ~JR_x\nÅsa ✓");
        assert_eq!(e, "_5EXZ_7EJR_5Fx_0AÅsa ✓");
        assert_eq!(unescape(&e), "^XZ~JR_x\nÅsa ✓");
    }

    #[test]
    fn long_text_is_cut_with_dots() {
        assert_eq!(cut("abcdefghij", 6), "abc...");
        assert_eq!(cut("abc", 6), "abc");
    }

    proptest! {
        #[test]
        fn escaped_field_data_holds_no_command_prefix_and_decodes_back(s in "\\PC*|[\\^~_a-z\n]*") {
            let e = escape_field(&s);
            prop_assert!(!e.contains('^') && !e.contains('~'), "{}", e);
            prop_assert!(!e.chars().any(char::is_control));
            prop_assert_eq!(unescape(&e), s);
        }
    }
}
