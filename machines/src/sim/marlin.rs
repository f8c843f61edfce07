//! Marlin 2.1 as a host sees it: line numbers and checksums, four command
//! slots, a planner that consumes time, heaters, `busy:` keep-alives and
//! the emergency parser.
//!
//! * A line is read from the RX buffer only when one of the four command
//!   slots is free, so while the slots are full the RX buffer fills, and
//!   bytes beyond it are lost (see the link model in [`super`]).
//! * Line numbers are checked before checksums, as `queue.cpp` does. On an
//!   error Marlin prints `Error:..., Last Line: n` and `Resend: n+1` (and
//!   `ok` with `ok_after_resend`), and empties its RX buffer. Lines already
//!   in flight that arrive later carry the wrong number and each draws its
//!   own error and `Resend:`: the duplicate resend requests a host must
//!   tolerate. This is real Marlin behaviour, not a silent discard. Only a
//!   line numbered `Last Line` or the one before it is dropped without a
//!   word (Marlin 2.1: "a request-for-resend line was already in transit").
//! * The flush takes what has arrived: a line still arriving loses its head
//!   and its tail arrives as a line without a number. Like Marlin, the
//!   model runs such a line as it is; what is not G-code draws
//!   `echo:Unknown command` and an `ok`, and a tail that starts with a
//!   command runs that command. A line whose `N` became `n` is an unknown
//!   command too, as in default Marlin, whose parser skips only an upper-
//!   case `N<digits>`; with `case_insensitive` (`GCODE_CASE_INSENSITIVE`)
//!   it runs its command unchecked.
//! * `ok` is sent when the command at the head has executed: a move once
//!   it is in the planner (which waits for a free block), `M400`/`G4`/`G28`
//!   once the planner is empty and the dwell or homing is over, `M109` and
//!   `M190` once the temperature is within 1 degree (no residency time).
//!   `ok N<n> P<p> B<b>` reports, like Marlin's `ok_to_send`, the line
//!   number of the acknowledged command (left out for a command that came
//!   without one), free planner blocks, and free slots counting the
//!   acknowledged command's slot as still taken.
//! * `echo:busy: processing` every `M113` interval (2 s) of machine time
//!   while a command blocks; ` T:... W:?` every machine second in
//!   `M109`/`M190`; `M155 S<n>` autoreports every n *real* seconds. No
//!   unsolicited line comes faster than every 20 ms real, whatever the
//!   time scale.
//! * With `send_wait` (`NO_TIMEOUTS`), `wait` every machine second (at
//!   most every 20 ms real) while no command is queued and nothing waits
//!   in the receive buffer, as Marlin's `get_serial_commands` prints it.
//! * `silent_drop_after_line`: the first numbered line read once that many
//!   lines have executed is dropped without any answer (a fault; Marlin
//!   itself drops only copies of its last line that way).
//! * `M112`, `M108` and `M410` act as their line arrives (emergency
//!   parser). After `M112` (or the injected thermal runaway) the printer
//!   is dead until the PTY is re-created: it reads and answers nothing.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::time::Duration;

use microfactory_protocol::block::{CodeLetter, LineKind, parse_block};
use microfactory_protocol::framing::{FrameError, clean_line, parse_framed};
use tokio::time::Instant;

use super::planner::{Planner, move_time};
use super::{Firmware, Io, RxBuffer, SimConfig, Stats, scaled};

/// Command slots (`BUFSIZE`).
const BUFSIZE: usize = 4;
/// Longest command a slot holds (`MAX_CMD_SIZE`), terminator included.
const MAX_CMD_SIZE: usize = 96;
/// Usable planner blocks (`BLOCK_BUFFER_SIZE` 16, one kept empty).
const PLANNER_BLOCKS: usize = 15;
const AMBIENT: f64 = 20.0;
/// Machine seconds a `G28` takes.
const HOMING_SECS: f64 = 5.0;
/// Acceleration, mm/s².
const ACCEL: f64 = 1000.0;
/// Shortest interval between unsolicited reports, in real time, so a high
/// time scale cannot flood the link.
const MIN_REPORT_INTERVAL: Duration = Duration::from_millis(20);

