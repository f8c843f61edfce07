//! Adapts `protocol::grbl::GrblHost` to the session's [`Host`] trait.

use std::collections::VecDeque;
use std::time::Instant;

use microfactory_protocol::grbl::{GrblConfig, GrblEvent, GrblHost, Realtime, StreamMode};
use microfactory_protocol::host::Origin;

use super::session::{Host, Signal};
use super::{DriverConfig, FlowMode};

pub(crate) struct GrblAdapter {
    host: GrblHost,
    pending: VecDeque<Signal>,
    /// Lines that answered the console command in flight.
    console_lines: Vec<String>,
    identified: bool,
    holding: bool,
    banner: Option<String>,
}

impl GrblAdapter {
    pub(crate) fn new(config: &DriverConfig) -> Self {
        let gc = GrblConfig {
            mode: match config.flow {
                FlowMode::PingPong => StreamMode::SendResponse,
                FlowMode::Auto | FlowMode::Buffered => StreamMode::CharacterCounting,
            },
            rx_buffer: config.rx_buffer,
            ..GrblConfig::default()
        };
        Self {
            host: GrblHost::new(gc),
            pending: VecDeque::new(),
            console_lines: Vec::new(),
            identified: false,
            holding: false,
            banner: None,
        }
    }

    fn translate(&mut self, ev: GrblEvent) {
        let sig = match ev {
            GrblEvent::Ok { origin } => match origin {
                Origin::Console { id } => Signal::Response {
                    id,
                    lines: std::mem::take(&mut self.console_lines),
                },
                Origin::Internal if !self.identified => {
                    // The `$I` of the handshake has been answered.
                    self.identified = true;
                    Signal::Identified {
                        firmware: self.banner.clone().unwrap_or_else(|| "Grbl".into()),
                        capabilities: std::mem::take(&mut self.console_lines),
                    }
                }
                o => Signal::Ack(o),
            },
            GrblEvent::Error {
                origin,
                code,
                message,
            } => Signal::Rejected {
                origin,
                message: format!("error:{code} {message}"),
            },
            GrblEvent::Alarm { code, message } => Signal::Fatal(format!("ALARM:{code} {message}")),
            GrblEvent::Status(s) => {
                let state = s.state.to_string();
                if state == "Hold:0" && self.holding {
                    self.holding = false;
                    self.pending.push_back(Signal::HoldComplete);
                }
                let position = s.wpos.as_deref().and_then(|p| match p {
                    [x, y, z, ..] => Some([*x, *y, *z]),
                    _ => None,
                });
                Signal::MachineState { state, position }
            }
            GrblEvent::Message(m) => {
                self.console_lines.push(format!("[MSG:{m}]"));
                Signal::Message(m)
            }
            GrblEvent::Setting { number, value } => {
                self.console_lines.push(format!("${number}={value}"));
                return;
            }
            GrblEvent::Feedback(f) => {
                self.console_lines.push(f);
                return;
            }
            GrblEvent::Reset { version } => {
                // Every reset (ours in the handshake or cancel, or the
                // firmware's own) is followed by `$I` to learn the buffer.
                let was = self.identified;
                self.identified = false;
                self.console_lines.clear();
                self.banner = Some(version.clone());
                let _ = self.host.push(Origin::Internal, "$I");
                if was {
                    Signal::Reset(version)
                } else {
                    return;
                }
            }
            GrblEvent::Options { flags, .. } => {
                self.console_lines.push(format!("OPT:{flags}"));
                return;
            }
            GrblEvent::Drained => Signal::Drained,
            GrblEvent::ResponseTimeout => Signal::LinkDead,
            _ => return,
        };
        self.pending.push_back(sig);
    }
}

impl Host for GrblAdapter {
    fn handshake(&mut self) {
        // A soft reset provokes the banner; `$I` follows it (see Reset).
        self.host.realtime(Realtime::SoftReset);
    }
    fn push(&mut self, origin: Origin, command: &str) -> Result<(), String> {
        self.host.push(origin, command).map_err(|e| e.to_string())
    }
    fn queued(&self) -> usize {
        self.host.queued()
    }
    fn handle_line(&mut self, now: Instant, line: &str) {
        self.host.handle_line(now, line);
    }
    fn handle_timeout(&mut self, now: Instant) {
        self.host.handle_timeout(now);
    }
    fn poll_timeout(&self) -> Option<Instant> {
        self.host.poll_timeout()
    }
    fn poll_transmit(&mut self, now: Instant) -> Option<Vec<u8>> {
        self.host.poll_transmit(now)
    }
    fn poll_signal(&mut self) -> Option<Signal> {
        while let Some(ev) = self.host.poll_event() {
            self.translate(ev);
        }
        self.pending.pop_front()
    }
    fn clear_queue(&mut self) {
        self.host.clear_queue();
    }
    fn hold(&mut self) -> bool {
        self.holding = true;
        self.host.realtime(Realtime::FeedHold);
        true
    }
    fn release(&mut self) {
        self.holding = false;
        self.host.realtime(Realtime::CycleStart);
    }
    fn emergency(&mut self) {
        self.host.realtime(Realtime::SoftReset);
    }
    fn soft_reset(&mut self) {
        self.holding = false;
        self.host.realtime(Realtime::SoftReset);
    }
    fn resends(&self) -> u64 {
        0
    }
    fn wire_bytes(&self) -> u64 {
        self.host.stats().sent_bytes
    }
}
