//! GRBL host state machine (sans-IO), for GRBL 1.1 and grblHAL.
//!
//! GRBL answers every line it receives with exactly one `ok` or `error:n`,
//! in order; everything else it prints (`<status>`, `[MSG:]`, `ALARM:n`,
//! settings, the banner) is pushed unasked and answers no line. The host
//! therefore streams by *character counting*: it remembers the length of
//! every line in flight and sends while their sum fits the firmware's
//! receive buffer, popping one length per answer. Commands that write
//! EEPROM stall GRBL's serial handling, so they are sent alone
//! (send-response) with nothing else in flight.
//!
//! Realtime bytes (`?`, `!`, `~`, `0x18`, overrides) bypass the buffer and
//! are never counted.
//!
//! A job is finished only when every line is answered *and* a status report
//! says `Idle` with the planner empty ([`GrblEvent::Drained`]): `ok` means
//! "planned", not "done".

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::host::Origin;

/// How lines are metered onto the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamMode {
    /// Keep the receive buffer full (grbl's own recommendation).
    CharacterCounting,
    /// One line at a time.
    SendResponse,
}

/// Tuning of the host.
#[derive(Debug, Clone, PartialEq)]
pub struct GrblConfig {
    /// Flow control.
    pub mode: StreamMode,
    /// Firmware receive buffer in bytes; replaced by what `$I` reports.
    pub rx_buffer: usize,
    /// Longest line the firmware accepts (80 for GRBL 1.1, 256 grblHAL).
    pub max_line: usize,
    /// Status polling period while streaming (GRBL advises at most 5 Hz).
    pub status_interval: Duration,
    /// Status polling period when idle.
    pub idle_status_interval: Duration,
    /// Silence (no line at all, despite polling) before giving up.
    pub response_timeout: Duration,
}

impl Default for GrblConfig {
    fn default() -> Self {
        Self {
            mode: StreamMode::CharacterCounting,
            rx_buffer: 128,
            max_line: 80,
            status_interval: Duration::from_millis(200),
            idle_status_interval: Duration::from_secs(1),
            response_timeout: Duration::from_secs(10),
        }
    }
}

/// Why a line was not queued.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CommandError {
    /// Longer than the firmware accepts.
    #[error("line is {len} bytes long; GRBL accepts at most {max}")]
    TooLong { len: usize, max: usize },
    /// Contains a newline or a realtime byte, which would corrupt the stream.
    #[error("line contains a newline or a realtime control byte")]
    NotClean,
}

/// Realtime commands: single bytes GRBL acts on the moment they arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Realtime {
    /// `?` status report.
    StatusQuery,
    /// `!` feed hold.
    FeedHold,
    /// `~` cycle start / resume.
    CycleStart,
    /// `0x18` soft reset.
    SoftReset,
    /// `0x84` safety door.
    SafetyDoor,
    /// `0x85` jog cancel.
    JogCancel,
    /// `0x90` feed override reset to 100 %.
    FeedReset,
    /// `0x91` feed +10 %.
    FeedPlus10,
    /// `0x92` feed −10 %.
    FeedMinus10,
    /// `0x95` rapid override 100 %.
    RapidFull,
    /// `0x99` spindle override 100 %.
    SpindleReset,
    /// `0x9E` spindle stop (in hold).
    SpindleStop,
    /// `0xA0` flood coolant toggle.
    FloodToggle,
    /// `0xA1` mist coolant toggle.
    MistToggle,
}

impl Realtime {
    /// The byte on the wire.
    pub fn byte(self) -> u8 {
        match self {
            Self::StatusQuery => b'?',
            Self::FeedHold => b'!',
            Self::CycleStart => b'~',
            Self::SoftReset => 0x18,
            Self::SafetyDoor => 0x84,
            Self::JogCancel => 0x85,
            Self::FeedReset => 0x90,
            Self::FeedPlus10 => 0x91,
            Self::FeedMinus10 => 0x92,
            Self::RapidFull => 0x95,
            Self::SpindleReset => 0x99,
            Self::SpindleStop => 0x9E,
            Self::FloodToggle => 0xA0,
            Self::MistToggle => 0xA1,
        }
    }
}

/// GRBL's machine state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MachineState {
    /// Ready.
    Idle,
    /// Moving.
    Run,
    /// Feed hold; 0 = complete, 1 = decelerating.
    Hold(u8),
    /// Jogging.
    Jog,
    /// Locked after an alarm.
    Alarm,
    /// Safety door.
    Door(u8),
    /// `$C` check mode.
    Check,
    /// Homing.
    Home,
    /// Sleeping.
    Sleep,
}

