//! The driver task: connect with backoff, run one session per open port,
//! stream jobs, and turn protocol signals into status and events.

use std::time::Duration;

use microfactory_protocol::eta::ProducingTime;
use microfactory_protocol::framing::{DEFAULT_MAX_LINE, LineSplitter, SplitItem};
use microfactory_protocol::host::Origin;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::time::{Instant, sleep_until};
use tokio_serial::SerialPortBuilderExt;
use tracing::{Instrument, debug, info, info_span, trace, warn};

use super::job::JobSource;
use super::{
    Connection, DriverConfig, DriverError, DriverEvent, EndedJob, Firmware, Heater, JobOutcome,
    JobSpec, MachineStatus, Progress, Recovery, Request, StreamStats,
};

/// Console ids at and above this are the driver's own.
const FINISH_ID: u64 = u64::MAX;
/// Job lines kept queued in the state machine ahead of the wire.
const LOOKAHEAD: usize = 16;
/// Least time between two progress events of a job.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);
/// How long a console command may wait for its answer.
const CONSOLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Silence after which the last heater or status readings are marked
/// stale. Marlin autoreports every 2 s (`M155 S2`) and GRBL is polled at
/// least every second, so three missed reports mean the machine is not
/// reporting (halted, or the link is gone) rather than merely late.
pub(crate) const STALE_AFTER: Duration = Duration::from_secs(6);

/// What the session needs to hear from a host state machine, in one
/// vocabulary for both firmwares.
#[derive(Debug)]
pub(crate) enum Signal {
    /// The firmware acknowledged a command.
    Ack(Origin),
    /// The firmware refused a command (GRBL `error:n`).
    Rejected { origin: Origin, message: String },
    /// The firmware halted (kill, alarm); the job cannot go on.
    Fatal(String),
    /// The firmware rebooted.
    Reset(String),
    /// No answer within the protocol's timeouts.
    LinkDead,
    /// Lines answering a console command.
    Response { id: u64, lines: Vec<String> },
    /// The handshake finished.
    Identified {
        firmware: String,
        capabilities: Vec<String>,
    },
    /// Heater readings.
    Heaters(Vec<Heater>),
    /// GRBL machine state and work position.
    MachineState {
        state: String,
        position: Option<[f64; 3]>,
    },
    /// GRBL: everything acknowledged and the planner is empty.
    Drained,
    /// GRBL: a feed hold has come to a stop.
    HoldComplete,
    /// A firmware message for the operator.
    Message(String),
}

/// A host state machine as the session drives it.
pub(crate) trait Host: Send {
    /// Queue the handshake commands.
    fn handshake(&mut self);
    /// Queue one clean command.
    fn push(&mut self, origin: Origin, command: &str) -> Result<(), String>;
    /// Commands queued but not yet sent.
    fn queued(&self) -> usize;
    /// Feed one received line.
    fn handle_line(&mut self, now: std::time::Instant, line: &str);
    /// A deadline from `poll_timeout` passed.
    fn handle_timeout(&mut self, now: std::time::Instant);
    /// The next deadline.
    fn poll_timeout(&self) -> Option<std::time::Instant>;
    /// Bytes to write now.
    fn poll_transmit(&mut self, now: std::time::Instant) -> Option<Vec<u8>>;
    /// The next signal.
    fn poll_signal(&mut self) -> Option<Signal>;
    /// Drop every queued, unsent command (cancel).
    fn clear_queue(&mut self);
    /// Stop motion now where the firmware can (GRBL feed hold).
    fn hold(&mut self) -> bool;
    /// Resume after `hold`.
    fn release(&mut self);
    /// Emergency stop ahead of the queue.
    fn emergency(&mut self);
    /// GRBL soft reset (cancel); Marlin has none.
    fn soft_reset(&mut self);
    /// Lines re-sent so far.
    fn resends(&self) -> u64;
    /// Bytes written so far.
    fn wire_bytes(&self) -> u64;
}

fn make_host(config: &DriverConfig) -> Box<dyn Host> {
    match config.firmware {
        Firmware::Marlin => Box::new(super::marlin::MarlinAdapter::new(config)),
        Firmware::Grbl => Box::new(super::grbl::GrblAdapter::new(config)),
    }
}