#[derive(Debug)]
struct Heater {
    temp: f64,
    target: f64,
    /// Temperature the heater would settle at on full power.
    max: f64,
    /// Time constant, machine seconds.
    tau: f64,
}

impl Heater {
    fn new(max: f64, tau: f64) -> Self {
        Self {
            temp: AMBIENT,
            target: 0.0,
            max,
            tau,
        }
    }

    /// First-order model: full power below the target, holding at it.
    fn update(&mut self, dt: f64) {
        let heating = self.target > 0.0 && self.temp < self.target - 0.5;
        let goal = if heating {
            self.max
        } else if self.target > 0.0 {
            self.target
        } else {
            AMBIENT
        };
        self.temp += (goal - self.temp) * (1.0 - (-dt / self.tau).exp());
        if heating && self.temp > self.target {
            self.temp = self.target;
        }
    }

    fn power(&self) -> u32 {
        if self.target <= 0.0 {
            0
        } else if self.temp < self.target - 0.5 {
            127
        } else {
            ((self.target - AMBIENT) / (self.max - AMBIENT) * 127.0).clamp(0.0, 127.0) as u32
        }
    }
}

/// What the command at the head of the queue waits for before its `ok`.
#[derive(Debug)]
enum Wait {
    /// A move waiting for room in the planner.
    Planner(Duration),
    /// Wait for the planner to empty, then do `then`.
    Sync(AfterSync),
    /// Dwell or homing in progress.
    Until(Instant),
    /// M109/M190.
    Temp { bed: bool, cool_too: bool },
    /// M0/M1 until M108.
    User,
}

#[derive(Debug)]
enum AfterSync {
    Nothing,
    Dwell(f64),
    Home,
}

pub(crate) struct Marlin {
    scale: f64,
    advanced_ok: bool,
    ok_after_resend: bool,
    action_lines: bool,
    send_wait: bool,
    /// The next `wait` while idle (`NO_TIMEOUTS`).
    next_wait: Option<Instant>,
    silent_drop_after_line: Option<u64>,
    /// The silent drop has happened (kept across reboots: it fires once).
    silent_drop_done: bool,
    /// `GCODE_CASE_INSENSITIVE`: the parser skips `n<digits>` too.
    case_insensitive: bool,
    /// Queued commands with the line number they came with, if any.
    slots: VecDeque<(String, Option<i64>)>,
    /// The head slot is executing and waits for this.
    wait: Option<Wait>,
    last_n: i64,
    planner: Planner<()>,
    pos: [f64; 4],
    feed: f64,
    relative: bool,
    relative_e: bool,
    hotend: Heater,
    bed: Heater,
    heat_updated: Instant,
    autoreport: Option<Duration>,
    next_autoreport: Option<Instant>,
    busy_interval: f64,
    next_busy: Option<Instant>,
    next_temp_line: Option<Instant>,
    halted: bool,
    /// Bytes of the line now arriving, for the emergency parser.
    arriving: Vec<u8>,
    clean: String,
}

impl Marlin {
    pub(crate) fn new(config: &SimConfig, now: Instant) -> Self {
        Self {
            scale: config.time_scale,
            advanced_ok: config.advanced_ok,
            ok_after_resend: config.ok_after_resend,
            action_lines: config.action_lines,
            send_wait: config.send_wait,
            next_wait: None,
            silent_drop_after_line: config.silent_drop_after_line,
            silent_drop_done: false,
            case_insensitive: config.case_insensitive,
            slots: VecDeque::with_capacity(BUFSIZE),
            wait: None,
            last_n: 0,
            planner: Planner::new(PLANNER_BLOCKS, now),
            pos: [0.0; 4],
            feed: 50.0 * 60.0,
            relative: false,
            relative_e: false,
            hotend: Heater::new(300.0, 40.0),
            bed: Heater::new(130.0, 120.0),
            heat_updated: now,
            autoreport: None,
            next_autoreport: None,
            busy_interval: 2.0,
            next_busy: None,
            next_temp_line: None,
            halted: false,
            arriving: Vec::with_capacity(MAX_CMD_SIZE),
            clean: String::with_capacity(MAX_CMD_SIZE),
        }
    }

