use proptest::prelude::*;

use super::*;
use crate::block::{Code, LineKind, parse_block};
use crate::framing::{DEFAULT_MAX_LINE, clean_line};

/// A recognised move as comparable data: the code, each word as its
/// letter and exact bits (so `-0` and `0` differ), and the comment.
type Seen = (u8, Vec<(char, u32)>, Option<String>);

fn fast(raw: &str) -> Option<Seen> {
    let m = parse_move(raw, DEFAULT_MAX_LINE)?;
    let w = m.words;
    assert_eq!((w.i, w.j), (None, None), "the fast path reads no arcs");
    let words = [('E', w.e), ('F', w.f), ('X', w.x), ('Y', w.y), ('Z', w.z)]
        .into_iter()
        .filter_map(|(l, v)| v.map(|v| (l, v.to_bits())))
        .collect();
    Some((m.motion, words, m.comment.map(str::to_string)))
}

/// What the general path (`clean_line` then `parse_block`) makes of the
/// line: an error, something other than one plain `G0`/`G1`, or the move.
fn general(raw: &str) -> Result<Option<Seen>, String> {
    let mut clean = String::new();
    let comment = clean_line(raw, DEFAULT_MAX_LINE, &mut clean).map_err(|e| e.to_string())?;
    let block = parse_block(&clean).map_err(|e| e.to_string())?;
    if block.kind != LineKind::Words || block.line_number.is_some() {
        return Ok(None);
    }
    let cmds: Vec<_> = block.commands().collect();
    let [cmd] = cmds[..] else {
        return Ok(None);
    };
    let motion = match cmd.code {
        Some(c) if c == Code::g(0) => 0,
        Some(c) if c == Code::g(1) => 1,
        _ => return Ok(None),
    };
    let mut words: Vec<(char, u32)> = cmd.args().map(|w| (w.letter, w.value.to_bits())).collect();
    words.sort_by_key(|w| w.0);
    Ok(Some((motion, words, comment.map(str::to_string))))
}

/// The guarantee: whatever the fast path accepts, the general path
/// accepts too, with the same code, words, values and comment.
fn agrees(raw: &str) -> Result<bool, TestCaseError> {
    let Some(f) = fast(raw) else {
        return Ok(false);
    };
    match general(raw) {
        Ok(Some(g)) => prop_assert_eq!(&f, &g, "line {:?}", raw),
        Ok(None) => prop_assert!(
            false,
            "{raw:?}: fast path took a line that is not a plain move"
        ),
        Err(e) => prop_assert!(
            false,
            "{raw:?}: fast path took a line the general path refuses: {e}"
        ),
    }
    Ok(true)
}

#[test]
fn a_slicer_move_is_read_with_its_words_and_comment() {
    let m = parse_move("G1 X98.382 Y-107.7 E.35 F1800 ; perimeter", 256).expect("fast");
    assert_eq!(m.motion, 1);
    assert_eq!(m.words.x, Some(98.382));
    assert_eq!(m.words.y, Some(-107.7));
    assert_eq!(m.words.e, Some(0.35));
    assert_eq!(m.words.f, Some(1800.0));
    assert_eq!(m.words.z, None);
    assert_eq!(m.comment, Some("perimeter"));
}

#[test]
fn a_cam_move_with_leading_zeros_and_trailing_blanks_is_read() {
    let m = parse_move("G01 X-0.3852 Y2.3697  F20    ", 256).expect("fast");
    assert_eq!(m.motion, 1);
    assert_eq!(m.words.f, Some(20.0));
    assert_eq!(parse_move("G00 Z0.0500  ", 256).expect("fast").motion, 0);
}

#[test]
fn anything_unusual_is_left_to_the_general_path() {
    for line in [
        "N12 G1 X1*97",
        "G1 X1*97",
        "G1 X1 (note)",
        "G2 X1 Y1 I1 J0",
        "G1 X1 I1",
        "G1 X1 X2",
        "G1X1",
        "G1 X1Y2",
        "G10 L2",
        "G1.0 X1",
        "G 1 X1",
        "G1 X",
        "G1 X.",
        "G1 X-",
        "G1 X- 1",
        "G1 X--1",
        "G1 X1.2.3",
        "G1 X1e5",
        "G1 X1\r",
        "G1 X1\0",
        "G1 X99999999999999",
        "X1 Y2",
        "G92 E0",
        "M104 S200",
        "",
        "G",
    ] {
        assert!(parse_move(line, 256).is_none(), "{line:?} was taken");
    }
}

/// Comments are not limited (issue 11), so the fast path reads a move
/// with a 300-byte or 100 KB comment as the general path does; a command
/// over the limit it leaves to the general path, which refuses it.
#[test]
fn long_comments_are_read_and_long_commands_left_to_the_general_path() {
    for len in [300, 100_000] {
        let line = format!("G1 X1 Y2 ;{}", "c".repeat(len));
        assert!(
            agrees(&line).expect("agrees"),
            "{len}-byte comment declined"
        );
    }
    let line = format!("G1 X0.{}1", "0".repeat(300));
    assert!(parse_move(&line, 256).is_none());
    assert!(general(&line).is_err());
}