struct Running {
    spec: JobSpec,
    source: JobSource,
    total: u64,
    done: u64,
    last_acked: u64,
    eof: bool,
    finishing: bool,
    paused: bool,
    cancelling: bool,
    started: Instant,
    /// Time spent producing (paused spans left out), in seconds since
    /// `started`: the pace the ETA blends in.
    producing: ProducingTime,
    /// When the last job command was acknowledged: the end of the link's
    /// part of the job, before the machine finishes its motion.
    last_ack_at: Option<Instant>,
    last_progress: Option<Instant>,
    payload_bytes: u64,
    resends_at_start: u64,
    wire_at_start: u64,
}

impl Running {
    /// Stops or restarts the job's feed and its producing clock together.
    fn set_paused(&mut self, paused: bool) {
        self.paused = paused;
        let now = self.started.elapsed().as_secs_f64();
        if paused {
            self.producing.pause(now);
        } else {
            self.producing.resume(now);
        }
    }
}

struct Console {
    id: u64,
    reply: oneshot::Sender<Result<Vec<String>, DriverError>>,
    deadline: Instant,
}

enum SessionEnd {
    Shutdown,
    Lost(String),
    /// The operator asked for a fresh connection: reopen at once.
    Reconnect,
}

/// What a request asks of the session loop beyond an answer.
enum Exit {
    /// Close the port and open it again; write `M999` first when asked.
    Reconnect { m999: bool },
}

/// The driver task: reconnects until shut down.
pub(crate) async fn run(
    config: DriverConfig,
    mut requests: mpsc::Receiver<Request>,
    status: watch::Sender<MachineStatus>,
    events: broadcast::Sender<DriverEvent>,
    serial: super::SerialLog,
) {
    let span = info_span!("machine", machine_id = %config.id);
    async move {
        let mut backoff = config.reconnect_min;
        loop {
            let port = tokio_serial::new(config.port.to_string_lossy(), config.baud)
                .timeout(Duration::from_millis(100))
                .open_native_async();
            match port {
                Ok(port) => {
                    info!(port = %config.port.display(), "port open");
                    status.send_modify(|s| {
                        s.connection = Connection::Connecting;
                        s.last_error = None;
                    });
                    backoff = config.reconnect_min;
                    let mut session = Session::new(&config, &status, &events, &serial);
                    match session.run(port, &mut requests).await {
                        SessionEnd::Shutdown => {
                            status.send_modify(|s| {
                                s.connection = Connection::Offline;
                                s.stale = true;
                            });
                            return;
                        }
                        SessionEnd::Reconnect => {
                            info!("reconnecting at the operator's request");
                            let _ = events.send(DriverEvent::Disconnected {
                                reason: "reconnect requested by the operator".into(),
                            });
                            status.send_modify(|s| {
                                s.connection = Connection::Offline;
                                s.job = None;
                                s.stale = true;
                                s.last_error = None;
                            });
                            continue;
                        }
                        SessionEnd::Lost(reason) => {
                            warn!(%reason, "connection lost");
                            let _ = events.send(DriverEvent::Disconnected {
                                reason: reason.clone(),
                            });
                            status.send_modify(|s| {
                                s.connection = Connection::Offline;
                                s.job = None;
                                s.stale = true;
                                s.last_error = Some(reason);
                            });
                            backoff = config.reconnect_min;
                        }
                    }
                }
                Err(e) => {
                    debug!(error = %e, "cannot open port");
                    status.send_modify(|s| {
                        s.connection = Connection::Offline;
                        s.last_error = Some(format!("cannot open {}: {e}", config.port.display()));
                    });
                }
            }
            // Wait out the backoff, answering requests as offline; a
            // reconnect request cuts the wait short.
            let until = Instant::now() + backoff;
            backoff = (backoff * 2).min(config.reconnect_max);
            loop {
                tokio::select! {
                    _ = sleep_until(until) => break,
                    req = requests.recv() => match req {
                        None | Some(Request::Shutdown) => return,
                        Some(Request::Recover(Recovery::Reconnect, tx)) => {
                            let _ = tx.send(Ok(Vec::new()));
                            backoff = config.reconnect_min;
                            break;
                        }
                        Some(r) => refuse(r, DriverError::Offline),
                    }
                }
            }
        }
    }
    .instrument(span)
    .await
}

