#![no_main]
//! Whatever line the G0/G1 fast path takes, the general path takes too and
//! reads the same code, words (bit for bit) and comment.
use libfuzzer_sys::fuzz_target;
use microfactory_protocol::block::{Code, LineKind, MotionWords, parse_block};
use microfactory_protocol::fastpath::parse_move;
use microfactory_protocol::framing::{DEFAULT_MAX_LINE, clean_line};

fn bits(w: &MotionWords) -> [Option<u32>; 7] {
    [w.x, w.y, w.z, w.e, w.f, w.i, w.j].map(|v| v.map(f32::to_bits))
}

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let Some(fast) = parse_move(raw, DEFAULT_MAX_LINE) else {
        return;
    };
    let mut clean = String::new();
    let comment = clean_line(raw, DEFAULT_MAX_LINE, &mut clean).expect("general path frames it");
    assert_eq!(comment, fast.comment);
    let block = parse_block(&clean).expect("general path parses it");
    assert_eq!(block.kind, LineKind::Words);
    assert_eq!(block.line_number, None);
    let cmds: Vec<_> = block.commands().collect();
    assert_eq!(cmds.len(), 1);
    assert_eq!(cmds[0].code, Some(Code::g(u32::from(fast.motion))));
    // Every word is a motion word, each letter once, and they agree.
    let letters: Vec<char> = cmds[0].args().map(|w| w.letter).collect();
    assert!(letters.iter().all(|l| "XYZEF".contains(*l)));
    let mut unique = letters.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), letters.len());
    assert_eq!(bits(&MotionWords::of(&cmds[0])), bits(&fast.words));
});
