//! GRBL 1.1h as a host sees it: one `ok`/`error:n` per line, realtime
//! bytes, a 15-block planner that consumes time, alarms and check mode.
//!
//! Simplifications: an arc is one planner block (GRBL splits it into many
//! segments); probing (`G38.x`) always touches at the target; feed hold
//! stops motion at once (the report goes straight to `Hold:0`).
//!
//! Faithful details a driver may hit: a line longer than 80 bytes (before
//! stripping) gets `error:11`; `G1` with no feed rate yet gets `error:22`;
//! letters outside `FIJKLNPRSTXYZ` and codes outside GRBL 1.1's set get
//! `error:20`; `$H` needs `$22=1` (else `error:5`, and with `$22=1` the
//! machine boots locked); after `ALARM:1` only a soft reset (0x18) is
//! processed, then the machine stays locked (`error:9`) until `$X` or `$H`;
//! a soft reset during motion raises `ALARM:3`; `M0` enters `Hold:0` once
//! the planner is empty and waits for `~`. Settings and offsets survive
//! resets (EEPROM) but not the simulator. Status reports always include
//! `Bf:` (and `Ln:` after an `N` word); `WCO:` and `Ov:` appear every tenth
//! report, as GRBL rotates them.

use std::collections::VecDeque;
use std::fmt::Write as _;

use microfactory_protocol::block::{Code, CodeLetter, LineKind, parse_block};
use microfactory_protocol::framing::clean_line;
use tokio::time::Instant;

use super::planner::{Planner, move_time};
use super::{Firmware, Io, RxBuffer, SimConfig, scaled};

const PLANNER_BLOCKS: usize = 15;
const LINE_MAX: usize = 80;
const BANNER: &str = "Grbl 1.1h ['$' for help]";
const HOMING_SECS: f64 = 4.0;

#[derive(Debug, Clone, Copy)]
struct Move {
    from: [f64; 3],
    to: [f64; 3],
    feed: f64,
    jog: bool,
}

#[derive(Debug)]
enum Wait {
    /// Planner must empty (G4, M0, M2, G38, `$` writes), then `then`.
    Sync(After),
    Dwell(Instant),
    Homing(Instant),
    /// M0: hold until `~`; the `ok` was already sent.
    Paused,
}

#[derive(Debug)]
enum After {
    Dwell(f64),
    Pause,
    Probe([f64; 3]),
    ProgramEnd,
}

/// Settings `$0`..`$132` with GRBL 1.1h's defaults (value, decimals).
const DEFAULT_SETTINGS: [(u16, f64, usize); 34] = [
    (0, 10.0, 0),
    (1, 25.0, 0),
    (2, 0.0, 0),
    (3, 0.0, 0),
    (4, 0.0, 0),
    (5, 0.0, 0),
    (6, 0.0, 0),
    (10, 1.0, 0),
    (11, 0.010, 3),
    (12, 0.002, 3),
    (13, 0.0, 0),
    (20, 0.0, 0),
    (21, 0.0, 0),
    (22, 0.0, 0),
    (23, 0.0, 0),
    (24, 25.0, 3),
    (25, 500.0, 3),
    (26, 250.0, 0),
    (27, 1.0, 3),
    (30, 1000.0, 0),
    (31, 0.0, 0),
    (32, 0.0, 0),
    (100, 250.0, 3),
    (101, 250.0, 3),
    (102, 250.0, 3),
    (110, 500.0, 3),
    (111, 500.0, 3),
    (112, 500.0, 3),
    (120, 10.0, 3),
    (121, 10.0, 3),
    (122, 10.0, 3),
    (130, 200.0, 3),
    (131, 200.0, 3),
    (132, 200.0, 3),
];

#[derive(Debug, Clone)]
struct Modal {
    motion: u8,
    wcs: usize,
    plane: u8,
    inches: bool,
    relative: bool,
    inverse_time: bool,
    spindle: u8,
    mist: bool,
    flood: bool,
    tool: u32,
    feed: f64,
    speed: f64,
}

impl Default for Modal {
    fn default() -> Self {
        Self {
            motion: 0,
            wcs: 0,
            plane: 17,
            inches: false,
            relative: false,
            inverse_time: false,
            spindle: 5,
            mist: false,
            flood: false,
            tool: 0,
            feed: 0.0,
            speed: 0.0,
        }
    }
}