fn refuse(r: Request, e: DriverError) {
    match r {
        Request::Start(_, tx)
        | Request::Pause(tx)
        | Request::Resume(tx)
        | Request::Cancel(tx)
        | Request::EmergencyStop(tx) => {
            let _ = tx.send(Err(e));
        }
        Request::Console(_, tx) | Request::Recover(_, tx) => {
            let _ = tx.send(Err(e));
        }
        Request::Shutdown => {}
    }
}

struct Session<'a> {
    config: &'a DriverConfig,
    status: &'a watch::Sender<MachineStatus>,
    events: &'a broadcast::Sender<DriverEvent>,
    serial: &'a super::SerialLog,
    host: Box<dyn Host>,
    job: Option<Running>,
    console: Option<Console>,
    next_console_id: u64,
    identified: bool,
    handshake_deadline: Instant,
    /// Marlin: the firmware halted (kill, stopped) and the host sends
    /// nothing more; console commands are refused at once with this.
    halted: Option<String>,
    /// When the firmware last reported heaters or its state.
    last_report: Instant,
}

impl<'a> Session<'a> {
    fn new(
        config: &'a DriverConfig,
        status: &'a watch::Sender<MachineStatus>,
        events: &'a broadcast::Sender<DriverEvent>,
        serial: &'a super::SerialLog,
    ) -> Self {
        Self {
            config,
            status,
            events,
            serial,
            host: make_host(config),
            job: None,
            console: None,
            next_console_id: 1,
            identified: false,
            handshake_deadline: Instant::now() + config.handshake_timeout,
            halted: None,
            last_report: Instant::now(),
        }
    }

    async fn run(
        &mut self,
        port: tokio_serial::SerialStream,
        requests: &mut mpsc::Receiver<Request>,
    ) -> SessionEnd {
        let (mut rd, mut wr) = tokio::io::split(port);
        let mut splitter = LineSplitter::new(DEFAULT_MAX_LINE * 4);
        let mut buf = vec![0u8; 4096];
        let mut out = Vec::with_capacity(1024);
        self.host.handshake();
        loop {
            if let Err(reason) = self.feed_job().await {
                self.end_job(reason);
            }
            let now = std::time::Instant::now();
            // Everything the window allows now goes out in one write: one
            // system call per burst rather than per line.
            out.clear();
            while let Some(bytes) = self.host.poll_transmit(now) {
                let text = String::from_utf8_lossy(&bytes);
                trace!(tx = %text.trim_end(), "write");
                // GRBL status polls (`?`) and their `<...>` reports are
                // shown on the machine card; the log keeps the rest.
                for l in text.lines().filter(|l| *l != "?") {
                    self.serial.push(true, l);
                }
                out.extend_from_slice(&bytes);
            }
            if !out.is_empty()
                && let Err(e) = wr.write_all(&out).await
            {
                return self.lost(format!("write failed: {e}"));
            }
            match self.drain_signals() {
                Err(end) => return end,
                // What the signals asked for (the `M155` after
                // identification, the `M400` after the last line, a reset
                // after a hold) goes out now, not at the next wake-up,
                // which on an idle machine may never come.
                Ok(true) => continue,
                Ok(false) => {}
            }
            if self.job.is_some() && self.host.queued() < LOOKAHEAD && self.wants_more() {
                continue;
            }
            let deadline = self.deadline();
            tokio::select! {
                r = rd.read(&mut buf) => {
                    let n = match r {
                        Ok(0) => return self.lost("the port closed (end of file)".into()),
                        Ok(n) => n,
                        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => continue,
                        Err(e) => return self.lost(format!("read failed: {e}")),
                    };
                    let now = std::time::Instant::now();
                    let host = &mut self.host;
                    let serial = self.serial;
                    let _ = splitter.feed(&buf[..n], |item| {
                        match item {
                            SplitItem::Line { text, .. } => {
                                trace!(rx = %text, "read");
                                if !text.starts_with('<') {
                                    serial.push(false, text);
                                }
                                host.handle_line(now, text);
                            }
                            SplitItem::Bad { error, .. } => {
                                // Not UTF-8 or too long: the host never sees
                                // it, so the operator's serial log says so.
                                debug!(%error, "unreadable line from firmware");
                                serial.push(false, &format!("(unreadable line: {error})"));
                            }
                        }
                        Ok::<(), ()>(())
                    });
                }
                _ = sleep_until(deadline) => {
                    let now = Instant::now();
                    if !self.identified && now >= self.handshake_deadline {
                        return self.lost("no answer to the handshake".into());
                    }
                    if let Some(c) = &self.console
                        && now >= c.deadline
                        && let Some(c) = self.console.take()
                    {
                        let _ = c.reply.send(Err(DriverError::Timeout(CONSOLE_TIMEOUT)));
                    }
                    if now >= self.last_report + STALE_AFTER {
                        self.status.send_if_modified(|s| !std::mem::replace(&mut s.stale, true));
                    }
                    self.host.handle_timeout(now.into_std());
                }
                req = requests.recv() => match req {
                    None | Some(Request::Shutdown) => return self.shutdown(),
                    Some(r) => {
                        if let Some(Exit::Reconnect { m999 }) = self.request(r).await {
                            if m999 {
                                // Past the host state machine, which sends
                                // nothing once the firmware has halted.
                                self.serial.push(true, "M999");
                                let _ = wr.write_all(b"M999\n").await;
                                let _ = wr.flush().await;
                            }
                            return self.reconnect();
                        }
                    }
                }
            }
        }
    }