impl fmt::Display for MachineState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Idle => f.write_str("Idle"),
            Self::Run => f.write_str("Run"),
            Self::Hold(n) => write!(f, "Hold:{n}"),
            Self::Jog => f.write_str("Jog"),
            Self::Alarm => f.write_str("Alarm"),
            Self::Door(n) => write!(f, "Door:{n}"),
            Self::Check => f.write_str("Check"),
            Self::Home => f.write_str("Home"),
            Self::Sleep => f.write_str("Sleep"),
        }
    }
}

/// A parsed `<...>` status report. Positions are in the machine's
/// reporting units (mm unless `$13=1`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    /// Machine state.
    pub state: MachineState,
    /// Machine position.
    pub mpos: Option<Vec<f64>>,
    /// Work position (reported, or derived as MPos − WCO).
    pub wpos: Option<Vec<f64>>,
    /// Work coordinate offset (GRBL reports it only now and then; the last
    /// one seen is kept).
    pub wco: Option<Vec<f64>>,
    /// Feed rate.
    pub feed: Option<f64>,
    /// Spindle speed.
    pub spindle: Option<f64>,
    /// Free planner blocks and free RX bytes (`Bf:`).
    pub buffer: Option<(u32, u32)>,
    /// Line number being executed (`Ln:`).
    pub line: Option<u32>,
    /// Input pins triggered (`Pn:`).
    pub pins: String,
    /// Feed, rapid and spindle overrides in percent (`Ov:`).
    pub overrides: Option<(u32, u32, u32)>,
    /// Accessory state (`A:`), e.g. `SF`.
    pub accessories: String,
}

/// A `[PRB:x,y,z:1]` probe result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeResult {
    /// Position where the probe triggered (or stopped).
    pub position: Vec<f64>,
    /// Whether it triggered.
    pub success: bool,
}

/// What the firmware said or the host concluded.
#[derive(Debug, Clone, PartialEq)]
pub enum GrblEvent {
    /// A line was accepted.
    Ok {
        /// Who sent it.
        origin: Origin,
    },
    /// A line was refused.
    Error {
        /// Who sent it.
        origin: Origin,
        /// GRBL's error code.
        code: u16,
        /// What it means.
        message: &'static str,
    },
    /// The machine locked itself.
    Alarm {
        /// GRBL's alarm code.
        code: u16,
        /// What it means.
        message: &'static str,
    },
    /// A status report.
    Status(StatusReport),
    /// `[MSG:...]`.
    Message(String),
    /// `[PRB:...]`.
    Probe(ProbeResult),
    /// `$n=v` setting line.
    Setting {
        /// Setting number.
        number: u16,
        /// Value as printed.
        value: String,
    },
    /// `[OPT:flags,blocks,rx]` from `$I`.
    Options {
        /// Build option letters.
        flags: String,
        /// Planner blocks.
        blocks: Option<u32>,
        /// Receive buffer bytes.
        rx_bytes: Option<u32>,
    },
    /// The banner: the firmware (re)started; lines in flight are lost.
    Reset {
        /// The banner text.
        version: String,
    },
    /// Other bracketed feedback (`[GC:]`, `[VER:]`, `[HLP:]`, `[echo:]`).
    Feedback(String),
    /// Everything sent is answered and the machine is idle with an empty
    /// planner: a job's motion is complete.
    Drained,
    /// A line that fits nothing above, or an answer with nothing in flight.
    Unexpected(String),
    /// No line received for the response timeout despite polling.
    ResponseTimeout,
}

/// Counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct GrblStats {
    /// Lines sent.
    pub sent_lines: u64,
    /// Bytes sent, realtime bytes included.
    pub sent_bytes: u64,
    /// Realtime bytes sent.
    pub realtime_bytes: u64,
    /// `error:` answers.
    pub errors: u64,
}

#[derive(Debug, Clone, Copy)]
struct InFlight {
    origin: Origin,
    len: usize,
    eeprom: bool,
}

