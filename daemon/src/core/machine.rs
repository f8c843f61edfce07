//! The machine state log's vocabulary: one typed state per machine with a
//! reason, derived in one place ([`derive`]) from the facts the core holds.
//! Metering reads time only from these changes, so every state a machine
//! can be in has exactly one name here.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// What a machine is doing, as metering counts time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MachineState {
    /// Not connected, or the handshake is not done.
    Offline,
    /// Online and free for the next job.
    Idle,
    /// Running a job.
    Producing,
    /// A job is held (operator, tool change, filament).
    Paused,
    /// Free of jobs but waiting for a person (bed clearance, a look after
    /// an interrupted, cancelled or failed job).
    AwaitingOperator,
    /// Taken out of service on purpose (maintenance).
    PlannedDown,
    /// The firmware halted (kill, alarm): needs recovery.
    UnplannedDown,
}

impl MachineState {
    /// The one-word state the dashboard has always shown.
    pub fn legacy_word(self) -> &'static str {
        match self {
            Self::Offline => "offline",
            Self::Idle => "idle",
            Self::Producing => "running",
            Self::Paused => "paused",
            Self::AwaitingOperator => "awaiting_clear",
            Self::PlannedDown => "disabled",
            Self::UnplannedDown => "error",
        }
    }
}

/// Why a machine is in its state; a stable code for metering and the
/// attention list, with words in [`StateReason::words`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StateReason {
    /// Nothing to explain (idle, producing).
    None,
    /// The port is closed or the machine does not answer.
    Disconnected,
    /// The port is open, the handshake runs.
    Connecting,
    /// The firmware reported a halt or an alarm.
    Fault,
    /// The operator disabled the machine.
    Disabled,
    /// A job completed; the bed must be cleared.
    BedClear,
    /// A job was interrupted (link lost, daemon stopped): clear, or
    /// restart it from a line.
    Interrupted,
    /// A job was cancelled: the part is half made.
    Cancelled,
    /// A job failed: the firmware refused or stopped it.
    Failed,
    /// The firmware halted (emergency stop, alarm, kill) and is back: a
    /// person looks before the next job starts.
    Halted,
    /// Paused by the operator.
    OperatorPause,
    /// Paused for a tool change.
    ToolChange,
    /// Paused by the firmware or the program (filament, `M0`, action).
    ProgramPause,
}

impl StateReason {
    /// What a person should know, in a few words.
    pub fn words(self) -> &'static str {
        match self {
            Self::None => "",
            Self::Disconnected => "not connected",
            Self::Connecting => "connecting",
            Self::Fault => "the firmware halted; recover it",
            Self::Disabled => "disabled by the operator",
            Self::BedClear => "waiting for bed clearance",
            Self::Interrupted => "a job was interrupted; clear the bed or restart it from a line",
            Self::Cancelled => "a job was cancelled; clear the bed",
            Self::Failed => "a job failed; check the machine and clear the bed",
            Self::Halted => {
                "the machine halted (emergency stop, alarm or kill); check it, then confirm"
            }
            Self::OperatorPause => "paused by the operator",
            Self::ToolChange => "paused for a tool change",
            Self::ProgramPause => "paused by the program",
        }
    }
}

/// What the link reports, reduced to what the state depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkState {
    /// No connection.
    #[default]
    Offline,
    /// Handshake in progress.
    Connecting,
    /// Ready.
    Online,
    /// The firmware halted.
    Faulted,
}

/// The facts a machine's state is derived from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Facts {
    /// Out of service.
    pub disabled: bool,
    /// The link.
    pub link: LinkState,
    /// A job holds the machine; `Some(reason)` when it is paused.
    pub job: Option<Option<StateReason>>,
    /// Waiting for the operator, and why.
    pub hold: Option<StateReason>,
}

/// The single rule from facts to state. Precedence: a disabled machine is
/// planned down whatever else holds; a halted or absent link beats a job
/// (the job cannot be progressing); a job beats a hold.
pub fn derive(f: Facts) -> (MachineState, StateReason) {
    if f.disabled {
        return (MachineState::PlannedDown, StateReason::Disabled);
    }
    match f.link {
        LinkState::Faulted => return (MachineState::UnplannedDown, StateReason::Fault),
        LinkState::Offline => return (MachineState::Offline, StateReason::Disconnected),
        LinkState::Connecting => return (MachineState::Offline, StateReason::Connecting),
        LinkState::Online => {}
    }
    match (f.job, f.hold) {
        (Some(Some(reason)), _) => (MachineState::Paused, reason),
        (Some(None), _) => (MachineState::Producing, StateReason::None),
        (None, Some(reason)) => (MachineState::AwaitingOperator, reason),
        (None, None) => (MachineState::Idle, StateReason::None),
    }
}

/// One entry of a machine's state log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StateChange {
    /// When the machine entered this state.
    pub at_ms: u64,
    /// The state.
    pub state: MachineState,
    /// Why.
    pub reason: StateReason,
    /// The job involved, if any.
    pub job_id: Option<u64>,
    /// Sequence number of the log event that recorded it.
    pub seq: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn reason() -> impl Strategy<Value = StateReason> {
        prop_oneof![
            Just(StateReason::BedClear),
            Just(StateReason::Interrupted),
            Just(StateReason::OperatorPause),
            Just(StateReason::ToolChange),
        ]
    }

    fn link() -> impl Strategy<Value = LinkState> {
        prop_oneof![
            Just(LinkState::Offline),
            Just(LinkState::Connecting),
            Just(LinkState::Online),
            Just(LinkState::Faulted),
        ]
    }

    proptest! {
        #[test]
        fn a_machine_is_producing_only_when_online_enabled_and_running_an_unpaused_job(
            disabled in any::<bool>(), link in link(),
            job in proptest::option::of(proptest::option::of(reason())),
            hold in proptest::option::of(reason()),
        ) {
            let (s, r) = derive(Facts { disabled, link, job, hold });
            prop_assert_eq!(
                s == MachineState::Producing,
                !disabled && link == LinkState::Online && job == Some(None)
            );
            if s == MachineState::Producing || s == MachineState::Idle {
                prop_assert_eq!(r, StateReason::None);
            } else {
                prop_assert_ne!(r, StateReason::None);
            }
            if s == MachineState::Idle {
                prop_assert!(hold.is_none() && job.is_none());
            }
        }
    }

    #[test]
    fn disabled_beats_a_fault_and_a_fault_beats_a_running_job() {
        let f = Facts {
            disabled: true,
            link: LinkState::Faulted,
            job: Some(None),
            hold: None,
        };
        assert_eq!(derive(f).0, MachineState::PlannedDown);
        let f = Facts {
            disabled: false,
            ..f
        };
        assert_eq!(derive(f), (MachineState::UnplannedDown, StateReason::Fault));
    }
}
