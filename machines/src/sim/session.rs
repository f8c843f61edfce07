//! The PTY, the link model and the loop that drives a firmware model.

use std::collections::VecDeque;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, WriteHalf};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep};
use tokio_serial::{SerialPort, SerialStream};
use tracing::{Instrument, debug, info, warn};

use super::clock::PreciseTimer;
use super::rng::SplitMix64;
use super::{Control, Io, RxBuffer, SimConfig, SimError, Stats, make_firmware};

/// Host bytes taken from the PTY but not yet through the link, at most:
/// the part of the host's serial driver buffer the simulator holds. Bytes
/// are read as soon as the host writes them, so each starts down the wire
/// at the moment it was written; beyond this the kernel's PTY buffer
/// pushes back on the host as a full driver buffer would.
const HOST_QUEUE: usize = 4096;
/// Output queued for a host that does not read is dropped beyond this.
const MAX_QUEUED_OUTPUT: usize = 64 * 1024;

/// Both ends of one pseudo-terminal. The slave handle is kept so the PTY
/// does not hang up between clients.
pub(crate) struct Pty {
    master: SerialStream,
    slave: SerialStream,
    pub(crate) path: PathBuf,
}

impl Pty {
    pub(crate) fn open(link: Option<&Path>) -> Result<Self, SimError> {
        let (master, slave) = SerialStream::pair()?;
        let path = PathBuf::from(
            slave
                .name()
                .ok_or_else(|| SimError::Config("the pseudo-terminal has no path".to_string()))?,
        );
        if let Some(link) = link {
            update_link(link, &path)?;
        }
        Ok(Self {
            master,
            slave,
            path,
        })
    }
}

/// Points `link` at `target`, atomically (symlink beside it, then rename).
fn update_link(link: &Path, target: &Path) -> Result<(), SimError> {
    let io_err = |what: &str, source| SimError::Io {
        what: format!("{what} {}", link.display()),
        source,
    };
    let mut tmp = link.as_os_str().to_owned();
    tmp.push(".new");
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).map_err(|e| io_err("cannot create symlink", e))?;
    std::fs::rename(&tmp, link).map_err(|e| io_err("cannot replace symlink", e))?;
    Ok(())
}

enum End {
    Hangup,
    Shutdown,
}

#[derive(Default)]
struct Fired {
    disconnect: bool,
    reset: bool,
    alarm: bool,
}

/// Runs sessions (one per PTY) until shut down.
pub(crate) async fn run(
    config: SimConfig,
    mut pty: Pty,
    stats: Arc<Stats>,
    path_tx: watch::Sender<PathBuf>,
    mut control: mpsc::UnboundedReceiver<Control>,
    mut log: Option<std::fs::File>,
) {
    let span = tracing::info_span!("sim", name = %config.name, firmware = ?config.firmware);
    async move {
        let mut rng = SplitMix64::new(config.seed);
        let mut fired = Fired::default();
        loop {
            info!(path = %pty.path.display(), "machine connected");
            let end = session(
                &config,
                pty,
                &stats,
                &mut control,
                &mut log,
                &mut rng,
                &mut fired,
            )
            .await;
            if let End::Shutdown = end {
                break;
            }
            Stats::inc(&stats.hangups);
            info!("hung up");
            tokio::select! {
                _ = sleep(Duration::from_millis(config.reconnect_delay_ms)) => {}
                c = control.recv() => {
                    if !matches!(c, Some(Control::Hangup)) {
                        break;
                    }
                }
            }
            pty = match Pty::open(config.link.as_deref()) {
                Ok(p) => p,
                Err(e) => {
                    warn!(error = %e, "cannot re-create the pseudo-terminal");
                    break;
                }
            };
            path_tx.send_replace(pty.path.clone());
        }
        if let Some(l) = &config.link {
            let _ = std::fs::remove_file(l);
        }
        info!("stopped");
    }
    .instrument(span)
    .await;
}