pub(crate) struct Grbl {
    scale: f64,
    rx_size: usize,
    settings: Vec<(u16, f64, usize)>,
    modal: Modal,
    /// Machine position after the last completed block.
    pos: [f64; 3],
    /// Position after the last planned block.
    planned: [f64; 3],
    wcs: [[f64; 3]; 6],
    g92: [f64; 3],
    g28: [f64; 3],
    g30: [f64; 3],
    planner: Planner<Move>,
    wait: Option<Wait>,
    alarm: bool,
    /// Critical alarm: nothing but a soft reset is processed.
    critical: bool,
    check: bool,
    hold: bool,
    door: bool,
    sleep: bool,
    last_n: Option<u32>,
    reports: u32,
    ov: [u32; 3],
    clean: String,
}

impl Grbl {
    pub(crate) fn new(config: &SimConfig, now: Instant) -> Self {
        Self {
            scale: config.time_scale,
            rx_size: config.rx_buffer,
            settings: DEFAULT_SETTINGS.to_vec(),
            modal: Modal::default(),
            pos: [0.0; 3],
            planned: [0.0; 3],
            wcs: [[0.0; 3]; 6],
            g92: [0.0; 3],
            g28: [0.0; 3],
            g30: [0.0; 3],
            planner: Planner::new(PLANNER_BLOCKS, now),
            wait: None,
            alarm: false,
            critical: false,
            check: false,
            hold: false,
            door: false,
            sleep: false,
            last_n: None,
            reports: 0,
            ov: [100, 100, 100],
            clean: String::with_capacity(LINE_MAX),
        }
    }

    fn setting(&self, n: u16) -> f64 {
        self.settings.iter().find(|s| s.0 == n).map_or(0.0, |s| s.1)
    }

    fn moving(&self) -> bool {
        !self.planner.is_empty() || matches!(self.wait, Some(Wait::Homing(_)))
    }

