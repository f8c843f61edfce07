use std::collections::VecDeque;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;

struct Transcript {
    host: GrblHost,
    now: Instant,
    text: String,
    events: Vec<GrblEvent>,
}

impl Transcript {
    fn new(config: GrblConfig) -> Self {
        let now = Instant::now();
        let mut host = GrblHost::new(config);
        // Swallow the first status poll so transcripts start clean.
        let _ = host.poll_transmit(now);
        Self {
            host,
            now,
            text: String::new(),
            events: Vec::new(),
        }
    }
    fn flush(&mut self) {
        while let Some(b) = self.host.poll_transmit(self.now) {
            if b.len() == 1 && b[0] != b'\n' && !b[0].is_ascii_alphanumeric() {
                let _ = writeln!(self.text, "> realtime 0x{:02x}", b[0]);
            } else {
                let _ = writeln!(self.text, "> {}", String::from_utf8_lossy(&b).trim_end());
            }
        }
        while let Some(e) = self.host.poll_event() {
            self.events.push(e);
        }
    }
    fn recv(&mut self, line: &str) {
        let _ = writeln!(self.text, "< {line}");
        self.host.handle_line(self.now, line);
        self.flush();
    }
}

#[test]
fn character_counting_fills_the_buffer_and_pops_one_line_per_ok() {
    let mut t = Transcript::new(GrblConfig {
        rx_buffer: 40,
        ..GrblConfig::default()
    });
    for i in 0..5 {
        t.host
            .push(Origin::Job { line: i }, "G1 X10.000 Y10.000")
            .expect("clean");
    }
    t.flush();
    // 19 bytes each: two fit under 40.
    assert_eq!(t.host.in_flight(), 2);
    t.recv("ok");
    assert_eq!(
        t.text,
        "> G1 X10.000 Y10.000\n> G1 X10.000 Y10.000\n< ok\n> G1 X10.000 Y10.000\n"
    );
    assert_eq!(
        t.events,
        vec![GrblEvent::Ok {
            origin: Origin::Job { line: 0 }
        }]
    );
}

#[test]
fn eeprom_writes_go_alone_mid_stream() {
    let mut t = Transcript::new(GrblConfig::default());
    t.host
        .push(Origin::Job { line: 1 }, "G1 X1")
        .expect("clean");
    t.host
        .push(Origin::Job { line: 2 }, "$110=500")
        .expect("clean");
    t.host
        .push(Origin::Job { line: 3 }, "G1 X2")
        .expect("clean");
    t.flush();
    t.recv("ok");
    t.recv("ok");
    t.recv("ok");
    assert_eq!(t.text, "> G1 X1\n< ok\n> $110=500\n< ok\n> G1 X2\n< ok\n");
}

#[test]
fn recognises_every_eeprom_writing_command() {
    for c in [
        "$110=500",
        "$RST=*",
        "$N0=G20",
        "$I=build",
        "G10 L2 P1 X0",
        "G10 L20 P1 X0",
        "G28.1",
        "G30.1",
    ] {
        assert!(writes_eeprom(c), "{c}");
    }
    for c in [
        "$H", "$X", "$$", "$I", "G10 L1", "G28", "G30", "G1 X1", "$N", "G101",
    ] {
        assert!(!writes_eeprom(c), "{c}");
    }
}

#[test]
fn drains_only_after_the_last_ok_and_an_idle_report_with_an_empty_planner() {
    let mut t = Transcript::new(GrblConfig::default());
    t.host
        .push(Origin::Job { line: 1 }, "G1 X10 F100")
        .expect("clean");
    t.flush();
    t.recv("<Run|MPos:1.000,0.000,0.000|Bf:14,100|FS:100,0>");
    t.recv("ok");
    t.recv("<Run|MPos:5.000,0.000,0.000|Bf:14,128|FS:100,0>");
    assert!(!t.events.contains(&GrblEvent::Drained));
    t.now += Duration::from_millis(250);
    t.flush();
    assert!(t.text.ends_with("> realtime 0x3f\n"), "{}", t.text);
    t.recv("<Idle|MPos:10.000,0.000,0.000|Bf:15,128|FS:0,0>");
    // One Idle report may answer an older query: a second one is needed.
    assert_ne!(t.events.last(), Some(&GrblEvent::Drained));
    t.recv("<Idle|MPos:10.000,0.000,0.000|Bf:15,128|FS:0,0>");
    assert_eq!(t.events.last(), Some(&GrblEvent::Drained));
}