    /// A machine-time interval as real time, never below the flood guard.
    fn report_interval(&self, machine_secs: f64) -> Duration {
        scaled(machine_secs, self.scale).max(MIN_REPORT_INTERVAL)
    }

    fn update_heaters(&mut self, now: Instant) {
        let dt = now
            .saturating_duration_since(self.heat_updated)
            .as_secs_f64()
            * self.scale;
        self.heat_updated = now;
        self.hotend.update(dt);
        self.bed.update(dt);
    }

    fn temps(&self) -> String {
        format!(
            "T:{:.1} /{:.1} B:{:.1} /{:.1} @:{} B@:{}",
            self.hotend.temp,
            self.hotend.target,
            self.bed.temp,
            self.bed.target,
            self.hotend.power(),
            self.bed.power()
        )
    }

    /// Acknowledges the command at the head of the slots (call before
    /// popping it).
    fn ok(&self, io: &mut Io<'_>) {
        if self.advanced_ok {
            // Like Marlin, N is the acknowledged command's own number (none
            // for a command that came without one), and B counts its slot
            // as still taken.
            let number = match self.slots.front() {
                Some((_, Some(n))) => format!(" N{n}"),
                _ => String::new(),
            };
            let line = format!(
                "ok{number} P{} B{}",
                self.planner.free(),
                BUFSIZE - self.slots.len()
            );
            io.line(&line);
        } else {
            io.line("ok");
        }
    }

    fn kill(&mut self, io: &mut Io<'_>) {
        io.line("Error:Printer halted. kill() called!");
        self.halted = true;
        self.planner.clear();
        self.slots.clear();
        self.wait = None;
        self.hotend.target = 0.0;
        self.bed.target = 0.0;
    }

    fn line_error(&mut self, msg: &str, rx: &mut RxBuffer, io: &mut Io<'_>) {
        io.line(&format!("Error:{msg}, Last Line: {}", self.last_n));
        // Marlin empties its receive buffer and asks for the next line.
        if !self.arriving.is_empty() {
            // The rest of that line arrives after the flush and is read as
            // a line of its own (see the module docs).
            tracing::debug!(
                head = %String::from_utf8_lossy(&self.arriving),
                "the flush cut a line that was arriving"
            );
        }
        rx.clear();
        io.line(&format!("Resend: {}", self.last_n + 1));
        Stats::inc(&io.stats.resends_requested);
        if self.ok_after_resend {
            io.line("ok");
        }
    }