/// The GRBL host state machine. See the module docs.
#[derive(Debug)]
pub struct GrblHost {
    config: GrblConfig,
    queue: VecDeque<(Origin, String)>,
    realtime: VecDeque<u8>,
    in_flight: VecDeque<InFlight>,
    in_flight_bytes: usize,
    events: VecDeque<GrblEvent>,
    next_poll: Option<Instant>,
    last_rx: Option<Instant>,
    last_wco: Option<Vec<f64>>,
    max_planner_free: u32,
    /// Lines were sent since the last `Drained`.
    awaiting_drain: bool,
    /// A status query went out with nothing in flight or queued.
    query_after_last_answer: bool,
    /// Idle reports with an empty planner since that query. One may answer
    /// an older query still on the wire, so two are required.
    idle_reports: u8,
    stats: GrblStats,
}

impl GrblHost {
    /// A host that has sent nothing yet.
    pub fn new(config: GrblConfig) -> Self {
        Self {
            config,
            queue: VecDeque::new(),
            realtime: VecDeque::new(),
            in_flight: VecDeque::new(),
            in_flight_bytes: 0,
            events: VecDeque::new(),
            next_poll: None,
            last_rx: None,
            last_wco: None,
            max_planner_free: 0,
            awaiting_drain: false,
            query_after_last_answer: false,
            idle_reports: 0,
            stats: GrblStats::default(),
        }
    }

    /// Queues a clean line.
    pub fn push(&mut self, origin: Origin, command: &str) -> Result<(), CommandError> {
        let command = command.trim();
        if command
            .bytes()
            .any(|b| matches!(b, b'\n' | b'\r' | b'?' | b'!' | b'~' | 0x18) || b >= 0x80)
        {
            return Err(CommandError::NotClean);
        }
        // A line and its newline must fit the receive buffer, whose ring
        // holds one byte less than its size.
        let max = self
            .config
            .max_line
            .min(self.config.rx_buffer.saturating_sub(2));
        if command.len() > max {
            return Err(CommandError::TooLong {
                len: command.len(),
                max,
            });
        }
        self.queue.push_back((origin, command.to_string()));
        Ok(())
    }

    /// Lines queued and not yet sent.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Lines sent and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Bytes of lines sent and not yet answered.
    pub fn in_flight_bytes(&self) -> usize {
        self.in_flight_bytes
    }

    /// The receive buffer size in use.
    pub fn rx_buffer(&self) -> usize {
        self.config.rx_buffer
    }

    /// Sends a realtime byte ahead of everything.
    pub fn realtime(&mut self, cmd: Realtime) {
        self.realtime.push_back(cmd.byte());
        if cmd == Realtime::SoftReset {
            // GRBL empties its buffers on reset; nothing in flight will be
            // answered. The banner confirms the reset.
            self.in_flight.clear();
            self.in_flight_bytes = 0;
        }
    }

    /// Drops every queued, unsent job line (for cancel); host and operator
    /// commands still go out.
    pub fn clear_queue(&mut self) {
        self.queue.retain(|(o, _)| !matches!(o, Origin::Job { .. }));
    }

    /// Counters so far.
    pub fn stats(&self) -> GrblStats {
        self.stats
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<GrblEvent> {
        self.events.pop_front()
    }

    fn busy(&self) -> bool {
        !self.in_flight.is_empty() || !self.queue.is_empty() || self.awaiting_drain
    }

    /// Bytes to write now, if any. Call until it returns `None`.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Vec<u8>> {
        if let Some(b) = self.realtime.pop_front() {
            self.stats.sent_bytes += 1;
            self.stats.realtime_bytes += 1;
            if b == b'?' && self.in_flight.is_empty() && self.queue.is_empty() {
                self.query_after_last_answer = true;
            }
            return Some(vec![b]);
        }
        if self.next_poll.is_none_or(|t| now >= t) {
            let interval = if self.busy() {
                self.config.status_interval
            } else {
                self.config.idle_status_interval
            };
            self.next_poll = Some(now + interval);
            self.realtime.push_back(b'?');
            if self.last_rx.is_none() {
                self.last_rx = Some(now);
            }
            return self.poll_transmit(now);
        }
        let (origin, cmd) = self.queue.front()?;
        let len = cmd.len() + 1;
        let eeprom = writes_eeprom(cmd);
        if self.in_flight.iter().any(|f| f.eeprom) {
            return None;
        }
        let fits = match self.config.mode {
            StreamMode::SendResponse => self.in_flight.is_empty(),
            StreamMode::CharacterCounting if eeprom => self.in_flight.is_empty(),
            StreamMode::CharacterCounting => {
                // The ring buffer holds one byte less than its size.
                self.in_flight.is_empty() || self.in_flight_bytes + len < self.config.rx_buffer
            }
        };
        if !fits {
            return None;
        }
        let origin = *origin;
        let mut bytes = Vec::with_capacity(len);
        bytes.extend_from_slice(cmd.as_bytes());
        bytes.push(b'\n');
        self.queue.pop_front();
        if self.in_flight.is_empty() {
            self.last_rx = Some(now);
        }
        if !self.busy() {
            // From idle to streaming: poll at the faster rate from now on.
            let soon = now + self.config.status_interval;
            self.next_poll = Some(self.next_poll.map_or(soon, |t| t.min(soon)));
        }
        self.in_flight.push_back(InFlight {
            origin,
            len,
            eeprom,
        });
        self.in_flight_bytes += len;
        self.awaiting_drain = true;
        self.query_after_last_answer = false;
        self.idle_reports = 0;
        self.stats.sent_lines += 1;
        self.stats.sent_bytes += len as u64;
        Some(bytes)
    }

