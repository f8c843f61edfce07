//! The binary's commands: `analyze`, `stream`, the daemon itself (`serve`)
//! and the demo. With `main.rs`, the only place `anyhow` is used.

pub mod analyze;
pub mod demo;
pub mod serve;
pub mod stream;