    fn wants_more(&self) -> bool {
        self.job
            .as_ref()
            .is_some_and(|j| !j.eof && !j.paused && !j.cancelling && !j.finishing)
    }

    fn deadline(&self) -> Instant {
        let mut d = Instant::now() + Duration::from_secs(3600);
        if let Some(t) = self.host.poll_timeout() {
            d = d.min(Instant::from_std(t));
        }
        if !self.identified {
            d = d.min(self.handshake_deadline);
        }
        if let Some(c) = &self.console {
            d = d.min(c.deadline);
        }
        if !self.status.borrow().stale {
            d = d.min(self.last_report + STALE_AFTER);
        }
        if let Some(j) = &self.job
            && let Some(last) = j.last_progress
        {
            d = d.min(last + PROGRESS_EVERY);
        }
        d
    }

    /// Tops up the state machine's queue from the job file.
    async fn feed_job(&mut self) -> Result<(), JobOutcome> {
        while self.wants_more() && self.host.queued() < LOOKAHEAD {
            let Some(job) = self.job.as_mut() else {
                return Ok(());
            };
            match job.source.next().await {
                Ok(Some(line)) if line.pause.is_some() => {
                    // A tool change: stop feeding until the operator resumes.
                    job.set_paused(true);
                    let reason = line.pause.unwrap_or_default();
                    info!(job_id = %job.spec.id, line = line.line, %reason, "paused for the operator");
                    let _ = self.events.send(DriverEvent::PausedForOperator {
                        job_id: job.spec.id.clone(),
                        line: line.line,
                        reason,
                        tool: line.tool,
                    });
                }
                Ok(Some(line)) => {
                    job.payload_bytes += line.text.len() as u64 + 1;
                    if let Err(reason) = self.host.push(Origin::Job { line: line.line }, &line.text)
                    {
                        return Err(JobOutcome::Failed {
                            reason,
                            line: Some(line.line),
                        });
                    }
                }
                Ok(None) => {
                    job.eof = true;
                }
                Err(e) => {
                    let line = match &e {
                        super::JobFileError::BadLine { line, .. } => Some(*line),
                        super::JobFileError::Io { .. } => None,
                    };
                    return Err(JobOutcome::Failed {
                        reason: e.to_string(),
                        line,
                    });
                }
            }
        }
        self.maybe_finish();
        Ok(())
    }

