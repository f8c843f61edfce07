#![no_main]
//! The `gcode` wrapper never panics, whatever the line.
use libfuzzer_sys::fuzz_target;
use microfactory_protocol::block::parse_block;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(b) = parse_block(text) {
            for c in b.commands() {
                let _ = c.args().count();
            }
        }
    }
});