    /// Checks a received line as Marlin's `get_serial_commands` does and
    /// queues its command. Returns false if it was rejected.
    fn accept(&mut self, raw: &[u8], rx: &mut RxBuffer, io: &mut Io<'_>) {
        let text = String::from_utf8_lossy(raw);
        let text = text.trim();
        if text.is_empty() {
            return;
        }
        if text.starts_with('N')
            && !self.silent_drop_done
            && self
                .silent_drop_after_line
                .is_some_and(|n| io.stats.lines_executed.load(Ordering::Relaxed) >= n)
        {
            // The injected fault: read, then forgotten without a word.
            self.silent_drop_done = true;
            return;
        }
        let (command, number): (String, Option<i64>) = if let Some(rest) = text.strip_prefix('N') {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            let own: i64 = rest[..digits].parse().unwrap_or(-1);
            let mut n = own;
            let is_m110 = text.contains("M110");
            if is_m110 {
                // Marlin reads the number after M110's own N.
                if let Some(i) = text.find("M110")
                    && let Some(j) = text[i..].find('N')
                {
                    let s = &text[i + j + 1..];
                    let d = s.bytes().take_while(u8::is_ascii_digit).count();
                    n = s[..d].parse().unwrap_or(n);
                }
            } else if n != self.last_n + 1 {
                if (self.last_n - 1..=self.last_n).contains(&n) {
                    // Marlin 2.1 drops a line it already has without a
                    // word: a copy that was in transit when it asked.
                    return;
                }
                Stats::inc(&io.stats.line_number_errors);
                self.line_error("Line Number is not Last Line Number+1", rx, io);
                return;
            }
            match parse_framed(text) {
                Ok(f) => {
                    self.last_n = n;
                    // `ok` reports the digits after the line's first N.
                    (f.command.to_string(), Some(own))
                }
                Err(FrameError::NoChecksum) => {
                    Stats::inc(&io.stats.checksum_errors);
                    self.line_error("No Checksum with line number", rx, io);
                    return;
                }
                Err(_) => {
                    Stats::inc(&io.stats.checksum_errors);
                    self.line_error("checksum mismatch", rx, io);
                    return;
                }
            }
        } else {
            // Unnumbered lines are taken as they are; a checksum is ignored.
            // Marlin's parser skips a leading `N<digits>`, and `n<digits>`
            // only when built with `GCODE_CASE_INSENSITIVE`: there a
            // numbered line whose `N` became `n` runs unchecked; by default
            // the `n` is read as an unknown command.
            let body = text.split_once('*').map_or(text, |(c, _)| c);
            (
                skip_line_number(body, self.case_insensitive).to_string(),
                None,
            )
        };
        let mut clean = std::mem::take(&mut self.clean);
        let mut cmd = command;
        truncate_at_boundary(&mut cmd, MAX_CMD_SIZE - 1);
        match clean_line(&cmd, MAX_CMD_SIZE, &mut clean) {
            Ok(_) if clean.is_empty() => {}
            Ok(_) => self.slots.push_back((clean.clone(), number)),
            // Marlin has no such check: bytes the log cannot hold (control
            // bytes) make an unknown command, answered like any.
            Err(_) => self.slots.push_back((cmd.trim().to_string(), number)),
        }
        self.clean = clean;
    }