/// One PTY lifetime: boot, then shuttle bytes through the link model.
async fn session(
    config: &SimConfig,
    pty: Pty,
    stats: &Arc<Stats>,
    control: &mut mpsc::UnboundedReceiver<Control>,
    log: &mut Option<std::fs::File>,
    rng: &mut SplitMix64,
    fired: &mut Fired,
) -> End {
    let Pty {
        master,
        slave,
        path: _,
    } = pty;
    let (mut rd, wr) = tokio::io::split(master);
    let (out_tx, out_rx) = mpsc::unbounded_channel();
    let queued = Arc::new(AtomicUsize::new(0));
    let writer = tokio::spawn(
        writer(wr, out_rx, queued.clone(), stats.clone()).instrument(tracing::Span::current()),
    );
    let byte_time = Duration::from_secs_f64(10.0 / f64::from(config.baud));
    let latency = Duration::from_secs_f64(config.latency_ms / 1000.0);

    let start = Instant::now();
    let mut link = Link {
        tx_free: start,
        byte_time,
        latency,
        out_tx,
        queued,
    };
    let mut wire: VecDeque<(Instant, u8)> = VecDeque::new();
    let mut rx_free = start;
    let mut rx = RxBuffer::new(config.rx_buffer);
    let mut fw = make_firmware(config, start);
    let mut out = Vec::new();
    let mut executed = Vec::new();
    {
        let mut io = Io {
            now: start,
            out: &mut out,
            executed: &mut executed,
            stats,
        };
        fw.boot(&mut io);
        Stats::inc(&stats.boots);
    }
    link.emit(&mut out, start);
    let mut buf = [0u8; 1024];
    let mut read_backoff: Option<Instant> = None;
    // Faults injected since the last line terminator.
    let mut line_faults = 0u32;

    let timer = match PreciseTimer::new() {
        Ok(t) => t,
        Err(e) => {
            warn!(error = %e, "cannot create the link timer");
            return End::Shutdown;
        }
    };
    let end = loop {
        let now = Instant::now();
        let mut hang = false;
        let mut fw_ctx = FirmwareCtx {
            config,
            stats,
            log,
            fired,
        };
        // Bytes that arrived since the last turn, one at a time at their
        // arrival times, with the firmware's main loop run after each line
        // and before a byte would overflow its buffer: real firmware empties
        // its receive buffer within microseconds of a line's end, so a late
        // wake-up here (a loaded machine) must not pile a burst of arrivals
        // into the buffer that the firmware would have taken in between.
        while let Some(&(t, b)) = wire.front() {
            if t > now || hang {
                break;
            }
            wire.pop_front();
            let mut io = Io {
                now: t,
                out: &mut out,
                executed: &mut executed,
                stats,
            };
            if fw.on_arrival(b, &mut rx, &mut io) {
                continue;
            }
            if rx.free() == 0 {
                hang |= fw_ctx.run(fw.as_mut(), &mut rx, &mut io);
            }
            if !rx.push(b) {
                Stats::inc(&stats.rx_overflow_bytes);
            }
            if b == b'\n' || b == b'\r' {
                hang |= fw_ctx.run(fw.as_mut(), &mut rx, &mut io);
            }
            link.emit(&mut out, t);
        }
        if !hang {
            let mut io = Io {
                now,
                out: &mut out,
                executed: &mut executed,
                stats,
            };
            hang = fw_ctx.run(fw.as_mut(), &mut rx, &mut io);
        }
        link.emit(&mut out, now);
        if hang {
            break End::Hangup;
        }

        let can_read = wire.len() < HOST_QUEUE && read_backoff.is_none_or(|t| t <= now);
        let mut wake = fw.next_wake(now);
        let mut consider = |t: Instant| wake = Some(wake.map_or(t, |w| w.min(t)));
        if let Some(&(t, _)) = wire.front() {
            consider(t);
        }
        if let Some(t) = read_backoff.filter(|&t| t > now) {
            consider(t);
        }
        tokio::select! {
            c = control.recv() => match c {
                Some(Control::Hangup) => break End::Hangup,
                _ => break End::Shutdown,
            },
            r = rd.read(&mut buf), if can_read => match r {
                Ok(0) | Err(_) => {
                    // No client has the PTY open; look again soon.
                    read_backoff = Some(Instant::now() + Duration::from_millis(20));
                }
                Ok(n) => {
                    read_backoff = None;
                    let now = Instant::now();
                    for &b in &buf[..n] {
                        Stats::inc(&stats.bytes_received);
                        if b == b'\n' || b == b'\r' {
                            line_faults = 0;
                        }
                        let may_fault = config
                            .max_faults_per_line
                            .is_none_or(|max| line_faults < max);
                        let b = if fw.protected(b) {
                            b
                        } else if rng.chance(config.drop_rate) && may_fault {
                            line_faults += 1;
                            Stats::inc(&stats.bytes_dropped);
                            continue;
                        } else if rng.chance(config.corrupt_rate) && may_fault {
                            line_faults += 1;
                            Stats::inc(&stats.bytes_corrupted);
                            corrupt(b, rng, fw.as_ref())
                        } else {
                            b
                        };
                        rx_free = rx_free.max(now) + byte_time;
                        stats.wire_byte(rx_free);
                        wire.push_back((rx_free + latency, b));
                    }
                }
            },
            r = timer.sleep_until(wake.unwrap_or(now)), if wake.is_some() => {
                if let Err(e) = r {
                    warn!(error = %e, "link timer failed");
                    break End::Shutdown;
                }
            }
        }
    };
    // Let what the firmware already said reach the host, then hang up.
    drop(link);
    let mut writer = writer;
    if tokio::time::timeout(Duration::from_secs(1), &mut writer)
        .await
        .is_err()
    {
        writer.abort();
    }
    drop(slave);
    end
}