    fn state(&self, now: Instant) -> &'static str {
        if self.alarm {
            "Alarm"
        } else if self.sleep {
            "Sleep"
        } else if self.door {
            "Door:0"
        } else if self.hold || matches!(self.wait, Some(Wait::Paused)) {
            "Hold:0"
        } else if matches!(self.wait, Some(Wait::Homing(_))) {
            "Home"
        } else if self.check {
            "Check"
        } else if let Some((m, _)) = self.planner.head(now) {
            if m.jog { "Jog" } else { "Run" }
        } else {
            "Idle"
        }
    }

    fn offset(&self) -> [f64; 3] {
        let w = self.wcs[self.modal.wcs];
        [w[0] + self.g92[0], w[1] + self.g92[1], w[2] + self.g92[2]]
    }

    fn status(&mut self, io: &mut Io<'_>, rx: &RxBuffer) {
        let now = io.now;
        self.planner.advance(now, |_| {});
        let (mpos, feed) = match self.planner.head(now) {
            Some((m, f)) => {
                let p = [0, 1, 2].map(|i| m.from[i] + (m.to[i] - m.from[i]) * f);
                let feed = if self.planner.is_held() { 0.0 } else { m.feed };
                (p, feed)
            }
            None => (self.pos, 0.0),
        };
        let speed = if self.modal.spindle == 5 {
            0.0
        } else {
            self.modal.speed
        };
        let mut s = format!(
            "<{}|MPos:{:.3},{:.3},{:.3}|Bf:{},{}|FS:{:.0},{:.0}",
            self.state(now),
            mpos[0],
            mpos[1],
            mpos[2],
            self.planner.free(),
            rx.free(),
            feed,
            speed
        );
        if let Some(n) = self.last_n {
            let _ = write!(s, "|Ln:{n}");
        }
        if self.reports.is_multiple_of(10) {
            let o = self.offset();
            let _ = write!(s, "|WCO:{:.3},{:.3},{:.3}", o[0], o[1], o[2]);
        } else if self.reports % 10 == 1 {
            let _ = write!(s, "|Ov:{},{},{}", self.ov[0], self.ov[1], self.ov[2]);
        }
        self.reports = self.reports.wrapping_add(1);
        s.push('>');
        io.line_crlf(&s);
    }

    fn soft_reset(&mut self, rx: &mut RxBuffer, io: &mut Io<'_>) {
        if self.moving() && !self.alarm {
            io.line_crlf("ALARM:3");
            self.alarm = true;
        }
        if self.sleep {
            self.alarm = true;
        }
        self.critical = false;
        self.reset_volatile(io.now);
        rx.clear();
        io.line_crlf("");
        io.line_crlf(BANNER);
        if self.alarm {
            io.line_crlf("[MSG:'$H'|'$X' to unlock]");
        }
    }

    fn reset_volatile(&mut self, now: Instant) {
        self.planner = Planner::new(PLANNER_BLOCKS, now);
        self.planned = self.pos;
        self.modal = Modal::default();
        self.wait = None;
        self.hold = false;
        self.door = false;
        self.sleep = false;
        self.check = false;
        self.last_n = None;
        self.ov = [100, 100, 100];
    }

    fn plan(&mut self, now: Instant, to: [f64; 3], feed: f64, jog: bool, len: Option<f64>) {
        let from = self.planned;
        let d = len.unwrap_or_else(|| {
            ((to[0] - from[0]).powi(2) + (to[1] - from[1]).powi(2) + (to[2] - from[2]).powi(2))
                .sqrt()
        });
        self.planned = to;
        if d <= 0.0 || self.check {
            if self.check {
                self.pos = to;
            }
            return;
        }
        let max = self.setting(110);
        let v = feed.min(max).max(1.0) / 60.0;
        let t = move_time(d, v, self.setting(120));
        self.planner.push(
            now,
            scaled(t, self.scale),
            Move {
                from,
                to,
                feed: feed.min(max),
                jog,
            },
        );
    }

    fn settings_dump(&self, io: &mut Io<'_>) {
        for &(n, v, d) in &self.settings {
            io.line_crlf(&format!("${n}={v:.d$}"));
        }
    }

    fn gc_state(&self) -> String {
        let m = &self.modal;
        let coolant = match (m.mist, m.flood) {
            (false, false) => "M9".to_string(),
            (true, false) => "M7".to_string(),
            (false, true) => "M8".to_string(),
            (true, true) => "M7 M8".to_string(),
        };
        format!(
            "[GC:G{} G{} G{} G{} G{} G{} M{} {} T{} F{:.0} S{:.0}]",
            m.motion,
            54 + m.wcs,
            m.plane,
            if m.inches { 20 } else { 21 },
            if m.relative { 91 } else { 90 },
            if m.inverse_time { 93 } else { 94 },
            m.spindle,
            coolant,
            m.tool,
            m.feed,
            m.speed
        )
    }

    /// A `$` line. Returns `Err(code)` for `error:code`, `Ok(true)` when
    /// the `ok` must wait (sync, homing).
    fn system(&mut self, text: &str, io: &mut Io<'_>) -> Result<bool, u8> {
        let t = text.trim();
        match t {
            "$" => {
                io.line_crlf(
                    "[HLP:$$ $# $G $I $N $x=val $Nx=line $J=line $SLP $C $X $H ~ ! ? ctrl-x]",
                );
            }
            "$$" => self.settings_dump(io),
            "$#" => {
                for (i, w) in self.wcs.iter().enumerate() {
                    io.line_crlf(&format!(
                        "[G{}:{:.3},{:.3},{:.3}]",
                        54 + i,
                        w[0],
                        w[1],
                        w[2]
                    ));
                }
                for (name, p) in [("G28", self.g28), ("G30", self.g30), ("G92", self.g92)] {
                    io.line_crlf(&format!("[{name}:{:.3},{:.3},{:.3}]", p[0], p[1], p[2]));
                }
                io.line_crlf("[TLO:0.000]");
                io.line_crlf("[PRB:0.000,0.000,0.000:0]");
            }
            "$G" => io.line_crlf(&self.gc_state()),
            "$I" => {
                io.line_crlf("[VER:1.1h.20190825:]");
                io.line_crlf(&format!("[OPT:V,{PLANNER_BLOCKS},{}]", self.rx_size));
            }
            "$N" => {
                io.line_crlf("$N0=");
                io.line_crlf("$N1=");
            }
            "$X" => {
                if self.alarm {
                    self.alarm = false;
                    io.line_crlf("[MSG:Caution: Unlocked]");
                }
            }
            "$H" => {
                if self.setting(22) == 0.0 {
                    return Err(5);
                }
                if self.check {
                    return Err(5);
                }
                self.wait = Some(Wait::Homing(io.now + scaled(HOMING_SECS, self.scale)));
                return Ok(true);
            }
            "$C" => {
                if self.alarm {
                    return Err(9);
                }
                if self.check {
                    io.line_crlf("[MSG:Disabled]");
                    self.check = false;
                    // GRBL soft-resets after leaving check mode; the banner
                    // follows the ok.
                    self.wait = Some(Wait::Sync(After::ProgramEnd));
                    self.pos = [0.0; 3];
                    return Ok(false);
                }
                self.check = true;
                io.line_crlf("[MSG:Enabled]");
            }
            "$SLP" => self.sleep = true,
            _ if t.starts_with("$J=") => {
                if self.alarm {
                    return Err(9);
                }
                let line = t[3..].to_string();
                return self.gcode(&line, io, true).map(|()| false);
            }
            _ if t.starts_with("$RST=") || t.starts_with("$N0=") || t.starts_with("$N1=") => {}
            _ => {
                let (k, v) = t[1..].split_once('=').ok_or(3u8)?;
                let k: u16 = k.parse().map_err(|_| 3u8)?;
                let v: f64 = v.parse().map_err(|_| 2u8)?;
                if v < 0.0 {
                    return Err(4);
                }
                let s = self.settings.iter_mut().find(|s| s.0 == k).ok_or(3u8)?;
                s.1 = v;
            }
        }
        Ok(false)
    }

    /// A G-code line (or a jog). `Err(code)` for `error:code`.
    fn gcode(&mut self, line: &str, io: &mut Io<'_>, jog: bool) -> Result<(), u8> {
        let block = parse_block(line).map_err(|e| match e {
            microfactory_protocol::block::BlockError::ValueOutOfRange { .. } => 2u8,
            _ => 1u8,
        })?;
        if matches!(block.kind, LineKind::Text { .. } | LineKind::System { .. }) {
            return Err(20);
        }
        for c in block.codes() {
            if !supported(c) {
                return Err(20);
            }
        }
        for cmd in block.commands() {
            for w in cmd.args() {
                if !"FIJKLNPRSTXYZ".contains(w.letter) {
                    return Err(20);
                }
            }
        }
        if self.alarm {
            return Err(9);
        }
        if let Some(n) = block.line_number {
            self.last_n = Some(n);
        }
        let arg = |l: char| block.arg(l).map(f64::from);
        let units = |v: f64, inches: bool| if inches { v * 25.4 } else { v };
        let now = io.now;
        let mut modal = self.modal.clone();
        let mut machine = false;
        let mut non_modal: Option<Code> = None;
        for c in block.codes() {
            match (c.letter, c.major, c.minor) {
                (CodeLetter::G, 0..=3, 0) => modal.motion = c.major as u8,
                (CodeLetter::G, 38, _) => modal.motion = 38,
                (CodeLetter::G, 80, 0) => modal.motion = 80,
                (CodeLetter::G, 17..=19, 0) => modal.plane = c.major as u8,
                (CodeLetter::G, 20, 0) => modal.inches = true,
                (CodeLetter::G, 21, 0) => modal.inches = false,
                (CodeLetter::G, 90, 0) => modal.relative = false,
                (CodeLetter::G, 91, 0) => modal.relative = true,
                (CodeLetter::G, 93, 0) => modal.inverse_time = true,
                (CodeLetter::G, 94, 0) => modal.inverse_time = false,
                (CodeLetter::G, 54..=59, 0) => modal.wcs = (c.major - 54) as usize,
                (CodeLetter::G, 53, 0) => machine = true,
                (CodeLetter::M, 3..=5, 0) => modal.spindle = c.major as u8,
                (CodeLetter::M, 7, 0) => modal.mist = true,
                (CodeLetter::M, 8, 0) => modal.flood = true,
                (CodeLetter::M, 9, 0) => (modal.mist, modal.flood) = (false, false),
                (CodeLetter::T, n, _) => modal.tool = n,
                _ => non_modal = Some(c),
            }
        }
        if let Some(f) = arg('F') {
            modal.feed = units(f, modal.inches);
        }
        if let Some(s) = arg('S') {
            modal.speed = s;
        }
        let has_axis = ['X', 'Y', 'Z'].iter().any(|&l| block.arg(l).is_some());
        let offset = self.offset();
        let inches = modal.inches;
        let target = |base: [f64; 3], rel: bool, use_machine: bool| {
            let mut t = base;
            for (i, l) in ['X', 'Y', 'Z'].into_iter().enumerate() {
                if let Some(v) = arg(l) {
                    let v = units(v, inches);
                    t[i] = if rel {
                        base[i] + v
                    } else if use_machine {
                        v
                    } else {
                        v + offset[i]
                    };
                }
            }
            t
        };
        if jog {
            if !has_axis || arg('F').is_none() {
                return Err(if arg('F').is_none() { 22 } else { 26 });
            }
            let to = target(self.planned, modal.relative, machine);
            let feed = modal.feed;
            self.plan(now, to, feed, true, None);
            return Ok(());
        }
        // Non-modal commands.
        match non_modal.map(|c| (c.letter, c.major, c.minor)) {
            Some((CodeLetter::G, 4, 0)) => {
                let p = arg('P').ok_or(28u8)?;
                self.modal = modal;
                self.wait = Some(Wait::Sync(After::Dwell(p)));
                return Ok(());
            }
            Some((CodeLetter::G, 10, 0)) => {
                let l = arg('L').ok_or(28u8)? as u32;
                let p = arg('P').unwrap_or(0.0) as usize;
                let idx = if p == 0 { modal.wcs } else { p - 1 };
                if idx > 5 || !(l == 2 || l == 20) {
                    return Err(29);
                }
                for (i, a) in ['X', 'Y', 'Z'].into_iter().enumerate() {
                    if let Some(v) = arg(a) {
                        let v = units(v, modal.inches);
                        self.wcs[idx][i] = if l == 2 {
                            v
                        } else {
                            self.planned[i] - v - self.g92[i]
                        };
                    }
                }
                self.modal = modal;
                return Ok(());
            }
            Some((CodeLetter::G, 28 | 30, 0)) => {
                let stored = if non_modal.is_some_and(|c| c.major == 28) {
                    self.g28
                } else {
                    self.g30
                };
                self.modal = modal;
                if has_axis {
                    let via = target(self.planned, self.modal.relative, false);
                    self.plan(now, via, self.setting(110), false, None);
                }
                self.plan(now, stored, self.setting(110), false, None);
                return Ok(());
            }
            Some((CodeLetter::G, 28 | 30, 1)) => {
                let p = self.planned;
                if non_modal.is_some_and(|c| c.major == 28) {
                    self.g28 = p;
                } else {
                    self.g30 = p;
                }
                self.modal = modal;
                return Ok(());
            }
            Some((CodeLetter::G, 92, 0)) => {
                for (i, a) in ['X', 'Y', 'Z'].into_iter().enumerate() {
                    if let Some(v) = arg(a) {
                        let v = units(v, modal.inches);
                        self.g92[i] = self.planned[i] - self.wcs[modal.wcs][i] - v;
                    }
                }
                self.modal = modal;
                return Ok(());
            }
            Some((CodeLetter::G, 92, 1)) => self.g92 = [0.0; 3],
            Some((CodeLetter::G, 43 | 40 | 49 | 61, _)) => {}
            Some((CodeLetter::M, 0, 0)) => {
                self.modal = modal;
                self.wait = Some(Wait::Sync(After::Pause));
                return Ok(());
            }
            Some((CodeLetter::M, 2 | 30, 0)) => {
                self.modal = modal;
                self.wait = Some(Wait::Sync(After::ProgramEnd));
                return Ok(());
            }
            _ => {}
        }
        // Motion.
        if has_axis {
            let motion = modal.motion;
            if motion == 80 {
                return Err(31);
            }
            if motion != 0 && modal.feed <= 0.0 {
                return Err(22);
            }
            let to = target(self.planned, modal.relative, machine);
            let feed = if motion == 0 {
                self.setting(110)
            } else {
                modal.feed
            };
            let len = if motion == 2 || motion == 3 {
                let (i, j) = (arg('I').unwrap_or(0.0), arg('J').unwrap_or(0.0));
                let r = arg('R').map_or((i * i + j * j).sqrt(), f64::abs);
                if r <= 0.0 {
                    return Err(26);
                }
                let from = self.planned;
                let chord = ((to[0] - from[0]).powi(2) + (to[1] - from[1]).powi(2)).sqrt();
                Some(if chord > 0.0 {
                    2.0 * r * (chord / (2.0 * r)).clamp(0.0, 1.0).asin()
                } else {
                    2.0 * std::f64::consts::PI * r
                })
            } else {
                None
            };
            self.modal = modal;
            self.plan(now, to, feed, false, len);
            if motion == 38 {
                self.wait = Some(Wait::Sync(After::Probe(to)));
            }
            return Ok(());
        }
        self.modal = modal;
        Ok(())
    }

    /// Reads and answers one line; false when nothing could be done.
    fn next_line(&mut self, rx: &mut RxBuffer, io: &mut Io<'_>) -> bool {
        let Some(raw) = rx.take_line() else {
            return false;
        };
        let text = String::from_utf8_lossy(&raw).to_ascii_uppercase();
        if text.trim_end().len() > LINE_MAX {
            io.line_crlf("error:11");
            return true;
        }
        let mut clean = std::mem::take(&mut self.clean);
        let result = match clean_line(&text, LINE_MAX, &mut clean) {
            Err(_) => Err(1),
            Ok(_) if clean.is_empty() => {
                self.clean = clean;
                io.line_crlf("ok");
                return true;
            }
            Ok(_) if clean.starts_with('$') => {
                let line = clean.clone();
                if self.sleep {
                    Err(9)
                } else {
                    self.system(&line, io).map(|wait| (wait, line))
                }
            }
            Ok(_) => {
                let line = clean.clone();
                if self.sleep {
                    Err(9)
                } else {
                    self.gcode(&line, io, false).map(|()| (false, line))
                }
            }
        };
        self.clean = clean;
        match result {
            Err(code) => io.line_crlf(&format!("error:{code}")),
            Ok((deferred, line)) => {
                io.executed.push(line);
                let waits_ok = deferred
                    || matches!(
                        self.wait,
                        Some(Wait::Sync(After::Dwell(_) | After::Probe(_)))
                    );
                if !waits_ok {
                    io.line_crlf("ok");
                    if matches!(self.wait, Some(Wait::Sync(After::ProgramEnd))) && !self.check {
                        // Left check mode: the soft reset comes after the ok.
                        if text.trim() == "$C" {
                            self.wait = None;
                            self.soft_reset(rx, io);
                        }
                    }
                }
            }
        }
        true
    }

    /// Advances a waiting command; true if something changed.
    fn progress(&mut self, io: &mut Io<'_>) -> bool {
        let now = io.now;
        match self.wait.take() {
            None => false,
            Some(Wait::Sync(then)) => {
                if !self.planner.is_empty() {
                    self.wait = Some(Wait::Sync(then));
                    return false;
                }
                match then {
                    After::Dwell(p) => self.wait = Some(Wait::Dwell(now + scaled(p, self.scale))),
                    After::Pause => self.wait = Some(Wait::Paused),
                    After::Probe(p) => {
                        io.line_crlf(&format!("[PRB:{:.3},{:.3},{:.3}:1]", p[0], p[1], p[2]));
                        io.line_crlf("ok");
                    }
                    After::ProgramEnd => {
                        let keep = (self.modal.wcs, self.modal.inches);
                        self.modal = Modal {
                            motion: 1,
                            wcs: keep.0,
                            inches: keep.1,
                            ..Modal::default()
                        };
                    }
                }
                true
            }
            Some(Wait::Dwell(t)) => {
                if now >= t {
                    io.line_crlf("ok");
                    true
                } else {
                    self.wait = Some(Wait::Dwell(t));
                    false
                }
            }
            Some(Wait::Homing(t)) => {
                if now >= t {
                    self.pos = [0.0; 3];
                    self.planned = self.pos;
                    self.alarm = false;
                    io.line_crlf("ok");
                    true
                } else {
                    self.wait = Some(Wait::Homing(t));
                    false
                }
            }
            Some(Wait::Paused) => {
                self.wait = Some(Wait::Paused);
                false
            }
        }
    }
}