    /// Executes the head slot; sets `self.wait` when it must wait.
    fn execute(&mut self, cmd: &str, io: &mut Io<'_>) {
        let upper = cmd.to_ascii_uppercase();
        // Marlin's parser takes the first letter as the command: a line
        // that does not start with G, M or T is an unknown command, even
        // if a code follows (`L38 G1 X5`, a line whose `N` was damaged).
        let starts_with_code = upper.starts_with(['G', 'M', 'T']);
        let is_m110 = upper == "M110" || upper.starts_with("M110 ");
        let is_gcode = is_m110
            || (starts_with_code && parse_block(&upper).is_ok_and(|b| b.codes().next().is_some()));
        if is_gcode {
            // What is not G-code does nothing and is not logged (the tail
            // of a line cut by a flush, a line that lost its `N`).
            io.executed.push(cmd.to_string());
        }
        if is_m110 {
            // `gcode` reads M110's N as a line number; handle it first.
            if let Some(i) = upper.find('N') {
                let s = &upper[i + 1..];
                let d = s.bytes().take_while(u8::is_ascii_digit).count();
                if let Ok(n) = s[..d].parse() {
                    self.last_n = n;
                }
            }
            self.ok(io);
            self.slots.pop_front();
            return;
        }
        let parsed = parse_block(&upper);
        let Some((block, code)) = parsed
            .ok()
            .filter(|_| starts_with_code)
            .and_then(|b| b.codes().next().map(|c| (b.clone(), c)))
        else {
            io.line(&format!("echo:Unknown command: \"{cmd}\""));
            self.ok(io);
            self.slots.pop_front();
            return;
        };
        let arg = |l: char| block.arg(l).map(f64::from);
        let now = io.now;
        match (code.letter, code.major, code.minor) {
            (CodeLetter::G, 0 | 1, 0) => {
                if let Some(f) = arg('F')
                    && f > 0.0
                {
                    self.feed = f;
                }
                let mut target = self.pos;
                for (i, l) in ['X', 'Y', 'Z', 'E'].into_iter().enumerate() {
                    if let Some(v) = arg(l) {
                        let rel = if i == 3 {
                            self.relative || self.relative_e
                        } else {
                            self.relative
                        };
                        target[i] = if rel { self.pos[i] + v } else { v };
                    }
                }
                let d: Vec<f64> = (0..4).map(|i| (target[i] - self.pos[i]).abs()).collect();
                self.pos = target;
                let xyz = (d[0] * d[0] + d[1] * d[1] + d[2] * d[2]).sqrt();
                let dist = if xyz > 0.0 { xyz } else { d[3] };
                if dist > 0.0 {
                    let v = (self.feed / 60.0).clamp(0.1, 300.0);
                    let limited = (dist / v).max(d[2] / 10.0).max(d[3] / 50.0);
                    let t = move_time(dist, dist / limited, ACCEL);
                    self.wait = Some(Wait::Planner(scaled(t, self.scale)));
                }
            }
            (CodeLetter::G, 2 | 3, 0) => {
                let (i, j) = (arg('I').unwrap_or(0.0), arg('J').unwrap_or(0.0));
                let r = (i * i + j * j).sqrt().max(arg('R').unwrap_or(0.0).abs());
                let ex =
                    arg('X').map_or(
                        self.pos[0],
                        |v| if self.relative { self.pos[0] + v } else { v },
                    );
                let ey =
                    arg('Y').map_or(
                        self.pos[1],
                        |v| if self.relative { self.pos[1] + v } else { v },
                    );
                let chord = ((ex - self.pos[0]).powi(2) + (ey - self.pos[1]).powi(2)).sqrt();
                let len = if r > 0.0 && chord > 0.0 {
                    2.0 * r * (chord / (2.0 * r)).clamp(0.0, 1.0).asin()
                } else {
                    2.0 * std::f64::consts::PI * r
                };
                self.pos[0] = ex;
                self.pos[1] = ey;
                if let Some(f) = arg('F') {
                    self.feed = f.max(1.0);
                }
                let t = move_time(len, (self.feed / 60.0).clamp(0.1, 300.0), ACCEL);
                if t > 0.0 {
                    self.wait = Some(Wait::Planner(scaled(t, self.scale)));
                }
            }
            (CodeLetter::G, 4, 0) => {
                let secs = arg('S').unwrap_or(0.0) + arg('P').unwrap_or(0.0) / 1000.0;
                self.wait = Some(Wait::Sync(AfterSync::Dwell(secs)));
            }
            (CodeLetter::G, 28, 0) => self.wait = Some(Wait::Sync(AfterSync::Home)),
            (CodeLetter::G, 90, 0) => self.relative = false,
            (CodeLetter::G, 91, 0) => self.relative = true,
            (CodeLetter::G, 92, 0) => {
                for (i, l) in ['X', 'Y', 'Z', 'E'].into_iter().enumerate() {
                    if let Some(v) = arg(l) {
                        self.pos[i] = v;
                    }
                }
            }
            (CodeLetter::G, 20 | 21 | 29 | 53..=59, _) => {}
            (CodeLetter::M, 82, 0) => self.relative_e = false,
            (CodeLetter::M, 83, 0) => self.relative_e = true,
            (CodeLetter::M, 0 | 1, 0) => {
                if self.action_lines {
                    io.line("//action:paused");
                }
                self.wait = Some(Wait::User);
            }
            (CodeLetter::M, 104, 0) => self.hotend.target = arg('S').unwrap_or(0.0).max(0.0),
            (CodeLetter::M, 140, 0) => self.bed.target = arg('S').unwrap_or(0.0).max(0.0),
            (CodeLetter::M, 109 | 190, 0) => {
                let bed = code.major == 190;
                let h = if bed { &mut self.bed } else { &mut self.hotend };
                let cool_too = block.arg('R').is_some();
                if let Some(t) = arg('S').or(arg('R')) {
                    h.target = t.max(0.0);
                }
                self.wait = Some(Wait::Temp { bed, cool_too });
                self.next_temp_line = Some(now + self.report_interval(1.0));
            }
            (CodeLetter::M, 105, 0) => {
                self.update_heaters(now);
                // M105 answers with its own `ok` line.
                io.line(&format!("ok {}", self.temps()));
                self.slots.pop_front();
                return;
            }
            (CodeLetter::M, 155, 0) => {
                let s = arg('S').unwrap_or(0.0);
                self.autoreport = (s > 0.0).then(|| Duration::from_secs_f64(s.min(60.0)));
                self.next_autoreport = self.autoreport.map(|d| now + d);
            }
            (CodeLetter::M, 113, 0) => {
                self.busy_interval = arg('S').unwrap_or(2.0).clamp(0.0, 60.0);
            }
            (CodeLetter::M, 114, 0) => {
                io.line(&format!(
                    "X:{:.2} Y:{:.2} Z:{:.2} E:{:.2} Count X:0 Y:0 Z:0",
                    self.pos[0], self.pos[1], self.pos[2], self.pos[3]
                ));
            }
            (CodeLetter::M, 115, 0) => self.m115(io),
            (CodeLetter::M, 400, 0) => self.wait = Some(Wait::Sync(AfterSync::Nothing)),
            (CodeLetter::M, 108, 0) => {}
            (CodeLetter::M, 410, 0) => self.planner.clear(),
            (CodeLetter::M, 112, 0) => {
                self.kill(io);
                return;
            }
            (CodeLetter::M, 117 | 118, 0) => {
                if let LineKind::Text { text } = block.kind
                    && code.major == 118
                {
                    io.line(text);
                }
            }
            (
                CodeLetter::M,
                17 | 18 | 84 | 92 | 106 | 107 | 201 | 203 | 204 | 205 | 220 | 221 | 500 | 501 | 502
                | 503 | 300 | 75 | 76 | 77,
                0,
            )
            | (CodeLetter::T, 0, 0) => {}
            _ => {
                io.line(&format!("echo:Unknown command: \"{cmd}\""));
            }
        }
        if self.wait.is_none() {
            self.ok(io);
            self.slots.pop_front();
        } else {
            self.next_busy = Some(now + self.report_interval(self.busy_interval));
        }
    }

