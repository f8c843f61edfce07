//! Line framing: the `N<n> <command>*<checksum>` envelope Marlin checks,
//! comment stripping and whitespace normalisation, and splitting a byte
//! stream into bounded lines.
//!
//! Every other module sees G-code only after it passed through here, so the
//! limits enforced here (line length, UTF-8, no NUL bytes) protect them all.

use thiserror::Error;

/// Longest command, in bytes, accepted by default: what is left of a line
/// once comments and extra blanks are stripped, which is what a firmware
/// receives. Marlin's command slots hold 96 bytes and GRBL's 80; 256 leaves
/// room for grblHAL. Comments are not limited by it: slicers write long
/// ones (settings, thumbnails), and they never reach a firmware. The
/// dialects' own limits are pre-flight findings (`preflight`).
pub const DEFAULT_MAX_LINE: usize = 256;

/// Longest raw line, comments included, read at all: a bound on memory
/// for whoever buffers a line ([`LineSplitter`]), not a G-code rule. Far
/// above any real line (a slicer's single-line base64 thumbnail is some
/// hundred KiB), far below a binary file's megabyte "lines".
pub const MAX_RAW_LINE: usize = 4 << 20;

/// Why a line could not be framed or cleaned.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FrameError {
    /// The raw line is longer than the configured maximum.
    #[error("line is {len} bytes long; the limit is {max}")]
    TooLong { len: usize, max: usize },
    /// The command, comments stripped, is longer than the limit.
    #[error("command is {len} bytes long without its comments; the limit is {max}")]
    CommandTooLong { len: usize, max: usize },
    /// The bytes are not UTF-8 text.
    #[error("line is not valid UTF-8 text (byte {offset})")]
    NotUtf8 { offset: usize },
    /// A control byte (NUL and friends) that never appears in G-code text.
    #[error("line contains control byte 0x{byte:02x} at column {column}; is this a binary file?")]
    ControlByte { byte: u8, column: usize },
    /// A `(` comment is not closed on its line.
    #[error("unclosed '(' comment starting at column {column}")]
    UnclosedComment { column: usize },
    /// A numbered line lacks its `*checksum`.
    #[error("line number without checksum")]
    NoChecksum,
    /// The checksum after `*` is not a number in 0..=255.
    #[error("checksum '{text}' is not a number from 0 to 255")]
    BadChecksum { text: String },
    /// The checksum does not match the line's bytes.
    #[error("checksum mismatch: line says {stated}, bytes give {computed}")]
    ChecksumMismatch { stated: u8, computed: u8 },
    /// `N` is not followed by a valid line number.
    #[error("'N' is not followed by a line number")]
    BadLineNumber,
}

/// XOR of every byte: the checksum Marlin (and RepRap firmware) verify.
pub fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |acc, b| acc ^ b)
}

/// Appends `N<n> <command>*<checksum>` (without a newline) to `out`.
///
/// `command` must already be clean (see [`clean_line`]): a `*` or `;` in it
/// would change what the firmware checks.
pub fn encode_numbered_into(n: u32, command: &str, out: &mut String) {
    use std::fmt::Write;
    let start = out.len();
    // Writing to a String cannot fail.
    let _ = write!(out, "N{n} {command}");
    let cs = checksum(&out.as_bytes()[start..]);
    let _ = write!(out, "*{cs}");
}

/// `N<n> <command>*<checksum>` as a new string, without a newline.
pub fn encode_numbered(n: u32, command: &str) -> String {
    let mut s = String::with_capacity(command.len() + 16);
    encode_numbered_into(n, command, &mut s);
    s
}

/// A line as the firmware receives it: optional number, command, optional
/// checksum that was verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Framed<'a> {
    /// The `N` number, when the line carried one.
    pub number: Option<u32>,
    /// The command between the number and the `*`.
    pub command: &'a str,
}

