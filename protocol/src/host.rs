//! Types shared by the Marlin and GRBL host state machines.

use serde::{Deserialize, Serialize};

/// Where a command sent to a machine came from, so that acknowledgements,
/// errors and responses can be attributed to a job line or a console request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Origin {
    /// Line `line` (one-based, in the source file) of the running job.
    Job { line: u64 },
    /// A console request; `id` is chosen by the caller to match the reply.
    Console { id: u64 },
    /// Sent by the host itself (handshake, polling, scripts).
    Internal,
}
