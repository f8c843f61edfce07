//! Everything HTTP: the API under `/api/v1`, its route policy, the
//! OctoPrint-compatible routes slicers upload to, and the embedded
//! dashboard. The only module that knows axum.

pub mod api;
pub mod octoprint;
pub mod policy;
pub mod production;
pub mod web;
