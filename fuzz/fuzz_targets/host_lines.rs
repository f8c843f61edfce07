#![no_main]
//! The Marlin and GRBL host state machines never panic on received lines.
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use microfactory_protocol::grbl::{GrblConfig, GrblHost};
use microfactory_protocol::host::Origin;
use microfactory_protocol::marlin::{MarlinConfig, MarlinHost};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let t0 = Instant::now();
    let mut m = MarlinHost::new(MarlinConfig::default());
    let mut g = GrblHost::new(GrblConfig::default());
    m.handshake();
    for i in 0..8 {
        let _ = m.push(Origin::Job { line: i }, "G1 X1 Y1");
        let _ = g.push(Origin::Job { line: i }, "G1 X1 Y1");
    }
    for (i, line) in text.lines().enumerate() {
        let now = t0 + Duration::from_millis(i as u64 * 7);
        while m.poll_transmit(now).is_some() {}
        while g.poll_transmit(now).is_some() {}
        m.handle_line(now, line);
        g.handle_line(now, line);
        m.handle_timeout(now);
        g.handle_timeout(now);
        while m.poll_event().is_some() {}
        while g.poll_event().is_some() {}
    }
});
