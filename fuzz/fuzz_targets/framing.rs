#![no_main]
//! Framing never panics and its own encoding always parses back.
use libfuzzer_sys::fuzz_target;
use microfactory_protocol::framing::{LineSplitter, clean_line, encode_numbered, parse_framed};

fuzz_target!(|data: &[u8]| {
    let mut s = LineSplitter::new(96);
    let _ = s.feed(data, |_| Ok::<(), ()>(()));
    let _ = s.finish(|_| Ok::<(), ()>(()));
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = parse_framed(text);
        let mut out = String::new();
        if clean_line(text, 256, &mut out).is_ok() && !out.is_empty() && !out.contains('*') {
            let line = encode_numbered(42, &out);
            let f = parse_framed(&line).expect("own encoding parses");
            assert_eq!(f.command, out.trim());
        }
    }
});
