//! microfactoryd as a library: the binary (`main.rs`) parses arguments and
//! calls in here; benchmarks and tests reach the same modules. See
//! ARCHITECTURE.md for what each module owns and may not know.

pub mod auth;
pub mod cli;
pub mod clock;
pub mod commerce;
pub mod config;
pub mod core;
pub mod factory;
pub mod http;
pub mod metering;
pub mod mqtt;
pub mod pdf;
pub mod store;
