//! Marlin host state machine (sans-IO).
//!
//! Fed received lines and `now`, it decides which bytes to send and when,
//! and reports what the firmware said as [`MarlinEvent`]s. The driver that
//! owns the serial port calls, in a loop: [`MarlinHost::poll_transmit`]
//! (write what it returns), [`MarlinHost::poll_event`],
//! then waits for a received line ([`MarlinHost::handle_line`]) or the
//! deadline from [`MarlinHost::poll_timeout`] ([`MarlinHost::handle_timeout`]).
//!
//! # What is sent
//! Every command goes out numbered and checksummed (`N<n> <cmd>*<cs>`), the
//! handshake's `M110 N0` included, so that the firmware's line-number check
//! makes every retransmission idempotent: a line Marlin already executed is
//! refused, never run twice.
//!
//! # Acknowledgements
//! Marlin answers each accepted line with one `ok`, in order. After a
//! corrupted line it prints `Resend: n`, flushes its receive buffer and
//! refuses every later line until `n` arrives, so every line from `n` on is
//! sent again. Lines before `n` were accepted and their `ok`s may still come.
//! Older Marlin prints `ok` straight after `Resend:`; that `ok` belongs to no
//! line. [`MarlinConfig::ok_after_resend`] says which firmware this is, or
//! `None` to learn it from the first resend that is unambiguous: one with no
//! older line in flight, as always in ping-pong mode. With several lines in
//! flight an `ok` after `Resend:` may be either, so buffered streaming to
//! an older firmware needs the machine profile to say so.
//!
//! Not every `ok` answers a numbered line. The flush takes only what has
//! arrived, so a line still arriving loses its head and its tail reaches
//! Marlin as a line without a number, which it runs as it is: usually an
//! unknown command (`echo:Unknown command: "…"`, then `ok`), sometimes a
//! real one. A line whose `N` became `n` runs the same way on a firmware
//! built with `GCODE_CASE_INSENSITIVE` (default Marlin reads the `n` as
//! an unknown command). Counting such a stray `ok` for the oldest line in
//! flight acknowledges a line the firmware never accepted, and once the
//! count is ahead every later `ok` lands on the wrong line. So an `ok` is matched by its line number where
//! the firmware says it (`ADVANCED_OK`: `ok N<n> P.. B..`, no `N` for a
//! command that came without one), and otherwise an `ok` that follows an
//! `Unknown command` echo of text that is not the oldest line's command is
//! a stray. A line the firmware ran without its number is not sent again
//! when it is requested: a harmless `M114` goes out under its number
//! instead. (Not `M110`: one flipped bit makes it `M112`, which Marlin's
//! emergency parser acts on before any checksum is checked.)
//!
//! # Flow control under noise
//! Buffered streaming keeps lines queued behind the one being read, and a
//! resend request's flush cuts whichever of them is arriving; its tail may
//! be a real command that Marlin then runs out of order. Only with one line
//! in flight is there nothing to cut. So buffered mode sends one line at a
//! time until [`MarlinConfig::clean_lines_before_buffering`] lines in a row
//! were accepted without a resend request, at the start and after every
//! request; on a clean link that costs a few round trips, on a noisy one it
//! is ping-pong. After a request with lines still on the wire, the
//! retransmission waits until their echoes are in or the link has been
//! quiet for [`MarlinConfig::resend_settle`], so that their flushes cannot
//! cut it.
//!
//! # The window
//! Marlin's receive buffer is not the whole window: a line the firmware
//! has taken into one of its command slots (`BUFSIZE`, commonly 4) no
//! longer takes room there, yet its `ok` comes only when it has executed.
//! Marlin refills its slots from the receive buffer between commands, not
//! while one blocks (a move waiting for planner room, `M400`, a dwell), so
//! the only line a host may always count out of the receive buffer is the
//! oldest one awaiting its `ok`: it is in a slot (or still on the wire).
//! That takes `ok`s matched by number (`ADVANCED_OK`); with plain `ok`s
//! a line run without its `N` could shift the count, so every
//! unacknowledged byte counts.
//! `ADVANCED_OK`'s `B<free slots>` tells more: the slots taken when the
//! `ok` was sent hold that many of the next lines too, and they stay out
//! of the receive buffer until their own `ok`s. `BUFSIZE` is taken as the
//! largest `B` seen plus one, never more than the firmware has. Buffered
//! mode keeps the bytes of every other unacknowledged line within
//! `rx_bytes`.
//!
//! # Recovery speed
//! The host measures the shortest round trip (a line written to its
//! `ok`). While buffered mode sends one line at a time after noise, a line
//! whose `ok` has not come within
//! twice the round trip (plus 1 ms) is followed by the next line (when
//! one is queued; the driver ends every job with `M400`, so the last job
//! line has one too): Marlin drops a line whose damaged number
//! reads as its last one without a word, and only a later numbered line
//! draws the resend request that reveals it, in one round trip rather than
//! the five-second timeout. That second line cannot be cut by a flush:
//! the first arrived at least a round trip earlier and was read at once
//! (every earlier line was acknowledged, so its command slots were free),
//! or it waits behind a command that blocks, and then nothing is sent
//! behind the second until the first is acknowledged.
//!
//! # Silence, chatter and `wait`
//! The no-`ok` timeout ([`MarlinConfig::response_timeout`]) runs from the
//! last sign of progress: an `ok`, a resend request or error, a `busy:`
//! keep-alive, a heating wait's report. Everything else the firmware says
//! unasked (`wait`, temperature autoreports, `echo:` chatter) is not
//! progress, so no stream of it can hold off the timeout: a line lost
//! without a word is always found.
//!
//! `wait` says more. Marlin built with `NO_TIMEOUTS` (and Repetier-style
//! firmwares) print it about once a second while their command queue and
//! receive buffer are empty. With lines in flight that means each of them
//! was lost on the way, or ran and its `ok` was lost. Counting the `wait`
//! as the missing `ok` (OctoPrint) is right only in the second case; in the
//! first it skips a line. So a `wait` starts the same recovery as a
//! timeout, at once: every line from the oldest in flight is sent again
//! and then a probe, all numbered: `M105`, or `M115` when an `M105` is
//! among the lines sent again (its `FIRMWARE_NAME` report marks its `ok`,
//! where an `ok T:` could be either `M105`'s). A line the firmware already ran
//! is refused or dropped by its number check and never runs twice. An
//! `ok T:` (which `M105` prints itself, without an `ADVANCED_OK` number)
//! acknowledges the oldest `M105` in flight and, since Marlin accepts lines
//! only in sequence, every line before it (matching it to the oldest line
//! instead would shift every later `ok` by one when a copy was dropped
//! without a word). With a job's own `M105` ahead of the probe the answer
//! may be either's, and only the oldest is proven: the lines after it stay
//! in flight until their own `ok`s or the next recovery, never acknowledged
//! before the firmware had them. A `wait` counts only if every line in
//! flight was sent before the previous `wait` arrived: a `wait` printed
//! while a line was still on the wire says nothing about it. So the recovery comes one
//! `wait` interval (about a second) after the loss, not five seconds (the
//! timeout), and never while anything of ours may still be arriving.
//! Repeated recoveries of one line count towards
//! [`MarlinConfig::max_resends_per_line`].
//!
//! Marlin's XOR checksum cannot see two equal bit flips in one line, and a
//! line whose `N` became `n` runs unchecked; no host can do better than the
//! firmware's check.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::framing::encode_numbered_into;
use crate::host::Origin;

/// Sent to a silent firmware to draw an answer.
const PROBE: &str = "M105";

/// The probe when an `M105` is among the lines a recovery sends again: its
/// `FIRMWARE_NAME` line marks the `ok` after it as the probe's, where an
/// `ok T:` could be the job's `M105` or the probe's (crediting the oldest
/// then proved one line per recovery, and each recovery's probe became the
/// next one's oldest `M105`: a livelock).
const PROBE_NAMED: &str = "M115";

/// Probes in a row that draw no line at all before the link is declared
/// dead. More than one: a lost line and then a lost answer to the probe
/// (or a copy dropped without a word) is silence too, and it is not a dead
/// link.
const SILENT_PROBES_BEFORE_DEAD: u32 = 3;

/// Sent under the number of a line the firmware already ran without its
/// number, wherever that line falls in a retransmission: it reports the
/// position and moves nothing, and no single bit flip turns it into a
/// command the emergency parser acts on.
const RESYNC_FILLER: &str = "M114";

