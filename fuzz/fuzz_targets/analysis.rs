#![no_main]
//! Analysis and pre-flight never panic on arbitrary bytes.
use libfuzzer_sys::fuzz_target;
use microfactory_protocol::analysis::{AnalyzerConfig, analyze_bytes};
use microfactory_protocol::canned::CannedExpander;
use microfactory_protocol::preflight::{Dialect, check_program};

fuzz_target!(|data: &[u8]| {
    let _ = analyze_bytes(data, AnalyzerConfig::default());
    if let Ok(text) = std::str::from_utf8(data) {
        for d in [Dialect::Marlin2, Dialect::Grbl11, Dialect::GrblHal] {
            let _ = check_program(d, text.lines());
        }
        let mut x = CannedExpander::new();
        let mut out = Vec::new();
        for (i, l) in text.lines().enumerate() {
            let _ = x.push_line(i as u64 + 1, l, &mut out);
        }
    }
});