    fn m115(&self, io: &mut Io<'_>) {
        io.line(
            "FIRMWARE_NAME:Marlin 2.1.2 (microfactory-sim) SOURCE_CODE_URL:github.com/MarlinFirmware/Marlin \
             PROTOCOL_VERSION:1.0 MACHINE_TYPE:microfactory-sim EXTRUDER_COUNT:1 \
             UUID:00000000-0000-4000-8000-000000000000",
        );
        let caps: [(&str, bool); 20] = [
            ("SERIAL_XON_XOFF", false),
            ("BINARY_FILE_TRANSFER", false),
            ("EEPROM", false),
            ("VOLUMETRIC", true),
            ("AUTOREPORT_POS", false),
            ("AUTOREPORT_TEMP", true),
            ("PROGRESS", false),
            ("PRINT_JOB", true),
            ("AUTOLEVEL", false),
            ("Z_PROBE", false),
            ("SOFTWARE_POWER", false),
            ("EMERGENCY_PARSER", true),
            ("HOST_ACTION_COMMANDS", self.action_lines),
            ("PROMPT_SUPPORT", false),
            ("SDCARD", false),
            ("AUTOREPORT_SD_STATUS", false),
            ("EXTENDED_M20", false),
            ("THERMAL_PROTECTION", true),
            ("ARCS", true),
            ("ADVANCED_OK", self.advanced_ok),
        ];
        let mut s = String::new();
        for (name, on) in caps {
            let _ = writeln!(s, "Cap:{name}:{}", u8::from(on));
        }
        io.out.extend_from_slice(s.as_bytes());
    }