    /// Once every line is acknowledged, make sure the machine has stopped
    /// moving before calling the job complete.
    fn maybe_finish(&mut self) {
        let Some(job) = self.job.as_mut() else { return };
        trace!(
            done = job.done,
            total = job.total,
            eof = job.eof,
            queued = self.host.queued(),
            "finish?"
        );
        if job.eof && !job.finishing && job.done >= job.total && self.host.queued() == 0 {
            job.finishing = true;
            if self.config.firmware == Firmware::Marlin {
                // M400's ok arrives only after the planner is empty.
                let _ = self.host.push(Origin::Console { id: FINISH_ID }, "M400");
            }
        }
    }

    /// Acts on what the firmware said; true when there was anything.
    fn drain_signals(&mut self) -> Result<bool, SessionEnd> {
        let mut any = false;
        while let Some(sig) = self.host.poll_signal() {
            any = true;
            match sig {
                Signal::Ack(origin) => self.ack(origin),
                Signal::Response { id, lines } => {
                    if id == FINISH_ID {
                        self.complete_if_finishing();
                    } else if let Some(c) = self.console.take_if(|c| c.id == id) {
                        let _ = c.reply.send(Ok(lines));
                    }
                }
                Signal::Rejected { origin, message } => match origin {
                    Origin::Job { line } => {
                        self.end_job(JobOutcome::Failed {
                            reason: message,
                            line: Some(line),
                        });
                    }
                    Origin::Console { id } => {
                        if let Some(c) = self.console.take_if(|c| c.id == id) {
                            let _ = c.reply.send(Err(DriverError::Firmware(message)));
                        }
                    }
                    Origin::Internal => self.message(message),
                },
                Signal::Fatal(reason) => {
                    if self.config.firmware == Firmware::Marlin {
                        self.halted = Some(reason.clone());
                        if let Some(c) = self.console.take() {
                            let _ = c.reply.send(Err(DriverError::Halted(reason.clone())));
                        }
                    }
                    self.status.send_modify(|s| {
                        s.connection = Connection::Faulted;
                        s.last_error = Some(reason.clone());
                    });
                    let line = self.job.as_ref().map(|j| j.last_acked);
                    self.end_job(JobOutcome::Failed { reason, line });
                }
                Signal::Reset(reason) => {
                    if self.identified {
                        let line = self.job.as_ref().map(|j| j.last_acked);
                        self.end_job(JobOutcome::Failed {
                            reason: format!("the firmware restarted: {reason}"),
                            line,
                        });
                    }
                }
                Signal::LinkDead => return Err(self.lost("no answer from the firmware".into())),
                Signal::Identified {
                    firmware,
                    capabilities,
                } => {
                    self.identified = true;
                    // A firmware that identifies itself again has rebooted.
                    self.halted = None;
                    info!(%firmware, "machine identified");
                    let grbl = self.config.firmware == Firmware::Grbl;
                    self.status.send_modify(|s| {
                        // GRBL keeps an alarm through a soft reset: after
                        // one, its status reports (not the banner) say
                        // when it is unlocked.
                        if !(grbl && s.connection == Connection::Faulted) {
                            s.connection = Connection::Online;
                        }
                        s.firmware = Some(firmware.clone());
                        s.capabilities = capabilities;
                    });
                    let _ = self.events.send(DriverEvent::Connected { firmware });
                }
                // Reports repeat every second or so while nothing changes;
                // watchers (and the daemon's event stream) hear only changes.
                Signal::Heaters(h) => {
                    self.last_report = Instant::now();
                    self.status.send_if_modified(|s| {
                        let changed = s.heaters != h || s.stale;
                        s.heaters = h;
                        s.stale = false;
                        changed
                    });
                }
                Signal::MachineState { state, position } => {
                    self.last_report = Instant::now();
                    let identified = self.identified;
                    self.status.send_if_modified(|s| {
                        let position = position.or(s.position);
                        let mut changed = s.state.as_deref() != Some(state.as_str())
                            || s.position != position
                            || s.stale;
                        // The connection follows what GRBL reports: an
                        // alarm (even one raised before we connected, or
                        // missed) is a fault, and a machine that reports
                        // anything else (`Idle` after `$X` or homing) is
                        // no longer faulted.
                        let alarm = state.starts_with("Alarm");
                        if identified {
                            let want = match s.connection {
                                Connection::Online if alarm => Some(Connection::Faulted),
                                Connection::Faulted if !alarm => Some(Connection::Online),
                                _ => None,
                            };
                            if let Some(c) = want {
                                s.connection = c;
                                if c == Connection::Online {
                                    s.last_error = None;
                                } else if s.last_error.is_none() {
                                    s.last_error = Some("GRBL is in alarm".into());
                                }
                                changed = true;
                            }
                        }
                        s.state = Some(state);
                        s.position = position;
                        s.stale = false;
                        changed
                    });
                }
                Signal::Drained => self.complete_if_finishing(),
                Signal::HoldComplete => {
                    if self.job.as_ref().is_some_and(|j| j.cancelling) {
                        // Stopped without losing position: a reset now
                        // empties GRBL's buffers and turns the spindle off.
                        self.host.soft_reset();
                        let last = self.job.as_ref().map_or(0, |j| j.last_acked);
                        self.end_job(JobOutcome::Cancelled {
                            last_acked_line: last,
                        });
                    }
                }
                Signal::Message(m) => self.message(m),
            }
        }
        self.emit_progress(false);
        Ok(any)
    }