/// Parses a line the way Marlin does on receipt: a line starting with `N`
/// must carry a matching `*checksum`; other lines are taken as they are.
///
/// The checksum covers everything before `*`, so it is verified before the
/// line number is read: a corrupted number is reported as a checksum error.
pub fn parse_framed(line: &str) -> Result<Framed<'_>, FrameError> {
    let line = line.trim_end_matches(['\r', '\n']);
    let body = line.trim_start();
    if !body.starts_with('N') {
        // Unnumbered lines may still carry a checksum (Marlin accepts it).
        if let Some((cmd, cs)) = body.split_once('*') {
            verify(cmd, cs)?;
            return Ok(Framed {
                number: None,
                command: cmd.trim(),
            });
        }
        return Ok(Framed {
            number: None,
            command: body.trim_end(),
        });
    }
    let (before, cs) = body.split_once('*').ok_or(FrameError::NoChecksum)?;
    verify(before, cs)?;
    let rest = &before[1..];
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err(FrameError::BadLineNumber);
    }
    let number = rest[..digits]
        .parse::<u32>()
        .map_err(|_| FrameError::BadLineNumber)?;
    Ok(Framed {
        number: Some(number),
        command: rest[digits..].trim(),
    })
}

fn verify(covered: &str, cs: &str) -> Result<(), FrameError> {
    let cs = cs.trim();
    let stated = cs.parse::<u8>().map_err(|_| FrameError::BadChecksum {
        text: cs.chars().take(8).collect(),
    })?;
    let computed = checksum(covered.as_bytes());
    if stated != computed {
        return Err(FrameError::ChecksumMismatch { stated, computed });
    }
    Ok(())
}

/// Strips `;` and `( )` comments, collapses runs of blanks to one space and
/// trims, writing the result to `out` (cleared first). Returns the first
/// comment's text (without its delimiters), which slicers use for markers.
///
/// Rejects a command (the result) longer than `max` bytes, and control
/// bytes outside `;` comments, so that binary data never reaches a firmware
/// or the analyser. Comments are not counted against `max`: only what is
/// sent is limited. (The raw line's own bound is the splitter's,
/// [`MAX_RAW_LINE`].)
pub fn clean_line<'a>(
    raw: &'a str,
    max: usize,
    out: &mut String,
) -> Result<Option<&'a str>, FrameError> {
    let comment = strip_line(raw, out)?;
    if out.len() > max {
        return Err(FrameError::CommandTooLong {
            len: out.len(),
            max,
        });
    }
    Ok(comment)
}

fn strip_line<'a>(raw: &'a str, out: &mut String) -> Result<Option<&'a str>, FrameError> {
    out.clear();
    let raw = raw.trim_end_matches(['\r', '\n']);
    let bytes = raw.as_bytes();
    let mut comment: Option<&'a str> = None;
    let mut pending_space = false;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b';' => {
                if comment.is_none() {
                    comment = Some(raw[i + 1..].trim());
                }
                break;
            }
            b'(' => {
                let Some(close) = raw[i..].find(')') else {
                    return Err(FrameError::UnclosedComment { column: i + 1 });
                };
                if comment.is_none() {
                    comment = Some(raw[i + 1..i + close].trim());
                }
                i += close + 1;
                pending_space = true;
                continue;
            }
            b' ' | b'\t' => pending_space = true,
            0..=0x1f | 0x7f => {
                return Err(FrameError::ControlByte {
                    byte: b,
                    column: i + 1,
                });
            }
            _ => {
                if pending_space && !out.is_empty() {
                    out.push(' ');
                }
                pending_space = false;
                // Copy the whole run of ordinary bytes at once.
                let run = bytes[i..]
                    .iter()
                    .position(|&c| matches!(c, b';' | b'(' | b' ' | b'\t' | 0..=0x1f | 0x7f))
                    .unwrap_or(bytes.len() - i);
                out.push_str(&raw[i..i + run]);
                i += run;
                continue;
            }
        }
        i += 1;
    }
    Ok(comment)
}