    /// The next moment [`GrblHost::handle_timeout`] must run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let poll = self.next_poll;
        let dead = if self.busy() {
            self.last_rx.map(|t| t + self.config.response_timeout)
        } else {
            None
        };
        match (poll, dead) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Acts on a passed deadline.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.busy()
            && let Some(t) = self.last_rx
            && now >= t + self.config.response_timeout
        {
            self.last_rx = Some(now);
            self.events.push_back(GrblEvent::ResponseTimeout);
        }
        // The status poll itself goes out from poll_transmit.
    }

    /// Feeds one received line.
    pub fn handle_line(&mut self, now: Instant, line: &str) {
        let line = line.trim();
        if line.is_empty() {
            return;
        }
        self.last_rx = Some(now);
        if line == "ok" {
            self.answer(None);
        } else if let Some(code) = line.strip_prefix("error:") {
            let code = code.trim().parse::<u16>().unwrap_or(0);
            self.stats.errors += 1;
            self.answer(Some(code));
        } else if let Some(code) = line.strip_prefix("ALARM:") {
            let code = code.trim().parse::<u16>().unwrap_or(0);
            self.events.push_back(GrblEvent::Alarm {
                code,
                message: alarm_message(code),
            });
        } else if line.starts_with('<') && line.ends_with('>') {
            match parse_status(line, &mut self.last_wco) {
                Some(s) => self.on_status(s),
                None => self
                    .events
                    .push_back(GrblEvent::Unexpected(line.to_string())),
            }
        } else if let Some(rest) = line.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            self.on_feedback(rest);
        } else if let Some(rest) = line.strip_prefix('$')
            && let Some((n, v)) = rest.split_once('=')
            && let Ok(number) = n.parse::<u16>()
        {
            self.events.push_back(GrblEvent::Setting {
                number,
                value: v.to_string(),
            });
        } else if is_banner(line) {
            self.in_flight.clear();
            self.in_flight_bytes = 0;
            self.awaiting_drain = !self.queue.is_empty();
            self.events.push_back(GrblEvent::Reset {
                version: line.to_string(),
            });
        } else {
            self.events
                .push_back(GrblEvent::Unexpected(line.to_string()));
        }
    }

    fn answer(&mut self, error: Option<u16>) {
        self.query_after_last_answer = false;
        self.idle_reports = 0;
        let Some(f) = self.in_flight.pop_front() else {
            self.events.push_back(GrblEvent::Unexpected(match error {
                None => "ok".into(),
                Some(c) => format!("error:{c}"),
            }));
            return;
        };
        self.in_flight_bytes -= f.len;
        self.events.push_back(match error {
            None => GrblEvent::Ok { origin: f.origin },
            Some(code) => GrblEvent::Error {
                origin: f.origin,
                code,
                message: error_message(code),
            },
        });
    }

    fn on_status(&mut self, s: StatusReport) {
        if let Some((planner, _)) = s.buffer {
            self.max_planner_free = self.max_planner_free.max(planner);
        }
        let planner_empty = s.buffer.is_none_or(|(p, _)| p >= self.max_planner_free);
        let idle_and_answered = self.query_after_last_answer
            && self.in_flight.is_empty()
            && self.queue.is_empty()
            && s.state == MachineState::Idle
            && planner_empty;
        self.idle_reports = if idle_and_answered {
            self.idle_reports.saturating_add(1)
        } else {
            0
        };
        if self.awaiting_drain && self.idle_reports >= 2 {
            self.awaiting_drain = false;
            self.events.push_back(GrblEvent::Status(s));
            self.events.push_back(GrblEvent::Drained);
            return;
        }
        self.events.push_back(GrblEvent::Status(s));
    }

    fn on_feedback(&mut self, rest: &str) {
        if let Some(m) = rest.strip_prefix("MSG:") {
            self.events.push_back(GrblEvent::Message(m.to_string()));
        } else if let Some(p) = rest.strip_prefix("PRB:") {
            let (pos, ok) = p.rsplit_once(':').unwrap_or((p, "0"));
            match parse_axes(pos) {
                Some(position) => self.events.push_back(GrblEvent::Probe(ProbeResult {
                    position,
                    success: ok == "1",
                })),
                None => self
                    .events
                    .push_back(GrblEvent::Unexpected(format!("[{rest}]"))),
            }
        } else if let Some(o) = rest.strip_prefix("OPT:") {
            let mut parts = o.split(',');
            let flags = parts.next().unwrap_or("").to_string();
            let blocks = parts.next().and_then(|b| b.trim().parse().ok());
            let rx_bytes: Option<u32> = parts.next().and_then(|b| b.trim().parse().ok());
            if let Some(rx) = rx_bytes
                && rx >= 16
            {
                self.config.rx_buffer = rx as usize;
            }
            self.events.push_back(GrblEvent::Options {
                flags,
                blocks,
                rx_bytes,
            });
        } else {
            self.events
                .push_back(GrblEvent::Feedback(format!("[{rest}]")));
        }
    }
}