/// How lines are metered onto the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "mode")]
pub enum FlowControl {
    /// One line in flight at a time. Safe with any firmware; slow on links
    /// with latency (one round trip per line).
    PingPong,
    /// Keep at most `rx_bytes` unacknowledged bytes in flight, so the
    /// firmware's receive buffer never overflows.
    Buffered {
        /// The firmware's serial receive buffer in bytes.
        rx_bytes: usize,
    },
}

/// Tuning of the host; defaults suit a USB printer.
#[derive(Debug, Clone, PartialEq)]
pub struct MarlinConfig {
    /// Flow control.
    pub flow: FlowControl,
    /// Sent lines kept for resends.
    pub history: usize,
    /// Consecutive resend requests of one line before giving up.
    pub max_resends_per_line: u32,
    /// Whether the firmware prints `ok` after `Resend:`; `None` learns it.
    pub ok_after_resend: Option<bool>,
    /// Silence while lines are in flight before probing with `M105`.
    pub response_timeout: Duration,
    /// Silence after the probe before the link is declared dead.
    pub dead_timeout: Duration,
    /// Longest command accepted (Marlin's `MAX_CMD_SIZE` is 96).
    pub max_command_len: usize,
    /// Warn when more than this share of lines had to be resent.
    pub resend_ratio_warning: f64,
    /// Buffered mode: lines accepted in a row without a resend request
    /// before more than one line goes on the wire (see the module docs).
    /// 0 buffers from the start and through noise.
    pub clean_lines_before_buffering: u32,
    /// Quiet on the link after which lines sent before a resend request
    /// are taken to have arrived (or been flushed).
    pub resend_settle: Duration,
}

impl Default for MarlinConfig {
    fn default() -> Self {
        Self {
            flow: FlowControl::Buffered { rx_bytes: 128 },
            history: 256,
            max_resends_per_line: 10,
            ok_after_resend: None,
            response_timeout: Duration::from_secs(5),
            dead_timeout: Duration::from_secs(10),
            max_command_len: 96,
            resend_ratio_warning: 0.1,
            clean_lines_before_buffering: 64,
            resend_settle: Duration::from_millis(100),
        }
    }
}

/// Why a command was not queued.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CommandError {
    /// Longer than the firmware accepts.
    #[error("command is {len} bytes long; the firmware accepts at most {max}")]
    TooLong { len: usize, max: usize },
    /// Would corrupt the framing (`*`, newline) or is empty.
    #[error("command must be one clean line without '*' or ';': {0:?}")]
    NotClean(String),
}

/// Commands that stop the machine ahead of everything queued (Marlin's
/// emergency parser acts on them as they arrive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Emergency {
    /// `M112`: kill the firmware; heaters and motors off.
    Kill,
    /// `M108`: break out of a heating wait or a user prompt.
    Break,
    /// `M410`: quick stop, discard planned moves.
    QuickStop,
}

impl Emergency {
    fn command(self) -> &'static str {
        match self {
            Self::Kill => "M112",
            Self::Break => "M108",
            Self::QuickStop => "M410",
        }
    }
}

/// One heater's reading.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeaterReading {
    /// `T`, `T0`, `B`, `C` (chamber), ...
    pub name: String,
    /// Current temperature, °C.
    pub actual: f64,
    /// Target temperature, °C (0 when off).
    pub target: f64,
}

/// A temperature report (`T:210.0 /210.0 B:60.0 /60.0 @:127 B@:64`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct TemperatureReport {
    /// Every heater in the report, in order.
    pub heaters: Vec<HeaterReading>,
}

/// What `M115` said.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct FirmwareInfo {
    /// `FIRMWARE_NAME` value, e.g. `Marlin 2.1.2 (Github)`.
    pub name: String,
    /// Other `KEY:value` fields of the first line.
    pub fields: BTreeMap<String, String>,
    /// `Cap:NAME:0|1` lines.
    pub caps: BTreeMap<String, bool>,
}

/// Host actions the firmware asks for (`//action:...`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HostAction {
    /// Pause the job.
    Pause,
    /// Resume the job.
    Resume,
    /// Cancel the job.
    Cancel,
    /// The firmware paused (e.g. filament runout).
    Paused,
    /// The firmware resumed.
    Resumed,
    /// The firmware wants the host to disconnect.
    Disconnect,
    /// Anything else, verbatim.
    Other(String),
}

/// How an `Error:` line is to be handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// A transmission error; a `Resend:` follows.
    Resend,
    /// Worth showing; the firmware goes on.
    Warning,
    /// The firmware halted or must not go on: fail the job.
    Fatal,
}

/// Classifies the text of an `Error:` (or `!!`) line.
pub fn classify_error(line: &str) -> ErrorClass {
    let l = line.to_ascii_lowercase();
    if l.contains("line number is not last line number")
        || l.contains("checksum mismatch")
        || l.contains("no checksum with line number")
        || l.contains("missing checksum")
        || l.contains("no line number with checksum")
    {
        return ErrorClass::Resend;
    }
    const FATAL: &[&str] = &[
        "kill() called",
        "printer halted",
        "thermal runaway",
        "thermal malfunction",
        "heating failed",
        "mintemp",
        "maxtemp",
        "emergency stop",
        "stopped",
    ];
    if line.trim_start().starts_with("!!") || FATAL.iter().any(|f| l.contains(f)) {
        return ErrorClass::Fatal;
    }
    ErrorClass::Warning
}

/// Parses a temperature report anywhere in a line.
pub fn parse_temperatures(line: &str) -> Option<TemperatureReport> {
    let mut heaters = Vec::new();
    let mut tokens = line.split_whitespace().peekable();
    while let Some(tok) = tokens.next() {
        let Some((name, value)) = tok.split_once(':') else {
            continue;
        };
        let is_heater = matches!(name, "T" | "B" | "C" | "P" | "A" | "R" | "L")
            || (name.starts_with('T') && name[1..].bytes().all(|b| b.is_ascii_digit()));
        if !is_heater {
            continue;
        }
        let Ok(actual) = value.parse::<f64>() else {
            continue;
        };
        let target = match tokens.peek().and_then(|t| t.strip_prefix('/')) {
            Some(t) => {
                let v = t.parse::<f64>().unwrap_or(0.0);
                tokens.next();
                v
            }
            None => 0.0,
        };
        heaters.push(HeaterReading {
            name: name.to_string(),
            actual,
            target,
        });
    }
    (!heaters.is_empty()).then_some(TemperatureReport { heaters })
}

/// Parses `Resend: 12`, `Resend:12`, `rs 12` and `rs N12`.
fn parse_resend(line: &str) -> Option<u32> {
    let rest = line
        .strip_prefix("Resend:")
        .or_else(|| line.strip_prefix("rs "))?
        .trim();
    let rest = rest.strip_prefix('N').unwrap_or(rest);
    rest.parse().ok()
}

/// Things the firmware said or the host concluded.
#[derive(Debug, Clone, PartialEq)]
pub enum MarlinEvent {
    /// A command was acknowledged with `ok`.
    Acknowledged {
        /// Who sent it.
        origin: Origin,
    },
    /// The lines a console command produced, ending with its `ok` line.
    Response {
        /// The console request.
        origin: Origin,
        /// Lines received while it was in flight.
        lines: Vec<String>,
    },
    /// Heater readings.
    Temperatures(TemperatureReport),
    /// The `M115` report, after its `ok`.
    Firmware(FirmwareInfo),
    /// `busy:` keep-alive while a long command runs.
    Busy {
        /// `processing`, `paused for user`, ...
        reason: String,
    },
    /// `//action:` request.
    Action(HostAction),
    /// The firmware printed `start`: it rebooted and lost every line.
    FirmwareRestarted,
    /// Worth showing to the operator.
    Warning(String),
    /// The firmware halted.
    Fatal(String),
    /// One line was requested again too often; the link is unusable.
    ResendGaveUp {
        /// The line number.
        line_number: u32,
    },
    /// The share of resent lines is high: a bad cable or baud rate.
    ResendRatioHigh {
        /// Resent lines ÷ sent lines.
        ratio: f64,
    },
    /// No answer even to a probe.
    LinkDead,
    /// An `echo:` line that is not a keep-alive.
    Echo(String),
}