/// The G/M codes GRBL 1.1 accepts.
fn supported(c: Code) -> bool {
    match c.letter {
        CodeLetter::G => matches!(
            (c.major, c.minor),
            (0..=4 | 10 | 17..=21 | 40 | 49 | 53..=59 | 61 | 80 | 90 | 93 | 94, 0)
                | (28 | 30 | 92, 0 | 1)
                | (38, 2..=5)
                | (43, 1)
                | (91, 0 | 1)
        ),
        CodeLetter::M => matches!((c.major, c.minor), (0..=5 | 7..=9 | 30 | 56, 0)),
        CodeLetter::T => true,
    }
}

impl Firmware for Grbl {
    fn boot(&mut self, io: &mut Io<'_>) {
        let settings = std::mem::take(&mut self.settings);
        let wcs = self.wcs;
        let (g28, g30) = (self.g28, self.g30);
        *self = Grbl::new(
            &SimConfig {
                time_scale: self.scale,
                rx_buffer: self.rx_size,
                ..SimConfig::default()
            },
            io.now,
        );
        // EEPROM survives a reboot.
        self.settings = settings;
        self.wcs = wcs;
        (self.g28, self.g30) = (g28, g30);
        io.line_crlf("");
        io.line_crlf(BANNER);
        if self.setting(22) != 0.0 {
            self.alarm = true;
            io.line_crlf("[MSG:'$H'|'$X' to unlock]");
        }
    }

