//! The factory's pure core: records, domain events and the decisions that
//! change them. No tokio, sled, axum or clock in here: callers pass `now`.

pub mod console;
pub mod events;
pub mod factory;
pub mod machine;
pub mod model;
pub mod routing;