/// Splits a byte stream into lines no longer than a limit, for serial input
/// and for files of any size. Bytes are fed in chunks of any size.
///
/// A line over the limit is reported once and its remaining bytes are
/// discarded up to the next newline, so one bad line cannot make the buffer
/// grow without bound.
#[derive(Debug)]
pub struct LineSplitter {
    buf: Vec<u8>,
    max: usize,
    overflowed: Option<usize>,
    /// Whether the discarded part of an overflowing line ended in `\r`,
    /// so its length is reported the same however the input was chunked.
    overflow_cr: bool,
    line_no: u64,
}

/// One item produced by [`LineSplitter`].
#[derive(Debug, PartialEq, Eq)]
pub enum SplitItem<'a> {
    /// A complete line (terminator removed, `\r` stripped), with its
    /// one-based number in the stream.
    Line { number: u64, text: &'a str },
    /// A line that broke a limit; its number and the reason.
    Bad { number: u64, error: FrameError },
}

impl LineSplitter {
    /// A splitter that refuses lines longer than `max` bytes.
    pub fn new(max: usize) -> Self {
        Self {
            buf: Vec::with_capacity(max.min(4096)),
            max,
            overflowed: None,
            overflow_cr: false,
            line_no: 0,
        }
    }

    /// Number of lines completed so far.
    pub fn lines_seen(&self) -> u64 {
        self.line_no
    }