    fn protected(&self, b: u8) -> bool {
        matches!(b, b'\n' | b'\r' | b'?' | b'!' | b'~' | 0x18) || b >= 0x80
    }

    fn on_arrival(&mut self, b: u8, rx: &mut RxBuffer, io: &mut Io<'_>) -> bool {
        let now = io.now;
        match b {
            b'?' => self.status(io, rx),
            0x18 => self.soft_reset(rx, io),
            _ if self.critical => {}
            b'!' => {
                if !self.alarm && !self.check && !self.sleep {
                    self.planner.advance(now, |_| {});
                    self.hold = true;
                    self.planner.hold(now);
                }
            }
            b'~' => {
                if self.hold || self.door || matches!(self.wait, Some(Wait::Paused)) {
                    self.hold = false;
                    self.door = false;
                    if matches!(self.wait, Some(Wait::Paused)) {
                        self.wait = None;
                    }
                    self.planner.resume(now);
                }
            }
            0x84 => {
                if !self.alarm && !self.check {
                    self.door = true;
                    self.planner.hold(now);
                }
            }
            0x85 => {
                if self.planner.head(now).is_some_and(|(m, _)| m.jog) {
                    self.planner.advance(now, |_| {});
                    if let Some((m, f)) = self.planner.head(now) {
                        self.pos = [0, 1, 2].map(|i| m.from[i] + (m.to[i] - m.from[i]) * f);
                    }
                    self.planner.clear();
                    self.planned = self.pos;
                }
            }
            0x90 => self.ov[0] = 100,
            0x91 => self.ov[0] = (self.ov[0] + 10).min(200),
            0x92 => self.ov[0] = self.ov[0].saturating_sub(10).max(10),
            0x93 => self.ov[0] = (self.ov[0] + 1).min(200),
            0x94 => self.ov[0] = self.ov[0].saturating_sub(1).max(10),
            0x95 => self.ov[1] = 100,
            0x96 => self.ov[1] = 50,
            0x97 => self.ov[1] = 25,
            0x99 => self.ov[2] = 100,
            0x9A => self.ov[2] = (self.ov[2] + 10).min(200),
            0x9B => self.ov[2] = self.ov[2].saturating_sub(10).max(10),
            0x9C => self.ov[2] = (self.ov[2] + 1).min(200),
            0x9D => self.ov[2] = self.ov[2].saturating_sub(1).max(10),
            0x9E | 0xA0 | 0xA1 => {}
            _ if b >= 0x80 => {}
            _ => return false,
        }
        true
    }

