//! Adapts `protocol::marlin::MarlinHost` to the session's [`Host`] trait.

use std::collections::VecDeque;
use std::time::Instant;

use microfactory_protocol::host::Origin;
use microfactory_protocol::marlin::{
    Emergency, FlowControl, MarlinConfig, MarlinEvent, MarlinHost,
};

use super::session::{Host, Signal};
use super::{DriverConfig, FlowMode, Heater};

pub(crate) struct MarlinAdapter {
    host: MarlinHost,
    pending: VecDeque<Signal>,
}

impl MarlinAdapter {
    pub(crate) fn new(config: &DriverConfig) -> Self {
        let mc = MarlinConfig {
            flow: match config.flow {
                FlowMode::PingPong => FlowControl::PingPong,
                FlowMode::Auto | FlowMode::Buffered => FlowControl::Buffered {
                    rx_bytes: config.rx_buffer,
                },
            },
            ok_after_resend: config.ok_after_resend,
            response_timeout: config.response_timeout,
            max_resends_per_line: config.max_resends_per_line,
            // Auto streams buffered only while the link is clean (see
            // `microfactory_protocol::marlin`); Buffered insists.
            clean_lines_before_buffering: match config.flow {
                FlowMode::Buffered => 0,
                FlowMode::Auto | FlowMode::PingPong => {
                    MarlinConfig::default().clean_lines_before_buffering
                }
            },
            ..MarlinConfig::default()
        };
        Self {
            host: MarlinHost::new(mc),
            pending: VecDeque::new(),
        }
    }

    fn translate(&mut self, ev: MarlinEvent) {
        let sig = match ev {
            MarlinEvent::Acknowledged { origin } => Signal::Ack(origin),
            MarlinEvent::Response {
                origin: Origin::Console { id },
                lines,
            } => Signal::Response { id, lines },
            MarlinEvent::Temperatures(t) => Signal::Heaters(
                t.heaters
                    .iter()
                    .map(|h| Heater {
                        name: h.name.clone(),
                        actual: h.actual,
                        target: h.target,
                    })
                    .collect(),
            ),
            MarlinEvent::Firmware(info) => {
                let caps: Vec<String> = info
                    .caps
                    .iter()
                    .filter(|(_, on)| **on)
                    .map(|(k, _)| k.clone())
                    .collect();
                if info.caps.get("AUTOREPORT_TEMP").copied().unwrap_or(false) {
                    // Temperatures every 2 s without polling.
                    let _ = self.host.push(Origin::Internal, "M155 S2");
                }
                Signal::Identified {
                    firmware: info.name,
                    capabilities: caps,
                }
            }
            MarlinEvent::FirmwareRestarted => Signal::Reset("start".into()),
            MarlinEvent::Fatal(m) => Signal::Fatal(m),
            MarlinEvent::ResendGaveUp { line_number } => Signal::Fatal(format!(
                "line N{line_number} was resent too often; the link is too noisy"
            )),
            MarlinEvent::LinkDead => Signal::LinkDead,
            MarlinEvent::Warning(m) => Signal::Message(m),
            MarlinEvent::ResendRatioHigh { ratio } => Signal::Message(format!(
                "{:.0} % of lines needed a resend: check the cable",
                ratio * 100.0
            )),
            MarlinEvent::Action(a) => Signal::Message(format!("firmware asks: {a:?}")),
            _ => return,
        };
        self.pending.push_back(sig);
    }
}

impl Host for MarlinAdapter {
    fn handshake(&mut self) {
        self.host.handshake();
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
        // Marlin has no feed hold over serial: stop feeding; the session
        // then sends the park script, which goes ahead of job lines.
        self.host.pause_feeding();
        false
    }
    fn release(&mut self) {
        self.host.resume_feeding();
    }
    fn emergency(&mut self) {
        self.host.emergency(Emergency::Kill);
    }
    fn soft_reset(&mut self) {}
    fn resends(&self) -> u64 {
        self.host.stats().resends
    }
    fn wire_bytes(&self) -> u64 {
        self.host.stats().sent_bytes
    }
}