/// Whether a line writes GRBL's EEPROM (and must be sent alone).
pub fn writes_eeprom(cmd: &str) -> bool {
    let c = cmd.trim().to_ascii_uppercase();
    if let Some(rest) = c.strip_prefix('$') {
        return rest.contains('=')
            && (rest.starts_with(|ch: char| ch.is_ascii_digit())
                || rest.starts_with("RST")
                || rest.starts_with('N')
                || rest.starts_with("I="));
    }
    let compact: String = c.chars().filter(|ch| !ch.is_whitespace()).collect();
    let has_code = |code: &str| {
        compact.match_indices(code).any(|(i, _)| {
            compact[i + code.len()..]
                .chars()
                .next()
                .is_none_or(|ch| !ch.is_ascii_digit() && ch != '.')
        })
    };
    (has_code("G10") && (has_code("L2") || has_code("L20")))
        || has_code("G28.1")
        || has_code("G30.1")
}

fn is_banner(line: &str) -> bool {
    let l = line.to_ascii_lowercase();
    (l.starts_with("grbl ") || l.starts_with("grblhal ")) && l.contains("for help")
}

fn parse_axes(s: &str) -> Option<Vec<f64>> {
    let v: Result<Vec<f64>, _> = s.split(',').map(|x| x.trim().parse::<f64>()).collect();
    v.ok().filter(|v| !v.is_empty() && v.len() <= 9)
}

/// Parses a `<...>` status report; `last_wco` keeps the most recent WCO.
pub fn parse_status(line: &str, last_wco: &mut Option<Vec<f64>>) -> Option<StatusReport> {
    let body = line.strip_prefix('<')?.strip_suffix('>')?;
    let mut fields = body.split('|');
    let state_text = fields.next()?;
    let (name, sub) = match state_text.split_once(':') {
        Some((n, s)) => (n, s.parse::<u8>().ok()),
        None => (state_text, None),
    };
    let state = match name {
        "Idle" => MachineState::Idle,
        "Run" => MachineState::Run,
        "Hold" => MachineState::Hold(sub.unwrap_or(0)),
        "Jog" => MachineState::Jog,
        "Alarm" => MachineState::Alarm,
        "Door" => MachineState::Door(sub.unwrap_or(0)),
        "Check" => MachineState::Check,
        "Home" => MachineState::Home,
        "Sleep" => MachineState::Sleep,
        _ => return None,
    };
    let mut r = StatusReport {
        state,
        mpos: None,
        wpos: None,
        wco: None,
        feed: None,
        spindle: None,
        buffer: None,
        line: None,
        pins: String::new(),
        overrides: None,
        accessories: String::new(),
    };
    for f in fields {
        let Some((k, v)) = f.split_once(':') else {
            continue;
        };
        match k {
            "MPos" => r.mpos = parse_axes(v),
            "WPos" => r.wpos = parse_axes(v),
            "WCO" => {
                r.wco = parse_axes(v);
                last_wco.clone_from(&r.wco);
            }
            "FS" => {
                let mut it = v.split(',');
                r.feed = it.next().and_then(|x| x.parse().ok());
                r.spindle = it.next().and_then(|x| x.parse().ok());
            }
            "F" => r.feed = v.parse().ok(),
            "Bf" => {
                let mut it = v.split(',').map(|x| x.parse::<u32>().ok());
                if let (Some(Some(a)), Some(Some(b))) = (it.next(), it.next()) {
                    r.buffer = Some((a, b));
                }
            }
            "Ln" => r.line = v.parse().ok(),
            "Pn" => r.pins = v.to_string(),
            "Ov" => {
                let v: Vec<u32> = v.split(',').filter_map(|x| x.parse().ok()).collect();
                if let [a, b, c] = v[..] {
                    r.overrides = Some((a, b, c));
                }
            }
            "A" => r.accessories = v.to_string(),
            _ => {}
        }
    }
    let wco = r.wco.clone().or_else(|| last_wco.clone());
    if let Some(wco) = wco {
        if r.wpos.is_none()
            && let Some(m) = &r.mpos
        {
            r.wpos = Some(m.iter().zip(&wco).map(|(m, o)| m - o).collect());
        } else if r.mpos.is_none()
            && let Some(w) = &r.wpos
        {
            r.mpos = Some(w.iter().zip(&wco).map(|(w, o)| w + o).collect());
        }
    }
    Some(r)
}

