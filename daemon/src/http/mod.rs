//! Everything HTTP: the server loop and its connection limits, the API
//! under `/api/v1`, its route policy (who may call what, how large a
//! body), the OctoPrint-compatible routes slicers upload to, webhook receivers
//! and Shopify's callbacks, and the embedded dashboard. The only module that knows axum.

pub mod api;
pub mod commerce;
pub mod envelope;
pub mod limits;
pub mod octoprint;
pub mod policy;
pub mod production;
pub mod server;
#[cfg(test)]
mod tests;
pub mod web;
pub mod webhooks;