/// Counters for status pages and benchmarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct MarlinStats {
    /// Distinct lines sent (first transmissions).
    pub sent_lines: u64,
    /// Bytes written, including resends.
    pub sent_bytes: u64,
    /// Lines transmitted again.
    pub resends: u64,
    /// Resend requests acted on.
    pub resend_requests: u64,
    /// Resend requests recognised as duplicates and ignored.
    pub duplicate_resend_requests: u64,
    /// `ok`s that matched no line.
    pub unexpected_oks: u64,
    /// `ok`s for something the firmware ran without a line number: the
    /// tail of a line its flush cut, or a line whose `N` was damaged.
    pub stray_oks: u64,
    /// Lines the firmware ran without their number (`N` damaged into
    /// `n`); not sent twice.
    pub unnumbered_runs: u64,
    /// Tails of cut lines that the firmware ran as real commands.
    pub fragments_executed: u64,
    /// Recoveries (lines in flight sent again, then the probe)
    /// after a silence or a `wait` from an idle firmware: a line or its
    /// `ok` was lost without a word.
    pub recoveries: u64,
}

#[derive(Debug, Clone)]
struct Sent {
    number: u32,
    origin: Origin,
    /// Encoded line including the newline.
    bytes: Vec<u8>,
    is_m115: bool,
    /// An `ok` was already counted for this line. A corrupted line that
    /// lost its `N` is run by Marlin as an unknown command and answered
    /// `ok`; the line is requested again later and its second `ok` must not
    /// be reported twice.
    acked: bool,
    /// An `M110` (see [`InFlight`]).
    sync: bool,
    /// The command as queued, to tell its own `Unknown command` echo from
    /// a fragment's.
    command: String,
    /// The firmware ran it without its line number; when it is requested
    /// again, [`RESYNC_FILLER`] goes out under its number instead.
    ran_unnumbered: bool,
}

/// A line awaiting its `ok`.
#[derive(Debug, Clone, Copy)]
struct InFlight {
    number: u32,
    len: usize,
    /// When this copy was written, to tell whether a `wait` could have
    /// been printed after it arrived.
    sent_at: Instant,
    console: bool,
    /// `M110`: Marlin applies the new number when it *executes* the
    /// command, so nothing may follow it until its `ok`.
    sync: bool,
    /// The firmware read it without its number (a stray `ok` answered
    /// it): it left the receive buffer but awaits its resend request.
    consumed: bool,
    /// Sent before a line the firmware asked for again: it has been read
    /// (accepted and awaiting its `ok`, or refused as a copy of a line it
    /// had), so it takes no room in the receive buffer. A copy sent by a
    /// recovery (see "Silence, chatter and `wait`") is refused this way,
    /// and the retransmission after it must not wait for its `ok`.
    read: bool,
    /// [`RESYNC_FILLER`] standing in for a line the firmware ran without
    /// its number.
    filler: bool,
}

#[derive(Debug, Clone, Copy)]
struct PendingResend {
    number: u32,
    /// Later resend requests of the same line that may be echoes of lines
    /// already on the wire.
    duplicates_allowed: usize,
}

/// The Marlin host state machine. See the module docs.
#[derive(Debug)]
pub struct MarlinHost {
    config: MarlinConfig,
    queue: VecDeque<(Origin, String)>,
    emergency: VecDeque<Vec<u8>>,
    history: VecDeque<Sent>,
    in_flight: VecDeque<InFlight>,
    in_flight_bytes: usize,
    /// Next line number to assign.
    next_number: u32,
    /// Line numbers waiting to be sent again, oldest first.
    retransmit: VecDeque<u32>,
    pending_resend: Option<PendingResend>,
    consecutive: (u32, u32),
    /// The `Resend:` just received and when, until the next line.
    /// `genuine`: it was acted on, not recognised as an echo.
    just_got_resend: Option<(u32, Instant, bool)>,
    ok_after_resend: Option<bool>,
    /// The last sign of progress (see "Silence, chatter and `wait`"), or
    /// the first line going in flight: the no-`ok` timeout and the resend
    /// settle run from here. (Chatter is not an echo of a line on the
    /// wire, so it must not keep a retransmission waiting either.)
    last_progress: Option<Instant>,
    /// When the previous `wait` arrived.
    last_wait: Option<Instant>,
    /// When the firmware last said anything at all.
    last_heard: Option<Instant>,
    /// Probes in a row that drew nothing at all.
    silent_probes: u32,
    /// The shortest time from writing a line to its `ok`: the round trip,
    /// one line's serialisation and the quickest execution. Sizes the
    /// waits that exist only to let the wire drain (see "Recovery speed").
    min_rtt: Option<Duration>,
    /// `now` of the line being handled.
    clock: Option<Instant>,
    /// The lines (first, last) a recovery sent again: copies of lines the
    /// firmware may already have run (see [`MarlinHost::on_resend`]).
    recovered: Option<(u32, u32)>,
    probe_sent_at: Option<Instant>,
    /// The probe is queued: it goes out past flow control, since its point
    /// is to draw an answer while lines go unanswered.
    probe_queued: bool,
    /// The probe's command: [`PROBE`], or [`PROBE_NAMED`].
    probe_cmd: &'static str,
    /// The number of the [`PROBE_NAMED`] probe in flight.
    named_probe: Option<u32>,
    /// Its `FIRMWARE_NAME` line arrived: the next plain `ok` is its own.
    named_probe_answered: bool,
    feeding: bool,
    events: VecDeque<MarlinEvent>,
    console_lines: Vec<String>,
    firmware: FirmwareInfo,
    stats: MarlinStats,
    ratio_warned: bool,
    halted: bool,
    advanced_ok_seen: bool,
    /// The `M115` answer has arrived: a `start` from now on is a reboot.
    handshake_done: bool,
    /// The last resend request's error said the line *number* was wrong
    /// (what lines already on the wire produce), not its checksum.
    last_error_was_line_number: bool,
    /// Lines sent after a refused one that are still on the wire or in
    /// the firmware's receive buffer: they take room there until the
    /// firmware has read (and refused) them.
    ghosts: VecDeque<usize>,
    ghost_bytes: usize,
    /// Lines accepted in a row since the last resend request or stray.
    clean_run: u32,
    /// The text of an `Unknown command` echo since the last `ok`.
    unknown_echo: Option<String>,
    /// The largest `B` (free command slots) an `ADVANCED_OK` reported.
    max_free_slots: Option<u32>,
    /// How many of the oldest lines in flight the firmware has reported
    /// in its command slots (see "The window" in the module docs).
    in_slots: usize,
}

impl MarlinHost {
    /// A host that has sent nothing yet; call [`MarlinHost::handshake`].
    pub fn new(config: MarlinConfig) -> Self {
        Self {
            ok_after_resend: config.ok_after_resend,
            config,
            queue: VecDeque::new(),
            emergency: VecDeque::new(),
            history: VecDeque::new(),
            in_flight: VecDeque::new(),
            in_flight_bytes: 0,
            next_number: 0,
            retransmit: VecDeque::new(),
            pending_resend: None,
            consecutive: (0, 0),
            just_got_resend: None,
            last_progress: None,
            last_wait: None,
            last_heard: None,
            silent_probes: 0,
            min_rtt: None,
            clock: None,
            recovered: None,
            probe_sent_at: None,
            probe_queued: false,
            probe_cmd: PROBE,
            named_probe: None,
            named_probe_answered: false,
            feeding: true,
            events: VecDeque::new(),
            console_lines: Vec::new(),
            firmware: FirmwareInfo::default(),
            stats: MarlinStats::default(),
            ratio_warned: false,
            halted: false,
            advanced_ok_seen: false,
            handshake_done: false,
            last_error_was_line_number: false,
            ghosts: VecDeque::new(),
            ghost_bytes: 0,
            clean_run: 0,
            unknown_echo: None,
            max_free_slots: None,
            in_slots: 0,
        }
    }

    /// Queues `M110 N0` (reset line numbers) and `M115` (capabilities), the
    /// first thing mature hosts send.
    pub fn handshake(&mut self) {
        self.queue.push_front((Origin::Internal, "M115".into()));
        self.queue.push_front((Origin::Internal, "M110 N0".into()));
    }

    /// Queues a clean command (comments stripped, one line).
    pub fn push(&mut self, origin: Origin, command: &str) -> Result<(), CommandError> {
        let command = command.trim();
        if command.is_empty()
            || command
                .bytes()
                .any(|b| matches!(b, b'*' | b';' | b'\n' | b'\r' | 0))
        {
            return Err(CommandError::NotClean(command.chars().take(40).collect()));
        }
        if command.len() > self.config.max_command_len {
            return Err(CommandError::TooLong {
                len: command.len(),
                max: self.config.max_command_len,
            });
        }
        match origin {
            Origin::Job { .. } => self.queue.push_back((origin, command.to_string())),
            // Operator and host commands go ahead of queued job lines, so
            // that a park script or a console command is not stuck behind
            // the look-ahead of a paused job.
            _ => {
                let at = self
                    .queue
                    .iter()
                    .position(|(o, _)| matches!(o, Origin::Job { .. }))
                    .unwrap_or(self.queue.len());
                self.queue.insert(at, (origin, command.to_string()));
            }
        }
        Ok(())
    }