/// What an `error:n` means, in words an operator can act on.
pub fn error_message(code: u16) -> &'static str {
    match code {
        1 => "G-code words consist of a letter and a value; the letter was not found",
        2 => "a number is missing or malformed",
        3 => "the '$' system command is not recognised or not supported",
        4 => "a negative value was given where a positive one is needed",
        5 => "homing is not enabled in the settings ($22)",
        6 => "the step pulse must be longer than 3 microseconds",
        7 => "the settings in EEPROM could not be read; defaults were restored",
        8 => "this '$' command needs the machine to be idle",
        9 => "G-code is locked out during an alarm or jog; home ($H) or unlock ($X) first",
        10 => "soft limits need homing to be enabled",
        11 => "the line is longer than GRBL's line buffer",
        12 => "the step rate would exceed what GRBL can generate",
        13 => "the safety door is open",
        14 => "a build info or startup line is too long for EEPROM",
        15 => "the jog target is outside the machine's travel",
        16 => "the jog command has no '=' or contains forbidden G-code",
        17 => "laser mode needs PWM output",
        20 => "unsupported or invalid G-code command",
        21 => "more than one command from the same modal group on one line",
        22 => "the feed rate has not been set",
        23 => "this command needs an integer value",
        24 => "more than one command on the line needs axis words",
        25 => "a G-code word is repeated on the line",
        26 => "the command needs axis words and none were given",
        27 => "the line number is out of range",
        28 => "a value word the command needs is missing",
        29 => "G59.x work coordinate systems are not supported",
        30 => "G53 is only allowed with G0 or G1",
        31 => "axis words were given but no command uses them",
        32 => "an arc (G2/G3) needs at least one in-plane axis word",
        33 => "the motion target is invalid",
        34 => "the arc radius is invalid",
        35 => "G2/G3 arcs need at least one in-plane offset word",
        36 => "unused value words were found on the line",
        37 => "G43.1 tool length offset is not on the configured tool axis",
        38 => "the tool number is larger than the maximum supported",
        _ => "unknown error code (see the firmware's documentation)",
    }
}

/// What an `ALARM:n` means, in words an operator can act on.
pub fn alarm_message(code: u16) -> &'static str {
    match code {
        1 => "hard limit triggered; position is lost: re-home ($H) before continuing",
        2 => "soft limit: the target is outside the machine's travel; position kept, unlock ($X)",
        3 => "reset while moving; position may be lost: re-home ($H)",
        4 => "probe was already triggered before the probing move started",
        5 => "probe did not contact the workpiece within the search distance",
        6 => "homing failed: the cycle was reset",
        7 => "homing failed: the safety door was opened",
        8 => "homing failed: pull-off did not clear the limit switch",
        9 => "homing failed: the limit switch was not found within the search distance",
        10 => "homing failed: the second switch of a dual axis was not found",
        _ => "unknown alarm code (see the firmware's documentation)",
    }
}

#[cfg(test)]
mod tests;
