//! The seam between the factory and a machine: whatever drives it (our
//! serial driver today, a machine reporting over MQTT later), the factory
//! sees a status it can watch, events it can follow, and commands it can
//! send. Nothing in the factory names a serial port.

use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;

use microfactory_machines::driver::{
    DriverError, DriverEvent, DriverHandle, JobSpec, MachineStatus, Recovery, SerialLine,
};
use tokio::sync::{broadcast, watch};

/// A boxed future, so links can be trait objects.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the factory asks of a machine.
#[derive(Debug, Clone)]
pub enum Command {
    /// Start streaming a job.
    Start(JobSpec),
    /// Pause the running job.
    Pause,
    /// Resume the paused job.
    Resume,
    /// Cancel the running job (its end comes as an event).
    Cancel,
    /// Stop at once.
    EmergencyStop,
    /// One console command; the answer is its lines.
    Console(String),
    /// A recovery action (reconnect, firmware restart, unlock, reset).
    Recover(Recovery),
}

/// One machine, however it is driven.
pub trait MachineLink: Send + Sync + Debug {
    /// The latest status, and a way to wait for changes.
    fn status(&self) -> watch::Receiver<MachineStatus>;
    /// Happenings (progress, pauses, job ends); may lag, the status keeps
    /// the last ended job.
    fn events(&self) -> broadcast::Receiver<DriverEvent>;
    /// Recent traffic, where the link has any.
    fn serial_log(&self) -> Vec<SerialLine>;
    /// Sends a command; console commands answer with lines.
    fn command(&self, c: Command) -> BoxFuture<'_, Result<Vec<String>, DriverError>>;
    /// Stops at a safe point (a running job ends interrupted, as an event)
    /// and returns once stopped.
    fn stop(&self) -> BoxFuture<'_, ()>;
}

impl MachineLink for DriverHandle {
    fn status(&self) -> watch::Receiver<MachineStatus> {
        DriverHandle::status(self)
    }

    fn events(&self) -> broadcast::Receiver<DriverEvent> {
        DriverHandle::events(self)
    }

    fn serial_log(&self) -> Vec<SerialLine> {
        DriverHandle::serial_log(self)
    }

    fn command(&self, c: Command) -> BoxFuture<'_, Result<Vec<String>, DriverError>> {
        Box::pin(async move {
            match c {
                Command::Start(spec) => self.start(spec).await.map(|()| Vec::new()),
                Command::Pause => self.pause().await.map(|()| Vec::new()),
                Command::Resume => self.resume().await.map(|()| Vec::new()),
                Command::Cancel => self.cancel().await.map(|()| Vec::new()),
                Command::EmergencyStop => self.emergency_stop().await.map(|()| Vec::new()),
                Command::Console(cmd) => self.console(&cmd).await,
                Command::Recover(a) => self.recover(a).await,
            }
        })
    }

    fn stop(&self) -> BoxFuture<'_, ()> {
        Box::pin(DriverHandle::stop(self))
    }
}
