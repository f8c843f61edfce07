//! ZPL II output for 203 dpi printers: field data always goes through
//! `^FH` hex escapes so a customer's name can never end a field or start
//! a command, and `^CI28` makes the printer read the rest as UTF-8.

use std::fmt::Write as _;

/// The `^FH` escape indicator we use.
const HEX: char = '_';

/// The `^BX` escape character: a backquote, which neither GS1's character
/// set 82 nor a URL (RFC 3986) may contain.
pub(crate) const DM_ESCAPE: char = '`';

/// Font 0's average advance as a share of its height (see `text_fit`).
const ADVANCE: f32 = 0.62;

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

    /// Text in at most `width` dots: font 0 from `h` dots high down to
    /// `min_h`, then cut. Font 0 is proportional; 0.62 of the height is a
    /// generous average advance for capitals and digits, so the estimate
    /// errs on the short side.
    pub(crate) fn text_fit(&mut self, x: u32, y: u32, h: u32, min_h: u32, width: u32, data: &str) {
        let n = data.chars().count().max(1) as f32;
        let fits = (width as f32 / (n * ADVANCE)) as u32;
        let h = fits.clamp(min_h, h);
        let max_chars = (width as f32 / (h as f32 * ADVANCE)) as usize;
        self.text(x, y, h, max_chars, data);
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
    /// text ourselves), starting in subset B. `>` starts `^BC`'s invocation
    /// codes; `>0` is the literal `>` (`><` is code value 62, which in
    /// subset B is `^`).
    pub(crate) fn code128(&mut self, x: u32, y: u32, module: u32, h: u32, data: &str) {
        let data = data.replace('>', ">0");
        let _ = writeln!(
            self.out,
            "^FO{x},{y}^BY{module},3,{h}^BCN,{h},N,N,N^FH{HEX}^FD>:{}^FS",
            escape_field(&data)
        );
    }

    /// DataMatrix ECC 200 with [`DM_ESCAPE`] as its escape character;
    /// `data` is already in that form (escape + `1` is FNC1) and holds no
    /// other escape character (printers differ on how to write a literal
    /// one, so the callers' data excludes it).
    pub(crate) fn datamatrix(&mut self, x: u32, y: u32, module: u32, data: &str) {
        let _ = writeln!(
            self.out,
            "^FO{x},{y}^BXN,{module},200,,,,{DM_ESCAPE}^FH{HEX}^FD{}^FS",
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
    fn long_text_gets_a_smaller_font_then_is_cut() {
        let mut z = Zpl::start(812, 1218);
        z.text_fit(0, 0, 44, 28, 700, "SHORT");
        z.text_fit(0, 0, 44, 28, 700, &"W".repeat(30));
        z.text_fit(0, 0, 44, 28, 700, &"W".repeat(80));
        let out = z.finish();
        assert!(out.contains("^A0N,44,44^FH_^FDSHORT^FS"), "{out}");
        // 700 / (30 × 0.62) = 37.6 dots high.
        let w30 = "W".repeat(30);
        assert!(out.contains(&format!("^A0N,37,37^FH_^FD{w30}^FS")), "{out}");
        // At the 28-dot minimum 40 characters fit: 37 and the dots.
        let w37 = "W".repeat(37);
        assert!(
            out.contains(&format!("^A0N,28,28^FH_^FD{w37}...^FS")),
            "{out}"
        );
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