    fn step(&mut self, rx: &mut RxBuffer, io: &mut Io<'_>) -> bool {
        let now = io.now;
        let mut done = VecDeque::new();
        self.planner.advance(now, |m| done.push_back(m));
        if let Some(m) = done.back() {
            self.pos = m.to;
        }
        if self.critical {
            return false;
        }
        if self.wait.is_some() {
            return self.progress(io);
        }
        if self.planner.free() == 0 {
            return false;
        }
        self.next_line(rx, io)
    }

    fn next_wake(&self, _now: Instant) -> Option<Instant> {
        let p = self.planner.next_event();
        let w = match self.wait {
            Some(Wait::Dwell(t) | Wait::Homing(t)) => Some(t),
            _ => None,
        };
        match (p, w) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn fault_alarm(&mut self, _rx: &mut RxBuffer, io: &mut Io<'_>) {
        // Hard limit: motion stops at once, position is lost.
        if let Some((m, f)) = self.planner.head(io.now) {
            self.pos = [0, 1, 2].map(|i| m.from[i] + (m.to[i] - m.from[i]) * f);
        }
        self.planner.clear();
        self.planned = self.pos;
        self.wait = None;
        self.alarm = true;
        self.critical = true;
        io.line_crlf("ALARM:1");
        io.line_crlf("[MSG:Reset to continue]");
    }
}