    fn message(&self, text: String) {
        let _ = self.events.send(DriverEvent::Message { text });
    }

    fn ack(&mut self, origin: Origin) {
        match origin {
            Origin::Job { line } => {
                trace!(line, "acknowledged");
                if let Some(job) = self.job.as_mut() {
                    job.done += 1;
                    job.last_acked = line;
                    job.last_ack_at = Some(Instant::now());
                }
                self.maybe_finish();
            }
            Origin::Console { id } if id == FINISH_ID => self.complete_if_finishing(),
            Origin::Console { .. } | Origin::Internal => {}
        }
    }

    fn complete_if_finishing(&mut self) {
        if self
            .job
            .as_ref()
            .is_some_and(|j| j.finishing && !j.cancelling)
        {
            self.end_job(JobOutcome::Completed);
        }
    }

    fn progress(&self) -> Option<Progress> {
        let j = self.job.as_ref()?;
        let elapsed = j.started.elapsed().as_secs_f64();
        let percent = if j.total == 0 {
            100.0
        } else {
            (j.done as f64 * 100.0 / j.total as f64).min(100.0)
        };
        // The estimate blended with the pace kept so far, while producing.
        let producing = j.producing.seconds(elapsed);
        let eta = microfactory_protocol::eta::remaining(
            j.spec.estimated_seconds,
            producing,
            percent / 100.0,
        );
        Some(Progress {
            job_id: j.spec.id.clone(),
            lines_done: j.done,
            lines_total: j.total,
            last_acked_line: j.last_acked,
            bytes_sent: self.host.wire_bytes() - j.wire_at_start,
            percent,
            elapsed_seconds: elapsed,
            producing_seconds: producing,
            eta_seconds: eta,
            resends: self.host.resends() - j.resends_at_start,
            paused: j.paused,
        })
    }

    fn emit_progress(&mut self, force: bool) {
        let now = Instant::now();
        let due = self
            .job
            .as_ref()
            .is_some_and(|j| force || j.last_progress.is_none_or(|t| now >= t + PROGRESS_EVERY));
        if !due {
            return;
        }
        if let Some(p) = self.progress() {
            if let Some(j) = self.job.as_mut() {
                j.last_progress = Some(now);
            }
            self.status.send_modify(|s| s.job = Some(p.clone()));
            let _ = self.events.send(DriverEvent::Progress(p));
        }
    }