    /// Commands queued and not yet sent.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Lines sent and not yet acknowledged (or requested again).
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Whether more than one line may be on the wire now (buffered mode
    /// after a clean run; see the module docs).
    pub fn buffering(&self) -> bool {
        matches!(self.config.flow, FlowControl::Buffered { .. })
            && self.clean_run >= self.config.clean_lines_before_buffering
    }

    /// Unacknowledged bytes on the wire or in the firmware's buffer.
    pub fn in_flight_bytes(&self) -> usize {
        self.in_flight_bytes
    }

    /// Whether the firmware replies with `ok N.. P.. B..`.
    pub fn advanced_ok(&self) -> bool {
        self.advanced_ok_seen
    }

    /// Sends `command` ahead of everything queued, outside flow control.
    pub fn emergency(&mut self, command: Emergency) {
        let mut s = String::new();
        encode_numbered_into(self.next_number, command.command(), &mut s);
        // Marlin's emergency parser skips the line number, so numbering the
        // command keeps the sequence intact for the firmware that survives.
        self.next_number = self.next_number.wrapping_add(1);
        s.push('\n');
        self.emergency.push_back(s.into_bytes());
    }

    /// Stops sending queued job lines (retransmissions, host and console
    /// commands still go out).
    pub fn pause_feeding(&mut self) {
        self.feeding = false;
    }

    /// Undoes [`MarlinHost::pause_feeding`].
    pub fn resume_feeding(&mut self) {
        self.feeding = true;
    }

    /// Drops every queued, unsent job line (for cancel); host and operator
    /// commands already queued (park, cancel scripts) still go out.
    pub fn clear_queue(&mut self) {
        self.queue.retain(|(o, _)| !matches!(o, Origin::Job { .. }));
    }

    /// Counters so far.
    pub fn stats(&self) -> MarlinStats {
        self.stats
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<MarlinEvent> {
        self.events.pop_front()
    }

    fn window_allows(&self, now: Instant, len: usize) -> bool {
        if self.in_flight.iter().all(|f| f.consumed || f.read) || self.early_line_due(now) {
            // Ghosts only limit how much more goes out; one line always may
            // (after the settle time, see `settling`), or a resend whose
            // ghosts were silently flushed would wait forever.
            return true;
        }
        match self.config.flow {
            FlowControl::PingPong => false,
            FlowControl::Buffered { rx_bytes } => {
                self.buffering() && self.rx_buffer_bytes() + self.ghost_bytes + len <= rx_bytes
            }
        }
    }

    /// Unacknowledged bytes that may be in the firmware's receive buffer:
    /// all but the lines known to be in its command slots (at least the
    /// oldest; see "The window" in the module docs). While lines refused
    /// after a resend request are still arriving, all of them.
    fn rx_buffer_bytes(&self) -> usize {
        // Only `ok`s matched by number say for sure which line is the
        // oldest the firmware holds: a plain `ok` for a line that lost its
        // `N` would be counted for the oldest line in flight, and the one
        // after it, still in the receive buffer, be taken for it.
        if !self.advanced_ok_seen || !self.ghosts.is_empty() || self.pending_resend.is_some() {
            return self.in_flight_bytes;
        }
        let out: usize = self
            .in_flight
            .iter()
            .filter(|f| !f.consumed && !f.read)
            .take(self.in_slots.max(1))
            .map(|f| f.len)
            .sum();
        self.in_flight_bytes.saturating_sub(out)
    }

    /// Lines sent before the last resend request may still be arriving:
    /// until their echoes are in or the link has been quiet for
    /// `resend_settle`, a retransmission could be cut by their flushes.
    fn settling(&self, now: Instant) -> Option<Instant> {
        if self.ghosts.is_empty() {
            return None;
        }
        let until = self.last_progress? + self.settle_quiet();
        (now < until).then_some(until)
    }

    /// How long the link must be quiet before lines sent ahead of a resend
    /// request are taken to be in. Not sized by the round trip: those lines
    /// may sit in the firmware's receive buffer, unread and silent, for as
    /// long as a command blocks (a move waiting for the planner), and a
    /// retransmission behind them would be cut by the flush their refusal
    /// causes. A shorter settle measured 1.5 ms rather than ~100 ms per
    /// resend in buffered mode at 0.1 % noise, but is not safe at real
    /// time scale; kept at `resend_settle`.
    fn settle_quiet(&self) -> Duration {
        self.config.resend_settle
    }

    /// When the next line may follow the one line in flight although its
    /// `ok` has not come, while buffered mode sends one line at a time
    /// after noise: see "Recovery speed" in the module docs.
    fn early_line_at(&self) -> Option<Instant> {
        if !matches!(self.config.flow, FlowControl::Buffered { .. })
            || self.buffering()
            || !self.ghosts.is_empty()
            || self.halted
        {
            return None;
        }
        let rtt = self.min_rtt?;
        let mut waiting = self.in_flight.iter().filter(|f| !f.consumed && !f.read);
        let only = waiting.next()?;
        if waiting.next().is_some() || only.sync {
            return None;
        }
        Some(only.sent_at + rtt * 2 + Duration::from_millis(1))
    }

    fn early_line_due(&self, now: Instant) -> bool {
        self.early_line_at().is_some_and(|t| now >= t)
    }

    /// Bytes to write now, if any. Call until it returns `None`.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Vec<u8>> {
        if let Some(b) = self.emergency.pop_front() {
            self.stats.sent_bytes += b.len() as u64;
            return Some(b);
        }
        if self.halted {
            return None;
        }
        if !self.retransmit.is_empty() && self.settling(now).is_some() {
            return None;
        }
        if let Some(&n) = self.retransmit.front() {
            let Some(sent) = self.history.iter().find(|s| s.number == n) else {
                // Checked when the request came in; unreachable unless the
                // history shrank since. Fail loudly rather than skip a line.
                self.retransmit.clear();
                self.fail(format!("line N{n} is no longer in the resend history"));
                return None;
            };
            // A line the firmware already ran without its number must not
            // run twice: a command that does nothing takes its number.
            let filler = sent.ran_unnumbered;
            let bytes = if filler {
                let mut line = String::new();
                encode_numbered_into(n, RESYNC_FILLER, &mut line);
                line.push('\n');
                line.into_bytes()
            } else {
                sent.bytes.clone()
            };
            let len = bytes.len();
            let sync = sent.sync && !filler;
            if !self.window_allows(now, len)
                || (sync && !self.in_flight.iter().all(|f| f.consumed))
                || self.sync_in_flight()
            {
                // Checked before the line leaves the queue: a retransmission
                // that has to wait must not be dropped. Only the probe may
                // pass it.
                return self.poll_probe(now);
            }
            let console = matches!(sent.origin, Origin::Console { .. }) && !filler;
            self.retransmit.pop_front();
            self.in_flight.push_back(InFlight {
                number: n,
                len,
                sent_at: now,
                console,
                sync,
                consumed: false,
                read: false,
                filler,
            });
            self.in_flight_bytes += len;
            if !filler {
                self.stats.resends += 1;
            }
            self.stats.sent_bytes += len as u64;
            self.arm(now);
            return Some(bytes);
        }
        if !self.feeding
            && !self
                .queue
                .front()
                .is_some_and(|(o, _)| *o == Origin::Internal)
        {
            return None;
        }
        if self.sync_in_flight() {
            return None;
        }
        let (_, cmd) = self.queue.front()?;
        let sync = m110_target(cmd).is_some();
        if sync && !self.in_flight.iter().all(|f| f.consumed) {
            return None;
        }
        let mut line = String::with_capacity(cmd.len() + 16);
        let number = self.next_number;
        encode_numbered_into(number, cmd, &mut line);
        line.push('\n');
        if !self.window_allows(now, line.len()) {
            return self.poll_probe(now);
        }
        let (origin, cmd) = self.queue.pop_front()?;
        Some(self.send_new(now, origin, cmd, number, line))
    }

    /// Records and returns a first transmission of `cmd` as line `number`
    /// (`line` is its encoding).
    fn send_new(
        &mut self,
        now: Instant,
        origin: Origin,
        cmd: String,
        number: u32,
        line: String,
    ) -> Vec<u8> {
        if self.probe_queued && origin == Origin::Internal && cmd == self.probe_cmd {
            self.probe_queued = false;
            self.named_probe = (cmd == PROBE_NAMED).then_some(number);
            self.named_probe_answered = false;
        }
        let sync = m110_target(&cmd).is_some();
        self.next_number = match m110_target(&cmd) {
            Some(n) => n.wrapping_add(1),
            None => number.wrapping_add(1),
        };
        let sent = Sent {
            number,
            origin,
            bytes: line.into_bytes(),
            is_m115: cmd.starts_with("M115"),
            acked: false,
            sync,
            command: cmd,
            ran_unnumbered: false,
        };
        let bytes = sent.bytes.clone();
        let len = bytes.len();
        let console = matches!(origin, Origin::Console { .. });
        self.history.push_back(sent);
        while self.history.len() > self.config.history {
            self.history.pop_front();
        }
        self.in_flight.push_back(InFlight {
            number,
            len,
            sent_at: now,
            console,
            sync,
            consumed: false,
            read: false,
            filler: false,
        });
        self.in_flight_bytes += len;
        self.stats.sent_lines += 1;
        self.stats.sent_bytes += len as u64;
        self.arm(now);
        bytes
    }

    /// An `M110` the firmware has not read yet: nothing may follow it.
    /// (One it read without its number needs no wait: it either ran or
    /// did nothing, and the next numbered line tells which.)
    fn sync_in_flight(&self) -> bool {
        self.in_flight.iter().any(|f| f.sync && !f.consumed)
    }

    /// The queued probe, past flow control. Numbered after every
    /// line sent, it draws an answer either way: its own `ok`, or a resend
    /// request for a line the firmware dropped without a word.
    fn poll_probe(&mut self, now: Instant) -> Option<Vec<u8>> {
        let probe = self.probe_cmd;
        let is_probe = |(o, c): &(Origin, String)| *o == Origin::Internal && c == probe;
        if !self.probe_queued || self.sync_in_flight() || !self.queue.front().is_some_and(is_probe)
        {
            return None;
        }
        let (origin, cmd) = self.queue.pop_front()?;
        let mut line = String::with_capacity(cmd.len() + 16);
        let number = self.next_number;
        encode_numbered_into(number, &cmd, &mut line);
        line.push('\n');
        Some(self.send_new(now, origin, cmd, number, line))
    }

    fn arm(&mut self, now: Instant) {
        if self.in_flight.len() == 1 {
            // The silence timer runs from the first line in flight.
            self.last_progress = Some(now);
        }
    }

    /// The next moment [`MarlinHost::handle_timeout`] must run (or
    /// [`MarlinHost::poll_transmit`], when a retransmission waits for the
    /// link to settle).
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.halted {
            return None;
        }
        if let Some(t) = self.probe_sent_at {
            return Some(t + self.config.dead_timeout);
        }
        let settle = (!self.retransmit.is_empty())
            .then(|| self.last_progress.map(|t| t + self.settle_quiet()))
            .flatten()
            .filter(|_| !self.ghosts.is_empty());
        // No exemption for long commands (`G28`, `M109`, ...): Marlin sends
        // `busy:` every 2 s while one runs (and `M109`/`M190` report each
        // second), which refreshes the timer. Without it a long command
        // that the firmware dropped without a word would wait forever.
        if self.in_flight.is_empty() {
            return settle;
        }
        let silence = self.last_progress.map(|t| t + self.config.response_timeout);
        // Only when something can follow: otherwise the deadline would
        // pass and pass again with nothing to do.
        let early = self.early_line_at().filter(|_| self.sendable());
        [settle, silence, early].into_iter().flatten().min()
    }