    /// Advances the waiting head command; true if it finished.
    fn progress_wait(&mut self, io: &mut Io<'_>) -> bool {
        let now = io.now;
        let done = match self.wait.take() {
            None => return false,
            Some(Wait::Planner(d)) => {
                if self.planner.free() > 0 {
                    self.planner.push(now, d, ());
                    true
                } else {
                    self.wait = Some(Wait::Planner(d));
                    false
                }
            }
            Some(Wait::Sync(then)) => {
                if self.planner.is_empty() {
                    match then {
                        AfterSync::Nothing => true,
                        AfterSync::Dwell(s) => {
                            self.wait = Some(Wait::Until(now + scaled(s, self.scale)));
                            false
                        }
                        AfterSync::Home => {
                            self.pos[..3].fill(0.0);
                            self.wait = Some(Wait::Until(now + scaled(HOMING_SECS, self.scale)));
                            false
                        }
                    }
                } else {
                    self.wait = Some(Wait::Sync(then));
                    false
                }
            }
            Some(Wait::Until(t)) => {
                if now >= t {
                    true
                } else {
                    self.wait = Some(Wait::Until(t));
                    false
                }
            }
            Some(Wait::Temp { bed, cool_too }) => {
                self.update_heaters(now);
                let h = if bed { &self.bed } else { &self.hotend };
                let reached = h.temp >= h.target - 1.0 && (!cool_too || h.temp <= h.target + 1.0);
                if reached {
                    true
                } else {
                    self.wait = Some(Wait::Temp { bed, cool_too });
                    if self.next_temp_line.is_some_and(|t| now >= t) {
                        io.line(&format!(" {} W:?", self.temps()));
                        self.next_temp_line = Some(now + self.report_interval(1.0));
                    }
                    false
                }
            }
            Some(Wait::User) => {
                self.wait = Some(Wait::User);
                false
            }
        };
        if done {
            self.next_busy = None;
            self.next_temp_line = None;
            self.ok(io);
            self.slots.pop_front();
        } else if let Some(t) = self.next_busy
            && now >= t
            && self.busy_interval > 0.0
        {
            let what = if matches!(self.wait, Some(Wait::User)) {
                "paused for user"
            } else {
                "processing"
            };
            io.line(&format!("echo:busy: {what}"));
            self.next_busy = Some(now + self.report_interval(self.busy_interval));
        }
        done
    }

    /// The emergency parser: acts on M108, M112 and M410 as their line
    /// arrives, before the command queue sees them.
    fn emergency(&mut self, io: &mut Io<'_>) {
        let line = String::from_utf8_lossy(&self.arriving).to_ascii_uppercase();
        let mut s = line.trim_start();
        if let Some(rest) = s.strip_prefix('N') {
            s = rest
                .trim_start_matches(|c: char| c.is_ascii_digit())
                .trim_start();
        }
        let word = s.split([' ', '*', ';']).next().unwrap_or("");
        match word {
            "M112" => {
                io.executed.push("M112".to_string());
                self.kill(io);
            }
            "M108" => {
                if matches!(self.wait, Some(Wait::Temp { .. } | Wait::User)) {
                    if matches!(self.wait, Some(Wait::User)) && self.action_lines {
                        io.line("//action:resumed");
                    }
                    // Break the wait: the command completes and acknowledges.
                    self.wait = Some(Wait::Until(io.now));
                }
            }
            "M410" => self.planner.clear(),
            _ => {}
        }
    }
}

/// Skips a leading `N<digits>` as Marlin's G-code parser does (`n<digits>`
/// too when `case_insensitive`, Marlin's `GCODE_CASE_INSENSITIVE`).
fn skip_line_number(s: &str, case_insensitive: bool) -> &str {
    let t = s.trim_start();
    let prefix: &[char] = if case_insensitive {
        &['N', 'n']
    } else {
        &['N']
    };
    match t.strip_prefix(prefix) {
        Some(rest) if rest.starts_with(|c: char| c.is_ascii_digit() || c == '-') => {
            let rest = rest.strip_prefix('-').unwrap_or(rest);
            rest.trim_start_matches(|c: char| c.is_ascii_digit())
                .trim_start()
        }
        _ => t,
    }
}

/// Truncates to at most `max` bytes without splitting a character (a
/// corrupted byte arrives as U+FFFD).
fn truncate_at_boundary(s: &mut String, max: usize) {
    if s.len() > max {
        let mut at = max;
        while !s.is_char_boundary(at) {
            at -= 1;
        }
        s.truncate(at);
    }
}