    /// Feeds `input` and calls `each` for every line it completes. Stops
    /// early and returns the callback's error if it returns one.
    pub fn feed<E>(
        &mut self,
        mut input: &[u8],
        mut each: impl FnMut(SplitItem<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        while !input.is_empty() {
            match input.iter().position(|&b| b == b'\n') {
                Some(nl) => {
                    let (head, tail) = input.split_at(nl);
                    input = &tail[1..];
                    if self.buf.is_empty() && self.overflowed.is_none() {
                        // Fast path: the whole line is in this chunk.
                        self.line_no += 1;
                        let item = self.make_item(head, None);
                        each(item)?;
                    } else {
                        self.push_bounded(head);
                        self.line_no += 1;
                        let buf = std::mem::take(&mut self.buf);
                        let overflow = self.overflowed.take();
                        let item = self.make_item(&buf, overflow);
                        let r = each(item);
                        self.buf = buf;
                        self.buf.clear();
                        r?;
                    }
                }
                None => {
                    self.push_bounded(input);
                    input = &[];
                }
            }
        }
        Ok(())
    }

    /// Flushes a last line that has no trailing newline.
    pub fn finish<E>(
        &mut self,
        mut each: impl FnMut(SplitItem<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        if self.buf.is_empty() && self.overflowed.is_none() {
            return Ok(());
        }
        self.line_no += 1;
        let buf = std::mem::take(&mut self.buf);
        let overflow = self.overflowed.take();
        each(self.make_item(&buf, overflow))
    }

    fn push_bounded(&mut self, bytes: &[u8]) {
        if let Some(n) = self.overflowed.as_mut() {
            *n += bytes.len();
            if let Some(&last) = bytes.last() {
                self.overflow_cr = last == b'\r';
            }
            return;
        }
        if self.buf.len() + bytes.len() > self.max + 1 {
            self.overflow_cr = bytes.last().or(self.buf.last()) == Some(&b'\r');
            self.overflowed = Some(self.buf.len() + bytes.len());
            self.buf.clear();
        } else {
            self.buf.extend_from_slice(bytes);
        }
    }

    /// `overflow` is the full length of a line whose bytes were discarded.
    fn make_item<'b>(&self, bytes: &'b [u8], overflow: Option<usize>) -> SplitItem<'b> {
        let number = self.line_no;
        let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
        let total = match overflow {
            Some(n) if self.overflow_cr => n - 1,
            Some(n) => n,
            None => bytes.len(),
        };
        if total > self.max {
            return SplitItem::Bad {
                number,
                error: FrameError::TooLong {
                    len: total,
                    max: self.max,
                },
            };
        }
        match std::str::from_utf8(bytes) {
            Ok(text) => SplitItem::Line { number, text },
            Err(e) => SplitItem::Bad {
                number,
                error: FrameError::NotUtf8 {
                    offset: e.valid_up_to(),
                },
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn encodes_the_example_from_marlin_docs() {
        assert_eq!(encode_numbered(0, "M110 N0"), "N0 M110 N0*125");
    }

    #[test]
    fn parses_a_numbered_line_and_verifies_its_checksum() {
        let f = parse_framed("N0 M110 N0*125\n").expect("valid line");
        assert_eq!(f.number, Some(0));
        assert_eq!(f.command, "M110 N0");
    }

    #[test]
    fn reports_a_corrupted_checksum() {
        assert_eq!(
            parse_framed("N0 M110 N0*124"),
            Err(FrameError::ChecksumMismatch {
                stated: 124,
                computed: 125
            })
        );
    }

    #[test]
    fn a_numbered_line_without_checksum_is_refused() {
        assert_eq!(parse_framed("N5 G1 X1"), Err(FrameError::NoChecksum));
    }

    #[test]
    fn a_checksum_out_of_range_is_refused() {
        assert!(matches!(
            parse_framed("N5 G1 X1*256"),
            Err(FrameError::BadChecksum { .. })
        ));
    }

    #[test]
    fn strips_both_comment_styles_and_collapses_blanks() {
        let mut out = String::new();
        let c = clean_line("G1  X1 (move)\tY2 ; to corner\r\n", 256, &mut out).expect("clean");
        assert_eq!(out, "G1 X1 Y2");
        assert_eq!(c, Some("move"));
    }

    #[test]
    fn a_comment_only_line_cleans_to_nothing_but_keeps_the_comment() {
        let mut out = String::new();
        let c = clean_line(";LAYER_CHANGE", 256, &mut out).expect("clean");
        assert_eq!(out, "");
        assert_eq!(c, Some("LAYER_CHANGE"));
    }

    #[test]
    fn refuses_commands_over_the_limit() {
        let mut out = String::new();
        let long = "G1 X1".repeat(100);
        assert_eq!(
            clean_line(&long, 256, &mut out),
            Err(FrameError::CommandTooLong { len: 500, max: 256 })
        );
    }

    /// Slicers write long comments (settings, thumbnails); they are never
    /// sent, so no limit applies to them (issue 11: a 300-byte comment
    /// made an upload fail).
    #[test]
    fn a_long_comment_is_no_reason_to_refuse_a_line() {
        let mut out = String::new();
        for len in [300, 100_000] {
            let comment = "x".repeat(len);
            let raw = format!("G1 X1 Y2 ; {comment}");
            assert_eq!(clean_line(&raw, 256, &mut out), Ok(Some(comment.as_str())));
            assert_eq!(out, "G1 X1 Y2");
            let raw = format!("G1 X1 ({comment}) Y2");
            assert_eq!(clean_line(&raw, 256, &mut out), Ok(Some(comment.as_str())));
            assert_eq!(out, "G1 X1 Y2");
        }
    }

    /// The limit is on what the firmware would receive: a 300-byte command
    /// is refused even when its raw line is mostly blanks.
    #[test]
    fn a_300_byte_command_is_refused_with_its_length_without_comments() {
        let mut out = String::new();
        let command = format!("M117 {}", "a".repeat(295));
        let raw = format!("{command}    ; note");
        assert_eq!(
            clean_line(&raw, 256, &mut out),
            Err(FrameError::CommandTooLong { len: 300, max: 256 })
        );
    }

    #[test]
    fn refuses_nul_bytes_as_binary() {
        let mut out = String::new();
        assert_eq!(
            clean_line("G1\0X1", 256, &mut out),
            Err(FrameError::ControlByte { byte: 0, column: 3 })
        );
    }

    #[test]
    fn refuses_an_unclosed_paren_comment() {
        let mut out = String::new();
        assert_eq!(
            clean_line("G1 X1 (oops", 256, &mut out),
            Err(FrameError::UnclosedComment { column: 7 })
        );
    }

    fn split_all(chunks: &[&[u8]], max: usize) -> Vec<Result<(u64, String), (u64, FrameError)>> {
        let mut s = LineSplitter::new(max);
        let mut out = Vec::new();
        let mut push = |item: SplitItem<'_>| -> Result<(), ()> {
            out.push(match item {
                SplitItem::Line { number, text } => Ok((number, text.to_string())),
                SplitItem::Bad { number, error } => Err((number, error)),
            });
            Ok(())
        };
        for c in chunks {
            let _ = s.feed(c, &mut push);
        }
        let _ = s.finish(&mut push);
        out
    }

    #[test]
    fn splitter_joins_lines_across_chunks_and_strips_cr() {
        let got = split_all(&[b"G1 X", b"1\r\nG1 Y2\nG1", b" Z3"], 64);
        assert_eq!(
            got,
            vec![
                Ok((1, "G1 X1".into())),
                Ok((2, "G1 Y2".into())),
                Ok((3, "G1 Z3".into()))
            ]
        );
    }

    #[test]
    fn splitter_reports_an_overlong_line_once_and_recovers() {
        let big = vec![b'X'; 1000];
        let got = split_all(&[b"G0\n", &big[..400], &big[400..], b"\nG1\n"], 64);
        assert_eq!(got[0], Ok((1, "G0".into())));
        assert_eq!(got[1], Err((2, FrameError::TooLong { len: 1000, max: 64 })));
        assert_eq!(got[2], Ok((3, "G1".into())));
        assert_eq!(got.len(), 3);
    }

    #[test]
    fn splitter_names_the_line_with_invalid_utf8() {
        let got = split_all(&[b"G0\nG1 \xff\xfe\n"], 64);
        assert_eq!(got[1], Err((2, FrameError::NotUtf8 { offset: 3 })));
    }

    fn reference_checksum(s: &str) -> u8 {
        let mut cs: u8 = 0;
        for c in s.chars() {
            cs ^= c as u8;
        }
        cs
    }

    proptest! {
        #[test]
        fn encode_then_parse_round_trips(n in 0u32..=u32::MAX, cmd in "[A-Z][0-9]{1,3}( [A-Z]-?[0-9]{1,4}(\\.[0-9]{1,3})?){0,5}") {
            let line = encode_numbered(n, &cmd);
            let f = parse_framed(&line).expect("own encoding parses");
            prop_assert_eq!(f.number, Some(n));
            prop_assert_eq!(f.command, cmd.as_str());
        }

        #[test]
        fn checksum_matches_a_reference_for_any_ascii(s in "[\\x00-\\x7f]{0,200}") {
            prop_assert_eq!(checksum(s.as_bytes()), reference_checksum(&s));
        }

        #[test]
        fn any_single_byte_corruption_of_the_command_is_detected(
            cmd in "G1 X[0-9]{1,3} Y[0-9]{1,3}", pos in 0usize..6, flip in 1u8..=0x7f
        ) {
            let line = encode_numbered(7, &cmd);
            let star = line.find('*').expect("has checksum");
            let p = pos % star;
            let mut bytes = line.into_bytes();
            bytes[p] ^= flip;
            if let Ok(s) = String::from_utf8(bytes)
                && let Ok(f) = parse_framed(&s)
            {
                // XOR of one byte always changes the checksum, so no single
                // corrupted byte may pass verification.
                prop_assert!(false, "corruption went unnoticed: {:?}", f);
            }
        }

        #[test]
        fn clean_line_never_panics_and_respects_the_limit(s in "\\PC{0,300}") {
            let mut out = String::new();
            if clean_line(&s, 256, &mut out).is_ok() {
                prop_assert!(out.len() <= 256);
                prop_assert!(!out.contains(';'));
                prop_assert!(!out.contains("  "));
            }
        }

        #[test]
        fn splitter_output_is_independent_of_chunking(data in proptest::collection::vec(any::<u8>(), 0..400), cut in 0usize..400) {
            let cut = cut.min(data.len());
            let whole = split_all(&[&data], 32);
            let parts = split_all(&[&data[..cut], &data[cut..]], 32);
            prop_assert_eq!(whole, parts);
        }
    }
}