    /// Something may go out when the window allows it (what
    /// [`MarlinHost::poll_transmit`] checks besides the window).
    fn sendable(&self) -> bool {
        if self.sync_in_flight() {
            return false;
        }
        if let Some(&n) = self.retransmit.front() {
            // An `M110` waits for every line before it, window or not.
            return !self
                .history
                .iter()
                .find(|s| s.number == n)
                .is_some_and(|s| s.sync && !s.ran_unnumbered);
        }
        self.queue.front().is_some_and(|(o, c)| {
            (self.feeding || *o == Origin::Internal) && m110_target(c).is_none()
        })
    }

    /// Acts on a passed deadline: probe a silent firmware with `M105`, or
    /// give up on it.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(t) = self.probe_sent_at {
            if now < t + self.config.dead_timeout {
                return;
            }
            self.probe_sent_at = None;
            // A firmware that still talks (chatter) is alive but lost the
            // probe too, or its answer was lost: recover again, as often
            // as a line may be resent. One that says nothing at all gets a
            // few probes before the link is declared dead.
            let alive = self.last_heard.is_some_and(|h| h > t);
            if !alive {
                self.silent_probes += 1;
            }
            let oldest = self.in_flight.front().map(|f| f.number);
            match oldest {
                Some(n) if self.silent_probes < SILENT_PROBES_BEFORE_DEAD => {
                    if self.count_resend(n) {
                        self.recover(now);
                    }
                }
                _ => self.events.push_back(MarlinEvent::LinkDead),
            }
            return;
        }
        let Some(last) = self.last_progress else {
            return;
        };
        if self.in_flight.is_empty() || now < last + self.config.response_timeout {
            return;
        }
        self.recover(now);
    }

    /// Sends every line from the oldest in flight again, then the probe:
    /// the firmware lost a line or its `ok` without a word (a silence, or
    /// `wait` from an idle firmware). Lines it threw away (its buffer flush
    /// after a resend request) go again; numbering makes that safe, as a
    /// line it already ran is refused. The probe is numbered too: its
    /// `ok T:` acknowledges every line up to it. After this long (a
    /// timeout, or a `wait` printed after the lines arrived) nothing old
    /// is left on the wire.
    fn recover(&mut self, now: Instant) {
        self.stats.recoveries += 1;
        self.ghosts.clear();
        self.ghost_bytes = 0;
        self.in_slots = 0;
        let first = self.in_flight.front().map(|f| f.number);
        if let Some(n) = first {
            self.recovered = Some((n, self.next_number.wrapping_sub(1)));
            self.schedule_resend_from(n);
        }
        if !self.probe_queued {
            let m105_again = self.retransmit.iter().any(|n| {
                self.history
                    .iter()
                    .rev()
                    .find(|s| s.number == *n)
                    .is_some_and(|s| s.command == PROBE)
            });
            self.probe_cmd = if m105_again { PROBE_NAMED } else { PROBE };
            self.queue
                .push_front((Origin::Internal, self.probe_cmd.into()));
            self.probe_queued = true;
        }
        self.probe_sent_at = Some(now);
    }

    /// `wait`: the firmware's queue and receive buffer are empty. See
    /// "Silence, chatter and `wait`" in the module docs.
    fn on_wait(&mut self, now: Instant) {
        let previous = self.last_wait.replace(now);
        if self.halted || !self.ghosts.is_empty() {
            // Lines refused after a resend request may still be arriving:
            // the retransmission waits for them, not for this.
            return;
        }
        let Some(oldest) = self.in_flight.iter().find(|f| !f.consumed).copied() else {
            return;
        };
        let newest = self.in_flight.iter().map(|f| f.sent_at).max();
        if previous.is_none_or(|p| newest.is_none_or(|n| n >= p)) {
            // A line sent since the previous `wait` may have been on the
            // wire when this one was printed: the firmware may not be done.
            return;
        }
        if self.count_resend(oldest.number) {
            self.recover(now);
        }
    }

    fn schedule_resend_from(&mut self, n: u32) {
        // Marlin refuses every line after the one it asked for, so every
        // line sent from n on goes out again, in order, even one whose `ok`
        // was counted (that `ok` answered a corrupted, unnumbered line).
        let Some(pos) = self.history.iter().rposition(|s| s.number == n) else {
            return;
        };
        let again: Vec<u32> = self.history.iter().skip(pos).map(|s| s.number).collect();
        self.in_flight.retain(|f| !again.contains(&f.number));
        self.in_flight_bytes = self.window_bytes();
        self.retransmit = again.into();
    }

    /// Bytes of lines in flight that still take room in the firmware's
    /// receive buffer.
    fn window_bytes(&self) -> usize {
        self.in_flight
            .iter()
            .filter(|f| !f.consumed && !f.read)
            .map(|f| f.len)
            .sum()
    }

    /// Feeds one received line (without its newline).
    pub fn handle_line(&mut self, now: Instant, line: &str) {
        let line = line.trim();
        if line.is_empty() {
            return;
        }
        self.clock = Some(now);
        // Chatter (a temperature autoreport, `wait`, `echo:`) comes on its
        // own clock and says nothing about the lines in flight: it must not
        // hold off the silence timer, or a line the firmware dropped
        // without a word (Marlin drops a copy of its last line, which a
        // damaged number can look like) would wait for its `ok` forever.
        // The reports of a heating wait (`W:`) do show a command at work.
        self.last_heard = Some(now);
        if is_progress(line) {
            self.last_progress = Some(now);
            self.probe_sent_at = None;
            self.silent_probes = 0;
        }
        let after_resend = self.just_got_resend.take();

        if line == "ok" || line.starts_with("ok ") {
            if let Some((n, at, genuine)) = after_resend
                && self.is_resend_ok(n, genuine && now == at)
            {
                return;
            }
            self.on_ok(line);
            return;
        }
        if after_resend.is_some() && self.ok_after_resend.is_none() {
            // That firmware prints `ok` right after `Resend:`; this one
            // printed something else.
            self.ok_after_resend = Some(false);
        }
        if let Some(n) = parse_resend(line) {
            let genuine = self.on_resend(n);
            self.just_got_resend = Some((n, now, genuine));
            return;
        }
        if line == "start" {
            self.on_restart();
            return;
        }
        if let Some(rest) = line.strip_prefix("//action:") {
            let a = match rest.trim() {
                "pause" => HostAction::Pause,
                "resume" => HostAction::Resume,
                "cancel" => HostAction::Cancel,
                "paused" => HostAction::Paused,
                "resumed" => HostAction::Resumed,
                "disconnect" => HostAction::Disconnect,
                "start" => {
                    self.on_restart();
                    return;
                }
                other => HostAction::Other(other.to_string()),
            };
            self.events.push_back(MarlinEvent::Action(a));
            return;
        }
        if line.starts_with("Error:") || line.starts_with("!!") {
            match classify_error(line) {
                ErrorClass::Resend => {
                    self.last_error_was_line_number =
                        line.to_ascii_lowercase().contains("line number is not");
                }
                ErrorClass::Warning => self
                    .events
                    .push_back(MarlinEvent::Warning(line.to_string())),
                ErrorClass::Fatal => {
                    self.halted = true;
                    self.events.push_back(MarlinEvent::Fatal(line.to_string()));
                }
            }
            self.note_console(line);
            return;
        }
        let body = line.strip_prefix("echo:").unwrap_or(line);
        if let Some(reason) = body.strip_prefix("busy:") {
            self.events.push_back(MarlinEvent::Busy {
                reason: reason.trim().to_string(),
            });
            return;
        }
        if line == "wait" {
            self.on_wait(now);
            return;
        }
        if let Some(rest) = body.strip_prefix("Unknown command") {
            // `Unknown command: "<text>"`: the `ok` that follows answers
            // this text, which tells a fragment from a line of ours.
            let text = rest.trim_start_matches(':').trim();
            let text = text
                .strip_prefix('"')
                .and_then(|t| t.strip_suffix('"'))
                .unwrap_or(text);
            self.unknown_echo = Some(text.to_string());
            self.events
                .push_back(MarlinEvent::Warning(line.to_string()));
            self.note_console(line);
            return;
        }
        if let Some(rest) = line.strip_prefix("Cap:") {
            if let Some((k, v)) = rest.rsplit_once(':') {
                self.firmware.caps.insert(k.to_string(), v.trim() == "1");
            }
            self.note_console(line);
            return;
        }
        if line.starts_with("FIRMWARE_NAME:") {
            if let Some(n) = self.named_probe
                && self.in_flight.iter().any(|f| f.number == n && !f.consumed)
            {
                self.named_probe_answered = true;
            }
            self.firmware = parse_m115(line);
            self.note_console(line);
            return;
        }
        if is_temperature_report(line)
            && let Some(t) = parse_temperatures(line)
        {
            self.events.push_back(MarlinEvent::Temperatures(t));
            self.note_console(line);
            return;
        }
        self.note_console(line);
        if line.starts_with("echo:") {
            self.events.push_back(MarlinEvent::Echo(body.to_string()));
        }
    }

    fn note_console(&mut self, line: &str) {
        if self.console_in_flight() && self.console_lines.len() < 256 {
            self.console_lines.push(line.to_string());
        }
    }

    fn console_in_flight(&self) -> bool {
        self.in_flight.iter().any(|f| f.console)
    }

    /// Whether an `ok` straight after `Resend: n` is the resend's own.
    /// `same_instant`: it arrived with the `Resend:` line, before anything
    /// sent since could have been answered.
    fn is_resend_ok(&mut self, n: u32, same_instant: bool) -> bool {
        match self.ok_after_resend {
            Some(known) => known,
            None => {
                // Only lines before n can still be acknowledged at that
                // instant. With none in flight this ok cannot be a line's:
                // learn the dialect. Otherwise it is ambiguous; count it.
                let older_in_flight = self
                    .in_flight
                    .iter()
                    .any(|f| f.number.wrapping_sub(n) > u32::MAX / 2);
                if same_instant && !older_in_flight {
                    self.ok_after_resend = Some(true);
                    true
                } else {
                    false
                }
            }
        }
    }

    fn front_is_m115(&self) -> bool {
        self.in_flight
            .iter()
            .find(|f| !f.consumed)
            .is_some_and(|f| {
                self.history
                    .iter()
                    .rev()
                    .find(|s| s.number == f.number)
                    .is_some_and(|s| s.is_m115)
            })
    }

    fn on_ok(&mut self, line: &str) {
        let advanced = parse_advanced_ok(line);
        if advanced.is_some() {
            self.advanced_ok_seen = true;
        }
        let free_slots = advanced.and(free_slots(line));
        if let Some(t) = parse_temperatures(line) {
            self.events.push_back(MarlinEvent::Temperatures(t));
        }
        if !self.handshake_done && self.firmware.name.is_empty() && self.front_is_m115() {
            // M115's own ok follows its FIRMWARE_NAME line. An ok before it
            // is M110's, delayed by an ok a firmware still draining the
            // buffer of an earlier connection sent (it does not reset when
            // the port reopens). Counting it would shift every later ok
            // onto the wrong line.
            self.stats.unexpected_oks += 1;
            return;
        }
        let unknown = self.unknown_echo.take();
        if std::mem::take(&mut self.named_probe_answered)
            && let Some(n) = self.named_probe.take()
            && advanced.is_none()
        {
            // The `ok` after the named probe's report is its own: every
            // line before it was accepted.
            self.ack_through(n, line);
            return;
        }
        if advanced.is_none()
            && let Some(m105) = self.m105_answered(line)
        {
            // Marlin accepts lines only in sequence: every line sent before
            // that `M105` was accepted too (a copy it already had was
            // dropped or refused, with no `ok` of its own).
            self.ack_through(m105, line);
            return;
        }
        match advanced {
            // `ok N<n> P.. B..` names its line.
            Some(Some(n)) => {
                let before = self.in_flight.len();
                self.ack_through(n, line);
                if self.in_flight.len() < before {
                    self.note_free_slots(free_slots);
                }
            }
            // No `N`: the firmware ran something that came without a
            // number. Without an `Unknown command` echo it was G-code.
            Some(None) => {
                self.in_slots = 0;
                self.on_stray_ok(unknown.is_none());
            }
            None => {
                let front = self
                    .in_flight
                    .iter()
                    .find(|f| !f.consumed)
                    .and_then(|f| self.history.iter().rev().find(|s| s.number == f.number));
                let own_echo =
                    front.is_some_and(|s| unknown.as_deref() == Some(s.command.as_str()));
                if unknown.is_some() && !own_echo {
                    // Unknown text that is not the oldest line's command:
                    // a fragment, or a line that lost its `N`.
                    self.in_slots = 0;
                    self.on_stray_ok(false);
                    return;
                }
                match self.in_flight.iter().position(|f| !f.consumed) {
                    Some(i) => {
                        if let Some(f) = self.in_flight.remove(i) {
                            self.acknowledge(f, line);
                            self.note_free_slots(free_slots);
                        }
                    }
                    None => self.stats.unexpected_oks += 1,
                }
            }
        }
    }

    /// The line an `ok T:..` proves accepted: the oldest `M105` in flight
    /// (`M105` prints that `ok` itself, with no `ADVANCED_OK` number).
    /// Whichever `M105` ran, the oldest was accepted (Marlin accepts lines
    /// in sequence), and so was every line before it; a later one may not
    /// have been. After a recovery a job's own `M105` and the probe are
    /// both in flight: crediting the probe (the newest) would acknowledge
    /// the lines between them, which may never have run, when the answer
    /// was the job's; crediting the oldest leaves them in flight when it
    /// was the probe's, and the next recovery sends them again (numbered,
    /// so none runs twice). Not while lines sent before a resend request
    /// may still arrive: one of them could be an `M105` run without its
    /// number.
    fn m105_answered(&self, line: &str) -> Option<u32> {
        if !line.starts_with("ok T:") || !self.ghosts.is_empty() {
            return None;
        }
        let m105 = self.in_flight.iter().find(|p| {
            !p.consumed
                && !p.filler
                && self
                    .history
                    .iter()
                    .rev()
                    .find(|s| s.number == p.number)
                    .is_some_and(|s| s.command == PROBE)
        })?;
        Some(m105.number)
    }

    /// After an `ok` that acknowledged a line: the `B` it carried tells how
    /// many of the next lines sat in the firmware's command slots with it.
    fn note_free_slots(&mut self, free: Option<u32>) {
        let Some(b) = free else {
            self.in_slots = self.in_slots.saturating_sub(1);
            return;
        };
        let max = self.max_free_slots.map_or(b, |m| m.max(b));
        self.max_free_slots = Some(max);
        // Slots taken = BUFSIZE - b, the acknowledged line's own included;
        // BUFSIZE is at least max + 1.
        self.in_slots = usize::try_from(max - b).unwrap_or(0);
    }

    /// `ok N<n>`: line n was accepted, and so was every line sent before
    /// it (Marlin accepts numbers only in sequence).
    fn ack_through(&mut self, n: u32, line: &str) {
        let Some(pos) = self.in_flight.iter().position(|f| f.number == n) else {
            if self.retransmit.contains(&n) {
                self.accept_awaiting_resend(n, line);
            } else {
                // A line no longer in flight (sent outside flow control,
                // like an emergency command).
                self.stats.unexpected_oks += 1;
            }
            return;
        };
        for _ in 0..=pos {
            if let Some(f) = self.in_flight.pop_front() {
                self.acknowledge(f, line);
            }
        }
    }

    /// `ok N<n>` for a line requested again meanwhile (its copy already on
    /// the wire when a later request came): the firmware accepted it, and
    /// every line before it. They leave the retransmission queue, and the
    /// request they answer is settled. Dropping that `ok` as unexpected
    /// lost the line's acknowledgement for good: the copy sent again was
    /// a copy of the firmware's last line, dropped without a word, and the
    /// job ended short of done, waiting forever.
    fn accept_awaiting_resend(&mut self, n: u32, line: &str) {
        // Copies of earlier lines still in flight were accepted too.
        let (earlier, kept): (VecDeque<InFlight>, VecDeque<InFlight>) = self
            .in_flight
            .drain(..)
            .partition(|f| n.wrapping_sub(f.number).wrapping_sub(1) < u32::MAX / 2);
        self.in_flight = kept;
        for f in earlier {
            self.acknowledge(f, line);
        }
        while let Some(r) = self.retransmit.pop_front() {
            if self.consecutive.0 == r {
                self.consecutive = (0, 0);
            }
            if self.pending_resend.is_some_and(|p| p.number == r) {
                self.pending_resend = None;
                self.ghosts.clear();
                self.ghost_bytes = 0;
            }
            self.report_ack(r, line);
            if r == n {
                break;
            }
        }
    }

    fn acknowledge(&mut self, f: InFlight, line: &str) {
        self.in_flight_bytes = self.window_bytes();
        if !f.consumed
            && !f.read
            && let Some(now) = self.clock
        {
            let rtt = now.saturating_duration_since(f.sent_at);
            self.min_rtt = Some(self.min_rtt.map_or(rtt, |m| m.min(rtt)));
        }
        if self.consecutive.0 == f.number {
            self.consecutive = (0, 0);
        }
        if f.consumed {
            // Taken for a line read without its number when a stray `ok`
            // came, yet acknowledged by number (only `ack_through` passes
            // such a line here): the firmware accepted it. If that stray
            // `ok` was its own it counted the line already (below, `acked`
            // holds); if it was another's (a ghost whose tail the host did
            // not know of), this is the line's only `ok`, and dropping it
            // left a job one line short of done, waiting forever.
            self.report_ack(f.number, line);
            return;
        }
        self.clean_run = self.clean_run.saturating_add(1);
        if f.filler || self.pending_resend.is_some_and(|p| p.number == f.number) {
            // The firmware read the retransmission (or the filler that
            // stands for it), so it has read every line that was on the
            // wire before it.
            self.pending_resend = None;
            self.ghosts.clear();
            self.ghost_bytes = 0;
        }
        if f.filler {
            return;
        }
        self.report_ack(f.number, line);
    }

    /// Reports line `number` acknowledged, once.
    fn report_ack(&mut self, number: u32, line: &str) {
        let Some(sent) = self.history.iter_mut().rev().find(|s| s.number == number) else {
            return;
        };
        if sent.acked {
            return;
        }
        sent.acked = true;
        let origin = sent.origin;
        let is_m115 = sent.is_m115;
        self.events.push_back(MarlinEvent::Acknowledged { origin });
        if let Origin::Console { .. } = origin {
            let mut lines = std::mem::take(&mut self.console_lines);
            lines.push(line.to_string());
            self.events
                .push_back(MarlinEvent::Response { origin, lines });
        }
        if is_m115 {
            self.handshake_done = true;
            self.events
                .push_back(MarlinEvent::Firmware(self.firmware.clone()));
        }
    }

    /// An `ok` for something the firmware ran without a line number.
    /// `executed`: it was G-code, not an unknown command.
    fn on_stray_ok(&mut self, executed: bool) {
        self.stats.stray_oks += 1;
        self.clean_run = 0;
        if let Some(len) = self.ghosts.pop_front() {
            // The tail of a line that was on the wire when the firmware
            // flushed its buffer.
            self.ghost_bytes -= len;
            if executed {
                self.stats.fragments_executed += 1;
                self.events.push_back(MarlinEvent::Warning(
                    "the firmware ran the tail of a line that its receive-buffer flush cut \
                     (noisy link): one command may have run out of order"
                        .to_string(),
                ));
            }
            return;
        }
        // Otherwise the oldest line in flight arrived without its number.
        // Marlin refuses the next numbered line and asks for it; until then
        // its bytes no longer take room in the firmware's buffer.
        let Some(f) = self.in_flight.iter_mut().find(|f| !f.consumed) else {
            self.stats.unexpected_oks += 1;
            return;
        };
        f.consumed = true;
        let number = f.number;
        let sync = f.sync;
        self.in_flight_bytes = self.window_bytes();
        if executed {
            self.ran_unnumbered(number);
            if sync {
                // An `M110` that ran set the firmware's line number just as
                // a numbered one would: it is done, there is nothing to fill.
                self.in_flight
                    .retain(|f| !(f.consumed && f.number == number));
                return;
            }
        }
        if self.in_flight.iter().all(|f| f.consumed) && self.count_resend(number) {
            // Nothing else is on the wire (always so one line at a time):
            // put this line right now rather than send the next one, which
            // could itself run unnumbered, ahead of it, before the firmware
            // asks. It goes again, or a filler takes its number if it ran.
            self.schedule_resend_from(number);
        }
    }

    /// Line `number` ran without its number check (its `N` became `n`): it
    /// is done, and must not run again when it is requested.
    fn ran_unnumbered(&mut self, number: u32) {
        self.stats.unnumbered_runs += 1;
        let Some(sent) = self.history.iter_mut().rev().find(|s| s.number == number) else {
            return;
        };
        sent.ran_unnumbered = true;
        if !sent.acked {
            sent.acked = true;
            let origin = sent.origin;
            self.events.push_back(MarlinEvent::Acknowledged { origin });
            if let Origin::Console { .. } = origin {
                let lines = std::mem::take(&mut self.console_lines);
                self.events
                    .push_back(MarlinEvent::Response { origin, lines });
            }
        }
    }

    /// Acts on `Resend: n`; false when it was an echo or ignored.
    fn on_resend(&mut self, n: u32) -> bool {
        if self.halted {
            return false;
        }
        let line_number_error = std::mem::take(&mut self.last_error_was_line_number);
        let not_yet_resent = self.retransmit.front() == Some(&n);
        if let Some(p) = self.pending_resend.as_mut()
            && p.number == n
            && ((p.duplicates_allowed > 0 && line_number_error) || not_yet_resent)
        {
            // An echo of a line that was on the wire before the
            // retransmission; the retransmission is already under way.
            // (A retransmission that fails its checksum is reported as a
            // checksum error and is not mistaken for an echo. Before the
            // retransmission has gone out, though, a checksum error for
            // line n is a line on the wire whose number was damaged into
            // n: taking it for a new request dropped the count of lines
            // still arriving, so the retransmission went out among them.)
            p.duplicates_allowed = p.duplicates_allowed.saturating_sub(1);
            self.stats.duplicate_resend_requests += 1;
            if let Some(len) = self.ghosts.pop_front() {
                self.ghost_bytes -= len;
            }
            return false;
        }
        if !self.history.iter().any(|s| s.number == n) {
            if n == self.next_number {
                // Asks for the line after the last one sent: nothing is lost.
                return false;
            }
            self.fail(format!(
                "the firmware asked for line N{n} again, but it is no longer in the resend history"
            ));
            return false;
        }
        if !self.count_resend(n) {
            return false;
        }
        self.stats.resend_requests += 1;
        self.clean_run = 0;
        self.in_slots = 0;
        if line_number_error {
            self.accept_refused_copies(n);
        }
        for f in &mut self.in_flight {
            if n.wrapping_sub(f.number).wrapping_sub(1) < u32::MAX / 2 {
                f.read = true;
            }
        }
        let mut later: VecDeque<usize> = self
            .in_flight
            .iter()
            .filter(|f| !f.consumed && f.number.wrapping_sub(n) < u32::MAX / 2 && f.number != n)
            .map(|f| f.len)
            .collect();
        if line_number_error && self.in_flight.iter().any(|f| f.number == n && f.consumed) {
            // Line n was read without its number, so the line after it drew
            // this error: it has been read, it is no longer on the wire.
            later.pop_front();
        }
        // Those lines still reach the firmware and take room in its buffer
        // until it reads and refuses them.
        self.ghost_bytes = later.iter().sum();
        self.ghosts = later;
        let later = self.ghosts.len();
        self.pending_resend = Some(PendingResend {
            number: n,
            duplicates_allowed: later,
        });
        self.schedule_resend_from(n);
        self.check_ratio();
        true
    }

    /// The firmware refused a line number and asks for `n`: it has every
    /// line before `n`. A recovery's copies of those lines were refused
    /// as copies, and the `ok`s of their originals were lost (that is what
    /// made the host recover: a silent or idle firmware, and a firmware
    /// reads no line while a command blocks, so none is still to come).
    /// They are acknowledged now; waiting for `ok`s that will never come
    /// would make every recovery end in another.
    fn accept_refused_copies(&mut self, n: u32) {
        let Some((first, last)) = self.recovered else {
            return;
        };
        let within = |x: u32| {
            x.wrapping_sub(first) <= last.wrapping_sub(first)
                && n.wrapping_sub(x).wrapping_sub(1) < u32::MAX / 2
        };
        let mut kept = VecDeque::with_capacity(self.in_flight.len());
        let mut accepted = Vec::new();
        for f in self.in_flight.drain(..) {
            if within(f.number) && !f.consumed {
                accepted.push(f);
            } else {
                kept.push_back(f);
            }
        }
        self.in_flight = kept;
        for f in accepted {
            self.acknowledge(f, "ok");
        }
        if n.wrapping_sub(last).wrapping_sub(1) < u32::MAX / 2 {
            self.recovered = None;
        }
    }

    /// Counts one more attempt at line `n`; false (and the host halts)
    /// when it failed too often in a row.
    fn count_resend(&mut self, n: u32) -> bool {
        if self.consecutive.0 == n {
            self.consecutive.1 += 1;
        } else {
            self.consecutive = (n, 1);
        }
        if self.consecutive.1 > self.config.max_resends_per_line {
            self.halted = true;
            self.events
                .push_back(MarlinEvent::ResendGaveUp { line_number: n });
            return false;
        }
        true
    }

    fn check_ratio(&mut self) {
        if self.ratio_warned || self.stats.sent_lines < 100 {
            return;
        }
        let ratio = self.stats.resends as f64 / self.stats.sent_lines as f64;
        if ratio > self.config.resend_ratio_warning {
            self.ratio_warned = true;
            self.events
                .push_back(MarlinEvent::ResendRatioHigh { ratio });
        }
    }

    fn on_restart(&mut self) {
        if !self.handshake_done {
            // A boot banner printed before we connected (boards reset when
            // the port opens): the handshake is already under way.
            return;
        }
        self.handshake_done = false;
        self.firmware = FirmwareInfo::default();
        self.ghosts.clear();
        self.ghost_bytes = 0;
        self.in_flight.clear();
        self.in_flight_bytes = 0;
        self.retransmit.clear();
        self.unknown_echo = None;
        self.clean_run = 0;
        self.in_slots = 0;
        self.pending_resend = None;
        self.recovered = None;
        self.history.clear();
        self.halted = false;
        self.probe_sent_at = None;
        self.probe_queued = false;
        self.named_probe = None;
        self.named_probe_answered = false;
        self.next_number = 0;
        self.queue.retain(|(o, _)| *o != Origin::Internal);
        self.handshake();
        self.events.push_back(MarlinEvent::FirmwareRestarted);
    }

    fn fail(&mut self, msg: String) {
        self.halted = true;
        self.events.push_back(MarlinEvent::Fatal(msg));
    }
}

