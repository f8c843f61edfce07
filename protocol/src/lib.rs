//! Sans-IO core of microfactoryd: the exact rules for talking to Marlin
//! printers and GRBL mills, and for understanding the G-code they are fed.
//!
//! Nothing in this crate performs I/O, reads a clock or depends on an async
//! runtime. Callers feed it bytes, lines and `now`; it returns lines to send,
//! deadlines and events. That is what lets every rule be tested
//! deterministically, including under injected faults.

pub mod analysis;
pub mod block;
pub mod canned;
pub mod eta;
pub mod fastpath;
pub mod framing;
pub mod grbl;
pub mod host;
pub mod kinematics;
pub mod marlin;
pub mod preflight;
pub mod slicer;
#[cfg(test)]
mod testdata;