/// What running the firmware needs besides the firmware and its buffer:
/// the executed-command log and the fault triggers that count its lines.
struct FirmwareCtx<'a> {
    config: &'a SimConfig,
    stats: &'a Arc<Stats>,
    log: &'a mut Option<std::fs::File>,
    fired: &'a mut Fired,
}

impl FirmwareCtx<'_> {
    /// Runs the firmware until it makes no more progress at `io.now`,
    /// logging what it executed and firing the triggers; true when an
    /// injected disconnect fired.
    fn run(&mut self, fw: &mut dyn super::Firmware, rx: &mut RxBuffer, io: &mut Io<'_>) -> bool {
        let mut hang = false;
        loop {
            let progressed = fw.step(rx, io);
            let lines: Vec<String> = io.executed.drain(..).collect();
            for line in lines {
                if let Some(f) = self.log.as_mut() {
                    let _ = writeln!(f, "{line}").and_then(|()| f.flush());
                }
                let n = self.stats.lines_executed.fetch_add(1, Ordering::Relaxed) + 1;
                debug!(n, line, "executed");
                let fired = &mut *self.fired;
                if self.config.alarm_after_line == Some(n) && !fired.alarm {
                    fired.alarm = true;
                    info!(n, "injecting alarm");
                    fw.fault_alarm(rx, io);
                }
                if self.config.reset_after_line == Some(n) && !fired.reset {
                    fired.reset = true;
                    info!(n, "injecting reset");
                    rx.clear();
                    fw.boot(io);
                    Stats::inc(&self.stats.boots);
                }
                if self.config.disconnect_after_line == Some(n) && !fired.disconnect {
                    fired.disconnect = true;
                    info!(n, "injecting disconnect");
                    hang = true;
                }
            }
            if !progressed || hang {
                return hang;
            }
        }
    }
}

/// Flips one bit of `b`, never producing a protected byte.
fn corrupt(b: u8, rng: &mut SplitMix64, fw: &dyn super::Firmware) -> u8 {
    for _ in 0..16 {
        let c = b ^ (1 << (rng.next_u64() % 8));
        if !fw.protected(c) {
            return c;
        }
    }
    b
}

/// The firmware→host direction of the link.
struct Link {
    tx_free: Instant,
    byte_time: Duration,
    latency: Duration,
    out_tx: mpsc::UnboundedSender<(Instant, Vec<u8>)>,
    queued: Arc<AtomicUsize>,
}

impl Link {
    /// Schedules `out` to arrive at the host when the link has carried it.
    fn emit(&mut self, out: &mut Vec<u8>, now: Instant) {
        if out.is_empty() {
            return;
        }
        let bytes = std::mem::take(out);
        if self.queued.load(Ordering::Relaxed) > MAX_QUEUED_OUTPUT {
            return;
        }
        let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
        self.tx_free = self.tx_free.max(now) + self.byte_time * len;
        self.queued.fetch_add(bytes.len(), Ordering::Relaxed);
        let _ = self.out_tx.send((self.tx_free + self.latency, bytes));
    }
}

async fn writer(
    mut wr: WriteHalf<SerialStream>,
    mut rx: mpsc::UnboundedReceiver<(Instant, Vec<u8>)>,
    queued: Arc<AtomicUsize>,
    stats: Arc<Stats>,
) {
    let timer = match PreciseTimer::new() {
        Ok(t) => t,
        Err(e) => {
            warn!(error = %e, "cannot create the output timer");
            return;
        }
    };
    while let Some((at, bytes)) = rx.recv().await {
        if timer.sleep_until(at).await.is_err() {
            break;
        }
        if wr.write_all(&bytes).await.is_err() {
            break;
        }
        queued.fetch_sub(bytes.len(), Ordering::Relaxed);
        stats
            .bytes_sent
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
    }
}
