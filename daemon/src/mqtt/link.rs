//! A machine that reports over MQTT, seen by the factory through the same
//! [`MachineLink`] seam as a serial one: a status watch and an event
//! broadcast, fed by the MQTT client task through an adapter. It is
//! read-only: the daemon watches what its own host runs, so every command
//! answers with an error that says so (the scheduler never picks it, see
//! `core::routing::check`).

use microfactory_machines::driver::{
    Connection, DriverError, DriverEvent, MachineStatus, SerialLine,
};
use tokio::sync::{broadcast, watch};

use super::adapters::IngestError;
use crate::factory::link::{BoxFuture, Command, MachineLink};

/// One MQTT machine.
#[derive(Debug)]
pub struct MqttLink {
    id: String,
    status: watch::Sender<MachineStatus>,
    events: broadcast::Sender<DriverEvent>,
}

impl MqttLink {
    /// Offline until its first message.
    pub fn new(id: &str) -> Self {
        Self {
            id: id.to_string(),
            status: watch::Sender::new(MachineStatus::default()),
            events: broadcast::channel(16).0,
        }
    }

    /// Its machine id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Applies one message through an adapter: on success the new status
    /// is published (watchers wake only if it changed); a refused message
    /// leaves it untouched.
    pub fn update(
        &self,
        apply: impl FnOnce(&mut MachineStatus) -> Result<(), IngestError>,
    ) -> Result<(), IngestError> {
        let mut next = self.status.borrow().clone();
        apply(&mut next)?;
        self.status.send_if_modified(|s| {
            if *s == next {
                false
            } else {
                *s = next;
                true
            }
        });
        Ok(())
    }

    /// The broker connection is lost: what the machine does is unknown
    /// until it reports again (retained reports arrive at once on
    /// reconnecting).
    pub fn lost(&self) {
        self.status.send_if_modified(|s| {
            let changed = s.connection != Connection::Offline || s.job.is_some();
            s.connection = Connection::Offline;
            s.job = None;
            changed
        });
    }
}

impl MachineLink for MqttLink {
    fn status(&self) -> watch::Receiver<MachineStatus> {
        self.status.subscribe()
    }

    fn events(&self) -> broadcast::Receiver<DriverEvent> {
        self.events.subscribe()
    }

    fn serial_log(&self) -> Vec<SerialLine> {
        Vec::new()
    }

    fn command(&self, _c: Command) -> BoxFuture<'_, Result<Vec<String>, DriverError>> {
        let id = self.id.clone();
        Box::pin(async move {
            Err(DriverError::Invalid(format!(
                "{id} reports over MQTT and is read-only: control it from its own host"
            )))
        })
    }

    fn stop(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}