fn parse_m115(line: &str) -> FirmwareInfo {
    // Keys are upper-case words followed by ':'; values may contain spaces.
    let mut fields = BTreeMap::new();
    let mut key: Option<&str> = None;
    let mut start = 0;
    let bytes = line.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if i == 0 || bytes[i - 1] == b' ' {
            let w_end = line[i..].find(':').map(|p| i + p);
            if let Some(e) = w_end
                && e > i
                && line[i..e]
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b == b'_')
            {
                if let Some(k) = key {
                    fields.insert(k.to_string(), line[start..i].trim().to_string());
                }
                key = Some(&line[i..e]);
                start = e + 1;
                i = e + 1;
                continue;
            }
        }
        i += 1;
    }
    if let Some(k) = key {
        fields.insert(k.to_string(), line[start..].trim().to_string());
    }
    FirmwareInfo {
        name: fields.remove("FIRMWARE_NAME").unwrap_or_default(),
        fields,
        caps: BTreeMap::new(),
    }
}

/// A temperature report that is not an `ok` (`M155` autoreport, or the
/// reports `M109`/`M190` print while they wait).
fn is_temperature_report(line: &str) -> bool {
    line.starts_with("T:") || line.starts_with("T0:") || line.starts_with("B:")
}

/// A line that answers something sent (see "Silence, chatter and `wait`"
/// in the module docs): the no-`ok` timeout restarts from it. `wait`,
/// temperature autoreports and other `echo:` lines are not.
fn is_progress(line: &str) -> bool {
    let body = line.strip_prefix("echo:").unwrap_or(line);
    line == "ok"
        || line.starts_with("ok ")
        || parse_resend(line).is_some()
        || line.starts_with("Error:")
        || line.starts_with("!!")
        || body.starts_with("busy:")
        || (is_temperature_report(line) && !is_autoreport(line))
        || line == "start"
        || line.starts_with("//action:")
}

