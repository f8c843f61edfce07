//! The factory's pure core: records, domain events and the decisions that
//! change them. No tokio, sled, axum or clock in here: callers pass `now`.

pub mod model;
pub mod routing;