impl Firmware for Marlin {
    fn boot(&mut self, io: &mut Io<'_>) {
        let config_scale = self.scale;
        let mut fresh = Marlin {
            scale: config_scale,
            advanced_ok: self.advanced_ok,
            ok_after_resend: self.ok_after_resend,
            action_lines: self.action_lines,
            send_wait: self.send_wait,
            silent_drop_after_line: self.silent_drop_after_line,
            silent_drop_done: self.silent_drop_done,
            case_insensitive: self.case_insensitive,
            ..Marlin::new(
                &SimConfig {
                    time_scale: config_scale,
                    ..SimConfig::default()
                },
                io.now,
            )
        };
        // Heaters keep their heat across a reset.
        fresh.hotend.temp = self.hotend.temp;
        fresh.bed.temp = self.bed.temp;
        *self = fresh;
        io.line("start");
        io.line("echo:Marlin 2.1.2 (microfactory-sim)");
        io.line("echo: Last Updated: 2023-01-01 | Author: (microfactory-sim)");
        io.line("echo:Compiled: Jan  1 2023");
        io.line("echo: Free Memory: 4096  PlannerBufferBytes: 1232");
        io.line("echo:SD init fail");
    }

    fn protected(&self, b: u8) -> bool {
        b == b'\n' || b == b'\r'
    }

    fn on_arrival(&mut self, b: u8, _rx: &mut RxBuffer, io: &mut Io<'_>) -> bool {
        if self.halted {
            // kill() spins forever; nothing is read any more.
            return true;
        }
        if b == b'\n' || b == b'\r' {
            if !self.arriving.is_empty() {
                self.emergency(io);
            }
            self.arriving.clear();
        } else if self.arriving.len() < MAX_CMD_SIZE {
            self.arriving.push(b);
        }
        false
    }

    fn step(&mut self, rx: &mut RxBuffer, io: &mut Io<'_>) -> bool {
        if self.halted {
            return false;
        }
        let now = io.now;
        self.planner.advance(now, |()| {});
        if let Some(every) = self.autoreport
            && self.next_autoreport.is_some_and(|t| now >= t)
        {
            self.update_heaters(now);
            io.line(&format!(" {}", self.temps()));
            self.next_autoreport = Some(now + every.max(MIN_REPORT_INTERVAL));
        }
        // Fill free command slots from the receive buffer.
        let mut progressed = false;
        while self.slots.len() < BUFSIZE {
            let Some(line) = rx.take_line() else { break };
            self.accept(&line, rx, io);
            progressed = true;
        }
        if self.wait.is_some() {
            return self.progress_wait(io) || progressed;
        }
        if let Some((cmd, _)) = self.slots.front().cloned() {
            self.execute(&cmd, io);
            self.next_wait = None;
            return true;
        }
        if self.send_wait && rx.is_empty() {
            // `NO_TIMEOUTS` after the last command, then again and again.
            let interval = self.report_interval(1.0);
            match self.next_wait {
                None => self.next_wait = Some(now + interval),
                Some(t) if now >= t => {
                    io.line("wait");
                    self.next_wait = Some(now + interval);
                }
                Some(_) => {}
            }
        } else {
            self.next_wait = None;
        }
        progressed
    }

    fn next_wake(&self, now: Instant) -> Option<Instant> {
        if self.halted {
            return None;
        }
        let mut t: Option<Instant> = self.planner.next_event();
        let mut consider = |x: Option<Instant>| {
            if let Some(x) = x {
                t = Some(t.map_or(x, |t| t.min(x)));
            }
        };
        consider(self.next_autoreport);
        if self.slots.is_empty() {
            consider(self.next_wait);
        }
        match &self.wait {
            Some(Wait::Until(u)) => consider(Some(*u)),
            Some(Wait::Temp { .. }) => consider(Some(now + MIN_REPORT_INTERVAL / 2)),
            _ => {}
        }
        if self.wait.is_some() {
            consider(self.next_busy);
            consider(self.next_temp_line);
        }
        t
    }

    fn fault_alarm(&mut self, _rx: &mut RxBuffer, io: &mut Io<'_>) {
        io.line("Error:Thermal Runaway, system stopped! Heater_ID: 0");
        self.kill(io);
    }
}