#[test]
fn an_alarm_is_reported_with_its_meaning() {
    let mut t = Transcript::new(GrblConfig::default());
    t.host
        .push(Origin::Job { line: 4 }, "G1 X1000")
        .expect("clean");
    t.flush();
    t.recv("ALARM:1");
    t.recv("error:9");
    assert_eq!(
        t.events,
        vec![
            GrblEvent::Alarm {
                code: 1,
                message: alarm_message(1)
            },
            GrblEvent::Error {
                origin: Origin::Job { line: 4 },
                code: 9,
                message: error_message(9)
            }
        ]
    );
    assert!(alarm_message(1).contains("re-home"));
}

#[test]
fn every_error_and_alarm_code_has_a_message() {
    for c in (1..=17).chain(20..=38) {
        assert!(!error_message(c).starts_with("unknown"), "error {c}");
    }
    for c in 1..=10 {
        assert!(!alarm_message(c).starts_with("unknown"), "alarm {c}");
    }
    assert!(error_message(99).starts_with("unknown"));
}

#[test]
fn status_reports_parse_every_field_and_derive_wpos_from_the_last_wco() {
    let mut wco = None;
    let r = parse_status(
        "<Hold:1|MPos:10.000,5.000,-1.000|Bf:12,100|Ln:33|FS:500,12000|WCO:2.000,1.000,-3.000|Pn:XZ|Ov:110,100,90|A:SF>",
        &mut wco,
    )
    .expect("parses");
    assert_eq!(r.state, MachineState::Hold(1));
    assert_eq!(r.wpos, Some(vec![8.0, 4.0, 2.0]));
    assert_eq!(r.buffer, Some((12, 100)));
    assert_eq!(r.line, Some(33));
    assert_eq!((r.feed, r.spindle), (Some(500.0), Some(12000.0)));
    assert_eq!(r.pins, "XZ");
    assert_eq!(r.overrides, Some((110, 100, 90)));
    assert_eq!(r.accessories, "SF");
    // A later report without WCO still gets a work position.
    let r = parse_status("<Idle|MPos:3.000,3.000,3.000|FS:0,0>", &mut wco).expect("parses");
    assert_eq!(r.wpos, Some(vec![1.0, 2.0, 6.0]));
    assert_eq!(r.state.to_string(), "Idle");
    assert!(parse_status("<Dancing|MPos:0,0,0>", &mut wco).is_none());
}

#[test]
fn push_messages_answer_no_line() {
    let mut t = Transcript::new(GrblConfig::default());
    t.host.push(Origin::Console { id: 3 }, "$$").expect("clean");
    t.flush();
    t.recv("$0=10");
    t.recv("[MSG:Caution: Unlocked]");
    t.recv("[PRB:1.000,2.000,-0.500:1]");
    t.recv("[GC:G0 G54 G17 G21 G90 G94 M5 M9 T0 F0 S0]");
    assert_eq!(t.host.in_flight(), 1);
    t.recv("ok");
    assert_eq!(t.host.in_flight(), 0);
    assert!(t.events.contains(&GrblEvent::Setting {
        number: 0,
        value: "10".into()
    }));
    assert!(t.events.contains(&GrblEvent::Probe(ProbeResult {
        position: vec![1.0, 2.0, -0.5],
        success: true
    })));
}

#[test]
fn the_banner_is_a_reset_that_loses_everything_in_flight() {
    let mut t = Transcript::new(GrblConfig::default());
    t.host
        .push(Origin::Job { line: 1 }, "G1 X1")
        .expect("clean");
    t.flush();
    t.recv("Grbl 1.1h ['$' for help]");
    assert_eq!(t.host.in_flight(), 0);
    assert!(matches!(t.events.last(), Some(GrblEvent::Reset { .. })));
    t.recv("GrblHAL 1.1f ['$' or '$HELP' for help]");
    assert!(matches!(t.events.last(), Some(GrblEvent::Reset { .. })));
}

#[test]
fn opt_report_sets_the_receive_buffer() {
    let mut t = Transcript::new(GrblConfig::default());
    t.recv("[OPT:VNM,15,1024]");
    assert_eq!(t.host.rx_buffer(), 1024);
}

#[test]
fn overlong_and_unclean_lines_are_refused() {
    let mut h = GrblHost::new(GrblConfig::default());
    assert!(matches!(
        h.push(Origin::Internal, &"G1 X1 ".repeat(20)),
        Err(CommandError::TooLong { .. })
    ));
    assert_eq!(
        h.push(Origin::Internal, "G1 X1 ?"),
        Err(CommandError::NotClean)
    );
}

#[test]
fn realtime_bytes_jump_ahead_and_are_not_counted() {
    let mut t = Transcript::new(GrblConfig::default());
    t.host
        .push(Origin::Job { line: 1 }, "G1 X1")
        .expect("clean");
    t.host.realtime(Realtime::FeedHold);
    t.flush();
    assert_eq!(t.text, "> realtime 0x21\n> G1 X1\n");
    assert_eq!(t.host.in_flight_bytes(), 6);
}