    fn end_job(&mut self, outcome: JobOutcome) {
        let Some(p) = self.progress() else { return };
        self.emit_progress(true);
        let Some(job) = self.job.take() else { return };
        let stats = StreamStats {
            lines: job.done,
            payload_bytes: job.payload_bytes,
            wire_bytes: p.bytes_sent,
            resends: p.resends,
            seconds: job.started.elapsed().as_secs_f64(),
            streaming_seconds: job
                .last_ack_at
                .map_or(0.0, |t| t.duration_since(job.started).as_secs_f64()),
        };
        if !matches!(outcome, JobOutcome::Completed) {
            self.host.clear_queue();
        }
        info!(job_id = %job.spec.id, ?outcome, lines = stats.lines, "job ended");
        let ended = EndedJob {
            job_id: job.spec.id.clone(),
            outcome: outcome.clone(),
        };
        self.status.send_modify(|s| {
            s.job = None;
            s.last_ended = Some(ended);
        });
        let _ = self.events.send(DriverEvent::JobEnded {
            job_id: job.spec.id,
            outcome,
            stats,
        });
    }

    fn run_cancel_script(&mut self) {
        for c in &self.config.scripts.cancel {
            let _ = self.host.push(Origin::Internal, c);
        }
    }

    fn lost(&mut self, reason: String) -> SessionEnd {
        if let Some(j) = &self.job {
            let last = j.last_acked;
            self.end_job(JobOutcome::Interrupted {
                reason: reason.clone(),
                last_acked_line: last,
            });
        }
        if let Some(c) = self.console.take() {
            let _ = c.reply.send(Err(DriverError::Offline));
        }
        SessionEnd::Lost(reason)
    }

    /// Ends the session for a fresh connection. Requests that touch a
    /// running job are refused before this, so only a console command can
    /// be waiting.
    fn reconnect(&mut self) -> SessionEnd {
        if let Some(c) = self.console.take() {
            let _ = c.reply.send(Err(DriverError::Superseded));
        }
        SessionEnd::Reconnect
    }

    /// Takes the console slot for `cmd`. A command still waiting there is
    /// answered `Superseded` rather than making this one wait behind it:
    /// one hung command must not block the next action for its timeout.
    fn console_command(
        &mut self,
        cmd: &str,
        tx: oneshot::Sender<Result<Vec<String>, DriverError>>,
    ) {
        if !self.identified {
            let _ = tx.send(Err(DriverError::Offline));
            return;
        }
        if let Some(reason) = &self.halted {
            let _ = tx.send(Err(DriverError::Halted(reason.clone())));
            return;
        }
        if let Some(old) = self.console.take() {
            let _ = old.reply.send(Err(DriverError::Superseded));
        }
        let id = self.next_console_id;
        self.next_console_id += 1;
        match self.host.push(Origin::Console { id }, cmd.trim()) {
            Ok(()) => {
                self.console = Some(Console {
                    id,
                    reply: tx,
                    deadline: Instant::now() + CONSOLE_TIMEOUT,
                });
            }
            Err(e) => {
                let _ = tx.send(Err(DriverError::Invalid(e)));
            }
        }
    }

    /// A recovery action; `Some` when the session must end for it.
    fn recover(
        &mut self,
        action: Recovery,
        tx: oneshot::Sender<Result<Vec<String>, DriverError>>,
    ) -> Option<Exit> {
        if !action.fits(self.config.firmware) {
            let _ = tx.send(Err(DriverError::Invalid(format!(
                "{} does not apply to {:?} firmware",
                action.as_str(),
                self.config.firmware
            ))));
            return None;
        }
        if let Some(j) = &self.job {
            let _ = tx.send(Err(DriverError::Busy(j.spec.id.clone())));
            return None;
        }
        info!(action = action.as_str(), "recovery requested");
        match action {
            Recovery::Reconnect | Recovery::FirmwareRestart => {
                let _ = tx.send(Ok(Vec::new()));
                Some(Exit::Reconnect {
                    m999: action == Recovery::FirmwareRestart,
                })
            }
            Recovery::Unlock => {
                self.console_command("$X", tx);
                None
            }
            Recovery::SoftReset => {
                if let Some(old) = self.console.take() {
                    let _ = old.reply.send(Err(DriverError::Superseded));
                }
                self.host.soft_reset();
                let _ = tx.send(Ok(Vec::new()));
                None
            }
        }
    }

    fn shutdown(&mut self) -> SessionEnd {
        if let Some(j) = &self.job {
            let last = j.last_acked;
            self.end_job(JobOutcome::Interrupted {
                reason: "the daemon is shutting down".into(),
                last_acked_line: last,
            });
        }
        SessionEnd::Shutdown
    }