/// An `M155` autoreport: a temperature report that is not a heating
/// wait's (those end in `W:<seconds>` or `W:?`).
fn is_autoreport(line: &str) -> bool {
    is_temperature_report(line) && !line.contains(" W:")
}

/// Parses an `ADVANCED_OK` reply: `Some(Some(n))` for `ok N<n> P<p> B<b>`,
/// `Some(None)` for `ok P<p> B<b>` (a command that came without a line
/// number), `None` for a plain `ok` (or `ok T:..`, which `M105` prints
/// itself).
fn parse_advanced_ok(line: &str) -> Option<Option<u32>> {
    let mut n = None;
    let (mut p, mut b) = (false, false);
    for tok in line.split_whitespace().skip(1) {
        let digits = |t: &str| !t.is_empty() && t.bytes().all(|c| c.is_ascii_digit());
        if let Some(v) = tok.strip_prefix('N')
            && digits(v)
        {
            n = v.parse().ok();
        } else if tok.strip_prefix('P').is_some_and(digits) {
            p = true;
        } else if tok.strip_prefix('B').is_some_and(digits) {
            b = true;
        } else {
            return None;
        }
    }
    (p && b).then_some(n)
}

/// The `B<free command slots>` of an `ADVANCED_OK` reply.
fn free_slots(line: &str) -> Option<u32> {
    line.split_whitespace()
        .skip(1)
        .find_map(|t| t.strip_prefix('B').and_then(|v| v.parse().ok()))
}

/// `M110 N<x>` sets the next expected line to x + 1.
fn m110_target(cmd: &str) -> Option<u32> {
    let rest = cmd.strip_prefix("M110")?;
    let n = rest.trim().strip_prefix('N')?;
    n.trim().parse().ok()
}

#[cfg(test)]
mod tests;