// ---- A simulated GRBL for property tests ----

struct Grbl {
    rx: VecDeque<u8>,
    rx_cap: usize,
    executed: Vec<String>,
    overflow: usize,
    busy_until: u64,
    realtime_seen: usize,
}

impl Grbl {
    fn receive(&mut self, b: u8) {
        if b == b'?' || b == b'!' || b == b'~' {
            self.realtime_seen += 1;
            return;
        }
        if self.rx.len() >= self.rx_cap - 1 {
            self.overflow += 1;
        } else {
            self.rx.push_back(b);
        }
    }
    fn tick(&mut self, t: u64, out: &mut Vec<String>) {
        if t < self.busy_until {
            return;
        }
        if let Some(nl) = self.rx.iter().position(|&b| b == b'\n') {
            let bytes: Vec<u8> = self.rx.drain(..=nl).collect();
            let text = String::from_utf8_lossy(&bytes[..bytes.len() - 1]).to_string();
            if text.starts_with("BAD") {
                out.push("error:20".into());
            } else {
                out.push("ok".into());
            }
            self.executed.push(text);
            self.busy_until = t + 1 + (t % 3);
        }
    }
}

fn run_grbl(
    program: &[String],
    rx_cap: usize,
    noise: &[u8],
    latency: u64,
    mode: StreamMode,
) -> (Vec<String>, usize, usize, usize) {
    let t0 = Instant::now();
    let mut host = GrblHost::new(GrblConfig {
        rx_buffer: rx_cap,
        mode,
        max_line: 256,
        ..GrblConfig::default()
    });
    let mut fw = Grbl {
        rx: VecDeque::new(),
        rx_cap,
        executed: Vec::new(),
        overflow: 0,
        busy_until: 0,
        realtime_seen: 0,
    };
    let mut to_fw: VecDeque<(u64, u8)> = VecDeque::new();
    let mut to_host: VecDeque<(u64, String)> = VecDeque::new();
    let mut answered = 0usize;
    let mut max_in_flight = 0usize;
    let mut next = 0usize;
    for t in 0..200_000u64 {
        let now = t0 + Duration::from_millis(t);
        while to_host.front().is_some_and(|(at, _)| *at <= t) {
            if let Some((_, l)) = to_host.pop_front() {
                host.handle_line(now, &l);
            }
        }
        while host.queued() < 4 && next < program.len() {
            host.push(Origin::Job { line: next as u64 }, &program[next])
                .expect("clean");
            next += 1;
        }
        if t % 7 == 0 {
            host.realtime(Realtime::FeedHold);
        }
        while let Some(bytes) = host.poll_transmit(now) {
            for b in bytes {
                to_fw.push_back((t + latency, b));
            }
        }
        max_in_flight = max_in_flight.max(host.in_flight_bytes());
        while let Some(e) = host.poll_event() {
            if let GrblEvent::Ok {
                origin: Origin::Job { .. },
            }
            | GrblEvent::Error {
                origin: Origin::Job { .. },
                ..
            } = e
            {
                answered += 1;
            }
        }
        while to_fw.front().is_some_and(|(at, _)| *at <= t) {
            if let Some((_, b)) = to_fw.pop_front() {
                fw.receive(b);
            }
        }
        let mut out = Vec::new();
        fw.tick(t, &mut out);
        // Unasked push messages between answers.
        if let Some(&n) = noise.get(t as usize % noise.len().max(1))
            && n % 5 == 0
        {
            out.push("<Run|MPos:0.000,0.000,0.000|Bf:10,50>".into());
            out.push("[MSG:hello]".into());
        }
        for l in out {
            to_host.push_back((t + latency, l));
        }
        if answered == program.len() {
            break;
        }
    }
    (fw.executed, fw.overflow, max_in_flight, answered)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn every_line_is_delivered_once_in_order_within_the_buffer(
        program in proptest::collection::vec("(G1 X[0-9]{1,3} Y[0-9]{1,3}|BAD[0-9]{0,40}|\\$1[0-9]=[0-9]{1,3}|M3 S1000)", 1..80),
        rx in 48usize..256,
        noise in proptest::collection::vec(any::<u8>(), 1..20),
        latency in 0u64..10,
        counting in any::<bool>(),
    ) {
        let mode = if counting { StreamMode::CharacterCounting } else { StreamMode::SendResponse };
        let (executed, overflow, max_in_flight, answered) = run_grbl(&program, rx, &noise, latency, mode);
        prop_assert_eq!(&executed, &program);
        prop_assert_eq!(answered, program.len());
        prop_assert_eq!(overflow, 0);
        prop_assert!(max_in_flight < rx);
    }
}