#[test]
fn long_numbers_fall_back_to_the_standard_parser_with_the_same_result() {
    for line in [
        "G1 X123456789.123",
        "G1 X0.00000000001",
        "G1 X16777217",
        "G1 X16777216",
        "G1 X1.00000000000000000000001",
        "G1 X000000000000000000000000000001.5",
        "G1 X-0",
        "G1 X+0.5",
    ] {
        assert!(agrees(line).expect("agrees"), "{line:?} was declined");
    }
}

#[test]
fn every_line_of_every_shared_file_agrees_with_the_general_path() {
    let (mut files, mut moves, mut taken) = (0, 0, 0);
    for (p, text) in crate::testdata::all() {
        files += 1;
        for (n, raw) in text.lines().enumerate() {
            if matches!(general(raw), Ok(Some(_))) {
                moves += 1;
            }
            match agrees(raw) {
                Ok(true) => taken += 1,
                Ok(false) => {}
                Err(e) => panic!("{}:{}: {e}", p.display(), n + 1),
            }
        }
    }
    assert_eq!(files, 5);
    // The point of the fast path: it must take (nearly) every plain move.
    assert!(taken * 100 >= moves * 99, "took {taken} of {moves} moves");
}

/// Pieces of lines: valid ones, near misses, and things only the general
/// path knows.
fn word() -> impl Strategy<Value = String> {
    (
        prop::sample::select(vec!["", " ", "  ", "\t", " \t"]),
        prop::sample::select(vec![
            "X", "Y", "Z", "E", "F", "x", "y", "z", "e", "f", "I", "J", "S", "N", "G", "T", "M",
        ]),
        prop::sample::select(vec!["", "", "-", "+", "--", " ", " -", "-+"]),
        prop_oneof![
            "[0-9]{0,4}(\\.[0-9]{0,6})?",
            "[0-9]{1,12}(\\.[0-9]{0,12})?",
            "\\.[0-9]{1,4}",
            prop::sample::select(vec![
                ".",
                "..",
                "1.2.3",
                "1e5",
                "0",
                "00.000",
                "99999999999"
            ])
            .prop_map(str::to_string),
        ],
    )
        .prop_map(|(sep, l, sign, n)| format!("{sep}{l}{sign}{n}"))
}

fn any_line() -> impl Strategy<Value = String> {
    (
        prop::sample::select(vec!["", "", " ", "\t", "N12 ", "n7 "]),
        prop::sample::select(vec![
            "G0", "G1", "G00", "G01", "g0", "g1", "G2", "G3", "G92", "G10", "G1.0", "G 1", "G001",
            "M1", "T1", "",
        ]),
        prop::collection::vec(word(), 0..7),
        prop::sample::select(vec!["", "", " ", "  ", "\t", "*97", " *12", "\r"]),
        prop::sample::select(vec![
            "",
            "",
            ";",
            "; note",
            ";LAYER_CHANGE",
            " ;x;y",
            " (c)",
            "(c",
        ]),
    )
        .prop_map(|(pre, code, words, tail, comment)| {
            format!("{pre}{code}{}{tail}{comment}", words.concat())
        })
}

/// Lines of exactly the hot shape, each letter at most once.
fn plain_move() -> impl Strategy<Value = String> {
    (
        prop::sample::select(vec!["G0", "G1", "G00", "G01", "g1"]),
        prop::sample::subsequence(vec!['X', 'Y', 'Z', 'E', 'F'], 0..=5),
        prop::collection::vec(
            (
                prop::bool::ANY,
                "[0-9]{0,5}",
                prop::option::of("[0-9]{0,7}"),
                prop::sample::select(vec![" ", "  ", "\t"]),
            ),
            5,
        ),
        prop::sample::select(vec!["", " ", ";", " ; move"]),
    )
        .prop_map(|(code, letters, values, tail)| {
            let mut s = code.to_string();
            for (l, (neg, int, frac, sep)) in letters.into_iter().zip(values) {
                let int = if int.is_empty() && frac.as_deref().is_none_or(str::is_empty) {
                    "0".to_string()
                } else {
                    int
                };
                let frac = frac.map_or(String::new(), |f| format!(".{f}"));
                let sign = if neg { "-" } else { "" };
                s.push_str(&format!("{sep}{l}{sign}{int}{frac}"));
            }
            s + tail
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    #[test]
    fn the_fast_path_declines_or_agrees_with_the_general_path(line in any_line()) {
        agrees(&line)?;
    }

    #[test]
    fn plain_moves_are_taken_and_read_exactly_as_the_general_path_reads_them(line in plain_move()) {
        prop_assert!(agrees(&line)?, "{:?} was declined", line);
    }

    #[test]
    fn arbitrary_text_never_makes_it_panic_or_disagree(line in "\\PC{0,80}") {
        agrees(&line)?;
    }
}