    async fn request(&mut self, r: Request) -> Option<Exit> {
        match r {
            Request::Start(spec, tx) => {
                let res = self.start(spec).await;
                let _ = tx.send(res);
            }
            Request::Pause(tx) => {
                let res = match self.job.as_mut() {
                    None => Err(DriverError::NoJob),
                    Some(j) if j.paused => Ok(()),
                    Some(j) => {
                        j.set_paused(true);
                        if !self.host.hold() {
                            for c in &self.config.scripts.park {
                                let _ = self.host.push(Origin::Internal, c);
                            }
                        }
                        Ok(())
                    }
                };
                self.emit_progress(true);
                let _ = tx.send(res);
            }
            Request::Resume(tx) => {
                let res = match self.job.as_mut() {
                    None => Err(DriverError::NoJob),
                    Some(j) if !j.paused => Ok(()),
                    Some(j) => {
                        j.set_paused(false);
                        if self.config.firmware == Firmware::Marlin {
                            for c in &self.config.scripts.unpark {
                                let _ = self.host.push(Origin::Internal, c);
                            }
                        }
                        self.host.release();
                        Ok(())
                    }
                };
                self.emit_progress(true);
                let _ = tx.send(res);
            }
            Request::Cancel(tx) => {
                let res = match self.job.as_mut() {
                    None => Err(DriverError::NoJob),
                    Some(j) => {
                        j.cancelling = true;
                        self.host.clear_queue();
                        if !self.host.hold() {
                            // Marlin: nothing more is fed; lines in flight
                            // finish, then the cancel script turns heaters
                            // off (queued after the job's lines are dropped).
                            let last = j.last_acked;
                            self.end_job(JobOutcome::Cancelled {
                                last_acked_line: last,
                            });
                            self.host.release();
                            self.run_cancel_script();
                        }
                        Ok(())
                    }
                };
                let _ = tx.send(res);
            }
            Request::EmergencyStop(tx) => {
                self.host.emergency();
                if let Some(j) = &self.job {
                    let line = Some(j.last_acked);
                    self.end_job(JobOutcome::Failed {
                        reason: "emergency stop by the operator".into(),
                        line,
                    });
                }
                let _ = tx.send(Ok(()));
            }
            Request::Console(cmd, tx) => self.console_command(&cmd, tx),
            Request::Recover(action, tx) => return self.recover(action, tx),
            Request::Shutdown => {}
        }
        None
    }

    async fn start(&mut self, spec: JobSpec) -> Result<(), DriverError> {
        if let Some(j) = &self.job {
            return Err(DriverError::Busy(j.spec.id.clone()));
        }
        if !self.identified {
            return Err(DriverError::Offline);
        }
        if let Some(reason) = &self.halted {
            return Err(DriverError::Halted(reason.clone()));
        }
        let total = match spec.total_lines {
            Some(t) => t,
            // A restart part-way streams only the lines from `start_line`.
            None => {
                super::job::count_commands(&spec.path, spec.start_line, spec.expand_canned_cycles)
                    .await
                    .map_err(|e| DriverError::Invalid(e.to_string()))?
            }
        };
        let mut source = JobSource::open(&spec.path, spec.start_line.max(1))
            .await
            .map_err(|e| DriverError::Invalid(e.to_string()))?;
        if spec.expand_canned_cycles {
            source = source.expand_canned_cycles();
        }
        for c in &spec.preamble {
            self.host
                .push(Origin::Internal, c)
                .map_err(DriverError::Invalid)?;
        }
        info!(job_id = %spec.id, total, "job started");
        self.job = Some(Running {
            spec,
            source,
            total,
            done: 0,
            last_acked: 0,
            eof: false,
            finishing: false,
            paused: false,
            cancelling: false,
            started: Instant::now(),
            producing: ProducingTime::start(0.0),
            last_ack_at: None,
            last_progress: None,
            payload_bytes: 0,
            resends_at_start: self.host.resends(),
            wire_at_start: self.host.wire_bytes(),
        });
        Ok(())
    }
}
